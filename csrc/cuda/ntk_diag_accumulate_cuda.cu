// CUDA ntk_diag_accumulate: out[i] += (weight_scale |a_i|^2 + bias_scale) *
// <d_ik, d_ik'> for every sample i, never forming an N x N matrix. One block
// per sample computes the activation factor s_i = weight_scale |a_i|^2 +
// bias_scale. The full K x K blocks (K > 1) are one batched GEMM (cuBLAS,
// through at::bmm, as the CPU kernel does), scaled by s_i and added to out by
// an element-wise kernel; the trace and per-output diagonals, where each
// delta row is read once, are one reduction block per (sample, output). Sums
// of the reductions accumulate in double for both dtypes, like the CPU
// kernel's (they are memory-bound, so the wider sum costs nothing).
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <torch/library.h>

#include "../ntk_common.h"
#include "launch.cuh"

namespace fastntk {
namespace {

// Grid y is at most this many blocks; more outputs loop.
constexpr int64_t kMaxGridY = 65535;

// s[i] = weight_scale * |a_i|^2 + bias_scale; a: (N, p) contiguous. Grid x
// strides over samples.
template <typename scalar_t, typename acc_t>
__global__ void activation_factor_kernel(acc_t* __restrict__ s,
                                         const scalar_t* __restrict__ a,
                                         int64_t n_samples, int64_t p,
                                         acc_t weight_scale, acc_t bias_scale) {
  FASTNTK_SHARED(acc_t, shared, [cuda::kThreads / 32]);
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

// Block (x, y) handles sample x and outputs y, y + gridDim.y, ...: the trace
// (one output: the whole (K n) row of sample i) or per_output (K outputs: row
// k). d: (N, K, n) contiguous; s: (N,) or nullptr for a factor of bias_scale.
template <typename scalar_t, typename acc_t>
__global__ void diag_dot_kernel(bool trace, scalar_t* __restrict__ out, const scalar_t* __restrict__ d,
                                const acc_t* __restrict__ s, acc_t bias_scale, int64_t n_samples, int64_t k_out,
                                int64_t n) {
  FASTNTK_SHARED(acc_t, shared, [cuda::kThreads / 32]);
  const int64_t n_dots = trace ? 1 : k_out, len = trace ? k_out * n : n;
  for (int64_t i = blockIdx.x; i < n_samples; i += gridDim.x) {
    const acc_t si = s ? s[i] : bias_scale;
    for (int64_t k = blockIdx.y; k < n_dots; k += gridDim.y) {
      const scalar_t* x = d + (i * k_out + k) * n;
      acc_t dot = 0;
      for (int64_t j = threadIdx.x; j < len; j += blockDim.x) dot += static_cast<acc_t>(x[j]) * x[j];
      dot = cuda::block_reduce_sum(dot, shared);
      if (threadIdx.x == 0) out[i * n_dots + k] += static_cast<scalar_t>(si * dot);
    }
  }
}

// out[i, k, k'] += s_i * kgram[i, k, k'] over the N K^2 elements (both
// contiguous); s: (N,) or nullptr for a factor of bias_scale.
template <typename scalar_t, typename acc_t>
__global__ void scaled_add_kernel(scalar_t* __restrict__ out, const scalar_t* __restrict__ kgram,
                                  const acc_t* __restrict__ s, acc_t bias_scale, int64_t n_samples,
                                  int64_t per_sample) {
  const int64_t total = n_samples * per_sample;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const acc_t si = s ? s[idx / per_sample] : bias_scale;
    out[idx] += static_cast<scalar_t>(si * static_cast<acc_t>(kgram[idx]));
  }
}

}  // namespace

void ntk_diag_accumulate_cuda(at::Tensor out, const at::Tensor& a,
                              const at::Tensor& d, double weight_scale,
                              double bias_scale, c10::string_view outputs) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_diag_accumulate(out, a, d, mode);
  cuda::check_device(out, "out");
  const cuda::DeviceGuard device_guard(out.device());
  const int64_t n_samples = a.size(0), p = a.size(1), k_out = d.size(1), n = d.size(2);
  if (out.numel() == 0) return;
  const at::Tensor dc = d.contiguous();
  // Full with K = 1 is the per-output diagonal: (N, 1, 1) and (N, 1) share a layout.
  const bool gemm = mode == OutputMode::kFull && k_out > 1;
  const bool trace = mode == OutputMode::kTrace;
  const cuda::Stream stream = cuda::current_stream();
  const int64_t max_grid_x = cuda::max_grid_x();
  const dim3 grid(static_cast<unsigned int>(std::min(n_samples, max_grid_x)),
                  static_cast<unsigned int>(std::min(trace ? 1 : k_out, kMaxGridY)));

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_diag_accumulate_cuda", [&] {
    using acc_t = double;
    at::Tensor factor;  // (N,) in acc_t, only when there is an activation term
    if (weight_scale != 0.0) {
      const at::Tensor ac = a.contiguous();
      factor = at::empty({n_samples}, out.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      cuda::launch(activation_factor_kernel<scalar_t, acc_t>, grid.x, cuda::kThreads, 0, stream,
                   factor.data_ptr<acc_t>(), ac.data_ptr<scalar_t>(), n_samples, p,
                   static_cast<acc_t>(weight_scale), static_cast<acc_t>(bias_scale));
    }
    const acc_t* s = factor.defined() ? factor.data_ptr<acc_t>() : nullptr;
    if (gemm) {
      const at::Tensor kgram = at::bmm(dc, dc.transpose(1, 2)).contiguous();  // (N, K, K)
      cuda::launch(scaled_add_kernel<scalar_t, acc_t>, cuda::grid_size(kgram.numel()), cuda::kThreads, 0, stream,
                   out.data_ptr<scalar_t>(), kgram.data_ptr<scalar_t>(), s, static_cast<acc_t>(bias_scale),
                   n_samples, k_out * k_out);
    } else {
      cuda::launch(diag_dot_kernel<scalar_t, acc_t>, grid, cuda::kThreads, 0, stream, trace,
                   out.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), s, static_cast<acc_t>(bias_scale), n_samples,
                   k_out, n);
    }
  });
}

FASTNTK_CUDA_LIBRARY_IMPL(m) {
  m.impl("ntk_diag_accumulate", &ntk_diag_accumulate_cuda);
}

}  // namespace fastntk
