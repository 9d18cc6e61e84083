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
import json
import math
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from data import config as configlib
from data.cli import positive_int, require_parent_dir
from data.files import load_state, load_weights, read_json
from generator.config import GPTConfig
from generator.model import GPT
from generator.sampling import SCHEDULES, generate, guided_components
from tokenizer.build import load_tokenizer
from tokenizer.visualize import to_uint8


class SampleError(ValueError):
    """A bad sampling request (class, guidance, filter) or mismatched weights."""


def load_gpt(path, device="cpu") -> tuple[GPT, dict]:
    """An exported GPT (``gpt.safetensors`` + ``gpt.json``) in eval mode, and its record;
    any unusable file is a one-line error naming it."""

    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        raise SampleError(f"need {path} and {meta_path} (python -m launch.train_gpt exports both)")
    meta = read_json(meta_path, "the GPT's record", ("gpt",))
    try:
        config = configlib.from_dict(GPTConfig, meta["gpt"])
    except (configlib.ConfigError, TypeError, ValueError) as err:
        raise SampleError(f"{meta_path}: its 'gpt' config is not valid ({err})") from err
    model = GPT(config)
    load_state(model, load_weights(path), path)
    return model.to(device).eval(), meta


def load_matching_tokenizer(meta: dict, override=None, device="cpu"):

    recorded = meta.get("tokenizer", {})
    path = override or recorded.get("path")
    if not path:
        raise SampleError("the GPT records no tokenizer; pass --tokenizer")
    tokenizer, info = load_tokenizer(path, device)
    if recorded.get("sha1") and info["sha1"] != recorded["sha1"]:
        raise SampleError(f"tokenizer {path} (sha1 {info['sha1'][:12]}) is not the one the GPT "
                          f"was trained on (sha1 {recorded['sha1'][:12]})")
    if tokenizer.vocab_sizes != meta["gpt"]["vocab_sizes"]:
        raise SampleError(f"tokenizer vocabularies {tokenizer.vocab_sizes} differ from the "
                          f"GPT's {meta['gpt']['vocab_sizes']}")
    return tokenizer


def class_names(meta: dict) -> list[str] | None:
    image_dir = meta.get("image_dir")
    if image_dir and (Path(image_dir) / "classes.json").exists():
        return json.loads((Path(image_dir) / "classes.json").read_text())["names"]
    return None


def parse_classes(text: str, num_classes: int, names: list[str] | None) -> list[int]:
    ids = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item.lstrip("-").isdigit():
            cid = int(item)
        elif names and item in names:
            cid = names.index(item)
        else:
            known = f"; known names: {', '.join(names[:20])}..." if names else \
                " (no class names are known for this model)"
            raise SampleError(f"unknown class {item!r}{known}")
        if not 0 <= cid < num_classes:
            raise SampleError(f"class id {cid} is outside [0, {num_classes})")
        ids.append(cid)
    if not ids:
        raise SampleError("no classes given")
    return ids


ORDERS = {"auto": None, "on": True, "off": False}


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


def sampling_kwargs(args) -> dict:
    """generate()'s keyword arguments from the flags of :func:`add_sampling_args`."""
    kwargs = {"cfg_scale": args.cfg, "schedule": args.schedule, "guide": args.guide,
              "order": ORDERS[args.order], "temperature": args.temperature,
              "top_k": args.top_k, "top_p": args.top_p}
    if args.compile:  # recorded only when on, so earlier sample sets keep their settings
        kwargs["compile"] = True
    return kwargs


def check_sampling_args(cfg_scale: float, top_k: int, top_p: float, temperature: float,
                        vocab_sizes: list[int], guide="all", order=None,
                        model_cfg: GPTConfig | None = None) -> None:
    if model_cfg is not None:
        try:
            guided_components(guide, model_cfg.names)
        except ValueError as err:
            raise SampleError(f"--guide: {err}") from None
        if order and model_cfg.position_component < 0:
            raise SampleError("--order on needs tuples with a position token (a GaussianToken "
                              "GPT); this one has none")
    for flag, value in (("--cfg", cfg_scale), ("--temperature", temperature),
                        ("--top-p", top_p)):
        if not math.isfinite(value):
            raise SampleError(f"{flag} must be a finite number, got {value}")
    if cfg_scale < 0:
        raise SampleError(f"--cfg must be >= 0, got {cfg_scale}")
    if top_k < 0 or top_k > max(vocab_sizes):
        raise SampleError(f"--top-k must be in [0, {max(vocab_sizes)}] (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise SampleError(f"--top-p must be in (0, 1], got {top_p}")
    if temperature < 0:
        raise SampleError(f"--temperature must be >= 0, got {temperature}")


UINT8 = ("round", "llamagen")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def images_to_uint8(images: torch.Tensor, convention: str = "round") -> torch.Tensor:
    """[B, 3, S, S] in [-1, 1] -> uint8 [B, S, S, 3].

    "round" (ours): round((x + 1) * 127.5) after clamping to [-1, 1];
    "llamagen": clamp(127.5 x + 128, 0, 255) truncated, as LlamaGen writes its samples.
    The two agree but where 127.5 (x + 1) falls on a half (ours rounds it to even,
    LlamaGen's up) or float rounding puts it on the other side of one."""

    if convention not in UINT8:
        raise ValueError(f"uint8 convention must be one of {UINT8}, got {convention!r}")
    if convention == "round":
        return torch.from_numpy(to_uint8(images))
    x = (127.5 * images.detach().float() + 128.0).clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu()


def resize_for_eval(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """Decoded images [B, 3, S, S] bicubic-resized to size x size (LlamaGen samples its
    384 px models at 384 and evaluates at 256 this way); None or S: unchanged."""
    if size is None or size == images.shape[-1]:
        return images
    return torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic")


def cast_for_sampling(model, precision: str):
    """The GPT with its parameters (and so its KV cache) in ``precision``; the rotary
    tables stay fp32, as LlamaGen keeps them."""
    if precision not in PRECISIONS:
        raise SampleError(f"--precision must be one of {list(PRECISIONS)}, got {precision!r}")
    for p in model.parameters():
        p.data = p.data.to(PRECISIONS[precision])
    return model


@torch.no_grad()
def sample_images(model, tokenizer, labels: torch.Tensor, *, batch_size=64, seed=0,
                  uint8: str = "round", eval_size: int | None = None, **kwargs) -> torch.Tensor:
    """uint8 images [B, S, S, 3] for labels [B]; batch b uses seed (seed, b), drawn by a
    generator on labels' device (the same seed gives other samples on CPU and CUDA)."""
    out = []
    for b, start in enumerate(range(0, len(labels), batch_size)):
        gen = torch.Generator(labels.device).manual_seed(seed * 1_000_003 + b)
        tokens = generate(model, labels[start:start + batch_size], generator=gen, **kwargs)
        decoded = resize_for_eval(tokenizer.decode(tokens), eval_size)
        out.append(images_to_uint8(decoded, uint8))
    return torch.cat(out)


def labelled_grid(images: torch.Tensor, labels: list[int], per_row: int,
                  names: list[str] | None, zoom: int = 1) -> Image.Image:
    size = images.shape[1] * zoom
    rows = (len(images) + per_row - 1) // per_row
    label_w = 90
    canvas = Image.new("RGB", (label_w + per_row * (size + 2), rows * (size + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, img in enumerate(images.numpy()):
        r, c = divmod(i, per_row)
        tile = Image.fromarray(img).resize((size, size), Image.NEAREST)
        canvas.paste(tile, (label_w + c * (size + 2), r * (size + 2)))
        if c == 0:
            name = names[labels[i]] if names else str(labels[i])
            draw.text((4, r * (size + 2) + size // 2 - 6), f"{labels[i]}: {name}"[:14],
                      fill="black")
    return canvas


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
        if args.per_class < 1:
            raise SampleError(f"--per-class must be positive, got {args.per_class}")
        require_parent_dir(args.out, "--out")  # before sampling, not after
        if args.out.suffix.lower() not in Image.registered_extensions():
            raise SampleError(f"--out {args.out}: not an image file name (e.g. grid.png)")
        model, meta = load_gpt(args.ckpt, args.device)
        names = class_names(meta)
        classes = parse_classes(args.classes, model.cfg.num_classes, names)
        check_sampling_args(args.cfg, args.top_k, args.top_p, args.temperature,
                            model.cfg.vocab_sizes, args.guide, ORDERS[args.order], model.cfg)
        tokenizer = load_matching_tokenizer(meta, args.tokenizer, args.device)
        cast_for_sampling(model, args.precision)
        labels = torch.tensor([c for c in classes for _ in range(args.per_class)],
                              device=args.device)
        images = sample_images(model, tokenizer, labels, batch_size=args.batch_size,
                               seed=args.seed, **sampling_kwargs(args))
    except (ValueError, FileNotFoundError) as err:  # SampleError, WeightsError, ...
        print(f"generator.sample: {err}", file=sys.stderr)
        return 2
    labelled_grid(images, labels.tolist(), args.per_class, names, args.zoom).save(args.out)
    print(f"wrote {len(images)} samples of classes {classes} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
