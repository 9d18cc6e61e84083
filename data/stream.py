"""Base of the shard loaders: reads a manifest, splits work, skips damage, shuffles."""

import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data.split import epoch_ranges, resampled_shards, shuffle_buffer
from data.tario import TarReadError, iter_tar_samples

MODES = ("epoch", "resampled")
WARN_LIMIT = 5  # per worker; the counter keeps counting after that


class ShardSetError(ValueError):
    """A shard folder is missing, incomplete or of another kind."""


def read_manifest(folder: Path | str, expected_format: str) -> dict:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise ShardSetError(f"{folder} has no manifest.json: not a finished shard set "
                            "(build it, or re-run the build to finish it)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != expected_format:
        raise ShardSetError(f"{folder} holds {manifest.get('format')!r} shards, "
                            f"expected {expected_format!r}")
    missing = [s["name"] for s in manifest["shards"] if not (folder / s["name"]).exists()]
    if missing:
        raise ShardSetError(f"{folder} lacks {len(missing)} shards listed in its manifest, "
                            f"e.g. {missing[0]}")
    return manifest


def env_rank_world() -> tuple[int, int]:
    """Rank and world size from the launcher's environment (torchrun, deepspeed), else 0, 1."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class ShardStream(IterableDataset):
    """Streams decoded samples of one shard set for this rank and DataLoader worker.

    Subclasses set ``FORMAT`` and implement ``decode(sample, rng) -> item``; a decode
    that raises counts the sample as corrupt (``skipped``) and the stream goes on.
    Call ``set_epoch(e)`` before each epoch: it reseeds the shuffles.
    """

    FORMAT = ""

    def __init__(self, folder, *, mode="epoch", shuffle=True, rank=None, world_size=None,
                 seed=0, shuffle_buffer_size=1000):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        env_rank, env_world = env_rank_world()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, self.FORMAT)
        self.mode, self.shuffle, self.seed = mode, shuffle, seed
        self.shuffle_buffer_size = shuffle_buffer_size if shuffle else 0
        self.epoch = 0
        self._skipped = multiprocessing.get_context("fork").Value("q", 0)

    @property
    def skipped(self) -> int:
        """Corrupt or missing samples skipped so far, over all workers of this process."""
        return self._skipped.value

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def decode(self, sample: dict, rng: np.random.Generator):
        raise NotImplementedError

    def _slot(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def _count_skip(self, n: int, message: str, warned: list[int]) -> None:
        with self._skipped.get_lock():
            self._skipped.value += n
        if warned[0] < WARN_LIMIT:
            warned[0] += 1
            warnings.warn(f"skipping {n} sample(s): {message}", stacklevel=3)

    def _read(self, shard: int, start: int, stop: int | None, warned):
        """Raw samples [start, stop) of a shard (stop None: all); damage is counted."""
        info = self.manifest["shards"][shard]
        stop = info["count"] if stop is None else stop
        seen = 0
        try:
            for index, sample in enumerate(iter_tar_samples(self.folder / info["name"])):
                seen = index + 1
                if index >= stop:
                    return
                if index >= start:
                    yield sample
        except TarReadError as err:
            self._count_skip(max(0, stop - max(seen, start)), str(err), warned)
            return
        if seen < stop:  # the tar ended early: a truncated shard
            self._count_skip(stop - max(seen, start),
                             f"{info['name']} ends after {seen} of {info['count']} samples",
                             warned)

    def _raw_samples(self, slot, num_slots, warned):
        counts = [s["count"] for s in self.manifest["shards"]]
        if self.mode == "epoch":
            for shard, start, stop in epoch_ranges(counts, slot, num_slots, epoch=self.epoch,
                                                   seed=self.seed, shuffle=self.shuffle):
                yield from self._read(shard, start, stop, warned)
        else:
            for shard in resampled_shards(len(counts), slot, epoch=self.epoch, seed=self.seed):
                yield from self._read(shard, 0, None, warned)

    def __iter__(self):
        slot, num_slots = self._slot()
        rng = np.random.default_rng([self.seed, self.epoch, slot])
        if get_worker_info() is not None:
            torch.set_num_threads(1)  # workers decode; many of them must not oversubscribe
        warned = [0]

        def decoded():
            for sample in self._raw_samples(slot, num_slots, warned):
                try:
                    yield self.decode(sample, rng)
                except Exception as err:  # a corrupt sample: count it, go on
                    self._count_skip(1, f"sample {sample.get('__key__')}: "
                                        f"{type(err).__name__}: {err}", warned)

        yield from shuffle_buffer(decoded(), self.shuffle_buffer_size, rng)
