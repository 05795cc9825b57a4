"""Timings of fastntk.infinite: the tanh NTK of a network with 10 hidden
layers on N normalized inputs, and eoc_curve.

    python benchmarks/bench_infinite.py [N ...]      (default: 500 2000)

Prints one line per run (seconds, wall clock). Not collected by the tests.
"""

from __future__ import annotations

import sys
import time

import torch

from fastntk import infinite


def tanh_ntk_seconds(n: int, n0: int = 30, depth: int = 11) -> float:
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(n, n0, generator=g, dtype=torch.float64), dim=1)
    start = time.perf_counter()
    infinite.ntk(x, depth=depth, activation="tanh", sigma_w=1.5, sigma_b=0.1)
    return time.perf_counter() - start


def eoc_seconds() -> float:
    start = time.perf_counter()
    infinite.eoc_curve("tanh", [0.0, 0.05])
    return time.perf_counter() - start


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [500, 2000]
    print(f"torch threads: {torch.get_num_threads()}")
    for n in sizes:
        print(f"tanh NTK, 10 hidden layers, N = {n}: {tanh_ntk_seconds(n):.2f} s")
    print(f"eoc_curve('tanh', [0.0, 0.05]): {eoc_seconds():.2f} s")
