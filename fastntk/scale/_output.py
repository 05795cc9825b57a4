"""Where a blocked kernel goes: a new tensor, the caller's tensor or array,
or a file, with a sidecar that records the blocks already written so that an
interrupted call can resume."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np
import torch

SIDECAR_SUFFIX = ".blocks.json"
_SIDECAR_VERSION = 1


def _np_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype


def fingerprint(tensors) -> str:
    """A hash of the model's parameters and the inputs, so that a sidecar is
    never resumed with other data."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            continue
        t = t.detach().contiguous().cpu()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _sidecar_path(out) -> pathlib.Path | None:
    if isinstance(out, (str, os.PathLike)):
        path = pathlib.Path(out)
        return path.with_name(path.name + SIDECAR_SUFFIX)
    if isinstance(out, np.memmap) and out.filename is not None:
        return pathlib.Path(str(out.filename) + SIDECAR_SUFFIX)
    return None


def is_file_output(out) -> bool:
    """Whether out names a file (a path or a numpy.memmap) that can carry a sidecar."""
    return _sidecar_path(out) is not None


def recorded_block_size(out, resume: bool) -> int | None:
    """The block size an interrupted call recorded in out's sidecar (a resume
    must use the same blocks), or None."""
    sidecar = _sidecar_path(out) if resume is True else None
    if sidecar is None or not sidecar.exists():
        return None
    return json.loads(sidecar.read_text()).get("block_size")


class BlockOutput:
    """The output tensor of a blocked call and the record of its written
    blocks.

    Parameters
    ----------
    out : None (a new zero tensor), a torch.Tensor or numpy array of the
        result's shape and dtype (written in place; a ``numpy.memmap`` or
        ``torch.from_file`` tensor is written to its file), or a file path (a
        raw little-endian array of the result's shape and dtype, created if
        missing, opened as a memory map).
    shape, dtype, device : of the result.
    resume : skip the blocks that the sidecar ``<file>.blocks.json`` records
        as written (needs a file: a path or a numpy.memmap).
    meta : what the sidecar must match to be resumed (sizes, mode, block size,
        fingerprint of model and inputs).
    """

    def __init__(self, out, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 resume: bool, meta: dict):
        if not isinstance(resume, bool):
            raise TypeError(f"resume must be a bool; got {type(resume).__name__} {resume!r}")
        self.sidecar = _sidecar_path(out) if isinstance(out, (str, os.PathLike, np.ndarray)) else None
        if resume and self.sidecar is None:
            raise ValueError("resume=True needs a file to resume: pass out as a file path or a numpy.memmap")
        self.meta = dict(meta, version=_SIDECAR_VERSION, shape=list(shape), dtype=str(dtype))
        # Check the record before touching the file: a refused resume must leave it intact.
        self.done: set[tuple[int, int]] = self._recorded_blocks() if resume else set()
        self._memmap = None
        if out is None:
            self.tensor = torch.zeros(shape, dtype=dtype, device=device)
        elif isinstance(out, (str, os.PathLike)):
            path = pathlib.Path(out)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if not (self.done and path.exists() and path.stat().st_size == nbytes):
                with open(path, "wb") as f:  # a sparse file of the right size, zeros
                    f.truncate(nbytes)
                self.done = set()
            self._memmap = np.memmap(path, dtype=_np_dtype(dtype), mode="r+", shape=shape)
            self.tensor = torch.from_numpy(self._memmap)
        elif isinstance(out, np.ndarray):
            self._check(out.shape, out.dtype, shape, _np_dtype(dtype))
            if not out.flags.writeable:
                raise ValueError("out is a read-only array; pass a writable one")
            self._memmap = out if self.sidecar is not None else None
            self.tensor = torch.from_numpy(out)
        elif isinstance(out, torch.Tensor):
            self._check(tuple(out.shape), out.dtype, shape, dtype)
            if out.requires_grad:
                raise ValueError("out requires grad; pass a tensor that does not (e.g. out.detach())")
            self.tensor = out
        else:
            raise TypeError("out must be None, a torch.Tensor, a numpy array (numpy.memmap for a file) or a file "
                            f"path; got {type(out).__name__}")
        if self.sidecar is not None:
            self._save()

    def _recorded_blocks(self) -> set[tuple[int, int]]:
        """The blocks an earlier call with the same meta wrote, from the sidecar."""
        if not self.sidecar.exists():
            return set()
        record = json.loads(self.sidecar.read_text())
        saved = {key: record.get(key) for key in self.meta}
        if saved != self.meta:
            changed = sorted(k for k in self.meta if saved[k] != self.meta[k])
            raise ValueError(f"cannot resume {self.sidecar}: it was written for a different call "
                             f"(differs in {', '.join(changed)}); pass resume=False to start over")
        return {tuple(b) for b in record["done"]}

    @staticmethod
    def _check(got_shape, got_dtype, shape, dtype) -> None:
        if tuple(got_shape) != tuple(shape) or got_dtype != dtype:
            raise ValueError(f"out must have shape {tuple(shape)} and dtype {dtype}; "
                             f"got shape {tuple(got_shape)} and dtype {got_dtype}")

    def mark_done(self, block: tuple[int, int]) -> None:
        """Record a block as written, after its data reached the file."""
        self.done.add(block)
        if self.sidecar is None:
            return
        if self._memmap is not None:
            self._memmap.flush()
        self._save()

    def _save(self) -> None:
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        tmp.write_text(json.dumps(dict(self.meta, done=sorted(self.done))))
        os.replace(tmp, self.sidecar)  # atomic: an interruption leaves the old record or the new
