// CPU ntk_accumulate and ntk_accumulate_layers:
//   out += sum_l (weight_scale_l * A1_l A2_l^T + bias_scale_l) (.) D1_l D2_l^T,
// with the Hadamard product broadcast over the output axes as the outputs mode
// asks (ntk_accumulate is the one-layer case). The Grams are ATen GEMMs; the
// scale, broadcast and sum over layers are one fused parallel pass per row
// block (symmetric case: up to kMaxFusedLayers layers per pass, so out is
// read and written once for all of them; otherwise one layer per pass, which
// measured as fast). Rows of x1 are processed in blocks so the Gram
// temporaries stay small (a few tens of MB) whatever N1, N2, K and L are.
//
// When a1 is a2 and d1 is d2 in every layer (the engine's x2 = x1 case) the
// kernel is symmetric: each row block computes only the columns from its
// first row on, and each row only the pairs on or right of the diagonal,
// mirrored into the lower triangle (see Block), which roughly halves the
// GEMM and epilogue work and makes the result exactly symmetric.
#include <ATen/Parallel.h>
#include <optional>
#include <torch/library.h>
#include <vector>

#include "../ntk_common.h"
#include "cpu_drivers.h"

namespace fastntk {
namespace {

// Elements of the Gram temporaries per row block (all layers of a pass).
constexpr int64_t kBlockElements = int64_t(1) << 22;
// Fewer rows per block make the GEMMs inefficient.
constexpr int64_t kMinRows = 16;
// The symmetric path's blocks: smaller ones skip more of the lower triangle,
// but below 128 rows the extra GEMM calls cost more than the triangle saves.
constexpr int64_t kMinSymmetricRows = 128;

// One layer's Grams over a block: out += (ws * gram + bs) (.) dgram.
//   gram: (rows, cols), nullptr when ws == 0
//   dgram: trace (rows, cols); per_output (K, rows, cols); full (rows K, cols K)
template <typename scalar_t>
struct Term {
  const scalar_t* gram;
  const scalar_t* dgram;
  scalar_t ws, bs;

  scalar_t weight_part(int64_t i, int64_t c, int64_t cols) const {
    return gram ? ws * gram[i * cols + c] : scalar_t(0);
  }
  scalar_t scale(int64_t i, int64_t c, int64_t cols) const { return bs + weight_part(i, c, cols); }
};

// Adds s * dgram for one (i, j) pair into out[i, j] (and, transposed over the
// output axes, into out[j, i] when kMirror). kDiagonal marks a symmetric
// call's pair (i, i): its K x K tile takes each value from the upper half of
// the delta Gram, so it is exactly symmetric too (the GEMM's (k, k') and
// (k', k) elements can differ in the last bit). One instantiation per mode so
// the inner loops carry no branches.
template <OutputMode kMode, bool kMirror, bool kDiagonal = false, typename scalar_t>
inline void accumulate_pair(scalar_t* o, scalar_t* om, const scalar_t* dgram, scalar_t s,
                            int64_t i, int64_t c, const Block& b, int64_t k_out) {
  if constexpr (kMode == OutputMode::kTrace) {
    const scalar_t v = s * dgram[i * b.cols + c];
    o[0] += v;
    if constexpr (kMirror) om[0] += v;
  } else if constexpr (kMode == OutputMode::kPerOutput) {
    for (int64_t k = 0; k < k_out; ++k) {
      const scalar_t v = s * dgram[(k * b.rows + i) * b.cols + c];
      o[k] += v;
      if constexpr (kMirror) om[k] += v;
    }
  } else if constexpr (kDiagonal) {
    for (int64_t k = 0; k < k_out; ++k)
      for (int64_t kk = 0; kk < k_out; ++kk) {
        const int64_t lo = std::min(k, kk), hi = std::max(k, kk);
        o[k * k_out + kk] += s * dgram[(i * k_out + lo) * (b.cols * k_out) + c * k_out + hi];
      }
  } else {
    for (int64_t k = 0; k < k_out; ++k) {
      const scalar_t* dg = dgram + (i * k_out + k) * (b.cols * k_out) + c * k_out;
      for (int64_t kk = 0; kk < k_out; ++kk) o[k * k_out + kk] += s * dg[kk];
      if constexpr (kMirror)
        for (int64_t kk = 0; kk < k_out; ++kk) om[kk * k_out + k] += s * dg[kk];
    }
  }
}

// Sums every term into the pair (i, c): the pair's out elements (at most K^2)
// stay in L1 while the layers are added, so out is touched once per pass.
template <OutputMode kMode, bool kMirror, bool kDiagonal = false, typename scalar_t>
inline void accumulate_terms(scalar_t* o, scalar_t* om, const std::vector<Term<scalar_t>>& terms,
                             int64_t i, int64_t c, const Block& b, int64_t k_out) {
  for (const Term<scalar_t>& t : terms)
    accumulate_pair<kMode, kMirror, kDiagonal>(o, om, t.dgram, t.scale(i, c, b.cols), i, c, b, k_out);
}

// Symmetric trace blocks: mirroring one element per pair, as the generic loop
// does, writes a column of out, a cache line per element (measured slower
// than computing the lower triangle outright). Instead the block's sum over
// terms is staged as a (rows, cols) tile: rows are added to out as they are,
// and the part right of the diagonal is added transposed, in square tiles so
// that both the reads and the writes stay in cache.
template <typename scalar_t>
void accumulate_trace_symmetric(scalar_t* out, const std::vector<Term<scalar_t>>& terms, const Block& b,
                                int64_t n2) {
  constexpr int64_t kTile = 64;
  std::vector<scalar_t> stage(static_cast<size_t>(b.rows * b.cols));
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, b.cols * static_cast<int64_t>(terms.size())));
  at::parallel_for(0, b.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t* srow = stage.data() + i * b.cols;
      for (int64_t c = i; c < b.cols; ++c) srow[c] = scalar_t(0);
      for (const Term<scalar_t>& t : terms) {
        const scalar_t* drow = t.dgram + i * b.cols;
        if (t.gram) {
          const scalar_t* grow = t.gram + i * b.cols;
          for (int64_t c = i; c < b.cols; ++c) srow[c] += (t.bs + t.ws * grow[c]) * drow[c];
        } else {
          for (int64_t c = i; c < b.cols; ++c) srow[c] += t.bs * drow[c];
        }
      }
      scalar_t* o = out + (b.row0 + i) * n2 + b.col0;  // col0 = row0: c = i is the diagonal
      for (int64_t c = i; c < b.cols; ++c) o[c] += srow[c];
    }
  });
  // out[col0 + c, row0 + i] += stage[i, c] for c > i; one thread per band of
  // columns c, so each writes its own rows of out.
  at::parallel_for(0, (b.cols + kTile - 1) / kTile, 1, [&](int64_t begin, int64_t end) {
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t c0 = tile * kTile, c1 = std::min(b.cols, c0 + kTile);
      for (int64_t i0 = 0; i0 < std::min(b.rows, c1); i0 += kTile) {
        const int64_t i1 = std::min(b.rows, i0 + kTile);
        for (int64_t c = c0; c < c1; ++c) {
          scalar_t* ocol = out + (b.col0 + c) * n2 + b.row0;
          for (int64_t i = i0; i < std::min(i1, c); ++i) ocol[i] += stage[i * b.cols + c];
        }
      }
    }
  });
}

// out += sum of the terms over one block; with bias_out (one term only), the
// weight and bias parts go to out and bias_out separately (the layerwise
// split) from the same delta Gram.
template <OutputMode kMode, typename scalar_t>
void accumulate_block(scalar_t* out, scalar_t* bias_out, const std::vector<Term<scalar_t>>& terms,
                      const Block& b, int64_t n2, int64_t k_out) {
  if constexpr (kMode == OutputMode::kTrace) {
    if (b.symmetric && !bias_out) return accumulate_trace_symmetric(out, terms, b, n2);
  }
  const int64_t per_out = out_per_pair(kMode, k_out);
  const int64_t work_per_row = std::max<int64_t>(1, b.cols * per_out * static_cast<int64_t>(terms.size()));
  const int64_t grain = std::max<int64_t>(1, 32768 / work_per_row);
  at::parallel_for(0, b.rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t gi = b.row0 + i;
      // Columns [first, mirror_from) are written once; [mirror_from, cols)
      // also transposed into row j (symmetric case: j > gi).
      const int64_t first = b.symmetric ? gi - b.col0 : 0;
      const int64_t mirror_from = b.symmetric ? first + 1 : b.cols;
      scalar_t* orow = out + gi * n2 * per_out;
      auto mirror_of = [&](scalar_t* base, int64_t j) { return base + (j * n2 + gi) * per_out; };
      if (bias_out) {
        const Term<scalar_t>& t = terms[0];
        scalar_t* brow = bias_out + gi * n2 * per_out;
        for (int64_t c = first; c < b.cols; ++c) {
          const int64_t j = b.col0 + c;
          const scalar_t sw = t.weight_part(i, c, b.cols);
          if (c < mirror_from && b.symmetric) {  // the pair (gi, gi)
            accumulate_pair<kMode, false, true>(orow + j * per_out, static_cast<scalar_t*>(nullptr), t.dgram, sw, i, c, b, k_out);
            accumulate_pair<kMode, false, true>(brow + j * per_out, static_cast<scalar_t*>(nullptr), t.dgram, t.bs, i, c, b, k_out);
          } else if (c < mirror_from) {
            accumulate_pair<kMode, false>(orow + j * per_out, static_cast<scalar_t*>(nullptr), t.dgram, sw, i, c, b, k_out);
            accumulate_pair<kMode, false>(brow + j * per_out, static_cast<scalar_t*>(nullptr), t.dgram, t.bs, i, c, b, k_out);
          } else {
            accumulate_pair<kMode, true>(orow + j * per_out, mirror_of(out, j), t.dgram, sw, i, c, b, k_out);
            accumulate_pair<kMode, true>(brow + j * per_out, mirror_of(bias_out, j), t.dgram, t.bs, i, c, b, k_out);
          }
        }
        continue;
      }
      if constexpr (kMode == OutputMode::kTrace) {
        // The common K = 1 / trace case: one vectorisable loop per layer over
        // the row of out, which stays in cache between layers.
        scalar_t* o = orow + b.col0;
        for (const Term<scalar_t>& t : terms) {
          const scalar_t* drow = t.dgram + i * b.cols;
          if (t.gram) {
            const scalar_t* grow = t.gram + i * b.cols;
            for (int64_t c = first; c < mirror_from; ++c) o[c] += (t.bs + t.ws * grow[c]) * drow[c];
          } else {
            for (int64_t c = first; c < mirror_from; ++c) o[c] += t.bs * drow[c];
          }
        }
      } else if (b.symmetric) {  // mirror_from = first + 1: the pair (gi, gi)
        accumulate_terms<kMode, false, true>(orow + (b.col0 + first) * per_out, static_cast<scalar_t*>(nullptr),
                                             terms, i, first, b, k_out);
      } else {
        for (int64_t c = first; c < mirror_from; ++c)
          accumulate_terms<kMode, false>(orow + (b.col0 + c) * per_out, static_cast<scalar_t*>(nullptr), terms,
                                         i, c, b, k_out);
      }
      for (int64_t c = mirror_from; c < b.cols; ++c) {
        const int64_t j = b.col0 + c;
        accumulate_terms<kMode, true>(orow + j * per_out, mirror_of(out, j), terms, i, c, b, k_out);
      }
    }
  });
}

}  // namespace

// The shared driver of both ops (and of mlp_ntk): layers in passes of up to
// kMaxFusedLayers, rows in blocks, each block's Grams by GEMM, then one
// epilogue per block.
void accumulate_layers_cpu(at::Tensor& out, const std::optional<at::Tensor>& bias_out, at::TensorList a1,
                       at::TensorList a2, at::TensorList d1, at::TensorList d2,
                       at::ArrayRef<double> weight_scales, at::ArrayRef<double> bias_scales, OutputMode mode) {
  TORCH_CHECK(out.device().is_cpu(), "out must be a CPU tensor, got ", out.device());
  if (out.numel() == 0 || a1.empty()) return;
  // With one output, out is (N1, N2) in memory in every mode and every mode's
  // delta Gram is the same matrix: the trace kernels (whose symmetric path
  // stages the mirror in tiles instead of writing a column per row) serve all.
  if (d1[0].size(1) == 1) mode = OutputMode::kTrace;
  const GramFactors f = gram_factors(a1, a2, d1, d2, mode);
  const int64_t n2 = f.n2, k_out = f.k_out;
  // Summing layers in one pass pays on CPU only in the symmetric case, where
  // it cuts the mirror's scattered (column-order) writes by the number of
  // layers (benchmarks/fusion_ab.py: 1.06-1.15x); elsewhere the GEMMs dominate
  // and fused passes, with their smaller blocks, measured 0.95-1.0x.
  const int64_t max_layers = f.symmetric ? kMaxFusedLayers : 1;
  BlockPlan plan = plan_blocks(f.n1, n2 * (f.per_out + 1), f.n_layers, kBlockElements, kMinRows, max_layers);
  if (f.symmetric) plan.rows = std::min(plan.rows, std::max<int64_t>(kMinSymmetricRows, (f.n1 + 7) / 8));

  for_each_block(f, plan, weight_scales, mode,
                 [&](const Block& b, int64_t l0, int64_t l1, const std::vector<at::Tensor>& grams,
                     const std::vector<at::Tensor>& dgrams) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cpu", [&] {
      std::vector<Term<scalar_t>> terms;
      for (int64_t l = l0; l < l1; ++l) {
        const at::Tensor& g = grams[l - l0];
        terms.push_back({g.defined() ? g.data_ptr<scalar_t>() : nullptr, dgrams[l - l0].data_ptr<scalar_t>(),
                         static_cast<scalar_t>(weight_scales[l]), static_cast<scalar_t>(bias_scales[l])});
      }
      scalar_t* o = out.data_ptr<scalar_t>();
      scalar_t* ob = bias_out ? bias_out->data_ptr<scalar_t>() : nullptr;
      switch (mode) {
        case OutputMode::kFull: accumulate_block<OutputMode::kFull>(o, ob, terms, b, n2, k_out); break;
        case OutputMode::kTrace: accumulate_block<OutputMode::kTrace>(o, ob, terms, b, n2, k_out); break;
        case OutputMode::kPerOutput: accumulate_block<OutputMode::kPerOutput>(o, ob, terms, b, n2, k_out); break;
      }
    });
  });
}

TORCH_LIBRARY_IMPL(fastntk, CPU, m) {
  m.impl("ntk_accumulate", &ntk_accumulate_entry<accumulate_layers_cpu>);
  m.impl("ntk_accumulate_layers", &ntk_accumulate_layers_entry<accumulate_layers_cpu>);
}

}  // namespace fastntk
