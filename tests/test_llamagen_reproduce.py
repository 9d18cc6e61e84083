"""launch.reproduce_llamagen: configs for every published row, and a tiny run end to end
(import -> sample -> eval -> table) on LlamaGen-layout checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from data import config as configlib
from eval.leaderboard import PUBLISHED
from launch import reproduce_llamagen as repro
from tests import llamagen_reference as ref
from tests.test_llamagen_import import GPT_, VQ, _args

CONFIGS = sorted(Path("launch/configs/llamagen").glob("*.toml"))


def test_one_config_per_published_llamagen_row():
    rows = {row[0] for row in PUBLISHED if row[0].startswith("LlamaGen-")}
    rows.remove("LlamaGen-XXL-256")  # published, but its checkpoint was not released
    configs = {configlib.load(repro.ReproConfig, p).published: p for p in CONFIGS}
    assert set(configs) == rows
    for name, path in configs.items():
        cfg = configlib.load(repro.ReproConfig, path)
        size, px = name.split("-")[1:]
        assert (cfg.gpt, cfg.image_size, cfg.eval_size) == (f"c2i_{size}_{px}.pt", int(px), 256)
        assert (cfg.labels, cfg.precision, cfg.top_k, cfg.top_p, cfg.temperature) == \
            ("random", "bf16", 0, 1.0, 1.0)


@pytest.mark.slow
def test_tiny_reproduction_end_to_end(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save({"model": ref.vq_state(**VQ, seed=1), "args": _args()}, weights / "vq.pt")
    torch.save({"model": ref.gpt_state(**GPT_, seed=2), "args": _args()}, weights / "gpt.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8))
    config = tmp_path / "tiny.toml"
    config.write_text('published = "LlamaGen-B-256"\nvq = "vq.pt"\ngpt = "gpt.pt"\n'
                      'image_size = 16\neval_size = 16\nnum = 4\nbatch_size = 2\n'
                      'precision = "fp32"\nmetrics = "fid"\nheads = 4\n')
    out = tmp_path / "run"
    argv = ["--config", str(config), "--weights", str(weights), "--ref",
            str(tmp_path / "ref.npz"), "--out", str(out)]
    assert repro.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["reproduces"] == "LlamaGen-B-256"
    assert result["sample_settings"]["uint8"] == "llamagen"
    assert result["sample_settings"]["labels"] == "random (uniform)"
    fid = result["metrics"]["fid"]
    table = (out / "leaderboard.md").read_text()
    assert f"{fid - 5.46:+.2f} vs LlamaGen-B-256 5.46" in table
    assert repro.main(argv) == 0  # a re-run finds every stage done
