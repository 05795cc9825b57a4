"""pytest-benchmark configuration for the fastntk benchmark suite.

Not collected by ``make test`` (pyproject's testpaths is ``tests``); run with
``make bench`` or ``python -m pytest benchmarks``. Makes the helper modules of
this folder importable and caches each workload's network, inputs and
fastntk reference output for the whole session.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import WORKLOADS, make_input, make_method, make_net  # noqa: E402


@pytest.fixture(scope="session")
def setups():
    """setups(name) -> (net, x) for a workload, built once per session."""
    cache = {}

    def get(name):
        if name not in cache:
            w = WORKLOADS[name]
            cache[name] = (make_net(w), make_input(w.n))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def references(setups):
    """references(workload, method) -> the fastntk output ``method`` must match."""
    cache = {}

    def get(name, method):
        if (name, method) not in cache:
            net, x = setups(name)
            with torch.no_grad():
                cache[(name, method)] = make_method(method, net, x)()
        return cache[(name, method)]

    return get
