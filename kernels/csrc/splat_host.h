// Host side of the splat op: validate, allocate, launch (launch_splat_* of splat.h).
// Shared by the CUDA extension (splat.cpp) and the CPU emulation (splat_emulated.cpp);
// the includer defines kSplatDevice, the device type its tensors must live on, and
// kPoisonOutputs: fill every output with NaN before the launch, so an element the kernel
// never writes shows (the emulation; on CUDA the tests poison the allocator instead). The
// Python wrapper (kernels/splat.py) already raises ValueError for bad input; these checks
// are the last line of defence so that a direct call can never index out of bounds.
#pragma once

#include <limits>

#include "splat.h"

namespace {

void check_float_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype,
                        at::IntArrayRef shape, const at::Device& device) {
  TORCH_CHECK(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, name, " must have dtype ", dtype, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

void check_inputs(const at::Tensor& means, const at::Tensor& scales,
                  const at::Tensor& rotations, const at::Tensor& features,
                  const at::Tensor& opacity) {
  TORCH_CHECK(features.device().type() == kSplatDevice, "features must be a ",
              c10::DeviceTypeName(kSplatDevice), " tensor, got ", features.device());
  TORCH_CHECK(features.dim() == 3, "features must be [B, N, C], got ", features.sizes());
  const auto dtype = features.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "features must be float32, float16 or bfloat16, got ", dtype);
  const int64_t B = features.size(0), N = features.size(1);
  const auto device = features.device();
  check_float_tensor(means, "means", at::kFloat, {B, N, 2}, device);
  check_float_tensor(scales, "scales", at::kFloat, {B, N, 2}, device);
  check_float_tensor(rotations, "rotations", at::kFloat, {B, N}, device);
  check_float_tensor(opacity, "opacity", dtype, {B, N}, device);
  TORCH_CHECK(features.is_contiguous(), "features must be contiguous");
}

// An output of t's options and the given shape: uninitialised, or NaN (kPoisonOutputs).
at::Tensor new_output(at::IntArrayRef shape, const at::TensorOptions& options) {
  return kPoisonOutputs ? at::full(shape, std::numeric_limits<float>::quiet_NaN(), options)
                        : at::empty(shape, options);
}

at::Tensor new_output_like(const at::Tensor& t) { return new_output(t.sizes(), t.options()); }

}  // namespace

at::Tensor splat_forward(const at::Tensor& means, const at::Tensor& scales,
                         const at::Tensor& rotations, const at::Tensor& features,
                         const at::Tensor& opacity, int64_t height, int64_t width,
                         double cutoff) {
  check_inputs(means, scales, rotations, features, opacity);
  TORCH_CHECK(height > 0 && width > 0, "height and width must be positive");
  auto out =
      new_output({features.size(0), features.size(2), height, width}, features.options());
  launch_splat_forward(means, scales, rotations, features, opacity, out, cutoff);
  return out;
}

std::vector<at::Tensor> splat_backward(const at::Tensor& grad_out, const at::Tensor& means,
                                       const at::Tensor& scales, const at::Tensor& rotations,
                                       const at::Tensor& features, const at::Tensor& opacity,
                                       double cutoff) {
  check_inputs(means, scales, rotations, features, opacity);
  TORCH_CHECK(grad_out.dim() == 4 && grad_out.size(0) == features.size(0) &&
                  grad_out.size(1) == features.size(2),
              "grad_out must be [B, C, H, W] matching features ", features.sizes(), ", got ",
              grad_out.sizes());
  check_float_tensor(grad_out, "grad_out", features.scalar_type(), grad_out.sizes(),
                     features.device());
  auto grad_means = new_output_like(means);
  auto grad_scales = new_output_like(scales);
  auto grad_rotations = new_output_like(rotations);
  auto grad_features = new_output_like(features);
  auto grad_opacity = new_output_like(opacity);
  launch_splat_backward(grad_out, means, scales, rotations, features, opacity, grad_means,
                        grad_scales, grad_rotations, grad_features, grad_opacity, cutoff);
  return {grad_means, grad_scales, grad_rotations, grad_features, grad_opacity};
}

// The two ops of either module (the CUDA one, gtgen_splat, and the CPU emulation's).
inline void define_splat_ops(pybind11::module_& m) {
  m.def("forward", &splat_forward,
        "splat(means, scales, rotations, features, opacity, height, width, cutoff) -> "
        "[B, C, H, W]");
  m.def("backward", &splat_backward,
        "gradients (means, scales, rotations, features, opacity) of splat for grad_out");
}
