"""How fast the CPU emulation of the splat kernels runs, per way of running a block.

    python -m kernels.bench_emulated

Rows: the kernel's source under kernels/csrc/emulate.h with a block's threads as fibers
(shared-memory checks on, the default, and off) or as one OS thread per CUDA thread
(what ThreadSanitizer needs), beside the PyTorch reference in fp32 on the same inputs,
all in this one process; ratios against fibers with checks. Threads run only the small
case: at 256 OS threads a block they take seconds where fibers take milliseconds.
"""

import argparse
import sys
import time

import torch

from kernels.bench import Config, make_inputs
from kernels.build import load_emulated
from kernels.splat import splat

CASES = [Config("small", 1, 64, 8, 16, 16), Config("medium", 2, 256, 8, 32, 32)]
MODES = {  # name: (configure kwargs, or None for the reference; cases it runs)
    "fibers, checks": ({"mode": "fibers", "check_shared": True}, ("small", "medium")),
    "fibers, no checks": ({"mode": "fibers", "check_shared": False}, ("small", "medium")),
    "threads": ({"mode": "threads", "check_shared": False}, ("small",)),
    "reference fp32": (None, ("small", "medium")),
}


def _time(cfg: Config, settings: dict | None) -> tuple[float, float]:
    """(forward s, backward s) of one call, after one warm-up call."""
    inputs = make_inputs(cfg, torch.float32, "cpu")
    backend = "reference" if settings is None else "emulated"
    if settings is not None:
        load_emulated().configure(**settings)
    grad_out = torch.ones(cfg.B, cfg.C, cfg.H, cfg.W)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        out = splat(*inputs, height=cfg.H, width=cfg.W, backend=backend)
        mid = time.perf_counter()
        torch.autograd.grad(out, inputs, grad_out)
        times.append((mid - start, time.perf_counter() - mid))
    return times[-1]


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m kernels.bench_emulated",
                            description=__doc__.split("\n\n")[0]).parse_args(argv)
    load_emulated()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads\n")
    print("| case | B | N | C | HxW | mode | forward ms | backward ms | fwd+bwd vs fibers, "
          "checks |")
    print("|---|---|---|---|---|---|---|---|---|")
    try:
        for cfg in CASES:
            base = None
            for mode, (settings, cases) in MODES.items():
                if cfg.name not in cases:
                    continue
                fwd, bwd = _time(cfg, settings)
                base = base or fwd + bwd
                print(f"| {cfg.name} | {cfg.B} | {cfg.N} | {cfg.C} | {cfg.H}x{cfg.W} | {mode} "
                      f"| {fwd * 1e3:.1f} | {bwd * 1e3:.1f} | {(fwd + bwd) / base:.2f}x |",
                      flush=True)
    finally:
        load_emulated().configure()
    return 0


if __name__ == "__main__":
    sys.exit(main())
