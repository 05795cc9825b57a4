"""Bounded-memory and out-of-core kernels: Theta in row/column blocks.

Each row block's activations and signals are computed once and cached while
its column blocks stream past (their forward/backward passes are redone per
row block: a factor n_l / block_size more passes than the unblocked call,
small when blocks are larger than the widths). Each block goes through the
engine's own accumulation (:func:`fastntk.ntk._add_kernel`), so the numbers
are the unblocked call's up to the order of floating-point summation.

For x2 = x1 only the blocks on and above the diagonal are computed; the
diagonal blocks use the engine's symmetric path and the others are mirrored,
so the result is exactly symmetric, as unblocked.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from .._progress import check_progress, progress_bar
from ..ntk import (_add_kernel, _all_finite, _check_finite_result, _check_flag, _check_input, _check_model, _check_outputs, _compute_dtype,
                   _forward, _layer_signals, _tf32, ntk_diag)
from ._memory import budget, check_block_size, pass_elements_per_input, signal_elements_per_input
from ._output import BlockOutput, fingerprint, is_file_output, recorded_block_size

#: The output block's size counts this many times in the budget: the block
#: itself, the engine's cached signals (up to one output's worth) and the
#: kernels' Gram temporaries (measured with VmHWM on the CPU: up to 6.4
#: output sizes for the two-sided trace kernel, 1-2.4 for the others).
_OUTPUT_COPIES = 8
#: Bytes of a budget kept for what does not scale with the block (BLAS
#: buffers, allocator slack; ~2 MB measured).
_RESERVE = 2 * 2**20


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError) or isinstance(err, MemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def kernel_block_size(layers, n1: int, n2: int, per_pair: int, budget_bytes: int, itemsize: int) -> int:
    """The largest square block b whose cost fits the budget:
    per_pair b^2 (output, copies included) + b (row signals cached + one
    pass on each side) elements."""
    per_row = signal_elements_per_input(layers) + 2 * pass_elements_per_input(layers)
    elements = (budget_bytes - _RESERVE) / itemsize
    b = (-per_row + math.sqrt(max(0.0, per_row ** 2 + 4 * per_pair * elements))) / (2 * per_pair)
    if b < 1:
        raise ValueError(f"max_memory = {budget_bytes} bytes cannot hold even one input's signals "
                         f"(~{itemsize * (per_row + per_pair)} bytes); raise it")
    return max(1, min(max(n1, n2), int(b)))


def _ranges(n: int, step: int) -> list[range]:
    return [range(s, min(s + step, n)) for s in range(0, n, step)]


def _mirror(block: torch.Tensor, layerwise: bool, outputs: str) -> torch.Tensor:
    """Theta(x2, x1) from Theta(x1, x2): swap the input axes (and the output
    axes of the full kernel)."""
    first = 2 if layerwise else 0
    t = block.transpose(first, first + 1)
    return t.transpose(first + 2, first + 3) if outputs == "full" else t


class _KernelBlocks:
    """Computes blocks Theta(x1[rows], x2[cols]), caching the last row
    block's signals."""

    def __init__(self, layers, x1, x2, symmetric: bool, outputs: str, layerwise: bool, shape_tail):
        self.layers, self.x1, self.x2 = layers, x1, x2
        self.symmetric, self.outputs, self.layerwise = symmetric, outputs, layerwise
        self.shape_tail = shape_tail
        self._rows_cached: range | None = None
        self._signals = None

    def _row_signals(self, rows: range):
        if self._rows_cached != rows:
            self._signals = None  # free the previous block's before computing the next
            x = self.x1[rows.start:rows.stop]
            self._signals = list(_layer_signals(self.layers, x, _forward(self.layers, x)))
            self._rows_cached = rows
        return self._signals

    def compute(self, rows: range, cols: range) -> torch.Tensor:
        n1, n2 = len(rows), len(cols)
        lead = (len(self.layers), 2) if self.layerwise else ()
        block = torch.zeros(lead + (n1, n2) + self.shape_tail, dtype=self.x1.dtype, device=self.x1.device)
        signals1 = self._row_signals(rows)
        if self.symmetric and rows == cols:
            signals2 = None
        else:
            x = self.x2[cols.start:cols.stop]
            signals2 = _layer_signals(self.layers, x, _forward(self.layers, x))
        _add_kernel(block, self.layers, signals1, signals2, self.outputs, self.layerwise, progress=False)
        if not _all_finite(block):  # locate the overflow (another pass, only on failure)
            sides = [(x, _forward(self.layers, x)) for x in (self.x1[rows.start:rows.stop], self.x2[cols.start:cols.stop])]
            _check_finite_result("ntk", block, self.layers, *sides)
        return block


def _write(out: torch.Tensor, rows: range, cols: range, block: torch.Tensor, layerwise: bool) -> None:
    lead = (slice(None), slice(None)) if layerwise else ()
    out[lead + (slice(rows.start, rows.stop), slice(cols.start, cols.stop))].copy_(block)


def _fill_block(blocks: _KernelBlocks, out: torch.Tensor, rows: range, cols: range, tile: int) -> None:
    """Write Theta over rows x cols (and its mirror for an off-diagonal
    symmetric block) in tiles of at most tile x tile."""
    mirror = blocks.symmetric and rows != cols
    for r in _ranges(len(rows), tile):
        r = range(rows.start + r.start, rows.start + r.stop)
        for c in _ranges(len(cols), tile):
            c = range(cols.start + c.start, cols.start + c.stop)
            if blocks.symmetric and rows == cols and c.start < r.start:
                continue  # the mirror of a tile above the diagonal
            block = blocks.compute(r, c)
            _write(out, r, c, block, blocks.layerwise)
            if mirror or (blocks.symmetric and rows == cols and r != c):
                _write(out, c, r, _mirror(block, blocks.layerwise, blocks.outputs), blocks.layerwise)


def _with_oom_retry(fill, block_size: int, what: str) -> int:
    """Run fill(tile), halving the tile after each out-of-memory error (with
    a warning); returns the tile that worked, to keep for later blocks."""
    tile = block_size
    while True:
        try:
            fill(tile)
            return tile
        except (RuntimeError, MemoryError) as err:
            if not _is_oom(err) or tile == 1:
                raise
            tile = max(1, tile // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            warnings.warn(f"{what}: out of memory in a block; retrying with blocks of {tile} inputs "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:120]})", RuntimeWarning, stacklevel=3)


def blocked_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    outputs: str = "full",
    layerwise: bool = False,
    allow_tf32: bool = False,
    progress: bool | None = None,
    max_memory: int | str | None = None,
    block_size: int | None = None,
    out=None,
    resume: bool = False,
) -> torch.Tensor:
    """Theta(x1, x2) as :func:`fastntk.ntk` computes it, in blocks of inputs
    within a memory budget, optionally into a file, resumable.

    Parameters
    ----------
    model, x1, x2, outputs, layerwise, allow_tf32 : as in :func:`fastntk.ntk`.
    progress : a bar over blocks with ETA (tqdm); None: on a terminal for
        long calls.
    max_memory : bytes (int) or a string such as ``"8GB"``: the memory the
        call may use besides ``out``. Default: half the free memory (CPU RAM
        or CUDA memory). Sets the block size.
    block_size : inputs per row/column block (overrides max_memory).
    out : where the result goes: None (a new tensor), a preallocated
        torch.Tensor or numpy array of the result's shape and dtype (a
        ``numpy.memmap`` or ``torch.from_file`` tensor writes to disk), or a
        file path (created as a raw array of the result's shape and dtype and
        returned as a memory-mapped tensor).
    resume : with a file output, skip the blocks its sidecar
        ``<file>.blocks.json`` records as written by an earlier, interrupted
        call with the same model, inputs and arguments (the block size is
        taken from the sidecar's call).

    Returns
    -------
    The output tensor (``out`` itself when given as a tensor or array view).

    Notes
    -----
    Equal to the unblocked call up to float summation order: every entry is
    the same sum of the same per-layer products, with GEMM tiling possibly
    changed, so the difference is within the usual GEMM error bound,
    |err| <= ~(n_{l-1} + K n_l) eps sum |terms| per layer (measured: below
    1e-13 relative in float64). x2 = None gives an exactly symmetric result.
    Out-of-memory errors in a block are caught: the block is recomputed in
    halves, with a warning.
    """
    layers = _check_model(model)
    outputs = _check_outputs(outputs)
    _check_flag("layerwise", layerwise)
    _check_flag("allow_tf32", allow_tf32)
    check_progress(progress)
    block_size = check_block_size(block_size)
    x1 = _check_input("x1", x1, layers)
    symmetric = x2 is None
    x2 = x1 if symmetric else _check_input("x2", x2, layers)
    params = [t for l in layers for t in (l.weight, l.bias)]
    layers, x1, x2 = _compute_dtype(layers, x1, x2)
    n1, n2, k = x1.shape[0], x2.shape[0], layers[-1].fan_out
    tail = {"full": (k, k), "trace": (), "per_output": (k,)}[outputs]
    lead = (len(layers), 2) if layerwise else ()
    if block_size is None:
        per_pair = _OUTPUT_COPIES * math.prod(tail) * math.prod(lead)
        block_size = kernel_block_size(layers, n1, n2, per_pair, budget(max_memory, x1.device), x1.element_size())
    block_size = recorded_block_size(out, resume) or block_size
    meta = dict(kind="ntk", n1=n1, n2=n2, outputs=outputs, layerwise=layerwise, symmetric=symmetric,
                block_size=block_size, fingerprint=_file_fingerprint(out, params, x1, None if symmetric else x2))
    target = BlockOutput(out, lead + (n1, n2) + tail, x1.dtype, x1.device, resume, meta)
    row_blocks = _ranges(n1, block_size)
    col_blocks = _ranges(n2, block_size)
    todo = [(i, j) for i in range(len(row_blocks)) for j in range(len(col_blocks))
            if not (symmetric and j < i) and (i, j) not in target.done]
    k_factor = k * k if outputs == "full" else k
    flops = 2 * n1 * n2 * sum(l.fan_in + k_factor * l.fan_out for l in layers) * (0.5 if symmetric else 1.0)
    bar = progress_bar(progress, len(todo), "fastntk.ntk blocks", worth_it=flops > 1e11, unit="block")
    blocks = _KernelBlocks(layers, x1, x2, symmetric, outputs, layerwise, tail)
    tile = block_size
    try:
        with torch.no_grad(), _tf32(allow_tf32):
            for i, j in todo:
                rows, cols = row_blocks[i], col_blocks[j]

                def fill(t, rows=rows, cols=cols):
                    _fill_block(blocks, target.tensor, rows, cols, t)

                tile = _with_oom_retry(fill, tile, "fastntk.ntk")
                target.mark_done((i, j))
                bar.update(1)
    finally:
        bar.close()
    return target.tensor


def _file_fingerprint(out, params, *inputs) -> str | None:
    """A file output records the fingerprint of its model and inputs (so a
    later resume can check it); in-memory outputs need none."""
    return fingerprint(params + list(inputs)) if is_file_output(out) else None


def blocked_ntk_diag(
    model: nn.Module,
    x: torch.Tensor,
    *,
    outputs: str = "full",
    layerwise: bool = False,
    progress: bool | None = None,
    max_memory: int | str | None = None,
    block_size: int | None = None,
    out=None,
    resume: bool = False,
) -> torch.Tensor:
    """Theta(x_i, x_i) as :func:`fastntk.ntk_diag` computes it, over blocks of
    inputs within a memory budget; ``out`` and ``resume`` as in
    :func:`blocked_ntk`. Equal to the unblocked call up to float summation
    order (the per-row reductions may vectorize differently per block)."""
    layers = _check_model(model)
    outputs = _check_outputs(outputs)
    _check_flag("layerwise", layerwise)
    check_progress(progress)
    block_size = check_block_size(block_size)
    x_given = _check_input("x", x, layers)
    params = [t for l in layers for t in (l.weight, l.bias)]
    layers, x = _compute_dtype(layers, x_given)
    n, k = x.shape[0], layers[-1].fan_out
    tail = {"full": (k, k), "trace": (), "per_output": (k,)}[outputs]
    lead = (len(layers), 2) if layerwise else ()
    if block_size is None:
        per_input = 2 * pass_elements_per_input(layers) + 2 * math.prod(tail) * math.prod(lead)
        block_size = max(1, min(n, int((budget(max_memory, x.device) - _RESERVE) / x.element_size() / per_input)))
    block_size = recorded_block_size(out, resume) or block_size
    meta = dict(kind="ntk_diag", n=n, outputs=outputs, layerwise=layerwise, block_size=block_size,
                fingerprint=_file_fingerprint(out, params, x))
    target = BlockOutput(out, lead + (n,) + tail, x.dtype, x.device, resume, meta)
    row_blocks = _ranges(n, block_size)
    todo = [i for i in range(len(row_blocks)) if (i, 0) not in target.done]
    bar = progress_bar(progress, len(todo), "fastntk.ntk_diag blocks",
                       worth_it=n * sum(l.fan_in * l.fan_out for l in layers) * k > 1e11, unit="block")
    index = (slice(None), slice(None)) if layerwise else ()
    tile = block_size
    try:
        for i in todo:
            rows = row_blocks[i]

            def fill(t, rows=rows):
                for r in _ranges(len(rows), t):
                    r = slice(rows.start + r.start, rows.start + r.stop)
                    target.tensor[index + (r,)].copy_(ntk_diag(model, x_given[r], outputs=outputs, layerwise=layerwise))

            tile = _with_oom_retry(fill, tile, "fastntk.ntk_diag")
            target.mark_done((i, 0))
            bar.update(1)
    finally:
        bar.close()
    return target.tensor
