"""A LlamaGen-style GPT over token tuples, with a static KV cache for decoding.

Blocks: pre-norm RMSNorm, SwiGLU FFN (hidden 2/3 * 4d rounded up to 256), no biases,
rotary position embedding, optional qk-norm, scaled_dot_product_attention (xformers
where it imports and runs on CUDA). Input position 0 is the class token, whose
rotary row is the identity (cos 1, sin 0) or, with ``class_rope = "zero"``, zero as
LlamaGen's (which zeroes the class token's q and k); input position i >= 1 holds
tuple t_{i-1}. With rope "spatial" the rotation of input i comes from t_{i-1}'s
position token ("places", [B, L], -1 for the class token) instead of from i; keys are
cached rotated, so the static KV cache works unchanged. Dropout: ``dropout`` on
embeddings, residual branches and the FFN; ``attn_dropout`` (default 0) on the
attention probabilities.
Initialisation N(0, 0.02); output heads start at zero.

Tuple heads: with h the final hidden state at a step, component 0 is predicted from
h; component k from h + sum_{j<k} E_kj(t_j) passed through one small residual SwiGLU,
so p(t) = p(t^0 | h) p(t^1 | h, t^0) ... inside one step. With one component this is
exactly LlamaGen's output layer.

Factorised position tokens (``position_embed = "factorised"``, Gaussian tuples): the
position token p = row * G + col is embedded as E[p] + R[row] + C[col] and scored as
W[p] h + U[row] h + V[col] h, so what is learnt about a row or a column is shared by
all G cells along it (a 1,024-way position vocabulary seen 16 times per image has
little data per cell). The free terms keep the full expressivity.
"""

import torch
import torch.nn.functional as F
from torch import nn

from generator.config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):  # computed in fp32
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) \
            * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def spatial_freqs(cfg: GPTConfig) -> torch.Tensor:
    """Frequencies [head_dim / 4] shared by the row and the column halves (2d, spatial)."""
    quarter = cfg.dim // cfg.heads // 4
    return cfg.rope_base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)


def spatial_angles(places: torch.Tensor, grid: int, freqs: torch.Tensor) -> torch.Tensor:
    """Angles [B, L, head_dim / 2] of position tokens places [B, L] on a grid x grid
    raster (token = row * grid + column); -1 (the class token) gets angle 0."""
    valid = places >= 0
    row = torch.where(valid, torch.div(places, grid, rounding_mode="floor"), 0)
    col = torch.where(valid, places % grid, 0)
    return torch.cat([row.to(freqs.dtype)[..., None] * freqs,
                      col.to(freqs.dtype)[..., None] * freqs], dim=-1)


def rope_angles(cfg: GPTConfig) -> torch.Tensor:
    """Angles [N, head_dim / 2] for input positions 0..N-1 (position 0: the class token);
    zeros for "spatial", whose angles come from the tokens (:func:`spatial_angles`)."""
    head_dim = cfg.dim // cfg.heads
    positions = torch.arange(cfg.num_tokens, dtype=torch.float64)
    if cfg.rope == "spatial":
        return torch.zeros(cfg.num_tokens, head_dim // 2)
    if cfg.rope == "1d":
        freqs = cfg.rope_base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = positions[:, None] * freqs[None]
    else:  # half of each head rotates with the row, half with the column
        side = round(cfg.num_tokens**0.5)
        token = (positions - 1).long()  # input i >= 1 holds tuple i - 1 (grid cell i - 1)
        angles = spatial_angles(token, side, spatial_freqs(cfg))
    angles[0] = 0  # the class token: identity rotation
    return angles.float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2i], x[..., 2i+1]); x [B, H, L, Dh], cos/sin [L, Dh/2] or
    [B, 1, L, Dh/2]. Computed in fp32 (fp64 for fp64 inputs)."""
    xf = x if x.dtype == torch.float64 else x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def _xformers_attention():
    try:
        import xformers.ops as xops
    except Exception:  # any import failure means: not usable here
        return None
    return xops


ATTENTION = ("auto", "sdpa", "xformers")


def xformers_runs(device, dtype=torch.bfloat16) -> bool:
    """Whether xformers' memory-efficient attention imports and runs, causal, on device
    (CUDA only; a wheel built for another torch or GPU imports but fails here)."""
    if torch.device(device).type != "cuda":
        return False
    xops = _xformers_attention()
    if xops is None:
        return False
    try:
        q = torch.zeros(1, 8, 2, 64, device=device, dtype=dtype)  # [B, L, H, Dh]
        xops.memory_efficient_attention(q, q, q, attn_bias=xops.LowerTriangularMask())
    except Exception:  # no kernel for this GPU, dtype or build
        return False
    return True


def use_attention(model: nn.Module, backend: str, device) -> str:
    """Set every attention layer's training/prefill kernel: "sdpa", "xformers" (a
    ValueError where it does not run) or "auto" (xformers where it runs on CUDA, else
    SDPA). Returns the one chosen. Cached decoding always uses SDPA with its mask."""
    if backend not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {backend!r}")
    runs = backend != "sdpa" and xformers_runs(device)
    if backend == "xformers" and not runs:
        raise ValueError(f"attention = 'xformers': xformers' memory-efficient attention does "
                         f"not import or run on {device}")
    chosen = "xformers" if runs else "sdpa"
    for module in model.modules():
        if isinstance(module, Attention):
            module.use_xformers = chosen == "xformers"
    return chosen


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.heads, cfg.dim // cfg.heads
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.out = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_p = cfg.attn_dropout
        # decoding cache, set by GPT.setup_cache; buffers, so torch.compile treats them
        # as module state mutated in place
        self.register_buffer("cache_k", None, persistent=False)
        self.register_buffer("cache_v", None, persistent=False)
        self.use_xformers = False

    def forward(self, x, cos, sin, slots=None):
        """x [B, L, D] -> [B, L, D]; slots: (positions [L], mask [L, max_len]) of the
        inputs in the decoding cache (:meth:`GPT.cache_slots`), None without a cache."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        p = self.attn_p if self.training else 0.0
        if self.cache_k is not None:  # static cache [B, H, max_len, Dh]: every step reads
            # all of it, positions after the newest masked, so shapes never change
            positions, mask = slots
            self.cache_k.index_copy_(2, positions, k.to(self.cache_k.dtype))
            self.cache_v.index_copy_(2, positions, v.to(self.cache_v.dtype))
            y = F.scaled_dot_product_attention(q, self.cache_k, self.cache_v, attn_mask=mask,
                                               dropout_p=p)
            return self.drop(self.out(y.transpose(1, 2).reshape(B, L, D)))
        causal = L > 1
        xops = _xformers_attention() if self.use_xformers and x.is_cuda else None
        if xops is not None:
            bias = xops.LowerTriangularMask() if causal else None
            y = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                v.transpose(1, 2), attn_bias=bias, p=p)
            y = y.reshape(B, L, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=causal)
            y = y.transpose(1, 2).reshape(B, L, D)  # [B, L, D]
        return self.drop(self.out(y))


def decode_positions(start, length: int, device) -> torch.Tensor:
    """Input positions [length] from start (int or 0-dim tensor), without a host sync."""
    offsets = torch.arange(length, device=device)
    if isinstance(start, torch.Tensor):
        return start.to(device=device, dtype=torch.long) + offsets
    return offsets + start


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.dim, cfg.norm_eps), Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = SwiGLU(cfg.dim, cfg.ffn_hidden, cfg.dropout)

    def forward(self, x, cos, sin, slots=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, slots)
        return x + self.ffn(self.ffn_norm(x))


def factorised_position(cfg: GPTConfig) -> bool:
    return cfg.position_component >= 0 and cfg.position_embed == "factorised"


class TupleHeads(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        vocab, dim = cfg.vocab_sizes, cfg.dim
        self.outs = nn.ModuleList(nn.Linear(dim, v, bias=False) for v in vocab)
        self.position, self.grid = cfg.position_component, cfg.position_grid
        if factorised_position(cfg):  # row and column scores shared along each axis
            self.row_out = nn.Linear(dim, cfg.position_grid, bias=False)
            self.col_out = nn.Linear(dim, cfg.position_grid, bias=False)
        self.cond = nn.ModuleList(  # cond[k-1][j]: embedding of component j for head k
            nn.ModuleList(nn.Embedding(vocab[j], dim) for j in range(k))
            for k in range(1, len(vocab)))
        self.norms = nn.ModuleList(RMSNorm(dim, cfg.norm_eps) for _ in vocab[1:])
        self.mlps = nn.ModuleList(SwiGLU(dim, dim) for _ in vocab[1:])
        self.out_norms = nn.ModuleList(RMSNorm(dim, cfg.norm_eps) for _ in vocab[1:])

    def logits(self, h: torch.Tensor, k: int, previous: list[torch.Tensor]) -> torch.Tensor:
        """Logits of component k from hidden h [..., D] and components 0..k-1 ([...] each)."""
        if k == 0:
            hk = h
        else:
            hk = h + sum(emb(t) for emb, t in zip(self.cond[k - 1], previous[:k], strict=True))
            hk = hk + self.mlps[k - 1](self.norms[k - 1](hk))
            hk = self.out_norms[k - 1](hk)
        out = self.outs[k](hk).float()
        if k == self.position and hasattr(self, "row_out"):  # [..., G*G] += row + column
            g = self.grid  # broadcast over [..., G, G]: no G*G copies of the row and column
            out = (out.unflatten(-1, (g, g)) + self.row_out(hk).float()[..., :, None]
                   + self.col_out(hk).float()[..., None, :]).flatten(-2)
        return out


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embed = nn.ModuleList(nn.Embedding(v, cfg.dim) for v in cfg.vocab_sizes)
        if factorised_position(cfg):
            self.pos_rows = nn.Embedding(cfg.position_grid, cfg.dim)
            self.pos_cols = nn.Embedding(cfg.position_grid, cfg.dim)
        self.cls_embed = nn.Embedding(cfg.num_classes + 1, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.heads = TupleHeads(cfg)
        angles = rope_angles(cfg)
        cos, sin = torch.cos(angles), torch.sin(angles)
        if cfg.class_rope == "zero":  # LlamaGen's zero-padded class row
            cos[0] = 0
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.register_buffer("rope_freqs", spatial_freqs(cfg).float(), persistent=False)
        self.apply(self._init)
        for out in [*self.heads.outs, *([self.heads.row_out, self.heads.col_out]
                                        if factorised_position(cfg) else [])]:
            nn.init.zeros_(out.weight)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def _check(self, labels, tokens):
        K = len(self.cfg.vocab_sizes)
        if tokens.dim() != 3 or tokens.shape[-1] != K or tokens.shape[1] > self.cfg.num_tokens:
            raise ValueError(f"tokens must be [B, <= {self.cfg.num_tokens}, {K}], got "
                             f"{list(tokens.shape)}")
        if labels.shape != tokens.shape[:1]:
            raise ValueError(f"labels must be [B={tokens.shape[0]}], got {list(labels.shape)}")

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, L, K] -> [B, L, D]: the sum of one embedding per component (with the
        row and column terms of a factorised position token)."""
        x = sum(emb(tokens[..., k]) for k, emb in enumerate(self.tok_embed))
        if factorised_position(self.cfg):
            p, g = tokens[..., self.cfg.position_component], self.cfg.position_grid
            x = x + self.pos_rows(torch.div(p, g, rounding_mode="floor")) + self.pos_cols(p % g)
        return x

    def places(self, tuples: torch.Tensor, class_token: bool = False) -> torch.Tensor | None:
        """Position tokens [B, L (+1)] of inputs holding tuples [B, L, K], with -1 first
        for the class token; None unless rope is "spatial"."""
        if self.cfg.rope != "spatial":
            return None
        places = tuples[..., self.cfg.position_component]
        if class_token:
            places = torch.cat([places.new_full((places.shape[0], 1), -1), places], 1)
        return places

    def rotation(self, start: int, length: int, places: torch.Tensor | None = None):
        """(cos, sin) for inputs at positions start..start+length-1: [L, Dh/2], or
        [B, 1, L, Dh/2] from places [B, L] with rope "spatial"."""
        if self.cfg.rope != "spatial":
            if isinstance(start, torch.Tensor):  # decoding: gather, no host sync
                idx = decode_positions(start, length, self.rope_cos.device)
                return self.rope_cos[idx], self.rope_sin[idx]
            return self.rope_cos[start:start + length], self.rope_sin[start:start + length]
        if places is None or places.shape[1] != length:
            raise ValueError(f"rope='spatial' needs the position tokens [B, {length}] of the "
                             "inputs (GPT.places)")
        freqs = self.rope_freqs  # kept in fp32 (fp64) even when the model is cast lower
        if freqs.dtype not in (torch.float32, torch.float64):
            freqs = spatial_freqs(self.cfg).to(places.device, torch.float32)
        angles = spatial_angles(places, self.cfg.position_grid, freqs)
        cos = torch.cos(angles)
        if self.cfg.class_rope == "zero":  # the class token (place -1): LlamaGen's zero row
            cos = cos.masked_fill((places < 0)[..., None], 0)
        return cos[:, None], torch.sin(angles)[:, None]

    def hidden(self, x: torch.Tensor, start: int = 0,
               places: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, L, D] of inputs x [B, L, D] at positions start..;
        places [B, L]: their position tokens (rope "spatial" only)."""
        cos, sin = self.rotation(start, x.shape[1], places)
        slots = self.cache_slots(start, x.shape[1], x.device)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, cos, sin, slots)
        return self.norm(x)

    def cache_slots(self, start, length: int, device):
        """(positions [L], mask [L, max_len]: True up to each position) of inputs at
        start.. in the decoding cache, computed once per step for every layer; None
        without a cache."""
        if self.blocks[0].attn.cache_k is None:
            return None
        positions = decode_positions(start, length, device)
        return positions, torch.arange(self.cfg.num_tokens, device=device) <= positions[:, None]

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Teacher-forced logits: labels [B], tokens [B, N, K] -> K tensors [B, N, V_k]."""
        self._check(labels, tokens)
        x = torch.cat([self.cls_embed(labels)[:, None], self.embed_tokens(tokens[:, :-1])], 1)
        h = self.hidden(x, 0, self.places(tokens[:, :-1], class_token=True))
        # h [B, N, D]: h[:, i] predicts tokens[:, i]
        components = [tokens[..., k] for k in range(tokens.shape[-1])]
        return [self.heads.logits(h, k, components) for k in range(len(components))]

    def losses(self, labels: torch.Tensor, tokens: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-component mean cross-entropy [K] (with grad) and top-1 accuracy [K] (without);
        labels dropped to the null class with probability class_dropout while training
        (classifier-free guidance)."""
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, generator=generator, device="cpu") \
                < self.cfg.class_dropout
            labels = torch.where(drop.to(labels.device), self.null_class, labels)
        logits = self.forward(labels, tokens)
        ce = torch.stack([F.cross_entropy(lg.flatten(0, 1), tokens[..., k].flatten())
                          for k, lg in enumerate(logits)])
        with torch.no_grad():
            acc = torch.stack([(lg.argmax(-1) == tokens[..., k]).float().mean()
                               for k, lg in enumerate(logits)])
        return ce, acc

    def loss(self, labels: torch.Tensor, tokens: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean cross-entropy summed over components (see :meth:`losses`)."""
        return self.losses(labels, tokens, generator)[0].sum()

    # ---- decoding with the static KV cache -------------------------------------------
    def setup_cache(self, batch: int, dtype=None, device=None) -> None:
        p = next(self.parameters())
        shape = (batch, self.cfg.heads, self.cfg.num_tokens, self.cfg.dim // self.cfg.heads)
        for block in self.blocks:
            block.attn.cache_k = torch.zeros(shape, dtype=dtype or p.dtype,
                                             device=device or p.device)
            block.attn.cache_v = torch.zeros_like(block.attn.cache_k)

    def clear_cache(self) -> None:
        for block in self.blocks:
            block.attn.cache_k = block.attn.cache_v = None

    def step(self, x: torch.Tensor, start, places: torch.Tensor | None = None):
        """Hidden states [B, L, D] of new inputs x [B, L, D] at positions start.. (cached;
        start an int or a 0-dim long tensor, which keeps every step's shapes and inputs
        alike for torch.compile and CUDA graphs); places [B, L]: their position tokens
        (rope "spatial")."""
        return self.hidden(x, start, places)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg: GPTConfig) -> float:
    """Training FLOPs per tuple: 6 x the multiply-adds of every matmul a tuple goes
    through (attention projections, FFN, each component's output layer, the tuple heads'
    SwiGLU for components 1.., the factorised position's row and column scores) + the
    attention scores and values (12 L d N: forward 4 L d N, backward twice that)."""
    return 6 * _macs_per_tuple(cfg) + 12 * cfg.layers * cfg.dim * cfg.num_tokens


def _macs_per_tuple(cfg: GPTConfig) -> float:
    """Multiply-adds of every matmul one tuple goes through (trunk and heads)."""
    per_layer = 4 * cfg.dim * cfg.dim + 3 * cfg.dim * cfg.ffn_hidden
    heads = cfg.dim * sum(cfg.vocab_sizes) + 3 * cfg.dim * cfg.dim * (len(cfg.vocab_sizes) - 1)
    if factorised_position(cfg):
        heads += cfg.dim * 2 * cfg.position_grid
    return cfg.layers * per_layer + heads


def sampling_flops_per_image(cfg: GPTConfig, guided: bool) -> float:
    """FLOPs to sample one image's N tuples with the KV cache: N decoding steps, each a
    forward pass of one position (2 x its multiply-adds) and attention over the i + 1
    cached positions of step i (4 L d (i + 1): scores and values); classifier-free
    guidance runs the conditional and the unconditional half, twice the work."""
    n = cfg.num_tokens
    flops = 2 * _macs_per_tuple(cfg) * n + 2 * cfg.layers * cfg.dim * n * (n + 1)
    return 2 * flops if guided else flops
