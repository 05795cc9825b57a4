"""GPU benchmark of the full empirical NTK: fastntk against torch.func.

Network: ``fastntk.MLP([64, w, w, w, K])``, NTK parametrization, ReLU,
sigma_w = sqrt(2), sigma_b = 0.1, float32, so L = 4 weight layers (3 hidden);
inputs x ~ N(0, 1), N of them, x2 = x1, ``outputs="full"`` -> (N, N, K, K).
Defaults: widths 4096, 16384, 65536; N = 1024; K = 1 and 10.

For each case it reports the median wall time of 3 runs after one warm-up
(CUDA synchronized), the peak GPU memory (torch.cuda.max_memory_allocated),
and the achieved GFLOP/s against an analytic FLOP count, next to the float32
GEMM rate measured on the same device. The torch.func reference (jacrev +
einsum, benchmarks/torchfunc_ntk.py) runs where its Jacobian fits and is
reported as "OOM" where it does not. A small float64 case checks that the two
agree before anything is timed. A second table times the epilogue's two
strategies against each other: one pass over the output per layer, or one
for all layers (:func:`fusion_ab`).

TF32 is left as the user's torch settings have it (off unless turned on) and
recorded in the report; fastntk.ntk is called with its default
allow_tf32=False.

Writes gpu_bench.json and gpu_bench.md to --out (default: $OUT if set,
else ./gpu-report/).

    python benchmarks/gpu_bench.py                       # on a GPU machine
    python benchmarks/gpu_bench.py --device cpu --small  # smoke test, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

import fastntk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fusion_ab import FUSION_CASES, FUSION_LAYERS, SMALL_CASES, fusion_ab  # noqa: E402
from torchfunc_ntk import empirical_ntk_jacobian_contraction  # noqa: E402

D_IN = 64
DEPTH = 3  # hidden layers, so L = 4 weight layers
SIGMA_W = 2 ** 0.5
SIGMA_B = 0.1


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def make_model(width: int, k: int, device: torch.device, dtype=torch.float32, seed: int = 0):
    """The benchmark MLP, initialised directly on `device`.

    MLP draws its weights on the CPU in float64; at width 65536 that is 34 GB
    per matrix and minutes of work. So the module is built on the meta device
    and its parameters are then allocated and drawn on `device` (NTK
    parametrization: every W and b ~ N(0, 1)). Falls back to a plain
    construction if the meta build does not give meta parameters.
    """
    widths = [D_IN] + [width] * DEPTH + [k]
    kwargs = dict(activation="relu", parametrization="ntk", sigma_w=SIGMA_W, sigma_b=SIGMA_B, dtype=dtype)
    try:
        with torch.device("meta"):
            model = fastntk.MLP(widths, **kwargs)
        if not all(p.is_meta for p in model.parameters()):
            raise RuntimeError("parameters not on meta")
    except Exception:
        return fastntk.MLP(widths, seed=seed, device=device, **kwargs)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=gen)
    return model


def n_weights(width: int, k: int) -> int:
    widths = [D_IN] + [width] * DEPTH + [k]
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def n_params(width: int, k: int) -> int:
    widths = [D_IN] + [width] * DEPTH + [k]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def ntk_flops(width: int, n: int, k: int) -> int:
    """Multiply-adds x 2 of the layerwise full NTK, x2 = x1, counted without
    the symmetry saving: forward 2 N P_w; K-output backward through the hidden
    layers 2 N K sum_{l>=2} n_{l-1} n_l; per layer the activation Gram
    2 N^2 n_{l-1} and the delta Gram 2 (N K)^2 n_l. Elementwise work is left out."""
    widths = [D_IN] + [width] * DEPTH + [k]
    forward = 2 * n * n_weights(width, k)
    backward = 2 * n * k * sum(a * b for a, b in zip(widths[1:-1], widths[2:]))
    grams = sum(2 * n * n * a + 2 * (n * k) ** 2 * b for a, b in zip(widths[:-1], widths[1:]))
    return forward + backward + grams


def time_call(fn, device: torch.device, repeats: int):
    """(median seconds of `repeats` runs after one warm-up, peak bytes or None, result)."""
    result = fn()
    _sync(device)
    del result
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return statistics.median(times), peak, result


def gemm_rate(device: torch.device, size: int, repeats: int) -> float:
    """float32 GEMM rate (GFLOP/s) of a size^3 matmul on `device`."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    t, _, _ = time_call(lambda: a @ b, device, repeats)
    return 2 * size ** 3 / t / 1e9


def check_agreement(device: torch.device, width: int, n: int, k: int) -> dict:
    """fastntk vs torch.func in float64 on a small case."""
    model = make_model(width, k, device, dtype=torch.float64)
    x = torch.randn(n, D_IN, device=device, dtype=torch.float64, generator=torch.Generator(device).manual_seed(1))
    ours = fastntk.ntk(model, x, outputs="full")
    ref = empirical_ntk_jacobian_contraction(model, x, x, "full")
    err = ((ours - ref).abs().max() / ref.abs().max()).item()
    return {"width": width, "n": n, "k": k, "dtype": "float64", "max_rel_err": err, "ok": err < 1e-10}


def bench_case(width: int, n: int, k: int, device: torch.device, repeats: int, total_mem: int | None) -> dict:
    row = {"width": width, "n": n, "k": k, "params": n_params(width, k), "gflop": ntk_flops(width, n, k) / 1e9}
    try:
        model = make_model(width, k, device)
    except Exception as err:  # noqa: BLE001 -- reported, not hidden
        if not _is_oom(err):
            raise
        row.update(fastntk="OOM (model)", torch_func="OOM (model)")
        return row
    x = torch.randn(n, D_IN, device=device, generator=torch.Generator(device).manual_seed(1))

    try:
        t, peak, out = time_call(lambda: fastntk.ntk(model, x, outputs="full"), device, repeats)
        assert out.shape == (n, n, k, k) and torch.isfinite(out).all().item()
        del out
        row["fastntk"] = {"seconds": t, "peak_bytes": peak, "gflops": row["gflop"] / t}
    except Exception as err:  # noqa: BLE001
        if not _is_oom(err):
            raise
        row["fastntk"] = "OOM"
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # torch.func holds the (N, K, P) Jacobian plus einsum temporaries: skip
    # what cannot fit instead of waiting for the allocator to say so.
    jac_bytes = n * k * row["params"] * x.element_size()
    if total_mem is not None and jac_bytes > total_mem:
        row["torch_func"] = f"OOM (Jacobian alone {jac_bytes / 1e9:.0f} GB > {total_mem / 1e9:.0f} GB)"
    else:
        try:
            t, peak, out = time_call(lambda: empirical_ntk_jacobian_contraction(model, x, x, "full"), device, repeats)
            del out
            row["torch_func"] = {"seconds": t, "peak_bytes": peak, "gflops": row["gflop"] / t}
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            row["torch_func"] = "OOM"
    del model, x
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def _cell(result, key: str) -> str:
    if isinstance(result, str):
        return result
    if result is None:
        return "-"
    value = result[key]
    if value is None:
        return "n/a"
    if key == "seconds":
        return f"{value:.3g}"
    if key == "peak_bytes":
        return f"{value / 2 ** 30:.2f}"
    return _num(value)


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        "# fastntk GPU benchmark: full NTK, MLP [64, w, w, w, K], ReLU, float32",
        "",
        f"- device: {env['device_name']} ({env['device']}); torch {env['torch']} (CUDA {env['torch_cuda']}); "
        f"fastntk backend {env['fastntk_backend']}, compiled kernels {env['fastntk_compiled_kernels']}",
        f"- TF32 for matmul: {env['allow_tf32']}; float32 GEMM rate ({report['gemm']['size']}^3): "
        f"{report['gemm']['gflops']:,.0f} GFLOP/s",
        f"- median of {report['repeats']} runs after one warm-up; x2 = x1; GFLOP counted without the symmetry saving",
        f"- float64 agreement with torch.func on width {report['check']['width']}, N = {report['check']['n']}, "
        f"K = {report['check']['k']}: max relative error {report['check']['max_rel_err']:.1e} "
        f"({'ok' if report['check']['ok'] else 'MISMATCH'})",
        "",
        "| width | N | K | GFLOP | fastntk s | fastntk GFLOP/s | % of GEMM | fastntk peak GiB "
        "| torch.func s | torch.func peak GiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        ours = r.get("fastntk")
        frac = f"{100 * ours['gflops'] / report['gemm']['gflops']:.0f}" if isinstance(ours, dict) else "-"
        lines.append(
            f"| {r['width']} | {r['n']} | {r['k']} | {_num(r['gflop'])} | {_cell(ours, 'seconds')} "
            f"| {_cell(ours, 'gflops')} | {frac} | {_cell(ours, 'peak_bytes')} "
            f"| {_cell(r.get('torch_func'), 'seconds')} | {_cell(r.get('torch_func'), 'peak_bytes')} |"
        )
    if report.get("fusion"):
        lines += ["", f"Layers per pass over out ({FUSION_LAYERS} layers, random signals, float32): one pass per "
                  "layer (ntk_accumulate in a loop) vs one pass for all (ntk_accumulate_layers)", "",
                  "| N | width | K | outputs | x2 = x1 | per layer s | fused s | speedup |",
                  "|---:|---:|---:|---|---|---:|---:|---:|"]
        for r in report["fusion"]:
            if "error" in r:
                cells = [r["error"]] * 3
            else:
                cells = [f"{r['per_layer_seconds']:.3g}", f"{r['fused_seconds']:.3g}", f"{r['speedup']:.2f}"]
            lines.append(f"| {r['n']} | {r['width']} | {r['k']} | {r['outputs']} | {r['symmetric']} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes for a smoke test (widths 64,128; N 32)")
    parser.add_argument("--widths", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--n", type=int, default=None, help="number of inputs (default 1024, 32 with --small)")
    parser.add_argument("--ks", type=lambda s: [int(v) for v in s.split(",")], default=[1, 10])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-report")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False (use --device cpu --small)")
    widths = args.widths or ([64, 128] if args.small else [4096, 16384, 65536])
    n = args.n or (32 if args.small else 1024)
    gemm_size = 512 if args.small else 8192
    torch.manual_seed(0)

    info = fastntk.backend_info()
    total_mem = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    env = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "fastntk_backend": info.get("backend"),
        "fastntk_compiled_kernels": info.get("compiled_kernels"),
        "fastntk_cuda_arch_list": info.get("cuda_arch_list"),
        "total_memory_bytes": total_mem,
    }
    print(f"gpu_bench: {env}", flush=True)
    check = check_agreement(device, width=64 if args.small else 1024, n=8 if args.small else 32, k=10)
    print(f"gpu_bench: agreement {check}", flush=True)
    if not check["ok"]:
        print("gpu_bench: fastntk and torch.func DISAGREE; timings below are of a wrong result", file=sys.stderr)
    rate = gemm_rate(device, gemm_size, args.repeats)
    print(f"gpu_bench: float32 GEMM {gemm_size}^3: {rate:,.0f} GFLOP/s", flush=True)

    results = []
    for width in widths:
        for k in args.ks:
            t0 = time.perf_counter()
            row = bench_case(width, n, k, device, args.repeats, total_mem)
            row["case_wall_seconds"] = time.perf_counter() - t0
            print(f"gpu_bench: {json.dumps(row)}", flush=True)
            results.append(row)

    fusion_cases = SMALL_CASES if args.small else FUSION_CASES
    fusion = fusion_ab(device, fusion_cases, args.repeats)
    for row in fusion:
        print(f"gpu_bench: fusion {json.dumps(row)}", flush=True)

    report = {"environment": env, "repeats": args.repeats, "check": check,
              "gemm": {"size": gemm_size, "gflops": rate}, "results": results, "fusion": fusion}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(report, f, indent=2)
    md = markdown(report)
    with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
        f.write(md)
    print(md)
    print(f"gpu_bench: wrote {args.out}/gpu_bench.json and gpu_bench.md")
    return 0 if check["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
