// Launchers of the splat kernels, written once for the CUDA build (splat_kernel.cu) and
// the CPU emulation (splat_emulated.cpp, emulate_check.cpp): grid and block shapes, the
// forward's tile, the channel chunk. Raw pointers only, nothing of ATen, so the
// sanitizer driver can call them without torch.
//
// The includer defines SPLAT_LAUNCH(kernel, grid, block, ...): a launch of the kernel
// (a function pointer) with those arguments, followed by whatever error check its
// platform has.
//
// Layouts (all contiguous): means [B, N, 2] f32, normalised [-1, 1]; scales [B, N, 2]
// f32, pixels; rotations [B, N] f32, radians; features [B, N, C] T; opacity [B, N] T;
// out / grad_out [B, C, H, W] T. T is float, half or bfloat16, accumulated in f32.
#pragma once

#include "splat_device.cuh"

#ifndef SPLAT_LAUNCH
#error "define SPLAT_LAUNCH(kernel, grid, block, ...) before including splat_launch.h"
#endif

namespace splat_device {

struct SplatShape {
  int B, N, C, H, W;
  float cutoff;
};

template <typename scalar_t, int CC, int TILE>
void forward_with(const float* means, const float* scales, const float* rotations,
                  const scalar_t* features, const scalar_t* opacity, scalar_t* out,
                  const SplatShape& s) {
  const int tiles_x = (s.W + TILE - 1) / TILE, tiles_y = (s.H + TILE - 1) / TILE;
  const dim3 grid(tiles_x * tiles_y, s.B, (s.C + CC - 1) / CC);
  auto* kernel = splat_forward_kernel<scalar_t, CC, TILE>;
  SPLAT_LAUNCH(kernel, grid, TILE * TILE, means, scales, rotations, features, opacity, out,
               s.N, s.C, s.H, s.W, s.cutoff, tiles_x);
}

// out [B, C, H, W] is written in full (every element, also for N = 0).
template <typename scalar_t>
void launch_forward(const float* means, const float* scales, const float* rotations,
                    const scalar_t* features, const scalar_t* opacity, scalar_t* out,
                    const SplatShape& s) {
  if (static_cast<int64_t>(s.B) * s.C * s.H * s.W == 0) return;
  const bool small_tile = forward_tile(s.H, s.W) == 8;
  with_channel_chunk(s.C, [&](auto chunk) {
    constexpr int CC = decltype(chunk)::value;
    if (small_tile) {
      forward_with<scalar_t, CC, 8>(means, scales, rotations, features, opacity, out, s);
    } else {
      forward_with<scalar_t, CC, 16>(means, scales, rotations, features, opacity, out, s);
    }
  });
}

// Every gradient is written in full; nothing is launched when there is no Gaussian.
template <typename scalar_t>
void launch_backward(const scalar_t* grad_out, const float* means, const float* scales,
                     const float* rotations, const scalar_t* features, const scalar_t* opacity,
                     float* grad_means, float* grad_scales, float* grad_rotations,
                     scalar_t* grad_features, scalar_t* grad_opacity, const SplatShape& s) {
  if (s.B == 0 || s.N == 0) return;
  const dim3 grid((s.N + kWarps - 1) / kWarps, s.B);
  with_channel_chunk(s.C, [&](auto chunk) {
    constexpr int CC = decltype(chunk)::value;
    auto* kernel = splat_backward_kernel<scalar_t, CC>;
    SPLAT_LAUNCH(kernel, grid, kBlock, grad_out, means, scales, rotations, features, opacity,
                 grad_means, grad_scales, grad_rotations, grad_features, grad_opacity, s.N,
                 s.C, s.H, s.W, s.cutoff);
  });
}

}  // namespace splat_device
