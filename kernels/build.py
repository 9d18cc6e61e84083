"""Lazy, cached builds of the splat extensions: the CUDA kernel, and the same kernel's
source compiled for the CPU under an emulation of CUDA's execution model.

Importing ``kernels`` never compiles anything: :func:`load_extension` (CUDA) and
:func:`load_emulated` (CPU, g++ only: no CUDA toolkit, no GPU) build on first call
(minutes, once) into ``build/`` of this checkout ($GTGEN_BUILD_DIR moves it) and reuse
the result, rebuilding only when a source changes.

``python -m kernels.build`` compiles ahead of time (CI uses it to prove the CUDA source
compiles on a machine without a GPU); ``--emulated`` builds the CPU emulation instead.
"""

import argparse
import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = [CSRC / "splat.cpp", CSRC / "splat_kernel.cu"]
EXTENSION_NAME = "gtgen_splat"
EMULATED_SOURCES = [CSRC / "splat_emulated.cpp"]
EMULATED_NAME = "gtgen_splat_emulated"
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
    build_dir = _build_dir(EXTENSION_NAME, torch.__version__)
    return cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(s) for s in SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", "-lineinfo"],
        build_directory=str(build_dir),
        verbose=verbose,
    )


@functools.cache
def load_emulated(verbose: bool = False):
    """Build (first call, about a minute) or load the CPU emulation of the CUDA kernels:
    the kernels' own source compiled by the host C++ compiler against
    ``csrc/emulate.h``; returns the Python module (forward, backward, configure,
    settings)."""
    import torch
    from torch.utils import cpp_extension

    build_dir = _build_dir(EMULATED_NAME, torch.__version__)
    try:
        return cpp_extension.load(
            name=EMULATED_NAME,
            sources=[str(s) for s in EMULATED_SOURCES],
            extra_cflags=["-O2", "-Wno-unknown-pragmas"],  # the kernels' #pragma unroll
            build_directory=str(build_dir),
            verbose=verbose,
        )
    except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
        raise BuildError(f"the CPU emulation of the splat kernel did not build ({err}); it "
                         "needs a C++20 compiler (g++ >= 10) and ninja") from err


def _build_dir(name: str, torch_version: str) -> Path:
    """The extension's build folder. Headers need no part in its name: the first load in
    a process always runs ninja, whose depfiles rebuild what a changed header reaches."""
    build_dir = BUILD_ROOT / f"{name}-torch{torch_version}"
    build_dir.mkdir(parents=True, exist_ok=True)
    _clear_stale_lock(build_dir / "lock")
    return build_dir


def _clear_stale_lock(lock: Path, max_age_s: float = 3600) -> None:
    """A build killed mid-way leaves torch's lock file, and the next build would wait on
    it forever; no build takes an hour, so an older lock is stale."""
    if lock.exists() and time.time() - lock.stat().st_mtime > max_age_s:
        print(f"kernels.build: removing stale build lock {lock}", file=sys.stderr)
        lock.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.build",
        description="Compile the CUDA splat extension (or with --emulated its CPU emulation) "
                    "now instead of at first use.",
    )
    parser.add_argument("--arch", default=None,
                        help="TORCH_CUDA_ARCH_LIST to compile for, e.g. '9.0' "
                             f"(default: the visible GPU, or '{DEFAULT_ARCHS}' without one)")
    parser.add_argument("--emulated", action="store_true",
                        help="build the CPU emulation of the kernel (g++ only) instead")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's commands")
    args = parser.parse_args(argv)
    if args.arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = args.arch
    start = time.perf_counter()
    try:
        module = (load_emulated if args.emulated else load_extension)(verbose=args.verbose)
    except BuildError as err:
        print(f"kernels.build: {err}", file=sys.stderr)
        return 1
    print(f"built {module.__file__} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
