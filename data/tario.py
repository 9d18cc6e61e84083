"""Deterministic, atomic tar writing and tolerant tar reading for shards."""

import io
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


def write_tar_atomic(path: Path, samples: Iterable[dict[str, bytes]]) -> int:
    """Write samples (``{"__key__": key, ext: bytes, ...}``) to a tar at ``path``.

    The bytes depend on the samples alone (fixed mtime, owner and mode, members in
    sorted extension order), so rebuilding gives an identical file. Written to a
    temporary name and renamed, so a crash never leaves a half shard under ``path``.
    Returns the number of samples written.
    """
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                key = sample["__key__"]
                if "." in key or "/" in key:
                    raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
                for ext in sorted(k for k in sample if k != "__key__"):
                    data = sample[ext]
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    info.uid = info.gid = 0
                    info.uname = info.gname = ""
                    tar.addfile(info, io.BytesIO(data))
                count += 1
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return count


class TarReadError(Exception):
    """A shard is unreadable or truncated; samples before the damage were yielded."""


def iter_tar_samples(path: Path | str) -> Iterator[dict[str, bytes]]:
    """Yield samples grouped by key, in file order; raise TarReadError on damage.

    Members whose names have no extension are ignored. A truncated tail never yields
    half a sample: the samples before the damage come out, then the error.
    """
    index = TarIndex(path)
    try:
        for i in range(len(index)):
            yield index.read(i)
    finally:
        index.close()
    if index.damage is not None:
        raise TarReadError(index.damage)


def iter_shard_tolerant(path: Path | str, expected: int | None,
                        on_loss: Callable[[int, str], None],
                        decode: Callable[[dict[str, bytes]], object] | None = None) -> Iterator:
    """``iter_tar_samples`` for readers that must go on past damage: the one tolerant
    shard reader of token extraction and evaluation.

    With ``decode``, yields ``decode(sample)`` and skips a sample it raises on, reported
    as ``on_loss(1, reason)``. Past a truncated or unreadable tar, reports the samples
    missing from ``expected`` once as ``on_loss(lost, reason)`` and returns normally
    (``expected`` None: only damage the tar reader notices, lost = 0)."""
    seen = 0
    reason = None
    try:
        for sample in iter_tar_samples(path):
            seen += 1
            if decode is None:
                yield sample
                continue
            try:
                item = decode(sample)
            except Exception as err:  # a damaged sample: skip it, count it
                on_loss(1, f"{Path(path).name} sample {sample['__key__']} "
                           f"({type(err).__name__})")
                continue
            yield item
    except TarReadError as err:
        reason = str(err)
    lost = 0 if expected is None else max(0, expected - seen)
    if reason is None and lost:
        reason = f"{Path(path).name} ends after {seen} of {expected} samples"
    if reason is not None:
        on_loss(lost, reason)


def batched(items: Iterable, n: int) -> Iterator[list]:
    """Lists of n consecutive items (the last one shorter), e.g. of a shard reader's
    decoded samples for a model or a writer."""
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


class TarIndex:
    """Random access to the samples of one tar: member headers are scanned once (the data
    is skipped by seeking), then ``read(i)`` fetches sample i's bytes alone.

    Members are grouped into samples by key in file order (names without an extension
    are ignored). On damage (a missing or unreadable file, a bad header, a member running
    past the end of the file) the samples before it are kept, the one in progress is
    dropped, and ``damage`` names the problem."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.keys: list[str] = []
        self._members: list[dict[str, tuple[int, int]]] = []  # ext -> (offset, size)
        self.damage: str | None = None
        current: dict[str, tuple[int, int]] = {}
        key = None
        try:
            size = self.path.stat().st_size
            with tarfile.open(self.path, mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)[-1]
                    name, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    if current and name != key:
                        self.keys.append(key)
                        self._members.append(current)
                        current = {}
                    key = name
                    current[ext] = (member.offset_data, member.size)
                    if member.offset_data + member.size > size:
                        raise tarfile.ReadError(f"member {member.name} runs past the end")
        except (tarfile.TarError, OSError, EOFError) as err:
            self.damage = f"{self.path}: {err}"
            current = {}
        if current:
            self.keys.append(key)
            self._members.append(current)
        self._file = None

    def __len__(self) -> int:
        return len(self._members)

    def read(self, index: int) -> dict[str, bytes]:
        """Sample ``index`` as ``{"__key__": key, ext: bytes}``; TarReadError if unreadable."""
        try:
            if self._file is None:
                self._file = open(self.path, "rb")
            sample = {"__key__": self.keys[index]}
            for ext, (offset, size) in self._members[index].items():
                self._file.seek(offset)
                data = self._file.read(size)
                if len(data) != size:
                    raise EOFError(f"member {self.keys[index]}.{ext} is cut short")
                sample[ext] = data
            return sample
        except (OSError, EOFError) as err:
            raise TarReadError(f"{self.path}: {err}") from err

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
