// Small kernels for tests/test_splat_emulated.py: the semantics of kernels/csrc/emulate.h
// against known values, and each misuse it must report (never a hang, never a value).
// Usage: emulate_cases CASE [--threads] [--no-shared-check] [--seed S]
// Prints the case's values (one line) and exits 0, or prints "error: ..." and exits 2.
#include "emulate.h"

#include <cstdio>
#include <map>

#include "splat_device.cuh"  // SHARED_ARRAY under the emulation's definition

namespace {

__global__ void warp_values(float* out) {
  const int t = threadIdx.x, lane = t % 32;
  const float down = __shfl_down_sync(0xffffffffu, 1.5f * lane, 3);
  const unsigned bits = __ballot_sync(0xffffffffu, lane % 3 == 0);
  out[3 * t] = down;
  out[3 * t + 1] = static_cast<float>(bits == 0x49249249u);
  out[3 * t + 2] = static_cast<float>(__popc(bits));
}

__global__ void barrier_values(float* out) {  // a value written by a neighbour, after a barrier
  SHARED_ARRAY(float, s, 64);
  const int t = threadIdx.x;
  s[t] = 10.f * t + blockIdx.x;
  __syncthreads();
  out[blockIdx.x * 64 + t] = s[(t + 1) % 64];
}

__global__ void poison(float* out) {  // with shared checks off: the 0xFF fill
  SHARED_ARRAY(float, s, 64);
  SHARED_ARRAY(int, n, 64);
  out[2 * threadIdx.x] = s[threadIdx.x];
  out[2 * threadIdx.x + 1] = static_cast<float>(n[threadIdx.x]);
}

__global__ void block_order(float* out, int* counter) {
  if (threadIdx.x == 0) out[blockIdx.x] = static_cast<float>((*counter)++);
}

__global__ void exit_before_barrier(float*) {
  if (threadIdx.x == 5) return;
  __syncthreads();
}

__global__ void lane_exits_before_shuffle(float* out) {
  if (threadIdx.x % 32 == 7) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
}

__global__ void partial_mask(float* out) {
  out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1.f, 1);
}

__global__ void mixed_primitives(float* out) {  // lanes of a warp in two primitives
  if (threadIdx.x % 32 < 16) {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
  } else {
    out[threadIdx.x] = static_cast<float>(__ballot_sync(0xffffffffu, 1));
  }
}

__global__ void divergent_barrier(float* out) {  // half a warp at a barrier, half shuffling
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
    __syncthreads();
  }
}

__global__ void shared_too_big(float* out) {
  SHARED_ARRAY(float, big, 13000);
  big[threadIdx.x] = 1.f;
  out[threadIdx.x] = big[threadIdx.x];
}

__global__ void race(float* out) {  // reads a neighbour's slot that it rewrites unsynchronised
  SHARED_ARRAY(float, s, 64);
  const int t = threadIdx.x;
  s[t] = 1.f * t;
  __syncthreads();
  const float next = s[(t + 1) % 64];
  s[t] = next;
  out[t] = next;
}

__global__ void uninitialised(float* out) {
  SHARED_ARRAY(float, s, 64);
  if (threadIdx.x > 0) s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void shared_out_of_bounds(float* out) {
  SHARED_ARRAY(float, s, 64);
  s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x + 1];
}

void print(const std::vector<float>& v) {
  for (size_t k = 0; k < v.size(); ++k) std::printf(k ? " %g" : "%g", v[k]);
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return std::fprintf(stderr, "usage: emulate_cases CASE [options]\n"), 3;
  const std::string name = argv[1];
  for (int k = 2; k < argc; ++k) {
    const std::string arg = argv[k];
    if (arg == "--threads") emu::config().mode = emu::Mode::threads;
    else if (arg == "--no-shared-check") emu::config().check_shared = false;
    else if (arg == "--seed" && k + 1 < argc) emu::config().seed = std::stoull(argv[++k]);
    else return std::fprintf(stderr, "bad option %s\n", argv[k]), 3;
  }
  std::vector<float> out(64 * 16, 0.f);
  int counter = 0;
  const std::map<std::string, std::function<void()>> cases = {
      {"warp_values", [&] { emu::launch(warp_values, 1, 64, out.data()); out.resize(3 * 64); }},
      {"barrier_values", [&] { emu::launch(barrier_values, 2, 64, out.data()); out.resize(128); }},
      {"poison", [&] { emu::launch(poison, 1, 64, out.data()); out.resize(128); }},
      {"block_order", [&] { emu::launch(block_order, 16, 32, out.data(), &counter); out.resize(16); }},
      {"block_48", [&] { emu::launch(warp_values, 1, 48, out.data()); }},
      {"block_2d", [&] { emu::launch(warp_values, 1, dim3(32, 2), out.data()); }},
      {"grid_y_65536", [&] { emu::launch(block_order, dim3(1, 65536), 32, out.data(), &counter); }},
      {"exit_before_barrier", [&] { emu::launch(exit_before_barrier, 1, 64, out.data()); }},
      {"lane_exits_before_shuffle", [&] { emu::launch(lane_exits_before_shuffle, 1, 64, out.data()); }},
      {"partial_mask", [&] { emu::launch(partial_mask, 1, 64, out.data()); }},
      {"mixed_primitives", [&] { emu::launch(mixed_primitives, 1, 64, out.data()); }},
      {"divergent_barrier", [&] { emu::launch(divergent_barrier, 1, 64, out.data()); }},
      {"shared_too_big", [&] { emu::launch(shared_too_big, 1, 64, out.data()); }},
      {"race", [&] { emu::launch(race, 1, 64, out.data()); }},
      {"uninitialised", [&] { emu::launch(uninitialised, 1, 64, out.data()); }},
      {"shared_out_of_bounds", [&] { emu::launch(shared_out_of_bounds, 1, 64, out.data()); }},
  };
  const auto it = cases.find(name);
  if (it == cases.end()) return std::fprintf(stderr, "unknown case %s\n", name.c_str()), 3;
  try {
    it->second();
  } catch (const std::exception& err) {
    std::printf("error: %s\n", err.what());
    return 2;
  }
  print(out);
  return 0;
}
