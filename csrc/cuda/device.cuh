// The only place the CUDA sources touch ATen/c10's CUDA API: the current
// stream, the device properties the launch configurations depend on, the
// device guard, the device check of an op's tensors, and the dispatch key the
// kernels are registered under; plus the two hooks the emulator needs in the
// sources (FASTNTK_SHARED, scratch_elements), which are plain CUDA here. Built with FASTNTK_CUDA_EMULATION (by g++,
// no nvcc; see csrc/emulation/cuda_emu.h) the same names map to the CPU
// emulator: tensors live on the CPU and the ops register as
// torch.ops.fastntk_emu.* under the CPU key, next to the real CPU kernels.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>

#if defined(FASTNTK_CUDA_EMULATION)
#include "../emulation/cuda_emu.h"
#else
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fastntk {
namespace cuda {

#if defined(FASTNTK_CUDA_EMULATION)

using Stream = emu::Stream;
inline Stream current_stream() { return Stream{}; }
inline int64_t sm_count() { return emu::config().sm_count; }
inline int64_t max_grid_x() { return emu::config().max_grid_x; }
// A driver's scratch budget in elements, shrunk by FASTNTK_EMU_MAX_SCRATCH.
inline int64_t scratch_elements(int64_t elements) {
  return emu::config().max_scratch > 0 ? std::min(elements, emu::config().max_scratch) : elements;
}

struct DeviceGuard {
  explicit DeviceGuard(c10::Device) {}
};

inline void check_device(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor (emulated CUDA), got ", t.device());
}

// TORCH_LIBRARY_IMPL for the CUDA kernels of this file.
#define FASTNTK_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastntk_emu, CPU, m)

#else

using Stream = cudaStream_t;
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }
inline int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
inline int64_t max_grid_x() { return at::cuda::getCurrentDeviceProperties()->maxGridSize[0]; }
constexpr int64_t scratch_elements(int64_t elements) { return elements; }

// A __shared__ array: FASTNTK_SHARED(float, tile, [32][33]) declares
// `__shared__ float tile[32][33]` (the emulator also poisons it per block).
#define FASTNTK_SHARED(type, name, dims) __shared__ type name dims

using DeviceGuard = c10::cuda::CUDAGuard;

inline void check_device(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor, got ", t.device());
}

// TORCH_LIBRARY_IMPL for the CUDA kernels of this file.
#define FASTNTK_CUDA_LIBRARY_IMPL(m) TORCH_LIBRARY_IMPL(fastntk, CUDA, m)

#endif

}  // namespace cuda
}  // namespace fastntk
