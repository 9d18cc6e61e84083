"""Training-run plumbing shared by the trainers: distributed set-up from the launcher's
environment, atomic checkpoints loaded without executing pickles, RNG capture for
exact resume, the warm-up + cosine schedule, and model EMA."""

import math
import random

import numpy as np
import torch


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
