"""Figures of a tracked training run: the kernel's statistics vs step, and
class-ordered heatmaps of kept kernels."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..experiments import figures

# (key, y label, log y): the panels, shown when the history has the key
_PANELS = (
    ("rel_change", "‖Θ_t − Θ_0‖_F / ‖Θ_0‖_F", True),
    ("within_between_ratio", "within / between class mean", False),
    ("centered_alignment", "centered kernel-target alignment", False),
    ("lambda_min", "smallest eigenvalue λ_min", True),
    ("condition", "condition number λ_max / λ_min", True),
)


def _step_axis(ax) -> None:
    # symlog shows step 0 (the init) on an otherwise logarithmic step axis
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_xlabel("training step (0 = init)")
    ax.grid(True, which="major", alpha=0.3)


def plot_history(rows: list[dict], path: str, *, group: str | None = None, colors: dict | None = None,
                 kernels: dict | None = None, labels=None, title: str | None = None) -> str:
    """Panels of the tracked quantities vs step, one line per value of
    ``group`` (a row key, e.g. ``"sigma_w2"``; None: one line), plus the
    layer shares (single run) and up to 4 kept kernels as class-ordered
    heatmaps (``kernels`` {step: (N, N)}, ``labels`` (N,) sorted)."""
    from ..experiments.tables import check_rows

    check_rows(rows, ("step", "rel_change"), "plot_history")
    plt = figures.pyplot()
    panels = [p for p in _PANELS if p[0] in rows[0]]
    layer_keys = [k for k in rows[0] if k.startswith("layer_share_")]
    show_shares = group is None and layer_keys
    kept = sorted(kernels or {})[:4] if group is None else []
    n_panels = len(panels) + bool(show_shares)
    ncol = 3
    nrow = math.ceil(n_panels / ncol)
    fig = plt.figure(figsize=(4.4 * ncol, 3.4 * nrow + (3.6 if kept else 0)), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[3.4 * nrow, 3.6]) if kept else (fig, None)
    axes = list(top.subplots(nrow, ncol, squeeze=False).flat)
    for ax in axes[n_panels:]:
        ax.axis("off")
    groups = [None] if group is None else sorted({r[group] for r in rows})
    for i, (key, ylabel, log) in enumerate(panels):
        ax = axes[i]
        for g in groups:
            sel = sorted((r for r in rows if g is None or r[group] == g), key=lambda r: r["step"])
            y = np.array([r[key] for r in sel], dtype=float)
            if log:
                y = np.where(y > 0, y, np.nan)
            ax.plot([r["step"] for r in sel], y, marker="o", ms=3,
                    color=None if colors is None else colors.get(g), label=None if g is None else f"{group} {g:g}")
        if log:
            ax.set_yscale("log")
            figures.readable_log_ticks(ax)
        _step_axis(ax)
        ax.set_ylabel(ylabel)
        if group is not None and i == 0:
            ax.legend(fontsize=8)
    if show_shares:
        ax = axes[len(panels)]
        sel = sorted(rows, key=lambda r: r["step"])
        shares = np.array([[r[k] for k in layer_keys] for r in sel]).T
        cmap = plt.get_cmap("viridis")
        for l, s in enumerate(shares):
            ax.plot([r["step"] for r in sel], s, color=cmap(l / max(1, len(shares) - 1)), lw=1.2,
                    label=f"layer {l + 1}" if l in (0, len(shares) - 1) else None)
        _step_axis(ax)
        ax.set_ylabel("layer's share of tr Θ")
        ax.legend(fontsize=8, title="dark: first, yellow: last", title_fontsize=7)
    for ax, step in zip(bottom.subplots(1, len(kept), squeeze=False)[0] if kept else [], kept):
        kernel_heatmap(ax, kernels[step], labels, f"step {step}")
    fig.suptitle(title or "NTK during training")
    figures.save(fig, path)
    plt.close(fig)
    return path


def kernel_heatmap(ax, kernel, labels=None, title: str = "", colorbar: bool = True):
    """One kernel as a heatmap, its inputs sorted by class (stable) with class
    ticks and axis labels when ``labels`` are given."""
    k = kernel.detach().cpu().double().numpy() if isinstance(kernel, torch.Tensor) else np.asarray(kernel)
    if labels is not None and len(labels) == len(k):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        order = np.argsort(labels, kind="stable")
        k, labels = k[np.ix_(order, order)], labels[order]
    im = ax.imshow(k, cmap="viridis")
    if labels is not None and len(labels) == len(k):
        figures.class_ticks(ax, labels)
    ax.set_title(title, fontsize=10)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.85, label="Θ(x, x')")
    return im
