"""Where the time of one fastntk call goes on the small and deep workloads.

    python benchmarks/profile_small.py [--workloads S,D] [--modes full,trace,...] [--profiler]

Times the engine's stages separately (each the median of many repeats, in
microseconds): the engine's own Python (a call with the op stubbed out),
model parsing and checks (``_check_model``), input checks (``_check_input``), the forward pass, the backward pass and the
accumulation (the rest), the whole call, and the plain-PyTorch formula next
to it. With ``--profiler``, also prints torch.profiler's table of the
operators of one call (self CPU time). On a shared machine the absolute
numbers move with the neighbours' load; the split between stages is what
this script is for.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import importlib  # noqa: E402

import torch  # noqa: E402

engine = importlib.import_module("fastntk.ntk")
from workloads import WORKLOADS, make_input, make_method, make_net  # noqa: E402


def median_us(fn, repeats: int, clock=time.perf_counter) -> float:
    """Median time of fn() in microseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    times.sort()
    return times[len(times) // 2] * 1e6


def engine_python(net, x):
    """fastntk.ntk(net, x) with the whole-network op replaced by its result:
    the engine's own Python (parsing, checks, dispatch)."""
    result = engine.ntk(net, x)

    def run():
        op, engine._ops.mlp_ntk = engine._ops.mlp_ntk, lambda *args, **kwargs: result
        try:
            return engine.ntk(net, x)
        finally:
            engine._ops.mlp_ntk = op
    return run


def stages(net, x) -> dict:
    layers = engine._check_model(net)
    return {
        "engine Python (op stubbed)": engine_python(net, x),
        "check_model (parse + finiteness)": lambda: engine._check_model(net),
        "check_input": lambda: engine._check_input("x1", x, layers),
        "forward": lambda: engine._forward(layers, x),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="S,D")
    ap.add_argument("--modes", default="full,trace,per_output,diag,layerwise")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--profiler", action="store_true")
    args = ap.parse_args(argv)
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        net, x = make_net(w), make_input(w.n)
        print(f"== {name}: {w.depth} x {w.width}, K = {w.k}, N = {w.n}")
        with torch.no_grad():
            for label, fn in stages(net, x).items():
                print(f"  {label:36s} {median_us(fn, args.repeats):9.1f} us")
            for mode in args.modes.split(","):
                fast = make_method(f"fastntk_{mode}", net, x)
                plain = make_method(f"plain_{mode}", net, x)
                print(f"  {mode:10s} fastntk {median_us(fast, args.repeats):9.1f} us   "
                      f"plain {median_us(plain, args.repeats):9.1f} us")
                if args.profiler:
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                        for _ in range(10):
                            fast()
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))
    return 0


if __name__ == "__main__":
    sys.exit(main())
