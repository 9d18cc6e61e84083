"""Image crops and codecs shared by the shard builder and the loaders."""

import io

import numpy as np
from PIL import Image

FORMATS = ("png", "jpg")


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM evaluation crop: halve with a box filter while the short side is >= 2*size,
    resize the short side to ``size`` with bicubic, then crop the centre square."""
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (no crop): storage for random-crop training."""
    scale = size / min(image.size)
    if scale == 1:
        return image
    return image.resize(tuple(max(size, round(s * scale)) for s in image.size),
                        resample=Image.BICUBIC)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    if fmt not in FORMATS:
        raise ValueError(f"image format must be one of {FORMATS}, got {fmt!r}")
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=False, compress_level=6)
    else:
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode fully (truncated data raises here, not later) and convert to RGB."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.convert("RGB")


def load_image_file(path) -> Image.Image:
    with open(path, "rb") as f:
        return decode_image(f.read())


def random_crop_flip(image: Image.Image, size: int, rng: np.random.Generator,
                     flip: bool = True) -> np.ndarray:
    """A random ``size`` x ``size`` crop (after resizing the short side to ``size`` if
    smaller) and a horizontal flip with probability 1/2; returns uint8 [H, W, 3]."""
    if min(image.size) < size:
        image = resize_short_side(image, size)
    arr = np.array(image)  # a writable copy: torch.from_numpy needs one
    top = int(rng.integers(0, arr.shape[0] - size + 1))
    left = int(rng.integers(0, arr.shape[1] - size + 1))
    arr = arr[top:top + size, left:left + size]
    if flip and rng.random() < 0.5:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)


def center_crop_array(image: Image.Image, size: int) -> np.ndarray:
    """Evaluation view: the centre square of an image already stored at or above ``size``."""
    if min(image.size) != size:
        image = resize_short_side(image, size)
    arr = np.array(image)  # a writable copy: torch.from_numpy needs one
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top:top + size, left:left + size])
