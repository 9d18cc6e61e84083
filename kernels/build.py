"""Lazy, cached build of the CUDA splat extension.

Importing ``kernels`` never compiles anything: :func:`load_extension` builds on first
call (minutes, once) into ``build/`` of this checkout ($GTGEN_BUILD_DIR moves it) and
reuses the result, rebuilding only when a source changes.

``python -m kernels.build`` compiles ahead of time (CI uses it to prove the source
compiles on a machine without a GPU).
"""

import argparse
import functools
import os
import shutil
import sys
import time
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "splat.cpp", CSRC / "splat_kernel.cu"]
EXTENSION_NAME = "gtgen_splat"
BUILD_ROOT = Path(os.environ.get("GTGEN_BUILD_DIR", Path(__file__).resolve().parents[1] / "build"))
"""Per-checkout build cache (git-ignored); $GTGEN_BUILD_DIR moves it."""
DEFAULT_ARCHS = "8.0;9.0"
"""Compiled for when no GPU is visible to pick the architecture from (A100, H100)."""


class BuildError(RuntimeError):
    """The CUDA extension cannot be built here; the message says why and what to set."""


def _has_cudart(root: Path) -> bool:
    return any((root / lib).glob("libcudart.so*") for lib in ("lib64", "lib"))


def find_cuda_home() -> Path:
    """The CUDA toolkit root: the folder whose lib64/ holds libcudart.so.

    Order: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then two levels above the real
    path of nvcc. (nvcc on PATH may be a wrapper script: the folder above the link is
    then not the toolkit, and linking fails with ``cannot find -lcudart``.)
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent.parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "bin" / "nvcc").exists() and _has_cudart(
            Path(candidate)
        ):
            return Path(candidate)
    raise BuildError(
        "no CUDA toolkit found (looked at $CUDA_HOME, $CUDA_PATH, /usr/local/cuda and the "
        "folder of nvcc on PATH for bin/nvcc and lib64/libcudart.so); set CUDA_HOME to the "
        "toolkit root"
    )


def nvcc_available() -> bool:
    try:
        find_cuda_home()
    except BuildError:
        return False
    return True


@functools.cache
def load_extension(verbose: bool = False):
    """Build (first call) or load (cached) the extension; returns the Python module."""
    cuda_home = find_cuda_home()
    os.environ["CUDA_HOME"] = str(cuda_home)  # before cpp_extension reads it at import
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        raise BuildError(f"this torch ({torch.__version__}) is a CPU-only build; "
                         "the CUDA splat kernel needs a CUDA build of torch")
    cpp_extension.CUDA_HOME = str(cuda_home)  # in case it was imported earlier
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    build_dir = BUILD_ROOT / f"{EXTENSION_NAME}-torch{torch.__version__}"
    build_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build_dir / "lock")
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(s) for s in SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


def _clear_stale_lock(lock: Path, max_age_s: float = 3600) -> None:
    """A build killed mid-way leaves torch's lock file, and the next build would wait on
    it forever; no build takes an hour, so an older lock is stale."""
    if lock.exists() and time.time() - lock.stat().st_mtime > max_age_s:
        print(f"kernels.build: removing stale build lock {lock}", file=sys.stderr)
        lock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.build",
        description="Compile the CUDA splat extension now instead of at first use.",
    )
    parser.add_argument("--arch", default=None,
                        help="TORCH_CUDA_ARCH_LIST to compile for, e.g. '9.0' "
                             f"(default: the visible GPU, or '{DEFAULT_ARCHS}' without one)")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    start = time.perf_counter()
    try:
        module = load_extension(verbose=args.verbose)
    except BuildError as err:
        print(f"kernels.build: {err}", file=sys.stderr)
        return 1
    print(f"built {module.__file__} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
