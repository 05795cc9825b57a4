"""Figure helpers shared by every experiment: matplotlib on the Agg backend,
one colour per sigma_w^2 by phase, readable log axes, and saving.

Colours: blues for the ordered phase (darker = further from the edge of
chaos), black for the edge of chaos, reds for the chaotic phase.
"""

from __future__ import annotations

import math
import os

_PHASE_CMAPS = {"ordered": "Blues", "edge_of_chaos": None, "chaotic": "Reds", "unknown": "Greys"}
#: The dpi of every figure: README shows them at about 800 px wide.
DPI = 110


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def phase_colors(sigma_w2s: list[float], phases: dict) -> dict:
    """{sigma_w2: colour}, shaded within each phase's colour map."""
    import matplotlib

    colors = {}
    for ph in set(phases.values()):
        vs = sorted(v for v in sigma_w2s if phases[v] == ph)
        if _PHASE_CMAPS.get(ph, "Greys") is None:
            colors.update({v: "black" for v in vs})
            continue
        cmap = matplotlib.colormaps[_PHASE_CMAPS.get(ph, "Greys")]
        for i, v in enumerate(vs):
            t = 0.45 + 0.5 * (i + 1) / len(vs) if ph == "chaotic" else 0.95 - 0.5 * i / max(1, len(vs))
            colors[v] = cmap(t)
    return colors


def readable_log_ticks(ax, axis: str = "y") -> None:
    """Plain-number labels on a log axis (call after plotting): at 1, 2, 5 x
    10^k, at every 1..9 x 10^k when the data span less than a decade, and
    also at 1.2, 1.5, 2.5 x 10^k when they span less than a factor of 4
    (matplotlib's default labels only powers of ten, too sparse to read
    values off a curve that spans a decade or two)."""
    import matplotlib.ticker as mt

    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    span = hi / lo if lo > 0 else math.inf
    if span < 4:  # a narrow range (dispersion near 1): labels between the integers too
        subs = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    else:
        subs = tuple(range(1, 10)) if span < 10 else (1.0, 2.0, 5.0)
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(mt.LogLocator(base=10, subs=subs, numticks=15))
    target.set_major_formatter(mt.FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(mt.LogLocator(base=10, subs=tuple(range(1, 10)), numticks=15))
    target.set_minor_formatter(mt.NullFormatter())


def save(fig, path: str) -> str:
    """Save ``fig`` to ``path`` (format by extension), creating the directory; returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def class_ticks(ax, labels, axis_label: str = "inputs, sorted by class") -> None:
    """Tick each class block of a class-ordered kernel heatmap at its middle
    and label both axes (``labels`` sorted, one per input)."""
    import numpy as np

    labels = np.asarray(labels)
    classes, starts, counts = np.unique(labels, return_index=True, return_counts=True)
    mids = starts + counts / 2 - 0.5
    ax.set_xticks(mids, [str(c) for c in classes])
    ax.set_yticks(mids, [str(c) for c in classes])
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="white", lw=0.4, alpha=0.6)
        ax.axvline(s - 0.5, color="white", lw=0.4, alpha=0.6)
    ax.set_xlabel(axis_label)
    ax.set_ylabel(axis_label)
