"""Calls are reproducible, thread-safe and leak-free: bitwise-identical
results over repeated calls; agreement across torch thread counts; two Python
threads computing different models at once; no growth in memory or live
tensors over 1,000 calls; torch.compile of a function calling fastntk.ntk
(see docs/numerics.md for what these mean and do not mean)."""

from __future__ import annotations

import gc
import threading
import warnings

import pytest
import torch

import fastntk


def calls(net, x):
    """Every public entry point once, on x and on a second batch."""
    x2 = x[: len(x) // 2] * 0.5
    return [fastntk.ntk(net, x), fastntk.ntk(net, x, x2, outputs="trace"),
            fastntk.ntk(net, x, outputs="per_output", layerwise=True), fastntk.ntk_diag(net, x)]


@pytest.mark.parametrize("widths,n", [([7, 33, 33, 4], 19), ([64, 256, 256, 10], 150)])
def test_repeated_calls_are_bitwise_identical(widths, n):
    net = fastntk.MLP(widths, activation="gelu", sigma_w=1.4, sigma_b=0.1, seed=0)
    x = torch.randn(n, widths[0], generator=torch.Generator().manual_seed(0))
    first = calls(net, x)
    for _ in range(3):
        for a, b in zip(first, calls(net, x)):
            assert torch.equal(a, b)


def test_thread_counts_agree_to_rounding():
    """Not bitwise in general: the GEMMs' reduction order may depend on the
    thread count (docs/numerics.md)."""
    net = fastntk.MLP([64, 256, 256, 10], seed=0)
    x = torch.randn(150, 64, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = calls(net, x)
        torch.set_num_threads(2)
        two = calls(net, x)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, rtol=0, atol=16 * 2.0 ** -24 * a.abs().max().item())


def test_two_python_threads_get_their_own_right_answers():
    nets = [fastntk.MLP([6, 40, 40, 3], activation="tanh", seed=1, dtype=torch.float64),
            fastntk.MLP([9, 25, 25, 25, 2], activation="relu", parametrization="standard", seed=2,
                        dtype=torch.float64)]
    xs = [torch.randn(30, 6, dtype=torch.float64), torch.randn(24, 9, dtype=torch.float64)]
    expected = [calls(net, x) for net, x in zip(nets, xs)]
    results: list[list] = [[], []]
    errors = []

    def work(i):
        try:
            for _ in range(15):
                results[i].append(calls(nets[i], xs[i]))
        except Exception as exc:  # reported below: an exception in a thread does not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(2):
        assert len(results[i]) == 15
        for got in results[i]:
            for a, b in zip(got, expected[i]):
                torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13 * b.abs().max().item())


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch objects warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_no_memory_growth_over_1000_calls(one_thread):
    psutil = pytest.importorskip("psutil")
    net = fastntk.MLP([8, 32, 32, 4], seed=0, dtype=torch.float64)
    x = torch.randn(32, 8, dtype=torch.float64)
    # Each full kernel is 32*32*4*4 float64 = 128 KiB: keeping one per call
    # would add 128 MB over the loop.
    for _ in range(50):
        fastntk.ntk(net, x)
    process = psutil.Process()
    rss, tensors = process.memory_info().rss, live_tensors()
    for i in range(1000):
        fastntk.ntk(net, x) if i % 2 else fastntk.ntk_diag(net, x, outputs="trace")
    assert live_tensors() <= tensors
    assert process.memory_info().rss - rss < 32 * 2 ** 20


def test_ops_refuse_inputs_that_require_grad():
    d = torch.ones(2, 1, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match="delta_next requires grad, but fastntk ops are not differentiable"):
        fastntk._ops.backprop_delta(d, torch.ones(3, 4), torch.ones(2, 4), 1.0, "relu")


@pytest.mark.slow
def test_torch_compile_runs_and_breaks_only_at_the_finiteness_checks():
    """The ops trace without graph breaks (test_ops.py compiles them with
    fullgraph=True); ntk breaks the graph only where it checks inputs,
    weights and the result for NaN/Inf, which needs the data."""
    net = fastntk.MLP([5, 16, 16, 3], seed=0)
    x = torch.randn(4, 5)

    def kernel_times_two(x):
        return fastntk.ntk(net, x, outputs="trace") * 2

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    assert torch.equal(torch.compile(kernel_times_two, backend="eager")(x), kernel_times_two(x))
    reasons = list(counters["graph_break"])
    assert reasons and all("Tensor.item()" in r for r in reasons), reasons
