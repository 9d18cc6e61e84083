"""Tensors of a TorchScript archive, read without torch.jit and without running its code.

A TorchScript file is a zip holding ``<name>/data.pkl`` (the module tree as a pickle
of ``__torch__.*`` objects whose attributes are submodules and tensors) and
``<name>/data/<key>`` (raw storages). The pickle is read by an unpickler that admits
only: ``__torch__.*`` classes (turned into plain attribute records), tensor rebuilds,
storage types, OrderedDict and the jit's list builders; anything else is refused.
Result: {"dotted.attribute.path": tensor}, e.g. ``net.layers.conv.weight``.
"""

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import torch

_STORAGES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64,
             "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
             "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8,
             "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class NotTorchScript(ValueError):
    """The file is not a TorchScript archive this reader understands."""


class _Record:
    """Stands for any ``__torch__`` object: its pickled attributes, nothing else."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


def _rebuild_tensor(storage, offset, size, stride, *_):
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _as_list(*args):
    return list(args[0]) if len(args) == 1 else list(args)


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str):
        import io

        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module.startswith("__torch__"):
            return _Record
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _as_list
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        raise pickle.UnpicklingError(f"refusing {module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return torch.frombuffer(bytearray(raw), dtype=dtype)[:numel]


def _walk(obj, path: str, out: dict, seen: set) -> None:
    if isinstance(obj, torch.Tensor):
        out[path] = obj
    elif isinstance(obj, _Record) and id(obj) not in seen:
        seen.add(id(obj))
        for name, value in obj.__dict__.items():
            _walk(value, f"{path}.{name}" if path else name, out, seen)


def read_tensors(path) -> dict[str, torch.Tensor]:
    """{attribute path: tensor} of a TorchScript file (NotTorchScript if it is not one)."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")
                       and n.count("/") == 1]
            if not pickles:
                raise NotTorchScript(f"{path}: a zip without a TorchScript data.pkl")
            prefix = pickles[0].split("/")[0]
            root = _Unpickler(archive.read(pickles[0]), archive, prefix).load()
    except NotTorchScript:
        raise
    except zipfile.BadZipFile:
        raise NotTorchScript(f"{path}: not a zip archive") from None
    except (pickle.UnpicklingError, ValueError, KeyError, TypeError, EOFError) as err:
        raise NotTorchScript(f"{path}: unreadable TorchScript pickle ({err})") from None
    out: dict[str, torch.Tensor] = {}
    _walk(root, "", out, set())
    if not out:
        raise NotTorchScript(f"{path}: no tensors in the TorchScript module")
    return out
