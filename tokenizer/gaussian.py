"""GaussianToken with fully discrete tokens: every Gaussian is (position, shape, code).

Pipeline: Encoder -> feature map; Gaussians start at a layout (a grid, or derived from
the image: ``tokenizer.layout``) on position-bin centres and are refined over a few
rounds of [self-attention among Gaussians, local feature reading at points placed in
each Gaussian's own frame (``tokenizer.local_read``), MLP, geometry head]; a feature
head + vector quantiser for each Gaussian's code; the geometry quantiser (uniform bins,
straight-through) so the decoder only ever sees geometry the GPT can produce; the
splat op onto a splat_size^2 x dim map; Decoder.

Geometry per Gaussian (from the start layout and 5 predicted values per round):
  x, y  = start + (2 max_move / splat_size) tanh(sum of the rounds' moves)  (bounded;
          ``moves = "frozen"`` keeps the start)
  scale = exp(log s_min + sigmoid(anchor + delta) (log s_max - log s_min))  splat pixels
  theta = anchor + delta  radians, unbounded (a Gaussian has period pi; the rotation bins
          are centred at k pi / rotation_bins and wrap around)
Scale and rotation are re-predicted around a learned per-Gaussian anchor each round;
anchors start on bin centres (scale: the bin nearest half the grid spacing; rotation 0).
Canonical order: Gaussians are stably sorted by their position token (raster order,
ties by Gaussian index) before splatting and before leaving ``encode``.
"""

import math

import torch
from torch import nn

from kernels import splat
from tokenizer.base import Tokenizer, TokenLayout
from tokenizer.blocks import Attention, Decoder, Encoder, mlp
from tokenizer.config import TokenizerConfig
from tokenizer.layout import content_layout, grid_layout
from tokenizer.local_read import LocalRead
from tokenizer.quantize import VectorQuantizer, uniform_dequantize

TUPLE = ("position", "shape", "code")
SNAP = ("all", "none", "position", "shape")  # which geometry the decoder sees quantised


class RefineRound(nn.Module):
    """Self-attention among Gaussians, local reading of the map, MLP, geometry update."""

    def __init__(self, dim: int, heads: int, points: int, splat_size: int):
        super().__init__()
        self.norm_self, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm_read, self.read = nn.LayerNorm(dim), LocalRead(dim, points, splat_size)
        self.norm_mlp, self.mlp = nn.LayerNorm(dim), mlp(dim, dim, 4 * dim)
        self.geometry = nn.Linear(dim, 5)
        nn.init.zeros_(self.geometry.weight)
        nn.init.zeros_(self.geometry.bias)

    def forward(self, tokens, fmap, geo: "Geometry"):
        tokens = tokens + self.self_attn(self.norm_self(tokens))
        tokens = tokens + self.read(self.norm_read(tokens), fmap, geo.xy,
                                    torch.exp(geo.log_scale), geo.rotation)
        tokens = tokens + self.mlp(self.norm_mlp(tokens))
        return tokens, self.geometry(tokens)


class Geometry:
    """Continuous geometry of [B, N] Gaussians: xy [B,N,2], log_scale [B,N,2], rotation [B,N]."""

    def __init__(self, xy, log_scale, rotation):
        self.xy, self.log_scale, self.rotation = xy, log_scale, rotation

    def descriptor(self) -> torch.Tensor:
        """[B, N, 6] for the geometry embedding: xy, log scales, (cos, sin) of 2 theta."""
        return torch.cat([self.xy, self.log_scale, torch.cos(2 * self.rotation)[..., None],
                          torch.sin(2 * self.rotation)[..., None]], -1)

    def take(self, order: torch.Tensor) -> "Geometry":
        """Gaussians reordered by a permutation [B, N]."""
        def take(t):
            index = order.view(*order.shape, *([1] * (t.dim() - 2))).expand_as(t)
            return torch.gather(t, 1, index)
        return Geometry(take(self.xy), take(self.log_scale), take(self.rotation))


class GaussianTokenizer(Tokenizer):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        g, q = cfg.gaussian, cfg.quantizer
        self.encoder = Encoder(cfg.encoder, g.hidden)
        if g.layout == "grid":
            self.register_buffer("grid_xy", grid_layout(g.num_gaussians, g.position_bins))
        # anchors on bin centres: log scale at the bin nearest half the grid spacing, rotation 0
        lo, hi = math.log(g.scale_min), math.log(g.scale_max)
        spacing = g.splat_size / math.sqrt(g.num_gaussians)
        width = (hi - lo) / g.scale_bins
        k = min(max(math.floor((math.log(spacing / 2) - lo) / width), 0), g.scale_bins - 1)
        fraction = (k + 0.5) / g.scale_bins
        self.anchor_scale = nn.Parameter(
            torch.full((g.num_gaussians, 2), math.log(fraction / (1 - fraction))))
        self.anchor_rotation = nn.Parameter(torch.zeros(g.num_gaussians))
        self.anchor_tokens = nn.Parameter(torch.randn(g.num_gaussians, g.hidden) * 0.02)
        self.geometry_embed = mlp(6, g.hidden, g.hidden)
        self.rounds = nn.ModuleList(RefineRound(g.hidden, g.heads, g.points, g.splat_size)
                                    for _ in range(g.rounds))
        self.feature_head = nn.Sequential(nn.LayerNorm(g.hidden), mlp(g.hidden, q.dim, g.hidden))
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

    @property
    def token_layout(self) -> TokenLayout:
        """(position, shape, code); position = row * position_bins + column, tuples sorted
        by it."""
        return TokenLayout(TUPLE, code_component=TUPLE.index("code"),
                           position_component=TUPLE.index("position"),
                           position_grid=self.cfg.gaussian.position_bins)

    def _scale_range(self):
        g = self.cfg.gaussian
        return math.log(g.scale_min), math.log(g.scale_max)

    def quantize_geometry(self, geo: Geometry):
        """-> (tokens position [B,N], shape [B,N]; Geometry of bin centres, straight-through).

        Positions and log scales: uniform bins, index = floor. Rotations: bins centred at
        k pi / R, index = round(theta R / pi) mod R (periodic: theta and theta + pi are the
        same Gaussian).
        """
        g = self.cfg.gaussian
        pb, sb, rb = g.position_bins, g.scale_bins, g.rotation_bins
        lo, hi = self._scale_range()

        def q(x, lo, hi, bins):
            index = ((x.detach() - lo) / ((hi - lo) / bins)).floor().clamp(0, bins - 1).long()
            centre = uniform_dequantize(index, lo, hi, bins).to(x.dtype)
            return index, centre + (x - x.detach())  # value: exactly the centre

        ixy, xy = q(geo.xy, -1.0, 1.0, pb)
        isc, log_scale = q(geo.log_scale, lo, hi, sb)
        step = math.pi / rb
        irot = torch.round(geo.rotation.detach() / step).long() % rb
        rotation = (irot.to(geo.rotation.dtype) * step) + (geo.rotation - geo.rotation.detach())
        position = ixy[..., 1] * pb + ixy[..., 0]
        shape = (isc[..., 0] * sb + isc[..., 1]) * rb + irot
        return position, shape, Geometry(xy, log_scale, rotation)

    def geometry_from_tokens(self, position, shape) -> Geometry:
        g = self.cfg.gaussian
        pb, sb, rb = g.position_bins, g.scale_bins, g.rotation_bins
        lo, hi = self._scale_range()
        ixy = torch.stack([position % pb, position // pb], -1)
        isc = torch.stack([shape // rb // sb, (shape // rb) % sb], -1)
        return Geometry(uniform_dequantize(ixy, -1.0, 1.0, pb),
                        uniform_dequantize(isc, lo, hi, sb),
                        (shape % rb).float() * (math.pi / rb))

    # ---- model ------------------------------------------------------------------
    def start_positions(self, images: torch.Tensor) -> torch.Tensor:
        """[B, N, 2] start layout on position-bin centres (grid, or derived from the image)."""
        g = self.cfg.gaussian
        if g.layout == "grid":
            return self.grid_xy.expand(images.shape[0], -1, -1)
        return content_layout(images, g.num_gaussians, g.position_bins)

    def _geometry(self, start, move, scale_raw, rotation) -> Geometry:
        g = self.cfg.gaussian
        lo, hi = self._scale_range()
        xy = start
        if g.moves == "learned":
            xy = (start + (2 * g.max_move / g.splat_size) * torch.tanh(move)).clamp(-1, 1)
        return Geometry(xy, lo + torch.sigmoid(scale_raw) * (hi - lo), rotation)

    def gaussians(self, images: torch.Tensor):
        """images [B, 3, S, S] -> continuous Geometry, per-Gaussian features [B, N, dim]."""
        fmap = self.encoder(images)  # [B, D, h, w]
        B = images.shape[0]
        start = self.start_positions(images).float()  # [B, N, 2]
        move = torch.zeros_like(start)
        geo = self._geometry(start, move, self.anchor_scale.expand(B, -1, -1),
                             self.anchor_rotation.expand(B, -1))
        tokens = self.anchor_tokens.expand(B, -1, -1)
        for block in self.rounds:
            tokens, delta = block(tokens + self.geometry_embed(geo.descriptor()), fmap, geo)
            delta = delta.float()
            move = move + delta[..., :2]  # moves accumulate; shape is re-predicted each round
            geo = self._geometry(start, move, self.anchor_scale + delta[..., 2:4],
                                 self.anchor_rotation + delta[..., 4])
        return geo, self.feature_head(tokens)

    def render(self, geo: Geometry, codes: torch.Tensor) -> torch.Tensor:
        """Splat Gaussians with their codes [B, N, dim], then decode -> [B, 3, S, S]."""
        s = self.cfg.gaussian.splat_size
        fmap = splat(geo.xy, torch.exp(geo.log_scale), geo.rotation, codes.float(),
                     height=s, width=s)  # [B, dim, s, s]
        return self.decoder(fmap)

    @staticmethod
    def _canonical(position: torch.Tensor) -> torch.Tensor:
        """Permutation [B, N]: raster order of positions, ties by Gaussian index (stable)."""
        return torch.sort(position, dim=1, stable=True).indices

    def forward(self, images: torch.Tensor, quantize_geometry: bool | str = True):
        """-> (reconstruction [B, 3, S, S], aux: losses, tokens, geometry for pictures).

        quantize_geometry: True / "all" (the tokens: what decode sees), False / "none"
        (continuous geometry), "position" or "shape" (only that part snapped to its bins:
        to measure what each part's quantisation costs).
        """
        snap = {True: "all", False: "none"}.get(quantize_geometry, quantize_geometry)
        if snap not in SNAP:
            raise ValueError(f"quantize_geometry must be a bool or one of {SNAP}, got {snap!r}")
        geo, feats = self.gaussians(images)
        codes, code_idx, losses = self.quantizer(feats)
        position, shape, geo_q = self.quantize_geometry(geo)
        positions_from = geo_q if snap in ("all", "position") else geo
        shapes_from = geo_q if snap in ("all", "shape") else geo
        used = Geometry(positions_from.xy, shapes_from.log_scale, shapes_from.rotation)
        order = self._canonical(position)
        used = used.take(order)
        take_codes = torch.gather(codes, 1, order[..., None].expand_as(codes))
        recon = self.render(used, take_codes)
        tokens = torch.gather(torch.stack([position, shape, code_idx], dim=-1), 1,
                              order[..., None].expand(-1, -1, 3))
        return recon, {**losses, "tokens": tokens, "geometry": geo.take(order)}

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


def code_usage_tensors(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(fraction of codes used, perplexity) from code counts, as 0-dim tensors on the
    counts' device (no sync)."""
    p = counts / counts.sum().clamp_min(1)
    perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
    return (counts > 0).float().mean(), perplexity


def code_usage(counts: torch.Tensor) -> tuple[float, float]:
    """(fraction of codes used, perplexity) from code counts."""
    usage, perplexity = code_usage_tensors(counts)
    return usage.item(), perplexity.item()

