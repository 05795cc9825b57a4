"""What the finiteness check of the parameters costs, per workload.

    python benchmarks/check_cost.py [--workloads S,D,M,W,L]

One thread, CPU time, medians: the engine's pass over every weight and bias
(``_check_finite_parameters``, still used on the per-layer path), the
whole-network op's check of its pre-activations (one aminmax per layer, as
csrc/mlp_ntk.h's FiniteCheck does), and a whole ``fastntk.ntk`` call for
scale. Not collected by the tests.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_small import median_us  # noqa: E402
from workloads import WORKLOADS, make_input, make_net  # noqa: E402

engine = importlib.import_module("fastntk.ntk")


def median_cpu_us(fn, repeats: int) -> float:
    return median_us(fn, repeats, clock=time.process_time)


def preactivation_check(hs: list[torch.Tensor]) -> torch.Tensor:
    """0 if every pre-activation is finite, else NaN: FiniteCheck's ops."""
    extrema = torch.stack([t for h in hs for t in torch.aminmax(h)])
    return (extrema - extrema).sum()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="S,D,M,W,L")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("workload  parameter pass  pre-activation check  whole call")
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        net, x = make_net(w), make_input(w.n)
        layers = engine._check_model(net, finite=False)
        hs = engine._forward(layers, x)
        big = w.n * sum(w.widths) > 1e6
        params = median_cpu_us(lambda: engine._check_finite_parameters(layers), 20 if big else 200)
        own = median_cpu_us(lambda: preactivation_check(hs), 20 if big else 200)
        call = median_cpu_us(lambda: engine.ntk(net, x), 5 if big else 50)
        print(f"{name:8s}  {params:11.0f} us  {own:17.0f} us  {call / 1e3:8.1f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
