"""Empirical NTK on the CPU: fastntk (every mode) against the plain-PyTorch
layerwise formula (the floor), and torch.func Jacobian contraction and
NTK-vector products, on the same network and inputs.

Benchmark group = workload (S, M, W, D, L; see workloads.py). Each case is
checked against fastntk once, outside the timed function; the analytic FLOP
count and GFLOP/s go into ``extra_info``. neural-tangents runs in its own
environment (nt_bench.py) and the report merges it.
"""

from __future__ import annotations

import pytest
import torch

from workloads import (WORKLOADS, flops, make_method, methods_for, own_shape_gemms, reference_method,
                       rel_err, skip_reason)

#: float32 agreement with fastntk (relative to the largest entry). The same
#: forward op order gives both the same ReLU masks; the Grams differ in
#: summation order only.
TOLERANCE = 1e-4

CASES = [(w, m) for w in WORKLOADS for m in methods_for(WORKLOADS[w])]

#: Cases too slow for the default 5 rounds within the `make bench` budget:
#: timed rounds (the correctness call before them is the warm-up).
ROUNDS = {"torchfunc_ntkvp": 1, "L": 3}


def _gemm(benchmark, when):
    benchmark.group = "gemm"
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    benchmark.extra_info.update(flops=2.0 * n ** 3, kind="gemm", n=n, when=when)
    benchmark(torch.mm, a, b)
    benchmark.extra_info["gflops"] = 2.0 * n ** 3 / benchmark.stats.stats.median / 1e9


def test_gemm_rate_start(benchmark):
    """The machine's float32 GEMM rate (a 2048^3 torch.mm), measured before
    the NTK cases and again after them (test_gemm_rate_end, defined last so
    pytest runs it last); the report uses the better of the two."""
    _gemm(benchmark, "start")


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_gemm_rate_own_shapes(benchmark, workload):
    """The float32 GEMM rate on each workload's own GEMM shapes (its forward,
    backward and Gram GEMMs, each once): the rate the small-GEMM floor uses."""
    w = WORKLOADS[workload]
    benchmark.group = "gemm_shapes"
    run, f = own_shape_gemms(w.widths, w.n)
    benchmark.extra_info.update(flops=f, kind="gemm_shapes", workload_shapes=workload)
    rounds = ROUNDS.get(workload)
    if rounds:
        benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark(run)
    benchmark.extra_info["gflops"] = f / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("workload,method", CASES, ids=[f"{w}-{m}" for w, m in CASES])
def test_ntk(benchmark, setups, references, workload, method):
    w = WORKLOADS[workload]
    benchmark.group = workload
    reason = skip_reason(w, method)
    if reason:
        pytest.skip(reason)
    net, x = setups(workload)
    fn = make_method(method, net, x)
    with torch.no_grad():
        out = fn()  # warm-up and correctness, outside the timed function
    ref_method = reference_method(method)
    err = 0.0 if ref_method == method else rel_err(out, references(workload, ref_method))
    assert err < TOLERANCE, f"{method} differs from {ref_method} on {workload}: rel err {err:.2e}"
    del out
    f = flops(w.widths, w.n, method)
    benchmark.extra_info.update(workload=workload, method=method, flops=f, rel_err=err,
                                widths=w.widths, n=w.n, k=w.k, n_params=w.n_params)
    rounds = ROUNDS.get(method.rsplit("_", 1)[0] if method.startswith("torchfunc") else "", ROUNDS.get(workload))
    with torch.no_grad():
        if rounds:
            benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
        else:
            benchmark(fn)
    benchmark.extra_info["gflops"] = f / benchmark.stats.stats.median / 1e9


def test_gemm_rate_end(benchmark):
    _gemm(benchmark, "end")
