"""What the regression experiments (``lazy``, ``mirrored``) share: a smooth
target on the sphere, full-batch gradient descent on the squared loss, the
network they train, their argument checks and flags, and the summary over
seeds with fitted log-log slopes."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..models import MLP
from .tables import check_int, check_number, save_csv


def sphere_regression(n_train: int, n_test: int, dim: int, seed: int = 0, dtype=torch.float64):
    """A smooth regression task: inputs uniform on the sphere of radius
    sqrt(dim) in R^dim (so ``<x, x> / dim = 1``, the scale the NTK
    parametrization expects), target f*(x) = a + a b / 2 with a = <x, u>,
    b = <x, v> for fixed random unit vectors u, v (a degree-2 polynomial:
    smooth, in the NTK's RKHS, variance about 1.25).

    Returns
    -------
    (x_train (n_train, dim), y_train (n_train, 1), x_test (n_test, dim),
    y_test (n_test, 1)). The target and the test set depend only on ``dim``
    and ``seed``, not on ``n_train``.
    """
    n_train, n_test = check_int("n_train", n_train, 1), check_int("n_test", n_test, 1)
    dim = check_int("dim", dim, 1)
    g = torch.Generator().manual_seed(int(seed) + 2024)
    u, v = torch.nn.functional.normalize(torch.randn(2, dim, generator=g, dtype=torch.float64), dim=1)
    g_test = torch.Generator().manual_seed(int(seed) + 4048)

    def sphere(k, gen):
        x = torch.randn(k, dim, generator=gen, dtype=torch.float64)
        return x / x.norm(dim=1, keepdim=True) * math.sqrt(dim)

    def target(x):
        a, b = x @ u, x @ v
        return (a + 0.5 * a * b)[:, None]

    x_test, x_train = sphere(n_test, g_test), sphere(n_train, g)
    return (x_train.to(dtype), target(x_train).to(dtype), x_test.to(dtype), target(x_test).to(dtype))


def check_training(n_seeds, depth, n_steps, lr, sigma_w2, sigma_b, seed) -> tuple:
    """The training arguments both experiments take, checked:
    (n_seeds, depth, n_steps, lr, sigma_w2, sigma_b, seed)."""
    return (check_int("n_seeds", n_seeds, 1), check_int("depth", depth, 1), check_int("n_steps", n_steps, 1),
            check_number("lr", lr, 0.0, lo_open=True), check_number("sigma_w2", sigma_w2, 0.0, lo_open=True),
            check_number("sigma_b", sigma_b, 0.0), check_int("seed", seed, 0))


def relu_mlp(dim: int, width: int, depth: int, sigma_w2: float, sigma_b: float, seed: int, device,
             mirrored: bool = False) -> MLP:
    """``MLP([dim] + [width] * depth + [1])``: ReLU, NTK parametrization, float64."""
    return MLP([dim] + [width] * depth + [1], activation="relu", parametrization="ntk", sigma_w=math.sqrt(sigma_w2),
               sigma_b=sigma_b, seed=seed, dtype=torch.float64, device=device, mirrored=mirrored)


def train_mse(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, n_steps: int, lr: float,
              on_step=None) -> float:
    """``n_steps`` of full-batch gradient descent (``torch.optim.SGD``) on
    L = (1 / 2N) sum_i ||f(x_i) - y_i||^2, the convention of
    :func:`fastntk.ntk_predict`; ``on_step()`` after each step. Returns the
    final training loss."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(n_steps):
        opt.zero_grad()
        (((model(x) - y) ** 2).sum() / (2 * len(x))).backward()
        opt.step()
        if on_step is not None:
            on_step()
    with torch.no_grad():
        return (((model(x) - y) ** 2).sum() / (2 * len(x))).item()


def rms(t: torch.Tensor) -> float:
    """Root mean square of ``t``."""
    return t.pow(2).mean().sqrt().item()


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y vs log x (NaN with fewer than two distinct
    x or a non-positive y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or not np.all(y > 0):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def summarize(rows: list[dict], by: str, keys, slope_keys, fixed: dict | None = None) -> list[dict]:
    """Mean and standard error over the rows of each value of ``by`` (one
    row each, sorted: ``by``, n_seeds, ``<key>``, ``<key>_se``, plus the
    ``fixed`` columns), and for each of ``slope_keys`` its least-squares
    log-log slope vs ``by`` (``<key>_slope``, the same on every row)."""
    out = []
    for value in sorted({r[by] for r in rows}):
        sel = [r for r in rows if r[by] == value]
        row = {**(fixed or {}), by: value, "n_seeds": len(sel)}
        for k in keys:
            v = np.array([r[k] for r in sel], dtype=float)
            row[k] = float(v.mean())
            row[f"{k}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
        out.append(row)
    for k in slope_keys:
        slope = loglog_slope([r[by] for r in out], [r[k] for r in out])
        for r in out:
            r[f"{k}_slope"] = slope
    return out


def add_training_arguments(parser, *, seeds_help: str, n_test: int, dim: int) -> None:
    """--seeds, --depth, --steps, --lr, --n-test, --dim."""
    parser.add_argument("--seeds", type=int, default=2, help=f"{seeds_help} (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=1, help="hidden layers (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, help="gradient descent steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1.0, help="learning rate (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=n_test, help="test points (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=dim, help="input dimension (default: %(default)s)")


def training_settings(args) -> dict:
    """The settings :func:`add_training_arguments` and the common flags give."""
    return dict(n_seeds=args.seeds, depth=args.depth, n_steps=args.steps, lr=args.lr, n_test=args.n_test,
                dim=args.dim, seed=args.seed, device=args.device)


def write_outputs(name: str, rows: list[dict], summary: list[dict], plot, out: str) -> dict:
    """NAME.png (``plot(rows, path)``) and NAME_summary.csv in ``out``: ``{kind: path}``."""
    return {"png": plot(rows, os.path.join(out, f"{name}.png")),
            "summary_csv": save_csv(summary, os.path.join(out, f"{name}_summary.csv"))}
