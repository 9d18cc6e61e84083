"""The CUDA splat kernel against the float64 reference (marked `gpu`: skipped without CUDA).

Tolerances are norm-relative, ||kernel - ref|| / ||ref||, with the reference run in
float64 on the very same (already rounded) inputs:
  * float32 inputs: the kernel accumulates in fp32 over at most N terms, so forward
    error is a few 1e-7; gradients are sums of signed terms with cancellation, 1e-5.
  * bf16/fp16 features: the output is rounded to the input dtype, which alone costs
    up to 2^-9 (bf16) or 2^-12 (fp16) relative per element; 4e-3 and 1e-3.
Pixels whose Mahalanobis^2 lies within 1e-4 (relative) of the cut-off may be kept by
one implementation and dropped by the other after fp32 rounding. Such ambiguous pixels,
and the Gaussians that touch them, are found by running the reference with the cut-off
moved by +-1e-4 and are left out of the comparison; everything else must agree.
"""

import itertools
import math

import pytest
import torch

from kernels import DEFAULT_CUTOFF, splat
from tests.splat_oracle import random_gaussians

pytestmark = pytest.mark.gpu

FORWARD_TOL = {torch.float32: 1e-6, torch.bfloat16: 4e-3, torch.float16: 1e-3}
GRAD_TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 3e-3}


def _poison_allocator(numel: int) -> None:
    """Fill freed cached memory with NaN so an output element the kernel never writes shows."""
    torch.empty(numel * 4 + (1 << 20), device="cuda").fill_(math.nan)
    torch.cuda.synchronize()


def _rel(got: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor) -> float:
    got, ref = got.double()[keep], ref.double()[keep]
    return ((got - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def _inputs(B, N, C, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    means, scales, rot, feat, opac = random_gaussians(B, N, C, generator=gen,
                                                      scale_range=(0.2, 6.0))
    geometry = [t.float().cuda() for t in (means, scales, rot)]
    return [*geometry, feat.to(dtype).cuda(), opac.to(dtype).cuda()]


def _reference(inputs, H, W, grad_out, cutoff):
    leaves = [t.double().detach().requires_grad_() for t in inputs]
    out = splat(*leaves, height=H, width=W, cutoff=cutoff, backend="reference")
    return out.detach(), torch.autograd.grad(out, leaves, grad_out.double())


def _compare(B, N, C, H, W, dtype, seed):
    inputs = _inputs(B, N, C, dtype, seed)
    leaves = [t.detach().requires_grad_() for t in inputs]
    grad_out = torch.randn(B, C, H, W, device="cuda").to(dtype)
    _poison_allocator(B * C * H * W + B * N * (C + 6))
    out = splat(*leaves, height=H, width=W, backend="cuda")
    grads = torch.autograd.grad(out, leaves, grad_out)
    assert out.dtype == dtype and out.shape == (B, C, H, W)
    assert torch.isfinite(out).all(), "kernel left output elements unwritten (NaN poison)"
    assert all(torch.isfinite(g).all() for g in grads), "unwritten or non-finite gradients"

    ref, ref_grads = _reference(inputs, H, W, grad_out, DEFAULT_CUTOFF)
    lo, lo_grads = _reference(inputs, H, W, grad_out, DEFAULT_CUTOFF * (1 - 1e-4))
    hi, hi_grads = _reference(inputs, H, W, grad_out, DEFAULT_CUTOFF * (1 + 1e-4))
    pixel_ok = (lo - hi).abs() <= 1e-12 * (1 + ref.abs())
    assert pixel_ok.float().mean() > 0.95, "test inputs are dominated by boundary pixels"
    assert _rel(out, ref, pixel_ok) < FORWARD_TOL[dtype]

    for name, g, r, gl, gh in zip(("means", "scales", "rotations", "features", "opacity"),
                                  grads, ref_grads, lo_grads, hi_grads, strict=True):
        ok = (gl - gh).abs() <= 1e-9 * (1 + r.abs())
        if ok.dim() == 3:  # a Gaussian is comparable only if all its entries are
            ok = ok.all(dim=-1, keepdim=True).expand_as(ok)
        assert _rel(g, r, ok) < GRAD_TOL[dtype], f"gradient of {name}"


SIZES = list(itertools.product([1, 3, 8, 32, 256], [1, 7], [16, 31, 32, 64], [1, 64, 256, 1000]))


@pytest.mark.parametrize(("C", "B", "HW", "N"), SIZES)
def test_kernel_matches_reference_fp32(C, B, HW, N):
    _compare(B, N, C, HW, HW, torch.float32, seed=C * 7 + B * 13 + HW * 17 + N)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("C", "B", "H", "W", "N"), [(8, 7, 32, 32, 256), (3, 1, 31, 16, 64),
                                                    (256, 1, 16, 16, 64)])
def test_kernel_matches_reference_half(dtype, C, B, H, W, N):
    _compare(B, N, C, H, W, dtype, seed=C + N)


@pytest.mark.parametrize("N", [255, 256, 257, 512])
def test_last_gaussian_of_a_tile_gets_its_gradient(N):
    """All Gaussians inside one 16x16 tile: the last of each shared-memory batch and of
    the tile (the published kernel drops it) must get exactly the reference gradient."""
    gen = torch.Generator().manual_seed(N)
    B, C, H, W = 1, 4, 16, 16
    means = (torch.rand(B, N, 2, generator=gen) * 1.2 - 0.6).cuda()
    scales = torch.tensor([1.5, 0.8]).expand(B, N, 2).contiguous().cuda()  # sx != sy
    rot = torch.zeros(B, N).cuda()
    feat = torch.randn(B, N, C, generator=gen).cuda()
    opac = torch.rand(B, N, generator=gen).cuda() * 0.5 + 0.5
    inputs = [means, scales, rot, feat, opac]
    grad_out = torch.randn(B, C, H, W, device="cuda")
    leaves = [t.clone().requires_grad_() for t in inputs]
    grads = torch.autograd.grad(splat(*leaves, height=H, width=W, backend="cuda"), leaves,
                                grad_out)
    _, ref_grads = _reference(inputs, H, W, grad_out, DEFAULT_CUTOFF)
    for idx in sorted({N - 1, 255 % N, N // 2}):
        for g, r in zip(grads, ref_grads, strict=True):
            assert r[0, idx].abs().max() > 0
            torch.testing.assert_close(g[0, idx].double(), r[0, idx], rtol=1e-4, atol=1e-5)


def test_forward_and_backward_are_deterministic():
    inputs = [t.requires_grad_() for t in _inputs(4, 300, 8, torch.float32, seed=1)]
    grad_out = torch.randn(4, 8, 32, 32, device="cuda")
    runs = []
    for _ in range(3):
        out = splat(*inputs, height=32, width=32, backend="cuda")
        runs.append((out, torch.autograd.grad(out, inputs, grad_out)))
    for out, grads in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[0][1], strict=True))


def test_auto_backend_picks_kernel_and_float64_stays_exact():
    inputs64 = [t.double() for t in _inputs(2, 16, 3, torch.float32, seed=5)]
    out64 = splat(*inputs64, height=9, width=9)  # float64 on CUDA -> reference, exact
    ref = splat(*(t.cpu() for t in inputs64), height=9, width=9)
    torch.testing.assert_close(out64.cpu(), ref, rtol=1e-12, atol=1e-12)
    out32 = splat(*(t.float() for t in inputs64), height=9, width=9)
    assert out32.dtype == torch.float32 and out32.is_cuda
