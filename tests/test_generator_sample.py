"""Sampling CLIs on a real tiny chain: tokenizer -> token shards -> GPT -> images."""

import json

import numpy as np
import pytest
import torch

from data.build_shards import BuildSettings, build_shards
from data.tokens import finalize_token_shards, write_token_shards
from generator import sample, sample_fid, samples
from launch.run_config import resolve_gpt_config as gpt_config
from launch.run_config import resolve_tokenizer_config as tok_config
from launch.train_gpt import Trainer as GPTTrainer
from launch.train_tokenizer import Trainer as TokTrainer
from launch.train_tokenizer import export_weights
from tokenizer.build import load_tokenizer

pytestmark = pytest.mark.slow  # end-to-end: tens of seconds; -m 'not slow' skips


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("chain")
    images = root / "images"
    build_shards(images, BuildSettings("builtin:digits/heldout", 32, "center", "png", 200),
                 builtin_name="digits", split="heldout", progress=False)
    tok = TokTrainer(tok_config(None, [f"data.shards={images}", "loss.lpips=0", "steps=2",
                                       "data.flip=false",
                                       f"out={root / 'tok'}"], "gaussian-debug"), progress=False)
    tok.run()
    export_weights(root / "tok" / "checkpoints" / "last.pt", root / "tok.safetensors")
    model, info = load_tokenizer(root / "tok.safetensors")
    write_token_shards(model.encode, images, root / "tokens", image_size=32,
                       vocab_sizes=model.vocab_sizes, views="flip", progress=False,
                       tokenizer={"path": info["path"], "sha1": info["sha1"]},
                       layout=model.token_layout.to_dict())
    finalize_token_shards(images, root / "tokens")
    gpt = GPTTrainer(gpt_config(None, [f"data.tokens={root / 'tokens'}", "data.batch_size=8",
                                       "steps=2", f"out={root / 'gpt'}"]), progress=False)
    gpt.run()
    return root, gpt.export()


def test_grid_sampling_is_seeded_and_labelled(chain, tmp_path):
    _, ckpt = chain
    args = ["--ckpt", str(ckpt), "--classes", "3,7", "--per-class", "3", "--seed", "1"]
    assert sample.main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert sample.main([*args, "--out", str(tmp_path / "b.png")]) == 0
    from PIL import Image
    a, b = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert np.array_equal(a, b) and a.shape[0] == 2 * (32 + 2)  # two rows of 32 px tiles
    model, meta = samples.load_gpt(ckpt)
    tok = samples.load_matching_tokenizer(meta)
    labels = torch.tensor([3, 3, 7])
    x1 = samples.sample_images(model, tok, labels, seed=5, cfg_scale=2.0)
    x2 = samples.sample_images(model, tok, labels, seed=5, cfg_scale=2.0)
    assert torch.equal(x1, x2) and x1.dtype == torch.uint8 and x1.shape == (3, 32, 32, 3)


@pytest.mark.parametrize(("extra", "message"), [
    (["--classes", "12"], r"class id 12 is outside \[0, 10\)"),
    (["--classes", "goldfish"], "unknown class 'goldfish'; known names: 0, 1"),
    (["--classes", "1", "--cfg", "-1"], "--cfg must be >= 0"),
    (["--classes", "1", "--top-k", "100000"], r"--top-k must be in \[0, 1024\]"),  # positions
])
def test_bad_requests_get_one_line(chain, tmp_path, capsys, extra, message):
    _, ckpt = chain
    assert sample.main(["--ckpt", str(ckpt), *extra, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and __import__("re").search(message, err)


def test_a_different_tokenizer_is_refused(chain, tmp_path):
    root, ckpt = chain
    other = load_tokenizer(root / "tok.safetensors")[0]
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(1.0)
    from safetensors.torch import save_file
    save_file(other.state_dict(), str(tmp_path / "other.safetensors"))
    (tmp_path / "other.json").write_text((root / "tok.json").read_text())
    _, meta = samples.load_gpt(ckpt)
    with pytest.raises(samples.SampleError, match="is not the one the GPT was trained on"):
        samples.load_matching_tokenizer(meta, tmp_path / "other.safetensors")


def test_fid_samples_are_balanced_resumable_and_readable(chain, tmp_path, monkeypatch,
                                                        capsys):
    from eval.sets import load_npz

    _, ckpt = chain
    out = tmp_path / "s.npz"
    args = ["--ckpt", str(ckpt), "--num", "10", "--batch-size", "4", "--out", str(out),
            "--quiet"]
    with monkeypatch.context() as m:  # keep the parts, as a run killed while packing would
        m.setattr(sample_fid.shutil, "rmtree", lambda path: None)
        assert sample_fid.main(args) == 0
    data = load_npz(out)
    assert data["arr_0"].shape == (10, 32, 32, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].tolist() == [i % 10 for i in range(10)]
    parts = tmp_path / "s.npz.parts"
    first = data["arr_0"].copy()
    out.unlink()
    (parts / "chunk-000002.npz").unlink()  # an interrupted run
    calls = []
    real = sample_fid.sample_images
    monkeypatch.setattr(sample_fid, "sample_images", lambda *a, **k: calls.append(1) or
                        real(*a, **k))
    assert sample_fid.main(args) == 0
    assert len(calls) == 1 and not parts.exists()  # only the missing chunk; parts removed
    assert np.array_equal(load_npz(out)["arr_0"], first)  # the redone chunk is identical
    # finished: the same settings find it done; others are refused, not mixed in
    stamp = out.stat().st_mtime_ns
    assert sample_fid.main(args) == 0 and out.stat().st_mtime_ns == stamp
    capsys.readouterr()
    for extra in (["--cfg", "5"], ["--seed", "9"], ["--batch-size", "5"], ["--guide", "code"]):
        assert sample_fid.main(args + extra) == 2
        assert "made with other settings" in capsys.readouterr().err
    assert np.array_equal(load_npz(out)["arr_0"], first)
    assert json.loads(ckpt.with_suffix(".json").read_text())["tokenizer"]["sha1"]
