"""The lazy regime: a network trained by gradient descent on the squared loss
against its linearized model (:func:`fastntk.linearize`) and kernel
regression with its NTK at initialization (:func:`fastntk.ntk_predict` at
t = inf), vs width.

NTK theory says that as the width grows the network's function during
training approaches the linearized model's, and after training the kernel
regression's (from the initial function f0, which the network keeps). This
module also holds what the regression experiments share: a smooth target on
the sphere (:func:`sphere_regression`), full-batch gradient descent on the
squared loss (:func:`train_mse`) and the log-log slope (:func:`loglog_slope`).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from .._progress import progress_bar
from ..models import MLP
from ..training.linearize import linearize
from ..training.predict import ntk_predict
from . import figures
from .registry import Experiment, add_list_argument, flatten
from .tables import check_int, check_number, check_rows, int_list, save_csv


def sphere_regression(n_train: int, n_test: int, dim: int, seed: int = 0, dtype=torch.float64):
    """A smooth regression task: inputs uniform on the sphere of radius
    sqrt(dim) in R^dim (so ``<x, x> / dim = 1``, the scale the NTK
    parametrization expects), target f*(x) = a + a b / 2 with a = <x, u>,
    b = <x, v> for fixed random unit vectors u, v (a degree-2 polynomial:
    smooth, in the NTK's RKHS, variance about 1.25).

    Returns
    -------
    (x_train (n_train, dim), y_train (n_train, 1), x_test (n_test, dim),
    y_test (n_test, 1)). The training points for a smaller ``n_train`` are the
    first rows of those for a larger one (same ``seed``); the test set and the
    target depend only on ``dim`` and ``seed``.
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


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y vs log x (NaN with fewer than two distinct
    x or a non-positive y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or not np.all(y > 0):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def _rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def lazy(
    widths: Sequence[int] = (64, 256, 1024, 4096),
    n_seeds: int = 2,
    *,
    depth: int = 1,
    n_steps: int = 1000,
    lr: float = 1.0,
    n_train: int = 64,
    n_test: int = 500,
    dim: int = 3,
    sigma_w2: float = 2.0,
    sigma_b: float = 0.1,
    seed: int = 0,
    device=None,
    progress: bool | None = None,
) -> list[dict]:
    """Train ``MLP([dim] + [width] * depth + [1])`` (ReLU, NTK
    parametrization, float64) and its linearized model with the same
    full-batch gradient descent on :func:`sphere_regression`, and compare
    both with kernel regression on the network's NTK at init.

    For each width and init (seeds ``seed .. seed + n_seeds - 1``): the
    network and ``fastntk.linearize(network)`` are each trained ``n_steps``
    steps with learning rate ``lr`` (loss convention of
    :func:`train_mse`); kernel regression is ``fastntk.ntk_predict(network
    at init, ..., t=inf)``, the limit of the linearized model's training
    (it keeps the initial function f0).

    Returns
    -------
    list of dicts, one per (width, seed): width, depth, seed, dim, n_train,
    n_test, n_steps, lr; test_mse_network, test_mse_linearized,
    test_mse_kernel_regression (mean squared error on the test set);
    train_loss_network, train_loss_linearized; dist_network_linearized,
    dist_network_kernel_regression, dist_linearized_kernel_regression (RMS
    over the test inputs of the difference of the two functions, divided by
    the RMS of the target: relative function distances);
    linearized_vs_closed_form (max |f_lin - ntk_predict at t = n_steps|
    on the test set: the linearized model trains exactly as the closed form
    says, up to rounding); weight_change (||w - w0|| / ||w0|| of the network).
    """
    widths = int_list("widths", widths, 1)
    n_seeds, depth = check_int("n_seeds", n_seeds, 1), check_int("depth", depth, 1)
    n_steps = check_int("n_steps", n_steps, 1)
    lr = check_number("lr", lr, 0.0, lo_open=True)
    sigma_w2 = check_number("sigma_w2", sigma_w2, 0.0, lo_open=True)
    sigma_b = check_number("sigma_b", sigma_b, 0.0)
    check_int("seed", seed, 0)
    device = torch.device(device or "cpu")
    x, y, x_test, y_test = (t.to(device) for t in sphere_regression(n_train, n_test, dim, seed))
    y_scale = _rms(y_test)
    rows = []
    bar = progress_bar(progress, len(widths) * n_seeds * n_steps, "lazy", worth_it=True, unit="step")
    for width in widths:
        for s in range(seed, seed + n_seeds):
            net = MLP([dim] + [width] * depth + [1], activation="relu", parametrization="ntk",
                      sigma_w=math.sqrt(sigma_w2), sigma_b=sigma_b, seed=s, dtype=torch.float64, device=device)
            w0 = torch.cat([p.detach().flatten() for p in net.parameters()])
            pred = ntk_predict(net, x, y, x_test, t=[n_steps, math.inf], lr=lr, method="gd")
            lin = linearize(net)
            loss_lin = train_mse(lin, x, y, n_steps, lr, on_step=lambda: bar.update(0.5))
            loss_net = train_mse(net, x, y, n_steps, lr, on_step=lambda: bar.update(0.5))
            with torch.no_grad():
                f_net, f_lin = net(x_test).cpu(), lin(x_test).cpu()
                w = torch.cat([p.detach().flatten() for p in net.parameters()])
            f_t, f_kr, yt = pred.test[0], pred.test[1], y_test.cpu()
            rows.append({
                "width": width, "depth": depth, "seed": s, "dim": dim, "n_train": n_train, "n_test": n_test,
                "n_steps": n_steps, "lr": lr,
                "test_mse_network": (f_net - yt).pow(2).mean().item(),
                "test_mse_linearized": (f_lin - yt).pow(2).mean().item(),
                "test_mse_kernel_regression": (f_kr - yt).pow(2).mean().item(),
                "train_loss_network": loss_net, "train_loss_linearized": loss_lin,
                "dist_network_linearized": _rms(f_net - f_lin) / y_scale,
                "dist_network_kernel_regression": _rms(f_net - f_kr) / y_scale,
                "dist_linearized_kernel_regression": _rms(f_lin - f_kr) / y_scale,
                "linearized_vs_closed_form": (f_lin - f_t).abs().max().item(),
                "weight_change": ((w - w0).norm() / w0.norm()).item(),
            })
    bar.close()
    return rows


def summarize_lazy(rows: list[dict]) -> list[dict]:
    """Mean and standard error over seeds per width, and the fitted log-log
    slope vs width of each distance: list of dicts width, n_seeds, and
    ``<key>``, ``<key>_se`` for every test error and distance, plus
    ``<distance>_slope`` (the same on every row)."""
    check_rows(rows, ("width", "seed", "test_mse_network", "dist_network_linearized"), "summarize_lazy")
    keys = [k for k in rows[0] if k.startswith(("test_mse_", "dist_"))]
    out = []
    for width in sorted({r["width"] for r in rows}):
        sel = [r for r in rows if r["width"] == width]
        row = {"width": width, "n_seeds": len(sel)}
        for k in keys:
            v = np.array([r[k] for r in sel], dtype=float)
            row[k] = float(v.mean())
            row[f"{k}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
        out.append(row)
    for k in (k for k in keys if k.startswith("dist_")):
        slope = loglog_slope([r["width"] for r in out], [r[k] for r in out])
        for r in out:
            r[f"{k}_slope"] = slope
    return out


_CURVES = {  # key: (label, colour, line style)
    "network": ("network", "C0", "-"),
    "linearized": ("linearized model", "C1", "--"),
    "kernel_regression": ("kernel regression (NTK at init, t = ∞)", "C2", ":"),
    "network_linearized": ("network vs linearized", "C3", "-"),
    "network_kernel_regression": ("network vs kernel regression", "C4", "-"),
    "linearized_kernel_regression": ("linearized vs kernel regression (training not converged)", "0.5", ":"),
}


def plot_lazy(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """Left: test MSE vs width of the network, its linearized model and
    kernel regression (mean ± standard error over seeds). Right: relative
    function distances vs width, log-log, with fitted slopes and a
    width^-1/2 guide."""
    check_rows(rows, ("width", "seed", "test_mse_network", "dist_network_linearized"), "plot_lazy")
    summary = summarize_lazy(rows)
    plt = figures.pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 4.4), layout="constrained")
    w = np.array([r["width"] for r in summary], dtype=float)
    for name in ("network", "linearized", "kernel_regression"):
        label, color, ls = _CURVES[name]
        k = f"test_mse_{name}"
        ax0.errorbar(w * (1 + 0.04 * (name == "linearized")), [r[k] for r in summary],
                     yerr=[r[f"{k}_se"] for r in summary], color=color, ls=ls, marker="o", ms=4, capsize=2,
                     label=label)
    ax0.set_ylabel("test mean squared error")
    ax0.set_title("test error")
    for name in ("network_linearized", "network_kernel_regression", "linearized_kernel_regression"):
        label, color, ls = _CURVES[name]
        k = f"dist_{name}"
        ax1.errorbar(w, [r[k] for r in summary], yerr=[r[f"{k}_se"] for r in summary], color=color, ls=ls,
                     marker="o", ms=4, capsize=2, label=f"{label}, slope {summary[0][f'{k}_slope']:.2f}")
    y0 = summary[0]["dist_network_linearized"]
    ax1.plot(w, y0 * (w / w[0]) ** -0.5, "k:", lw=1, label="∝ width^-1/2")
    ax1.set_yscale("log")
    figures.readable_log_ticks(ax1)
    ax1.set_ylabel("‖f_a − f_b‖ / ‖f*‖ on the test set")
    ax1.set_title("distance between the functions")
    for ax in (ax0, ax1):
        ax.set_xscale("log")
        figures.readable_log_ticks(ax, "x")
        ax.set_xlabel("width")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(title or f"Lazy training: ReLU MLP, {r0['depth']} hidden layer(s), NTK parametrization, "
                          f"{r0['n_train']} points on the sphere in R^{r0['dim']},\n{r0['n_steps']} steps of "
                          f"full-batch gradient descent (lr {r0['lr']:g}), {summary[0]['n_seeds']} inits per width",
                 fontsize=11)
    figures.save(fig, path)
    plt.close(fig)
    return path


DESCRIPTION = """\
The lazy regime: a ReLU MLP (DEPTH hidden layers, NTK parametrization,
sigma_w^2 = 2, sigma_b = 0.1, float64) trained by full-batch gradient descent
on the squared loss, next to its linearized model (fastntk.linearize,
trained by the same optimizer) and to kernel regression with its NTK at
initialization (fastntk.ntk_predict at t = inf, which keeps the initial
function f0), at several widths, --seeds inits each. The task: N_TRAIN
points uniform on the sphere of radius sqrt(DIM) in R^DIM, target
f*(x) = <x,u> + <x,u><x,v>/2; the test set has N_TEST points.

NTK theory (Jacot et al. 2018; Lee et al. 2019) and the measurements of
Seleznova & Kutyniok (MSML 2021) say: the distance between the network's
function and the linearized model's, and kernel regression's, shrinks with
width (about as width^-1/2), and the network's test error converges to
kernel regression's. The grey dotted curve (linearized vs kernel
regression) is how far the training is from convergence: a floor for the
network-to-kernel-regression distance that does not depend on width.

Writes lazy.csv (one row per width and init), lazy_summary.csv (mean and
standard error over inits, fitted slopes), lazy.png and lazy.json into --out.

Defaults: --width 64 256 1024 4096 --seeds 2 --depth 1 --steps 1000 --lr 1.0
--n-train 64 --n-test 500 --dim 3 (about 5 minutes on 2 shared CPU cores;
the linearized model's jvp steps take most of it). The full setting of
MSML 2021: deeper ReLU and sigmoid networks, widths into the thousands, many
inits (raise --depth, --width, --seeds; --device cuda helps).

examples:
  fastntk run lazy --out results/
  fastntk run lazy --width 128 512 2048 8192 --seeds 5 --depth 2 --device cuda --out results/
"""


def _add_arguments(parser) -> None:
    add_list_argument(parser, "--width", int, "W", "hidden widths (default 64 256 1024 4096)")
    parser.add_argument("--seeds", type=int, default=2, help="inits per width (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=1, help="hidden layers (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, help="gradient descent steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=1.0, help="learning rate (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=64, help="training points (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=500, help="test points (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=3, help="input dimension (default: %(default)s)")


def _run(args):
    settings = dict(widths=flatten(args.width) or [64, 256, 1024, 4096], n_seeds=args.seeds, depth=args.depth,
                    n_steps=args.steps, lr=args.lr, n_train=args.n_train, n_test=args.n_test, dim=args.dim,
                    seed=args.seed, device=args.device)
    rows = lazy(**settings, progress=False if args.no_progress else None)
    summary = summarize_lazy(rows)
    for r in summary:
        print(f"  width {r['width']:>6}: test MSE network {r['test_mse_network']:.4g}, linearized "
              f"{r['test_mse_linearized']:.4g}, kernel regression {r['test_mse_kernel_regression']:.4g}; "
              f"distance network-linearized {r['dist_network_linearized']:.3g}, "
              f"network-kernel regression {r['dist_network_kernel_regression']:.3g}")
    print(f"  fitted slopes vs width: network-linearized {summary[0]['dist_network_linearized_slope']:.2f}, "
          f"network-kernel regression {summary[0]['dist_network_kernel_regression_slope']:.2f}")
    files = {"png": plot_lazy(rows, os.path.join(args.out, "lazy.png")),
             "summary_csv": save_csv(summary, os.path.join(args.out, "lazy_summary.csv"))}
    return rows, settings, files


EXPERIMENT = Experiment(
    name="lazy",
    summary="network vs linearized model vs kernel regression: test error and function distance vs width",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
