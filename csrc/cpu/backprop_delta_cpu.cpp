// CPU backprop_delta: delta = phi'(h) * scale * (delta_next @ weight), for all
// K outputs at once. The GEMM goes to ATen; the activation-derivative epilogue
// is applied in place in one parallel pass, computing phi'(h) once per
// (sample, unit) and reusing it for every output k.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../ntk_common.h"

namespace fastntk {

at::Tensor backprop_delta_cpu(const at::Tensor& delta_next,
                              const at::Tensor& weight, const at::Tensor& h,
                              double scale, c10::string_view activation,
                              double negative_slope, double beta,
                              double threshold) {
  check_backprop_delta(delta_next, weight, h);
  TORCH_CHECK(h.device().is_cpu(), "h must be a CPU tensor, got ", h.device());
  const Activation act = parse_activation(activation);
  const ActivationParams params{negative_slope, beta, threshold};

  // (N, K, n_next) @ (n_next, n) -> (N, K, n)
  at::Tensor out = at::matmul(delta_next, weight).contiguous();
  const at::Tensor hc = h.contiguous();
  const int64_t n_samples = out.size(0), k_out = out.size(1), n = out.size(2);
  if (out.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "backprop_delta_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* hp = hc.data_ptr<scalar_t>();
    const scalar_t s = static_cast<scalar_t>(scale);
    const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, k_out * n));
    dispatch_activation(act, [&](auto tag) {
      constexpr Activation kAct = decltype(tag)::value;
      at::parallel_for(0, n_samples, grain, [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> factor(n);
        for (int64_t i = begin; i < end; ++i) {
          const scalar_t* hrow = hp + i * n;
          scalar_t* f = factor.data();
          for (int64_t j = 0; j < n; ++j)
            f[j] = s * activation_derivative<kAct>(hrow[j], params);
          scalar_t* orow = o + i * k_out * n;
          for (int64_t k = 0; k < k_out; ++k, orow += n)
            for (int64_t j = 0; j < n; ++j) orow[j] *= factor[j];
        }
      });
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("backprop_delta", &backprop_delta_cpu);
}

}  // namespace fastntk
