"""The NTK predictor over random initializations: for each init s of an MLP,
the closed-form outputs of its linearized network trained on the squared
loss (:func:`fastntk.ntk_predict`), and their mean and variance over inits.

Seleznova & Kutyniok (MSML 2021) propose studying the generalization of a
network through this predictor, in particular the variance of the output
function over random initializations: with standard random init both the
initial function f_0 and the empirical kernel are random, and

    f_t(x) = f_0(x) + Theta(x, X) V diag(g_t) V^T (Y - f_0(X))

inherits the randomness of both. The kernels of all inits come from
:func:`fastntk.ensemble.ensemble_ntk` (batched over inits); the initial
outputs f_0 from one batched forward pass over the same weights
(:func:`fastntk.ensemble.init_weights`); the solve is the one
:func:`fastntk.ntk_predict` uses, batched over inits. Init s is exactly
``fastntk.MLP(widths, ..., seed=seeds[s])``, so any one init can be rebuilt,
trained and compared with its prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .._progress import progress_bar
from ..ensemble import ensemble_ntk, init_weights, resolve_seeds
from ..models import Activation, _check_widths
from .predict import check_schedule, closed_form, flat_kernel

#: Inits per batched call by default.
DEFAULT_CHUNK = 32


@dataclass
class NTKPredictionEnsemble:
    """NTK predictions of S random inits of one architecture, float64 on the CPU.

    Attributes
    ----------
    t : (T,) the times (steps; inf for the limit).
    seeds : the S seeds; init s is ``MLP(widths, ..., seed=seeds[s])``.
    train : (S, T, N, K) outputs on the training inputs, per init and time.
    test : (S, T, M, K) outputs on the test inputs, or None without x_test.
    f0_train : (S, N, K), f0_test : (S, M, K) or None: each init's outputs at
        t = 0 (zeros with ``initial_function=False``).
    eigenvalues : (S, N K) each init's train-kernel eigenvalues (ridge included), ascending.
    settings : the network and solve settings.
    """

    t: torch.Tensor
    seeds: list
    train: torch.Tensor
    test: torch.Tensor | None
    f0_train: torch.Tensor
    f0_test: torch.Tensor | None
    eigenvalues: torch.Tensor
    settings: dict = field(default_factory=dict)

    @property
    def n_inits(self) -> int:
        return len(self.seeds)

    @property
    def test_mean(self) -> torch.Tensor:
        """(T, M, K) mean over inits of the test outputs."""
        return self._test().mean(0)

    @property
    def test_var(self) -> torch.Tensor:
        """(T, M, K) unbiased variance over inits of the test outputs (NaN for one init)."""
        return _var(self._test())

    @property
    def train_mean(self) -> torch.Tensor:
        """(T, N, K) mean over inits of the train outputs."""
        return self.train.mean(0)

    @property
    def train_var(self) -> torch.Tensor:
        """(T, N, K) unbiased variance over inits of the train outputs (NaN for one init)."""
        return _var(self.train)

    def _test(self) -> torch.Tensor:
        if self.test is None:
            raise ValueError("no test outputs: pass x_test to ntk_predict_ensemble")
        return self.test


def _var(x: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the leading (init) axis; NaN for one init."""
    return x.var(0) if x.shape[0] > 1 else torch.full_like(x[0], math.nan)


def _check_inputs(name: str, x, n0: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor of shape (N, {n0}); got "
                        f"{type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' of dtype ' + str(x.dtype)}")
    if x.dim() != 2 or x.shape[1] != n0 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, n_0) = (N, {n0}) with N >= 1 (widths[0] = {n0}); "
                         f"got shape {tuple(x.shape)}")


def initial_outputs(widths: Sequence[int], x: torch.Tensor, seeds: Sequence[int], *, activation: str = "relu",
                    parametrization: str = "ntk", sigma_w: float = 1.0, sigma_b: float = 0.0, bias: bool = True,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """f_0(x) of ``MLP(widths, ..., seed=s)`` for each seed, in one batched pass.

    Parameters
    ----------
    widths, activation, parametrization, sigma_w, sigma_b, bias : as for :class:`fastntk.MLP`.
    x : (N, n_0) inputs.
    seeds : the S seeds.
    dtype : of the forward pass (float64 or float32).

    Returns
    -------
    (S, N, K) float64 tensor on the CPU.
    """
    ws, bs = init_weights(widths, list(seeds), parametrization=parametrization, sigma_w=sigma_w,
                          sigma_b=sigma_b, bias=bias)
    ntk_param = parametrization == "ntk"
    phi = Activation(activation)
    a = x.detach().to("cpu", dtype).expand(len(ws[0]), *x.shape)
    for l, w in enumerate(ws):
        # h = c_l a W^T + beta_l b, as MLP.forward computes it for each init
        h = torch.bmm(a, w.to(dtype).transpose(1, 2))
        if ntk_param:
            h = h * (sigma_w / math.sqrt(w.shape[2]))
        if bs is not None and (sigma_b != 0.0 or not ntk_param):
            h = h + (sigma_b if ntk_param else 1.0) * bs[l].to(dtype)[:, None, :]
        a = phi(h) if l < len(ws) - 1 else h
    return a.to(torch.float64)


def ntk_predict_ensemble(
    widths: Sequence[int],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor | None = None,
    t: float | Sequence[float] = (math.inf,),
    *,
    seeds=None,
    activation: str = "relu",
    parametrization: str = "ntk",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    bias: bool = True,
    lr: float = 1.0,
    ridge: float = 0.0,
    method: str = "flow",
    initial_function: bool = True,
    chunk: int = DEFAULT_CHUNK,
    progress: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> NTKPredictionEnsemble:
    """:func:`fastntk.ntk_predict` for S random inits of ``MLP(widths, ...)`` at once.

    Parameters
    ----------
    widths : [n_0, ..., n_L = K], as for :class:`fastntk.MLP`.
    x_train : (N, n_0); y_train : (N, K) or (N,) for K = 1.
    x_test : (M, n_0) or None.
    t, lr, ridge, method : as for :func:`fastntk.ntk_predict`.
    seeds : None (seeds 0..99), an int n (0..n-1) or a sequence of seeds.
    activation, parametrization, sigma_w, sigma_b, bias : as for :class:`fastntk.MLP`.
    initial_function : True (default): each init's own f_0, as
        :func:`fastntk.ntk_predict` of ``MLP(..., seed=s)``. False: f_0 = 0,
        the prediction for the mirrored network ``MLP(..., mirrored=True,
        seed=s)``, whose output is 0 at init and whose NTK there is this
        init's; the remaining variance is the kernel's alone.
    chunk : inits per batched kernel computation.
    progress : tqdm bar over inits (None: when there is more than one chunk
        and stderr is a terminal).
    device, dtype : where and in which precision the kernels and f_0 are
        computed (the solve is float64 on the CPU).

    Returns
    -------
    :class:`NTKPredictionEnsemble`; ``test_mean`` and ``test_var`` are the
    mean and variance over inits.

    Raises
    ------
    TypeError, ValueError
        Naming the argument, for invalid input.
    """
    times = check_schedule(t, lr, ridge, method)
    seeds = resolve_seeds(seeds)
    widths = _check_widths(widths)
    _check_inputs("x_train", x_train, widths[0])
    if x_test is not None:
        _check_inputs("x_test", x_test, widths[0])
    if not isinstance(initial_function, bool):
        raise TypeError(f"initial_function must be a bool; got {type(initial_function).__name__}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int (inits per batched call); got {chunk!r}")
    if not isinstance(y_train, torch.Tensor):
        raise TypeError(f"y_train must be a torch.Tensor; got {type(y_train).__name__}")
    y = y_train.detach().to("cpu", torch.float64)
    y = y[:, None] if y.dim() == 1 else y
    n, k = x_train.shape[0], widths[-1]
    if y.dim() != 2 or y.shape != (n, k):
        raise ValueError(f"y_train must have shape (N, K) = ({n}, {k}) (or (N,) for K = 1), N rows as x_train "
                         f"and K = widths[-1] outputs; got {tuple(y_train.shape)}")
    net = dict(activation=activation, parametrization=parametrization, sigma_w=sigma_w, sigma_b=sigma_b, bias=bias)
    x_all = x_train if x_test is None else torch.cat([x_train, x_test.to(x_train)])
    parts = {"train": [], "test": [], "f0_train": [], "f0_test": [], "eigenvalues": []}
    bar = progress_bar(progress, len(seeds), "NTK predictor", worth_it=len(seeds) > chunk, unit="init")
    try:
        for start in range(0, len(seeds), chunk):
            part = seeds[start:start + chunk]
            # Theta([x_train; x_test], x_train): the train kernel and the test-train block in one pass
            stats = ensemble_ntk(widths, x_all, x_train, seeds=part, outputs="full", keep=True, quantiles=None,
                                 progress=False, device=device, dtype=dtype, **net)
            kernels = flat_kernel(stats.kernels)
            theta, cross = kernels[:, :n * k], (kernels[:, n * k:] if x_test is not None else None)
            if initial_function:
                f0_all = initial_outputs(widths, x_all, part, dtype=dtype, **net)
            else:
                f0_all = torch.zeros(len(part), x_all.shape[0], k, dtype=torch.float64)
            f0, f0_test = f0_all[:, :n], (f0_all[:, n:] if x_test is not None else None)
            train, test, lam = closed_form(theta, cross, f0, f0_test, y, times, lr=lr, ridge=ridge, method=method)
            for key, value in (("train", train), ("test", test), ("f0_train", f0), ("f0_test", f0_test),
                               ("eigenvalues", lam)):
                parts[key].append(value)
            bar.update(len(part))
    finally:
        bar.close()
    cat = {key: None if v[0] is None else torch.cat(v) for key, v in parts.items()}
    settings = dict(widths=list(widths), lr=lr, ridge=ridge, method=method, initial_function=initial_function,
                    dtype=str(dtype).replace("torch.", ""), **net)
    return NTKPredictionEnsemble(t=torch.tensor([float(s) for s in times], dtype=torch.float64), seeds=seeds,
                                 settings=settings, **cat)
