"""Command-line helpers shared by every entry point: argparse types, output-path checks
before any work, and parsers whose usage errors are one line with exit status 2."""

import argparse
import os
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (batch sizes, counts, limits)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _check_writable_place(path: Path, flag: str) -> None:
    """ValueError when ``path`` cannot be created: something on its way is a file, or the
    nearest existing folder is not writable."""
    nearest = _nearest_existing(path.parent)
    if not nearest.is_dir():
        raise ValueError(f"{flag} {path}: {nearest} is a file, not a folder")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder {nearest} is not writable")


def require_output_file(path, flag: str) -> None:
    """ValueError (one line, naming the flag) for an output file that cannot be written:
    an existing folder of that name, a missing folder, or one under a file or not
    writable. Checked before any work, so a long job never fails at its last write."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; give a file name")
    _check_writable_place(path, flag)
    if not path.parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {path.parent} does not exist")


def require_output_dir(path, flag: str) -> None:
    """ValueError (one line, naming the flag) for an output folder that cannot be made:
    an existing file of that name, or a place under a file or not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path}: is a file, not a folder")
    if not path.exists():
        _check_writable_place(path, flag)
    elif not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: the folder is not writable")


def check_device(device: str):
    """A torch device that exists here, or ValueError naming what is missing."""
    import torch  # the CLI helpers above do not need it

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: not a device name ({err})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this machine has no CUDA GPU (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device}: only cpu and cuda are supported")
    return dev


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (``prog: error: ...``) and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def one_line_parser(**kwargs) -> OneLineParser:
    """An ``argparse.ArgumentParser`` whose usage errors are one line with exit status 2,
    like our other input errors; the description (a module docstring) is printed as
    written."""
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    return OneLineParser(**kwargs)
