"""Which parameters the kernel sums over: a tensor used at several layers (a
module repeated in a Sequential, tied weights) is one parameter, and frozen
tensors (requires_grad=False) are not trained, so have no term. Each case
against the torch.func float64 oracle over the model's trainable parameters
(functional_call ties shared tensors, so their Jacobian sums over uses)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastntk
from conftest import TOL, oracle_ntk
from test_ntk import check_all_modes, inputs, make_mlp


def seeded(module: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p, std=0.6)
    return module


def repeated_linear():
    lin = nn.Linear(4, 4)
    return nn.Sequential(lin, lin, nn.Linear(4, 3))


def repeated_through_activation():
    lin = nn.Linear(4, 4)
    return nn.Sequential(lin, nn.Tanh(), lin, nn.Tanh(), nn.Linear(4, 3))


def repeated_three_times_relu():
    lin = nn.Linear(4, 4)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), lin, nn.ReLU(), lin, nn.ReLU(), lin, nn.Linear(4, 2))


def repeated_nested_block():
    block = nn.Sequential(nn.Linear(4, 4), nn.GELU())
    return nn.Sequential(block, block, nn.Linear(4, 3), nn.Sigmoid())


def tied_weight_own_biases():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    return nn.Sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(4, 2))


def tied_bias_only():
    first, second = nn.Linear(4, 4), nn.Linear(4, 4, bias=True)
    second.bias = first.bias
    return nn.Sequential(first, nn.SiLU(), second, nn.SiLU(), nn.Linear(4, 1))


def tied_without_bias():
    first, second = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    second.weight = first.weight
    return nn.Sequential(first, nn.Softplus(), second, nn.Linear(4, 3))


SHARED = {f.__name__: f for f in (repeated_linear, repeated_through_activation, repeated_three_times_relu,
                                  repeated_nested_block, tied_weight_own_biases, tied_bias_only,
                                  tied_without_bias)}


def first_features(model: nn.Module) -> int:
    return fastntk.parse_model(model)[0].fan_in


@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_tensors_are_one_parameter(name):
    model = seeded(SHARED[name]()).double()
    d = first_features(model)
    check_all_modes(model, inputs(5, d), inputs(3, d, seed=2), TOL[torch.float64])
    x = inputs(4, d)
    got = fastntk.ntk(model, x)
    torch.testing.assert_close(got, oracle_ntk(model, x), rtol=1e-10, atol=1e-10 * got.abs().max().item())


def test_repeated_module_differs_from_separate_copies():
    """The issue's model: lin used twice. Its kernel is not that of two
    independent copies of lin (which has two parameters where it has one)."""
    model = seeded(repeated_linear()).double()
    copies = nn.Sequential(model[0], nn.Linear(4, 4).double(), model[2])
    copies[1].load_state_dict(model[0].state_dict())
    x = inputs(4, 4)
    shared, separate = fastntk.ntk(model, x), fastntk.ntk(copies, x)
    torch.testing.assert_close(model(x), copies(x))
    assert (shared - separate).abs().max() > 1e-3 * shared.abs().max()
    torch.testing.assert_close(shared, oracle_ntk(model, x), rtol=1e-10, atol=1e-12)


def test_mlp_with_tied_layers():
    net = make_mlp([3, 5, 5, 5, 2], "tanh", "ntk")
    net.weights[2] = net.weights[1]
    net.biases[2] = net.biases[1]
    check_all_modes(net, inputs(4, 3), inputs(3, 3, seed=2), TOL[torch.float64])


def test_layerwise_puts_a_shared_tensor_at_its_first_use():
    model = seeded(repeated_through_activation()).double()
    lw = fastntk.ntk(model, inputs(3, 4), layerwise=True)
    assert lw.shape[:2] == (3, 2)
    assert torch.count_nonzero(lw[1]) == 0  # layer 1 is the second use of layer 0's tensors
    assert torch.count_nonzero(lw[0]) > 0


def frozen(model: nn.Module, *names: str) -> nn.Module:
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(False)
    return model


FROZEN = {
    "first_weight": lambda: frozen(seeded(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))),
                                   "0.weight"),
    "last_bias": lambda: frozen(seeded(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))), "2.bias"),
    "whole_hidden_layer": lambda: frozen(seeded(nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 5),
                                                              nn.GELU(), nn.Linear(5, 2))), "2.weight", "2.bias"),
    "mlp_ntk": lambda: frozen(make_mlp([4, 6, 6, 3], "erf", "ntk"), "weights.0", "biases.2"),
    "mlp_standard": lambda: frozen(make_mlp([4, 6, 6, 3], "silu", "standard"), "weights.1"),
    "shared_and_frozen": lambda: frozen(seeded(repeated_through_activation()), "0.weight"),
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_frozen_tensors_have_no_term(name):
    model = FROZEN[name]().double()
    d = first_features(model)
    check_all_modes(model, inputs(5, d), inputs(3, d, seed=2), TOL[torch.float64])


def test_frozen_terms_are_exact_zeros_in_layerwise():
    model = FROZEN["first_weight"]().double()
    x = inputs(4, 4)
    lw = fastntk.ntk(model, x, layerwise=True)
    assert torch.count_nonzero(lw[0, 0]) == 0 and torch.count_nonzero(lw[0, 1]) > 0
    diag = fastntk.ntk_diag(model, x, layerwise=True)
    assert torch.count_nonzero(diag[0, 0]) == 0 and torch.count_nonzero(diag[0, 1]) > 0


def test_everything_frozen_is_refused():
    """A kernel over no parameters is zero: almost surely a model frozen for
    inference by mistake, so it is refused rather than returned."""
    model = seeded(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))).double().requires_grad_(False)
    x = inputs(3, 4)
    for call in (lambda: fastntk.ntk(model, x), lambda: fastntk.ntk_diag(model, x, outputs="trace")):
        with pytest.raises(ValueError, match="model has no trainable parameters"):
            call()


def test_freezing_does_not_change_the_model():
    model = FROZEN["mlp_ntk"]().double()
    before = {n: (p.clone(), p.requires_grad) for n, p in model.named_parameters()}
    fastntk.ntk(model, inputs(3, 4))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n][0]) and p.requires_grad == before[n][1]


def test_meta_device_model_is_refused():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="model is on the meta device"):
        fastntk.ntk(model, torch.randn(2, 4, device="meta"))
    with pytest.raises(ValueError, match="model is on the meta device"):
        fastntk.ntk_diag(model, torch.randn(2, 4))


@pytest.mark.parametrize("name", sorted(SHARED) + sorted(FROZEN))
def test_matrix_free_and_blocked_paths_count_the_same_parameters(name):
    """ntk_vp (gradients summed per tensor, none for a frozen one) and the
    blocked driver agree with the torch.func oracle on shared and frozen models."""
    model = (SHARED[name] if name in SHARED else FROZEN[name])()
    model = (seeded(model) if name in SHARED else model).double()
    d = first_features(model)
    x = inputs(5, d)
    expected = oracle_ntk(model, x)
    n, k = expected.shape[0], expected.shape[2]
    v = torch.randn(n, k, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = fastntk.ntk_vp(model, x, v, outputs="full")
    torch.testing.assert_close(got, torch.einsum("ijkl,jlm->ikm", expected, v), rtol=1e-10, atol=1e-10)
    blocked = fastntk.ntk(model, x, block_size=2)
    torch.testing.assert_close(blocked, expected, rtol=1e-10, atol=1e-10 * expected.abs().max().item())


# ------------------------------------------------ forwards the layers do not show
class _DoubledSequential(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class _ShiftedLeakyReLU(nn.LeakyReLU):
    def forward(self, x):
        return super().forward(x) + 1.0


class _SquaredMLP(fastntk.MLP):
    def forward(self, x):
        return super().forward(x) ** 2


class _PlainSubclass(nn.Sequential):  # no forward of its own: its kernel is the Sequential's
    pass


def _small_sequential(cls=nn.Sequential, act=nn.Tanh):
    return seeded(cls(nn.Linear(3, 5), act(), nn.Linear(5, 2))).double()


def _hooked(where: str):
    model = _small_sequential()
    target = model if where == "top" else model[0]
    target.register_forward_hook(lambda module, args, out: 3 * out)
    return model


def _pre_hooked():
    model = _small_sequential()
    model[1].register_forward_pre_hook(lambda module, args: (args[0] + 1,))
    return model


def _hooked_mirrored():
    model = fastntk.MLP([3, 5, 2], seed=0, dtype=torch.float64, mirrored=True)
    model.second.register_forward_hook(lambda module, args, out: out)
    return model


@pytest.mark.parametrize("make,match", [
    (lambda: _hooked("top"), r"model \(Sequential\) has a forward hook"),
    (lambda: _hooked("inner"), r"model\.0 \(Linear\) has a forward hook"),
    (_pre_hooked, r"model\.1 \(Tanh\) has a forward hook or forward pre-hook"),
    (_hooked_mirrored, r"model\.second \(MLP\) has a forward hook"),
    (lambda: _small_sequential(_DoubledSequential), r"model \(_DoubledSequential\) subclasses Sequential but overrides forward"),
    (lambda: _small_sequential(act=_ShiftedLeakyReLU), r"model\.1 \(_ShiftedLeakyReLU\) subclasses LeakyReLU"),
    (lambda: _SquaredMLP([3, 5, 2], seed=0, dtype=torch.float64), r"model \(_SquaredMLP\) subclasses MLP"),
])
def test_forward_the_layers_do_not_show_is_refused(make, match):
    """A hook or an overridden forward changes model(x) but not the parsed
    layers: every entry point refuses it by name instead of returning the
    kernel of the standard network (which differs from torch.func's)."""
    model = make()
    x = torch.randn(4, 3, dtype=torch.float64)
    for call in (lambda: fastntk.ntk(model, x), lambda: fastntk.ntk_diag(model, x),
                 lambda: fastntk.ntk(model, x, block_size=2), lambda: fastntk.ntk_vp(model, x, torch.ones(4, dtype=torch.float64))):
        with pytest.raises(TypeError, match=match):
            call()


def test_global_forward_hook_is_refused():
    model = _small_sequential()
    handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: out)
    try:
        with pytest.raises(TypeError, match="global forward hooks are registered"):
            fastntk.ntk(model, torch.randn(2, 3, dtype=torch.float64))
    finally:
        handle.remove()


def test_subclass_without_own_forward_is_computed():
    model = _small_sequential(_PlainSubclass)
    x = torch.randn(4, 3, dtype=torch.float64)
    check_all_modes(model, x, inputs(3, 3, seed=2), TOL[torch.float64])
