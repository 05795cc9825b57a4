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
"""

from __future__ import annotations

import math

import torch

ACTIVATIONS = (
    "identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh",
    "silu", "softplus", "erf",
)
OUTPUT_MODES = ("full", "trace", "per_output")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


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
