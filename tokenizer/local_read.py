"""Local feature reading: each Gaussian reads the encoder map at a few points of its own.

Deformable-attention style (Zhu et al. 2021, arXiv 2010.04159), pure PyTorch: a Gaussian
token predicts K offsets in its own frame, in units of its standard deviations, and K
softmax weights; the points are placed with the Gaussian's (continuous) position,
scale and rotation, the map is read there by bilinear interpolation and the weighted
sum is projected back into the token. Gradients reach the token (offsets, weights)
and the geometry (points move with the position, stretch with the scale and turn
with the rotation), so a Gaussian learns where to look from where it is.

Conventions are the splat's (``kernels/__init__.py``): normalised coordinates in
[-1, 1] with pixel centres at (2k + 1) / W - 1 (``align_corners=False``), scales in
splat pixels, R(theta) turning x towards y. Points off the map read the border.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_read(fmap: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """fmap [B, C, h, w], points [B, N, K, 2] (x, y normalised) -> values [B, N, K, C].

    Computed in float32 (or float64 when the map is), so bf16 autocast cannot round
    the coordinates: a bf16 coordinate near 1 is off by up to 1/256 of the map.
    """
    dtype = torch.float64 if fmap.dtype == torch.float64 else torch.float32
    out = F.grid_sample(fmap.to(dtype), points.to(dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)  # [B, C, N, K]
    return out.permute(0, 2, 3, 1)


def place_points(xy, scale, rotation, offsets, splat_size: int) -> torch.Tensor:
    """Points [B, N, K, 2] at ``xy + R(rotation) diag(scale) offsets`` (normalised).

    xy [B, N, 2] normalised; scale [B, N, 2] in splat pixels; rotation [B, N] radians;
    offsets [B, N, K, 2] in standard deviations along the Gaussian's own axes.
    """
    u = offsets[..., 0] * scale[..., None, 0]  # [B, N, K] splat pixels along the x' axis
    v = offsets[..., 1] * scale[..., None, 1]
    c, s = torch.cos(rotation)[..., None], torch.sin(rotation)[..., None]
    d = torch.stack([c * u - s * v, s * u + c * v], dim=-1)  # [B, N, K, 2] splat pixels
    return xy[..., None, :] + d * (2.0 / splat_size)


class LocalRead(nn.Module):
    """tokens [B, N, D], fmap [B, D, h, w], geometry -> update [B, N, D]."""

    def __init__(self, dim: int, points: int, splat_size: int, radius: float = 1.0):
        super().__init__()
        self.points, self.splat_size = points, splat_size
        self.offsets = nn.Linear(dim, 2 * points)
        self.weights = nn.Linear(dim, points)
        self.out = nn.Linear(dim, dim)  # linear maps commute with bilinear reads: one suffices
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        with torch.no_grad():  # start on a ring of ``radius`` sigmas (one point: the centre)
            angle = torch.arange(points) * (2 * math.pi / points)
            ring = torch.stack([angle.cos(), angle.sin()], -1) * (radius if points > 1 else 0.0)
            self.offsets.bias.copy_(ring.flatten())

    def forward(self, tokens, fmap, xy, scale, rotation):
        B, N, _ = tokens.shape
        f = torch.float64 if xy.dtype == torch.float64 else torch.float32  # never bf16 here
        offsets = self.offsets(tokens).view(B, N, self.points, 2).to(f)
        points = place_points(xy.to(f), scale.to(f), rotation.to(f), offsets, self.splat_size)
        values = bilinear_read(fmap, points)  # [B, N, K, D]
        weights = torch.softmax(self.weights(tokens).to(f), dim=-1)  # [B, N, K]
        read = (weights[..., None] * values).sum(2)  # [B, N, D]
        return self.out(read.to(tokens.dtype))
