"""fastntk.ntk_vp against torch.func's matrix-free NTK product, interleaved.

    python benchmarks/scale_vp_ab.py

Theta v = J (J^T v) with torch.func: one vjp of the network's output with
cotangent v, then one jvp with the resulting parameter-shaped tangent. Network
[64, 512, 512, 512, 1] (K = 1, trace), float32, one torch thread (steadier on
a shared machine). Each size: the two are checked against each other, then
timed alternately three times; the best of each is reported. Also the cached
operator (fastntk.NTKOperator), whose products after the first skip the
forward and backward passes (what eigh and kernel_regression use).
"""

from __future__ import annotations

import time

import torch
from torch.func import functional_call, jvp, vjp

import fastntk


def torch_func_vp(net, params, x, v):
    def f(p):
        return functional_call(net, p, (x,))

    _, pullback = vjp(f, params)
    (grad,) = pullback(v[:, None])
    return jvp(f, (params,), (grad,))[1][:, 0]


def best(call, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    net = fastntk.MLP([64, 512, 512, 512, 1], sigma_w=2 ** 0.5, seed=0)
    params = {k: p.detach() for k, p in net.named_parameters()}
    print("| N | fastntk.ntk_vp | torch.func vjp + jvp | ratio | cached NTKOperator product |\n|---|---:|---:|---:|---:|")
    for n in (1000, 4000, 16000):
        x, v = torch.randn(n, 64), torch.randn(n)
        ours, theirs = fastntk.ntk_vp(net, x, v), torch_func_vp(net, params, x, v)
        assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-5
        t_ours = t_theirs = float("inf")
        for _ in range(3):  # interleaved
            t_ours = min(t_ours, best(lambda: fastntk.ntk_vp(net, x, v), 1))
            t_theirs = min(t_theirs, best(lambda: torch_func_vp(net, params, x, v), 1))
        op = fastntk.NTKOperator(net, x)
        op @ v
        t_cached = best(lambda: op @ v)
        print(f"| {n} | {t_ours:.3f} s | {t_theirs:.3f} s | {t_theirs / t_ours:.2f}x | {t_cached:.3f} s |", flush=True)


if __name__ == "__main__":
    main()
