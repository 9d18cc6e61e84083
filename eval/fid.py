"""Generation metrics of a sample set against a reference, as a table and JSON.

    python -m eval.fid samples.npz VIRTUAL_imagenet256_labeled.npz --json result.json
    python -m eval.fid samples.npz shards/digits-heldout --metrics fid,prec,recall

SAMPLES: a .npz with arr_0 (uint8 [N, H, W, 3]), an image folder or an image shard
folder, read in batches (never whole). REF: the same kinds, or an ADM reference batch
whose stored statistics (mu, sigma, mu_s, sigma_s) are used as they are; its images
are embedded only when a metric needs them (precision/recall). Reference features are
computed once and cached (~/.cache/gtgen/reference, keyed by the reference's files,
the weights and the resize). The JSON names the reference, the sample count, the
weights (path, source, SHA-1), the resize, the IS convention, and whether the row is
comparable with published ADM-evaluator numbers; metrics the weights cannot give are
listed as unavailable with the reason. Every input problem is one line and exit 2.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from data.cli import check_device, one_line_parser, positive_int, require_output_file
from data.files import atomic_write_json
from eval.evaluator import GenerationEvaluator, Reference, extract
from eval.frechet import METHODS
from eval.inception import ADM_RESIZE, RESIZES, InceptionFeatures
from eval.leaderboard import comparability_problems
from eval.metrics import (
    GENERATION_METRICS,
    METRICS,
    metrics_needing_images,
    reference_needs_images,
    too_few_images,
)
from eval.sets import ImageSet, ImageSetError, fingerprint, open_set
from eval.weights import WeightsUnavailable, resolve_inception

CACHE = Path.home() / ".cache" / "gtgen" / "reference"
# bump when the features change meaning (v2: sFID in ADM's (row, column, channel) order)
FEATURES_VERSION = "v2"


def load_reference(path, extractor: InceptionFeatures, batch_size: int, use_cache: bool = True,
                   progress: bool = True, metrics=GENERATION_METRICS) -> Reference:
    data = path if isinstance(path, ImageSet) else open_set(path)
    kind = "ADM reference batch (stored statistics)" if data.stats else "image set"
    description = f"{data.path.resolve()} [{kind}]"
    if not data.has_images or not reference_needs_images(data.stats, metrics):
        return Reference(description, stats=data.stats)
    if data.count < 2:
        raise ImageSetError(f"{data.path}: holds {data.count} image; statistics need 2 or more")
    key = f"{fingerprint(data.path)}-{extractor.weights.sha1[:12]}-{extractor.resize}"
    cache = CACHE / f"{key}-{FEATURES_VERSION}.npz"
    if use_cache and cache.exists():
        with np.load(cache) as f:
            feats = {k: f[k] for k in f.files}
    else:
        feats = extract(extractor, data, batch_size, "reference", progress)
        if use_cache and not data.skipped:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, **{k: v.astype(np.float32) for k, v in feats.items()})
            tmp.replace(cache)
    description += f", {len(feats['pool'])} images"
    return Reference(description, pool=feats["pool"].astype(np.float64),
                     spatial=feats["spatial"].astype(np.float64), stats=data.stats)


def format_table(result: dict) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, label in ((m.name, m.label) for m in METRICS.values()):
        if key in result["metrics"]:
            value = result["metrics"][key]
            extra = f" ± {result['metrics']['is_std']:.2f}" if key == "is" else ""
            lines.append(f"| {label} | {value:.4f}{extra} |")
        elif key in result["unavailable"]:
            lines.append(f"| {label} | unavailable: {result['unavailable'][key]} |")
    lines += ["", f"samples: {result['num_samples']} from {result['samples']}",
              f"reference: {result['reference']}",
              f"weights: {result['weights']['source']} {result['weights']['path']} "
              f"(sha1 {result['weights']['sha1'][:12]}), resize {result['resize']}",
              f"IS: {result['is_convention']}",
              "comparable with published ADM-evaluator rows: " + (
                  "yes" if result["adm_comparable"] else
                  "no (" + "; ".join(result["not_comparable_because"]) + ")")]
    return "\n".join(lines)


def image_size(data: ImageSet) -> tuple[int, int]:
    """(height, width) of a set's first image."""
    return tuple(next(iter(data.batches(1))).shape[1:3])


def unlike_sets(samples: ImageSet, ref: ImageSet) -> list[str]:
    """What makes samples and an image reference unlike: other image sizes, or far fewer
    samples than reference images (a bias FID does not correct for)."""
    warnings = []
    got, want = image_size(samples), image_size(ref)
    if got != want:
        warnings.append(f"samples are {got[0]}x{got[1]} px, the reference {want[0]}x{want[1]}: "
                        "both are resized to Inception's 299 px, so the resampling differs")
    if samples.count * 10 < ref.count:
        warnings.append(f"{samples.count} samples against {ref.count} reference images: "
                        "FID's small-sample bias is set by the smaller set")
    return warnings


def evaluate(samples, ref, metrics=GENERATION_METRICS, *, batch_size: int = 50,
             resize: str = ADM_RESIZE, inception=None, download: bool = True,
             fid_method: str = "eig", device: str = "cpu", use_cache: bool = True,
             progress: bool = True) -> dict:
    """The generation metrics of ``samples`` against ``ref`` (paths: .npz, image folder or
    shard folder; ``ref`` also an ADM reference batch) as the result dict eval.fid writes,
    with ``warnings`` (what makes it incomparable with the reference's published rows).
    Bad input: ImageSetError / WeightsUnavailable / ValueError, one line each."""
    metrics = list(metrics)
    unknown = sorted(set(metrics) - set(GENERATION_METRICS))
    if unknown or not metrics:
        raise ValueError(f"--metrics: unknown {unknown or 'empty list'}; choose from "
                         f"{','.join(GENERATION_METRICS)}")
    dev = check_device(device)
    sample_set = open_set(samples)
    if not sample_set.has_images:
        raise ImageSetError(f"{samples}: holds statistics only; samples need images")
    refusal = too_few_images(sample_set.count, metrics, f"{samples}")
    if refusal:
        raise ImageSetError(refusal)
    ref_set = open_set(ref)
    if ref_set.has_images:  # only the metrics that embed its images need enough of them
        refusal = too_few_images(ref_set.count, metrics_needing_images(ref_set.stats, metrics),
                                 f"the reference {ref}")
        if refusal:
            raise ImageSetError(refusal)
    warnings = unlike_sets(sample_set, ref_set) if ref_set.has_images else []
    weights = resolve_inception(inception, download=download)
    extractor = InceptionFeatures(weights, resize).to(dev)
    reference = load_reference(ref_set, extractor, batch_size, use_cache, progress, metrics)
    evaluator = GenerationEvaluator(extractor, reference, metrics, batch_size, progress)
    evaluator.update(sample_set)
    result = evaluator.result(fid_method)
    result["samples"] = str(Path(samples).resolve())
    result["skipped"] = {"samples": sample_set.skipped, "reference": ref_set.skipped}
    if sample_set.settings:  # labels, guidance, precision, uint8 and eval-size conventions
        result["sample_settings"] = sample_set.settings
    problems = comparability_problems(result)
    result["adm_comparable"], result["not_comparable_because"] = not problems, problems
    if ref_set.stats and problems:
        warnings.append(f"the reference holds ADM statistics but this result is not "
                        f"comparable with them: {'; '.join(problems)}")
    result["warnings"] = warnings
    return result


def main(argv=None) -> int:
    parser = one_line_parser(prog="python -m eval.fid", description=__doc__)
    parser.add_argument("samples", help="samples: .npz (arr_0), image folder or shard folder")
    parser.add_argument("ref", help="reference: ADM batch .npz, .npz, image or shard folder")
    parser.add_argument("--metrics", default=",".join(GENERATION_METRICS),
                        help=f"comma-separated subset of {','.join(GENERATION_METRICS)}")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--batch-size", type=positive_int, default=50,
                        help="images per forward pass")
    parser.add_argument("--resize", choices=RESIZES, default=ADM_RESIZE,
                        help="resize convention to 299 px: tf1-bilinear is the ADM "
                             "evaluator's (use it to compare with published tables); see "
                             "eval/inception.py")
    parser.add_argument("--inception",
                        help="Inception weights: a TorchScript file (its tensors are read, its "
                             "code never runs) or our cached .safetensors; else resolved: "
                             "$GTGEN_INCEPTION_WEIGHTS, caches, packages, download")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
    parser.add_argument("--fid-method", choices=METHODS, default="eig",
                        help="matrix square-root route of the Fréchet distance")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for feature extraction and precision/recall")
    parser.add_argument("--no-cache", action="store_true", help="recompute reference features")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        require_output_file(args.json, "--json")
        result = evaluate(args.samples, args.ref, metrics, batch_size=args.batch_size,
                          resize=args.resize, inception=args.inception,
                          download=not args.no_download, fid_method=args.fid_method,
                          device=args.device, use_cache=not args.no_cache,
                          progress=not args.quiet)
    except (ImageSetError, WeightsUnavailable, ValueError) as err:
        print(f"eval.fid: {err}", file=sys.stderr)
        return 2
    for warning in result["warnings"]:
        print(f"eval.fid: warning: {warning}", file=sys.stderr)
    print(format_table(result))
    if args.json:
        atomic_write_json(args.json, result, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
