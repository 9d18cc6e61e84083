// Launchers of the splat kernels (splat_dispatch.h, built into splat_kernel.cu and
// splat_emulated.cpp). The host side (splat_host.h) checks
// shapes, dtypes and devices and allocates every output before calling these.
//
// Layouts (all contiguous, on one device: CUDA, or the CPU for the emulation):
//   means [B, N, 2] f32, normalised [-1, 1]   scales [B, N, 2] f32, pixels
//   rotations [B, N] f32, radians              features [B, N, C] T, opacity [B, N] T
//   out / grad_out [B, C, H, W] T, with T one of f32, f16, bf16 and f32 accumulation.
#pragma once

#include <torch/extension.h>

void launch_splat_forward(const at::Tensor& means, const at::Tensor& scales,
                          const at::Tensor& rotations, const at::Tensor& features,
                          const at::Tensor& opacity, at::Tensor& out, double cutoff);

void launch_splat_backward(const at::Tensor& grad_out, const at::Tensor& means,
                           const at::Tensor& scales, const at::Tensor& rotations,
                           const at::Tensor& features, const at::Tensor& opacity,
                           at::Tensor& grad_means, at::Tensor& grad_scales,
                           at::Tensor& grad_rotations, at::Tensor& grad_features,
                           at::Tensor& grad_opacity, double cutoff);
