"""GPT speed: training tokens/s and model FLOPs utilisation; sampling images/s with the
KV cache against the no-cache loop (same run), with peak memory.

    python -m generator.bench                       # GPT-B on a GPU; debug on a CPU
    python -m generator.bench --size L --batch 32

MFU = achieved training FLOP/s (6 x matmul parameters + attention, per token) over
the rate of a large matrix product measured in the same run, in the same dtype
(bf16 on a GPU, fp32 on a CPU): an honest ceiling for this machine, not a datasheet.
"""

import argparse
import statistics
import sys
import time

import torch

from generator.config import SIZES, gpt_config
from generator.model import GPT, count_parameters, flops_per_token
from generator.sampling import generate


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats):
    fn()
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    gpu = torch.cuda.is_available()
    parser.add_argument("--size", choices=list(SIZES), default="B" if gpu else "debug")
    parser.add_argument("--batch", type=int, default=64 if gpu else 8,
                        help="training batch and sampling batch (before CFG doubling)")
    parser.add_argument("--tokens", type=int, default=256, help="sequence length N")
    parser.add_argument("--vocab", type=int, default=16384, help="one code vocabulary")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if gpu else "cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    cfg = gpt_config(args.size, vocab_sizes=[args.vocab], num_tokens=args.tokens,
                     num_classes=1000)
    model = GPT(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=gpu)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    tokens = torch.randint(0, args.vocab, (args.batch, args.tokens, 1), device=device)

    def train_step():
        with torch.autocast(device.type, dtype=dtype, enabled=gpu):
            loss = model.loss(labels, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t_train = _timed(train_step, device, args.repeats)
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
    tok_s = args.batch * args.tokens / t_train
    peak = matmul_rate(device, dtype)
    mfu = tok_s * flops_per_token(cfg) / peak
    model.eval()
    if gpu:
        model.to(dtype)
    rows = [f"device: {torch.cuda.get_device_name() if gpu else 'cpu'}; GPT-{args.size} "
            f"({count_parameters(model) / 1e6:.0f}M), N={args.tokens}, dtype {dtype}",
            "", "| measure | value |", "|---|---|",
            f"| training tokens/s (batch {args.batch}) | {tok_s:,.0f} |",
            f"| matmul peak measured | {peak / 1e12:.1f} TFLOP/s |",
            f"| MFU | {100 * mfu:.1f}% |",
            f"| training peak memory | {train_mem:.2f} GiB |"]
    for use_cache in (True, False):
        if gpu:
            torch.cuda.reset_peak_memory_stats()

        def run(use_cache=use_cache):
            generate(model, labels, cfg_scale=2.0, use_cache=use_cache,
                     generator=torch.Generator().manual_seed(0))

        t = _timed(run, device, 1 if not use_cache else max(1, args.repeats // 2))
        mem = torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan")
        rows.append(f"| sampling images/s, CFG, batch {args.batch}, "
                    f"{'KV cache' if use_cache else 'no cache'} | {args.batch / t:.2f} "
                    f"(peak {mem:.2f} GiB) |")
        if use_cache:
            cached = t
        else:
            rows.append(f"| KV-cache speed-up | {t / cached:.1f}x |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
