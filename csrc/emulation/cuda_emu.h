// A CPU emulation of the CUDA execution model, so that the kernels and
// drivers of csrc/cuda/*.cu compile with g++ (FASTNTK_CUDA_EMULATION, no
// nvcc) and run on the CPU thread by thread, under AddressSanitizer and
// UndefinedBehaviorSanitizer. It is a test harness, not a backend: the module
// it builds registers the CUDA drivers as torch.ops.fastntk_emu.* (CPU key).
//
// How it runs a launch:
// - The launch is checked against the hardware limits first (block <= 1024
//   threads, x/y <= 1024, z <= 64; grid x <= max grid x, y/z <= 65535, no
//   zero dimension; static + dynamic shared memory <= 48 KB without opt-in)
//   and refused with the launch's file:line, like a cudaErrorInvalidConfiguration.
// - Blocks run one after another. The threads of a block run as cooperative
//   fibers (ucontext, one stack each, annotated for ASan's fiber support):
//   a thread runs until it reaches a barrier or exits, then another runnable
//   thread runs. __syncthreads releases when every thread of the block waits
//   there; __syncwarp and the warp intrinsics (__shfl_*_sync, __ballot_sync,
//   __any_sync, __all_sync) when every lane of their mask waits at the same
//   operation, and they exchange values then. A lane in a mask that does not
//   exist, has exited, or waits elsewhere, and a barrier that some threads
//   can no longer reach, are reported as a divergent barrier with the file
//   and line of each waiting site, instead of hanging.
// - __shared__ variables are FASTNTK_SHARED declarations: function statics
//   (so ASan puts redzones around them) filled with 0xFF bytes (NaN for
//   float and double) when the block first reaches them, never zero and never
//   the previous block's values.
// - Knobs (environment, read once): FASTNTK_EMU_SEED=s picks, at every
//   switch, a random runnable thread of the warp that ran last, or of the
//   block when that warp has none (and runs blocks in a random order),
//   instead of the lowest-numbered one; FASTNTK_EMU_SMS (default 4) and
//   FASTNTK_EMU_MAX_GRID_X (default 2^31 - 1) shrink the pretend GPU, so
//   grid-stride loops loop and grids split; FASTNTK_EMU_MAX_SCRATCH shrinks
//   the drivers' scratch budget (cuda::scratch_elements), so row blocks and
//   layer passes split.
//
// What it cannot see:
// - Races on global memory between threads: fibers never interleave inside
//   a statement, only at barriers, so a read-modify-write race between two
//   threads (or two blocks: blocks never overlap) gives the sequential answer.
//   The default order runs the lowest-numbered runnable thread (warp 0 races
//   ahead of the others); FASTNTK_EMU_SEED varies the order between barriers.
// - Timing, occupancy, memory coalescing, bank conflicts, register pressure
//   (make cuda-check reports registers, shared memory and spills per kernel).
// - Device arithmetic: TF32 and cuBLAS (the drivers' at::matmul runs on the
//   CPU), fused multiply-adds and the device math library's rounding.
// - Code under __CUDA_ARCH__ (the host branch runs instead): keep such
//   branches small. Today only select_positive in ntk_common.h has one.
// - Streams and asynchrony: a launch finishes before it returns.
// - Dynamic shared memory (extern __shared__) and atomics are not provided:
//   a kernel that uses them does not compile here.
#pragma once

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// CUDA's vocabulary, as host C++.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
};

namespace fastntk {
namespace emu {

struct Config {
  int64_t sm_count;
  int64_t max_grid_x;
  int64_t max_scratch;  // <= 0: the drivers' own budget
  bool randomize;
  uint64_t seed;
};

// The knobs, read from the environment on first use.
const Config& config();

// Replaces the knobs (tests use it to shrink the GPU in-process); returns the old ones.
Config set_config(const Config& c);

struct Stream {};

// A launch's grid, and the file and line of the call that launched it
// (captured at the call site by the default arguments).
struct LaunchGrid {
  dim3 dims;
  const char* file;
  int line;
  LaunchGrid(dim3 d, const char* f = __builtin_FILE(), int l = __builtin_LINE()) : dims(d), file(f), line(l) {}
  LaunchGrid(unsigned int x, const char* f = __builtin_FILE(), int l = __builtin_LINE())
      : dims(x), file(f), line(l) {}
};

namespace detail {

extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;

// Runs body once per thread of every block (the body reads threadIdx etc.);
// throws c10::Error on a bad configuration or a divergent barrier.
void run_grid(const LaunchGrid& grid, dim3 block, size_t shared_bytes, const std::function<void()>& body);

// A warp-level operation of the calling thread: waits until every lane of
// mask arrives at the same operation, then returns the values the lanes
// passed (lanes outside mask read as 0) and which lanes took part.
struct WarpValues {
  uint64_t value[32];
  unsigned int mask;
  unsigned int lane;
};
const WarpValues& warp_exchange(const char* op, unsigned int mask, uint64_t value, const char* file, int line);

// A __syncthreads of the calling thread.
void sync_block(const char* file, int line);

// A FASTNTK_SHARED variable reached by the calling thread: filled with 0xFF
// the first time in each block.
void shared_reached(void* address, size_t bytes);

// A report from inside a kernel (bad intrinsic argument): aborts the launch.
[[noreturn]] void kernel_error(const std::string& message, const char* file, int line);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "warp intrinsics exchange values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}

template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// The lane a shuffle reads: src within the caller's width-segment, else the
// caller's own value (as on the GPU); reading a lane outside mask is undefined
// on the GPU and an error here.
template <typename T>
T shuffle_read(const WarpValues& w, int src, int width, const char* file, int line) {
  if (width <= 0 || width > 32 || (width & (width - 1)))
    kernel_error("shuffle width must be a power of 2 in [1, 32], got " + std::to_string(width), file, line);
  const int base = static_cast<int>(w.lane) & ~(width - 1);
  if (src < base || src >= base + width) src = static_cast<int>(w.lane);
  if (!((w.mask >> src) & 1u))
    kernel_error("shuffle reads lane " + std::to_string(src) + ", which is not in the mask", file, line);
  return from_bits<T>(w.value[src]);
}

}  // namespace detail

// kernel<<<grid, block, shared_bytes>>>(args...): the arguments are converted
// to the kernel's parameter types once, and every thread gets its own copy.
template <typename... Params, typename... Args>
void launch(const LaunchGrid& grid, dim3 block, size_t shared_bytes, void (*kernel)(Params...), Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  const std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  detail::run_grid(grid, block, shared_bytes, [&] { std::apply(kernel, params); });
}

}  // namespace emu
}  // namespace fastntk

// The built-in variables: read-only views of the running thread's indices.
inline const uint3& threadIdx = fastntk::emu::detail::thread_idx;
inline const uint3& blockIdx = fastntk::emu::detail::block_idx;
inline const dim3& blockDim = fastntk::emu::detail::block_dim;
inline const dim3& gridDim = fastntk::emu::detail::grid_dim;
constexpr int warpSize = 32;

// __shared__ storage: see the header comment.
#define FASTNTK_SHARED(type, name, dims) \
  static type name dims;                 \
  ::fastntk::emu::detail::shared_reached(&name, sizeof(name))

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  fastntk::emu::detail::sync_block(file, line);
}

inline void __syncwarp(unsigned int mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  fastntk::emu::detail::warp_exchange("__syncwarp", mask, 0, file, line);
}

template <typename T>
T __shfl_sync(unsigned int mask, T v, int src_lane, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  const auto& w = fastntk::emu::detail::warp_exchange("__shfl_sync", mask, fastntk::emu::detail::to_bits(v), file, line);
  const int base = static_cast<int>(w.lane) & ~(width - 1);
  return fastntk::emu::detail::shuffle_read<T>(w, base + (src_lane & (width - 1)), width, file, line);
}

template <typename T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  const auto& w =
      fastntk::emu::detail::warp_exchange("__shfl_down_sync", mask, fastntk::emu::detail::to_bits(v), file, line);
  return fastntk::emu::detail::shuffle_read<T>(w, static_cast<int>(w.lane + delta), width, file, line);
}

template <typename T>
T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  const auto& w =
      fastntk::emu::detail::warp_exchange("__shfl_up_sync", mask, fastntk::emu::detail::to_bits(v), file, line);
  return fastntk::emu::detail::shuffle_read<T>(w, static_cast<int>(w.lane) - static_cast<int>(delta), width, file,
                                               line);
}

template <typename T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  const auto& w =
      fastntk::emu::detail::warp_exchange("__shfl_xor_sync", mask, fastntk::emu::detail::to_bits(v), file, line);
  return fastntk::emu::detail::shuffle_read<T>(w, static_cast<int>(w.lane) ^ lane_mask, width, file, line);
}

inline unsigned int __ballot_sync(unsigned int mask, int predicate, const char* file = __builtin_FILE(),
                                  int line = __builtin_LINE()) {
  const auto& w = fastntk::emu::detail::warp_exchange("__ballot_sync", mask, predicate != 0, file, line);
  unsigned int ballot = 0;
  for (int l = 0; l < 32; ++l)
    if (((w.mask >> l) & 1u) && w.value[l]) ballot |= 1u << l;
  return ballot;
}

inline int __any_sync(unsigned int mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return __ballot_sync(mask, predicate, file, line) != 0;
}

inline int __all_sync(unsigned int mask, int predicate, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return __ballot_sync(mask, predicate, file, line) == mask;
}
