"""Peak memory of every benchmark case, each in a fresh process (CPU).

    python benchmarks/memory.py [--out bench-results/memory.json] [--workloads S,M] [--methods fastntk_full,...]

For each (workload, method) a child process imports torch and fastntk, builds
the workload's network and inputs, warms up (the method on two inputs), and
then runs the method once. It reports:

- ``working_bytes``: the resident-set high-water mark while the method runs
  minus the resident set just before it (the high-water mark is reset with
  ``/proc/self/clear_refs`` first), i.e. what the method itself needed on
  top of the model and inputs. This is the number the report shows;
- ``peak_rss_bytes``: the child's whole-process peak (``getrusage(RUSAGE_SELF)
  .ru_maxrss``), and ``over_idle_bytes``, that minus the same peak of an idle
  child with the same imports, network and inputs (method ``idle``), the
  fallback when clear_refs is not available.

Children run with ``MALLOC_MMAP_THRESHOLD_=131072`` so that freed large
buffers go back to the OS at once (otherwise glibc keeps them and the
resident set says more about the allocator's history than the method), and
with an address-space limit (``--limit-gb``, default 16) so that a case that
would exhaust the machine's 24 GB fails alone instead of pushing other work
into swap or the OOM killer.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(workload: str, method: str) -> dict:
    import torch

    from workloads import WORKLOADS, make_input, make_method, make_net

    w = WORKLOADS[workload]
    net, x = make_net(w), make_input(w.n)
    fn = None if method == "idle" else make_method(method, net, x)
    # Warm-up on two inputs: thread pools, BLAS buffers and lazy imports are
    # set up outside the measured run (the same in every process).
    with torch.no_grad():
        (make_method(method if fn is not None else "fastntk_full", net, x[:2]))()
    gc.collect()
    rss0 = _status_kb("VmRSS") * 1024
    can_reset = _reset_hwm()
    t = time.perf_counter()
    if fn is not None:
        with torch.no_grad():
            out = fn()
        out_bytes = out.numel() * out.element_size()
    else:
        out_bytes = 0
    seconds = time.perf_counter() - t
    hwm = _status_kb("VmHWM") * 1024
    return {
        "workload": workload, "method": method, "seconds": seconds,
        "rss_before_bytes": rss0,
        "working_bytes": (hwm - rss0) if can_reset else None,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "output_bytes": out_bytes, "hwm_reset": can_reset,
    }


def run_child(args: list[str], limit_gb: float, timeout: float, python: str = sys.executable) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONWARNINGS="ignore")
    limit = int(limit_gb * 2 ** 30)

    def preexec():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    try:
        proc = subprocess.run([python, *args], env=env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=preexec)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        oom = "out of memory" in proc.stderr.lower() or "memoryerror" in proc.stderr.lower() \
            or "bad_alloc" in proc.stderr.lower() or "DefaultCPUAllocator" in proc.stderr
        why = f"out of memory under the {limit_gb:.0f} GB limit" if oom else f"exit {proc.returncode}"
        return {"error": f"{why}: {tail[:200]}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    from workloads import WORKLOADS, fmt_bytes, methods_for, skip_reason, state_bytes

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench-results/memory.json")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--limit-gb", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--child", nargs=2, metavar=("WORKLOAD", "METHOD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)), flush=True)
        return 0

    results = []
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        idle = run_child([__file__, "--child", name, "idle"], args.limit_gb, args.timeout)
        methods = methods_for(w)
        if args.methods:
            methods = [m for m in methods if m in args.methods.split(",")]
        for method in methods:
            reason = skip_reason(w, method)
            r = {"workload": name, "method": method, "skipped": reason} if reason else \
                run_child([__file__, "--child", name, method], args.limit_gb, args.timeout)
            r.setdefault("workload", name)
            r.setdefault("method", method)
            r["state_bytes"] = state_bytes(w.widths, w.n, method)
            if "peak_rss_bytes" in r and "peak_rss_bytes" in idle:
                r["over_idle_bytes"] = r["peak_rss_bytes"] - idle["peak_rss_bytes"]
            results.append(r)
            shown = r.get("working_bytes")
            print(f"{name:2s} {method:24s} " + (
                f"working {fmt_bytes(shown):>10s}   (state {fmt_bytes(r['state_bytes'])}, "
                f"{r['seconds']:.2f} s)" if shown is not None else f"-- {r.get('skipped') or r.get('error')}"),
                flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"cases": results, "limit_gb": args.limit_gb}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
