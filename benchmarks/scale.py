"""Time and peak memory against N for the scale features, with fitted exponents.

    python benchmarks/scale.py [--quick] [--out bench-results]

Network: NTK-parametrized ReLU MLP [64, 512, 512, 512, 1] (K = 1), float32.
Each point runs in a fresh process; peak memory is the process's resident
high-water mark (VmHWM, reset just before the call, so it sees torch's
allocations, which tracemalloc does not) above its baseline, with glibc's
mmap threshold fixed so that freed blocks leave the RSS. Rows:

- ``dense (unblocked)``: fastntk.ntk(..., outputs="trace"), the N x N
  output included in the peak;
- ``dense blocked``: the same with max_memory=64MB into a preallocated output
  (the output is part of the baseline, so the peak is the call's working set);
- ``ntk_vp``: one product Theta v, matrix-free;
- ``eigh k=10``: fastntk.eigh (scipy eigsh on the operator, signals cached).

Theory: the dense kernel's time grows as N^2 (the Grams; N^1 for the passes),
its blocked working set stays flat; ntk_vp's time and memory grow as N^1;
eigh as N^1 times the number of Lanczos steps.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

POINT = r"""
import json, sys, time, torch, fastntk

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

kind, n = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(int(sys.argv[3]))
net = fastntk.MLP([64, 512, 512, 512, 1], sigma_w=2 ** 0.5, seed=0)
x = torch.randn(n, 64, generator=torch.Generator().manual_seed(1))
v = torch.randn(n)
out = torch.ones(n, n) if kind == "dense blocked" else None
fastntk.ntk(net, x[:32], outputs="trace")
fastntk.ntk_vp(net, x[:32], v[:32])
calls = {
    "dense (unblocked)": lambda: fastntk.ntk(net, x, outputs="trace"),
    "dense blocked": lambda: fastntk.ntk(net, x, outputs="trace", max_memory="64MB", out=out),
    "ntk_vp": lambda: fastntk.ntk_vp(net, x, v),
    "eigh k=10": lambda: fastntk.eigh(net, x, k=10, tol=1e-6),
}
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
start = time.perf_counter()
calls[kind]()
seconds = time.perf_counter() - start
print(json.dumps({"kind": kind, "n": n, "seconds": seconds, "peak_mb": (status("VmHWM") - base) / 1e6}))
"""

SIZES = {
    "dense (unblocked)": [1000, 2000, 4000],
    "dense blocked": [1000, 2000, 4000],
    "ntk_vp": [1000, 4000, 16000, 64000],
    "eigh k=10": [1000, 4000, 16000],
}


def fit(points: list[dict], key: str) -> float:
    """Slope of log(key) against log(N) over the upper half of the sweep."""
    upper = points[len(points) // 2 - (len(points) % 2 == 0):] if len(points) > 2 else points
    xs = [math.log(p["n"]) for p in upper]
    ys = [math.log(max(p[key], 1e-9)) for p in upper]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the first two sizes of each row")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadier on a shared machine, where OpenMP barriers stall)")
    args = parser.parse_args()
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    results = {}
    for kind, sizes in SIZES.items():
        results[kind] = []
        for n in sizes[:2] if args.quick else sizes:
            run = subprocess.run([sys.executable, "-c", POINT, kind, str(n), str(args.threads)], capture_output=True, text=True,
                                 env=env, check=True)
            point = json.loads(run.stdout.strip().splitlines()[-1])
            results[kind].append(point)
            print(f"{kind:18s} N = {n:6d}: {point['seconds']:8.2f} s, peak {point['peak_mb']:8.1f} MB", flush=True)
    print("\n| row | N | time | peak memory | time exponent | memory exponent |\n|---|---|---|---|---:|---:|")
    for kind, points in results.items():
        ns = ", ".join(f"{p['n']}" for p in points)
        times = ", ".join(f"{p['seconds']:.2f} s" for p in points)
        peaks = ", ".join(f"{p['peak_mb']:.0f} MB" for p in points)
        print(f"| {kind} | {ns} | {times} | {peaks} | {fit(points, 'seconds'):.2f} | {fit(points, 'peak_mb'):.2f} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
