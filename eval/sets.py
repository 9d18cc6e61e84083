"""Image sets for evaluation: sample .npz files, image folders, shard folders, ADM batches.

A sample ``.npz`` holds ``arr_0``: uint8 [N, H, W, 3] (what ``generator.sample_fid``
writes and the ADM evaluator reads). An ADM reference batch additionally holds the
statistics ``mu``, ``sigma`` (pool) and ``mu_s``, ``sigma_s`` (spatial), which are
used as stored. A folder of PNG/JPEG files or an image shard folder (``data/``) works
as either side.

``open_set`` checks a set up front (kind, shape, dtype, count) without reading its
images; ``ImageSet.batches`` then streams them, so a 50k x 256 px set never sits in
memory whole (the .npz array is read from its zip member batch by batch, as the ADM
evaluator does). Damaged image shards are skipped and counted (``ImageSet.skipped``);
an unreadable image in a folder is an error naming the file, because silently
evaluating fewer images would change the metric.
"""

import hashlib
import json
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.build_shards import FORMAT_TAG
from data.images import decode_image
from data.stream import ShardSetError, read_manifest
from data.tario import batched, iter_shard_tolerant

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class ImageSetError(ValueError):
    """A sample or reference set is missing, unreadable or of the wrong shape."""


def _check_header(dtype, shape, where: str) -> None:
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ImageSetError(f"{where}: expected uint8 images [N, H, W, 3], got {dtype} "
                            f"array of shape {list(shape)}")
    if shape[0] == 0:
        raise ImageSetError(f"{where}: holds no images")


def _check_images(arr: np.ndarray, where: str) -> np.ndarray:
    _check_header(arr.dtype, arr.shape, where)
    return arr


@dataclass
class ImageSet:
    """A set's images (streamed in batches) and any statistics stored with them."""

    path: Path
    kind: str  # "npz", "folder", "shards" or "statistics"
    count: int  # images the set declares (0: statistics only)
    stats: dict = field(default_factory=dict)
    skipped: int = 0  # images lost to damaged shards, counted while streaming
    settings: dict = field(default_factory=dict)  # how generator.sample_fid made them

    @property
    def has_images(self) -> bool:
        return self.count > 0

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """uint8 [<= batch_size, H, W, 3] batches in a fixed order."""
        if not self.has_images:
            raise ImageSetError(f"{self.path}: holds statistics only, no images")
        reader = {"npz": _npz_batches, "folder": _folder_batches,
                  "shards": _shard_batches}[self.kind]
        yield from reader(self, batch_size)

    def images(self) -> np.ndarray:
        """Every image at once (small sets only)."""
        return np.concatenate(list(self.batches(256)))


def _npz_keys(path: Path) -> list[str]:
    if not zipfile.is_zipfile(path):
        raise ImageSetError(f"{path}: not a .npz file, or a truncated one (a .npz is a zip "
                            "archive of .npy arrays, as np.savez writes it)")
    try:
        with zipfile.ZipFile(path) as z:
            return [n[:-4] for n in z.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as err:
        raise ImageSetError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") \
            from err


def _npy_header(f, where: str):
    try:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"unsupported .npy version {version}")
        return read(f)
    except ValueError as err:
        raise ImageSetError(f"{where}: arr_0 is not a readable .npy array ({err})") from err


def _open_npz(path: Path) -> ImageSet:
    keys = _npz_keys(path)
    if "arr_0" not in keys and not all(k in keys for k in ("mu", "sigma")):
        raise ImageSetError(f"{path}: has neither 'arr_0' (images) nor 'mu'/'sigma' "
                            f"(statistics); keys: {sorted(keys)}")
    try:
        with np.load(path, allow_pickle=False) as f:
            stats = {k: f[k] for k in STAT_KEYS if k in keys}
            settings = _settings(f["settings"]) if "settings" in keys else {}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ImageSetError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") \
            from err
    if "arr_0" not in keys:
        return ImageSet(path, "statistics", 0, stats)
    with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
        shape, fortran, dtype = _npy_header(f, str(path))
    _check_header(dtype, shape, str(path))
    if fortran:
        raise ImageSetError(f"{path}: arr_0 is stored in Fortran order; save it C-contiguous")
    return ImageSet(path, "npz", int(shape[0]), stats, settings=settings)


def _settings(value: np.ndarray) -> dict:
    """The sampling settings generator.sample_fid stores (a JSON string); {} if unreadable."""
    try:
        out = json.loads(str(value))
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _npz_batches(s: ImageSet, batch_size: int) -> Iterator[np.ndarray]:
    with zipfile.ZipFile(s.path) as z, z.open("arr_0.npy") as f:
        shape, _, dtype = _npy_header(f, str(s.path))
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            data = f.read(n * row)
            if len(data) != n * row:
                raise ImageSetError(f"{s.path}: arr_0 ends after {start + len(data) // row} "
                                    f"of {shape[0]} images (truncated file)")
            yield np.frombuffer(bytearray(data), dtype).reshape(n, *shape[1:])


def _folder_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageSetError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _decode_file(p: Path) -> np.ndarray:
    try:
        return np.asarray(decode_image(p.read_bytes()))
    except Exception as err:  # PIL raises several types for damaged files
        raise ImageSetError(f"{p}: not a readable image ({type(err).__name__}: {err})") \
            from err


def _folder_batches(s: ImageSet, batch_size: int) -> Iterator[np.ndarray]:
    files, first = _folder_files(s.path), None
    for start in range(0, len(files), batch_size):
        batch = []
        for p in files[start:start + batch_size]:
            image = _decode_file(p)
            first = image.shape if first is None else first
            if image.shape != first:
                raise ImageSetError(f"{p}: {image.shape[1]}x{image.shape[0]} where the set's "
                                    f"first image is {first[1]}x{first[0]}; resize the "
                                    "folder's images to one size first")
            batch.append(image)
        yield np.stack(batch)


def _shard_samples(s: ImageSet) -> Iterator[tuple[np.ndarray, int]]:

    manifest = read_manifest(s.path, FORMAT_TAG)
    fmt = manifest["settings"]["format"]

    def lost(n, reason):
        s.skipped += n
        print(f"warning: {s.path}: skipping {n} image(s): {reason}", file=sys.stderr)

    def decode(sample):
        return np.asarray(decode_image(sample[fmt])), int(sample["cls"])

    for shard in manifest["shards"]:
        yield from iter_shard_tolerant(s.path / shard["name"], shard.get("count"), lost, decode)


def _shard_batches(s: ImageSet, batch_size: int) -> Iterator[np.ndarray]:

    for batch in batched((image for image, _ in _shard_samples(s)), batch_size):
        yield np.stack(batch)


def open_set(path) -> ImageSet:
    """Check a set and say what it holds, without reading its images."""
    path = Path(path)
    if not path.exists():
        raise ImageSetError(f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ImageSetError(f"{path}: expected a .npz file or a folder")
        return _open_npz(path)
    if (path / "manifest.json").exists():

        try:
            manifest = read_manifest(path, FORMAT_TAG)
        except (ShardSetError, ValueError) as err:
            raise ImageSetError(str(err)) from err
        count = sum(int(sh.get("count", 0)) for sh in manifest["shards"])
        if count == 0:
            raise ImageSetError(f"{path}: holds no images")
        return ImageSet(path, "shards", count)
    return ImageSet(path, "folder", len(_folder_files(path)))


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of a sample or reference .npz, arr_0 checked: small files only."""
    path = Path(path)
    open_set(path)  # checks the file, arr_0's shape and dtype first
    keys = _npz_keys(path)
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in keys}


def load_shard_images(path) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, 3]) and class ids [N] of an image shard folder."""
    s = open_set(path)
    if s.kind != "shards":
        raise ImageSetError(f"{path}: not an image shard folder")
    pairs = list(_shard_samples(s))
    if not pairs:
        raise ImageSetError(f"{path}: holds no readable images")
    return (_check_images(np.stack([p[0] for p in pairs]), str(path)),
            np.asarray([p[1] for p in pairs]))


def fingerprint(path) -> str:
    """Identifies a set's content cheaply: path, size and mtime of its files."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(json.dumps([str(f), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:16]
