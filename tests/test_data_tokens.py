"""Token shards: views, round trip, dtype, per-epoch view choice, resume and refusals."""

import json

import numpy as np
import pytest
import torch

from data.stream import ShardSetError
from data.tokens import (
    TokenShards,
    finalize_token_shards,
    make_token_loader,
    make_views,
    write_token_shards,
)
from tests.data_helpers import damage_index_shards, index_image, make_index_shards

N_TOKENS, VOCABS = 3, [70000, 16]


def fake_encode(images):
    """A deterministic stand-in tokenizer: [M, 3, 8, 8] -> [M, 3, 2] from the pixels."""
    idx = ((images[:, 0, 0, 0] + 1) * 127.5).round().long() + 256 * (
        (images[:, 1, 0, 0] + 1) * 127.5).round().long()
    mirrored = (images[:, 0, 0, 0] != images[:, 0, 0, -1]).long()
    pos = torch.arange(N_TOKENS)
    return torch.stack([idx[:, None] * 10 + pos, (mirrored[:, None] + pos) % 16], dim=-1)


def test_tencrop_views_are_five_crops_and_their_mirrors():
    rng = np.random.default_rng(0)
    from PIL import Image
    image = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    views = make_views(image, 10, "tencrop")
    assert views.shape == (10, 3, 10, 10) and views.dtype == torch.uint8
    # views 0-4: corners tl, tr, bl, br and centre; 5-9: the same crops of the mirrored
    # image, so the mirrored tl is the original tr mirrored, and so on
    # (the centre crops pair up only when the size difference is even: 11 - 10 is odd)
    assert torch.equal(views[5:9], views[[1, 0, 3, 2]].flip(-1))
    big = np.array(image.resize((16, 11), resample=3))[:, 2:13]  # 1.1 x 10 = 11, centred
    assert torch.equal(views[0], torch.from_numpy(big[:10, :10]).permute(2, 0, 1))
    assert make_views(image, 10, "flip").shape == (2, 3, 10, 10)
    with pytest.raises(ValueError, match="views must be one of"):
        make_views(image, 10, "fivecrop")


def _write(tmp_path, image_dir, out="tokens", **kw):
    args = dict(image_size=8, vocab_sizes=VOCABS, tokenizer={"name": "fake", "sha": "abc"},
                views="flip", batch_size=3, progress=False)
    args.update(kw)
    return write_token_shards(fake_encode, image_dir, tmp_path / out, **args)


def test_round_trip_and_dtype(tmp_path):
    images = make_index_shards(tmp_path, 10, shard_size=4)
    assert _write(tmp_path, images) == [f"shard-00000{k}.tar" for k in range(3)]
    manifest = finalize_token_shards(images, tmp_path / "tokens")
    assert (manifest["total"], manifest["num_views"], manifest["num_tokens"],
            manifest["tuple_size"], manifest["dtype"]) == (10, 2, 3, 2, "int32")
    ds = TokenShards(tmp_path / "tokens", train=False, shuffle=False)
    items = list(ds)
    for i, (tokens, label) in enumerate(items):
        assert tokens.dtype == torch.int64 and tokens.shape == (3, 2)
        expected = fake_encode(make_views(index_image(i), 8, "flip").float() / 127.5 - 1)[0]
        assert torch.equal(tokens, expected) and label == (0 if i < 5 else 1)


def test_uint16_when_vocabularies_fit(tmp_path):
    images = make_index_shards(tmp_path, 4, shard_size=4)
    _write(tmp_path, images, vocab_sizes=[65536, 16])
    assert finalize_token_shards(images, tmp_path / "tokens")["dtype"] == "uint16"


def view_encode(images):
    """Tokens that name the view: rows come as [image, view] flattened, 2 views each."""
    view = torch.arange(images.shape[0]) % 2
    return view[:, None, None].expand(-1, N_TOKENS, 2)


def test_training_draws_one_view_per_sample_per_epoch(tmp_path):
    images = make_index_shards(tmp_path, 12, shard_size=4)
    write_token_shards(view_encode, images, tmp_path / "tokens", image_size=8,
                       vocab_sizes=VOCABS, tokenizer={}, views="flip", progress=False)
    finalize_token_shards(images, tmp_path / "tokens")
    drawn = []
    for epoch in range(4):
        loader = make_token_loader(tmp_path / "tokens", batch_size=4, train=True)
        loader.dataset.set_epoch(epoch)
        batches = list(loader)
        assert sum(len(t) for t, _ in batches) == 12
        drawn += [int(t[0, 0]) for toks, _ in batches for t in toks]
    assert set(drawn) == {0, 1}  # both views are drawn
    assert 12 <= sum(drawn) <= 36  # about half of the 48 draws each
    evaluation = make_token_loader(tmp_path / "tokens", batch_size=4, train=False)
    assert all(int(t.max()) == 0 for toks, _ in evaluation for t in toks)  # always view 0


def test_ranks_split_shards_and_resume(tmp_path):
    images = make_index_shards(tmp_path, 10, shard_size=4)
    assert _write(tmp_path, images, rank=1, world_size=2) == ["shard-000001.tar"]
    with pytest.raises(ShardSetError, match=r"lacks the token shard of shard-000000\.tar"):
        finalize_token_shards(images, tmp_path / "tokens")
    assert _write(tmp_path, images, rank=0, world_size=2) == ["shard-000000.tar",
                                                              "shard-000002.tar"]
    assert _write(tmp_path, images) == []  # everything finished: nothing redone
    assert finalize_token_shards(images, tmp_path / "tokens")["total"] == 10


def test_other_tokenizer_into_same_folder_is_refused(tmp_path):
    images = make_index_shards(tmp_path, 4, shard_size=4)
    _write(tmp_path, images)
    with pytest.raises(ShardSetError, match="other settings"):
        _write(tmp_path, images, tokenizer={"name": "fake", "sha": "def"})


def test_bad_encoder_output_is_a_clear_error(tmp_path):
    images = make_index_shards(tmp_path, 4, shard_size=4)
    with pytest.raises(ValueError, match=r"encode must return \[M, N, K\] for M=6"):
        write_token_shards(lambda x: x[:, 0, 0], images, tmp_path / "t", image_size=8,
                           vocab_sizes=VOCABS, tokenizer={}, views="flip", batch_size=3,
                           progress=False)
    with pytest.raises(ValueError, match="outside the vocabularies"):
        _write(tmp_path, images, out="t2", vocab_sizes=[5, 16])
    assert json.loads((tmp_path / "t2" / "settings.json").read_text())["vocab_sizes"] == [5, 16]


def test_damaged_image_shards_are_skipped_and_counted(tmp_path, capsys):
    images = make_index_shards(tmp_path, 12, shard_size=4)
    survivors = damage_index_shards(images)
    _write(tmp_path, images)
    manifest = finalize_token_shards(images, tmp_path / "tokens")
    assert manifest["total"] == len(survivors) and manifest["skipped"] == 4
    assert "damaged shard" in capsys.readouterr().err
    labels = [label for _, label in TokenShards(tmp_path / "tokens", train=False, shuffle=False)]
    assert len(labels) == len(survivors)
