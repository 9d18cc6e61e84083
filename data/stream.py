"""Base of the shard loaders: reads a manifest, splits work, skips damage, shuffles."""

import json
import multiprocessing
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data.ranks import env_rank_world
from data.split import epoch_ranges, resampled_shards, shuffle_buffer
from data.tario import TarIndex, TarReadError

MODES = ("epoch", "resampled")
OPEN_SHARDS = 8  # shard indexes (and file handles) a reader keeps: the shuffle window
WARN_LIMIT = 5  # per worker; the counter keeps counting after that


class ShardSetError(ValueError):
    """A shard folder is missing, incomplete or of another kind."""


def read_manifest(folder: Path | str, expected_format: str) -> dict:
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise ShardSetError(f"{folder} has no manifest.json: not a finished shard set "
                            "(build it, or re-run the build to finish it)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardSetError(f"{path} is not valid JSON ({err}): a damaged manifest; "
                            "re-run the build to rewrite it") from err
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not (isinstance(shards, list)
            and all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in shards)):
        raise ShardSetError(f"{path} is not a shard manifest (it needs a 'shards' list of "
                            "{name, count} entries); re-run the build to rewrite it")
    if manifest.get("format") != expected_format:
        raise ShardSetError(f"{folder} holds {manifest.get('format')!r} shards, "
                            f"expected {expected_format!r}")
    missing = [s["name"] for s in manifest["shards"] if not (folder / s["name"]).exists()]
    if missing:
        raise ShardSetError(f"{folder} lacks {len(missing)} shards listed in its manifest, "
                            f"e.g. {missing[0]}")
    return manifest


def damaged_shards(folder: Path | str, manifest: dict) -> list[str]:
    """Shards of a set that are missing, unreadable or hold fewer samples than their
    manifest says (member headers only: cheap, and run only when data was lost)."""
    folder, found = Path(folder), []
    for shard in manifest["shards"]:
        index = TarIndex(folder / shard["name"])
        if index.damage is not None or len(index) < shard["count"]:
            found.append(shard["name"])
    return found


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
        self.epoch, self._start = 0, None
        self._skipped = multiprocessing.get_context("fork").Value("q", 0)

    @property
    def skipped(self) -> int:
        """Corrupt or missing samples skipped so far, over all workers of this process."""
        return self._skipped.value

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._start = None  # (worker rotation, positions each worker drops): start_at_batch

    def decode(self, sample: dict, rng: np.random.Generator):
        raise NotImplementedError

    def _count_skip(self, n: int, message: str, warned: list[int]) -> None:
        with self._skipped.get_lock():
            self._skipped.value += n
        if warned[0] < WARN_LIMIT:
            warned[0] += 1
            warnings.warn(f"skipping {n} sample(s): {message}", stacklevel=3)

    def _positions(self, slot: int, num_slots: int) -> Iterator[tuple[int, int]]:
        """This slot's samples as (shard, index in shard), in read order (before shuffling)."""
        counts = [s["count"] for s in self.manifest["shards"]]
        if self.mode == "epoch":
            for shard, start, stop in epoch_ranges(counts, slot, num_slots, epoch=self.epoch,
                                                   seed=self.seed, shuffle=self.shuffle):
                for index in range(start, stop):
                    yield shard, index
        else:
            for shard in resampled_shards(len(counts), slot, epoch=self.epoch, seed=self.seed):
                for index in range(counts[shard]):
                    yield shard, index

    def _fetch(self, shard: int, index: int, indexes: OrderedDict, warned):
        """Raw sample ``index`` of a shard, or None (counted) when damage lost it."""
        tar = indexes.get(shard)
        if tar is None:
            tar = indexes[shard] = TarIndex(self.folder / self.manifest["shards"][shard]["name"])
            if len(indexes) > OPEN_SHARDS:
                indexes.popitem(last=False)[1].close()
        indexes.move_to_end(shard)
        if index >= len(tar):
            info = self.manifest["shards"][shard]
            self._count_skip(1, tar.damage or f"{info['name']} ends after {len(tar)} of "
                             f"{info['count']} samples", warned)
            return None
        try:
            return tar.read(index)
        except TarReadError as err:
            self._count_skip(1, str(err), warned)
            return None

    def start_at_batch(self, batches: int, batch_size: int, num_workers: int) -> bool:
        """Make the next iteration begin at batch ``batches`` of this epoch without reading
        or decoding the ones before: each worker drops the positions it had yielded.

        The DataLoader takes batch b from worker ``b % num_workers`` while every worker
        still has full batches, so the workers are renumbered (``rotation``) for batch
        ``batches`` to come first. Returns False, changing nothing, in the last rounds of
        an epoch where a worker may have run dry (the caller then replays instead). Exact
        unless corrupt samples were dropped before that point (each shifts its worker by
        one sample). ``set_epoch`` clears it."""
        workers = max(1, num_workers)
        if self.mode != "epoch" or batches < 1:
            return False
        counts = [s["count"] for s in self.manifest["shards"]]
        full = min(sum(stop - start for _, start, stop in epoch_ranges(
            counts, self.rank * workers + w, self.world_size * workers, epoch=self.epoch,
            seed=self.seed, shuffle=self.shuffle)) // batch_size for w in range(workers))
        if batches > workers * full:
            return False
        self._start = (batches % workers, [
            (batches - w + workers - 1) // workers * batch_size for w in range(workers)])
        return True

    def _slot(self) -> tuple[int, int, int]:
        """(slot, number of slots, positions to drop) of this process / worker."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        rotation, drops = self._start or (0, [0] * workers)
        if len(drops) != workers:
            raise ValueError(f"start_at_batch was told {len(drops)} workers, the loader has "
                             f"{workers}")
        logical = (worker + rotation) % workers
        return self.rank * workers + logical, self.world_size * workers, drops[logical]

    def __iter__(self):
        slot, num_slots, drop = self._slot()
        order_rng = np.random.default_rng([self.seed, self.epoch, slot])
        if get_worker_info() is not None:
            torch.set_num_threads(1)  # workers decode; many of them must not oversubscribe
        warned, indexes = [0], OrderedDict()
        order = shuffle_buffer(self._positions(slot, num_slots), self.shuffle_buffer_size,
                               order_rng)
        try:
            for n, (shard, index) in enumerate(islice(order, drop, None), start=drop):
                sample = self._fetch(shard, index, indexes, warned)
                if sample is None:
                    continue
                # each output position draws from its own generator: dropping positions
                # on resume leaves the augmentations of the rest unchanged
                rng = np.random.default_rng([self.seed, self.epoch, slot, n, 1])
                try:
                    item = self.decode(sample, rng)
                except Exception as err:  # a corrupt sample: count it, go on
                    self._count_skip(1, f"sample {sample.get('__key__')}: "
                                        f"{type(err).__name__}: {err}", warned)
                    continue
                yield item
        finally:
            for tar in indexes.values():
                tar.close()
