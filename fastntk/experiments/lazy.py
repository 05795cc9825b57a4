"""The lazy regime: a network trained by gradient descent on the squared loss
against its linearized model (:func:`fastntk.linearize`) and kernel
regression with its NTK at initialization (:func:`fastntk.ntk_predict` at
t = inf), vs width.

NTK theory says that as the width grows the network's function during
training approaches the linearized model's, and after training the kernel
regression's (from the initial function f0, which the network keeps).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .._progress import progress_bar
from ..training.linearize import linearize
from ..training.predict import ntk_predict
from . import figures
from .regression import (add_training_arguments, check_training, relu_mlp, rms, sphere_regression, summarize,
                         train_mse, training_settings, write_outputs)
from .registry import Experiment, add_list_argument, flatten
from .tables import check_rows, int_list


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
    n_seeds, depth, n_steps, lr, sigma_w2, sigma_b, seed = check_training(n_seeds, depth, n_steps, lr, sigma_w2,
                                                                          sigma_b, seed)
    device = torch.device(device or "cpu")
    x, y, x_test, y_test = (t.to(device) for t in sphere_regression(n_train, n_test, dim, seed))
    y_scale = rms(y_test)
    rows = []
    bar = progress_bar(progress, len(widths) * n_seeds * n_steps, "lazy", worth_it=True, unit="step")
    for width in widths:
        for s in range(seed, seed + n_seeds):
            net = relu_mlp(dim, width, depth, sigma_w2, sigma_b, s, device)
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
                "dist_network_linearized": rms(f_net - f_lin) / y_scale,
                "dist_network_kernel_regression": rms(f_net - f_kr) / y_scale,
                "dist_linearized_kernel_regression": rms(f_lin - f_kr) / y_scale,
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
    return summarize(rows, "width", keys, [k for k in keys if k.startswith("dist_")])


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
--n-train 64 --n-test 500 --dim 3 (16,000 gradient steps, half of them
the linearized model's jvp steps, which cost most; 2 minutes on one
thread of a 2-core machine shared with other jobs). The full setting of
MSML 2021: deeper ReLU and sigmoid networks, widths into the thousands, many
inits (raise --depth, --width, --seeds; --device cuda helps).

examples:
  fastntk run lazy --out results/
  fastntk run lazy --width 128 512 2048 8192 --seeds 5 --depth 2 --device cuda --out results/
"""


def _add_arguments(parser) -> None:
    add_list_argument(parser, "--width", int, "W", "hidden widths (default 64 256 1024 4096)")
    parser.add_argument("--n-train", type=int, default=64, help="training points (default: %(default)s)")
    add_training_arguments(parser, seeds_help="inits per width", n_test=500, dim=3)


def _run(args):
    settings = dict(widths=flatten(args.width) or [64, 256, 1024, 4096], n_train=args.n_train,
                    **training_settings(args))
    rows = lazy(**settings, progress=False if args.no_progress else None)
    summary = summarize_lazy(rows)
    for r in summary:
        print(f"  width {r['width']:>6}: test MSE network {r['test_mse_network']:.4g}, linearized "
              f"{r['test_mse_linearized']:.4g}, kernel regression {r['test_mse_kernel_regression']:.4g}; "
              f"distance network-linearized {r['dist_network_linearized']:.3g}, "
              f"network-kernel regression {r['dist_network_kernel_regression']:.3g}")
    print(f"  fitted slopes vs width: network-linearized {summary[0]['dist_network_linearized_slope']:.2f}, "
          f"network-kernel regression {summary[0]['dist_network_kernel_regression_slope']:.2f}")
    return rows, settings, write_outputs("lazy", rows, summary, plot_lazy, args.out)


EXPERIMENT = Experiment(
    name="lazy",
    summary="network vs linearized model vs kernel regression: test error and function distance vs width",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
