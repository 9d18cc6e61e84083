"""Unusable weight, checkpoint and config files are one-line errors naming the file, and
command-line checks happen before any work: garbage, empty, truncated, pickles that would
run code, records without their config, and weights that do not fit the model."""

import json
import os
import pickle
import re

import pytest
import torch

from data import config as configlib
from data.files import WeightsError, save_checkpoint, save_weights
from generator import sample, samples
from generator.config import gpt_config
from generator.model import GPT
from tokenizer.build import build_tokenizer, load_tokenizer
from tokenizer.registry import registry_config


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.fixture(scope="module")
def gpt_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt")
    cfg = gpt_config("debug", vocab_sizes=[8], num_tokens=4, num_classes=2)
    save_weights(root / "gpt.safetensors", GPT(cfg).state_dict())
    (root / "gpt.json").write_text(json.dumps({"gpt": configlib.to_dict(cfg)}))
    return root


@pytest.fixture(scope="module")
def tok_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    cfg = registry_config("vq-debug")
    state = build_tokenizer(cfg).state_dict()
    save_weights(root / "tok.safetensors", state)
    (root / "tok.json").write_text(json.dumps(configlib.to_dict(cfg)))
    save_checkpoint(root / "tok.pt", {"config": {"tokenizer": configlib.to_dict(cfg)},
                                      "ema": state})
    return root


def _variant(tmp_path, src, name, data: bytes | None = None, meta: str | None = None):
    """A copy of ``src`` (and its .json) named ``name`` with the bytes or record replaced."""
    path = tmp_path / name
    path.write_bytes(src.read_bytes() if data is None else data)
    json_src = src.with_suffix(".json")
    if json_src.exists() or meta is not None:
        path.with_suffix(".json").write_text(json_src.read_text() if meta is None else meta)
    return path


def _one_line(err: str, pattern: str) -> None:
    err = err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert re.search(pattern, err), err


GARBAGE = bytes(range(256)) * 20


@pytest.mark.parametrize(("data", "meta", "pattern"), [
    (GARBAGE, None, "is not a readable safetensors file"),
    (b"", None, "is not a readable safetensors file"),
    (None, "{not json", r"gpt\.json \(the GPT's record\) is not valid JSON"),
    (None, '{"tokenizer": {}}', "lacks 'gpt'"),
    (None, '{"gpt": {"dim": "wide"}}', "its 'gpt' config is not valid"),
])
def test_gpt_loader(gpt_files, tmp_path, capsys, data, meta, pattern):
    ckpt = _variant(tmp_path, gpt_files / "gpt.safetensors", "gpt.safetensors", data, meta)
    assert sample.main(["--ckpt", str(ckpt), "--classes", "0", "--out",
                        str(tmp_path / "grid.png")]) == 2
    _one_line(capsys.readouterr().err, pattern)


def test_gpt_weights_that_do_not_fit_name_the_tensors(gpt_files, tmp_path):
    from safetensors.torch import load_file

    state = load_file(str(gpt_files / "gpt.safetensors"))
    state["extra.weight"] = torch.zeros(2)
    state.pop("norm.weight")
    state["heads.outs.0.weight"] = torch.zeros(3, 3)
    path = tmp_path / "gpt.safetensors"
    save_weights(path, state)
    path.with_suffix(".json").write_text((gpt_files / "gpt.json").read_text())
    with pytest.raises(WeightsError, match=r"1 missing, e\.g\. norm\.weight; 1 unexpected, "
                                           r"e\.g\. extra\.weight; 1 mis-shaped, e\.g\. "
                                           r"heads\.outs\.0\.weight \(3, 3\) vs \(8, 64\)"):
        samples.load_gpt(path)


@pytest.mark.parametrize(("name", "data", "pattern"), [
    ("tok.pt", GARBAGE, "is not a checkpoint of ours: damaged, or holding objects"),
    ("tok.pt", b"", r"is not a readable checkpoint of ours \(EOFError\)"),
    ("tok.pt", "half", "is not a readable checkpoint of ours"),
    ("tok.pt", "code", "refused"),
    ("tok.pt", "other", "is not a tokenizer training checkpoint"),
    ("tok.safetensors", GARBAGE, "is not a readable safetensors file"),
])
def test_tokenizer_loader(tok_files, tmp_path, monkeypatch, name, data, pattern):
    monkeypatch.chdir(tmp_path)
    src = tok_files / name
    if data == "half":
        data = src.read_bytes()[: src.stat().st_size // 2]
    elif data == "code":
        data = pickle.dumps({"ema": _RunsCode()}, protocol=2)
    elif data == "other":
        data = None
        save_checkpoint(tmp_path / name, {"model": {}})
    path = tmp_path / name
    if data is not None:
        _variant(tmp_path, src, name, data)
    with pytest.raises(WeightsError, match=pattern):
        load_tokenizer(path)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_tokenizer_evaluate_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys, digits):
    from tokenizer import evaluate

    bad = tmp_path / "tok.pt"
    bad.write_bytes(GARBAGE)
    assert evaluate.main(["--ckpt", str(bad), "--data", str(digits)]) == 2
    _one_line(capsys.readouterr().err, r"^tokenizer\.evaluate: .*tok\.pt is not a checkpoint")


def test_vgg16_weights_that_are_not_vgg16(tmp_path):
    from eval.weights import ResolvedWeights, vgg16_state

    for name, data in [("vgg.pth", GARBAGE), ("vgg.ckpt", GARBAGE)]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match="vgg"):
            vgg16_state(ResolvedWeights("vgg16", str(tmp_path / name), "explicit", "x"))
    save_checkpoint(tmp_path / "other.pth", {"features.0.weight": torch.zeros(1)})
    with pytest.raises(WeightsError, match=r"1 'features\.N' convolutions, torchvision's VGG16"):
        vgg16_state(ResolvedWeights("vgg16", str(tmp_path / "other.pth"), "explicit", "x"))


@pytest.mark.parametrize(("out", "pattern"), [
    ("missing/grid.png", r"--out .*missing/grid\.png: the folder .* does not exist"),
    ("grid.xyz", "not an image file name"),
])
def test_sample_out_is_checked_before_loading(gpt_files, tmp_path, capsys, out, pattern):
    garbage = _variant(tmp_path, gpt_files / "gpt.safetensors", "gpt.safetensors", GARBAGE)
    assert sample.main(["--ckpt", str(garbage), "--classes", "0", "--out",
                        str(tmp_path / out)]) == 2  # the --out check comes first
    _one_line(capsys.readouterr().err, pattern)


def test_tokenizer_train_checks_config_and_data_before_building(tmp_path, capsys):
    from launch.train_tokenizer import main

    assert main(["--config", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, r"config file .*nope\.toml does not exist")
    (tmp_path / "bad.toml").write_text("steps = = 3")
    assert main(["--config", str(tmp_path / "bad.toml"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, r"bad\.toml: not valid TOML")
    out = tmp_path / "run"
    assert main(["--set", f"data.shards={tmp_path / 'none'}", "--out", str(out),
                 "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "has no manifest.json")
    assert not out.exists()  # nothing written before the check
