// Small kernels with known outcomes, so the tests can check the emulator
// itself: that it computes warp exchanges right, poisons shared memory, and
// refuses what a GPU would hang on or reject (tests/test_emulation.py).
#include "selftest.h"

#include <cmath>
#include <map>
#include <vector>

#include "cuda_emu.h"

namespace fastntk {
namespace emu {
namespace {

__global__ void exit_before_barrier(double* out) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  out[threadIdx.x] = 1.0;
}

__global__ void barrier_in_branch(double* out) {
  if (threadIdx.x < 32) __syncthreads();
  out[threadIdx.x] = 1.0;
}

__global__ void two_barrier_sites(double* out) {
  if (threadIdx.x & 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0;
}

// out[0] = sum of threadIdx.x over the first warp, by shuffles.
__global__ void warp_sum(double* out) {
  double v = threadIdx.x;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x == 0) out[0] = v;
  const unsigned int odd = __ballot_sync(0xffffffffu, threadIdx.x & 1);
  if (threadIdx.x == 0) out[1] = odd;
  const double from_lane_7 = __shfl_sync(0xffffffffu, double(threadIdx.x) * 10, 7);
  if (threadIdx.x == 0) out[2] = from_lane_7;
  out[3] = __all_sync(0xffffffffu, 1) + __any_sync(0xffffffffu, threadIdx.x == 31);
}

__global__ void shuffle_after_lane_exit(double* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0, 1);
}

__global__ void shuffle_partial_mask(double* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = __shfl_down_sync(0x0000ffffu, double(threadIdx.x), 1);
}

__global__ void nothing(double*) {}

// out[block] = the shared value before any thread of the block wrote it.
__global__ void shared_before_write(double* out) {
  FASTNTK_SHARED(double, cell, [1]);
  if (threadIdx.x == 0) out[blockIdx.x] = cell[0];
  __syncthreads();
  if (threadIdx.x == 0) cell[0] = 42.0;
}

// out[1] = the order in which warp 0 and warp 1 wrote (thread 0 first: 0).
__global__ void first_thread(double* out) {
  static int counter;
  if (threadIdx.x == 0) counter = 0;
  __syncthreads();
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = counter++;
}

using Kernel = void (*)(double*);

struct Case {
  Kernel kernel;
  dim3 grid, block;
};

const std::map<std::string, Case>& cases() {
  static const std::map<std::string, Case> c = {
      {"exit_before_barrier", {exit_before_barrier, dim3(1), dim3(64)}},
      {"barrier_in_branch", {barrier_in_branch, dim3(1), dim3(64)}},
      {"two_barrier_sites", {two_barrier_sites, dim3(1), dim3(64)}},
      {"warp_sum", {warp_sum, dim3(1), dim3(32)}},
      {"shuffle_after_lane_exit", {shuffle_after_lane_exit, dim3(1), dim3(32)}},
      {"shuffle_partial_mask", {shuffle_partial_mask, dim3(1), dim3(32)}},
      {"block_too_large", {nothing, dim3(1), dim3(1280)}},
      {"block_z_too_large", {nothing, dim3(1), dim3(1, 1, 65)}},
      {"grid_y_too_large", {nothing, dim3(1, 65536), dim3(32)}},
      {"empty_grid", {nothing, dim3(0), dim3(32)}},
      {"shared_before_write", {shared_before_write, dim3(3), dim3(64)}},
      {"first_thread", {first_thread, dim3(1), dim3(64)}},
  };
  return c;
}

}  // namespace

std::vector<std::string> selftest_names() {
  std::vector<std::string> names;
  for (const auto& [name, c] : cases()) names.push_back(name);
  return names;
}

std::vector<double> run_selftest(const std::string& name) {
  const auto it = cases().find(name);
  TORCH_CHECK(it != cases().end(), "no emulator self-test named '", name, "'");
  std::vector<double> out(1024, -1.0);
  launch(LaunchGrid(it->second.grid), it->second.block, 0, it->second.kernel, out.data());
  return out;
}

}  // namespace emu
}  // namespace fastntk
