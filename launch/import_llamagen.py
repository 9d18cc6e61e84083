"""Import LlamaGen's released class-conditional checkpoints as our exported pair.

    python -m launch.import_llamagen --vq vq_ds16_c2i.pt --gpt c2i_B_256.pt --out runs/llamagen-b
    python -m generator.sample --ckpt runs/llamagen-b/gpt.safetensors --classes 207,360 --cfg 2.0

Writes OUT/tokenizer.safetensors + tokenizer.json (our ``vq-imagenet``: LlamaGen's
VQ-16 trunk), OUT/gpt.safetensors + gpt.json (our GPT with LlamaGen's zero class
rotary row, the tokenizer's fingerprint recorded) and OUT/llamagen-import.json (what
was read and inferred), so ``generator.sample``, ``generator.sample_fid`` and
``tokenizer.evaluate`` take them as they take our own.

Reading is safe: ``torch.load(weights_only=True)``, which admits tensors, containers
and, here, ``argparse.Namespace`` (the ``args`` LlamaGen saves beside the weights);
anything else in the pickle is refused, never executed. The weights are found under
``model`` (DDP), ``module`` (DeepSpeed), ``state_dict``, or are the bare dict (FSDP);
``.safetensors`` files are read as they are.

Inferred from the weights (and printed): the GPT's size (depth and width; heads from
LlamaGen's size table, or --heads), vocabulary and classes; the VQ's widths, depth and
codebook. The token count is not in the weights: it comes from the saved rotary table
when there is one, else the checkpoint's ``args`` (image_size / downsample_size), else
--image-size, else a 256/384/512 in the GPT file's name. Every key must be consumed:
missing, unexpected or mis-shaped keys are refused with their names.
"""

import argparse
import dataclasses
import pickle
import re
import sys
import zipfile
from pathlib import Path

import torch

from data import config as configlib
from data.cli import one_line_parser, positive_int, require_output_dir
from data.files import atomic_write_json, file_sha1, save_weights, tensors_sha1
from generator.model import GPT
from launch.llamagen_keys import (
    GPT_DROPPED,
    LayoutError,
    gpt_key,
    gpt_key_theirs,
    infer_gpt,
    infer_vq,
    rename,
    strip_prefixes,
    tokens_from_freqs,
    vq_state,
)
from tokenizer.build import build_tokenizer

WRAPPERS = ("model", "module", "state_dict")


class CheckpointError(ValueError):
    """A checkpoint that cannot be imported (unreadable, unsafe, or not LlamaGen's)."""


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(state dict, info) of a LlamaGen checkpoint; info: wrapper, args (a dict or None)."""
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {"wrapper": "safetensors", "args": None}
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file "
                                  f"({_first(err)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # memory-mapped where the format allows (zip checkpoints): large files are
            # paged in as tensors are written out, not held twice
            mmap = zipfile.is_zipfile(path)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (unreadable pickle)") from None
        raise CheckpointError(f"{path}: refused: the pickle asks for {found.group(1)}, which is "
                              "not a tensor, a container or argparse.Namespace; nothing in it "
                              "was run") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first(err)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of weights")
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else None
    for wrapper in WRAPPERS:
        if isinstance(obj.get(wrapper), dict):
            state, found = obj[wrapper], wrapper
            break
    else:
        if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: no weights under {', '.join(WRAPPERS)} and not a "
                                  f"bare dict of tensors (top-level keys: {sorted(obj)[:8]})")
        state, found = obj, "bare (FSDP)"
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors under '{found}': {bad[:6]}")
    return strip_prefixes(state), {"wrapper": found, "args": args}


def _first(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def token_count(state: dict, info: dict, path: Path, factor: int,
                image_size: int | None) -> tuple[int, str]:
    """(N, where it came from) for a GPT checkpoint: see the module docstring."""
    saved = tokens_from_freqs(state)
    if image_size is not None:
        n = (image_size // factor) ** 2
        if saved is not None and saved != n:
            raise CheckpointError(f"--image-size {image_size} gives {n} tokens, the "
                                  f"checkpoint's rotary table has {saved}")
        return n, "--image-size"
    if saved is not None:
        return saved, "the saved rotary table (freqs_cis)"
    args = info["args"] or {}
    if isinstance(args.get("image_size"), int) and isinstance(args.get("downsample_size"), int):
        return (args["image_size"] // args["downsample_size"]) ** 2, "the checkpoint's args"
    m = re.search(r"(?<!\d)(256|384|512)(?!\d)", path.stem)
    if m:
        return (int(m.group(1)) // factor) ** 2, f"the file name ({m.group(1)} px)"
    raise CheckpointError(f"{path}: the token count is not in the weights, its args or its name; "
                       "pass --image-size (256 or 384 for LlamaGen's class-conditional models)")


def expected_shapes(model_fn) -> dict:
    """{name: shape} of a model's state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_fn()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def import_pair(vq_path: Path, gpt_path: Path | None, out: Path, image_size: int | None = None,
                heads: int | None = None, l2_norm: bool | None = None) -> dict:
    """Import the VQ (and the GPT) into ``out``; returns the import record."""
    vq_raw, vq_info = read_checkpoint(vq_path)
    vq_args = vq_info["args"] or {}
    if l2_norm is None:
        l2_norm = bool(vq_args.get("codebook_l2_norm", True))
    tok_cfg = infer_vq(vq_raw, image_size or 256, l2_norm)  # resized below to the GPT's grid
    factor = tok_cfg.encoder.factor
    record = {"vq": {"file": str(vq_path.resolve()), "sha1": file_sha1(vq_path),
                     "wrapper": vq_info["wrapper"], "l2_norm": l2_norm}}
    if gpt_path is not None:
        gpt_raw, gpt_info = read_checkpoint(gpt_path)
        n, source = token_count(gpt_raw, gpt_info, gpt_path, factor, image_size)
        side = round(n**0.5)
        if side * side != n:
            raise CheckpointError(f"{n} tokens is not a square grid")
        image_size = side * factor
        try:
            gpt_cfg, size = infer_gpt(gpt_raw, n, heads)
        except ValueError as err:  # GPTConfig's own checks (e.g. heads not dividing dim)
            raise CheckpointError(f"GPT: {err}") from None
        gpt_weights = rename(gpt_raw, gpt_key, expected_shapes(lambda: GPT(gpt_cfg)), "GPT",
                             GPT_DROPPED, gpt_key_theirs)
        if gpt_cfg.vocab_sizes[0] != tok_cfg.quantizer.codebook_size:
            raise CheckpointError(f"the GPT's vocabulary ({gpt_cfg.vocab_sizes[0]}) is not "
                                  f"the VQ's codebook ({tok_cfg.quantizer.codebook_size})")
        record["gpt"] = {"file": str(gpt_path.resolve()), "sha1": file_sha1(gpt_path),
                         "wrapper": gpt_info["wrapper"], "size": size, "heads": gpt_cfg.heads,
                         "num_tokens": n, "num_tokens_from": source,
                         "num_classes": gpt_cfg.num_classes,
                         "dropped": [k for k in GPT_DROPPED if k in gpt_raw]}
        tok_cfg = dataclasses.replace(tok_cfg, image_size=image_size)
    tok_weights = vq_state(vq_raw, expected_shapes(lambda: build_tokenizer(tok_cfg)), l2_norm)
    tok_weights = {k: v.float() if v.is_floating_point() else v for k, v in tok_weights.items()}
    record["vq"].update(image_size=tok_cfg.image_size, grid=tok_cfg.grid,
                        codebook=[tok_cfg.quantizer.codebook_size, tok_cfg.quantizer.dim],
                        ch_mult=list(tok_cfg.encoder.ch_mult))

    out.mkdir(parents=True, exist_ok=True)
    save_weights(out / "tokenizer.safetensors", tok_weights)
    atomic_write_json(out / "tokenizer.json", configlib.to_dict(tok_cfg))
    if gpt_path is not None:
        save_weights(out / "gpt.safetensors", gpt_weights)
        meta = {"gpt": configlib.to_dict(gpt_cfg),
                "tokenizer": {"path": str((out / "tokenizer.safetensors").resolve()),
                              "sha1": tensors_sha1(tok_weights)},
                "weights": "imported from LlamaGen", "image_dir": None}
        atomic_write_json(out / "gpt.json", meta)
    atomic_write_json(out / "llamagen-import.json", record)
    return record


def summary(record: dict, out: Path) -> str:
    vq = record["vq"]
    norm = " l2-normalised" if vq["l2_norm"] else ""
    lines = [f"VQ  {Path(vq['file']).name} (weights: {vq['wrapper']}): codebook "
             f"{vq['codebook'][0]} x {vq['codebook'][1]}{norm},"
             f" ch_mult {tuple(vq['ch_mult'])}, {vq['image_size']} px -> {vq['grid']}x{vq['grid']}"]
    if "gpt" in record:
        g = record["gpt"]
        lines.append(f"GPT {Path(g['file']).name} (weights: {g['wrapper']}): size {g['size']} "
                     f"({g['heads']} heads), {g['num_tokens']} tokens (from {g['num_tokens_from']})"
                     f", {g['num_classes']} classes, class rotary row 'zero' (LlamaGen's)"
                     + (f"; dropped {', '.join(g['dropped'])}" if g["dropped"] else ""))
    lines.append(f"wrote {out}/" + ("{tokenizer,gpt}.{safetensors,json}" if "gpt" in record
                                    else "tokenizer.{safetensors,json}"))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = one_line_parser(prog="python -m launch.import_llamagen",
                                       description=__doc__)
    parser.add_argument("--vq", type=Path, required=True,
                        help="LlamaGen VQ checkpoint (vq_ds16_c2i.pt) or .safetensors")
    parser.add_argument("--gpt", type=Path,
                        help="LlamaGen class-conditional GPT checkpoint (c2i_B_256.pt, ...); "
                             "without it only the tokenizer is imported")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--image-size", type=positive_int,
                        help="sampling resolution (256 or 384), when the token count cannot "
                             "be read from the checkpoint (default: inferred; 256 for a VQ alone)")
    parser.add_argument("--heads", type=positive_int,
                        help="attention heads, for a GPT that is not one of LlamaGen's sizes")
    parser.add_argument("--no-l2-norm", action="store_true",
                        help="the VQ codebook is not l2-normalised (default: as the checkpoint's "
                             "args say, else normalised as in vq_ds16_c2i.pt)")
    args = parser.parse_args(argv)
    try:
        require_output_dir(args.out, "--out")
        record = import_pair(args.vq, args.gpt, args.out, args.image_size, args.heads,
                             False if args.no_l2_norm else None)
    except (CheckpointError, LayoutError, ValueError) as err:
        print(f"launch.import_llamagen: {err}", file=sys.stderr)
        return 2
    print(summary(record, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

