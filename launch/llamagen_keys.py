"""LlamaGen's state-dict layout -> ours: key renaming, and configs inferred from shapes.

Pure functions over {name: tensor} dicts (no files): ``launch.import_llamagen`` reads
and writes, the tests build LlamaGen-layout dicts and check every key is consumed.

GPT (class-conditional ``Transformer``): a renaming, one to one, equal shapes; the
rotary table ``freqs_cis`` (when saved) is dropped (ours is a buffer, rebuilt from the
config with LlamaGen's zero class row). VQ (``VQModel``): a renaming of the trunk;
``quantize.embedding.weight`` becomes our codebook (l2-normalised as LlamaGen
normalises it at use); ``quantize.codebook_used`` (a usage log) is dropped; our EMA
statistics are filled from the codebook.
"""

import re

import torch
import torch.nn.functional as F

from generator.config import SIZES, GPTConfig
from tokenizer.config import TokenizerConfig
from tokenizer.registry import llamagen_vq


class LayoutError(ValueError):
    """A state dict that is not LlamaGen's layout (missing, extra or mis-shaped keys)."""


_GPT_BLOCK = {  # layers.N.<theirs> -> blocks.N.<ours>
    "attention.wqkv.weight": "attn.qkv.weight",
    "attention.wo.weight": "attn.out.weight",
    "feed_forward.w1.weight": "ffn.w1.weight",
    "feed_forward.w2.weight": "ffn.w2.weight",
    "feed_forward.w3.weight": "ffn.w3.weight",
    "attention_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
}
_GPT_TOP = {
    "cls_embedding.embedding_table.weight": "cls_embed.weight",
    "tok_embeddings.weight": "tok_embed.0.weight",
    "norm.weight": "norm.weight",
    "output.weight": "heads.outs.0.weight",
}
GPT_DROPPED = ("freqs_cis",)
VQ_DROPPED = ("quantize.codebook_used",)
VQ_CODEBOOK = "quantize.embedding.weight"
_VQ_RENAMES = [(r"\.conv_blocks\.", ".levels."), (r"\.nin_shortcut\.", ".skip."),
               (r"\.proj_out\.", ".proj."), (r"\.(downsample|upsample)\.", ".resample.")]
_VQ_TOP = re.compile(r"^(encoder|decoder|quant_conv|post_quant_conv)\.")


def strip_prefixes(state: dict) -> dict:
    """Remove wrapper prefixes every key shares (``module.`` of DDP, ``_orig_mod.`` of
    torch.compile)."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def gpt_key(name: str) -> str | None:
    """Our name for a LlamaGen GPT key; None for a key that has none."""
    if name in _GPT_TOP:
        return _GPT_TOP[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m and m.group(2) in _GPT_BLOCK:
        return f"blocks.{m.group(1)}.{_GPT_BLOCK[m.group(2)]}"
    return None


def vq_key(name: str) -> str | None:
    """Our name for a LlamaGen VQ trunk key; None for a key that has none."""
    if name == VQ_CODEBOOK:
        return "quantizer.codebook"
    if not _VQ_TOP.match(name):
        return None
    for pattern, repl in _VQ_RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def gpt_key_theirs(ours: str) -> str:
    """LlamaGen's name for one of our GPT keys (for messages)."""
    top = {v: k for k, v in _GPT_TOP.items()}
    if ours in top:
        return top[ours]
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", ours)
    block = {v: k for k, v in _GPT_BLOCK.items()}
    return f"layers.{m.group(1)}.{block[m.group(2)]}" if m and m.group(2) in block else ours


def vq_key_theirs(ours: str) -> str:
    """LlamaGen's name for one of our VQ keys (for messages)."""
    if ours == "quantizer.codebook":
        return VQ_CODEBOOK
    resample = ".downsample." if ours.startswith("encoder.") else ".upsample."
    for pattern, repl in ((r"\.levels\.", ".conv_blocks."), (r"\.skip\.", ".nin_shortcut."),
                          (r"\.proj\.", ".proj_out."), (r"\.resample\.", resample)):
        ours = re.sub(pattern, repl, ours)
    return ours


def _preview(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")


def rename(state: dict, key_map, expected: dict, what: str, dropped=(), theirs=None) -> dict:
    """{our name: tensor} from ``state``, refusing keys that have no name of ours, names
    ``expected`` (our {name: shape}) lacks or misses, and shapes that differ; ``theirs``
    (the inverse of ``key_map``) names a missing key as LlamaGen would (None: ours)."""
    out, unexpected = {}, []
    for name, value in state.items():
        if name in dropped:
            continue
        ours = key_map(name)
        if ours is None or ours not in expected:
            unexpected.append(name)
        else:
            out[ours] = value
    if unexpected:
        raise LayoutError(f"{what}: unexpected keys (not LlamaGen's layout for this model): "
                          f"{_preview(unexpected)}")
    missing = [k for k in expected if k not in out]
    if missing:
        name = theirs or (lambda k: k)
        raise LayoutError(f"{what}: missing keys: {_preview(name(k) for k in missing)}")
    for name, value in out.items():
        if tuple(value.shape) != tuple(expected[name]):
            theirs = next(k for k in state if key_map(k) == name)
            raise LayoutError(f"{what}: key {theirs} has shape {list(value.shape)}, this model "
                              f"needs {list(expected[name])}")
    return out


def _shape(state: dict, key: str, what: str) -> tuple[int, ...]:
    if key not in state:
        raise LayoutError(f"{what}: missing key {key} (is this LlamaGen's layout?)")
    return tuple(state[key].shape)


def infer_gpt(state: dict, num_tokens: int, heads: int | None = None) -> tuple[GPTConfig, str]:
    """Our GPTConfig for a LlamaGen GPT state dict, and the size's name.

    vocabulary and width from ``tok_embeddings``, classes from the class table (its last
    row is the null class), depth from the layer indices, heads from LlamaGen's size
    table (or ``heads``); the token count is not in the weights (pass it)."""
    what = "GPT"
    vocab, dim = _shape(state, "tok_embeddings.weight", what)
    rows = _shape(state, "cls_embedding.embedding_table.weight", what)[0]
    layers = 1 + max((int(m.group(1)) for k in state
                      if (m := re.match(r"layers\.(\d+)\.", k))), default=-1)
    if layers < 1:
        raise LayoutError(f"{what}: no transformer layers (keys layers.N.*) in the weights")
    size = next((name for name, (n, h, d) in SIZES.items()
                 if (n, d) == (layers, dim) and name != "debug"), None)
    if heads is None:
        if size is None:
            known = ", ".join(f"{k} {n}x{d}" for k, (n, _, d) in SIZES.items() if k != "debug")
            raise LayoutError(f"{what}: {layers} layers of width {dim} is not a LlamaGen size "
                              f"({known}); pass --heads")
        heads = SIZES[size][1]
    cfg = GPTConfig(dim=dim, layers=layers, heads=heads, vocab_sizes=[vocab],
                    num_tokens=num_tokens, num_classes=rows - 1, rope="2d", class_rope="zero")
    return cfg, size or f"{layers}x{dim}"


def tokens_from_freqs(state: dict) -> int | None:
    """Image tokens from a saved rotary table [1 + N, head_dim / 2, 2] (None: not saved)."""
    freqs = state.get("freqs_cis")
    return None if freqs is None else int(freqs.shape[0]) - 1


def infer_vq(state: dict, image_size: int, l2_norm: bool = True) -> TokenizerConfig:
    """Our TokenizerConfig (taming style) for a LlamaGen VQ state dict: codebook from the
    embedding, widths and depth from the trunk's convs."""
    what = "VQ"
    codes, dim = _shape(state, VQ_CODEBOOK, what)
    z_channels = _shape(state, "quant_conv.weight", what)[1]
    channels = _shape(state, "encoder.conv_in.weight", what)[0]
    levels = 1 + max((int(m.group(1)) for k in state
                      if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))), default=-1)
    if levels < 1:
        raise LayoutError(f"{what}: no encoder levels (encoder.conv_blocks.N.*) in the weights")
    ch_mult = [_shape(state, f"encoder.conv_blocks.{i}.res.0.conv1.weight", what)[0] // channels
               for i in range(levels)]
    res_blocks = 1 + max(int(m.group(1)) for k in state
                         if (m := re.match(r"encoder\.conv_blocks\.0\.res\.(\d+)\.", k)))
    return llamagen_vq(image_size, ch_mult=tuple(ch_mult), codebook_size=codes, dim=dim,
                       channels=channels, z_channels=z_channels, res_blocks=res_blocks,
                       l2_norm=l2_norm)


def vq_state(state: dict, expected: dict, l2_norm: bool) -> dict:
    """Our VQ tokenizer's state dict from LlamaGen's: trunk renamed, codebook (normalised
    with l2_norm), EMA statistics filled from it."""
    ours_only = {"quantizer.ema_count", "quantizer.ema_sum", "quantizer.initialised"}
    out = rename(state, vq_key, {k: v for k, v in expected.items() if k not in ours_only},
                 "VQ", VQ_DROPPED, vq_key_theirs)
    codebook = out["quantizer.codebook"].float()
    codebook = F.normalize(codebook, dim=-1) if l2_norm else codebook
    out.update({"quantizer.codebook": codebook, "quantizer.ema_sum": codebook.clone(),
                "quantizer.ema_count": torch.ones(codebook.shape[0]),
                "quantizer.initialised": torch.tensor(True)})
    return out
