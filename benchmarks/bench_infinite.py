"""Timings of fastntk.infinite, and a side-by-side with neural-tangents' stax.

    python benchmarks/bench_infinite.py [N ...] [--activation A ...] [--raw] [--threads T]   (default N: 500 2000)
    python benchmarks/bench_infinite.py --nt [--out bench-results/infinite_nt.json]

Without ``--nt``: the NTK of a network with 10 hidden layers on N
normalized inputs (``--raw``: unnormalized), tanh or ``--activation``s,
and eoc_curve; one line per run (wall clock and CPU seconds, first call).

With ``--nt`` (needs .venv-nt, ``make bench-setup``): for each activation
(relu, erf, gelu: closed forms in neural-tangents; tanh: its
``ElementwiseNumerical`` Gauss-Hermite quadrature at degrees 25 and 64),
depth (weight layers: 2, 4, 11) and N (500, 2000; tanh: 500 at degree 25,
100 at degree 64, see CASES), the NTK of the same
normalized inputs (30 features, float64) from ``fastntk.infinite.ntk`` and
from ``stax`` kernel_fn (benchmarks/nt_infinite.py, a fresh process per
case, jit; its first call includes compilation). Accuracy: three entries,
the diagonal (0, 0), a close pair (0, 1) (cosine ~0.995) and a generic one
(0, 2), against the independent adaptive-quadrature reference
(tests/infinite_reference.py), as |K - ref| / sqrt(ref(x, x) ref(x', x'));
and the largest difference between the two libraries over all N^2 entries
on the same scale. Both on one thread (torch.set_num_threads(1); XLA with
its Eigen thread pool off). Not collected by the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from fastntk import infinite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NT_PYTHON = os.path.join(ROOT, ".venv-nt", "bin", "python")
SIGMA_W, SIGMA_B, N0 = 1.5, 0.1, 30
SIZES = [500, 2000]
#: (activation, neural-tangents quadrature degree or None for a closed form,
#: depth, N). neural-tangents' quadrature (ElementwiseNumerical) holds
#: N^2 deg^2 float64 numbers (N = 2000, deg 25: 20 GB; it was stopped past
#: 13 GB on this 24 GB machine) and costs ~6 s per hidden layer at N = 500,
#: deg 25, hence the smaller tanh cases.
CASES = ([(a, None, d, n) for a in ("relu", "erf", "gelu") for d in (2, 4, 11) for n in SIZES]
         + [("tanh", 25, d, 500) for d in (2, 4, 11)] + [("tanh", 64, d, 100) for d in (4, 11)])
PROBES = [(0, 0), (0, 1), (0, 2)]


def ntk_seconds(n: int, activation: str = "tanh", raw: bool = False, n0: int = N0, depth: int = 11):
    """(wall, CPU) seconds of one infinite.ntk call on n inputs, normalized
    unless ``raw`` (then every input has its own norm)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n0, generator=g, dtype=torch.float64)
    if not raw:
        x = torch.nn.functional.normalize(x, dim=1)
    start, cpu = time.perf_counter(), time.process_time()
    infinite.ntk(x, depth=depth, activation=activation, sigma_w=SIGMA_W, sigma_b=SIGMA_B)
    return time.perf_counter() - start, time.process_time() - cpu


def eoc_seconds() -> float:
    start = time.perf_counter()
    infinite.eoc_curve("tanh", [0.0, 0.05])
    return time.perf_counter() - start


def inputs(n: int) -> torch.Tensor:
    """n normalized inputs; row 1 is a perturbed copy of row 0 (cosine ~0.995),
    and the first rows are the same for every n."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(max(n, max(SIZES)), N0, generator=g, dtype=torch.float64)[:n]
    x[1] = x[0] + 0.1 * x[1]
    return torch.nn.functional.normalize(x, dim=1)


def reference(x: torch.Tensor, activation: str, depth: int) -> dict:
    """The reference NTK at the probe entries (tests/infinite_reference.py)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import infinite_reference
    from scipy.integrate import IntegrationWarning

    out = {}
    warnings.simplefilter("ignore", IntegrationWarning)  # scipy's roundoff notes at 1e-13 requested
    for i, j in PROBES:
        sq1, sq2, dot = float(x[i] @ x[i]), float(x[j] @ x[j]), float(x[i] @ x[j])
        out[(i, j)] = infinite_reference.kernel(activation, sq1, sq2, dot, N0, depth, SIGMA_W, SIGMA_B)[1]
    return out


def probe_error(theta: np.ndarray, ref: dict, diag: dict) -> float:
    return max(abs(theta[i, j] - r) / math.sqrt(diag[i] * diag[j]) for (i, j), r in ref.items())


def run_nt(x_path: str, case: dict, out: str, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    try:
        proc = subprocess.run([NT_PYTHON, os.path.join(ROOT, "benchmarks", "nt_infinite.py"), "--inputs", x_path,
                               "--case", json.dumps(case), "--out", out],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:200]}
    z = np.load(out)
    return {"ntk": z["ntk"], **{key: float(z[key]) if z[key] >= 0 else None for key in
                                ("first_call_s", "second_call_s", "first_call_cpu_s", "second_call_cpu_s")}}


def compare(args) -> None:
    if not os.path.exists(os.path.join(ROOT, ".venv-nt", ".nt-ready")):
        sys.exit("bench_infinite --nt: .venv-nt is not set up (make bench-setup)")
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="bench_infinite_nt_")
    rows = []
    refs = {}
    for activation, deg, depth, n in CASES:
        if args.sizes and n not in args.sizes:
            continue
        if (activation, depth) not in refs:
            start = time.perf_counter()
            refs[activation, depth] = reference(inputs(3), activation, depth)
            print(f"reference {activation} depth {depth}: {time.perf_counter() - start:.1f} s", flush=True)
        ref = refs[activation, depth]
        diag = {i: ref[(0, 0)] for i in (0, 1, 2)}  # normalized inputs: one diagonal value
        x = inputs(n)
        x_path = os.path.join(tmp, f"x_{n}.npy")
        np.save(x_path, x.numpy())
        start, cpu = time.perf_counter(), time.process_time()
        theta = infinite.ntk(x, depth=depth, activation=activation, sigma_w=SIGMA_W, sigma_b=SIGMA_B).numpy()
        fast_s, fast_cpu = time.perf_counter() - start, time.process_time() - cpu
        case = {"activation": activation, "depth": depth, "sigma_w": SIGMA_W, "sigma_b": SIGMA_B}
        if deg is not None:
            case["deg"] = deg
        nt = run_nt(x_path, case, os.path.join(tmp, "nt.npz"), args.timeout)
        scale = np.sqrt(np.outer(np.diag(theta), np.diag(theta)))
        row = {"activation": activation, "nt_deg": deg, "depth": depth, "n": n, "fastntk_s": fast_s, "fastntk_cpu_s": fast_cpu,
               "fastntk_err": probe_error(theta, ref, diag)}
        if "ntk" in nt:
            row.update({f"nt_{key}": nt[key] for key in nt if key != "ntk"})
            row.update(nt_err=probe_error(nt["ntk"], ref, diag),
                       max_diff=float(np.max(np.abs(nt["ntk"] - theta) / scale)))
        else:
            row["nt_error"] = nt["error"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print_table(rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"sigma_w": SIGMA_W, "sigma_b": SIGMA_B, "n0": N0, "rows": rows}, f, indent=1)


def _seconds(wall, cpu) -> str:
    return "-" if wall is None else f"{wall:.3g} s ({cpu:.3g})"


def print_table(rows: list[dict]) -> None:
    print("\nTimes: wall clock (process CPU time), one thread each.\n")
    print("| activation (neural-tangents) | depth | N | fastntk | neural-tangents, first call | second call "
          "| fastntk error | neural-tangents error | max difference |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = r["activation"] + (f" (quadrature, deg {r['nt_deg']})" if r["nt_deg"] else " (closed form)")
        if "nt_error" in r:
            first, second, nt_err, diff = r["nt_error"], "-", "-", "-"
        else:
            first = _seconds(r["nt_first_call_s"], r["nt_first_call_cpu_s"])
            second = _seconds(r["nt_second_call_s"], r["nt_second_call_cpu_s"])
            nt_err, diff = f"{r['nt_err']:.1e}", f"{r['max_diff']:.1e}"
        print(f"| {name} | {r['depth']} | {r['n']} | {_seconds(r['fastntk_s'], r['fastntk_cpu_s'])} | {first} | {second} "
              f"| {r['fastntk_err']:.1e} | {nt_err} | {diff} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sizes", nargs="*", type=int, help="N (default: 500 2000; with --nt: only the cases with these N)")
    ap.add_argument("--nt", action="store_true", help="compare with neural-tangents' stax (needs .venv-nt)")
    ap.add_argument("--out", help="--nt: write the rows as JSON here")
    ap.add_argument("--timeout", type=float, default=600.0, help="--nt: seconds per neural-tangents case")
    ap.add_argument("--activation", action="append", help="without --nt: activation(s) to time (default: tanh)")
    ap.add_argument("--raw", action="store_true", help="without --nt: unnormalized inputs (every norm distinct)")
    ap.add_argument("--threads", type=int, default=None, help="without --nt: torch threads")
    args = ap.parse_args()
    if args.nt:
        compare(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    kind = "raw (distinct norms)" if args.raw else "normalized"
    for act in args.activation or ["tanh"]:
        for n in args.sizes or SIZES:
            wall, cpu = ntk_seconds(n, act, args.raw)
            print(f"{act} NTK, 10 hidden layers, N = {n} {kind} inputs: {wall:.2f} s ({cpu:.2f} s CPU)")
    print(f"eoc_curve('tanh', [0.0, 0.05]): {eoc_seconds():.2f} s")


if __name__ == "__main__":
    main()
