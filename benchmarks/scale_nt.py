"""The dense kernel against N: fastntk (unblocked and blocked) next to
neural-tangents' batched kernel ``nt.batch``.

    python benchmarks/scale_nt.py [--sizes 1000,2000,4000] [--batch 500] [--out bench-results]

Needs .venv-nt (``make bench-setup``). Network: the benchmark suite's
NTK-parametrized ReLU MLP [64, 512, 512, 512, 1] with biases (sigma_w =
sqrt(2), sigma_b = 0.1), float32, x2 = x1, K = 1 (the trace kernel is the
kernel). Rows, each point in a fresh process, one thread each (torch
threads 1; XLA with its Eigen pool off), the N x N output included in the
peak memory (VmHWM above the resident set before the call):

- ``fastntk``: ``fastntk.ntk(net, x, outputs="trace")``;
- ``fastntk blocked``: the same with ``block_size=BATCH`` (the x2 = x1
  triangle of blocks);
- ``nt.batch``: benchmarks/nt_batch.py, neural-tangents' structured
  derivatives in blocks of BATCH (all N^2 / BATCH^2 blocks), after a
  warm-up call that compiles the block kernel; a 200 x 200 tile of its
  output is checked against fastntk.

A point that fails (out of memory under the address-space limit, or
timeout) is reported as such. Not collected by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastntk  # noqa: E402
from nt_export import write_network  # noqa: E402
from scale import fit  # noqa: E402
from workloads import Workload, make_input, make_net  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NT_PYTHON = os.path.join(ROOT, ".venv-nt", "bin", "python")
WORKLOAD = Workload("scale", 3, 512, 1, 0, ("trace",))

POINT = r"""
import json, sys, time, torch, fastntk
sys.path.insert(0, sys.argv[4])
from nt_bench import _status_kb
from workloads import make_input, make_net
from scale_nt import WORKLOAD

kind, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
net, x = make_net(WORKLOAD), make_input(n)
fastntk.ntk(net, x[:64], outputs="trace")
block = {"fastntk": None, "fastntk blocked": batch}[kind]
rss0 = _status_kb("VmRSS") * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
start, cpu = time.perf_counter(), time.process_time()
fastntk.ntk(net, x, outputs="trace", block_size=block)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"n": n, "seconds": seconds, "cpu_seconds": cpu_seconds,
                  "peak_mb": (_status_kb("VmHWM") * 1024 - rss0) / 1e6}))
"""


def run_point(cmd: list[str], env: dict, timeout: float, limit_gb: float) -> dict:
    limit = int(limit_gb * 2 ** 30)
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        low = proc.stderr.lower()
        oom = "resource_exhausted" in low or "memory" in low or "bad_alloc" in low
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]
        return {"error": (f"out of memory under the {limit_gb:.0f} GB limit: " if oom else f"exit {proc.returncode}: ")
                + last}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1000,2000,4000")
    ap.add_argument("--batch", type=int, default=500, help="block size of both (N must be a multiple: nt.batch)")
    ap.add_argument("--out", default="bench-results")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per point")
    ap.add_argument("--limit-gb", type=float, default=16.0, help="address-space limit per point")
    args = ap.parse_args()
    if not os.path.exists(os.path.join(ROOT, ".venv-nt", ".nt-ready")):
        sys.exit("scale_nt: .venv-nt is not set up (make bench-setup)")
    sizes = [int(s) for s in args.sizes.split(",")]
    bench_dir = os.path.dirname(os.path.abspath(__file__))
    tmp = tempfile.mkdtemp(prefix="scale_nt_")
    npz = os.path.join(tmp, "net.npz")
    net, x = make_net(WORKLOAD), make_input(max(sizes))
    write_network(npz, WORKLOAD, net, x)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
               PYTHONPATH=os.pathsep.join([ROOT, bench_dir, os.environ.get("PYTHONPATH", "")]))
    results = {"fastntk": [], "fastntk blocked": [], "nt.batch": []}
    for n in sizes:
        for kind in results:
            if kind == "nt.batch":
                tile = os.path.join(tmp, "tile.npy")
                point = run_point([NT_PYTHON, os.path.join(bench_dir, "nt_batch.py"), npz, str(n), str(args.batch),
                                   "--tile", tile], env, args.timeout, args.limit_gb)
                if "error" not in point:
                    with torch.no_grad():
                        ref = fastntk.ntk(net, x[:200], x[n - 200:n], outputs="trace").double().numpy()
                    point["tile_rel_diff"] = float(np.abs(np.load(tile) - ref).max() / np.abs(ref).max())
            else:
                point = run_point([sys.executable, "-c", POINT, kind, str(n), str(args.batch), bench_dir],
                                  env, args.timeout, args.limit_gb)
            point["n"] = n
            results[kind].append(point)
            print(f"{kind:16s} N = {n:6d}: {json.dumps(point)}", flush=True)
    print("\nTimes: wall clock (process CPU time); peak memory includes the N x N output.\n")
    print("| row | N | time | peak memory | time exponent | memory exponent |\n|---|---|---|---|---:|---:|")
    for kind, points in results.items():
        done = [p for p in points if "error" not in p]
        cells = [(f"{p['seconds']:.2f} s ({p['cpu_seconds']:.2f})", f"{p['peak_mb']:.0f} MB") if "error" not in p
                 else (p["error"], "-") for p in points]
        exps = (f"{fit(done, 'seconds'):.2f}", f"{fit(done, 'peak_mb'):.2f}") if len(done) >= 2 else ("-", "-")
        print(f"| {kind} | {', '.join(str(p['n']) for p in points)} | {', '.join(c[0] for c in cells)} "
              f"| {', '.join(c[1] for c in cells)} | {exps[0]} | {exps[1]} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "scale_nt.json"), "w") as f:
        json.dump({"batch": args.batch, "widths": WORKLOAD.widths, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
