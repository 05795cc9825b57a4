"""Memory budgets: parsing ``max_memory``, the default share of free memory,
and the per-input byte counts the blocked drivers size their blocks from."""

from __future__ import annotations

import re

import torch

from ..models import DenseLayer

#: Share of the free memory a call may use when no ``max_memory`` is given:
#: the rest is left to the allocator's slack, BLAS workspaces and other users.
DEFAULT_SHARE = 0.5

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(value, name: str = "max_memory") -> int:
    """Bytes from an int (bytes) or a string such as ``"8GB"``, ``"512 MiB"``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} must be a number of bytes (int) or a string such as '8GB'; "
                        f"got {type(value).__name__} {value!r}")
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
        if not match or match.group(2).lower() not in _UNITS:
            raise ValueError(f"{name} must look like '8GB', '512MB' or '2GiB'; got {value!r}")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError(f"{name} must be positive; got {value!r}")
    return value


def free_memory(device: torch.device) -> int:
    """Bytes free now: torch.cuda.mem_get_info on CUDA, psutil's available
    memory on the CPU."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def budget(max_memory, device: torch.device) -> int:
    """The byte budget of a call: ``max_memory`` parsed, or DEFAULT_SHARE of
    the free memory."""
    if max_memory is None:
        return int(DEFAULT_SHARE * free_memory(device))
    return parse_memory(max_memory)


def check_block_size(block_size, name: str = "block_size") -> int | None:
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int):
        raise TypeError(f"{name} must be a positive int or None; got {type(block_size).__name__} {block_size!r}")
    if block_size <= 0:
        raise ValueError(f"{name} must be positive; got {block_size}")
    return block_size


def signal_elements_per_input(layers: list[DenseLayer]) -> int:
    """Elements one input's cached per-layer activations a^{l-1} (l > 0) and
    signals delta^l take (the input itself and the output layer's identity
    signal cost nothing)."""
    k = layers[-1].fan_out
    hidden = sum(l.fan_out for l in layers[:-1])
    return hidden + k * hidden


def pass_elements_per_input(layers: list[DenseLayer]) -> int:
    """Elements alive per input while one forward/backward pass streams its
    layers: the pre-activations, one recomputed activation and two layers of
    signals."""
    k = layers[-1].fan_out
    widest = max(l.fan_out for l in layers)
    return sum(l.fan_out for l in layers) + widest + 2 * k * widest
