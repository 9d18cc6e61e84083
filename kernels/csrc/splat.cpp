// The CUDA extension's module: the host side (splat_host.h) for CUDA tensors.
#include "splat.h"

constexpr c10::DeviceType kSplatDevice = c10::DeviceType::CUDA;
constexpr bool kPoisonOutputs = false;

#include "splat_host.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &splat_forward,
        "splat(means, scales, rotations, features, opacity, height, width, cutoff) -> "
        "[B, C, H, W]");
  m.def("backward", &splat_backward,
        "gradients (means, scales, rotations, features, opacity) of splat for grad_out");
}
