"""The NTK dispersion D = E[T^2] / E[T]^2 of T = Theta(x, x') vs depth
(Seleznova & Kutyniok, ICML 2022, arXiv 2202.00553): flat in depth in the
ordered phase, growing exponentially with depth/width at the edge of chaos
and in the chaotic phase."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np

from .._progress import progress_bar
from ..ensemble import SAMPLERS, bootstrap_dispersion, ensemble_stats
from . import figures
from .at_init import (ICML_SIGMA_W2, NETWORK_HELP, add_network_arguments, infinite_ntk, network_settings,
                      per_init_layerwise_depths, phase_of, sphere_inputs)
from .registry import Experiment, flatten
from .tables import check_network, check_rows, float_list, int_list


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
    sampler: str = "seeded",
) -> list[dict]:
    """NTK dispersion D = E[T^2] / E[T]^2 of T = Theta(x, x') vs depth.

    The ICML 2022 setup by default (see :mod:`fastntk.experiments.at_init`):
    depth hidden layers of width ``width``, n_0 = width, ReLU, standard
    parametrization, sigma_b = 0 with trained biases, scalar output,
    |x| = |x'| = 1 and <x, x'> = cosine (cosine 1: x' = x, the diagonal
    Theta(x, x)).

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
    sampler : ``"seeded"`` (init s is ``MLP(seed=s)``) or ``"projected"`` (the
        same distribution of kernels from ~25x fewer normals), as in
        :func:`fastntk.ensemble.ensemble_ntk`.

    Returns
    -------
    list of dicts, one per (width, depth, sigma_w2, cosine), with keys
    width, depth, sigma_w2, phase, cosine, n_inits, mean, std, dispersion,
    dispersion_se (delta method), dispersion_lo, dispersion_hi (bootstrap
    percentile interval), infinite_mean (the infinite-width / mean-field
    expectation of T from :func:`fastntk.infinite.ntk`, NaN if unavailable).
    """
    depths = int_list("depths", depths, 1)
    sigma_w2s = float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    widths = int_list("widths", widths, 2)
    cosines = float_list("cosines", cosines, -1.0, 1.0)
    check_network(activation, parametrization, sigma_b, n_inits, seed)
    seeds = list(range(seed, seed + n_inits))
    phases = {v: phase_of(v, activation, sigma_b) for v in sigma_w2s}
    rows = []
    bar = progress_bar(progress, len(widths) * len(depths), "dispersion", worth_it=len(widths) * len(depths) > 1)
    for width in widths:
        x = sphere_inputs(width, cosines)
        # one sweep per width: the depths share their first layers (same seeds)
        sweep = per_init_layerwise_depths([width] * (max(depths) + 1) + [1], list(dict.fromkeys(depths)), x, seeds,
                                          sigma_w2s, activation=activation, parametrization=parametrization,
                                          sigma_b=sigma_b, device=device, chunk=chunk, progress=progress,
                                          sampler=sampler)
        for depth, per in sweep:
            for v in sigma_w2s:
                t = per[v].sum((1, 2))[:, 0, 1:]  # (S, n_cosines): Theta(x_0, x_c)
                st = ensemble_stats(t, quantiles=None)
                lo, hi = bootstrap_dispersion(t, level=level, n_boot=n_boot, seed=seed)
                inf = infinite_ntk(x, depth + 1, activation, v, sigma_b, parametrization, width)
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


def plot_dispersion(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """D vs depth (log y), one line per sigma_w^2 coloured by phase (blues
    ordered, black edge of chaos, reds chaotic), bootstrap error bars; one
    panel per (width, cosine). Writes ``path`` (PNG/SVG by extension)."""
    import matplotlib.ticker

    plt = figures.pyplot()
    check_rows(rows, ("width", "cosine", "depth", "sigma_w2", "phase", "dispersion"), "plot_dispersion")
    panels = sorted({(r["width"], r["cosine"]) for r in rows}, key=lambda p: (p[0], -p[1]))
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = figures.phase_colors(sw, phases)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
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
            yerr = np.nan_to_num(np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)]))
            ax.errorbar(d, y, yerr=yerr, color=colors[v], marker="o", ms=2.5,
                        lw=1.8 if phases[v] == "edge_of_chaos" else 1.2, capsize=1.2, elinewidth=0.6,
                        label=f"{v:g}")
        ax.set_yscale("log")
        figures.readable_log_ticks(ax)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("depth (hidden layers)")
        ax.set_title(f"width {width}, cos(x, x') = {cos:g}")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("dispersion  E[T²] / E[T]²")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, title="σ_w²\nblue: ordered\nblack: EOC\nred: chaotic", loc="center right",
               fontsize=8, title_fontsize=8, frameon=False, ncol=1 if len(sw) <= 18 else 2)
    fig.suptitle(title or f"NTK dispersion vs depth ({rows[0].get('n_inits')} inits per point, "
                          "95% bootstrap intervals)")
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    figures.save(fig, path)
    plt.close(fig)
    return path


DESCRIPTION = f"""\
NTK dispersion D = E[T^2] / E[T]^2 of T = Theta(x, x') over inits, vs depth,
one line per sigma_w^2 coloured by phase, 95% bootstrap error bars (Seleznova
& Kutyniok, ICML 2022, arXiv 2202.00553). Inputs on the unit sphere, input
dimension = width, x' at the given cosine to x (cosine 1: x' = x). Expect D
flat in depth in the ordered phase and growing exponentially with depth/width
at the EOC and in the chaotic phase.

Defaults: --depths 1:20 --sigma-w2 icml (the 16 values 0.5 .. 3.5) --width 100
--inits 500 --cosine 1.0 0.5 0.0 (about 2 min on 2 cores).
The paper's full setting: --depths 1:49 (about 10 min on 2 cores).

{NETWORK_HELP}
Writes dispersion.csv, dispersion.png and dispersion.json into --out.

examples:
  fastntk run dispersion --out results/                      # ICML setup, depths 1..20
  fastntk run dispersion --depths 1:30 --inits 300 --cosine 0.5 --out results/
"""


def _add_arguments(parser) -> None:
    add_network_arguments(
        parser, depths_help="numbers of hidden layers: list and/or ranges A:B[:STEP] (default 1:20)",
        sigma_help="weight variances sigma_w^2, or 'icml' for the 16 ICML values (default icml)",
        width_help="hidden widths, also the input dimension (default 100)",
        inits_help="initializations per setting (default 500)",
        cosine_help="cosines between the two unit inputs (default 1.0 0.5 0.0)")
    parser.add_argument("--sampler", default="seeded", choices=SAMPLERS,
                        help="seeded: init s is fastntk.MLP(seed=s); projected: the same distribution of kernels "
                             "from the Gaussian numbers they depend on, much faster (default: %(default)s)")


def _run(args):
    settings = dict(depths=flatten(args.depths) or list(range(1, 21)),
                    sigma_w2s=flatten(args.sigma_w2) or list(ICML_SIGMA_W2),
                    widths=flatten(args.width) or [100], cosines=args.cosine or [1.0, 0.5, 0.0],
                    n_inits=500 if args.inits is None else args.inits, sampler=args.sampler,
                    **network_settings(args))
    rows = dispersion(**settings, progress=False if args.no_progress else None)
    return rows, settings, {"png": plot_dispersion(rows, os.path.join(args.out, "dispersion.png"))}


EXPERIMENT = Experiment(
    name="dispersion",
    summary="NTK dispersion E[T^2]/E[T]^2 vs depth per sigma_w^2 (ICML 2022)",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
