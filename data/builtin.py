"""Built-in, offline datasets made from images that ship inside installed packages.

``digits``: scikit-learn's 1,797 labelled 8x8 handwritten digits, 10 classes ("0" to
"9"), white ink on black, as RGB. Fixed split: the k-th image of each class (in
scikit-learn's order) is held out when k % 5 == 0: 1,433 train and 364 held-out.

``photos``: square crops of 10 colour photographs bundled with scikit-image and
scikit-learn, one class per photograph; crops of 30-70 % of the short side at
seeded random positions: 64 per class for train and 16 (other seeds) held out, so
640 train and 160 held-out.

Each returns ``(class_names, samples)`` with samples ``(source, PIL.Image, class_id)``
in a fixed order; images come at native size and the shard builder crops/resizes.
"""

import numpy as np
from PIL import Image

SPLITS = ("train", "heldout")
DIGITS_HELDOUT_EVERY = 5
PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "motorcycle", "china", "flower")
PHOTO_CROPS = {"train": 64, "heldout": 16}
SIZES = {"digits": {"train": 1433, "heldout": 364}, "photos": {"train": 640, "heldout": 160}}
DEFAULT_SIZE = {"digits": 32, "photos": 64}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def digits(split: str):
    _check_split(split)
    from sklearn.datasets import load_digits

    data = load_digits()
    seen = np.zeros(10, dtype=int)
    samples = []
    for index, (pixels, label) in enumerate(zip(data.images, data.target, strict=True)):
        heldout = seen[label] % DIGITS_HELDOUT_EVERY == 0
        seen[label] += 1
        if heldout != (split == "heldout"):
            continue
        grey = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)
        samples.append((f"sklearn-digits/{index}", Image.fromarray(grey).convert("RGB"),
                        int(label)))
    return [str(d) for d in range(10)], samples


def _photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def photos(split: str):
    _check_split(split)
    samples = []
    for label, name in enumerate(PHOTO_CLASSES):
        photo = Image.fromarray(_photo(name)[..., :3])
        short = min(photo.size)
        rng = np.random.default_rng([label, SPLITS.index(split)])
        for k in range(PHOTO_CROPS[split]):
            side = int(short * rng.uniform(0.3, 0.7))
            left = int(rng.integers(0, photo.size[0] - side + 1))
            top = int(rng.integers(0, photo.size[1] - side + 1))
            crop = photo.crop((left, top, left + side, top + side))
            samples.append((f"{name}/{split}-{k}", crop, label))
    return list(PHOTO_CLASSES), samples


BUILTINS = {"digits": digits, "photos": photos}


def load_builtin(name: str, split: str):
    if name not in BUILTINS:
        raise ValueError(f"builtin dataset must be one of {sorted(BUILTINS)}, got {name!r}")
    return BUILTINS[name](split)
