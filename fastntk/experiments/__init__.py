"""Experiments on the empirical NTK, one module per experiment, each found by
its name (:func:`get`, :func:`names`; ``fastntk run NAME`` on the command
line).

Each experiment is a function returning a tidy table (a list of dicts, one
row per setting, the same keys in every row) that :func:`save_csv` writes as
CSV, and a ``plot_*`` function writing a PNG (matplotlib, Agg backend):

- :func:`dispersion`: the NTK dispersion D = E[T^2] / E[T]^2 of
  T = Theta(x, x') vs depth, for a grid of sigma_w^2 (the ordered /
  edge-of-chaos / chaotic phases), widths and input cosines: the setup of
  Seleznova & Kutyniok, ICML 2022 (arXiv 2202.00553).
- :func:`convergence`: the relative distance between the empirical NTK and
  its infinite-width expectation vs width, with the fitted log-log rate.
- :func:`layer_shares`: each layer's share of Theta(x, x) per phase.
- :func:`training`: the NTK during training per phase on digits (ICML 2022).
- :func:`divergence`: cross-entropy vs squared loss, the NTK's drift under long training.
- :func:`regime`: in or out of the NTK regime per phase and depth (MSML 2021).
- :func:`lazy`: network vs linearized model vs kernel regression, vs width.
- :func:`mirrored`: standard vs mirrored initialization, test error vs sample size.

Modules: ``tables`` (CSV and argument checks), ``figures`` (shared plotting),
``record`` (the JSON run record), ``registry`` (experiments by name),
``at_init`` (what the experiments at initialization share), and one module
per experiment, named after it. The package attribute of an experiment's
name is its function (``experiments.dispersion(...)``); its module is
``experiments.get("dispersion").module``.
"""

from __future__ import annotations

import importlib

from . import registry
from .at_init import ICML_SIGMA_W2, PHASES, phase_of, sphere_inputs
from .registry import Experiment, get, names
from .tables import load_csv, save_csv

# Registration order is the order `fastntk run --help` lists them in.
_MODULES = ("dispersion", "convergence", "layer_shares", "training", "divergence", "regime", "lazy", "mirrored")
for _name in _MODULES:
    registry.register(importlib.import_module(f"{__name__}.{_name}").EXPERIMENT)

from .convergence import convergence, convergence_rates, plot_convergence  # noqa: E402
from .dispersion import dispersion, plot_dispersion  # noqa: E402
from .divergence import divergence, plot_divergence  # noqa: E402
from .layer_shares import layer_shares, plot_layer_shares  # noqa: E402
from .lazy import lazy, plot_lazy, summarize_lazy  # noqa: E402
from .mirrored import mirrored, plot_mirrored, summarize_mirrored  # noqa: E402
from .regime import plot_regime, regime  # noqa: E402
from .regression import sphere_regression  # noqa: E402
from .training import plot_training, training  # noqa: E402

__all__ = [
    "ICML_SIGMA_W2", "PHASES", "Experiment", "get", "names", "load_csv", "save_csv", "phase_of", "sphere_inputs",
    "dispersion", "plot_dispersion", "convergence", "convergence_rates", "plot_convergence",
    "layer_shares", "plot_layer_shares", "training", "plot_training", "divergence", "plot_divergence",
    "regime", "plot_regime", "lazy", "plot_lazy", "summarize_lazy", "sphere_regression",
    "mirrored", "plot_mirrored", "summarize_mirrored",
]
