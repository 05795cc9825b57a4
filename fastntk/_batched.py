"""The batched NTK engine of :mod:`fastntk.ensemble`: C stacked networks, one
init per leading index, through batched GEMMs.

The engine needs from a network only two products per layer l, supplied as
callables so that the weights may be explicit tensors (the seeded sampler) or
Gaussian matrices conditioned on the signals (:mod:`fastntk._projected`):

- ``preact(l, a)``: a W_l^T for layer l's input a (C, N, n_l) (l = 0: the
  inputs x, (N, n_0), shared by every init), (C, N, n_{l+1});
- ``times_weight(l, d)``: d W_l for backward signals d (C, N K, n_{l+1}),
  (C, N K, n_l), for the hidden layers 1 <= l < L - 1.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._reference import activation_derivative
from .models import Activation

#: preact(l, a) -> a W_l^T
PreActivation = Callable[[int, torch.Tensor], torch.Tensor]
#: times_weight(l, d) -> d W_l
TimesWeight = Callable[[int, torch.Tensor], torch.Tensor]


def forward(preact: PreActivation, c: int, depth: int, bs, scales, bias_scales, phi: Activation, x: torch.Tensor,
            n1: int | None):
    """The forward pass of C stacked networks of ``depth`` weight layers,
    keeping only what the NTK needs.

    bs[l] (C, n_{l+1}) are the biases (``bs`` or an entry None: zero).
    Returns (grams, dphis): grams (depth, C, Na, Nb) holds <a^{l-1}, a'^{l-1}>,
    the Gram of layer l's inputs (a^{-1} = x); dphis[l] (C, N, n_{l+1}) is
    c_{l+1} phi'(h^l) for each hidden layer l, the factor of the backward
    pass. Each activation is dropped once its Gram is taken. The output
    layer's forward is not needed and not computed."""
    n = x.shape[0]
    na = n if n1 is None else n1
    nb = n - na if n1 is not None else n
    grams = torch.empty((depth, c, na, nb), dtype=x.dtype, device=x.device)
    grams[0] = x[:na] @ x[n - nb:].T
    relu = phi.name == "relu"
    dphis = []
    a = x
    for l in range(depth - 1):
        h = preact(l, a)
        if scales[l] != 1.0:
            h.mul_(scales[l])
        if bs is not None and bs[l] is not None and bias_scales[l] != 0.0:
            h.add_(bs[l].unsqueeze(1), alpha=bias_scales[l])
        if relu:  # phi' and phi in place, without the generic path's temporaries
            dphi = (h > 0).to(h.dtype)
            a = h.clamp_min_(0.0)
        else:
            dphi = activation_derivative(h, *phi.op_args())
            a = phi(h)
        if scales[l + 1] != 1.0:
            dphi.mul_(scales[l + 1])
        dphis.append(dphi)
        torch.bmm(a[:, :na], a[:, n - nb:].transpose(1, 2), out=grams[l + 1])
    return grams, dphis


def delta_gram(delta: torch.Tensor, na: int, outputs: str, out: torch.Tensor) -> None:
    """<delta_i, delta'_j> of (C, N, K, n) signals into out (C, Na, Nb, ...)."""
    c, n, k, width = delta.shape
    d1, d2 = delta[:, :na], delta[:, n - out.shape[2]:]
    if outputs == "trace":
        torch.bmm(d1.reshape(c, na, k * width), d2.reshape(c, -1, k * width).transpose(1, 2), out=out)
    elif outputs == "per_output":
        out.copy_(torch.einsum("sikn,sjkn->sijk", d1, d2))
    else:
        out.copy_(torch.einsum("sikn,sjln->sijkl", d1, d2))


def backward(head: torch.Tensor, times_weight: TimesWeight, grams: torch.Tensor, dphis: list, scales, bias_scales,
             x: torch.Tensor, n1: int | None, outputs: str, layerwise: bool) -> torch.Tensor:
    """The backward pass and the layer terms of C stacked networks whose
    output layer is ``head`` (C, K, n_{L-1}), from :func:`forward`'s
    grams[:L] and dphis[:L - 1] (which may be a prefix of a deeper forward
    pass). Entries of the list ``dphis`` are released as they are used.

    Returns (C, L, 2, *kernel_shape) layerwise terms (weight, bias), or
    (C, *kernel_shape) totals with ``layerwise=False``."""
    c, k = head.shape[:2]
    depth, n = len(dphis) + 1, x.shape[0]
    na = n if n1 is None else n1
    nb = grams.shape[3]
    extra = {"full": (k, k), "trace": (), "per_output": (k,)}[outputs]
    dgs = torch.empty((depth, c, na, nb) + extra, dtype=x.dtype, device=x.device)
    # delta^{L-1} = d f / d h^{L-1}: the output layer's weight rows, times phi'
    delta = head.unsqueeze(1).expand(c, n, k, head.shape[2])
    top = dgs[depth - 1]
    if outputs == "trace":
        top.fill_(float(k))
    else:
        top.copy_(torch.ones(()) if outputs == "per_output" else torch.eye(k, dtype=x.dtype, device=x.device))
    for l in range(depth - 1, 0, -1):
        if l < depth - 1:
            delta = times_weight(l, delta.reshape(c, n * k, -1)).reshape(c, n, k, -1)
        delta = delta * dphis[l - 1].unsqueeze(2)
        dphis[l - 1] = None
        delta_gram(delta, na, outputs, dgs[l - 1])
    # all layers' epilogues at once: weight term c_l^2 <a, a'> <d, d'>, bias term beta_l^2 <d, d'>
    w2 = torch.tensor([s * s for s in scales[:depth]], dtype=x.dtype, device=x.device)
    b2 = torch.tensor([s * s for s in bias_scales[:depth]], dtype=x.dtype, device=x.device)
    pad = (None,) * (len(extra) + 3)
    wterm = (grams[:depth] * w2[(...,) + pad[:3]])[(...,) + (None,) * len(extra)] * dgs
    if not layerwise:
        return wterm.add_(dgs * b2[(...,) + pad]).sum(0)
    return torch.stack([wterm, dgs * b2[(...,) + pad]], 2).transpose(0, 1)
