// CUDA ntk_accumulate: out += (weight_scale * A1 A2^T + bias_scale) (.) D1 D2^T,
// with the Hadamard product broadcast over the output axes as the outputs mode
// asks. Both Grams are cuBLAS GEMMs (at::matmul, so TF32 follows the user's
// torch.backends.cuda.matmul.allow_tf32); the scale, broadcast and
// accumulation into out are one fused kernel per row block.
//
// Rows of x1 are taken in blocks so that the Gram temporaries of a block
// together hold at most as many elements as out, and never more than
// kBlockElements (256 MiB in float32): GPU memory goes to out, not scratch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>

#include "../ntk_common.h"
#include "launch.cuh"

namespace fastntk {
namespace {

constexpr int64_t kBlockElements = int64_t(1) << 26;

// One thread per element of the out rows [row0, row0 + rows), in out's
// memory order, so the read-modify-write of out is coalesced.
//   gram:  (rows, N2) or nullptr when weight_scale == 0
//   dgram: trace (rows, N2); per_output (K, rows, N2); full (rows K, N2 K)
template <typename scalar_t>
__global__ void ntk_accumulate_kernel(OutputMode mode, scalar_t* __restrict__ out,
                                      scalar_t* __restrict__ bias_out,
                                      const scalar_t* __restrict__ gram,
                                      const scalar_t* __restrict__ dgram,
                                      int64_t rows, int64_t n2, int64_t k_out,
                                      scalar_t weight_scale, scalar_t bias_scale) {
  const int64_t per_out = mode == OutputMode::kFull        ? k_out * k_out
                          : mode == OutputMode::kPerOutput ? k_out
                                                           : 1;
  const int64_t total = rows * n2 * per_out;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const int64_t ij = idx / per_out, e = idx - ij * per_out;  // ij = i * N2 + j
    const scalar_t sw = gram ? weight_scale * gram[ij] : scalar_t(0);
    scalar_t d;
    switch (mode) {
      case OutputMode::kTrace:
        d = dgram[ij];
        break;
      case OutputMode::kPerOutput:
        d = dgram[e * rows * n2 + ij];
        break;
      default: {  // kFull: e = k * K + k'
        const int64_t i = ij / n2, j = ij - i * n2;
        const int64_t k = e / k_out, kk = e - k * k_out;
        d = dgram[(i * k_out + k) * (n2 * k_out) + j * k_out + kk];
        break;
      }
    }
    if (bias_out) {  // layerwise split: the two terms into separate outputs
      out[idx] += sw * d;
      bias_out[idx] += bias_scale * d;
    } else {
      out[idx] += (sw + bias_scale) * d;
    }
  }
}

}  // namespace

void ntk_accumulate_cuda(at::Tensor out, const at::Tensor& a1,
                         const at::Tensor& a2, const at::Tensor& d1,
                         const at::Tensor& d2, double weight_scale,
                         double bias_scale, c10::string_view outputs,
                         const std::optional<at::Tensor>& bias_out) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_accumulate(out, a1, a2, d1, d2, mode);
  if (bias_out) check_bias_out(out, *bias_out);
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor, got ", out.device());
  const c10::cuda::CUDAGuard device_guard(out.device());
  const int64_t n1 = a1.size(0), n2 = a2.size(0), k_out = d1.size(1);
  if (out.numel() == 0) return;
  const bool with_gram = weight_scale != 0.0;

  // The right-hand Gram factors, laid out once as views; blocks take row
  // slices of the left-hand ones.
  const at::Tensor d1c = d1.contiguous(), d2c = d2.contiguous();
  const at::Tensor a2t = a2.t();  // (p, N2)
  const at::Tensor d2_right = delta_gram_right(mode, d2c);
  const int64_t per_out = mode == OutputMode::kFull        ? k_out * k_out
                          : mode == OutputMode::kPerOutput ? k_out
                                                           : 1;
  // Temporary elements per row of out: the delta Gram plus the activation Gram.
  const int64_t per_row = n2 * per_out + (with_gram ? n2 : 0);
  const int64_t budget = std::min(kBlockElements, out.numel());
  const int64_t block = std::max<int64_t>(1, budget / per_row);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  for (int64_t row0 = 0; row0 < n1; row0 += block) {
    const int64_t rows = std::min(block, n1 - row0);
    at::Tensor gram;
    if (with_gram) gram = at::matmul(a1.narrow(0, row0, rows), a2t).contiguous();
    const at::Tensor dgram = delta_gram(mode, d1c.narrow(0, row0, rows), d2_right, 0, n2);
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cuda", [&] {
      ntk_accumulate_kernel<scalar_t>
          <<<cuda::grid_size(rows * n2 * per_out), cuda::kThreads, 0, stream>>>(
              mode, out.data_ptr<scalar_t>() + row0 * n2 * per_out,
              bias_out ? bias_out->data_ptr<scalar_t>() + row0 * n2 * per_out : nullptr,
              with_gram ? gram.data_ptr<scalar_t>() : nullptr,
              dgram.data_ptr<scalar_t>(), rows, n2, k_out,
              static_cast<scalar_t>(weight_scale), static_cast<scalar_t>(bias_scale));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

TORCH_LIBRARY_IMPL(fastntk, CUDA, m) {
  m.impl("ntk_accumulate", &ntk_accumulate_cuda);
}

}  // namespace fastntk
