"""neural-tangents empirical_ntk_fn on the benchmark workloads (runs in .venv-nt).

    .venv-nt/bin/python benchmarks/nt_bench.py [--inputs bench-results/nt_inputs] [--out bench-results/nt.json]

Needs no torch: reads the networks, inputs and fastntk reference NTKs that
benchmarks/nt_export.py wrote, builds the equivalent stax network
(stax.Dense(width, W_std, b_std, parameterization='ntk') and stax.Relu(),
with the torch weights copied in, so both libraries compute the NTK of the
very same function) and times ``nt.empirical_ntk_fn`` with each of
JACOBIAN_CONTRACTION, NTK_VECTOR_PRODUCTS and STRUCTURED_DERIVATIVES under
jax.jit, x2 = None (x2 = x1), ``trace_axes=()`` for the full (N, N, K, K)
kernel and ``trace_axes=(-1,)`` for trace (neural-tangents averages over
outputs there: we multiply by K before comparing with fastntk's sum).

Each case runs in a fresh child process (timing and peak memory together):
the first call (compile + run) is timed apart and reported as compile time
(first call minus the median run); then up to 5 timed runs with
block_until_ready; the resident-set high-water mark over the timed runs
(after the first call, reset with /proc/self/clear_refs) minus the resident
set before them is the working memory. The Jacobian contraction is skipped,
not attempted, when its N K P float32 Jacobian exceeds 12 GB; every child
runs under an address-space limit so one that would run out of memory fails
alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

IMPLS = ("JACOBIAN_CONTRACTION", "NTK_VECTOR_PRODUCTS", "STRUCTURED_DERIVATIVES")
SHORT = {"JACOBIAN_CONTRACTION": "nt_jac", "NTK_VECTOR_PRODUCTS": "nt_ntkvp",
         "STRUCTURED_DERIVATIVES": "nt_sd"}
JACOBIAN_LIMIT_BYTES = 12e9


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def load_network(path: str):
    """(apply_fn, params, x, z) of the stax network equal to the exported
    torch one (nt_export.py's .npz), float32."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import jax
    import numpy as np
    from neural_tangents import stax

    jax.config.update("jax_enable_x64", False)
    z = np.load(path)
    depth, width, k = int(z["depth"]), int(z["width"]), int(z["k"])
    sw, sb = float(z["sigma_w"]), float(z["sigma_b"])
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=sw, b_std=sb, parameterization="ntk"), stax.Relu()]
    layers.append(stax.Dense(k, W_std=sw, b_std=sb, parameterization="ntk"))
    _, apply_fn, _ = stax.serial(*layers)
    params = []
    for l in range(depth + 1):
        params.append((jax.numpy.asarray(z[f"W{l}"].T), jax.numpy.asarray(z[f"b{l}"])))
        if l < depth:
            params.append(())
    return apply_fn, params, jax.numpy.asarray(z["x"]), z


def child(path: str, impl: str, mode: str, max_rounds: int, budget_s: float) -> dict:
    import jax
    import numpy as np
    import neural_tangents as nt

    apply_fn, params, x, z = load_network(path)
    k = int(z["k"])
    ref = z[f"ref_{mode}"]
    trace_axes = () if mode == "full" else (-1,)
    kernel_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=trace_axes, vmap_axes=0,
                                            implementation=getattr(nt.NtkImplementation, impl)))
    rss_start = _status_kb("VmRSS") * 1024
    t = time.perf_counter()
    out = kernel_fn(x, None, params).block_until_ready()
    first = time.perf_counter() - t
    peak_first = _status_kb("VmHWM") * 1024 - rss_start
    got = np.asarray(out, dtype=np.float64) * (k if mode == "trace" else 1)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    del out, got
    rss0 = _status_kb("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    while len(times) < max_rounds and (not times or sum(times) + times[-1] < budget_s):
        t = time.perf_counter()
        kernel_fn(x, None, params).block_until_ready()
        times.append(time.perf_counter() - t)
    hwm = _status_kb("VmHWM") * 1024
    med = sorted(times)[len(times) // 2]
    return {"implementation": impl, "mode": mode, "times": times, "median": med, "min": min(times),
            "first_call": first, "compile_s": max(0.0, first - med), "rel_err": err,
            "working_bytes": hwm - rss0, "first_call_working_bytes": peak_first,
            "jax": jax.__version__, "neural_tangents": getattr(nt, "__version__", "0.6.5")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", default="bench-results/nt_inputs")
    ap.add_argument("--out", default="bench-results/nt.json")
    ap.add_argument("--workloads", default="S,M,W,D,L")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per case")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--limit-gb", type=float, default=16.0)
    ap.add_argument("--child", nargs=3, metavar=("NPZ", "IMPL", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.rounds, args.budget)), flush=True)
        return 0

    import numpy as np

    cases = []
    limit = int(args.limit_gb * 2 ** 30)
    for name in args.workloads.split(","):
        path = os.path.join(args.inputs, f"{name}.npz")
        if not os.path.exists(path):
            print(f"{name}: no {path} (run benchmarks/nt_export.py first)")
            continue
        z = np.load(path)
        n, k, p = z["x"].shape[0], int(z["k"]), int(z["n_params"])
        modes = [m[4:] for m in z.files if m.startswith("ref_")]
        for impl in args.impls.split(","):
            for mode in modes:
                case = {"workload": name, "method": f"{SHORT[impl]}_{mode}", "implementation": impl, "mode": mode}
                jac = n * k * p * 4
                if impl == "JACOBIAN_CONTRACTION" and jac > JACOBIAN_LIMIT_BYTES:
                    case["skipped"] = (f"Jacobian N*K*P*4 = {jac / 1e9:.1f} GB > "
                                       f"{JACOBIAN_LIMIT_BYTES / 1e9:.0f} GB limit (would run out of the 24 GB here)")
                else:
                    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", TF_CPP_MIN_LOG_LEVEL="3")
                    try:
                        proc = subprocess.run(
                            [sys.executable, __file__, "--child", path, impl, mode, "--rounds", str(args.rounds),
                             "--budget", str(args.budget)],
                            env=env, capture_output=True, text=True, timeout=args.timeout,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))
                        lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
                        if proc.returncode == 0 and lines:
                            case.update(json.loads(lines[-1]))
                        else:
                            err = [l for l in proc.stderr.strip().splitlines() if "Error" in l] \
                                or proc.stderr.strip().splitlines() or ["(no output)"]
                            low = proc.stderr.lower()
                            oom = "resource_exhausted" in low or "memory" in low or "bad_alloc" in low
                            case["error"] = (f"out of memory under the {args.limit_gb:.0f} GB limit: " if oom
                                             else f"exit {proc.returncode}: ") + err[-1][:200]
                    except subprocess.TimeoutExpired:
                        case["error"] = f"timed out after {args.timeout:.0f} s"
                cases.append(case)
                if "median" in case:
                    print(f"{name:2s} {case['method']:18s} median {case['median'] * 1e3:9.1f} ms  "
                          f"compile {case['compile_s']:6.2f} s  working {case['working_bytes'] / 2 ** 20:8.1f} MB  "
                          f"rel err {case['rel_err']:.1e}", flush=True)
                else:
                    print(f"{name:2s} {case['method']:18s} -- {case.get('skipped') or case.get('error')}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cases": cases}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
