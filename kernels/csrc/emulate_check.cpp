// Standalone driver of the emulated splat kernels (no torch): the kernels of
// splat_device.cuh through the launchers of splat_launch.h, on heap buffers of exactly
// their sizes, so that a build with -fsanitize=address reports any out-of-bounds global
// read or write, and a build with -fsanitize=thread in --mode threads (one OS thread per
// CUDA thread) reports any unsynchronised access between two threads. Every case is also
// compared with a float64 brute-force sum of the definition (kernels/__init__.py): the
// forward, the feature gradient and the opacity gradient (the geometry gradients are
// checked against the float64 reference by tests/test_splat_kernel.py).
//
// Usage: emulate_check [--mode fibers|threads] [--no-shared-check] [--seed S]
//                      [--forward-only] [--case B,N,C,H,W[,mean_range]]...
// Exit status: 0 all cases agree; 1 a result differs from the brute force (norm-relative
// error over 1e-4, where correct fp32 arithmetic gives about 1e-6); 2 the emulation
// reported an error (race, uninitialised shared read, misuse); 3 bad usage.
#include "emulate.h"

#define SPLAT_LAUNCH(kernel, grid, block, ...) ::emu::launch(kernel, grid, block, __VA_ARGS__)

#include <cstdio>

#include "splat_launch.h"

namespace {

struct Case {
  int B, N, C, H, W;
  float mean_range;
};

constexpr float kCutoff = 11.0825338f;  // 2 ln 255, as kernels.DEFAULT_CUTOFF
constexpr double kTolerance = 1e-4;

// Exactly sized: one element past the end is outside the allocation.
template <typename T>
std::unique_ptr<T[]> buffer(size_t n) {
  return std::unique_ptr<T[]>(new T[n]);
}

double rel_error(const float* got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t k = 0; k < ref.size(); ++k) {
    num += (got[k] - ref[k]) * (got[k] - ref[k]);
    den += ref[k] * ref[k];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Returns true when the kernels agree with the float64 brute force.
bool run_case(const Case& c, bool backward, std::mt19937_64& rng) {
  const size_t BN = size_t(c.B) * c.N, map = size_t(c.B) * c.C * c.H * c.W;
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  auto means = buffer<float>(2 * BN), scales = buffer<float>(2 * BN), rot = buffer<float>(BN);
  auto feat = buffer<float>(BN * c.C), opac = buffer<float>(BN), go = buffer<float>(map);
  for (size_t k = 0; k < BN; ++k) {
    means[2 * k] = c.mean_range * uni(rng);
    means[2 * k + 1] = c.mean_range * uni(rng);
    scales[2 * k] = 0.3f + 1.8f * (uni(rng) + 1.f);
    scales[2 * k + 1] = 0.3f + 1.8f * (uni(rng) + 1.f);
    rot[k] = 3.14159265f * uni(rng);
    opac[k] = 0.75f + 0.25f * uni(rng);
    for (int ch = 0; ch < c.C; ++ch) feat[k * c.C + ch] = uni(rng);
  }
  for (size_t k = 0; k < map; ++k) go[k] = uni(rng);
  auto out = buffer<float>(map);
  auto g_means = buffer<float>(2 * BN), g_scales = buffer<float>(2 * BN);
  auto g_rot = buffer<float>(BN), g_feat = buffer<float>(BN * c.C), g_opac = buffer<float>(BN);
  const splat_device::SplatShape shape{c.B, c.N, c.C, c.H, c.W, kCutoff};
  splat_device::launch_forward<float>(means.get(), scales.get(), rot.get(), feat.get(),
                                      opac.get(), out.get(), shape);
  if (backward) splat_device::launch_backward<float>(go.get(), means.get(), scales.get(), rot.get(),
                                       feat.get(), opac.get(), g_means.get(), g_scales.get(),
                                       g_rot.get(), g_feat.get(), g_opac.get(), shape);

  std::vector<double> r_out(map, 0.0), r_feat(BN * c.C, 0.0), r_opac(BN, 0.0);
  const size_t hw = size_t(c.H) * c.W;
  for (int b = 0; b < c.B; ++b) {
    for (int i = 0; i < c.N; ++i) {
      const size_t gi = size_t(b) * c.N + i;
      const double mx = (means[2 * gi] + 1.0) * 0.5 * c.W - 0.5;
      const double my = (means[2 * gi + 1] + 1.0) * 0.5 * c.H - 0.5;
      const double cs = std::cos(double(rot[gi])), sn = std::sin(double(rot[gi]));
      for (int y = 0; y < c.H; ++y) {
        for (int x = 0; x < c.W; ++x) {
          const double dx = x - mx, dy = y - my;
          const double a = (cs * dx + sn * dy) / scales[2 * gi];
          const double bb = (cs * dy - sn * dx) / scales[2 * gi + 1];
          const double q = a * a + bb * bb;
          if (q > kCutoff) continue;
          const double g = std::exp(-0.5 * q), w = opac[gi] * g;
          double h = 0;
          for (int ch = 0; ch < c.C; ++ch) {
            const size_t p = (size_t(b) * c.C + ch) * hw + size_t(y) * c.W + x;
            r_out[p] += w * feat[gi * c.C + ch];
            r_feat[gi * c.C + ch] += w * go[p];
            h += go[p] * feat[gi * c.C + ch];
          }
          r_opac[gi] += g * h;
        }
      }
    }
  }
  const double e_out = rel_error(out.get(), r_out);
  const double e_feat = backward ? rel_error(g_feat.get(), r_feat) : 0.0;
  const double e_opac = backward ? rel_error(g_opac.get(), r_opac) : 0.0;
  bool finite = true;
  if (!backward) {
    std::printf("case B=%d N=%d C=%d H=%d W=%d: forward %.1e%s\n", c.B, c.N, c.C, c.H, c.W,
                e_out, e_out < kTolerance ? "" : "  MISMATCH");
    return e_out < kTolerance;
  }
  for (size_t k = 0; k < 2 * BN; ++k) {
    finite = finite && std::isfinite(g_means[k]) && std::isfinite(g_scales[k]);
  }
  for (size_t k = 0; k < BN; ++k) finite = finite && std::isfinite(g_rot[k]);
  const bool ok = finite && e_out < kTolerance && e_feat < kTolerance && e_opac < kTolerance;
  std::printf("case B=%d N=%d C=%d H=%d W=%d: forward %.1e, grad features %.1e, grad opacity "
              "%.1e%s%s\n", c.B, c.N, c.C, c.H, c.W, e_out, e_feat, e_opac,
              finite ? "" : ", NON-FINITE geometry gradient", ok ? "" : "  MISMATCH");
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Case> cases;
  bool backward = true;
  for (int k = 1; k < argc; ++k) {
    const std::string arg = argv[k];
    if (arg == "--mode" && k + 1 < argc) {
      const std::string mode = argv[++k];
      if (mode != "fibers" && mode != "threads") return std::fprintf(stderr, "bad --mode\n"), 3;
      emu::config().mode = mode == "fibers" ? emu::Mode::fibers : emu::Mode::threads;
    } else if (arg == "--forward-only") {
      backward = false;
    } else if (arg == "--no-shared-check") {
      emu::config().check_shared = false;
    } else if (arg == "--seed" && k + 1 < argc) {
      emu::config().seed = std::stoull(argv[++k]);
    } else if (arg == "--case" && k + 1 < argc) {
      Case c{0, 0, 0, 0, 0, 1.2f};
      if (std::sscanf(argv[++k], "%d,%d,%d,%d,%d,%f", &c.B, &c.N, &c.C, &c.H, &c.W,
                      &c.mean_range) < 5 || c.B < 1 || c.N < 0 || c.C < 1 || c.H < 1 || c.W < 1) {
        return std::fprintf(stderr, "bad --case %s (B,N,C,H,W[,mean_range])\n", argv[k]), 3;
      }
      cases.push_back(c);
    } else {
      std::fprintf(stderr, "usage: %s [--mode fibers|threads] [--no-shared-check] [--seed S] "
                   "[--forward-only] [--case B,N,C,H,W[,mean_range]]...\n", argv[0]);
      return 3;
    }
  }
  if (cases.empty()) {  // both forward tiles, two Gaussian batches, partial chunks, off-map
    cases = {{2, 40, 3, 20, 20, 1.2f}, {1, 300, 5, 16, 16, 1.1f}, {1, 20, 33, 12, 24, 1.2f},
             {1, 70, 2, 18, 34, 1.6f}};
  }
  std::mt19937_64 rng(emu::config().seed + 1);
  bool ok = true;
  try {
    for (const Case& c : cases) ok = run_case(c, backward, rng) && ok;
  } catch (const std::exception& err) {
    std::printf("emulation error: %s\n", err.what());
    return 2;
  }
  return ok ? 0 : 1;
}
