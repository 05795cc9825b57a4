// CPU ntk_accumulate: out += (weight_scale * A1 A2^T + bias_scale) (.) D1 D2^T,
// with the Hadamard product broadcast over the output axes as the outputs mode
// asks. Both Grams are ATen GEMMs; the scale, broadcast and accumulation are
// one fused parallel pass. Rows of x1 are processed in blocks so the delta
// Gram temporary stays small (a few MB) whatever N1, N2 and K are.
//
// When a1 is a2 and d1 is d2 (the engine's x2 = x1 case) the kernel is
// symmetric: each row block computes only the columns from its first row on,
// and mirrors what lies right of the block into the lower triangle, which
// roughly halves the GEMM and epilogue work.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../ntk_common.h"

namespace fastntk {
namespace {

// Elements of the delta-Gram temporary per row block.
constexpr int64_t kBlockElements = int64_t(1) << 22;

struct Block {
  int64_t row0, rows;  // rows of out covered by this block
  int64_t col0, cols;  // columns computed (col0 = row0 when symmetric)
  int64_t mirror0;     // columns >= mirror0 are also written transposed
};

template <typename scalar_t>
void accumulate_block(OutputMode mode, scalar_t* out, const scalar_t* gram,
                      const scalar_t* dgram, const Block& b, int64_t n2,
                      int64_t k_out, scalar_t weight_scale, scalar_t bias_scale) {
  const int64_t kk2 = k_out * k_out;
  const int64_t per_out = mode == OutputMode::kFull ? kk2 : mode == OutputMode::kPerOutput ? k_out : 1;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, b.cols * per_out));
  at::parallel_for(0, b.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t gi = b.row0 + i;
      for (int64_t c = 0; c < b.cols; ++c) {
        const int64_t j = b.col0 + c;
        const bool mirror = j >= b.mirror0;
        const scalar_t s =
            bias_scale + (gram ? weight_scale * gram[i * b.cols + c] : scalar_t(0));
        scalar_t* o = out + (gi * n2 + j) * per_out;
        scalar_t* om = out + (j * n2 + gi) * per_out;
        switch (mode) {
          case OutputMode::kTrace: {
            const scalar_t v = s * dgram[i * b.cols + c];
            o[0] += v;
            if (mirror) om[0] += v;
            break;
          }
          case OutputMode::kPerOutput:
            // dgram: (K, rows, cols)
            for (int64_t k = 0; k < k_out; ++k) {
              const scalar_t v = s * dgram[(k * b.rows + i) * b.cols + c];
              o[k] += v;
              if (mirror) om[k] += v;
            }
            break;
          case OutputMode::kFull:
            // dgram: (rows * K, cols * K)
            for (int64_t k = 0; k < k_out; ++k) {
              const scalar_t* dg = dgram + (i * k_out + k) * (b.cols * k_out) + c * k_out;
              for (int64_t kk = 0; kk < k_out; ++kk) o[k * k_out + kk] += s * dg[kk];
              if (mirror)
                for (int64_t kk = 0; kk < k_out; ++kk) om[kk * k_out + k] += s * dg[kk];
            }
            break;
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
  const bool symmetric = a1.is_same(a2) && d1.is_same(d2);

  const at::Tensor a1c = a1.contiguous(), a2c = symmetric ? a1c : a2.contiguous();
  const at::Tensor d1c = d1.contiguous(), d2c = symmetric ? d1c : d2.contiguous();
  // The right-hand Gram factors, laid out once; blocks take column slices.
  const at::Tensor a2t = a2c.t();  // (p, N2)
  at::Tensor d2_right;
  switch (mode) {
    case OutputMode::kFull: d2_right = d2c.reshape({n2 * k_out, n}).t(); break;       // (n, N2 K)
    case OutputMode::kTrace: d2_right = d2c.reshape({n2, k_out * n}).t(); break;      // (K n, N2)
    case OutputMode::kPerOutput: d2_right = d2c.permute({1, 2, 0}); break;            // (K, n, N2)
  }
  const int64_t per_row = n2 * (mode == OutputMode::kFull ? k_out * k_out
                                : mode == OutputMode::kPerOutput ? k_out : 1);
  int64_t block = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(1, per_row));
  // Smaller blocks skip more of the lower triangle; keep the GEMMs reasonably tall.
  if (symmetric) block = std::min(block, std::max<int64_t>(64, (n1 + 7) / 8));

  for (int64_t row0 = 0; row0 < n1; row0 += block) {
    Block b;
    b.row0 = row0;
    b.rows = std::min(block, n1 - row0);
    b.col0 = symmetric ? row0 : 0;
    b.cols = n2 - b.col0;
    b.mirror0 = symmetric ? row0 + b.rows : n2;
    at::Tensor gram;
    if (weight_scale != 0.0)
      gram = at::matmul(a1c.narrow(0, row0, b.rows), a2t.narrow(1, b.col0, b.cols)).contiguous();
    const at::Tensor d1b = d1c.narrow(0, row0, b.rows);
    at::Tensor dgram;
    switch (mode) {
      case OutputMode::kFull:
        dgram = at::matmul(d1b.reshape({b.rows * k_out, n}),
                           d2_right.narrow(1, b.col0 * k_out, b.cols * k_out));
        break;
      case OutputMode::kTrace:
        dgram = at::matmul(d1b.reshape({b.rows, k_out * n}), d2_right.narrow(1, b.col0, b.cols));
        break;
      case OutputMode::kPerOutput:  // (K, rows, cols)
        dgram = at::matmul(d1b.permute({1, 0, 2}), d2_right.narrow(2, b.col0, b.cols));
        break;
    }
    dgram = dgram.contiguous();
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cpu", [&] {
      accumulate_block<scalar_t>(
          mode, out.data_ptr<scalar_t>(),
          gram.defined() ? gram.data_ptr<scalar_t>() : nullptr,
          dgram.data_ptr<scalar_t>(), b, n2, k_out,
          static_cast<scalar_t>(weight_scale), static_cast<scalar_t>(bias_scale));
    });
  }
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("ntk_accumulate", &ntk_accumulate_cpu);
}

}  // namespace fastntk
