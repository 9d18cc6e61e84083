"""The public, autograd-aware splat op: CUDA kernel for CUDA tensors, reference otherwise."""

from typing import Literal

import torch

from kernels import DEFAULT_CUTOFF
from kernels.reference import splat_reference
from kernels.validate import check_splat_args

Backend = Literal["auto", "cuda", "reference"]
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class _CudaSplat(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, scales, rotations, features, opacity, height, width, cutoff):
        from kernels.build import load_extension

        ext = load_extension()
        ctx.save_for_backward(means, scales, rotations, features, opacity)
        ctx.cutoff = cutoff
        return ext.forward(means, scales, rotations, features, opacity, height, width, cutoff)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        from kernels.build import load_extension

        means, scales, rotations, features, opacity = ctx.saved_tensors
        grad_out = grad_out.to(features.dtype).contiguous()
        grads = load_extension().backward(grad_out, means, scales, rotations, features, opacity,
                                          ctx.cutoff)
        grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=False)]
        return (*grads, None, None, None)


def _choose_backend(backend: Backend, features: torch.Tensor) -> str:
    if backend not in ("auto", "cuda", "reference"):
        raise ValueError(f"backend must be 'auto', 'cuda' or 'reference', got {backend!r}")
    if backend == "reference":
        return "reference"
    usable = features.is_cuda and features.dtype in KERNEL_DTYPES
    if backend == "cuda" and not usable:
        raise ValueError(
            "backend='cuda' needs CUDA tensors with float32/float16/bfloat16 features, got "
            f"features on {features.device} with dtype {features.dtype}"
        )
    return "cuda" if usable else "reference"


def splat(
    means: torch.Tensor,
    scales: torch.Tensor,
    rotations: torch.Tensor,
    features: torch.Tensor,
    opacity: torch.Tensor | None = None,
    *,
    height: int,
    width: int,
    cutoff: float = DEFAULT_CUTOFF,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Splat B x N featured 2D Gaussians into a [B, C, height, width] feature map.

    Args:
        means: [B, N, 2], (x, y) in normalised [-1, 1] map coordinates.
        scales: [B, N, 2], positive standard deviations in feature-map pixels.
        rotations: [B, N], radians.
        features: [B, N, C]; the output has features' dtype.
        opacity: [B, N] or None (all ones).
        height, width: size of the output map in pixels.
        cutoff: terms with Mahalanobis^2 above it are dropped (default 2 ln 255).
        backend: "auto" uses the CUDA kernel for CUDA tensors with float32/float16/
            bfloat16 features (fp32 accumulation, geometry in fp32) and the exact
            PyTorch reference otherwise (CPU, float64); "reference" forces the reference;
            "cuda" forces the kernel.

    Conventions (pixel centres, axes): see ``kernels/__init__.py``.
    """
    check_splat_args(means, scales, rotations, features, opacity, height, width, cutoff)
    if _choose_backend(backend, features) == "reference":
        return splat_reference(means, scales, rotations, features, opacity,
                               height=height, width=width, cutoff=cutoff)
    if opacity is None:
        opacity = torch.ones(features.shape[:2], dtype=features.dtype, device=features.device)
    return _CudaSplat.apply(
        means.float().contiguous(),
        scales.float().contiguous(),
        rotations.float().contiguous(),
        features.contiguous(),
        opacity.to(features.dtype).contiguous(),
        height,
        width,
        float(cutoff),
    )
