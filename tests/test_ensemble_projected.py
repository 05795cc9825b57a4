"""ensemble_ntk(sampler="projected"): the algebra of the Gaussian conditioning is
exact (fed the projections of explicit weights, it reproduces fastntk.ntk on
those MLPs), and the random draws give the seeded sampler's kernel
distribution (means, variances, dispersions within their standard errors)."""

import math
from statistics import NormalDist

import pytest
import torch

import fastntk
from fastntk import _projected
from fastntk.ensemble import _init_stds, ensemble_ntk, init_weights
from fastntk.models import Activation

F64 = torch.float64


def _weight_source(weights: dict, biases):
    """A source giving, instead of fresh normals, the projections of explicit
    weights: G = W Q, Y = Q_d^T W, so that the projected engine must reproduce
    the networks themselves. ``weights[d]`` are the layers of the depth-d network."""
    hidden = weights[max(weights)][:-1]

    def source(key, basis):
        kind, l = key[0], key[-1]
        if kind == "W":
            return hidden[l]
        if kind == "G":
            return hidden[l] @ basis
        if kind == "b":
            return biases[l]
        if kind == "head":
            return weights[l][-1]
        assert kind == "Y"
        return basis.transpose(1, 2) @ hidden[l]

    return source


def _projected_from_weights(widths, depths, x1, x2, seeds, *, activation, parametrization, sigma_w, sigma_b, bias,
                            outputs, project):
    k = widths[-1]
    weights = {d: init_weights(widths[:d + 1] + [k], seeds, parametrization=parametrization, sigma_w=sigma_w,
                               sigma_b=sigma_b, bias=bias)[0] for d in depths}
    biases = init_weights(widths, seeds, parametrization=parametrization, sigma_w=sigma_w, sigma_b=sigma_b,
                          bias=bias)[1]
    x = x1 if x2 is None else torch.cat([x1, x2])
    w_stds, b_std = _init_stds(widths, parametrization, sigma_w, sigma_b)
    lay = _projected.layout(widths, depths, x.shape[0], w_stds=w_stds, b_std=b_std, biased=bias and sigma_b > 0,
                            project=project)
    ntk_param = parametrization == "ntk"
    scales = [sigma_w / math.sqrt(n) if ntk_param else 1.0 for n in widths[:-1]]
    bias_scales = [(sigma_b if ntk_param else 1.0) if bias else 0.0 for _ in widths[1:]]
    n1 = None if x2 is None else x1.shape[0]
    with torch.no_grad():
        out = dict(_projected.kernels(_weight_source(weights, biases), lay, len(seeds), depths, scales, bias_scales,
                                      Activation(activation), x, n1, outputs, True))
    return out, lay


def _rel(a, ref):
    return ((a - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("widths,n1,n2,activation,param,sigma_b,bias,outputs,project", [
    # layers with N >= n_in (no Y) and N < n_in (Y), N K above and below n_out
    ([3, 6, 2, 5, 2], 4, None, "relu", "standard", 0.0, True, "full", True),
    ([3, 6, 2, 5, 2], 3, 1, "tanh", "ntk", 0.3, True, "per_output", True),
    ([4, 12, 10, 9, 3], 2, None, "erf", "standard", 0.2, True, "trace", None),
    ([4, 12, 10, 9, 3], 2, 1, "gelu", "ntk", 0.0, False, "full", True),
    ([5, 9, 9, 9, 9, 1], 2, 2, "relu", "ntk", 0.1, True, "trace", None),
    ([5, 9, 9, 9, 9, 1], 3, None, "softplus", "standard", 0.0, False, "per_output", True),
])
def test_projections_of_the_weights_reproduce_the_mlps(widths, n1, n2, activation, param, sigma_b, bias, outputs,
                                                        project):
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(n1, widths[0], generator=g, dtype=F64)
    x2 = None if n2 is None else torch.randn(n2, widths[0], generator=g, dtype=F64)
    seeds = [5, 0, 11]
    kw = dict(activation=activation, parametrization=param, sigma_w=1.4, sigma_b=sigma_b, bias=bias)
    depths = [0, 1, len(widths) - 2]
    got, lay = _projected_from_weights(widths, depths, x1, x2, seeds, outputs=outputs, project=project, **kw)
    assert any(key[0] == "Y" for key in lay.slots)  # the P_perp term is exercised
    for d in depths:
        wd = widths[:d + 1] + [widths[-1]]
        ref = torch.stack([fastntk.ntk(fastntk.MLP(wd, seed=s, dtype=F64, **kw), x1, x2, outputs=outputs,
                                       layerwise=True) for s in seeds])
        assert got[d].shape == ref.shape
        assert _rel(got[d], ref) < 1e-12, d


def test_projection_of_duplicate_and_zero_inputs():
    """Rank-deficient signals (x2 = x1, a zero input whose activations are all
    zero) keep the algebra exact: Householder Q is orthonormal whatever the rank."""
    widths = [4, 10, 10, 10, 2]
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    x[1] = 0.0
    seeds = list(range(6))
    kw = dict(activation="relu", parametrization="standard", sigma_w=1.2, sigma_b=0.0, bias=True)
    got, _ = _projected_from_weights(widths, [4 - 1], x, x.clone(), seeds, outputs="full", project=True, **kw)
    ref = torch.stack([fastntk.ntk(fastntk.MLP(widths, seed=s, dtype=F64, **kw), x, x, outputs="full",
                                   layerwise=True) for s in seeds])
    assert _rel(got[3], ref) < 1e-12


# ---------------------------------------------------------------------------
# distribution


def _z_max(a, b, stat, se):
    """max |a - b| / sqrt(se_a^2 + se_b^2) over the entries."""
    return ((stat(a) - stat(b)).abs() / (se(a) ** 2 + se(b) ** 2).sqrt()).max().item()


def _var_se(st):
    # the sample variance's standard error, sqrt((mu_4 - sigma^4) / n)
    return (st.var ** 2 * (st.kurtosis - 1) / st.n_inits).sqrt()


def test_same_kernel_distribution_as_the_seeded_sampler():
    widths = [3, 12, 12, 12, 2]
    x = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, -0.6, 0.8]], dtype=F64)
    kw = dict(activation="relu", parametrization="standard", sigma_w=math.sqrt(2.0), sigma_b=0.1, outputs="full",
              depths=[1, 3], progress=False)
    seeded = ensemble_ntk(widths, x, seeds=range(3000), **kw)
    projected = ensemble_ntk(widths, x, seeds=range(10_000, 13_000), sampler="projected", **kw)
    diag = torch.eye(2, dtype=torch.bool).expand(3, 3, 2, 2)  # E[Theta_kk'] = 0 for k != k': no dispersion
    tests = {"mean": (lambda s: s.mean, lambda s: s.sem),
             "var": (lambda s: s.var, _var_se),
             "dispersion": (lambda s: s.dispersion[diag], lambda s: s.dispersion_se[diag])}
    # Bonferroni over every entry, statistic and depth, at an overall level 1e-3
    n_tests = len(kw["depths"]) * (2 * diag.numel() + int(diag.sum()))
    z_crit = NormalDist().inv_cdf(1 - 1e-3 / (2 * n_tests))
    for d in kw["depths"]:
        for name, (stat, se) in tests.items():
            z = _z_max(seeded[d], projected[d], stat, se)
            assert z < z_crit, (d, name, z, z_crit)


def test_reproducible_whatever_the_chunking():
    widths = [4, 10, 10, 10, 2]
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    kw = dict(sampler="projected", activation="tanh", sigma_b=0.2, outputs="per_output", keep=True, progress=False)
    seeds = [9, 4, 17, 2, 30]
    one = ensemble_ntk(widths, x, seeds=seeds, chunk=5, threads=1, **kw).kernels
    many = ensemble_ntk(widths, x, seeds=seeds, chunk=2, threads=2, **kw).kernels
    alone = ensemble_ntk(widths, x, seeds=seeds[3:4], **kw).kernels
    assert torch.equal(one, many)
    assert torch.equal(one[3:4], alone)
    assert ensemble_ntk(widths, x, seeds=[1], **kw).kernels.ne(alone).any()


def test_bad_sampler():
    with pytest.raises(ValueError, match="sampler must be one of 'seeded', 'projected'; got 'exact'"):
        ensemble_ntk([3, 4, 1], torch.ones(2, 3, dtype=F64), seeds=2, sampler="exact")


def test_float32_draws_the_same_inits():
    """Init s is the same network in float32 as in float64 (the normals are drawn
    in float64, and the QR factors are made unique: LAPACK's sign choices
    differ between the two where ReLU leaves exact zeros, which without the
    canonical signs changed 15 of these 2000 inits by up to 74%)."""
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=F64)
    kw = dict(seeds=2000, sampler="projected", outputs="full", keep=True, progress=False)
    k32 = ensemble_ntk([5, 16, 16, 2], x, dtype=torch.float32, **kw).kernels
    k64 = ensemble_ntk([5, 16, 16, 2], x, **kw).kernels
    err = (k32 - k64).abs().amax((1, 2, 3, 4)) / k64.abs().amax((1, 2, 3, 4))
    assert err.max() < 1e-2
