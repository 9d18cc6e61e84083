"""launch.bench_gpt runs the trainer's DeepSpeed step on the CPU and prints its tables
(no timing is asserted: benchmarks report, tests check that they run and what they say)."""

import pytest

from launch.bench_gpt import datasheet_peak, main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA L40S", 362.0),
    ("NVIDIA L4", 121.0), ("Tesla T4", None)])
def test_datasheet_peaks_by_device_name(name, tflops):
    assert datasheet_peak(name) == tflops


def test_bench_runs_the_trainer_and_prints_both_tables(capsys):
    assert main(["--size", "debug", "--tokenizer", "gaussian-debug", "--batch", "2",
                 "--steps", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "GPT-debug" in out and "[1024, 64, 128] x 16" in out  # the real tuple model
    assert "| sdpa |" in out
    for path in ("| no cache |", "| KV cache |", "| KV cache, compiled |"):
        assert path in out


def test_bench_refuses_what_cannot_run(capsys):
    assert main(["--size", "debug", "--tokenizer", "gaussian-debug", "--attention",
                 "xformers", "--no-sampling"]) == 2
    assert "does not import or run here" in capsys.readouterr().out
    assert main(["--attention", "flash"]) == 2
    assert "unknown kernel 'flash'" in capsys.readouterr().err
    assert main(["--tokenizer", "nope"]) == 2
