"""Summary statistics of one kernel matrix, as the training-dynamics
literature reports them. Pure functions of tensors (no model), each computed
in float64 and returned as a Python float (or a tuple of floats).

A kernel here is a symmetric (N, N) matrix, e.g. the trace over outputs of
the NTK on a probe set, or the full NTK reshaped to (N K, N K).
"""

from __future__ import annotations

import math

import torch


def _square(name: str, kernel) -> torch.Tensor:
    if not isinstance(kernel, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, N); got {type(kernel).__name__}")
    if kernel.dim() != 2 or kernel.shape[0] != kernel.shape[1] or kernel.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix (N, N); got shape {tuple(kernel.shape)}")
    return kernel.detach().to(torch.float64)


def relative_change(kernel: torch.Tensor, reference: torch.Tensor) -> float:
    """||kernel - reference||_F / ||reference||_F.

    Parameters
    ----------
    kernel, reference : (N, N) (or any equal shapes), e.g. Theta_t and Theta_0.
    """
    if not isinstance(kernel, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError("kernel and reference must be torch.Tensors")
    if kernel.shape != reference.shape:
        raise ValueError(f"kernel {tuple(kernel.shape)} and reference {tuple(reference.shape)} "
                         "must have the same shape")
    k, r = kernel.detach().double().cpu(), reference.detach().double().cpu()
    return ((k - r).norm() / r.norm()).item()


def targets_matrix(y: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """Targets as an (N, K) float64 matrix: integer class labels (N,) become
    one-hot rows (K = n_classes or max label + 1), real (N,) targets a column,
    (N, K) targets stay as they are."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor of targets (N,) / (N, K) or class labels (N,); "
                        f"got {type(y).__name__}")
    y = y.detach().cpu()
    if not y.is_floating_point():
        if y.dim() != 1 or (y.numel() and y.min() < 0):
            raise ValueError(f"integer class labels must be a (N,) tensor of labels >= 0; got shape "
                             f"{tuple(y.shape)}")
        k = int(y.max()) + 1 if n_classes is None else n_classes
        return torch.nn.functional.one_hot(y.long(), k).double()
    if y.dim() == 1:
        return y.double()[:, None]
    if y.dim() != 2:
        raise ValueError(f"targets must have shape (N,) or (N, K); got {tuple(y.shape)}")
    return y.double()


def kernel_alignment(kernel: torch.Tensor, y: torch.Tensor, *, centered: bool = False) -> float:
    """Kernel-target alignment <K, Y Y^T>_F / (||K||_F ||Y Y^T||_F)
    (Cristianini et al. 2002), in [-1, 1] (in [0, 1] for a PSD kernel).

    With ``centered=True`` both K and Y Y^T are first centered, H K H with
    H = I - 11^T / N (Cortes et al. 2012): the alignment then ignores the
    constant offset that one-hot targets share.

    Parameters
    ----------
    kernel : (N, N) symmetric kernel.
    y : (N,) real targets, (N, K) targets, or (N,) integer class labels (one-hot).
    """
    k = _square("kernel", kernel).cpu()
    y = targets_matrix(y)
    if y.shape[0] != k.shape[0]:
        raise ValueError(f"y has {y.shape[0]} rows but the kernel is {tuple(k.shape)}")
    t = y @ y.T
    if centered:
        h = torch.eye(len(k), dtype=k.dtype) - 1.0 / len(k)
        k, t = h @ k @ h, h @ t @ h
    denom = k.norm() * t.norm()
    return math.nan if denom == 0 else ((k * t).sum() / denom).item()


def class_block_means(kernel: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """(within, between, within / between): the mean of K_ij over pairs
    i != j with the same label, over pairs with different labels, and their
    ratio (the diagonal K_ii is left out of ``within``: it measures an
    input's own gradient norm, not its similarity to its class).

    Parameters
    ----------
    kernel : (N, N); labels : (N,) class labels (any dtype with ==).
    """
    k = _square("kernel", kernel).cpu()
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (k.shape[0],):
        raise ValueError(f"labels must have shape ({k.shape[0]},) like the kernel; got {tuple(labels.shape)}")
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(k), dtype=torch.bool)
    within_mask, between_mask = same & off, ~same
    if not within_mask.any() or not between_mask.any():
        raise ValueError("labels need at least two inputs of one class and two different classes")
    within, between = k[within_mask].mean().item(), k[between_mask].mean().item()
    return within, between, within / between if between != 0 else math.inf


def spectrum(kernel: torch.Tensor) -> tuple[float, float, float]:
    """(smallest eigenvalue, largest eigenvalue, condition number max/min) of
    a symmetric kernel (float64 ``eigvalsh``; condition ``inf`` when the
    smallest eigenvalue is <= 0 up to rounding)."""
    k = _square("kernel", kernel)
    ev = torch.linalg.eigvalsh((k + k.T) / 2)
    lo, hi = ev[0].item(), ev[-1].item()
    return lo, hi, hi / lo if lo > 0 else math.inf
