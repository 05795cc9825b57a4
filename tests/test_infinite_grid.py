"""fastntk.infinite on inputs with distinct norms: the blockwise Mehler series
on the grid of pairs (``_Grid``) against the pair-by-pair path it replaces
(``_expect_pairs``: Mehler series with 512 terms per pair, 2-D rule where that
does not converge), against the closed forms (relu, leaky_relu, erf by
quadrature) and against the independent adaptive quadrature
(tests/infinite_reference.py); and the tail bounds it rests on.

Each comparison forces one path or the other (the grid normally starts at
4096 pairs) and checks that the grid was really taken, with blocks small
enough that the inputs span several of them, partial ones included.
"""

from __future__ import annotations

import math

import pytest
import torch

import infinite_reference as reference
from fastntk import infinite

D = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")  # many small tensor operations


def _raw_inputs(n, n0, seed):
    """Inputs whose squared norms are all distinct (spread over ~[0.1, 10] n0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n0, generator=g, dtype=D)
    return x * torch.exp(torch.linspace(-1.1, 1.1, n, dtype=D))[torch.randperm(n, generator=g), None]


class _Paths:
    """Run kernels through the grid or pair by pair, recording what the grid did."""

    def __init__(self, monkeypatch):
        self.mp = monkeypatch
        self.grid_calls = 0
        self.grid_pairs = 0
        self.fallback_pairs = 0
        self.series_terms = []
        expect, expect_pairs, tables = infinite._Grid.expect, infinite._expect_pairs, infinite._series_tables

        def counted_expect(grid, *args):
            self.grid_calls += 1
            self.grid_pairs += grid.i1.numel()
            return expect(grid, *args)

        def counted_pairs(act, s1, s2, c, *args):
            if self.inside_grid:  # pairs the grid leaves to the pairwise path, correlation +-1 aside
                self.fallback_pairs += int((~infinite._unit_correlation(s1, s2, c)).sum())
            return expect_pairs(act, s1, s2, c, *args)

        def counted_tables(act, q, order, terms):
            self.series_terms.append(terms)
            return tables(act, q, order, terms)

        self.inside_grid = False
        monkeypatch.setattr(infinite._Grid, "expect", self._flagged(counted_expect))
        monkeypatch.setattr(infinite, "_expect_pairs", counted_pairs)
        monkeypatch.setattr(infinite, "_series_tables", counted_tables)

    def _flagged(self, fn):
        def run(grid, *args):
            self.inside_grid = True
            try:
                return fn(grid, *args)
            finally:
                self.inside_grid = False
        return run

    def grid(self, f):
        """f() with every set of pairs on the grid, in blocks of 8 x 8."""
        self.mp.setattr(infinite, "_GRID_MIN_PAIRS", 1)
        self.mp.setattr(infinite, "_GRID_MIN_FILL", 0.0)
        self.mp.setattr(infinite, "_GRID_BLOCK_ROWS", 8)
        self.mp.setattr(infinite, "_GRID_BLOCK", 64)
        calls = self.grid_calls
        out = f()
        assert self.grid_calls > calls, "the grid was not used"
        return out

    def pairwise(self, f):
        self.mp.setattr(infinite, "_GRID_MIN_PAIRS", 10 ** 9)
        calls = self.grid_calls
        out = f()
        assert self.grid_calls == calls
        return out


def _close(a, b, tol=1e-12):
    """a, b (..., N1, N2) agree to tol of the largest entry of each kernel slice."""
    scale = b.abs().flatten(-2).amax(-1)[..., None, None]
    err = ((a - b).abs() / scale).max().item()
    assert err < tol, err


ALL_KINDS = ("ntk", "nngp_x2", "layerwise_x2", "standard")


@pytest.mark.parametrize("activation,sw,sb,kinds", [
    ("tanh", 1.5, 0.1, ALL_KINDS), ("gelu", 1.6, 0.2, ALL_KINDS), ("sigmoid", 3.0, 0.3, ("ntk", "layerwise_x2")),
    ("silu", 1.7, 0.1, ("ntk", "layerwise_x2")), ("softplus", 1.2, 0.1, ("ntk", "nngp_x2")),
])
def test_grid_matches_pairwise(activation, sw, sb, kinds, monkeypatch):
    """NNGP, NTK, layerwise, both parametrizations, x2 given or not: the grid
    and the pair-by-pair path agree far below the 1e-10 promise; x2 = None stays exactly symmetric."""
    paths = _Paths(monkeypatch)
    x1 = _raw_inputs(21, 16, seed=1)
    x2 = _raw_inputs(13, 16, seed=2)
    kw = dict(depth=4, activation=activation, sigma_w=sw, sigma_b=sb, method="quadrature")
    calls = {"ntk": lambda: infinite.ntk(x1, **kw),
             "nngp_x2": lambda: infinite.nngp(x1, x2, **kw),
             "layerwise_x2": lambda: infinite.ntk(x1, x2, layerwise=True, **kw),
             "standard": lambda: infinite.ntk(x2, parametrization="standard", widths=[40, 50, 60], **kw)}

    def kernels():
        return [calls[kind]() for kind in kinds]

    grid = paths.grid(kernels)
    pairwise = paths.pairwise(kernels)
    for kind, a, b in zip(kinds, grid, pairwise):
        _close(a, b)
        if kind in ("ntk", "standard"):
            assert torch.equal(a, a.T)
    assert paths.fallback_pairs < 0.02 * paths.grid_pairs  # all but a few pairs of close small inputs by the series


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "erf"])
def test_grid_quadrature_matches_closed_forms(activation, monkeypatch):
    """The grid's series against an exact answer: relu (a kink: slowly
    decaying coefficients), leaky_relu and erf by quadrature against their closed forms."""
    paths = _Paths(monkeypatch)
    x1 = _raw_inputs(20, 16, seed=11)
    x2 = _raw_inputs(9, 16, seed=12)
    kw = dict(depth=4, activation=activation, sigma_w=1.4, sigma_b=0.1)
    for f in (lambda **k: infinite.ntk(x1, **k), lambda **k: infinite.nngp(x1, x2, **k)):
        _close(paths.grid(lambda: f(method="quadrature", **kw)), f(method="closed", **kw), tol=1e-12)


def test_unit_and_near_unit_correlations_fall_back(monkeypatch):
    """Duplicated inputs (correlation 1 at every layer), multiples of each
    other (correlation +-1 at layer 1, sigma_b = 0) and nearly collinear
    inputs of different norms: the pairs at correlation +-1 take the 1-D
    rule, those the series cannot resolve (tanh at large variance, where it
    converges slowly) the pairwise path, the rest the grid's series."""
    paths = _Paths(monkeypatch)
    x1 = _raw_inputs(12, 5, seed=3)
    x2 = torch.cat([x1[6:8], 1.7 * x1[:3], -0.6 * x1[3:4], 2.3 * x1[4:6] + 1e-5 * _raw_inputs(2, 5, seed=4),
                    _raw_inputs(6, 5, seed=5)])
    x1_dup = torch.cat([x1, x1[:1], 1.3 * x1[1:3]])
    kw = dict(depth=3, activation="tanh", sigma_w=3.0, sigma_b=0.0)

    def kernels():
        return [infinite.ntk(x1, x2, **kw), infinite.nngp(x1_dup, **kw)]

    grid = paths.grid(kernels)
    assert paths.fallback_pairs > 0
    pairwise = paths.pairwise(kernels)
    for a, b in zip(grid, pairwise):
        _close(a, b)
    assert torch.equal(grid[1], grid[1].T)


def test_large_variance_takes_longer_tables(monkeypatch):
    """tanh at sigma_w = 4 is nearly a sign function: 64 terms do not resolve
    most pairs and the grid moves on to longer tables; still exact."""
    paths = _Paths(monkeypatch)
    x = _raw_inputs(16, 3, seed=6)
    kw = dict(depth=3, activation="tanh", sigma_w=4.0, sigma_b=0.1)
    grid = paths.grid(lambda: infinite.ntk(x, **kw))
    assert max(paths.series_terms) > infinite._GRID_TERMS[0]
    _close(grid, paths.pairwise(lambda: infinite.ntk(x, **kw)))


@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_grid_matches_reference(activation, monkeypatch):
    """Off-diagonal entries of raw inputs against the independent reference."""
    paths = _Paths(monkeypatch)
    x = _raw_inputs(6, 3, seed=7)
    kw = dict(depth=3, activation=activation, sigma_w=1.5, sigma_b=0.1)
    k = paths.grid(lambda: infinite.ntk(x, **kw))
    for i, j in ((0, 1), (2, 5))[:2 if activation == "tanh" else 1]:
        sq1, sq2, dot = float(x[i] @ x[i]), float(x[j] @ x[j]), float(x[i] @ x[j])
        _, want = reference.kernel(activation, sq1, sq2, dot, 3, 3, 1.5, 0.1)
        assert abs(k[i, j].item() - want) <= 1e-11 * math.sqrt(k[i, i].item() * k[j, j].item())


@pytest.mark.parametrize("activation,q", [("tanh", 3.0), ("gelu", 0.7), ("softplus", 40.0), ("sigmoid", 8.0)])
def test_series_tables_bound_the_tails(activation, q):
    """The relative tails of a 64-term table bound what the 512-term
    expansion leaves out from K on (and are not far above it), and the
    blockwise Horner sum with the terms :func:`_block_terms` chooses is
    within the budget of the 512-term sum."""
    act = infinite._Act(activation)
    qs = torch.tensor([q, 1.3 * q], dtype=D)
    full = infinite._hermite_coefficients(act, qs, 16, tails=True)
    tables = infinite._series_tables(act, qs, 16, 64)
    g = torch.Generator().manual_seed(8)
    for (coef, rel, tail, valid), (a, norm2, rest2) in zip(tables, full):
        assert valid.all()
        # correlations up to where 64 terms meet the budget (the grid leaves larger ones to _expect_pairs)
        cut = min(0.9, (infinite._GRID_BUDGET / (tail[0, 64] * tail[1, 64]).sqrt().item()) ** (1 / 64))
        assert cut > 0.3
        rho = (2 * torch.rand(5, 7, generator=g, dtype=D) - 1) * cut
        powers = rho[..., None] ** torch.arange(infinite._SERIES_TERMS, dtype=D)
        beyond = torch.flip(torch.cumsum(torch.flip(a * a, [1]), 1), [1]) + rest2[:, None]
        true_tail = beyond[:, :65] / norm2[:, None]
        assert (tail >= true_tail).all()
        assert (tail <= 3 * true_tail + 1e-26).all()  # and not vacuously large
        kept = infinite._block_terms(rel[0], rel[1], tail[0], tail[1], float(rho.abs().max()))
        got = infinite._horner(coef[:1].T.expand(-1, 5).contiguous(), coef[1:].T.expand(-1, 7).contiguous(),
                               rho, kept)
        want = (a[0] * a[1] * powers).sum(-1)
        assert ((got - want).abs() <= 2 * infinite._GRID_BUDGET * norm2.prod().sqrt()).all()
