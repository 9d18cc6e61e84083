"""Files every stage writes and reads: atomic writes, checkpoints loaded without running
pickled code, safetensors weights, JSON sidecars, and SHA-1 fingerprints.

A write goes to ``<name>.tmp`` and is renamed over ``<name>``: readers (and a crash)
see the old file or the new one, never half of one. A file that cannot be used is a
one-line ``WeightsError`` naming it.
"""

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=sort_keys) + "\n")


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
    from safetensors.torch import save_file  # optional dependency of the readers' side

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


class WeightsError(ValueError):
    """A weights, checkpoint or config file that cannot be used: missing, damaged, not
    ours, or not matching the model it is loaded into. One line, naming the file."""


def first_line(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for one-line errors."""
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
                           f"({first_line(err)})") from err


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
                           f"({first_line(err)})") from err


def read_json(path: Path, what: str, keys: tuple[str, ...] = ()) -> dict:
    """A JSON object from ``path`` holding ``keys``; otherwise a WeightsError naming it."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} ({what}) does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"{path} ({what}) is not valid JSON ({first_line(err)})") from err
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


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensors_sha1(state: dict[str, torch.Tensor]) -> str:
    """sha1 over sorted keys and the tensors' bytes (a weights fingerprint that does not
    depend on the file format they were stored in)."""
    h = hashlib.sha1()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()
