// The CUDA build of the splat op: the kernels (splat_device.cuh) and their launchers
// (splat_launch.h, splat_dispatch.h) on the current CUDA stream. The same kernels and
// launchers also run on the CPU under an emulation of CUDA's execution model
// (splat_emulated.cpp).
// c10 headers only: ATen/cuda/CUDAContext.h would pull in cuSPARSE/cuBLAS headers that a
// minimal CUDA toolkit does not ship, and the kernels need nothing but the stream.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#define SPLAT_LAUNCH(kernel, grid, block, ...)                                       \
  do {                                                                               \
    kernel<<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(__VA_ARGS__);      \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                  \
  } while (0)
#define SPLAT_DEVICE_GUARD(device) const c10::cuda::CUDAGuard guard(device)

#include "splat_dispatch.h"
