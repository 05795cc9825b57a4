// Shared between the CPU and CUDA implementations: the activation and output
// mode enums parsed from the op's string arguments, the activation
// derivatives (host and device), and the shape checks of each op, so that
// both devices accept and refuse exactly the same calls.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "checks.h"

#if defined(__CUDACC__)
#define FASTNTK_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FASTNTK_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fastntk {

enum class Activation {
  kIdentity, kRelu, kLeakyRelu, kTanh, kSigmoid, kGelu, kGeluTanh, kSilu,
  kSoftplus, kErf
};

constexpr const char* kActivationNames =
    "identity, relu, leaky_relu, tanh, sigmoid, gelu, gelu_tanh, silu, "
    "softplus, erf";

inline Activation parse_activation(c10::string_view name) {
  if (name == "identity") return Activation::kIdentity;
  if (name == "relu") return Activation::kRelu;
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "tanh") return Activation::kTanh;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  if (name == "silu") return Activation::kSilu;
  if (name == "softplus") return Activation::kSoftplus;
  if (name == "erf") return Activation::kErf;
  TORCH_CHECK(false, "activation must be one of ", kActivationNames, "; got '",
              std::string(name), "'");
}

// Parameters of the parametrised activations (ignored by the others).
struct ActivationParams {
  double negative_slope;  // leaky_relu
  double beta;            // softplus
  double threshold;       // softplus: linear above beta * h > threshold
};

// h > 0 ? if_pos : otherwise, without a branch on the host: GCC turns the
// plain ternary (and T(h > 0)) into a jump, which mispredicts on half the
// elements when signs are random (measured 2x slower than the whole GEMM).
template <typename T>
FASTNTK_HOST_DEVICE T select_positive(T h, T if_pos, T otherwise) {
#if defined(__CUDA_ARCH__)
  return h > T(0) ? if_pos : otherwise;
#else
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  const U mask = U(0) - U(h > T(0));
  U a, b;
  std::memcpy(&a, &if_pos, sizeof(T));
  std::memcpy(&b, &otherwise, sizeof(T));
  const U r = (a & mask) | (b & ~mask);
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
#endif
}

// phi'(h) for a compile-time activation A, matching the derivative that
// PyTorch's autograd uses for the same module (including the value at the
// kinks: relu'(0) = 0, leaky_relu'(0) = negative_slope, softplus linear above
// its threshold). The kinked ones are written branch-free: h's sign is random,
// and a branch per element mispredicts half the time.
template <Activation A, typename T>
FASTNTK_HOST_DEVICE T activation_derivative(T h, ActivationParams p) {
  if constexpr (A == Activation::kIdentity) {
    return T(1);
  } else if constexpr (A == Activation::kRelu) {
    return select_positive(h, T(1), T(0));
  } else if constexpr (A == Activation::kLeakyRelu) {
    return select_positive(h, T(1), T(p.negative_slope));
  } else if constexpr (A == Activation::kTanh) {
    T t = tanh(h);
    return T(1) - t * t;
  } else if constexpr (A == Activation::kSigmoid) {
    T s = T(1) / (T(1) + exp(-h));
    return s * (T(1) - s);
  } else if constexpr (A == Activation::kGelu) {
    // d/dh [h Phi(h)] = Phi(h) + h phi(h)
    const T inv_sqrt2 = T(0.70710678118654752440);
    const T inv_sqrt2pi = T(0.39894228040143267794);
    return T(0.5) * (T(1) + erf(h * inv_sqrt2)) + h * inv_sqrt2pi * exp(T(-0.5) * h * h);
  } else if constexpr (A == Activation::kGeluTanh) {
    // gelu_tanh(h) = 0.5 h (1 + tanh(u)), u = sqrt(2/pi) (h + 0.044715 h^3)
    const T k0 = T(0.79788456080286535588);
    const T k1 = T(0.044715);
    T u = k0 * (h + k1 * h * h * h);
    T t = tanh(u);
    return T(0.5) * (T(1) + t) + T(0.5) * h * (T(1) - t * t) * k0 * (T(1) + T(3) * k1 * h * h);
  } else if constexpr (A == Activation::kSilu) {
    T s = T(1) / (T(1) + exp(-h));
    return s * (T(1) + h * (T(1) - s));
  } else if constexpr (A == Activation::kSoftplus) {
    T z = h * T(p.beta);
    if (z > T(p.threshold)) return T(1);
    return T(1) / (T(1) + exp(-z));
  } else {  // kErf
    const T two_over_sqrtpi = T(1.12837916709551257390);
    return two_over_sqrtpi * exp(-h * h);
  }
}

// The same for an activation known only at run time (one switch per call).
template <typename T>
FASTNTK_HOST_DEVICE T activation_derivative(Activation act, T h, ActivationParams p) {
  switch (act) {
    case Activation::kIdentity: return activation_derivative<Activation::kIdentity>(h, p);
    case Activation::kRelu: return activation_derivative<Activation::kRelu>(h, p);
    case Activation::kLeakyRelu: return activation_derivative<Activation::kLeakyRelu>(h, p);
    case Activation::kTanh: return activation_derivative<Activation::kTanh>(h, p);
    case Activation::kSigmoid: return activation_derivative<Activation::kSigmoid>(h, p);
    case Activation::kGelu: return activation_derivative<Activation::kGelu>(h, p);
    case Activation::kGeluTanh: return activation_derivative<Activation::kGeluTanh>(h, p);
    case Activation::kSilu: return activation_derivative<Activation::kSilu>(h, p);
    case Activation::kSoftplus: return activation_derivative<Activation::kSoftplus>(h, p);
    case Activation::kErf: return activation_derivative<Activation::kErf>(h, p);
  }
  return T(0);
}

enum class OutputMode { kFull, kTrace, kPerOutput };

inline OutputMode parse_outputs(c10::string_view name) {
  if (name == "full") return OutputMode::kFull;
  if (name == "trace") return OutputMode::kTrace;
  if (name == "per_output") return OutputMode::kPerOutput;
  TORCH_CHECK(false, "outputs must be one of full, trace, per_output; got '",
              std::string(name), "'");
}

// backprop_delta: delta_next (N, K, n_next), weight (n_next, n), h (N, n).
inline void check_backprop_delta(const at::Tensor& delta_next,
                                 const at::Tensor& weight, const at::Tensor& h) {
  FASTNTK_CHECK_DIM(delta_next, 3);
  FASTNTK_CHECK_DIM(weight, 2);
  FASTNTK_CHECK_DIM(h, 2);
  FASTNTK_CHECK_FLOATING(delta_next);
  FASTNTK_CHECK_SAME_DTYPE(delta_next, weight);
  FASTNTK_CHECK_SAME_DTYPE(delta_next, h);
  FASTNTK_CHECK_SAME_DEVICE(delta_next, weight);
  FASTNTK_CHECK_SAME_DEVICE(delta_next, h);
  FASTNTK_CHECK_SIZE(weight, 0, delta_next.size(2), "delta_next.size(2)");
  FASTNTK_CHECK_SIZE(h, 0, delta_next.size(0), "delta_next.size(0)");
  FASTNTK_CHECK_SIZE(h, 1, weight.size(1), "weight.size(1)");
}

// The expected shape of the NTK output for N1 x N2 inputs and K outputs.
inline std::vector<int64_t> ntk_out_shape(OutputMode mode, int64_t n1,
                                          int64_t n2, int64_t k) {
  switch (mode) {
    case OutputMode::kFull:
      return {n1, n2, k, k};
    case OutputMode::kTrace:
      return {n1, n2};
    case OutputMode::kPerOutput:
      return {n1, n2, k};
  }
  return {};
}

// ntk_accumulate: out (mode shape), a1 (N1, p), a2 (N2, p), d1 (N1, K, n),
// d2 (N2, K, n).
inline void check_ntk_accumulate(const at::Tensor& out, const at::Tensor& a1,
                                 const at::Tensor& a2, const at::Tensor& d1,
                                 const at::Tensor& d2, OutputMode mode) {
  FASTNTK_CHECK_DIM(a1, 2);
  FASTNTK_CHECK_DIM(a2, 2);
  FASTNTK_CHECK_DIM(d1, 3);
  FASTNTK_CHECK_DIM(d2, 3);
  FASTNTK_CHECK_FLOATING(out);
  for (const at::Tensor* t : {&a1, &a2, &d1, &d2}) {
    TORCH_CHECK(t->scalar_type() == out.scalar_type(),
                "a1, a2, d1, d2 must have the dtype of out (",
                out.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == out.device(),
                "a1, a2, d1, d2 must be on the device of out (", out.device(),
                "), got ", t->device());
  }
  FASTNTK_CHECK_SIZE(a2, 1, a1.size(1), "a1.size(1)");
  FASTNTK_CHECK_SIZE(d1, 0, a1.size(0), "a1.size(0)");
  FASTNTK_CHECK_SIZE(d2, 0, a2.size(0), "a2.size(0)");
  FASTNTK_CHECK_SIZE(d2, 1, d1.size(1), "d1.size(1)");
  FASTNTK_CHECK_SIZE(d2, 2, d1.size(2), "d1.size(2)");
  auto expected = ntk_out_shape(mode, a1.size(0), a2.size(0), d1.size(1));
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), "out must have shape ",
              at::IntArrayRef(expected), " for this outputs mode, got shape ",
              shape_str(out));
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  for (const at::Tensor* t : {&a1, &a2, &d1, &d2}) at::assert_no_overlap(out, *t);
}

// The right-hand factor of ntk_accumulate's delta Gram, laid out once per
// call from contiguous d2 (N2, K, n): full (n, N2 K), trace (K n, N2),
// per_output (K, n, N2).
inline at::Tensor delta_gram_right(OutputMode mode, const at::Tensor& d2c) {
  const int64_t n2 = d2c.size(0), k_out = d2c.size(1), n = d2c.size(2);
  switch (mode) {
    case OutputMode::kFull: return d2c.reshape({n2 * k_out, n}).t();
    case OutputMode::kTrace: return d2c.reshape({n2, k_out * n}).t();
    case OutputMode::kPerOutput: return d2c.permute({1, 2, 0});
  }
  return at::Tensor();
}

// The delta Gram of rows d1b (rows, K, n) against columns [col0, col0 + cols)
// of x2, contiguous: full (rows K, cols K), trace (rows, cols), per_output
// (K, rows, cols). One GEMM (batched over K for per_output).
inline at::Tensor delta_gram(OutputMode mode, const at::Tensor& d1b, const at::Tensor& right,
                             int64_t col0, int64_t cols) {
  const int64_t rows = d1b.size(0), k_out = d1b.size(1), n = d1b.size(2);
  switch (mode) {
    case OutputMode::kFull:
      return at::matmul(d1b.reshape({rows * k_out, n}), right.narrow(1, col0 * k_out, cols * k_out))
          .contiguous();
    case OutputMode::kTrace:
      return at::matmul(d1b.reshape({rows, k_out * n}), right.narrow(1, col0, cols)).contiguous();
    case OutputMode::kPerOutput:
      return at::matmul(d1b.permute({1, 0, 2}), right.narrow(2, col0, cols)).contiguous();
  }
  return at::Tensor();
}

// ntk_accumulate_layers: L layers' tensors, each checked as ntk_accumulate
// checks them (the message names the layer), plus one scale of each kind per
// layer.
inline void check_ntk_accumulate_layers(const at::Tensor& out, at::TensorList a1, at::TensorList a2,
                                        at::TensorList d1, at::TensorList d2,
                                        at::ArrayRef<double> weight_scales,
                                        at::ArrayRef<double> bias_scales, OutputMode mode) {
  const size_t n_layers = a1.size();
  TORCH_CHECK(a2.size() == n_layers && d1.size() == n_layers && d2.size() == n_layers &&
                  weight_scales.size() == n_layers && bias_scales.size() == n_layers,
              "a1, a2, d1, d2, weight_scales and bias_scales must all have one entry per layer, got lengths ",
              a1.size(), ", ", a2.size(), ", ", d1.size(), ", ", d2.size(), ", ", weight_scales.size(),
              ", ", bias_scales.size());
  FASTNTK_CHECK_FLOATING(out);
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  for (size_t l = 0; l < n_layers; ++l) {
    try {
      check_ntk_accumulate(out, a1[l], a2[l], d1[l], d2[l], mode);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "layer ", l, ": ", e.msg());
    }
  }
}

// Whether the pairs (a1, a2) and (d1, d2) are the same tensors in every layer:
// then the NTK block is symmetric and only its upper triangle is computed.
inline bool same_sides(at::TensorList a1, at::TensorList a2, at::TensorList d1, at::TensorList d2) {
  for (size_t l = 0; l < a1.size(); ++l)
    if (!a1[l].is_same(a2[l]) || !d1[l].is_same(d2[l])) return false;
  return true;
}

// Elements of out per row of x1: N2 times 1, K or K^2.
inline int64_t out_per_pair(OutputMode mode, int64_t k_out) {
  return mode == OutputMode::kFull ? k_out * k_out : mode == OutputMode::kPerOutput ? k_out : 1;
}

// At most this many layers are summed in one pass over out (the CUDA kernel
// takes their pointers by value).
constexpr int64_t kMaxFusedLayers = 8;

// How a call is cut into passes: `layers` layers (at most max_layers) per
// pass over out, all their Gram temporaries alive together, and `rows` rows
// of x1 per block, so that the temporaries of a block hold about `budget`
// elements, never fewer than min_rows rows (GEMMs on fewer rows run far
// below peak).
struct BlockPlan {
  int64_t layers, rows;
};

inline BlockPlan plan_blocks(int64_t n1, int64_t temp_per_row, int64_t n_layers, int64_t budget,
                             int64_t min_rows, int64_t max_layers) {
  temp_per_row = std::max<int64_t>(1, temp_per_row);
  min_rows = std::max<int64_t>(1, std::min(min_rows, n1));
  BlockPlan plan;
  plan.layers = std::max<int64_t>(
      1, std::min({n_layers, max_layers, kMaxFusedLayers, budget / (min_rows * temp_per_row)}));
  plan.rows = std::max<int64_t>(min_rows, budget / (plan.layers * temp_per_row));
  plan.rows = std::max<int64_t>(1, std::min(plan.rows, n1));
  return plan;
}

// One row block of out: rows [row0, row0 + rows) against columns
// [col0, col0 + cols). In the symmetric case col0 = row0, and of each row gi
// only the pairs (gi, j >= gi) are computed: (gi, gi) is written once and
// every j > gi both to (gi, j) and, transposed over the output axes, to
// (j, gi). Both halves get the same value, so the result is exactly
// symmetric.
struct Block {
  int64_t row0, rows;
  int64_t col0, cols;
  bool symmetric;
};

inline Block make_block(int64_t row0, int64_t rows, int64_t n2, bool symmetric) {
  return Block{row0, rows, symmetric ? row0 : 0, symmetric ? n2 - row0 : n2, symmetric};
}

// The optional second output of ntk_accumulate: like out in every respect.
inline void check_bias_out(const at::Tensor& out, const at::Tensor& bias_out) {
  TORCH_CHECK(bias_out.sizes() == out.sizes(), "bias_out must have the shape of out ",
              shape_str(out), ", got shape ", shape_str(bias_out));
  FASTNTK_CHECK_SAME_DTYPE(out, bias_out);
  FASTNTK_CHECK_SAME_DEVICE(out, bias_out);
  TORCH_CHECK(bias_out.is_contiguous(), "bias_out must be contiguous");
  TORCH_CHECK(!bias_out.is_same(out), "bias_out must be a different tensor from out");
  at::assert_no_overlap(out, bias_out);
}

// bias_out is written while the inputs are still read (row block by row block).
inline void check_bias_out_inputs(const at::Tensor& bias_out, std::initializer_list<const at::Tensor*> inputs) {
  for (const at::Tensor* t : inputs) at::assert_no_overlap(bias_out, *t);
}

// What both devices' drivers derive from an ntk_accumulate(_layers) call:
// its sizes, whether it is symmetric (a1[l] is a2[l] and d1[l] is d2[l] for
// every l), and per layer the Gram factors laid out once: the left ones
// contiguous (blocks take row slices), the right ones as views (blocks take
// column slices); a symmetric call shares one layout per layer.
struct GramFactors {
  int64_t n_layers, n1, n2, k_out, per_out;
  bool symmetric;
  std::vector<at::Tensor> a1, a2t, d1, d2_right;
};

// Requires at least one layer.
inline GramFactors gram_factors(at::TensorList a1, at::TensorList a2, at::TensorList d1, at::TensorList d2,
                                OutputMode mode) {
  GramFactors f;
  f.n_layers = static_cast<int64_t>(a1.size());
  f.n1 = a1[0].size(0);
  f.n2 = a2[0].size(0);
  f.k_out = d1[0].size(1);
  f.per_out = out_per_pair(mode, f.k_out);
  f.symmetric = same_sides(a1, a2, d1, d2);
  for (size_t l = 0; l < a1.size(); ++l) {
    f.a1.push_back(a1[l].contiguous());
    f.a2t.push_back(f.symmetric ? f.a1.back().t() : a2[l].contiguous().t());  // (p, N2)
    f.d1.push_back(d1[l].contiguous());
    f.d2_right.push_back(delta_gram_right(mode, f.symmetric ? f.d1.back() : d2[l].contiguous()));
  }
  return f;
}

// Runs fn(block, l0, l1, grams, dgrams) for every pass of layers [l0, l1) and
// row block of the plan, with that block's Grams of those layers (grams[t]
// undefined where layer l0 + t has weight scale 0). The tensors live until
// fn returns, which on CUDA is enough: the caching allocator reuses their
// memory only for work queued after fn's kernel on the same stream.
template <typename Fn>
void for_each_block(const GramFactors& f, const BlockPlan& plan, at::ArrayRef<double> weight_scales,
                    OutputMode mode, Fn&& fn) {
  for (int64_t l0 = 0; l0 < f.n_layers; l0 += plan.layers) {
    const int64_t l1 = std::min(f.n_layers, l0 + plan.layers);
    for (int64_t row0 = 0; row0 < f.n1; row0 += plan.rows) {
      const Block b = make_block(row0, std::min(plan.rows, f.n1 - row0), f.n2, f.symmetric);
      std::vector<at::Tensor> grams, dgrams;
      for (int64_t l = l0; l < l1; ++l) {
        grams.push_back(weight_scales[l] != 0.0
                            ? at::matmul(f.a1[l].narrow(0, row0, b.rows), f.a2t[l].narrow(1, b.col0, b.cols))
                                  .contiguous()
                            : at::Tensor());
        dgrams.push_back(delta_gram(mode, f.d1[l].narrow(0, row0, b.rows), f.d2_right[l], b.col0, b.cols));
      }
      fn(b, l0, l1, grams, dgrams);
    }
  }
}

// A device's driver: out (+ bias_out) += the layers' terms, inputs checked.
using AccumulateDriver = void (*)(at::Tensor&, const std::optional<at::Tensor>&, at::TensorList, at::TensorList,
                                  at::TensorList, at::TensorList, at::ArrayRef<double>, at::ArrayRef<double>,
                                  OutputMode);

// The entry points of ntk_accumulate and ntk_accumulate_layers for a device:
// parse and check as both devices must, then run the device's driver.
template <AccumulateDriver kDriver>
void ntk_accumulate_entry(at::Tensor out, const at::Tensor& a1, const at::Tensor& a2, const at::Tensor& d1,
                          const at::Tensor& d2, double weight_scale, double bias_scale, c10::string_view outputs,
                          const std::optional<at::Tensor>& bias_out) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_accumulate(out, a1, a2, d1, d2, mode);
  if (bias_out) {
    check_bias_out(out, *bias_out);
    check_bias_out_inputs(*bias_out, {&a1, &a2, &d1, &d2});
  }
  kDriver(out, bias_out, {a1}, {a2}, {d1}, {d2}, {weight_scale}, {bias_scale}, mode);
}

template <AccumulateDriver kDriver>
void ntk_accumulate_layers_entry(at::Tensor out, at::TensorList a1, at::TensorList a2, at::TensorList d1,
                                 at::TensorList d2, at::ArrayRef<double> weight_scales,
                                 at::ArrayRef<double> bias_scales, c10::string_view outputs) {
  const OutputMode mode = parse_outputs(outputs);
  check_ntk_accumulate_layers(out, a1, a2, d1, d2, weight_scales, bias_scales, mode);
  kDriver(out, std::nullopt, a1, a2, d1, d2, weight_scales, bias_scales, mode);
}

// The expected shape of the per-sample diagonal for N inputs and K outputs.
inline std::vector<int64_t> diag_out_shape(OutputMode mode, int64_t n,
                                           int64_t k) {
  switch (mode) {
    case OutputMode::kFull:
      return {n, k, k};
    case OutputMode::kTrace:
      return {n};
    case OutputMode::kPerOutput:
      return {n, k};
  }
  return {};
}

// ntk_diag_accumulate: out (mode shape), a (N, p), d (N, K, n).
inline void check_ntk_diag_accumulate(const at::Tensor& out,
                                      const at::Tensor& a, const at::Tensor& d,
                                      OutputMode mode) {
  FASTNTK_CHECK_DIM(a, 2);
  FASTNTK_CHECK_DIM(d, 3);
  FASTNTK_CHECK_FLOATING(out);
  FASTNTK_CHECK_SAME_DTYPE(out, a);
  FASTNTK_CHECK_SAME_DTYPE(out, d);
  FASTNTK_CHECK_SAME_DEVICE(out, a);
  FASTNTK_CHECK_SAME_DEVICE(out, d);
  FASTNTK_CHECK_SIZE(d, 0, a.size(0), "a.size(0)");
  auto expected = diag_out_shape(mode, a.size(0), d.size(1));
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), "out must have shape ",
              at::IntArrayRef(expected), " for this outputs mode, got shape ",
              shape_str(out));
  TORCH_CHECK(out.is_contiguous(), "out must be contiguous");
  at::assert_no_overlap(out, a);
  at::assert_no_overlap(out, d);
}

}  // namespace fastntk
