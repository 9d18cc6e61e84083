"""launch.bench_tokenizer on registry sizes: runs the trainer's step and prints its table (no
timing is asserted)."""

import pytest

from launch.bench_tokenizer import main

pytestmark = pytest.mark.slow


def test_bench_by_registry_size(capsys):
    assert main(["--size", "gaussian-debug", "--batch", "2", "--steps", "1", "--warmup", "1",
                 "--repeats", "1", "--set", "loss.lpips=0"]) == 0
    out = capsys.readouterr().out
    assert "| gaussian-debug |" in out and "| 2 |" in out and "peak GiB" in out


def test_bench_refuses_bad_requests(capsys):
    assert main(["--size", "gaussian-nope"]) == 2
    assert "gaussian-nope" in capsys.readouterr().err
    assert main(["--config", "launch/configs/compare-mnist.toml", "--only", "nope"]) == 2
    assert "'nope' is not a variant" in capsys.readouterr().err
