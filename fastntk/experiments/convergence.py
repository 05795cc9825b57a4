"""The relative distance between the empirical NTK and its infinite-width
counterpart vs width, with the fitted log-log rate (theory: width^-1/2)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from .. import infinite
from .._progress import progress_bar
from . import figures
from .at_init import NETWORK_HELP, add_network_arguments, network_settings, per_init_layerwise, phase_of
from .registry import Experiment, flatten
from .tables import check_int, check_network, check_rows, float_list, int_list, save_csv


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
    widths = int_list("widths", widths, 1)
    depths = int_list("depths", depths, 1)
    sigma_w2s = float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    check_network(activation, parametrization, sigma_b, n_inits, seed)
    check_int("n_inputs", n_inputs, 1)
    check_int("n0", n0, 1)
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
            per = per_init_layerwise(net, x, seeds, sigma_w2s, activation=activation,
                                     parametrization=parametrization, sigma_b=sigma_b, device=device, chunk=chunk)
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
    check_rows(rows, ("depth", "sigma_w2", "width", "rel_dist"), "convergence_rates")
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
    plt = figures.pyplot()
    check_rows(rows, ("depth", "sigma_w2", "width", "rel_dist", "phase"), "plot_convergence")
    depths = sorted({r["depth"] for r in rows})
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = figures.phase_colors(sw, phases)
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
        figures.readable_log_ticks(ax)
        ax.set_xlabel("width")
        ax.set_title(f"depth {depth} (hidden layers)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("||Θ_emp − Θ_∞||_F / ||Θ_∞||_F")
    fig.suptitle(title or f"Empirical NTK vs infinite width ({rows[0].get('n_inits')} inits per point)")
    fig.tight_layout()
    figures.save(fig, path)
    plt.close(fig)
    return path


DESCRIPTION = f"""\
Mean over inits of ||Theta_emp - Theta_inf||_F / ||Theta_inf||_F on 4 random
unit inputs in R^16 vs width, log-log, with the fitted slope per
(depth, sigma_w^2) (theory: -1/2). Theta_inf is fastntk.infinite.ntk at that
width (standard parametrization: the expected kernel, which grows with
width). Also writes convergence_rates.csv.

Defaults: --width 128 256 512 1024 2048 4096 8192 --depths 1 3 --sigma-w2 1 2 3
--inits 20 (widths past 4096 are slow on a CPU; a GPU helps: --device cuda).

{NETWORK_HELP}
examples:
  fastntk run convergence --width 128 256 512 1024 --inits 10 --out results/
"""


def _add_arguments(parser) -> None:
    add_network_arguments(
        parser, depths_help="numbers of hidden layers (default 1 3)",
        sigma_help="weight variances sigma_w^2 (default 1 2 3)",
        width_help="hidden widths (default 128 .. 8192, doubling)",
        inits_help="initializations per setting (default 20)", cosine_help=None)


def _run(args):
    settings = dict(widths=flatten(args.width) or [128, 256, 512, 1024, 2048, 4096, 8192],
                    depths=flatten(args.depths) or [1, 3], sigma_w2s=flatten(args.sigma_w2) or [1.0, 2.0, 3.0],
                    n_inits=20 if args.inits is None else args.inits, **network_settings(args))
    rows = convergence(**settings, progress=False if args.no_progress else None)
    files = {"png": plot_convergence(rows, os.path.join(args.out, "convergence.png")),
             "rates_csv": save_csv(convergence_rates(rows), os.path.join(args.out, "convergence_rates.csv"))}
    return rows, settings, files


EXPERIMENT = Experiment(
    name="convergence",
    summary="distance of the empirical NTK from the infinite-width kernel vs width, fitted rate",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
