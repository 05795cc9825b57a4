"""Depth, width and initialization experiments on the empirical NTK at init.

Each experiment returns a tidy table, a list of dicts (one row per setting,
the same keys in every row), that :func:`save_csv` writes as CSV, and has a
``plot_*`` function writing a PNG (matplotlib, Agg backend).

- :func:`dispersion`: the NTK dispersion D = E[T^2] / E[T]^2 of
  T = Theta(x, x') vs depth, for a grid of sigma_w^2 (the ordered /
  edge-of-chaos / chaotic phases), widths and input cosines: the setup of
  Seleznova & Kutyniok, ICML 2022 (arXiv 2202.00553).
- :func:`convergence`: the relative distance between the empirical NTK and
  its infinite-width expectation vs width, with the fitted log-log rate.
- :func:`layer_shares`: each layer's share of Theta(x, x) per phase.

Network convention (the ICML setup, the default everywhere): ``depth`` is
the number of hidden layers, the network is ``fastntk.MLP([n_0] + [width] *
depth + [1])`` with n_0 = width, ReLU, standard parametrization
(W ~ N(0, sigma_w^2 / fan_in)), biases initialised to zero (sigma_b = 0) but
trained, so they count in the NTK; scalar output. Inputs lie on the unit
sphere: x = e_1 and x' = c e_1 + sqrt(1 - c^2) e_2 for cosine c (the law of
the kernel depends only on the norms and the cosine, since the weights are
rotation invariant).

Speed-up used when it is exact: for a positively homogeneous activation
(relu, leaky_relu, identity) in standard parametrization with sigma_b = 0,
the network with seed s at sigma_w^2 = v has the weights of the one at
sigma_w^2 = 1 times sqrt(v), so per init its layer-l weight term scales as
v^(L-1) and its bias term as v^(L-l) (L = depth + 1 weight layers). One
ensemble at sigma_w^2 = 1 then gives every sigma_w^2, init by init, exactly
what separate ensembles with the same seeds would give (a test checks it).
"""

from __future__ import annotations

import csv
import math
import os
from typing import Sequence

import numpy as np
import torch

from ._progress import progress_bar
from .ensemble import bootstrap_dispersion, ensemble_ntk, ensemble_stats
from .models import PARAMETRIZATIONS
from ._reference import ACTIVATIONS

__all__ = [
    "ICML_SIGMA_W2", "dispersion", "convergence", "convergence_rates", "layer_shares",
    "plot_dispersion", "plot_convergence", "plot_layer_shares", "save_csv", "load_csv", "phase_of",
    "sphere_inputs",
]

#: The 16 sigma_w^2 values of Seleznova & Kutyniok (ICML 2022).
ICML_SIGMA_W2 = (0.5, 0.8, 1.0, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.5, 3.0, 3.5)
_HOMOGENEOUS = ("relu", "leaky_relu", "identity")
PHASES = ("ordered", "edge_of_chaos", "chaotic")


# ---------------------------------------------------------------------------
# helpers


def save_csv(rows: list[dict], path: str) -> str:
    """Write ``rows`` (a list of dicts with the same keys) to ``path`` as CSV; returns the path."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts")
    keys = list(rows[0])
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in keys})
    return path


def load_csv(path: str) -> list[dict]:
    """Read a table written by :func:`save_csv` back (numbers as int/float), e.g. to re-plot."""
    def conv(v: str):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v

    with open(path, newline="") as f:
        return [{k: conv(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _fmt(v):
    if isinstance(v, float):
        return repr(v)
    return v


def phase_of(sigma_w2: float, activation: str = "relu", sigma_b: float = 0.0) -> str:
    """``"ordered"``, ``"edge_of_chaos"`` or ``"chaotic"``: from
    :func:`fastntk.infinite.phase` (chi_1 < 1, = 1, > 1), or, for ReLU if that
    module is unavailable, sigma_w^2 <, =, > 2 (with sigma_b = 0)."""
    try:
        from . import infinite
    except ImportError:  # pragma: no cover - infinite is part of the package
        infinite = None
    if infinite is not None:
        return infinite.phase(activation, math.sqrt(sigma_w2), sigma_b, tol=1e-6)
    if activation != "relu" or sigma_b != 0:
        return "unknown"
    return "ordered" if sigma_w2 < 2 - 1e-9 else "chaotic" if sigma_w2 > 2 + 1e-9 else "edge_of_chaos"


def sphere_inputs(n0: int, cosines: Sequence[float], dtype=torch.float64) -> torch.Tensor:
    """(1 + len(cosines), n0): x_0 = e_1, then c e_1 + sqrt(1 - c^2) e_2 for each cosine c."""
    if n0 < 2:
        raise ValueError(f"the input dimension must be >= 2 to place two inputs at a given cosine; got {n0}")
    for c in cosines:
        if not isinstance(c, (int, float, np.floating, np.integer)) or not -1.0 <= float(c) <= 1.0:
            raise ValueError(f"cosines must be numbers in [-1, 1]; got {c!r} in {list(cosines)!r}")
    x = torch.zeros(1 + len(cosines), n0, dtype=dtype)
    x[0, 0] = 1.0
    for i, c in enumerate(cosines):
        x[i + 1, 0] = c
        x[i + 1, 1] = math.sqrt(max(0.0, 1.0 - c * c))
    return x


def _int_list(name: str, values, minimum: int) -> list[int]:
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = [values]
    try:
        values = list(values)
    except TypeError:
        raise ValueError(f"{name} must be a list of ints >= {minimum}; got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{name} must be a list of ints >= {minimum}; got {v!r} in {values!r}")
    return [int(v) for v in values]


def _float_list(name: str, values, lo: float, hi: float = math.inf, lo_open: bool = False) -> list[float]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers in {'(' if lo_open else '['}{lo}, {hi}]; "
                         f"got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise ValueError(f"{name} must be numbers in {'(' if lo_open else '['}{lo}, {hi}]; got {v!r}")
    return values


def _check_common(activation, parametrization, sigma_b, n_inits, seed):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; "
                         f"got {parametrization!r}")
    if isinstance(sigma_b, bool) or not isinstance(sigma_b, (int, float)) or not math.isfinite(sigma_b) \
            or sigma_b < 0:
        raise ValueError(f"sigma_b must be a finite number >= 0; got {sigma_b!r}")
    if isinstance(n_inits, bool) or not isinstance(n_inits, (int, np.integer)) or n_inits < 2:
        raise ValueError(f"n_inits must be an int >= 2; got {n_inits!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")


def _homogeneous(activation, parametrization, sigma_b) -> bool:
    return activation in _HOMOGENEOUS and parametrization == "standard" and sigma_b == 0


def _per_init_layerwise(widths, x, seeds, sigma_w2s, *, activation, parametrization, sigma_b,
                        device, chunk):
    """{sigma_w2: (S, L, 2, N, N) per-init layerwise trace kernels}, using the
    homogeneity scaling when exact, else one ensemble per sigma_w2."""
    L = len(widths) - 1
    common = dict(seeds=seeds, activation=activation, parametrization=parametrization, sigma_b=sigma_b,
                  outputs="trace", layerwise=True, keep=True, quantiles=None, progress=False,
                  device=device, chunk=chunk)
    if _homogeneous(activation, parametrization, sigma_b):
        base = ensemble_ntk(widths, x, sigma_w=1.0, **common).kernels  # (S, L, 2, N, N)
        out = {}
        for v in sigma_w2s:
            f = torch.empty(L, 2, dtype=torch.float64)
            f[:, 0] = v ** (L - 1)
            f[:, 1] = torch.tensor([v ** (L - l) for l in range(1, L + 1)], dtype=torch.float64)
            out[v] = base * f[None, :, :, None, None]
        return out
    return {v: ensemble_ntk(widths, x, sigma_w=math.sqrt(v), **common).kernels for v in sigma_w2s}


# ---------------------------------------------------------------------------
# dispersion


def dispersion(
    depths: Sequence[int] = tuple(range(1, 21)),
    sigma_w2s: Sequence[float] = ICML_SIGMA_W2,
    widths: Sequence[int] = (100,),
    cosines: Sequence[float] = (1.0, 0.5, 0.0),
    n_inits: int = 500,
    *,
    activation: str = "relu",
    parametrization: str = "standard",
    sigma_b: float = 0.0,
    seed: int = 0,
    n_boot: int = 300,
    level: float = 0.95,
    device=None,
    chunk: int | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """NTK dispersion D = E[T^2] / E[T]^2 of T = Theta(x, x') vs depth.

    The ICML 2022 setup by default (see the module docstring): depth hidden
    layers of width ``width``, n_0 = width, ReLU, standard parametrization,
    sigma_b = 0 with trained biases, scalar output, |x| = |x'| = 1 and
    <x, x'> = cosine (cosine 1: x' = x, the diagonal Theta(x, x)).

    Parameters
    ----------
    depths : numbers of hidden layers (>= 1).
    sigma_w2s : weight variances sigma_w^2 (> 0); default the 16 ICML values.
    widths : hidden widths (also the input dimension).
    cosines : input cosines in [-1, 1].
    n_inits : initializations per setting (seeds ``seed .. seed + n_inits - 1``,
        the same for every depth, width and sigma_w^2).
    activation, parametrization, sigma_b : network settings.
    n_boot, level : bootstrap resamples and level of the interval on D.
    device, chunk, progress : as in :func:`fastntk.ensemble.ensemble_ntk`;
        ``progress`` is one bar over (width, depth).

    Returns
    -------
    list of dicts, one per (width, depth, sigma_w2, cosine), with keys
    width, depth, sigma_w2, phase, cosine, n_inits, mean, std, dispersion,
    dispersion_se (delta method), dispersion_lo, dispersion_hi (bootstrap
    percentile interval), infinite_mean (the infinite-width / mean-field
    expectation of T from :func:`fastntk.infinite.ntk`, NaN if unavailable).
    """
    depths = _int_list("depths", depths, 1)
    sigma_w2s = _float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    widths = _int_list("widths", widths, 2)
    cosines = _float_list("cosines", cosines, -1.0, 1.0)
    _check_common(activation, parametrization, sigma_b, n_inits, seed)
    seeds = list(range(seed, seed + n_inits))
    phases = {v: phase_of(v, activation, sigma_b) for v in sigma_w2s}
    rows = []
    bar = progress_bar(progress, len(widths) * len(depths), "dispersion", worth_it=len(widths) * len(depths) > 1)
    for width in widths:
        x = sphere_inputs(width, cosines)
        for depth in depths:
            net = [width] * (depth + 1) + [1]
            per = _per_init_layerwise(net, x, seeds, sigma_w2s, activation=activation,
                                      parametrization=parametrization, sigma_b=sigma_b, device=device,
                                      chunk=chunk)
            for v in sigma_w2s:
                t = per[v].sum((1, 2))[:, 0, 1:]  # (S, n_cosines): Theta(x_0, x_c)
                st = ensemble_stats(t, quantiles=None)
                lo, hi = bootstrap_dispersion(t, level=level, n_boot=n_boot, seed=seed)
                inf = _infinite(x, depth + 1, activation, v, sigma_b, parametrization, width)
                for i, c in enumerate(cosines):
                    rows.append({
                        "width": width, "depth": depth, "sigma_w2": v, "phase": phases[v], "cosine": c,
                        "n_inits": n_inits, "mean": st.mean[i].item(), "std": st.var[i].sqrt().item(),
                        "dispersion": st.dispersion[i].item(), "dispersion_se": st.dispersion_se[i].item(),
                        "dispersion_lo": lo[i].item(), "dispersion_hi": hi[i].item(),
                        "infinite_mean": math.nan if inf is None else inf[0, i + 1].item(),
                    })
            bar.update()
    bar.close()
    return rows


def _infinite(x, n_layers, activation, sigma_w2, sigma_b, parametrization, width):
    try:
        from . import infinite
    except ImportError:  # pragma: no cover
        return None
    try:
        return infinite.ntk(x, depth=n_layers, activation=activation, sigma_w=math.sqrt(sigma_w2),
                            sigma_b=sigma_b, parametrization=parametrization,
                            widths=None if n_layers == 1 else [width] * (n_layers - 1))
    except (ValueError, TypeError, NotImplementedError):  # pragma: no cover
        return None


_PHASE_CMAPS = {"ordered": "Blues", "edge_of_chaos": None, "chaotic": "Reds", "unknown": "Greys"}


def _phase_colors(sigma_w2s: list[float], phases: dict) -> dict:
    import matplotlib

    colors = {}
    for ph in set(phases.values()):
        vs = sorted(v for v in sigma_w2s if phases[v] == ph)
        if _PHASE_CMAPS.get(ph) is None:
            for v in vs:
                colors[v] = "black"
            continue
        cmap = matplotlib.colormaps[_PHASE_CMAPS.get(ph, "Greys")]
        for i, v in enumerate(vs):
            t = 0.45 + 0.5 * (i + 1) / len(vs) if ph == "chaotic" else 0.95 - 0.5 * i / max(1, len(vs))
            colors[v] = cmap(t)
    return colors


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dispersion(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """D vs depth (log y), one line per sigma_w^2 coloured by phase (blues
    ordered, black edge of chaos, reds chaotic), bootstrap error bars; one
    panel per (width, cosine). Writes ``path`` (PNG/SVG by extension)."""
    plt = _plt()
    import matplotlib

    _check_rows(rows, ("width", "cosine", "depth", "sigma_w2", "phase", "dispersion"), "plot_dispersion")
    panels = sorted({(r["width"], r["cosine"]) for r in rows}, key=lambda p: (p[0], -p[1]))
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = _phase_colors(sw, phases)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    import matplotlib.ticker  # noqa: F401

    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol + 1.3, 4.2 * nrow), squeeze=False, sharey=True)
    for ax, (width, cos) in zip(axes.flat, panels):
        for v in sw:
            sel = sorted((r for r in rows if r["width"] == width and r["cosine"] == cos and r["sigma_w2"] == v),
                         key=lambda r: r["depth"])
            if not sel:
                continue
            d = np.array([r["depth"] for r in sel])
            y = np.array([r["dispersion"] for r in sel])
            lo = np.array([r.get("dispersion_lo", np.nan) for r in sel])
            hi = np.array([r.get("dispersion_hi", np.nan) for r in sel])
            yerr = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
            yerr = np.nan_to_num(yerr)
            ph = phases[v]
            ax.errorbar(d, y, yerr=yerr, color=colors[v], marker="o", ms=2.5, lw=1.8 if ph == "edge_of_chaos" else 1.2,
                        capsize=1.2, elinewidth=0.6, label=f"{v:g}")
        ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("depth (hidden layers)")
        ax.set_title(f"width {width}, cos(x, x') = {cos:g}")
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("dispersion  E[T²] / E[T]²")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="σ_w²\nblue: ordered\nblack: EOC\nred: chaotic", loc="center right",
               fontsize=8, title_fontsize=8, frameon=False, ncol=1 if len(sw) <= 18 else 2)
    n_inits = rows[0].get("n_inits")
    fig.suptitle(title or f"NTK dispersion vs depth ({n_inits} inits per point, 95% bootstrap intervals)")
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    _save(fig, path)
    plt.close(fig)
    return path


def _plain_log_ticks(ax):
    import matplotlib.ticker as mt

    ax.yaxis.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}"[0] in "1235" else ""))


def _save(fig, path):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(path, dpi=110)


def _check_rows(rows, keys, fn):
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{fn}: rows must be a non-empty list of dicts (the experiment's output)")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise ValueError(f"{fn}: rows lack the keys {missing}; pass the output of the matching experiment")


# ---------------------------------------------------------------------------
# convergence


def convergence(
    widths: Sequence[int] = (128, 256, 512, 1024, 2048, 4096, 8192),
    depths: Sequence[int] = (1, 3),
    sigma_w2s: Sequence[float] = (1.0, 2.0, 3.0),
    n_inits: int = 20,
    *,
    n_inputs: int = 4,
    n0: int = 16,
    activation: str = "relu",
    parametrization: str = "standard",
    sigma_b: float = 0.0,
    seed: int = 0,
    device=None,
    chunk: int | None = None,
    progress: bool | None = None,
) -> list[dict]:
    """Relative distance between the empirical NTK and its infinite-width
    counterpart vs width.

    For each init, ``||Theta_emp - Theta_inf||_F / ||Theta_inf||_F`` on
    ``n_inputs`` fixed random unit inputs in R^n0 (a (N, N) kernel), with
    Theta_inf = :func:`fastntk.infinite.ntk` (in standard parametrization the
    expected kernel at that width, which grows linearly with it; in NTK
    parametrization the width-independent limit). Theory: O(width^-1/2) at
    fixed depth, with a constant that grows with depth / width, fastest in
    the chaotic phase.

    Returns
    -------
    list of dicts, one per (depth, sigma_w2, width): depth, sigma_w2, phase,
    width, n_inits, rel_dist (mean over inits), rel_dist_se, rel_dist_of_mean
    (distance of the mean kernel, which shrinks as 1/sqrt(n_inits) too) and
    slope (the least-squares slope of log rel_dist vs log width for that
    (depth, sigma_w2), repeated on each of its rows).
    """
    try:
        from . import infinite
    except ImportError as exc:  # pragma: no cover
        raise RuntimeError("convergence needs fastntk.infinite") from exc
    widths = _int_list("widths", widths, 1)
    depths = _int_list("depths", depths, 1)
    sigma_w2s = _float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    _check_common(activation, parametrization, sigma_b, n_inits, seed)
    if isinstance(n_inputs, bool) or not isinstance(n_inputs, int) or n_inputs < 1:
        raise ValueError(f"n_inputs must be a positive int; got {n_inputs!r}")
    if isinstance(n0, bool) or not isinstance(n0, int) or n0 < 1:
        raise ValueError(f"n0 must be a positive int; got {n0!r}")
    g = torch.Generator().manual_seed(int(seed) + 12345)
    x = torch.randn(n_inputs, n0, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    seeds = list(range(seed, seed + n_inits))
    phases = {v: phase_of(v, activation, sigma_b) for v in sigma_w2s}
    rows = []
    bar = progress_bar(progress, len(widths) * len(depths), "convergence", worth_it=len(widths) * len(depths) > 1)
    for depth in depths:
        for width in widths:
            net = [n0] + [width] * depth + [1]
            per = _per_init_layerwise(net, x, seeds, sigma_w2s, activation=activation,
                                      parametrization=parametrization, sigma_b=sigma_b, device=device,
                                      chunk=chunk)
            for v in sigma_w2s:
                emp = per[v].sum((1, 2))  # (S, N, N)
                inf = infinite.ntk(x, depth=depth + 1, activation=activation, sigma_w=math.sqrt(v),
                                   sigma_b=sigma_b, parametrization=parametrization, widths=[width] * depth)
                norm = inf.norm()
                d = (emp - inf).flatten(1).norm(dim=1) / norm
                rows.append({
                    "depth": depth, "sigma_w2": v, "phase": phases[v], "width": width, "n_inits": n_inits,
                    "rel_dist": d.mean().item(), "rel_dist_se": (d.std() / math.sqrt(len(d))).item(),
                    "rel_dist_of_mean": ((emp.mean(0) - inf).norm() / norm).item(),
                })
            bar.update()
    bar.close()
    rates = {(r["depth"], r["sigma_w2"]): r["slope"] for r in convergence_rates(rows)}
    for r in rows:
        r["slope"] = rates[(r["depth"], r["sigma_w2"])]
    return rows


def convergence_rates(rows: list[dict]) -> list[dict]:
    """Least-squares fit log rel_dist = slope log width + intercept per
    (depth, sigma_w2): list of dicts depth, sigma_w2, phase, slope, intercept,
    n_widths (slope NaN with fewer than 2 widths)."""
    _check_rows(rows, ("depth", "sigma_w2", "width", "rel_dist"), "convergence_rates")
    out = []
    for key in sorted({(r["depth"], r["sigma_w2"]) for r in rows}):
        sel = [r for r in rows if (r["depth"], r["sigma_w2"]) == key]
        w = np.log([r["width"] for r in sel])
        y = np.log([r["rel_dist"] for r in sel])
        slope, icpt = (np.polyfit(w, y, 1) if len(sel) >= 2 and np.ptp(w) > 0 else (math.nan, math.nan))
        out.append({"depth": key[0], "sigma_w2": key[1], "phase": sel[0].get("phase", ""),
                    "slope": float(slope), "intercept": float(icpt), "n_widths": len(sel)})
    return out


def plot_convergence(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """Log-log relative distance vs width, one panel per depth, one line per
    sigma_w^2 (coloured by phase, fitted slope in the legend), with a
    width^-1/2 guide."""
    plt = _plt()
    _check_rows(rows, ("depth", "sigma_w2", "width", "rel_dist", "phase"), "plot_convergence")
    depths = sorted({r["depth"] for r in rows})
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = _phase_colors(sw, phases)
    rates = {(r["depth"], r["sigma_w2"]): r["slope"] for r in convergence_rates(rows)}
    fig, axes = plt.subplots(1, len(depths), figsize=(4.8 * len(depths), 4.2), squeeze=False, sharey=True)
    for ax, depth in zip(axes[0], depths):
        for v in sw:
            sel = sorted((r for r in rows if r["depth"] == depth and r["sigma_w2"] == v), key=lambda r: r["width"])
            w = np.array([r["width"] for r in sel])
            y = np.array([r["rel_dist"] for r in sel])
            e = np.array([r.get("rel_dist_se", 0.0) for r in sel])
            ax.errorbar(w, y, yerr=e, color=colors[v], marker="o", ms=3, capsize=2,
                        label=f"σ_w²={v:g} ({phases[v].replace('_', ' ')}), slope {rates[(depth, v)]:.2f}")
        ws = np.array(sorted({r["width"] for r in rows if r["depth"] == depth}), dtype=float)
        y0 = np.median([r["rel_dist"] for r in rows if r["depth"] == depth and r["width"] == ws[0]])
        ax.plot(ws, y0 * (ws / ws[0]) ** -0.5, "k:", lw=1, label="∝ width^-1/2")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_title(f"depth {depth} (hidden layers)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("||Θ_emp − Θ_∞||_F / ||Θ_∞||_F")
    fig.suptitle(title or f"Empirical NTK vs infinite width ({rows[0].get('n_inits')} inits per point)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# layer shares


def layer_shares(
    depth: int = 20,
    sigma_w2s: Sequence[float] = (1.0, 1.5, 2.0, 2.5, 3.0),
    width: int = 100,
    n_inits: int = 200,
    *,
    cosine: float = 1.0,
    activation: str = "relu",
    parametrization: str = "standard",
    sigma_b: float = 0.0,
    seed: int = 0,
    device=None,
    chunk: int | None = None,
) -> list[dict]:
    """Mean share of each layer's weight and bias terms in T = Theta(x, x').

    Same network and inputs as :func:`dispersion` (default x' = x). The share
    of a term is term / T per init, averaged over inits (the terms are all
    >= 0 for ReLU on the diagonal, so shares lie in [0, 1] and sum to 1).

    Returns
    -------
    list of dicts, one per (sigma_w2, layer): sigma_w2, phase, depth, width,
    layer (1 .. depth + 1, the output layer last), weight_share, bias_share,
    share (their sum), mean_weight_term, mean_bias_term, n_inits.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth must be an int >= 1 (hidden layers); got {depth!r}")
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 2:
        raise ValueError(f"width must be an int >= 2; got {width!r}")
    sigma_w2s = _float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    cosine = _float_list("cosine", cosine, -1.0, 1.0)[0]
    _check_common(activation, parametrization, sigma_b, n_inits, seed)
    x = sphere_inputs(width, [cosine])
    net = [width] * (depth + 1) + [1]
    seeds = list(range(seed, seed + n_inits))
    per = _per_init_layerwise(net, x, seeds, sigma_w2s, activation=activation,
                              parametrization=parametrization, sigma_b=sigma_b, device=device, chunk=chunk)
    rows = []
    for v in sigma_w2s:
        lw = per[v][:, :, :, 0, 1]  # (S, L, 2)
        st = ensemble_stats(lw, layerwise=True, quantiles=None)
        ph = phase_of(v, activation, sigma_b)
        for l in range(lw.shape[1]):
            rows.append({
                "sigma_w2": v, "phase": ph, "depth": depth, "width": width, "layer": l + 1,
                "weight_share": st.shares[l, 0].item(), "bias_share": st.shares[l, 1].item(),
                "share": (st.shares[l, 0] + st.shares[l, 1]).item(),
                "mean_weight_term": st.layer_mean[l, 0].item(), "mean_bias_term": st.layer_mean[l, 1].item(),
                "n_inits": n_inits,
            })
    return rows


def plot_layer_shares(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """Share of each layer (weight + bias term) in Theta vs layer index, one
    line per sigma_w^2 coloured by phase; log y (left) and linear (right)."""
    plt = _plt()
    _check_rows(rows, ("sigma_w2", "phase", "layer", "share", "weight_share", "bias_share"), "plot_layer_shares")
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = _phase_colors(sw, phases)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for v in sw:
        sel = sorted((r for r in rows if r["sigma_w2"] == v), key=lambda r: r["layer"])
        l = [r["layer"] for r in sel]
        for ax in axes:
            ax.plot(l, [r["share"] for r in sel], color=colors[v], marker="o", ms=3,
                    label=f"σ_w²={v:g} ({phases[v].replace('_', ' ')})")
            ax.plot(l, [r["bias_share"] for r in sel], color=colors[v], ls=":", lw=1)
    axes[0].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("layer (1 = first, last = output)")
        ax.grid(True, alpha=0.25)
    axes[0].set_ylabel("mean share of Θ(x, x')  (solid: weight + bias, dotted: bias)")
    axes[1].legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(title or f"Layer shares of the NTK, depth {r0['depth']}, width {r0['width']}, "
                          f"{r0['n_inits']} inits")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


