"""Training-run plumbing shared by the trainers: distributed set-up from the launcher's
environment, atomic checkpoints loaded without executing pickles, RNG capture for
exact resume, the warm-up + cosine schedule, and model EMA."""

import json
import math
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group when a launcher (torchrun, deepspeed) set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    info = Dist(int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0)))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend)
    return info


def device_for(info: Dist) -> torch.device:
    return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else \
        torch.device("cpu")


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1, then cosine down to min_ratio at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def rng_state() -> dict:
    """Every RNG a step may draw from, as tensors and ints (loadable with weights_only)."""
    np_state = np.random.get_state()  # noqa: NPY002 - we save the legacy global RNG too
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)),
                       "pos": int(np_state[2]), "gauss": [int(np_state[3]),
                                                          float(np_state[4])]}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuplify(state["python"]))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], *n["gauss"])
    np.random.set_state(legacy)  # noqa: NPY002 - restoring the legacy global RNG
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temporary name, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """safetensors written to a temporary name and renamed: readers never see half a file,
    and the tensors are not copied into one buffer first (a 3B model is 12 GB in fp32)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


class WeightsError(ValueError):
    """A weights, checkpoint or config file that cannot be used: missing, damaged, not
    ours, or not matching the model it is loaded into. One line, naming the file."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def load_checkpoint(path: Path, device="cpu") -> dict:
    """Load with weights_only=True: tensors and plain containers, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message suggests weights_only=False: no
        raise WeightsError(f"{path} is not a checkpoint of ours: damaged, or holding objects "
                           "beyond tensors and plain containers, which are refused (loading "
                           "them would run code from the file)") from err
    except (RuntimeError, EOFError, ValueError, AttributeError,
            TypeError) as err:  # whatever a damaged or foreign file makes torch.load raise
        raise WeightsError(f"{path} is not a readable checkpoint of ours "
                           f"({_first_line(err)})") from err


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a missing or damaged file is a WeightsError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights {path} do not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file "
                           f"({_first_line(err)})") from err


def read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object from ``path`` holding ``keys``; otherwise a WeightsError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} ({what}) does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path} ({what}) is not valid JSON ({_first_line(err)})") from err
    missing = [k for k in keys if not isinstance(data, dict) or k not in data]
    if missing:
        raise WeightsError(f"{path} ({what}) lacks {', '.join(map(repr, missing))}")
    return data


def load_state(model: torch.nn.Module, state: dict, source: Path | str) -> None:
    """``load_state_dict`` strict, with a mismatch told in one line (counts and a first
    example of missing, unexpected and mis-shaped tensors) instead of a page."""
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = [f"{len(found)} {kind}, e.g. {found[0]}" for kind, found in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped))
                if found]
    if problems:
        raise WeightsError(f"{source} does not fit the model its config describes: "
                           + "; ".join(problems))
    model.load_state_dict(state, strict=True)


def resumable_batches(loader, position, empty_message: str):
    """Endless batches of an epoch-mode shard loader, epoch after epoch.

    ``position`` carries ``epoch`` and ``batch_in_epoch`` (checkpointed by the trainer):
    resuming inside an epoch re-creates that epoch's order and starts at the next batch
    without reading the consumed ones (``ShardStream.start_at_batch``); in an epoch's
    last rounds, where that is not possible, the consumed batches are read and dropped.
    A loader that gives no batch at all raises ValueError.
    """
    while True:
        loader.dataset.set_epoch(position.epoch)
        first = position.batch_in_epoch
        if not (first and loader.dataset.start_at_batch(first, loader.batch_size,
                                                         loader.num_workers)):
            first = 0
        for index, batch in enumerate(loader, start=first):
            if index < position.batch_in_epoch:
                continue  # the replay fallback: the same batches, dropped
            position.batch_in_epoch = index + 1
            yield batch
        if position.batch_in_epoch == 0:
            raise ValueError(empty_message)
        position.epoch, position.batch_in_epoch = position.epoch + 1, 0
