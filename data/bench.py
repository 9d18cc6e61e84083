"""Loader throughput: decoded-and-augmented images/s at 256 px, and token samples/s.

    python -m data.bench [--workers 1,2] [--images 640]

Image shards are built once in a temporary folder from the built-in ``photos`` crops
(real photographs) stored as JPEG with the short side at 288 px; the loader takes a
random 256 crop with flip, as tokenizer training does. Token shards hold ten views of
256 tuples of 3 uint16 per image, as a 10-crop GaussianToken extraction would. One
warm-up pass per row, then the median of three timed epochs.

The resume table times the first batch of a loader restarted inside an epoch (one
worker, 80% through it): replaying the consumed batches, as resume used to, against
``start_at_batch`` (the consumed samples are neither read nor decoded).
"""

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from data.build_shards import BuildSettings, build_shards
from data.files import atomic_write_json
from data.loader import make_image_loader
from data.tario import write_tar_atomic
from data.tokens import FORMAT_TAG as TOKENS_FORMAT
from data.tokens import make_token_loader


def _token_set(folder: Path, n: int, shard_size: int = 500) -> None:
    rng = np.random.default_rng(0)
    shards = []
    for k in range((n + shard_size - 1) // shard_size):
        samples = []
        for i in range(k * shard_size, min(n, (k + 1) * shard_size)):
            buf = io.BytesIO()
            np.save(buf, rng.integers(0, 1024, (10, 256, 3), dtype=np.uint16))
            samples.append({"__key__": f"{i:08d}", "tokens.npy": buf.getvalue(),
                            "cls": str(i % 10).encode()})
        name = f"shard-{k:06d}.tar"
        shards.append({"name": name, "count": write_tar_atomic(folder / name, samples)})
    atomic_write_json(folder / "manifest.json", {"format": TOKENS_FORMAT, "shards": shards,
                                                 "total": n})


def _rate(make_loader, workers: int) -> float:
    times = []
    for epoch in range(4):
        loader = make_loader(workers)
        loader.dataset.set_epoch(epoch)
        start, count = time.perf_counter(), 0
        for batch, _ in loader:
            count += len(batch)
        if epoch:  # the first epoch is the warm-up
            times.append(count / (time.perf_counter() - start))
    return statistics.median(times)


def _first_batch_seconds(loader, first: int, fast: bool) -> float:
    loader.dataset.set_epoch(1)
    start = time.perf_counter()
    if fast:
        assert loader.dataset.start_at_batch(first, loader.batch_size, loader.num_workers)
        next(iter(loader))
    else:
        for index, _ in enumerate(loader):
            if index == first:
                break
    return time.perf_counter() - start


def _resume_rows(make_loader, what: str) -> list[str]:
    loader = make_loader()
    batches = sum(1 for _ in loader)
    first = int(0.8 * batches)
    replay = min(_first_batch_seconds(make_loader(), first, False) for _ in range(2))
    fast = min(_first_batch_seconds(make_loader(), first, True) for _ in range(2))
    return [f"| {what} | {first} of {batches} | {replay:.2f} | {fast:.3f} | "
            f"{replay / fast:.0f}x |"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated DataLoader worker counts to measure")
    parser.add_argument("--tokens", type=int, default=4000, help="token samples to generate")
    args = parser.parse_args(argv)
    worker_counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        images, tokens = Path(tmp) / "images", Path(tmp) / "tokens"
        build_shards(images, BuildSettings("builtin:photos/train", 288, "store", "jpg", 80),
                     builtin_name="photos", progress=False, workers=2)
        tokens.mkdir()
        _token_set(tokens, args.tokens)
        rows = ["| data | workers | samples/s | samples/s per worker |", "|---|---|---|---|"]
        for workers in worker_counts:
            rate = _rate(lambda w: make_image_loader(images, batch_size=32, image_size=256,
                                                     train=True, num_workers=w), workers)
            rows.append(f"| images 256 px, crop+flip | {workers} | {rate:.0f} "
                        f"| {rate / max(workers, 1):.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        for workers in worker_counts:
            rate = _rate(lambda w: make_token_loader(tokens, batch_size=64, num_workers=w),
                         workers)
            rows.append(f"| tokens 10x256x3 uint16 | {workers} | {rate:.0f} "
                        f"| {rate / max(workers, 1):.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
        rows += ["", "| resume inside an epoch (1 worker) | at batch | replay s | "
                 "start_at_batch s | ratio |", "|---|---|---|---|---|"]
        rows += _resume_rows(lambda: make_image_loader(images, batch_size=32, image_size=256,
                                                       train=True, num_workers=1),
                             "images 256 px, crop+flip")
        rows += _resume_rows(lambda: make_token_loader(tokens, batch_size=64, num_workers=1),
                             "tokens 10x256x3 uint16")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
