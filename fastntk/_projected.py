"""The projected sampler of :func:`fastntk.ensemble.ensemble_ntk`: the kernel's
distribution over inits from the few Gaussian numbers it depends on.

The NTK of a network at init depends on each weight matrix only through
what the inputs and the backward signals see of it. Take layer l (weight W,
n_out x n_in, iid N(0, std^2): std = 1 in NTK parametrization, sigma_w /
sqrt(n_in) in standard parametrization; the forward multiplies by c_l as the
engine does) with input rows a (N x n_in), and the reduced QR factorization
(Householder, so Q is orthonormal even when a is rank deficient)::

    a^T = Q R,   Q (n_in x r) orthonormal,   R (r x N),   r = min(N, n_in).

Q depends only on earlier layers, independent of W, so G = W Q (n_out x r) is
iid N(0, std^2), and the forward pass is h = a W^T = R^T G^T: r n_out normals
instead of n_in n_out. In the backward pass, signals D (N K x n_out: the
deltas of every sample and output) are multiplied by W::

    D W = (D G) Q^T + D W P,   P = I - Q Q^T.

W P = (W Q_perp) Q_perp^T, and W Q_perp is iid and independent of G and of
everything D depends on (D sees W only through h, i.e. through G, and through
the later layers). With the reduced QR D^T = Q_d R_d (s = min(N K, n_out)),
D W Q_perp = R_d^T (Q_d^T W Q_perp), where Q_d^T W Q_perp is iid N(0, std^2)
given D. Hence, jointly over the layers (condition on the layers above, top
down)::

    D W P  =d  R_d^T Y P,   Y (s x n_in) iid N(0, std^2), fresh,

and any R_d with R_d^T R_d = D D^T would do. Per layer, G (n_out x r) and Y
(s x n_in) are drawn instead of W: at N = 2, K = 1 and width 100, 400 normals
instead of 10,000. The first layer needs only G (no backward pass goes
through it); when r = n_in, P = 0 and no Y is drawn. A layer where G and Y
would together cost at least as many normals as W (many inputs or outputs)
is drawn in full, W itself, and handled as the seeded sampler handles it.
The output layer (K x n_{L-1}) is drawn in full, and biases are drawn
directly (only when they are nonzero: ``bias`` and sigma_b > 0).

The kernel of every init is then exactly distributed as the kernel of a
network with iid Gaussian weights; the inits are not those of
``MLP(seed=s)``. With a depth sweep the forward pass (the G's and biases) is
shared by all depths and each depth's backward pass draws its own output
layer and Y's, so each depth's kernel distribution is exact, but the joint
law of the kernels of two depths is not that of one network truncated at
both depths.

The QR factors are made unique (R's diagonal >= 0), so that an init does not
depend on LAPACK's sign conventions (which differ between float32 and
float64, and between devices). Where the signals of a layer are rank
deficient (say two inputs whose activations become parallel behind ReLU),
the basis of the missing directions is chosen by rounding: any orthonormal
completion gives the same law, but a given init's kernel may then change
with the last bits of its inputs or of sigma_w.

Init s draws all of its normals from ``numpy.random.default_rng(seeds[s])``
in one call (PCG64, ziggurat), in a fixed order (:class:`Layout`), so it is
reproducible whatever the chunking.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from . import _batched
from .models import Activation

#: source(key, basis) -> the (C, *shape) Gaussian matrix ``key`` of the chunk's
#: inits; ``basis`` is the orthonormal basis it is conditioned on (Q for G, Q_d
#: for Y; None for the others). A random source ignores it and says so with an
#: attribute ``needs_basis = False`` (Q_d is then not formed, only R_d); the
#: tests' source computes G = W Q and Y = Q_d^T W from explicit weights.
NormalSource = Callable[[tuple, "torch.Tensor | None"], torch.Tensor]


@dataclass
class Layout:
    """Which Gaussian matrices one init draws, and where each lies in its row of normals.

    Keys: ("W", l) layer l in full (n_{l+1}, n_l); ("G", l) its projection
    (n_{l+1}, r_l); ("b", l) its bias (n_{l+1},); ("head", d) the output
    layer of depth d (K, n_d); ("Y", d, l) the backward draw of layer l for
    depth d (s_l, n_l). ``slots[key]`` is (offset, shape, std).
    """

    projected: list = field(default_factory=list)
    slots: dict = field(default_factory=dict)
    total: int = 0

    def add(self, key: tuple, shape: tuple, std: float) -> None:
        self.slots[key] = (self.total, shape, std)
        self.total += math.prod(shape)

    def stds(self) -> np.ndarray:
        """(total,) the std of each normal of an init's row."""
        out = np.empty(self.total)
        for off, shape, std in self.slots.values():
            out[off:off + math.prod(shape)] = std
        return out


def layout(widths: Sequence[int], depths: Sequence[int], n: int, *, w_stds: Sequence[float], b_std: float,
           biased: bool, project: bool | None = None) -> Layout:
    """The draws of one init for the networks ``widths[:d + 1] + [widths[-1]]``,
    d in ``depths``, on n input rows.

    ``biased``: the biases are nonzero and drawn. ``project``: None projects
    a hidden layer when that draws fewer normals than W; True projects every
    hidden layer (the tests' setting, to exercise the algebra at every shape).
    """
    k, deepest = widths[-1], max(depths)
    out = Layout()
    for l in range(deepest):
        n_in, n_out = widths[l], widths[l + 1]
        r, s = min(n, n_in), min(n * k, n_out)
        y = s * n_in if 0 < l and r < n_in else 0
        projected = bool(project) or n_out * r + y < n_out * n_in
        out.projected.append(projected)
        if projected:
            out.add(("G", l), (n_out, r), w_stds[l])
        else:
            out.add(("W", l), (n_out, n_in), w_stds[l])
        if biased:
            out.add(("b", l), (n_out,), b_std)
    for d in depths:
        out.add(("head", d), (k, widths[d]), w_stds[d])
        for l in range(d - 1, 0, -1):
            if out.projected[l] and n < widths[l]:
                out.add(("Y", d, l), (min(n * k, widths[l + 1]), widths[l]), w_stds[l])
    return out


def seeded_normals(lay: Layout, seeds: Sequence[int], *, threads: int, device, dtype) -> NormalSource:
    """A random source: init i's normals drawn in one call from
    ``numpy.random.default_rng(seeds[i])``, on ``threads`` threads."""
    buf = np.empty((len(seeds), lay.total))
    stds = lay.stds()

    def fill(i: int) -> None:
        np.random.default_rng(int(seeds[i])).standard_normal(out=buf[i])
        buf[i] *= stds

    if threads <= 1 or len(seeds) == 1:
        for i in range(len(seeds)):
            fill(i)
    else:
        with ThreadPoolExecutor(min(threads, len(seeds))) as pool:
            list(pool.map(fill, range(len(seeds))))
    normals = torch.from_numpy(buf).to(device=device, dtype=dtype)

    def source(key: tuple, basis=None) -> torch.Tensor:
        off, shape, _ = lay.slots[key]
        return normals[:, off:off + math.prod(shape)].view((len(seeds),) + shape)

    source.needs_basis = False
    return source


#: Below this inner dimension a batched product is faster as multiply-adds
#: than as one tiny GEMM per init.
THIN = 4


def _thin_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for (C, m, k) @ (C or none, k, n), as k broadcast multiply-adds when k is small."""
    k = a.shape[-1]
    if k > THIN:
        return torch.matmul(a, b)
    out = a[..., 0:1] * b[..., 0:1, :]
    for i in range(1, k):
        out.addcmul_(a[..., i:i + 1], b[..., i:i + 1, :])
    return out


def _qr(a: torch.Tensor, basis: bool = True):
    """Reduced QR (Q, R) of (..., n, m), with R's diagonal made >= 0 (Q is None
    unless ``basis``). For a full-rank a this QR is unique, so an init's
    kernel does not depend on LAPACK's sign choices, which differ between
    float32 and float64 (and between devices) where ReLU leaves exact zeros."""
    if basis:
        q, r = torch.linalg.qr(a)
    else:
        q, r = None, torch.linalg.qr(a, mode="r")[1]
    sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(r.dtype)
    r = r * sign.unsqueeze(-1)
    return (None if q is None else q * sign.unsqueeze(-2)), r


def kernels(source: NormalSource, lay: Layout, c: int, depths: Sequence[int], scales, bias_scales,
            phi: Activation, x: torch.Tensor, n1: int | None, outputs: str, layerwise: bool):
    """Yields (d, kernels) for each d in ``depths``: the NTK of the chunk's c
    inits drawn from ``source`` as laid out in ``lay``, (c, *kernel_shape), or
    (c, d + 1, 2, *kernel_shape) with ``layerwise``."""
    bases: dict = {}   # layer l -> (Q, G) of its projected forward
    full: dict = {}    # layer l -> W, for the layers drawn in full
    needs_basis = getattr(source, "needs_basis", True)

    def preact(l: int, a: torch.Tensor) -> torch.Tensor:
        if not lay.projected[l]:
            w = full[l] = source(("W", l), None)
            if l == 0:
                return torch.matmul(w, a.T).transpose(1, 2)
            return torch.bmm(a, w.transpose(1, 2))
        q, r = _qr(a.transpose(-1, -2))                # a^T = Q R
        g = source(("G", l), q)                        # W Q
        bases[l] = (q, g)
        return _thin_bmm(g, r).transpose(1, 2)         # (R^T G^T)^T: h = a W^T

    def times_weight_of(d: int):
        def times_weight(l: int, dflat: torch.Tensor) -> torch.Tensor:
            if not lay.projected[l]:
                return torch.bmm(dflat, full[l])
            q, g = bases[l]
            # D W = (D G) Q^T + R_d^T Y (I - Q Q^T) = (D G - R_d^T (Y Q)) Q^T + R_d^T Y
            m = torch.bmm(dflat, g)
            if ("Y", d, l) not in lay.slots:
                return _thin_bmm(m, q.transpose(1, 2))
            qd, rd = _qr(dflat.transpose(1, 2), needs_basis)         # D^T = Q_d R_d
            y = source(("Y", d, l), qd)
            rdt = rd.transpose(1, 2)
            m = m - torch.bmm(rdt, torch.bmm(y, q))
            return _thin_bmm(m, q.transpose(1, 2)).add_(_thin_bmm(rdt, y))

        return times_weight

    biases = [source(("b", l), None) if ("b", l) in lay.slots else None for l in range(len(lay.projected))]
    grams, dphis = _batched.forward(preact, c, max(depths) + 1, biases, scales, bias_scales, phi, x, n1)
    for d in depths:
        yield d, _batched.backward(source(("head", d), None), times_weight_of(d), grams, dphis[:d], scales,
                                   bias_scales, x, n1, outputs, layerwise)
