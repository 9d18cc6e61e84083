"""Evaluation speed: Inception feature extraction and the Fréchet distance.

    python -m eval.bench [--images 200] [--batch-size 50]

Feature extraction: images/s of 256 px uint8 images through resize + Inception, on
the CPU and, when there is one, the GPU. Fréchet distance of 2048-d statistics: the
eigenvalue route beside scipy's sqrtm, with their difference (both in float64).
Precision/recall of 2048-d float64 features: matrix-product distances (ours) beside the
direct-difference route we used before, on each device, same inputs, same run, with
the ratio and whether the answers agree.
"""

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from eval.frechet import frechet_distance
from eval.inception import InceptionFeatures
from eval.prdc import precision_recall
from eval.weights import resolve_inception


def _random_stats(d: int, seed: int):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((3 * d, d)) @ rng.standard_normal((d, d)) / np.sqrt(d)
    return feats.mean(0), np.cov(feats, rowvar=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images per device row")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3, help="Fréchet timings per route")
    parser.add_argument("--pr-real", type=int, default=1000, help="real features for P/R")
    parser.add_argument("--pr-fake", type=int, default=2000, help="sample features for P/R")
    parser.add_argument("--skip-inception", action="store_true",
                        help="leave out the feature-extraction rows")
    args = parser.parse_args(argv)
    weights = resolve_inception()
    images = np.random.default_rng(0).integers(0, 256, (args.images, 256, 256, 3), np.uint8)
    rows = ["| what | device | value |", "|---|---|---|"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices if not args.skip_inception else []:
        extractor = InceptionFeatures(weights).to(device)
        extractor(images[: args.batch_size])  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for i in range(0, len(images), args.batch_size):
            extractor(images[i:i + args.batch_size])
        if device == "cuda":
            torch.cuda.synchronize()
        rate = len(images) / (time.perf_counter() - start)
        threads = torch.get_num_threads()
        name = torch.cuda.get_device_name() if device == "cuda" else f"cpu x{threads}"
        rows.append(f"| Inception features, 256 px -> 299, batch {args.batch_size} | {name} "
                    f"| {rate:.1f} images/s |")
        print(rows[-1], file=sys.stderr, flush=True)
    s1, s2 = _random_stats(2048, 1), _random_stats(2048, 2)
    values = {}
    for method in ("eig", "sqrtm"):
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            values[method] = frechet_distance(*s1, *s2, method=method)
            times.append(time.perf_counter() - start)
        rows.append(f"| Fréchet distance 2048-d, {method} | cpu | {statistics.median(times):.2f} s "
                    f"(d^2 = {values[method]:.6f}) |")
        print(rows[-1], file=sys.stderr, flush=True)
    rows.append(f"| eig vs sqrtm relative difference | - | "
                f"{abs(values['eig'] - values['sqrtm']) / abs(values['sqrtm']):.1e} |")
    rng = np.random.default_rng(0)
    real = rng.normal(0, 1, (args.pr_real, 2048))
    fake = rng.normal(0.1, 1, (args.pr_fake, 2048))
    for device in devices:
        timed = {}
        for exact in (True, False):
            start = time.perf_counter()
            answer = precision_recall(real, fake, device=device, exact=exact)
            if device == "cuda":
                torch.cuda.synchronize()
            timed[exact] = (time.perf_counter() - start, answer)
        (t_old, a_old), (t_new, a_new) = timed[True], timed[False]
        rows.append(f"| precision/recall {args.pr_real} x {args.pr_fake} x 2048 float64: "
                    f"direct differences (before) / matrix products (now) | {device} "
                    f"| {t_old:.2f} s / {t_new:.2f} s = {t_old / t_new:.1f}x, answers "
                    f"{'equal' if a_old == a_new else f'differ: {a_old} vs {a_new}'} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
