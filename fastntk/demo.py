"""The main job on bundled data: the layerwise NTK of a wide MLP on
scikit-learn's digits (shipped with scikit-learn, no download).

Prints each layer's share of the kernel, times fastntk next to a torch.func
Jacobian computation of the same kernel (and checks they agree), and writes a
heatmap of the kernel ordered by class.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .experiments.figures import class_ticks
from .models import MLP
from .ntk import ntk


#: The most digits per class the balanced set can take (class 8 has 174).
DIGITS_PER_CLASS = 174

#: The reduced `training` experiment of the demo (under a minute on 2 cores).
TRAINING_DEMO = dict(depth=4, width=32, n_steps=100)


def load_digits_balanced(n_per_class: int, dtype=torch.float32) -> tuple[torch.Tensor, np.ndarray]:
    """(10 n_per_class, 64) digits scaled to unit norm, sorted by class, and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    idx = np.concatenate([np.flatnonzero(data.target == c)[:n_per_class] for c in range(10)])
    x = torch.tensor(data.data[idx], dtype=dtype)
    return x / x.norm(dim=1, keepdim=True), data.target[idx]


def jacobian_ntk(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, N, K, K) the NTK from torch.func per-parameter Jacobians (the usual recipe)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = torch.func.jacrev(lambda p, inp: torch.func.functional_call(model, p, (inp,)))(params, x)
    return sum(torch.einsum("ik...,jl...->ijkl", j, j) for j in jac.values())


def _timed(fn, repeats: int = 3):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return result, best


def run_demo(out: str = "demo-output", n_per_class: int = 50, width: int = 1024, hidden_layers: int = 3,
             compare_n: int = 32, seed: int = 0, experiments: bool = True) -> dict:
    """Run the demo; returns the numbers it printed. Writes ``out/digits_ntk.png``,
    and with ``experiments`` (default) a reduced NTK-dispersion experiment
    (:func:`run_dispersion_demo`) into ``out/dispersion/`` and a short
    training experiment (:func:`run_training_demo`) into ``out/training/``."""
    for name, value, most in (("width", width, None), ("n_per_class", n_per_class, DIGITS_PER_CLASS),
                              ("hidden_layers", hidden_layers, None), ("compare_n", compare_n, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (most and value > most):
            raise ValueError(f"{name} must be a positive int{f' <= {most}' if most else ''}; got {value!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    x, y = load_digits_balanced(n_per_class)
    widths = [x.shape[1]] + [width] * hidden_layers + [10]
    net = MLP(widths, activation="relu", parametrization="ntk", sigma_w=2**0.5, sigma_b=0.1, seed=seed)
    print(f"fastntk demo: digits, N = {len(x)} ({n_per_class} per class), MLP {widths}, "
          f"ReLU, NTK parametrization, float32, {torch.get_num_threads()} threads")

    lw, t_layerwise = _timed(lambda: ntk(net, x, outputs="trace", layerwise=True), repeats=1)
    theta = lw.sum((0, 1))
    total_trace = theta.diagonal().sum().item()
    print("\nPer-layer share of tr Theta (sum over inputs and the 10 outputs):")
    print(f"{'layer':>6} {'fan_in':>7} {'weight':>8} {'bias':>8}")
    shares = []
    for l in range(lw.shape[0]):
        w = lw[l, 0].diagonal().sum().item() / total_trace
        b = lw[l, 1].diagonal().sum().item() / total_trace
        shares.append((w, b))
        print(f"{l + 1:>6} {widths[l]:>7} {w:>8.2%} {b:>8.2%}")
    within = np.mean([theta[y == c][:, y == c].mean().item() for c in range(10)])
    print(f"\nkernel mean within class {within:.4f}, over all pairs {theta.mean().item():.4f}; "
          f"layerwise trace kernel took {t_layerwise:.2f} s")

    xs = x[:compare_n]
    fast, t_fast = _timed(lambda: ntk(net, xs))
    ref, t_jac = _timed(lambda: jacobian_ntk(net, xs), repeats=1)
    err = ((fast - ref).abs().max() / ref.abs().max()).item()
    print(f"\nFull NTK (N = {compare_n}, K = 10, {sum(p.numel() for p in net.parameters()):,} parameters):")
    print(f"  fastntk            {t_fast * 1e3:9.1f} ms")
    print(f"  torch.func jacrev  {t_jac * 1e3:9.1f} ms   ({t_jac / t_fast:.1f}x slower)")
    print(f"  max relative difference {err:.2e} (float32)")

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(theta.numpy(), cmap="viridis")
    class_ticks(ax, y)
    ax.set_title(f"Empirical NTK (trace over outputs), digits by class\nMLP {widths}")
    fig.colorbar(im, ax=ax, label="Θ(x, x')  (trace over the 10 outputs)")
    fig.tight_layout()
    path = os.path.join(out, "digits_ntk.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nheatmap written to {path}")
    result = {"shares": shares, "t_fastntk": t_fast, "t_jacobian": t_jac, "rel_err": err, "png": path}
    if experiments:
        result["dispersion"] = run_dispersion_demo(os.path.join(out, "dispersion"), seed=seed)
        result["training"] = run_training_demo(os.path.join(out, "training"), seed=seed)
    return result


def run_training_demo(out: str = "demo-output/training", depth: int = TRAINING_DEMO["depth"],
                      width: int = TRAINING_DEMO["width"], n_steps: int = TRAINING_DEMO["n_steps"],
                      seed: int = 0) -> dict:
    """A short ``fastntk run training`` (shallower, narrower, fewer steps):
    the NTK of a ReLU MLP tracked while it trains on digits, per phase;
    writes training.csv and training.png into ``out`` and prints a summary."""
    from .experiments import save_csv
    from .experiments.training import plot_training, summarize_training, summary_lines, training

    print(f"\nNTK during training on digits (ICML 2022 setup, reduced): ReLU MLP, {depth} hidden layers of "
          f"width {width}, sigma_w^2 1, 2, 2.2, {n_steps} full-batch steps")
    t0 = time.perf_counter()
    rows, kernels = training(depth=depth, width=width, n_steps=n_steps, seed=seed,
                             **{k: v for k, v in TRAINING_DEMO.items() if k not in ("depth", "width", "n_steps")})
    elapsed = time.perf_counter() - t0
    print("\n".join(summary_lines(summarize_training(rows))))
    csv_path = save_csv(rows, os.path.join(out, "training.csv"))
    png_path = plot_training(rows, kernels, os.path.join(out, "training.png"))
    print(f"({elapsed:.1f} s) training table and figure (curves, class-ordered kernels) written to "
          f"{csv_path} and {png_path}")
    print("full experiment: fastntk run training --help")
    return {"rows": rows, "csv": csv_path, "png": png_path, "seconds": elapsed}


def run_dispersion_demo(out: str = "demo-output/dispersion", depths=tuple(range(1, 21)),
                        sigma_w2s=(1.0, 1.5, 2.0, 2.5, 3.0), width: int = 100, n_inits: int = 200,
                        cosine: float = 0.5, seed: int = 0) -> dict:
    """A reduced ICML 2022 dispersion experiment (``fastntk run dispersion``
    with fewer depths, sigma_w^2 values and inits): writes dispersion.csv and
    dispersion.png into ``out`` and prints a summary."""
    from . import experiments as E

    print(f"\nNTK dispersion vs depth (Seleznova & Kutyniok, ICML 2022 setup, reduced): ReLU, standard "
          f"parametrization, width {width}, depths {depths[0]}..{depths[-1]}, sigma_w^2 "
          f"{', '.join(f'{v:g}' for v in sigma_w2s)}, {n_inits} inits, cos(x, x') = {cosine:g}")
    t0 = time.perf_counter()
    rows = E.dispersion(depths=list(depths), sigma_w2s=list(sigma_w2s), widths=[width], cosines=[cosine],
                        n_inits=n_inits, seed=seed)
    elapsed = time.perf_counter() - t0
    os.makedirs(out, exist_ok=True)
    csv_path = E.save_csv(rows, os.path.join(out, "dispersion.csv"))
    png_path = E.plot_dispersion(rows, os.path.join(out, "dispersion.png"))
    first, last = depths[0], depths[-1]
    print(f"{'sigma_w^2':>9} {'phase':>14} {'D(depth ' + str(first) + ')':>14} {'D(depth ' + str(last) + ')':>14}")
    for v in sigma_w2s:
        d = {r["depth"]: r for r in rows if r["sigma_w2"] == v}
        print(f"{v:>9g} {d[first]['phase']:>14} {d[first]['dispersion']:>14.3f} "
              f"{d[last]['dispersion']:>14.3f}  [{d[last]['dispersion_lo']:.2f}, {d[last]['dispersion_hi']:.2f}]")
    print(f"({elapsed:.1f} s) dispersion table and figure written to {csv_path} and {png_path}")
    print("full experiment: fastntk run dispersion --help")
    return {"rows": rows, "csv": csv_path, "png": png_path, "seconds": elapsed}
