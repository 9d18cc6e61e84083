// Device code of the splat op: the two kernels and everything they call, plus the two
// host-side choices that shape their launches (channel chunk, forward tile). Semantics
// and notation: kernels/__init__.py and kernels/reference.py (whose docstring derives
// every gradient used here).
//
// This header includes nothing of CUDA, c10 or ATen. nvcc compiles it inside
// splat_kernel.cu; a host C++ compiler compiles it after emulate.h, which gives the CUDA
// names used here (threadIdx, __syncthreads, __ballot_sync, __shfl_down_sync, ...) the
// semantics of CUDA's execution model on the CPU (kernels/csrc/emulate.h).
//
// Forward: one block per (TILE x TILE pixel tile, image, chunk of CC channels); the
// whole batch in one launch. TILE is 16, or 8 where 8 keeps more threads busy (a 16x16
// tile over an 8x8 map leaves 75% of them idle; 24x24 maps: 44%).
// Gaussians stream through shared memory TILE^2 at a time; each batch is culled
// against the tile with a conservative bounding box of the ellipse {q <= cutoff} and
// compacted in index order, so every pixel sums its Gaussians in index order: the
// forward is deterministic, and the exact q <= cutoff test per pixel makes the result
// independent of the tile layout.
//
// Backward: one warp per Gaussian (b, i), also the whole batch in one launch. The lanes
// stride over the pixels of the Gaussian's bounding box; at each pixel a lane reads
// grad_out for a chunk of CC channels (coalesced: neighbouring lanes read neighbouring
// pixels), adds w * grad_out into its own CC feature-gradient accumulators and the
// chunk's share of <grad_out, feature> into the geometry sums (which are linear in it).
// One warp reduction per channel and per geometry sum ends it. No atomics (deterministic)
// and no [B, H*W, N] tensor; every Gaussian, including the last of any tile, owns its
// own reduction.
#pragma once

#include <cstdint>
#include <type_traits>

// Shared memory is declared through these two macros so that the emulation can give each
// block its own (poisoned, access-checked) storage; under nvcc they are plain __shared__.
#ifndef SHARED_ARRAY
#define SHARED_ARRAY(type, name, n) __shared__ type name[n]
#define SHARED_ARRAY_2D(type, name, n, m) __shared__ type name[n][m]
#endif

namespace splat_device {

constexpr int kBlock = 256;                  // backward: threads per block
constexpr int kWarps = kBlock / 32;          // backward: Gaussians per block
constexpr int kMaxChunk = 32;                // channels per pass (registers per lane)
constexpr unsigned kFullMask = 0xffffffffu;

// One Gaussian in pixel space, with everything the per-pixel weight needs.
struct Gauss {
  float mx, my;          // mean in pixels (column, row)
  float cs, sn;          // cos and sin of the rotation
  float inv_sx, inv_sy;  // 1 / scale
  float opacity;
};

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

__device__ __forceinline__ Gauss load_gauss(const float* __restrict__ means,
                                            const float* __restrict__ scales,
                                            const float* __restrict__ rotations, float opacity,
                                            int64_t gi, int H, int W) {
  Gauss g;
  g.mx = (means[2 * gi] + 1.f) * (0.5f * W) - 0.5f;
  g.my = (means[2 * gi + 1] + 1.f) * (0.5f * H) - 0.5f;
  sincosf(rotations[gi], &g.sn, &g.cs);
  g.inv_sx = 1.f / scales[2 * gi];
  g.inv_sy = 1.f / scales[2 * gi + 1];
  g.opacity = opacity;
  return g;
}

// Pixel box [x0, x1] x [y0, y1] (inclusive, clipped to the map) holding every pixel
// centre with q <= cutoff. The half-extents of the ellipse are sqrt(cutoff * Sigma_xx)
// and sqrt(cutoff * Sigma_yy); the box is padded slightly so rounding never loses a
// pixel the exact test would keep. Empty when x0 > x1 or y0 > y1. NaN or inf geometry
// clamps to the whole map, where the exact test then keeps nothing it should not.
struct Box {
  int x0, x1, y0, y1;
};

__device__ __forceinline__ Box gauss_box(const Gauss& g, float cutoff, int H, int W) {
  const float sx = 1.f / g.inv_sx, sy = 1.f / g.inv_sy;
  const float var_x = g.cs * g.cs * sx * sx + g.sn * g.sn * sy * sy;
  const float var_y = g.sn * g.sn * sx * sx + g.cs * g.cs * sy * sy;
  const float rx = sqrtf(cutoff * var_x) * 1.0001f + 0.01f;
  const float ry = sqrtf(cutoff * var_y) * 1.0001f + 0.01f;
  // fmaxf/fminf return the non-NaN operand, so NaN clamps into [-1, W] before the cast.
  Box box;
  box.x0 = max(0, static_cast<int>(floorf(fminf(fmaxf(g.mx - rx, -1.f), float(W)))));
  box.x1 = min(W - 1, static_cast<int>(ceilf(fminf(fmaxf(g.mx + rx, -1.f), float(W)))));
  box.y0 = max(0, static_cast<int>(floorf(fminf(fmaxf(g.my - ry, -1.f), float(H)))));
  box.y1 = min(H - 1, static_cast<int>(ceilf(fminf(fmaxf(g.my + ry, -1.f), float(H)))));
  return box;
}

// Frame coordinates of pixel (px, py) for Gaussian g; returns q = a^2 + b^2.
__device__ __forceinline__ float gauss_frame(const Gauss& g, float px, float py, float& a,
                                             float& b) {
  const float dx = px - g.mx, dy = py - g.my;
  a = (g.cs * dx + g.sn * dy) * g.inv_sx;
  b = (g.cs * dy - g.sn * dx) * g.inv_sy;
  return a * a + b * b;
}

__device__ __forceinline__ float gauss_weight(const Gauss& g, float px, float py,
                                              float cutoff) {
  float a, b;
  const float q = gauss_frame(g, px, py, a, b);
  return q <= cutoff ? g.opacity * expf(-0.5f * q) : 0.f;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  return v;
}

// ---------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------
template <typename scalar_t, int CC, int TILE>
__global__ void __launch_bounds__(TILE * TILE)
    splat_forward_kernel(const float* __restrict__ means, const float* __restrict__ scales,
                         const float* __restrict__ rotations,
                         const scalar_t* __restrict__ features,
                         const scalar_t* __restrict__ opacity, scalar_t* __restrict__ out,
                         int N, int C, int H, int W, float cutoff, int tiles_x) {
  constexpr int BLOCK = TILE * TILE, WARPS = BLOCK / 32;
  SHARED_ARRAY(Gauss, s_gauss, BLOCK);
  SHARED_ARRAY_2D(float, s_feat, BLOCK, CC);
  SHARED_ARRAY(int, s_warp_count, WARPS);

  const int b = blockIdx.y;
  const int c0 = blockIdx.z * CC;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int tx0 = (blockIdx.x % tiles_x) * TILE, ty0 = (blockIdx.x / tiles_x) * TILE;
  const int tx1 = min(tx0 + TILE, W) - 1, ty1 = min(ty0 + TILE, H) - 1;
  const int x = tx0 + tid % TILE, y = ty0 + tid / TILE;
  const bool inside = x < W && y < H;

  float acc[CC];
#pragma unroll
  for (int k = 0; k < CC; ++k) acc[k] = 0.f;

  for (int start = 0; start < N; start += BLOCK) {
    // 1. Each thread loads one Gaussian and tests its box against this tile.
    const int i = start + tid;
    const int64_t gi = static_cast<int64_t>(b) * N + i;
    bool keep = false;
    Gauss g;
    if (i < N) {
      g = load_gauss(means, scales, rotations, to_float(opacity[gi]), gi, H, W);
      const Box box = gauss_box(g, cutoff, H, W);
      keep = box.x0 <= tx1 && box.x1 >= tx0 && box.y0 <= ty1 && box.y1 >= ty0;
    }
    // 2. Order-preserving compaction of the kept Gaussians into shared memory.
    const unsigned ballot = __ballot_sync(kFullMask, keep);
    if (lane == 0) s_warp_count[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0, total = 0;
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
      const int count = s_warp_count[w];
      offset += w < warp ? count : 0;
      total += count;
    }
    if (keep) {
      const int slot = offset + __popc(ballot & ((1u << lane) - 1u));
      s_gauss[slot] = g;
      const scalar_t* f = features + gi * C + c0;
#pragma unroll
      for (int k = 0; k < CC; ++k) s_feat[slot][k] = c0 + k < C ? to_float(f[k]) : 0.f;
    }
    __syncthreads();
    // 3. Every pixel sums the kept Gaussians in index order.
    if (inside) {
      const float px = x, py = y;
      for (int j = 0; j < total; ++j) {
        const float w = gauss_weight(s_gauss[j], px, py, cutoff);
        if (w != 0.f) {
#pragma unroll
          for (int k = 0; k < CC; ++k) acc[k] += w * s_feat[j][k];
        }
      }
    }
    // No barrier here: the next batch writes s_warp_count, last read before the barrier
    // above, and s_gauss / s_feat only after its own first barrier, which every thread
    // reaches after its reads of this batch. (The race checks of kernels.check found no
    // race without one: shadow records over 8 thread orders, and ThreadSanitizer.)
  }

  if (inside) {
    const int64_t hw = static_cast<int64_t>(H) * W;
    scalar_t* o = out + (static_cast<int64_t>(b) * C + c0) * hw + static_cast<int64_t>(y) * W + x;
#pragma unroll
    for (int k = 0; k < CC; ++k) {
      if (c0 + k < C) o[k * hw] = static_cast<scalar_t>(acc[k]);
    }
  }
}

// ---------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------
template <typename scalar_t, int CC>
__global__ void __launch_bounds__(kBlock)
    splat_backward_kernel(const scalar_t* __restrict__ grad_out,
                          const float* __restrict__ means, const float* __restrict__ scales,
                          const float* __restrict__ rotations,
                          const scalar_t* __restrict__ features,
                          const scalar_t* __restrict__ opacity,
                          float* __restrict__ grad_means, float* __restrict__ grad_scales,
                          float* __restrict__ grad_rotations,
                          scalar_t* __restrict__ grad_features,
                          scalar_t* __restrict__ grad_opacity, int N, int C, int H, int W,
                          float cutoff) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarps + threadIdx.x / 32;
  const int b = blockIdx.y;
  if (i >= N) return;  // uniform per warp; this kernel never uses __syncthreads

  const int64_t gi = static_cast<int64_t>(b) * N + i;
  const int64_t hw = static_cast<int64_t>(H) * W;
  const Gauss g = load_gauss(means, scales, rotations, to_float(opacity[gi]), gi, H, W);
  const Box box = gauss_box(g, cutoff, H, W);
  const int bw = max(0, box.x1 - box.x0 + 1);
  const int npix = bw * max(0, box.y1 - box.y0 + 1);
  const scalar_t* f = features + gi * C;
  const scalar_t* go = grad_out + static_cast<int64_t>(b) * C * hw;

  // sums: S_a, S_b, S_aa, S_bb, S_ab (each of G_q times a frame term) and sum g h, with
  // h = <grad_out[b, :, p], features[b, i, :]> summed chunk by chunk (the sums are
  // linear in h).
  float s_a = 0.f, s_b = 0.f, s_aa = 0.f, s_bb = 0.f, s_ab = 0.f, s_o = 0.f;
  for (int c0 = 0; c0 < C; c0 += CC) {
    float feat[CC], acc[CC];  // this chunk's features; this lane's share of their grads
#pragma unroll
    for (int k = 0; k < CC; ++k) {
      feat[k] = c0 + k < C ? to_float(f[c0 + k]) : 0.f;
      acc[k] = 0.f;
    }
    for (int k = lane; k < npix; k += 32) {
      const int px = box.x0 + k % bw, py = box.y0 + k / bw;
      float a, bb;
      const float q = gauss_frame(g, px, py, a, bb);
      if (q <= cutoff) {
        const float gw = expf(-0.5f * q);
        const float w = g.opacity * gw;
        const scalar_t* gp = go + (static_cast<int64_t>(c0) * H + py) * W + px;
        float h = 0.f;
#pragma unroll
        for (int c = 0; c < CC; ++c) {
          if (c0 + c < C) {
            const float v = to_float(gp[c * hw]);
            h += v * feat[c];
            acc[c] += w * v;
          }
        }
        const float gh = gw * h;
        const float gq = -0.5f * g.opacity * gh;
        s_o += gh;
        s_a += gq * a;
        s_b += gq * bb;
        s_aa += gq * a * a;
        s_bb += gq * bb * bb;
        s_ab += gq * a * bb;
      }
    }
#pragma unroll
    for (int c = 0; c < CC; ++c) {
      const float total = warp_sum(acc[c]);  // complete in lane 0
      if (lane == 0 && c0 + c < C) grad_features[gi * C + c0 + c] = static_cast<scalar_t>(total);
    }
  }
  s_a = warp_sum(s_a);
  s_b = warp_sum(s_b);
  s_aa = warp_sum(s_aa);
  s_bb = warp_sum(s_bb);
  s_ab = warp_sum(s_ab);
  s_o = warp_sum(s_o);
  if (lane == 0) {
    const float sx = 1.f / g.inv_sx, sy = 1.f / g.inv_sy;
    grad_means[2 * gi] = -W * (g.cs * s_a * g.inv_sx - g.sn * s_b * g.inv_sy);
    grad_means[2 * gi + 1] = -H * (g.sn * s_a * g.inv_sx + g.cs * s_b * g.inv_sy);
    grad_scales[2 * gi] = -2.f * s_aa * g.inv_sx;
    grad_scales[2 * gi + 1] = -2.f * s_bb * g.inv_sy;
    grad_rotations[gi] = 2.f * s_ab * (sy * g.inv_sx - sx * g.inv_sy);
    grad_opacity[gi] = static_cast<scalar_t>(s_o);
  }
}

// Calls body(std::integral_constant<int, CC>) with the smallest power-of-two channel
// chunk covering C, at most kMaxChunk (larger C: several chunks).
template <typename Body>
void with_channel_chunk(int C, Body&& body) {
  if (C <= 1) body(std::integral_constant<int, 1>{});
  else if (C <= 2) body(std::integral_constant<int, 2>{});
  else if (C <= 4) body(std::integral_constant<int, 4>{});
  else if (C <= 8) body(std::integral_constant<int, 8>{});
  else if (C <= 16) body(std::integral_constant<int, 16>{});
  else body(std::integral_constant<int, kMaxChunk>{});
}

// Forward tile side: 8 where it leaves fewer threads idle than 16 (a side of 8 or less).
inline int forward_tile(int H, int W) {
  auto busy = [&](int t) {
    const double tiles = double((H + t - 1) / t) * ((W + t - 1) / t);
    return double(H) * W / (tiles * t * t);
  };
  return busy(8) > busy(16) ? 8 : 16;
}

}  // namespace splat_device
