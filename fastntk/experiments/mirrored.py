"""Standard vs mirrored initialization: test error vs sample size (Chen,
Li & Lin, "On the Impacts of the Random Initialization in the Neural
Tangent Kernel Theory").

With standard random initialization a wide network trained on the squared
loss follows NTK regression started from its initial function f0, a rough
Gaussian process that the training data only partly remove; mirrored
initialization (``MLP(..., mirrored=True)``: output exactly 0 at init, the
same NTK) follows NTK regression from zero. The f0 term makes the
standard network's test error larger and its decay with the sample size
slower.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .._progress import progress_bar
from ..training.predict import ntk_predict
from . import figures
from .regression import (add_training_arguments, check_training, relu_mlp, rms, sphere_regression, summarize,
                         train_mse, training_settings, write_outputs)
from .registry import Experiment, add_list_argument, flatten
from .tables import check_int, check_rows, int_list

INITS = ("standard", "mirrored")


def mirrored(
    n_trains: Sequence[int] = (32, 64, 128, 256, 512),
    n_seeds: int = 2,
    *,
    width: int = 1024,
    depth: int = 1,
    n_steps: int = 1000,
    lr: float = 1.0,
    n_test: int = 1000,
    dim: int = 4,
    sigma_w2: float = 2.0,
    sigma_b: float = 0.1,
    seed: int = 0,
    device=None,
    progress: bool | None = None,
) -> list[dict]:
    """Train ``MLP([dim] + [width] * depth + [1])`` (ReLU, NTK
    parametrization, float64) from a standard random init and from the
    mirrored init of the same seed (two copies of that network, output
    (f_1 - f_2) / sqrt(2): exactly 0 at init, the same NTK) by full-batch
    gradient descent on :func:`fastntk.experiments.sphere_regression` with
    each training-set size, next to NTK theory's prediction for each.

    Returns
    -------
    list of dicts, one per (init, n_train, seed): init (``"standard"`` or
    ``"mirrored"``), n_train, seed, width, depth, dim, n_test, n_steps, lr;
    test_mse_network (the trained network's test mean squared error);
    test_mse_ntk (``fastntk.ntk_predict`` at t = n_steps: NTK regression by
    gradient descent, started from f0 for the standard init and from 0 for
    the mirrored one); test_mse_kernel_regression (the same at t = inf);
    dist_network_ntk (RMS over the test set of network minus prediction,
    relative to the target's RMS); f0_rms (RMS of the initial function on
    the test set: 0 for mirrored); train_loss_network.
    """
    n_trains = sorted(int_list("n_trains", n_trains, 2))
    width = check_int("width", width, 1)
    n_seeds, depth, n_steps, lr, sigma_w2, sigma_b, seed = check_training(n_seeds, depth, n_steps, lr, sigma_w2,
                                                                          sigma_b, seed)
    device = torch.device(device or "cpu")
    x_all, y_all, x_test, y_test = (t.to(device) for t in sphere_regression(n_trains[-1], n_test, dim, seed))
    yt = y_test.cpu()
    y_scale = rms(yt)
    rows = []
    total = len(n_trains) * n_seeds * len(INITS) * n_steps
    bar = progress_bar(progress, total, "mirrored", worth_it=True, unit="step")
    for n in n_trains:
        x, y = x_all[:n], y_all[:n]
        for s in range(seed, seed + n_seeds):
            for init in INITS:
                net = relu_mlp(dim, width, depth, sigma_w2, sigma_b, s, device, mirrored=init == "mirrored")
                pred = ntk_predict(net, x, y, x_test, t=[n_steps, math.inf], lr=lr, method="gd")
                loss = train_mse(net, x, y, n_steps, lr, on_step=bar.update)
                with torch.no_grad():
                    f_net = net(x_test).cpu()
                rows.append({
                    "init": init, "n_train": n, "seed": s, "width": width, "depth": depth, "dim": dim,
                    "n_test": n_test, "n_steps": n_steps, "lr": lr,
                    "test_mse_network": (f_net - yt).pow(2).mean().item(),
                    "test_mse_ntk": (pred.test[0] - yt).pow(2).mean().item(),
                    "test_mse_kernel_regression": (pred.test[1] - yt).pow(2).mean().item(),
                    "dist_network_ntk": rms(f_net - pred.test[0]) / y_scale,
                    "f0_rms": rms(pred.f0_test),
                    "train_loss_network": loss,
                })
    bar.close()
    return rows


_MEASURES = ("test_mse_network", "test_mse_ntk", "test_mse_kernel_regression", "dist_network_ntk", "f0_rms")


def summarize_mirrored(rows: list[dict]) -> list[dict]:
    """Mean and standard error over seeds per (init, n_train), and the
    fitted log-log slope vs n_train of each test error (the rate; the same on
    every row of an init): list of dicts init, n_train, n_seeds, ``<key>``,
    ``<key>_se``, and ``<test error>_slope``."""
    check_rows(rows, ("init", "n_train", "seed") + _MEASURES, "summarize_mirrored")
    slopes = [k for k in _MEASURES if k.startswith("test_mse")]
    return [r for init in INITS
            for r in summarize([r for r in rows if r["init"] == init], "n_train", _MEASURES, slopes, {"init": init})]


def plot_mirrored(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """Test MSE vs training-set size, log-log, for the standard and the
    mirrored init: the trained networks (solid) and NTK regression (dashed;
    from f0 for the standard init, from 0 for the mirrored one), mean ±
    standard error over seeds, fitted rates in the legend."""
    summary = summarize_mirrored(rows)
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5), layout="constrained")
    colors = {"standard": "C3", "mirrored": "C0"}
    for init in INITS:
        sel = [r for r in summary if r["init"] == init]
        if not sel:
            continue
        n = np.array([r["n_train"] for r in sel], dtype=float)
        for key, ls, marker, what in (("test_mse_network", "-", "o", "network"),
                                      ("test_mse_ntk", "--", "s", "NTK regression" + (" from f0" if init ==
                                                                                      "standard" else ""))):
            ax.errorbar(n, [r[key] for r in sel], yerr=[r[f"{key}_se"] for r in sel], color=colors[init], ls=ls,
                        marker=marker, ms=4, capsize=2, mfc="white" if ls == "--" else colors[init],
                        label=f"{init} init, {what}: rate {sel[0][f'{key}_slope']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    figures.readable_log_ticks(ax)
    figures.readable_log_ticks(ax, "x")
    ax.set_xlabel("training points n")
    ax.set_ylabel("test mean squared error")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8)
    r0 = rows[0]
    ax.set_title(title or f"Standard vs mirrored initialization: ReLU MLP, {r0['depth']} hidden layer(s) of width "
                          f"{r0['width']},\nNTK parametrization, smooth target on the sphere in R^{r0['dim']}, "
                          f"{r0['n_steps']} steps of gradient descent, {summary[0]['n_seeds']} inits", fontsize=10)
    figures.save(fig, path)
    plt.close(fig)
    return path


DESCRIPTION = """\
Standard vs mirrored initialization (Chen, Li & Lin, "On the Impacts of the
Random Initialization in the Neural Tangent Kernel Theory"): test error vs
training-set size. A ReLU MLP (DEPTH hidden layers of WIDTH, NTK
parametrization, sigma_w^2 = 2, sigma_b = 0.1, float64) is trained by
full-batch gradient descent (squared loss, --steps steps of --lr) from a
standard random init, and from the mirrored init of the same seed
(fastntk.MLP(..., mirrored=True): two copies of that network, output
(f_1 - f_2)/sqrt(2), exactly 0 at init, the same NTK), on N points uniform on
the sphere of radius sqrt(DIM) in R^DIM with the smooth target
f*(x) = <x,u> + <x,u><x,v>/2, for each N in --n-train. Next to each network:
NTK regression at the same number of steps (fastntk.ntk_predict), which
starts from the network's initial function f0 for the standard init and
from 0 for the mirrored one. The rates are least-squares log-log slopes of
test MSE vs N.

The paper's finding: with standard init the network converges to NTK
regression started from the Gaussian process f0, which is too rough for the
NTK's RKHS: its generalization error is bounded below by a rate of
n^(-3/(d+3)), cursed by the input dimension d; mirrored init avoids the f0
term and gets NTK regression's rate.

Writes mirrored.csv (one row per init, N and seed), mirrored_summary.csv
(mean and standard error over seeds, fitted rates), mirrored.png and
mirrored.json into --out.

Defaults: --n-train 32 64 128 256 512 --seeds 2 --width 1024 --depth 1
--steps 1000 --lr 1.0 --n-test 1000 --dim 4 (20,000 gradient steps; 3
minutes on one thread of a 2-core machine shared with other jobs). The paper's setting: gradient flow on wide fully connected networks
as width -> infinity, inputs in R^d, sample sizes large enough to read the
asymptotic rate; raise --n-train (with --width well above it: the
empirical kernel has rank at most the number of parameters), --steps and
--seeds, best on a GPU (--device cuda).

examples:
  fastntk run mirrored --out results/
  fastntk run mirrored --n-train 64 128 256 512 1024 2048 --width 4096 --dim 6 --device cuda --out results/
"""


def _add_arguments(parser) -> None:
    add_list_argument(parser, "--n-train", int, "N", "training-set sizes (default 32 64 128 256 512)")
    parser.add_argument("--width", type=int, default=1024, help="hidden width (default: %(default)s)")
    add_training_arguments(parser, seeds_help="inits per size", n_test=1000, dim=4)


def _run(args):
    settings = dict(n_trains=flatten(args.n_train) or [32, 64, 128, 256, 512], width=args.width,
                    **training_settings(args))
    rows = mirrored(**settings, progress=False if args.no_progress else None)
    summary = summarize_mirrored(rows)
    for init in INITS:
        sel = [r for r in summary if r["init"] == init]
        print(f"  {init:>8} init: test MSE " + ", ".join(f"{r['test_mse_network']:.3g}" for r in sel)
              + f" at n = {', '.join(str(r['n_train']) for r in sel)}; rate {sel[0]['test_mse_network_slope']:.2f} "
              f"(NTK regression: {sel[0]['test_mse_ntk_slope']:.2f})")
    return rows, settings, write_outputs("mirrored", rows, summary, plot_mirrored, args.out)


EXPERIMENT = Experiment(
    name="mirrored",
    summary="standard vs mirrored initialization: test error vs sample size, next to NTK regression",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
