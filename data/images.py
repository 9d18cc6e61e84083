"""Image crops and codecs shared by the shard builder and the loaders."""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("png", "jpg")


def center_crop_adm(image: Image.Image, size: int) -> Image.Image:
    """ADM evaluation crop: halve with a box filter while the short side is >= 2*size,
    resize the short side to ``size`` with bicubic, then crop the centre square."""
    check_aspect(image)
    while min(image.size) >= 2 * size:
        image = image.resize(tuple(s // 2 for s in image.size), resample=Image.BOX)
    scale = size / min(image.size)
    image = image.resize(tuple(round(s * scale) for s in image.size), resample=Image.BICUBIC)
    left, top = (image.size[0] - size) // 2, (image.size[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size`` (no crop): storage for random-crop training."""
    check_aspect(image)
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


MAX_ASPECT = 50  # long side / short side; beyond it an image is refused, not resized
WHITE = (255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. 16- and 32-bit greyscale is scaled from its 16-bit range (Pillow's own
    conversion clips it: mid-grey came out white); transparent pixels are composited on
    white (dropping alpha would show whatever colour they hide)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        grey = np.asarray(image).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*WHITE, 255)),
                                     rgba).convert("RGB")
    return image.convert("RGB")


def check_aspect(image: Image.Image) -> None:
    """ValueError for a strip so thin that resizing its short side would take gigabytes
    (a 12 KB 4000x1 PNG became a 1024000x256 image); no photograph is near the limit."""
    long, short = max(image.size), max(1, min(image.size))
    if long > MAX_ASPECT * short:
        raise ValueError(f"aspect ratio {image.size[0]}x{image.size[1]} is beyond "
                         f"{MAX_ASPECT}:1")


def decode_image(data: bytes) -> Image.Image:
    """Decode fully (truncated data raises here, not later) and convert to 8-bit RGB.
    Errors name the problem only (no object addresses), so skip lists are deterministic."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise UnidentifiedImageError("not an image format Pillow can read") from None
    return to_rgb(image)


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
