"""Merge the benchmark results into one report, with ratios.

    python benchmarks/report.py [--dir bench-results]

Reads, from ``--dir``: ``bench.json`` (pytest-benchmark: fastntk, the
plain-PyTorch floor, torch.func, the GEMM rate), ``memory.json``
(benchmarks/memory.py), ``nt.json`` (neural-tangents, benchmarks/nt_bench.py;
optional) and ``ab.json`` (interleaved fastntk/plain timing,
benchmarks/ab.py; optional). Prints and writes ``report.md`` and
``report.json`` there, and replaces the generated part of README.md's
"Performance" section (from its heading to the scaling figure).

Two floors, both counting what the symmetric method must do for x2 = x1
(workloads.flops_symmetric: forward and backward GEMMs, and the Grams and
accumulation over the pairs i <= j only): the peak floor at the machine's
large-GEMM rate (the better of two 2048^3 torch.mm measurements, before and
after the NTK cases), and the own-shape floor at the GEMM rate measured on
the workload's own GEMM shapes (workloads.own_shape_gemms), which small
layers run well below peak. "x floor" is median time / floor. "fastntk
speed-up" is the method's median time over fastntk's in the same output mode
(> 1: fastntk is faster).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from workloads import WORKLOADS, flops, flops_symmetric, fmt_bytes  # noqa: E402

#: Targets of issue 6, FLOP-floor ratio by workload.
FLOOR_TARGET = {"S": 1.5, "D": 1.5, "M": 1.15, "W": 1.15, "L": 1.15}
COMMAND = "make bench-setup && make bench"
README = os.path.join(os.path.dirname(HERE), "README.md")
#: The generated part of README.md: from this heading to the scaling figure.
README_START, README_END = "## Performance\n", "![scaling](docs/scaling.png)\n"


def _load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def machine_info() -> dict:
    import torch

    import fastntk

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        mem = 0
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(mem / 2 ** 30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "fastntk_backend": fastntk.backend(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def collect(d: str) -> dict:
    bench = _load(os.path.join(d, "bench.json"))
    if bench is None:
        sys.exit(f"report: no {d}/bench.json; run the suite first (make bench)")
    mem = {(c["workload"], c["method"]): c for c in (_load(os.path.join(d, "memory.json")) or {"cases": []})["cases"]}
    nt = _load(os.path.join(d, "nt.json"))
    ab = _load(os.path.join(d, "ab.json"))

    gemm = [b for b in bench["benchmarks"] if b["group"] == "gemm"]
    rate = max((b["extra_info"]["flops"] / b["stats"]["median"] for b in gemm), default=None)
    own_rate = {b["extra_info"]["workload_shapes"]: b["extra_info"]["flops"] / b["stats"]["median"]
                for b in bench["benchmarks"] if b["group"] == "gemm_shapes"}
    rows = {}
    for b in bench["benchmarks"]:
        info = b["extra_info"]
        if "workload" not in info:
            continue
        rows[(info["workload"], info["method"])] = {
            "workload": info["workload"], "method": info["method"], "median": b["stats"]["median"],
            "min": b["stats"]["min"], "rounds": b["stats"]["rounds"], "flops": info["flops"],
            "rel_err": info.get("rel_err"), "source": "pytest-benchmark"}
    # Cases pytest skipped (reason from the memory run, which records it too).
    for (wl, method), m in mem.items():
        if (wl, method) not in rows:
            rows[(wl, method)] = {"workload": wl, "method": method, "median": None,
                                  "skipped": m.get("skipped") or m.get("error")}
    if nt:
        for c in nt["cases"]:
            w = WORKLOADS[c["workload"]]
            row = {"workload": c["workload"], "method": c["method"], "source": "neural-tangents",
                   "flops": flops(w.widths, w.n, c["method"])}
            if "median" in c:
                row.update(median=c["median"], min=c["min"], rounds=len(c["times"]), rel_err=c["rel_err"],
                           compile_s=c["compile_s"], working_bytes=c["working_bytes"])
            else:
                row.update(median=None, skipped=c.get("skipped") or c.get("error"))
            rows[(c["workload"], c["method"])] = row
    for key, row in rows.items():
        m = mem.get(key)
        if m and m.get("working_bytes") is not None:
            row["working_bytes"] = m["working_bytes"]
            row["state_bytes"] = m["state_bytes"]
        elif m and "state_bytes" in m:
            row["state_bytes"] = m["state_bytes"]
        w = WORKLOADS[key[0]]
        symmetric = flops_symmetric(w.widths, w.n, key[1])
        if row.get("median") and rate:
            row["floor_s"] = symmetric / rate
            row["x_floor"] = row["median"] / row["floor_s"]
            row["gflops"] = row["flops"] / row["median"] / 1e9
        if row.get("median") and own_rate.get(key[0]):
            row["floor_own_s"] = symmetric / own_rate[key[0]]
            row["x_floor_own"] = row["median"] / row["floor_own_s"]
    for (wl, method), row in rows.items():
        mode = method.split("_")[-1]
        mode = "per_output" if mode == "output" else mode
        ref = rows.get((wl, f"fastntk_{mode}"))
        if ref and ref.get("median") and row.get("median") and not method.startswith("fastntk"):
            row["fastntk_speedup"] = row["median"] / ref["median"]
        if ref and ref.get("working_bytes") and row.get("working_bytes") and not method.startswith("fastntk"):
            row["fastntk_memory_ratio"] = ref["working_bytes"] / row["working_bytes"]
    machine = machine_info()
    if bench.get("datetime"):  # when the suite ran, not when this report is written
        machine["date"] = datetime.datetime.fromisoformat(bench["datetime"]).astimezone(
            datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"machine": machine, "gemm_gflops": rate / 1e9 if rate else None,
            "own_gemm_gflops": {wl: r / 1e9 for wl, r in own_rate.items()}, "rows": rows,
            "ab": ab["cases"] if ab else [], "nt_available": nt is not None,
            "nt_setup_failed": _nt_setup_failure()}


def _nt_setup_failure():
    path = os.path.join(os.path.dirname(HERE), ".venv-nt", "SETUP_FAILED")
    if os.path.exists(path):
        with open(path) as f:
            return f.read().strip()
    return None


def _t(s):
    if s is None:
        return "-"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _e(x):
    return "-" if x is None else f"{x:.1e}"


def _r(x, fmt="{:.2f}x"):
    return "-" if x is None else fmt.format(x)


ORDER = ["fastntk", "plain", "torchfunc", "nt"]


def _sort_key(method):
    family = method.split("_")[0]
    mode = method.split("_")[-1]
    return (ORDER.index(family) if family in ORDER else 9, method)


def workload_table(data, wl) -> list[str]:
    w = WORKLOADS[wl]
    rows = sorted((r for (k, _), r in data["rows"].items() if k == wl), key=lambda r: _sort_key(r["method"]))
    lines = [f"### {wl}: {w.depth} x {w.width} hidden, K = {w.k}, N = {w.n} ({w.note}; P = {w.n_params:,} parameters)",
             "",
             "| method | median | min | GFLOP/s | x peak floor | x own-shape floor | working memory | memory / state | fastntk speed-up | fastntk memory ratio | rel. err vs fastntk |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("median") is None:
            lines.append(f"| {r['method']} | skipped: {r.get('skipped', '?')} | | | | | | | | | |")
            continue
        wb, sb = r.get("working_bytes"), r.get("state_bytes")
        extra = f" (+{r['compile_s']:.2f} s compile)" if "compile_s" in r else ""
        lines.append(
            f"| {r['method']} | {_t(r['median'])}{extra} | {_t(r.get('min'))} | {r.get('gflops', 0):.0f} | "
            f"{_r(r.get('x_floor'))} | {_r(r.get('x_floor_own'))} | {fmt_bytes(wb) if wb is not None else '-'} | "
            f"{_r(wb / sb if wb is not None and sb else None)} | {_r(r.get('fastntk_speedup'))} | "
            f"{_r(r.get('fastntk_memory_ratio'))} | "
            f"{_e(r.get('rel_err'))} |")
    return lines


def targets(data) -> list[dict]:
    rows, out = data["rows"], []
    ab = {(c["workload"], c["mode"]): c for c in data["ab"]}
    for wl in WORKLOADS:
        modes = WORKLOADS[wl].outputs
        for mode in modes:
            f = rows.get((wl, f"fastntk_{mode}"))
            if not f or f.get("median") is None:
                continue
            p = rows.get((wl, f"plain_{mode}"), {})
            sd = rows.get((wl, f"nt_sd_{mode}"), {})
            jac = rows.get((wl, f"torchfunc_jac_{mode}"), {})
            a = ab.get((wl, mode))
            t = {"workload": wl, "mode": mode, "x_floor": f.get("x_floor"), "floor_target": FLOOR_TARGET[wl],
                 "x_floor_own": f.get("x_floor_own"),
                 "vs_plain": (f["median"] / p["median"]) if p.get("median") else None,
                 "vs_plain_interleaved": a["ratio_median"] if a else None,
                 "nt_sd_speedup": sd.get("fastntk_speedup"), "torchfunc_jac_speedup": jac.get("fastntk_speedup"),
                 "mem_vs_plain": (f["working_bytes"] / p["working_bytes"])
                 if f.get("working_bytes") and p.get("working_bytes") else None,
                 "mem_vs_state": (f["working_bytes"] / f["state_bytes"])
                 if f.get("working_bytes") and f.get("state_bytes") else None}
            out.append(t)
    return out


def _ok(value, limit, larger_is_better=False):
    if value is None:
        return "-"
    good = value >= limit if larger_is_better else value <= limit
    return f"{value:.2f}x {'met' if good else 'MISSED'}"


def targets_table(ts) -> list[str]:
    lines = ["| workload | x peak floor (target) | x own-shape floor | fastntk / plain: suite medians | fastntk / plain: interleaved | "
             "vs NT structured (>= 4x) | vs torch.func jac (>= 50x) | memory / plain (<= 1x) | memory / state (<= 1.2x) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in ts:
        lines.append(
            f"| {t['workload']} {t['mode']} | {_ok(t['x_floor'], t['floor_target'])} (<= {t['floor_target']}x) | "
            f"{_r(t['x_floor_own'])} | "
            f"{_ok(t['vs_plain'], 1.0)} | {_ok(t['vs_plain_interleaved'], 1.0)} | "
            f"{_ok(t['nt_sd_speedup'], 4.0, True)} | {_ok(t['torchfunc_jac_speedup'], 50.0, True)} | "
            f"{_ok(t['mem_vs_plain'], 1.0)} | {_ok(t['mem_vs_state'], 1.2)} |")
    return lines


def summary_table(data) -> list[str]:
    """One row per workload, fastntk full (and M trace) against each alternative."""
    rows = data["rows"]
    lines = ["| workload | fastntk | plain PyTorch | floor (peak GEMM rate) | floor (own-shape GEMM rate) | "
             "torch.func jac | torch.func NTK-vp | NT jac | NT NTK-vp | NT structured | fastntk memory | plain memory |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for wl in WORKLOADS:
        w = WORKLOADS[wl]
        for mode in w.outputs:
            f = rows.get((wl, f"fastntk_{mode}"))
            if not f or f.get("median") is None:
                continue

            def cell(method):
                r = rows.get((wl, method))
                if not r:
                    return "-"
                if r.get("median") is None:
                    s = (r.get("skipped") or "")
                    return "out of memory" if ("GB" in s or "memory" in s) else "n/a"
                return f"{_t(r['median'])} ({r['median'] / f['median']:.1f}x)"

            p = rows.get((wl, f"plain_{mode}"), {})
            lines.append(
                f"| {wl} ({w.depth}x{w.width}, K={w.k}, N={w.n}) {mode} | {_t(f['median'])} | {cell(f'plain_{mode}')} | "
                f"{_t(f.get('floor_s'))} | {_t(f.get('floor_own_s'))} | {cell(f'torchfunc_jac_{mode}')} | {cell(f'torchfunc_ntkvp_{mode}')} | "
                f"{cell(f'nt_jac_{mode}')} | {cell(f'nt_ntkvp_{mode}')} | {cell(f'nt_sd_{mode}')} | "
                f"{fmt_bytes(f['working_bytes']) if f.get('working_bytes') else '-'} | "
                f"{fmt_bytes(p['working_bytes']) if p.get('working_bytes') else '-'} |")
    return lines


def machine_line(data) -> str:
    m = data["machine"]
    return (f"{m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gb']} GB, "
            f"Python {m['python']}, torch {m['torch']} (fastntk {m['fastntk_backend']} ops), float32; "
            f"measured float32 GEMM rate {data['gemm_gflops']:.0f} GFLOP/s (2048^3), "
            f"{_own_rates(data)} on the workloads' own GEMM shapes; {m['date']}")


def _own_rates(data) -> str:
    rates = data.get("own_gemm_gflops") or {}
    return ", ".join(f"{wl} {r:.0f}" for wl, r in rates.items()) or "not measured"


def _scaling_sentence(data) -> str:
    sc = _load(os.path.join(data.get("dir", "bench-results"), "scaling.json"))
    if not sc:
        return ""
    fw, fn = sc["sweeps"]["width"]["fits"], sc["sweeps"]["N"]["fits"]
    return (f"; 3 hidden layers, K = 1: time ~ width^{fw['time']:.2f} at N = {sc['fixed_n']} (FLOP model "
            f"{fw['time_model']:.2f} over the same widths, tending to 2), time ~ N^{fn['time']:.2f} at width "
            f"{sc['fixed_width']} (FLOP model {fn['time_model']:.2f}, tending to 2 as the Grams take over), "
            f"memory ~ width^{fw['memory']:.2f} (theory 1) and N^{fn['memory']:.2f} (between 1 and 2: "
            f"activations ~ N, output ~ N^2)")


def interleaved_table(data) -> list[str]:
    """fastntk / plain formula per workload and mode from ab.json (median of
    the per-round ratios of one interleaved run), or nothing without it."""
    if not data["ab"]:
        return []
    modes = list(dict.fromkeys(c["mode"] for c in data["ab"]))
    cell = {(c["workload"], c["mode"]): c for c in data["ab"]}
    lines = ["", "fastntk / plain formula in every output mode, timed interleaved (`benchmarks/ab.py`: each round runs "
             "both back to back, alternating which goes first; median of the per-round ratios, rounds in "
             "parentheses):", "", "| workload | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for wl in dict.fromkeys(c["workload"] for c in data["ab"]):
        lines.append(f"| {wl} | " + " | ".join(
            f"{cell[wl, m]['ratio_median']:.2f} ({cell[wl, m]['rounds']})" if (wl, m) in cell else "-"
            for m in modes) + " |")
    return lines


def render(data) -> tuple[str, str]:
    ts = targets(data)
    data["targets"] = ts
    md = ["# fastntk benchmark report", "", f"Machine: {machine_line(data)}.", "",
          f"Command: `{COMMAND}`. Times are pytest-benchmark medians (5 rounds or more; 1 for torch.func NTK-vector "
          "products, 3 for L); memory is the working set of one call in a fresh process (benchmarks/memory.py). "
          "The machine is shared and 2 cores: other jobs' load moves single medians, so compare the ratios, and "
          "prefer the interleaved fastntk/plain column.", "",
          "## Summary (each cell: time, and how many times slower than fastntk)", ""]
    md += summary_table(data)
    md += ["", "## Targets (issue 6)", ""] + targets_table(ts)
    if not data["nt_available"]:
        md += ["", "neural-tangents was not measured: "
               + (data["nt_setup_failed"] or "no bench-results/nt.json (run `make bench-setup`).")]
    md += ["", "## Per workload", ""]
    for wl in WORKLOADS:
        md += workload_table(data, wl) + [""]
    if data["ab"]:
        md += ["## fastntk / plain formula, interleaved (benchmarks/ab.py)", "",
               "| workload | mode | rounds | fastntk min | plain min | ratio (median of rounds) | ratio (min/min) |",
               "|---|---|---:|---:|---:|---:|---:|"]
        for c in data["ab"]:
            md.append(f"| {c['workload']} | {c['mode']} | {c['rounds']} | {_t(c['fastntk_min'])} | "
                      f"{_t(c['plain_min'])} | {c['ratio_median']:.2f} | {c['ratio_min']:.2f} |")
    md += ["", "FLOPs (benchmarks/workloads.py:flop_parts): forward sum 2 N n_{l-1} n_l, backward sum_{l>=2} 2 N K n_l "
           "n_{l-1}, Grams sum 2 N^2 (n_{l-1} + K^2 n_l) (K instead of K^2 for trace/per_output, N instead of N^2 for "
           "the diagonal), plus the Hadamard accumulation; GFLOP/s counts every pair. The floors count what the "
           "symmetric method must do for x2 = x1 (flops_symmetric: forward + backward + the Grams and accumulation "
           "of the N (N + 1) / 2 pairs i <= j), at the peak 2048^3 GEMM rate and at the rate measured on the "
           "workload's own GEMM shapes (own_shape_gemms: full-mode shapes, also used for the other modes). 'state' is the memory the layerwise method cannot avoid: pre-activations of every "
           "layer, two layers of signals and the output."]
    readme = ["## Performance", "",
              f"Measured on {machine_line(data)}, with `{COMMAND}` (the table is generated by "
              "`benchmarks/report.py`; the full report, per mode and with GFLOP/s, is written to "
              "`bench-results/report.md`). Network: NTK-parametrized ReLU MLP with biases, input dimension 64, "
              "float32, x2 = x1. Each cell: median time and how many times slower than fastntk; 'out of memory': "
              "the method's Jacobian (or batched tangents) would not fit in the 24 GB of this machine, so it was "
              "skipped. The floors count what the layerwise method must do for x2 = x1 (forward and backward GEMMs, "
              "and half the Grams: Theta is symmetric), at the machine's peak float32 GEMM rate (2048^3) and at the "
              "rate measured on the workload's own GEMM shapes (small layers run below peak).", ""] + summary_table(data) + \
        interleaved_table(data) + [
              "", "Scaling with width and with N: `python benchmarks/scaling.py` (log-log plot, fitted exponents"
              + _scaling_sentence(data) + "):", "", "![scaling](docs/scaling.png)", ""]
    return "\n".join(md) + "\n", "\n".join(readme) + "\n"


def replace_readme_section(path: str, section: str) -> None:
    """Replace README.md's generated performance text (README_START through
    README_END) with ``section``; the text after it is left alone."""
    with open(path) as f:
        text = f.read()
    start = text.index(README_START)
    end = text.index(README_END, start) + len(README_END)
    with open(path, "w") as f:
        f.write(text[:start] + section.rstrip("\n") + "\n" + text[end:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="bench-results")
    ap.add_argument("--readme", default=README, help="the README whose Performance section is regenerated")
    args = ap.parse_args(argv)
    data = collect(args.dir)
    data["dir"] = args.dir
    md, readme = render(data)
    with open(os.path.join(args.dir, "report.md"), "w") as f:
        f.write(md)
    serial = dict(data, rows=list(data["rows"].values()))
    with open(os.path.join(args.dir, "report.json"), "w") as f:
        json.dump(serial, f, indent=1, default=str)
    replace_readme_section(args.readme, readme)
    print(md)
    print(f"wrote {args.dir}/report.md, {args.dir}/report.json, {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
