"""Tidy tables shared by every experiment: CSV in and out, and the checks of
the arguments the experiments have in common.

A table is a list of dicts, one row per setting, with the same keys in every
row (a row may add keys; the CSV header is their union, in first-seen order).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from .._reference import ACTIVATIONS
from ..models import PARAMETRIZATIONS


def save_csv(rows: list[dict], path: str) -> str:
    """Write ``rows`` (a list of dicts with the same keys) to ``path`` as CSV; returns the path."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError("rows must be a non-empty list of dicts")
    keys = list(rows[0])
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
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
    # repr keeps every bit of a float, so load_csv(save_csv(rows)) == rows
    return repr(v) if isinstance(v, float) else v


def check_rows(rows, keys, fn: str) -> None:
    """Refuse a table that is not the output of the experiment ``fn`` plots."""
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{fn}: rows must be a non-empty list of dicts (the experiment's output)")
    missing = [k for k in keys if k not in rows[0]]
    if missing:
        raise ValueError(f"{fn}: rows lack the keys {missing}; pass the output of the matching experiment")


def int_list(name: str, values, minimum: int) -> list[int]:
    """``values`` (an int or a sequence of ints >= minimum) as a list, or a ValueError naming ``name``."""
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


def float_list(name: str, values, lo: float, hi: float = math.inf, lo_open: bool = False) -> list[float]:
    """``values`` (a number or a sequence of numbers in [lo, hi], or (lo, hi]) as a list of floats."""
    interval = f"{'(' if lo_open else '['}{lo}, {hi}]"
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a list of numbers in {interval}; got {values!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    for v in values:
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise ValueError(f"{name} must be numbers in {interval}; got {v!r}")
    return values


def check_int(name: str, value, minimum: int) -> int:
    """``value`` if it is an int >= minimum, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return int(value)


def check_number(name: str, value, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    """``value`` if it is a finite number in [lo, hi] (or (lo, hi]), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(value) or not lo <= value <= hi or (lo_open and value == lo):
        raise ValueError(f"{name} must be a finite number in {'(' if lo_open else '['}{lo}, {hi}]; got {value!r}")
    return float(value)


def check_network(activation, parametrization, sigma_b, n_inits, seed, min_inits: int = 2) -> None:
    """The network and sampling arguments every experiment takes (statistics
    over inits need ``n_inits >= min_inits``)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; "
                         f"got {parametrization!r}")
    if isinstance(sigma_b, bool) or not isinstance(sigma_b, (int, float)) or not math.isfinite(sigma_b) \
            or sigma_b < 0:
        raise ValueError(f"sigma_b must be a finite number >= 0; got {sigma_b!r}")
    if isinstance(n_inits, bool) or not isinstance(n_inits, (int, np.integer)) or n_inits < min_inits:
        raise ValueError(f"n_inits must be an int >= {min_inits}; got {n_inits!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
