"""The cost of a recorded NTKTracker step next to one training step,
measured interleaved (ABAB...) so that a shared machine's load hits both alike.

A training step: zero_grad, forward on the full batch, cross-entropy,
backward, Adam update. A tracker record (``NTKTracker.record``, what
``tracker.step`` runs at a recorded step): the layerwise NTK (trace over the
K outputs) on the probe set, its eigendecomposition and statistics.

    python benchmarks/tracker_cost.py [--rounds 7] [--threads 2] [--out tracker_cost.json]

Prints, per size, the median seconds of each and their ratio (record / step).
``benchmarks/test_bench_tracker.py`` times the same two calls under
pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass

import torch

import fastntk


@dataclass(frozen=True)
class TrackerWorkload:
    """A training setup: MLP [n_0, width x depth, K], full batch, probe set."""

    name: str
    n0: int
    width: int
    depth: int
    k: int
    batch: int
    probe: int


#: The default of ``fastntk run training`` (digits: 64 pixels, 10 classes, 1000 training images, 10 per class
#: probed) and a deeper, wider one (the ICML 2022 network's width, 10 hidden layers instead of 20).
WORKLOADS = {
    "training_default": TrackerWorkload("training_default", 64, 64, 6, 10, 1000, 100),
    "wide_deep": TrackerWorkload("wide_deep", 64, 300, 10, 10, 1000, 100),
}


def setup(w: TrackerWorkload, seed: int = 0):
    """(train_step, record): two closures over one model, optimizer and tracker."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(w.batch, w.n0, generator=g)
    y = torch.randint(0, w.k, (w.batch,), generator=g)
    model = fastntk.MLP([w.n0] + [w.width] * w.depth + [w.k], parametrization="standard", sigma_w=2 ** 0.5,
                        seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    tracker = fastntk.NTKTracker(model, x[:w.probe], y[:w.probe])

    def train_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step = iter(range(1, 1 << 30))
    return train_step, lambda: tracker.record(next(step))


def measure(w: TrackerWorkload, rounds: int) -> dict:
    train_step, record = setup(w)
    train_step(), record()  # warm up
    t_step, t_record = [], []
    for _ in range(rounds):
        for fn, out in ((train_step, t_step), (record, t_record)):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    s, r = statistics.median(t_step), statistics.median(t_record)
    return {**asdict(w), "rounds": rounds, "step_s": s, "record_s": r, "ratio": r / s}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [measure(w, args.rounds) for w in WORKLOADS.values()]
    for r in results:
        print(f"{r['name']:>17}: MLP [{r['n0']}, {r['width']} x {r['depth']}, {r['k']}], batch {r['batch']}, "
              f"probe {r['probe']}: training step {r['step_s'] * 1e3:.1f} ms, tracker record "
              f"{r['record_s'] * 1e3:.1f} ms, ratio {r['ratio']:.2f} (median of {r['rounds']}, interleaved, "
              f"{torch.get_num_threads()} threads)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
