"""The public API against the torch.func float64 Jacobian oracle: every
outputs mode, layerwise, ntk_diag, both parametrizations, every activation,
with and without bias, K = 1 and K > 1, N1 != N2, width 1, a single layer;
plus model parsing, symmetry, invariance of the user's objects, bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

import fastntk
from conftest import (EMULATION, FLOAT32_FACTOR, FLOAT32_FLOOR, TOL, oracle_layerwise, oracle_ntk,
                      reduce_outputs, rel_err)

#: The engine module (fastntk.ntk is the function of the same name).
ntk_engine = importlib.import_module("fastntk.ntk")

ACTIVATIONS = ["relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu",
               "softplus", "erf", "identity"]
OUTPUTS = ["full", "trace", "per_output"]
# (widths, N1, N2): K > 1, K = 1, width-1 hidden layer, a single layer, deeper.
SHAPES = [
    ([5, 7, 6, 3], 5, 3),
    ([4, 9, 1], 4, 6),
    ([3, 1, 4, 2], 3, 3),
    ([6, 2], 4, 2),
    ([3, 5, 5, 5, 5, 4], 2, 3),
]


def make_mlp(widths, activation="tanh", parametrization="ntk", bias=True, device="cpu",
             dtype=torch.float64, seed=0):
    sigma_b = 0.3 if parametrization == "ntk" else 0.2
    net = fastntk.MLP(widths, activation=activation, parametrization=parametrization,
                      sigma_w=1.3, sigma_b=sigma_b, bias=bias, seed=seed, dtype=dtype)
    return net.to(device)


def inputs(n, d, device="cpu", dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype).to(device)


def check_all_modes(model, x1, x2, tol):
    """fastntk's every mode against the oracle, through each engine path;
    returns nothing, asserts."""
    layers = fastntk.parse_model(model)
    ref = oracle_ntk(model, x1, x2)
    ref_lw = oracle_layerwise(model, layers, x1, x2)
    diag_ref = torch.diagonal(oracle_ntk(model, x1), dim1=0, dim2=1).movedim(-1, 0)  # (N, K, K)
    # Emulated (minutes per pass), the whole-network op only: the per-layer
    # path's ops have their own emulated tests, and the engine's grouping
    # tests below force that path.
    for whole_network in (True,) if EMULATION else (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ntk_engine, "_USE_WHOLE_NETWORK_OP", whole_network)
            _check_all_modes(model, x1, x2, tol, ref, ref_lw, diag_ref)


def _check_all_modes(model, x1, x2, tol, ref, ref_lw, diag_ref):
    for outputs in OUTPUTS:
        got = fastntk.ntk(model, x1, x2, outputs=outputs)
        assert rel_err(got, reduce_outputs(ref, outputs)) <= tol, outputs
        got_lw = fastntk.ntk(model, x1, x2, outputs=outputs, layerwise=True)
        assert rel_err(got_lw, reduce_outputs(ref_lw, outputs)) <= tol, f"layerwise {outputs}"
        torch.testing.assert_close(got_lw.sum((0, 1)), got, rtol=1e-12, atol=1e-12 * got.abs().max().item())
    for outputs in OUTPUTS:
        got = fastntk.ntk_diag(model, x1, outputs=outputs)
        assert rel_err(got, reduce_outputs(diag_ref, outputs)) <= tol, f"diag {outputs}"


@pytest.mark.parametrize("widths,n1,n2", SHAPES)
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("bias", [True, False])
def test_shapes_parametrizations_bias(device, widths, n1, n2, parametrization, bias):
    net = make_mlp(widths, "tanh", parametrization, bias, device)
    check_all_modes(net, inputs(n1, widths[0], device), inputs(n2, widths[0], device, seed=2),
                    TOL[torch.float64])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_activations(device, activation, parametrization):
    widths = [4, 6, 5, 3]
    net = make_mlp(widths, activation, parametrization, True, device)
    check_all_modes(net, inputs(4, 4, device), inputs(3, 4, device, seed=2), TOL[torch.float64])


def test_x2_none_equals_x1_and_is_symmetric(device):
    net = make_mlp([5, 8, 8, 3], "relu", device=device)
    x = inputs(6, 5, device)
    sym = fastntk.ntk(net, x)
    torch.testing.assert_close(sym, fastntk.ntk(net, x, x.clone()), rtol=1e-13, atol=0)
    assert torch.equal(sym, sym.permute(1, 0, 3, 2))
    assert rel_err(sym, oracle_ntk(net, x)) <= TOL[torch.float64]


@pytest.mark.parametrize("outputs", OUTPUTS)
def test_symmetric_is_exact_over_several_row_blocks(device, outputs):
    """x2 = None on enough inputs for several row blocks and passes: exactly
    symmetric, and equal to the two-sided computation."""
    net = make_mlp([3, 16, 16, 10], "tanh", device=device)
    x = inputs(300, 3, device)
    sym = fastntk.ntk(net, x, outputs=outputs)
    t = sym.transpose(0, 1)
    assert torch.equal(sym, t.transpose(2, 3) if outputs == "full" else t)
    assert rel_err(sym, fastntk.ntk(net, x, x.clone(), outputs=outputs)) <= 1e-12
    lw = fastntk.ntk(net, x, outputs=outputs, layerwise=True)
    t = lw.transpose(2, 3)
    assert torch.equal(lw, t.transpose(4, 5) if outputs == "full" else t)


def _record_layer_groups(monkeypatch):
    monkeypatch.setattr(ntk_engine, "_USE_WHOLE_NETWORK_OP", False)  # the per-layer path's grouping
    calls = []
    original = fastntk._ops.ntk_accumulate_layers

    def recording(out, a1, *rest):
        calls.append(len(a1))
        original(out, a1, *rest)

    monkeypatch.setattr(fastntk._ops, "ntk_accumulate_layers", recording)
    return calls


def test_layers_share_one_pass_when_the_output_is_large(device, monkeypatch):
    """Many inputs, narrow layers: every layer's signals together are smaller
    than out, so all go to one ntk_accumulate_layers call; still exact."""
    net = make_mlp([3, 4, 5, 4, 3], "tanh", device=device)
    x = inputs(200, 3, device)
    calls = _record_layer_groups(monkeypatch)
    for outputs in OUTPUTS:
        calls.clear()
        got = fastntk.ntk(net, x, outputs=outputs)
        assert calls == [4], outputs
        assert rel_err(got, reduce_outputs(oracle_ntk(net, x), outputs)) <= TOL[torch.float64]
    # Two-sided, the CPU kernel takes a layer per pass anyway: nothing cached.
    x2 = inputs(150, 3, device, seed=2)
    calls.clear()
    got = fastntk.ntk(net, x, x2, outputs="full")
    assert calls == ([1, 1, 1, 1] if device == "cpu" else [4])
    assert rel_err(got, oracle_ntk(net, x, x2)) <= TOL[torch.float64]


def test_layers_go_one_at_a_time_when_the_output_is_small(device, monkeypatch):
    """Wide layers, few inputs: caching signals would cost more than out,
    so each layer is added as the backward pass reaches it."""
    net = make_mlp([3, 64, 64, 1], "relu", device=device)
    x = inputs(4, 3, device)
    calls = _record_layer_groups(monkeypatch)
    got = fastntk.ntk(net, x, outputs="trace")
    assert calls == [1, 1, 1]
    assert rel_err(got, reduce_outputs(oracle_ntk(net, x), "trace")) <= TOL[torch.float64]


def test_whole_network_op_is_used_where_it_applies(monkeypatch):
    """MLPs and Sequentials go through one mlp_ntk call; models with a frozen
    or a shared tensor, and calls showing a progress bar, take the per-layer
    path."""
    calls = []
    original = fastntk._ops.mlp_ntk
    monkeypatch.setattr(fastntk._ops, "mlp_ntk", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = inputs(3, 4)
    shared = nn.Linear(5, 5).double()
    frozen = make_mlp([4, 5, 2])
    frozen.biases[0].requires_grad_(False)
    cases = [(make_mlp([4, 5, 2]), {}, 1), (nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double(), {}, 1),
             (frozen, {}, 0), (nn.Sequential(nn.Linear(4, 5), shared, nn.ReLU(), shared).double(), {}, 0),
             (make_mlp([4, 5, 2]), {"progress": True}, 0)]
    for model, kwargs, expected in cases:
        calls.clear()
        fastntk.ntk(model, x, **kwargs)
        assert len(calls) == expected, (model, kwargs)
        calls.clear()
        if not kwargs:
            fastntk.ntk_diag(model, x)
            assert len(calls) == expected, model


SEQUENTIALS = {
    "relu_nobias_tanh": lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5, bias=False),
                                              nn.Tanh(), nn.Linear(5, 3)),
    "leaky_softplus": lambda: nn.Sequential(nn.Linear(4, 6), nn.LeakyReLU(0.2), nn.Linear(6, 5),
                                            nn.Softplus(beta=2.0, threshold=1.0), nn.Linear(5, 2)),
    "gelu_tanh_silu_erf": lambda: nn.Sequential(nn.Linear(4, 5), nn.GELU(approximate="tanh"), nn.Linear(5, 5),
                                                nn.SiLU(), nn.Linear(5, 5), fastntk.Erf(), nn.Linear(5, 2)),
    "gelu_sigmoid_identity_dropout": lambda: nn.Sequential(
        nn.Linear(4, 5), nn.GELU(), nn.Dropout(0.5), nn.Linear(5, 5), nn.Identity(), nn.Linear(5, 5),
        nn.Sigmoid(), nn.Linear(5, 1)).eval(),
    "nested_output_activation": lambda: nn.Sequential(
        nn.Sequential(nn.Linear(4, 5), nn.Tanh()), nn.Linear(5, 3), nn.Sigmoid()),
    "single_linear": lambda: nn.Sequential(nn.Linear(4, 3)),
    "bare_linear": lambda: nn.Linear(4, 3),
}


@pytest.mark.parametrize("name", sorted(SEQUENTIALS))
def test_sequential(device, name):
    torch.manual_seed(3)
    net = SEQUENTIALS[name]().double().to(device)
    with torch.no_grad():  # make softplus's threshold branch and relu's kinks both occur
        for p in net.parameters():
            p.mul_(1.5)
    check_all_modes(net, inputs(5, 4, device), inputs(3, 4, device, seed=2), TOL[torch.float64])


@pytest.mark.parametrize("outputs", OUTPUTS)
def test_float32_within_plain_pytorch_error(device, outputs):
    widths = [16, 64, 64, 4]
    net64 = make_mlp(widths, "relu", "ntk", True, device)
    net32 = make_mlp(widths, "relu", "ntk", True, device, dtype=torch.float32)
    x64 = inputs(12, 16, device)
    ref = reduce_outputs(oracle_ntk(net64, x64), outputs)
    plain32 = reduce_outputs(oracle_ntk(net32, x64.float()), outputs)
    got32 = fastntk.ntk(net32, x64.float(), outputs=outputs)
    assert got32.dtype == torch.float32
    bound = max(FLOAT32_FACTOR * rel_err(plain32, ref), FLOAT32_FLOOR)
    assert rel_err(got32, ref) <= bound


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_compute_in_float32(dtype):
    net = make_mlp([6, 16, 16, 3], "gelu", dtype=torch.float32).to(dtype)
    x = inputs(5, 6, dtype=torch.float32).to(dtype)
    up = make_mlp([6, 16, 16, 3], "gelu", dtype=torch.float32)
    up.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    for fn in (lambda m, a: fastntk.ntk(m, a, layerwise=True), lambda m, a: fastntk.ntk_diag(m, a)):
        got = fn(net, x)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, fn(up, x.float()), rtol=0, atol=0)
    assert next(net.parameters()).dtype == dtype


def test_float32_agrees_with_the_float32_network():
    """The engine's forward is the model's own (same ops, same rounding), so
    in float32 its ReLU masks are the network's: it agrees with torch.func on
    the float32 network far below float32's distance to float64 (where a
    pre-activation within rounding of 0 may flip and move a few entries by 1e-3)."""
    for make in (lambda: make_mlp([32, 256, 256, 5], "relu", "ntk", dtype=torch.float32, seed=3),
                 lambda: make_mlp([32, 256, 256, 5], "relu", "standard", dtype=torch.float32, seed=3),
                 lambda: nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 5))):
        torch.manual_seed(5)
        net = make()
        x = inputs(48, 32, dtype=torch.float32)
        assert rel_err(fastntk.ntk(net, x), oracle_ntk(net, x)) <= 2e-5


def test_layerwise_homogeneity_per_init():
    """DESIGN.md: standard parametrization, ReLU, sigma_b = 0: scaling every W
    by sqrt(s) scales layer l's weight term by s^(L-1) and its bias term by
    s^(L-l), for every init."""
    L, s = 5, 1.7
    net = fastntk.MLP([8, 8, 8, 8, 8, 1], "relu", "standard", sigma_w=2**0.5, sigma_b=0.0,
                      seed=4, dtype=torch.float64)
    x = inputs(3, 8)
    before = fastntk.ntk(net, x, layerwise=True)
    with torch.no_grad():
        for w in net.weights:
            w.mul_(math.sqrt(s))
    after = fastntk.ntk(net, x, layerwise=True)
    for l in range(1, L + 1):
        torch.testing.assert_close(after[l - 1, 0], before[l - 1, 0] * s ** (L - 1), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(after[l - 1, 1], before[l - 1, 1] * s ** (L - l), rtol=1e-12, atol=1e-14)


def test_ntk_parametrization_zero_sigma_b_has_no_bias_terms():
    net = fastntk.MLP([4, 6, 2], "relu", "ntk", sigma_w=1.0, sigma_b=0.0, seed=0, dtype=torch.float64)
    lw = fastntk.ntk(net, inputs(3, 4), layerwise=True)
    assert torch.count_nonzero(lw[:, 1]) == 0
    assert torch.count_nonzero(lw[:, 0]) > 0


def test_model_and_inputs_unchanged():
    net = make_mlp([5, 7, 3], "tanh", "standard", True, dtype=torch.float32)
    net.train()
    net.weights[0].grad = torch.ones_like(net.weights[0])
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    x1, x2 = inputs(4, 5, dtype=torch.float32), inputs(3, 5, dtype=torch.float32, seed=2)
    x1c, x2c = x1.clone(), x2.clone()
    fastntk.ntk(net, x1, x2, layerwise=True)
    fastntk.ntk_diag(net, x1)
    assert net.training
    for n, p in net.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad
    assert torch.equal(net.weights[0].grad, torch.ones_like(net.weights[0]))
    assert net.weights[1].grad is None
    assert torch.equal(x1, x1c) and torch.equal(x2, x2c)


def test_input_requiring_grad_is_fine_and_result_is_detached():
    net = make_mlp([5, 7, 3])
    x = inputs(4, 5).requires_grad_()
    out = fastntk.ntk(net, x)
    assert not out.requires_grad and x.grad is None


def test_progress_bar(capsys):
    net = make_mlp([5, 8, 8, 3])
    x = inputs(4, 5)
    quiet = fastntk.ntk(net, x, progress=False)
    assert capsys.readouterr().err == ""
    shown = fastntk.ntk(net, x, progress=True)
    err = capsys.readouterr().err
    assert "fastntk.ntk layers" in err and "3/3" in err  # layers counted as they reach the output
    torch.testing.assert_close(shown, quiet, rtol=0, atol=0)
    fastntk.ntk(net, inputs(200, 5), progress=True)  # all three layers in one fused pass
    assert "3/3" in capsys.readouterr().err
    fastntk.ntk(net, x, layerwise=True, progress=True)
    assert "3/3" in capsys.readouterr().err
    with pytest.raises(TypeError, match=r"progress must be None \(auto\), True or False"):
        fastntk.ntk(net, x, progress="yes")


def test_mlp_is_a_trainable_module():
    net = fastntk.MLP([3, 8, 2], seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randn(16, 2)
    loss0 = ((net(x) - y) ** 2).mean()
    for _ in range(20):
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    assert loss.item() < loss0.item()


def test_mlp_seed_reproducible_and_init_scales():
    a = fastntk.MLP([50, 400, 1], parametrization="standard", sigma_w=2.0, sigma_b=0.5, seed=7)
    b = fastntk.MLP([50, 400, 1], parametrization="standard", sigma_w=2.0, sigma_b=0.5, seed=7)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert abs(a.weights[0].var().item() - 4.0 / 50) < 0.1 * 4.0 / 50
    assert abs(a.biases[0].std().item() - 0.5) < 0.1
    n = fastntk.MLP([50, 400, 1], parametrization="ntk", seed=7)
    assert abs(n.weights[0].var().item() - 1.0) < 0.1


def test_issue_example_shapes():
    net = fastntk.MLP([20, 32, 32, 32, 10], activation="relu", parametrization="ntk",
                      sigma_w=2**0.5, sigma_b=0.1)
    x = torch.randn(12, 20)
    assert fastntk.ntk(net, x).shape == (12, 12, 10, 10)
    assert fastntk.ntk(net, x, x[:4], outputs="trace").shape == (12, 4)
    assert fastntk.ntk(net, x, layerwise=True).shape == (4, 2, 12, 12, 10, 10)
    assert fastntk.ntk_diag(net, x).shape == (12, 10, 10)
    assert fastntk.ntk(net, x, outputs=fastntk.Outputs.PER_OUTPUT).shape == (12, 12, 10)


# ------------------------------------------------------------------ bad input
NET = fastntk.MLP([4, 5, 2], seed=0)
X = torch.randn(3, 4)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: fastntk.ntk("net", X), TypeError, "model must be a torch.nn.Module"),
    (lambda: fastntk.ntk(nn.Conv1d(1, 1, 1), X), TypeError, "model must be .*got Conv1d"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), X), TypeError,
     r"unsupported module model\[1\] \(BatchNorm1d"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)), X), TypeError,
     r"model\[1\].*dropout in training mode"),
    (lambda: fastntk.ntk(nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), X), TypeError, "before any nn.Linear"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Tanh()), X), TypeError,
     r"model\[2\].*follows another activation"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 4), nn.Linear(5, 2)), X), TypeError,
     "expects 5 features"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), X), TypeError,
     r"unsupported module model\[1\] \(Softmax"),
    (lambda: fastntk.ntk(NET, X[0]), ValueError, r"x1 must have shape \(N, n_0\) = \(N, 4\); got shape \(4,\)"),
    (lambda: fastntk.ntk(NET, torch.randn(3, 5)), ValueError, r"x1 must have 4 features.*got shape \(3, 5\)"),
    (lambda: fastntk.ntk(NET, X, torch.randn(2, 3)), ValueError, r"x2 must have 4 features.*\(2, 3\)"),
    (lambda: fastntk.ntk(NET, X.double()), TypeError, "x1 has dtype torch.float64 but the model's parameters are torch.float32"),
    (lambda: fastntk.ntk(NET, X, X.double()), TypeError, "x2 has dtype torch.float64"),
    (lambda: fastntk.ntk(NET, torch.ones(3, 4, dtype=torch.int64)), TypeError, "x1 must be a floating-point tensor.*int64"),
    (lambda: fastntk.ntk(NET, [[1.0] * 4]), TypeError, "x1 must be a torch.Tensor.*got list"),
    (lambda: fastntk.ntk(NET, torch.randn(0, 4)), ValueError, "x1 is an empty batch"),
    (lambda: fastntk.ntk(NET, X, torch.full((2, 4), float("nan"))), ValueError, "x2 contains NaN or Inf"),
    (lambda: fastntk.ntk(NET, torch.tensor([[float("inf")] * 4])), ValueError, "x1 contains NaN or Inf"),
    (lambda: fastntk.ntk(NET, X.to("meta")), ValueError, "x1 is on meta but the model is on cpu"),
    (lambda: fastntk.ntk(NET, X, X.to("meta")), ValueError, "x2 is on meta but the model is on cpu"),
    (lambda: fastntk.ntk(NET, X, outputs="diag"), ValueError, "outputs must be one of 'full', 'trace', 'per_output'; got 'diag'"),
    (lambda: fastntk.ntk(NET, X, layerwise="yes"), TypeError, "layerwise must be a bool"),
    (lambda: fastntk.ntk_diag(NET, X, outputs="mean"), ValueError, "outputs must be one of"),
    (lambda: fastntk.ntk_diag(NET, X[:, :2]), ValueError, "x must have 4 features"),
    (lambda: fastntk.ntk(NET, X.half()), TypeError, "x1 has dtype torch.float16"),
    (lambda: fastntk.ntk(nn.Sequential(nn.Linear(4, 2)).to(torch.complex64), X.to(torch.complex64)), TypeError,
     "model parameters must be real floating point.*complex64"),
    (lambda: fastntk.MLP([4, 0, 2]), ValueError, r"widths\[1\] must be a positive int; got 0"),
    (lambda: fastntk.MLP([4, -3, 2]), ValueError, r"widths\[1\] must be a positive int; got -3"),
    (lambda: fastntk.MLP([4]), ValueError, "widths must list at least"),
    (lambda: fastntk.MLP(4), TypeError, "widths must be a sequence"),
    (lambda: fastntk.MLP([4, 2], activation="swish"), ValueError, "activation must be one of .*got 'swish'"),
    (lambda: fastntk.MLP([4, 2], parametrization="mup"), ValueError, "parametrization must be one of ntk, standard; got 'mup'"),
    (lambda: fastntk.MLP([4, 2], sigma_w=-1.0), ValueError, "sigma_w must be a finite number >= 0"),
    (lambda: fastntk.MLP([4, 2], seed=1, generator=torch.Generator()), ValueError, "at most one of seed and generator"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_nan_in_model_is_refused():
    net = fastntk.MLP([4, 5, 2], seed=0)
    with torch.no_grad():
        net.weights[1][0, 0] = float("nan")
    with pytest.raises(ValueError, match="model layer 1 weight contains NaN"):
        fastntk.ntk(net, X)


_ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh}


@pytest.mark.parametrize("activation,kind,layer,value", [
    ("relu", "bias", 0, -float("inf")),   # masked by ReLU: the kernel alone would look finite
    ("tanh", "bias", 1, float("inf")),    # masked by tanh
    ("tanh", "weight", 0, float("inf")),  # tanh(+-Inf) = +-1, tanh' = 0
    ("relu", "weight", 2, float("nan")),  # the readout
    ("relu", "bias", 2, float("nan")),    # the readout bias: no effect on the kernel, still bad input
])
@pytest.mark.parametrize("frozen", [False, True])
def test_non_finite_parameter_is_refused_by_name(activation, kind, layer, value, frozen):
    """Every entry point names the bad tensor: the whole-network op's path
    (found through its pre-activations) and the per-layer path (a frozen
    tensor elsewhere sends the model there)."""
    net = nn.Sequential(nn.Linear(4, 6), _ACTIVATION_MODULES[activation](), nn.Linear(6, 5),
                        _ACTIVATION_MODULES[activation](), nn.Linear(5, 2))
    with torch.no_grad():
        getattr(net[2 * layer], kind).view(-1)[1] = value
    if frozen:
        net[2].bias.requires_grad_(False)
    x = X.clone()
    x[:, 0] = 0.0
    match = f"model layer {layer} {kind} contains NaN or Inf"
    for call in (lambda: fastntk.ntk(net, x), lambda: fastntk.ntk(net, x, X[:2], outputs="trace"),
                 lambda: fastntk.ntk_diag(net, x, layerwise=True)):
        with pytest.raises(ValueError, match=match):
            call()



def test_mixed_dtype_model_is_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2).double())
    with pytest.raises(TypeError, match="share one dtype and device"):
        fastntk.ntk(net, X)
