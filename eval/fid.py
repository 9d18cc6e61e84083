"""Generation metrics of a sample set against a reference, as a table and JSON.

    python -m eval.fid samples.npz VIRTUAL_imagenet256_labeled.npz --json result.json
    python -m eval.fid samples.npz shards/digits-heldout --metrics fid,prec,recall

SAMPLES: a .npz with arr_0 (uint8 [N, H, W, 3]), an image folder or an image shard
folder. REF: the same kinds, or an ADM reference batch whose stored statistics (mu,
sigma, mu_s, sigma_s) are used as they are. Reference features are computed once and
cached (~/.cache/gtgen/reference, keyed by the reference's files, the weights and the
resize). The JSON names the reference, the weights (path, source, SHA-1) and the
resize; metrics the weights cannot give are listed as unavailable with the reason.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from eval.evaluator import GENERATION_METRICS, GenerationEvaluator, Reference, extract
from eval.frechet import METHODS
from eval.inception import RESIZES, InceptionFeatures
from eval.sets import STAT_KEYS, ImageSetError, fingerprint, load_set
from eval.weights import WeightsUnavailable, resolve_inception

CACHE = Path.home() / ".cache" / "gtgen" / "reference"


def load_reference(path, extractor: InceptionFeatures, batch_size: int, use_cache: bool = True,
                   progress: bool = True) -> Reference:
    data = load_set(path)
    stats = {k: data[k] for k in STAT_KEYS if k in data}
    kind = "ADM reference batch (stored statistics)" if stats else "image set"
    description = f"{Path(path).resolve()} [{kind}]"
    if "arr_0" not in data:
        return Reference(description, stats=stats)
    cache = CACHE / (f"{fingerprint(path)}-{extractor.weights.sha1[:12]}-{extractor.resize}.npz")
    if use_cache and cache.exists():
        with np.load(cache) as f:
            feats = {k: f[k] for k in f.files}
    else:
        feats = extract(extractor, data["arr_0"], batch_size, "reference", progress)
        if use_cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            np.savez(tmp, **{k: v.astype(np.float32) for k, v in feats.items()})
            tmp.replace(cache)
    description += f", {len(data['arr_0'])} images"
    return Reference(description, pool=feats["pool"].astype(np.float64),
                     spatial=feats["spatial"].astype(np.float64), stats=stats)


def format_table(result: dict) -> str:
    names = {"fid": "FID", "sfid": "sFID", "is": "IS", "prec": "Precision", "recall": "Recall"}
    lines = ["| metric | value |", "|---|---|"]
    for key, label in names.items():
        if key in result["metrics"]:
            value = result["metrics"][key]
            extra = f" ± {result['metrics']['is_std']:.2f}" if key == "is" else ""
            lines.append(f"| {label} | {value:.4f}{extra} |")
        elif key in result["unavailable"]:
            lines.append(f"| {label} | unavailable: {result['unavailable'][key]} |")
    lines += ["", f"samples: {result['num_samples']} from {result['samples']}",
              f"reference: {result['reference']}",
              f"weights: {result['weights']['source']} {result['weights']['path']} "
              f"(sha1 {result['weights']['sha1'][:12]}), resize {result['resize']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.fid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("samples", help="samples: .npz (arr_0), image folder or shard folder")
    parser.add_argument("ref", help="reference: ADM batch .npz, .npz, image or shard folder")
    parser.add_argument("--metrics", default=",".join(GENERATION_METRICS),
                        help=f"comma-separated subset of {','.join(GENERATION_METRICS)}")
    parser.add_argument("--json", type=Path, help="also write the full result here")
    parser.add_argument("--batch-size", type=int, default=50, help="images per forward pass")
    parser.add_argument("--resize", choices=RESIZES, default="tf-bilinear",
                        help="resize convention to 299 px (see eval/inception.py)")
    parser.add_argument("--inception", help="Inception TorchScript file (else resolved: "
                                            "$GTGEN_INCEPTION_WEIGHTS, caches, packages, download)")
    parser.add_argument("--no-download", action="store_true", help="never download weights")
    parser.add_argument("--fid-method", choices=METHODS, default="eig",
                        help="matrix square-root route of the Fréchet distance")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for feature extraction")
    parser.add_argument("--no-cache", action="store_true", help="recompute reference features")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        weights = resolve_inception(args.inception, download=not args.no_download)
        extractor = InceptionFeatures(weights, args.resize).to(args.device)
        samples = load_set(args.samples)
        if "arr_0" not in samples:
            raise ImageSetError(f"{args.samples}: holds statistics only; samples need images")
        reference = load_reference(args.ref, extractor, args.batch_size, not args.no_cache,
                                   not args.quiet)
        evaluator = GenerationEvaluator(extractor, reference, metrics, args.batch_size,
                                        not args.quiet)
        evaluator.update(samples["arr_0"])
        result = evaluator.result(args.fid_method)
    except (ImageSetError, WeightsUnavailable, ValueError) as err:
        print(f"eval.fid: {err}", file=sys.stderr)
        return 2
    result["samples"] = str(Path(args.samples).resolve())
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
