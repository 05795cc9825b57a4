// CUDA ntk_diag_accumulate: out[i] += (weight_scale |a_i|^2 + bias_scale) *
// <d_ik, d_ik'> for every sample i, never forming an N x N matrix. Two
// reduction kernels: one block per sample computes the activation factor
// s_i = weight_scale |a_i|^2 + bias_scale, then one block per (sample, output
// pair) reduces the delta dot product and adds s_i times it into out. Sums
// accumulate in double for both dtypes, like the CPU kernel (the reduction is
// memory-bound, so the wider sum costs nothing).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../ntk_common.h"
#include "launch.cuh"

namespace fastntk {
namespace {

// Grid y is at most this many blocks; more output pairs loop.
constexpr int64_t kMaxGridY = 65535;

// s[i] = weight_scale * |a_i|^2 + bias_scale; a: (N, p) contiguous. Grid x
// strides over samples.
template <typename scalar_t, typename acc_t>
__global__ void activation_factor_kernel(acc_t* __restrict__ s,
                                         const scalar_t* __restrict__ a,
                                         int64_t n_samples, int64_t p,
                                         acc_t weight_scale, acc_t bias_scale) {
  __shared__ acc_t shared[cuda::kThreads / 32];
  for (int64_t i = blockIdx.x; i < n_samples; i += gridDim.x) {
    const scalar_t* ai = a + i * p;
    acc_t sq = 0;
    for (int64_t q = threadIdx.x; q < p; q += blockDim.x) {
      const acc_t v = static_cast<acc_t>(ai[q]);
      sq += v * v;
    }
    sq = cuda::block_reduce_sum(sq, shared);
    if (threadIdx.x == 0) s[i] = bias_scale + weight_scale * sq;
  }
}

// Block (x, y) handles sample x and output pairs y, y + gridDim.y, ...
// Pairs: trace 1 (sum over all k of |d_ik|^2, i.e. the whole (K n) row);
// per_output K (k, k); full K (K + 1) / 2 (k <= k'), mirrored into (k', k).
// d: (N, K, n) contiguous; s: (N,) or nullptr for a factor of 1.
template <typename scalar_t, typename acc_t>
__global__ void diag_accumulate_kernel(OutputMode mode, scalar_t* __restrict__ out,
                                       const scalar_t* __restrict__ d,
                                       const acc_t* __restrict__ s,
                                       acc_t bias_scale, int64_t n_samples,
                                       int64_t k_out, int64_t n) {
  __shared__ acc_t shared[cuda::kThreads / 32];
  const int64_t n_pairs = mode == OutputMode::kFull        ? k_out * (k_out + 1) / 2
                          : mode == OutputMode::kPerOutput ? k_out
                                                           : 1;
  for (int64_t i = blockIdx.x; i < n_samples; i += gridDim.x) {
    const scalar_t* di = d + i * k_out * n;
    const acc_t si = s ? s[i] : bias_scale;
    for (int64_t pair = blockIdx.y; pair < n_pairs; pair += gridDim.y) {
      int64_t k = 0, kk = 0, len = n;
      switch (mode) {
        case OutputMode::kTrace:
          len = k_out * n;
          break;
        case OutputMode::kPerOutput:
          k = kk = pair;
          break;
        default: {  // kFull: pairs enumerate k <= k' row by row
          int64_t rem = pair;
          while (rem >= k_out - k) rem -= k_out - k++;
          kk = k + rem;
          break;
        }
      }
      const scalar_t* x = di + k * n;
      const scalar_t* y = di + kk * n;
      acc_t dot = 0;
      for (int64_t j = threadIdx.x; j < len; j += blockDim.x)
        dot += static_cast<acc_t>(x[j]) * static_cast<acc_t>(y[j]);
      dot = cuda::block_reduce_sum(dot, shared);
      if (threadIdx.x == 0) {
        const scalar_t v = static_cast<scalar_t>(si * dot);
        switch (mode) {
          case OutputMode::kTrace:
            out[i] += v;
            break;
          case OutputMode::kPerOutput:
            out[i * k_out + k] += v;
            break;
          default:
            out[(i * k_out + k) * k_out + kk] += v;
            if (kk != k) out[(i * k_out + kk) * k_out + k] += v;
            break;
        }
      }
    }
  }
}

}  // namespace

void ntk_diag_accumulate_cuda(at::Tensor out, const at::Tensor& a,
                              const at::Tensor& d, double weight_scale,
                              double bias_scale, c10::string_view outputs) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_diag_accumulate(out, a, d, mode);
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor, got ", out.device());
  const c10::cuda::CUDAGuard device_guard(out.device());
  const int64_t n_samples = a.size(0), p = a.size(1), k_out = d.size(1), n = d.size(2);
  if (out.numel() == 0) return;
  const at::Tensor dc = d.contiguous();
  const int64_t n_pairs = mode == OutputMode::kFull        ? k_out * (k_out + 1) / 2
                          : mode == OutputMode::kPerOutput ? k_out
                                                           : 1;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t max_grid_x = at::cuda::getCurrentDeviceProperties()->maxGridSize[0];
  const dim3 grid(static_cast<unsigned int>(std::min(n_samples, max_grid_x)),
                  static_cast<unsigned int>(std::min(n_pairs, kMaxGridY)));

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_diag_accumulate_cuda", [&] {
    using acc_t = double;
    at::Tensor factor;  // (N,) in acc_t, only when there is an activation term
    if (weight_scale != 0.0) {
      const at::Tensor ac = a.contiguous();
      factor = at::empty({n_samples}, out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      activation_factor_kernel<scalar_t, acc_t><<<grid.x, cuda::kThreads, 0, stream>>>(
          factor.data_ptr<acc_t>(), ac.data_ptr<scalar_t>(), n_samples, p,
          static_cast<acc_t>(weight_scale), static_cast<acc_t>(bias_scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    diag_accumulate_kernel<scalar_t, acc_t><<<grid, cuda::kThreads, 0, stream>>>(
        mode, out.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
        factor.defined() ? factor.data_ptr<acc_t>() : nullptr,
        static_cast<acc_t>(bias_scale), n_samples, k_out, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

TORCH_LIBRARY_IMPL(fastntk, CUDA, m) {
  m.impl("ntk_diag_accumulate", &ntk_diag_accumulate_cuda);
}

}  // namespace fastntk
