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
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.cli import positive_int, require_output_file
from data.files import atomic_write_bytes, file_sha1
from data.ranks import device_for, init_distributed, leave_process_group
from generator.sample import add_sampling_args, settings_from_args
from generator.samples import BATCH_SEED_STRIDE as CHUNK_SEED_STRIDE
from generator.samples import (
    LABEL_SEED_STRIDE,
    UINT8,
    SampleError,
    SamplingSettings,
    cast_for_sampling,
    load_gpt,
    load_matching_tokenizer,
    sample_images,
)


def chunk_labels(k: int, batch: int, num: int, num_classes: int, random: bool, seed: int):
    idx = torch.arange(k * batch, min(num, (k + 1) * batch))
    if random:
        return torch.randint(0, num_classes, (len(idx),),
                             generator=torch.Generator().manual_seed(seed * LABEL_SEED_STRIDE + k))
    return idx % num_classes


def sample_for_fid(ckpt, num: int, out: Path, settings: SamplingSettings, *, tokenizer=None,
                   random_labels: bool = False, uint8: str = "round",
                   eval_size: int | None = None, progress: bool = True) -> str:
    """Write ``num`` samples to ``out`` (.npz), resumable, on every rank of the run (each
    makes its chunks; rank 0 packs them); returns what happened. Bad input: SampleError
    (or another ValueError naming the file), raised before any sampling."""
    out = Path(out)
    require_output_file(out, "--out")  # before sampling, not after
    info = init_distributed()
    device = device_for(info)
    parts = out.with_name(out.name + ".parts")
    if num < 1:
        raise SampleError(f"--num must be positive, got {num}")
    if uint8 not in UINT8:
        raise SampleError(f"--uint8 must be one of {UINT8}, got {uint8!r}")
    model, meta = load_gpt(ckpt, device)
    settings.check(model.cfg)
    tok = load_matching_tokenizer(meta, tokenizer, device)
    cast_for_sampling(model, settings.precision)
    recorded_settings = {
        "ckpt_sha1": file_sha1(ckpt), "num": num,
        "labels": "random (uniform)" if random_labels else "balanced",
        "seed": settings.seed, "batch_size": settings.batch_size,
        "precision": settings.precision, "uint8": uint8, "eval_size": eval_size,
        **settings.generate_kwargs()}
    recorded = parts / "settings.json"
    finished = _recorded_settings(out)
    if finished is not None or recorded.exists():
        found = finished if finished is not None else json.loads(recorded.read_text())
        if found != recorded_settings:
            where = out if finished is not None else parts
            raise SampleError(f"{where} holds samples made with other settings; choose "
                              "another --out or delete it")
        if finished is not None:
            return f"{out} already holds these {num} samples"
    if info.main:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(recorded, json.dumps(recorded_settings, indent=1).encode())
    if info.world_size > 1:
        torch.distributed.barrier()
    batch = settings.batch_size
    chunks = range(info.rank, (num + batch - 1) // batch, info.world_size)
    todo = [k for k in chunks if not (parts / f"chunk-{k:06d}.npz").exists()]
    for k in tqdm(todo, desc=f"samples (rank {info.rank})", disable=not (progress and info.main)):
        labels = chunk_labels(k, batch, num, model.cfg.num_classes, random_labels,
                              settings.seed).to(device)
        images = sample_images(model, tok, labels, batch_size=batch,
                               seed=settings.seed * CHUNK_SEED_STRIDE + k, uint8=uint8,
                               eval_size=eval_size, **settings.generate_kwargs())
        buf = io.BytesIO()
        np.savez(buf, images=images.numpy(), labels=labels.cpu().numpy())
        atomic_write_bytes(parts / f"chunk-{k:06d}.npz", buf.getvalue())
    if info.world_size > 1:
        torch.distributed.barrier()
    if not info.main:
        return ""
    images, labels = _pack(sorted(parts.glob("chunk-*.npz")), num)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(tmp, arr_0=images, arr_1=labels, settings=np.array(json.dumps(recorded_settings)))
    tmp.replace(out)
    shutil.rmtree(parts)
    return f"wrote {len(images)} samples {list(images.shape[1:])} to {out}"


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
    try:
        message = sample_for_fid(args.ckpt, args.num, args.out, settings_from_args(args),
                                 tokenizer=args.tokenizer, random_labels=args.random_labels,
                                 uint8=args.uint8, eval_size=args.eval_size,
                                 progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:  # SampleError, WeightsError, ...
        print(f"generator.sample_fid: {err}", file=sys.stderr)
        leave_process_group(wait=False)
        return 2
    if message:
        print(message)
    leave_process_group()
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
