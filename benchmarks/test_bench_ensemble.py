"""Many small networks: fastntk.ensemble against a Python loop of
single-network calls and against a torch.func Jacobian loop.

Workload (the ICML 2022 setting): ReLU MLP, standard parametrization,
width 100, 49 hidden layers (50 weight layers), scalar output, 500 inits,
2 inputs on the unit sphere (cosine 0.5), float64, CPU. Each case times the
whole job, drawing the weights included (identical weights everywhere:
init s is ``fastntk.MLP(..., seed=s)``; the projected sampler draws other
inits from the same distribution), and, where it can be separated, the
kernel part alone with the weights drawn beforehand. ``extra_info`` has the
time per init. torch.func runs fewer inits (it is slow) and is compared per
init.

    python -m pytest benchmarks/test_bench_ensemble.py --benchmark-only -q
"""

from __future__ import annotations

import math

import pytest
import torch

import fastntk
from fastntk.ensemble import _chunk_kernels, ensemble_ntk, init_weights
from fastntk.models import Activation

WIDTH, HIDDEN, INITS, FUNC_INITS = 100, 49, 500, 20
WIDTHS = [WIDTH] * (HIDDEN + 1) + [1]
SIGMA_W = math.sqrt(2.0)
NET = dict(activation="relu", parametrization="standard", sigma_w=SIGMA_W, sigma_b=0.0)


def _inputs():
    x = torch.zeros(2, WIDTH, dtype=torch.float64)
    x[0, 0] = 1.0
    x[1, 0], x[1, 1] = 0.5, math.sqrt(0.75)
    return x


X = _inputs()


@pytest.fixture(scope="module")
def nets():
    return [fastntk.MLP(WIDTHS, seed=s, dtype=torch.float64, **NET) for s in range(INITS)]


@pytest.fixture(scope="module")
def reference(nets):
    return torch.stack([fastntk.ntk(n, X, outputs="trace") for n in nets])


def _record(benchmark, n_inits):
    benchmark.extra_info["n_inits"] = n_inits
    benchmark.extra_info["per_init_ms"] = benchmark.stats.stats.min / n_inits * 1e3


def test_ensemble_with_init(benchmark, reference):
    st = benchmark.pedantic(lambda: ensemble_ntk(WIDTHS, X, seeds=INITS, progress=False, **NET),
                            rounds=2, iterations=1, warmup_rounds=0)
    assert torch.allclose(st.mean, reference.mean(0), rtol=1e-10)
    _record(benchmark, INITS)


def test_ensemble_projected_with_init(benchmark, reference):
    # another sample of inits from the same distribution: the means agree within their standard errors
    st = benchmark.pedantic(lambda: ensemble_ntk(WIDTHS, X, seeds=INITS, progress=False, sampler="projected",
                                                 keep=True, **NET), rounds=3, iterations=1, warmup_rounds=1)
    se = (st.var / INITS + reference.var(0) / len(reference)).sqrt()
    assert ((st.mean - reference.mean(0)).abs() / se).max() < 5
    _record(benchmark, INITS)


def test_ensemble_kernels_only(benchmark, reference):
    ws, bs = init_weights(WIDTHS, list(range(INITS)), parametrization="standard", sigma_w=SIGMA_W)
    scales, bias_scales = [1.0] * len(ws), [1.0] * len(ws)

    def run():
        out = [_chunk_kernels([w[i:i + 50] for w in ws], [b[i:i + 50] for b in bs], scales, bias_scales,
                              Activation("relu"), X, None, 1, "trace", layerwise=False)
               for i in range(0, INITS, 50)]
        return torch.cat(out)

    k = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert torch.allclose(k, reference, rtol=1e-10)
    _record(benchmark, INITS)


def test_loop_fastntk_with_init(benchmark, reference):
    def run():
        return torch.stack([fastntk.ntk(fastntk.MLP(WIDTHS, seed=s, dtype=torch.float64, **NET), X,
                                        outputs="trace") for s in range(INITS)])

    k = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert torch.allclose(k, reference, rtol=1e-12)
    _record(benchmark, INITS)


def test_loop_fastntk_kernels_only(benchmark, nets, reference):
    k = benchmark.pedantic(lambda: torch.stack([fastntk.ntk(n, X, outputs="trace") for n in nets]),
                           rounds=3, iterations=1, warmup_rounds=1)
    assert torch.allclose(k, reference, rtol=1e-12)
    _record(benchmark, INITS)


def _jacrev_trace_ntk(net, x):
    params = {k: v.detach() for k, v in net.named_parameters()}
    jac = torch.func.jacrev(lambda p, inp: torch.func.functional_call(net, p, (inp,)))(params, x)
    return sum(torch.einsum("ik...,jk...->ij", j, j) for j in jac.values())


def test_loop_torchfunc_kernels_only(benchmark, nets, reference):
    sub = nets[:FUNC_INITS]
    k = benchmark.pedantic(lambda: torch.stack([_jacrev_trace_ntk(n, X) for n in sub]),
                           rounds=2, iterations=1, warmup_rounds=1)
    assert torch.allclose(k, reference[:FUNC_INITS], rtol=1e-10)
    _record(benchmark, FUNC_INITS)
