// CUDA backprop_delta: delta = phi'(h) * scale * (delta_next @ weight), for all
// K outputs at once. The GEMM goes to cuBLAS through at::matmul; the epilogue
// is one fused in-place kernel in which each thread owns a (sample, unit)
// pair, computes scale * phi'(h) once in a register and applies it to all K
// outputs (phi'(h) is never stored).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../ntk_common.h"
#include "launch.cuh"

namespace fastntk {
namespace {

// out: (N, K, n) contiguous, h: (N, n) contiguous.
template <typename scalar_t>
__global__ void backprop_epilogue_kernel(scalar_t* __restrict__ out,
                                         const scalar_t* __restrict__ h,
                                         int64_t n_samples, int64_t k_out,
                                         int64_t n, scalar_t scale,
                                         Activation act, ActivationParams params) {
  const int64_t total = n_samples * n;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const int64_t i = idx / n, j = idx - i * n;
    const scalar_t factor = scale * activation_derivative<scalar_t>(act, h[idx], params);
    scalar_t* o = out + i * k_out * n + j;
    for (int64_t k = 0; k < k_out; ++k) o[k * n] *= factor;
  }
}

}  // namespace

at::Tensor backprop_delta_cuda(const at::Tensor& delta_next,
                               const at::Tensor& weight, const at::Tensor& h,
                               double scale, c10::string_view activation,
                               double negative_slope, double beta,
                               double threshold) {
  check_backprop_delta(delta_next, weight, h);
  cuda::check_device(h, "h");
  const Activation act = parse_activation(activation);
  const ActivationParams params{negative_slope, beta, threshold};
  const cuda::DeviceGuard device_guard(h.device());

  // (N, K, n_next) @ (n_next, n) -> (N, K, n), cuBLAS on the current stream.
  at::Tensor out = at::matmul(delta_next, weight).contiguous();
  const int64_t n_samples = out.size(0), k_out = out.size(1), n = out.size(2);
  if (out.numel() == 0) return out;
  const at::Tensor hc = h.contiguous();
  const cuda::Stream stream = cuda::current_stream();

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "backprop_delta_cuda", [&] {
    cuda::launch(backprop_epilogue_kernel<scalar_t>, cuda::grid_size(n_samples * n), cuda::kThreads, 0, stream,
                 out.data_ptr<scalar_t>(), hc.data_ptr<scalar_t>(), n_samples, k_out, n,
                 static_cast<scalar_t>(scale), act, params);
  });
  return out;
}

FASTNTK_CUDA_LIBRARY_IMPL(m) {
  m.impl("backprop_delta", &backprop_delta_cuda);
}

}  // namespace fastntk
