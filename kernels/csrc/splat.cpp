// The CUDA extension's module: the host side (splat_host.h) for CUDA tensors.
#include "splat.h"

constexpr c10::DeviceType kSplatDevice = c10::DeviceType::CUDA;
constexpr bool kPoisonOutputs = false;

#include "splat_host.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { define_splat_ops(m); }
