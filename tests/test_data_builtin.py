"""The built-in offline datasets have the documented sizes, labels and pixels."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from data import builtin


def test_digits_sizes_labels_and_pixels():
    data = load_digits()
    names, train = builtin.digits("train")
    _, heldout = builtin.digits("heldout")
    assert names == [str(d) for d in range(10)]
    assert (len(train), len(heldout)) == (1433, 364) == (builtin.SIZES["digits"]["train"],
                                                         builtin.SIZES["digits"]["heldout"])
    sources = {s for s, _, _ in train} | {s for s, _, _ in heldout}
    assert len(sources) == 1797  # disjoint and complete
    for source, image, label in train[:50] + heldout[:50]:
        index = int(source.rsplit("/", 1)[1])
        assert label == data.target[index]
        arr = np.asarray(image)
        assert arr.shape == (8, 8, 3)
        np.testing.assert_array_equal(arr[..., 0], np.round(data.images[index] * 255 / 16))
    # the first of every class is held out
    first = {int(t): i for i, t in reversed(list(enumerate(data.target)))}
    held = {int(s.rsplit("/", 1)[1]) for s, _, _ in heldout}
    assert set(first.values()) <= held


def test_photos_sizes_and_classes():
    names, train = builtin.photos("train")
    _, heldout = builtin.photos("heldout")
    assert names == list(builtin.PHOTO_CLASSES) and len(names) == 10
    assert (len(train), len(heldout)) == (640, 160)
    assert np.bincount([lab for _, _, lab in train]).tolist() == [64] * 10
    for _, image, _ in train[::37]:
        assert image.mode == "RGB" and image.size[0] == image.size[1] >= 90
    # deterministic
    again = builtin.photos("heldout")[1]
    assert all(np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
               for a, b in zip(heldout, again, strict=True))


def test_unknown_builtin_or_split():
    with pytest.raises(ValueError, match="builtin dataset must be one of"):
        builtin.load_builtin("mnist", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        builtin.digits("test")
