"""Tokenizer training throughput and peak memory, one process, variants in turn.

    python -m launch.bench_tokenizer --config launch/configs/compare-mnist.toml [--steps 40]
    python -m launch.bench_tokenizer --size gaussian-imagenet,vq-imagenet --batch 32 \
        [--set loss.gan_start=0] [--set compile=true]

Variants: a comparison's (``--config``), or registry sizes (``--size``, each with
launch.train_tokenizer's defaults, ``--batch`` and ``--set`` overrides). Each variant's full
training step (forward, losses, backward, optimiser, EMA, codebook update; LPIPS when
loss.lpips > 0; the discriminator once loss.gan_start is reached) on a fixed random batch,
after warm-up steps; variants are timed in turn, ``--repeats`` rounds interleaved so that
a slow spell of the machine hits them all, and the median round is reported with the
ratio to the first variant. Peak memory: CUDA's peak allocation over the warm-up steps.
Data loading is not included (the comparison's own ``train img/s`` includes it).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from data import config as configlib
from data.cli import positive_int
from data.ranks import Dist
from launch.compare_tokenizers import CompareConfig, run_config
from launch.run_config import resolve_tokenizer_config
from launch.train_tokenizer import Trainer
from tokenizer.blocks import count_parameters


def variant_configs(args, tmp: str) -> dict:
    """name -> tokenizer run config, from --config (a comparison) or --size."""

    if args.config:
        cfg = configlib.load(CompareConfig, args.config)
        names = args.only.split(",") if args.only else list(cfg.variants)
        unknown = [n for n in names if n not in cfg.variants]
        if unknown:
            raise configlib.ConfigError(f"--only: {unknown[0]!r} is not a variant of "
                                        f"{args.config} ({', '.join(cfg.variants)})")
        configs = {n: run_config(cfg, n, 0, tmp) for n in names}
    else:
        configs = {size: resolve_tokenizer_config(None, [*args.set, *(
            [f"data.batch_size={args.batch}"] if args.batch else [])], size)
            for size in args.size.split(",")}
    for name, rc in configs.items():
        rc.out = str(Path(tmp) / name)
    return configs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.bench_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="comparison TOML (its variants)")
    source.add_argument("--size", help="comma-separated registry sizes, e.g. gaussian-imagenet")
    parser.add_argument("--only", help="with --config: comma-separated variants (default: all)")
    parser.add_argument("--batch", type=positive_int,
                        help="with --size: batch size (default: the size's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --size: override a launch.train_tokenizer config key "
                             "(repeatable)")
    parser.add_argument("--steps", type=positive_int, default=30,
                        help="timed steps per round")
    parser.add_argument("--warmup", type=positive_int, default=5,
                        help="untimed steps first")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="interleaved rounds")
    args = parser.parse_args(argv)
    peaks = {}
    try:
        trainers, batches = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for name, rc in variant_configs(args, tmp).items():
                trainers[name] = Trainer(rc, info=Dist(), progress=False)
                cuda = trainers[name].device.type == "cuda"
                size = rc.tokenizer.image_size
                gen = torch.Generator().manual_seed(0)
                batches[name] = (torch.rand(rc.data.batch_size, 3, size, size, generator=gen)
                                 * 2 - 1).to(trainers[name].device)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                for _ in range(args.warmup):
                    trainers[name].step(batches[name])
                peaks[name] = (f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if cuda
                               else "n/a")
            names = list(trainers)
            rates = {name: [] for name in names}
            for _ in range(args.repeats):
                for name in names:
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        trainers[name].step(batches[name])
                    if trainers[name].device.type == "cuda":  # step() returns before the GPU
                        torch.cuda.synchronize()           # is done with it
                    seconds = time.perf_counter() - start
                    rates[name].append(args.steps * len(batches[name]) / seconds)
    except (configlib.ConfigError, ValueError) as err:
        print(f"launch.bench_tokenizer: {err}", file=sys.stderr)
        return 2
    base = statistics.median(rates[names[0]])
    device = trainers[names[0]].device
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"| variant | parameters | batch | train images/s (median of {args.repeats}) | "
          f"vs {names[0]} | peak GiB |")
    print("|---|---|---|---|---|---|")
    for name in names:
        rate = statistics.median(rates[name])
        print(f"| {name} | {count_parameters(trainers[name].model):,} | {len(batches[name])} | "
              f"{rate:.1f} | {rate / base:.2f}x | {peaks[name]} |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps x {args.repeats} rounds per variant, L1 + commitment as configured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
