"""Which process of a run this is: rank and world size from the launcher's environment
(torchrun, deepspeed), joining the process group, and the device a rank uses.

Every stage reads its rank from here, so shard assignment, seeding and "only rank 0
writes" agree. A process started by srun / mpirun as one of several tasks without the
launcher's variables is refused (every task would be a rank-0 run writing into the same
folder).
"""

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

SCHEDULER_TASKS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")  # srun, mpirun
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_rank_world() -> tuple[int, int]:
    """Rank and world size from the launcher's environment, else 0, 1."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _check_launcher_vars() -> None:
    """With RANK or WORLD_SIZE set, the rest a process group needs must be set too."""
    env = os.environ
    if "RANK" not in env and "WORLD_SIZE" not in env:
        return
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if var in env and not env[var].strip().isdigit():
            raise ValueError(f"{var}={env[var]!r} is not a non-negative integer")
    needed = ["RANK", "WORLD_SIZE"]
    if int(env.get("WORLD_SIZE", "1")) > 1:
        needed += ["MASTER_ADDR", "MASTER_PORT"]
    missing = [v for v in needed if v not in env]
    if missing:
        present = [v for v in LAUNCHER_VARS if v in env]
        raise ValueError(f"{', '.join(present)} set but not {', '.join(missing)}: start the "
                         f"run with torchrun or deepspeed, or export all of "
                         f"{', '.join(LAUNCHER_VARS)}")
    if int(env["RANK"]) >= int(env["WORLD_SIZE"]):
        raise ValueError(f"RANK={env['RANK']} is not below WORLD_SIZE={env['WORLD_SIZE']}")


def check_environment() -> None:
    """ValueError (one line) for launcher variables half set, or an srun / mpirun task
    started without them; called before any work."""
    if "RANK" not in os.environ:
        for var in SCHEDULER_TASKS:
            if int(os.environ.get(var, "1") or 1) > 1:
                raise ValueError(
                    f"{var}={os.environ[var]} but no RANK/WORLD_SIZE: start the tasks with "
                    "deepspeed or torchrun (or export RANK, WORLD_SIZE, LOCAL_RANK, "
                    "MASTER_ADDR, MASTER_PORT per task) so that they form one run")
    _check_launcher_vars()


def launcher_env() -> Dist:
    """The launcher's variables for this process, set for a single process where no
    launcher ran (DeepSpeed needs them even for one); ValueError for an srun/mpirun
    task without them."""
    check_environment()
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
    return current()


def current() -> Dist:
    rank, world = env_rank_world()
    return Dist(rank, world, int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed() -> Dist:
    """Join the process group when a launcher set WORLD_SIZE > 1 (nccl on CUDA, else
    gloo); one process otherwise. ValueError for an srun/mpirun task without RANK."""
    check_environment()
    info = current()
    if info.world_size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return info


def leave_process_group(*, wait: bool = True) -> None:
    """Leave the process group, if one was joined, before the interpreter shuts down:
    after a barrier where ``wait`` (every rank is done), at once where not (an error
    path, where another rank may never reach a barrier). A rank that exits still in a
    gloo group can abort during shutdown ("terminate called without an active
    exception", SIGABRT) and fail a run whose work was done.

    A single-rank group is left alone: it has no peers to abort on, and a caller that
    runs several entry points in one process (tests, a notebook) keeps it, because
    DeepSpeed caches the group it first saw and refuses a later one ("Group ... is
    not registered")."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def device_for(info: Dist) -> torch.device:
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else \
        torch.device("cpu")
