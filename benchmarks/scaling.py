"""Scaling study: fastntk (full kernel) time and memory against width and N.

    python benchmarks/scaling.py [--out bench-results] [--quick]

Network as in the suite (NTK-parametrized ReLU MLP, 3 hidden layers, K = 1,
d = 64, float32, x2 = x1). Two sweeps:

- width 256 .. 8192 at N = 256,
- N 64 .. 4096 at width 512.

Time: best of a few runs (the machine is shared; the minimum is the least
disturbed); memory: the working set of one call in a fresh process (as in
benchmarks/memory.py). Log-log fits over the upper half of each sweep give
the measured exponents, printed next to the theoretical ones:

- time vs width at fixed N: forward + K backward passes cost
  ~ 4 N K L width^2, the Grams ~ 2 N^2 (1 + K^2) L width, so the exponent
  tends to 2 (the "model" column is the local slope of the analytic FLOP
  count over the same points, which is below 2 while the Grams still matter);
- time vs N at fixed width: forward/backward linear in N, Grams quadratic:
  exponent tends to 2 for large N;
- memory vs width: activations and signals, O(N width): exponent 1 (the
  weights belong to the model, not the call);
- memory vs N: O(N width) + the N^2 K^2 output: between 1 and 2, tending to 2.

Writes scaling.json and scaling.png to --out, and copies the PNG to
docs/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

DEPTH, K, D_IN = 3, 1, 64
WIDTHS = (256, 512, 1024, 2048, 4096, 8192)
NS = (64, 128, 256, 512, 1024, 2048, 4096)
FIXED_N, FIXED_WIDTH = 256, 512


def _widths(width):
    return [D_IN] + [width] * DEPTH + [K]


def _setup(width, n):
    from workloads import make_input, make_net, WORKLOADS

    return make_net(WORKLOADS["S"], _widths(width)), make_input(n)


def child(width: int, n: int) -> dict:
    import gc

    import torch

    import fastntk
    from memory import _reset_hwm, _status_kb

    net, x = _setup(width, n)
    with torch.no_grad():
        fastntk.ntk(net, x[:2])
        gc.collect()
        rss0 = _status_kb("VmRSS") * 1024
        _reset_hwm()
        fastntk.ntk(net, x)
    return {"working_bytes": _status_kb("VmHWM") * 1024 - rss0}


def measure_time(width, n, budget):
    import torch

    import fastntk

    net, x = _setup(width, n)
    times = []
    with torch.no_grad():
        fastntk.ntk(net, x)
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < budget and len(times) < 20):
            t = time.perf_counter()
            fastntk.ntk(net, x)
            times.append(time.perf_counter() - t)
    return min(times)


def measure_memory(width, n):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--child", str(width), str(n)], env=env,
                          capture_output=True, text=True, timeout=600)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1])["working_bytes"] if lines else None


def fit(xs, ys):
    """Least-squares slope of log y on log x."""
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main(argv=None) -> int:
    from workloads import flops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--docs", default=os.path.join(os.path.dirname(HERE), "docs", "scaling.png"))
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of repeats per point")
    ap.add_argument("--quick", action="store_true", help="fewer, smaller points (a smoke test)")
    ap.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        return 0

    widths, ns = (WIDTHS[:3], NS[:3]) if args.quick else (WIDTHS, NS)
    sweeps = {"width": [(w, FIXED_N) for w in widths], "N": [(FIXED_WIDTH, n) for n in ns]}
    result = {"depth": DEPTH, "k": K, "fixed_n": FIXED_N, "fixed_width": FIXED_WIDTH, "sweeps": {}}
    for name, points in sweeps.items():
        rows = []
        for width, n in points:
            t = measure_time(width, n, args.budget)
            m = measure_memory(width, n)
            f = flops(_widths(width), n, "fastntk_full")
            rows.append({"width": width, "n": n, "seconds": t, "working_bytes": m, "flops": f})
            print(f"{name:5s} width {width:5d} N {n:5d}: {t * 1e3:9.1f} ms  {f / t / 1e9:6.1f} GFLOP/s  "
                  f"memory {m / 2 ** 20 if m else float('nan'):8.1f} MB", flush=True)
        xs = [r["width"] if name == "width" else r["n"] for r in rows]
        upper = slice(len(rows) // 2, None)
        fits = {
            "time": fit(xs[upper], [r["seconds"] for r in rows][upper]),
            "time_model": fit(xs[upper], [r["flops"] for r in rows][upper]),
            "time_asymptote": 2.0,
            "memory": fit(xs[upper], [r["working_bytes"] for r in rows][upper])
            if all(r["working_bytes"] for r in rows) else None,
            "memory_asymptote": 1.0 if name == "width" else 2.0,
        }
        result["sweeps"][name] = {"rows": rows, "fits": fits}
        print(f"  {name}: time exponent {fits['time']:.2f} (FLOP model over the same points "
              f"{fits['time_model']:.2f}, asymptote 2), memory exponent "
              f"{fits['memory'] if fits['memory'] is not None else float('nan'):.2f} "
              f"(asymptote {fits['memory_asymptote']:.0f})")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(result, f, indent=1)
    png = os.path.join(args.out, "scaling.png")
    plot(result, png)
    if args.docs:
        os.makedirs(os.path.dirname(args.docs), exist_ok=True)
        shutil.copyfile(png, args.docs)
    print(f"wrote {args.out}/scaling.json, {png}" + (f", {args.docs}" if args.docs else ""))
    return 0


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    for col, name in enumerate(("width", "N")):
        sweep = result["sweeps"][name]
        rows, fits = sweep["rows"], sweep["fits"]
        xs = [r["width"] if name == "width" else r["n"] for r in rows]
        fixed = f"N = {result['fixed_n']}" if name == "width" else f"width = {result['fixed_width']}"
        ax = axes[0, col]
        ts = [r["seconds"] for r in rows]
        ax.loglog(xs, ts, "o-", label=f"fastntk, measured (slope {fits['time']:.2f})")
        # FLOP model scaled to the last measured point
        fl = [r["flops"] for r in rows]
        ax.loglog(xs, [f * ts[-1] / fl[-1] for f in fl], "--",
                  label=f"FLOP model (slope {fits['time_model']:.2f}; asymptote 2)")
        ax.set_xlabel(name)
        ax.set_ylabel("time (s)")
        ax.set_title(f"time vs {name} ({fixed}, {result['depth']} hidden, K = {result['k']})")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax = axes[1, col]
        ms = [r["working_bytes"] / 2 ** 20 if r["working_bytes"] else float("nan") for r in rows]
        ax.loglog(xs, ms, "s-", color="C2",
                  label=f"working memory (slope {fits['memory']:.2f}; asymptote {fits['memory_asymptote']:.0f})"
                  if fits["memory"] is not None else "working memory")
        ax.set_xlabel(name)
        ax.set_ylabel("working memory (MB)")
        ax.set_title(f"memory vs {name} ({fixed})")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.suptitle("fastntk.ntk, full kernel, float32 CPU; exponents fitted over the upper half of each sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
