"""Pure-PyTorch splat: the CPU path and the test oracle for the CUDA kernel.

Batched over images (no Python loop over the batch), exact in float64, and memory
bounded: pixels x Gaussians are processed in chunks of at most ``chunk_elements``
entries per image batch, in the forward *and* the analytic backward, so nothing of
size [B, H*W, N] is ever held. The backward formulas are the ones the CUDA kernel
implements (see ``kernels/csrc/splat_kernel.cu``); gradcheck tests them in float64.

Notation per Gaussian i and pixel p (conventions in ``kernels/__init__.py``):
    (dx, dy) = pixel - mean                      feature-map pixels
    a = ( cos t * dx + sin t * dy) / s_x         coordinates in the Gaussian's frame,
    b = (-sin t * dx + cos t * dy) / s_y         in units of its standard deviations
    q = a^2 + b^2,  g = exp(-q/2) [q <= cutoff],  w = opacity * g
For the backward, with h = <grad_out[:, p], features_i> and G_q = -1/2 opacity g h,
five sums over pixels S_a, S_b, S_aa, S_bb, S_ab of G_q * (a, b, a^2, b^2, ab) give
    d/d mean_x = -W (cos t S_a / s_x - sin t S_b / s_y)
    d/d mean_y = -H (sin t S_a / s_x + cos t S_b / s_y)
    d/d s_x = -2 S_aa / s_x,   d/d s_y = -2 S_bb / s_y
    d/d t = 2 S_ab (s_y / s_x - s_x / s_y)
    d/d opacity = sum_p g h,   d/d features = sum_p w grad_out[:, p]
(the factor W/2 or H/2 maps normalised means to pixels; dq/d mean carries 2 and a minus.)
"""

import torch

from kernels import DEFAULT_CUTOFF
from kernels.validate import check_splat_args

DEFAULT_CHUNK_ELEMENTS = 1 << 21
"""Entries of one [B, n_gaussians, n_pixels] working tile (16 MiB per tensor in float64)."""


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _chunks(batch: int, n: int, pixels: int, chunk_elements: int):
    """Yield (gaussian slice, pixel slice) covering [n] x [pixels] in bounded tiles."""
    pix_step = max(1, min(pixels, chunk_elements // batch))
    n_step = max(1, chunk_elements // (batch * pix_step))
    for p0 in range(0, pixels, pix_step):
        for i0 in range(0, n, n_step):
            yield slice(i0, min(i0 + n_step, n)), slice(p0, min(p0 + pix_step, pixels))


class _Geometry:
    """Per-Gaussian frame quantities, [B, N, 1] each, broadcast against pixels."""

    def __init__(self, means, scales, rotations, height, width):
        self.mx = ((means[..., 0] + 1) * (width / 2) - 0.5).unsqueeze(-1)
        self.my = ((means[..., 1] + 1) * (height / 2) - 0.5).unsqueeze(-1)
        self.sx = scales[..., 0].unsqueeze(-1)
        self.sy = scales[..., 1].unsqueeze(-1)
        self.cos = torch.cos(rotations).unsqueeze(-1)
        self.sin = torch.sin(rotations).unsqueeze(-1)

    def frame(self, gs: slice, px: torch.Tensor, py: torch.Tensor, cutoff: float):
        """Return a, b, g and the kept mask, each [B, n, P] for Gaussians gs and pixels px, py."""
        dx = px - self.mx[:, gs]  # [B, n, P]
        dy = py - self.my[:, gs]
        c, s = self.cos[:, gs], self.sin[:, gs]
        a = (c * dx + s * dy) / self.sx[:, gs]
        b = (c * dy - s * dx) / self.sy[:, gs]
        q = a * a + b * b
        keep = q <= cutoff  # NaN (a degenerate scale) compares False and is dropped
        g = torch.where(keep, torch.exp(-0.5 * q), torch.zeros_like(q))
        return a, b, g, keep


def _pixel_centres(height, width, pixels: slice, dtype, device):
    """Column and row of the flat pixel range ``pixels`` (row-major), each [P]."""
    flat = torch.arange(pixels.start, pixels.stop, device=device)
    return (flat % width).to(dtype), torch.div(flat, width, rounding_mode="floor").to(dtype)


def _forward(means, scales, rotations, features, opacity, height, width, cutoff, chunk_elements):
    B, N, C = features.shape
    dtype = _compute_dtype(means, scales, rotations, features, opacity)
    geo = _Geometry(means.to(dtype), scales.to(dtype), rotations.to(dtype), height, width)
    feats, opac = features.to(dtype), opacity.to(dtype).unsqueeze(-1)
    out = torch.zeros(B, C, height * width, dtype=dtype, device=features.device)
    for gs, ps in _chunks(B, N, height * width, chunk_elements):
        px, py = _pixel_centres(height, width, ps, dtype, features.device)
        _, _, g, _ = geo.frame(gs, px, py, cutoff)
        w = g * opac[:, gs]  # [B, n, P]
        out[:, :, ps] += torch.einsum("bnp,bnc->bcp", w, feats[:, gs])
    return out.view(B, C, height, width).to(features.dtype)


def _backward(grad_out, means, scales, rotations, features, opacity, height, width, cutoff,
              chunk_elements):
    B, N, C = features.shape
    dtype = _compute_dtype(means, scales, rotations, features, opacity)
    geo = _Geometry(means.to(dtype), scales.to(dtype), rotations.to(dtype), height, width)
    feats, opac = features.to(dtype), opacity.to(dtype).unsqueeze(-1)
    grad_out = grad_out.to(dtype).reshape(B, C, height * width)
    # sums[..., k] for k = S_a, S_b, S_aa, S_bb, S_ab, d/d opacity
    sums = torch.zeros(B, N, 6, dtype=dtype, device=features.device)
    grad_features = torch.zeros(B, N, C, dtype=dtype, device=features.device)
    for gs, ps in _chunks(B, N, height * width, chunk_elements):
        px, py = _pixel_centres(height, width, ps, dtype, features.device)
        a, b, g, keep = geo.frame(gs, px, py, cutoff)
        a = torch.where(keep, a, torch.zeros_like(a))  # dropped terms: no NaN * 0
        b = torch.where(keep, b, torch.zeros_like(b))
        go = grad_out[:, :, ps]  # [B, C, P]
        h = torch.einsum("bcp,bnc->bnp", go, feats[:, gs])  # [B, n, P]
        grad_features[:, gs] += torch.einsum("bnp,bcp->bnc", g * opac[:, gs], go)
        gh = g * h
        gq = -0.5 * opac[:, gs] * gh
        sums[:, gs] += torch.stack(
            [gq * a, gq * b, gq * a * a, gq * b * b, gq * a * b, gh], dim=-1
        ).sum(dim=2)
    s_a, s_b, s_aa, s_bb, s_ab, grad_opacity = sums.unbind(-1)
    c, s = geo.cos.squeeze(-1), geo.sin.squeeze(-1)
    sx, sy = geo.sx.squeeze(-1), geo.sy.squeeze(-1)
    grad_means = torch.stack(
        [-width * (c * s_a / sx - s * s_b / sy), -height * (s * s_a / sx + c * s_b / sy)], -1
    )
    grad_scales = torch.stack([-2 * s_aa / sx, -2 * s_bb / sy], -1)
    grad_rotations = 2 * s_ab * (sy / sx - sx / sy)
    return grad_means, grad_scales, grad_rotations, grad_features, grad_opacity


class _ReferenceSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, rotations, features, opacity, height, width, cutoff,
                chunk_elements):
        ctx.save_for_backward(means, scales, rotations, features, opacity)
        ctx.config = (height, width, cutoff, chunk_elements)
        return _forward(means, scales, rotations, features, opacity, height, width, cutoff,
                        chunk_elements)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        inputs = ctx.saved_tensors
        grads = _backward(grad_out, *inputs, *ctx.config)
        grads = [g.to(x.dtype) if need else None
                 for g, x, need in zip(grads, inputs, ctx.needs_input_grad, strict=False)]
        return (*grads, None, None, None, None)


def splat_reference(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    opacity: torch.Tensor | None = None,
    *,
    height: int,
    width: int,
    cutoff: float = DEFAULT_CUTOFF,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Splat featured Gaussians; returns [B, C, height, width] in features' dtype.

    means [B, N, 2] in [-1, 1], scales [B, N, 2] in pixels, rotations [B, N] in radians,
    features [B, N, C], opacity [B, N] (None: all ones). Autograd-aware for all inputs.
    Arithmetic is float64 when any input is float64, float32 otherwise.
    """
    check_splat_args(means, scales, rotations, features, opacity, height, width, cutoff)
    if opacity is None:
        opacity = torch.ones(features.shape[:2], dtype=features.dtype, device=features.device)
    return _ReferenceSplat.apply(means, scales, rotations, features, opacity, height, width,
                                 float(cutoff), int(chunk_elements))
