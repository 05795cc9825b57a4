"""Empirical NTK statistics over many independent initializations, batched.

Thousands of small networks (say width 100, depth 50) are too small for one
network's GEMMs to keep a machine busy, and a Python loop over them spends
its time in overhead. :func:`ensemble_ntk` stacks a chunk of S networks along
a leading *init axis* and runs the layerwise NTK identity of
:func:`fastntk.ntk` on all of them at once with batched GEMMs
(``torch.baddbmm`` / ``torch.bmm``)::

    h^l   = c_l a^{l-1} W^{l T} + beta_l b^l                   (S, N, n_l)
    delta^{l-1} = c_l phi'(h^{l-1}) * (delta^l W^l)            (S, N, K, n_{l-1})
    Theta += (c_l^2 <a^{l-1}, a'^{l-1}> + beta_l^2) <delta^l, delta'^l>

and streams the statistics over chunks (Chan/Pébay merging of the mean and
the central moments up to the 4th, in float64), so nothing of size S is kept
unless asked for.

Reproducibility: init ``s`` is exactly ``fastntk.MLP(widths, activation,
parametrization, sigma_w, sigma_b, bias, seed=seeds[s])``: its weights are
drawn with a ``torch.Generator`` seeded with ``seeds[s]``, in float64, weight
then bias for each layer, scaled as the MLP scales them, then cast to
``dtype``. The statistics therefore equal a plain loop of :func:`fastntk.ntk`
over those MLPs (to float64 rounding; a test checks 1e-10), and any single
init can be rebuilt from its seed for a closer look. Drawing the weights is
done on the CPU (as the MLP does), one seed per thread, the next chunk while
the current one's kernels run; for small networks it is most of the cost,
and a loop over MLPs pays it too. A sweep over depth (``depths=``) draws
the weights and runs the forward pass once, for the deepest network.

``sampler="projected"`` gives up the bit-identical inits for speed: each
layer draws only the Gaussian numbers the kernel depends on (its weights
projected on the span of the layer's inputs, and of its backward signals;
:mod:`fastntk._projected` has the derivation), from
``numpy.random.default_rng(seeds[s])``. Every init's kernel has exactly the
distribution of the kernel of a network with iid Gaussian weights, so all
the statistics estimate the same quantities, from about 25x fewer normals at
two inputs and width 100; the inits are not ``MLP(seed=s)``.

Example::

    x = torch.eye(100, dtype=torch.float64)[:2]        # two orthogonal unit inputs
    st = fastntk.ensemble.ensemble_ntk([100] * 50 + [1], x, seeds=500,
                                       parametrization="standard", sigma_w=2**0.5)
    st.mean, st.dispersion, st.quantiles               # each (2, 2)
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from . import _batched, _projected
from ._progress import progress_bar
from ._reference import ACTIVATIONS
from .models import PARAMETRIZATIONS, Activation, _check_widths
from .ntk import _check_outputs

__all__ = ["EnsembleStats", "ensemble_ntk", "ensemble_stats", "init_weights", "resolve_seeds",
           "DEFAULT_QUANTILES"]

#: Quantile levels reported by default.
DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Per-init totals are kept (for quantiles and bootstrap) when S x entries is at most this.
MAX_KEPT_SAMPLES = 1 << 22
#: The ways of drawing the inits (``sampler`` of :func:`ensemble_ntk`).
SAMPLERS = ("seeded", "projected")
#: Default memory budget of one chunk of inits, in bytes.
CHUNK_BYTES = 256 << 20


@dataclass
class EnsembleStats:
    """Statistics of the empirical NTK T over ``n_inits`` initializations.

    Every statistic has the shape of one kernel (``kernel_shape``: (N1, N2),
    (N1, N2, K) or (N1, N2, K, K) for ``outputs`` trace / per_output / full),
    per entry, in float64 on the CPU.

    Attributes
    ----------
    n_inits : number of initializations S; ``seeds`` : their seeds.
    mean : E[T]; ``var`` : unbiased variance; ``sem`` : sqrt(var / S), the
        standard error of ``mean``.
    dispersion : D = E[T^2] / E[T]^2 = 1 + var_pop / mean^2 (plug-in, with the
        population variance). With heavy tails (deep nets, chaotic phase) the
        sample estimate is biased low for small S: raise ``n_inits``.
    dispersion_se : delta-method standard error of ``dispersion`` (from the
        moments up to the 4th; unreliable under heavy tails, where
        :meth:`dispersion_ci`'s bootstrap is the better error bar).
    skewness, kurtosis : standardized 3rd and 4th central moments.
    quantiles : (Q, *kernel_shape) at ``quantile_levels``, or None when the
        per-init kernels were not kept (S x entries > ``MAX_KEPT_SAMPLES``
        and ``keep=False``).
    samples : (S, *kernel_shape) per-init totals T, kept under the same rule
        (the normal case: a few inputs).
    layer_mean : (L, 2, *kernel_shape) mean of each layer's weight ([l, 0]) and
        bias ([l, 1]) term, with ``layerwise=True``; else None.
    shares : (L, 2, *kernel_shape) E[term / T], the mean share of each term
        (NaN where T = 0), with ``layerwise=True``; else None.
    kernels : with ``keep=True``, (S, *kernel_shape), or (S, L, 2,
        *kernel_shape) with ``layerwise=True``; else None.
    settings : the network and run settings.
    """

    n_inits: int
    seeds: list
    mean: torch.Tensor
    var: torch.Tensor
    sem: torch.Tensor
    dispersion: torch.Tensor
    dispersion_se: torch.Tensor
    skewness: torch.Tensor
    kurtosis: torch.Tensor
    quantile_levels: tuple = DEFAULT_QUANTILES
    quantiles: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    layer_mean: torch.Tensor | None = None
    shares: torch.Tensor | None = None
    kernels: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)

    @property
    def kernel_shape(self) -> tuple:
        return tuple(self.mean.shape)

    def dispersion_ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0):
        """Bootstrap percentile interval of ``dispersion`` over inits.

        Needs ``samples``. Returns (lo, hi), each of ``kernel_shape``.
        """
        if self.samples is None:
            raise ValueError("dispersion_ci needs the per-init samples; rerun with keep=True "
                             "(or fewer inputs/inits, see MAX_KEPT_SAMPLES)")
        return bootstrap_dispersion(self.samples, level=level, n_boot=n_boot, seed=seed)

    def summary(self) -> str:
        """A short human-readable description."""
        s = self.settings
        net = f"MLP {s.get('widths')}" if s else "kernel"
        m = self.mean.flatten()[:4].tolist()
        d = self.dispersion.flatten()[:4].tolist()
        return (f"{net}, {self.n_inits} inits: mean {['%.4g' % v for v in m]}, "
                f"dispersion {['%.4g' % v for v in d]}")


# ---------------------------------------------------------------------------
# streaming moments


class _Moments:
    """Mean and central moment sums M2..M4 per entry, merged chunk by chunk
    (Pébay 2008), float64."""

    def __init__(self):
        self.n = 0
        self.mean = self.m2 = self.m3 = self.m4 = None

    def add(self, x: torch.Tensor) -> None:
        """Add a chunk (C, ...) of samples."""
        x = x.to(torch.float64)
        nb = x.shape[0]
        mb = x.mean(0)
        d = x - mb
        d2 = d * d
        m2b, m3b, m4b = d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = nb, mb, m2b, m3b, m4b
            return
        na, n = self.n, self.n + nb
        delta = mb - self.mean
        m2a, m3a, m4a = self.m2, self.m3, self.m4
        self.mean = self.mean + delta * (nb / n)
        self.m4 = (m4a + m4b + delta**4 * (na * nb * (na * na - na * nb + nb * nb) / n**3)
                   + 6 * delta**2 * (na * na * m2b + nb * nb * m2a) / n**2
                   + 4 * delta * (na * m3b - nb * m3a) / n)
        self.m3 = (m3a + m3b + delta**3 * (na * nb * (na - nb) / n**2)
                   + 3 * delta * (na * m2b - nb * m2a) / n)
        self.m2 = m2a + m2b + delta**2 * (na * nb / n)
        self.n = n


def _finish(mom: _Moments) -> dict:
    n = mom.n
    mu = mom.mean
    c2, c3, c4 = mom.m2 / n, mom.m3 / n, mom.m4 / n
    var = mom.m2 / (n - 1) if n > 1 else torch.full_like(mu, math.nan)
    with np.errstate(all="ignore"):
        disp = 1 + c2 / mu**2
        # influence function of D = E[T^2]/E[T]^2: ((e^2 - c2) / mu^2 - 2 c2 e / mu^3)
        if_var = (c4 - c2**2) / mu**4 - 4 * c2 * c3 / mu**5 + 4 * c2**3 / mu**6
        disp_se = torch.sqrt(torch.clamp(if_var, min=0) / n)
        skew = c3 / c2**1.5
        kurt = c4 / c2**2
    return {"mean": mu, "var": var, "sem": torch.sqrt(var / n), "dispersion": disp,
            "dispersion_se": disp_se, "skewness": skew, "kurtosis": kurt}


def bootstrap_dispersion(samples: torch.Tensor, level: float = 0.95, n_boot: int = 1000, seed: int = 0):
    """Percentile bootstrap interval of D = E[T^2]/E[T]^2 from per-init samples (S, ...).

    The same resampling of inits is used for every entry. Returns (lo, hi).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int; got {n_boot!r}")
    x = torch.as_tensor(samples, dtype=torch.float64).cpu()
    s = x.shape[0]
    flat = x.reshape(s, -1)
    g = torch.Generator().manual_seed(int(seed))
    stats = torch.empty(n_boot, flat.shape[1], dtype=torch.float64)
    per = max(1, (1 << 22) // max(1, s * flat.shape[1]))
    for i in range(0, n_boot, per):
        b = min(per, n_boot - i)
        idx = torch.randint(s, (b, s), generator=g)
        xb = flat[idx]  # (b, S, E)
        m1, m2 = xb.mean(1), (xb * xb).mean(1)
        stats[i:i + b] = m2 / (m1 * m1)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.nanquantile(stats, q, dim=0)
    return lo.reshape(x.shape[1:]), hi.reshape(x.shape[1:])


def ensemble_stats(kernels: torch.Tensor, *, layerwise: bool = False, quantiles=DEFAULT_QUANTILES,
                   seeds=None, keep: bool = False, settings: dict | None = None) -> EnsembleStats:
    """:class:`EnsembleStats` from per-init kernels already computed.

    Parameters
    ----------
    kernels : (S, ...) per-init kernels, or (S, L, 2, ...) layerwise terms
        with ``layerwise=True``.
    quantiles, seeds, keep, settings : as in :func:`ensemble_ntk`.
    """
    kernels = torch.as_tensor(kernels).detach().to("cpu", torch.float64)
    if kernels.dim() < 1 or kernels.shape[0] < 1:
        raise ValueError(f"kernels must have a leading init axis with at least one init; got shape "
                         f"{tuple(kernels.shape)}")
    if layerwise and kernels.dim() < 3:
        raise ValueError(f"layerwise kernels must be (S, L, 2, ...); got shape {tuple(kernels.shape)}")
    acc = _Accumulator(layerwise, _check_quantiles(quantiles), keep, kernels.shape[0])
    acc.add(kernels)
    s = kernels.shape[0]
    return acc.result(list(range(s)) if seeds is None else list(seeds), settings or {})


class _Accumulator:
    def __init__(self, layerwise: bool, quantiles: tuple, keep: bool, n_total: int):
        self.layerwise, self.levels, self.keep, self.n_total = layerwise, quantiles, keep, n_total
        self.mom = _Moments()
        self.layer_sum = self.share_sum = None
        self.samples, self.kernels = [], []
        self.keep_samples = None

    def add(self, chunk: torch.Tensor) -> None:
        chunk = chunk.to("cpu", torch.float64)
        total = chunk.sum((1, 2)) if self.layerwise else chunk
        if self.keep_samples is None:
            self.keep_samples = self.keep or self.n_total * total[0].numel() <= MAX_KEPT_SAMPLES
        self.mom.add(total)
        if self.layerwise:
            ls = chunk.sum(0)
            with np.errstate(all="ignore"):
                ratio = torch.where(total[:, None, None] != 0, chunk / total[:, None, None],
                                    torch.full_like(chunk, math.nan)).sum(0)
            self.layer_sum = ls if self.layer_sum is None else self.layer_sum + ls
            self.share_sum = ratio if self.share_sum is None else self.share_sum + ratio
        if self.keep_samples:
            self.samples.append(total)
        if self.keep:
            self.kernels.append(chunk)

    def result(self, seeds: list, settings: dict) -> EnsembleStats:
        n = self.mom.n
        stats = _finish(self.mom)
        samples = torch.cat(self.samples) if self.keep_samples else None
        quant = None
        if samples is not None and self.levels:
            quant = torch.quantile(samples, torch.tensor(self.levels, dtype=torch.float64), dim=0)
        return EnsembleStats(
            n_inits=n, seeds=seeds, quantile_levels=self.levels, quantiles=quant, samples=samples,
            layer_mean=None if self.layer_sum is None else self.layer_sum / n,
            shares=None if self.share_sum is None else self.share_sum / n,
            kernels=torch.cat(self.kernels) if self.keep else None,
            settings=settings, **stats)


# ---------------------------------------------------------------------------
# validation


def resolve_seeds(seeds) -> list[int]:
    """None -> 0..99; an int n -> 0..n-1; a sequence of ints -> itself."""
    if seeds is None:
        return list(range(100))
    if isinstance(seeds, bool):
        raise TypeError(f"seeds must be None, a positive int (the number of inits) or a sequence of ints; "
                        f"got {seeds!r}")
    if isinstance(seeds, (int, np.integer)):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive number of inits; got {seeds!r}")
        return list(range(int(seeds)))
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    try:
        seeds = list(seeds)
    except TypeError:
        raise TypeError(f"seeds must be None, a positive int (the number of inits) or a sequence of ints; "
                        f"got {type(seeds).__name__}") from None
    if not seeds:
        raise ValueError("seeds is an empty sequence; give at least one seed")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0:
            raise ValueError(f"seeds[{i}] must be a non-negative int; got {s!r}")
    return [int(s) for s in seeds]


def _check_quantiles(quantiles) -> tuple:
    if quantiles is None:
        return ()
    try:
        q = tuple(float(v) for v in quantiles)
    except (TypeError, ValueError):
        raise ValueError(f"quantiles must be a sequence of levels in [0, 1]; got {quantiles!r}") from None
    if any(not 0 <= v <= 1 for v in q):
        raise ValueError(f"quantiles must be levels in [0, 1]; got {quantiles!r}")
    return q


def _check_sigma(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _check_x(name: str, x, n0: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {n0}); got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if x.dim() != 2 or x.shape[1] != n0 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, n_0) = (N, {n0}) with N >= 1 (widths[0] = {n0}); "
                         f"got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return x.detach()


# ---------------------------------------------------------------------------
# weights


def _fill_one(seed: int, i: int, ws, bs, heads: dict, w_stds, b_std) -> None:
    """Init i's hidden layers into ws/bs[l][i]; for each depth d in heads, the
    output layer that MLP(widths[:d + 1] + [K], seed) draws after d hidden
    layers, from a copy of the generator at that point."""
    g = torch.Generator().manual_seed(int(seed))

    def draw(gen, w, b, l):
        torch.randn(w.shape[1:], generator=gen, dtype=torch.float64, out=w[i])
        w[i].mul_(w_stds[l])
        if b is not None:
            torch.randn(b.shape[1:], generator=gen, dtype=torch.float64, out=b[i])
            b[i].mul_(b_std)

    for l in range(len(ws) + 1):
        if l in heads:
            head = g if l == len(ws) else torch.Generator().set_state(g.get_state())
            draw(head, heads[l][0], heads[l][1], l)
        if l < len(ws):
            draw(g, ws[l], None if bs is None else bs[l], l)


def _init_stds(widths: Sequence[int], parametrization: str, sigma_w: float, sigma_b: float):
    """The std of each layer's weights (n_l inputs, widths[:-1]) and of the biases at init."""
    if parametrization == "ntk":
        return [1.0] * (len(widths) - 1), 1.0
    return [sigma_w / math.sqrt(i) for i in widths[:-1]], sigma_b


def _draw(widths: Sequence[int], depths: Sequence[int], seeds: Sequence[int], *, parametrization: str,
          sigma_w: float, sigma_b: float, bias: bool, threads: int):
    """The hidden layers of ``MLP(widths)`` (widths[:-1]) and, for each depth d
    in ``depths``, the output layer of ``MLP(widths[:d + 1] + [widths[-1]])``,
    for each seed: (ws, bs, heads) with heads {d: (weight, bias or None)}."""
    s, k = len(seeds), widths[-1]
    hidden = widths[:-1]
    ws = [torch.empty(s, o, i, dtype=torch.float64) for i, o in zip(hidden[:-1], hidden[1:])]
    bs = [torch.empty(s, o, dtype=torch.float64) for o in hidden[1:]] if bias else None
    heads = {d: (torch.empty(s, k, hidden[d], dtype=torch.float64),
                 torch.empty(s, k, dtype=torch.float64) if bias else None) for d in depths}
    w_stds, b_std = _init_stds(widths, parametrization, sigma_w, sigma_b)
    if threads <= 1 or s == 1:
        for i, seed in enumerate(seeds):
            _fill_one(seed, i, ws, bs, heads, w_stds, b_std)
    else:
        with ThreadPoolExecutor(min(threads, s)) as pool:
            list(pool.map(lambda a: _fill_one(a[1], a[0], ws, bs, heads, w_stds, b_std), enumerate(seeds)))
    return ws, bs, heads


def init_weights(widths: Sequence[int], seeds: Sequence[int], *, parametrization: str = "ntk",
                 sigma_w: float = 1.0, sigma_b: float = 0.0, bias: bool = True, threads: int | None = None):
    """The weights of ``MLP(widths, ..., seed=s)`` for each seed, stacked.

    Returns (weights, biases): lists over layers of float64 CPU tensors
    (S, n_l, n_{l-1}) and (S, n_l) (biases None when ``bias=False``), bit
    for bit the MLPs' parameters before their cast to ``dtype``. Seeds are
    drawn on ``threads`` threads (default: 1).
    """
    widths = _check_widths(widths)
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; got {parametrization!r}")
    if isinstance(seeds, (int, np.integer)) or not hasattr(seeds, "__len__"):
        raise TypeError(f"seeds must be a sequence of ints; got {type(seeds).__name__} {seeds!r}")
    depth = len(widths) - 2
    ws, bs, heads = _draw(widths, [depth], seeds, parametrization=parametrization, sigma_w=sigma_w,
                          sigma_b=sigma_b, bias=bias, threads=threads or 1)
    return ws + [heads[depth][0]], None if bs is None else bs + [heads[depth][1]]


# ---------------------------------------------------------------------------
# the batched engine


def _weight_products(ws):
    """The engine's ``preact`` and ``times_weight`` of explicit weights ws[l]
    (C, n_{l+1}, n_l)."""

    def preact(l: int, a: torch.Tensor) -> torch.Tensor:
        w = ws[l]
        if l == 0:  # one GEMM for all inits: (C n_1, n_0) @ (n_0, N)
            return (w.reshape(-1, w.shape[2]) @ a.T).reshape(w.shape[0], w.shape[1], -1).transpose(1, 2)
        return torch.bmm(a, w.transpose(1, 2))

    return preact, lambda l, d: torch.bmm(d, ws[l])


def _chunk_kernels(ws, bs, scales, bias_scales, phi: Activation, x: torch.Tensor, n1: int | None,
                   k: int, outputs: str, layerwise: bool = True) -> torch.Tensor:
    """The NTK of C stacked networks: (C, L, 2, *kernel_shape) layerwise terms
    (weight, bias), or (C, *kernel_shape) totals with ``layerwise=False``.

    ws[l] (C, n_{l+1}, n_l), bs[l] (C, n_{l+1}) or None; x is (N, n_0); n1 is
    None for Theta(x, x), else the split point of x = [x1; x2]."""
    preact, times_weight = _weight_products(ws)
    grams, dphis = _batched.forward(preact, ws[0].shape[0], len(ws), bs, scales, bias_scales, phi, x, n1)
    return _batched.backward(ws[-1], times_weight, grams, dphis, scales, bias_scales, x, n1, outputs, layerwise)


def ensemble_ntk(
    widths: Sequence[int],
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    seeds=None,
    activation: str = "relu",
    parametrization: str = "ntk",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    bias: bool = True,
    outputs: str = "trace",
    layerwise: bool = False,
    quantiles=DEFAULT_QUANTILES,
    chunk: int | None = None,
    keep: bool = False,
    progress: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
    threads: int | None = None,
    depths: Sequence[int] | None = None,
    sampler: str = "seeded",
) -> EnsembleStats | dict[int, EnsembleStats]:
    """Statistics of the empirical NTK Theta(x1, x2) over independent inits.

    Parameters
    ----------
    widths : [n_0, n_1, ..., n_L] as for :class:`fastntk.MLP`.
    x1 : (N1, n_0) inputs; x2 : (N2, n_0) or None for x2 = x1. Converted to
        ``dtype`` and ``device``.
    seeds : None (100 inits, seeds 0..99), an int n (seeds 0..n-1), or a
        sequence of seeds. Init s is ``MLP(widths, ..., seed=seeds[s])`` (with
        the default ``sampler``).
    activation, parametrization, sigma_w, sigma_b, bias : as for
        :class:`fastntk.MLP`.
    outputs : ``"trace"`` (default; (N1, N2), the sum over outputs),
        ``"per_output"`` (N1, N2, K) or ``"full"`` (N1, N2, K, K).
    layerwise : also report each layer's weight / bias term (``layer_mean``,
        ``shares``; with ``keep`` the kept kernels get the (L, 2) axes).
    quantiles : levels for ``quantiles`` (computed from the per-init kernels,
        which are kept automatically when S x entries <= MAX_KEPT_SAMPLES,
        the normal case of a few inputs); None for none.
    chunk : inits per batched call (default: as many as fit in ~256 MB; with
        ``sampler="projected"``, at most a quarter of them, from 16 up).
    keep : return every per-init kernel in ``kernels``.
    progress : tqdm bar counting inits: None = when there is more than one
        chunk and stderr is a terminal; True / False to force.
    device : where the GEMMs run (default: x1's device). Weights are drawn
        on the CPU, as :class:`fastntk.MLP` draws them, then moved.
    dtype : float64 (default) or float32 for the network and kernels;
        statistics are accumulated in float64 either way.
    threads : threads drawing the weights, one seed per thread at a time
        (default: ``torch.get_num_threads()``); the draw of the next chunk
        overlaps the kernels of the current one, which run on one intra-op
        thread (``torch.set_num_threads(1)`` for the duration of the call).
    sampler : ``"seeded"`` (default): init s is ``MLP(..., seed=seeds[s])``, bit
        for bit. ``"projected"``: init s draws from
        ``numpy.random.default_rng(seeds[s])`` only the Gaussian numbers the
        kernel depends on (per layer, the weights times an orthonormal basis of
        the inputs' span, and a draw for the backward signals' span): the
        kernel's distribution over inits is exactly that of the seeded sampler
        (no approximation), its draws are not; much faster for networks with
        few inputs (N K much smaller than the widths). With ``depths``, each
        depth's kernels have the exact distribution, but the depths share only
        their forward pass (each draws its own backward), so the joint law of
        two depths' kernels is not that of one network truncated twice.
    depths : None for the network ``widths``; or a sweep: numbers of hidden
        layers d (0 <= d <= len(widths) - 2), the network of depth d being
        ``MLP(widths[:d + 1] + [widths[-1]], ..., seed=s)``, the first d
        hidden layers of ``widths`` then an output layer. ``MLP`` draws its
        layers in order from one generator, so all depths share their hidden
        layers bit for bit (each output layer is drawn from a copy of the
        generator after d hidden layers): the weights are drawn and the
        forward pass runs once, for the deepest network; only the backward
        pass is per depth. ``chunk`` then counts inits of the deepest network.

    Returns
    -------
    :class:`EnsembleStats`; with ``depths``, a dict {d: EnsembleStats} in the
    order of ``depths``, ``settings["widths"]`` being the network of depth d.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for invalid input.
    """
    widths = _check_widths(widths)
    max_depth = len(widths) - 2
    sweep = depths is not None
    depths = depths if sweep else [max_depth]
    if isinstance(depths, (int, np.integer)) or not hasattr(depths, "__iter__"):
        raise TypeError(f"depths must be a sequence of numbers of hidden layers; got {depths!r}")
    depths = list(depths)
    if not depths or any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= d <= max_depth
                         for d in depths) or len(set(depths)) != len(depths):
        raise ValueError(f"depths must be distinct ints in [0, {max_depth}] (hidden layers of widths = {widths}); "
                         f"got {depths!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; got {parametrization!r}")
    sigma_w = _check_sigma("sigma_w", sigma_w)
    sigma_b = _check_sigma("sigma_b", sigma_b)
    outputs = _check_outputs(outputs)
    for name, flag in (("bias", bias), ("layerwise", layerwise), ("keep", keep)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool; got {type(flag).__name__} {flag!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64; got {dtype!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(map(repr, SAMPLERS))}; got {sampler!r}")
    levels = _check_quantiles(quantiles)
    seeds = resolve_seeds(seeds)
    n0 = widths[0]
    x1 = _check_x("x1", x1, n0)
    device = torch.device(device) if device is not None else x1.device
    x = x1.to(device=device, dtype=dtype)
    n1 = None
    if x2 is not None:
        x2 = _check_x("x2", x2, n0)
        n1 = x.shape[0]
        x = torch.cat([x, x2.to(device=device, dtype=dtype)])
    k = widths[-1]
    n = x.shape[0]
    ntk_param = parametrization == "ntk"
    scales = [sigma_w / math.sqrt(i) if ntk_param else 1.0 for i in widths[:-1]]
    bias_scales = [(sigma_b if ntk_param else 1.0) if bias else 0.0 for _ in widths[1:]]
    entries = {"full": k * k, "trace": 1, "per_output": k}[outputs] * (n * n if n1 is None else n1 * (n - n1))
    w_stds, b_std = _init_stds(widths, parametrization, sigma_w, sigma_b)
    if sampler == "projected":
        lay = _projected.layout(widths, depths, n, w_stds=w_stds, b_std=b_std, biased=bias and sigma_b > 0)
        drawn_per_init = lay.total + 2 * n * sum(widths)  # the normals, and each layer's Q and G
    else:
        drawn_per_init = 2 * sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))
    if chunk is None:
        per_init = 8 * (drawn_per_init + 3 * n * k * max(widths) + 2 * n * sum(widths) + 2 * len(widths) * entries)
        chunk = max(1, min(len(seeds), CHUNK_BYTES // per_init))
        if sampler == "projected":  # at least 4 chunks, so that drawing overlaps the kernels
            chunk = min(chunk, max(16, -(-len(seeds) // 4)))
    elif isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (inits per batched call) or None; got {chunk!r}")
    if threads is None:
        threads = torch.get_num_threads()
    elif isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int (threads drawing the weights) or None; got {threads!r}")
    starts = list(range(0, len(seeds), chunk))
    label = f"{len(widths) - 1} layers" if len(depths) == 1 else f"depths {min(depths)}..{max(depths)}"
    bar = progress_bar(progress, len(seeds), f"ensemble NTK {label}", worth_it=len(starts) > 1, unit="init")
    phi = Activation(activation)
    accs = {d: _Accumulator(layerwise, levels, keep, len(seeds)) for d in depths}

    if sampler == "seeded":
        def draw(start: int):
            ws, bs, heads = _draw(widths, depths, seeds[start:start + chunk], parametrization=parametrization,
                                  sigma_w=sigma_w, sigma_b=sigma_b, bias=bias, threads=threads)

            def moved(ts):
                return None if ts is None else [t.to(device=device, dtype=dtype) for t in ts]

            return moved(ws), moved(bs), {d: moved(h if bias else h[:1]) for d, h in heads.items()}

        def chunk_kernels(drawn):
            ws, bs, heads = drawn
            preact, times_weight = _weight_products(ws)
            deepest = max(depths)
            grams, dphis = _batched.forward(preact, heads[deepest][0].shape[0], deepest + 1, bs, scales, bias_scales,
                                            phi, x, n1)
            for d in depths:
                yield d, _batched.backward(heads[d][0], times_weight, grams, dphis[:d], scales, bias_scales, x, n1,
                                           outputs, layerwise)
    else:
        def draw(start: int):
            chunk_seeds = seeds[start:start + chunk]
            return len(chunk_seeds), _projected.seeded_normals(lay, chunk_seeds, threads=threads, device=device,
                                                               dtype=dtype)

        def chunk_kernels(drawn):
            c, source = drawn
            return _projected.kernels(source, lay, c, depths, scales, bias_scales, phi, x, n1, outputs, layerwise)

    # drawing the weights is most of the cost: the next chunk is drawn in the
    # background while this chunk's kernels run
    # the batched GEMMs are tiny: intra-op threads only contend with the
    # drawing threads (measured many times slower on a loaded machine)
    intra_op = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), ThreadPoolExecutor(1) as drawer:
            pending = drawer.submit(draw, starts[0])
            for i, start in enumerate(starts):
                drawn = pending.result()
                if i + 1 < len(starts):
                    pending = drawer.submit(draw, starts[i + 1])
                for d, kern in chunk_kernels(drawn):
                    accs[d].add(kern)
                del drawn
                bar.update(min(chunk, len(seeds) - start))
    finally:
        torch.set_num_threads(intra_op)
        bar.close()
    settings = {"activation": activation, "parametrization": parametrization,
                "sigma_w": sigma_w, "sigma_b": sigma_b, "bias": bias, "outputs": outputs,
                "dtype": str(dtype).replace("torch.", ""), "device": str(device), "chunk": chunk,
                "threads": threads, "sampler": sampler}
    stats = {d: accs[d].result(seeds, {"widths": widths[:d + 1] + [k], **settings}) for d in depths}
    return stats if sweep else stats[max_depth]
