"""Interleaved A/B timing of fastntk against the plain-PyTorch floor.

    python benchmarks/ab.py [--out bench-results/ab.json] [--workloads S,M,W,D] [--budget 20]

pytest-benchmark times one case after another; on a shared machine the load
changes between cases and the ratio of two medians taken minutes apart says
as much about the neighbours as about the code. Here each round runs fastntk
and the plain formula back to back, alternating which goes first, so both
see the same load; the ratio is reported from the per-round ratios (median)
and from the best times (min).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from workloads import WORKLOADS, make_input, make_method, make_net  # noqa: E402

MODES = ("full", "trace", "per_output", "diag", "layerwise")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results/ab.json")
    ap.add_argument("--workloads", default="S,M,W,D")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--budget", type=float, default=6.0, help="seconds per (workload, mode)")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--max-rounds", type=int, default=60)
    args = ap.parse_args(argv)
    results = []
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        net, x = make_net(w), make_input(w.n)
        for mode in args.modes.split(","):
            fns = {"fastntk": make_method(f"fastntk_{mode}", net, x), "plain": make_method(f"plain_{mode}", net, x)}
            with torch.no_grad():
                for f in fns.values():
                    f()
                times = {"fastntk": [], "plain": []}
                start = time.perf_counter()
                r = 0
                while r < args.max_rounds and (r < args.min_rounds or time.perf_counter() - start < args.budget):
                    order = ("fastntk", "plain") if r % 2 == 0 else ("plain", "fastntk")
                    for key in order:
                        t = time.perf_counter()
                        fns[key]()
                        times[key].append(time.perf_counter() - t)
                    r += 1
            ratios = sorted(a / b for a, b in zip(times["fastntk"], times["plain"]))
            res = {"workload": name, "mode": mode, "rounds": r,
                   "fastntk_min": min(times["fastntk"]), "plain_min": min(times["plain"]),
                   "fastntk_median": sorted(times["fastntk"])[r // 2], "plain_median": sorted(times["plain"])[r // 2],
                   "ratio_median": ratios[r // 2], "ratio_min": min(times["fastntk"]) / min(times["plain"])}
            results.append(res)
            print(f"{name} {mode:10s} rounds {r:3d}  fastntk/plain: median of ratios {res['ratio_median']:.2f}, "
                  f"min/min {res['ratio_min']:.2f}  (fastntk min {res['fastntk_min'] * 1e3:.1f} ms, "
                  f"plain min {res['plain_min'] * 1e3:.1f} ms)", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cases": results}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
