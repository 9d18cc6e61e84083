"""Image shard builder: round trip, skips, determinism, resume, clear errors."""

import json
import os
import re

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data import builtin
from data.build_shards import BuildSettings, build_shards, main
from data.images import center_crop_adm, decode_image
from data.tario import iter_tar_samples
from tests.data_helpers import make_tree


def _read_all(folder):
    """The manifest and every sample, in key order (the sorted listing's order)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out = []
    for shard in manifest["shards"]:
        out.extend(iter_tar_samples(folder / shard["name"]))
    return manifest, sorted(out, key=lambda s: s["__key__"])


def test_builtin_digits_round_trip_is_exact(tmp_path):
    settings = BuildSettings("builtin:digits/heldout", 8, "center", "png", 100)
    build_shards(tmp_path, settings, builtin_name="digits", split="heldout", progress=False)
    manifest, samples = _read_all(tmp_path)
    names, source = builtin.digits("heldout")
    assert manifest["total"] == len(samples) == len(source) == 364
    assert [s["count"] for s in manifest["shards"]] == [100, 100, 100, 64]
    assert json.loads((tmp_path / "classes.json").read_text()) == {"names": names}
    for sample, (_, image, label) in zip(samples, source, strict=True):
        assert int(sample["cls"]) == label
        np.testing.assert_array_equal(np.asarray(decode_image(sample["png"])), np.asarray(image))


def test_shards_are_readable_by_webdataset(tmp_path):
    make_tree(tmp_path / "src", {"a": 3, "b": 4})
    build_shards(tmp_path / "out", BuildSettings("x", 8, "center", "png", 3),
                 src=tmp_path / "src", progress=False)
    urls = sorted(str(p) for p in (tmp_path / "out").glob("shard-*.tar"))
    got = [(s["__key__"], int(s["cls"])) for s in wds.WebDataset(urls, shardshuffle=False)]
    assert sorted(got) == [(f"{i:08d}", 0 if i < 3 else 1) for i in range(7)]


def test_image_folder_classes_sorted_and_bad_files_skipped(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"n02": 2, "n01": 2, "n10": 1})
    (src / "n01" / "notes.txt").write_text("not an image")
    good = src / "n02" / "img0000.png"
    (src / "n02" / "broken.png").write_bytes(good.read_bytes()[:40])  # truncated
    Image.new("RGB", (40, 20), (1, 2, 3)).save(src / "n10" / "wide.jpg")
    (src / "empty_class").mkdir()
    m = build_shards(tmp_path / "out", BuildSettings(str(src), 8, "center", "png", 4), src=src,
                     progress=False)
    classes = json.loads((tmp_path / "out" / "classes.json").read_text())["names"]
    assert classes == ["empty_class", "n01", "n02", "n10"]
    assert m["total"] == 6 and m["num_classes"] == 4
    reasons = {s["source"]: s["reason"] for s in m["skipped"]}
    assert set(reasons) == {"n01/notes.txt", "n02/broken.png"}
    assert "UnidentifiedImageError" in reasons["n01/notes.txt"]
    _, samples = _read_all(tmp_path / "out")
    labels = [int(s["cls"]) for s in samples]
    assert labels == [1, 1, 2, 2, 3, 3]
    wide = next(s for s in samples if json.loads(s["json"])["source"] == "n10/wide.jpg")
    expected = np.asarray(center_crop_adm(Image.open(src / "n10" / "wide.jpg").convert("RGB"), 8))
    np.testing.assert_array_equal(np.asarray(decode_image(wide["png"])), expected)


def test_adm_center_crop_halves_then_bicubic():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 700, 3), np.uint8))
    out = center_crop_adm(image, 64)
    assert out.size == (64, 64)
    # 300 >= 128 -> box-halve to 350x150 -> 150 >= 128 -> 175x75; then bicubic to 149x64
    step = image.resize((350, 150), Image.BOX).resize((175, 75), Image.BOX)
    step = step.resize((149, 64), Image.BICUBIC)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(step.crop((42, 0, 106, 64))))


def test_store_mode_keeps_aspect(tmp_path):
    make_tree(tmp_path / "src", {"a": 1})
    Image.new("RGB", (30, 15)).save(tmp_path / "src" / "a" / "z.png")
    build_shards(tmp_path / "out", BuildSettings("x", 10, "store", "png", 8),
                 src=tmp_path / "src", progress=False)
    _, samples = _read_all(tmp_path / "out")
    assert decode_image(samples[1]["png"]).size == (20, 10)


def test_parallel_and_resumed_builds_are_byte_identical(tmp_path):
    src = tmp_path / "src"
    make_tree(src, {"a": 9, "b": 8})
    settings = BuildSettings(str(src), 8, "center", "png", 4)
    build_shards(tmp_path / "serial", settings, src=src, progress=False, workers=1)
    build_shards(tmp_path / "par", settings, src=src, progress=False, workers=2)
    files = sorted(p.name for p in (tmp_path / "serial").iterdir())
    assert len([f for f in files if f.endswith(".tar")]) == 5

    def snapshot(folder):
        return {name: (folder / name).read_bytes() for name in files}

    reference = snapshot(tmp_path / "serial")
    assert snapshot(tmp_path / "par") == reference
    # Simulate a killed run: shard 2 half written (no sidecar), a stray temporary file.
    par = tmp_path / "par"
    with open(par / "shard-000002.tar", "r+b") as f:
        f.truncate(1000)
    os.remove(par / "shard-000002.tar.json")
    os.remove(par / "manifest.json")
    (par / "shard-000003.tar.tmp").write_bytes(b"garbage")
    mtime_kept = (par / "shard-000000.tar").stat().st_mtime_ns
    build_shards(par, settings, src=src, progress=False, workers=2)
    assert snapshot(par) == reference
    assert not list(par.glob("*.tmp"))
    assert (par / "shard-000000.tar").stat().st_mtime_ns == mtime_kept  # finished: kept


def test_rebuild_with_other_settings_is_refused(tmp_path):
    make_tree(tmp_path / "src", {"a": 2})
    build_shards(tmp_path / "out", BuildSettings("x", 8, "center", "png", 4),
                 src=tmp_path / "src", progress=False)
    with pytest.raises(ValueError, match="other build settings"):
        build_shards(tmp_path / "out", BuildSettings("x", 16, "center", "png", 4),
                     src=tmp_path / "src", progress=False)


@pytest.mark.parametrize(("setup", "message"), [
    ("missing", "does not exist"),
    ("no_classes", "no class folders"),
    ("no_files", "no files under the 2 class folders"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, setup, message):
    src = tmp_path / "src"
    if setup != "missing":
        src.mkdir()
    if setup == "no_files":
        (src / "a").mkdir()
        (src / "b").mkdir()
    assert main(["--src", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err and err.startswith("data.build_shards:")


def test_image_intake_16_bit_alpha_thin_strips_and_deterministic_reasons(tmp_path):
    """16-bit greyscale keeps its grey (Pillow's conversion clipped it to white); hidden
    colour under transparency is composited on white; a 4000x1 strip is refused quickly
    instead of becoming a 1024000x256 image; skip reasons carry no memory addresses."""
    src = tmp_path / "src" / "a"
    src.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(src / "grey16.png")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent in the left half
    rgba[:, 4:] = (0, 0, 0, 128)  # black at half opacity in the right half
    Image.fromarray(rgba).save(src / "alpha.png")
    Image.new("RGB", (4000, 1), (9, 9, 9)).save(src / "strip.png")
    (src / "notes.txt").write_text("not an image")
    manifests = []
    for out in ("one", "two"):
        build_shards(tmp_path / out, BuildSettings("x", 8, "center", "png", 8),
                     src=tmp_path / "src", progress=False)
        manifests.append((tmp_path / out / "manifest.json").read_bytes())
    assert manifests[0] == manifests[1] and not re.search(rb"0x[0-9a-f]{6}", manifests[0])
    manifest, samples = _read_all(tmp_path / "one")
    reasons = {s["source"]: s["reason"] for s in manifest["skipped"]}
    assert reasons == {"a/notes.txt": "UnidentifiedImageError: not an image format Pillow can read",
                       "a/strip.png": "ValueError: aspect ratio 4000x1 is beyond 50:1"}
    pixels = {json.loads(s["json"])["source"]: np.asarray(decode_image(s["png"]))
              for s in samples}
    assert (pixels["a/grey16.png"] == 128).all()  # 32768 / 257 = 127.5 -> 128
    left, right = pixels["a/alpha.png"][:, :4], pixels["a/alpha.png"][:, 4:]
    assert (left == 255).all()  # white, not the hidden red
    assert (np.abs(right.astype(int) - 127) <= 1).all()  # black over white at half opacity
