"""fastntk.ntk_predict_ensemble: the NTK predictor of many inits at once,
against a plain loop of fastntk.ntk_predict over MLP(..., seed=s), float64."""

import math

import pytest
import torch

import fastntk

from conftest import rel_err

SEEDS = [3, 7, 11, 20]


def _data(n0: int, k: int, n: int = 6, m: int = 4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n0, generator=g, dtype=torch.float64)
    xt = torch.randn(m, n0, generator=g, dtype=torch.float64)
    return x, torch.randn(n, k, generator=g, dtype=torch.float64), xt


@pytest.mark.parametrize("widths,activation,parametrization,sigma_b,bias,method,ridge", [
    ([3, 16, 1], "relu", "standard", 0.0, True, "gd", 0.0),
    ([3, 16, 16, 2], "tanh", "standard", 0.3, True, "flow", 0.0),
    ([3, 12, 12, 3], "erf", "ntk", 0.2, True, "gd", 0.1),
    ([3, 20, 2], "sigmoid", "ntk", 0.0, False, "flow", 0.0),
    ([3, 10, 10, 10, 1], "relu", "ntk", 0.5, True, "flow", 0.05),
])
def test_each_init_equals_ntk_predict_of_its_mlp(widths, activation, parametrization, sigma_b, bias, method, ridge):
    x, y, xt = _data(widths[0], widths[-1])
    kw = dict(activation=activation, parametrization=parametrization, sigma_w=1.5, sigma_b=sigma_b, bias=bias)
    times = [0, 3, 40, math.inf]
    x_before, y_before = x.clone(), y.clone()
    ens = fastntk.ntk_predict_ensemble(widths, x, y, xt, t=times, seeds=SEEDS, lr=0.01, ridge=ridge,
                                       method=method, chunk=3, **kw)
    assert torch.equal(x, x_before) and torch.equal(y, y_before)
    assert ens.seeds == SEEDS and ens.n_inits == 4
    assert ens.test.shape == (4, 4, 4, widths[-1]) and ens.train.shape == (4, 4, 6, widths[-1])
    loop = []
    for i, s in enumerate(SEEDS):
        net = fastntk.MLP(widths, seed=s, dtype=torch.float64, **kw)
        pred = fastntk.ntk_predict(net, x, y, xt, t=times, lr=0.01, ridge=ridge, method=method)
        loop.append(pred.test)
        assert rel_err(ens.f0_train[i], pred.f0_train) < 1e-13 and rel_err(ens.f0_test[i], pred.f0_test) < 1e-13
        assert rel_err(ens.eigenvalues[i], pred.eigenvalues) < 1e-10
        assert rel_err(ens.train[i], pred.train) < 1e-10 and rel_err(ens.test[i], pred.test) < 1e-10
    loop = torch.stack(loop)
    assert rel_err(ens.test_mean, loop.mean(0)) < 1e-10 and rel_err(ens.test_var, loop.var(0)) < 1e-9
    assert ens.test_var.shape == (4, 4, widths[-1]) and (ens.test_var[1:] > 0).all()
    # the t = inf train outputs interpolate (up to the ridge)
    if ridge == 0:
        assert rel_err(ens.train[:, -1], y.expand(4, *y.shape)) < 1e-7


def test_without_the_initial_function_it_is_the_mirrored_networks_prediction():
    widths = [2, 24, 24, 1]
    x, y, xt = _data(2, 1)
    kw = dict(activation="relu", parametrization="standard", sigma_w=1.4)
    ens = fastntk.ntk_predict_ensemble(widths, x, y[:, 0], xt, t=[10, math.inf], seeds=SEEDS[:3], lr=0.005,
                                       method="gd", initial_function=False, **kw)
    assert torch.equal(ens.f0_test, torch.zeros(3, 4, 1, dtype=torch.float64))
    with_f0 = fastntk.ntk_predict_ensemble(widths, x, y[:, 0], xt, t=[10, math.inf], seeds=SEEDS[:3], lr=0.005,
                                           method="gd", **kw)
    for i, s in enumerate(SEEDS[:3]):
        mirrored = fastntk.MLP(widths, mirrored=True, seed=s, dtype=torch.float64, **kw)
        pred = fastntk.ntk_predict(mirrored, x, y, xt, t=[10, math.inf], lr=0.005, method="gd")
        assert rel_err(ens.test[i], pred.test) < 1e-10
    # the initial function adds variance over inits: with it the spread of the predictor is larger here
    assert with_f0.test_var.mean() > ens.test_var.mean()


def test_chunks_and_one_init():
    widths = [3, 8, 1]
    x, y, xt = _data(3, 1)
    a = fastntk.ntk_predict_ensemble(widths, x, y, xt, seeds=5, chunk=2, sigma_w=1.2)
    b = fastntk.ntk_predict_ensemble(widths, x, y, xt, seeds=5, chunk=5, sigma_w=1.2)
    assert a.seeds == [0, 1, 2, 3, 4] and rel_err(a.test, b.test) < 1e-12
    one = fastntk.ntk_predict_ensemble(widths, x, y, None, seeds=[4], sigma_w=1.2)
    assert one.test is None and torch.isnan(one.train_var).all()
    with pytest.raises(ValueError, match="no test outputs: pass x_test"):
        one.test_mean


@pytest.mark.parametrize("kwargs,error,word", [
    (dict(y_train=torch.zeros(5, 1, dtype=torch.float64)), ValueError, r"y_train must have shape \(N, K\) = \(6, 1\)"),
    (dict(x_train=torch.zeros(6, 2, dtype=torch.float64)), ValueError, r"x_train must have shape \(N, n_0\)"),
    (dict(x_test=torch.zeros(4, 5, dtype=torch.float64)), ValueError, r"x_test must have shape \(N, n_0\)"),
    (dict(x_test=[[1.0, 2.0, 3.0]]), TypeError, "x_test must be a floating-point torch.Tensor"),
    (dict(chunk=0), ValueError, "chunk must be a positive int"),
    (dict(initial_function=1), TypeError, "initial_function must be a bool"),
    (dict(method="sgd"), ValueError, "method must be one of"),
    (dict(seeds=0), ValueError, "seeds must be a positive number"),
    (dict(widths=[3]), ValueError, "widths must list at least"),
])
def test_bad_arguments(kwargs, error, word):
    x, y, xt = _data(3, 1)
    args = dict(widths=[3, 8, 1], x_train=x, y_train=y, x_test=xt)
    args.update(kwargs)
    with pytest.raises(error, match=word):
        fastntk.ntk_predict_ensemble(**args)
