"""The layerwise NTK formula in plain PyTorch: the floor fastntk must reach.

Same mathematics as fastntk (DESIGN.md), written with library GEMMs and
plain tensor ops only, no custom kernels and no autograd:

    forward      h^l = c_l a^{l-1} W^l^T + beta_l b^l   (torch.mm), a^l = relu(h^l)
    backward     delta^L = I_K;  delta^l = (delta^{l+1} @ W^{l+1}) * c_{l+1} relu'(h^l)
                 for all K outputs at once (one matmul per layer)
    Grams        A_l = c_l^2 a^{l-1} a^{l-1 T} + beta_l^2     (torch.addmm)
                 D_l = <delta^l_k, delta^l_k'>                (torch.matmul / bmm)
    output       sum_l A_l (.) D_l                            (broadcast multiply-add)

All activations a^l are kept (N sum n_l), the signals of one layer at a time.
Only for a :class:`fastntk.MLP` with ReLU (the benchmark network); x2 = x1.
"""

from __future__ import annotations

import math

import torch


def _layers(net):
    ntk = net.parametrization == "ntk"
    out = []
    for l, w in enumerate(net.weights):
        c = net.sigma_w / math.sqrt(w.shape[1]) if ntk else 1.0
        beta = (net.sigma_b if ntk else 1.0) if net.biases is not None else 0.0
        b = net.biases[l].detach() if net.biases is not None else None
        out.append((w.detach(), b, c, beta))
    return out


def _forward(layers, x):
    acts = [x]
    for l, (w, b, c, beta) in enumerate(layers):
        # Same operation order as fastntk's forward (and MLP.forward), so both
        # see bitwise the same pre-activations and ReLU masks in float32.
        h = torch.mm(acts[-1], w.t())
        if c != 1.0:
            h = h * c
        if b is not None:
            h = h + (beta * b if beta != 1.0 else b)
        acts.append(torch.relu(h) if l < len(layers) - 1 else h)
    return acts  # a^0 .. a^{L-1}, then f


def _signals(layers, acts):
    """Yield (l, a^{l-1}, delta^l) from the last layer down."""
    n, k = acts[-1].shape
    delta = torch.eye(k, dtype=acts[0].dtype).expand(n, k, k)
    for l in range(len(layers) - 1, -1, -1):
        yield l, acts[l], delta
        if l > 0:
            w, _, c, _ = layers[l]
            # relu'(h^{l}) = (a^{l} > 0); a^{l} is acts[l]
            delta = torch.matmul(delta, w) * (acts[l] > 0).to(delta.dtype).mul_(c).unsqueeze(1)


def _delta_gram(delta, outputs):
    n, k, m = delta.shape
    if outputs in ("full", "layerwise"):
        flat = delta.reshape(n * k, m)
        return torch.mm(flat, flat.t()).view(n, k, n, k).permute(0, 2, 1, 3)  # (N, N, K, K)
    if outputs == "trace":
        flat = delta.reshape(n, k * m)
        return torch.mm(flat, flat.t())  # (N, N)
    per = delta.transpose(0, 1)  # (K, N, m)
    return torch.bmm(per, per.transpose(1, 2)).permute(1, 2, 0)  # (N, N, K)


def plain_ntk(net, x: torch.Tensor, outputs: str = "full", layerwise: bool = False) -> torch.Tensor:
    """Theta(x, x) with fastntk's output conventions (full, trace, per_output,
    layerwise -> (L, 2, N, N, K, K))."""
    layers = _layers(net)
    with torch.no_grad():
        acts = _forward(layers, x)
        n, k = acts[-1].shape
        if layerwise:
            out = torch.zeros(len(layers), 2, n, n, k, k, dtype=x.dtype)
        else:
            out = torch.zeros({"full": (n, n, k, k), "trace": (n, n), "per_output": (n, n, k)}[outputs],
                              dtype=x.dtype)
        for l, a, delta in _signals(layers, acts):
            _, _, c, beta = layers[l]
            dgram = _delta_gram(delta, "full" if layerwise else outputs)
            if layerwise:
                agram = torch.mm(a, a.t()).mul_(c * c)
                out[l, 0] += agram[:, :, None, None] * dgram
                out[l, 1] += beta * beta * dgram
                continue
            agram = torch.addmm(torch.full((), beta * beta, dtype=x.dtype), a, a.t(), alpha=c * c)
            if outputs == "full":
                out += agram[:, :, None, None] * dgram
            elif outputs == "trace":
                out += agram * dgram
            else:
                out += agram[:, :, None] * dgram
    return out


def plain_ntk_diag(net, x: torch.Tensor) -> torch.Tensor:
    """Theta(x_i, x_i), (N, K, K)."""
    layers = _layers(net)
    with torch.no_grad():
        acts = _forward(layers, x)
        n, k = acts[-1].shape
        out = torch.zeros(n, k, k, dtype=x.dtype)
        for l, a, delta in _signals(layers, acts):
            _, _, c, beta = layers[l]
            scale = (a * a).sum(1).mul_(c * c).add_(beta * beta)
            out += scale[:, None, None] * torch.bmm(delta, delta.transpose(1, 2))
    return out
