// CPU ntk_accumulate: out += (weight_scale * A1 A2^T + bias_scale) (.) D1 D2^T,
// with the Hadamard product broadcast over the output axes as the outputs mode
// asks. Both Grams are ATen GEMMs; the scale, broadcast and accumulation are
// one fused parallel pass. Rows of x1 are processed in blocks so the delta
// Gram temporary stays small (a few MB) whatever N1, N2 and K are.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../ntk_common.h"

namespace fastntk {
namespace {

// Elements of the delta-Gram temporary per row block.
constexpr int64_t kBlockElements = int64_t(1) << 22;

template <typename scalar_t>
void accumulate_block(OutputMode mode, scalar_t* out, const scalar_t* gram,
                      const scalar_t* dgram, int64_t row0, int64_t rows,
                      int64_t n2, int64_t k_out, scalar_t weight_scale,
                      scalar_t bias_scale) {
  const int64_t per_row = n2 * (mode == OutputMode::kFull ? k_out * k_out
                                : mode == OutputMode::kPerOutput ? k_out : 1);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_row));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* orow = out + (row0 + i) * per_row;
      for (int64_t j = 0; j < n2; ++j) {
        const scalar_t s =
            bias_scale + (gram ? weight_scale * gram[i * n2 + j] : scalar_t(0));
        switch (mode) {
          case OutputMode::kTrace:
            orow[j] += s * dgram[i * n2 + j];
            break;
          case OutputMode::kPerOutput:
            // dgram: (K, rows, N2)
            for (int64_t k = 0; k < k_out; ++k)
              orow[j * k_out + k] += s * dgram[(k * rows + i) * n2 + j];
            break;
          case OutputMode::kFull: {
            // dgram: (rows * K, N2 * K)
            scalar_t* o = orow + j * k_out * k_out;
            for (int64_t k = 0; k < k_out; ++k) {
              const scalar_t* dg = dgram + (i * k_out + k) * (n2 * k_out) + j * k_out;
              for (int64_t kk = 0; kk < k_out; ++kk) o[k * k_out + kk] += s * dg[kk];
            }
            break;
          }
        }
      }
    }
  });
}

}  // namespace

void ntk_accumulate_cpu(at::Tensor out, const at::Tensor& a1,
                        const at::Tensor& a2, const at::Tensor& d1,
                        const at::Tensor& d2, double weight_scale,
                        double bias_scale, c10::string_view outputs) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_accumulate(out, a1, a2, d1, d2, mode);
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got ", out.device());
  const int64_t n1 = a1.size(0), n2 = a2.size(0), k_out = d1.size(1), n = d1.size(2);
  if (out.numel() == 0) return;

  const at::Tensor a1c = a1.contiguous(), a2t = a2.t();
  const at::Tensor d1c = d1.contiguous(), d2c = d2.contiguous();
  // The right-hand Gram factor, laid out once for every row block.
  at::Tensor d2_right;
  switch (mode) {
    case OutputMode::kFull: d2_right = d2c.reshape({n2 * k_out, n}).t(); break;
    case OutputMode::kTrace: d2_right = d2c.reshape({n2, k_out * n}).t(); break;
    case OutputMode::kPerOutput: d2_right = d2c.permute({1, 2, 0}); break;  // (K, n, N2)
  }
  const int64_t per_row = n2 * (mode == OutputMode::kFull ? k_out * k_out
                                : mode == OutputMode::kPerOutput ? k_out : 1);
  const int64_t block = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(1, per_row));

  for (int64_t row0 = 0; row0 < n1; row0 += block) {
    const int64_t rows = std::min(block, n1 - row0);
    at::Tensor gram;
    if (weight_scale != 0.0)
      gram = at::matmul(a1c.narrow(0, row0, rows), a2t).contiguous();
    const at::Tensor d1b = d1c.narrow(0, row0, rows);
    at::Tensor dgram;
    switch (mode) {
      case OutputMode::kFull:
        dgram = at::matmul(d1b.reshape({rows * k_out, n}), d2_right); break;
      case OutputMode::kTrace:
        dgram = at::matmul(d1b.reshape({rows, k_out * n}), d2_right); break;
      case OutputMode::kPerOutput:
        dgram = at::matmul(d1b.permute({1, 0, 2}), d2_right); break;  // (K, rows, N2)
    }
    dgram = dgram.contiguous();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cpu", [&] {
      accumulate_block<scalar_t>(
          mode, out.data_ptr<scalar_t>(),
          gram.defined() ? gram.data_ptr<scalar_t>() : nullptr,
          dgram.data_ptr<scalar_t>(), row0, rows, n2, k_out,
          static_cast<scalar_t>(weight_scale), static_cast<scalar_t>(bias_scale));
    });
  }
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("ntk_accumulate", &ntk_accumulate_cpu);
}

}  // namespace fastntk
