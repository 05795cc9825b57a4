"""Closed-form NTK predictions for the squared loss: the outputs of the
linearized network trained by gradient flow or gradient descent, at any
times, from one eigendecomposition of the train kernel.

Convention: the loss is L(w) = (1 / 2N) sum_i ||f(x_i; w) - y_i||^2 over
the N training examples (the mean over examples, summed over the K
outputs), so gradient descent with learning rate ``lr`` moves the linearized
outputs by f <- f - (lr / N) Theta(., X) (f(X) - Y). With eta = lr / N and
the train kernel Theta = V diag(lambda) V^T (over inputs and outputs, N K x N K):

    gradient flow, time t (in steps of size lr):  g(lambda) = (1 - exp(-eta lambda t)) / lambda
    gradient descent, t steps:                    g(lambda) = (1 - (1 - eta lambda)^t) / lambda
    f_t(x) = f_0(x) + Theta(x, X) V diag(g) V^T (Y - f_0(X))

t = inf gives kernel regression from f_0 (g = 1 / lambda), and ``ridge``
adds ridge * I to the train kernel inside g (neural-tangents' ``diag_reg``),
so t = inf is then kernel ridge regression. The f_0 terms are the network's
outputs at initialization: with standard random init they are a random
function that the prediction keeps (Chen, Li & Lin); a mirrored network
has f_0 = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..ntk import ntk
from ._modes import eval_mode

_METHODS = ("flow", "gd")


@dataclass
class NTKPrediction:
    """Outputs predicted by NTK theory, float64 on the CPU.

    Attributes
    ----------
    t : (T,) the times (steps; inf for the limit).
    train : (T, N, K) outputs on the training inputs at each time.
    test : (T, M, K) outputs on the test inputs, or None without x_test.
    f0_train : (N, K), f0_test : (M, K) or None: the outputs at t = 0.
    eigenvalues : (N K,) eigenvalues of the train kernel (ridge included), ascending.
    """

    t: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor | None
    f0_train: torch.Tensor
    f0_test: torch.Tensor | None
    eigenvalues: torch.Tensor


def flat_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """(*B, N1, N2, K, K) -> (*B, N1 K, N2 K), indexed [i K + k, j K + k'], float64 on the CPU."""
    *batch, n1, n2, k, _ = kernel.shape
    return kernel.transpose(-3, -2).reshape(*batch, n1 * k, n2 * k).to("cpu", torch.float64)


def _gain(lam: torch.Tensor, eta: float, t: float, method: str) -> torch.Tensor:
    """g(lambda) of the module docstring, with its lambda -> 0 limit eta t."""
    # per kernel (last axis): eigenvalues below rounding of the largest count as 0
    tiny = lam.abs().amax(-1, keepdim=True).clamp_min(1e-300) * torch.finfo(torch.float64).eps * lam.shape[-1]
    small = lam.abs() <= tiny
    safe = torch.where(small, torch.ones_like(lam), lam)
    if math.isinf(t):
        return torch.where(small, torch.zeros_like(lam), 1.0 / safe)
    if method == "flow":
        g = -torch.expm1(-eta * safe * t) / safe
    else:
        base = 1.0 - eta * safe
        # (1 - eta lambda)^t through log1p where the base is positive: exact to
        # rounding even when eta lambda is below float64's resolution of 1
        power = torch.where(base > 0, torch.exp(t * torch.log1p(-(eta * safe).clamp_max(1.0 - 1e-16))), base ** t)
        g = (1.0 - power) / safe
    return torch.where(small, torch.full_like(lam, eta * t), g)


def check_schedule(t, lr, ridge, method) -> list[float]:
    """The times ``t`` as a list, after checking ``t``, ``lr``, ``ridge`` and
    ``method`` as :func:`ntk_predict` documents them (ValueError naming the argument)."""
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, _METHODS))}; got {method!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0; got {lr!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0; got {ridge!r}")
    times = [t] if isinstance(t, (int, float)) else list(t)
    for s in times:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s) or s < 0:
            raise ValueError(f"t must be times >= 0 (math.inf allowed); got {s!r}")
        if method == "gd" and not math.isinf(s) and float(s) != int(s):
            raise ValueError(f"method='gd' counts steps: t must hold ints (or math.inf); got {s!r}")
    return times


def closed_form(theta: torch.Tensor, cross: torch.Tensor | None, f0: torch.Tensor, f0_test: torch.Tensor | None,
                y: torch.Tensor, times: Sequence[float], *, lr: float, ridge: float, method: str):
    """The predictions of the module docstring from the kernels, for one
    network or a batch of them (leading axes ``*B``), float64.

    Parameters
    ----------
    theta : (*B, N K, N K) train kernel, flattened as by :func:`flat_kernel`.
    cross : (*B, M K, N K) test-train kernel, or None.
    f0 : (*B, N, K), f0_test : (*B, M, K) or None: the outputs at w0.
    y : (N, K) targets. times, lr, ridge, method : as :func:`check_schedule` returns / checks them.

    Returns
    -------
    (train (*B, T, N, K), test (*B, T, M, K) or None, eigenvalues (*B, N K)).

    Raises
    ------
    ValueError
        ``method="gd"`` with t = inf at a learning rate where gradient descent diverges.
    """
    n, k = y.shape
    eye = torch.eye(n * k, dtype=torch.float64)
    lam, v = torch.linalg.eigh((theta + theta.transpose(-1, -2)) / 2 + ridge * eye)
    eta = lr / n
    top = lam[..., -1].max().item()
    if method == "gd" and any(math.isinf(s) for s in times) and eta * top >= 2:
        where = "" if lam.dim() == 1 else " (lambda_max: the largest over the inits)"
        raise ValueError(f"gradient descent diverges at lr = {lr:g}{where}: lr * lambda_max / N = "
                         f"{eta * top:.3g} >= 2; lower lr below {2 * n / top:.4g}")
    batch = f0.shape[:-2]
    # the residual in the eigenbasis, (*B, N K)
    coef = (v.transpose(-1, -2) @ (y - f0).reshape(*batch, n * k, 1))[..., 0]
    train, test = [], []
    for s in times:
        g = _gain(lam, eta, float(s), method)
        train.append(f0 + (v @ ((lam - ridge) * g * coef)[..., None]).reshape(*batch, n, k))
        if cross is not None:
            test.append(f0_test + (cross @ (v @ (g * coef)[..., None])).reshape(*batch, -1, k))
    dim = len(batch)
    return torch.stack(train, dim), torch.stack(test, dim) if test else None, lam


def ntk_predict(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                x_test: torch.Tensor | None = None, t: float | Sequence[float] = (math.inf,), *,
                lr: float = 1.0, ridge: float = 0.0, method: str = "flow") -> NTKPrediction:
    """Train and test outputs of the linearized ``model`` trained on
    (x_train, y_train) with the squared loss, at times ``t``, in closed form.

    Parameters
    ----------
    model : a model :func:`fastntk.ntk` accepts, at its initial parameters w0
        (its NTK and its outputs f_0 are those at w0). Left unchanged.
    x_train : (N, n_0); y_train : (N, K) or (N,) for K = 1.
    x_test : (M, n_0) or None.
    t : times, in optimizer steps (floats for ``"flow"``, ints for ``"gd"``;
        ``math.inf`` for the limit).
    lr : learning rate (with the loss convention of the module docstring).
    ridge : >= 0, added to the train kernel's diagonal.
    method : ``"flow"`` (gradient flow, time t * lr) or ``"gd"`` (t steps of
        gradient descent with learning rate lr, exact for the linearized model).

    Returns
    -------
    :class:`NTKPrediction`.

    Raises
    ------
    ValueError
        For bad shapes or values, or ``method="gd"`` with ``t = inf`` and a
        learning rate at which gradient descent diverges (lr lambda_max / N >= 2).
    """
    times = check_schedule(t, lr, ridge, method)
    if not isinstance(y_train, torch.Tensor) or not isinstance(x_train, torch.Tensor):
        raise TypeError("x_train and y_train must be torch.Tensors")
    y = y_train.detach().to("cpu", torch.float64)
    y = y[:, None] if y.dim() == 1 else y
    with eval_mode(model), torch.no_grad():
        f0 = model(x_train).detach().to("cpu", torch.float64) if x_train.dim() == 2 else None
        if f0 is None or y.shape != f0.shape:
            raise ValueError(f"y_train must have shape (N, K) = {None if f0 is None else tuple(f0.shape)} "
                             f"(or (N,) for K = 1) like the model's outputs on x_train; got {tuple(y_train.shape)}")
        theta = flat_kernel(ntk(model, x_train))
        f0_test = cross = None
        if x_test is not None:
            cross = flat_kernel(ntk(model, x_test, x_train))
            f0_test = model(x_test).detach().to("cpu", torch.float64)
    train, test, lam = closed_form(theta, cross, f0, f0_test, y, times, lr=lr, ridge=ridge, method=method)
    return NTKPrediction(t=torch.tensor([float(s) for s in times], dtype=torch.float64),
                         train=train, test=test, f0_train=f0, f0_test=f0_test, eigenvalues=lam)
