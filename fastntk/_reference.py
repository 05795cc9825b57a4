"""Pure-PyTorch version of every fastntk op, with the op's exact signature.

Written for clarity, exact in float64. Two uses: the oracle that
``tests/test_ops.py`` compares the compiled kernels with, and the
implementation registered under ``torch.ops.fastntk.*`` when the compiled
extension is missing (or has no kernel for a device).

Shapes, for N inputs, K outputs, a layer of width n fed by width p:

- ``backprop_delta``: delta_next (N, K, n_next), weight (n_next, n),
  h (N, n) -> delta (N, K, n).
- ``ntk_accumulate``: out (N1, N2, K, K) | (N1, N2) | (N1, N2, K),
  a1 (N1, p), a2 (N2, p), d1 (N1, K, n), d2 (N2, K, n).
- ``ntk_accumulate_layers``: out as above, and one (a1, a2, d1, d2) of
  those shapes per layer (p and n vary with the layer).
- ``ntk_diag_accumulate``: out (N, K, K) | (N,) | (N, K), a (N, p), d (N, K, n).
- ``mlp_ntk``: x1 (N1, n_0), x2 (N2, n_0) or None, weights[l] (n_{l+1}, n_l),
  biases[l] (n_{l+1},) or None -> the network's NTK, (N1, N2) + output axes
  ((N1,) + output axes when diagonal), after (L, 2) when layerwise.

The forward pass of a dense layer (:func:`pre_activation`,
:func:`activation_forward`) is written here once, for the ops and for
:class:`fastntk.MLP` alike.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = (
    "identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh",
    "silu", "softplus", "erf",
)
OUTPUT_MODES = ("full", "trace", "per_output")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


_ACTIVATION_FORWARD = {
    "identity": lambda h, slope, beta, threshold: h,
    "relu": lambda h, slope, beta, threshold: F.relu(h),
    "leaky_relu": lambda h, slope, beta, threshold: F.leaky_relu(h, slope),
    "tanh": lambda h, slope, beta, threshold: torch.tanh(h),
    "sigmoid": lambda h, slope, beta, threshold: torch.sigmoid(h),
    "gelu": lambda h, slope, beta, threshold: F.gelu(h),
    "gelu_tanh": lambda h, slope, beta, threshold: F.gelu(h, approximate="tanh"),
    "silu": lambda h, slope, beta, threshold: F.silu(h),
    "softplus": lambda h, slope, beta, threshold: F.softplus(h, beta, threshold),
    "erf": lambda h, slope, beta, threshold: torch.erf(h),
}


def activation_forward(
    h: torch.Tensor, activation: str, negative_slope: float = 0.01,
    beta: float = 1.0, threshold: float = 20.0,
) -> torch.Tensor:
    """phi(h) elementwise, by the very function the corresponding nn module uses."""
    _check_choice("activation", activation, ACTIVATIONS)
    return _ACTIVATION_FORWARD[activation](h, negative_slope, beta, threshold)


def pre_activation(a: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   scale: float, bias_scale: float) -> torch.Tensor:
    """h = scale * a @ weight^T + bias_scale * bias, (N, n_out).

    The one place a dense layer's forward is written: :class:`fastntk.MLP`,
    the NTK engine and the ops (csrc/mlp_ntk.h repeats it operation for
    operation) all compute it so, and with scale = bias_scale = 1 it is
    exactly ``nn.Linear``'s ``F.linear``. Identical operations give identical
    rounding, so in float32 the engine's ReLU masks are those of the network
    as it runs (a pre-activation within rounding of 0 can otherwise flip).
    """
    if scale == 1.0 and bias_scale in (0.0, 1.0):
        return F.linear(a, weight, bias if bias_scale == 1.0 else None)
    h = F.linear(a, weight) * scale
    return h if bias is None else h + bias_scale * bias


def activation_derivative(
    h: torch.Tensor, activation: str, negative_slope: float = 0.01,
    beta: float = 1.0, threshold: float = 20.0,
) -> torch.Tensor:
    """phi'(h) elementwise, with autograd's values at the kinks."""
    _check_choice("activation", activation, ACTIVATIONS)
    if activation == "identity":
        return torch.ones_like(h)
    if activation == "relu":
        return (h > 0).to(h.dtype)
    if activation == "leaky_relu":
        return torch.where(h > 0, torch.ones_like(h), torch.full_like(h, negative_slope))
    if activation == "tanh":
        return 1 - torch.tanh(h) ** 2
    if activation == "sigmoid":
        s = torch.sigmoid(h)
        return s * (1 - s)
    if activation == "gelu":
        return 0.5 * (1 + torch.erf(h / math.sqrt(2))) + h * torch.exp(-0.5 * h * h) / math.sqrt(2 * math.pi)
    if activation == "gelu_tanh":
        k0, k1 = math.sqrt(2 / math.pi), 0.044715
        t = torch.tanh(k0 * (h + k1 * h**3))
        return 0.5 * (1 + t) + 0.5 * h * (1 - t * t) * k0 * (1 + 3 * k1 * h * h)
    if activation == "silu":
        s = torch.sigmoid(h)
        return s * (1 + h * (1 - s))
    if activation == "softplus":
        z = beta * h
        return torch.where(z > threshold, torch.ones_like(h), torch.sigmoid(z))
    # erf
    return 2 / math.sqrt(math.pi) * torch.exp(-h * h)


def backprop_delta(
    delta_next: torch.Tensor, weight: torch.Tensor, h: torch.Tensor, scale: float,
    activation: str, negative_slope: float = 0.01, beta: float = 1.0,
    threshold: float = 20.0,
) -> torch.Tensor:
    """delta = phi'(h) * scale * (delta_next @ weight), for all K outputs at once."""
    dphi = activation_derivative(h, activation, negative_slope, beta, threshold)
    return (delta_next @ weight) * (scale * dphi).unsqueeze(1)


def _scaled_gram(a1, a2, weight_scale, bias_scale):
    """weight_scale * a1 a2^T + bias_scale, (N1, N2); skips the GEMM when unused."""
    if weight_scale == 0.0:
        return torch.full((a1.shape[0], a2.shape[0]), bias_scale, dtype=a1.dtype, device=a1.device)
    return weight_scale * (a1 @ a2.T) + bias_scale


def ntk_accumulate(
    out: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, d1: torch.Tensor,
    d2: torch.Tensor, weight_scale: float, bias_scale: float, outputs: str,
    bias_out: torch.Tensor | None = None,
) -> None:
    """out += (weight_scale a1 a2^T + bias_scale) (.) <d1, d2>, broadcast per mode;
    with ``bias_out``, the weight term goes to out and the bias term to bias_out."""
    _check_choice("outputs", outputs, OUTPUT_MODES)
    dgram = {
        "full": lambda: torch.einsum("ikn,jln->ijkl", d1, d2),
        "trace": lambda: torch.einsum("ikn,jkn->ij", d1, d2),
        "per_output": lambda: torch.einsum("ikn,jkn->ijk", d1, d2),
    }[outputs]()
    extra = (None,) * (dgram.dim() - 2)
    if bias_out is None:
        out += _scaled_gram(a1, a2, weight_scale, bias_scale)[(..., *extra)] * dgram
    else:
        out += _scaled_gram(a1, a2, weight_scale, 0.0)[(..., *extra)] * dgram
        bias_out += bias_scale * dgram


def ntk_accumulate_layers(
    out: torch.Tensor, a1: list[torch.Tensor], a2: list[torch.Tensor], d1: list[torch.Tensor],
    d2: list[torch.Tensor], weight_scales: list[float], bias_scales: list[float], outputs: str,
) -> None:
    """The sum over layers l of :func:`ntk_accumulate` with layer l's tensors and scales."""
    lengths = {len(a1), len(a2), len(d1), len(d2), len(weight_scales), len(bias_scales)}
    if len(lengths) != 1:
        raise RuntimeError("a1, a2, d1, d2, weight_scales and bias_scales must all have one entry per layer")
    for layer in zip(a1, a2, d1, d2, weight_scales, bias_scales):
        ntk_accumulate(out, *layer, outputs)


def ntk_diag_accumulate(
    out: torch.Tensor, a: torch.Tensor, d: torch.Tensor, weight_scale: float,
    bias_scale: float, outputs: str,
) -> None:
    """out[i] += (weight_scale |a_i|^2 + bias_scale) <d_ik, d_ik'>, per mode."""
    _check_choice("outputs", outputs, OUTPUT_MODES)
    scale = torch.full((a.shape[0],), bias_scale, dtype=a.dtype, device=a.device)
    if weight_scale != 0.0:  # like the kernels, a is not read when its term is dropped
        scale = scale + weight_scale * (a * a).sum(1)
    if outputs == "full":
        out += scale[:, None, None] * torch.einsum("ikn,iln->ikl", d, d)
    elif outputs == "trace":
        out += scale * (d * d).sum((1, 2))
    else:
        out += scale[:, None] * (d * d).sum(2)


def _mlp_layer_signals(x, hs, weights, scales, acts):
    """(l, a^{l-1}, delta^l) from the last layer down; acts[l] = (name, slope, beta, threshold)."""
    n, k = hs[-1].shape
    eye = torch.eye(k, dtype=x.dtype, device=x.device)
    delta = eye.expand(n, k, k)
    if acts[-1][0] != "identity":
        delta = backprop_delta(delta, eye, hs[-1], 1.0, *acts[-1])
    for l in range(len(weights) - 1, -1, -1):
        yield l, x if l == 0 else activation_forward(hs[l - 1], *acts[l - 1]), delta
        if l > 0:
            delta = backprop_delta(delta, weights[l], hs[l - 1], scales[l], *acts[l - 1])


def mlp_ntk(
    x1: torch.Tensor, x2: torch.Tensor | None, weights: list[torch.Tensor],
    biases: list[torch.Tensor | None], scales: list[float], bias_scales: list[float],
    activations: list[str], activation_params: list[float], outputs: str,
    layerwise: bool = False, diagonal: bool = False,
) -> torch.Tensor:
    """The NTK of the dense network h^l = scales[l] a^{l-1} W^l^T + bias_scales[l] b^l,
    a^l = phi_l(h^l), summed over every weight and bias (c_l^2 and beta_l^2
    weighting), from the per-layer functions above; activation_params holds
    (negative_slope, beta, threshold) per layer. The result is NaN
    everywhere if a pre-activation is not finite (as from a NaN or Inf
    parameter), or a bias that a zero bias_scale leaves out is not."""
    _check_choice("outputs", outputs, OUTPUT_MODES)
    n_layers = len(weights)
    if not n_layers or len({n_layers, len(biases), len(scales), len(bias_scales), len(activations)}) != 1:
        raise RuntimeError("weights, biases, scales, bias_scales and activations must all have one entry per layer")
    if len(activation_params) != 3 * n_layers:
        raise RuntimeError("activation_params must hold 3 values (negative_slope, beta, threshold) per layer")
    if diagonal and x2 is not None:
        raise RuntimeError("x2 must be None when diagonal is true (the diagonal pairs each input with itself)")
    acts = [(activations[l], *activation_params[3 * l:3 * l + 3]) for l in range(n_layers)]

    def forward(x):
        hs, a = [], x
        for l in range(n_layers):
            hs.append(pre_activation(a, weights[l], biases[l], scales[l], bias_scales[l]))
            a = activation_forward(hs[-1], *acts[l])
        return hs

    k, n1 = weights[-1].shape[0], x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    lead = (n1,) if diagonal else (n1, n2)
    shape = lead + {"full": (k, k), "trace": (), "per_output": (k,)}[outputs]
    out = torch.zeros(((n_layers, 2) if layerwise else ()) + shape, dtype=x1.dtype, device=x1.device)
    coefficients = [(scales[l] ** 2, bias_scales[l] ** 2 if biases[l] is not None else 0.0) for l in range(n_layers)]
    hs1, hs2 = forward(x1), None if x2 is None else forward(x2)
    signals1 = _mlp_layer_signals(x1, hs1, weights, scales, acts)
    pairs = (((s, s) for s in signals1) if x2 is None
             else zip(signals1, _mlp_layer_signals(x2, hs2, weights, scales, acts)))
    for (l, a1, d1), (_, a2, d2) in pairs:
        ws, bs = coefficients[l]
        if diagonal:
            parts = ((out[l, 0], ws, 0.0), (out[l, 1], 0.0, bs)) if layerwise else ((out, ws, bs),)
            for target, w, b in parts:
                ntk_diag_accumulate(target, a1, d1, w, b, outputs)
        elif layerwise:
            ntk_accumulate(out[l, 0], a1, a2, d1, d2, ws, bs, outputs, bias_out=out[l, 1])
        else:
            ntk_accumulate(out, a1, a2, d1, d2, ws, bs, outputs)
    # the op's finiteness contract: NaN everywhere if a pre-activation (or a
    # bias that bias_scale 0 leaves out of it) is not finite
    checked = [*hs1, *(hs2 or []),
               *(b for b, s in zip(biases, bias_scales) if b is not None and s == 0.0)]
    if not all(bool(torch.isfinite(t).all()) for t in checked):
        out.fill_(float("nan"))
    return out
