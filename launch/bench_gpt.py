"""GPT speed as trained and sampled here: training tuples/s and MFU through
launch.train_gpt's DeepSpeed step, sampling images/s (KV cache eager and compiled, and
the no-cache loop) with peak memory.

    python -m launch.bench_gpt                                   # GPU: GPT-B, ImageNet tuples
    python -m launch.bench_gpt --size debug --tokenizer gaussian-debug   # a CPU minute
    python -m launch.bench_gpt --set deepspeed.zero_stage=2 --set compile=true

Training: a ``launch.train_gpt.Trainer`` (DeepSpeed engine, its bf16 and ZeRO settings,
``--set`` any run-config key) of the tuple model for ``--tokenizer``'s vocabularies and
tuple count, timed over ``Trainer.micro_step`` on one fixed batch of random tuples (data
loading excluded: ``python -m data.bench`` measures the loader), once per attention
kernel in ``--attention`` (xformers only where it runs). MFU = achieved FLOP/s
(``flops_per_token``: every matmul of the tuple model, 6x, plus attention) over two
ceilings: the GPU's datasheet dense bf16 peak (``--peak-tflops`` where the name is not
in PEAK_TFLOPS) and a large bf16 matrix product measured in the same run.
Sampling: CFG 2.0 at ``--batch`` (doubled by CFG), bf16 weights and cache on a GPU.
"""

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from data import config as configlib
from data.cli import positive_int
from data.tokens import FORMAT_TAG
from generator.config import SIZES
from generator.model import count_parameters, flops_per_token, xformers_runs
from generator.sampling import generate
from launch.run_config import resolve_gpt_config
from launch.train_gpt import Trainer
from tokenizer.build import build_tokenizer
from tokenizer.registry import registry_config

PEAK_TFLOPS = {  # dense bf16 tensor-core peaks from the vendors' datasheets (no sparsity)
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "GH200": 989.4,
    "A100": 312.0, "A10G": 70.0, "L40S": 362.0, "L4": 121.0,
}


def datasheet_peak(name: str) -> float | None:
    """TFLOP/s for a device name (longest matching key first), None when unknown."""
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats):
    fn()  # warm-up (and, for a compiled path, the compilation)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(device, dtype) -> float:
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / _timed(lambda: a @ b, device, 5)


def tuple_shape(tokenizer_size: str) -> dict:
    """vocab_sizes, num_tokens and token_layout of a registry tokenizer (built on the
    meta device: no weights)."""

    with torch.device("meta"):
        tok = build_tokenizer(registry_config(tokenizer_size))
    return {"vocab_sizes": tok.vocab_sizes, "num_tokens": tok.num_tokens,
            "token_layout": tok.token_layout.to_dict()}


def make_trainer(folder: Path, shape: dict, args, attention: str):
    """A Trainer over an empty token shard set of ``shape`` (only its manifest is read)."""

    tokens = folder / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    (tokens / "manifest.json").write_text(json.dumps({
        "format": FORMAT_TAG, **shape, "tuple_size": len(shape["vocab_sizes"]),
        "num_views": 1, "num_classes": 1000, "total": 0, "tokenizer": {"name": "bench"},
        "image_dir": None, "shards": []}))
    overrides = [f"data.tokens={tokens}", f"data.batch_size={args.batch}", f"size={args.size}",
                 f"out={folder / attention}", f"attention={attention}", "ema_decay=0",
                 *args.set]
    return Trainer(resolve_gpt_config(args.config, overrides), progress=False)


def random_batch(shape: dict, batch: int, device):
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 1000, (batch,), generator=gen)
    tokens = torch.stack([torch.randint(0, v, (batch, shape["num_tokens"]), generator=gen)
                          for v in shape["vocab_sizes"]], -1)
    return labels.to(device), tokens.to(device)


def _gib(device) -> str:
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if device.type == "cuda" else "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.bench_gpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--size", choices=list(SIZES), default="B" if gpu else "debug",
                        help="GPT size")
    parser.add_argument("--tokenizer", default="gaussian-imagenet" if gpu else "gaussian-debug",
                        help="registry tokenizer whose tuples (vocabularies, count) to model")
    parser.add_argument("--batch", type=positive_int, default=64 if gpu else 8,
                        help="training micro-batch and sampling batch (before CFG doubling)")
    parser.add_argument("--steps", type=positive_int, default=10,
                        help="timed training micro-steps per repeat")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="timing rounds (the median is reported)")
    parser.add_argument("--attention", default="sdpa,xformers" if gpu else "sdpa",
                        help="attention kernels to train with, in turn (xformers is skipped "
                             "where it does not run)")
    parser.add_argument("--no-sampling", action="store_true", help="training rows only")
    parser.add_argument("--peak-tflops", type=float,
                        help="the GPU's dense bf16 datasheet peak (default: PEAK_TFLOPS)")
    parser.add_argument("--config", type=Path, help="TOML run config (launch.train_gpt's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config key, e.g. deepspeed.zero_stage=2")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    name = torch.cuda.get_device_name() if gpu else "cpu"
    datasheet = args.peak_tflops or (datasheet_peak(name) if gpu else None)
    try:
        shape = tuple_shape(args.tokenizer)
    except ValueError as err:
        print(f"launch.bench_gpt: {err}", file=sys.stderr)
        return 2
    kernels = args.attention.split(",")
    unknown = [k for k in kernels if k not in ("sdpa", "xformers")]
    if unknown:
        print(f"launch.bench_gpt: --attention: unknown kernel {unknown[0]!r} (sdpa, xformers)",
              file=sys.stderr)
        return 2
    measured = matmul_rate(device, dtype)
    rows, trained = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for attention in kernels:
            if attention == "xformers" and not xformers_runs(device):
                rows.append("| xformers | does not import or run here: skipped | | | |")
                continue
            try:
                trainer = make_trainer(Path(tmp), shape, args, attention)
            except (configlib.ConfigError, ValueError) as err:
                print(f"launch.bench_gpt: {err}", file=sys.stderr)
                return 2
            labels, tokens = random_batch(shape, args.batch, trainer.device)

            def steps(trainer=trainer, labels=labels, tokens=tokens):
                for _ in range(args.steps):
                    trainer.micro_step(labels, tokens)

            if gpu:
                torch.cuda.reset_peak_memory_stats()
            seconds = _timed(steps, device, args.repeats) / args.steps
            rate = args.batch * shape["num_tokens"] / seconds
            achieved = rate * flops_per_token(trainer.gpt_cfg)
            trained[attention] = rate
            mfu_sheet = f"{100 * achieved / (datasheet * 1e12):.1f}%" if datasheet else "n/a"
            rows.append(f"| {attention} | {rate:,.0f} | {mfu_sheet} | "
                        f"{100 * achieved / measured:.1f}% | {_gib(device)} |")
            print(rows[-1], file=sys.stderr, flush=True)
            model, zero3 = trainer.gpt, trainer.cfg.deepspeed.zero_stage == 3
            del trainer, steps
            gc.collect()
        if not trained:
            print("\n".join(rows))
            return 2
        header = [f"device: {name}; GPT-{args.size} ({count_parameters(model) / 1e6:.0f}M) "
                  f"on {args.tokenizer} tuples {shape['vocab_sizes']} x "
                  f"{shape['num_tokens']}; micro-batch {args.batch}; "
                  f"{dtype}; {' '.join(args.set) or 'default run config'}",
                  f"ceilings: datasheet {datasheet or 'unknown'} TFLOP/s, measured "
                  f"{8192 if gpu else 1024}^3 matmul {measured / 1e12:.1f} TFLOP/s",
                  "", "| attention | training tuples/s | MFU (datasheet) | MFU (measured "
                  "matmul) | peak GiB |", "|---|---|---|---|---|"]
        rows = header + rows
        if len(trained) == 2:
            rows.append(f"\nxformers / SDPA training speed: "
                        f"{trained['xformers'] / trained['sdpa']:.2f}x")
        if zero3 and not args.no_sampling:
            rows.append("\nsampling not measured: ZeRO-3 partitions the parameters")
        elif not args.no_sampling:
            rows += ["", "| sampling (CFG 2.0) | images/s | speed-up over no cache | "
                     "peak GiB |", "|---|---|---|---|"]
            rows += sampling_rows(model.eval().to(dtype), args.batch, device)
    print("\n".join(rows))
    return 0


def sampling_rows(model, batch: int, device) -> list[str]:
    labels = torch.arange(batch, device=device) % model.cfg.num_classes
    paths = {"no cache": {"use_cache": False}, "KV cache": {},
             "KV cache, compiled": {"compile": True}}
    times, rows = {}, []
    for label, kwargs in paths.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def run(kwargs=kwargs):
            generate(model, labels, cfg_scale=2.0,
                     generator=torch.Generator(device).manual_seed(0), **kwargs)

        times[label] = _timed(run, device, 1 if label == "no cache" else 3)
        rows.append(f"| {label} | {batch / times[label]:.2f} | "
                    f"{times['no cache'] / times[label]:.1f}x | {_gib(device)} |")
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
