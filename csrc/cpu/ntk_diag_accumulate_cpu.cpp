// CPU ntk_diag_accumulate: out[i] += (weight_scale |a_i|^2 + bias_scale) *
// <d_ik, d_ik'> for every sample i, never forming an N x N matrix. Linear in N;
// dot products accumulate in double (dot_double) (the full K x K block, for K > 1, is a
// batched GEMM).
#include <ATen/Parallel.h>
#include <ATen/AccumulateType.h>
#include <torch/library.h>

#include "../ntk_common.h"

namespace fastntk {
namespace {

// sum_j x[j] y[j] in double over eight independent partial sums: one running
// sum is a chain of dependent adds (latency-bound, ~4 cycles per element,
// and it cannot be vectorised without reassociation); eight let the
// compiler use SIMD lanes and keep the adders busy. Fixed order: the result
// is deterministic.
template <typename scalar_t>
inline double dot_double(const scalar_t* x, const scalar_t* y, int64_t n) {
  constexpr int64_t kLanes = 8;
  double part[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) part[l] += double(x[j + l]) * double(y[j + l]);
  double v = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; j < n; ++j) v += double(x[j]) * double(y[j]);
  return v;
}

}  // namespace

void ntk_diag_accumulate_cpu(at::Tensor out, const at::Tensor& a,
                             const at::Tensor& d, double weight_scale,
                             double bias_scale, c10::string_view outputs) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_diag_accumulate(out, a, d, mode);
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got ", out.device());
  const int64_t n_samples = a.size(0), p = a.size(1), k_out = d.size(1), n = d.size(2);
  if (out.numel() == 0) return;
  const at::Tensor ac = a.contiguous(), dc = d.contiguous();
  // For the full K x K block a batched GEMM beats K^2 scalar dot products.
  const at::Tensor kgram = mode == OutputMode::kFull && k_out > 1
                               ? at::bmm(dc, dc.transpose(1, 2)).contiguous()  // (N, K, K)
                               : at::Tensor();

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_diag_accumulate_cpu", [&] {
    using acc_t = double;
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    const scalar_t* dp = dc.data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, p + k_out * k_out * n));
    at::parallel_for(0, n_samples, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        acc_t s = bias_scale;
        if (weight_scale != 0.0) {
          s += weight_scale * dot_double(ap + i * p, ap + i * p, p);
        }
        const scalar_t* di = dp + i * k_out * n;
        auto dot = [&](int64_t k, int64_t kk) { return dot_double(di + k * n, di + kk * n, n); };
        switch (mode) {
          case OutputMode::kTrace: {
            acc_t v = 0;
            for (int64_t k = 0; k < k_out; ++k) v += dot(k, k);
            o[i] += static_cast<scalar_t>(s * v);
            break;
          }
          case OutputMode::kPerOutput:
            for (int64_t k = 0; k < k_out; ++k)
              o[i * k_out + k] += static_cast<scalar_t>(s * dot(k, k));
            break;
          case OutputMode::kFull: {
            scalar_t* oi = o + i * k_out * k_out;
            if (kgram.defined()) {
              const scalar_t* gi = kgram.data_ptr<scalar_t>() + i * k_out * k_out;
              for (int64_t e = 0; e < k_out * k_out; ++e) oi[e] += static_cast<scalar_t>(s * gi[e]);
              break;
            }
            for (int64_t k = 0; k < k_out; ++k)
              for (int64_t kk = k; kk < k_out; ++kk) {
                const scalar_t v = static_cast<scalar_t>(s * dot(k, kk));
                oi[k * k_out + kk] += v;
                if (kk != k) oi[kk * k_out + k] += v;
              }
            break;
          }
        }
      }
    });
  });
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("ntk_diag_accumulate", &ntk_diag_accumulate_cpu);
}

}  // namespace fastntk
