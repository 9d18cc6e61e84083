"""Reconstruction quality of a trained tokenizer, as a table and JSON.

    python -m tokenizer.evaluate --ckpt runs/tok/checkpoints/last.pt --data shards/digits-val

Per-image PSNR and SSIM (means), LPIPS-VGG, rFID of the reconstructions against the
real images of --data (that is the stated reference), codebook usage and perplexity.
For GaussianToken the same again with continuous geometry, to show what quantising
the geometry costs.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from data.loader import make_image_loader
from eval.evaluator import ReconstructionEvaluator
from tokenizer.gaussian import code_usage
from tokenizer.registry import load_tokenizer


@torch.no_grad()
def evaluate(model, data, *, batch_size=64, lpips=None, extractor=None, limit=None,
             progress=True) -> dict:
    size = model.cfg.image_size
    loader = make_image_loader(data, batch_size=batch_size, image_size=size, train=False)
    modes = {"quantised geometry": True}
    if model.cfg.kind == "gaussian":
        modes["continuous geometry"] = False
    evaluators = {m: ReconstructionEvaluator(lpips, extractor) for m in modes}
    counts = torch.zeros(model.cfg.quantizer.codebook_size)
    seen = 0
    for images, _ in tqdm(loader, desc="evaluate", unit="batch", disable=not progress):
        if limit is not None and seen >= limit:
            break
        for mode, quantize in modes.items():
            recon, aux = model(images, quantize_geometry=quantize)
            evaluators[mode].update(images, recon.clamp(-1, 1))
            if quantize:
                codes = aux["tokens"][..., -1].flatten()
                counts += torch.bincount(codes, minlength=counts.numel()).float()
        seen += len(images)
    usage, perplexity = code_usage(counts)
    rows = {m: ev.result() for m, ev in evaluators.items()}
    for row in rows.values():
        row["metrics"].update({"codebook_usage": usage, "codebook_perplexity": perplexity})
    return {"data": str(Path(data).resolve()), "num_images": seen, "kind": model.cfg.kind,
            "results": rows}


def format_table(report: dict) -> str:
    keys = ["psnr", "ssim", "lpips", "rfid", "codebook_usage", "codebook_perplexity"]
    lines = ["| " + " | ".join(["setting", *keys]) + " |", "|" + "---|" * (len(keys) + 1)]
    for mode, row in report["results"].items():
        m = row["metrics"]
        lines.append("| " + " | ".join([mode] + [f"{m[k]:.4f}" if k in m else "-"
                                                 for k in keys]) + " |")
    lines.append(f"\n{report['num_images']} images of {report['data']}; rFID reference: the "
                 "same real images")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="checkpoint .pt or exported .safetensors")
    parser.add_argument("--data", required=True, help="image shard folder to reconstruct")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="evaluate at most this many images")
    parser.add_argument("--no-rfid", action="store_true", help="skip rFID (no Inception pass)")
    parser.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        model, info = load_tokenizer(args.ckpt)
        lpips = extractor = None
        if not args.no_lpips:
            from eval.lpips import LPIPS
            from eval.weights import resolve_vgg16
            lpips = LPIPS(resolve_vgg16())
        if not args.no_rfid:
            from eval.inception import InceptionFeatures
            from eval.weights import resolve_inception
            extractor = InceptionFeatures(resolve_inception())
        report = evaluate(model, args.data, batch_size=args.batch_size, lpips=lpips,
                          extractor=extractor, limit=args.limit, progress=not args.quiet)
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
