"""Bounded memory and out of core: ntk/ntk_diag with block_size, max_memory,
out= and resume= against the unblocked call and the torch.func oracle; peak
memory under a budget (measured in a subprocess); out-of-memory retry;
resuming an interrupted file-backed kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastntk
from conftest import TOL, oracle_ntk, reduce_outputs, rel_err
from fastntk.scale import blocked
from test_ntk import inputs, make_mlp

OUTPUTS = ["full", "trace", "per_output"]
#: Blocked and unblocked sums differ only in order (GEMM tiling, layer
#: grouping): a few ulps of the largest entry in float64.
SUMMATION_ORDER_TOL = 1e-13

pytestmark = pytest.mark.usefixtures("one_thread")


def mirror(t: torch.Tensor, outputs: str, lead: int = 0) -> torch.Tensor:
    t = t.transpose(lead, lead + 1)
    return t.transpose(lead + 2, lead + 3) if outputs == "full" else t


@pytest.mark.parametrize("outputs", OUTPUTS)
@pytest.mark.parametrize("layerwise", [False, True])
@pytest.mark.parametrize("parametrization,bias", [("ntk", True), ("standard", False)])
def test_blocked_equals_unblocked_and_the_oracle(device, outputs, layerwise, parametrization, bias):
    net = make_mlp([5, 9, 7, 3], "tanh", parametrization, bias, device)
    x1, x2 = inputs(13, 5, device), inputs(8, 5, device, seed=2)
    ref = reduce_outputs(oracle_ntk(net, x1, x2), outputs)
    for block_size in (1, 4, 13):
        got = fastntk.ntk(net, x1, x2, outputs=outputs, layerwise=layerwise, block_size=block_size)
        plain = fastntk.ntk(net, x1, x2, outputs=outputs, layerwise=layerwise)
        assert rel_err(got, plain) <= SUMMATION_ORDER_TOL, block_size
        assert rel_err(got.sum((0, 1)) if layerwise else got, ref) <= TOL[torch.float64]
        sym = fastntk.ntk(net, x1, outputs=outputs, layerwise=layerwise, block_size=block_size)
        assert torch.equal(sym, mirror(sym, outputs, 2 if layerwise else 0)), "exactly symmetric"
        assert rel_err(sym, fastntk.ntk(net, x1, outputs=outputs, layerwise=layerwise)) <= SUMMATION_ORDER_TOL


@pytest.mark.parametrize("outputs", OUTPUTS)
def test_blocked_ntk_diag(device, outputs):
    net = make_mlp([4, 8, 8, 3], "relu", device=device)
    x = inputs(11, 4, device)
    plain = fastntk.ntk_diag(net, x, outputs=outputs)
    diag_ref = torch.diagonal(oracle_ntk(net, x), dim1=0, dim2=1).movedim(-1, 0)
    for kwargs in ({"block_size": 3}, {"max_memory": "3MB"}):
        got = fastntk.ntk_diag(net, x, outputs=outputs, **kwargs)
        assert rel_err(got, plain) <= SUMMATION_ORDER_TOL
        assert rel_err(got, reduce_outputs(diag_ref, outputs)) <= TOL[torch.float64]
    lw = fastntk.ntk_diag(net, x, outputs=outputs, layerwise=True, block_size=4)
    assert rel_err(lw, fastntk.ntk_diag(net, x, outputs=outputs, layerwise=True)) <= SUMMATION_ORDER_TOL


def test_block_size_follows_max_memory():
    net = make_mlp([8, 32, 32, 2], "relu")
    layers = fastntk.parse_model(net)
    small = blocked.kernel_block_size(layers, 10**6, 10**6, 8 * 4, 8 * 2**20, 8)
    large = blocked.kernel_block_size(layers, 10**6, 10**6, 8 * 4, 64 * 2**20, 8)
    assert 1 <= small < large
    per_row = fastntk.scale._memory.signal_elements_per_input(layers) + \
        2 * fastntk.scale._memory.pass_elements_per_input(layers)
    for b, budget in ((small, 8 * 2**20), (large, 64 * 2**20)):
        assert 8 * (32 * b * b + per_row * b) <= budget  # the model the size is solved from
    with pytest.raises(ValueError, match="cannot hold even one input"):
        blocked.kernel_block_size(layers, 10, 10, 8, 2**21 + 100, 8)


def test_out_tensor_numpy_and_files(tmp_path):
    net = make_mlp([5, 8, 8, 2], "gelu")
    x = inputs(9, 5)
    ref = fastntk.ntk(net, x, outputs="per_output")
    out = torch.full((9, 9, 2), float("nan"), dtype=torch.float64)
    assert fastntk.ntk(net, x, outputs="per_output", out=out) is out
    assert rel_err(out, ref) <= SUMMATION_ORDER_TOL
    arr = np.zeros((9, 9, 2))
    fastntk.ntk(net, x, outputs="per_output", out=arr, block_size=4)
    assert rel_err(torch.from_numpy(arr), ref) <= SUMMATION_ORDER_TOL
    mm = np.memmap(tmp_path / "k.mm", dtype=np.float64, mode="w+", shape=(9, 9, 2))
    fastntk.ntk(net, x, outputs="per_output", out=mm, block_size=4)
    on_disk = np.fromfile(tmp_path / "k.mm", dtype=np.float64).reshape(9, 9, 2)
    assert rel_err(torch.from_numpy(on_disk), ref) <= SUMMATION_ORDER_TOL
    from_file = torch.from_file(str(tmp_path / "k.tf"), shared=True, size=9 * 9 * 2, dtype=torch.float64)
    fastntk.ntk(net, x, outputs="per_output", out=from_file.view(9, 9, 2), block_size=5)
    on_disk = np.fromfile(tmp_path / "k.tf", dtype=np.float64).reshape(9, 9, 2)
    assert rel_err(torch.from_numpy(on_disk), ref) <= SUMMATION_ORDER_TOL
    path = tmp_path / "k.bin"
    got = fastntk.ntk(net, x, outputs="per_output", out=str(path), block_size=4)
    assert rel_err(got, ref) <= SUMMATION_ORDER_TOL
    assert path.stat().st_size == 9 * 9 * 2 * 8
    record = json.loads((tmp_path / "k.bin.blocks.json").read_text())
    assert sorted(map(tuple, record["done"])) == [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    diag_path = tmp_path / "d.bin"
    got = fastntk.ntk_diag(net, x, out=diag_path, block_size=4)
    assert rel_err(got, fastntk.ntk_diag(net, x)) <= SUMMATION_ORDER_TOL


def _count_blocks(monkeypatch, fail_at: int | None):
    """Log every block computed; the fail_at-th raises, as a killed run would stop."""
    state = {"fail_at": fail_at, "calls": []}
    original = blocked._fill_block

    def counting(blocks, out, rows, cols, tile):
        if len(state["calls"]) == state["fail_at"]:
            raise KeyboardInterrupt("simulated interruption")
        state["calls"].append((rows.start, cols.start))
        original(blocks, out, rows, cols, tile)

    monkeypatch.setattr(blocked, "_fill_block", counting)
    return state


@pytest.mark.parametrize("x2_given", [False, True])
def test_resume_after_an_interruption(tmp_path, monkeypatch, x2_given):
    net = make_mlp([5, 8, 8, 3], "tanh")
    x, x2 = inputs(10, 5), (inputs(7, 5, seed=2) if x2_given else None)
    path = tmp_path / "kernel.bin"
    sidecar = tmp_path / "kernel.bin.blocks.json"
    state = _count_blocks(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        fastntk.ntk(net, x, x2, out=path, block_size=3)
    assert len(json.loads(sidecar.read_text())["done"]) == 3
    total = 4 * 3 if x2_given else 10  # blocks of 3: 4 x 3 two-sided, 4 x 5 / 2 in the triangle
    state["fail_at"], state["calls"] = None, []
    got = fastntk.ntk(net, x, x2, out=path, resume=True)  # the block size comes from the sidecar
    assert len(state["calls"]) == total - 3, "only the blocks not yet written"
    assert rel_err(got, fastntk.ntk(net, x, x2)) <= SUMMATION_ORDER_TOL
    state["calls"] = []
    fastntk.ntk(net, x, x2, out=path, resume=True)
    assert state["calls"] == [], "a finished file resumes to nothing"
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"cannot resume .*\(differs in fingerprint\)"):
        fastntk.ntk(net, x + 1.0, x2, out=path, resume=True)
    with pytest.raises(ValueError, match=r"differs in outputs, shape\)"):
        fastntk.ntk(net, x, x2, outputs="trace", out=path, resume=True)
    assert path.read_bytes() == before, "a refused resume leaves the file intact"


def test_out_of_memory_in_a_block_is_retried_smaller(monkeypatch):
    net = make_mlp([5, 8, 8, 2], "relu")
    x = inputs(12, 5)
    original = blocked._KernelBlocks.compute

    def picky(self, rows, cols):
        if len(rows) > 3:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes")
        return original(self, rows, cols)

    monkeypatch.setattr(blocked._KernelBlocks, "compute", picky)
    with pytest.warns(RuntimeWarning, match="out of memory in a block; retrying with blocks of") as record:
        got = fastntk.ntk(net, x, block_size=12)
    assert [str(w.message).split("blocks of ")[1].split()[0] for w in record] == ["6", "3"]  # halved twice
    assert rel_err(got, fastntk.ntk(net, x, x.clone())) <= SUMMATION_ORDER_TOL
    assert torch.equal(got, mirror(got, "full"))

    def broken(self, rows, cols):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(blocked._KernelBlocks, "compute", broken)
    with pytest.raises(RuntimeError, match="some other failure"):
        fastntk.ntk(net, x, block_size=4)


def test_half_precision_and_inputs_untouched():
    net = make_mlp([6, 8, 2], "gelu", dtype=torch.float32).to(torch.bfloat16)
    x = inputs(7, 6, dtype=torch.float32).to(torch.bfloat16)
    x_before = x.clone()
    got = fastntk.ntk(net, x, block_size=3)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, fastntk.ntk(net, x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fastntk.ntk_diag(net, x, block_size=2), fastntk.ntk_diag(net, x), rtol=1e-6, atol=1e-6)
    assert torch.equal(x, x_before)


def test_bad_arguments_are_refused_by_name(tmp_path):
    net = make_mlp([4, 6, 2], "relu")
    x = inputs(5, 4)
    with pytest.raises(ValueError, match=r"out must have shape \(5, 5, 2, 2\) and dtype torch.float64"):
        fastntk.ntk(net, x, out=torch.zeros(5, 5))
    with pytest.raises(TypeError, match="out must be None, a torch.Tensor"):
        fastntk.ntk(net, x, out=[1, 2])
    with pytest.raises(ValueError, match="resume=True needs a file"):
        fastntk.ntk(net, x, resume=True)
    with pytest.raises(TypeError, match="resume must be a bool"):
        fastntk.ntk(net, x, out=tmp_path / "a.bin", resume="yes")
    with pytest.raises(TypeError, match="block_size must be a positive int"):
        fastntk.ntk(net, x, block_size=2.5)
    with pytest.raises(ValueError, match="block_size must be positive"):
        fastntk.ntk_diag(net, x, block_size=0)
    with pytest.raises(ValueError, match="max_memory must be positive"):
        fastntk.ntk(net, x, max_memory=-5)
    with pytest.raises(ValueError, match="max_memory must look like"):
        fastntk.ntk(net, x, max_memory="8 gigs")


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys, torch, fastntk

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    def peak_over_baseline(call):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        base = status("VmRSS")
        call()
        return status("VmHWM") - base

    n, budget = int(sys.argv[1]), int(sys.argv[2])
    net = fastntk.MLP([16, 128, 128, 1], seed=0, dtype=torch.float64)
    x = torch.randn(n, 16, dtype=torch.float64)
    out = torch.ones(n, n, dtype=torch.float64)  # preallocated and touched: part of the baseline
    fastntk.ntk(net, x[:64], outputs="trace", block_size=32)  # load BLAS and the kernels first
    blocked = peak_over_baseline(lambda: fastntk.ntk(net, x, outputs="trace", max_memory=budget, out=out))
    ok = bool(torch.equal(out, out.t()))
    unblocked = peak_over_baseline(lambda: fastntk.ntk(net, x, outputs="trace"))
    print(json.dumps({"blocked": blocked, "unblocked": unblocked, "out": out.numel() * 8, "symmetric": ok}))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's VmHWM reset")
def test_peak_memory_stays_under_max_memory(tmp_path):
    """Peak resident memory of the process (VmHWM, which sees torch's
    allocations too, unlike tracemalloc) above its baseline, in a fresh
    subprocess so that nothing else shares the heap. glibc's fixed mmap
    threshold makes freed blocks leave the RSS, so the peak is what the call
    keeps alive at once (with its default, growing threshold, freed heap
    blocks can stay resident: measured up to ~1.1x the budget here)."""
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    budget = 24 * 2**20
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    result = subprocess.run([sys.executable, str(script), "2000", str(budget)], capture_output=True, text=True,
                            env=env, timeout=300, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["symmetric"]
    assert measured["blocked"] <= budget, measured
    # The budget binds: without blocks the same call needs more than budget besides its output.
    assert measured["unblocked"] - measured["out"] > budget, measured


def test_progress_bar_counts_blocks(monkeypatch):
    """progress=True: one bar over the blocks still to compute (tqdm shows its ETA)."""
    bars = []

    class Recorder:
        def __init__(self, total):
            self.total, self.done, self.closed = total, 0, False

        def update(self, n=1):
            self.done += n

        def close(self):
            self.closed = True

    def fake_bar(progress, total, desc, *, worth_it, unit="it"):
        assert progress is True and unit == "block"
        bars.append(Recorder(total))
        return bars[-1]

    monkeypatch.setattr(blocked, "progress_bar", fake_bar)
    net = make_mlp([4, 6, 2], "relu")
    fastntk.ntk(net, inputs(10, 4), block_size=4, progress=True)  # 3 row blocks: 6 in the triangle
    blocked.blocked_ntk_diag(net, inputs(10, 4), block_size=4, progress=True)
    assert [(b.total, b.done, b.closed) for b in bars] == [(6, 6, True), (3, 3, True)]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_memory_stays_under_max_memory():
    """torch.cuda.max_memory_allocated sees every tensor the call allocates."""
    net = make_mlp([16, 128, 128, 1], "relu", device="cuda")
    x = inputs(3000, 16, "cuda")
    out = torch.zeros(3000, 3000, dtype=torch.float64, device="cuda")
    fastntk.ntk(net, x[:64], outputs="trace", block_size=32)
    budget = 24 * 2**20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fastntk.ntk(net, x, outputs="trace", max_memory=budget, out=out)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= budget
    torch.cuda.reset_peak_memory_stats()
    plain = fastntk.ntk(net, x, outputs="trace")
    assert torch.cuda.max_memory_allocated() - base - plain.numel() * 8 > budget  # the budget binds
    assert rel_err(out, plain) <= SUMMATION_ORDER_TOL
