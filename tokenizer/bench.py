"""Tokenizer training throughput of each model of a comparison, in one process.

    python -m tokenizer.bench --config launch/configs/compare-mnist.toml [--steps 40]

Each variant's full training step (forward, losses, backward, optimiser, EMA, codebook
update) on a fixed random batch of the variant's batch size, after warm-up steps;
variants are timed in turn, ``--repeats`` rounds interleaved so that a slow spell of the
machine hits them all, and the median round is reported with the ratio to the first
variant. Data loading is not included (the comparison's own ``train img/s`` includes it).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from launch import config as configlib
from launch.runtime import Dist
from tokenizer.blocks import count_parameters
from tokenizer.compare import CompareConfig, run_config
from tokenizer.train import Trainer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="comparison TOML")
    parser.add_argument("--only", help="comma-separated variants (default: all)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args(argv)
    try:
        cfg = configlib.load(CompareConfig, args.config)
        names = args.only.split(",") if args.only else list(cfg.variants)
        trainers, batches = {}, {}
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                rc = run_config(cfg, name, 0, tmp)
                rc.out = str(Path(tmp) / name)
                trainers[name] = Trainer(rc, info=Dist(), lpips=None, progress=False)
                size = rc.tokenizer.image_size
                gen = torch.Generator().manual_seed(0)
                batches[name] = torch.rand(rc.data.batch_size, 3, size, size, generator=gen) * 2 - 1
                for _ in range(args.warmup):
                    trainers[name].step(batches[name])
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
        print(f"tokenizer.bench: {err}", file=sys.stderr)
        return 2
    base = statistics.median(rates[names[0]])
    print(f"| variant | parameters | batch | train images/s (median of {args.repeats}) | "
          f"vs {names[0]} |")
    print("|---|---|---|---|---|")
    for name in names:
        rate = statistics.median(rates[name])
        print(f"| {name} | {count_parameters(trainers[name].model):,} | {len(batches[name])} | "
              f"{rate:.0f} | {rate / base:.2f}x |")
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.steps} steps x {args.repeats} rounds per variant, L1 + commitment as configured")
    return 0


if __name__ == "__main__":
    sys.exit(main())
