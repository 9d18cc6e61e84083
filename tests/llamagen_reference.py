"""LlamaGen's class-conditional GPT and VQ as functions of their own state dicts.

Written from the facts of LlamaGen's public code (key names, shapes, and the
computation each key takes part in), in float64 and without any of our modules: the
independent side of the importer tests. ``gpt_state`` / ``vq_state`` build random
dicts in LlamaGen's key layout (``meta=True``: shapes only, for full sizes).
"""

import math

import torch
import torch.nn.functional as F


# ---- GPT ------------------------------------------------------------------------------
def _randn(g, shape, meta: bool) -> torch.Tensor:
    return torch.empty(*shape, device="meta") if meta else torch.randn(*shape, generator=g)


def gpt_state(layers: int, dim: int, vocab: int, classes: int, seed=0, meta=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    hidden = int(2 * 4 * dim / 3)
    hidden = 256 * ((hidden + 255) // 256)

    def r(*shape, scale=0.1):
        return _randn(g, shape, meta) * scale

    s = {"cls_embedding.embedding_table.weight": r(classes + 1, dim, scale=1.0),
         "tok_embeddings.weight": r(vocab, dim, scale=1.0),
         "norm.weight": 1 + r(dim), "output.weight": r(vocab, dim)}
    for i in range(layers):
        p = f"layers.{i}."
        s.update({p + "attention.wqkv.weight": r(3 * dim, dim), p + "attention.wo.weight":
                  r(dim, dim), p + "feed_forward.w1.weight": r(hidden, dim),
                  p + "feed_forward.w3.weight": r(hidden, dim),
                  p + "feed_forward.w2.weight": r(dim, hidden),
                  p + "attention_norm.weight": 1 + r(dim), p + "ffn_norm.weight": 1 + r(dim)})
    return s


def freqs_cis_2d(grid: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """[1 + grid^2, head_dim / 2, 2] (cos, sin): the class row zero, then the grid in
    raster order, the first half of each head's pairs by row, the second by column."""
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2, dtype=torch.float64)[: half // 2] / half)
    t = torch.arange(grid, dtype=torch.float64)
    f = torch.outer(t, freqs)
    angles = torch.cat([f[:, None, :].expand(-1, grid, -1), f[None, :, :].expand(grid, -1, -1)],
                       -1).flatten(0, 1)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return torch.cat([torch.zeros(1, head_dim // 2, 2, dtype=torch.float64), table])


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, table):  # x [B, L, H, Dh], table [L, Dh/2, 2]
    xs = x.reshape(*x.shape[:-1], -1, 2)
    c, s = table[None, :, None, :, 0], table[None, :, None, :, 1]
    return torch.stack([xs[..., 0] * c - xs[..., 1] * s, xs[..., 1] * c + xs[..., 0] * s],
                       -1).flatten(3)


def gpt_logits(s: dict, heads: int, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits [B, N, V]: inputs [class, t_0 .. t_{N-2}], float64."""
    s = {k: v.double() for k, v in s.items()}
    B, N = tokens.shape
    x = torch.cat([s["cls_embedding.embedding_table.weight"][labels][:, None],
                   s["tok_embeddings.weight"][tokens[:, :-1]]], 1)
    dim = x.shape[-1]
    hd = dim // heads
    table = freqs_cis_2d(round(N**0.5), hd)[:N]
    layers = 1 + max(int(k.split(".")[1]) for k in s if k.startswith("layers."))
    for i in range(layers):
        p = f"layers.{i}."
        h = _rms(x, s[p + "attention_norm.weight"])
        q, k, v = (h @ s[p + "attention.wqkv.weight"].T).split(dim, -1)
        q, k, v = (t.view(B, N, heads, hd) for t in (q, k, v))
        q, k = _rotate(q, table), _rotate(k, table)
        att = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        att = att.masked_fill(~torch.ones(N, N, dtype=torch.bool).tril(), float("-inf"))
        y = torch.einsum("bhqk,bkhd->bqhd", att.softmax(-1), v).reshape(B, N, dim)
        x = x + y @ s[p + "attention.wo.weight"].T
        h = _rms(x, s[p + "ffn_norm.weight"])
        ff = F.silu(h @ s[p + "feed_forward.w1.weight"].T) * (h @ s[p + "feed_forward.w3.weight"].T)
        x = x + ff @ s[p + "feed_forward.w2.weight"].T
    return _rms(x, s["norm.weight"]) @ s["output.weight"].T


# ---- VQ -------------------------------------------------------------------------------
def vq_state(ch: int, ch_mult, res_blocks: int, z: int, codes: int, dim: int, seed=0,
             meta=False) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = {}

    def conv(name, cout, cin, k):
        s[name + ".weight"] = _randn(g, (cout, cin, k, k), meta) / math.sqrt(cin * k * k)
        s[name + ".bias"] = _randn(g, (cout,), meta) * 0.05

    def gn(name, c):
        s[name + ".weight"] = 1 + 0.1 * _randn(g, (c,), meta)
        s[name + ".bias"] = 0.1 * _randn(g, (c,), meta)

    def res(name, cin, cout):
        gn(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        gn(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, c):
        gn(name + ".norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    n = len(ch_mult)
    conv("encoder.conv_in", ch, 3, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(res_blocks):
            res(f"encoder.conv_blocks.{i}.res.{j}", cin, ch * m)
            cin = ch * m
            if i == n - 1:
                attn(f"encoder.conv_blocks.{i}.attn.{j}", cin)
        if i != n - 1:
            conv(f"encoder.conv_blocks.{i}.downsample.conv", cin, cin, 3)
    res("encoder.mid.0", cin, cin)
    attn("encoder.mid.1", cin)
    res("encoder.mid.2", cin, cin)
    gn("encoder.norm_out", cin)
    conv("encoder.conv_out", z, cin, 3)
    conv("quant_conv", dim, z, 1)
    conv("post_quant_conv", z, dim, 1)
    s["quantize.embedding.weight"] = _randn(g, (codes, dim), meta)
    s["quantize.codebook_used"] = torch.zeros(65536, device="meta" if meta else "cpu")
    cin = ch * ch_mult[-1]
    conv("decoder.conv_in", cin, z, 3)
    res("decoder.mid.0", cin, cin)
    attn("decoder.mid.1", cin)
    res("decoder.mid.2", cin, cin)
    for idx, level in enumerate(reversed(range(n))):
        for j in range(res_blocks + 1):
            res(f"decoder.conv_blocks.{idx}.res.{j}", cin, ch * ch_mult[level])
            cin = ch * ch_mult[level]
            if level == n - 1:
                attn(f"decoder.conv_blocks.{idx}.attn.{j}", cin)
        if level != 0:
            conv(f"decoder.conv_blocks.{idx}.upsample.conv", cin, cin, 3)
    gn("decoder.norm_out", cin)
    conv("decoder.conv_out", 3, cin, 3)
    return s


def _conv(s, name, x, stride=1, padding=None):
    w = s[name + ".weight"]
    return F.conv2d(x, w, s[name + ".bias"], stride,
                    w.shape[-1] // 2 if padding is None else padding)


def _gn(s, name, x):
    return F.group_norm(x, 32, s[name + ".weight"], s[name + ".bias"], eps=1e-6)


def _res(s, name, x):
    h = _conv(s, name + ".conv1", F.silu(_gn(s, name + ".norm1", x)))
    h = _conv(s, name + ".conv2", F.silu(_gn(s, name + ".norm2", h)))
    if name + ".nin_shortcut.weight" in s:
        x = _conv(s, name + ".nin_shortcut", x)
    return x + h


def _attn(s, name, x):
    b, c, hh, ww = x.shape
    h = _gn(s, name + ".norm", x)
    q, k, v = (_conv(s, f"{name}.{p}", h).reshape(b, c, hh * ww) for p in "qkv")
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * c**-0.5, -1)  # [b, query, key]
    y = torch.einsum("bij,bcj->bci", w, v).reshape(b, c, hh, ww)
    return x + _conv(s, name + ".proj_out", y)


def _levels(s, prefix, x, blocks, resample):
    idx = 0
    while f"{prefix}.conv_blocks.{idx}.res.0.conv1.weight" in s:
        for j in range(blocks):
            x = _res(s, f"{prefix}.conv_blocks.{idx}.res.{j}", x)
            if f"{prefix}.conv_blocks.{idx}.attn.{j}.q.weight" in s:
                x = _attn(s, f"{prefix}.conv_blocks.{idx}.attn.{j}", x)
        x = resample(idx, x)
        idx += 1
    return x


def vq_encode(s: dict, images: torch.Tensor) -> torch.Tensor:
    """images [B, 3, H, W] -> code indices [B, h, w] (float64, l2-normalised codes)."""
    s = {k: v.double() for k, v in s.items()}
    blocks = 1 + max(int(k.split(".")[4]) for k in s if k.startswith("encoder.conv_blocks.0.res"))

    def down(i, x):
        name = f"encoder.conv_blocks.{i}.downsample.conv"
        return _conv(s, name, F.pad(x, (0, 1, 0, 1)), 2, 0) if name + ".weight" in s else x

    h = _levels(s, "encoder", _conv(s, "encoder.conv_in", images.double()), blocks, down)
    for i, part in enumerate((_res, _attn, _res)):
        h = part(s, f"encoder.mid.{i}", h)
    h = _conv(s, "encoder.conv_out", F.silu(_gn(s, "encoder.norm_out", h)))
    z = F.normalize(_conv(s, "quant_conv", h).permute(0, 2, 3, 1), dim=-1)
    e = F.normalize(s["quantize.embedding.weight"], dim=-1)
    d = (z[..., None, :] - e).pow(2).sum(-1)
    return d.argmin(-1)


def vq_decode(s: dict, codes: torch.Tensor) -> torch.Tensor:
    """code indices [B, h, w] -> images [B, 3, H, W] (float64)."""
    s = {k: v.double() for k, v in s.items()}
    blocks = 1 + max(int(k.split(".")[4]) for k in s if k.startswith("decoder.conv_blocks.0.res"))
    e = F.normalize(s["quantize.embedding.weight"], dim=-1)[codes].permute(0, 3, 1, 2)

    def up(i, x):
        name = f"decoder.conv_blocks.{i}.upsample.conv"
        return _conv(s, name, F.interpolate(x, scale_factor=2.0, mode="nearest")) \
            if name + ".weight" in s else x

    h = _conv(s, "decoder.conv_in", _conv(s, "post_quant_conv", e))
    for i, part in enumerate((_res, _attn, _res)):
        h = part(s, f"decoder.mid.{i}", h)
    h = _levels(s, "decoder", h, blocks, up)
    return _conv(s, "decoder.conv_out", F.silu(_gn(s, "decoder.norm_out", h)))
