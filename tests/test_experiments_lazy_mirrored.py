"""The lazy and mirrored experiments end to end at tiny size: the files
`fastntk run` writes, and the direction of each finding where a tiny size
shows it."""

import json

import pytest
import torch

from fastntk import experiments as E
from fastntk.cli import main


def _outputs(out, name):
    for f in (f"{name}.csv", f"{name}_summary.csv", f"{name}.png", f"{name}.json"):
        assert (out / f).stat().st_size > 0
    with open(out / f"{name}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    record = json.loads((out / f"{name}.json").read_text())
    assert record["experiment"] == name and "torch" in record["versions"]
    return E.load_csv(str(out / f"{name}.csv")), record


def test_lazy_tiny(tmp_path, capsys):
    assert main(["run", "lazy", "--width", "16", "512", "--seeds", "2", "--steps", "30", "--lr", "0.5",
                 "--n-train", "16", "--n-test", "50", "--out", str(tmp_path), "--no-progress"]) == 0
    rows, record = _outputs(tmp_path, "lazy")
    assert record["settings"]["widths"] == [16, 512] and len(rows) == 4
    assert "fitted slopes vs width" in capsys.readouterr().out
    for r in rows:
        # the linearized model trained by SGD is the closed-form prediction at t = steps
        assert r["linearized_vs_closed_form"] < 1e-9
        assert r["test_mse_network"] > 0 and r["dist_network_linearized"] > 0
    summary = {r["width"]: r for r in E.load_csv(str(tmp_path / "lazy_summary.csv"))}
    # the finding: the network approaches its linearized model as width grows (theory: width^-1/2, 5.7x here)
    assert summary[512]["dist_network_linearized"] < summary[16]["dist_network_linearized"] / 2
    assert summary[16]["dist_network_linearized_slope"] < -0.2
    # and so do the weights move less, relatively
    w = {(r["width"], r["seed"]): r["weight_change"] for r in rows}
    assert all(w[(512, s)] < w[(16, s)] for s in (0, 1))


def test_mirrored_tiny(tmp_path, capsys):
    assert main(["run", "mirrored", "--n-train", "8", "64", "--seeds", "2", "--width", "256", "--steps", "30",
                 "--lr", "0.5", "--n-test", "200", "--out", str(tmp_path), "--no-progress"]) == 0
    rows, record = _outputs(tmp_path, "mirrored")
    assert record["settings"]["n_trains"] == [8, 64] and len(rows) == 2 * 2 * 2
    assert "mirrored init: test MSE" in capsys.readouterr().out
    for r in rows:
        # mirrored: exactly zero at init; standard: a random function of order one
        assert r["f0_rms"] == 0.0 if r["init"] == "mirrored" else r["f0_rms"] > 0.3
        # the trained network follows NTK regression from its own f0
        assert r["dist_network_ntk"] < 0.2
    summary = {(r["init"], r["n_train"]): r for r in E.load_csv(str(tmp_path / "mirrored_summary.csv"))}
    # the finding: the f0 term makes the standard init generalize worse
    assert summary[("mirrored", 64)]["test_mse_network"] < summary[("standard", 64)]["test_mse_network"]
    assert summary[("mirrored", 64)]["test_mse_ntk"] < summary[("standard", 64)]["test_mse_ntk"]


def test_sphere_regression_shapes_and_reuse():
    x, y, xt, yt = E.sphere_regression(10, 7, 3, seed=1)
    assert x.shape == (10, 3) and y.shape == (10, 1) and xt.shape == (7, 3) and yt.shape == (7, 1)
    assert torch.allclose(x.norm(dim=1), torch.full((10,), 3 ** 0.5, dtype=torch.float64))
    x2, y2, xt2, yt2 = E.sphere_regression(20, 7, 3, seed=1)
    assert torch.equal(xt, xt2) and torch.equal(yt, yt2)  # the test set does not depend on n_train


@pytest.mark.parametrize("fn,kwargs,word", [
    (E.lazy, dict(widths=[0]), "widths"),
    (E.lazy, dict(n_steps=0), "n_steps"),
    (E.lazy, dict(lr=-1.0), "lr"),
    (E.mirrored, dict(n_trains=[1]), "n_trains"),
    (E.mirrored, dict(width=0), "width"),
    (E.mirrored, dict(n_seeds=0), "n_seeds"),
])
def test_bad_arguments(fn, kwargs, word):
    with pytest.raises(ValueError, match=word):
        fn(**kwargs)


def test_plots_refuse_other_tables(tmp_path):
    with pytest.raises(ValueError, match="plot_lazy"):
        E.plot_lazy([{"width": 1}], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="summarize_mirrored"):
        E.plot_mirrored([{"init": "standard"}], str(tmp_path / "x.png"))


@pytest.mark.parametrize("name,words", [
    ("lazy", ("linearize", "kernel regression", "width^-1/2", "MSML 2021", "--seeds", "Defaults")),
    ("mirrored", ("Chen, Li & Lin", "mirrored=True", "n^(-3/(d+3))", "--n-train", "Defaults")),
])
def test_help_explains(name, words, capsys):
    with pytest.raises(SystemExit):
        main(["run", name, "--help"])
    text = capsys.readouterr().out
    for word in words:
        assert word in text
