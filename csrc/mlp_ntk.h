// mlp_ntk: the NTK of a whole dense network in one op call, shared by the CPU
// and CUDA implementations. The driver here runs the forward pass, the
// batched backward pass and the accumulation over layers, calling the
// device's own per-layer drivers (backprop_delta, the ntk_accumulate driver,
// ntk_diag_accumulate) for every step: the same kernels, in the same order,
// as the Python engine (fastntk/ntk.py) calls them one op at a time, without
// a Python round trip per layer. On small and deep networks those round
// trips (argument parsing, dispatch, the per-layer Python code) cost as much
// as the GEMMs.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

#include "ntk_common.h"

namespace fastntk {

// A device's backprop_delta and ntk_diag_accumulate implementations (the
// functions its op registrations use).
using BackpropFn = at::Tensor (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                  c10::string_view, double, double, double);
using DiagAccumulateFn = void (*)(at::Tensor, const at::Tensor&, const at::Tensor&, double, double,
                                  c10::string_view);

// Parameters of activation_params per layer: negative_slope, beta, threshold.
constexpr int64_t kActivationParams = 3;

// The network as the op receives it, checked.
struct MlpSpec {
  std::vector<at::Tensor> weights;
  std::vector<std::optional<at::Tensor>> biases;
  std::vector<double> scales, bias_scales;
  std::vector<std::string> activations;  // names, as the per-layer ops take them
  std::vector<Activation> codes;
  std::vector<ActivationParams> params;

  int64_t n_layers() const { return static_cast<int64_t>(weights.size()); }
  int64_t k_out() const { return weights.back().size(0); }
  // c_l^2 and beta_l^2: the multipliers of layer l's weight and bias terms.
  double weight_coefficient(int64_t l) const { return scales[l] * scales[l]; }
  double bias_coefficient(int64_t l) const {
    return biases[l] ? bias_scales[l] * bias_scales[l] : 0.0;
  }
};

// Every argument of mlp_ntk checked, with messages naming the argument (and
// layer); the network's shapes chain, and everything shares x1's dtype and
// device.
inline MlpSpec check_mlp_ntk(const at::Tensor& x1, const std::optional<at::Tensor>& x2, at::TensorList weights,
                             const c10::List<std::optional<at::Tensor>>& biases, at::ArrayRef<double> scales,
                             at::ArrayRef<double> bias_scales, const std::vector<std::string>& activations,
                             at::ArrayRef<double> activation_params, bool diagonal) {
  const size_t n_layers = weights.size();
  TORCH_CHECK(n_layers > 0, "weights must hold at least one layer's weight, got an empty list");
  TORCH_CHECK(biases.size() == n_layers && scales.size() == n_layers && bias_scales.size() == n_layers &&
                  activations.size() == n_layers,
              "weights, biases, scales, bias_scales and activations must all have one entry per layer, got "
              "lengths ", weights.size(), ", ", biases.size(), ", ", scales.size(), ", ", bias_scales.size(),
              ", ", activations.size());
  TORCH_CHECK(activation_params.size() == kActivationParams * n_layers,
              "activation_params must hold 3 values (negative_slope, beta, threshold) per layer, ",
              kActivationParams * n_layers, " in all, got ", activation_params.size());
  FASTNTK_CHECK_DIM(x1, 2);
  FASTNTK_CHECK_FLOATING(x1);
  if (x2) {
    TORCH_CHECK(!diagonal, "x2 must be None when diagonal is true (the diagonal pairs each input with itself)");
    TORCH_CHECK(x2->dim() == 2, "x2 must have 2 dimensions, got shape ", shape_str(*x2));
    TORCH_CHECK(x2->scalar_type() == x1.scalar_type(), "x1 and x2 must have the same dtype, got ",
                x1.scalar_type(), " and ", x2->scalar_type());
    TORCH_CHECK(x2->device() == x1.device(), "x1 and x2 must be on the same device, got ", x1.device(), " and ",
                x2->device());
    TORCH_CHECK(x2->size(1) == x1.size(1), "x2.size(1) must equal x1.size(1) (", x1.size(1), "), got shape ",
                shape_str(*x2));
  }
  MlpSpec spec;
  int64_t fan_in = x1.size(1);
  for (size_t l = 0; l < n_layers; ++l) {
    const at::Tensor& w = weights[l];
    TORCH_CHECK(w.dim() == 2, "weights[", l, "] must have 2 dimensions (n_out, n_in), got shape ", shape_str(w));
    TORCH_CHECK(w.scalar_type() == x1.scalar_type(), "weights[", l, "] must have the dtype of x1 (",
                x1.scalar_type(), "), got ", w.scalar_type());
    TORCH_CHECK(w.device() == x1.device(), "weights[", l, "] must be on the device of x1 (", x1.device(),
                "), got ", w.device());
    TORCH_CHECK(w.size(1) == fan_in, "weights[", l, "].size(1) must equal ",
                l == 0 ? "x1.size(1)" : "the previous layer's output size", " (", fan_in, "), got shape ",
                shape_str(w));
    const std::optional<at::Tensor> b = biases.get(l);
    if (b) {
      TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), "biases[", l, "] must have shape (", w.size(0),
                  ",), got shape ", shape_str(*b));
      TORCH_CHECK(b->scalar_type() == x1.scalar_type(), "biases[", l, "] must have the dtype of x1 (",
                  x1.scalar_type(), "), got ", b->scalar_type());
      TORCH_CHECK(b->device() == x1.device(), "biases[", l, "] must be on the device of x1 (", x1.device(),
                  "), got ", b->device());
    }
    try {
      spec.codes.push_back(parse_activation(activations[l]));
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "activations[", l, "]: ", e.msg());
    }
    spec.weights.push_back(w);
    spec.biases.push_back(b);
    spec.scales.push_back(scales[l]);
    spec.bias_scales.push_back(bias_scales[l]);
    spec.activations.push_back(activations[l]);
    spec.params.push_back({activation_params[kActivationParams * l], activation_params[kActivationParams * l + 1],
                           activation_params[kActivationParams * l + 2]});
    fan_in = w.size(0);
  }
  return spec;
}

// The output's shape: (N1, N2) or (N,) for diagonal, then the mode's output
// axes, after (L, 2) when layerwise.
inline std::vector<int64_t> mlp_ntk_out_shape(const MlpSpec& spec, OutputMode mode, int64_t n1, int64_t n2,
                                              bool layerwise, bool diagonal) {
  std::vector<int64_t> shape = diagonal ? diag_out_shape(mode, n1, spec.k_out())
                                        : ntk_out_shape(mode, n1, n2, spec.k_out());
  if (layerwise) shape.insert(shape.begin(), {spec.n_layers(), 2});
  return shape;
}

// phi(h): the very ATen ops the Python layers apply (torch.nn.functional), so
// the activations, and the ReLU masks after them, round exactly as the
// network's own forward pass does.
inline at::Tensor activation_forward(Activation act, const at::Tensor& h, const ActivationParams& p) {
  switch (act) {
    case Activation::kIdentity: return h;
    case Activation::kRelu: return at::relu(h);
    case Activation::kLeakyRelu: return at::leaky_relu(h, p.negative_slope);
    case Activation::kTanh: return at::tanh(h);
    case Activation::kSigmoid: return at::sigmoid(h);
    case Activation::kGelu: return at::gelu(h, "none");
    case Activation::kGeluTanh: return at::gelu(h, "tanh");
    case Activation::kSilu: return at::silu(h);
    case Activation::kSoftplus: return at::softplus(h, p.beta, p.threshold);
    case Activation::kErf: return at::erf(h);
  }
  return h;
}

// h = scale * a W^T + bias_scale * b, operation for operation as
// fastntk.models.pre_activation computes it (bitwise the same result).
inline at::Tensor pre_activation(const at::Tensor& a, const at::Tensor& w, const std::optional<at::Tensor>& b,
                                 double scale, double bias_scale) {
  if (scale == 1.0 && (bias_scale == 0.0 || bias_scale == 1.0))
    return at::linear(a, w, bias_scale == 1.0 ? b : std::nullopt);
  at::Tensor h = at::linear(a, w).mul_(scale);
  return b ? h.add_(b->mul(bias_scale)) : h;
}

// Whether phi'(phi(h)) = phi'(h) for every h (NaN and the kink included):
// identity, relu, and leaky_relu with a positive slope keep h's sign. For
// those layers the backward pass reads the derivative off the activations,
// and a layer's input activations need not be recomputed from h.
inline bool derivative_from_output(Activation act, const ActivationParams& p) {
  return act == Activation::kIdentity || act == Activation::kRelu ||
         (act == Activation::kLeakyRelu && p.negative_slope > 0);
}

// The op's finiteness check. A non-finite parameter shows in the
// pre-activations it feeds: NaN * x is NaN, Inf * x is +-Inf or NaN, and a
// sum with such a term is not finite (the GEMMs compute every product). So
// the op checks its pre-activations, N sum_l n_l numbers, instead of the
// parameters, sum_l n_l n_{l-1} numbers (135 MB on a 3 x 4096 network), and
// returns NaN everywhere if any is not finite; the caller then searches the
// parameters to name the bad one. A bias the pre-activation leaves out
// (bias_scale 0) is checked itself. aminmax propagates NaN and cannot
// overflow, and nothing syncs with the device.
class FiniteCheck {
 public:
  void add(const at::Tensor& t) {
    if (t.numel() == 0) return;
    auto [lo, hi] = at::aminmax(t);
    extrema_.push_back(lo);
    extrema_.push_back(hi);
  }
  // out + 0 (unchanged) if everything added was finite, else NaN everywhere.
  void apply(at::Tensor& out) const {
    if (extrema_.empty()) return;
    const at::Tensor e = at::stack(extrema_);
    out.add_((e - e).sum());  // x - x: 0 for finite x, NaN for +-Inf and NaN
  }

 private:
  std::vector<at::Tensor> extrema_;
};

// What the backward pass keeps of each layer of a batch: a^l = phi(h^l)
// where derivative_from_output, else h^l (memory: one (N, n_l) tensor per
// layer either way). Every pre-activation goes to `check`.
inline std::vector<at::Tensor> mlp_forward(const MlpSpec& spec, const at::Tensor& x, FiniteCheck& check) {
  std::vector<at::Tensor> saved;
  at::Tensor a = x;
  for (int64_t l = 0; l < spec.n_layers(); ++l) {
    const at::Tensor h = pre_activation(a, spec.weights[l], spec.biases[l], spec.scales[l], spec.bias_scales[l]);
    check.add(h);
    if (spec.biases[l] && spec.bias_scales[l] == 0.0) check.add(*spec.biases[l]);
    a = activation_forward(spec.codes[l], h, spec.params[l]);
    saved.push_back(derivative_from_output(spec.codes[l], spec.params[l]) ? a : h);
  }
  return saved;
}

// The signals of one batch, layer by layer from the last: next() moves to
// the layer below. Only the current layer's signals are held; activations
// that mlp_forward did not keep are recomputed from h, as the Python engine
// does.
template <BackpropFn kBackprop>
class LayerSignals {
 public:
  LayerSignals(const MlpSpec& spec, const at::Tensor& x, const std::vector<at::Tensor>& saved)
      : spec_(spec), x_(x), saved_(saved), l_(spec.n_layers() - 1) {
    const at::Tensor& last_saved = saved.back();
    const int64_t n = last_saved.size(0), k = last_saved.size(1);
    const at::Tensor eye = at::eye(k, last_saved.options());
    delta_ = eye.expand({n, k, k});
    const int64_t last = spec.n_layers() - 1;
    if (spec.codes[last] != Activation::kIdentity) {
      const ActivationParams& p = spec.params[last];
      delta_ = kBackprop(delta_, eye, last_saved, 1.0, spec.activations[last], p.negative_slope, p.beta,
                         p.threshold);
    }
  }

  int64_t layer() const { return l_; }
  // a^{l-1}: the layer's input activations.
  at::Tensor input() const {
    if (l_ == 0) return x_;
    const Activation act = spec_.codes[l_ - 1];
    const ActivationParams& p = spec_.params[l_ - 1];
    return derivative_from_output(act, p) ? saved_[l_ - 1] : activation_forward(act, saved_[l_ - 1], p);
  }
  const at::Tensor& delta() const { return delta_; }

  void next() {
    if (l_ > 0) {
      const ActivationParams& p = spec_.params[l_ - 1];
      delta_ = kBackprop(delta_, spec_.weights[l_], saved_[l_ - 1], spec_.scales[l_], spec_.activations[l_ - 1],
                         p.negative_slope, p.beta, p.threshold);
    }
    --l_;
  }

 private:
  const MlpSpec& spec_;
  const at::Tensor& x_;
  const std::vector<at::Tensor>& saved_;
  int64_t l_;
  at::Tensor delta_;
};

// The NTK of the network: full / trace / per_output, optionally per layer
// (layerwise, (L, 2) leading axes) or per sample (diagonal). x2 None means
// x2 = x1 (one forward/backward pass; the accumulate driver then computes
// the upper triangle only). A device registers its instantiation: its
// per-layer implementations; kFuseTwoSided, whether its accumulate driver
// gains from several layers per call when x2 is given (CUDA: yes; CPU:
// measured no), as in fastntk.ntk._add_kernel; and DeviceScope, constructed
// from x1 for the call (the device check and guard).
template <BackpropFn kBackprop, AccumulateDriver kAccumulate, DiagAccumulateFn kDiag, bool kFuseTwoSided,
          typename DeviceScope>
at::Tensor mlp_ntk_driver(const at::Tensor& x1, const std::optional<at::Tensor>& x2, at::TensorList weights,
                          const c10::List<std::optional<at::Tensor>>& biases, at::ArrayRef<double> scales,
                          at::ArrayRef<double> bias_scales, const std::vector<std::string>& activations,
                          at::ArrayRef<double> activation_params, c10::string_view outputs, bool layerwise,
                          bool diagonal) {
  const DeviceScope scope(x1);
  constexpr bool fuse_two_sided = kFuseTwoSided;
  const OutputMode mode = parse_outputs(outputs);
  const MlpSpec spec =
      check_mlp_ntk(x1, x2, weights, biases, scales, bias_scales, activations, activation_params, diagonal);
  const bool symmetric = !x2.has_value();
  const int64_t n1 = x1.size(0), n2 = symmetric ? n1 : x2->size(0);
  at::Tensor out = at::zeros(mlp_ntk_out_shape(spec, mode, n1, n2, layerwise, diagonal), x1.options());
  if (out.numel() == 0) return out;

  FiniteCheck check;
  const std::vector<at::Tensor> saved1 = mlp_forward(spec, x1, check);
  LayerSignals<kBackprop> side1(spec, x1, saved1);

  if (diagonal) {
    for (; side1.layer() >= 0; side1.next()) {
      const int64_t l = side1.layer();
      const double ws = spec.weight_coefficient(l), bs = spec.bias_coefficient(l);
      if (ws == 0.0 && bs == 0.0) continue;
      const at::Tensor a = side1.input();
      if (!layerwise) {
        kDiag(out, a, side1.delta(), ws, bs, outputs);
        continue;
      }
      if (ws != 0.0) kDiag(out[l][0], a, side1.delta(), ws, 0.0, outputs);
      if (bs != 0.0) kDiag(out[l][1], a, side1.delta(), 0.0, bs, outputs);
    }
    check.apply(out);
    return out;
  }

  const std::vector<at::Tensor> saved2 = symmetric ? std::vector<at::Tensor>() : mlp_forward(spec, *x2, check);
  std::optional<LayerSignals<kBackprop>> side2;
  if (!symmetric) side2.emplace(spec, *x2, saved2);

  // Layers wait in `pending` until their tensors reach out's size, then go
  // to the driver together (one pass over out for all of them); layerwise,
  // each layer goes at once into its own rows (weight and bias split).
  const int64_t cache_limit = (symmetric || fuse_two_sided) && !layerwise ? out.numel() : 0;
  std::vector<at::Tensor> a1s, a2s, d1s, d2s;
  std::vector<double> wss, bss;
  int64_t cached = 0;
  auto flush = [&] {
    if (a1s.empty()) return;
    kAccumulate(out, std::nullopt, a1s, a2s, d1s, d2s, wss, bss, mode);
    a1s.clear(), a2s.clear(), d1s.clear(), d2s.clear(), wss.clear(), bss.clear();
    cached = 0;
  };
  for (; side1.layer() >= 0; side1.next()) {
    const int64_t l = side1.layer();
    const double ws = spec.weight_coefficient(l), bs = spec.bias_coefficient(l);
    if (ws == 0.0 && bs == 0.0) {
      if (side2) side2->next();
      continue;
    }
    const at::Tensor a1 = side1.input();
    const at::Tensor a2 = symmetric ? a1 : side2->input();
    const at::Tensor& d1 = side1.delta();
    const at::Tensor& d2 = symmetric ? d1 : side2->delta();
    if (layerwise) {
      at::Tensor weight_row = out[l][0], bias_row = out[l][1];
      if (ws != 0.0 && bs != 0.0) {  // one delta Gram serves both terms
        kAccumulate(weight_row, bias_row, {a1}, {a2}, {d1}, {d2}, {ws}, {bs}, mode);
      } else if (ws != 0.0) {
        kAccumulate(weight_row, std::nullopt, {a1}, {a2}, {d1}, {d2}, {ws}, {0.0}, mode);
      } else {
        kAccumulate(bias_row, std::nullopt, {a1}, {a2}, {d1}, {d2}, {0.0}, {bs}, mode);
      }
    } else {
      a1s.push_back(a1), a2s.push_back(a2), d1s.push_back(d1), d2s.push_back(d2);
      wss.push_back(ws), bss.push_back(bs);
      cached += a1.numel() + d1.numel() + (symmetric ? 0 : a2.numel() + d2.numel());
      if (cached >= cache_limit) flush();
    }
    if (side2) side2->next();
  }
  flush();
  check.apply(out);
  return out;
}

}  // namespace fastntk
