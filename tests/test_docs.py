"""Docs that cannot go stale: every repository path and ``python -m`` command named in
README, BENCHMARKS, the configs and the code (docstrings, ``--help`` texts) exists, and
the standalone ImageNet configs are the pipeline config's tables."""

import re
import subprocess
import tomllib
from pathlib import Path

from data import config as configlib

ROOT = Path(__file__).resolve().parents[1]
TOP = ("kernels", "tokenizer", "generator", "data", "eval", "launch", "tests", ".ci")
# a path inside the repository: starts with a top-level folder, ends in a file suffix or
# "/" (bare names such as OUT/data/train are run outputs, not repository files)
PATH = re.compile(r"(?<![\w/.$-])((?:" + "|".join(re.escape(t) for t in TOP)
                  + r")/[\w./-]*?(?:\.(?:py|toml|sh|md|png|json|cpp|h|cuh|cu|yml)\b|/(?=\s)))")
MODULE = re.compile(r"python3? -m ((?:kernels|tokenizer|generator|data|eval|launch)(?:\.\w+)+)")


def documents() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    return [ROOT / f for f in tracked if not f.startswith("tests/")
            and (f.endswith((".py", ".md", ".toml", ".sh")) or f == ".ci/run")]


def missing_names(text: str) -> list[str]:
    missing = [p for p in PATH.findall(text) if not (ROOT / p).exists()]
    for module in MODULE.findall(text):
        path = ROOT.joinpath(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            missing.append(f"python -m {module}")
    return missing


def test_every_named_path_and_command_exists():
    found = {d.relative_to(ROOT).as_posix(): missing_names(d.read_text())
             for d in documents()}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_finds_a_missing_path_and_command():
    text = ("see launch/configs/tokenizer-debug.toml and kernels/csrc/\n"
            "python -m tokenizer.nothing; runs go to OUT/data/train\n")
    assert missing_names(text) == ["launch/configs/tokenizer-debug.toml",
                                   "python -m tokenizer.nothing"]


def test_standalone_imagenet_configs_are_the_pipeline_tables():
    from launch.run_config import resolve_gpt_config as gpt_config
    from launch.run_config import resolve_tokenizer_config as tokenizer_config
    from launch.run_config import resolve_tokenizer_table as resolve_table

    pipeline = tomllib.loads((ROOT / "launch/configs/imagenet-gpt-b.toml").read_text())
    configs = ROOT / "launch" / "configs"
    standalone = tokenizer_config(configs / "tokenizer-imagenet.toml")
    assert standalone.data.shards == f"{pipeline['out']}/data/train"
    assert standalone.out == f"{pipeline['out']}/tokenizer"
    from_pipeline = resolve_table({**pipeline["tokenizer"], "out": standalone.out,
                                   "data": {**pipeline["tokenizer"]["data"],
                                            "shards": standalone.data.shards}})
    assert from_pipeline == standalone
    gpt = gpt_config(configs / "gpt-b-imagenet.toml")
    assert gpt.data.tokens == f"{pipeline['out']}/codes" and gpt.out == f"{pipeline['out']}/gpt"
    table = {**pipeline["gpt"], "out": gpt.out,
             "data": {**pipeline["gpt"]["data"], "tokens": gpt.data.tokens}}
    path = ROOT / "launch" / "configs" / "gpt-b-imagenet.toml"
    assert configlib.from_dict(type(gpt), table) == gpt_config(path)
