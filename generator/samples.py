"""Samples from an exported GPT: loading it (and the tokenizer it was trained on),
checking sampling settings, decoding seeded batches to uint8 images, labelled grids. The
library half of the sampling commands ``generator.sample`` and ``generator.sample_fid``.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from data import config as configlib
from data.files import load_state, load_weights, read_json
from generator.config import GPTConfig
from generator.model import GPT
from generator.sampling import SCHEDULES, generate, guided_components
from tokenizer.build import load_tokenizer
from tokenizer.visualize import to_uint8

# seed mixers: batch b of a request with seed s draws from seed s * BATCH_SEED_STRIDE + b
# (a prime, so (s, b) pairs do not collide for b below it); random FID labels of chunk k
# from seed s * LABEL_SEED_STRIDE + k
BATCH_SEED_STRIDE = 1_000_003
LABEL_SEED_STRIDE = 7919


@dataclass(frozen=True)
class SamplingSettings:
    """How tuples are drawn: guidance scale / schedule / components, order constraint,
    temperature and filters, seed, batch, precision, compiled decoding."""

    cfg: float = 2.0
    schedule: str = "constant"
    guide: str = "all"
    order: str = "auto"  # ORDERS: auto = on for Gaussian tuples
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 64
    precision: str = "fp32"
    compile: bool = False

    def generate_kwargs(self) -> dict:
        """generate()'s keyword arguments (recorded with FID samples: "compile" only when
        on, so earlier sample sets keep their settings)."""
        kwargs = {"cfg_scale": self.cfg, "schedule": self.schedule, "guide": self.guide,
                  "order": ORDERS[self.order], "temperature": self.temperature,
                  "top_k": self.top_k, "top_p": self.top_p}
        if self.compile:
            kwargs["compile"] = True
        return kwargs

    def check(self, model_cfg: GPTConfig) -> None:
        """SampleError naming the flag for a setting this GPT cannot sample with."""
        if self.order not in ORDERS:
            raise SampleError(f"--order must be one of {list(ORDERS)}, got {self.order!r}")
        if self.schedule not in SCHEDULES:
            raise SampleError(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.batch_size < 1:
            raise SampleError(f"--batch-size must be positive, got {self.batch_size}")
        check_sampling_args(self.cfg, self.top_k, self.top_p, self.temperature,
                            model_cfg.vocab_sizes, self.guide, ORDERS[self.order], model_cfg)

    def to_dict(self) -> dict:
        return asdict(self)


ORDERS = {"auto": None, "on": True, "off": False}


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
        return read_json(Path(image_dir) / "classes.json", "class names", ("names",))["names"]
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
        gen = torch.Generator(labels.device).manual_seed(seed * BATCH_SEED_STRIDE + b)
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


