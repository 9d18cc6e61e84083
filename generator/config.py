"""GPT configs and the one size registry (LlamaGen's shapes) shared by train and sample.

Sequence layout: [class, t_0, ..., t_{N-2}] in, predictions of [t_0, ..., t_{N-1}] out;
each t_i is a tuple of K components (GaussianToken: position, shape, code; the VQ
grid: code). Components are embedded and summed at the input, and predicted one
after another inside a step by light heads (component k sees components < k).

Rotary position embedding (``rope``):
  "2d"       the VQ grid: tuple i sits at (i // side, i % side) of a square grid.
  "1d"       the sequence index (any token layout).
  "spatial"  tuples that carry a position token (GaussianToken): input i is rotated by
             the (row, column) of tuple i-1's position token, half of each head with
             the row and half with the column; the class token is not rotated. The
             number of Gaussians per cell varies, so the index i is not a place.

The class token's rotary row (``class_rope``):
  "identity" (ours)  cos 1, sin 0: the class token's query and key pass unrotated.
  "zero" (LlamaGen)  cos 0, sin 0, as LlamaGen's zero-padded table has it: the class
             token's query and key are zero in every layer (it is still attended to,
             with score 0, and its value still counts). Needed to run LlamaGen's weights
             as they were trained; a buffer, so the choice lives here, not in the weights.
"""

from dataclasses import dataclass, field

ROPES = ("1d", "2d", "spatial")
CLASS_ROPES = ("identity", "zero")


@dataclass
class GPTConfig:
    dim: int = 768
    layers: int = 12
    heads: int = 12
    vocab_sizes: list[int] = field(default_factory=lambda: [16384])
    num_tokens: int = 256  # N: tuples per image
    num_classes: int = 1000  # the null class (CFG) is id num_classes
    class_dropout: float = 0.1
    dropout: float = 0.1  # token, residual and FFN dropout
    attn_dropout: float = 0.0  # on the attention probabilities (LlamaGen: 0)
    qk_norm: bool = False
    rope: str = "2d"  # "2d" (VQ grid), "1d" (sequence order), "spatial" (position tokens)
    rope_base: float = 10000.0
    class_rope: str = "identity"  # "identity" (ours) or "zero" (LlamaGen's table)
    norm_eps: float = 1e-5
    ffn_multiple: int = 256
    # what the tuple components are (from the tokenizer; see data/tokens.py's manifest)
    component_names: list[str] = field(default_factory=list)  # [] = "c0", "c1", ...
    position_component: int = -1  # index of the position token; -1: none
    position_grid: int = 0  # position token = row * position_grid + column
    # "factorised": the position token's input embedding and output logits get a row and
    # a column term shared along each axis (plus the free per-token term); "plain": a
    # free table only, as for any other component
    position_embed: str = "factorised"

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.rope not in ROPES:
            raise ValueError(f"rope must be one of {ROPES}, got {self.rope!r}")
        if not self.vocab_sizes or min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes must be positive, got {self.vocab_sizes}")
        K = len(self.vocab_sizes)
        if self.component_names and len(self.component_names) != K:
            raise ValueError(f"component_names {self.component_names} do not match {K} "
                             "vocabularies")
        if not -1 <= self.position_component < K:
            raise ValueError(f"position_component {self.position_component} is outside "
                             f"[-1, {K})")
        if self.position_component >= 0 and \
                self.position_grid**2 != self.vocab_sizes[self.position_component]:
            raise ValueError(f"position_grid {self.position_grid} squared is not the position "
                             f"vocabulary {self.vocab_sizes[self.position_component]}")
        if self.class_rope not in CLASS_ROPES:
            raise ValueError(f"class_rope must be one of {CLASS_ROPES}, got {self.class_rope!r}")
        if self.position_embed not in ("factorised", "plain"):
            raise ValueError(f"position_embed must be 'factorised' or 'plain', got "
                             f"{self.position_embed!r}")
        for name in ("dropout", "attn_dropout", "class_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        head_dim = self.dim // self.heads
        if self.rope == "2d" and K > 1:
            raise ValueError("rope='2d' places tuple i on a fixed grid cell, which means "
                             "nothing for tuples of several components: use 'spatial' "
                             "(position tokens) or '1d'")
        if self.rope == "spatial" and self.position_component < 0:
            raise ValueError("rope='spatial' needs tuples with a position token "
                             "(position_component >= 0, from a GaussianToken tokenizer)")
        if self.rope == "2d":
            side = round(self.num_tokens**0.5)
            if side * side != self.num_tokens:
                raise ValueError(f"rope='2d' needs a square token grid, got {self.num_tokens}")
        if self.rope in ("2d", "spatial") and head_dim % 4:
            raise ValueError(f"rope={self.rope!r} needs head_dim divisible by 4, got {head_dim}")
        if head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {head_dim}")

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        return self.ffn_multiple * ((hidden + self.ffn_multiple - 1) // self.ffn_multiple)

    @property
    def names(self) -> list[str]:
        """One name per tuple component (for logs)."""
        return self.component_names or [f"c{k}" for k in range(len(self.vocab_sizes))]


SIZES = {  # (layers, heads, dim): LlamaGen's class-conditional models
    "debug": (2, 4, 64),
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "XL": (36, 20, 1280),
    "XXL": (48, 24, 1536),
    "3B": (24, 32, 3200),
}


def default_rope(vocab_sizes, num_tokens: int, position_component: int = -1) -> str:
    """"spatial" for tuples with a position token, "2d" for a square single-code grid,
    else "1d"."""
    if position_component >= 0:
        return "spatial"
    square = round(num_tokens**0.5) ** 2 == num_tokens
    return "2d" if len(vocab_sizes) == 1 and square else "1d"


def gpt_config(size: str, *, vocab_sizes, num_tokens, num_classes, rope=None,
               layout: dict | None = None, **kw) -> GPTConfig:
    """Config of a registry size for a given tokenizer (vocabularies, N) and class count.

    layout: the tokenizer's token layout (``token_layout``: component names, the
    position component and its grid), as the token shards' manifest records it.
    rope: None = :func:`default_rope`.
    """
    if size not in SIZES:
        raise ValueError(f"unknown GPT size {size!r}; choose from {list(SIZES)}")
    layers, heads, dim = SIZES[size]
    layout = layout or {}
    kw.setdefault("component_names", list(layout.get("components", [])))
    kw.setdefault("position_component", layout.get("position_component", -1))
    kw.setdefault("position_grid", layout.get("position_grid", 0))
    if rope is None:
        rope = default_rope(vocab_sizes, num_tokens, kw["position_component"])
    return GPTConfig(dim=dim, layers=layers, heads=heads, vocab_sizes=list(vocab_sizes),
                     num_tokens=num_tokens, num_classes=num_classes, rope=rope, **kw)
