"""When is a finite network in the NTK regime? (Seleznova & Kutyniok, "Analyzing
Finite Neural Networks: Can We Trust Neural Tangent Kernel Theory?", MSML
2021, arXiv 2012.04477.)

For deep MLPs in standard parametrization, per activation, sigma_w^2 (the
phase of the initialization) and depth, over several random inits:

- how far the empirical NTK at init is from the infinite-width kernel
  (:func:`fastntk.infinite.ntk`, the expected kernel at these widths):
  ||Theta_0 - Theta_inf||_F / ||Theta_inf||_F;
- how much it moves in training: ||Theta_T - Theta_0||_F / ||Theta_0||_F
  after T steps of full-batch gradient descent on the squared loss;
- the trained network's test outputs next to the NTK predictor's (the
  linearized network trained the same way, in closed form, through
  :func:`fastntk.ntk_predict_ensemble`), and the variance of both over inits;
- the training loss left after T steps (trainability).

The paper's finding: with exploding gradients (the chaotic phase) deep
networks have a random kernel at init, far from the infinite-width one, that
changes a lot in training, so NTK theory does not describe them; with
vanishing gradients (the ordered phase) the kernel stays close to its
limit and barely moves, but the networks become untrainable with depth.

The learning rate is set per setting from the kernels at init: lr = LR_SCALE
* N / max over inits of lambda_max(Theta_0) on the training set, the same
fraction of gradient descent's stability limit (2 N / lambda_max) for every
phase and depth, so that the settings are compared at equal progress of
their fastest mode (a fixed learning rate would diverge in the chaotic phase,
where the kernel grows as (sigma_w^2 / 2)^depth for ReLU, and stall in the
ordered one).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from .. import infinite
from .._progress import progress_bar
from ..models import MLP
from ..ntk import ntk
from ..training.ensemble_predict import ntk_predict_ensemble
from . import figures
from .registry import Experiment, add_list_argument, flatten
from .tables import check_int, check_number, check_rows, float_list, int_list

ACTIVATIONS = ("relu", "sigmoid")
#: By default each activation gets the sigma_w^2 at which chi_1 (the slope of
#: the correlation map at c = 1, the per-layer growth of squared gradients)
#: takes these values: ordered, edge of chaos, chaotic. For ReLU chi_1 =
#: sigma_w^2 / 2, so 1, 2, 3; for the sigmoid with sigma_b = 0.5 about 25, 104, 240.
DEFAULT_CHI1 = (0.5, 1.0, 1.5)
DEFAULT_DEPTHS = (1, 3, 6, 10)
DEFAULT_SIGMA_B = 0.5
#: The kernel's distance from the infinite-width kernel is measured on the first N_PROBE training inputs.
N_PROBE = 16
#: sigma_w2_at_chi1(activation, chi, 0.5) for chi in DEFAULT_CHI1, solved once
#: (a test checks them): the sigmoid's root finding takes seconds.
_SOLVED = {("relu", 0.5): (1.0, 2.0, 3.0), ("sigmoid", 0.5): (25.46, 103.6, 238.7)}


def sigma_w2_at_chi1(activation: str, chi: float, sigma_b: float = DEFAULT_SIGMA_B) -> float:
    """The sigma_w^2 at which chi_1 = ``chi`` (:func:`fastntk.infinite.chi1`),
    rounded to 4 significant digits."""
    from scipy.optimize import brentq

    def f(log_sw2: float) -> float:
        return infinite.chi1(activation, math.exp(log_sw2 / 2), sigma_b) - chi

    v = math.exp(brentq(f, math.log(1e-3), math.log(1e5), xtol=1e-10))
    return float(f"{v:.4g}")


def default_sigma_w2(activation: str, sigma_b: float = DEFAULT_SIGMA_B) -> list[float]:
    """The sigma_w^2 values at which chi_1 = :data:`DEFAULT_CHI1` (ordered,
    edge of chaos, chaotic), 4 significant digits."""
    solved = _SOLVED.get((activation, float(sigma_b)))
    return list(solved) if solved else [sigma_w2_at_chi1(activation, chi, sigma_b) for chi in DEFAULT_CHI1]


def _phase(activation: str, sigma_w2: float, sigma_b: float) -> str:
    # tolerance: the 4-digit rounding of sigma_w2_at_chi1 still labels the edge of chaos
    return infinite.phase(activation, math.sqrt(sigma_w2), sigma_b, tol=1e-3)


def regime_data(n_train: int, n_test: int, dim: int, seed: int = 0):
    """A smooth regression task on the unit sphere in R^dim: (x_train (N, dim),
    y_train (N,), x_test (M, dim), y_test (M,)), float64, targets
    y = sin(2 z_1) + cos(z_2) / 2 with z = sqrt(dim) <x, u> (about N(0, 1))
    for two random unit directions u."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, dim, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    u = torch.randn(dim, 2, generator=g, dtype=torch.float64)
    z = math.sqrt(dim) * x @ (u / u.norm(dim=0))
    y = torch.sin(2 * z[:, 0]) + 0.5 * torch.cos(z[:, 1])
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def _train(model, x, y, n_steps: int, lr: float) -> None:
    """Full-batch gradient descent on (1 / 2N) sum_i (f(x_i) - y_i)^2, the
    loss convention of :func:`fastntk.ntk_predict`."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(n_steps):
        opt.zero_grad()
        (0.5 * ((model(x)[:, 0] - y) ** 2).sum() / len(y)).backward()
        opt.step()


def _setting(activation, sigma_w2, depth, data, *, width, sigma_b, n_inits, seed, n_steps, lr_scale, device, bar):
    """One (activation, sigma_w^2, depth): the row of the table."""
    x, y, xt, yt = (t.to(device) for t in data)
    x_all = torch.cat([x, xt])
    n = len(y)
    widths = [x.shape[1]] + [width] * depth + [1]
    net = dict(activation=activation, parametrization="standard", sigma_w=math.sqrt(sigma_w2), sigma_b=sigma_b)
    seeds = [seed + i for i in range(n_inits)]
    models = [MLP(widths, seed=s, dtype=torch.float64, device=device, **net) for s in seeds]
    kernels0 = [ntk(m, x_all, outputs="trace").cpu() for m in models]
    # the infinite-width kernel on the probe only: for the sigmoid (quadrature) its cost
    # grows steeply past ~16 inputs
    probe = min(N_PROBE, n)
    theta_inf = infinite.ntk(x[:probe].cpu(), depth=depth + 1, widths=widths[1:-1], **net)
    lam_max = max(torch.linalg.eigvalsh(k[:n, :n]).max().item() for k in kernels0)
    lr = lr_scale * n / lam_max
    loss0 = [0.5 * ((m(x)[:, 0] - y) ** 2).mean().item() for m in models]
    for m in models:
        _train(m, x, y, n_steps, lr)
        bar.update()
    with torch.no_grad():
        f_net = torch.stack([m(xt)[:, 0] for m in models])  # (S, M)
        loss = [0.5 * ((m(x)[:, 0] - y) ** 2).mean().item() for m in models]
    kernels = [ntk(m, x_all, outputs="trace").cpu() for m in models]
    pred = ntk_predict_ensemble(widths, x, y, xt, t=[n_steps], seeds=seeds, lr=lr, method="gd", progress=False,
                                device=device, **net)
    f_ntk = pred.test[:, 0, :, 0]  # (S, M)
    f_net, yt = f_net.cpu(), yt.cpu()
    dist = [_rel(k[:probe, :probe], theta_inf) for k in kernels0]
    change = [_rel(k, k0) for k, k0 in zip(kernels, kernels0)]
    gap = [_rel(a, b) for a, b in zip(f_net, f_ntk)]
    trained = [l / l0 for l, l0 in zip(loss, loss0)]
    row = {"activation": activation, "sigma_w2": sigma_w2, "phase": _phase(activation, sigma_w2, sigma_b),
           "depth": depth, "width": width, "n_inits": n_inits, "lr": lr, "n_steps": n_steps}
    for key, values in (("kernel_distance", dist), ("kernel_change", change), ("output_gap", gap),
                        ("loss_ratio", trained)):
        v = np.asarray(values, dtype=float)
        row[key] = float(np.median(v))
        row[f"{key}_min"], row[f"{key}_max"] = float(v.min()), float(v.max())
    row["net_test_var"] = f_net.var(0).mean().item()
    row["ntk_test_var"] = f_ntk.var(0).mean().item()
    row["net_test_mse"] = ((f_net - yt) ** 2).mean().item()
    row["ntk_test_mse"] = ((f_ntk - yt) ** 2).mean().item()
    return row


def regime(
    activations: Sequence[str] = ACTIVATIONS,
    depths: Sequence[int] = DEFAULT_DEPTHS,
    sigma_w2: dict | Sequence[float] | None = None,
    *,
    width: int = 64,
    dim: int = 16,
    n_train: int = 32,
    n_test: int = 32,
    n_inits: int = 4,
    n_steps: int = 300,
    lr_scale: float = 0.5,
    sigma_b: float = DEFAULT_SIGMA_B,
    seed: int = 0,
    progress: bool | None = None,
    device: torch.device | str | None = None,
) -> list[dict]:
    """Kernel distance from the infinite-width NTK at init, kernel change in
    training, network vs NTK predictor, per activation, sigma_w^2 and depth.

    Parameters
    ----------
    activations : activation names (default relu and sigmoid).
    depths : numbers of hidden layers.
    sigma_w2 : a {activation: [sigma_w^2, ...]} dict, or one list for every
        activation, or None for the values at which chi_1 =
        :data:`DEFAULT_CHI1` (ordered, edge of chaos, chaotic) per activation
        (:func:`default_sigma_w2`).
    width : hidden width; dim : input dimension (inputs on the unit sphere).
    n_train, n_test : sizes of the regression task (:func:`regime_data`).
    n_inits : random inits per setting (init i has seed ``seed + i``).
    n_steps : full-batch gradient descent steps.
    lr_scale : the learning rate is lr_scale * N / max_s lambda_max(Theta_0^s)
        (gradient descent is stable below 2).
    sigma_b : bias standard deviation at init (biases are trained either way).
        With sigma_b = 0 a ReLU network in the ordered phase starts with a
        signal that vanishes with depth, which trained biases then swamp.
    progress : tqdm bar over trained networks (None: on a terminal).
    device : where the networks train and their kernels are computed (default CPU).

    Returns
    -------
    list of dicts, one per (activation, sigma_w2, depth): activation,
    sigma_w2, phase, depth, width, n_inits, lr, n_steps; the median over
    inits and its range (``_min``, ``_max``) of kernel_distance
    (||Theta_0 - Theta_inf|| / ||Theta_inf|| on the first :data:`N_PROBE`
    training inputs), kernel_change (||Theta_T - Theta_0|| / ||Theta_0||,
    train and test inputs), output_gap
    (||f_net - f_ntk|| / ||f_ntk|| on the test inputs after training) and
    loss_ratio (train loss after / before); net_test_var and ntk_test_var
    (variance over inits of the test outputs, averaged over test inputs);
    net_test_mse, ntk_test_mse.
    """
    activations = list(activations)
    for a in activations:
        if a not in infinite.ACTIVATIONS:
            raise ValueError(f"activations must be among {', '.join(infinite.ACTIVATIONS)}; got {a!r}")
    if not activations:
        raise ValueError("activations must not be empty")
    depths = int_list("depths", depths, 1)
    sigma_b = check_number("sigma_b", sigma_b, 0.0)
    if sigma_w2 is None:
        grid = {a: default_sigma_w2(a, sigma_b) for a in activations}
    elif isinstance(sigma_w2, dict):
        missing = [a for a in activations if a not in sigma_w2]
        if missing:
            raise ValueError(f"sigma_w2 has no values for the activations {missing}")
        grid = {a: float_list("sigma_w2", sigma_w2[a], 0.0, lo_open=True) for a in activations}
    else:
        values = float_list("sigma_w2", sigma_w2, 0.0, lo_open=True)
        grid = {a: values for a in activations}
    width, dim = check_int("width", width, 1), check_int("dim", dim, 2)
    n_train, n_test = check_int("n_train", n_train, 2), check_int("n_test", n_test, 1)
    n_inits, n_steps = check_int("n_inits", n_inits, 2), check_int("n_steps", n_steps, 1)
    lr_scale = check_number("lr_scale", lr_scale, 0.0, 2.0, lo_open=True)
    seed = check_int("seed", seed, 0)
    data = regime_data(n_train, n_test, dim, seed)
    total = sum(len(v) for v in grid.values()) * len(depths) * n_inits
    bar = progress_bar(progress, total, "regime", worth_it=True, unit="net")
    rows = []
    try:
        for a in activations:
            for v in grid[a]:
                for depth in depths:
                    rows.append(_setting(a, v, depth, data, width=width, sigma_b=sigma_b, n_inits=n_inits,
                                         seed=seed, n_steps=n_steps, lr_scale=lr_scale, device=device,
                                         bar=bar))
    finally:
        bar.close()
    return rows


_PANELS = (
    ("kernel_distance", "‖Θ_0 − Θ_∞‖_F / ‖Θ_∞‖_F  (at init)", "kernel at init vs infinite width"),
    ("kernel_change", "‖Θ_T − Θ_0‖_F / ‖Θ_0‖_F", "kernel change in training"),
    ("output_gap", "‖f_net − f_NTK‖ / ‖f_NTK‖  (test)", "trained network vs NTK predictor"),
    ("test_var", "variance over inits of f(x_test)", "output variance: network (—), NTK predictor (- -)"),
    ("loss_ratio", "train loss after / before", "trainability"),
)


def plot_regime(rows: list[dict], path: str, *, title: str | None = None) -> str:
    """One row of panels per activation, against depth, one line per
    sigma_w^2 (blues ordered, black edge of chaos, reds chaotic), the median
    over inits with its range shaded: distance of the kernel at init from
    the infinite-width kernel, kernel change in training, the gap between
    the trained network's and the NTK predictor's test outputs, the output
    variance over inits of both, and the training loss ratio."""
    check_rows(rows, ("activation", "sigma_w2", "phase", "depth", "kernel_distance", "kernel_change",
                      "output_gap", "net_test_var", "ntk_test_var", "loss_ratio"), "plot_regime")
    plt = figures.pyplot()
    activations = list(dict.fromkeys(r["activation"] for r in rows))
    fig, axes = plt.subplots(len(activations), len(_PANELS), figsize=(4.3 * len(_PANELS), 3.7 * len(activations)),
                             layout="constrained", squeeze=False)
    for i, act in enumerate(activations):
        sel = [r for r in rows if r["activation"] == act]
        values = sorted({r["sigma_w2"] for r in sel})
        phases = {v: next(r["phase"] for r in sel if r["sigma_w2"] == v) for v in values}
        colors = figures.phase_colors(values, phases)
        for ax, (key, ylabel, head) in zip(axes[i], _PANELS):
            for v in values:
                line = sorted((r for r in sel if r["sigma_w2"] == v), key=lambda r: r["depth"])
                d = [r["depth"] for r in line]
                label = f"σ_w² = {v:g} ({phases[v].replace('_', ' ')})"
                if key == "test_var":
                    ax.plot(d, [r["net_test_var"] for r in line], "-o", ms=3, color=colors[v], label=label)
                    ax.plot(d, [r["ntk_test_var"] for r in line], "--s", ms=3, color=colors[v], mfc="none")
                    continue
                ax.plot(d, [r[key] for r in line], "-o", ms=3, color=colors[v], label=label)
                ax.fill_between(d, [r[f"{key}_min"] for r in line], [r[f"{key}_max"] for r in line],
                                color=colors[v], alpha=0.15, lw=0)
            ax.set_yscale("log")
            figures.readable_log_ticks(ax)
            ax.set_xlabel("depth (hidden layers)")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{act}: {head}", fontsize=10)
        axes[i][0].legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(title or f"In or out of the NTK regime: MLPs of width {r0['width']}, standard parametrization, "
                          f"{r0['n_steps']} steps of full-batch gradient descent, {r0['n_inits']} inits "
                          "(median, range shaded)")
    figures.save(fig, path)
    plt.close(fig)
    return path


def summary_lines(rows: list[dict]) -> list[str]:
    """One line per (activation, sigma_w^2) at the largest depth."""
    lines = []
    for act in dict.fromkeys(r["activation"] for r in rows):
        deepest = max(r["depth"] for r in rows if r["activation"] == act)
        for r in (r for r in rows if r["activation"] == act and r["depth"] == deepest):
            lines.append(f"  {act:>8}, sigma_w^2 = {r['sigma_w2']:g} ({r['phase'].replace('_', ' ')}), depth "
                         f"{deepest}: kernel distance from infinite width {r['kernel_distance']:.3g}, change in "
                         f"training {r['kernel_change']:.3g}, network vs NTK predictor {r['output_gap']:.3g}, "
                         f"train loss ratio {r['loss_ratio']:.3g}")
    return lines


DESCRIPTION = """\
When is a finite network in the NTK regime? (Seleznova & Kutyniok,
"Analyzing Finite Neural Networks: Can We Trust Neural Tangent Kernel
Theory?", MSML 2021, arXiv 2012.04477.) For MLPs in standard
parametrization (W ~ N(0, sigma_w^2/fan_in), b ~ N(0, sigma_b^2), biases
trained), per activation, sigma_w^2 and depth, over N_INITS random inits:

  - the distance of the empirical NTK at init from the infinite-width kernel
    (fastntk.infinite.ntk at these widths): ||Theta_0 - Theta_inf|| / ||Theta_inf||,
    on the first 16 training inputs;
  - its relative change after STEPS steps of full-batch gradient descent on
    the squared loss: ||Theta_T - Theta_0|| / ||Theta_0||, on all inputs;
  - the trained network's test outputs next to the NTK predictor's (the
    linearized network trained the same way, in closed form,
    fastntk.ntk_predict_ensemble): ||f_net - f_NTK|| / ||f_NTK||, and the
    variance over inits of both;
  - the training loss after / before (trainability).

The task: N_TRAIN training and N_TEST test points uniform on the unit sphere
in R^DIM, target sin(2 z_1) + cos(z_2) / 2 with z = sqrt(DIM) <x, u> for
two random directions u. The learning rate is LR_SCALE * N_TRAIN / the
largest eigenvalue of the train kernel at init (the largest over inits):
the same fraction of gradient descent's stability limit in every setting.

The paper's finding: deep networks initialised in the chaotic phase
(exploding gradients) have a random kernel at init, far from the
infinite-width one, that changes a lot in training, so NTK theory does not
describe them; in the ordered phase (vanishing gradients) the kernel stays
close to its limit and barely moves, but deep networks become untrainable.

By default each activation gets the sigma_w^2 at which chi_1 = 0.5
(ordered), 1 (edge of chaos) and 1.5 (chaotic): 1, 2, 3 for ReLU; about 25,
104, 239 for the sigmoid (with sigma_b = 0.5). With sigma_b = 0 the
ordered ReLU network's signal vanishes with depth and its trained biases
move the kernel a lot: the ordered phase then looks the least lazy.

Writes regime.csv (one row per activation, sigma_w^2 and depth: medians
over inits and their range, variances, test errors), regime.png and
regime.json into --out.

Defaults: --activation relu sigmoid --depths 1 3 6 10 --width 64 --dim 16
--n-train 32 --n-test 32 --inits 4 --steps 300 --lr-scale 0.5
--sigma-b 0.5. Measured: 7.5 minutes on 2 cores shared with other jobs
(load 4-9); the end-to-end test's size (--activation relu --depths 6 --width 16 --inits 3
--steps 60) takes seconds. The paper's full
setting: ReLU and sigmoid networks, depths up to tens of layers, widths in
the hundreds to thousands, many inits, on MNIST-sized data and long
training (raise --width, --depths, --inits, --steps; best on a GPU).

examples:
  fastntk run regime --out results/
  fastntk run regime --activation relu --depths 1:20:3 --width 256 --inits 10 --out results/
  fastntk run regime --activation tanh --sigma-w2 0.5 1 2 --out results/
"""


def _add_arguments(parser) -> None:
    parser.add_argument("--activation", nargs="+", action="extend", default=None, metavar="NAME",
                        help="activations (default: relu sigmoid)")
    add_list_argument(parser, "--depths", int, "D", "hidden layers, numbers or ranges (default 1 3 6 10)")
    add_list_argument(parser, "--sigma-w2", float, "V", "sigma_w^2 values for every activation (default: those "
                      "at chi_1 = 0.5, 1, 1.5 per activation)")
    parser.add_argument("--width", type=int, default=64, help="hidden width (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=16, help="input dimension (default: %(default)s)")
    parser.add_argument("--n-train", type=int, default=32, help="training points (default: %(default)s)")
    parser.add_argument("--n-test", type=int, default=32, help="test points (default: %(default)s)")
    parser.add_argument("--inits", type=int, default=4, help="random inits per setting (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=300, help="gradient descent steps (default: %(default)s)")
    parser.add_argument("--lr-scale", type=float, default=0.5,
                        help="learning rate as a fraction of N / lambda_max(Theta_0), < 2 (default: %(default)s)")
    parser.add_argument("--sigma-b", type=float, default=DEFAULT_SIGMA_B,
                        help="bias standard deviation at init (default: %(default)s)")


def _run(args):
    settings = dict(activations=args.activation or list(ACTIVATIONS),
                    depths=flatten(args.depths) or list(DEFAULT_DEPTHS), sigma_w2=flatten(args.sigma_w2),
                    width=args.width, dim=args.dim, n_train=args.n_train, n_test=args.n_test, n_inits=args.inits,
                    n_steps=args.steps, lr_scale=args.lr_scale, sigma_b=args.sigma_b, seed=args.seed,
                    device=args.device)
    rows = regime(**settings, progress=False if args.no_progress else None)
    settings["sigma_w2"] = {a: sorted({r["sigma_w2"] for r in rows if r["activation"] == a})
                            for a in settings["activations"]}
    print("\n".join(summary_lines(rows)))
    return rows, settings, {"png": plot_regime(rows, os.path.join(args.out, "regime.png"))}


EXPERIMENT = Experiment(
    name="regime",
    summary="in or out of the NTK regime: kernel at init vs infinite width, kernel change, network vs NTK "
            "predictor, per phase and depth",
    description=DESCRIPTION, add_arguments=_add_arguments, run=_run)
