"""Evaluate a model without leaving a trace on it."""

from __future__ import annotations

import contextlib

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """``model.eval()`` for the block, then each module's own train/eval flag
    back as it was (dropout off: the kernel and outputs of the network being
    fitted, not of one dropout mask)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training
