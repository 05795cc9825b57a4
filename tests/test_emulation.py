"""The CPU emulator of the CUDA execution model itself (csrc/emulation/): warp
exchanges compute the right values, __shared__ storage is poisoned per block,
and what a GPU would hang on or refuse is reported with its file and line.
The kernels' own tests are test_ops.py and test_ntk.py, run on the emulated
ops with FASTNTK_TEST_EMULATION=1 (`make test-emulated`); these skip unless
that run loaded the module. The one kernel test here is the one that needs
the knobs set inside it (a looping grid, seeded orders)."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from conftest import EMULATION

pytestmark = pytest.mark.skipif(not EMULATION, reason="needs FASTNTK_TEST_EMULATION=1 and `make emulate`")


@pytest.fixture(scope="module")
def emu():
    import emulation
    return emulation.load()


@pytest.mark.parametrize("name,match", [
    ("exit_before_barrier", r"divergent barrier: thread \(\d+, 0, 0\) waits at __syncthreads at .*selftest.cpp:\d+, "
                            r"but thread \(5, 0, 0\) exited without reaching it"),
    ("barrier_in_branch", r"divergent barrier: .*__syncthreads at .*selftest.cpp:\d+.*exited without reaching it"),
    ("two_barrier_sites", r"divergent barrier: threads of one block meet at different __syncthreads: "
                          r"thread \(\d+, 0, 0\) at .*selftest.cpp:\d+, thread \(\d+, 0, 0\) at .*selftest.cpp:\d+"),
    ("shuffle_after_lane_exit", r"divergent barrier: thread \(\d+, 0, 0\) waits at __shfl_down_sync at "
                                r".*selftest.cpp:\d+, but thread \(3, 0, 0\) exited without reaching it"),
    ("block_too_large", r"emulated CUDA launch at .*selftest.cpp:\d+: invalid configuration: block \(1280, 1, 1\) "
                        r"has 1280 threads; at most 1024"),
    ("block_z_too_large", r"invalid configuration: block \(1, 1, 65\)"),
    ("grid_y_too_large", r"invalid configuration: grid \(1, 65536, 1\)"),
    ("empty_grid", r"invalid configuration: grid \(0, 1, 1\)"),
])
def test_reports_what_a_gpu_would_hang_on_or_refuse(emu, name, match):
    with pytest.raises(RuntimeError, match=match):
        emu.run_selftest(name)


def test_warp_intrinsics(emu):
    out = emu.run_selftest("warp_sum")
    assert out[0] == sum(range(32))  # __shfl_down_sync tree
    assert out[1] == sum(1 << l for l in range(32) if l & 1)  # __ballot_sync
    assert out[2] == 70  # __shfl_sync from lane 7
    assert out[3] == 2  # __all_sync + __any_sync


def test_shuffle_from_a_lane_outside_the_mask_is_reported(emu):
    """Lane 15 of a 16-lane mask shuffles down from lane 16: undefined on a GPU."""
    with pytest.raises(RuntimeError, match="shuffle reads lane 16, which is not in the mask"):
        emu.run_selftest("shuffle_partial_mask")


def test_shared_memory_is_poisoned_in_every_block(emu):
    out = emu.run_selftest("shared_before_write")
    assert all(math.isnan(v) for v in out[:3]), out[:3]  # never 0, never the previous block's 42


def test_default_order_runs_the_lowest_thread_first(emu):
    if emu.config()["seed"] is not None:
        pytest.skip("randomized order")
    assert emu.run_selftest("first_thread")[:2] == [0.0, 1.0]


@contextlib.contextmanager
def pretend_gpu(emu, **changes):
    """The emulator's knobs (emu.config()) with `changes`, restored on exit."""
    old = emu.config()
    try:
        emu.set_config(**{**old, **changes})
        yield
    finally:
        emu.set_config(**old)


def test_knobs_shrink_the_pretend_gpu(emu):
    """A grid wider than max_grid_x is refused, and ntk_diag_accumulate, whose
    grid x is min(N, max_grid_x), stays exact when its blocks loop."""
    from fastntk import _ops
    with pretend_gpu(emu, sm_count=1, max_grid_x=2, max_scratch=0):
        assert emu.config()["max_grid_x"] == 2
        with pytest.raises(RuntimeError, match=r"grid \(3, 1, 1\); x must be in \[1, 2\]"):
            emu.run_selftest("shared_before_write")
        # ntk_diag_accumulate's grid x is min(N, max_grid_x): 5 samples on 2 blocks loop.
        a, d = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, 4, dtype=torch.float64)
        got, ref = torch.zeros(5, 2, 2, dtype=torch.float64), torch.zeros(5, 2, 2, dtype=torch.float64)
        torch.ops.fastntk_emu.ntk_diag_accumulate(got, a, d, 0.3, 0.2, "full")
        _ops._reference.ntk_diag_accumulate(ref, a, d, 0.3, 0.2, "full")
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", [None, 1, 2, 3])
@pytest.mark.parametrize("outputs", ["trace", "per_output"])
def test_a_block_runs_reductions_back_to_back(emu, outputs, seed):
    """Each of 2 blocks reduces 12 samples in turn (ntk_diag_accumulate's grid x
    is min(N, max_grid_x)), every sample's sums different: a block reduction
    whose scratch the next one overwrites before every thread has read it
    (a missing trailing barrier) gives some sample another's value. The
    default order cannot show that (thread 0, which writes the result, reads
    first); a seeded order lets another warp race ahead through the next
    reduction."""
    from fastntk import _ops
    gen = torch.Generator().manual_seed(0)
    n, k, width = 24, 3, 300  # rows longer than the 256 threads of a block
    scale = torch.arange(1, n + 1, dtype=torch.float64)
    a = torch.randn(n, width, generator=gen, dtype=torch.float64) * scale[:, None]
    d = torch.randn(n, k, width, generator=gen, dtype=torch.float64) * scale[:, None, None]
    shape = (n,) if outputs == "trace" else (n, k)
    got, ref = torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64)
    with pretend_gpu(emu, max_grid_x=2, seed=seed):
        torch.ops.fastntk_emu.ntk_diag_accumulate(got, a, d, 0.7, 0.2, outputs)
    _ops._reference.ntk_diag_accumulate(ref, a, d, 0.7, 0.2, outputs)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
