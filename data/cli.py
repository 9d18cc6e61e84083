"""Command-line helpers shared by every entry point: argparse types, output-path checks
before any work, and parsers whose usage errors are one line with exit status 2."""

import argparse
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


def require_parent_dir(path, flag: str) -> None:
    """ValueError for an output path whose folder does not exist (checked before any
    work, so a long job never fails at its last write)."""
    if path is not None and not Path(path).parent.is_dir():
        raise ValueError(f"{flag} {path}: the folder {Path(path).parent} does not exist")


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
