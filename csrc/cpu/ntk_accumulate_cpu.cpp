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
#include <optional>
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

// Adds s * dgram for one (i, j) pair into out[i, j] (and, transposed over the
// output axes, into out[j, i] when kMirror). One instantiation per mode so the
// inner loops carry no branches.
template <OutputMode kMode, bool kMirror, typename scalar_t>
inline void accumulate_pair(scalar_t* o, scalar_t* om, const scalar_t* dgram, scalar_t s,
                            int64_t i, int64_t c, const Block& b, int64_t k_out) {
  if constexpr (kMode == OutputMode::kTrace) {
    const scalar_t v = s * dgram[i * b.cols + c];
    o[0] += v;
    if constexpr (kMirror) om[0] += v;
  } else if constexpr (kMode == OutputMode::kPerOutput) {
    // dgram: (K, rows, cols)
    for (int64_t k = 0; k < k_out; ++k) {
      const scalar_t v = s * dgram[(k * b.rows + i) * b.cols + c];
      o[k] += v;
      if constexpr (kMirror) om[k] += v;
    }
  } else {
    // dgram: (rows * K, cols * K)
    for (int64_t k = 0; k < k_out; ++k) {
      const scalar_t* dg = dgram + (i * k_out + k) * (b.cols * k_out) + c * k_out;
      for (int64_t kk = 0; kk < k_out; ++kk) o[k * k_out + kk] += s * dg[kk];
      if constexpr (kMirror)
        for (int64_t kk = 0; kk < k_out; ++kk) om[kk * k_out + k] += s * dg[kk];
    }
  }
}

// out += (weight_scale * gram + bias_scale) (.) dgram over one block; with
// bias_out, the two terms go to out and bias_out separately (the layerwise
// split) from the same delta Gram.
template <OutputMode kMode, typename scalar_t>
void accumulate_block(scalar_t* out, scalar_t* bias_out, const scalar_t* gram,
                      const scalar_t* dgram, const Block& b, int64_t n2, int64_t k_out,
                      scalar_t weight_scale, scalar_t bias_scale) {
  const int64_t per_out = kMode == OutputMode::kFull ? k_out * k_out
                          : kMode == OutputMode::kPerOutput ? k_out : 1;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, b.cols * per_out));
  const int64_t direct_cols = std::min(b.cols, b.mirror0 - b.col0);
  at::parallel_for(0, b.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t gi = b.row0 + i;
      scalar_t* orow = out + gi * n2 * per_out;
      const scalar_t* grow = gram ? gram + i * b.cols : nullptr;
      if (bias_out) {
        // Layerwise split: weight term into out, bias term into bias_out.
        scalar_t* brow = bias_out + gi * n2 * per_out;
        for (int64_t c = 0; c < b.cols; ++c) {
          const int64_t j = b.col0 + c;
          const scalar_t sw = grow ? weight_scale * grow[c] : scalar_t(0);
          if (c < direct_cols) {
            accumulate_pair<kMode, false>(orow + j * per_out, static_cast<scalar_t*>(nullptr), dgram, sw, i, c, b, k_out);
            accumulate_pair<kMode, false>(brow + j * per_out, static_cast<scalar_t*>(nullptr), dgram, bias_scale, i, c, b, k_out);
          } else {
            accumulate_pair<kMode, true>(orow + j * per_out, out + (j * n2 + gi) * per_out, dgram, sw, i, c, b, k_out);
            accumulate_pair<kMode, true>(brow + j * per_out, bias_out + (j * n2 + gi) * per_out, dgram, bias_scale,
                                         i, c, b, k_out);
          }
        }
        continue;
      }
      if (kMode == OutputMode::kTrace && grow) {
        // The common K = 1 / trace case as one vectorisable loop.
        const scalar_t* drow = dgram + i * b.cols;
        scalar_t* o = orow + b.col0;
        for (int64_t c = 0; c < direct_cols; ++c)
          o[c] += (bias_scale + weight_scale * grow[c]) * drow[c];
      } else {
        for (int64_t c = 0; c < direct_cols; ++c) {
          const scalar_t s = bias_scale + (grow ? weight_scale * grow[c] : scalar_t(0));
          accumulate_pair<kMode, false>(orow + (b.col0 + c) * per_out, static_cast<scalar_t*>(nullptr), dgram, s, i, c, b, k_out);
        }
      }
      for (int64_t c = direct_cols; c < b.cols; ++c) {
        const int64_t j = b.col0 + c;
        const scalar_t s = bias_scale + (grow ? weight_scale * grow[c] : scalar_t(0));
        accumulate_pair<kMode, true>(orow + j * per_out, out + (j * n2 + gi) * per_out, dgram, s, i, c,
                                     b, k_out);
      }
    }
  });
}

}  // namespace

void ntk_accumulate_cpu(at::Tensor out, const at::Tensor& a1,
                        const at::Tensor& a2, const at::Tensor& d1,
                        const at::Tensor& d2, double weight_scale,
                        double bias_scale, c10::string_view outputs,
                        const std::optional<at::Tensor>& bias_out) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_accumulate(out, a1, a2, d1, d2, mode);
  if (bias_out) check_bias_out(out, *bias_out);
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got ", out.device());
  const int64_t n1 = a1.size(0), n2 = a2.size(0), k_out = d1.size(1);
  if (out.numel() == 0) return;
  const bool symmetric = a1.is_same(a2) && d1.is_same(d2);

  const at::Tensor a1c = a1.contiguous(), a2c = symmetric ? a1c : a2.contiguous();
  const at::Tensor d1c = d1.contiguous(), d2c = symmetric ? d1c : d2.contiguous();
  // The right-hand Gram factors, laid out once; blocks take column slices.
  const at::Tensor a2t = a2c.t();  // (p, N2)
  const at::Tensor d2_right = delta_gram_right(mode, d2c);
  const int64_t per_row = n2 * (mode == OutputMode::kFull ? k_out * k_out
                                : mode == OutputMode::kPerOutput ? k_out : 1);
  int64_t block = std::max<int64_t>(1, kBlockElements / std::max<int64_t>(1, per_row));
  // Smaller blocks skip more of the lower triangle; keep the GEMMs reasonably tall.
  // Below 128 rows the extra GEMM calls cost more than the triangle saves.
  if (symmetric) block = std::min(block, std::max<int64_t>(128, (n1 + 7) / 8));

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
    const at::Tensor dgram = delta_gram(mode, d1c.narrow(0, row0, b.rows), d2_right, b.col0, b.cols);
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cpu", [&] {
      scalar_t* o = out.data_ptr<scalar_t>();
      scalar_t* ob = bias_out ? bias_out->data_ptr<scalar_t>() : nullptr;
      const scalar_t* g = gram.defined() ? gram.data_ptr<scalar_t>() : nullptr;
      const scalar_t* dg = dgram.data_ptr<scalar_t>();
      const auto ws = static_cast<scalar_t>(weight_scale), bs = static_cast<scalar_t>(bias_scale);
      switch (mode) {
        case OutputMode::kFull:
          accumulate_block<OutputMode::kFull>(o, ob, g, dg, b, n2, k_out, ws, bs); break;
        case OutputMode::kTrace:
          accumulate_block<OutputMode::kTrace>(o, ob, g, dg, b, n2, k_out, ws, bs); break;
        case OutputMode::kPerOutput:
          accumulate_block<OutputMode::kPerOutput>(o, ob, g, dg, b, n2, k_out, ws, bs); break;
      }
    });
  }
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("ntk_accumulate", &ntk_accumulate_cpu);
}

}  // namespace fastntk
