"""Interleaved A/B timing of fastntk against the plain-PyTorch floor.

    python benchmarks/ab.py [--out bench-results/ab.json] [--workloads S,M,W,D] [--budget 20]

pytest-benchmark times one case after another; on a shared machine the load
changes between cases and the ratio of two medians taken minutes apart says
as much about the neighbours as about the code. Here each round runs fastntk
and the plain formula back to back, alternating which goes first, so both
see the same load; the ratio is reported from the per-round ratios (median)
and from the best times (min). ``--per-layer`` adds a third contestant in the
same rounds: fastntk with the whole-network op turned off (the per-layer
ops, one Python call each), to measure what the op gains. ``--clock cpu``
times with the process's CPU time instead of the wall clock: on a machine
shared past its core count, with ``--threads 1``, that counts the work done
and not the waits for a core (which can exceed the work tenfold).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import importlib  # noqa: E402

import torch  # noqa: E402

from workloads import WORKLOADS, make_input, make_method, make_net  # noqa: E402

MODES = ("full", "trace", "per_output", "diag", "layerwise")


def per_layer(fn):
    """fn run with fastntk's whole-network op turned off."""
    engine = importlib.import_module("fastntk.ntk")

    def run():
        previous, engine._USE_WHOLE_NETWORK_OP = engine._USE_WHOLE_NETWORK_OP, False
        try:
            return fn()
        finally:
            engine._USE_WHOLE_NETWORK_OP = previous
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results/ab.json")
    ap.add_argument("--workloads", default="S,M,W,D,L")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per (workload, mode)")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=60)
    ap.add_argument("--per-layer", action="store_true", help="also time fastntk's per-layer path")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    results = []
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        net, x = make_net(w), make_input(w.n)
        for mode in args.modes.split(","):
            fns = {"fastntk": make_method(f"fastntk_{mode}", net, x), "plain": make_method(f"plain_{mode}", net, x)}
            if args.per_layer:
                fns["per_layer"] = per_layer(fns["fastntk"])
            with torch.no_grad():
                for f in fns.values():
                    f()
                times = {key: [] for key in fns}
                start = time.perf_counter()
                r = 0
                while r < args.max_rounds and (r < args.min_rounds or time.perf_counter() - start < args.budget):
                    keys = list(fns)
                    order = keys[r % len(keys):] + keys[:r % len(keys)]
                    for key in (order if r % 2 == 0 else order[::-1]):
                        t = clock()
                        fns[key]()
                        times[key].append(clock() - t)
                    r += 1
            ratios = sorted(a / b for a, b in zip(times["fastntk"], times["plain"]))
            res = {"workload": name, "mode": mode, "rounds": r,
                   "fastntk_min": min(times["fastntk"]), "plain_min": min(times["plain"]),
                   "fastntk_median": sorted(times["fastntk"])[r // 2], "plain_median": sorted(times["plain"])[r // 2],
                   "ratio_median": ratios[r // 2], "ratio_min": min(times["fastntk"]) / min(times["plain"])}
            extra = ""
            if args.per_layer:
                lw = sorted(a / b for a, b in zip(times["per_layer"], times["plain"]))
                res.update(per_layer_min=min(times["per_layer"]), per_layer_ratio_median=lw[r // 2],
                           per_layer_ratio_min=min(times["per_layer"]) / min(times["plain"]))
                extra = (f"; per-layer path/plain: median {res['per_layer_ratio_median']:.2f}, "
                         f"min/min {res['per_layer_ratio_min']:.2f}")
            results.append(res)
            print(f"{name} {mode:10s} rounds {r:3d}  fastntk/plain: median of ratios {res['ratio_median']:.2f}, "
                  f"min/min {res['ratio_min']:.2f}  (fastntk min {res['fastntk_min'] * 1e3:.1f} ms, "
                  f"plain min {res['plain_min'] * 1e3:.1f} ms){extra}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cases": results}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
