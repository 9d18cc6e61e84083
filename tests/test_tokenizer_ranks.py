"""The tokenizer trainer on 2 CPU ranks (torchrun, gloo, DistributedDataParallel) with a
non-finite loss on one rank only: both ranks skip the same batches, neither hangs in the
gradient all-reduce the other never joins, and their weights stay identical."""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # one torchrun launch of 2 ranks, about 30 s

ROOT = Path(__file__).resolve().parents[1]
STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_nan_on_one_rank_is_skipped_by_both(tmp_path, digits):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           str(ROOT / "tests" / "tokenizer_ranks_worker.py"), str(digits), str(tmp_path),
           str(STEPS)]
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:  # a hang (one rank in backward's all-reduce, the other not) ends here
        _, stderr = run.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # torchrun and both ranks
        run.communicate()
        pytest.fail("the 2-rank run hung (killed after 240 s)")
    assert run.returncode == 0, stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:  # 2 poisoned batches skipped, every step taken on clean ones
        assert r["step"] == STEPS and r["skipped"] == 2 and r["batches"] == STEPS + 2, r
        assert r["finite"], r
    assert ranks[0]["digest"] == ranks[1]["digest"]  # DDP kept the replicas identical
