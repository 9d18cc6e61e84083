"""GPT configs and the one size registry (LlamaGen's shapes) shared by train and sample.

Sequence layout: [class, t_0, ..., t_{N-2}] in, predictions of [t_0, ..., t_{N-1}] out;
each t_i is a tuple of K components (GaussianToken: position, shape, code; the VQ
grid: code). Components are embedded and summed at the input, and predicted one
after another inside a step by light heads (component k sees components < k).
"""

from dataclasses import dataclass, field

ROPES = ("1d", "2d")


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
    qk_norm: bool = False
    rope: str = "2d"  # "2d": tokens on a sqrt(N) x sqrt(N) grid (VQ); "1d": sequence order
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    ffn_multiple: int = 256

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.rope not in ROPES:
            raise ValueError(f"rope must be one of {ROPES}, got {self.rope!r}")
        if not self.vocab_sizes or min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes must be positive, got {self.vocab_sizes}")
        head_dim = self.dim // self.heads
        if self.rope == "2d":
            side = round(self.num_tokens**0.5)
            if side * side != self.num_tokens:
                raise ValueError(f"rope='2d' needs a square token grid, got {self.num_tokens}")
            if head_dim % 4:
                raise ValueError(f"rope='2d' needs head_dim divisible by 4, got {head_dim}")
        elif head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {head_dim}")

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * 4 * self.dim / 3)
        return self.ffn_multiple * ((hidden + self.ffn_multiple - 1) // self.ffn_multiple)


SIZES = {  # (layers, heads, dim): LlamaGen's class-conditional models
    "debug": (2, 4, 64),
    "B": (12, 12, 768),
    "L": (24, 16, 1024),
    "XL": (36, 20, 1280),
    "XXL": (48, 24, 1536),
    "3B": (24, 32, 3200),
}


def gpt_config(size: str, *, vocab_sizes, num_tokens, num_classes, rope=None, **kw) -> GPTConfig:
    """Config of a registry size for a given tokenizer (vocabularies, N) and class count.

    rope defaults to "2d" for single-component square grids (the VQ baseline) and "1d"
    for tuples (GaussianToken), whose canonical order is already raster-like.
    """
    if size not in SIZES:
        raise ValueError(f"unknown GPT size {size!r}; choose from {list(SIZES)}")
    layers, heads, dim = SIZES[size]
    if rope is None:
        square = round(num_tokens**0.5) ** 2 == num_tokens
        rope = "2d" if len(vocab_sizes) == 1 and square else "1d"
    return GPTConfig(dim=dim, layers=layers, heads=heads, vocab_sizes=list(vocab_sizes),
                     num_tokens=num_tokens, num_classes=num_classes, rope=rope, **kw)
