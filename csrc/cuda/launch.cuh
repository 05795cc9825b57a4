// Launch helpers shared by the CUDA kernels: the one kernel launch every
// driver goes through (with the launch-error check), the block size, a grid
// size for grid-stride loops over 64-bit element counts, and a block-wide sum.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>

#include "device.cuh"

namespace fastntk {
namespace cuda {

constexpr int kThreads = 256;

// kernel<<<grid, block, shared_bytes, stream>>>(args...), then the launch
// error check. Under emulation the grid carries the caller's file and line,
// which the emulator's reports name.
#if defined(FASTNTK_CUDA_EMULATION)
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), emu::LaunchGrid grid, dim3 block, size_t shared_bytes, Stream,
            Args&&... args) {
  emu::launch(grid, block, shared_bytes, kernel, std::forward<Args>(args)...);
}
#else
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes, Stream stream,
            Args&&... args) {
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

// Enough blocks to fill the GPU a few times over; kernels loop with a 64-bit
// grid stride, so any element count is covered whatever the grid.
inline unsigned int grid_size(int64_t numel) {
  const int64_t sms = sm_count();
  const int64_t wanted = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(wanted, sms * 32)));
}

// Sum of v over the block (blockDim.x == kThreads). Every thread gets the
// result. `shared` holds kThreads / 32 values; reusable after return.
template <typename T>
__device__ __forceinline__ T block_reduce_sum(T v, T* shared) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  T total = T(0);
  for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  __syncthreads();  // let the caller reuse `shared`
  return total;
}

}  // namespace cuda
}  // namespace fastntk
