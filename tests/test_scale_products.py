"""Matrix-free products (ntk_vp, NTKOperator, ntk_operator, eigh,
kernel_regression) against the torch.func float64 oracle and the dense
kernel: every outputs mode, both parametrizations, with/without bias,
several activations, K = 1 and K > 1, one and several blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastntk
from conftest import FLOAT32_FACTOR, FLOAT32_FLOOR, TOL, oracle_ntk, reduce_outputs, rel_err
from test_ntk import inputs, make_mlp

SHAPES = [([5, 7, 6, 3], 9, 4), ([4, 9, 1], 6, 6), ([3, 5, 5, 5, 2], 5, 3)]

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_product(theta: torch.Tensor, v: torch.Tensor, outputs: str) -> torch.Tensor:
    """Theta v from the oracle's dense kernel."""
    if outputs == "full":
        return torch.einsum("ijkl,jl...->ik...", theta, v)
    if outputs == "per_output":
        return torch.einsum("ijk,jk...->ik...", theta, v)
    return torch.einsum("ij,j...->i...", theta, v)


@pytest.mark.parametrize("widths,n1,n2", SHAPES)
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("outputs", ["full", "trace", "per_output"])
def test_ntk_vp_matches_the_oracle(device, widths, n1, n2, parametrization, bias, outputs):
    net = make_mlp(widths, "tanh", parametrization, bias, device)
    x1, x2 = inputs(n1, widths[0], device), inputs(n2, widths[0], device, seed=2)
    k = widths[-1]
    theta = reduce_outputs(oracle_ntk(net, x1, x2), outputs)
    g = torch.Generator().manual_seed(3)
    for cols in ((), (3,)):  # one vector, several right-hand sides
        shape = (n2,) + cols if outputs == "trace" else (n2, k) + cols
        v = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
        for block_size in (None, 2):
            got = fastntk.ntk_vp(net, x1, v, x2, outputs=outputs, block_size=block_size)
            assert rel_err(got, dense_product(theta, v, outputs)) <= TOL[torch.float64], (cols, block_size)


@pytest.mark.parametrize("activation", ["relu", "gelu", "softplus", "erf", "identity"])
def test_ntk_vp_activations_symmetric(device, activation):
    net = make_mlp([4, 6, 5, 3], activation, "ntk", True, device)
    x = inputs(7, 4, device)
    v = torch.randn(7, 3, dtype=torch.float64, device=device)
    got = fastntk.ntk_vp(net, x, v, outputs="full")
    assert rel_err(got, dense_product(oracle_ntk(net, x), v, "full")) <= TOL[torch.float64]


def test_operator_caches_and_agrees_with_scipy_and_the_dense_kernel():
    net = make_mlp([6, 16, 16, 2], "relu")
    x = inputs(40, 6)
    dense = fastntk.ntk(net, x).permute(0, 2, 1, 3).reshape(80, 80)
    op = fastntk.NTKOperator(net, x, outputs="full", block_size=16, cache=True)
    assert op.shape == (80, 80)
    v = torch.randn(80, 5, dtype=torch.float64)
    for _ in range(2):  # the second product reads the cached signals
        assert rel_err(op @ v, dense @ v) <= 1e-12
    assert rel_err(op.matvec(v[:, 0]), dense @ v[:, 0]) <= 1e-12
    lo = fastntk.ntk_operator(net, x, outputs="full")
    assert lo.shape == (80, 80)
    np.testing.assert_allclose(lo.matmat(v.numpy()), (dense @ v).numpy(), rtol=1e-12, atol=1e-12 * dense.abs().max().item())


def test_columns_are_split_into_passes_within_the_budget():
    """A budget that holds one gradient copy at a time: one pass per column,
    same numbers."""
    net = make_mlp([6, 16, 16, 2], "relu")
    x = inputs(30, 6)
    params = sum(p.numel() for p in net.parameters())
    op = fastntk.NTKOperator(net, x, outputs="full", max_memory=4 * 8 * params, block_size=8)
    assert op._columns_per_pass() == 1
    v = torch.randn(60, 4, dtype=torch.float64)
    dense = fastntk.ntk(net, x).permute(0, 2, 1, 3).reshape(60, 60)
    assert rel_err(op @ v, dense @ v) <= 1e-12


@pytest.mark.parametrize("method", ["scipy", "lanczos"])
@pytest.mark.parametrize("outputs,which", [("trace", "LA"), ("trace", "SA"), ("full", "LA"), ("full", "SA")])
def test_eigh_matches_dense_eigenpairs(method, outputs, which):
    net = make_mlp([5, 24, 24, 2], "relu", "standard")
    x = inputs(30, 5)
    theta = fastntk.ntk(net, x, outputs=outputs)
    dense = theta if outputs == "trace" else theta.permute(0, 2, 1, 3).reshape(60, 60)
    ref_vals = torch.linalg.eigvalsh(dense)
    ref = ref_vals.flip(0)[:4] if which == "LA" else ref_vals[:4]
    vals, vecs = fastntk.eigh(net, x, k=4, which=which, outputs=outputs, method=method)
    assert vecs.shape == ((30, 4) if outputs == "trace" else (30, 2, 4))
    assert rel_err(vals, ref) <= 1e-8
    flat = vecs.reshape(-1, 4)
    torch.testing.assert_close(flat.t() @ flat, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)
    residual = dense @ flat - flat * vals
    assert residual.abs().max().item() <= 1e-6 * ref_vals.abs().max().item()


@pytest.mark.parametrize("outputs", ["full", "trace"])
def test_kernel_regression_solves_and_predicts(outputs):
    net = make_mlp([5, 16, 16, 3], "tanh")
    x, x_new = inputs(25, 5), inputs(6, 5, seed=4)
    y = torch.randn(25, 3, dtype=torch.float64)
    ridge = 0.1
    fit = fastntk.kernel_regression(net, x, y, ridge=ridge, outputs=outputs, tol=1e-12)
    if outputs == "full":
        a = fastntk.ntk(net, x).permute(0, 2, 1, 3).reshape(75, 75)
        alpha = torch.linalg.solve(a + ridge * torch.eye(75, dtype=torch.float64), y.reshape(-1)).reshape(25, 3)
        pred = torch.einsum("ijkl,jl->ik", fastntk.ntk(net, x_new, x), alpha)
    else:
        a = fastntk.ntk(net, x, outputs="trace")
        alpha = torch.linalg.solve(a + ridge * torch.eye(25, dtype=torch.float64), y)
        pred = fastntk.ntk(net, x_new, x, outputs="trace") @ alpha
    assert rel_err(fit.alpha, alpha) <= 1e-9
    assert rel_err(fit.predict(x_new), pred) <= 1e-9
    assert fit.residual.max().item() <= 1e-12


def test_bad_arguments_are_refused_by_name():
    net = make_mlp([4, 6, 2], "relu")
    x = inputs(5, 4)
    with pytest.raises(ValueError, match=r"v must have shape \(5, 2\)"):
        fastntk.ntk_vp(net, x, torch.ones(5), outputs="full")
    with pytest.raises(ValueError, match=r"v must have shape \(5,\)"):
        fastntk.ntk_vp(net, x, torch.ones(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="v must be a torch.Tensor"):
        fastntk.ntk_vp(net, x, [1.0] * 5)
    with pytest.raises(ValueError, match="outputs must be one of"):
        fastntk.ntk_vp(net, x, torch.ones(5), outputs="diag")
    with pytest.raises(ValueError, match="k must be an int"):
        fastntk.eigh(net, x, k=5)
    with pytest.raises(ValueError, match="which must be"):
        fastntk.eigh(net, x, k=2, which="LM")
    with pytest.raises(ValueError, match="ridge must be"):
        fastntk.kernel_regression(net, x, torch.ones(5, 2, dtype=torch.float64), ridge=-1.0)
    with pytest.raises(ValueError, match="max_memory must look like"):
        fastntk.NTKOperator(net, x, max_memory="lots")
    v = torch.ones(5, 2, dtype=torch.float64)
    before = v.clone()
    fastntk.ntk_vp(net, x, v, outputs="full")
    assert torch.equal(v, before)


@pytest.mark.parametrize("outputs", ["full", "trace", "per_output"])
def test_streamed_signals_equal_cached(outputs):
    """cache=False recomputes each block's signals in both passes of every
    product (bounded memory): the same numbers as the cached operator."""
    net = make_mlp([6, 12, 12, 3], "gelu", "standard")
    x1, x2 = inputs(17, 6), inputs(11, 6, seed=2)
    for cols in (x2, None):
        cached = fastntk.NTKOperator(net, x1, cols, outputs=outputs, cache=True, block_size=5)
        streamed = fastntk.NTKOperator(net, x1, cols, outputs=outputs, cache=False, block_size=4)
        v = torch.randn(cached.shape[1], 2, dtype=torch.float64)
        assert rel_err(streamed @ v, cached @ v) <= 1e-13


@pytest.mark.parametrize("outputs", ["full", "trace"])
def test_float32_within_plain_pytorch_error(outputs):
    widths = [16, 64, 64, 4]
    net64 = make_mlp(widths, "relu")
    net32 = make_mlp(widths, "relu", dtype=torch.float32)
    x = inputs(12, 16)
    v = torch.randn((12,) if outputs == "trace" else (12, 4), dtype=torch.float64)
    ref = dense_product(reduce_outputs(oracle_ntk(net64, x), outputs), v, outputs)
    plain32 = dense_product(reduce_outputs(oracle_ntk(net32, x.float()), outputs), v.float(), outputs)
    got32 = fastntk.ntk_vp(net32, x.float(), v.float(), outputs=outputs)
    assert got32.dtype == torch.float32
    assert rel_err(got32, ref) <= max(FLOAT32_FACTOR * rel_err(plain32, ref), FLOAT32_FLOOR)


def test_half_precision_model_computes_in_float32():
    net = make_mlp([6, 16, 3], "tanh", dtype=torch.float32)
    half = make_mlp([6, 16, 3], "tanh", dtype=torch.float32).to(torch.bfloat16)
    net.load_state_dict({k: t.float() for k, t in half.state_dict().items()})
    x = inputs(5, 6, dtype=torch.float32).to(torch.bfloat16)
    v = torch.randn(5, 3)
    got = fastntk.ntk_vp(half, x, v, outputs="full")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fastntk.ntk_vp(net, x.float(), v, outputs="full"), rtol=0, atol=0)


def test_default_cpu_block_keeps_temporaries_small_and_numbers_equal():
    """On the CPU the default block holds at most 2**22 elements per
    (block x K x widest layer) temporary, whatever the budget, and gives the
    one-block product."""
    net = fastntk.MLP([4, 4096, 3], sigma_w=2**0.5, seed=0, dtype=torch.float64)
    x = inputs(700, 4)
    op = fastntk.NTKOperator(net, x, outputs="per_output", max_memory="8GB")
    assert op._rows.block_size == 2**22 // (3 * 4096)
    one_block = fastntk.NTKOperator(net, x, outputs="per_output", max_memory="8GB", block_size=700)
    v = torch.randn(op.shape[1], 2, dtype=torch.float64)
    assert rel_err(op @ v, one_block @ v) <= 1e-13
