"""Image sets for evaluation: sample .npz files, image folders, shard folders, ADM batches.

A sample ``.npz`` holds ``arr_0``: uint8 [N, H, W, 3] (what ``generator.sample_fid``
writes and the ADM evaluator reads). An ADM reference batch additionally holds the
statistics ``mu``, ``sigma`` (pool) and ``mu_s``, ``sigma_s`` (spatial), which are
used as stored. A folder of PNG/JPEG files or an image shard folder (``data/``) works
as either side.
"""

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from data.images import decode_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")


class ImageSetError(ValueError):
    """A sample or reference set is missing, unreadable or of the wrong shape."""


def _check_images(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ImageSetError(f"{where}: expected uint8 images [N, H, W, 3], got {arr.dtype} "
                            f"array of shape {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise ImageSetError(f"{where}: holds no images")
    return arr


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ImageSetError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from err
    if "arr_0" not in data and not all(k in data for k in ("mu", "sigma")):
        raise ImageSetError(f"{path}: has neither 'arr_0' (images) nor 'mu'/'sigma' "
                            f"(statistics); keys: {sorted(data)}")
    if "arr_0" in data:
        _check_images(data["arr_0"], str(path))
    return data


def _folder_images(path: Path) -> np.ndarray:
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageSetError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    images = [np.asarray(decode_image(p.read_bytes())) for p in files]
    if len({im.shape for im in images}) != 1:
        raise ImageSetError(f"{path}: images differ in size; resize them to one size first")
    return np.stack(images)


def load_shard_images(path) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8 [N, H, W, 3]) and class ids [N] of an image shard folder."""
    from data.build_shards import FORMAT_TAG
    from data.stream import read_manifest
    from data.tario import iter_tar_samples

    path = Path(path)
    manifest = read_manifest(path, FORMAT_TAG)
    fmt = manifest["settings"]["format"]
    images, labels = [], []
    for shard in manifest["shards"]:
        for s in iter_tar_samples(path / shard["name"]):
            images.append(np.asarray(decode_image(s[fmt])))
            labels.append(int(s["cls"]))
    return _check_images(np.stack(images), str(path)), np.asarray(labels)


def load_set(path) -> dict[str, np.ndarray]:
    """{"arr_0": images} and, for ADM reference batches, the stored statistics."""
    path = Path(path)
    if not path.exists():
        raise ImageSetError(f"{path} does not exist")
    if path.is_file():
        if path.suffix != ".npz":
            raise ImageSetError(f"{path}: expected a .npz file or a folder")
        return load_npz(path)
    if (path / "manifest.json").exists():
        return {"arr_0": load_shard_images(path)[0]}
    return {"arr_0": _folder_images(path)}


def fingerprint(path) -> str:
    """Identifies a set's content cheaply: path, size and mtime of its files."""
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1(str(path).encode())
    for f in files:
        st = f.stat()
        h.update(json.dumps([str(f), st.st_size, st.st_mtime_ns]).encode())
    return h.hexdigest()[:16]
