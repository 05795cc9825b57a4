"""neural-tangents' batched empirical kernel (``nt.batch``) at one N (runs in .venv-nt).

    .venv-nt/bin/python benchmarks/nt_batch.py NPZ N BATCH [--tile OUT.npy]

The network and inputs are nt_export.py's format (benchmarks/scale_nt.py
writes them); the kernel is ``nt.batch(jax.jit(nt.empirical_ntk_fn(apply_fn,
trace_axes=(-1,), implementation=STRUCTURED_DERIVATIVES)), batch_size=BATCH)``
on the first N inputs, x2 = None (K = 1 output, so the trace is the kernel).
STRUCTURED_DERIVATIVES is neural-tangents' fastest implementation on these
MLPs (README's performance table). One XLA thread (XLA_FLAGS, set by the
caller). A warm-up call on BATCH inputs compiles the block kernel; then one
timed call on N inputs, wall clock and process CPU time, and its peak
memory: the resident high-water mark (VmHWM, reset before the call) above
the resident set before it, the N x N output included. Prints one JSON line;
``--tile`` saves Theta[:200, -200:] for the caller's check.
"""

from __future__ import annotations

import argparse
import json
import time

from nt_bench import _status_kb, load_network


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("npz")
    ap.add_argument("n", type=int)
    ap.add_argument("batch", type=int)
    ap.add_argument("--tile", help="save Theta[:200, -200:] here (.npy)")
    args = ap.parse_args()
    import jax
    import numpy as np
    import neural_tangents as nt

    apply_fn, params, x, _ = load_network(args.npz)
    x = x[:args.n]
    kernel_fn = nt.batch(jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0,
                                                     implementation=nt.NtkImplementation.STRUCTURED_DERIVATIVES)),
                         batch_size=args.batch, device_count=0, store_on_device=False)
    np.asarray(kernel_fn(x[:args.batch], None, params))
    rss0 = _status_kb("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start, cpu = time.perf_counter(), time.process_time()
    theta = np.asarray(kernel_fn(x, None, params))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = _status_kb("VmHWM") * 1024 - rss0
    if args.tile:
        np.save(args.tile, theta[:200, -200:].astype(np.float64))
    print(json.dumps({"n": args.n, "batch": args.batch, "seconds": seconds, "cpu_seconds": cpu_seconds,
                      "peak_mb": peak / 1e6, "shape": list(theta.shape)}), flush=True)


if __name__ == "__main__":
    main()
