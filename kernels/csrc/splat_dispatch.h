// The ATen side of a launch, shared by the CUDA build (splat_kernel.cu) and the CPU
// emulation (splat_emulated.cpp): dtype dispatch and data pointers, then the launchers of
// splat_launch.h. The includer defines SPLAT_LAUNCH and SPLAT_DEVICE_GUARD(device) first.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "splat.h"
#include "splat_launch.h"

// Calls body<scalar_t>() for the three supported feature dtypes.
#define SPLAT_DISPATCH(dtype, ...)                                                  \
  switch (dtype) {                                                                  \
    case at::kFloat: { using scalar_t = float; __VA_ARGS__(); break; }             \
    case at::kHalf: { using scalar_t = c10::Half; __VA_ARGS__(); break; }          \
    case at::kBFloat16: { using scalar_t = c10::BFloat16; __VA_ARGS__(); break; }  \
    default: TORCH_CHECK(false, "splat: unsupported feature dtype ", dtype);        \
  }

namespace {

splat_device::SplatShape shape_of(const at::Tensor& features, const at::Tensor& map,
                                  double cutoff) {
  return {static_cast<int>(features.size(0)), static_cast<int>(features.size(1)),
          static_cast<int>(features.size(2)), static_cast<int>(map.size(2)),
          static_cast<int>(map.size(3)), static_cast<float>(cutoff)};
}

}  // namespace

void launch_splat_forward(const at::Tensor& means, const at::Tensor& scales,
                          const at::Tensor& rotations, const at::Tensor& features,
                          const at::Tensor& opacity, at::Tensor& out, double cutoff) {
  if (out.numel() == 0) return;
  SPLAT_DEVICE_GUARD(features.device());
  const auto shape = shape_of(features, out, cutoff);
  SPLAT_DISPATCH(features.scalar_type(), [&] {
    splat_device::launch_forward<scalar_t>(
        means.data_ptr<float>(), scales.data_ptr<float>(), rotations.data_ptr<float>(),
        features.data_ptr<scalar_t>(), opacity.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
        shape);
  });
}

void launch_splat_backward(const at::Tensor& grad_out, const at::Tensor& means,
                           const at::Tensor& scales, const at::Tensor& rotations,
                           const at::Tensor& features, const at::Tensor& opacity,
                           at::Tensor& grad_means, at::Tensor& grad_scales,
                           at::Tensor& grad_rotations, at::Tensor& grad_features,
                           at::Tensor& grad_opacity, double cutoff) {
  if (features.size(0) == 0 || features.size(1) == 0) return;
  SPLAT_DEVICE_GUARD(features.device());
  const auto shape = shape_of(features, grad_out, cutoff);
  SPLAT_DISPATCH(features.scalar_type(), [&] {
    splat_device::launch_backward<scalar_t>(
        grad_out.data_ptr<scalar_t>(), means.data_ptr<float>(), scales.data_ptr<float>(),
        rotations.data_ptr<float>(), features.data_ptr<scalar_t>(),
        opacity.data_ptr<scalar_t>(), grad_means.data_ptr<float>(),
        grad_scales.data_ptr<float>(), grad_rotations.data_ptr<float>(),
        grad_features.data_ptr<scalar_t>(), grad_opacity.data_ptr<scalar_t>(), shape);
  });
}
