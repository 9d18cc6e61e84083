"""The DeepSpeed trainer with 2 CPU ranks (torchrun, gloo): ZeRO-3 exports whole weights,
ranks draw different dropout masks, only rank 0 keeps an EMA, and a checkpoint of 2 ranks
is refused by 1 with a message."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.files import load_checkpoint
from data.stream import read_manifest
from data.tokens import FORMAT_TAG, make_token_loader
from generator.heldout import heldout_nll
from generator.model import GPT
from launch.run_config import resolve_gpt_config as resolve_config
from launch.train_gpt import Trainer, build_gpt_config
from tests.token_helpers import make_token_set

pytestmark = pytest.mark.slow  # two torchrun launches, about 35 s each

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    return make_token_set(tmp_path_factory.mktemp("tokens"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, tokens: Path, *sets: str) -> None:
    """``launch.train_gpt`` on 2 CPU ranks; fails the test with the ranks' output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "launch.train_gpt", "--quiet", "--out", str(out),
           "--set", f"data.tokens={tokens}", "--set", "data.batch_size=8",
           "--set", "steps=2", "--set", "ckpt_every=2", *[a for s in sets for a in ("--set", s)]]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_zero3_export_gathers_every_parameter(tmp_path, tokens):
    """Under ZeRO-3 each rank holds a slice of each parameter; the export once held
    shape-(0,) tensors. Checked against DeepSpeed's own offline consolidation."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import load_file

    out = tmp_path / "z3"
    _torchrun(out, tokens, "deepspeed.zero_stage=3", "deepspeed.persistence_threshold=0",
              "ema_decay=0", f"data.heldout={tokens}", "eval_every=1")
    exported = load_file(str(out / "gpt.safetensors"))
    cfg = resolve_config(None, [f"data.tokens={tokens}"])
    gpt = GPT(build_gpt_config(cfg, read_manifest(tokens, FORMAT_TAG)))
    shapes = {n: p.shape for n, p in gpt.named_parameters()}
    assert {n: v.shape for n, v in exported.items()} == shapes
    tag = json.loads((out / "checkpoints" / "last.json").read_text())["tag"]
    consolidated = get_fp32_state_dict_from_zero_checkpoint(str(out / "checkpoints"), tag=tag)
    for name, value in exported.items():
        assert torch.equal(value, consolidated[f"gpt.{name}"].float()), name
    # the held-out evaluations gathered the sliced weights too (every rank joined): the
    # last one is the exported weights' NLL (fp32 sums of an image's 6 tokens: 2 n u)
    meta = json.loads((out / "gpt.json").read_text())
    assert [r["step"] for r in meta["heldout_log"]] == [1, 2]
    gpt.load_state_dict(exported)
    expected = heldout_nll(gpt, make_token_loader(tokens, batch_size=8, train=False))
    assert meta["heldout"] == pytest.approx({"step": 2, **expected}, rel=2 * 6 * 2.0**-24)


def test_ranks_draw_their_own_masks_and_only_rank0_keeps_the_ema(tmp_path, tokens):
    out = tmp_path / "ema"
    _torchrun(out, tokens, "ema_decay=0.9", "model.dropout=0.1")
    tag = json.loads((out / "checkpoints" / "last.json").read_text())["tag"]
    states = [load_checkpoint(out / "checkpoints" / tag / f"trainer_state_rank{r}.pt")
              for r in range(2)]
    assert states[0]["ema"] is not None and states[1]["ema"] is None
    assert all(s["world_size"] == 2 for s in states)
    # the same seed on both ranks would leave identical generators after identical draws
    assert not torch.equal(states[0]["rng"]["torch"], states[1]["rng"]["torch"])
    # one process cannot take over a 2-rank run: a message, not a traceback
    single = Trainer(resolve_config(None, [f"data.tokens={tokens}", "data.batch_size=8",
                                           f"out={out}", "ema_decay=0.9"]), progress=False)
    with pytest.raises(ValueError, match="written by 2 ranks, this run has 1"):
        single.resume()
