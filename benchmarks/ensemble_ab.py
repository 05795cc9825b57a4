"""Ensemble path against a Python loop, interleaved: one script, one table.

The workload of ``test_bench_ensemble.py`` (the ICML 2022 setting): ReLU
MLP, standard parametrization, sigma_w^2 = 2, sigma_b = 0 with biases,
width 100, 49 hidden layers, scalar output, 2 unit inputs at cosine 0.5,
float64, CPU. "A loop" is what a user writes without the ensemble module::

    for s in seeds: fastntk.ntk(fastntk.MLP(widths, ..., seed=s), x, outputs="trace")

Each round times, back to back and in alternating order (the machine may be
shared, so only ratios within a round mean something):

- ``loop``: the loop above (weights drawn included);
- ``ensemble``: :func:`fastntk.ensemble.ensemble_ntk` on the same seeds;
- ``ensemble projected``: the same with ``sampler="projected"`` (a different
  sample of inits from the same distribution: its mean kernel is checked
  against the loop's within their standard errors, not entry by entry);
- ``loop kernels``: the loop over networks built beforehand;
- ``ensemble kernels``: the batched kernels on weights drawn beforehand;
- ``draw``: :func:`fastntk.ensemble.init_weights` alone (the weights both
  paths must draw, bit for bit the same);
- with ``--against REV``: the ensemble and its kernels from ``fastntk/ensemble.py``
  at git revision REV (loaded next to the current one), for before/after.

Prints per-round times and the min / median over rounds of each ratio, and
writes them as JSON with ``--out``::

    python benchmarks/ensemble_ab.py --inits 500 --rounds 5 --against d11e634
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

import fastntk
from fastntk import ensemble

HIDDEN, WIDTH = 49, 100
NET = dict(activation="relu", parametrization="standard", sigma_w=math.sqrt(2.0), sigma_b=0.0)


def inputs(width: int) -> torch.Tensor:
    """Two unit inputs at cosine 0.5."""
    x = torch.zeros(2, width, dtype=torch.float64)
    x[0, 0] = 1.0
    x[1, 0], x[1, 1] = 0.5, math.sqrt(0.75)
    return x


def module_at(rev: str):
    """fastntk/ensemble.py as it was at git revision ``rev``, imported inside the
    fastntk package (its relative imports resolve against the current tree)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    src = subprocess.run(["git", "-C", root, "show", f"{rev}:fastntk/ensemble.py"], check=True,
                         capture_output=True, text=True).stdout
    name = f"fastntk._ensemble_{rev}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "fastntk"
    sys.modules[name] = mod
    exec(compile(src, f"{rev}:fastntk/ensemble.py", "exec"), mod.__dict__)
    return mod


def kernels(mod, ws, bs, x, chunk: int) -> torch.Tensor:
    """(S, N, N) trace kernels of pre-drawn weights with ``mod._chunk_kernels``,
    ``chunk`` inits per batched call."""
    from fastntk.models import Activation

    ones = [1.0] * len(ws)
    parts = [mod._chunk_kernels([w[i:i + chunk] for w in ws], [b[i:i + chunk] for b in bs], ones, ones,
                                Activation("relu"), x, None, 1, "trace") for i in range(0, ws[0].shape[0], chunk)]
    return torch.cat([p.sum((1, 2)) if p.dim() == 5 else p for p in parts])


def check_same_mean(sample: torch.Tensor, reference: torch.Tensor, z_max: float = 5.0) -> None:
    """Raise unless two independent samples (S, ...) of kernels have means within
    ``z_max`` standard errors of their difference, entry by entry."""
    se = (sample.var(0) / len(sample) + reference.var(0) / len(reference)).sqrt()
    z = ((sample.mean(0) - reference.mean(0)).abs() / se).max().item()
    if not z < z_max:
        raise AssertionError(f"the projected sampler's mean kernel is {z:.1f} standard errors from the loop's")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inits", type=int, default=500)
    ap.add_argument("--depth", type=int, default=HIDDEN, help="hidden layers (default: %(default)s)")
    ap.add_argument("--width", type=int, default=WIDTH)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=50, help="inits per call for the kernels-only cases")
    ap.add_argument("--against", default=None, help="git revision of fastntk/ensemble.py to compare with")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    widths = [args.width] * (args.depth + 1) + [1]
    x = inputs(args.width)
    seeds = list(range(args.inits))
    old = module_at(args.against) if args.against else None
    nets = [fastntk.MLP(widths, seed=s, dtype=torch.float64, **NET) for s in seeds]
    ws, bs = ensemble.init_weights(widths, seeds, parametrization="standard", sigma_w=NET["sigma_w"])
    reference = torch.stack([fastntk.ntk(n, x, outputs="trace") for n in nets])

    cases = {
        "loop": lambda: torch.stack([fastntk.ntk(fastntk.MLP(widths, seed=s, dtype=torch.float64, **NET), x,
                                                 outputs="trace") for s in seeds]),
        "ensemble": lambda: ensemble.ensemble_ntk(widths, x, seeds=seeds, progress=False, keep=True, **NET).kernels,
        "ensemble projected": lambda: ensemble.ensemble_ntk(widths, x, seeds=seeds, progress=False, keep=True,
                                                            sampler="projected", **NET).kernels,
        "loop kernels": lambda: torch.stack([fastntk.ntk(n, x, outputs="trace") for n in nets]),
        "ensemble kernels": lambda: kernels(ensemble, ws, bs, x, args.chunk),
        "draw": lambda: ensemble.init_weights(widths, seeds, parametrization="standard",
                                              sigma_w=NET["sigma_w"])[0][0][:, :1, 0],
    }
    if old is not None:
        cases[f"ensemble@{args.against}"] = lambda: old.ensemble_ntk(widths, x, seeds=seeds, progress=False,
                                                                     keep=True, **NET).kernels
        cases[f"ensemble kernels@{args.against}"] = lambda: kernels(old, ws, bs, x, 50)
    names = list(cases)
    times = {n: [] for n in names}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t, out = timed(cases[n])
            if n == "ensemble projected":
                check_same_mean(out, reference)
            elif n != "draw":
                err = ((out - reference).abs().max() / reference.abs().max()).item()
                if not err < 1e-10:
                    raise AssertionError(f"{n} differs from the loop of fastntk.ntk by {err:.2e}")
            times[n].append(t)
        print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.3f} s" for n in names), flush=True)

    def ratio(num: str, den: str) -> tuple[float, float]:
        rs = [a / b for a, b in zip(times[num], times[den])]
        return min(rs), statistics.median(rs)

    pairs = [("loop", "ensemble"), ("loop", "ensemble projected"), ("ensemble", "ensemble projected"), ("loop kernels", "ensemble kernels"), ("loop", "draw")]
    if old is not None:
        pairs += [("loop", f"ensemble@{args.against}"),
                  ("loop kernels", f"ensemble kernels@{args.against}"),
                  (f"ensemble@{args.against}", "ensemble"),
                  (f"ensemble kernels@{args.against}", "ensemble kernels")]
    result = {"widths": f"{args.width} x {args.depth} hidden", "inits": args.inits, "rounds": args.rounds,
              "threads": torch.get_num_threads(),
              "median_s": {n: statistics.median(v) for n, v in times.items()},
              "ratios": {}}
    print(f"\n{args.inits} inits, width {args.width}, {args.depth} hidden layers, {args.rounds} rounds "
          f"(ratio of times within a round; min and median over rounds)")
    for a, b in pairs:
        lo, med = ratio(a, b)
        result["ratios"][f"{a} / {b}"] = {"min": lo, "median": med}
        print(f"  {a:>28} / {b:<28} min {lo:6.2f}x  median {med:6.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
