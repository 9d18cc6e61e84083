// The splat kernels' own source on the CPU: splat_device.cuh and the launchers of
// splat_launch.h compiled by a host C++ compiler against emulate.h, as the torch extension
// behind backend="emulated" (kernels/build.py: load_emulated). Same checks, tile choice,
// channel chunks and dtype dispatch as the CUDA build; CPU tensors.
#include "splat.h"

constexpr c10::DeviceType kSplatDevice = c10::DeviceType::CPU;
constexpr bool kPoisonOutputs = true;

#include "emulate.h"

#define SPLAT_LAUNCH(kernel, grid, block, ...) ::emu::launch(kernel, grid, block, __VA_ARGS__)
#define SPLAT_DEVICE_GUARD(device) (void)(device)

#include "splat_dispatch.h"
#include "splat_host.h"

namespace {

void configure(int64_t seed, const std::string& mode, bool check_shared) {
  TORCH_CHECK(mode == "fibers" || mode == "threads", "mode must be 'fibers' or 'threads', got '",
              mode, "'");
  auto& cfg = emu::config();
  cfg.seed = static_cast<uint64_t>(seed);
  cfg.mode = mode == "fibers" ? emu::Mode::fibers : emu::Mode::threads;
  cfg.check_shared = check_shared;
}

pybind11::dict settings() {
  const auto& cfg = emu::config();
  const auto& st = emu::stats();
  pybind11::dict d;
  d["seed"] = cfg.seed;
  d["mode"] = cfg.mode == emu::Mode::fibers ? "fibers" : "threads";
  d["check_shared"] = cfg.check_shared;
  d["launches"] = st.launches;
  d["blocks"] = st.blocks;
  d["switches"] = st.switches;
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  define_splat_ops(m);
  m.def("configure", &configure, pybind11::arg("seed") = 0, pybind11::arg("mode") = "fibers",
        pybind11::arg("check_shared") = true,
        "seed: block order and thread resumption order; mode: 'fibers' (one OS thread) or "
        "'threads' (one OS thread per CUDA thread); check_shared: shadow race and "
        "uninitialised-read checks of shared memory (fibers only)");
  m.def("settings", &settings, "the configuration and counters (launches, blocks, switches)");
}
