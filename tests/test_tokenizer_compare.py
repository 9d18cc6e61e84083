"""The comparison command runs end to end on a tiny budget, resumes, and reports honestly."""

import json
import statistics
from pathlib import Path

import pytest

from launch import compare_tokenizers as compare

CONFIG = """
seeds = [0, 1]
rfid = false
lpips = false
eval_batch = 128
[base]
size = "gaussian-debug"
steps = 2
log_every = 1
image_every = 100
ckpt_every = 1
[base.data]
batch_size = 4
flip = false
[base.loss]
lpips = 0.0
[variants.vq]
size = "vq-debug"
tokenizer = { encoder = { ch_mult = [1, 2, 2] }, vq = { grid = 4, rounds = 2 } }
[variants.grid-pinned]
tokenizer = { gaussian = { layout = "grid", moves = "frozen" } }
[variants.ceiling]
continuous_steps = 2
[notes]
vq = "the baseline"
"""


def test_compare_end_to_end_resumes_and_reports(tmp_path, digits, capsys):
    config = tmp_path / "compare.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--set", f"out={tmp_path / 'cmp'}",
            "--set", f"train={digits}", "--set", f"heldout={digits}"]
    assert compare.main(args) == 0
    out = tmp_path / "cmp"
    evals = {name: [json.loads((out / "runs" / name / f"seed-{s}" / "eval.json").read_text())
                    for s in (0, 1)] for name in ("vq", "grid-pinned", "ceiling")}
    for reports in evals.values():
        assert all(r["num_images"] == 364 for r in reports)  # every held-out image
    # same trunk and decoder: parameters within 5%, 16 tokens each
    params = {n: r[0]["parameters"] for n, r in evals.items()}
    assert abs(params["vq"] / params["grid-pinned"] - 1) < 0.05
    assert {r[0]["num_tokens"] for r in evals.values()} == {16}
    assert evals["vq"][0]["bits_per_image"] == pytest.approx(16 * 7)
    # seeds differ, and the table is their mean and spread
    psnr = [r["results"]["tokens"]["metrics"]["psnr"] for r in evals["grid-pinned"]]
    assert psnr[0] != psnr[1]
    summary = json.loads((out / "results.json").read_text())
    assert summary["grid-pinned"]["PSNR dB"]["mean"] == pytest.approx(statistics.mean(psnr))
    assert summary["grid-pinned"]["PSNR dB"]["std"] == pytest.approx(statistics.stdev(psnr))
    # pinned positions: zero spread across images, and snapping positions costs nothing
    geo = evals["grid-pinned"][0]["geometry"]
    assert geo["position_std_px"] == 0 and geo["distinct_positions_per_gaussian"] == 1
    rows = evals["grid-pinned"][0]["results"]
    assert rows["positions snapped only"]["metrics"]["psnr"] == pytest.approx(
        rows["continuous geometry"]["metrics"]["psnr"], abs=1e-9)
    report = (out / "report.md").read_text()
    assert "| vq | 0,1 | 16 | 112 |" in report and "**vq**: the baseline" in report
    assert (out / "layouts.png").exists()
    # a second run trains and evaluates nothing: everything is finished
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/*.json")}
    capsys.readouterr()
    assert compare.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/*.json")} == stamps
    assert "tokenizer:" not in capsys.readouterr().err  # no training progress bar


def test_compare_refuses_unknown_variants(tmp_path, digits, capsys):
    config = tmp_path / "compare.toml"
    config.write_text(CONFIG)
    args = ["--config", str(config), "--set", f"out={tmp_path / 'cmp'}", "--only", "nope"]
    assert compare.main(args) == 2
    assert "unknown variants ['nope']" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["compare-mnist", "compare-mnist-64", "compare-photos"])
def test_shipped_comparisons_resolve_and_keep_the_budget_rule(name):
    """Every variant of a shipped comparison builds; rows of one token count have
    parameters within 5% of each other. The 64-token comparison holds two such groups:
    VQ 8x8 fed its own 8x8 map (a deeper decoder, 15% more parameters) is matched by
    the Gaussian rows with more ResBlocks per decoder level or decoded from 8x8 up, not
    by the others."""
    import tomllib

    from data import config as configlib
    from launch.compare_tokenizers import CompareConfig, run_config
    from tokenizer.blocks import count_parameters
    from tokenizer.build import build_tokenizer

    path = Path(compare.__file__).parent / "configs" / f"{name}.toml"
    cfg = configlib.from_dict(CompareConfig, tomllib.loads(path.read_text()))
    deep = {"vq-8x8", "full-64-deep", "full-64-down"} if name == "compare-mnist-64" else set()
    by_group = {}
    for variant in cfg.variants:
        model = build_tokenizer(run_config(cfg, variant, 0, "unused").tokenizer)
        key = (model.num_tokens, variant in deep)
        by_group.setdefault(key, []).append(count_parameters(model))
    for key, counts in by_group.items():
        assert max(counts) / min(counts) < 1.05, (key, counts)
    by_tokens = {tokens for tokens, _ in by_group}
    if deep:  # both groups are there, and they differ by more than the rule allows
        assert len(by_group[(64, True)]) == 3
        assert min(by_group[(64, True)]) / max(by_group[(64, False)]) > 1.05
    assert by_tokens == ({64} if name == "compare-mnist-64" else {16, 64})
