"""Small synthetic image trees and shard sets whose every image encodes its own index."""

from pathlib import Path

import numpy as np
from PIL import Image

from data.build_shards import BuildSettings, build_shards


def index_image(i: int, size: int = 8) -> Image.Image:
    """A flat image whose red and green channels spell i (unique for i < 65536)."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = i % 256, i // 256, 77
    return Image.fromarray(arr)


def image_index(image_chw) -> int:
    """Inverse of index_image for a loader tensor in [-1, 1]."""
    pix = ((image_chw[:, 0, 0] + 1) * 127.5).round().int().tolist()
    return pix[0] + 256 * pix[1]


def make_tree(root: Path, per_class: dict[str, int]) -> int:
    """ImageFolder tree of PNGs with globally unique index images; returns the count."""
    i = 0
    for name, n in per_class.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            index_image(i).save(root / name / f"img{i:04d}.png")
            i += 1
    return i


def make_index_shards(tmp: Path, n: int, shard_size: int, name="shards") -> Path:
    """Shards in sorted order: shard k holds images k*shard_size, k*shard_size+1, ..."""
    src = tmp / f"{name}-src"
    make_tree(src, {"c0": n // 2, "c1": n - n // 2})
    out = tmp / name
    build_shards(out, BuildSettings(str(src), 8, "center", "png", shard_size, "sorted"),
                 src=src, progress=False)
    return out


def damage_index_shards(folder: Path) -> list[int]:
    """Damage a 12-image, 4-per-shard set from ``make_index_shards``: sample 1's image
    becomes garbage and shard 2 is cut inside its 2nd sample. Returns the indices that
    survive (4 images are lost: 1, and 9-11)."""
    import io
    import tarfile

    from data.tario import write_tar_atomic

    def png(i):
        buf = io.BytesIO()
        index_image(i).save(buf, format="PNG")
        return buf.getvalue()

    samples = [{"__key__": f"{i:08d}", "png": png(i) if i != 1 else b"\x89PNG garbage",
                "cls": b"0"} for i in range(4)]
    write_tar_atomic(folder / "shard-000000.tar", samples)
    path = folder / "shard-000002.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmembers()[4].offset_data + 10  # inside the 2nd sample
    with open(path, "r+b") as f:
        f.truncate(cut)
    return [0, 2, 3, 4, 5, 6, 7, 8]
