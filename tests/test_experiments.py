"""fastntk.experiments and `fastntk run`: tidy rows, files, the exact
sigma_w-scaling shortcut, argument checking. Tiny configurations only."""

import csv
import json
import math

import pytest
import torch

from fastntk import experiments as E
from fastntk.experiments.at_init import per_init_layerwise
from fastntk.cli import main
from fastntk.ensemble import ensemble_ntk

DISP_KEYS = {"width", "depth", "sigma_w2", "phase", "cosine", "n_inits", "mean", "std", "dispersion",
             "dispersion_se", "dispersion_lo", "dispersion_hi", "infinite_mean"}


def test_homogeneity_shortcut_equals_direct_ensembles():
    x = E.sphere_inputs(12, [0.3, 1.0])
    widths = [12] * 4 + [1]
    for act in ("relu", "leaky_relu"):
        per = per_init_layerwise(widths, x, [5, 6, 7, 8], [0.7, 2.5], activation=act,
                                    parametrization="standard", sigma_b=0.0, device=None, chunk=None)
        for v in (0.7, 2.5):
            direct = ensemble_ntk(widths, x, seeds=[5, 6, 7, 8], activation=act, parametrization="standard",
                                  sigma_w=math.sqrt(v), layerwise=True, keep=True).kernels
            assert ((per[v] - direct).abs().max() / direct.abs().max()).item() < 1e-12


def test_dispersion_rows_csv_png(tmp_path):
    rows = E.dispersion(depths=[1, 3], sigma_w2s=[1.0, 2.0, 3.0], widths=[10], cosines=[1.0, 0.2],
                        n_inits=20, n_boot=50)
    assert len(rows) == 2 * 3 * 2
    assert all(set(r) == DISP_KEYS for r in rows)
    assert {r["phase"] for r in rows} == {"ordered", "edge_of_chaos", "chaotic"}
    for r in rows:
        assert r["dispersion"] >= 1 and r["dispersion_lo"] <= r["dispersion"] * (1 + 1e-12)
        assert r["dispersion_hi"] >= r["dispersion"] * (1 - 1e-12) and r["n_inits"] == 20
        assert math.isfinite(r["infinite_mean"])
    # depth 1 diagonal: the infinite-width expectation is exact for ReLU, sigma_b = 0
    r = next(r for r in rows if r["depth"] == 1 and r["cosine"] == 1.0 and r["sigma_w2"] == 2.0)
    assert abs(r["mean"] - r["infinite_mean"]) < 5 * r["std"] / math.sqrt(20)
    csv_path = E.save_csv(rows, str(tmp_path / "d.csv"))
    back = list(csv.DictReader(open(csv_path)))
    assert len(back) == len(rows) and float(back[0]["dispersion"]) == rows[0]["dispersion"]
    assert E.load_csv(csv_path) == rows
    png = E.plot_dispersion(rows, str(tmp_path / "d.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_dispersion_general_path():
    # tanh is not homogeneous: one ensemble per sigma_w^2, same seeds
    rows = E.dispersion(depths=[2], sigma_w2s=[1.0, 2.0], widths=[8], cosines=[0.5], n_inits=10,
                        activation="tanh", sigma_b=0.1, n_boot=20)
    direct = ensemble_ntk([8, 8, 8, 1], E.sphere_inputs(8, [0.5]), seeds=10, activation="tanh",
                          parametrization="standard", sigma_w=math.sqrt(2.0), sigma_b=0.1)
    r = rows[1]
    assert r["sigma_w2"] == 2.0 and abs(r["mean"] - direct.mean[0, 1].item()) < 1e-10 * abs(r["mean"])
    assert abs(r["dispersion"] - direct.dispersion[0, 1].item()) < 1e-10


def test_dispersion_projected_sampler():
    # the sigma_w-scaling shortcut is exact per init for the projected sampler too (the width keeps
    # every layer's signals of full rank: where the rank is decided by rounding, so is the
    # projected init, though not its distribution)
    rows = E.dispersion(depths=[1, 3], sigma_w2s=[2.0], widths=[32], cosines=[0.5], n_inits=12, n_boot=20,
                        sampler="projected")
    direct = ensemble_ntk([32] * 4 + [1], E.sphere_inputs(32, [0.5]), seeds=12, depths=[1, 3], sampler="projected",
                          parametrization="standard", sigma_w=math.sqrt(2.0))
    seeded = E.dispersion(depths=[3], sigma_w2s=[2.0], widths=[32], cosines=[0.5], n_inits=12, n_boot=20)
    for r, d in zip(rows, [1, 3]):
        assert r["depth"] == d and abs(r["mean"] - direct[d].mean[0, 1].item()) < 1e-10 * abs(r["mean"])
        assert abs(r["dispersion"] - direct[d].dispersion[0, 1].item()) < 1e-10
    assert abs(rows[1]["mean"] - seeded[0]["mean"]) > 1e-6 * abs(seeded[0]["mean"])  # other inits


def test_convergence_rows_and_plot(tmp_path):
    rows = E.convergence(widths=[16, 64], depths=[1], sigma_w2s=[1.0, 3.0], n_inits=6)
    assert len(rows) == 4
    assert {"depth", "sigma_w2", "phase", "width", "rel_dist", "rel_dist_se", "rel_dist_of_mean",
            "slope"} <= set(rows[0])
    assert all(0 < r["rel_dist"] < 2 and r["slope"] < 0.5 for r in rows)
    rates = E.convergence_rates(rows)
    assert len(rates) == 2 and all(math.isfinite(r["slope"]) for r in rates)
    assert open(E.plot_convergence(rows, str(tmp_path / "c.png")), "rb").read(4) == b"\x89PNG"


def test_layer_shares_sum_to_one(tmp_path):
    rows = E.layer_shares(depth=4, sigma_w2s=[0.5, 2.0, 3.5], width=10, n_inits=8)
    assert len(rows) == 3 * 5
    for v in (0.5, 2.0, 3.5):
        sel = [r for r in rows if r["sigma_w2"] == v]
        assert abs(sum(r["share"] for r in sel) - 1) < 1e-12
        assert all(abs(r["weight_share"] + r["bias_share"] - r["share"]) < 1e-12 for r in sel)
    # ordered phase: the last layers dominate; chaotic: the weight terms are spread evenly
    ordered = [r["share"] for r in rows if r["sigma_w2"] == 0.5]
    assert ordered[-1] > ordered[0]
    assert open(E.plot_layer_shares(rows, str(tmp_path / "l.png")), "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("fn,kwargs,word", [
    (E.dispersion, dict(depths=[0]), "depths"),
    (E.dispersion, dict(depths=[1], sigma_w2s=[-1.0]), "sigma_w2s"),
    (E.dispersion, dict(depths=[1], cosines=[1.5]), "cosines"),
    (E.dispersion, dict(depths=[1], widths=[1]), "widths"),
    (E.dispersion, dict(depths=[1], n_inits=1), "n_inits"),
    (E.dispersion, dict(depths=[1], activation="swish"), "activation"),
    (E.dispersion, dict(depths=[1], parametrization="mup"), "parametrization"),
    (E.dispersion, dict(depths=[1], sigma_b=-0.1), "sigma_b"),
    (E.dispersion, dict(depths=[1], sampler="exact"), "sampler"),
    (E.convergence, dict(widths=[]), "widths"),
    (E.convergence, dict(n_inputs=0), "n_inputs"),
    (E.layer_shares, dict(depth=0), "depth"),
    (E.layer_shares, dict(width=1.5), "width"),
])
def test_bad_arguments(fn, kwargs, word):
    with pytest.raises(ValueError, match=word):
        fn(**kwargs)


def test_save_csv_and_plots_refuse_bad_rows(tmp_path):
    with pytest.raises(ValueError, match="rows"):
        E.save_csv([], str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="rows"):
        E.plot_dispersion([{"depth": 1}], str(tmp_path / "x.png"))


def test_cli_run_dispersion(tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["run", "dispersion", "--depths", "1:2", "4", "--sigma-w2", "1", "2.5", "--width", "10",
                 "--inits", "12", "--cosine", "0.5", "--out", str(out), "--no-progress"]) == 0
    for name in ("dispersion.csv", "dispersion.png", "dispersion.json"):
        assert (out / name).stat().st_size > 0
    rec = json.loads((out / "dispersion.json").read_text())
    assert rec["settings"]["depths"] == [1, 2, 4] and rec["settings"]["sigma_w2s"] == [1.0, 2.5]
    assert {"torch", "fastntk", "python", "date", "device"} <= set(rec["versions"])
    assert len(list(csv.DictReader(open(out / "dispersion.csv")))) == 3 * 2
    assert "dispersion.png" in capsys.readouterr().out


def test_cli_run_layer_shares_and_convergence(tmp_path):
    assert main(["run", "layer_shares", "--depths", "3", "--width", "8", "--inits", "4", "--sigma-w2", "icml",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    assert len(list(csv.DictReader(open(tmp_path / "layer_shares.csv")))) == 16 * 4
    assert main(["run", "convergence", "--depths", "1", "--width", "8", "16", "--inits", "3",
                 "--sigma-w2", "2", "--out", str(tmp_path), "--no-progress"]) == 0
    assert (tmp_path / "convergence_rates.csv").exists() and (tmp_path / "convergence.png").exists()


@pytest.mark.parametrize("argv,word", [
    (["run", "dispersion", "--depths", "5:1"], "range"),
    (["run", "dispersion", "--depths", "a"], "int"),
    (["run", "dispersion", "--depths", "0", "--inits", "3"], "depths"),
    (["run", "layer_shares", "--depths", "2", "3"], "one value"),
    (["run", "nonsense"], "invalid choice"),
    (["run", "dispersion", "--depths", "1", "--inits", "0"], "n_inits"),
    (["run", "convergence", "--cosine", "0.5"], "unrecognized arguments: --cosine"),
])
def test_cli_bad_arguments(argv, word, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2 and word in capsys.readouterr().err


def test_cli_help_lists_experiments(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for name in E.names():
        assert name in text and E.get(name).summary[:30] in text


@pytest.mark.parametrize("name,words", [
    ("dispersion", ("edge of chaos", "1:20", "--inits", "seed", "1:49", "--cosine")),
    ("convergence", ("-1/2", "--inits", "seed", "--width")),
    ("layer_shares", ("one value", "--inits", "seed")),
])
def test_cli_help_explains_each_experiment(name, words, capsys):
    with pytest.raises(SystemExit):
        main(["run", name, "--help"])
    text = capsys.readouterr().out
    for word in words:
        assert word in text


def test_registry_finds_each_experiment_module():
    assert E.names()[:3] == ["dispersion", "convergence", "layer_shares"]
    for name in E.names():
        exp = E.get(name)
        assert exp.name == name and exp.module.__name__ == f"fastntk.experiments.{name}"
    with pytest.raises(ValueError, match="unknown experiment 'nope'; choose one of dispersion"):
        E.get("nope")


def test_cli_repeated_list_flags_add_up(tmp_path):
    assert main(["run", "dispersion", "--depths", "1", "--depths", "2", "--sigma-w2", "1", "--width", "6",
                 "--inits", "4", "--cosine", "1", "--cosine", "0.5", "--out", str(tmp_path), "--no-progress"]) == 0
    rec = json.loads((tmp_path / "dispersion.json").read_text())
    assert rec["settings"]["depths"] == [1, 2] and rec["settings"]["cosines"] == [1.0, 0.5]


@pytest.mark.parametrize("cosines", [[2.0], [float("nan")], [0.5, -1.5]])
def test_sphere_inputs_refuses_cosines_off_the_sphere(cosines):
    from fastntk import experiments

    with pytest.raises(ValueError, match=r"cosines must be numbers in \[-1, 1\]"):
        experiments.sphere_inputs(4, cosines)


def test_training_experiment_tiny(tmp_path, capsys):
    out = tmp_path / "tr"
    assert main(["run", "training", "--sigma-w2", "1", "2.2", "--depth", "3", "--width", "16", "--steps", "20",
                 "--n-train", "300", "--lr", "1e-2", "--per-class", "3", "--heatmap-steps", "0", "20", "--out", str(out),
                 "--no-progress"]) == 0
    for name in ("training.csv", "training.png", "training.json", "training_summary.csv", "training_kernels.npz"):
        assert (out / name).stat().st_size > 0
    rows = E.load_csv(str(out / "training.csv"))
    steps = sorted({r["step"] for r in rows})
    assert steps == [0, 1, 2, 5, 10, 20] and len(rows) == 2 * len(steps)
    for r in rows:
        assert {"rel_change", "within_between_ratio", "centered_alignment", "lambda_min", "train_acc",
                "test_acc", "layer_share_4"} <= set(r)
        assert r["rel_change"] == 0 if r["step"] == 0 else r["rel_change"] > 0
    assert "sigma_w^2 = 2.2 (chaotic)" in capsys.readouterr().out
    # the direction that holds at every size we ran: the kernel's class structure grows with training
    for v in (1.0, 2.2):
        sel = {r["step"]: r for r in rows if r["sigma_w2"] == v}
        assert sel[20]["within_between_ratio"] > sel[0]["within_between_ratio"]
        assert sel[20]["train_acc"] > sel[0]["train_acc"]
    import numpy as np

    kernels = np.load(out / "training_kernels.npz")
    assert sorted(kernels.files) == ["sigma_w2=1_step=0", "sigma_w2=1_step=20", "sigma_w2=2.2_step=0",
                                     "sigma_w2=2.2_step=20"]
    assert kernels["sigma_w2=1_step=0"].shape == (30, 30)


def test_training_experiment_bad_arguments():
    with pytest.raises(ValueError, match="optimizer"):
        E.training(optimizer="lbfgs")
    with pytest.raises(ValueError, match="n_steps"):
        E.training(n_steps=0)


def test_divergence_experiment_tiny(tmp_path):
    assert main(["run", "divergence", "--width", "16", "64", "--steps", "50", "--n-train", "8", "--dim", "4",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    for name in ("divergence.csv", "divergence.png", "divergence.json"):
        assert (tmp_path / name).stat().st_size > 0
    rows = E.load_csv(str(tmp_path / "divergence.csv"))
    assert {r["loss"] for r in rows} == {"cross_entropy", "mse"} and {r["width"] for r in rows} == {16, 64}
    last = {(r["loss"], r["width"]): r for r in rows if r["step"] == 50}
    for w in (16, 64):
        # the logistic loss keeps pushing the outputs out; the squared loss stops them near the labels +-1
        assert last[("cross_entropy", w)]["output_norm"] > last[("mse", w)]["output_norm"]
        assert last[("cross_entropy", w)]["train_acc"] == 1.0


# --- regime (MSML 2021) ---


def test_regime_experiment_tiny(tmp_path, capsys):
    out = tmp_path / "regime"
    assert main(["run", "regime", "--depths", "6", "--sigma-w2", "1", "3", "--activation", "relu", "--width", "16",
                 "--dim", "8", "--n-train", "12", "--n-test", "8", "--inits", "3", "--steps", "60",
                 "--out", str(out), "--no-progress"]) == 0
    for name in ("regime.csv", "regime.png", "regime.json"):
        assert (out / name).stat().st_size > 0
    rows = E.load_csv(str(out / "regime.csv"))
    assert [(r["sigma_w2"], r["phase"], r["depth"]) for r in rows] == [(1.0, "ordered", 6), (3.0, "chaotic", 6)]
    rec = json.loads((out / "regime.json").read_text())
    assert rec["settings"]["sigma_w2"] == {"relu": [1.0, 3.0]} and rec["settings"]["n_steps"] == 60
    assert "sigma_w^2 = 3 (chaotic), depth 6" in capsys.readouterr().out
    for r in rows:
        assert r["kernel_distance_min"] <= r["kernel_distance"] <= r["kernel_distance_max"]
        assert r["net_test_var"] > 0 and r["ntk_test_var"] > 0 and 0 < r["loss_ratio"] < 1
    # the direction of the paper's finding, which holds at this tiny size: the chaotic kernel starts further
    # from the infinite-width one and moves more in training, and the ordered network trains less
    ordered, chaotic = rows
    assert chaotic["kernel_distance"] > ordered["kernel_distance"]
    assert chaotic["kernel_change"] > ordered["kernel_change"]
    assert ordered["loss_ratio"] > chaotic["loss_ratio"]


def test_regime_sigmoid_tiny_and_the_solved_defaults():
    from fastntk import infinite

    R = E.get("regime").module

    for (activation, sigma_b), values in R._SOLVED.items():
        chis = [infinite.chi1(activation, math.sqrt(v), sigma_b) for v in values]
        assert chis == pytest.approx(R.DEFAULT_CHI1, rel=1e-3)
    ordered, chaotic = R.default_sigma_w2("sigmoid")[0], R.default_sigma_w2("sigmoid")[2]
    rows = R.regime(["sigmoid"], [6], [ordered, chaotic], width=16, dim=8, n_train=12, n_test=8, n_inits=3,
                    n_steps=60)
    assert [r["phase"] for r in rows] == ["ordered", "chaotic"]
    o, c = rows
    assert c["kernel_distance"] > 2 * o["kernel_distance"] and c["kernel_change"] > 2 * o["kernel_change"]
    assert o["loss_ratio"] > c["loss_ratio"]


@pytest.mark.parametrize("kwargs,word", [
    (dict(activations=["swish"]), "activations must be among"), (dict(depths=[0]), "depths"),
    (dict(sigma_w2={"relu": [1.0]}), "sigma_w2 has no values for the activations"),
    (dict(sigma_w2=[-1.0]), "sigma_w2"), (dict(lr_scale=2.5), "lr_scale"), (dict(n_inits=1), "n_inits"),
])
def test_regime_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        E.regime(**kwargs)
# --- end regime ---
