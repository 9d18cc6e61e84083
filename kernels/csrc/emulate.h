// CUDA's execution model on the CPU, for the splat kernels (splat_device.cuh).
//
// A host C++ compiler builds the kernels' own source against this header: the CUDA
// qualifiers, dim3, threadIdx / blockIdx / blockDim / gridDim, shared memory (through the
// SHARED_ARRAY macros of splat_device.cuh), __syncthreads, __ballot_sync, __popc and
// __shfl_down_sync. Semantics as in the CUDA programming guide:
//   * the blocks of a grid run one after another, in an order shuffled by a seed
//     (CUDA promises no order);
//   * the threads of a block run concurrently: as fibers on one OS thread (fast; the
//     order in which a block's threads are resumed is shuffled by the same seed), or as
//     one OS thread each (slow; real concurrency, for ThreadSanitizer);
//   * __syncthreads is a block barrier; the warp primitives exchange values among the
//     32 lanes of a warp (threads 32w .. 32w+31) once all 32 have reached them.
// Misuse is an error (std::runtime_error naming the block, thread and cause), never a
// hang or a silent value: a warp primitive with a mask other than the full one, or
// reached by fewer than 32 live lanes, or lanes of one warp in different primitives; a
// __syncthreads not reached by every thread of the block; a block shape the kernels
// cannot have (not a whole number of warps, 2-D or 3-D blocks, more than 1024 threads, a
// grid beyond CUDA's limits); shared memory over 48 KiB; a deadlock of any other kind
// (fibers: no thread can move; threads: 60 s without progress).
//
// Shared memory: each block gets an arena filled with 0xFF bytes (NaN as float, -1 as
// int) when it starts. With check_shared (fibers only) every shared access goes through a
// shadow record per element (last writer and its barrier epoch, readers of the epoch):
//   * a read of an element no thread of this block has written is an error;
//   * a read of an element another thread wrote since the last __syncthreads, a write of
//     one another thread wrote or read since then: a race, an error;
//   * an index outside the declared array is an error.
// Only __syncthreads orders shared memory between threads (the warp primitives exchange
// registers, and since Volta the lanes of a warp need __syncwarp to order memory).
// Global memory is plain host memory: its bounds are checked by building the standalone
// driver (emulate_check.cpp) with AddressSanitizer.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

// Fibers switch with a few lines of x86-64 assembly, elsewhere (or with -DEMU_UCONTEXT)
// with ucontext, which is slower (a system call per switch).
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_ASM_SWITCH 1
#else
#define EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

// Under AddressSanitizer the fiber switches are announced to it, so that it knows which
// stack is current (an exception unwinding a fiber's stack is otherwise misreported).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN_START_SWITCH(save, bottom, size) __sanitizer_start_switch_fiber(save, bottom, size)
#define EMU_ASAN_FINISH_SWITCH(fake, bottom, size) __sanitizer_finish_switch_fiber(fake, bottom, size)
#else
#define EMU_ASAN_START_SWITCH(save, bottom, size) ((void)0)
#define EMU_ASAN_FINISH_SWITCH(fake, bottom, size) ((void)0)
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {

enum class Mode { fibers, threads };

struct Config {
  uint64_t seed = 0;         // block order and (fibers) the order threads are resumed in
  Mode mode = Mode::fibers;
  bool check_shared = true;  // shadow records (fibers only; threads leave it to TSan)
};

inline Config& config() {
  static Config c;
  return c;
}

struct Stats {
  uint64_t launches = 0, blocks = 0, switches = 0;  // switches: fiber resumptions
};

inline Stats& stats() {
  static Stats s;
  return s;
}

constexpr unsigned kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr size_t kSharedBytes = 48 * 1024;  // CUDA's limit on static shared memory
constexpr size_t kStackBytes = 128 * 1024;  // per fiber

struct Abort {};  // unwinds the threads of a failed block

struct Shadow {
  int32_t writer = -1, reader = -1;
  uint32_t write_epoch = 0, read_epoch = 0;  // 0: never (epochs start at 1)
  bool many_readers = false;
};

struct SharedDecl {
  std::string name;
  size_t offset, bytes;
  size_t shadow0, slots;
};

struct WarpState {
  unsigned arrived = 0, exited = 0;
  uint64_t generation = 0;
  const char* kind = nullptr;
  uint32_t values[kWarpSize], params[kWarpSize], results[kWarpSize];
};

struct Block;

struct Lane {
  Block* block = nullptr;
  uint3 tid{0, 0, 0};
  unsigned warp = 0, lane = 0;
  size_t declarations = 0;  // shared arrays this thread has declared
  const char* waiting = nullptr;
  bool done = false;
  void* sp = nullptr;  // fiber: saved stack pointer
  void* asan_fake_stack = nullptr;
#if !EMU_ASM_SWITCH
  ucontext_t context;
#endif
  char* stack = nullptr;
};

struct Block {
  uint3 idx{0, 0, 0};
  dim3 dim, grid;
  unsigned nthreads = 0;
  bool threaded = false, check_shared = false;
  std::vector<unsigned char> arena = std::vector<unsigned char>(kSharedBytes);
  size_t arena_used = 0;
  std::vector<SharedDecl> decls;
  std::vector<Shadow> shadow;
  unsigned bar_arrived = 0, exited = 0;
  uint32_t epoch = 1;  // completed __syncthreads + 1
  std::vector<WarpState> warps;
  uint64_t progress = 0;
  bool failed = false;
  std::string error;
  std::recursive_mutex mu;  // fail() may be called with it held or not
  std::condition_variable_any cv;  // __syncthreads
  std::vector<std::unique_ptr<std::condition_variable_any>> warp_cv;  // warp rounds
  void* scheduler_sp = nullptr;
  const void* scheduler_stack = nullptr;  // its bottom and size, for AddressSanitizer
  size_t scheduler_stack_size = 0;
#if !EMU_ASM_SWITCH
  ucontext_t scheduler;
#endif
  const std::function<void()>* body = nullptr;
};

inline thread_local Lane* tls_lane = nullptr;

inline Lane& lane() {
  if (tls_lane == nullptr) throw std::logic_error("emulate.h: CUDA built-in used outside a kernel");
  return *tls_lane;
}

// The lock of a block's shared state: a real mutex with OS threads, none with fibers.
class Guard {
 public:
  explicit Guard(Block& b) : lock_(b.mu, std::defer_lock) {
    if (b.threaded) lock_.lock();
  }
  std::unique_lock<std::recursive_mutex>& get() { return lock_; }

 private:
  std::unique_lock<std::recursive_mutex> lock_;
};

// Records the block's first error (with the block and thread it happened in), wakes every
// waiting thread and unwinds this one.
[[noreturn]] inline void fail(const std::string& what) {
  Lane& l = lane();
  Block& b = *l.block;
  Guard guard(b);
  if (!b.failed) {
    std::ostringstream msg;
    msg << "emulated kernel, block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z
        << ") thread " << l.tid.x << ": " << what;
    b.error = msg.str();
    b.failed = true;
  }
  if (b.threaded) {
    b.cv.notify_all();
    for (auto& cv : b.warp_cv) cv->notify_all();
  }
  throw Abort{};
}

void yield_to_scheduler(Lane& l);

// Waits (holding guard) until done() or the block failed; a failed block unwinds.
template <typename Done>
void wait_for(Block& b, Guard& guard, std::condition_variable_any& cv, const char* what,
              Done done) {
  Lane& l = lane();
  if (b.threaded) {
    while (!done() && !b.failed) {
      const uint64_t before = b.progress;
      if (cv.wait_for(guard.get(), std::chrono::seconds(60)) == std::cv_status::timeout &&
          b.progress == before && !done() && !b.failed) {
        fail(std::string("deadlock: no thread of the block moved for 60 s; this one waits in ") +
             what);
      }
    }
  } else {
    while (!done() && !b.failed) {
      l.waiting = what;
      yield_to_scheduler(l);
      l.waiting = nullptr;
    }
  }
  if (b.failed) throw Abort{};
}

inline void syncthreads() {
  Lane& l = lane();
  Block& b = *l.block;
  Guard guard(b);
  if (b.failed) throw Abort{};
  if (b.exited > 0) {
    fail("__syncthreads reached after " + std::to_string(b.exited) +
         " thread(s) of the block exited: every thread must reach it");
  }
  const uint32_t epoch = b.epoch;
  ++b.progress;
  if (++b.bar_arrived == b.nthreads) {
    b.bar_arrived = 0;
    ++b.epoch;
    if (b.threaded) b.cv.notify_all();
    return;
  }
  wait_for(b, guard, b.cv, "__syncthreads", [&] { return b.epoch != epoch; });
}

// One round of a warp primitive: every lane of the warp contributes value (and param);
// once all 32 have, combine(warp) fills results; each lane gets its own.
template <typename Combine>
uint32_t warp_round(const char* kind, unsigned mask, uint32_t value, uint32_t param,
                    Combine combine) {
  Lane& l = lane();
  Block& b = *l.block;
  Guard guard(b);
  if (b.failed) throw Abort{};
  if (mask != kFullMask) {
    std::ostringstream msg;
    msg << kind << " with mask 0x" << std::hex << mask
        << ": only the full mask is emulated (the kernels use no other)";
    fail(msg.str());
  }
  WarpState& w = b.warps[l.warp];
  if (w.exited > 0) {
    fail(std::string("full-mask ") + kind + " reached by fewer than 32 live lanes (" +
         std::to_string(w.exited) + " lane(s) of warp " + std::to_string(l.warp) + " exited)");
  }
  if (w.arrived == 0) {
    w.kind = kind;
  } else if (std::strcmp(w.kind, kind) != 0) {
    fail(std::string("lane ") + std::to_string(l.lane) + " reached " + kind +
         " while other lanes of its warp wait in " + w.kind);
  }
  w.values[l.lane] = value;
  w.params[l.lane] = param;
  const uint64_t generation = w.generation;
  ++b.progress;
  if (++w.arrived == kWarpSize) {
    combine(w);
    w.arrived = 0;
    ++w.generation;
    if (b.threaded) b.warp_cv[l.warp]->notify_all();
  } else {
    wait_for(b, guard, *b.warp_cv[l.warp], kind, [&] { return w.generation != generation; });
  }
  return w.results[l.lane];
}

// The end of a thread's kernel body (a return or the closing brace).
inline void thread_exit() {
  Lane& l = lane();
  Block& b = *l.block;
  Guard guard(b);
  if (b.failed) throw Abort{};
  ++b.exited;
  ++b.warps[l.warp].exited;
  ++b.progress;
  if (b.bar_arrived > 0) {
    fail("exited while " + std::to_string(b.bar_arrived) +
         " thread(s) wait in __syncthreads: every thread must reach it");
  }
  if (b.warps[l.warp].arrived > 0) {
    fail(std::string("exited while lanes of its warp wait in full-mask ") + b.warps[l.warp].kind +
         ", which is then reached by fewer than 32 live lanes");
  }
}

// ----- shared memory ---------------------------------------------------------------

inline std::string slot_name(const SharedDecl& d, size_t flat) {
  return d.name + " (element " + std::to_string(flat) + " of " + std::to_string(d.slots) + ")";
}

inline void shared_access(size_t decl, size_t flat, bool write) {
  Lane& l = lane();
  Block& b = *l.block;
  if (!b.check_shared) return;
  const SharedDecl& d = b.decls[decl];
  Shadow& s = b.shadow[d.shadow0 + flat];
  const int32_t t = static_cast<int32_t>(l.tid.x);
  const uint32_t e = b.epoch;
  if (write) {
    if (s.write_epoch == e && s.writer != t) {
      fail("race: writes shared " + slot_name(d, flat) + ", which thread " +
           std::to_string(s.writer) + " wrote since the last __syncthreads");
    }
    if (s.read_epoch == e && (s.many_readers || s.reader != t)) {
      fail("race: writes shared " + slot_name(d, flat) + ", which thread " +
           std::to_string(s.reader) + " read since the last __syncthreads");
    }
    s.writer = t;
    s.write_epoch = e;
    return;
  }
  if (s.write_epoch == 0) {
    fail("reads shared " + slot_name(d, flat) +
         ", which no thread of this block has written (its value is the 0xFF poison)");
  }
  if (s.write_epoch == e && s.writer != t) {
    fail("race: reads shared " + slot_name(d, flat) + ", which thread " +
         std::to_string(s.writer) + " wrote since the last __syncthreads");
  }
  if (s.read_epoch == e) {
    s.many_readers = s.many_readers || s.reader != t;
  } else {
    s.read_epoch = e;
    s.reader = t;
    s.many_readers = false;
  }
}

[[noreturn]] inline void shared_out_of_bounds(size_t decl, long index, long size) {
  fail("index " + std::to_string(index) + " out of bounds of shared " +
       lane().block->decls[decl].name + " (a dimension of size " + std::to_string(size) + ")");
}

template <typename T>
constexpr size_t slots_of() {
  if constexpr (std::is_array_v<T>) {
    return std::extent_v<T> * slots_of<std::remove_extent_t<T>>();
  } else {
    return 1;
  }
}

// One element of a shared array: reads and writes are checked against its shadow.
template <typename T>
class SharedRef {
 public:
  SharedRef(T* p, size_t decl, size_t flat) : p_(p), decl_(decl), flat_(flat) {}
  operator T() const {
    shared_access(decl_, flat_, false);
    return *p_;
  }
  SharedRef& operator=(const T& v) {
    shared_access(decl_, flat_, true);
    *p_ = v;
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }

 private:
  T* p_;
  size_t decl_, flat_;
};

// A view of N elements of T (T itself may be an array: rows of a 2-D array).
template <typename T, size_t N>
class SharedArray {
 public:
  SharedArray(T* data, size_t decl, size_t flat0) : data_(data), decl_(decl), flat0_(flat0) {}
  auto operator[](long i) const {
    if (i < 0 || i >= static_cast<long>(N)) shared_out_of_bounds(decl_, i, N);
    if constexpr (std::is_array_v<T>) {
      using Row = std::remove_extent_t<T>;
      return SharedArray<Row, std::extent_v<T>>(data_[i], decl_, flat0_ + i * slots_of<T>());
    } else {
      return SharedRef<T>(data_ + i, decl_, flat0_ + i);
    }
  }

 private:
  T* data_;
  size_t decl_, flat0_;
};

// `__shared__ T name[N]` of the current block: the first thread to reach the k-th
// declaration places it in the block's arena; the others get the same storage.
template <typename T, size_t N>
SharedArray<T, N> shared(const char* name) {
  Lane& l = lane();
  Block& b = *l.block;
  Guard guard(b);
  const size_t k = l.declarations++;
  constexpr size_t bytes = sizeof(T) * N;
  if (k == b.decls.size()) {
    const size_t align = alignof(T) < 16 ? alignof(T) : 16;
    const size_t offset = (b.arena_used + align - 1) / align * align;
    if (offset + bytes > kSharedBytes) {
      fail(std::string("shared ") + name + " takes the block's static shared memory past " +
           std::to_string(kSharedBytes) + " bytes");
    }
    b.decls.push_back({name, offset, bytes, b.shadow.size(), N * slots_of<T>()});
    b.shadow.resize(b.shadow.size() + N * slots_of<T>());
    b.arena_used = offset + bytes;
  } else if (k > b.decls.size() || b.decls[k].name != name || b.decls[k].bytes != bytes) {
    fail(std::string("declares shared ") + name + " where another thread declared " +
         (k < b.decls.size() ? b.decls[k].name : std::string("nothing")));
  }
  return SharedArray<T, N>(reinterpret_cast<T*>(b.arena.data() + b.decls[k].offset), k, 0);
}

// ----- fibers -----------------------------------------------------------------------

#if EMU_ASM_SWITCH
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save and continues on load (System V ABI).
extern "C" void emu_switch_context(void** save, void* load);
extern "C" void emu_fiber_start();
asm(R"(
    .text
    .p2align 4
    .weak emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context, @function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context

    .p2align 4
    .weak emu_fiber_start
    .hidden emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    callq *%rbx
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
#endif

[[noreturn]] inline void fiber_main(Lane* l) {
  Block& b = *l->block;
  EMU_ASAN_FINISH_SWITCH(nullptr, &b.scheduler_stack, &b.scheduler_stack_size);
  try {
    if (!b.failed) {
      (*b.body)();
      thread_exit();
    }
  } catch (const Abort&) {
  } catch (const std::exception& err) {
    if (!b.failed) {
      b.failed = true;
      b.error = std::string("emulated kernel: ") + err.what();
    }
  }
  l->done = true;
  EMU_ASAN_START_SWITCH(nullptr, b.scheduler_stack, b.scheduler_stack_size);  // for good
#if EMU_ASM_SWITCH
  emu_switch_context(&l->sp, b.scheduler_sp);
#else
  setcontext(&b.scheduler);
#endif
  __builtin_unreachable();
}

#if !EMU_ASM_SWITCH
inline thread_local Lane* tls_starting = nullptr;
inline void fiber_entry_ucontext() { fiber_main(tls_starting); }
#endif

inline void fiber_init(Lane& l) {
#if EMU_ASM_SWITCH
  auto top = reinterpret_cast<uintptr_t>(l.stack + kStackBytes) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<unsigned char*>(top - 80);  // 16-aligned; see the asm
  std::memset(frame, 0, 80);
  const uint32_t mxcsr = 0x1F80;
  const uint16_t fpcw = 0x037F;
  std::memcpy(frame, &mxcsr, 4);
  std::memcpy(frame + 4, &fpcw, 2);
  void* arg = &l;
  void (*entry)(Lane*) = fiber_main;
  std::memcpy(frame + 32, &arg, 8);    // r12: the lane
  std::memcpy(frame + 40, &entry, 8);  // rbx: fiber_main
  void (*start)() = emu_fiber_start;
  std::memcpy(frame + 56, &start, 8);  // return address of the first switch
  l.sp = frame;
#else
  getcontext(&l.context);
  l.context.uc_stack.ss_sp = l.stack;
  l.context.uc_stack.ss_size = kStackBytes;
  l.context.uc_link = nullptr;
  makecontext(&l.context, fiber_entry_ucontext, 0);
#endif
}

inline void fiber_resume(Block& b, Lane& l) {
  tls_lane = &l;
  ++stats().switches;
  [[maybe_unused]] void* fake_stack = nullptr;
  EMU_ASAN_START_SWITCH(&fake_stack, l.stack, kStackBytes);
#if EMU_ASM_SWITCH
  emu_switch_context(&b.scheduler_sp, l.sp);
#else
  if (l.sp == nullptr) {  // first resumption: start it
    l.sp = &l;
    tls_starting = &l;
  }
  swapcontext(&b.scheduler, &l.context);
#endif
  EMU_ASAN_FINISH_SWITCH(fake_stack, nullptr, nullptr);
  tls_lane = nullptr;
}

inline void yield_to_scheduler(Lane& l) {
  Block& b = *l.block;
  EMU_ASAN_START_SWITCH(&l.asan_fake_stack, b.scheduler_stack, b.scheduler_stack_size);
#if EMU_ASM_SWITCH
  emu_switch_context(&l.sp, b.scheduler_sp);
#else
  swapcontext(&l.context, &b.scheduler);
#endif
  EMU_ASAN_FINISH_SWITCH(l.asan_fake_stack, &b.scheduler_stack, &b.scheduler_stack_size);
}

inline std::string describe_deadlock(Block& b, const std::vector<Lane>& lanes) {
  std::ostringstream msg;
  msg << "emulated kernel, block (" << b.idx.x << "," << b.idx.y << "," << b.idx.z
      << "): deadlock, no thread can move:";
  unsigned at_barrier = 0;
  for (const Lane& l : lanes) at_barrier += l.waiting && std::strcmp(l.waiting, "__syncthreads") == 0;
  if (at_barrier) msg << " " << at_barrier << " of " << b.nthreads << " thread(s) wait in __syncthreads;";
  for (size_t w = 0; w < b.warps.size(); ++w) {
    if (b.warps[w].arrived) {
      msg << " warp " << w << ": " << b.warps[w].arrived << " of 32 lanes wait in full-mask "
          << b.warps[w].kind << ";";
    }
  }
  msg << " " << b.exited << " thread(s) exited";
  return msg.str();
}

inline void run_block_fibers(Block& b, std::vector<Lane>& lanes, std::mt19937_64& rng) {
  std::vector<unsigned> order(lanes.size());
  for (unsigned i = 0; i < order.size(); ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  for (Lane& l : lanes) fiber_init(l);
  for (;;) {
    const uint64_t before = b.progress;
    bool running = false;
    for (unsigned i : order) {
      if (lanes[i].done) continue;
      running = true;
      fiber_resume(b, lanes[i]);
    }
    if (!running) return;
    if (!b.failed && b.progress == before) {
      b.error = describe_deadlock(b, lanes);
      b.failed = true;  // the next pass unwinds every thread
    }
  }
}

inline void run_block_threads(Block& b, std::vector<Lane>& lanes) {
  std::vector<std::thread> threads;
  threads.reserve(lanes.size());
  for (Lane& l : lanes) {
    threads.emplace_back([&b, &l] {
      tls_lane = &l;
      try {
        (*b.body)();
        thread_exit();
      } catch (const Abort&) {
      } catch (const std::exception& err) {
        std::lock_guard<std::recursive_mutex> lock(b.mu);
        if (!b.failed) {
          b.failed = true;
          b.error = std::string("emulated kernel: ") + err.what();
        }
        b.cv.notify_all();
        for (auto& cv : b.warp_cv) cv->notify_all();
      }
      tls_lane = nullptr;
    });
  }
  for (std::thread& t : threads) t.join();
}

inline void check_shape(dim3 grid, dim3 block) {
  auto refuse = [&](const std::string& why) {
    std::ostringstream msg;
    msg << "emulated launch of grid (" << grid.x << "," << grid.y << "," << grid.z
        << ") x block (" << block.x << "," << block.y << "," << block.z << "): " << why;
    throw std::runtime_error(msg.str());
  };
  if (block.y != 1 || block.z != 1) refuse("only 1-D blocks are emulated (the kernels use no other)");
  if (block.x == 0 || block.x % kWarpSize != 0 || block.x > 1024) {
    refuse("a block must be 32 to 1024 threads in whole warps");
  }
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) refuse("an empty grid is an invalid launch");
  if (grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535) {
    refuse("beyond CUDA's grid limits (x < 2^31, y and z <= 65535)");
  }
}

// kernel<<<grid, block>>>(args...) under the emulation; throws std::runtime_error on any
// error of a block (after unwinding all of its threads).
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, Args... args) {
  check_shape(grid, block);
  const Config cfg = config();
  const std::function<void()> body = [&] { kernel(args...); };
  std::mt19937_64 rng(cfg.seed * 0x9E3779B97F4A7C15ull + stats().launches++);
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);

  auto b = std::make_unique<Block>();
  b->dim = block;
  b->grid = grid;
  b->nthreads = block.x;
  b->threaded = cfg.mode == Mode::threads;
  b->check_shared = cfg.check_shared && !b->threaded;
  b->body = &body;
  for (unsigned w = 0; w < block.x / kWarpSize; ++w) {
    b->warp_cv.push_back(std::make_unique<std::condition_variable_any>());
  }
  std::vector<Lane> lanes(block.x);
  std::unique_ptr<char[]> stacks;
  if (!b->threaded) stacks.reset(new char[kStackBytes * block.x]);
  for (uint64_t id : order) {
    b->idx = {static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
              static_cast<unsigned>(id / grid.x / grid.y)};
    std::fill(b->arena.begin(), b->arena.end(), 0xFF);
    b->arena_used = 0;
    b->decls.clear();
    b->shadow.clear();
    b->bar_arrived = b->exited = 0;
    b->epoch = 1;
    b->warps.assign(block.x / kWarpSize, WarpState{});
    b->progress = 0;
    for (unsigned t = 0; t < block.x; ++t) {
      Lane& l = lanes[t];
      l = Lane{};
      l.block = b.get();
      l.tid = {t, 0, 0};
      l.warp = t / kWarpSize;
      l.lane = t % kWarpSize;
      if (stacks) l.stack = stacks.get() + size_t(t) * kStackBytes;
    }
    if (b->threaded) {
      run_block_threads(*b, lanes);
    } else {
      run_block_fibers(*b, lanes, rng);
    }
    ++stats().blocks;
    if (b->failed) throw std::runtime_error(b->error);
  }
}

}  // namespace emu

// The CUDA names the kernels use.
#define threadIdx (::emu::lane().tid)
#define blockIdx (::emu::lane().block->idx)
#define blockDim (::emu::lane().block->dim)
#define gridDim (::emu::lane().block->grid)
#define SHARED_ARRAY(type, name, n) auto name = ::emu::shared<type, (n)>(#name)
#define SHARED_ARRAY_2D(type, name, n, m) auto name = ::emu::shared<type[m], (n)>(#name)

inline void __syncthreads() { ::emu::syncthreads(); }

inline unsigned __ballot_sync(unsigned mask, int predicate) {
  return ::emu::warp_round("__ballot_sync", mask, predicate != 0, 0, [](::emu::WarpState& w) {
    unsigned bits = 0;
    for (unsigned i = 0; i < ::emu::kWarpSize; ++i) bits |= (w.values[i] & 1u) << i;
    for (unsigned i = 0; i < ::emu::kWarpSize; ++i) w.results[i] = bits;
  });
}

inline int __popc(unsigned v) { return __builtin_popcount(v); }

// Lane i gets var of lane i + delta, or its own where i + delta is past the warp.
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta) {
  static_assert(sizeof(T) == 4 && std::is_trivially_copyable_v<T>, "4-byte values only");
  uint32_t bits;
  std::memcpy(&bits, &var, 4);
  bits = ::emu::warp_round("__shfl_down_sync", mask, bits, delta, [](::emu::WarpState& w) {
    for (unsigned i = 0; i < ::emu::kWarpSize; ++i) {
      const unsigned src = i + w.params[i];
      w.results[i] = src < ::emu::kWarpSize ? w.values[src] : w.values[i];
    }
  });
  std::memcpy(&var, &bits, 4);
  return var;
}
