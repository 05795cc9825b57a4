"""NTKTracker's cost per recorded step next to one training step, under
pytest-benchmark, grouped by workload (see tracker_cost.py, which measures
the two interleaved and prints their ratio).

    python -m pytest benchmarks/test_bench_tracker.py --benchmark-only -q
"""

from __future__ import annotations

import pytest

from tracker_cost import WORKLOADS, setup


@pytest.mark.parametrize("name", list(WORKLOADS))
@pytest.mark.parametrize("what", ["train_step", "tracker_record"])
def test_tracker_vs_training_step(benchmark, name, what):
    train_step, record = setup(WORKLOADS[name])
    benchmark.group = f"tracker {name}"
    row = benchmark(train_step if what == "train_step" else record)
    if what == "tracker_record":  # the record is a real one: a kernel was computed
        assert row["lambda_max"] > 0 and 0 <= row["rel_change"]
