"""Importing LlamaGen checkpoints: layouts, refusals, safety, and the imported pair's
function against a float64 re-implementation of LlamaGen's own (tests/llamagen_reference)."""

import argparse
import json

import numpy as np
import pytest
import torch

import generator.model as gm
from generator.config import SIZES
from generator.model import GPT, count_parameters
from generator.samples import load_gpt
from launch import import_llamagen
from launch.llamagen_keys import gpt_key, infer_gpt, infer_vq, rename, vq_key
from launch.llamagen_keys import vq_state as our_vq_state
from tests import llamagen_reference as ref
from tokenizer.build import build_tokenizer, load_tokenizer
from tokenizer.registry import registry_config

VQ = dict(ch=32, ch_mult=(1, 2), res_blocks=1, z=32, codes=64, dim=4)  # 16 px -> 8x8
GPT_ = dict(layers=2, dim=64, vocab=64, classes=10)
HEADS = 4  # not a LlamaGen size: passed as --heads
PUBLISHED_PARAMS = {"B": 110_888_448, "L": 342_910_976, "XL": 774_699_520,
                    "XXL": 1_410_972_672, "3B": 3_096_659_200}


@pytest.fixture(scope="module")
def states():
    return ref.vq_state(**VQ, seed=1), ref.gpt_state(**GPT_, seed=2)


def _args():
    return argparse.Namespace(image_size=16, downsample_size=2, gpt_model="GPT-tiny",
                              codebook_l2_norm=True, lr=1e-4)


def _write(tmp_path, states, layout="ddp", name="gpt.pt"):
    vq, gpt = states
    vq_path, gpt_path = tmp_path / "vq.pt", tmp_path / name
    torch.save({"model": vq, "steps": 3, "args": _args()}, vq_path)
    if layout == "ddp":
        obj = {"model": gpt, "optimizer": {"state": {}}, "steps": 10, "args": _args()}
    elif layout == "deepspeed":
        obj = {"module": {"module." + k: v for k, v in gpt.items()}, "args": _args()}
    elif layout == "state_dict":
        obj = {"state_dict": gpt, "args": _args()}
    else:  # FSDP: the bare dict, with the rotary table some versions save
        obj = {**gpt, "freqs_cis": ref.freqs_cis_2d(8, GPT_["dim"] // HEADS).float()}
    torch.save(obj, gpt_path)
    return vq_path, gpt_path


def _import(tmp_path, vq_path, gpt_path, *extra):
    out = tmp_path / "out"
    argv = ["--vq", str(vq_path), "--out", str(out), "--heads", str(HEADS), *extra]
    if gpt_path is not None:
        argv += ["--gpt", str(gpt_path)]
    return import_llamagen.main(argv), out


@pytest.mark.parametrize("layout", ["ddp", "deepspeed", "state_dict", "fsdp"])
def test_every_layout_imports_to_the_same_weights(tmp_path, states, layout, capsys):
    from safetensors.torch import load_file

    rc, out = _import(tmp_path, *_write(tmp_path, states, layout))
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "llamagen-import.json").read_text())
    assert record["gpt"]["num_tokens"] == 64 and record["gpt"]["num_classes"] == 10
    assert record["gpt"]["dropped"] == (["freqs_cis"] if layout == "fsdp" else [])
    weights = load_file(str(out / "gpt.safetensors"))
    _, gpt = states
    assert len(weights) == len(gpt)  # one to one: every key consumed
    for theirs, value in gpt.items():
        assert torch.equal(weights[gpt_key(theirs)], value)


def test_imported_gpt_is_llamagens_function(tmp_path, states):
    rc, out = _import(tmp_path, *_write(tmp_path, states))
    assert rc == 0
    model, meta = load_gpt(out / "gpt.safetensors")
    assert meta["gpt"]["class_rope"] == "zero"
    model = model.double()
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([3, 10, 7])  # 10: the null class
    tokens = torch.randint(0, GPT_["vocab"], (3, 64), generator=g)
    want = ref.gpt_logits(states[1], HEADS, labels, tokens)
    got = model(labels, tokens[..., None])[0]
    # float64 but for the fp32 casts both models make (logits, rotary table): ~5e-7
    assert (got - want).abs().max() < 1e-5
    # our identity row is another function of the same weights
    model.rope_cos[0] = 1.0
    assert (model(labels, tokens[..., None])[0] - want).abs().max() > 1e-3


def _captured_class_qk(model, monkeypatch, run):
    """q and k of the class token (input 0) in every layer, as rotated."""
    seen, original = [], gm.apply_rope

    def spy(x, cos, sin):
        out = original(x, cos, sin)
        seen.append(out[:, :, 0].clone())
        return out

    monkeypatch.setattr(gm, "apply_rope", spy)
    run()
    monkeypatch.setattr(gm, "apply_rope", original)
    return seen


@pytest.mark.parametrize("class_rope", ["zero", "identity"])
@pytest.mark.parametrize("rope", ["2d", "1d"])
def test_zero_class_row_zeroes_the_class_query_and_key(monkeypatch, class_rope, rope):
    from generator.config import GPTConfig
    from generator.sampling import generate

    cfg = GPTConfig(dim=32, layers=3, heads=2, vocab_sizes=[16], num_tokens=16, num_classes=5,
                    rope=rope, class_rope=class_rope, dropout=0.0)
    model = GPT(cfg).eval()
    torch.nn.init.normal_(model.heads.outs[0].weight)
    labels, tokens = torch.tensor([1, 2]), torch.randint(0, 16, (2, 16, 1))
    teacher = _captured_class_qk(model, monkeypatch, lambda: model(labels, tokens))
    # the cached sampler's first step is the class token alone
    cached = _captured_class_qk(model, monkeypatch, lambda: generate(
        model, labels, cfg_scale=2.0, generator=torch.Generator().manual_seed(0)))[:2 * 3]
    assert len(teacher) == 2 * 3  # q and k of each layer
    for qk in teacher + cached:
        if class_rope == "zero":
            assert qk.abs().max() == 0
        else:
            assert qk.abs().max() > 1e-3


def test_vq_import_round_trip_and_reference(tmp_path, states):
    rc, out = _import(tmp_path, *_write(tmp_path, states))
    assert rc == 0
    tok, _ = load_tokenizer(out / "tokenizer.safetensors")
    assert tok.cfg.encoder.style == "taming" and tok.cfg.grid == 8
    tok = tok.double()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double() * 2 - 1
    with torch.no_grad():
        codes = tok.encode(x)
        recon = tok(x)[0]
    assert torch.equal(codes[..., 0].view(2, 8, 8), ref.vq_encode(states[0], x))
    decoded = tok.decode(codes)
    assert torch.equal(decoded, recon)  # decode(encode(x)) is the model's reconstruction
    want = ref.vq_decode(states[0], codes[..., 0].view(2, 8, 8))
    assert (decoded - want).abs().max() < 1e-5  # the stored codebook is normalised in fp32


def test_imported_pair_samples_through_our_commands(tmp_path, states):
    from generator import sample, sample_fid

    rc, out = _import(tmp_path, *_write(tmp_path, states))
    assert rc == 0
    ckpt = str(out / "gpt.safetensors")
    assert sample.main(["--ckpt", ckpt, "--classes", "1,2", "--per-class", "2", "--cfg", "2.0",
                        "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0
    npz = tmp_path / "s.npz"
    assert sample_fid.main(["--ckpt", ckpt, "--num", "5", "--batch-size", "2", "--cfg", "2.0",
                            "--random-labels", "--out", str(npz), "--quiet"]) == 0
    with np.load(npz) as f:
        assert f["arr_0"].shape == (5, 16, 16, 3) and f["arr_0"].dtype == np.uint8


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err, err
    return err


@pytest.mark.parametrize("damage,named", [
    ("missing", "layers.1.feed_forward.w3.weight"),
    ("extra", "layers.0.attention.gate.weight"),
    ("shape", "layers.1.attention.wo.weight"),
])
def test_layout_mismatch_is_one_line_naming_the_key(tmp_path, states, capsys, damage, named):
    vq, gpt = states
    gpt = dict(gpt)
    if damage == "missing":
        del gpt[named]
    elif damage == "extra":
        gpt[named] = torch.zeros(3)
    else:
        gpt[named] = torch.zeros(GPT_["dim"], GPT_["dim"] + 1)
    rc, out = _import(tmp_path, *_write(tmp_path, (vq, gpt)))
    assert rc == 2
    assert named in _one_line_error(capsys)
    assert not (out / "gpt.safetensors").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_not_run(tmp_path, states, capsys):
    marker = tmp_path / "pwned"
    vq_path, gpt_path = _write(tmp_path, states)
    torch.save({"model": states[1], "payload": _Evil(marker)}, gpt_path)
    rc, _ = _import(tmp_path, vq_path, gpt_path)
    assert rc == 2 and not marker.exists()
    assert "refused" in _one_line_error(capsys)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_unreadable_files_are_one_line(tmp_path, states, capsys, content):
    vq_path, gpt_path = _write(tmp_path, states)
    gpt_path.write_bytes(content)
    rc, _ = _import(tmp_path, vq_path, gpt_path)
    assert rc == 2 and "not a PyTorch checkpoint" in _one_line_error(capsys)


def test_token_count_sources(tmp_path, states, capsys):
    vq, gpt = states
    (tmp_path / "bare").mkdir()
    vq_path, gpt_path = _write(tmp_path / "bare", (vq, gpt), "state_dict", "c2i_tiny.pt")
    torch.save({"state_dict": gpt}, gpt_path)  # no args, no rotary table, no size in the name
    rc, _ = _import(tmp_path, vq_path, gpt_path)
    assert rc == 2 and "--image-size" in _one_line_error(capsys)
    rc, out = _import(tmp_path, vq_path, gpt_path, "--image-size", "16")
    assert rc == 0
    assert json.loads((out / "llamagen-import.json").read_text())["gpt"]["num_tokens_from"] \
        == "--image-size"


def test_missing_vq_keys_are_named_as_llamagen_names_them(states):
    from launch.llamagen_keys import LayoutError

    cfg = infer_vq(states[0], 16)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_tokenizer(cfg).state_dict().items()}
    for gone in ("encoder.conv_blocks.0.downsample.conv.weight",
                 "decoder.conv_blocks.1.res.0.nin_shortcut.bias",
                 "decoder.mid.1.proj_out.weight", "quantize.embedding.weight"):
        damaged = {k: v for k, v in states[0].items() if k != gone}
        with pytest.raises(LayoutError, match=gone.replace(".", r"\.")):
            our_vq_state(damaged, expected, l2_norm=True)


@pytest.mark.parametrize("size", list(PUBLISHED_PARAMS))
def test_llamagen_sizes_are_inferred_with_their_parameter_counts(size):
    layers, heads, dim = SIZES[size]
    state = ref.gpt_state(layers, dim, 16384, 1000, meta=True)
    cfg, name = infer_gpt(state, 256)
    assert (name, cfg.heads, cfg.num_classes, cfg.class_rope) == (size, heads, 1000, "zero")
    with torch.device("meta"):
        model = GPT(cfg)
    assert count_parameters(model) == PUBLISHED_PARAMS[size]
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(rename(state, gpt_key, expected, "GPT")) == len(expected)


def test_vq16_layout_is_vq_imagenet():
    """LlamaGen's full VQ-16 layout fills our vq-imagenet with every key consumed."""
    state = ref.vq_state(128, (1, 1, 2, 2, 4), 2, 256, 16384, 8, meta=True)
    cfg = infer_vq(state, 256)
    assert cfg == registry_config("vq-imagenet")
    with torch.device("meta"):
        model = build_tokenizer(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(vq_key(k) is not None for k in state if k != "quantize.codebook_used")
    ours = our_vq_state(state, expected, l2_norm=True)
    assert set(ours) == set(expected)
    params = count_parameters(model) + 16384 * 8  # LlamaGen's codebook is a parameter
    assert 71.5e6 < params < 72.5e6  # "72M"


def test_uint8_conventions_against_numpy():
    from generator.samples import images_to_uint8

    x = torch.cat([torch.tensor([-1.2, -1.0, 0.0, 1.0, 1.3]),
                   torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1])
    x = x.view(1, 1, 1, -1).expand(1, 3, 1, -1)
    v = x[0, 0, 0].numpy()
    llamagen = np.clip(127.5 * v + 128.0, 0, 255).astype(np.uint8)  # astype truncates
    ours = np.round((np.clip(v, -1, 1) + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(images_to_uint8(x, "llamagen")[0, 0, :, 0].numpy(), llamagen)
    assert np.array_equal(images_to_uint8(x, "round")[0, 0, :, 0].numpy(), ours)


def test_llamagen_sampling_options_are_applied_and_recorded(tmp_path, states):
    from eval.sets import open_set
    from generator import sample_fid
    from generator.samples import cast_for_sampling

    rc, out = _import(tmp_path, *_write(tmp_path, states))
    assert rc == 0
    model, _ = load_gpt(out / "gpt.safetensors")
    cast_for_sampling(model, "bf16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.rope_cos.dtype == torch.float32  # rotary tables stay fp32, as LlamaGen's
    npz = tmp_path / "s.npz"
    assert sample_fid.main(["--ckpt", str(out / "gpt.safetensors"), "--num", "3",
                            "--batch-size", "3", "--cfg", "2.0", "--random-labels",
                            "--precision", "bf16", "--uint8", "llamagen", "--eval-size", "8",
                            "--out", str(npz), "--quiet"]) == 0
    with np.load(npz) as f:
        assert f["arr_0"].shape == (3, 8, 8, 3)
    settings = open_set(npz).settings  # what eval.fid copies into its result
    assert (settings["labels"], settings["precision"], settings["uint8"],
            settings["eval_size"]) == ("random (uniform)", "bf16", "llamagen", 8)


def test_imported_vq_alone_is_evaluated_as_our_own(tmp_path, states, capsys):
    from tests.data_helpers import make_index_shards
    from tokenizer import evaluate

    vq_path, _ = _write(tmp_path, states)
    rc, out = _import(tmp_path, vq_path, None, "--image-size", "8")  # VQ only: 8 px, 4x4
    assert rc == 0 and not (out / "gpt.safetensors").exists()
    shards = make_index_shards(tmp_path, 6, 3)  # 8 px images
    report = tmp_path / "recon.json"
    assert evaluate.main(["--ckpt", str(out / "tokenizer.safetensors"), "--data", str(shards),
                          "--no-rfid", "--no-lpips", "--ssim", "llamagen",  # 7x7 window
                          "--json", str(report), "--quiet"]) == 0
    result = json.loads(report.read_text())
    assert result["num_images"] == 6 and result["bits_per_image"] == 16 * 6  # 4x4 of 64 codes
    capsys.readouterr()
    assert evaluate.main(["--ckpt", str(out / "tokenizer.safetensors"), "--data", str(shards),
                          "--no-rfid", "--no-lpips", "--quiet"]) == 2  # 8 px < Wang's 11
    assert "at least 11 x 11" in _one_line_error(capsys)
