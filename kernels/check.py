"""Race, bounds and fault-injection checks of the splat kernels' own source on the CPU.

The standalone driver ``csrc/emulate_check.cpp`` (no torch) runs the kernels of
``csrc/splat_device.cuh`` under the emulation of ``csrc/emulate.h`` on exactly sized
heap buffers and compares forward, feature and opacity gradients with a float64 brute
force. It is built four ways:

* ``shadow``: plain build, threads as fibers, every shared-memory access checked against
  its shadow record (uninitialised reads, races between two __syncthreads, bounds);
* ``ucontext``: the same with the portable fiber switch (ucontext) that machines other
  than x86-64 use instead of the few lines of assembly;
* ``asan``: AddressSanitizer, shadow checks off: out-of-bounds global (and stack) access;
* ``tsan``: ThreadSanitizer with one OS thread per CUDA thread: any pair of accesses of
  two threads not ordered by a barrier (small cases: 256 OS threads a block).

Each build also fails on a numeric mismatch or an emulation error (misuse, deadlock).
``FAULTS`` are copies of the kernel source with one edit each; every one must be caught.
``BENIGN`` edits change no result (the culling box's one pixel of slack); none may be.

    python -m kernels.check            # the kernel as it is, under every checker
    python -m kernels.check --faults   # and the table: which checker catches which fault
"""

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from kernels.build import BUILD_ROOT, CSRC

DRIVER = "emulate_check.cpp"
SANITIZER_EXIT = 66
"""Exit status of a sanitizer report (ASan's is set to it; it is TSan's default)."""
VERDICTS = {0: "passed", 1: "numeric mismatch", 2: "emulation error", SANITIZER_EXIT:
            "sanitizer report"}


@dataclasses.dataclass(frozen=True)
class Checker:
    flags: tuple[str, ...]
    runs: tuple[tuple[str, ...], ...]  # driver arguments, one run each


TSAN_CASES = ("--case", "1,300,5,16,16,1.1", "--case", "2,40,3,20,20", "--case",
              "1,20,33,12,24")
CHECKERS = {
    "shadow": Checker(("-O1",), ((),)),
    # the same with ucontext's fiber switch, which non-x86-64 machines use
    "ucontext": Checker(("-O1", "-DEMU_UCONTEXT"), ((),)),
    "asan": Checker(("-O1", "-fsanitize=address", "-fno-omit-frame-pointer"),
                    (("--no-shared-check",),)),
    # forward on cases with two Gaussian batches and both tiles; backward on a small one
    "tsan": Checker(("-O1", "-fsanitize=thread"),
                    (("--mode", "threads", "--forward-only", *TSAN_CASES),
                     ("--mode", "threads", "--case", "1,12,3,20,20"))),
}

FAULTS = {
    # name: (what, the exact text of splat_device.cuh, what it becomes)
    "barrier-before-pixels": (
        "the __syncthreads between the compaction into shared memory and the pixel loop "
        "removed",
        "    __syncthreads();\n    // 3. Every pixel sums",
        "    // 3. Every pixel sums"),
    "barrier-after-counts": (
        "the __syncthreads between the per-warp counts and their reads removed",
        "    if (lane == 0) s_warp_count[warp] = __popc(ballot);\n    __syncthreads();\n",
        "    if (lane == 0) s_warp_count[warp] = __popc(ballot);\n"),
    "box-short": (
        "a Gaussian's bounding box clipped one pixel short of the map's right edge",
        "box.x1 = min(W - 1,",
        "box.x1 = min(W - 2,"),
    "tile-bound-short": (
        "a tile's pixel guard one short: the map's last column is never written",
        "const bool inside = x < W && y < H;",
        "const bool inside = x < W - 1 && y < H;"),
    "warp-sum-half": (
        "the warp reduction over 16 lanes instead of 32 (first offset 8)",
        "for (int offset = 16; offset > 0; offset /= 2)",
        "for (int offset = 8; offset > 0; offset /= 2)"),
    "read-before-write": (
        "the pixel loop reads one shared slot past the kept Gaussians (j <= total)",
        "for (int j = 0; j < total; ++j)",
        "for (int j = 0; j <= total; ++j)"),
    "write-out-of-bounds": (
        "the forward's pixel guard one column wide (x <= W): writes past each row",
        "const bool inside = x < W && y < H;",
        "const bool inside = x <= W && y < H;"),
}
BENIGN = {
    # Edits that change no result, so that no checker can (or should) catch them: the
    # culling box is floor / ceil of the ellipse's padded extremes, so its outermost
    # columns hold no pixel centre inside the ellipse; one pixel less on either side, in
    # the box or in the tile it is tested against, drops nothing.
    "box-tight": (
        "a Gaussian's bounding box one pixel narrower on the right (ceil - 1)",
        "box.x1 = min(W - 1, static_cast<int>(ceilf(",
        "box.x1 = min(W - 1, -1 + static_cast<int>(ceilf("),
    "tile-cull-short": (
        "the culling test against a tile one column short (tx1 - 1)",
        "const int tx1 = min(tx0 + TILE, W) - 1,",
        "const int tx1 = min(tx0 + TILE, W) - 2,"),
}


class CheckError(RuntimeError):
    """The driver could not be built (no compiler, no sanitizer runtime)."""


@dataclasses.dataclass
class Outcome:
    status: int
    output: str

    @property
    def verdict(self) -> str:
        return VERDICTS.get(self.status, f"exit status {self.status}")

    @property
    def caught(self) -> bool:
        return self.status != 0

    def first_report(self) -> str:
        """The line that says what was found (a sanitizer's, the emulation's, a case's)."""
        lines = self.output.splitlines()
        for marks in (("ERROR: AddressSanitizer", "WARNING: ThreadSanitizer"),
                      ("emulation error",), ("MISMATCH",)):
            for line in lines:
                if any(mark in line for mark in marks):
                    return line.strip()
        return self.output.strip().splitlines()[-1] if self.output.strip() else ""


def compiler() -> str:
    return os.environ.get("CXX", "g++")


def build(checker: str, csrc: Path = CSRC, out_dir: Path | None = None) -> Path:
    """The driver built from csrc with the checker's flags (cached by source content)."""
    flags = ["-std=c++20", "-g", "-Wno-unknown-pragmas", *CHECKERS[checker].flags]
    sources = sorted(p for p in csrc.iterdir() if p.suffix in (".h", ".cuh", ".cpp"))
    key = hashlib.sha1(" ".join(flags).encode() + b"".join(p.read_bytes() for p in sources))
    out_dir = out_dir or BUILD_ROOT / "emulate_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / f"{checker}-{key.hexdigest()[:12]}"
    if binary.exists():
        return binary
    tmp = binary.with_suffix(".tmp")
    try:
        proc = subprocess.run([compiler(), *flags, str(csrc / DRIVER), "-o", str(tmp)],
                              capture_output=True, text=True)
    except FileNotFoundError as err:
        raise CheckError(f"no C++ compiler ({compiler()}): {err}") from err
    if proc.returncode != 0:
        raise CheckError(f"building the {checker} driver failed:\n{proc.stderr[-3000:]}")
    tmp.replace(binary)
    return binary


def run(binary: Path, checker: str, timeout: float = 300) -> Outcome:
    """Every run of the checker; the first that fails decides the outcome."""
    env = dict(os.environ, ASAN_OPTIONS=f"exitcode={SANITIZER_EXIT}:detect_leaks=0",
               TSAN_OPTIONS=f"exitcode={SANITIZER_EXIT}")
    output = []
    for args in CHECKERS[checker].runs:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                              timeout=timeout)
        output.append(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            return Outcome(proc.returncode, "".join(output))
    return Outcome(0, "".join(output))


def faulty_source(fault: str, dest: Path) -> Path:
    """A copy of csrc/ in dest with the fault's one edit applied to splat_device.cuh."""
    _, old, new = (FAULTS | BENIGN)[fault]
    dest.mkdir(parents=True, exist_ok=True)
    for path in CSRC.iterdir():
        if path.suffix in (".h", ".cuh", ".cpp", ".cu"):
            shutil.copy(path, dest / path.name)
    device = dest / "splat_device.cuh"
    text = device.read_text()
    if text.count(old) != 1:
        raise CheckError(f"fault {fault!r}: its text occurs {text.count(old)} times in "
                         "splat_device.cuh (expected once); update FAULTS")
    device.write_text(text.replace(old, new))
    return dest


def check(checker: str, fault: str | None = None) -> Outcome:
    """The checker on the kernel as it is, or with one fault put in."""
    if fault is None:
        return run(build(checker), checker)
    with tempfile.TemporaryDirectory(prefix=f"gtgen-fault-{fault}-") as tmp:
        csrc = faulty_source(fault, Path(tmp) / "csrc")
        return run(build(checker, csrc, Path(tmp) / "bin"), checker)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kernels.check",
        description="Run the splat kernels' source under the CPU emulation with a shadow "
                    "race checker, AddressSanitizer and ThreadSanitizer (kernels/csrc/"
                    "emulate_check.cpp); with --faults also every injected fault.")
    parser.add_argument("--faults", action="store_true",
                        help="also build each fault of kernels.check.FAULTS under every "
                             "checker and print which checker catches which")
    parser.add_argument("--checkers", default=",".join(CHECKERS),
                        help=f"comma-separated subset of {', '.join(CHECKERS)}")
    args = parser.parse_args(argv)
    checkers = args.checkers.split(",")
    unknown = sorted(set(checkers) - set(CHECKERS))
    if unknown:
        parser.error(f"unknown checker(s) {', '.join(unknown)}; choose from "
                     f"{', '.join(CHECKERS)}")
    clean = True
    try:
        for name in checkers:
            outcome = check(name)
            clean = clean and not outcome.caught
            print(f"kernel as it is, {name}: {outcome.verdict}"
                  + ("" if not outcome.caught else f": {outcome.first_report()}"), flush=True)
        missed = []
        if args.faults:
            for fault, (what, _, _) in (FAULTS | BENIGN).items():
                benign = fault in BENIGN
                print(f"\n{'benign edit' if benign else 'fault'} {fault}: {what}", flush=True)
                outcomes = {name: check(name, fault) for name in checkers}
                for name, outcome in outcomes.items():
                    report = f": {outcome.first_report()[:160]}" if outcome.caught else ""
                    print(f"  {name:6s} {outcome.verdict}{report}", flush=True)
                if benign and any(o.caught for o in outcomes.values()):
                    missed.append(f"{fault} (benign, yet caught: a false alarm)")
                if not benign and not any(o.caught for o in outcomes.values()):
                    missed.append(fault)
            if missed:
                print(f"\nwrong verdicts: {', '.join(missed)}")
    except (CheckError, subprocess.TimeoutExpired) as err:
        print(f"kernels.check: {err}", file=sys.stderr)
        return 2
    return 0 if clean and not (args.faults and missed) else 1


if __name__ == "__main__":
    sys.exit(main())
