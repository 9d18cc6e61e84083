"""Many samples for FID: one .npz (arr_0 uint8 [N, H, W, 3], arr_1 labels) for eval/.

    python -m generator.sample_fid --ckpt runs/gpt/gpt.safetensors --num 50000 --out samples.npz
    torchrun --nproc_per_node 8 -m generator.sample_fid --ckpt ... --num 50000 --out samples.npz

Sample i has label i % num_classes (balanced: 50 per class for 50,000 ImageNet
samples) unless --random-labels. Samples come in chunks of --batch-size; chunk k is
made by rank k % world with its own seed (seed, k), so the result does not depend on
the number of ranks. Each chunk is written atomically to OUT.parts/; a re-run skips
finished chunks (resumable), and rank 0 packs the parts into OUT at the end.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.tario import atomic_write_bytes
from generator.sample import (
    SampleError,
    check_sampling_args,
    load_gpt,
    load_matching_tokenizer,
    sample_images,
)
from generator.sampling import SCHEDULES
from launch.runtime import init_distributed


def chunk_labels(k: int, batch: int, num: int, num_classes: int, random: bool, seed: int):
    idx = torch.arange(k * batch, min(num, (k + 1) * batch))
    if random:
        return torch.randint(0, num_classes, (len(idx),),
                             generator=torch.Generator().manual_seed(seed * 7919 + k))
    return idx % num_classes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.sample_fid", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="exported gpt.safetensors")
    parser.add_argument("--tokenizer", help="tokenizer weights (default: the one recorded)")
    parser.add_argument("--num", type=int, default=50000, help="number of samples")
    parser.add_argument("--out", type=Path, required=True, help=".npz to write")
    parser.add_argument("--cfg", type=float, default=2.0, help="guidance scale")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="samples per chunk")
    parser.add_argument("--random-labels", action="store_true",
                        help="uniformly random labels instead of balanced ones")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    info = init_distributed()
    device = f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    parts = args.out.with_name(args.out.name + ".parts")
    try:
        if args.num < 1:
            raise SampleError(f"--num must be positive, got {args.num}")
        model, meta = load_gpt(args.ckpt, device)
        check_sampling_args(args.cfg, args.top_k, args.top_p, args.temperature,
                            model.cfg.vocab_sizes)
        tokenizer = load_matching_tokenizer(meta, args.tokenizer, device)
    except (SampleError, FileNotFoundError) as err:
        print(f"generator.sample_fid: {err}", file=sys.stderr)
        return 2
    parts.mkdir(parents=True, exist_ok=True)
    chunks = range(info.rank, (args.num + args.batch_size - 1) // args.batch_size, info.world_size)
    todo = [k for k in chunks if not (parts / f"chunk-{k:06d}.npz").exists()]
    for k in tqdm(todo, desc=f"samples (rank {info.rank})", disable=args.quiet or not info.main):
        labels = chunk_labels(k, args.batch_size, args.num, model.cfg.num_classes,
                              args.random_labels, args.seed).to(device)
        images = sample_images(model, tokenizer, labels, batch_size=args.batch_size,
                               seed=args.seed * 1_000_003 + k, cfg_scale=args.cfg,
                               schedule=args.schedule, temperature=args.temperature,
                               top_k=args.top_k, top_p=args.top_p)
        import io
        buf = io.BytesIO()
        np.savez(buf, images=images.numpy(), labels=labels.cpu().numpy())
        atomic_write_bytes(parts / f"chunk-{k:06d}.npz", buf.getvalue())
    if info.world_size > 1:
        torch.distributed.barrier()
    if info.main:
        files = sorted(parts.glob("chunk-*.npz"))
        images, labels = [], []
        for f in files:
            with np.load(f) as d:
                images.append(d["images"])
                labels.append(d["labels"])
        images, labels = np.concatenate(images)[: args.num], np.concatenate(labels)[: args.num]
        tmp = args.out.with_name(args.out.name + ".tmp.npz")
        np.savez(tmp, arr_0=images, arr_1=labels)
        tmp.replace(args.out)
        print(f"wrote {len(images)} samples {list(images.shape[1:])} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
