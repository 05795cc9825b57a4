"""fastntk.training: the tracker's statistics on hand-built kernels, a tracked
run bit-identical to an untracked one, the linearized model to first order,
and the closed-form predictions against the linearized model trained step by
step and against kernel regression from torch.func Jacobians."""

import math

import pytest
import torch
from torch import nn

import fastntk
from fastntk.training import class_block_means, kernel_alignment, log_steps, relative_change, spectrum

from conftest import DEVICES, oracle_ntk, rel_err


# ---------------------------------------------------------------------------
# statistics on hand-built kernels


def test_alignment_hand_built():
    labels = torch.tensor([0, 0, 1, 1, 1])
    y = torch.nn.functional.one_hot(labels).double()
    assert kernel_alignment(y @ y.T, labels) == pytest.approx(1.0, abs=1e-15)
    # identity: <I, YY^T> = N, ||I|| = sqrt(N), ||YY^T|| = sqrt(2^2 + 3^2)
    assert kernel_alignment(torch.eye(5), labels) == pytest.approx(5 / (math.sqrt(5) * math.sqrt(13)), rel=1e-14)
    # real targets: K = y y^T aligns perfectly, K = -y y^T anti-aligns
    t = torch.tensor([1.0, -2.0, 0.5])
    assert kernel_alignment(torch.outer(t, t), t) == pytest.approx(1.0)
    assert kernel_alignment(-torch.outer(t, t), t) == pytest.approx(-1.0)
    # centering removes a constant offset: all-ones + YY^T (two balanced classes) aligns fully once centered
    lab = torch.tensor([0, 0, 1, 1])
    yb = torch.nn.functional.one_hot(lab).double()
    k = torch.ones(4, 4) * 3 + yb @ yb.T
    assert kernel_alignment(k, lab) < 0.95
    assert kernel_alignment(k, lab, centered=True) == pytest.approx(1.0, abs=1e-12)


def test_block_means_hand_built():
    labels = torch.tensor([2, 2, 2, 7, 7])
    same = labels[:, None] == labels[None, :]
    k = torch.where(same, torch.tensor(3.0), torch.tensor(0.5)).double()
    k.fill_diagonal_(100.0)  # the diagonal is left out of "within"
    within, between, ratio = class_block_means(k, labels)
    assert (within, between, ratio) == (3.0, 0.5, 6.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        class_block_means(k, labels[:3])


def test_spectrum_and_relative_change_hand_built():
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    k = q @ torch.diag(torch.tensor([0.5, 2.0, 8.0], dtype=torch.float64)) @ q.T
    lo, hi, cond = spectrum(k)
    assert lo == pytest.approx(0.5, rel=1e-12) and hi == pytest.approx(8.0, rel=1e-12)
    assert cond == pytest.approx(16.0, rel=1e-12)
    assert spectrum(torch.zeros(2, 2))[2] == math.inf
    assert relative_change(2 * k, k) == pytest.approx(1.0)
    assert relative_change(k, k) == 0.0


def test_log_steps():
    assert log_steps(120) == [0, 1, 2, 5, 10, 20, 50, 100]
    tr = fastntk.NTKTracker(fastntk.MLP([2, 4, 1], seed=0), torch.randn(3, 2), record_init=False)
    assert [s for s in range(1001) if tr.wants(s)] == log_steps(1000)


# ---------------------------------------------------------------------------
# the tracker


def _digits_like(n_per_class=4, n_classes=3, dim=6, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g, dtype=dtype)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = centers[labels] + 0.3 * torch.randn(len(labels), dim, generator=g, dtype=dtype)
    return x.to(device), labels.to(device)


def _train(model, x, labels, n_steps, tracker_kwargs=None, dropout_seed=123):
    """Adam on cross-entropy; returns (final state dict, tracker or None)."""
    torch.manual_seed(dropout_seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(dropout_seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    tracker = None if tracker_kwargs is None else fastntk.NTKTracker(model, x, labels, **tracker_kwargs)
    for step in range(1, n_steps + 1):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), labels)
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.step(step)
    return model, opt, tracker


@pytest.mark.parametrize("device", [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES])
def test_tracked_training_is_bit_identical(device):
    x, labels = _digits_like(device=device, dtype=torch.float32)

    def make():
        torch.manual_seed(0)
        # dropout draws random numbers in every training step: a tracker that drew any
        # (or left the model in eval mode) would change every later step
        return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)).to(device)

    plain, opt_a, _ = _train(make(), x, labels, 25)
    rng_plain = torch.get_rng_state()
    tracked, opt_b, tracker = _train(make(), x, labels, 25, dict(every=1, keep_kernels=True))
    assert torch.equal(torch.get_rng_state(), rng_plain)
    for (n, a), (_, b) in zip(plain.named_parameters(), tracked.named_parameters()):
        assert torch.equal(a, b), n
        assert torch.equal(a.grad, b.grad), n
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert tracked.training and all(m.training for m in tracked.modules())
    assert len(tracker.history) == 26 and sorted(tracker.kernels) == list(range(26))


def test_tracker_records_what_the_engine_computes():
    x, labels = _digits_like()
    net = fastntk.MLP([6, 16, 16, 3], activation="tanh", dtype=torch.float64, seed=3)
    theta0 = fastntk.ntk(net, x, outputs="trace")
    tracker = fastntk.NTKTracker(net, x, labels, steps=[3, 7], keep_kernels=[7])
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    for step in range(1, 9):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), labels).backward()
        opt.step()
        tracker.step(step)
        if step == 7:
            theta7 = fastntk.ntk(net, x, outputs="trace")
    assert [r["step"] for r in tracker.history] == [0, 3, 7]
    row = tracker.history[-1]
    # the tracker sums the layerwise terms: equal to the direct kernel up to rounding
    assert rel_err(tracker.kernels[7], theta7) < 1e-13 and list(tracker.kernels) == [7]
    assert row["rel_change"] == pytest.approx(relative_change(theta7, theta0), rel=1e-12)
    assert row["rel_change"] > 0 and tracker.history[0]["rel_change"] == 0
    assert row["centered_alignment"] == pytest.approx(kernel_alignment(theta7, labels, centered=True), rel=1e-12)
    w, b, ratio = class_block_means(theta7, labels)
    assert (row["within_class"], row["between_class"]) == pytest.approx((w, b), rel=1e-12)
    assert row["lambda_min"] == pytest.approx(torch.linalg.eigvalsh(theta7)[0].item(), rel=1e-9)
    shares = [row[f"layer_share_{l}"] for l in (1, 2, 3)]
    assert sum(shares) == pytest.approx(1.0, abs=1e-12) and all(s > 0 for s in shares)


def test_tracker_full_outputs_and_plot(tmp_path):
    x, labels = _digits_like()
    net = fastntk.MLP([6, 12, 3], dtype=torch.float64, seed=1)
    y = torch.nn.functional.one_hot(labels).double()
    tracker = fastntk.NTKTracker(net, x, y, labels=labels, outputs="full", keep_kernels=[0])
    full = fastntk.ntk(net, x).permute(0, 2, 1, 3).reshape(36, 36)
    assert rel_err(tracker.kernels[0], full) < 1e-13
    assert tracker.history[0]["alignment"] == pytest.approx(kernel_alignment(full, y.reshape(-1)), rel=1e-12)
    assert tracker.history[0]["within_class"] == pytest.approx(
        class_block_means(fastntk.ntk(net, x, outputs="trace"), labels)[0], rel=1e-12)
    path = tracker.plot(str(tmp_path / "t.png"))
    assert open(path, "rb").read(4) == b"\x89PNG"
    assert tracker.save_csv(str(tmp_path / "t.csv"))


@pytest.mark.parametrize("kwargs,word", [
    (dict(steps="linear"), "steps must be 'log'"),
    (dict(every=0), "every must be a positive int"),
    (dict(steps=[1, -2]), "steps must hold non-negative ints"),
    (dict(outputs="per_output"), "outputs must be one of"),
    (dict(labels=torch.tensor([0, 1])), r"labels must have shape \(3,\)"),
])
def test_tracker_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        fastntk.NTKTracker(fastntk.MLP([2, 4, 1], seed=0), torch.randn(3, 2), **kwargs)


# ---------------------------------------------------------------------------
# linearize and ntk_predict


def test_linearized_equals_network_to_first_order():
    net = fastntk.MLP([3, 24, 24, 2], activation="tanh", sigma_b=0.3, dtype=torch.float64, seed=0)
    lin = fastntk.linearize(net)
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(lin(x).detach(), net(x).detach())
    direction = [torch.randn_like(p) for p in net.parameters()]
    errs, fd_errs = [], []
    for eps in (1e-2, 1e-3):
        moved = fastntk.MLP([3, 24, 24, 2], activation="tanh", sigma_b=0.3, dtype=torch.float64, seed=0)
        back = fastntk.MLP([3, 24, 24, 2], activation="tanh", sigma_b=0.3, dtype=torch.float64, seed=0)
        with torch.no_grad():
            for p, q, w, d in zip(moved.parameters(), back.parameters(), lin.weights, direction):
                p += eps * d
                q -= eps * d
                w += eps * d
        f_lin = lin(x).detach()
        errs.append((moved(x) - f_lin).abs().max().item())
        # J d from central finite differences vs the jvp: agree to O(eps^2)
        fd = (moved(x) - back(x)).detach() / 2
        fd_errs.append((fd - (f_lin - net(x).detach())).abs().max().item())
        with torch.no_grad():
            for w, d in zip(lin.weights, direction):
                w -= eps * d
    # the linearization error is second order: 10x smaller eps, ~100x smaller error
    assert 50 < errs[0] / errs[1] < 200, errs
    assert 300 < fd_errs[0] / fd_errs[1] < 3000, fd_errs  # central differences: third order


@pytest.mark.parametrize("widths,parametrization,bias", [
    ([4, 32, 1], "standard", True), ([4, 16, 16, 3], "ntk", True), ([4, 20, 2], "ntk", False)])
def test_gd_of_linearized_model_equals_closed_form(widths, parametrization, bias):
    net = fastntk.MLP(widths, activation="relu", parametrization=parametrization, sigma_w=1.4, bias=bias,
                      dtype=torch.float64, seed=2)
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    y = torch.randn(7, widths[-1], generator=g, dtype=torch.float64)
    lr, steps = 0.05, [0, 1, 10, 40]
    pred = fastntk.ntk_predict(net, x, y, xt, t=steps, lr=lr, method="gd")
    lin = fastntk.linearize(net)
    opt = torch.optim.SGD(lin.parameters(), lr=lr)
    for s in range(steps[-1] + 1):
        if s in steps:
            i = steps.index(s)
            assert rel_err(pred.train[i], lin(x)) < 1e-10 and rel_err(pred.test[i], lin(xt)) < 1e-10
        opt.zero_grad()
        (((lin(x) - y) ** 2).sum() / (2 * len(x))).backward()
        opt.step()
    # gradient flow is the small-lr limit of gradient descent at equal lr * steps
    flow = fastntk.ntk_predict(net, x, y, xt, t=[40.0], lr=lr, method="flow")
    fine = fastntk.ntk_predict(net, x, y, xt, t=[4000], lr=lr / 100, method="gd")
    assert rel_err(fine.test[0], flow.test[0]) < 1e-3 * 5


def test_infinite_time_is_kernel_regression_from_f0():
    net = fastntk.MLP([5, 64, 64, 2], activation="tanh", parametrization="standard", sigma_w=1.2, sigma_b=0.2,
                      dtype=torch.float64, seed=4)
    x, xt = torch.randn(6, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    y = torch.randn(6, 2, dtype=torch.float64)
    flat = lambda k: k.permute(0, 2, 1, 3).reshape(k.shape[0] * 2, k.shape[1] * 2)
    kxx, ktx = flat(oracle_ntk(net, x)), flat(oracle_ntk(net, xt, x))  # torch.func Jacobians
    with torch.no_grad():
        f0, f0t = net(x), net(xt)
    for ridge in (0.0, 0.3):
        expected = f0t + (ktx @ torch.linalg.solve(kxx + ridge * torch.eye(12, dtype=torch.float64),
                                                   (y - f0).reshape(-1))).reshape(4, 2)
        for method in ("flow", "gd"):
            pred = fastntk.ntk_predict(net, x, y, xt, t=math.inf, lr=0.01, ridge=ridge, method=method)
            assert rel_err(pred.test[0], expected) < 1e-9
    exact = fastntk.ntk_predict(net, x, y, None, t=[0, math.inf])
    assert rel_err(exact.train[1], y) < 1e-9 and torch.equal(exact.train[0], f0) and exact.test is None


@pytest.mark.parametrize("kwargs,word", [
    (dict(method="adam"), "method must be one of"), (dict(lr=0.0), "lr must be"),
    (dict(ridge=-1.0), "ridge must be"), (dict(t=[-1.0]), "t must be times"),
    (dict(t=[1.5], method="gd"), "t must hold ints"), (dict(t=[math.inf], lr=1e6, method="gd"), "diverges"),
])
def test_ntk_predict_bad_arguments(kwargs, word):
    net = fastntk.MLP([2, 8, 1], dtype=torch.float64, seed=0)
    with pytest.raises(ValueError, match=word):
        fastntk.ntk_predict(net, torch.randn(4, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64),
                            **kwargs)


# ---------------------------------------------------------------------------
# mirrored initialization


@pytest.mark.parametrize("widths,activation,parametrization,bias", [
    ([3, 16, 1], "relu", "standard", True), ([3, 12, 12, 4], "tanh", "ntk", True), ([3, 10, 2], "erf", "ntk", False)])
def test_mirrored_is_zero_at_init_and_has_the_copy_kernel(widths, activation, parametrization, bias):
    kw = dict(activation=activation, parametrization=parametrization, sigma_w=1.5, sigma_b=0.2, bias=bias,
              dtype=torch.float64, seed=5)
    mirrored, single = fastntk.MLP(widths, mirrored=True, **kw), fastntk.MLP(widths, **kw)
    assert isinstance(mirrored, fastntk.MirroredMLP)
    assert sum(p.numel() for p in mirrored.parameters()) == 2 * sum(p.numel() for p in single.parameters())
    x, x2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(mirrored(x), torch.zeros(5, widths[-1], dtype=torch.float64))
    theta = fastntk.ntk(mirrored, x, x2)
    assert torch.equal(theta, fastntk.ntk(single, x, x2))  # the single copy's kernel, exactly
    assert rel_err(theta, oracle_ntk(mirrored, x, x2)) < 1e-10  # torch.func over both copies
    assert rel_err(fastntk.ntk_diag(mirrored, x, outputs="trace"),
                   torch.einsum("iikk->i", oracle_ntk(mirrored, x))) < 1e-10
    # trained, the copies differ: still (Theta_1 + Theta_2) / 2, against torch.func
    opt = torch.optim.SGD(mirrored.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        ((mirrored(x) - 1.0) ** 2).sum().backward()
        opt.step()
    assert not torch.equal(mirrored(x), torch.zeros_like(mirrored(x)))
    assert rel_err(fastntk.ntk(mirrored, x, x2), oracle_ntk(mirrored, x, x2)) < 1e-10
    lw = fastntk.ntk(mirrored, x, layerwise=True, outputs="trace")
    assert lw.shape[:2] == (len(widths) - 1, 2)
    assert rel_err(lw.sum((0, 1)), fastntk.ntk(mirrored, x, outputs="trace")) < 1e-12


def test_mirrored_refusals_name_the_problem():
    with pytest.raises(TypeError, match="mirrored must be a bool"):
        fastntk.MLP([2, 3, 1], mirrored="yes")
    with pytest.raises(TypeError, match="a mirrored MLP is two networks"):
        fastntk.parse_model(fastntk.MLP([2, 3, 1], mirrored=True))


def test_ntk_prediction_of_a_mirrored_network_starts_at_zero():
    net = fastntk.MLP([2, 32, 1], parametrization="standard", sigma_w=1.4, mirrored=True, dtype=torch.float64,
                      seed=0)
    x, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    pred = fastntk.ntk_predict(net, x, y, x[:2], t=[0, math.inf])
    assert torch.equal(pred.f0_train, torch.zeros(5, 1, dtype=torch.float64))
    assert rel_err(pred.train[1, :, 0], y) < 1e-9


def test_mirrored_with_bounded_memory_and_its_refusals():
    net = fastntk.MLP([3, 6, 2], activation="tanh", mirrored=True, dtype=torch.float64, seed=1)
    x = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(fastntk.ntk(net, x, block_size=2), fastntk.ntk(net, x), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(fastntk.ntk_diag(net, x, block_size=2), fastntk.ntk_diag(net, x),
                               rtol=1e-12, atol=1e-13)
    with pytest.raises(TypeError, match="out= and resume= are not supported for a model made of several"):
        fastntk.ntk(net, x, out=torch.zeros(5, 5, 2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="a mirrored MLP is two networks"):
        fastntk.ntk_vp(net, x, torch.ones(5))
