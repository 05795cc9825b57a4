// Launch helpers shared by the CUDA kernels: the block size, a grid size for
// grid-stride loops over 64-bit element counts, and a block-wide sum.
#pragma once

#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstdint>

namespace fastntk {
namespace cuda {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU a few times over; kernels loop with a 64-bit
// grid stride, so any element count is covered whatever the grid.
inline unsigned int grid_size(int64_t numel) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
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
