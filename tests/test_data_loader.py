"""Image loader: exactly-once epochs over ranks x workers, resampling, damage skipped."""

import contextlib
import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from data.loader import make_image_loader
from data.split import epoch_ranges, shuffle_buffer
from data.stream import ShardSetError
from tests.data_helpers import damage_index_shards, image_index, make_index_shards


@pytest.mark.parametrize("counts", [[5, 7, 1, 9], [10], [3, 3, 3, 3, 3, 3, 3], [0, 4, 0, 2]])
@pytest.mark.parametrize("num_slots", [1, 3, 4, 8])
@pytest.mark.parametrize("shuffle", [False, True])
def test_epoch_ranges_cover_each_sample_once_and_balance(counts, num_slots, shuffle):
    seen, sizes = Counter(), []
    for slot in range(num_slots):
        pieces = epoch_ranges(counts, slot, num_slots, epoch=3, seed=1, shuffle=shuffle)
        sizes.append(sum(stop - start for _, start, stop in pieces))
        for shard, start, stop in pieces:
            seen.update((shard, i) for i in range(start, stop))
    assert seen == Counter({(s, i): 1 for s, c in enumerate(counts) for i in range(c)})
    assert max(sizes) - min(sizes) <= 1


def test_shuffle_buffer_is_a_permutation():
    out = list(shuffle_buffer(range(100), 10, np.random.default_rng(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))


def _indices(loader):
    return [image_index(img) for images, _ in loader for img in images]


def test_two_ranks_two_workers_epoch_exact(tmp_path):
    folder = make_index_shards(tmp_path, 45, shard_size=7)
    per_rank = []
    for rank in range(2):
        loader = make_image_loader(folder, batch_size=4, image_size=8, train=False,
                                   shuffle=True, rank=rank, world_size=2, num_workers=2)
        loader.dataset.set_epoch(1)
        per_rank.append(_indices(loader))
    assert sorted(per_rank[0] + per_rank[1]) == list(range(45))
    assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1
    # another epoch: the same samples, in another order
    loader = make_image_loader(folder, batch_size=4, image_size=8, train=False, shuffle=True,
                               rank=0, world_size=2, num_workers=2)
    loader.dataset.set_epoch(2)
    again = _indices(loader)
    assert again != per_rank[0]


def test_labels_and_pixels_survive_the_loader(tmp_path):
    folder = make_index_shards(tmp_path, 10, shard_size=4)
    loader = make_image_loader(folder, batch_size=10, image_size=8, train=False)
    images, labels = next(iter(loader))
    assert images.shape == (10, 3, 8, 8) and images.dtype == torch.float32
    assert [image_index(i) for i in images] == list(range(10))
    assert labels.tolist() == [0] * 5 + [1] * 5
    np.testing.assert_allclose(images[:, 2].numpy(), 77 / 127.5 - 1, atol=1e-6)


def test_training_augmentation_crops_and_flips(tmp_path):
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    arr = np.arange(12 * 12 * 3, dtype=np.uint8).reshape(12, 12, 3)
    from PIL import Image
    Image.fromarray(arr).save(src / "x.png")
    from data.build_shards import BuildSettings, build_shards
    build_shards(tmp_path / "out", BuildSettings("x", 12, "center", "png", 4),
                 src=tmp_path / "src", progress=False)
    loader = make_image_loader(tmp_path / "out", batch_size=1, image_size=8, train=True,
                               drop_last=False)
    crops = set()
    for epoch in range(12):
        loader.dataset.set_epoch(epoch)
        (img,), _ = next(iter(loader))
        crop = ((img.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        found = [(t, l, f) for t in range(5) for l in range(5) for f in (0, 1)
                 if np.array_equal(crop, (arr[t:t + 8, l:l + 8][:, ::-1] if f
                                          else arr[t:t + 8, l:l + 8]))]
        assert len(found) == 1
        crops.add(found[0])
    assert len(crops) > 3 and {f for *_, f in crops} == {0, 1}


def test_resampled_mode_streams_endlessly(tmp_path):
    folder = make_index_shards(tmp_path, 12, shard_size=3)
    loader = make_image_loader(folder, batch_size=5, image_size=8, train=False, mode="resampled",
                               shuffle=True)
    it = iter(loader)
    seen = [image_index(img) for _ in range(10) for img in next(it)[0]]
    assert len(seen) == 50 and set(seen) <= set(range(12)) and len(set(seen)) > 6


def test_corrupt_sample_and_truncated_tar_are_skipped_and_counted(tmp_path):
    folder = make_index_shards(tmp_path, 12, shard_size=4)
    survivors = damage_index_shards(folder)
    loader = make_image_loader(folder, batch_size=2, image_size=8, train=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = sorted(_indices(loader))
    assert got == survivors  # 1 corrupt; 9, 10, 11 lost to the cut
    assert loader.dataset.skipped == 4
    assert any("skipping" in str(w.message) for w in caught)


def test_missing_or_foreign_shard_set_is_a_clear_error(tmp_path):
    with pytest.raises(ShardSetError, match=r"no manifest\.json"):
        make_image_loader(tmp_path, batch_size=1, image_size=8)
    (tmp_path / "manifest.json").write_text('{"format": "gtgen-tokens-v1", "shards": []}')
    with pytest.raises(ShardSetError, match="expected 'gtgen-images-v1'"):
        make_image_loader(tmp_path, batch_size=1, image_size=8)


def test_iterating_a_loader_leaves_the_global_rng_alone(tmp_path):
    """Exact resume relies on it: the loader is started again after the RNG is restored."""
    folder = make_index_shards(tmp_path, 8, shard_size=4)
    loader = make_image_loader(folder, batch_size=4, image_size=8, train=True)
    before = torch.get_rng_state()
    list(loader)
    assert torch.equal(torch.get_rng_state(), before)


def test_flips_can_be_turned_off(tmp_path):
    from PIL import Image

    from data.build_shards import BuildSettings, build_shards

    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    arr = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    Image.fromarray(arr).save(src / "x.png")
    build_shards(tmp_path / "out", BuildSettings("x", 8, "center", "png", 4),
                 src=tmp_path / "src", progress=False)
    loader = make_image_loader(tmp_path / "out", batch_size=1, image_size=8, train=True,
                               flip=False, drop_last=False)
    for epoch in range(8):  # with flips, 8 epochs would mirror at least once (p = 1 - 2^-8)
        loader.dataset.set_epoch(epoch)
        (img,), _ = next(iter(loader))
        got = ((img.permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        assert np.array_equal(got, arr)


@pytest.mark.parametrize("order", ["shuffled", "sorted"])
def test_batches_mix_classes_as_a_random_draw_would(tmp_path, order):
    """Class folders are listed in order; one-class shards read in contiguous runs gave
    nearly single-class batches. Shuffled before sharding, a batch holds as many distinct
    classes as a uniform draw without replacement (hypergeometric expectation)."""
    from math import comb

    from data.build_shards import BuildSettings, build_shards
    from tests.data_helpers import make_tree

    classes, per_class, batch = 16, 24, 8
    src = tmp_path / "src"
    make_tree(src, {f"n{c:02d}": per_class for c in range(classes)})
    out = tmp_path / order
    build_shards(out, BuildSettings(str(src), 8, "center", "png", per_class, order), src=src,
                 progress=False)
    distinct = []
    for rank in range(2):
        loader = make_image_loader(out, batch_size=batch, image_size=8, rank=rank,
                                   world_size=2, shuffle_buffer_size=per_class)
        distinct += [len(set(labels.tolist())) for _, labels in loader]
    total = classes * per_class
    expected = classes * (1 - comb(total - per_class, batch) / comb(total, batch))  # 6.50
    mean = sum(distinct) / len(distinct)
    if order == "shuffled":
        assert mean > 0.9 * expected, (mean, expected)
    else:  # the defect this guards against, measured the same way
        assert mean < 0.5 * expected, (mean, expected)


def _counting(decode, calls: list):
    def wrapped(sample, rng):
        calls.append(sample["__key__"])
        return decode(sample, rng)
    return wrapped


@pytest.mark.parametrize("num_workers", [0, 2])
def test_starting_at_a_batch_equals_the_tail_of_the_full_epoch(tmp_path, num_workers):
    """Resume inside an epoch: the same batches (images, random crops and flips) as an
    uninterrupted epoch from batch B on, without decoding the first B (no workers: counted).
    """
    folder = make_index_shards(tmp_path, 40, shard_size=6)
    loader = make_image_loader(folder, batch_size=3, image_size=6, train=True, rank=1,
                               world_size=2, num_workers=num_workers, shuffle_buffer_size=5)
    loader.dataset.set_epoch(3)
    full = list(loader)
    started = 0
    for first in range(1, len(full)):
        loader.dataset.set_epoch(3)
        if not loader.dataset.start_at_batch(first, 3, num_workers):
            assert first > len(full) - 2 * max(1, num_workers)  # only the last rounds
            continue
        started += 1
        decoded = []
        if num_workers == 0:
            loader.dataset.decode = _counting(loader.dataset.decode, decoded)
        tail = list(loader)
        loader.dataset.__dict__.pop("decode", None)
        assert len(tail) == len(full) - first
        for (a, la), (b, lb) in zip(tail, full[first:], strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
        if num_workers == 0:
            assert len(decoded) == 20 - 3 * first  # this rank's 20, less the dropped
    assert started >= len(full) - 2 * max(1, num_workers)
    loader.dataset.set_epoch(3)  # clears the start: the whole epoch again
    assert len(list(loader)) == len(full)


def _sequential_samples(path) -> list[dict]:
    """Reference reader: tarfile member by member, grouped by key, up to the damage."""
    import tarfile

    samples, current = [], None
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if current is not None and current["__key__"] != key:
                    samples.append(current)
                    current = None
                current = current or {"__key__": key}
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError):
        return samples  # the sample in progress is dropped
    return samples + ([current] if current else [])


def test_tar_index_reads_what_a_sequential_reader_reads_at_every_cut(tmp_path):
    from data.tario import TarIndex, TarReadError, iter_tar_samples

    folder = make_index_shards(tmp_path, 6, shard_size=6)
    whole = (folder / "shard-000000.tar").read_bytes()
    cut = tmp_path / "cut.tar"
    for size in range(0, len(whole) + 1, 256):
        cut.write_bytes(whole[:size])
        expected = _sequential_samples(cut)
        index = TarIndex(cut)
        got = [index.read(i) for i in range(len(index))]
        index.close()
        # a cut at a member boundary reads as a clean end (the manifest count tells)
        assert got == expected, size
        streamed = []
        with pytest.raises(TarReadError) if index.damage else contextlib.nullcontext():
            streamed.extend(iter_tar_samples(cut))
        assert streamed == expected, size
    assert len(expected) == 6 and index.damage is None
    gone = TarIndex(tmp_path / "missing.tar")  # a shard deleted under a reader: damage
    assert len(gone) == 0 and "missing.tar" in gone.damage
    with pytest.raises(TarReadError, match=r"missing\.tar"):
        list(iter_tar_samples(tmp_path / "missing.tar"))
