"""The public, autograd-aware splat op: CUDA kernel for CUDA tensors, reference otherwise.

The kernel is reached through two PyTorch custom ops, ``gtgen::splat_forward`` and
``gtgen::splat_backward`` (with fake implementations for shapes and the autograd rule
joining them), so ``torch.compile`` keeps a model that splats in one graph instead of
breaking at an opaque autograd.Function. On CPU tensors the ops run the reference's own
forward and backward (so their registration is tested without a GPU), or with
``emulated=True`` the CUDA kernel's own source under the CPU emulation of CUDA's
execution model (``kernels/csrc/emulate.h``; slow, for testing the kernel).
"""

from typing import Literal, get_args

import torch
from torch import Tensor

from kernels import DEFAULT_CUTOFF
from kernels.reference import DEFAULT_CHUNK_ELEMENTS, splat_reference
from kernels.reference import _backward as reference_backward
from kernels.reference import _forward as reference_forward
from kernels.validate import check_splat_args

Backend = Literal["auto", "cuda", "emulated", "reference"]
BACKENDS = get_args(Backend)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@torch.library.custom_op("gtgen::splat_forward", mutates_args=())
def splat_forward(means: Tensor, scales: Tensor, rotations: Tensor, features: Tensor,
                  opacity: Tensor, height: int, width: int, cutoff: float,
                  emulated: bool = False) -> Tensor:
    """[B, C, height, width] in features' dtype; geometry fp32, all contiguous."""
    if emulated:
        from kernels.build import load_emulated

        return load_emulated().forward(means, scales, rotations, features, opacity, height,
                                       width, cutoff)
    if features.is_cuda:
        from kernels.build import load_extension

        return load_extension().forward(means, scales, rotations, features, opacity, height,
                                        width, cutoff)
    return reference_forward(means, scales, rotations, features, opacity, height, width,
                             cutoff, DEFAULT_CHUNK_ELEMENTS)


@splat_forward.register_fake
def _(means, scales, rotations, features, opacity, height, width, cutoff, emulated=False):
    return features.new_empty(features.shape[0], features.shape[2], height, width)


@torch.library.custom_op("gtgen::splat_backward", mutates_args=())
def splat_backward(grad_out: Tensor, means: Tensor, scales: Tensor, rotations: Tensor,
                   features: Tensor, opacity: Tensor, cutoff: float,
                   emulated: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (means, scales, rotations, features, opacity) for grad_out [B, C, H, W]
    in features' dtype; each in its input's dtype."""
    inputs = (means, scales, rotations, features, opacity)
    if emulated:
        from kernels.build import load_emulated

        return tuple(load_emulated().backward(grad_out, *inputs, cutoff))
    if features.is_cuda:
        from kernels.build import load_extension

        return tuple(load_extension().backward(grad_out, *inputs, cutoff))
    height, width = grad_out.shape[-2:]
    grads = reference_backward(grad_out, *inputs, height, width, cutoff,
                               DEFAULT_CHUNK_ELEMENTS)
    return tuple(g.to(x.dtype) for g, x in zip(grads, inputs, strict=True))


@splat_backward.register_fake
def _(grad_out, means, scales, rotations, features, opacity, cutoff, emulated=False):
    return tuple(torch.empty_like(t) for t in (means, scales, rotations, features, opacity))


def _setup_context(ctx, inputs, output):
    means, scales, rotations, features, opacity, _, _, cutoff, emulated = inputs
    ctx.save_for_backward(means, scales, rotations, features, opacity)
    ctx.cutoff = cutoff
    ctx.emulated = emulated


def _backward(ctx, grad_out):
    means, scales, rotations, features, opacity = ctx.saved_tensors
    grads = splat_backward(grad_out.to(features.dtype).contiguous(), means, scales, rotations,
                           features, opacity, ctx.cutoff, ctx.emulated)
    grads = [g if need else None for g, need in zip(grads, ctx.needs_input_grad, strict=False)]
    return (*grads, None, None, None, None)


splat_forward.register_autograd(_backward, setup_context=_setup_context)


def _choose_backend(backend: Backend, features: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, "
                         f"got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "emulated":
        if features.device.type != "cpu" or features.dtype not in KERNEL_DTYPES:
            raise ValueError(
                "backend='emulated' needs CPU tensors with float32/float16/bfloat16 features, "
                f"got features on {features.device} with dtype {features.dtype}")
        return "emulated"
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
            "cuda" forces the kernel; "emulated" runs the kernel's own source on CPU
            tensors under an emulation of CUDA's execution model (kernels/csrc/emulate.h:
            slow, with shared-memory race checks; for testing the kernel without a GPU).

    Conventions (pixel centres, axes): see ``kernels/__init__.py``.
    """
    check_splat_args(means, scales, rotations, features, opacity, height, width, cutoff)
    chosen = _choose_backend(backend, features)
    if chosen == "reference":
        return splat_reference(means, scales, rotations, features, opacity,
                               height=height, width=width, cutoff=cutoff)
    if opacity is None:
        opacity = torch.ones(features.shape[:2], dtype=features.dtype, device=features.device)
    return splat_forward(
        means.float().contiguous(),
        scales.float().contiguous(),
        rotations.float().contiguous(),
        features.contiguous(),
        opacity.to(features.dtype).contiguous(),
        height,
        width,
        float(cutoff),
        chosen == "emulated",
    )
