"""GaussianToken with fully discrete tokens: every Gaussian is (position, shape, code).

Pipeline: Encoder -> feature tokens; learnable anchor Gaussians refined over a few
rounds of [self-attention among Gaussians, cross-attention into the feature tokens,
MLP, geometry head]; a feature head + vector quantiser for each Gaussian's code; the
geometry quantiser (uniform bins, straight-through) so the decoder only ever sees
geometry the GPT can produce; the splat op onto a splat_size^2 x dim map; Decoder.

Geometry parameterisation (per Gaussian, from 5 unconstrained values):
  x, y  = 2 sigmoid(.) - 1            in (-1, 1), refined as a residual each round
  scale = exp(log s_min + sigmoid(.) (log s_max - log s_min))   pixels of the splat map
  theta = pi sigmoid(.)               in (0, pi)
Canonical order: Gaussians are stably sorted by their position token (raster order,
ties by anchor index) before splatting and before leaving ``encode``.
"""

import math

import torch
from torch import nn

from kernels import splat
from tokenizer.blocks import Attention, Decoder, Encoder
from tokenizer.config import TokenizerConfig
from tokenizer.quantize import VectorQuantizer, uniform_dequantize

TUPLE = ("position", "shape", "code")


def _mlp(din: int, dout: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, hidden), nn.GELU(), nn.Linear(hidden, dout))


class RefineRound(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_self, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_cross, self.cross_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_mlp, self.mlp = nn.LayerNorm(dim), _mlp(dim, dim, 4 * dim)
        self.geometry = nn.Linear(dim, 5)
        nn.init.zeros_(self.geometry.weight)
        nn.init.zeros_(self.geometry.bias)

    def forward(self, tokens, context):
        tokens = tokens + self.self_attn(self.norm_self(tokens))
        tokens = tokens + self.cross_attn(self.norm_cross(tokens), context)
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return tokens, self.geometry(tokens)


class Geometry:
    """Continuous geometry of [B, N] Gaussians and its quantisation into tokens."""

    def __init__(self, xy, log_scale, rotation):
        self.xy, self.log_scale, self.rotation = xy, log_scale, rotation  # [B,N,2],[B,N,2],[B,N]

    @classmethod
    def from_raw(cls, raw: torch.Tensor, s_min: float, s_max: float) -> "Geometry":
        lo, hi = math.log(s_min), math.log(s_max)
        return cls(2 * torch.sigmoid(raw[..., 0:2]) - 1,
                   lo + torch.sigmoid(raw[..., 2:4]) * (hi - lo),
                   math.pi * torch.sigmoid(raw[..., 4]))


class GaussianTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        g, q = cfg.gaussian, cfg.quantizer
        self.encoder = Encoder(cfg.encoder, g.hidden)
        self.context_pos = nn.Parameter(torch.randn(cfg.grid**2, g.hidden) * 0.02)
        gen = torch.Generator().manual_seed(0)
        uniform = torch.rand(g.num_gaussians, 4, generator=gen).clamp(0.02, 0.98)
        self.anchor_raw = nn.Parameter(torch.cat([torch.logit(uniform),
                                                  torch.zeros(g.num_gaussians, 1)], dim=1))
        self.anchor_tokens = nn.Parameter(torch.randn(g.num_gaussians, g.hidden) * 0.02)
        self.geometry_embed = _mlp(5, g.hidden, g.hidden)
        self.rounds = nn.ModuleList(RefineRound(g.hidden, g.heads) for _ in range(g.rounds))
        self.feature_head = nn.Sequential(nn.LayerNorm(g.hidden), _mlp(g.hidden, q.dim, g.hidden))
        self.quantizer = VectorQuantizer(q)
        self.decoder = Decoder(cfg.encoder, q.dim, cfg.image_size // g.splat_size)

    # ---- token vocabulary -------------------------------------------------------
    @property
    def vocab_sizes(self) -> list[int]:
        g = self.cfg.gaussian
        return [g.position_bins**2, g.scale_bins**2 * g.rotation_bins,
                self.cfg.quantizer.codebook_size]

    @property
    def num_tokens(self) -> int:
        return self.cfg.gaussian.num_gaussians

    tuple_names = TUPLE

    def _bins(self):
        g = self.cfg.gaussian
        return ((-1.0, 1.0, g.position_bins),
                (math.log(g.scale_min), math.log(g.scale_max), g.scale_bins),
                (0.0, math.pi, g.rotation_bins))

    def quantize_geometry(self, geo: Geometry):
        """-> (tokens position [B,N], shape [B,N]; Geometry of bin centres, straight-through)."""
        (plo, phi, pb), (slo, shi, sb), (rlo, rhi, rb) = self._bins()

        def q(x, lo, hi, bins):
            index = ((x.detach() - lo) / ((hi - lo) / bins)).floor().clamp(0, bins - 1).long()
            centre = uniform_dequantize(index, lo, hi, bins).to(x.dtype)
            return index, centre + (x - x.detach())  # value: exactly the centre

        ixy, xy = q(geo.xy, plo, phi, pb)
        isc, log_scale = q(geo.log_scale, slo, shi, sb)
        irot, rotation = q(geo.rotation, rlo, rhi, rb)
        position = ixy[..., 1] * pb + ixy[..., 0]
        shape = (isc[..., 0] * sb + isc[..., 1]) * rb + irot
        return position, shape, Geometry(xy, log_scale, rotation)

    def geometry_from_tokens(self, position, shape) -> Geometry:
        (plo, phi, pb), (slo, shi, sb), (rlo, rhi, rb) = self._bins()
        ixy = torch.stack([position % pb, position // pb], -1)
        isc = torch.stack([shape // rb // sb, (shape // rb) % sb], -1)
        return Geometry(uniform_dequantize(ixy, plo, phi, pb),
                        uniform_dequantize(isc, slo, shi, sb),
                        uniform_dequantize(shape % rb, rlo, rhi, rb))

    # ---- model ------------------------------------------------------------------
    def gaussians(self, images: torch.Tensor):
        """images [B, 3, S, S] -> continuous Geometry, per-Gaussian features [B, N, dim]."""
        feats = self.encoder(images)  # [B, D, h, w]
        context = feats.flatten(2).transpose(1, 2) + self.context_pos  # [B, h*w, D]
        B = images.shape[0]
        raw = self.anchor_raw.expand(B, -1, -1)  # [B, N, 5]
        tokens = self.anchor_tokens.expand(B, -1, -1)
        for block in self.rounds:
            tokens, delta = block(tokens + self.geometry_embed(raw), context)
            # xy refined as a residual; scale and rotation re-predicted around the anchor
            raw = torch.cat([raw[..., :2] + delta[..., :2],
                             self.anchor_raw[..., 2:] + delta[..., 2:]], dim=-1)
        g = self.cfg.gaussian
        return Geometry.from_raw(raw.float(), g.scale_min, g.scale_max), self.feature_head(tokens)

    def render(self, geo: Geometry, codes: torch.Tensor) -> torch.Tensor:
        """Splat Gaussians with their codes [B, N, dim], then decode -> [B, 3, S, S]."""
        s = self.cfg.gaussian.splat_size
        fmap = splat(geo.xy, torch.exp(geo.log_scale), geo.rotation, codes.float(),
                     height=s, width=s)  # [B, dim, s, s]
        return self.decoder(fmap)

    @staticmethod
    def _canonical(position: torch.Tensor) -> torch.Tensor:
        """Permutation [B, N]: raster order of positions, ties by anchor index (stable)."""
        return torch.sort(position, dim=1, stable=True).indices

    def forward(self, images: torch.Tensor, quantize_geometry: bool = True):
        """-> (reconstruction [B, 3, S, S], aux: losses, tokens, geometry for pictures)."""
        geo, feats = self.gaussians(images)
        codes, code_idx, losses = self.quantizer(feats)
        position, shape, geo_q = self.quantize_geometry(geo)
        used = geo_q if quantize_geometry else geo
        order = self._canonical(position)

        def take(t):
            index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand_as(t)
            return torch.gather(t, 1, index)

        used = Geometry(take(used.xy), take(used.log_scale), take(used.rotation))
        recon = self.render(used, take(codes))
        tokens = torch.stack([take(position), take(shape), take(code_idx)], dim=-1)
        return recon, {**losses, "tokens": tokens, "geometry": geo}

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, S, S] in [-1, 1] -> tokens [B, N, 3] (position, shape, code)."""
        return self.forward(images)[1]["tokens"]

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, 3] -> images [B, 3, S, S] (order-independent: splat is a sum)."""
        if tokens.dim() != 3 or tokens.shape[-1] != 3:
            raise ValueError(f"tokens must be [B, N, 3], got {list(tokens.shape)}")
        for k, (name, size) in enumerate(zip(TUPLE, self.vocab_sizes, strict=True)):
            if tokens[..., k].min() < 0 or tokens[..., k].max() >= size:
                raise ValueError(f"{name} tokens must lie in [0, {size})")
        geo = self.geometry_from_tokens(tokens[..., 0], tokens[..., 1])
        return self.render(geo, self.quantizer.codes(tokens[..., 2]))


def code_usage(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) from code counts."""
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    return (counts > 0).float().mean().item(), perplexity.item()

