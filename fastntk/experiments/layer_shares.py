"""Each layer's share of Theta(x, x') per phase: which layers dominate the
kernel at initialization."""

from __future__ import annotations

import os
from typing import Sequence

from ..ensemble import ensemble_stats
from . import figures
from .at_init import NETWORK_HELP, add_network_arguments, network_settings, per_init_layerwise, phase_of, \
    sphere_inputs
from .registry import Experiment, flatten
from .tables import check_int, check_network, check_rows, float_list


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

    Same network and inputs as :func:`fastntk.experiments.dispersion` (default
    x' = x). The share of a term is term / T per init, averaged over inits
    (the terms are all >= 0 for ReLU on the diagonal, so shares lie in [0, 1]
    and sum to 1).

    Returns
    -------
    list of dicts, one per (sigma_w2, layer): sigma_w2, phase, depth, width,
    layer (1 .. depth + 1, the output layer last), weight_share, bias_share,
    share (their sum), mean_weight_term, mean_bias_term, n_inits.
    """
    depth = check_int("depth", depth, 1)
    width = check_int("width", width, 2)
    sigma_w2s = float_list("sigma_w2s", sigma_w2s, 0.0, lo_open=True)
    cosine = float_list("cosine", cosine, -1.0, 1.0)[0]
    check_network(activation, parametrization, sigma_b, n_inits, seed)
    x = sphere_inputs(width, [cosine])
    net = [width] * (depth + 1) + [1]
    seeds = list(range(seed, seed + n_inits))
    per = per_init_layerwise(net, x, seeds, sigma_w2s, activation=activation,
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
    plt = figures.pyplot()
    check_rows(rows, ("sigma_w2", "phase", "layer", "share", "weight_share", "bias_share"), "plot_layer_shares")
    sw = sorted({r["sigma_w2"] for r in rows})
    phases = {r["sigma_w2"]: r["phase"] for r in rows}
    colors = figures.phase_colors(sw, phases)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for v in sw:
        sel = sorted((r for r in rows if r["sigma_w2"] == v), key=lambda r: r["layer"])
        l = [r["layer"] for r in sel]
        for ax in axes:
            ax.plot(l, [r["share"] for r in sel], color=colors[v], marker="o", ms=3,
                    label=f"σ_w²={v:g} ({phases[v].replace('_', ' ')})")
            ax.plot(l, [r["bias_share"] for r in sel], color=colors[v], ls=":", lw=1)
    axes[0].set_yscale("log")
    figures.readable_log_ticks(axes[0])
    axes[0].set_title("log scale")
    axes[1].set_title("linear scale")
    for ax in axes:
        ax.set_xlabel("layer (1 = first, last = output)")
        ax.set_ylabel("mean share of Θ(x, x')")
        ax.grid(True, alpha=0.25)
    axes[1].legend(fontsize=8, title="solid: weight + bias\ndotted: bias only", title_fontsize=8)
    r0 = rows[0]
    fig.suptitle(title or f"Layer shares of the NTK, depth {r0['depth']}, width {r0['width']}, "
                          f"{r0['n_inits']} inits")
    fig.tight_layout()
    figures.save(fig, path)
    plt.close(fig)
    return path


DESCRIPTION = f"""\
The mean share of each layer's weight and bias terms in Theta(x, x) (per
init, then averaged), one line per sigma_w^2: which layers dominate the
kernel in each phase.

Defaults: --depths 20 (one value) --sigma-w2 1 1.5 2 2.5 3 --width 100
--inits 200 --cosine 1.0.

{NETWORK_HELP}
examples:
  fastntk run layer_shares --depths 30 --sigma-w2 1 2 3 --out results/
"""


def _add_arguments(parser) -> None:
    add_network_arguments(
        parser, depths_help="number of hidden layers, one value (default 20)",
        sigma_help="weight variances sigma_w^2 (default 1 1.5 2 2.5 3)",
        width_help="hidden width, one value (default 100)", inits_help="initializations (default 200)",
        cosine_help="cosine between the two unit inputs, one value (default 1.0)")


def _one(flag: str, values, default):
    if values is None:
        return default
    if len(values) != 1:
        raise ValueError(f"layer_shares takes one value of {flag}; got {values}")
    return values[0]


def _run(args):
    settings = dict(depth=_one("--depths", flatten(args.depths), 20),
                    sigma_w2s=flatten(args.sigma_w2) or [1.0, 1.5, 2.0, 2.5, 3.0],
                    width=_one("--width", flatten(args.width), 100),
                    n_inits=200 if args.inits is None else args.inits,
                    cosine=_one("--cosine", args.cosine, 1.0), **network_settings(args))
    rows = layer_shares(**settings)
    return rows, settings, {"png": plot_layer_shares(rows, os.path.join(args.out, "layer_shares.png"))}


EXPERIMENT = Experiment(
    name="layer_shares",
    summary="each layer's share of Theta(x, x) per sigma_w^2",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
