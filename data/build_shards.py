"""Convert an ImageFolder tree or a built-in dataset into webdataset image shards.

    python -m data.build_shards --src /data/imagenet/train --out shards/in256 --size 256
    python -m data.build_shards --builtin digits --split heldout --out shards/digits-val

Items are listed in sorted order (class by class), then put in a fixed pseudo-random
order (``--order shuffled``, the default; seed ``ORDER_SEED``) before they are cut into
shards: readers take contiguous runs of shards, and shards of one class each would give
nearly single-class batches. Keys keep the sorted-list index, so the output is
deterministic and each shard depends on its own items only. Each shard is
written atomically (temporary name, then rename) followed by a small sidecar with its
count and skipped files; a shard with a sidecar is finished. Re-running the same
command resumes: finished shards are kept, anything half-written is redone.
Unreadable, truncated or non-image files are skipped, counted and listed with the
reason in ``manifest.json``.
"""

import argparse
import json
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data import builtin
from data.cli import require_output_dir
from data.files import atomic_write_json, read_json
from data.imagefolder import DatasetError, scan_image_folder
from data.images import FORMATS, center_crop_adm, encode_image, load_image_file, resize_short_side
from data.tario import write_tar_atomic

MANIFEST = "manifest.json"
CLASSES = "classes.json"
FORMAT_TAG = "gtgen-images-v1"
CROPS = ("center", "store")
ORDERS = ("shuffled", "sorted")
ORDER_SEED = 20261124  # fixed: rebuilding gives the same shards


@dataclass(frozen=True)
class BuildSettings:
    source: str  # absolute folder path, or "builtin:<name>/<split>"
    size: int
    crop: str  # "center": ADM centre crop to size x size; "store": short side = size
    format: str
    shard_size: int
    order: str = "shuffled"  # item order before sharding; "sorted": class by class

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be one of {CROPS}, got {self.crop!r}")
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def _process(image, settings: BuildSettings) -> bytes:
    if settings.crop == "center":
        image = center_crop_adm(image, settings.size)
    else:
        image = resize_short_side(image, settings.size)
    return encode_image(image, settings.format)


def _build_shard(task) -> tuple[str, int, list[dict]]:
    """Worker: convert one shard's entries, write tar + sidecar; return its summary."""
    out_dir, name, settings, src_root, entries = task
    samples, skipped = [], []
    for key, source, image, label in entries:
        try:
            if image is None:
                image = load_image_file(Path(src_root) / source)
            meta = {"source": source, "width": image.size[0], "height": image.size[1]}
            samples.append({"__key__": key, settings.format: _process(image, settings),
                            "cls": str(label).encode(), "json": json.dumps(meta).encode()})
        except Exception as err:  # any failure to decode is a reported skip
            reason = re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(err).__name__}: {err}")
            skipped.append({"source": source, "reason": reason})  # deterministic text
    count = write_tar_atomic(Path(out_dir) / name, samples)
    sidecar = {"name": name, "count": count, "skipped": skipped}
    atomic_write_json(Path(out_dir) / (name + ".json"), sidecar)
    return name, count, skipped


def _entries(settings: BuildSettings, builtin_name: str | None, split: str, src: Path | None):
    """(class names, [(key, source, PIL image or None, label)]) in a fixed order."""
    if builtin_name:
        classes, samples = builtin.load_builtin(builtin_name, split)
        return classes, [(f"{i:08d}", s, img, lab) for i, (s, img, lab) in enumerate(samples)]
    classes, items = scan_image_folder(src)
    return classes, [(f"{i:08d}", rel, None, lab) for i, (rel, lab) in enumerate(items)]


def shard_order(n: int, order: str) -> list[int]:
    """Positions of the sorted items in the order they are written to shards."""
    if order == "sorted":
        return list(range(n))
    return np.random.default_rng(ORDER_SEED).permutation(n).tolist()


def _check_or_write(path: Path, obj, what: str) -> None:
    """Write obj once; on resume it must be unchanged."""
    if path.exists():
        existing = read_json(path, "shard build record")
        if existing != obj:
            raise DatasetError(
                f"{path} holds other {what} than this build; use a new --out "
                f"(found {json.dumps(existing)[:200]}, want {json.dumps(obj)[:200]})"
            )
    else:
        atomic_write_json(path, obj)


def build_shards(out: Path | str, settings: BuildSettings, *, builtin_name: str | None = None,
                 split: str = "train", src: Path | str | None = None, workers: int = 1,
                 progress: bool = True) -> dict:
    """Build (or finish) the shard set in ``out``; returns the manifest it wrote."""
    out = Path(out)
    created = not out.exists()
    src = Path(src).resolve() if src is not None else None
    classes, entries = _entries(settings, builtin_name, split, src)
    entries = [entries[i] for i in shard_order(len(entries), settings.order)]
    out.mkdir(parents=True, exist_ok=True)
    _check_or_write(out / "build.json", asdict(settings), "build settings")
    _check_or_write(out / CLASSES, {"names": classes}, "classes")

    n_shards = (len(entries) + settings.shard_size - 1) // settings.shard_size
    todo = []
    for k in range(n_shards):
        name = shard_name(k)
        if (out / name).exists() and (out / (name + ".json")).exists():
            continue  # finished in an earlier run
        chunk = entries[k * settings.shard_size:(k + 1) * settings.shard_size]
        todo.append((str(out), name, settings, str(src) if src else None, chunk))

    bar = tqdm(total=len(entries), unit="img", desc=f"shards -> {out}", disable=not progress)
    bar.update(len(entries) - sum(len(t[-1]) for t in todo))
    if workers > 1 and len(todo) > 1:
        with get_context("fork").Pool(min(workers, len(todo))) as pool:
            for task, _ in zip(todo, pool.imap(_build_shard, todo), strict=True):
                bar.update(len(task[-1]))
    else:
        for task in todo:
            _build_shard(task)
            bar.update(len(task[-1]))
    bar.close()

    shards, skipped = [], []
    for k in range(n_shards):
        sidecar = read_json(out / (shard_name(k) + ".json"), "shard record",
                            ("name", "count", "skipped"))
        shards.append({"name": sidecar["name"], "count": sidecar["count"]})
        skipped.extend(sidecar["skipped"])
    manifest = {
        "format": FORMAT_TAG,
        "settings": asdict(settings),
        "num_classes": len(classes),
        "total": sum(s["count"] for s in shards),
        "shards": shards,
        "skipped": skipped,
    }
    if manifest["total"] == 0:  # no manifest: the folder is no finished shard set
        if created:  # nothing of this call stays behind
            shutil.rmtree(out, ignore_errors=True)
        first = f" (first: {skipped[0]['source']}: {skipped[0]['reason']})" if skipped else ""
        raise DatasetError(f"none of the {len(entries)} inputs is a readable image{first}: "
                           "no shard set built")
    atomic_write_json(out / MANIFEST, manifest)
    for stale in out.glob("*.tmp"):  # leftovers of a killed earlier run
        os.remove(stale)
    return manifest


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.build_shards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--src", type=Path,
                        help="ImageFolder root: SRC/<class>/<image> (ImageNet's train/ layout)")
    source.add_argument("--builtin", choices=sorted(builtin.BUILTINS),
                        help="a built-in offline dataset (see data/builtin.py)")
    parser.add_argument("--split", choices=builtin.SPLITS + builtin.VALIDATION_SPLITS,
                        default="train", help="split of a --builtin dataset (default: train; "
                        "fit and val partition train, val being every 8th image of a class)")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the shards")
    parser.add_argument("--size", type=int, default=None,
                        help="output size in pixels (default 256; digits 32, photos 64)")
    parser.add_argument("--crop", choices=CROPS, default="center",
                        help="center: ADM centre crop to SIZE x SIZE (default); store: resize "
                             "the short side to SIZE and keep the aspect, for random-crop "
                             "training at a smaller size")
    parser.add_argument("--format", choices=FORMATS, default=None,
                        help="image codec (default: jpg for --src, png for --builtin)")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--order", choices=ORDERS, default="shuffled",
                        help="shuffled (default): items in a fixed pseudo-random order across "
                             "shards, so every run of shards mixes classes; sorted: class by "
                             "class, as listed (only for inspection: training batches would "
                             "be nearly single-class)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes (default: min(8, CPUs))")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    size = args.size if args.size is not None else \
        (builtin.DEFAULT_SIZE[args.builtin] if args.builtin else 256)
    fmt = args.format or ("png" if args.builtin else "jpg")
    source = (f"builtin:{args.builtin}/{args.split}" if args.builtin
              else str(args.src.resolve()))
    try:
        if size < 1:
            raise ValueError(f"--size must be a positive number of pixels, got {size}")
        require_output_dir(args.out, "--out")
        settings = BuildSettings(source, size, args.crop, fmt, args.shard_size, args.order)
        manifest = build_shards(args.out, settings, builtin_name=args.builtin, split=args.split,
                                src=args.src, workers=args.workers, progress=not args.quiet)
    except (DatasetError, ValueError) as err:
        print(f"data.build_shards: {err}", file=sys.stderr)
        return 2
    print(f"{manifest['total']} samples in {len(manifest['shards'])} shards, "
          f"{manifest['num_classes']} classes, {len(manifest['skipped'])} skipped "
          f"(listed in {args.out / MANIFEST})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
