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
``erf`` (Williams 1997) and ``identity``, written so that they overflow only
where the kernel itself does; every activation can also be integrated
numerically (``method="quadrature"``; the only way for ``tanh, sigmoid,
gelu, gelu_tanh, silu, softplus``):

- where the correlation is +-1 (the diagonal, duplicated inputs, whether
  or not ``x2`` is passed) and where a variance is 0, the expectation is a
  1-D integral and is computed as one;
- elsewhere by Mehler's formula E[f(u) g(v)] = sum_k a_k b_k rho^k (up to
  512 Hermite coefficients per distinct variance, from 1-D integrals) where
  its tail is below 1e-13 of the scale, else by a 2-D rule; many pairs with
  many distinct variances (unnormalized inputs) are summed blockwise on the
  grid of pairs, each block with the fewest terms for which a bound on the
  tail (Cauchy-Schwarz over the coefficients' own tails) is below 1e-14;
- every 1-D and 2-D rule is composite Gauss-Legendre (``quad_order`` nodes
  per panel) on [-9, 9] standard deviations, with panels graded
  geometrically around the points where phi bends or has a kink, from the
  width of the bend in standard-normal units (1 / sqrt(variance)) up: the
  domain and split points follow each layer's variances, so large and
  small variances are as exact as moderate ones.

Speed: with the input norms fixed, every entry is a function of the angle
between the two inputs alone. Pairs sharing their norms (to 1e-13, e.g.
normalized inputs) are computed from one adaptive piecewise-Chebyshev
interpolant of the whole kernel in that angle per group of norms, each
piece accepted only after it matched the exact recursion at the midpoints
between its nodes to 1e-11 of the group's largest entry (pieces that never
do are computed pair by pair). N = 2000 inputs cost seconds, almost all of
it in evaluating the interpolant. Inputs with distinct norms (no shared
interpolant) fill a grid of pairs on which the series is summed by Horner's
rule in rho, block by block: N = 2000 such inputs also cost seconds.

Accuracy (tested against an independent adaptive quadrature,
tests/infinite_reference.py): at the default ``quad_order=16`` every
activation's kernels are within 1e-10 of the reference relative to the
kernel's scale sqrt(K(x, x) K(x', x')), for pre-activation variances from
1e-3 to 1e8, correlations from -1 to 1 (1 - 1e-5 included) and depths up to
11, in the ordered and the chaotic phase; measured errors are 1e-13 and
below (docs/infinite.md). A kernel whose entries overflow float64 raises
OverflowError naming sigma_w, sigma_b and depth.

Order parameters (Poole et al. 2016, Schoenholz et al. 2017): the length
map q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2, its fixed point q*, the
correlation map, its slope chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2] at c = 1,
the phase (ordered chi_1 < 1, edge of chaos chi_1 = 1, chaotic chi_1 > 1)
and the edge-of-chaos curve sigma_w^2(sigma_b^2).

Everything is computed in float64 on the CPU with torch; numpy is used for
the Gauss-Legendre nodes and the scalar root finders. This module imports
only the activations of the rest of fastntk.
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
_DEFAULT_ORDER = 16  # Gauss-Legendre nodes per panel
_TRUNC = 9.0  # quadrature domain [-T, T] in standard-normal units: the mass outside is 2.3e-19
_RATIO = 4.0  # ratio of consecutive panel widths graded away from a feature
_UNIFORM = 8  # panels of width 2T / 8 that resolve the Gaussian itself
_PANEL = 2 * _TRUNC / _UNIFORM
_MAX_LEVELS = 1000  # graded panels per side: enough for any float64 variance
_MAX_CHUNK_ELEMENTS = 1 << 21  # quadrature points per chunk
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_RHO_ONE_EPS = 4 * torch.finfo(torch.float64).eps  # |rho| >= 1 - this is treated as |rho| = 1
_CHEB_DEGREE = 16  # degree of each Chebyshev piece of the angle interpolants
_INIT_PIECES = 4  # pieces of [0, pi] to start from
_MAX_BISECTIONS = 40  # a piece narrower than pi / 2^40 is not halved again: its pairs are computed directly
_INTERP_TOL = 1e-11  # accepted interpolation error, relative to the group's largest entry
_INTERP_MIN_PAIRS = 256  # pairs sharing their input norms, above which interpolation pays
_SERIES_TERMS = 512  # terms of the Mehler series
_SERIES_TRUNC = 18.0  # |h_k phi| <= exp(-z^2 / 4) (up to a slowly growing factor): 1e-35 beyond
_SERIES_PANEL = 0.3  # uniform panel width of its 1-D rule: about one wavelength of h_K
_SERIES_TOL = 1e-13  # accepted series truncation error, relative to sqrt(E[f(u)^2] E[f(v)^2])
_SERIES_MAX_VARIANCES = 1 << 16  # distinct variances above which the series does not pay
_RULE_RUN = 32  # variances sharing one coefficient rule when phi bends at several points
# The grid's series tails: the mass beyond a table, E[(f - sum_k a_k h_k)^2], is integrated by
# the table's own rule, which resolves it to a few percent (measured: <= 8% against the 512-term
# rule, every activation, variances 1e-3 .. 1e6), so twice it bounds it; the square root of each
# tail gets the coefficients' own errors added, sqrt(terms) of ~1e-16 each.
_TAIL_SAFETY = 2.0
_TAIL_ROOT_FLOOR = 1e-14
_GRID_BUDGET = _SERIES_TOL / 20  # each of the grid's two bounds: ten times inside _SERIES_TOL together
_GRID_TERMS = (64, 128, 256, _SERIES_TERMS)  # coefficient tables the grid tries in turn
_GRID_MAX_REST = 1 / 64  # share of the pairs left to the pairwise path above which the next table is tried
_GRID_BLOCK = 1 << 16  # grid entries per block: in cache for the Horner passes
_GRID_BLOCK_ROWS = 256
_GRID_MIN_PAIRS = 4096  # pairs below which the grid does not pay
_GRID_MIN_FILL = 0.25  # share of its blocks' entries the pairs must fill
_NORM_RTOL = 1e-13  # inputs whose squared norms differ by less share an interpolant
_Q_INFINITE = 1e12  # where chi_1 of a divergent length map is evaluated


# ---------------------------------------------------------------------------
# validation


def _public(fn):
    """A public function with its docstring's <_..._DOC> parts filled in.
    (Its tensor operations are many and small: on a busy machine, running
    with ``torch.set_num_threads(1)`` can be much faster. That is left to the
    caller: changing a process-wide setting here would affect other threads.)"""
    doc = fn.__doc__ or ""
    for name in ("_KERNEL_PARAMS_DOC", "_ORDER_PARAMS_DOC"):  # each defined before its first use
        if f"<{name}>" in doc:
            doc = doc.replace(f"<{name}>", globals()[name])
    fn.__doc__ = doc
    return fn


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
    return _check_int("quad_order", quad_order, 4)


def _square(name: str, value: float) -> float:
    """value ** 2, or a ValueError naming the argument when it overflows float64."""
    try:
        square = value * value
    except OverflowError:  # pragma: no cover - floats give inf, not an exception
        square = math.inf
    if not math.isfinite(square):
        raise ValueError(f"{name} ** 2 overflows float64: {name} must be below 1.3e154; got {value:g}")
    return square


class _Act:
    """An activation by name with its parameters (validated)."""

    __slots__ = ("name", "negative_slope", "beta", "threshold", "cache")

    def __init__(self, name, negative_slope=0.01, softplus_beta=1.0, softplus_threshold=20.0):
        self.cache = {}  # Hermite coefficients by (variance, order), for one call's many layers and nodes
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

    @property
    def centers(self) -> tuple[float, ...]:
        """Pre-activations around which phi bends (or has a kink)."""
        if self.name == "softplus":  # torch's softplus switches to h above threshold / beta
            return (0.0, self.threshold / self.beta)
        return (0.0,)

    @property
    def scale(self) -> float:
        """Width of the bends around the centers (inf: scale-free, kinks only)."""
        if self.homogeneous:
            return math.inf
        return 1.0 / self.beta if self.name == "softplus" else 1.0

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
# Gaussian expectations: closed forms


def _unit_correlation(s1: torch.Tensor, s2: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Rows where (u, v) is degenerate: a zero variance, or |rho| = 1 up to
    rounding. There v = rho sqrt(s2 / s1) u exactly, and the 1-D rule applies."""
    return _unit_correlation_of(torch.sqrt(s1) * torch.sqrt(s2), c)  # not sqrt(s1 * s2): that overflows first


def _unit_correlation_of(g: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """:func:`_unit_correlation` from g = sqrt(s1) sqrt(s2)."""
    return (g == 0) | (c.abs() >= g * (1 - _RHO_ONE_EPS))


def _closed_pair(act: _Act, s1: torch.Tensor, s2: torch.Tensor, c: torch.Tensor, one: torch.Tensor):
    """Closed-form (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for tensors of one
    shape, s1 = Var u, s2 = Var v, c = Cov(u, v); ``one`` marks the rows of
    :func:`_unit_correlation`. Scale-safe: products of variances are formed
    from their square roots, so the result overflows only where it is
    itself out of range."""
    n = act.name
    if n == "identity":
        return c.clone(), torch.ones_like(c)
    r1, r2 = torch.sqrt(s1), torch.sqrt(s2)
    g = r1 * r2
    if n == "erf":
        w1, w2 = torch.sqrt(1 + 2 * s1), torch.sqrt(1 + 2 * s2)
        e = (2 / math.pi) * torch.asin((2 * c / w1 / w2).clamp(-1.0, 1.0))
        # (1 + 2 s1)(1 + 2 s2) - 4 c^2 without the cancellation: 1 + 2 s1 + 2 s2 + 4 (g - |c|)(g + |c|)
        gap = torch.where(one, 0.0, (g - c.abs()).clamp_min(0.0) * (g + c.abs()))
        de = (4 / math.pi) / torch.sqrt(1 + 2 * s1 + 2 * s2 + 4 * gap)
        return e, de
    # relu and leaky_relu: arc-cosine kernels of degree 1 and 0 (Cho & Saul 2009)
    pos = g > 0
    rho = torch.where(one, torch.sign(c), c / torch.where(pos, g, torch.ones_like(g))).clamp(-1.0, 1.0)
    t = torch.acos(rho)
    k1 = torch.where(pos, g * ((torch.sin(t) + (math.pi - t) * rho) / (2 * math.pi)), 0.0)
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


# ---------------------------------------------------------------------------
# Gaussian expectations: quadrature
#
# Every expectation is an integral over iid standard normals on [-T, T]^d,
# d = 1 or 2, by composite Gauss-Legendre rules whose panels come from the
# integrand's scales: phi changes over a width act.scale around each of
# act.centers (a kink for relu, the switch to h for softplus); in z units
# that width is act.scale / sqrt(variance), which is tiny at large variance
# and wide at small. Panels are graded geometrically (ratio _RATIO) from
# that width at each center out to the domain, and _UNIFORM panels of
# width 2T / _UNIFORM resolve the Gaussian itself.


@lru_cache(maxsize=None)
def _legendre(m: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(m)
    return torch.from_numpy(x).to(_DTYPE), torch.from_numpy(w).to(_DTYPE)


def _levels(scale: torch.Tensor, panel: float = _PANEL) -> torch.Tensor:
    """How many graded panels lead from a feature of width ``scale`` to the uniform panels' width."""
    span = (panel / scale).clamp(min=1.0)
    return torch.ceil(torch.log(span) / math.log(_RATIO) - 1e-9).clamp(0, _MAX_LEVELS).to(torch.int64)


def _graded_rule(centers: torch.Tensor, scale: torch.Tensor, levels: int, order: int,
                 trunc: float = _TRUNC, panel: float = _PANEL):
    """Nodes z and weights w (rows, M) with sum w f(z) ~ E[f(Z)], Z ~ N(0, 1),
    for rows of integrands that vary over ``scale`` (rows,) around each of
    ``centers`` (rows, C) and are smooth elsewhere: panels of width
    ``_PANEL`` on [-T, T], and inside the one holding a center, panels graded
    geometrically from ``scale`` at the center to ``_PANEL``."""
    rows = centers.shape[0]
    bounds = [torch.linspace(-trunc, trunc, round(2 * trunc / panel) + 1, dtype=_DTYPE).expand(rows, -1),
              centers.clamp(-trunc, trunc)]
    if levels > 0:
        width = scale.clamp(max=panel)[:, None]
        steps = width * (panel / width) ** (torch.arange(levels, dtype=_DTYPE) / levels)
        steps = torch.cat([-steps, steps], -1)  # (rows, 2 levels)
        bounds.append((centers[:, :, None] + steps[:, None, :]).reshape(rows, -1).clamp(-trunc, trunc))
    b = torch.cat(bounds, -1).sort(-1).values
    x, w = _legendre(order)
    half = ((b[:, 1:] - b[:, :-1]) / 2)[..., None]
    z = (b[:, :-1, None] + half * (x + 1)).reshape(rows, -1)
    wz = (half * w).reshape(rows, -1) * torch.exp(-0.5 * z * z) * _INV_SQRT_2PI
    return z, wz


def _centered_rule(scale: float, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule of :func:`_graded_rule` for one bend at 0 of width at least
    ``scale``, graded down to the power of 2 below it (so that it can be cached)."""
    return _centered_rule_at(math.floor(math.log2(scale)) if math.isfinite(scale) and scale > 0 else None, order)


@lru_cache(maxsize=256)
def _centered_rule_at(exponent: int | None, order: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = torch.tensor([math.inf if exponent is None else 2.0 ** exponent], dtype=_DTYPE)
    z, w = _graded_rule(torch.zeros(1, 1, dtype=_DTYPE), width, int(_levels(width)), order)
    return z[0], w[0]


def _rule_size(n_centers: int, levels: int, order: int) -> int:
    return (_UNIFORM + n_centers * (1 + 2 * levels)) * order


def _groups(*keys: torch.Tensor):
    """(key values, row indices) for the rows sharing each combination of the int keys."""
    stacked = torch.stack(keys, -1)
    uniq, inverse = torch.unique(stacked, dim=0, return_inverse=True)
    order = torch.argsort(inverse, stable=True)
    counts = torch.bincount(inverse, minlength=uniq.shape[0]).tolist()
    return zip(uniq.tolist(), torch.split(order, counts))


def _chunks(idx: torch.Tensor, per_row: int):
    step = max(1, _MAX_CHUNK_ELEMENTS // max(per_row, 1))
    return torch.split(idx, step)


def _centers_over(act: _Act, scale: torch.Tensor) -> torch.Tensor:
    """act.centers / scale (rows, C), 0 where scale is 0."""
    cen = torch.tensor(act.centers, dtype=_DTYPE)
    nz = scale != 0
    return torch.where(nz[:, None], cen / torch.where(nz, scale, torch.ones_like(scale))[:, None], 0.0)


def _quad_1d(act: _Act, a: torch.Tensor, b: torch.Tensor, order: int):
    """(E[phi(a z) phi(b z)], E[phi'(a z) phi'(b z)]), z ~ N(0, 1), rows a, b (P,)."""
    top = torch.maximum(a.abs(), b.abs())
    scale = act.scale / top  # inf where both are 0: no grading
    e, de = torch.empty_like(a), torch.empty_like(a)
    if len(act.centers) == 1:  # phi bends only at 0: one rule, graded for the narrowest bend, serves all rows
        z, w = _centered_rule(float(scale.min()), order)
        for part in _chunks(torch.arange(a.numel()), z.numel()):
            u, v = a[part, None] * z, b[part, None] * z
            e[part] = (act.phi(u) * act.phi(v)) @ w
            de[part] = (act.dphi(u) * act.dphi(v)) @ w
        return e, de
    centers = torch.cat([_centers_over(act, a), _centers_over(act, b)[:, 1:]], -1)  # 0 once
    levels = _levels(scale)
    for (k,), idx in _groups(levels):
        for part in _chunks(idx, _rule_size(centers.shape[1], k, order)):
            z, w = _graded_rule(centers[part], scale[part], k, order)
            u, v = a[part, None] * z, b[part, None] * z
            e[part] = (w * act.phi(u) * act.phi(v)).sum(-1)
            de[part] = (w * act.dphi(u) * act.dphi(v)).sum(-1)
    return e, de


def _quad_2d(act: _Act, s1: torch.Tensor, s2: torch.Tensor, rho: torch.Tensor, order: int):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for rows with s1, s2 > 0 and
    |rho| < 1: u = sqrt(s1) z1, v = sqrt(s2) (rho z1 + r z2), r = sqrt(1 - rho^2).

    The inner integral over z2 is graded around the z2 where v crosses a
    center (width act.scale / (sqrt(s2) r)); the outer one around u's centers
    and around where the inner integral, a Gaussian smoothing of phi of
    width sqrt(s2) r, changes: width max(act.scale, sqrt(s2) r) / (sqrt(s2) |rho|)."""
    sa, sb = torch.sqrt(s1), torch.sqrt(s2)
    r = torch.sqrt((1 - rho) * (1 + rho))
    fs = act.scale
    smooth_width = torch.clamp(sb * r, min=0.0 if math.isinf(fs) else fs)
    nz = rho != 0
    inner_drift = torch.where(nz, sb * rho, torch.ones_like(rho))
    outer_scale = torch.minimum(fs / sa, torch.where(nz, smooth_width / inner_drift.abs(), math.inf))
    # act.centers[0] is 0 for every activation: list it once
    outer_centers = torch.cat([_centers_over(act, sa), torch.where(
        nz[:, None], _centers_over(act, inner_drift)[:, 1:], 0.0)], -1)
    inner_scale = fs / (sb * r)
    cen = torch.tensor(act.centers, dtype=_DTYPE)
    e, de = torch.empty_like(rho), torch.empty_like(rho)
    for (k1, k2), idx in _groups(_levels(outer_scale), _levels(inner_scale)):
        m1 = _rule_size(outer_centers.shape[1], k1, order)
        m2 = _rule_size(len(act.centers), k2, order)
        for part in _chunks(idx, m1 * 16):
            z1, w1 = _graded_rule(outer_centers[part], outer_scale[part], k1, order)  # (p, m1)
            p_sb, p_rho, p_r = sb[part, None], rho[part, None], r[part, None]
            # inner centers: z2 with sqrt(s2) (rho z1 + r z2) = center
            ic = (cen / p_sb[..., None] - (p_rho * z1)[..., None]) / p_r[..., None]  # (p, m1, C)
            drift = (p_sb * p_rho * z1).reshape(-1)
            width = (p_sb * p_r).expand_as(z1).reshape(-1)
            iscale = inner_scale[part, None].expand_as(z1).reshape(-1)
            ic = ic.reshape(-1, len(act.centers))
            g = torch.empty_like(drift)
            dg = torch.empty_like(drift)
            for rows in _chunks(torch.arange(drift.numel()), m2):
                z2, w2 = _graded_rule(ic[rows], iscale[rows], k2, order)
                v = drift[rows, None] + width[rows, None] * z2
                g[rows] = (w2 * act.phi(v)).sum(-1)
                dg[rows] = (w2 * act.dphi(v)).sum(-1)
            u = sa[part, None] * z1
            e[part] = (w1 * act.phi(u) * g.reshape(z1.shape)).sum(-1)
            de[part] = (w1 * act.dphi(u) * dg.reshape(z1.shape)).sum(-1)
    return e, de


# Away from |rho| = 1 the 2-D integrals are sums of 1-D ones (Mehler's
# formula): with h_k = He_k / sqrt(k!) the orthonormal Hermite polynomials,
#     E[f(u) g(v)] = sum_k a_k b_k rho^k,  a_k = E[f(sqrt(s1) z) h_k(z)],  b_k = E[g(sqrt(s2) z) h_k(z)].
# The coefficients come from one graded 1-D rule per distinct variance,
# wide enough for h_k's oscillations; a row uses the series when the terms
# from _SERIES_TERMS / 2 on add up to less than _SERIES_TOL of the
# expectation's scale (ten times over), else the 2-D rule.


def _hermite_table(z: torch.Tensor, terms: int = _SERIES_TERMS) -> torch.Tensor:
    """h_k(z) for k < terms: (terms,) + z.shape."""
    h = torch.empty((terms,) + tuple(z.shape), dtype=_DTYPE)
    h[0] = 1.0
    if terms > 1:
        h[1] = z
    for n in range(1, terms - 1):  # h_{n+1} = (z h_n - sqrt(n) h_{n-1}) / sqrt(n + 1)
        h[n + 1] = (z * h[n] - math.sqrt(n) * h[n - 1]) / math.sqrt(n + 1)
    return h


def _hermite_coefficients(act: _Act, q: torch.Tensor, order: int, terms: int = _SERIES_TERMS,
                          tails: bool = False):
    """Hermite expansions of phi and phi' at the distinct variances q (U,):
    per function f, (a, norm2, rest2) with a (U, terms) the coefficients
    a_k = E[f(sqrt(q) z) h_k(z)] and, with ``tails``, norm2 = E[f^2] and
    rest2 = E[(f - sum_k a_k h_k)^2] (U,) by the same rule (else None): the
    mass beyond the expansion, from the residual itself, so that it is
    resolved far below the rounding of E[f^2] - sum_k a_k^2.

    The rule's uniform panels are one wavelength of h_terms wide, so fewer
    terms need fewer nodes."""
    root = torch.sqrt(q)
    scale = act.scale / root
    panel = _SERIES_PANEL * math.sqrt(_SERIES_TERMS / terms)
    out = [(torch.empty(q.numel(), terms, dtype=_DTYPE), torch.empty_like(q), torch.empty_like(q))
           for _ in range(2)]
    # One rule serves a run of variances, graded for the run's narrowest bend
    # around all of its centers, so that the coefficients are matrix
    # products: for phi bending only at 0, one run of every variance; else
    # runs of _RULE_RUN neighbouring variances (their centers are close).
    by_value = torch.argsort(q)
    runs = [by_value] if len(act.centers) == 1 else torch.split(by_value, _RULE_RUN)
    for run in runs:
        centers = torch.unique(_centers_over(act, root[run]).clamp(-_SERIES_TRUNC, _SERIES_TRUNC))
        narrowest = scale[run].min().reshape(1)
        z, w = _graded_rule(centers[None, :], narrowest, int(_levels(narrowest, panel)),
                            order, _SERIES_TRUNC, panel)
        table = _hermite_table(z[0], terms)  # (K, M)
        hw = (table * w).T  # (M, K)
        for idx in _chunks(run, z.shape[1]):
            u = root[idx, None] * z
            for f, (a, norm2, rest2) in zip((act.phi(u), act.dphi(u)), out):
                a[idx] = f @ hw
                if tails:
                    norm2[idx], rest2[idx] = (f * f) @ w[0], (f - a[idx] @ table) ** 2 @ w[0]
    return [(a, norm2, rest2) if tails else (a, None, None) for a, norm2, rest2 in out]


def _series_pairs(act: _Act, s1: torch.Tensor, s2: torch.Tensor, rho: torch.Tensor, order: int):
    """Mehler-series (E[phi(u) phi(v)], E[phi'(u) phi'(v)], ok) for rows
    (P,); ``ok`` marks the rows where the series converged.

    Rows are taken in order of |rho|; a chunk whose largest |rho| lets every
    row's terms from k = K' / 2 on (bounded through the largest coefficients
    of any variance) pass the test sums only K' < _SERIES_TERMS terms."""
    uq, inverse = torch.unique(torch.cat([s1, s2]), return_inverse=True)
    a, da = _cached_coefficients(act, uq, order)
    i1, i2 = inverse[:s1.numel()], inverse[s1.numel():]
    envelopes = [(c.abs().amax(0) ** 2, (c * c).sum(1).min()) for c in (a, da)]  # (K,), smallest E[f^2]
    e, de = torch.empty_like(rho), torch.empty_like(rho)
    ok = torch.ones_like(rho, dtype=torch.bool)
    for rows in _chunks(torch.argsort(rho.abs()), 4 * _SERIES_TERMS):
        r = rho[rows, None]
        terms_needed = _series_length(envelopes, float(r.abs().max()))
        half = terms_needed // 2
        powers = torch.cat([torch.ones_like(r), torch.cumprod(r.expand(-1, terms_needed - 1), 1)], 1)
        for coef, out in ((a, e), (da, de)):
            c1, c2 = coef[i1[rows], :terms_needed], coef[i2[rows], :terms_needed]
            terms = c1 * c2 * powers  # (p, K')
            if terms_needed == _SERIES_TERMS:
                norm = torch.sqrt((c1 * c1).sum(1) * (c2 * c2).sum(1))  # sqrt(E[f(u)^2] E[f(v)^2])
                ok[rows] &= 10 * terms[:, half:].abs().sum(1) <= _SERIES_TOL * norm
            out[rows] = terms.sum(1)
    return e, de, ok


def _series_length(envelopes, rho_max: float) -> int:
    """The fewest terms K' (a power of 2, at most _SERIES_TERMS) whose second
    half, and so the rest, is negligible for every row with |rho| <= rho_max."""
    k = 64
    while k < _SERIES_TERMS:
        powers = rho_max ** torch.arange(k // 2, _SERIES_TERMS, dtype=_DTYPE)
        if all(10 * float((env[k // 2:] * powers).sum()) <= _SERIES_TOL * float(smallest)
               for env, smallest in envelopes):
            return k
        k *= 2
    return _SERIES_TERMS


def _cached_coefficients(act: _Act, q: torch.Tensor, order: int):
    """:func:`_hermite_coefficients`, remembered per activation, variance and order."""
    keys = [(v, order) for v in q.tolist()]
    missing = [i for i, k in enumerate(keys) if k not in act.cache]
    if missing:
        (a, _, _), (da, _, _) = _hermite_coefficients(act, q[missing], order)
        if len(act.cache) > 4096:
            act.cache.clear()
        for r, i in enumerate(missing):
            act.cache[keys[i]] = (a[r], da[r])
    return (torch.stack([act.cache[k][0] for k in keys]), torch.stack([act.cache[k][1] for k in keys]))


def _expect_pairs(act: _Act, s1: torch.Tensor, s2: torch.Tensor, c: torch.Tensor, closed: bool, order: int):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for 1-D tensors s1 = Var u,
    s2 = Var v, c = Cov(u, v): closed form, or quadrature with the 1-D rule
    where the correlation is +-1 and the 2-D rule elsewhere."""
    one = _unit_correlation(s1, s2, c)
    if closed:
        return _closed_pair(act, s1, s2, c, one)
    e, de = torch.empty_like(c), torch.empty_like(c)
    i1 = one.nonzero().squeeze(1)
    if i1.numel():  # few distinct (s1, s2, sign) here: the diagonal, duplicated inputs
        key = torch.stack([s1[i1], s2[i1], torch.where(c[i1] < 0, -1.0, 1.0)], -1)
        key, inverse = torch.unique(key, dim=0, return_inverse=True)
        eu, deu = _quad_1d(act, torch.sqrt(key[:, 0]), torch.sqrt(key[:, 1]) * key[:, 2], order)
        e[i1], de[i1] = eu[inverse], deu[inverse]
    i2 = (~one).nonzero().squeeze(1)
    if i2.numel():
        rho = c[i2] / (torch.sqrt(s1[i2]) * torch.sqrt(s2[i2]))
        todo = torch.ones_like(rho, dtype=torch.bool)
        if torch.unique(torch.cat([s1[i2], s2[i2]])).numel() <= _SERIES_MAX_VARIANCES:
            es, des, todo = _series_pairs(act, s1[i2], s2[i2], rho, order)
            todo = ~todo
            e[i2], de[i2] = es, des
        i3 = i2[todo]
        if i3.numel():
            e[i3], de[i3] = _quad_2d(act, s1[i3], s2[i3], rho[todo], order)
    return e, de


def _expect_same(act: _Act, q: torch.Tensor, closed: bool, order: int):
    """(E[phi(u)^2], E[phi'(u)^2]), u ~ N(0, q), any shape of q."""
    flat = q.reshape(-1)
    if closed:
        e, de = _closed_pair(act, flat, flat, flat, torch.ones_like(flat, dtype=torch.bool))
    else:
        uniq, inverse = torch.unique(flat, return_inverse=True)
        root = torch.sqrt(uniq)
        e, de = _quad_1d(act, root, root, order)
        e, de = e[inverse], de[inverse]
    return e.reshape(q.shape), de.reshape(q.shape)


# ---------------------------------------------------------------------------
# Gaussian expectations on a grid of pairs
#
# Raw inputs (every norm distinct) give every pair its own variances, so the
# angle interpolant does not apply and the recursion runs on all N^2 / 2
# pairs. The pairs then fill a grid (inputs x inputs) whose rows and columns
# each carry one variance, and the Mehler series is summed blockwise by
# Horner's rule in rho^2 (even and odd k apart), E <- E rho^2 + a_k b_k^T: no
# per-pair gathers of coefficient rows, two passes over a block per term.
# The truncation is bounded per block: with t(K) = sum_{k >= K} a_k^2 / E[f^2]
# the relative tail of the expansion, Cauchy-Schwarz gives
#     |sum_{k >= K} a_k b_k rho^k| <= |rho|^K sqrt(t_a(K) t_b(K)) sqrt(E[f(u)^2] E[f(v)^2]);
# a block sums the fewest K terms for which this, with the block's largest
# |rho| and tails, is below _GRID_BUDGET, and skips the terms (e.g. the zero
# ones of an odd or even phi) whose bounds |a_k| |b_k| |rho|^k add up to
# another _GRID_BUDGET. The coefficient tables are short first (64 terms, on
# a rule with fewer nodes) and longer only when too many pairs need more;
# the pairs that need more terms than the table holds, and those at
# correlation +-1, go to :func:`_expect_pairs`.


def _series_tables(act: _Act, q: torch.Tensor, order: int, terms: int):
    """For phi and phi' at the variances q (U,): the coefficients a (U, terms),
    their magnitudes relative to sqrt(E[f^2]) (U, terms), the relative
    tails t (U, terms + 1), t[:, K] >= sum_{k >= K} a_k^2 / E[f^2], and
    whether E[f^2] > 0 (U,) (elsewhere, e.g. at variance 0, the other
    entries are 0 and the rows take no series)."""
    tables = []
    for coef, norm2, rest2 in _hermite_coefficients(act, q, order, terms, tails=True):
        valid = (norm2 > 0) & torch.isfinite(norm2)
        scale = torch.where(valid, norm2, 1.0)
        rel = torch.where(valid[:, None], coef.abs() / torch.sqrt(scale)[:, None], 0.0)
        # the tail from K on: the table's terms from K on (summed from the end, without
        # cancellation), and the mass beyond the table with a safety factor for its quadrature
        beyond = _TAIL_SAFETY * torch.where(valid, rest2 / scale, 0.0)
        squares = torch.cat([rel * rel, beyond[:, None]], 1)
        tail = torch.flip(torch.cumsum(torch.flip(squares, [1]), 1), [1])
        tail = (torch.sqrt(tail) * (1 + 1e-12) + _TAIL_ROOT_FLOOR) ** 2  # rounding; the coefficients' errors
        tables.append((coef, rel, torch.where(valid[:, None], tail, 0.0), valid))
    return tables


def _block_terms(env_r: torch.Tensor, env_c: torch.Tensor, tail_r: torch.Tensor, tail_c: torch.Tensor,
                 rho_max: float) -> list[int]:
    """The terms k a block sums: all k < K but those skipped, for rows with
    relative coefficient magnitudes at most env_r (terms,) and tails at most
    tail_r (terms + 1,), columns likewise, and |rho| <= rho_max."""
    budget = _GRID_BUDGET
    powers = rho_max ** torch.arange(tail_r.numel(), dtype=_DTYPE)
    fits = (powers * torch.sqrt(tail_r * tail_c) <= budget).nonzero()
    k_max = int(fits[0]) if fits.numel() else env_r.numel()  # the block's rows all passed at k = terms
    bounds = env_r[:k_max] * env_c[:k_max] * powers[:k_max]
    order = torch.argsort(bounds)
    skipped = order[torch.cumsum(bounds[order], 0) <= budget]
    keep = torch.ones(k_max, dtype=torch.bool)
    keep[skipped] = False
    return keep.nonzero().squeeze(1).tolist()


def _horner(a_r: torch.Tensor, a_c: torch.Tensor, rho: torch.Tensor, terms: list[int]) -> torch.Tensor:
    """sum over k in terms of outer(a_r[k], a_c[k]) rho^k for a block rho (R, C),
    a_r (terms, R), a_c (terms, C): even and odd k each by Horner's rule in rho^2."""
    out = None
    rho2 = rho * rho
    for parity in (0, 1):
        ks = [k for k in terms if k % 2 == parity]
        if not ks:
            continue
        acc = torch.outer(a_r[ks[-1]], a_c[ks[-1]])
        for hi, lo in zip(reversed(ks), reversed(ks[:-1])):
            for _ in range((hi - lo) // 2):
                acc.mul_(rho2)
            acc.addr_(a_r[lo], a_c[lo])
        for _ in range(ks[0] // 2):
            acc.mul_(rho2)
        if parity:
            acc.mul_(rho)
        out = acc if out is None else out.add_(acc)
    return torch.zeros_like(rho) if out is None else out


class _Grid:
    """Pairs p joining the inputs i1[p] and i2[p] (indices into the variances
    v), laid out on a grid whose rows and columns are their distinct inputs
    in index order (one axis for both when they share inputs, as with x2 =
    None), and cut into blocks of about _GRID_BLOCK entries; only the blocks
    that hold a pair are summed, each in a buffer of its own (no N x N
    arrays). (Sorting the axes by variance would make the blocks' term
    counts a little smaller, but the pairs' gathers and scatters random: on
    the benchmark that costs more than it saves.)"""

    def __init__(self, v: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor):
        self.i1, self.i2 = i1, i2
        seen = torch.zeros(v.numel(), dtype=torch.bool)
        seen[i1] = True
        if bool(seen[i2].any()):
            self.rows = self.cols = torch.unique(torch.cat([i1, i2]))
        else:
            self.rows, self.cols = torch.unique(i1), torch.unique(i2)
        self.pr, self.pc = self._positions(v, self.rows, i1), self._positions(v, self.cols, i2)
        nr, nc = self.rows.numel(), self.cols.numel()
        self.br = min(nr, _GRID_BLOCK_ROWS)
        self.bc = min(nc, max(_GRID_BLOCK_ROWS, _GRID_BLOCK // self.br))
        self.nbc = -(-nc // self.bc)
        bi, bj = self.pr // self.br, self.pc // self.bc
        self.block = bi * self.nbc + bj  # each pair's block, row-major
        # each pair's entry in its block's buffer (row-major, the block's own width)
        local = (self.pr - bi * self.br) * (nc - bj * self.bc).clamp(max=self.bc) + (self.pc - bj * self.bc)
        by_block = torch.argsort(self.block, stable=True)
        blocks, counts = torch.unique_consecutive(self.block[by_block], return_counts=True)
        self.blocks = blocks.tolist()
        self.members = torch.split(by_block, counts.tolist())
        self.local = torch.split(local[by_block], counts.tolist())

    @staticmethod
    def _positions(v: torch.Tensor, axis: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        pos = torch.empty(v.numel(), dtype=torch.int64)
        pos[axis] = torch.arange(axis.numel())
        return pos[idx]

    def _span(self, block: int) -> tuple[slice, slice]:
        """The rows and columns of a block."""
        bi, bj = divmod(block, self.nbc)
        return (slice(bi * self.br, min((bi + 1) * self.br, self.rows.numel())),
                slice(bj * self.bc, min((bj + 1) * self.bc, self.cols.numel())))

    @classmethod
    def layout(cls, v: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor) -> "_Grid | None":
        """The grid of these pairs, or None where it does not pay: few pairs,
        or pairs that fill under _GRID_MIN_FILL of their blocks (e.g. the
        angle interpolant's nodes, each with its own pair of inputs)."""
        if i1.numel() < _GRID_MIN_PAIRS:
            return None
        grid = cls(v, i1, i2)
        area = sum((r.stop - r.start) * (c.stop - c.start) for r, c in map(grid._span, grid.blocks))
        return grid if i1.numel() >= _GRID_MIN_FILL * area else None

    @staticmethod
    def _block_max(values: torch.Tensor, size: int) -> torch.Tensor:
        """Values of an axis (n, m) -> their maxima over each block of ``size`` entries (blocks, m)."""
        return torch.stack([part.amax(0) for part in torch.split(values, size)])

    def _cuts(self, tables, ir: torch.Tensor, ic: torch.Tensor, terms: int):
        """Per block, the largest |rho| that ``terms`` terms resolve for phi and phi'
        (nr_blocks * nc_blocks,), and per channel the block maxima that :func:`_block_terms` takes."""
        blocks, cut = [], None
        for coef, rel, tail, _ in tables:
            env_r, tail_r = self._block_max(rel[ir], self.br), self._block_max(tail[ir], self.br)
            env_c, tail_c = self._block_max(rel[ic], self.bc), self._block_max(tail[ic], self.bc)
            blocks.append((coef, env_r, env_c, tail_r, tail_c))
            # |rho|^terms sqrt(t_r t_c) <= the budget, a little inside it against rounding
            log_t = 0.5 * (torch.log(tail_r[:, terms, None]) + torch.log(tail_c[None, :, terms]))
            limit = torch.exp((math.log(_GRID_BUDGET) - 1e-9 - log_t) / terms).clamp(max=1.0)
            cut = limit if cut is None else torch.minimum(cut, limit)
        return cut.reshape(-1), blocks

    def expect(self, act: _Act, v: torch.Tensor, c: torch.Tensor, order: int):
        """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for the pairs, u ~ v[i1],
        v ~ v[i2], Cov = c (P,), as :func:`_expect_pairs` computes them."""
        root = torch.sqrt(v)
        g = root[self.i1] * root[self.i2]
        one = _unit_correlation_of(g, c)
        rho = c / torch.where(one, 1.0, g)
        vr, vc = v[self.rows], v[self.cols]
        uq, inverse = torch.unique(torch.cat([vr, vc]), return_inverse=True)
        ir, ic = inverse[:vr.numel()], inverse[vr.numel():]
        usable = ~one
        for terms in _GRID_TERMS:
            tables = _series_tables(act, uq, order, terms)
            valid = tables[0][3] & tables[1][3]
            if not bool(valid.all()):
                usable = ~one & valid[ir][self.pr] & valid[ic][self.pc]
            cut, blocks = self._cuts(tables, ir, ic, terms)
            series = usable & (rho.abs() <= cut[self.block])
            if int((usable & ~series).sum()) <= _GRID_MAX_REST * rho.numel():
                break
        rho = torch.where(series, rho, 0.0)  # pairs left to _expect_pairs do not count in their block
        e, de = torch.empty_like(c), torch.empty_like(c)
        rows_of = [(coef[ir].T.contiguous(), coef[ic].T.contiguous()) for coef, *_ in blocks]  # (terms, n)
        for b, members, local in zip(self.blocks, self.members, self.local):
            rows, cols = self._span(b)
            block_rho = torch.zeros(rows.stop - rows.start, cols.stop - cols.start, dtype=_DTYPE)
            block_rho.view(-1)[local] = rho[members]
            rho_max = float(block_rho.abs().max())
            bi, bj = divmod(b, self.nbc)
            for (_, env_r, env_c, tail_r, tail_c), (a_r, a_c), out in zip(blocks, rows_of, (e, de)):
                kept = _block_terms(env_r[bi], env_c[bj], tail_r[bi], tail_c[bj], rho_max)
                out[members] = _horner(a_r[:, rows], a_c[:, cols], block_rho, kept).view(-1)[local]
        rest = (~series).nonzero().squeeze(1)
        if rest.numel():
            s1, s2 = v[self.i1[rest]], v[self.i2[rest]]
            e[rest], de[rest] = _expect_pairs(act, s1, s2, c[rest], False, order)
        return e, de


# ---------------------------------------------------------------------------
# the layer recursion, on a flat list of input pairs


class _Spec:
    """Everything the recursion needs besides the input pairs (validated)."""

    __slots__ = ("act", "closed", "order", "depth", "sw2", "sb2", "standard", "widths", "n0", "kind",
                 "sigma_w", "sigma_b")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def channels(self) -> int:
        return 2 * self.depth if self.kind == "layerwise" else 1


def _check_overflow(spec: _Spec, layer: int, *tensors: torch.Tensor) -> None:
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        raise OverflowError(
            f"the layer-{layer} covariance overflows float64 (sigma_w={spec.sigma_w:g}, "
            f"sigma_b={spec.sigma_b:g}, depth={spec.depth}): the kernel's entries exceed 1.8e308; "
            "reduce sigma_w or depth, or rescale the inputs x1, x2")


def _pair_kernels(spec: _Spec, v: torch.Tensor, i1: torch.Tensor, i2: torch.Tensor, c: torch.Tensor,
                  gram: torch.Tensor):
    """The requested kernel for P input pairs (channels, P): pair p joins
    the inputs whose layer-1 variances are v[i1[p]] and v[i2[p]], with
    covariance c[p] and inner product gram[p] = <x, x'>. Each input's
    variance follows its own recursion, so it is computed once per input
    (M = len(v) values) and gathered per pair, not once per pair."""
    sigmas, ephis, dsigmas = [c], [], []
    grid = None if spec.closed else _Grid.layout(v, i1, i2)
    for layer in range(2, spec.depth + 1):
        if grid is None:
            e, de = _expect_pairs(spec.act, v[i1], v[i2], c, spec.closed, spec.order)
        else:
            e, de = grid.expect(spec.act, v, c, spec.order)
        e_same, _ = _expect_same(spec.act, v, spec.closed, spec.order)
        v = spec.sw2 * e_same + spec.sb2
        c = spec.sw2 * e + spec.sb2
        _check_overflow(spec, layer, c, v)
        ephis.append(e)
        dsigmas.append(spec.sw2 * de)
        sigmas.append(c)
    return _assemble(spec, gram, sigmas, ephis, dsigmas)


def _assemble(spec: _Spec, gram, sigmas, ephis, dsigmas) -> torch.Tensor:
    """Sigma^L (nngp), Theta (ntk) or the 2L layer terms (layerwise), stacked on a new first axis."""
    if spec.kind == "nngp":
        return sigmas[-1][None]
    L = spec.depth
    terms = torch.empty((L, 2) + tuple(gram.shape), dtype=_DTYPE)
    tail = torch.ones_like(gram)  # prod_{m > l} dSigma^m
    for l in range(L, 0, -1):  # layer l, 1-based
        if l == 1:
            wterm = gram if spec.standard else spec.sw2 * gram / spec.n0
        else:
            wterm = spec.widths[l - 2] * ephis[l - 2] if spec.standard else spec.sw2 * ephis[l - 2]
        terms[l - 1, 0] = wterm * tail
        terms[l - 1, 1] = (1.0 if spec.standard else spec.sb2) * tail
        if l > 1:
            tail = tail * dsigmas[l - 2]
    if spec.kind == "layerwise":
        return terms.reshape(2 * L, *gram.shape)
    total = torch.zeros_like(gram)
    for term in terms.reshape(2 * L, *gram.shape):  # same order for every entry: symmetric stays exact
        total += term
    _check_overflow(spec, L, total)
    return total[None]


# ---------------------------------------------------------------------------
# interpolation over the angle between inputs
#
# With the input norms fixed, every kernel entry is a smooth function of the
# angle theta between the two inputs, and with normalized inputs (or few
# distinct norms) many pairs share their norms. For each such group the
# kernel is interpolated on [0, pi] by piecewise Chebyshev polynomials,
# adaptively: a piece is accepted when the interpolant matches the exact
# recursion at the midpoints between its nodes to _INTERP_TOL times the
# group's largest entry and its last two coefficients are that small too;
# otherwise it is halved. The angle, not the cosine, is the variable:
# arc-cosine-like kernels have sqrt(1 - cos) terms that are smooth in theta.


@lru_cache(maxsize=None)
def _cheb_setup(n: int):
    """Chebyshev points of the second kind x_k = cos(k pi / n) (n + 1), the
    matrix taking values at them to coefficients, and the n check points between them."""
    k = np.arange(n + 1)
    x = np.cos(np.pi * k / n)
    m = np.cos(np.pi * np.outer(k, k) / n) * (2.0 / n)
    m[:, [0, n]] /= 2
    m[[0, n], :] /= 2
    check = np.cos(np.pi * (np.arange(n) + 0.5) / n)
    at_check = np.cos(np.outer(np.arccos(check), k))  # T_j(check_i)
    return torch.from_numpy(x), torch.from_numpy(m), torch.from_numpy(check), torch.from_numpy(at_check)


def _eval_pieces(breaks: torch.Tensor, coef: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The piecewise interpolant (breaks (m + 1,), coef (m, n + 1, ch)) at theta (P,):
    values (ch, P) and each point's piece (P,)."""
    piece = (torch.searchsorted(breaks, theta, right=True) - 1).clamp(0, coef.shape[0] - 1)
    order = torch.argsort(piece)
    counts = torch.bincount(piece, minlength=coef.shape[0]).tolist()
    out = torch.empty(coef.shape[2], theta.numel(), dtype=_DTYPE)
    start = 0
    for p, count in enumerate(counts):
        if count:
            idx = order[start:start + count]
            left, right = float(breaks[p]), float(breaks[p + 1])
            x = ((2 * theta[idx] - (left + right)) / (right - left)).clamp(-1.0, 1.0)
            out[:, idx] = _clenshaw(coef[p], x)
            start += count
    return out, piece


def _clenshaw(coef: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j coef[j, :] T_j(x) for coef (n + 1, ch) and x (P,) -> (ch, P)."""
    out = torch.empty(coef.shape[1], x.numel(), dtype=_DTYPE)
    x2 = 2 * x
    for ch, c in enumerate(coef.T.tolist()):  # one channel at a time, scalar coefficients
        b1 = torch.zeros_like(x)
        b2 = torch.zeros_like(x)
        for cj in reversed(c[1:]):  # b_j = c_j + 2 x b_{j+1} - b_{j+2}, in place
            b2.neg_().addcmul_(x2, b1).add_(cj)
            b1, b2 = b2, b1
        out[ch] = b2.neg_().addcmul_(x, b1).add_(c[0])
    return out


def _interpolants(spec: _Spec, norms: torch.Tensor):
    """Adaptive piecewise-Chebyshev interpolants of the kernel over the angle,
    one per row of ``norms`` (G, 2) = (|x|, |x'|) of a group.

    Returns per group (breaks (pieces + 1,), coef (pieces, n + 1, ch), resolved (pieces,))."""
    n = _CHEB_DEGREE
    nodes, to_coef, check, at_check = _cheb_setup(n)
    pending = [(gi, math.pi * i / _INIT_PIECES, math.pi * (i + 1) / _INIT_PIECES, 0)
               for gi in range(norms.shape[0]) for i in range(_INIT_PIECES)]
    scale = torch.zeros(norms.shape[0], spec.channels(), dtype=_DTYPE)
    done = [[] for _ in range(norms.shape[0])]
    while pending:
        gi = torch.tensor([p[0] for p in pending])
        lo = torch.tensor([p[1] for p in pending], dtype=_DTYPE)
        hi = torch.tensor([p[2] for p in pending], dtype=_DTYPE)
        x = torch.cat([nodes, check])  # (2n + 1,)
        theta = (lo[:, None] + hi[:, None]) / 2 + (hi - lo)[:, None] / 2 * x  # (pieces, 2n + 1)
        a, b = norms[gi, 0, None].expand_as(theta), norms[gi, 1, None].expand_as(theta)
        vals = _angle_kernels(spec, a.reshape(-1), b.reshape(-1), theta.reshape(-1))
        vals = vals.reshape(-1, *theta.shape).permute(1, 2, 0)  # (pieces, 2n + 1, ch)
        for p, g in enumerate(gi.tolist()):
            scale[g] = torch.maximum(scale[g], vals[p].abs().amax(0))
        coef = torch.einsum("jk,pkc->pjc", to_coef, vals[:, :n + 1])
        approx = torch.einsum("ij,pjc->pic", at_check, coef)
        tol = _INTERP_TOL * scale[gi].clamp_min(torch.finfo(_DTYPE).tiny)  # (pieces, ch)
        err = (approx - vals[:, n + 1:]).abs().amax(1)
        tail = coef[:, -2:].abs().amax(1)
        ok = ((err <= tol) & (tail <= tol)).all(-1)
        nxt = []
        for p, (g, l, h, depth) in enumerate(pending):
            if ok[p] or depth >= _MAX_BISECTIONS:
                done[g].append((l, h, coef[p], bool(ok[p])))
            else:
                mid = 0.5 * (l + h)
                nxt += [(g, l, mid, depth + 1), (g, mid, h, depth + 1)]
        pending = nxt
    out = []
    for pieces in done:
        pieces.sort(key=lambda t: t[0])
        breaks = torch.tensor([p[0] for p in pieces] + [math.pi], dtype=_DTYPE)
        out.append((breaks, torch.stack([p[2] for p in pieces]), torch.tensor([p[3] for p in pieces])))
    return out


def _angle_kernels(spec: _Spec, na: torch.Tensor, nb: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """The kernel for pairs of inputs with norms na, nb at angle theta."""
    gram = na * nb * torch.cos(theta)
    v = spec.sw2 * torch.cat([na * na, nb * nb]) / spec.n0 + spec.sb2
    p = torch.arange(na.numel())
    return _pair_kernels(spec, v, p, p + na.numel(), spec.sw2 * gram / spec.n0 + spec.sb2, gram)


def _norm_clusters(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster ids of sorted squared norms equal to within _NORM_RTOL (rounding,
    e.g. of normalized inputs), and each cluster's smallest value."""
    v = values.tolist()
    ids, reps = [], []
    for val in v:
        if not reps or val > reps[-1] * (1 + _NORM_RTOL):
            reps.append(val)
        ids.append(len(reps) - 1)
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(reps, dtype=_DTYPE)


def _kernel_entries(spec: _Spec, sq1: torch.Tensor, sq2: torch.Tensor, gram: torch.Tensor,
                    i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """The kernel (ch, P) at the pairs (i[p], j[p]) of inputs with squared norms sq1, sq2."""
    g = gram[i, j]
    n_pairs = g.numel()
    out = torch.empty(spec.channels(), n_pairs, dtype=_DTYPE)
    direct = torch.ones(n_pairs, dtype=torch.bool)
    if not spec.closed and n_pairs >= _INTERP_MIN_PAIRS:
        values, per_value = torch.unique(torch.cat([sq1, sq2]), return_counts=True)
        cluster, keys = _norm_clusters(values)
        # a group of norms (a, b) holds at most 2 n_a n_b pairs: with every cluster
        # small (e.g. all norms distinct) no group can reach _INTERP_MIN_PAIRS
        largest = int(torch.bincount(cluster, weights=per_value.to(_DTYPE)).max())
        big = None
        if 2 * largest * largest >= _INTERP_MIN_PAIRS:
            a, b = sq1[i], sq2[j]
            lo, hi = torch.minimum(a, b), torch.maximum(a, b)  # the kernel is symmetric in the pair
            ka, kb = cluster[torch.searchsorted(values, lo)], cluster[torch.searchsorted(values, hi)]
            uniq, inverse, counts = torch.unique(ka * keys.numel() + kb, return_inverse=True, return_counts=True)
            big = (counts >= _INTERP_MIN_PAIRS) & (keys[uniq // keys.numel()] > 0)
        if big is not None and bool(big.any()):
            gids = big.nonzero().squeeze(1)
            norms = torch.sqrt(torch.stack([keys[uniq[gids] // keys.numel()], keys[uniq[gids] % keys.numel()]], -1))
            order = torch.argsort(inverse, stable=True)
            members = torch.split(order, counts.tolist())
            for g_id, (breaks, coef, resolved) in zip(gids.tolist(), _interpolants(spec, norms)):
                idx = members[g_id]
                cos = g[idx] / (torch.sqrt(sq1[i[idx]]) * torch.sqrt(sq2[j[idx]]))  # each pair's own angle
                theta = torch.acos(cos.clamp(-1.0, 1.0))
                out[:, idx], piece = _eval_pieces(breaks, coef, theta)
                direct[idx] = ~resolved[piece]
    rest = direct.nonzero().squeeze(1)
    if rest.numel():
        # x2 = None: both sides index one set of inputs, so that the grid sees one axis
        shared = sq2 is sq1
        v = spec.sw2 * (sq1 if shared else torch.cat([sq1, sq2])) / spec.n0 + spec.sb2
        out[:, rest] = _pair_kernels(spec, v, i[rest], j[rest] + (0 if shared else sq1.numel()),
                                     spec.sw2 * g[rest] / spec.n0 + spec.sb2, g[rest])
    return out


# ---------------------------------------------------------------------------
# kernels


def _kernel(kind, x1, x2, depth, activation, sigma_w, sigma_b, parametrization, widths,
            negative_slope, softplus_beta, softplus_threshold, method, quad_order) -> torch.Tensor:
    """Validate, then compute the kernel ``kind`` (nngp, ntk, layerwise):
    (channels, N1, N2)."""
    depth = _check_int("depth", depth, 1)
    sigma_w = _check_real("sigma_w", sigma_w, nonnegative=True)
    sigma_b = _check_real("sigma_b", sigma_b, nonnegative=True)
    _check_choice("parametrization", parametrization, PARAMETRIZATIONS)
    widths = _check_widths(widths, depth, parametrization, kind != "nngp")
    act, closed = _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method)
    order = _check_quad_order(quad_order)
    a = _as_input(x1, "x1")
    symmetric = x2 is None
    b = a if symmetric else _as_input(x2, "x2")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"x1 and x2 must have the same number of features n_0; got {a.shape[1]} and {b.shape[1]}")
    spec = _Spec(act=act, closed=closed, order=order, depth=depth, sw2=_square("sigma_w", sigma_w),
                 sb2=_square("sigma_b", sigma_b), standard=parametrization == "standard", widths=widths,
                 n0=a.shape[1], kind=kind, sigma_w=sigma_w, sigma_b=sigma_b)
    gram = a @ b.T
    sq1 = (a * a).sum(1)
    sq2 = sq1 if symmetric else (b * b).sum(1)
    n1, n2 = gram.shape
    out = torch.empty((spec.channels(), n1, n2), dtype=_DTYPE)
    if symmetric:
        # a @ a.T from BLAS need not be exactly symmetric, nor its diagonal |x|^2
        gram = (gram + gram.T) / 2
        gram.diagonal().copy_(sq1)
        i, j = torch.triu_indices(n1, n1, offset=1)
        upper = _kernel_entries(spec, sq1, sq1, gram, i, j)
        out[:, i, j] = upper
        out[:, j, i] = upper
        s = spec.sw2 * sq1 / spec.n0 + spec.sb2
        d = torch.arange(n1)
        out[:, d, d] = _pair_kernels(spec, s, d, d, s, sq1)  # the 1-D rule: correlation 1
    else:
        i = torch.arange(n1).repeat_interleave(n2)
        j = torch.arange(n2).repeat(n1)
        out.view(spec.channels(), -1)[:] = _kernel_entries(spec, sq1, sq2, gram, i, j)
    return out


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
        Gauss-Legendre nodes per panel of the quadrature rule (>= 4); the
        panels themselves are chosen from the variances.
"""
@_public
def nngp(x1, x2=None, *, depth, activation="relu", sigma_w=1.0, sigma_b=0.0,
         parametrization="ntk", widths=None, negative_slope=0.01, softplus_beta=1.0,
         softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER) -> torch.Tensor:
    """Infinite-width NNGP kernel Sigma^L: the covariance of one network
    output over random initializations.

    It is the same in both parametrizations (``parametrization`` and
    ``widths`` are validated but optional, so that the keyword arguments of
    :func:`ntk` can be passed unchanged). Outputs are iid, so the covariance
    of the K outputs is Sigma^L ⊗ I_K.

    Parameters
    ----------<_KERNEL_PARAMS_DOC>
    Returns
    -------
    (N1, N2) torch.Tensor, float64, CPU.
    """
    return _kernel("nngp", x1, x2, depth, activation, sigma_w, sigma_b, parametrization, widths,
                   negative_slope, softplus_beta, softplus_threshold, method, quad_order)[0]


@_public
def ntk(x1, x2=None, *, depth, activation="relu", sigma_w=1.0, sigma_b=0.0,
        parametrization="ntk", widths=None, layerwise=False, negative_slope=0.01,
        softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER) -> torch.Tensor:
    """Infinite-width neural tangent kernel Theta of one network output.

    NTK parametrization: the deterministic width -> infinity limit.
    Standard parametrization: the expected kernel at the given hidden
    widths, to leading order in 1/width (it grows linearly with the widths);
    exact for ReLU with sigma_b = 0 on the diagonal x = x'. Outputs are iid,
    so the full kernel is Theta ⊗ I_K (the engine's trace over K outputs is
    K * Theta).

    Parameters
    ----------<_KERNEL_PARAMS_DOC>    layerwise : bool
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
    out = _kernel("layerwise" if layerwise else "ntk", x1, x2, depth, activation, sigma_w, sigma_b,
                  parametrization, widths, negative_slope, softplus_beta, softplus_threshold, method, quad_order)
    if layerwise:
        return out.reshape(depth, 2, *out.shape[1:])
    return out[0]


# ---------------------------------------------------------------------------
# order parameters


def _order_setup(activation, sigma_w, sigma_b, negative_slope, softplus_beta, softplus_threshold,
                 method, quad_order):
    sigma_w = _check_real("sigma_w", sigma_w, nonnegative=True)
    sigma_b = _check_real("sigma_b", sigma_b, nonnegative=True)
    act, closed = _make_act(activation, negative_slope, softplus_beta, softplus_threshold, method)
    return act, closed, _check_quad_order(quad_order), _square("sigma_w", sigma_w), _square("sigma_b", sigma_b)


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


def _same(act, closed, order, q: np.ndarray):
    """(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2]) as numpy arrays."""
    e, de = _expect_same(act, torch.from_numpy(np.array(q, dtype=np.float64, order="C")), closed, order)
    return e.numpy(), de.numpy()


def _bracketed_root(f, lo: np.ndarray, hi: np.ndarray, f_lo: np.ndarray, f_hi: np.ndarray,
                    rtol: float, max_iter: int = 400) -> np.ndarray:
    """Roots of f (vectorized over rows; f(x, rows) gives f at x for those
    rows) in brackets with f_lo * f_hi < 0: the Illinois variant of regula
    falsi, safeguarded by a bisection after two steps that did not halve the
    bracket (so a discontinuous f still converges). Stops at |hi - lo| <= rtol * |hi|."""
    a, b, fa, fb = lo.copy(), hi.copy(), f_lo.copy(), f_hi.copy()
    slow = np.zeros(a.size, dtype=np.int64)
    active = (fb != 0) & (np.abs(b - a) > rtol * np.maximum(np.abs(a), np.abs(b)))
    for _ in range(max_iter):
        rows = np.nonzero(active)[0]
        if rows.size == 0:
            break
        ar, br, far, fbr = a[rows], b[rows], fa[rows], fb[rows]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            x = br - fbr * (br - ar) / (fbr - far)
        inside = (x > np.minimum(ar, br)) & (x < np.maximum(ar, br))
        x = np.where(inside & (slow[rows] < 2), x, 0.5 * (ar + br))
        fx = f(x, rows)
        flip = np.sign(fx) != np.sign(fbr)  # root between b and x: a <- b
        a[rows] = np.where(flip, br, ar)
        fa[rows] = np.where(flip, fbr, far / 2)  # Illinois: halve the stale end's value
        b[rows], fb[rows] = x, fx
        width = np.abs(b[rows] - a[rows])
        slow[rows] = np.where(width > 0.5 * np.abs(br - ar), slow[rows] + 1, 0)
        done = (fx == 0) | (width <= rtol * np.maximum(np.abs(b[rows]), np.abs(a[rows])))
        active[rows[done]] = False
    return b


def _fixed_points(act, closed, order, sw2: np.ndarray, sb2: np.ndarray, q0: float) -> np.ndarray:
    """q* reached from q0 for each row of (sw2, sb2); see :func:`fixed_point_q`."""
    sw2, sb2 = np.broadcast_arrays(np.asarray(sw2, dtype=np.float64), np.asarray(sb2, dtype=np.float64))
    sw2, sb2 = sw2.reshape(-1), sb2.reshape(-1)

    def g(q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        e, _ = _same(act, closed, order, q)
        with np.errstate(over="ignore", invalid="ignore"):
            return sw2[rows] * e + sb2[rows] - q

    all_rows = np.arange(sw2.size)
    g0 = g(np.full(sw2.size, q0), all_rows)
    out = np.full(sw2.size, q0)
    # The length map is increasing in q, so its iterates from q0 move
    # monotonically to the nearest fixed point in the direction of g(q0):
    # bracket it on a geometric grid (factor 2), then solve in the bracket.
    lo, hi, f_lo, f_hi = (np.empty(sw2.size) for _ in range(4))
    solve = np.zeros(sw2.size, dtype=bool)
    for direction in (-1, 1):
        rows = np.nonzero(direction * g0 > 1e-13 * q0)[0]
        if rows.size == 0:
            continue
        if direction < 0:
            grid = np.append(q0 * 2.0 ** -np.arange(1, 1076), 0.0)
        else:
            with np.errstate(over="ignore"):
                grid = q0 * 2.0 ** np.arange(1, 1025)
            grid = grid[np.isfinite(grid)]
        found = np.full(rows.size, -1)
        prev_val = g0[rows]
        for start in range(0, grid.size, 64):
            todo = np.nonzero(found < 0)[0]
            if todo.size == 0:
                break
            block = grid[start:start + 64]
            vals = g(np.tile(block, todo.size), np.repeat(rows[todo], block.size)).reshape(todo.size, -1)
            hit = direction * vals <= 0
            for t, r in enumerate(todo):
                k = np.nonzero(hit[t])[0]
                if k.size:
                    k = k[0]
                    found[r] = start + k
                    prev_q = grid[start + k - 1] if start + k > 0 else q0
                    prev_g = vals[t, k - 1] if k > 0 else prev_val[r]
                    row = rows[r]
                    if vals[t, k] == 0:
                        out[row] = grid[start + k]
                    else:
                        lo[row], f_lo[row], hi[row], f_hi[row] = prev_q, prev_g, grid[start + k], vals[t, k]
                        solve[row] = True
            prev_val[todo] = vals[:, -1]
        missing = rows[found < 0]
        out[missing] = 0.0 if direction < 0 else math.inf  # the grid ends at 0 (g(0) >= 0) or at 1e308
    rows = np.nonzero(solve)[0]
    if rows.size:
        out[rows] = _bracketed_root(lambda q, sub: g(q, rows[sub]), lo[rows], hi[rows], f_lo[rows], f_hi[rows],
                                    rtol=4 * np.finfo(np.float64).eps)
    return out


def _chi1_values(act, closed, order, sw2: np.ndarray, sb2: np.ndarray, q0: float) -> np.ndarray:
    """chi_1 at the fixed point reached from q0, vectorized over rows."""
    if act.homogeneous:
        q = np.ones(np.size(sw2))
    else:
        q = _fixed_points(act, closed, order, sw2, sb2, q0)
        q = np.where(np.isinf(q), _Q_INFINITE, q)
    _, de = _same(act, closed, order, q)
    return np.asarray(sw2, dtype=np.float64).reshape(-1) * de


_ORDER_PARAMS_DOC = """
    activation : str
        One of :data:`ACTIVATIONS`.
    sigma_w, sigma_b : float
        Weight and bias standard deviations (>= 0).
    negative_slope, softplus_beta, softplus_threshold, method, quad_order
        As in :func:`ntk`.
"""


@_public
def length_map(q, activation="relu", sigma_w=1.0, sigma_b=0.0, *, negative_slope=0.01,
               softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER):
    """The length map q^{l+1} = sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2,
    z ~ N(0, 1): how the per-unit pre-activation variance of one input
    propagates through a layer (the diagonal of the NNGP recursion).

    Parameters
    ----------
    q : float or array-like, >= 0<_ORDER_PARAMS_DOC>
    Returns
    -------
    float, or float64 numpy array of q's shape.
    """
    arr = _as_array("q", q, nonnegative=True)
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    e, _ = _same(act, closed, order, arr)
    return _out(sw2 * e + sb2)


@_public
def fixed_point_q(activation="relu", sigma_w=1.0, sigma_b=0.0, *, q0=1.0, negative_slope=0.01,
                  softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER) -> float:
    """The fixed point q* of :func:`length_map` reached by iterating it from q0.

    Found by bracketing on a geometric grid and a safeguarded regula falsi
    (the length map is increasing in q, so the iterates approach the nearest
    fixed point in the direction they start moving). Degenerate cases:
    ``0.0`` when the variance collapses (e.g. relu or tanh with sigma_b = 0
    in the ordered phase), ``math.inf`` when it diverges (e.g. relu with
    sigma_w^2 > 2), and ``q0`` itself when every q is a fixed point (relu,
    sigma_w^2 = 2, sigma_b = 0: the length map is linear).

    Parameters
    ----------<_ORDER_PARAMS_DOC>    q0 : float
        Starting variance (> 0), e.g. sigma_w^2 |x|^2 / n_0 + sigma_b^2.

    Returns
    -------
    float
    """
    q0 = _check_real("q0", q0, positive=True)
    act, closed, order, sw2, sb2 = _order_setup(activation, sigma_w, sigma_b, negative_slope,
                                                 softplus_beta, softplus_threshold, method, quad_order)
    return float(_fixed_points(act, closed, order, sw2, sb2, q0)[0])


@_public
def chi1(activation="relu", sigma_w=1.0, sigma_b=0.0, *, q=None, q0=1.0, negative_slope=0.01,
         softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER) -> float:
    """chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2], the slope of the correlation
    map at c = 1: the factor by which a layer stretches small input
    perturbations (and, on the diagonal, dSigma at the fixed point).

    For relu, leaky_relu and identity E[phi'(sqrt(q) z)^2] does not depend on
    q > 0, so chi_1 = sigma_w^2 / 2 (relu), sigma_w^2 (1 + a^2) / 2,
    sigma_w^2, whatever q* is (also when q* is 0 or infinite). For other
    activations a q* of 0 gives sigma_w^2 phi'(0)^2 and an infinite q* (a
    divergent length map) the q -> infinity limit, evaluated at q = 1e12.

    Parameters
    ----------<_ORDER_PARAMS_DOC>    q : float, optional
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
    if q is None:
        return float(_chi1_values(act, closed, order, np.array([sw2]), np.array([sb2]), q0)[0])
    qq = _check_real("q", q, nonnegative=True)
    _, de = _same(act, closed, order, np.array([1.0 if act.homogeneous else qq]))
    return float(sw2 * de[0])


@_public
def correlation_map(c, activation="relu", sigma_w=1.0, sigma_b=0.0, *, q=None, q0=1.0,
                    negative_slope=0.01, softplus_beta=1.0, softplus_threshold=20.0,
                    method="auto", quad_order=_DEFAULT_ORDER):
    """The correlation map c^{l+1} = (sigma_w^2 E[phi(u) phi(v)] + sigma_b^2) / q*,
    (u, v) ~ N(0, q* [[1, c], [c, 1]]): how the correlation of two inputs
    whose variances sit at the fixed point q* propagates through a layer.
    c = 1 is a fixed point; the slope there is chi_1 q* / q_next, which is
    :func:`chi1` when q* is a proper fixed point (for relu with sigma_b = 0
    and sigma_w^2 != 2 the variance shrinks or grows every layer and the
    slope is 1).

    Parameters
    ----------
    c : float or array-like in [-1, 1]<_ORDER_PARAMS_DOC>    q : float, optional
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
        qn = sw2 * float(_same(act, closed, order, np.array([qq]))[0][0]) + sb2
    elif act.homogeneous and sb2 == 0:
        qq = 1.0
        qn = sw2 * float(_same(act, closed, order, np.array([qq]))[0][0])
    else:
        qq = float(_fixed_points(act, closed, order, sw2, sb2, q0)[0])
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
    e, _ = _expect_pairs(act, s, s, t, closed, order)
    return _out(((sw2 * e + sb2) / qn).numpy().reshape(arr.shape))


@_public
def phase(activation="relu", sigma_w=1.0, sigma_b=0.0, *, tol=1e-8, q0=1.0, negative_slope=0.01,
          softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER) -> str:
    """The phase of an initialization: ``"ordered"`` if chi_1 < 1 - tol,
    ``"chaotic"`` if chi_1 > 1 + tol, else ``"edge_of_chaos"``.

    Parameters
    ----------<_ORDER_PARAMS_DOC>    tol : float
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


@_public
def eoc_curve(activation, sigma_b2, *, sigma_w2_max=100.0, tol=1e-12, q0=1.0, negative_slope=0.01,
              softplus_beta=1.0, softplus_threshold=20.0, method="auto", quad_order=_DEFAULT_ORDER):
    """The edge of chaos: for each sigma_b^2, the sigma_w^2 at which chi_1 = 1.

    Solved for all sigma_b^2 at once by a safeguarded regula falsi on
    sigma_w^2 in [0, sigma_w2_max] (chi_1 = 0 at sigma_w = 0 and grows with
    sigma_w^2). Examples: tanh at sigma_b^2 = 0 gives 1, erf pi / 4
    (erf'(0)^2 = 4 / pi), relu 2 and leaky_relu 2 / (1 + a^2) for every
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
    sb2 = arr.reshape(-1)

    def f(sw2: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return _chi1_values(act, closed, order, sw2, sb2[rows], q0) - 1

    out = np.full(sb2.size, math.nan)
    if sb2.size:
        f_hi = f(np.full(sb2.size, sigma_w2_max), np.arange(sb2.size))
        rows = np.nonzero(f_hi >= 0)[0]  # elsewhere chi_1 < 1 up to sigma_w2_max: NaN
        if rows.size:
            lo, hi = np.zeros(rows.size), np.full(rows.size, sigma_w2_max)
            out[rows] = _bracketed_root(lambda x, sub: f(x, rows[sub]), lo, hi, np.full(rows.size, -1.0),
                                        f_hi[rows], rtol=tol)
    return _out(out.reshape(arr.shape))
