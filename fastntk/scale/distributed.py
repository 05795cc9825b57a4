"""The NTK over several processes or GPUs with torch.distributed.

Launch with torchrun (one process per GPU, NCCL; or CPU processes, gloo) and
call these functions on every rank after ``torch.distributed.init_process_group``:

- :func:`ntk`: every rank passes the same inputs; rank r computes the row
  band Theta(x1[rows_r], x2) with the blocked engine (within max_memory) and
  the bands are gathered on rank 0 or written by each rank into one shared
  file. No features are exchanged: each rank runs the forward/backward passes
  of the column inputs itself, which costs a fraction ~ width / N of the
  Grams, and sends nothing but its finished rows.
- :func:`ntk_vp`, :func:`eigh`: inputs sharded, each rank passes only its
  own shard; the parameter-sized gradients J^T v and the Lanczos inner
  products are summed with all_reduce, and results come back sharded.

Run ``torchrun --nproc_per_node=2 -m fastntk.scale --help`` for a
command-line driver (:func:`main`).
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .blocked import blocked_ntk
from .products import NTKOperator, _check_which, _default_iterations, _default_tol, lanczos


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group "
                           "first (e.g. under torchrun)")
    return dist.get_rank(group), dist.get_world_size(group)


def shard(n: int, world: int, rank: int) -> range:
    """Rank ``rank``'s contiguous share of n items, sizes differing by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def _allsum(group):
    def reduce(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
        return t

    return reduce


def ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *, outputs: str = "full",
        layerwise: bool = False, max_memory: int | str | None = None, block_size: int | None = None,
        out: str | os.PathLike | None = None, group=None, progress: bool | None = None) -> torch.Tensor | None:
    """Theta(x1, x2) computed by all ranks of ``group``, each a band of rows.

    Parameters
    ----------
    model, x1, x2, outputs, layerwise : as in :func:`fastntk.ntk`; every rank
        passes the same model and inputs (x2 None: x2 = x1).
    max_memory, block_size : per rank, as in :func:`fastntk.scale.blocked_ntk`.
    out : None: the bands are gathered on rank 0; a file path on a file
        system every rank sees: each rank writes its rows into it (a raw
        array of the result's shape and dtype, as ``ntk(..., out=path)``).
    group : the process group (default: the world).

    Returns
    -------
    The kernel on rank 0 and None elsewhere (out None); with a file, every
    rank gets the memory-mapped result once all ranks have written.
    Equal to the one-process kernel up to float summation order; with
    x2 = None, symmetric up to that rounding (the bands are computed
    independently).
    """
    rank, world = _world(group)
    single = blocked_ntk  # one code path per band: the blocked engine
    if not isinstance(x1, torch.Tensor) or (x2 is not None and not isinstance(x2, torch.Tensor)):
        raise TypeError("x1 and x2 must be torch.Tensors of shape (N, n_0)")
    n1 = x1.shape[0]
    rows = shard(n1, world, rank)
    columns = x1 if x2 is None else x2
    if out is not None:
        template = single(model, x1[:1], columns[:1], outputs=outputs, layerwise=layerwise, block_size=1)
        lead = 2 if layerwise else 0
        shape = tuple(template.shape[:lead]) + (n1, columns.shape[0]) + tuple(template.shape[lead + 2:])
        np_dtype = template.numpy().dtype if template.device.type == "cpu" else template.cpu().numpy().dtype
        if rank == 0:
            with open(out, "wb") as f:
                f.truncate(int(np.prod(shape)) * template.element_size())
        dist.barrier(group)
        full = np.memmap(out, dtype=np_dtype, mode="r+", shape=shape)
        if len(rows):
            # A plain view of the file's rows: the ranks share one file, and a
            # per-band resume sidecar would be meaningless.
            band = full[(slice(None),) * lead + (slice(rows.start, rows.stop),)].view(np.ndarray)
            single(model, x1[rows.start:rows.stop], columns, outputs=outputs, layerwise=layerwise,
                   max_memory=max_memory, block_size=block_size, out=band, progress=progress)
        full.flush()
        dist.barrier(group)
        return torch.from_numpy(full)
    band = single(model, x1[rows.start:rows.stop], columns, outputs=outputs, layerwise=layerwise,
                  max_memory=max_memory, block_size=block_size, progress=progress)
    return _gather_rows(band, n1, layerwise, rank, world, group)


def _gather_rows(band: torch.Tensor, n1: int, layerwise: bool, rank: int, world: int, group):
    """Rank 0 receives every rank's row band (padded to the largest, as
    collectives need equal shapes) and stacks them."""
    lead = 2 if layerwise else 0
    longest = len(shard(n1, world, 0))
    moved = band.movedim(lead, 0)
    padded = torch.zeros((longest,) + tuple(moved.shape[1:]), dtype=band.dtype, device=band.device)
    padded[:moved.shape[0]] = moved
    pieces = [torch.empty_like(padded) for _ in range(world)] if rank == 0 else None
    dist.gather(padded, pieces, dst=dist.get_global_rank(group, 0) if group is not None else 0, group=group)
    if rank != 0:
        return None
    rows = [p[:len(shard(n1, world, r))] for r, p in enumerate(pieces)]
    return torch.cat(rows).movedim(0, lead).contiguous()


def ntk_operator(model: nn.Module, x_local: torch.Tensor, *, outputs: str = "trace",
                 max_memory: int | str | None = None, block_size: int | None = None, group=None) -> NTKOperator:
    """This rank's part of Theta(x, x) for x sharded over the ranks: ``op @ v_local``
    (v_local: this rank's rows of v, (n_local[ K], m)) returns this rank's rows
    of Theta v. Every rank must call it together (one all_reduce of the
    gradients per product)."""
    _world(group)
    return NTKOperator(model, x_local, outputs=outputs, max_memory=max_memory, block_size=block_size,
                       _reduce=_allsum(group))


def ntk_vp(model: nn.Module, x_local: torch.Tensor, v_local: torch.Tensor, *, outputs: str = "trace",
           max_memory: int | str | None = None, block_size: int | None = None, group=None) -> torch.Tensor:
    """This rank's rows of Theta v, x and v sharded by rows over the ranks
    (shapes as :func:`fastntk.ntk_vp`, with this rank's N)."""
    op = ntk_operator(model, x_local, outputs=outputs, max_memory=max_memory, block_size=block_size, group=group)
    if not isinstance(v_local, torch.Tensor):
        raise TypeError(f"v_local must be a torch.Tensor; got {type(v_local).__name__}")
    if outputs == "trace":
        return op.matmat(v_local)
    n = x_local.shape[0]
    return op.matmat(v_local.reshape(n * op.k, -1)).reshape(v_local.shape)


def eigh(model: nn.Module, x_local: torch.Tensor, k: int = 20, *, which: str = "LA", outputs: str = "trace",
         tol: float | None = None, max_iter: int | None = None, max_memory: int | str | None = None,
         block_size: int | None = None, group=None):
    """The k extreme eigenpairs of Theta(x, x), x sharded over the ranks, by
    Lanczos with all_reduce'd products and inner products.

    Returns
    -------
    (values (k,), the same on every rank; this rank's rows of the
    eigenvectors, (n_local, k) for trace or (n_local, K, k) for full).
    """
    rank, world = _world(group)
    which = _check_which(which)
    if outputs not in ("trace", "full"):
        raise ValueError(f"outputs must be 'trace' or 'full' for eigh; got {outputs!r}")
    op = ntk_operator(model, x_local, outputs=outputs, max_memory=max_memory, block_size=block_size, group=group)
    allsum = _allsum(group)
    tol = _default_tol(op.dtype) if tol is None else tol
    n = int(allsum(torch.tensor([op.shape[0]], dtype=torch.int64, device=op.device)).item())
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int with 1 <= k < {n} (the operator's size); got {k!r}")
    values, vectors, converged = lanczos(op.matmat, op.shape[0], k, which, dtype=op.dtype, device=op.device,
                                         tol=tol, max_iter=min(n, max_iter or _default_iterations(n, k)),
                                         allsum=allsum, seed=rank, n_total=n)
    if not converged and rank == 0:
        import warnings

        warnings.warn(f"eigh: Lanczos did not reach tol = {tol}; raise max_iter", RuntimeWarning, stacklevel=2)
    if outputs == "full":
        vectors = vectors.reshape(-1, op.k, k)
    return values, vectors


def main(argv: list[str] | None = None) -> None:
    """Command-line driver: the NTK of a random MLP on random inputs over all
    ranks (under torchrun), its kernel written to a file and/or its top
    eigenvalues printed by rank 0."""
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=P -m fastntk.scale",
                                     description=main.__doc__)
    parser.add_argument("--widths", default="784,1024,1024,10", help="comma-separated MLP widths")
    parser.add_argument("--inputs", type=int, default=4096, help="number of random inputs")
    parser.add_argument("--outputs", default="trace", choices=["trace", "full", "per_output"])
    parser.add_argument("--kernel-file", help="write the kernel to this file (shared by all ranks)")
    parser.add_argument("--eigh", type=int, default=0, help="also print the k largest eigenvalues")
    parser.add_argument("--max-memory", default=None, help="per rank, e.g. 8GB")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from ..models import MLP

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    widths = [int(w) for w in args.widths.split(",")]
    net = MLP(widths, seed=args.seed, device=device)  # the same init on every rank
    x = torch.randn(args.inputs, widths[0], generator=torch.Generator().manual_seed(args.seed + 1)).to(device)
    if args.kernel_file:
        t = _timed(lambda: ntk(net, x, outputs=args.outputs, out=args.kernel_file, max_memory=args.max_memory))
        if rank == 0:
            print(f"kernel {args.outputs} of {args.inputs} inputs written to {args.kernel_file} by {world} ranks in {t:.1f} s")
    if args.eigh:
        rows = shard(args.inputs, world, rank)
        result = {}
        t = _timed(lambda: result.update(values=eigh(net, x[rows.start:rows.stop], args.eigh,
                                                     max_memory=args.max_memory)[0]))
        if rank == 0:
            print(f"{args.eigh} largest eigenvalues ({t:.1f} s):", result["values"].cpu().numpy())
    dist.destroy_process_group()


def _timed(call) -> float:
    import time

    start = time.perf_counter()
    call()
    dist.barrier()
    return time.perf_counter() - start

