"""Infinite-width kernels of dense MLPs and the order-parameter maps of
signal propagation.

Network convention (the same as the empirical engine): L weight layers,

    h^l = c_l W^l a^{l-1} + beta_l b^l,   a^l = phi(h^l),   a^0 = x,   f = h^L

with no activation on the output. ``parametrization="ntk"``: W, b ~ N(0, 1),
c_l = sigma_w / sqrt(n_{l-1}), beta_l = sigma_b. ``"standard"`` (plain
nn.Linear): c_l = beta_l = 1, W ~ N(0, sigma_w^2 / n_{l-1}), b ~ N(0, sigma_b^2).
Biases are trained in both, so they count in the NTK.

Per-unit covariances of the pre-activations (identical in both
parametrizations), with (u, v) ~ N(0, [[S, C], [C, S']]) drawn from
layer l's covariance:

    Sigma^1(x, x')  = sigma_w^2 <x, x'> / n_0 + sigma_b^2
    Sigma^{l+1}     = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2
    dSigma^{l+1}    = sigma_w^2 E[phi'(u) phi'(v)]

NTK parametrization: layer l contributes a weight term
(Sigma^l - sigma_b^2) prod_{m>l} dSigma^m and a bias term
sigma_b^2 prod_{m>l} dSigma^m; their sum is the familiar recursion
Theta^1 = Sigma^1, Theta^{l+1} = Theta^l dSigma^{l+1} + Sigma^{l+1}.

Standard parametrization: the kernel grows with the width, so the function
needs the hidden widths n_1 .. n_{L-1}. Layer l's weight term is
<a^{l-1}(x), a^{l-1}(x')> prod_{m>l} dSigma^m with <a^0, a^0'> = <x, x'> and
<a^{l-1}, a^{l-1}'> = n_{l-1} E[phi(u) phi(v)] for l >= 2; its bias term is
1 * prod_{m>l} dSigma^m (df/db has no sigma_b in it). This is the
expectation over initializations to leading order in 1/width (exact for
ReLU, sigma_b = 0 and x = x', e.g. E[Theta(x, x)] = 2.25, 10, 38.5 for
sigma_w^2 = 1, 2, 3, n_0 = width, |x| = 1 and L = 5).

The K outputs of the network are iid in the infinite-width limit, so the
kernels here are scalar: the full (N1, N2, K, K) kernel is Theta ⊗ I_K, the
engine's trace over outputs is K * Theta, its per-output diagonal is Theta
repeated K times.

Expectations: closed forms for ``relu`` (arc-cosine kernel, Cho & Saul
2009), ``leaky_relu`` (from the ReLU one: phi(u) = (1 - a) relu(u) + a u),
``erf`` (Williams 1997) and ``identity``; every activation can also be
integrated numerically (``method="quadrature"``; the only way for ``tanh,
sigmoid, gelu, gelu_tanh, silu, softplus``). The quadrature writes
(u, v) = L (z1, z2) with L the Cholesky factor of the 2x2 covariance and
z1, z2 iid standard normal, and integrates z1 and z2 on [-10, 10] (the
Gaussian mass outside is 1.5e-23) with Gauss-Legendre rules split where the
integrand may have a kink: z1 at 0 (u = 0; two pieces of quad_order / 2
nodes), z2 at 0 and at v = 0 (three pieces of quad_order / 2 nodes).
Variances (the 1-D integrals on the diagonal) use 4 * quad_order nodes.
Why not plain Gauss-Hermite: it converges only algebraically across ReLU's
kinks (with 64 nodes it is off by 1.5e-2 on E[relu'(u) relu'(v)]) and loses
accuracy at large variance (erf, S = 30: 5e-3). The split rule with the
default quad_order = 64 matches the closed forms of relu and leaky_relu to
~1e-14 (~1e-8 for pairs of inputs with correlation near 1, e.g. 0.98, where
P(v > 0 | z1) turns steep) and erf's to ~1e-9 relative at moderate
variances (sigma_w <= 1.5);
accuracy drops as variances grow (narrow phi' around 0: ~1e-7 for tanh and
erf at sigma_w = 2.5, 1e-5 for gelu); quad_order = 96 gives ~1e-11 there
at 2.25 times the cost.

Order parameters (Poole et al. 2016, Schoenholz et al. 2017): the length
map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2, its fixed point q*, the
correlation map, its slope chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at c = 1,
the phase (ordered chi_1 < 1, edge of chaos chi_1 = 1, chaotic chi_1 > 1)
and the edge-of-chaos curve sigma_w^2(sigma_b^2).

Everything is computed in float64 on the CPU with torch; numpy is used only
for the Gauss-Legendre nodes. This module does not import the rest of
fastntk.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from ._reference import ACTIVATIONS, activation_derivative
from .models import PARAMETRIZATIONS, Activation

__all__ = [
    "ACTIVATIONS", "CLOSED_FORM_ACTIVATIONS", "PARAMETRIZATIONS", "METHODS",
    "nngp", "ntk", "length_map", "fixed_point_q", "correlation_map", "chi1",
    "phase", "eoc_curve",
]

#: Activations with closed-form Gaussian expectations.
CLOSED_FORM_ACTIVATIONS = ("identity", "relu", "leaky_relu", "erf")
#: Positively homogeneous activations: E[phi'(sqrt(q) z)^2] does not depend on q > 0.
_HOMOGENEOUS = ("identity", "relu", "leaky_relu")
#: ``"auto"``: closed form where there is one, else quadrature.
METHODS = ("auto", "closed", "quadrature")

_DTYPE = torch.float64
_TRUNC = 10.0  # quadrature domain [-_TRUNC, _TRUNC] in standard-normal units
_MAX_CHUNK_ELEMENTS = 1 << 21  # quadrature points per chunk of input pairs


# ---------------------------------------------------------------------------
# validation


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, one of {', '.join(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def _check_real(name: str, value, *, nonnegative: bool = False, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0; got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return value


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int; got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def _check_quad_order(quad_order) -> int:
    quad_order = _check_int("quad_order", quad_order, 4)
    if quad_order % 2:
        raise ValueError(f"quad_order must be even (nodes per dimension, split in two halves); got {quad_order}")
    return quad_order


class _Act:
    """An activation by name with its parameters (validated)."""

    __slots__ = ("name", "negative_slope", "beta", "threshold")

    def __init__(self, name, negative_slope=0.01, softplus_beta=1.0, softplus_threshold=20.0):
        self.name = _check_choice("activation", name, ACTIVATIONS)
        self.negative_slope = _check_real("negative_slope", negative_slope)
        self.beta = _check_real("softplus_beta", softplus_beta, positive=True)
        self.threshold = _check_real("softplus_threshold", softplus_threshold)

    @property
    def has_closed_form(self) -> bool:
        return self.name in CLOSED_FORM_ACTIVATIONS

    @property
    def homogeneous(self) -> bool:
        return self.name in _HOMOGENEOUS

    def phi(self, h: torch.Tensor) -> torch.Tensor:
        """phi(h), identical to the torch module of that name."""
        return Activation(self.name, self.negative_slope, self.beta, self.threshold)(h)

    def dphi(self, h: torch.Tensor) -> torch.Tensor:
        """phi'(h), with autograd's values at the kinks (relu'(0) = 0)."""
        return activation_derivative(h, self.name, self.negative_slope, self.beta, self.threshold)


def _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method) -> tuple[_Act, bool]:
    """The activation and whether to use its closed form."""
    act = _Act(activation, negative_slope, softplus_beta, softplus_threshold)
    _check_choice("method", method, METHODS)
    if method == "closed" and not act.has_closed_form:
        raise ValueError(
            f"method='closed' needs an activation with a closed form ({', '.join(CLOSED_FORM_ACTIVATIONS)}); "
            f"got activation={act.name!r}: use method='quadrature' or 'auto'")
    return act, (method != "quadrature" and act.has_closed_form)


def _as_input(x, name: str) -> torch.Tensor:
    """(N, n_0) float64 CPU tensor from a tensor or numpy array, validated."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise TypeError(f"{name} must hold real numbers; got numpy dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x))
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray of shape (N, n_0); got {type(x).__name__}")
    if t.is_complex():
        raise TypeError(f"{name} must be real; got dtype {t.dtype}")
    if t.ndim != 2:
        raise ValueError(f"{name} must have shape (N, n_0), 2 dimensions; got {t.ndim} dimensions, shape {tuple(t.shape)}")
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one feature; got shape {tuple(t.shape)}")
    t = t.to(device="cpu", dtype=_DTYPE)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_widths(widths, depth: int, parametrization: str, required: bool = True) -> list[int] | None:
    """Hidden widths [n_1, ..., n_{L-1}] (validated), or None."""
    if widths is None:
        if required and parametrization == "standard" and depth > 1:
            raise ValueError(
                "widths is required for parametrization='standard' (the kernel grows with the hidden "
                f"widths): pass an int or a sequence of depth - 1 = {depth - 1} hidden widths")
        return None
    if isinstance(widths, (np.ndarray, torch.Tensor)):
        widths = widths.tolist() if widths.ndim else widths.item()
    if isinstance(widths, numbers.Integral) and not isinstance(widths, bool):
        return [_check_int("widths", widths, 1)] * (depth - 1)
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise TypeError(f"widths must be an int or a sequence of ints (hidden widths n_1..n_{{L-1}}); "
                        f"got {type(widths).__name__}")
    widths = [_check_int(f"widths[{i}]", w, 1) for i, w in enumerate(widths)]
    if len(widths) != depth - 1:
        raise ValueError(f"widths must list the depth - 1 = {depth - 1} hidden widths n_1..n_{{L-1}}; "
                         f"got {len(widths)}")
    return widths


# ---------------------------------------------------------------------------
# Gaussian expectations


@lru_cache(maxsize=None)
def _legendre(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(m)
    return torch.from_numpy(x).to(_DTYPE), torch.from_numpy(w).to(_DTYPE)


@lru_cache(maxsize=None)
def _split_rule(order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes z (order,) and weights w such that sum w f(z) ~ E[f(Z)], Z ~ N(0, 1),
    for f smooth on each side of 0: Gauss-Legendre on [-T, 0] and [0, T]."""
    x, w = _legendre(order // 2)
    half = _TRUNC / 2
    z = torch.cat([(x - 1) * half, (x + 1) * half])
    wz = torch.cat([w, w]) * half * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z, wz


def _closed_pair(act: _Act, s1: torch.Tensor, s2: torch.Tensor, c: torch.Tensor):
    """Closed-form (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for broadcastable
    tensors s1 = Var u, s2 = Var v, c = Cov(u, v)."""
    n = act.name
    if n == "identity":
        return c.clone(), torch.ones_like(c)
    if n == "erf":
        d = (1 + 2 * s1) * (1 + 2 * s2)
        e = (2 / math.pi) * torch.asin((2 * c / torch.sqrt(d)).clamp(-1.0, 1.0))
        de = (4 / math.pi) / torch.sqrt((d - 4 * c * c).clamp_min(torch.finfo(_DTYPE).tiny))
        return e, de
    # relu and leaky_relu: arc-cosine kernel of degree 1 and 0
    nrm = torch.sqrt(s1 * s2)
    pos = nrm > 0
    safe = torch.where(pos, nrm, torch.ones_like(nrm))
    t = torch.acos((c / safe).clamp(-1.0, 1.0))
    k1 = torch.where(pos, nrm * (torch.sin(t) + (math.pi - t) * torch.cos(t)) / (2 * math.pi), 0.0)
    k0 = torch.where(pos, (math.pi - t) / (2 * math.pi), 0.0)  # E[1[u>0] 1[v>0]]; relu'(0) = 0
    if n == "relu":
        return k1, k0
    a = act.negative_slope
    # phi = (1 - a) relu + a id: E[relu(u) v] = C / 2; P(u > 0) = 1/2 (0 if u == 0, phi'(0) = a)
    p1 = (s1 > 0).to(_DTYPE) / 2
    p2 = (s2 > 0).to(_DTYPE) / 2
    e = (1 - a) ** 2 * k1 + a * c
    de = (1 - a) ** 2 * k0 + a * (1 - a) * (p1 + p2) + a * a
    return e, de


def _quad_pair(act: _Act, s1: torch.Tensor, s2: torch.Tensor, c: torch.Tensor, order: int):
    """Quadrature (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for 1-D tensors of
    equal length P (see the module docstring for the rule)."""
    z, wz = _split_rule(order)
    x, w = _legendre(order // 2)
    l11 = torch.sqrt(s1)
    l21 = torch.where(l11 > 0, c / torch.where(l11 > 0, l11, torch.ones_like(l11)), 0.0)
    l22 = torch.sqrt((s2 - l21 * l21).clamp_min(0.0))
    e_out = torch.empty_like(c)
    de_out = torch.empty_like(c)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // (order * 3 * (order // 2)))
    for start in range(0, c.numel(), chunk):
        sl = slice(start, start + chunk)
        a11, a21, a22 = l11[sl, None], l21[sl, None], l22[sl, None]
        u = a11 * z  # (p, order)
        # inner variable z2 given z1: split at the kink v = a21 z1 + a22 z2 = 0
        has22 = a22 > 0
        zs = torch.where(has22, -a21 * z / torch.where(has22, a22, torch.ones_like(a22)), 0.0)
        zs = zs.clamp(-_TRUNC, _TRUNC)
        # three Gauss-Legendre pieces [-T, min(0, zs)], [min(0, zs), max(0, zs)], [max(0, zs), T]:
        # the split at 0 keeps nodes where the Gaussian mass is when zs is far out
        b1, b2 = zs.clamp(max=0.0), zs.clamp(min=0.0)
        ends = (torch.full_like(zs, -_TRUNC), b1, b2, torch.full_like(zs, _TRUNC))
        zi, wi = [], []
        for left, right in zip(ends[:-1], ends[1:]):
            half = ((right - left) / 2)[..., None]
            zi.append(left[..., None] + half * (x + 1))
            wi.append(half * w)
        zi, wi = torch.cat(zi, dim=-1), torch.cat(wi, dim=-1)
        wi = wi * torch.exp(-0.5 * zi * zi) / math.sqrt(2 * math.pi)
        v = (a21 * z)[..., None] + a22[..., None] * zi  # (p, order, order)
        inner = (wi * act.phi(v)).sum(-1)
        dinner = (wi * act.dphi(v)).sum(-1)
        e_out[sl] = (wz * act.phi(u) * inner).sum(-1)
        de_out[sl] = (wz * act.dphi(u) * dinner).sum(-1)
    return e_out, de_out


def _closed_same(act: _Act, q: torch.Tensor):
    """Closed-form (E[phi(u)^2], E[phi'(u)^2]), u ~ N(0, q)."""
    n = act.name
    if n == "identity":
        return q.clone(), torch.ones_like(q)
    if n == "erf":
        return (2 / math.pi) * torch.asin(2 * q / (1 + 2 * q)), (4 / math.pi) / torch.sqrt(1 + 4 * q)
    a = act.negative_slope if n == "leaky_relu" else 0.0
    pos = q > 0
    e = (1 + a * a) / 2 * q
    de = torch.where(pos, torch.full_like(q, (1 + a * a) / 2), torch.full_like(q, a * a))
    return e, de


def _quad_same(act: _Act, q: torch.Tensor, order: int):
    """Quadrature (E[phi(u)^2], E[phi'(u)^2]), u ~ N(0, q), any shape of q.

    One dimension is cheap, so this uses 4 * order nodes: the variances on
    the diagonal set the scale of everything else."""
    z, wz = _split_rule(4 * order)
    u = torch.sqrt(q)[..., None] * z
    return (wz * act.phi(u) ** 2).sum(-1), (wz * act.dphi(u) ** 2).sum(-1)


def _expect_same(act: _Act, q: torch.Tensor, closed: bool, order: int):
    return _closed_same(act, q) if closed else _quad_same(act, q, order)


def _expect_matrix(act, s1, s2, c, closed, order, symmetric):
    """(E[phi phi], E[phi' phi']) for the (N1, N2) covariance c with
    variances s1 (N1,), s2 (N2,); symmetric: c is square and s1 == s2."""
    if closed:
        return _closed_pair(act, s1[:, None], s2[None, :], c)
    if not symmetric:
        s1b, s2b = torch.broadcast_tensors(s1[:, None], s2[None, :])
        e, de = _quad_pair(act, s1b.reshape(-1), s2b.reshape(-1), c.reshape(-1), order)
        return e.reshape(c.shape), de.reshape(c.shape)
    n = c.shape[0]
    i, j = torch.triu_indices(n, n, offset=1)
    e = torch.empty_like(c)
    de = torch.empty_like(c)
    if i.numel():
        eu, deu = _quad_pair(act, s1[i], s2[j], c[i, j], order)
        e[i, j], e[j, i], de[i, j], de[j, i] = eu, eu, deu, deu
    return e, de  # diagonal filled by the caller


# ---------------------------------------------------------------------------
# kernels


def _layers(x1, x2, depth, activation, sigma_w, sigma_b, parametrization, widths,
            negative_slope, softplus_beta, softplus_threshold, method, quad_order, need_widths=True):
    """Validate, then run the covariance recursion.

    Returns (gram, sigmas, ephis, dsigmas, widths, sw2, sb2): gram = <x, x'>
    (N1, N2); sigmas[l-1] = Sigma^l, l = 1..L; ephis[l-2] = E[phi phi] under
    Sigma^{l-1}, l = 2..L; dsigmas[l-2] = dSigma^l, l = 2..L.
    """
    depth = _check_int("depth", depth, 1)
    sigma_w = _check_real("sigma_w", sigma_w, nonnegative=True)
    sigma_b = _check_real("sigma_b", sigma_b, nonnegative=True)
    _check_choice("parametrization", parametrization, PARAMETRIZATIONS)
    widths = _check_widths(widths, depth, parametrization, need_widths)
    act, closed = _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method)
    order = _check_quad_order(quad_order)
    a = _as_input(x1, "x1")
    symmetric = x2 is None
    b = a if symmetric else _as_input(x2, "x2")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of features n_0; got {a.shape[1]} and {b.shape[1]}")

    n0 = a.shape[1]
    sw2, sb2 = sigma_w**2, sigma_b**2
    gram = a @ b.T
    if symmetric:  # a @ a.T from BLAS need not be exactly symmetric
        gram = (gram + gram.T) / 2
    s1 = sw2 * (a * a).sum(1) / n0 + sb2
    s2 = s1 if symmetric else sw2 * (b * b).sum(1) / n0 + sb2
    sig = sw2 * gram / n0 + sb2
    if symmetric:
        sig.diagonal().copy_(s1)
    sigmas, ephis, dsigmas = [sig], [], []
    for _ in range(depth - 1):
        e, de = _expect_matrix(act, s1, s2, sig, closed, order, symmetric)
        e1, de1 = _expect_same(act, s1, closed, order)
        if symmetric:
            if closed:  # vectorized and scalar math kernels may differ in the last bit
                e, de = (e + e.T) / 2, (de + de.T) / 2
            e.diagonal().copy_(e1)
            de.diagonal().copy_(de1)
            e2 = e1
        else:
            e2, _ = _expect_same(act, s2, closed, order)
        ephis.append(e)
        dsigmas.append(sw2 * de)
        sig = sw2 * e + sb2
        s1 = sw2 * e1 + sb2
        s2 = s1 if symmetric else sw2 * e2 + sb2
        sigmas.append(sig)
    return gram, sigmas, ephis, dsigmas, widths, n0, sw2, sb2


_KERNEL_PARAMS_DOC = """
    x1 : (N1, n_0) torch.Tensor or numpy.ndarray
        Inputs (any real dtype or device; computed in float64 on the CPU).
    x2 : (N2, n_0) torch.Tensor or numpy.ndarray, optional
        Second inputs; ``None`` means ``x1`` (and the result is exactly symmetric).
    depth : int
        Number of weight layers L >= 1 (hidden layers + 1).
    activation : str
        One of ``identity, relu, leaky_relu, tanh, sigmoid, gelu, gelu_tanh,
        silu, softplus, erf``, the same functions as the torch modules.
    sigma_w, sigma_b : float
        Weight and bias scales (standard deviations, >= 0).
    parametrization : {"ntk", "standard"}
    widths : int or sequence of int, optional
        Hidden widths n_1 .. n_{L-1} (an int means all equal). Required for
        ``parametrization="standard"`` with depth > 1; ignored otherwise
        (the NTK-parametrization limit does not depend on them).
    negative_slope : float
        leaky_relu's slope for h < 0.
    softplus_beta, softplus_threshold : float
        softplus's ``beta`` and ``threshold`` (as in torch.nn.Softplus).
    method : {"auto", "closed", "quadrature"}
        ``"auto"`` uses the closed form for identity, relu, leaky_relu and
        erf and quadrature for the rest; ``"quadrature"`` forces quadrature.
    quad_order : int
        Even number of quadrature nodes per dimension (quad_order^2 per input
        pair and layer).
"""


def nngp(x1, x2=None, *, depth, activation="relu", sigma_w=1.0, sigma_b=0.0,
         parametrization="ntk", widths=None, negative_slope=0.01, softplus_beta=1.0,
         softplus_threshold=20.0, method="auto", quad_order=64) -> torch.Tensor:
    """Infinite-width NNGP kernel Sigma^L: the covariance of one network
    output over random initializations.

    It is the same in both parametrizations (``parametrization`` and
    ``widths`` are validated but optional, so that the keyword arguments of
    :func:`ntk` can be passed unchanged). Outputs are iid, so the covariance
    of the K outputs is Sigma^L ⊗ I_K.

    Parameters
    ----------""" + _KERNEL_PARAMS_DOC + """
    Returns
    -------
    (N1, N2) torch.Tensor, float64, CPU.
    """
    _, sigmas, *_ = _layers(x1, x2, depth, activation, sigma_w, sigma_b, parametrization, widths,
                            negative_slope, softplus_beta, softplus_threshold, method, quad_order,
                            need_widths=False)
    return sigmas[-1]


def ntk(x1, x2=None, *, depth, activation="relu", sigma_w=1.0, sigma_b=0.0,
        parametrization="ntk", widths=None, layerwise=False, negative_slope=0.01,
        softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64) -> torch.Tensor:
    """Infinite-width neural tangent kernel Theta of one network output.

    NTK parametrization: the deterministic width -> infinity limit.
    Standard parametrization: the expected kernel at the given hidden
    widths, to leading order in 1/width (it grows linearly with the widths);
    exact for ReLU with sigma_b = 0 on the diagonal x = x'. Outputs are iid,
    so the full kernel is Theta ⊗ I_K (the engine's trace over K outputs is
    K * Theta).

    Parameters
    ----------""" + _KERNEL_PARAMS_DOC + """    layerwise : bool
        Return each layer's weight and bias terms instead of their sum.

    Returns
    -------
    torch.Tensor, float64, CPU: (N1, N2), or with ``layerwise=True``
    (L, 2, N1, N2) where ``[l, 0]`` is layer l+1's weight term and ``[l, 1]``
    its bias term (zero in NTK parametrization when sigma_b = 0); the sum
    over the first two axes is the kernel.
    """
    if not isinstance(layerwise, bool):
        raise TypeError(f"layerwise must be a bool; got {type(layerwise).__name__}")
    gram, sigmas, ephis, dsigmas, widths, n0, sw2, sb2 = _layers(
        x1, x2, depth, activation, sigma_w, sigma_b, parametrization, widths,
        negative_slope, softplus_beta, softplus_threshold, method, quad_order)
    standard = parametrization == "standard"
    L = len(sigmas)
    out = torch.empty((L, 2) + tuple(gram.shape), dtype=_DTYPE)
    tail = torch.ones_like(gram)  # prod_{m > l} dSigma^m
    for l in range(L, 0, -1):  # layer l, 1-based
        if l == 1:
            wterm = gram if standard else sw2 * gram / n0
        else:
            wterm = widths[l - 2] * ephis[l - 2] if standard else sw2 * ephis[l - 2]
        out[l - 1, 0] = wterm * tail
        out[l - 1, 1] = (1.0 if standard else sb2) * tail
        if l > 1:
            tail = tail * dsigmas[l - 2]
    if layerwise:
        return out
    total = torch.zeros_like(gram)
    for term in out.reshape(2 * L, *gram.shape):  # same order for every entry: symmetric stays exact
        total += term
    return total


# ---------------------------------------------------------------------------
# order parameters


def _order_setup(activation, sigma_w, sigma_b, negative_slope, softplus_beta, softplus_threshold,
                 method, quad_order):
    sigma_w = _check_real("sigma_w", sigma_w, nonnegative=True)
    sigma_b = _check_real("sigma_b", sigma_b, nonnegative=True)
    act, closed = _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method)
    return act, closed, _check_quad_order(quad_order), sigma_w**2, sigma_b**2


def _as_array(name: str, value, *, nonnegative=False) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number or array of real numbers; got {type(value).__name__}") from None
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if nonnegative and np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0")
    return arr


def _out(arr: np.ndarray):
    return float(arr) if arr.ndim == 0 else arr


_ORDER_PARAMS_DOC = """
    activation : str
        One of :data:`ACTIVATIONS`.
    sigma_w, sigma_b : float
        Weight and bias standard deviations (>= 0).
    negative_slope, softplus_beta, softplus_threshold, method, quad_order
        As in :func:`ntk`.
"""


def length_map(q, activation="relu", sigma_w=1.0, sigma_b=0.0, *, negative_slope=0.01,
               softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64):
    """The length map q^{l+1} = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2,
    z ~ N(0, 1): how the per-unit pre-activation variance of one input
    propagates through a layer (the diagonal of the NNGP recursion).

    Parameters
    ----------
    q : float or array-like, >= 0""" + _ORDER_PARAMS_DOC + """
    Returns
    -------
    float, or float64 numpy array of q's shape.
    """
    arr = _as_array("q", q, nonnegative=True)
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    e, _ = _expect_same(act, torch.from_numpy(arr), closed, order)
    return _out((sw2 * e + sb2).numpy())


def _fixed_point(act, closed, order, sw2, sb2, q0) -> float:
    def g(q: np.ndarray) -> np.ndarray:
        e, _ = _expect_same(act, torch.from_numpy(np.asarray(q, dtype=np.float64)), closed, order)
        return sw2 * e.numpy() + sb2 - q

    g0 = float(g(q0))
    if abs(g0) <= 1e-13 * q0:  # q0 is a fixed point up to rounding (relu, sigma_w = sqrt(2), sigma_b = 0)
        return q0
    # The length map is increasing in q, so its iterates from q0 move
    # monotonically to the nearest fixed point in the direction of g(q0):
    # bracket it on a geometric grid, then bisect.
    if g0 < 0:
        grid = np.append(q0 * 2.0 ** -np.arange(1, 1100), 0.0)
        vals = g(grid)
        hit = np.nonzero(vals >= 0)[0]
        if hit.size == 0:  # cannot happen (the grid ends at 0 and g(0) >= 0)
            return 0.0
        k = hit[0]
        if vals[k] == 0:
            return float(grid[k])
        lo, hi = grid[k], (q0 if k == 0 else grid[k - 1])  # g(lo) > 0 > g(hi)
    else:
        grid = q0 * 2.0 ** np.arange(1, 1000)  # up to ~1e300
        grid = grid[np.isfinite(grid)]
        vals = g(grid)
        hit = np.nonzero(vals <= 0)[0]
        if hit.size == 0:
            return math.inf
        k = hit[0]
        if vals[k] == 0:
            return float(grid[k])
        lo, hi = (q0 if k == 0 else grid[k - 1]), grid[k]  # g(lo) > 0 > g(hi)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
    return float(0.5 * (lo + hi))


def fixed_point_q(activation="relu", sigma_w=1.0, sigma_b=0.0, *, q0=1.0, negative_slope=0.01,
                  softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64) -> float:
    """The fixed point q* of :func:`length_map` reached by iterating it from q0.

    Found by bracketing on a geometric grid and bisection (the length map is
    increasing in q, so the iterates approach the nearest fixed point in
    the direction they start moving). Degenerate cases: ``0.0`` when the
    variance collapses (e.g. relu or tanh with sigma_b = 0 in the ordered
    phase), ``math.inf`` when it diverges (e.g. relu with sigma_w^2 > 2),
    and ``q0`` itself when every q is a fixed point (relu, sigma_w^2 = 2,
    sigma_b = 0: the length map is linear).

    Parameters
    ----------""" + _ORDER_PARAMS_DOC + """    q0 : float
        Starting variance (> 0), e.g. sigma_w^2 |x|^2 / n_0 + sigma_b^2.

    Returns
    -------
    float
    """
    q0 = _check_real("q0", q0, positive=True)
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    return _fixed_point(act, closed, order, sw2, sb2, q0)


def chi1(activation="relu", sigma_w=1.0, sigma_b=0.0, *, q=None, q0=1.0, negative_slope=0.01,
         softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2], the slope of the correlation
    map at c = 1: the factor by which a layer stretches small input
    perturbations (and, on the diagonal, dSigma at the fixed point).

    For relu, leaky_relu and identity E[phi'(sqrt(q) z)^2] does not depend on
    q > 0, so chi_1 = sigma_w^2 / 2 (relu), sigma_w^2 (1 + a^2) / 2,
    sigma_w^2, whatever q* is (also when q* is 0 or infinite). For other
    activations a q* of 0 gives sigma_w^2 phi'(0)^2 and an infinite q* (a
    divergent length map) the q -> infinity limit, evaluated at q = 1e12.

    Parameters
    ----------""" + _ORDER_PARAMS_DOC + """    q : float, optional
        Variance at which to evaluate; default the fixed point :func:`fixed_point_q` from ``q0``.
    q0 : float
        Start of the fixed-point search.

    Returns
    -------
    float
    """
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    q0 = _check_real("q0", q0, positive=True)
    if act.homogeneous:
        qq = 1.0
        if q is not None:
            _check_real("q", q, nonnegative=True)
    elif q is not None:
        qq = _check_real("q", q, nonnegative=True)
    else:
        qq = _fixed_point(act, closed, order, sw2, sb2, q0)
        if math.isinf(qq):
            qq = 1e12
    _, de = _expect_same(act, torch.tensor(qq, dtype=_DTYPE), closed, order)
    return float(sw2 * de)


def correlation_map(c, activation="relu", sigma_w=1.0, sigma_b=0.0, *, q=None, q0=1.0,
                    negative_slope=0.01, softplus_beta=1.0, softplus_threshold=20.0,
                    method="auto", quad_order=64):
    """The correlation map c^{l+1} = (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q*,
    (u, v) ~ N(0, q* [[1, c], [c, 1]]): how the correlation of two inputs
    whose variances sit at the fixed point q* propagates through a layer.
    c = 1 is a fixed point; the slope there is chi_1 q* / q_next, which is
    :func:`chi1` when q* is a proper fixed point (for relu with sigma_b = 0
    and sigma_w^2 != 2 the variance shrinks or grows every layer and the
    slope is 1).

    Parameters
    ----------
    c : float or array-like in [-1, 1]""" + _ORDER_PARAMS_DOC + """    q : float, optional
        Variance to use instead of q* (> 0). Needed when q* is 0 or
        infinite, except for relu, leaky_relu and identity with sigma_b = 0,
        whose map does not depend on q.
    q0 : float
        Start of the fixed-point search.

    Returns
    -------
    float, or float64 numpy array of c's shape.
    """
    arr = _as_array("c", c)
    if np.any(np.abs(arr) > 1):
        raise ValueError("c must lie in [-1, 1]")
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    q0 = _check_real("q0", q0, positive=True)
    if q is not None:
        qq = _check_real("q", q, positive=True)
        qn = sw2 * float(_expect_same(act, torch.tensor(qq, dtype=_DTYPE), closed, order)[0]) + sb2
    elif act.homogeneous and sb2 == 0:
        qq = 1.0
        qn = sw2 * float(_expect_same(act, torch.tensor(qq, dtype=_DTYPE), closed, order)[0])
    else:
        qq = _fixed_point(act, closed, order, sw2, sb2, q0)
        if not (0 < qq < math.inf):
            raise ValueError(
                f"the length map has no finite nonzero fixed point (q* = {qq}) for activation="
                f"{act.name!r}, sigma_w={math.sqrt(sw2)}, sigma_b={math.sqrt(sb2)}: pass q explicitly")
        qn = qq
    if qn <= 0:
        raise ValueError(f"the output variance is zero (sigma_w = {math.sqrt(sw2)}, sigma_b = 0): "
                         "the correlation is undefined")
    t = torch.from_numpy(arr.reshape(-1) * qq)
    s = torch.full_like(t, qq)
    if closed:
        e, _ = _closed_pair(act, s, s, t)
    else:
        e, _ = _quad_pair(act, s, s, t, order)
    return _out(((sw2 * e + sb2) / qn).numpy().reshape(arr.shape))


def phase(activation="relu", sigma_w=1.0, sigma_b=0.0, *, tol=1e-8, q0=1.0, negative_slope=0.01,
          softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64) -> str:
    """The phase of an initialization: ``"ordered"`` if chi_1 < 1 - tol,
    ``"chaotic"`` if chi_1 > 1 + tol, else ``"edge_of_chaos"``.

    Parameters
    ----------""" + _ORDER_PARAMS_DOC + """    tol : float
        Half-width of the edge-of-chaos band around chi_1 = 1 (>= 0).
    q0 : float
        Start of the fixed-point search.

    Returns
    -------
    str
    """
    tol = _check_real("tol", tol, nonnegative=True)
    x = chi1(activation, sigma_w, sigma_b, q0=q0, negative_slope=negative_slope,
             softplus_beta=softplus_beta, softplus_threshold=softplus_threshold,
             method=method, quad_order=quad_order)
    if x < 1 - tol:
        return "ordered"
    if x > 1 + tol:
        return "chaotic"
    return "edge_of_chaos"


def eoc_curve(activation, sigma_b2, *, sigma_w2_max=100.0, tol=1e-12, q0=1.0, negative_slope=0.01,
              softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=64):
    """The edge of chaos: for each sigma_b^2, the sigma_w^2 at which chi_1 = 1.

    Bisection on sigma_w^2 in [0, sigma_w2_max] (chi_1 = 0 at sigma_w = 0 and
    grows with sigma_w^2). Examples: tanh at sigma_b^2 = 0 gives 1, erf
    pi / 4 (erf'(0)^2 = 4 / pi), relu 2 and leaky_relu 2 / (1 + a^2) for every
    sigma_b^2 (chi_1 does not depend on q; for sigma_b > 0 q* diverges there,
    so only sigma_b = 0 is a proper edge of chaos: Hayou et al. 2019).

    Parameters
    ----------
    activation : str
        One of :data:`ACTIVATIONS`.
    sigma_b2 : float or array-like, >= 0
        Bias variances.
    sigma_w2_max : float
        Upper end of the search; NaN is returned where chi_1 < 1 up to it.
    tol : float
        Relative tolerance on sigma_w^2.
    q0, negative_slope, softplus_beta, softplus_threshold, method, quad_order
        As in :func:`chi1`.

    Returns
    -------
    float, or float64 numpy array of sigma_b2's shape: the sigma_w^2 values.
    """
    arr = _as_array("sigma_b2", sigma_b2, nonnegative=True)
    sigma_w2_max = _check_real("sigma_w2_max", sigma_w2_max, positive=True)
    tol = _check_real("tol", tol, positive=True)
    q0 = _check_real("q0", q0, positive=True)
    act, closed = _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method)
    order = _check_quad_order(quad_order)

    def chi(sw2: float, sb2: float) -> float:
        if act.homogeneous:
            qq = 1.0
        else:
            qq = _fixed_point(act, closed, order, sw2, sb2, q0)
            if math.isinf(qq):
                qq = 1e12
        _, de = _expect_same(act, torch.tensor(qq, dtype=_DTYPE), closed, order)
        return sw2 * float(de)

    out = np.empty(arr.shape, dtype=np.float64)
    for idx, sb2 in np.ndenumerate(arr):
        sb2 = float(sb2)
        if chi(sigma_w2_max, sb2) < 1:
            out[idx] = math.nan
            continue
        lo, hi = 0.0, sigma_w2_max
        while hi - lo > tol * hi:
            mid = 0.5 * (lo + hi)
            if chi(mid, sb2) < 1:
                lo = mid
            else:
                hi = mid
        out[idx] = 0.5 * (lo + hi)
    return _out(out)
