"""Reconstruction quality of a trained tokenizer, as a table and JSON.

    python -m tokenizer.evaluate --ckpt runs/tok/checkpoints/last.pt --data shards/digits-val

Per-image PSNR and SSIM (means), LPIPS-VGG, rFID of the reconstructions against the
real images of --data (that is the stated reference), codebook usage and perplexity,
bits per image (sum over tokens of log2 of each vocabulary).
For GaussianToken also, without rFID: the reconstruction with continuous geometry
(what quantising the geometry costs), with only positions or only shapes snapped to
their bins (what each part costs), and geometry statistics over every image of --data:
per-Gaussian position std across images (splat pixels), distinct position tokens per
Gaussian, and coverage (the share of the image's content mass within 2 sigma of some
Gaussian).
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.cli import one_line_parser, positive_int
from data.loader import make_image_loader
from eval.evaluator import ReconstructionEvaluator
from eval.inception import InceptionFeatures
from eval.lpips import LPIPS
from eval.recon import SSIM_CONVENTIONS
from eval.weights import resolve_inception, resolve_vgg16
from kernels import splat
from tokenizer.build import load_tokenizer
from tokenizer.gaussian import code_usage
from tokenizer.layout import content_mass

MODES = {"tokens": True, "continuous geometry": "none", "positions snapped only": "position",
         "shapes snapped only": "shape"}
COVER_SIGMAS = 2.0


def bits_per_image(model) -> float:
    return model.num_tokens * sum(math.log2(v) for v in model.vocab_sizes)


class GeometryStatistics:
    """Per-Gaussian (by index, before the canonical sort) statistics over a whole set."""

    def __init__(self, model):
        self.model, self.xy, self.position, self.covered = model, [], [], []

    def update(self, images: torch.Tensor) -> None:
        # its own pass: the forward's geometry is in canonical order, which loses identity
        geo, _ = self.model.gaussians(images)
        position, _, _ = self.model.quantize_geometry(geo)
        self.xy.append(geo.xy.float().cpu())
        self.position.append(position.cpu())
        s = self.model.cfg.gaussian.splat_size
        ones = geo.xy.new_ones(*geo.xy.shape[:2], 1)
        reach = splat(geo.xy.float(), torch.exp(geo.log_scale.float()), geo.rotation.float(),
                      ones, height=s, width=s, cutoff=COVER_SIGMAS**2)[:, 0] > 0  # [B, s, s]
        mass = F.adaptive_avg_pool2d(content_mass(images)[:, None], s)[:, 0]
        self.covered.append(((mass * reach).flatten(1).sum(1) / mass.flatten(1).sum(1)).cpu())

    def result(self) -> dict:
        xy, position = torch.cat(self.xy), torch.cat(self.position)  # [I, N, 2], [I, N]
        s = self.model.cfg.gaussian.splat_size
        std = (xy.std(0) * (s / 2)).norm(dim=-1)  # [N]: splat pixels, both axes together
        distinct = [len(torch.unique(position[:, i])) for i in range(position.shape[1])]
        return {"position_std_px": std.mean().item(),
                "distinct_positions_per_gaussian": sum(distinct) / len(distinct),
                "coverage": torch.cat(self.covered).mean().item()}


@torch.no_grad()
def evaluate(model, data, *, batch_size=64, lpips=None, extractor=None, limit=None,
             progress=True, real_features=None, ssim_convention="wang") -> dict:
    """Rows per reconstruction mode (rFID on the tokens row only) and, for GaussianToken,
    geometry statistics; every image of ``data`` unless ``limit``."""
    size = model.cfg.image_size
    loader = make_image_loader(data, batch_size=batch_size, image_size=size, train=False)
    gaussian = model.cfg.kind == "gaussian"
    modes = MODES if gaussian else {"tokens": True}
    evaluators = {m: ReconstructionEvaluator(lpips, extractor if m == "tokens" else None,
                                             real_features, ssim_convention) for m in modes}
    geometry = GeometryStatistics(model) if gaussian else None
    counts = torch.zeros(model.cfg.quantizer.codebook_size)
    seen = 0
    for images, _ in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        if limit is not None and seen >= limit:
            break
        if limit is not None:
            images = images[:limit - seen]  # the last batch may hold more than the limit
        for mode, quantize in modes.items():
            recon, aux = model(images, quantize_geometry=quantize)
            evaluators[mode].update(images, recon.clamp(-1, 1))
            if mode == "tokens":
                codes = aux["tokens"][..., model.token_layout.code_component].flatten()
                counts += torch.bincount(codes, minlength=counts.numel()).float()
        if geometry is not None:
            geometry.update(images)
        seen += len(images)
    usage, perplexity = code_usage(counts)
    rows = {m: ev.result() for m, ev in evaluators.items()}
    for row in rows.values():
        row["metrics"].update({"codebook_usage": usage, "codebook_perplexity": perplexity})
    report = {"data": str(Path(data).resolve()), "num_images": seen, "kind": model.cfg.kind,
              "bits_per_image": bits_per_image(model), "num_tokens": model.num_tokens,
              "ssim_convention": ssim_convention, "results": rows}
    if geometry is not None:
        report["geometry"] = geometry.result()
    return report


def format_table(report: dict) -> str:
    keys = ["psnr", "ssim", "lpips", "rfid", "codebook_usage", "codebook_perplexity"]
    lines = ["| " + " | ".join(["setting", *keys]) + " |", "|" + "---|" * (len(keys) + 1)]
    for mode, row in report["results"].items():
        m = row["metrics"]
        lines.append("| " + " | ".join([mode] + [f"{m[k]:.4f}" if k in m else "-"
                                                 for k in keys]) + " |")
    lines.append(f"\n{report['num_images']} images of {report['data']}; "
                 f"{report['num_tokens']} tokens, {report['bits_per_image']:.0f} bits per image; "
                 f"rFID (tokens row) against the same real images; SSIM convention "
                 f"{report.get('ssim_convention', 'wang')}")
    if "geometry" in report:
        stats = report["geometry"].items()
        lines.append("geometry: " + ", ".join(f"{k} {v:.3f}" for k, v in stats))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = one_line_parser(prog="python -m tokenizer.evaluate", description=__doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint .pt or exported .safetensors")
    parser.add_argument("--data", required=True, help="image shard folder to reconstruct")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--limit", type=positive_int, help="evaluate at most this many images")
    parser.add_argument("--ssim", choices=SSIM_CONVENTIONS, default="wang",
                        help="SSIM convention: wang (Wang et al., Gaussian 11x11 window) or "
                             "llamagen (skimage defaults with data_range 2, as LlamaGen "
                             "reports; reads 0.05-0.14 higher); see eval/recon.py")
    parser.add_argument("--no-rfid", action="store_true", help="skip rFID (no Inception pass)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        model, info = load_tokenizer(args.ckpt)
        lpips = extractor = None
        if not args.no_lpips:
            lpips = LPIPS(resolve_vgg16())
        if not args.no_rfid:
            extractor = InceptionFeatures(resolve_inception())
        report = evaluate(model, args.data, batch_size=args.batch_size, lpips=lpips,
                          extractor=extractor, limit=args.limit, progress=not args.quiet,
                          ssim_convention=args.ssim)
    except (FileNotFoundError, ValueError) as err:
        print(f"tokenizer.evaluate: {err}", file=sys.stderr)
        return 2
    report["tokenizer"] = {k: info[k] for k in ("path", "sha1")}
    print(format_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
