"""Bad inputs and output paths that cannot work are refused before any work: exit 2,
exactly one stderr line naming the flag and the cause, no traceback, nothing written."""

import importlib
import re

import pytest
import torch

FILE = "a-file"  # a plain file made in every case's folder


def _cases():
    f = FILE
    return [
        ("data.build_shards", ["--builtin", "digits", "--out", f], r"--out .*a-file: is a file"),
        ("data.build_shards", ["--builtin", "digits", "--out", f"{f}/shards"],
         r"a-file is a file, not a folder"),
        ("data.build_shards", ["--builtin", "digits", "--size", "0", "--out", "s"],
         r"--size must be a positive number of pixels, got 0"),
        ("launch.train_tokenizer", ["--size", "gaussian-debug", "--out", f],
         r"out .*a-file: is a file, not a folder"),
        ("launch.train_tokenizer", ["--size", "gaussian-debug", "--out", f"{f}/run"],
         r"a-file is a file, not a folder"),
        ("launch.train_gpt", ["--out", f], r"out .*a-file: is a file, not a folder"),
        ("launch.train_gpt", ["--set", "optim.warmup_steps=-5"],
         r"optim\.warmup_steps must be >= 0, got -5"),
        ("launch.train_gpt", ["--set", "ema_decay=1.5"], r"ema_decay must be in \[0, 1\)"),
        ("generator.sample", ["--ckpt", "none", "--classes", "0", "--out", "."],
         r"--out \.: is a folder; give a file name"),
        ("generator.sample", ["--ckpt", "none", "--classes", "0", "--out", f"{f}/g.png"],
         r"a-file is a file, not a folder"),
        ("generator.sample", ["--ckpt", "none", "--classes", "0", "--zoom", "0"],
         r"--zoom must be positive, got 0"),
        ("generator.sample", ["--ckpt", "none", "--classes", "0", "--device", "tpu9"],
         r"--device 'tpu9': not a device name"),
        ("generator.sample_fid", ["--ckpt", "none", "--out", f"{f}/s.npz"],
         r"a-file is a file, not a folder"),
        ("eval.fid", ["s.npz", "r.npz", "--json", "."], r"--json \.: is a folder"),
        ("eval.leaderboard", ["--out", f"{f}/board.md"], r"a-file is a file, not a folder"),
        ("launch.import_llamagen", ["--vq", "vq.pt", "--out", f],
         r"--out .*a-file: is a file, not a folder"),
    ]


@pytest.mark.parametrize(("module", "argv", "message"), _cases(),
                         ids=[f"{m}:{' '.join(a)}" for m, a, _ in _cases()])
def test_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys, module, argv,
                                             message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / FILE).write_text("not a folder")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    main = importlib.import_module(module).main
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors exit
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(message, lines[0]), lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line(tmp_path, capsys):
    from generator import sample

    assert sample.main(["--ckpt", "none", "--classes", "0", "--device", "cuda",
                        "--out", str(tmp_path / "g.png")]) == 2
    assert "this machine has no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "message"), [
    ({"RANK": "0", "WORLD_SIZE": "2"}, r"RANK, WORLD_SIZE set but not MASTER_ADDR, MASTER_PORT"),
    ({"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     r"set but not RANK"),
    ({"RANK": "x", "WORLD_SIZE": "1"}, r"RANK='x' is not a non-negative integer"),
    ({"RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
     r"RANK=3 is not below WORLD_SIZE=2"),
])
def test_launcher_variables_half_set_are_one_line(tmp_path, monkeypatch, capsys, env, message):
    from launch import train_tokenizer

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shards").mkdir()
    code = train_tokenizer.main(["--size", "gaussian-debug", "--set", "data.shards=shards",
                                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err


def test_a_damaged_manifest_is_named_with_its_cause(tmp_path):
    from data.stream import ShardSetError, read_manifest

    (tmp_path / "manifest.json").write_text('{"format": "gtgen-images-v1", "shards": [')
    with pytest.raises(ShardSetError, match=r"manifest\.json is not valid JSON .*re-run"):
        read_manifest(tmp_path, "gtgen-images-v1")
    (tmp_path / "manifest.json").write_text('{"format": "gtgen-images-v1", "shards": 3}')
    with pytest.raises(ShardSetError, match=r"manifest\.json is not a shard manifest"):
        read_manifest(tmp_path, "gtgen-images-v1")


def test_class_folders_without_any_image_build_nothing(tmp_path, capsys):
    from data import build_shards

    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "notes.txt").write_text("not an image")
    assert build_shards.main(["--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                              "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "none of the 2 inputs is a readable image" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_damaged_record_of_a_finished_shard_is_named(tmp_path, capsys):
    """Re-running a build reads its shards' records: a damaged one is named with the
    cause (it was a JSONDecodeError traceback)."""
    from data import build_shards

    args = ["--builtin", "digits", "--split", "heldout", "--out", str(tmp_path / "s"),
            "--quiet"]
    assert build_shards.main(args) == 0
    capsys.readouterr()
    record = sorted((tmp_path / "s").glob("shard-*.json"))[0]
    record.write_text('{"name": ')
    assert build_shards.main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{record} (shard record) is not valid JSON" in err, err
