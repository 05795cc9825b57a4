"""Loads the emulated CUDA extension (fastntk._C_cuda_emu, built by `make
emulate`) for the tests: its ops get the fake kernels of fastntk's ops, so
opcheck and torch.compile treat them alike."""

from __future__ import annotations

import functools

import torch

from fastntk import _ops

FAKES = {
    "backprop_delta": _ops._backprop_delta_fake,
    "ntk_accumulate": _ops._ntk_accumulate_fake,
    "ntk_accumulate_layers": _ops._ntk_accumulate_layers_fake,
    "ntk_diag_accumulate": _ops._ntk_diag_accumulate_fake,
    "mlp_ntk": _ops._mlp_ntk_fake,
}


@functools.lru_cache(maxsize=None)
def load():
    """The emulator's module; raises ImportError (with how to build it) when missing."""
    try:
        from fastntk import _C_cuda_emu
    except ImportError as exc:
        raise ImportError(
            f"fastntk._C_cuda_emu not loadable ({exc}); build it with `make emulate` and run the tests with "
            "the environment `python scripts/build_emulated.py --print-env` prints (ASan first)") from exc
    for name, fake in FAKES.items():
        torch.library.register_fake(f"fastntk_emu::{name}")(fake)
    return _C_cuda_emu
