"""Layers per pass over the output: one pass per layer against one for all.

    python benchmarks/fusion_ab.py [--device cpu|cuda] [--repeats 7] [--small]

Times ``ntk_accumulate`` called once per layer (out read and written L
times) against one ``ntk_accumulate_layers`` call (the kernel sums up to 8
layers per pass over out), on random float32 activations and signals of L = 4
layers, two-sided and symmetric (x2 = x1, the same tensors). The two run
back to back in each round, alternating which goes first, so both see the
same load; the minimum over rounds is reported. benchmarks/gpu_bench.py runs
it on a GPU; the CPU kernel fuses only in the symmetric case (elsewhere it
measured no faster), the CUDA kernel always.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from fastntk import _ops


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def interleaved(fn_a, fn_b, device: torch.device, repeats: int) -> tuple[float, float]:
    """Best seconds of fn_a and fn_b over `repeats` rounds after one warm-up,
    run back to back and alternating order (CUDA synchronized)."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    best = {0: float("inf"), 1: float("inf")}
    fns = (fn_a, fn_b)
    for fn in fns:
        fn()
    for r in range(repeats):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            sync()
            t0 = time.perf_counter()
            fns[which]()
            sync()
            best[which] = min(best[which], time.perf_counter() - t0)
    return best[0], best[1]


#: (N, layer width, K, outputs) of the fusion A/B: narrow layers, where the
#: epilogue's traffic over out rivals the GEMMs, and a wider one.
FUSION_CASES = [(4096, 128, 10, "full"), (16384, 256, 1, "trace"), (2048, 1024, 10, "full")]
FUSION_LAYERS = 4


def fusion_ab(device: torch.device, cases, repeats: int) -> list[dict]:
    """One pass over out for all layers (ntk_accumulate_layers) against one
    pass per layer (ntk_accumulate in a loop), on random float32 signals,
    two-sided and symmetric (x2 = x1). Decides whether fusing layers pays on
    this device; the CPU kernel fuses only in the symmetric case, the CUDA
    kernel always (up to 8 layers per pass)."""
    rows = []
    for n, width, k, outputs in cases:
        for symmetric in (False, True):
            gen = torch.Generator(device).manual_seed(0)
            r = lambda *s: torch.randn(*s, device=device, generator=gen)
            a1 = [r(n, width) for _ in range(FUSION_LAYERS)]
            d1 = [r(n, k, width) for _ in range(FUSION_LAYERS)]
            a2 = a1 if symmetric else [r(n, width) for _ in range(FUSION_LAYERS)]
            d2 = d1 if symmetric else [r(n, k, width) for _ in range(FUSION_LAYERS)]
            shape = {"full": (n, n, k, k), "trace": (n, n), "per_output": (n, n, k)}[outputs]
            row = {"n": n, "width": width, "k": k, "outputs": outputs, "layers": FUSION_LAYERS,
                   "symmetric": symmetric}
            try:
                out = torch.zeros(shape, device=device)
                ones = [1.0] * FUSION_LAYERS

                def per_layer():
                    for layer in zip(a1, a2, d1, d2):
                        _ops.ntk_accumulate(out, *layer, 1.0, 0.1, outputs)

                def fused():
                    _ops.ntk_accumulate_layers(out, a1, a2, d1, d2, ones, [0.1] * FUSION_LAYERS, outputs)

                row["per_layer_seconds"], row["fused_seconds"] = interleaved(per_layer, fused, device, repeats)
                row["speedup"] = row["per_layer_seconds"] / row["fused_seconds"]
            except Exception as err:  # noqa: BLE001
                if not _is_oom(err):
                    raise
                row["error"] = "OOM"
            rows.append(row)
            del a1, a2, d1, d2
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


SMALL_CASES = [(64, 16, 3, "full"), (128, 32, 1, "trace")]
CPU_CASES = [(512, 256, 10, "full"), (1024, 64, 10, "full"), (2048, 256, 1, "trace"), (512, 128, 10, "per_output")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--small", action="store_true", help="tiny cases, a smoke test")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cases = SMALL_CASES if args.small else (FUSION_CASES if device.type == "cuda" else CPU_CASES)
    print(f"{'N':>6} {'width':>6} {'K':>3} {'outputs':>10} {'x2=x1':>6} {'per layer':>10} {'fused':>10} speedup")
    for r in fusion_ab(device, cases, args.repeats):
        if "error" in r:
            print(f"{r['n']:>6} {r['width']:>6} {r['k']:>3} {r['outputs']:>10} {r['symmetric']!s:>6} {r['error']}")
            continue
        print(f"{r['n']:>6} {r['width']:>6} {r['k']:>3} {r['outputs']:>10} {r['symmetric']!s:>6} "
              f"{r['per_layer_seconds'] * 1e3:>8.1f}ms {r['fused_seconds'] * 1e3:>8.1f}ms {r['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
