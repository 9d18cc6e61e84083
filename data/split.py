"""Which samples each (rank, worker) slot reads: exactly-once epochs and resampling.

A slot is ``rank * num_workers + worker``. In an exact epoch the shards are put in
an order (shuffled per epoch when asked), their samples concatenated, and slot k takes
the k-th of ``num_slots`` contiguous, equal (to within one) ranges of that sequence:
every sample is read exactly once per epoch across all slots, and ranks see the same
number of samples to within one, so distributed steps stay in lock-step.
"""

from collections.abc import Iterable, Iterator

import numpy as np


def epoch_ranges(counts: list[int], slot: int, num_slots: int, *, epoch: int, seed: int,
                 shuffle: bool) -> list[tuple[int, int, int]]:
    """This slot's pieces of the epoch: ``[(shard index, first sample, stop sample)]``."""
    if not 0 <= slot < num_slots:
        raise ValueError(f"slot must be in [0, {num_slots}), got {slot}")
    order = np.arange(len(counts))
    if shuffle:
        np.random.default_rng([seed, epoch]).shuffle(order)
    total = sum(counts)
    lo, hi = slot * total // num_slots, (slot + 1) * total // num_slots
    pieces, pos = [], 0
    for shard in order.tolist():
        start, stop = pos, pos + counts[shard]
        if stop > lo and start < hi:
            pieces.append((shard, max(lo, start) - start, min(hi, stop) - start))
        pos = stop
    return pieces


def resampled_shards(num_shards: int, slot: int, *, epoch: int, seed: int) -> Iterator[int]:
    """An endless stream of shard indices drawn with replacement, different per slot."""
    rng = np.random.default_rng([seed, epoch, slot, 7])
    while True:
        yield int(rng.integers(num_shards))


def shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Approximate shuffle with a buffer of ``size`` items (size <= 1: no shuffle)."""
    if size <= 1:
        yield from items
        return
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = item
    rng.shuffle(buffer)
    yield from buffer
