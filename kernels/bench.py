"""Benchmark of the splat op: reference vs CUDA kernel, forward and forward+backward.

    python -m kernels.bench                 # every configuration, GPU if there is one
    python -m kernels.bench --device cpu    # reference rows only

Columns: median time of the PyTorch reference and of the kernel, the speed-up, the
peak memory each allocates beyond its inputs, and the time floor: the fewest bytes
the pass must move (each input read once, each output written once) over the
bandwidth of a large copy measured in the same run. On a machine without a GPU only
the reference rows are printed. Each CPU row runs in a fresh subprocess so that its
peak resident memory (ru_maxrss) is its own.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from kernels.reference import splat_reference
from kernels.splat import splat


@dataclass(frozen=True)
class Config:
    name: str
    B: int
    N: int
    C: int
    H: int
    W: int


CONFIGS = [
    Config("imagenet", 64, 256, 8, 32, 32),
    Config("cifar", 256, 64, 3, 16, 16),
    Config("wide-c", 64, 256, 256, 16, 16),
    Config("large", 16, 1024, 16, 64, 64),
    Config("small-map", 256, 16, 8, 8, 8),  # 8 px forward tiles (gaussian-debug maps)
]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_inputs(cfg: Config, dtype: torch.dtype, device: str, seed: int = 0):
    """Typical tokenizer geometry: means over the map, scales 0.5-3 px, random angles."""
    g = torch.Generator().manual_seed(seed)
    B, N = cfg.B, cfg.N
    means = torch.rand(B, N, 2, generator=g) * 2 - 1
    scales = 0.5 + 2.5 * torch.rand(B, N, 2, generator=g)
    rotations = torch.rand(B, N, generator=g) * torch.pi
    features = torch.randn(B, N, cfg.C, generator=g).to(dtype)
    opacity = torch.rand(B, N, generator=g).to(dtype)
    tensors = [means, scales, rotations, features, opacity]
    return [t.to(device).requires_grad_() for t in tensors]


def min_bytes(cfg: Config, dtype: torch.dtype, backward: bool) -> int:
    """Fewest bytes a pass must move: inputs read once, outputs written once."""
    elt = torch.empty((), dtype=dtype).element_size()
    per_gaussian = 5 * 4 + (cfg.C + 1) * elt  # fp32 geometry, features + opacity
    inputs = cfg.B * cfg.N * per_gaussian
    image = cfg.B * cfg.C * cfg.H * cfg.W * elt
    forward = inputs + image
    # backward reads the inputs and grad_out, writes one gradient per input
    return forward + (2 * inputs + image if backward else 0)


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large device copy, counting bytes read plus bytes written."""
    n = (1 << 28) if device == "cuda" else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    times = [_time(lambda: dst.copy_(src), device) for _ in range(10)]
    return 2 * n / statistics.median(times)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: str) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _step(impl: str, inputs, cfg: Config, backward: bool, grad_out):
    def forward():
        if impl == "reference":
            return splat_reference(*inputs, height=cfg.H, width=cfg.W)
        return splat(*inputs, height=cfg.H, width=cfg.W, backend="cuda")

    def run():
        if backward:
            torch.autograd.grad(forward(), inputs, grad_out)
        else:
            with torch.no_grad():
                forward()
    return run


def measure(cfg: Config, impl: str, device: str, dtype: torch.dtype, backward: bool,
            repeats: int) -> dict:
    """Median seconds and peak extra bytes of one (configuration, implementation, pass)."""
    inputs = make_inputs(cfg, dtype, device)
    grad_out = torch.randn(cfg.B, cfg.C, cfg.H, cfg.W, device=device).to(dtype)
    run = _step(impl, inputs, cfg, backward, grad_out)
    # ru_maxrss is a high-water mark: on the CPU take the baseline before the first run
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run()  # warm-up: builds/loads the extension, fills caches
    _sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = [_time(run, device) for _ in range(repeats)]
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:  # high-water mark of this fresh process beyond its state after the warm-up
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": statistics.median(times), "peak_bytes": max(peak, 0)}


def _measure_in_subprocess(cfg: Config, impl, device, dtype_name, backward, repeats) -> dict:
    """CPU rows: a fresh process per row so ru_maxrss measures this row alone."""
    payload = json.dumps({"cfg": asdict(cfg), "impl": impl, "device": device,
                          "dtype": dtype_name, "backward": backward, "repeats": repeats})
    done = subprocess.run([sys.executable, "-m", "kernels.bench", "--_row", payload],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.3f}"


def _fmt_mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def run_bench(device: str, dtype_name: str, repeats: int, names: list[str]) -> str:
    dtype = DTYPES[dtype_name]
    bandwidth = copy_bandwidth(device)
    with_kernel = device == "cuda"
    where = torch.cuda.get_device_name() if with_kernel else "CPU (reference only)"
    lines = [
        f"device: {where}; dtype: {dtype_name}; median of {repeats}; "
        f"copy bandwidth {bandwidth / 1e9:.1f} GB/s",
        "",
        "| config | B | N | C | HxW | pass | reference ms | kernel ms | speed-up "
        "| ref peak MiB | kernel peak MiB | floor ms | kernel / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cfg in (c for c in CONFIGS if c.name in names):
        for backward in (False, True):
            measure_row = measure if with_kernel else _measure_in_subprocess
            arg_dtype = dtype if with_kernel else dtype_name
            ref = measure_row(cfg, "reference", device, arg_dtype, backward, repeats)
            ker = (measure(cfg, "kernel", device, dtype, backward, repeats)
                   if with_kernel else None)
            floor = min_bytes(cfg, dtype, backward) / bandwidth
            k_s = ker["seconds"] if ker else None
            speedup = f"{ref['seconds'] / k_s:.1f}x" if k_s else "-"
            over_floor = f"{k_s / floor:.1f}" if k_s else "-"
            lines.append(
                f"| {cfg.name} | {cfg.B} | {cfg.N} | {cfg.C} | {cfg.H}x{cfg.W} "
                f"| {'fwd+bwd' if backward else 'fwd'} | {_fmt_ms(ref['seconds'])} "
                f"| {_fmt_ms(k_s)} | {speedup} | {_fmt_mib(ref['peak_bytes'])} "
                f"| {_fmt_mib(ker['peak_bytes'] if ker else None)} | {_fmt_ms(floor)} "
                f"| {over_floor} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)  # progress while it runs
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="where to run (auto: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of features and opacity (geometry is always float32)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per row, after one warm-up (default 20 GPU, 3 CPU)")
    parser.add_argument("--configs", default=",".join(c.name for c in CONFIGS),
                        help="comma-separated subset of: " + ", ".join(c.name for c in CONFIGS))
    parser.add_argument("--_row", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._row:  # internal: one CPU row in a fresh process
        row = json.loads(args._row)
        result = measure(Config(**row["cfg"]), row["impl"], row["device"], DTYPES[row["dtype"]],
                         row["backward"], row["repeats"])
        print(json.dumps(result))
        return 0
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("kernels.bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 1
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = set(names) - {c.name for c in CONFIGS}
    if unknown:
        print(f"kernels.bench: unknown configs {sorted(unknown)}", file=sys.stderr)
        return 1
    repeats = args.repeats or (20 if device == "cuda" else 3)
    print(run_bench(device, args.dtype, repeats, names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
