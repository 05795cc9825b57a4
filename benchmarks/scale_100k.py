"""The large runs of the scale features: one call on up to 100,000 inputs,
its wall time, CPU time and peak memory (docs/scale.md, "Runs on 100,000 inputs").

    python benchmarks/scale_100k.py diag   --widths 784,2048,2048,2048,10 --n 100000 --max-memory 1GB
    python benchmarks/scale_100k.py kernel --widths 16,128,1 --n 100000 --max-memory 2GB --file /big/k.bin
    python benchmarks/scale_100k.py eigh   --widths 16,4096,1 --n 100000 --k 20 --max-memory 8GB --block-size 1024

Kinds:

- ``diag``: ``fastntk.ntk_diag(net, x, outputs="full", max_memory=...)``
  into a preallocated (N, K, K) tensor;
- ``kernel``: ``fastntk.ntk(net, x, outputs="trace", max_memory=..., out=FILE)``,
  the N x N float32 kernel written block by block to a raw file; then
  ``--check`` random 100 x 100 tiles compared with direct ``fastntk.ntk``
  calls, and the file deleted unless ``--keep``;
- ``eigh``: ``fastntk.eigh(net, x, k)`` (scipy's eigsh on the cached
  operator), then the residuals ||Theta v - lambda v|| / lambda of the first
  and last pair by one ``fastntk.ntk_vp`` each. On the CPU pass
  ``--block-size 1024``: with the default (one block of all N inputs) every
  product allocates N x width temporaries above glibc's mmap threshold and
  spends as much time in page faults as in arithmetic.

Peak memory: the process's resident high-water mark VmHWM above the baseline
taken just before the call (reset through /proc/self/clear_refs), and the
anonymous resident memory RssAnon sampled every 20 ms (for a file output RSS
also counts the file's mapped pages, which are page cache; RssAnon is what
the call allocates). Progress (blocks or rows written, products) is printed
every ``--every`` seconds so that an interrupted run still gives its rate.
The model is an NTK-parametrized ReLU ``fastntk.MLP`` in float32, inputs
standard normal; torch threads default to 1. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time

import torch

import fastntk


def _status(key: str) -> int:
    """A /proc/self/status entry in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class MemoryWatch:
    """Peak RssAnon (sampled) and VmHWM (exact) above a baseline, with a
    progress line every ``every`` seconds from ``progress()``."""

    def __init__(self, progress, every: float):
        self.progress, self.every = progress, every
        self.peak_anon = 0
        self._stop = threading.Event()

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base_rss, self.base_anon = _status("VmRSS"), _status("RssAnon")
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(0.02):
            self.peak_anon = max(self.peak_anon, _status("RssAnon"))
            now = time.perf_counter()
            if now - last >= self.every:
                last = now
                print(f"[{now - self.start:8.0f} s, cpu {time.process_time() - self.cpu_start:8.0f} s] {self.progress()}  "
                      f"RssAnon peak {(self.peak_anon - self.base_anon) / 1e9:.2f} GB above base", flush=True)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
        self.vm_hwm = _status("VmHWM") - self.base_rss
        self.peak_anon = max(self.peak_anon, _status("RssAnon")) - self.base_anon
        return False

    def summary(self) -> dict:
        return {"seconds": self.seconds, "cpu_seconds": self.cpu_seconds, "vmhwm_above_base_gb": self.vm_hwm / 1e9,
                "rssanon_peak_above_base_gb": self.peak_anon / 1e9,
                "base_rss_gb": self.base_rss / 1e9, "base_anon_gb": self.base_anon / 1e9}


def run_diag(net, x, args) -> dict:
    k = net.widths[-1] if hasattr(net, "widths") else 1
    out = torch.full((x.shape[0], k, k), float("nan"))

    def progress():
        done = int((~torch.isnan(out[:, 0, 0])).sum())
        return f"rows written {done}/{x.shape[0]}"

    with MemoryWatch(progress, args.every) as watch:
        fastntk.ntk_diag(net, x, outputs="full", max_memory=args.max_memory, out=out)
    result = watch.summary()
    # A few rows against a direct unblocked call.
    rows = sorted(random.Random(0).sample(range(x.shape[0]), 20))
    direct = fastntk.ntk_diag(net, x[rows], outputs="full")
    result["check_max_rel_diff"] = float(((out[rows] - direct).abs().max() / direct.abs().max()))
    result["all_finite"] = bool(torch.isfinite(out).all())
    return result


def run_kernel(net, x, args) -> dict:
    n = x.shape[0]
    sidecar = args.file + ".blocks.json"

    def progress():
        try:
            with open(sidecar) as f:
                record = json.load(f)
            return f"blocks written {len(record.get('done', record.get('blocks', [])))} (block size {record.get('block_size')})"
        except (OSError, ValueError):
            return "no block recorded yet"

    with MemoryWatch(progress, args.every) as watch:
        theta = fastntk.ntk(net, x, outputs="trace", max_memory=args.max_memory, out=args.file,
                            resume=args.resume, progress=True)
    result = watch.summary()
    rng = random.Random(0)
    diffs = []
    for _ in range(args.check):
        i, j = rng.randrange(n - 100), rng.randrange(n - 100)
        direct = fastntk.ntk(net, x[i:i + 100], x[j:j + 100], outputs="trace")
        tile = torch.as_tensor(theta[i:i + 100, j:j + 100])
        diffs.append({"i": i, "j": j, "max_abs_diff": float((tile - direct).abs().max()),
                      "max_abs": float(direct.abs().max())})
    result["tiles"] = diffs
    result["file_bytes"] = os.path.getsize(args.file)
    with open(sidecar) as f:
        result["block_size"] = json.load(f).get("block_size")
    del theta
    if not args.keep:
        os.remove(args.file)
        os.remove(sidecar)
        result["file_deleted"] = True
    return result


def run_eigh(net, x, args) -> dict:
    products = []
    matmat = fastntk.NTKOperator.matmat
    depth = [0]  # matmat calls itself for a 1-D v: count the outermost call only

    def counted(self, v):
        depth[0] += 1
        start = time.perf_counter()
        try:
            return matmat(self, v)
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                products.append(time.perf_counter() - start)

    fastntk.NTKOperator.matmat = counted

    def progress():
        mean = sum(products) / len(products) if products else float("nan")
        return f"products {len(products)}, mean {mean:.2f} s each"

    with MemoryWatch(progress, args.every) as watch:
        values, vectors = fastntk.eigh(net, x, k=args.k, tol=args.tol, max_memory=args.max_memory,
                                       block_size=args.block_size)
    fastntk.NTKOperator.matmat = matmat
    result = watch.summary()
    result["products"] = len(products)
    result["first_product_s"] = products[0] if products else None
    result["mean_product_s"] = sum(products[1:]) / max(1, len(products) - 1)
    result["eigenvalues"] = values.tolist()
    residuals = {}
    for idx in (0, args.k - 1):
        v = vectors[:, idx]
        tv = fastntk.ntk_vp(net, x, v, max_memory=args.max_memory, block_size=args.block_size)
        residuals[idx] = float((tv - values[idx] * v).norm() / values[idx].abs())
    result["relative_residuals"] = residuals
    result["orthonormality_err"] = float((vectors.T @ vectors - torch.eye(args.k)).abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["diag", "kernel", "eigh"])
    parser.add_argument("--widths", required=True, help="comma-separated layer widths, e.g. 784,2048,10")
    parser.add_argument("--n", type=int, required=True, help="number of inputs")
    parser.add_argument("--max-memory", default=None, help='budget, e.g. "1GB" (default: the library\'s)')
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between progress lines")
    parser.add_argument("--file", help="kernel: the output file")
    parser.add_argument("--resume", action="store_true", help="kernel: resume a partially written file")
    parser.add_argument("--check", type=int, default=3, help="kernel: random tiles checked")
    parser.add_argument("--keep", action="store_true", help="kernel: keep the file")
    parser.add_argument("--k", type=int, default=20, help="eigh: eigenpairs")
    parser.add_argument("--block-size", type=int, default=None,
                        help="eigh: inputs per block of the products (default: the library's, from the budget)")
    parser.add_argument("--tol", type=float, default=1e-5, help="eigh: eigsh tolerance")
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()
    if args.kind == "kernel" and not args.file:
        parser.error("kernel needs --file")
    torch.set_num_threads(args.threads)
    widths = [int(w) for w in args.widths.split(",")]
    net = fastntk.MLP(widths, sigma_w=2 ** 0.5, seed=0)
    x = torch.randn(args.n, widths[0], generator=torch.Generator().manual_seed(1))
    settings = {"kind": args.kind, "widths": widths, "n": args.n, "max_memory": args.max_memory,
                "block_size": args.block_size, "threads": args.threads, "torch": torch.__version__, "start_utc": time.strftime("%H:%M:%S", time.gmtime()),
                "loadavg_start": os.getloadavg()}
    print(json.dumps(settings), flush=True)
    result = {"diag": run_diag, "kernel": run_kernel, "eigh": run_eigh}[args.kind](net, x, args)
    result.update(settings, loadavg_end=os.getloadavg(), end_utc=time.strftime("%H:%M:%S", time.gmtime()))
    print(json.dumps(result, indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
