"""Numerics: the float32 error bound of docs/numerics.md against float64 for
depths up to 50 and sigma_w^2 up to 3.5; overflow raises a
FloatingPointError naming the layer; Theta(x, x) is positive semi-definite
up to rounding, in total and term by term."""

from __future__ import annotations

import pytest
import torch

import fastntk
from conftest import oracle_ntk

UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


def deep_net(activation, depth, sigma_w2, parametrization, width=32, seed=0):
    return fastntk.MLP([12] + [width] * depth + [2], activation=activation, parametrization=parametrization,
                       sigma_w=sigma_w2 ** 0.5, sigma_b=0.1, seed=seed, dtype=torch.float64)


def rel_to_scale(got, ref):
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def float32_error(net, x):
    ref = fastntk.ntk(net, x)
    got = fastntk.ntk(net.float(), x.float())
    net.double()
    return rel_to_scale(got, ref), ref


@pytest.mark.parametrize("depth,sigma_w2,parametrization", [
    (50, 0.5, "standard"), (50, 2.0, "ntk"), (50, 3.5, "ntk"), (50, 3.5, "standard"), (20, 3.5, "ntk"),
])
def test_float32_relu_within_layers_times_unit_roundoff(depth, sigma_w2, parametrization, one_thread):
    """ReLU: max |error| <= 2 (L + 1) u max |Theta| (u = 2^-24), in every phase."""
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    err, _ = float32_error(deep_net("relu", depth, sigma_w2, parametrization), x)
    assert err <= 2 * (depth + 1) * UNIT_ROUNDOFF[torch.float32]


@pytest.mark.parametrize("depth,sigma_w2", [(50, 1.0), (50, 3.5), (30, 2.0)])
def test_float32_smooth_activation_as_accurate_as_the_float32_network(depth, sigma_w2, one_thread):
    """tanh in the chaotic phase: the float32 network itself amplifies
    rounding, so plain PyTorch (torch.func Jacobians in float32) is off as
    much; fastntk stays within 2x of it (plus the ReLU bound)."""
    net = deep_net("tanh", depth, sigma_w2, "ntk")
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    err, ref = float32_error(net, x)
    plain = rel_to_scale(oracle_ntk(net.float(), x.float()), ref)
    net.double()
    assert err <= 2 * plain + 2 * (depth + 1) * UNIT_ROUNDOFF[torch.float32]


def exploding_net(dtype=torch.float32):
    return fastntk.MLP([8] + [16] * 30 + [2], activation="relu", parametrization="standard", sigma_w=10.0,
                       seed=0, dtype=dtype)


@pytest.mark.parametrize("call", [
    lambda net, x: fastntk.ntk(net, x),
    lambda net, x: fastntk.ntk(net, x, x[:2], outputs="trace", layerwise=True),
    lambda net, x: fastntk.ntk_diag(net, x),
])
def test_overflow_raises_naming_the_layer(call):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"overflowed to Inf/NaN in torch.float32 .* layer \d+ of 31 "
                                                  r".*compute in float64"):
        call(exploding_net(), x)
    assert torch.isfinite(call(exploding_net(torch.float64), x.double())).all()


def test_overflow_in_the_forward_pass_is_located():
    net = fastntk.MLP([8] + [16] * 60 + [2], activation="relu", parametrization="standard", sigma_w=30.0, seed=0)
    with pytest.raises(FloatingPointError, match=r"pre-activations of layer \d+ of 61"):
        fastntk.ntk(net, torch.randn(3, 8))


def assert_psd(kernel: torch.Tensor, n: int, what: str):
    """kernel: (N, N, K, K) or (N, N): symmetric, eigenvalues >= -tol."""
    k = kernel.shape[-1] if kernel.dim() == 4 else 1
    mat = kernel.permute(0, 2, 1, 3).reshape(n * k, n * k) if kernel.dim() == 4 else kernel
    assert torch.equal(mat, mat.T), what
    eig = torch.linalg.eigvalsh(mat.double())
    tol = 8 * n * k * UNIT_ROUNDOFF[kernel.dtype] * eig.abs().max()
    assert eig.min() >= -tol, f"{what}: min eigenvalue {eig.min():.3e} < -{tol:.3e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_theta_xx_is_psd(dtype, activation):
    net = fastntk.MLP([5, 16, 16, 16, 3], activation=activation, sigma_w=1.5, sigma_b=0.2, seed=3, dtype=dtype)
    # Near-duplicate inputs make the kernel nearly singular: the hard case.
    x = torch.randn(12, 5, generator=torch.Generator().manual_seed(0), dtype=dtype)
    x = torch.cat([x, x[:6] + 1e-4 * x[6:]])
    n = x.shape[0]
    assert_psd(fastntk.ntk(net, x), n, "full")
    assert_psd(fastntk.ntk(net, x, outputs="trace"), n, "trace")
    per_output = fastntk.ntk(net, x, outputs="per_output")
    for k in range(per_output.shape[-1]):
        assert_psd(per_output[..., k], n, f"output {k}")
    layerwise = fastntk.ntk(net, x, layerwise=True)
    for l in range(layerwise.shape[0]):
        for kind in range(2):
            assert_psd(layerwise[l, kind], n, f"layer {l} term {kind}")


def test_overflow_in_the_backward_pass_is_located():
    """Forward finite (tiny inputs), signals overflow: delta^0 = W^1^T delta^1
    with |delta^1| ~ 1e36 leaves float32."""
    net = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False) for i, o in ((4, 8), (8, 8), (8, 8), (8, 2))])
    with torch.no_grad():
        for layer, value in zip(net[1:], (1e10, 1e10, 1e25)):
            layer.weight.fill_(value)
    with pytest.raises(FloatingPointError, match=r"backpropagated signals of layer 0 of 4"):
        fastntk.ntk(net, torch.full((3, 4), 1e-30))
