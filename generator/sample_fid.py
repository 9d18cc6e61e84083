"""Many samples for FID: one .npz (arr_0 uint8 [N, H, W, 3], arr_1 labels) for eval/.

    python -m generator.sample_fid --ckpt runs/gpt/gpt.safetensors --num 50000 --out samples.npz
    torchrun --nproc_per_node 8 -m generator.sample_fid --ckpt ... --num 50000 --out samples.npz

Sample i has label i % num_classes (balanced: 50 per class for 50,000 ImageNet
samples) unless --random-labels (uniform i.i.d. labels, as LlamaGen draws them for its
FID rows; the settings name which).

LlamaGen parity (see launch/configs/llamagen/): --precision bf16, --uint8 llamagen
(clamp(127.5 x + 128) truncated), --eval-size 256 for its 384 px models (decoded at 384,
bicubic-resized to 256 before the uint8 conversion).

Samples come in chunks of --batch-size; chunk k is made by rank k % world with its own
seed (seed, k), so the result does not depend on the number of ranks. Each chunk is
written atomically to OUT.parts/; a re-run skips finished chunks (resumable), and rank 0
packs the parts into OUT at the end (one copy in memory) and removes them. The settings
(checkpoint sha1, guidance, filters, seed, chunk size, labels, precision, uint8 and
eval-size conventions) are recorded beside the parts and inside OUT (key ``settings``, a
JSON string; eval.fid copies them into its result): a re-run with the same settings
finds OUT done, one with other settings into the same OUT is refused.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.cli import positive_int
from data.files import atomic_write_bytes, file_sha1
from data.ranks import init_distributed
from generator.sample import (
    ORDERS,
    UINT8,
    SampleError,
    add_sampling_args,
    cast_for_sampling,
    check_sampling_args,
    load_gpt,
    load_matching_tokenizer,
    sample_images,
    sampling_kwargs,
)


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
    parser.add_argument("--num", type=positive_int, default=50000, help="number of samples")
    parser.add_argument("--out", type=Path, required=True, help=".npz to write")
    add_sampling_args(parser)
    parser.add_argument("--random-labels", action="store_true",
                        help="uniformly random labels instead of balanced ones")
    parser.add_argument("--uint8", choices=UINT8, default="round",
                        help="float -> uint8: round((x + 1) * 127.5) (ours), or LlamaGen's "
                             "clamp(127.5 x + 128) truncated")
    parser.add_argument("--eval-size", type=positive_int,
                        help="bicubic-resize the decoded images to this size before saving "
                             "(LlamaGen's 384 px models are evaluated at 256); default: as decoded")
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
                            model.cfg.vocab_sizes, args.guide, ORDERS[args.order], model.cfg)
        tokenizer = load_matching_tokenizer(meta, args.tokenizer, device)
        cast_for_sampling(model, args.precision)
    except (ValueError, FileNotFoundError) as err:  # SampleError, WeightsError, ...
        print(f"generator.sample_fid: {err}", file=sys.stderr)
        return 2
    settings = {"ckpt_sha1": file_sha1(args.ckpt), "num": args.num,
                "labels": "random (uniform)" if args.random_labels else "balanced",
                "seed": args.seed, "batch_size": args.batch_size, "precision": args.precision,
                "uint8": args.uint8, "eval_size": args.eval_size, **sampling_kwargs(args)}
    recorded = parts / "settings.json"
    finished = _recorded_settings(args.out)
    if finished is not None or recorded.exists():
        found = finished if finished is not None else json.loads(recorded.read_text())
        if found != settings:
            where = args.out if finished is not None else parts
            print(f"generator.sample_fid: {where} holds samples made with other settings; "
                  "choose another --out or delete it", file=sys.stderr)
            return 2
        if finished is not None:
            if info.main:
                print(f"{args.out} already holds these {args.num} samples")
            return 0
    if info.main:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(recorded, json.dumps(settings, indent=1).encode())
    if info.world_size > 1:
        torch.distributed.barrier()
    chunks = range(info.rank, (args.num + args.batch_size - 1) // args.batch_size, info.world_size)
    todo = [k for k in chunks if not (parts / f"chunk-{k:06d}.npz").exists()]
    for k in tqdm(todo, desc=f"samples (rank {info.rank})", disable=args.quiet or not info.main):
        labels = chunk_labels(k, args.batch_size, args.num, model.cfg.num_classes,
                              args.random_labels, args.seed).to(device)
        images = sample_images(model, tokenizer, labels, batch_size=args.batch_size,
                               seed=args.seed * 1_000_003 + k, uint8=args.uint8,
                               eval_size=args.eval_size, **sampling_kwargs(args))
        import io
        buf = io.BytesIO()
        np.savez(buf, images=images.numpy(), labels=labels.cpu().numpy())
        atomic_write_bytes(parts / f"chunk-{k:06d}.npz", buf.getvalue())
    if info.world_size > 1:
        torch.distributed.barrier()
    if info.main:
        images, labels = _pack(sorted(parts.glob("chunk-*.npz")), args.num)
        tmp = args.out.with_name(args.out.name + ".tmp.npz")
        np.savez(tmp, arr_0=images, arr_1=labels, settings=np.array(json.dumps(settings)))
        tmp.replace(args.out)
        shutil.rmtree(parts)
        print(f"wrote {len(images)} samples {list(images.shape[1:])} to {args.out}")
    return 0


def _recorded_settings(path: Path) -> dict | None:
    """The settings a finished OUT was made with (None: no OUT, or one without them)."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        return json.loads(str(f["settings"])) if "settings" in f.files else {}


def _pack(files: list[Path], num: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks -> (images [num, H, W, 3] uint8, labels [num]) filled in place (one copy)."""
    images = labels = None
    at = 0
    for f in files:
        with np.load(f) as d:
            chunk, chunk_labels = d["images"], d["labels"]
        if images is None:
            images = np.empty((num, *chunk.shape[1:]), chunk.dtype)
            labels = np.empty(num, chunk_labels.dtype)
        take = min(len(chunk), num - at)
        images[at:at + take], labels[at:at + take] = chunk[:take], chunk_labels[:take]
        at += take
    if at != num:
        raise RuntimeError(f"the parts hold {at} samples, {num} were asked for")
    return images, labels


if __name__ == "__main__":
    sys.exit(main())
