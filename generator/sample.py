"""Class-conditional samples as a labelled PNG grid.

    python -m generator.sample --ckpt runs/gpt/gpt.safetensors --classes 207,360 \\
        --per-class 8 --cfg 2.0 --seed 0 --out grid.png
    python -m generator.sample --ckpt runs/gpt-digits/gpt.safetensors --classes 3,seven ...

Loads the exported GPT (``gpt.safetensors`` + ``gpt.json``) and the tokenizer recorded
in it (or --tokenizer), refusing a tokenizer whose fingerprint differs from the one
the GPT was trained on. Classes are ids or names from the training data's
classes.json. Sampling is batched, KV-cached, guided with the null class and
deterministic for a seed.
"""

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

from data.cli import check_device, positive_int, require_output_file
from generator.samples import (
    ORDERS,
    PRECISIONS,
    SampleError,
    SamplingSettings,
    cast_for_sampling,
    class_names,
    labelled_grid,
    load_gpt,
    load_matching_tokenizer,
    parse_classes,
    sample_images,
)
from generator.sampling import SCHEDULES


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """The sampling flags shared by generator.sample and generator.sample_fid."""
    parser.add_argument("--cfg", type=float, default=2.0,
                        help="classifier-free guidance scale (1 = none)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="guidance schedule: constant, or linear from 1 at the first "
                             "tuple to --cfg at the last")
    parser.add_argument("--guide", default="all",
                        help="tuple components guidance applies to: all, or names/ids, e.g. "
                             "'code' or 'shape,code' (the others are drawn unguided)")
    parser.add_argument("--order", choices=list(ORDERS), default="auto",
                        help="mask position tokens below the previous tuple's (the "
                             "tokenizer's canonical order); auto = on for Gaussian tuples")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (1 = all)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same samples")
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="samples per batch")
    parser.add_argument("--precision", "--dtype", choices=list(PRECISIONS), default="fp32",
                        help="GPT weights and KV cache precision (LlamaGen samples in bf16; "
                             "rotary tables and logits stay fp32)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the cached decoding step (CUDA: CUDA graphs); the "
                             "first batch pays the compilation. Samples of a seed are fixed "
                             "per code path and precision, not across them")


def settings_from_args(args) -> SamplingSettings:
    """The settings the flags of :func:`add_sampling_args` give."""
    return SamplingSettings(cfg=args.cfg, schedule=args.schedule, guide=args.guide,
                            order=args.order, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed, batch_size=args.batch_size,
                            precision=args.precision, compile=args.compile)


def sample_grid(ckpt, classes: str, per_class: int, out: Path, settings: SamplingSettings,
                *, zoom: int = 1, device: str = "cpu", tokenizer=None) -> str:
    """Write a labelled PNG grid of ``per_class`` samples (a row) for each of ``classes``
    (comma-separated ids or names); returns what was written. Bad input: SampleError (or
    another ValueError naming the file), raised before any sampling."""
    out = Path(out)
    if per_class < 1:
        raise SampleError(f"--per-class must be positive, got {per_class}")
    if zoom < 1:
        raise SampleError(f"--zoom must be positive, got {zoom}")
    require_output_file(out, "--out")  # before sampling, not after
    check_device(device)
    if out.suffix.lower() not in Image.registered_extensions():
        raise SampleError(f"--out {out}: not an image file name (e.g. grid.png)")
    model, meta = load_gpt(ckpt, device)
    names = class_names(meta)
    ids = parse_classes(classes, model.cfg.num_classes, names)
    settings.check(model.cfg)
    tok = load_matching_tokenizer(meta, tokenizer, device)
    cast_for_sampling(model, settings.precision)
    labels = torch.tensor([c for c in ids for _ in range(per_class)], device=device)
    images = sample_images(model, tok, labels, batch_size=settings.batch_size,
                           seed=settings.seed, **settings.generate_kwargs())
    labelled_grid(images, labels.tolist(), per_class, names, zoom).save(out)
    return f"wrote {len(images)} samples of classes {ids} to {out}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m generator.sample", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="exported gpt.safetensors (gpt.json beside)")
    parser.add_argument("--tokenizer", help="tokenizer weights (default: the one recorded)")
    parser.add_argument("--classes", required=True, help="comma-separated class ids or names")
    parser.add_argument("--per-class", type=int, default=8, help="samples per class (a row each)")
    add_sampling_args(parser)
    parser.add_argument("--zoom", type=int, default=1, help="enlarge tiles in the grid")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("samples.png"), help="PNG to write")
    args = parser.parse_args(argv)
    try:
        print(sample_grid(args.ckpt, args.classes, args.per_class, args.out,
                          settings_from_args(args), zoom=args.zoom, device=args.device,
                          tokenizer=args.tokenizer))
    except (ValueError, FileNotFoundError) as err:  # SampleError, WeightsError, ...
        print(f"generator.sample: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
