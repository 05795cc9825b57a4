"""Track the empirical NTK of a network on a probe set while it trains.

Three lines in any PyTorch loop::

    tracker = fastntk.NTKTracker(model, x_probe, y_probe)   # records the kernel at init (step 0)
    for step in range(1, n_steps + 1):
        ...; loss.backward(); opt.step()
        tracker.step(step)          # computes only at the chosen steps
    tracker.history                 # one dict per recorded step
    tracker.plot("ntk_training.png")

A recorded step costs one layerwise kernel computation on the probe set
(:func:`fastntk.ntk` with ``layerwise=True``) plus an eigendecomposition of
an (N, N) matrix, and it leaves training exactly as it was: no gradients,
no random numbers drawn, the model's train/eval mode restored, parameters
untouched (a test checks that a run with the tracker is bit-identical to
one without).
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

import torch
from torch import nn

from ..ntk import ntk
from ._modes import eval_mode
from .kernel_stats import class_block_means, kernel_alignment, relative_change, spectrum, targets_matrix

_OUTPUTS = ("trace", "full")


def log_steps(max_step: int) -> list[int]:
    """0 and 1, 2, 5 x 10^k up to ``max_step``: the default recording schedule."""
    out, decade = [0], 1
    while decade <= max_step:
        out += [s for s in (decade, 2 * decade, 5 * decade) if s <= max_step]
        decade *= 10
    return out


def _is_log_step(step: int) -> bool:
    if step == 0:
        return True
    mantissa = step
    while mantissa % 10 == 0:
        mantissa //= 10
    return mantissa in (1, 2, 5)


class NTKTracker:
    """Records the empirical NTK of ``model`` on ``x_probe`` at chosen training steps.

    Parameters
    ----------
    model : a model :func:`fastntk.ntk` accepts (:class:`fastntk.MLP`,
        ``nn.Sequential`` of ``nn.Linear`` and activations, mirrored MLP).
        Dropout is switched off (eval mode) while the kernel is computed,
        then each module's mode is restored.
    x_probe : (N, n_0) probe inputs, the model's dtype and device.
    y_probe : optional targets for the kernel-target alignment: (N,) or
        (N, K) real targets, or (N,) integer class labels (one-hot; they
        also serve as ``labels``).
    labels : optional (N,) class labels for the within-/between-class block
        means (default: ``y_probe`` when it holds integer labels).
    steps : when to record: ``"log"`` (0, 1, 2, 5, 10, 20, 50, ...), an
        iterable of step numbers, or ignored when ``every`` is given.
    every : record at every multiple of ``every`` (0 included).
    outputs : ``"trace"`` (default): the (N, N) sum over outputs;
        ``"full"``: the (N K, N K) kernel over inputs and outputs (indexed
        [i K + k, j K + k']; alignment then uses the flattened targets).
    keep_kernels : steps whose kernel to keep in :attr:`kernels` (float64,
        CPU): an iterable of steps, True for every recorded step, or None.
    record_init : record step 0 now, at construction (the reference of the
        relative change). Steps count completed optimizer updates.

    Attributes
    ----------
    history : list of dicts, one per recorded step (see :meth:`record`).
    kernels : {step: kernel} for the kept steps.
    labels : the (N,) labels used for block means, or None.
    """

    def __init__(self, model: nn.Module, x_probe: torch.Tensor, y_probe: torch.Tensor | None = None, *,
                 labels: torch.Tensor | None = None, steps: str | Iterable[int] = "log", every: int | None = None,
                 outputs: str = "trace", keep_kernels: Iterable[int] | bool | None = None,
                 record_init: bool = True):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(x_probe, torch.Tensor) or x_probe.dim() != 2:
            raise ValueError(f"x_probe must be a (N, n_0) tensor; got "
                             f"{tuple(x_probe.shape) if isinstance(x_probe, torch.Tensor) else type(x_probe).__name__}")
        if outputs not in _OUTPUTS:
            raise ValueError(f"outputs must be one of {', '.join(map(repr, _OUTPUTS))}; got {outputs!r}")
        n = x_probe.shape[0]
        self.model = model
        self.x_probe = x_probe.detach()
        self.outputs = outputs
        self.y_probe = None
        if y_probe is not None:
            self.y_probe = targets_matrix(y_probe)
            if self.y_probe.shape[0] != n:
                raise ValueError(f"y_probe must have {n} rows like x_probe; got {tuple(y_probe.shape)}")
            if labels is None and not y_probe.is_floating_point():
                labels = y_probe
        if labels is not None:
            labels = torch.as_tensor(labels).detach().cpu()
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},) like x_probe; got {tuple(labels.shape)}")
        self.labels = labels
        self._schedule = self._make_schedule(steps, every)
        if keep_kernels is True:
            self._keep = True
        elif keep_kernels is None or keep_kernels is False:
            self._keep = set()
        else:
            self._keep = {self._check_step(s, "keep_kernels") for s in keep_kernels}
        self.history: list[dict] = []
        self.kernels: dict[int, torch.Tensor] = {}
        self._reference: torch.Tensor | None = None
        if record_init:
            self.record(0)

    @staticmethod
    def _check_step(step, name: str = "step") -> int:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"{name} must hold non-negative ints; got {step!r}")
        return step

    def _make_schedule(self, steps, every):
        if every is not None:
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ValueError(f"every must be a positive int; got {every!r}")
            return lambda s: s % every == 0
        if isinstance(steps, str):
            if steps != "log":
                raise ValueError(f"steps must be 'log', a list of step numbers, or use every=; got {steps!r}")
            return _is_log_step
        try:
            chosen = {self._check_step(s, "steps") for s in steps}
        except TypeError:
            raise ValueError(f"steps must be 'log' or an iterable of non-negative ints; got {steps!r}") from None
        return chosen.__contains__

    def wants(self, step: int) -> bool:
        """Whether ``step`` is on the recording schedule."""
        return self._schedule(self._check_step(step))

    def step(self, step: int) -> dict | None:
        """Record at ``step`` if the schedule asks for it; returns the new row or None."""
        if not self.wants(step) or (self.history and self.history[-1]["step"] == step):
            return None
        return self.record(step)

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kernel, layer terms) now: the (N, N) or (N K, N K) kernel and its
        (L, 2, ...) layerwise weight/bias terms, in float64 on the CPU. The
        model is left exactly as it was."""
        with eval_mode(self.model):
            terms = ntk(self.model, self.x_probe, outputs=self.outputs, layerwise=True)
        terms = terms.detach().to("cpu", torch.float64)
        if self.outputs == "full":  # (L, 2, N, N, K, K) -> (L, 2, N K, N K)
            l, _, n, _, k, _ = terms.shape
            terms = terms.permute(0, 1, 2, 4, 3, 5).reshape(l, 2, n * k, n * k)
        return terms.sum((0, 1)), terms

    def record(self, step: int) -> dict:
        """Compute the kernel now and append a row to :attr:`history`.

        Row keys: step; rel_change (||Theta_t - Theta_0||_F / ||Theta_0||_F,
        Theta_0 the first recorded kernel); mean_diagonal (mean of
        Theta(x_i, x_i)); lambda_min, lambda_max, condition; with targets:
        alignment, centered_alignment; with labels: within_class,
        between_class, within_between_ratio (see
        :func:`fastntk.training.kernel_stats.class_block_means`);
        layer_share_1 .. layer_share_L (each layer's weight + bias share of
        the kernel's trace); seconds (time of this record).
        """
        step = self._check_step(step)
        t0 = time.perf_counter()
        theta, terms = self.kernel()
        if self._reference is None:
            self._reference = theta
        lam_min, lam_max, cond = spectrum(theta)
        row = {"step": step, "rel_change": relative_change(theta, self._reference),
               "mean_diagonal": theta.diagonal().mean().item(),
               "lambda_min": lam_min, "lambda_max": lam_max, "condition": cond}
        if self.y_probe is not None:
            y = self.y_probe.reshape(-1) if self.outputs == "full" else self.y_probe
            if self.outputs == "full" and y.numel() != theta.shape[0]:
                raise ValueError(f"outputs='full' needs y_probe with K = {theta.shape[0] // len(self.x_probe)} "
                                 f"columns (one per output); got {tuple(self.y_probe.shape)}")
            row["alignment"] = kernel_alignment(theta, y)
            row["centered_alignment"] = kernel_alignment(theta, y, centered=True)
        if self.labels is not None:
            trace_kernel = theta if self.outputs == "trace" else _trace_over_outputs(theta, len(self.x_probe))
            row["within_class"], row["between_class"], row["within_between_ratio"] = \
                class_block_means(trace_kernel, self.labels)
        total = theta.diagonal().sum()
        for l in range(terms.shape[0]):
            row[f"layer_share_{l + 1}"] = (terms[l].sum(0).diagonal().sum() / total).item()
        if self._keep is True or step in self._keep:
            self.kernels[step] = theta
        row["seconds"] = time.perf_counter() - t0
        self.history.append(row)
        return row

    def save_csv(self, path: str) -> str:
        """Write :attr:`history` as CSV; returns the path."""
        from ..experiments.tables import save_csv

        return save_csv(self.history, path)

    def plot(self, path: str, *, title: str | None = None) -> str:
        """Write a figure of the recorded quantities vs step (and the kept
        kernels, class-ordered when labels are given); returns the path."""
        from .plots import plot_history

        return plot_history(self.history, path, kernels=self.kernels, labels=self.labels, title=title)


def _trace_over_outputs(theta: torch.Tensor, n: int) -> torch.Tensor:
    k = theta.shape[0] // n
    return theta.reshape(n, k, n, k).diagonal(dim1=1, dim2=3).sum(-1)
