// CUDA ntk_accumulate and ntk_accumulate_layers:
//   out += sum_l (weight_scale_l * A1_l A2_l^T + bias_scale_l) (.) D1_l D2_l^T,
// with the Hadamard product broadcast over the output axes as the outputs mode
// asks (ntk_accumulate is the one-layer case). The Grams are cuBLAS GEMMs
// (at::matmul, so TF32 follows torch.backends.cuda.matmul.allow_tf32); the
// scale, broadcast and sum over up to kMaxFusedLayers layers are one fused
// kernel per row block, so out is read and written once per pass of layers,
// not once per layer. That matters on a GPU: per element of out a layer costs
// 2n GEMM flops against ~16 bytes of epilogue traffic, so for layers narrower
// than a few hundred units the epilogue, not the GEMM, bounds the time.
//
// When a1 is a2 and d1 is d2 in every layer (x2 = x1) only the pairs (i, j >= i)
// are computed and mirrored (see Block in ntk_common.h): about half the GEMM
// and epilogue work, and an exactly symmetric result. Trace blocks mirror
// through shared-memory tiles so that every write is coalesced.
//
// Rows of x1 are taken in blocks so that the Gram temporaries of a block
// together hold about as many elements as out (at least kMinScratch), and no
// more than kBlockElements (256 MiB in float32) unless a block of kMinRows
// rows alone needs more: GPU memory goes to out, not scratch. The generic
// kernel's mirror writes (x2 = x1, full and per_output) are coalesced only
// within a pair's K or K^2 outputs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "../ntk_common.h"
#include "cuda_drivers.cuh"
#include "launch.cuh"

namespace fastntk {
namespace {

constexpr int64_t kBlockElements = int64_t(1) << 26;
// Scratch allowed however small out is, so small outputs still fuse layers.
constexpr int64_t kMinScratch = int64_t(1) << 22;
// Fewer rows per block make the GEMMs inefficient.
constexpr int64_t kMinRows = 64;
// Symmetric blocks: smaller ones skip more of the lower triangle, at the
// price of more, smaller GEMMs.
constexpr int64_t kMinSymmetricRows = 256;

// The layers of one pass, passed to the kernel by value.
//   gram[t]: (rows, cols), nullptr when ws[t] == 0
//   dgram[t]: trace (rows, cols); per_output (K, rows, cols); full (rows K, cols K)
template <typename scalar_t>
struct Terms {
  const scalar_t* gram[kMaxFusedLayers];
  const scalar_t* dgram[kMaxFusedLayers];
  scalar_t ws[kMaxFusedLayers];
  scalar_t bs[kMaxFusedLayers];
  int n;
};

// One thread per element of the block, in out's memory order, so the
// read-modify-write of out is coalesced. Sums every layer's weight and bias
// parts in registers, then adds them to out (the weight part only, and the
// bias part to bias_out, for the layerwise split).
template <OutputMode kMode, typename scalar_t>
__global__ void ntk_accumulate_kernel(scalar_t* __restrict__ out, scalar_t* __restrict__ bias_out,
                                      const Terms<scalar_t> terms, const Block b, int64_t n2,
                                      int64_t k_out) {
  const int64_t per_out = kMode == OutputMode::kFull        ? k_out * k_out
                          : kMode == OutputMode::kPerOutput ? k_out
                                                            : 1;
  const int64_t total = b.rows * b.cols * per_out;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t ic = idx / per_out, e = idx - ic * per_out;  // ic = i * cols + c
    const int64_t i = ic / b.cols, c = ic - i * b.cols;
    const int64_t gi = b.row0 + i, j = b.col0 + c;
    if (b.symmetric && j < gi) continue;  // written by the mirror of (j, gi)
    // Where this element's delta product sits in every layer's dgram, and
    // its transposed position over the output axes.
    int64_t d_off, e_t = e;
    if constexpr (kMode == OutputMode::kTrace) {
      d_off = ic;
    } else if constexpr (kMode == OutputMode::kPerOutput) {
      d_off = (e * b.rows + i) * b.cols + c;
    } else {  // e = k * K + k'
      const int64_t k = e / k_out, kk = e - k * k_out;
      // A symmetric call's pair (i, i) reads (k, k') and (k', k) from the same
      // (upper) GEMM element, so its K x K tile is exactly symmetric too.
      const bool lower = b.symmetric && j == gi && kk < k;
      d_off = (i * k_out + (lower ? kk : k)) * (b.cols * k_out) + c * k_out + (lower ? k : kk);
      e_t = kk * k_out + k;
    }
    scalar_t weight_part = 0, bias_part = 0;
    for (int t = 0; t < terms.n; ++t) {
      const scalar_t d = terms.dgram[t][d_off];
      if (terms.gram[t]) weight_part += terms.ws[t] * terms.gram[t][ic] * d;
      bias_part += terms.bs[t] * d;
    }
    const int64_t o = (gi * n2 + j) * per_out + e;
    const int64_t om = (j * n2 + gi) * per_out + e_t;
    const bool mirror = b.symmetric && j > gi;
    if (bias_out) {
      out[o] += weight_part;
      bias_out[o] += bias_part;
      if (mirror) {
        out[om] += weight_part;
        bias_out[om] += bias_part;
      }
    } else {
      const scalar_t v = weight_part + bias_part;
      out[o] += v;
      if (mirror) out[om] += v;
    }
  }
}

// Symmetric trace blocks, without the generic kernel's mirror, whose writes
// down a column of out are one memory transaction per element (on the CPU the
// same pattern made x2 = x1 slower than two-sided). One thread block per
// kTile x kTile tile of the block's pairs: it sums the layers for its pairs
// with j >= i, adds them to out row-wise (coalesced along j), keeps the j > i
// part in shared memory, and adds it transposed with threads along i
// (coalesced again). Tiles wholly below the diagonal exit at once.
// blockDim = (kTile, kTileRows).
constexpr int kTile = 32;
constexpr int kTileRows = 8;

template <typename scalar_t>
__global__ void ntk_accumulate_trace_symmetric_kernel(scalar_t* __restrict__ out, const Terms<scalar_t> terms,
                                                      const Block b, int64_t n2) {
  FASTNTK_SHARED(scalar_t, upper, [kTile][kTile + 1]);  // +1: no bank conflicts on the transposed read
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * kTile, i0 = static_cast<int64_t>(blockIdx.y) * kTile;
  if (c0 + kTile - 1 < i0) return;  // every pair has j < i (col0 = row0, so j >= i <=> c >= i)
  const int tx = threadIdx.x;
  for (int r = threadIdx.y; r < kTile; r += kTileRows) {
    const int64_t i = i0 + r, c = c0 + tx;
    scalar_t v = 0;
    if (i < b.rows && c < b.cols && c >= i) {
      const int64_t ic = i * b.cols + c;
      for (int t = 0; t < terms.n; ++t) {
        const scalar_t s = terms.gram[t] ? terms.bs[t] + terms.ws[t] * terms.gram[t][ic] : terms.bs[t];
        v += s * terms.dgram[t][ic];
      }
      out[(b.row0 + i) * n2 + b.col0 + c] += v;
    }
    upper[r][tx] = c > i ? v : scalar_t(0);
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTile; r += kTileRows) {
    const int64_t i = i0 + tx, c = c0 + r;
    if (i < b.rows && c < b.cols && c > i) out[(b.col0 + c) * n2 + b.row0 + i] += upper[tx][r];
  }
}

template <typename scalar_t>
void launch_block(OutputMode mode, at::Tensor& out, const std::optional<at::Tensor>& bias_out,
                  const Terms<scalar_t>& terms, const Block& b, int64_t n2, int64_t k_out,
                  cuda::Stream stream) {
  const int64_t numel = b.rows * b.cols * out_per_pair(mode, k_out);
  scalar_t* o = out.data_ptr<scalar_t>();
  scalar_t* ob = bias_out ? bias_out->data_ptr<scalar_t>() : nullptr;
  if (mode == OutputMode::kTrace && b.symmetric && !bias_out) {
    const dim3 tiles(static_cast<unsigned int>((b.cols + kTile - 1) / kTile),
                     static_cast<unsigned int>((b.rows + kTile - 1) / kTile));
    cuda::launch(ntk_accumulate_trace_symmetric_kernel<scalar_t>, tiles, dim3(kTile, kTileRows), 0, stream, o, terms,
                 b, n2);
    return;
  }
  const unsigned int grid = cuda::grid_size(numel);
  switch (mode) {
    case OutputMode::kFull:
      cuda::launch(ntk_accumulate_kernel<OutputMode::kFull, scalar_t>, grid, cuda::kThreads, 0, stream, o, ob, terms,
                   b, n2, k_out);
      break;
    case OutputMode::kTrace:
      cuda::launch(ntk_accumulate_kernel<OutputMode::kTrace, scalar_t>, grid, cuda::kThreads, 0, stream, o, ob, terms,
                   b, n2, k_out);
      break;
    case OutputMode::kPerOutput:
      cuda::launch(ntk_accumulate_kernel<OutputMode::kPerOutput, scalar_t>, grid, cuda::kThreads, 0, stream, o, ob,
                   terms, b, n2, k_out);
      break;
  }
}

}  // namespace

// The shared driver of both ops (and of mlp_ntk): layers in passes of up to
// kMaxFusedLayers, rows in blocks, each block's Grams by cuBLAS, then one
// kernel per block.
void accumulate_layers_cuda(at::Tensor& out, const std::optional<at::Tensor>& bias_out, at::TensorList a1,
                       at::TensorList a2, at::TensorList d1, at::TensorList d2,
                       at::ArrayRef<double> weight_scales, at::ArrayRef<double> bias_scales, OutputMode mode) {
  cuda::check_device(out, "out");
  const cuda::DeviceGuard device_guard(out.device());
  if (out.numel() == 0 || a1.empty()) return;
  const GramFactors f = gram_factors(a1, a2, d1, d2, mode);
  const int64_t n2 = f.n2, k_out = f.k_out;
  const int64_t budget = std::min(cuda::scratch_elements(kBlockElements), std::max(kMinScratch, out.numel()));
  BlockPlan plan = plan_blocks(f.n1, n2 * (f.per_out + 1), f.n_layers, budget, kMinRows, kMaxFusedLayers);
  if (f.symmetric) plan.rows = std::min(plan.rows, std::max<int64_t>(kMinSymmetricRows, (f.n1 + 7) / 8));
  const cuda::Stream stream = cuda::current_stream();

  for_each_block(f, plan, weight_scales, mode,
                 [&](const Block& b, int64_t l0, int64_t l1, const std::vector<at::Tensor>& grams,
                     const std::vector<at::Tensor>& dgrams) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ntk_accumulate_cuda", [&] {
      Terms<scalar_t> terms{};
      terms.n = static_cast<int>(l1 - l0);
      for (int64_t l = l0; l < l1; ++l) {
        const at::Tensor& g = grams[l - l0];
        terms.gram[l - l0] = g.defined() ? g.data_ptr<scalar_t>() : nullptr;
        terms.dgram[l - l0] = dgrams[l - l0].data_ptr<scalar_t>();
        terms.ws[l - l0] = static_cast<scalar_t>(weight_scales[l]);
        terms.bs[l - l0] = static_cast<scalar_t>(bias_scales[l]);
      }
      launch_block<scalar_t>(mode, out, bias_out, terms, b, n2, k_out, stream);
    });
  });
}

FASTNTK_CUDA_LIBRARY_IMPL(m) {
  m.impl("ntk_accumulate", &ntk_accumulate_entry<accumulate_layers_cuda>);
  m.impl("ntk_accumulate_layers", &ntk_accumulate_layers_entry<accumulate_layers_cuda>);
}

}  // namespace fastntk
