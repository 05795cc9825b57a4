"""fastntk.infinite: infinite-width NNGP / NTK kernels and order parameters.

Checks, each against something computed independently here:
- hand-written arc-cosine formulas (ReLU NTK at depth 1 and 2, both
  parametrizations) and DESIGN.md's exact finite-width facts;
- the quadrature path against the closed forms (relu, leaky_relu, erf,
  identity) and, for the smooth activations, against plain Gauss-Hermite
  with torch.nn.functional activations and autograd derivatives;
- Monte Carlo means of the empirical NTK of hand-written float64 MLPs
  (torch.func.jacrev, not the fastntk engine), per layer and term, with a
  tolerance from the sample standard error, and the same check rejecting
  perturbed formulas;
- the order-parameter maps (fixed points, chi_1, phases, edge of chaos);
- an independent adaptive quadrature (tests/infinite_reference.py) for every
  activation, at small and large variances, correlations near 1, depth 11,
  ordered and chaotic phases (a table computed once, plus live diagonals);
- the angle interpolation against the pair-by-pair computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import infinite_reference as reference
from fastntk import infinite
from infinite_reference import REFERENCE

D = torch.float64
SMOOTH = ("tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "softplus")


def _inputs(n, n0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n0, generator=g, dtype=D)


def _arccos_pair(s, sp, c):
    """(E[relu(u) relu(v)], E[relu'(u) relu'(v)]) written out (Cho & Saul)."""
    t = math.acos(max(-1.0, min(1.0, c / math.sqrt(s * sp))))
    return (math.sqrt(s * sp) * (math.sin(t) + (math.pi - t) * math.cos(t)) / (2 * math.pi),
            (math.pi - t) / (2 * math.pi))


# ---------------------------------------------------------------------------
# closed forms by hand


X_HAND = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, -1.0, 2.0, 1.0]])


@pytest.mark.parametrize("sw,sb", [(1.0, 0.0), (1.3, 0.4)])
def test_depth1_is_linear_kernel(sw, sb):
    x, y = X_HAND
    n0 = len(x)
    k = infinite.ntk(X_HAND, depth=1, sigma_w=sw, sigma_b=sb)
    assert k[0, 1].item() == pytest.approx(sw**2 * (x @ y) / n0 + sb**2, rel=1e-14)
    ks = infinite.ntk(X_HAND, depth=1, sigma_w=sw, sigma_b=sb, parametrization="standard")
    assert ks[0, 1].item() == pytest.approx(x @ y + 1.0, rel=1e-14)
    assert infinite.nngp(X_HAND, depth=1, sigma_w=sw, sigma_b=sb)[0, 1].item() == pytest.approx(
        sw**2 * (x @ y) / n0 + sb**2, rel=1e-14)


@pytest.mark.parametrize("sw,sb", [(math.sqrt(2), 0.0), (1.3, 0.4)])
def test_relu_depth2_by_hand(sw, sb):
    x, y = X_HAND
    n0, n1 = len(x), 37
    s, sp, c = (sw**2 * v / n0 + sb**2 for v in (x @ x, y @ y, x @ y))
    e, de = _arccos_pair(s, sp, c)
    sigma2 = sw**2 * e + sb**2
    dsigma2 = sw**2 * de
    theta = c * dsigma2 + sigma2  # Theta^2 = Theta^1 dSigma^2 + Sigma^2
    assert infinite.nngp(X_HAND, depth=2, sigma_w=sw, sigma_b=sb)[0, 1].item() == pytest.approx(sigma2, rel=1e-13)
    assert infinite.ntk(X_HAND, depth=2, sigma_w=sw, sigma_b=sb)[0, 1].item() == pytest.approx(theta, rel=1e-13)
    # standard: layer 1 weight <x,x'> and bias 1, times dSigma^2; layer 2 weight n_1 E[relu relu], bias 1
    theta_std = (x @ y + 1.0) * dsigma2 + n1 * e + 1.0
    got = infinite.ntk(X_HAND, depth=2, sigma_w=sw, sigma_b=sb, parametrization="standard", widths=[n1])
    assert got[0, 1].item() == pytest.approx(theta_std, rel=1e-13)
    # diagonal: t = 0
    assert infinite.ntk(X_HAND, depth=2, sigma_w=sw, sigma_b=sb)[0, 0].item() == pytest.approx(
        s * sw**2 / 2 + sw**2 * s / 2 + sb**2, rel=1e-13)


@pytest.mark.parametrize("width", [10, 100])
@pytest.mark.parametrize("sw2,expected", [(1.0, 2.25), (2.0, 10.0), (3.0, 38.5)])
def test_design_finite_width_facts(width, sw2, expected):
    """DESIGN.md: standard param, ReLU, sigma_b = 0, n_0 = M, |x| = 1, L = 5:
    E[Theta(x, x)] = 2.25, 10, 38.5 (= 5 r^4 + sum_j r^j, r = sigma_w^2 / 2)."""
    x = _inputs(1, width, seed=3)
    x = x / x.norm()
    k = infinite.ntk(x, depth=5, sigma_w=math.sqrt(sw2), parametrization="standard", widths=width)
    r = sw2 / 2
    assert 5 * r**4 + sum(r**j for j in range(5)) == pytest.approx(expected, rel=1e-15)
    assert k.item() == pytest.approx(expected, rel=1e-13)


def test_design_homogeneity_layerwise():
    """sigma_w^2 -> s sigma_w^2 scales every weight term by s^(L-1) and layer
    l's bias term by s^(L-l) (standard param, ReLU, sigma_b = 0)."""
    L, s = 5, 1.7
    x = _inputs(3, 12, seed=4)
    kw = dict(depth=L, parametrization="standard", widths=[30, 20, 25, 12])
    a = infinite.ntk(x, sigma_w=1.1, layerwise=True, **kw)
    b = infinite.ntk(x, sigma_w=1.1 * math.sqrt(s), layerwise=True, **kw)
    for l in range(1, L + 1):
        torch.testing.assert_close(b[l - 1, 0], a[l - 1, 0] * s ** (L - 1), rtol=1e-12, atol=0)
        torch.testing.assert_close(b[l - 1, 1], a[l - 1, 1] * s ** (L - l), rtol=1e-12, atol=0)


@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_layerwise_sums_to_total(parametrization, activation):
    x1, x2 = _inputs(4, 5, seed=1), _inputs(3, 5, seed=2)
    kw = dict(depth=4, activation=activation, sigma_w=1.4, sigma_b=0.3,
              parametrization=parametrization, widths=[50, 60, 70])
    lw = infinite.ntk(x1, x2, layerwise=True, **kw)
    assert lw.shape == (4, 2, 4, 3) and lw.dtype == D
    torch.testing.assert_close(lw.sum((0, 1)), infinite.ntk(x1, x2, **kw), rtol=1e-14, atol=0)
    # last layer's bias term is beta_L^2 (ntk) or 1 (standard): df/db^L = beta_L
    expected = 0.3**2 if parametrization == "ntk" else 1.0
    torch.testing.assert_close(lw[-1, 1], torch.full_like(lw[-1, 1], expected), rtol=1e-15, atol=0)
    if parametrization == "ntk":
        lw0 = infinite.ntk(x1, x2, layerwise=True, **{**kw, "sigma_b": 0.0})
        assert torch.all(lw0[:, 1] == 0)


def test_symmetric_and_input_types():
    x = _inputs(5, 3, seed=5)
    for act in ("relu", "tanh"):
        a = infinite.ntk(x, depth=3, activation=act, sigma_b=0.2)
        b = infinite.ntk(x.numpy(), x.float(), depth=3, activation=act, sigma_b=0.2)
        assert a.dtype == D and a.device.type == "cpu" and a.shape == (5, 5)
        assert torch.equal(a, a.T)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # x.float() rounds the inputs
    # nngp does not depend on the parametrization
    torch.testing.assert_close(infinite.nngp(x, depth=3), infinite.nngp(x, depth=3, parametrization="standard",
                                                                       widths=7), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# quadrature


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "erf", "identity"])
def test_quadrature_matches_closed_form(activation):
    x1, x2 = _inputs(6, 4, seed=6), _inputs(5, 4, seed=7)
    x2[0] = x1[0]  # an exactly correlated pair (rho = 1) off the diagonal
    kw = dict(depth=4, activation=activation, sigma_w=1.2, sigma_b=0.3, negative_slope=0.2)
    for f in (infinite.nngp, infinite.ntk):
        for args in ((x1, x2), (x1,)):
            exact = f(*args, method="closed", **kw)
            quad = f(*args, method="quadrature", **kw)
            err = (quad - exact).abs() / exact.abs().max()
            # including the pair x2[0] = x1[0], whose correlation is 1 up to rounding of
            # the Gram matrix: both paths take it as exactly 1 (the 1-D rule)
            assert err.max().item() < 1e-12, (f.__name__, len(args), err.max().item())


def _gh_pair(phi, s, sp, c, order=300):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) by plain Gauss-Hermite (numpy
    nodes) with phi from torch.nn.functional and phi' from autograd. Plain
    Gauss-Hermite converges slowly for tanh (poles near the real axis): 120
    nodes are off by 1.6e-10 here, 300 by < 1e-13."""
    z, w = np.polynomial.hermite.hermgauss(order)
    z, w = torch.from_numpy(z * math.sqrt(2)), torch.from_numpy(w / math.sqrt(math.pi))
    rho = c / math.sqrt(s * sp)
    u = math.sqrt(s) * z[:, None] + 0 * z[None, :]
    v = math.sqrt(sp) * (rho * z[:, None] + math.sqrt(1 - rho * rho) * z[None, :])
    ww = w[:, None] * w[None, :]

    def d(t):
        t = t.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(phi(t).sum(), t)
        return g

    return (ww * phi(u) * phi(v)).sum().item(), (ww * d(u) * d(v)).sum().item()


TORCH_PHI = {
    "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu, "softplus": F.softplus,
}


@pytest.mark.parametrize("activation", SMOOTH)
def test_quadrature_smooth_activations_vs_gauss_hermite(activation):
    sw, sb = 1.2, 0.3
    x, y = X_HAND
    n0 = len(x)
    s, sp, c = (sw**2 * v / n0 + sb**2 for v in (x @ x, y @ y, x @ y))
    e, de = _gh_pair(TORCH_PHI[activation], s, sp, c)
    e_xx, _ = _gh_pair(TORCH_PHI[activation], s, s, s * (1 - 1e-15))
    kw = dict(depth=2, activation=activation, sigma_w=sw, sigma_b=sb)
    sig = infinite.nngp(X_HAND, **kw)
    th = infinite.ntk(X_HAND, **kw)
    assert sig[0, 1].item() == pytest.approx(sw**2 * e + sb**2, rel=1e-9)
    assert sig[0, 0].item() == pytest.approx(sw**2 * e_xx + sb**2, rel=1e-9)
    assert th[0, 1].item() == pytest.approx(c * sw**2 * de + sw**2 * e + sb**2, rel=1e-9)


# ---------------------------------------------------------------------------
# Monte Carlo against the empirical NTK (torch.func, independent of the engine)


def _mlp_init(widths, parametrization, sw, sb, gen):
    params = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        w = torch.randn(n_out, n_in, generator=gen, dtype=D)
        b = torch.randn(n_out, generator=gen, dtype=D)
        if parametrization == "standard":
            w, b = w * sw / math.sqrt(n_in), b * sb
        params.append((w, b))
    return params


def _mlp(params, x, phi, parametrization, sw, sb):
    a = x
    for l, (w, b) in enumerate(params):
        if parametrization == "ntk":
            h = sw / math.sqrt(w.shape[1]) * a @ w.T + sb * b
        else:
            h = a @ w.T + b
        a = phi(h) if l < len(params) - 1 else h
    return h[:, 0]


def _empirical_layerwise(params, x, phi, parametrization, sw, sb):
    """(L, 2, N, N): each weight matrix's and bias's contribution J J^T."""
    jac = torch.func.jacrev(lambda p: _mlp(p, x, phi, parametrization, sw, sb))(params)
    n = x.shape[0]
    return torch.stack([torch.stack([j.reshape(n, -1) @ j.reshape(n, -1).T for j in layer]) for layer in jac])


def _mc_samples(widths, activation, parametrization, sw, sb, n_init, seed):
    phi = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    x = _inputs(3, widths[0], seed=seed)
    x[2] = 0.8 * x[0] + 0.6 * x[1]  # a correlated pair too
    gen = torch.Generator().manual_seed(seed)
    samples = torch.stack([
        _empirical_layerwise(_mlp_init(widths, parametrization, sw, sb, gen), x, phi, parametrization, sw, sb)
        for _ in range(n_init)])
    return x, samples


def _mc_agrees(samples, analytic, n_se=4.0, rel_bias=0.01):
    """Does the mean over inits match ``analytic`` entrywise, within n_se
    standard errors plus a finite-width bias allowance of rel_bias of the
    term's scale (E[Theta] at width n differs from the limit by O(1/n))?
    Checked on the total kernel and on every layer's weight and bias term."""
    def ok(s, a):
        mean, se = s.mean(0), s.std(0) / math.sqrt(s.shape[0])
        tol = n_se * se + rel_bias * a.abs().max() + 1e-12
        return bool(torch.all((mean - a).abs() <= tol))

    return ok(samples.sum((1, 2)), analytic.sum((0, 1))) and all(
        ok(samples[:, l, t], analytic[l, t]) for l in range(analytic.shape[0]) for t in range(2))


MC_CASES = {
    # name: (widths, activation, parametrization, sigma_w, sigma_b)
    "ntk-relu": ([5, 512, 512, 1], "relu", "ntk", math.sqrt(2), 0.3),
    "ntk-tanh": ([5, 512, 512, 1], "tanh", "ntk", 1.5, 0.3),
    "standard-relu": ([5, 384, 256, 1], "relu", "standard", math.sqrt(2), 0.3),
}


@pytest.fixture(scope="module")
def mc_data():
    return {name: _mc_samples(w, a, p, sw, sb, n_init=32, seed=11 + i)
            for i, (name, (w, a, p, sw, sb)) in enumerate(MC_CASES.items())}


@pytest.mark.parametrize("case", list(MC_CASES))
def test_monte_carlo_matches_analytic(case, mc_data):
    widths, activation, parametrization, sw, sb = MC_CASES[case]
    x, samples = mc_data[case]
    kw = dict(depth=len(widths) - 1, activation=activation, parametrization=parametrization,
              widths=widths[1:-1], layerwise=True)
    analytic = infinite.ntk(x, sigma_w=sw, sigma_b=sb, **kw)
    assert _mc_agrees(samples, analytic)


@pytest.mark.parametrize("case", list(MC_CASES))
@pytest.mark.parametrize("perturb", ["sigma_w", "sigma_b", "activation"])
def test_monte_carlo_check_rejects_wrong_formula(case, perturb, mc_data):
    """The statistical check has power: a slightly wrong kernel fails it."""
    widths, activation, parametrization, sw, sb = MC_CASES[case]
    x, samples = mc_data[case]
    kw = dict(depth=len(widths) - 1, parametrization=parametrization, widths=widths[1:-1], layerwise=True)
    if perturb == "sigma_w":
        wrong = infinite.ntk(x, activation=activation, sigma_w=1.05 * sw, sigma_b=sb, **kw)
    elif perturb == "sigma_b":
        wrong = infinite.ntk(x, activation=activation, sigma_w=sw, sigma_b=2 * sb, **kw)
    else:  # a close relative of the activation
        other = {"relu": ("leaky_relu", {"negative_slope": 0.2}), "tanh": ("erf", {})}[activation]
        wrong = infinite.ntk(x, activation=other[0], sigma_w=sw, sigma_b=sb, **other[1], **kw)
    assert not _mc_agrees(samples, wrong)


# ---------------------------------------------------------------------------
# order parameters


def test_length_map_and_fixed_points():
    q = np.array([0.0, 0.5, 2.0])
    np.testing.assert_allclose(infinite.length_map(q, "relu", 1.3, 0.2), 1.69 * q / 2 + 0.04, rtol=1e-14)
    np.testing.assert_allclose(infinite.length_map(q, "erf", 1.3, 0.2),
                               1.69 * 2 / np.pi * np.arcsin(2 * q / (1 + 2 * q)) + 0.04, rtol=1e-14)
    np.testing.assert_allclose(infinite.length_map(q, "erf", 1.3, 0.2, method="quadrature"),
                               infinite.length_map(q, "erf", 1.3, 0.2), rtol=1e-12)
    assert isinstance(infinite.length_map(0.7, "tanh", 1.0, 0.0), float)
    # relu: q* = sigma_b^2 / (1 - sigma_w^2 / 2) below the EOC, 0 without bias, infinite above
    assert infinite.fixed_point_q("relu", 1.0, 0.5) == pytest.approx(0.25 / 0.5, rel=1e-12)
    assert infinite.fixed_point_q("relu", 1.0, 0.0) == 0.0
    assert infinite.fixed_point_q("relu", 1.5, 0.1) == math.inf
    assert infinite.fixed_point_q("relu", math.sqrt(2), 0.0, q0=3.0) == 3.0
    for act in ("tanh", "erf", "sigmoid"):
        qs = infinite.fixed_point_q(act, 1.5, 0.3)
        assert 0 < qs < math.inf
        assert infinite.length_map(qs, act, 1.5, 0.3) == pytest.approx(qs, rel=1e-10)
    assert infinite.fixed_point_q("tanh", 0.9, 0.0) == 0.0


def test_chi1_phase_and_correlation_map():
    assert infinite.chi1("relu", math.sqrt(2), 0.0) == pytest.approx(1.0, abs=1e-14)
    assert [infinite.phase("relu", math.sqrt(s), 0.0) for s in (1.0, 2.0, 3.0)] == [
        "ordered", "edge_of_chaos", "chaotic"]
    assert infinite.chi1("leaky_relu", 1.3, 0.4, negative_slope=0.2) == pytest.approx(1.69 * 1.04 / 2, rel=1e-14)
    # tanh / erf with sigma_b = 0 in the ordered phase: q* = 0, chi1 = sigma_w^2 phi'(0)^2
    assert infinite.chi1("tanh", 0.9, 0.0) == pytest.approx(0.81, rel=1e-12)
    assert infinite.chi1("erf", 0.8, 0.0) == pytest.approx(0.64 * 4 / math.pi, rel=1e-12)
    # chi1 is the slope of the correlation map at c = 1, which is a fixed point
    for act, sw, sb in (("tanh", 1.5, 0.3), ("erf", 1.2, 0.1), ("relu", 1.3, 0.3)):
        assert infinite.correlation_map(1.0, act, sw, sb) == pytest.approx(1.0, rel=1e-9)
        h = 1e-5
        c = np.array([1 - 2 * h, 1 - h])
        m = infinite.correlation_map(c, act, sw, sb)
        slope = (3 - 4 * m[1] + m[0]) / (2 * h)  # one-sided, second order
        assert slope == pytest.approx(infinite.chi1(act, sw, sb), rel=1e-3 if act == "relu" else 1e-5)
    # relu without bias: the variance is not at a fixed point, the normalized map has slope 1
    m = infinite.correlation_map(np.array([1 - 2e-5, 1 - 1e-5]), "relu", 1.3, 0.0)
    assert (3 - 4 * m[1] + m[0]) / 2e-5 == pytest.approx(1.0, rel=1e-3)
    with pytest.raises(ValueError, match="pass q"):
        infinite.correlation_map(0.5, "relu", 1.5, 0.1)  # q* is infinite


def test_eoc_curve():
    assert infinite.eoc_curve("tanh", 0.0) == pytest.approx(1.0, abs=1e-6)
    assert infinite.eoc_curve("erf", 0.0) == pytest.approx(math.pi / 4, abs=1e-6)
    np.testing.assert_allclose(infinite.eoc_curve("relu", [0.0, 0.1]), [2.0, 2.0], rtol=1e-10)
    sb2 = 0.05
    sw2 = infinite.eoc_curve("tanh", [sb2])[0]
    assert 1.0 < sw2 < 2.5
    assert infinite.chi1("tanh", math.sqrt(sw2), math.sqrt(sb2)) == pytest.approx(1.0, abs=1e-8)
    assert infinite.phase("tanh", math.sqrt(0.9 * sw2), math.sqrt(sb2)) == "ordered"
    assert infinite.phase("tanh", math.sqrt(1.1 * sw2), math.sqrt(sb2)) == "chaotic"


# ---------------------------------------------------------------------------
# bad input


X_OK = np.ones((2, 3))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(depth=0), ValueError, "depth"),
    (dict(depth=2.0), TypeError, "depth"),
    (dict(depth=2, activation="swish"), ValueError, "activation must be one of .*relu"),
    (dict(depth=2, activation=None), TypeError, "activation"),
    (dict(depth=2, parametrization="mup"), ValueError, "parametrization must be one of ntk, standard"),
    (dict(depth=2, sigma_w=-1.0), ValueError, "sigma_w"),
    (dict(depth=2, sigma_b=float("nan")), ValueError, "sigma_b"),
    (dict(depth=2, sigma_w="1"), TypeError, "sigma_w"),
    (dict(depth=3, parametrization="standard"), ValueError, "widths is required"),
    (dict(depth=3, parametrization="standard", widths=[10]), ValueError, "widths"),
    (dict(depth=3, parametrization="standard", widths=[10, 0]), ValueError, r"widths\[1\]"),
    (dict(depth=2, method="closed", activation="tanh"), ValueError, "method='closed'"),
    (dict(depth=2, method="exact"), ValueError, "method must be one of"),
    (dict(depth=2, quad_order=3), ValueError, "quad_order"),
    (dict(depth=2, negative_slope=float("inf")), ValueError, "negative_slope"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        infinite.ntk(X_OK, **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match="x1 must have shape"):
        infinite.ntk(np.ones(3), depth=2)
    with pytest.raises(ValueError, match="x2 must have shape"):
        infinite.nngp(X_OK, np.ones((1, 2, 3)), depth=2)
    with pytest.raises(ValueError, match="same number of features"):
        infinite.ntk(X_OK, np.ones((2, 4)), depth=2)
    with pytest.raises(ValueError, match="x1 contains NaN"):
        infinite.ntk(np.array([[1.0, float("nan")]]), depth=2)
    with pytest.raises(TypeError, match="x1 must be a torch.Tensor or numpy.ndarray"):
        infinite.ntk([[1.0, 2.0]], depth=2)
    with pytest.raises(TypeError, match="x1 must be real"):
        infinite.ntk(torch.ones(2, 2, dtype=torch.complex128), depth=2)
    with pytest.raises(TypeError, match="layerwise"):
        infinite.ntk(X_OK, depth=2, layerwise=1)
    with pytest.raises(ValueError, match="q must be >= 0"):
        infinite.length_map(-1.0)
    with pytest.raises(ValueError, match="c must lie in"):
        infinite.correlation_map(1.5, "tanh", 1.0, 0.1)
    with pytest.raises(ValueError, match="sigma_b2"):
        infinite.eoc_curve("tanh", [-0.1])
    with pytest.raises(ValueError, match="activation must be one of"):
        infinite.eoc_curve("swish", 0.0)
    with pytest.raises(ValueError, match="q0"):
        infinite.fixed_point_q("tanh", 1.0, 0.0, q0=0.0)
    with pytest.raises(ValueError, match="sigma_w"):
        infinite.chi1("relu", -1.0)
    with pytest.raises(ValueError, match="tol"):
        infinite.phase("relu", 1.0, tol=-1.0)


# ---------------------------------------------------------------------------
# accuracy against an independent reference (tests/infinite_reference.py:
# adaptive Gauss-Kronrod in pre-activation units, scalar math activations)


ALL_QUADRATURE = SMOOTH + ("erf", "relu")


def _pair_inputs(sq1, sq2, dot, n0):
    """Two inputs with squared norms sq1, sq2 and inner product dot in n0 >= 2 features."""
    x = torch.zeros(2, n0, dtype=D)
    x[0, 0] = math.sqrt(sq1)
    x[1, 0] = dot / math.sqrt(sq1)
    x[1, 1] = math.sqrt(max(sq2 - x[1, 0].item() ** 2, 0.0))
    return x


def _case_inputs(sq1, sq2, dot, n0):
    if n0 == 1:  # the kernel sees |x|^2 / n0 only: the same case in two features
        sq1, sq2, dot, n0 = 2 * sq1, 2 * sq2, 2 * dot, 2
    return _pair_inputs(sq1, sq2, dot, n0)


@pytest.mark.parametrize("case", list(REFERENCE), ids=lambda c: f"{c[0]}-L{c[5]}-sw{c[6]:g}")
def test_kernels_match_reference_table(case):
    """Every activation, depths to 11, variances from ~1e-2 to 1e6, correlations
    up to 1 - 1e-5, ordered and chaotic: within 1e-10 of the kernel's scale (the docstring's promise)."""
    activation, sq1, sq2, dot, n0, depth, sw, sb = case
    want_nngp, want_ntk = REFERENCE[case]
    x = _case_inputs(sq1, sq2, dot, n0)
    methods = ("closed", "quadrature") if activation in infinite.CLOSED_FORM_ACTIVATIONS else ("quadrature",)
    for method in methods:
        kw = dict(depth=depth, activation=activation, sigma_w=sw, sigma_b=sb, method=method)
        for f, want in ((infinite.nngp, want_nngp), (infinite.ntk, want_ntk)):
            k = f(x, **kw)
            scale = math.sqrt(k[0, 0].item() * k[1, 1].item())
            assert abs(k[0, 1].item() - want) <= 1e-10 * scale, (method, f.__name__, k[0, 1].item(), want)
            # the same entry from x2 (a different code path: no symmetry, no diagonal shortcut)
            k12 = f(x[:1], x[1:], **kw)
            assert abs(k12.item() - want) <= 1e-10 * scale


@pytest.mark.parametrize("activation", ALL_QUADRATURE)
@pytest.mark.parametrize("sw,sb", [(1.3, 0.2), (1e3, 0.5)])
def test_diagonal_matches_reference(activation, sw, sb):
    """Diagonal entries (1-D integrals, cheap to reference live) at small and large variance."""
    x = _pair_inputs(1.0, 3.0, 0.5, 2)
    k = infinite.ntk(x, depth=3, activation=activation, sigma_w=sw, sigma_b=sb, method="quadrature")
    for i, sq in enumerate((1.0, 3.0)):
        _, want = reference.kernel(activation, sq, sq, sq, 2, 3, sw, sb)
        assert k[i, i].item() == pytest.approx(want, rel=1e-10)


def test_x2_equal_to_x1_uses_the_1d_rule():
    x = torch.full((1, 20), 3.0, dtype=D)
    want = 7.20227526055416  # independent high-precision value
    assert infinite.ntk(x, depth=2, activation="tanh", sigma_w=1.5).item() == pytest.approx(want, rel=1e-13)
    assert infinite.ntk(x, x, depth=2, activation="tanh", sigma_w=1.5).item() == pytest.approx(want, rel=1e-13)
    xs = torch.nn.functional.normalize(_inputs(6, 5, seed=8), dim=1)
    kw = dict(depth=4, activation="gelu", sigma_w=2.0, sigma_b=0.2)
    torch.testing.assert_close(infinite.ntk(xs, xs, **kw), infinite.ntk(xs, **kw), rtol=1e-13, atol=0)


def test_large_variance_tanh():
    """The domain follows the variance: tanh at sigma_w = 1e4 is a sign function's kernel."""
    x = torch.ones((1, 20), dtype=D)
    got = infinite.ntk(x, depth=2, activation="tanh", sigma_w=1e4).item()
    _, want = reference.kernel("tanh", 20.0, 20.0, 20.0, 20, 2, 1e4, 0.0)
    assert want == pytest.approx(5.32e11, rel=1e-3)
    assert got == pytest.approx(want, rel=1e-10)


def test_relu_scale_safe_and_overflow_messages():
    x = _pair_inputs(1.0, 2.0, 0.3, 3)
    base = infinite.ntk(x, depth=11)
    big = infinite.ntk(x, depth=11, sigma_w=1e8)  # ReLU NTK is homogeneous: sigma_w^(2 L)
    assert torch.isfinite(big).all()
    torch.testing.assert_close(big, base * 1e176, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="sigma_w"):
        infinite.ntk(x, depth=3, sigma_w=1e160)
    with pytest.raises(OverflowError, match="sigma_w=1e\\+10.*depth=30"):
        infinite.ntk(x, depth=30, sigma_w=1e10)
    with pytest.raises(OverflowError, match="sigma_w"):
        infinite.ntk(x, depth=40, sigma_w=1e10, activation="erf")  # bounded phi: Theta grows 1e10 per layer


def test_relu_quadrature_near_unit_correlation():
    c = 0.99999
    x = torch.tensor([[1.0, 0.0], [c, math.sqrt(1 - c * c)]], dtype=D)
    for f in (infinite.nngp, infinite.ntk):
        exact = f(x, depth=3, method="closed")
        quad = f(x, depth=3, method="quadrature")
        assert ((quad - exact).abs() / exact.abs().max()).max().item() < 1e-12


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_angle_interpolation_matches_pairwise(activation, monkeypatch):
    """Many normalized inputs go through the angle interpolant; the same
    entries computed pair by pair agree to far below 1e-9."""
    x1 = torch.nn.functional.normalize(_inputs(24, 8, seed=9), dim=1)
    x2 = torch.nn.functional.normalize(_inputs(12, 8, seed=10), dim=1)
    x2[0] = x1[3]
    kw = dict(depth=5, activation=activation, sigma_w=1.6, sigma_b=0.2, method="quadrature")
    std = dict(parametrization="standard", widths=[50, 60, 70, 80])

    def kernels():
        return [infinite.ntk(x1, **kw), infinite.ntk(x1, x2, **kw), infinite.ntk(x1, x2, layerwise=True, **kw),
                infinite.ntk(x1, **kw, **std), infinite.nngp(x1, x2, **kw)]

    fast = kernels()
    monkeypatch.setattr(infinite, "_INTERP_MIN_PAIRS", 10**9)
    slow = kernels()
    for a, b in zip(fast, slow):
        scale = b.abs().max()
        assert ((a - b).abs() / scale).max().item() < 1e-10


def test_quad_order_converged():
    x = torch.nn.functional.normalize(_inputs(4, 4, seed=12), dim=1) * 2
    for activation in ("gelu", "softplus"):
        kw = dict(depth=6, activation=activation, sigma_w=2.5, sigma_b=0.1)
        a, b = infinite.ntk(x, **kw), infinite.ntk(x, quad_order=24, **kw)
        assert ((a - b).abs() / b.abs().max()).max().item() < 1e-11


def test_eoc_curve_vectorized():
    sb2 = np.array([0.02, 0.1, 0.3])
    together = infinite.eoc_curve("erf", sb2)
    for s, w in zip(sb2, together):
        assert infinite.eoc_curve("erf", float(s)) == pytest.approx(w, rel=1e-11)
        assert infinite.chi1("erf", math.sqrt(w), math.sqrt(s)) == pytest.approx(1.0, abs=1e-9)


def test_public_functions_documented_and_thread_setting_untouched():
    public = (infinite.nngp, infinite.ntk, infinite.length_map, infinite.fixed_point_q, infinite.chi1,
              infinite.correlation_map, infinite.phase, infinite.eoc_curve)
    for f in public:
        assert f.__doc__ and "Parameters" in f.__doc__ and "<_" not in f.__doc__, f.__name__
    threads = torch.get_num_threads()
    infinite.ntk(X_OK, depth=2, activation="tanh")
    with pytest.raises(ValueError):
        infinite.ntk(X_OK, depth=0)
    assert torch.get_num_threads() == threads
