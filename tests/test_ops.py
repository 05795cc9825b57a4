"""Each op against its pure-PyTorch reference, torch.library.opcheck, bad
inputs (C++ messages), torch.compile, and the fallback registration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastntk
from fastntk import _ops, _reference
from fastntk.ntk import _network_arguments
from conftest import EMULATION, rel_err

ACTS = [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}), ("tanh", {}), ("sigmoid", {}),
        ("gelu", {}), ("gelu_tanh", {}), ("silu", {}), ("softplus", {"beta": 2.0, "threshold": 1.0}),
        ("erf", {}), ("identity", {})]
OUTPUTS = ["full", "trace", "per_output"]


def rand(*shape, device, dtype, noncontig=False, seed=[0]):
    seed[0] += 1
    g = torch.Generator().manual_seed(seed[0])
    if noncontig:  # same values, transposed storage
        t = torch.randn(*reversed(shape), generator=g, dtype=dtype).to(device)
        return t.permute(*reversed(range(len(shape))))
    return torch.randn(*shape, generator=g, dtype=dtype).to(device)


def out_shape(outputs, n1, n2, k):
    lead = (n1,) if n2 is None else (n1, n2)
    return {"full": lead + (k, k), "trace": lead, "per_output": lead + (k,)}[outputs]


def zero_kink(h):
    """Put exact zeros in h so relu/leaky_relu are evaluated at the kink."""
    h = h.clone()
    h.view(-1)[:: 3] = 0.0
    return h


def check_in_place_op(op, reference, samples, dtype):
    """Run an in-place op and its reference on copies of each sample's out
    (args[0]); they must agree to 1e-12 (float64) or 1e-5 (float32)."""
    for args in samples:
        got, ref = args[0].clone(), args[0].clone()
        op(got, *args[1:])
        reference(ref, *args[1:])
        if got.numel():
            assert rel_err(got, ref) <= (1e-12 if dtype == torch.float64 else 1e-5), args[-1]


# (N, K, n_next, n): odd sizes, K = 1 and K > 1, zero-size batches.
BACKPROP_SHAPES = [(5, 3, 7, 6), (4, 1, 3, 9), (1, 2, 1, 1), (0, 3, 4, 5), (3, 2, 4, 0)]


class TestBackpropDelta:
    @staticmethod
    def sample_inputs(device, dtype):
        for i, (n, k, n_next, n_cur) in enumerate(BACKPROP_SHAPES):
            for act, params in ACTS:
                noncontig = i % 2 == 1
                yield (rand(n, k, n_next, device=device, dtype=dtype, noncontig=noncontig),
                       rand(n_next, n_cur, device=device, dtype=dtype, noncontig=noncontig),
                       zero_kink(3 * rand(n, n_cur, device=device, dtype=dtype)), 0.7, act), params

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_reference(self, device, dtype):
        for args, kwargs in self.sample_inputs(device, dtype):
            got = _ops.backprop_delta(*args, **kwargs)
            ref = _reference.backprop_delta(*args, **kwargs)
            assert got.shape == ref.shape
            if got.numel():
                tol = 1e-12 if dtype == torch.float64 else 1e-5
                assert rel_err(got, ref) <= tol, args[-1]

    def test_matches_autograd(self, device):
        """Independent of the reference: d/dh of <phi(h), g> via autograd."""
        for act, params in ACTS:
            spec = fastntk.Activation(act, **params)
            h = zero_kink(2 * rand(4, 6, device=device, dtype=torch.float64))
            w = rand(5, 6, device=device, dtype=torch.float64)
            dn = rand(4, 1, 5, device=device, dtype=torch.float64)
            hh = h.clone().requires_grad_()
            (spec(hh) * (0.7 * dn[:, 0] @ w)).sum().backward()
            got = _ops.backprop_delta(dn, w, h, 0.7, *spec.op_args())
            assert rel_err(got[:, 0], hh.grad) <= 1e-12, act

    @pytest.mark.no_emulation  # minutes under the emulator; test_bias_out_opcheck_and_errors keeps a sample
    def test_opcheck(self, device):
        for args, kwargs in self.sample_inputs(device, torch.float64):
            torch.library.opcheck(_ops._library().backprop_delta.default, args, kwargs)

    def test_compile(self, device):
        f = torch.compile(lambda d, w, h: _ops.backprop_delta(d, w, h, 0.5, "gelu"),
                          fullgraph=True, backend="aot_eager")
        d, w, h = (rand(3, 2, 4, device=device, dtype=torch.float64), rand(4, 5, device=device, dtype=torch.float64),
                   rand(3, 5, device=device, dtype=torch.float64))
        torch.testing.assert_close(f(d, w, h), _reference.backprop_delta(d, w, h, 0.5, "gelu"))

    @pytest.mark.parametrize("args,match", [
        (lambda: (torch.zeros(2, 3), torch.zeros(3, 4), torch.zeros(2, 4)), "delta_next must have 3 dimensions, got shape \\(2, 3\\)"),
        (lambda: (torch.zeros(2, 1, 3), torch.zeros(5, 4), torch.zeros(2, 4)), r"weight.size\(0\) must equal delta_next.size\(2\) \(3\), got shape \(5, 4\)"),
        (lambda: (torch.zeros(2, 1, 3), torch.zeros(3, 4), torch.zeros(3, 4)), r"h.size\(0\) must equal delta_next.size\(0\)"),
        (lambda: (torch.zeros(2, 1, 3), torch.zeros(3, 4), torch.zeros(2, 5)), r"h.size\(1\) must equal weight.size\(1\)"),
        (lambda: (torch.zeros(2, 1, 3), torch.zeros(3, 4).double(), torch.zeros(2, 4)), "delta_next and weight must have the same dtype"),
        (lambda: (torch.zeros(2, 1, 3, dtype=torch.int32), torch.zeros(3, 4, dtype=torch.int32), torch.zeros(2, 4, dtype=torch.int32)), "delta_next must be float32 or float64, got Int"),
    ])
    def test_bad_inputs(self, args, match):
        with pytest.raises(RuntimeError, match=match):
            _ops._library().backprop_delta(*args(), 1.0, "relu")

    def test_bad_activation(self):
        with pytest.raises(RuntimeError, match="activation must be one of .*got 'swish'"):
            _ops._library().backprop_delta(torch.zeros(2, 1, 3), torch.zeros(3, 4), torch.zeros(2, 4), 1.0, "swish")

    def test_refuses_grad(self):
        d = torch.zeros(2, 1, 3, requires_grad=True)
        with pytest.raises(RuntimeError, match="delta_next requires grad.*not differentiable"):
            _ops.backprop_delta(d, torch.zeros(3, 4), torch.zeros(2, 4), 1.0, "relu")


# (N1, N2, K, p, n)
ACC_SHAPES = [(5, 3, 3, 7, 6), (4, 6, 1, 2, 9), (1, 1, 2, 1, 1), (3, 2, 4, 5, 3), (0, 3, 2, 4, 5), (3, 0, 2, 4, 5)]


class TestNtkAccumulate:
    @staticmethod
    def sample_inputs(device, dtype):
        for i, (n1, n2, k, p, n) in enumerate(ACC_SHAPES):
            for outputs in OUTPUTS:
                for ws, bs in ((0.3, 0.2), (0.0, 0.5), (1.1, 0.0)):
                    nc = i % 2 == 0
                    yield (rand(*out_shape(outputs, n1, n2, k), device=device, dtype=dtype),
                           rand(n1, p, device=device, dtype=dtype, noncontig=nc), rand(n2, p, device=device, dtype=dtype),
                           rand(n1, k, n, device=device, dtype=dtype, noncontig=nc), rand(n2, k, n, device=device, dtype=dtype),
                           ws, bs, outputs)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_reference(self, device, dtype):
        check_in_place_op(_ops.ntk_accumulate, _reference.ntk_accumulate, self.sample_inputs(device, dtype), dtype)

    def test_large_blocks(self):
        """Enough rows that the CPU kernel splits x1 into several row blocks."""
        n1, n2, k, n = 700, 90, 10, 3
        args = (rand(n1, 4, device="cpu", dtype=torch.float64), rand(n2, 4, device="cpu", dtype=torch.float64),
                rand(n1, k, n, device="cpu", dtype=torch.float64), rand(n2, k, n, device="cpu", dtype=torch.float64))
        got, ref = torch.zeros(n1, n2, k, k, dtype=torch.float64), torch.zeros(n1, n2, k, k, dtype=torch.float64)
        _ops.ntk_accumulate(got, *args, 0.5, 0.1, "full")
        _reference.ntk_accumulate(ref, *args, 0.5, 0.1, "full")
        assert rel_err(got, ref) <= 1e-12

    @pytest.mark.parametrize("outputs", OUTPUTS)
    def test_symmetric_same_tensors(self, device, outputs):
        """a1 is a2 and d1 is d2 takes the triangle-and-mirror path: several
        row blocks, diagonal blocks and mirrored blocks all checked."""
        n, k = 150, 3
        a = rand(n, 5, device=device, dtype=torch.float64)
        d = rand(n, k, 4, device=device, dtype=torch.float64)
        got = rand(*out_shape(outputs, n, n, k), device=device, dtype=torch.float64)
        ref = got.clone()
        _ops.ntk_accumulate(got, a, a, d, d, 0.7, 0.2, outputs)
        _reference.ntk_accumulate(ref, a, a, d.clone(), d.clone(), 0.7, 0.2, outputs)
        assert rel_err(got, ref) <= 1e-12

    @pytest.mark.parametrize("symmetric", [False, True])
    def test_bias_out_split(self, device, symmetric):
        """With bias_out the weight and bias terms land in separate outputs,
        each equal to the reference with the other scale set to 0."""
        for outputs in OUTPUTS:
            n1, n2, k = (150, 150, 2) if symmetric else (7, 5, 3)
            a1 = rand(n1, 4, device=device, dtype=torch.float64)
            d1 = rand(n1, k, 6, device=device, dtype=torch.float64)
            a2, d2 = (a1, d1) if symmetric else (rand(n2, 4, device=device, dtype=torch.float64),
                                                 rand(n2, k, 6, device=device, dtype=torch.float64))
            w_out = rand(*out_shape(outputs, n1, n2, k), device=device, dtype=torch.float64)
            b_out = rand(*out_shape(outputs, n1, n2, k), device=device, dtype=torch.float64)
            w_ref, b_ref = w_out.clone(), b_out.clone()
            _ops.ntk_accumulate(w_out, a1, a2, d1, d2, 0.7, 0.3, outputs, bias_out=b_out)
            _reference.ntk_accumulate(w_ref, a1, a2.clone(), d1, d2.clone(), 0.7, 0.0, outputs)
            _reference.ntk_accumulate(b_ref, a1, a2.clone(), d1, d2.clone(), 0.0, 0.3, outputs)
            assert rel_err(w_out, w_ref) <= 1e-12, outputs
            assert rel_err(b_out, b_ref) <= 1e-12, outputs

    @pytest.mark.parametrize("outputs", OUTPUTS)
    def test_bias_out_symmetric_is_exact(self, device, outputs):
        """The layerwise split on the mirror path: both outputs exactly
        symmetric (the K x K tiles of diagonal pairs included)."""
        n, k = 140, 6
        a, d = rand(n, 4, device=device, dtype=torch.float64), rand(n, k, 7, device=device, dtype=torch.float64)
        w_out = torch.zeros(out_shape(outputs, n, n, k), device=device, dtype=torch.float64)
        b_out = torch.zeros_like(w_out)
        _ops.ntk_accumulate(w_out, a, a, d, d, 0.7, 0.3, outputs, bias_out=b_out)
        for t in (w_out, b_out):
            tt = t.transpose(0, 1)
            assert torch.equal(t, tt.transpose(2, 3) if outputs == "full" else tt)

    def test_bias_out_opcheck_and_errors(self, device):
        for args in list(self.sample_inputs(device, torch.float64))[::5]:
            torch.library.opcheck(_ops._library().ntk_accumulate.default, args + (args[0].clone(),))
        z = lambda *s: torch.zeros(*s, device=device)
        with pytest.raises(RuntimeError, match=r"bias_out must have the shape of out \(2, 3\), got shape \(3, 2\)"):
            _ops._library().ntk_accumulate(z(2, 3), z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace", z(3, 2))
        out = z(2, 3)
        with pytest.raises(RuntimeError, match="bias_out must be a different tensor from out"):
            _ops._library().ntk_accumulate(out, z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace", out)

    @pytest.mark.no_emulation  # minutes under the emulator; test_bias_out_opcheck_and_errors keeps a sample
    def test_opcheck(self, device):
        for args in self.sample_inputs(device, torch.float64):
            torch.library.opcheck(_ops._library().ntk_accumulate.default, args)

    def test_compile(self, device):
        def f(out, a, d):
            _ops.ntk_accumulate(out, a, a, d, d, 0.5, 0.1, "full")
            return out
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        a, d = rand(3, 4, device=device, dtype=torch.float64), rand(3, 2, 5, device=device, dtype=torch.float64)
        ref = torch.zeros(3, 3, 2, 2, dtype=torch.float64, device=device)
        _reference.ntk_accumulate(ref, a, a, d, d, 0.5, 0.1, "full")
        torch.testing.assert_close(cf(torch.zeros_like(ref), a, d), ref)

    def test_compile_bias_out(self, device):
        def f(out, bias_out, a, d):
            _ops.ntk_accumulate(out, a, a, d, d, 0.5, 0.1, "per_output", bias_out=bias_out)
            return out, bias_out
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        a, d = rand(3, 4, device=device, dtype=torch.float64), rand(3, 2, 5, device=device, dtype=torch.float64)
        w_ref = torch.zeros(3, 3, 2, dtype=torch.float64, device=device)
        b_ref = torch.zeros_like(w_ref)
        _reference.ntk_accumulate(w_ref, a, a, d, d, 0.5, 0.1, "per_output", bias_out=b_ref)
        w, b = cf(torch.zeros_like(w_ref), torch.zeros_like(w_ref), a, d)
        torch.testing.assert_close(w, w_ref)
        torch.testing.assert_close(b, b_ref)

    @pytest.mark.parametrize("outputs,shape,match", [
        ("full", (2, 3, 2), r"out must have shape \[2, 3, 2, 2\] for this outputs mode, got shape \(2, 3, 2\)"),
        ("trace", (2, 3, 2, 2), r"out must have shape \[2, 3\]"),
        ("nope", (2, 3), "outputs must be one of full, trace, per_output; got 'nope'"),
    ])
    def test_bad_out(self, outputs, shape, match):
        with pytest.raises(RuntimeError, match=match):
            _ops._library().ntk_accumulate(torch.zeros(shape), torch.zeros(2, 4), torch.zeros(3, 4),
                                             torch.zeros(2, 2, 5), torch.zeros(3, 2, 5), 1.0, 1.0, outputs)

    def test_out_overlapping_an_input_is_refused(self):
        z = torch.zeros
        out = z(2, 3)
        with pytest.raises(RuntimeError, match="single memory location"):
            _ops._library().ntk_accumulate(out, out, z(3, 3), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace")
        with pytest.raises(RuntimeError, match="single memory location"):
            _ops._library().ntk_accumulate(out, z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace",
                                             out.view(2, 3))
        a1 = z(2, 3)  # bias_out would be written while a1 is still read
        with pytest.raises(RuntimeError, match="single memory location"):
            _ops._library().ntk_accumulate(out, a1, z(3, 3), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace", a1)

    def test_bad_shapes_and_dtypes(self):
        z = torch.zeros
        with pytest.raises(RuntimeError, match=r"a2.size\(1\) must equal a1.size\(1\) \(4\), got shape \(3, 5\)"):
            _ops._library().ntk_accumulate(z(2, 3), z(2, 4), z(3, 5), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace")
        with pytest.raises(RuntimeError, match=r"d2.size\(2\) must equal d1.size\(2\)"):
            _ops._library().ntk_accumulate(z(2, 3), z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 6), 1.0, 1.0, "trace")
        with pytest.raises(RuntimeError, match="must have the dtype of out"):
            _ops._library().ntk_accumulate(z(2, 3), z(2, 4).double(), z(3, 4), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace")
        with pytest.raises(RuntimeError, match="out must be contiguous"):
            _ops._library().ntk_accumulate(z(3, 2).t(), z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 5), 1.0, 1.0, "trace")


# (N1, N2, K, [(p, n) per layer]): one layer, several, more than one pass
# (8 layers per pass), a layer of width 1, zero-size batches.
LAYERS_SHAPES = [(5, 3, 3, [(7, 6)]), (4, 6, 1, [(2, 9), (9, 4), (4, 1)]), (6, 6, 2, [(3, 2)] * 11),
                 (1, 2, 4, [(1, 1), (1, 3)]), (0, 3, 2, [(4, 5), (5, 2)]), (3, 0, 2, [(4, 5)])]


def layer_tensors(n1, n2, k, dims, device, dtype, symmetric=False, noncontig=False):
    """(a1, a2, d1, d2, weight_scales, bias_scales) for ntk_accumulate_layers;
    some layers drop their weight or bias term."""
    a1 = [rand(n1, p, device=device, dtype=dtype, noncontig=noncontig) for p, _ in dims]
    d1 = [rand(n1, k, n, device=device, dtype=dtype, noncontig=noncontig) for _, n in dims]
    a2 = a1 if symmetric else [rand(n2, p, device=device, dtype=dtype) for p, _ in dims]
    d2 = d1 if symmetric else [rand(n2, k, n, device=device, dtype=dtype) for _, n in dims]
    ws = [(0.0, 0.7, 1.3)[l % 3] for l in range(len(dims))]
    bs = [(0.4, 0.0, 0.2)[l % 3] for l in range(len(dims))]
    return a1, a2, d1, d2, ws, bs


class TestNtkAccumulateLayers:
    @staticmethod
    def sample_inputs(device, dtype):
        for i, (n1, n2, k, dims) in enumerate(LAYERS_SHAPES):
            for outputs in OUTPUTS:
                yield (rand(*out_shape(outputs, n1, n2, k), device=device, dtype=dtype),
                       *layer_tensors(n1, n2, k, dims, device, dtype, noncontig=i % 2 == 0), outputs)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_reference(self, device, dtype):
        check_in_place_op(_ops.ntk_accumulate_layers, _reference.ntk_accumulate_layers, self.sample_inputs(device, dtype), dtype)

    def test_equals_sum_of_single_layers(self, device):
        """The op is the sum of ntk_accumulate over layers, computed by the
        compiled kernels both ways."""
        for args in self.sample_inputs(device, torch.float64):
            out, (a1, a2, d1, d2, ws, bs, outputs) = args[0], args[1:]
            fused, looped = out.clone(), out.clone()
            _ops.ntk_accumulate_layers(fused, a1, a2, d1, d2, ws, bs, outputs)
            for layer in zip(a1, a2, d1, d2, ws, bs):
                _ops.ntk_accumulate(looped, *layer, outputs)
            if out.numel():
                assert rel_err(fused, looped) <= 1e-12, outputs

    @pytest.mark.parametrize("outputs", OUTPUTS)
    @pytest.mark.parametrize("n_layers", [3, 10])
    def test_symmetric_same_tensors(self, device, outputs, n_layers):
        """a1[l] is a2[l] and d1[l] is d2[l] for every layer: the
        upper-triangle-and-mirror path over several row blocks (and, with 10
        layers, two passes), exactly symmetric from a zero start."""
        n, k = 300, 5
        dims = [(5, 4), (4, 6), (6, 1)] * (n_layers // 3) + [(6, 2)] * (n_layers % 3)
        a1, a2, d1, d2, ws, bs = layer_tensors(n, n, k, dims, device, torch.float64, symmetric=True)
        got = torch.zeros(out_shape(outputs, n, n, k), device=device, dtype=torch.float64)
        ref = got.clone()
        _ops.ntk_accumulate_layers(got, a1, a2, d1, d2, ws, bs, outputs)
        _reference.ntk_accumulate_layers(ref, a1, [t.clone() for t in a2], d1, [t.clone() for t in d2], ws, bs,
                                         outputs)
        assert rel_err(got, ref) <= 1e-12
        transposed = got.transpose(0, 1)
        assert torch.equal(got, transposed.transpose(2, 3) if outputs == "full" else transposed)

    def test_one_side_shared_is_not_symmetric(self, device):
        """Only both sides shared in every layer is symmetric: a2 is a1 but
        d2 differs must not take the mirror path."""
        n, k = 200, 2
        a1, _, d1, d2, ws, bs = layer_tensors(n, n, k, [(4, 3), (3, 5)], device, torch.float64)
        got = torch.zeros(n, n, k, k, device=device, dtype=torch.float64)
        ref = got.clone()
        _ops.ntk_accumulate_layers(got, a1, a1, d1, d2, ws, bs, "full")
        _reference.ntk_accumulate_layers(ref, a1, a1, d1, d2, ws, bs, "full")
        assert rel_err(got, ref) <= 1e-12

    def test_no_layers_is_a_no_op(self, device):
        out = rand(3, 2, device=device, dtype=torch.float64)
        before = out.clone()
        _ops.ntk_accumulate_layers(out, [], [], [], [], [], [], "trace")
        assert torch.equal(out, before)

    @pytest.mark.no_emulation  # minutes under the emulator; test_bias_out_opcheck_and_errors keeps a sample
    def test_opcheck(self, device):
        for args in self.sample_inputs(device, torch.float64):
            torch.library.opcheck(_ops._library().ntk_accumulate_layers.default, args)

    def test_compile(self, device):
        def f(out, a, d, b):
            _ops.ntk_accumulate_layers(out, [a, b], [a, b], [d, d], [d, d], [0.5, 1.0], [0.1, 0.0], "full")
            return out
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        a, b = rand(3, 4, device=device, dtype=torch.float64), rand(3, 2, device=device, dtype=torch.float64)
        d = rand(3, 2, 5, device=device, dtype=torch.float64)
        ref = torch.zeros(3, 3, 2, 2, dtype=torch.float64, device=device)
        _reference.ntk_accumulate_layers(ref, [a, b], [a, b], [d, d], [d, d], [0.5, 1.0], [0.1, 0.0], "full")
        torch.testing.assert_close(cf(torch.zeros_like(ref), a, d, b), ref)

    def test_bad_inputs_name_the_layer(self):
        z = torch.zeros
        good = (z(2, 4), z(3, 4), z(2, 2, 5), z(3, 2, 5))
        with pytest.raises(RuntimeError, match=r"layer 1: d2.size\(2\) must equal d1.size\(2\)"):
            _ops._library().ntk_accumulate_layers(z(2, 3), [good[0]] * 2, [good[1]] * 2, [good[2]] * 2,
                                                    [good[3], z(3, 2, 6)], [1.0, 1.0], [1.0, 1.0], "trace")
        with pytest.raises(RuntimeError, match=r"layer 0: out must have shape \[2, 3, 2\]"):
            _ops._library().ntk_accumulate_layers(z(2, 3), [good[0]], [good[1]], [good[2]], [good[3]],
                                                    [1.0], [1.0], "per_output")
        with pytest.raises(RuntimeError, match="one entry per layer, got lengths 1, 1, 1, 1, 2, 1"):
            _ops._library().ntk_accumulate_layers(z(2, 3), [good[0]], [good[1]], [good[2]], [good[3]],
                                                    [1.0, 2.0], [1.0], "trace")
        out = z(2, 3)
        with pytest.raises(RuntimeError, match="single memory location"):
            _ops._library().ntk_accumulate_layers(out, [out], [z(3, 3)], [good[2]], [good[3]],
                                                    [1.0], [1.0], "trace")

    def test_refuses_grad(self):
        a = torch.zeros(2, 4, requires_grad=True)
        with pytest.raises(RuntimeError, match=r"a1\[0\] requires grad"):
            _ops.ntk_accumulate_layers(torch.zeros(2, 2), [a], [a.detach()], [torch.zeros(2, 1, 3)],
                                       [torch.zeros(2, 1, 3)], [1.0], [1.0], "trace")


# (N, K, p, n)
DIAG_SHAPES = [(5, 3, 7, 6), (4, 1, 2, 9), (1, 2, 1, 1), (0, 2, 3, 4)]


class TestNtkDiagAccumulate:
    @staticmethod
    def sample_inputs(device, dtype):
        for i, (n, k, p, m) in enumerate(DIAG_SHAPES):
            for outputs in OUTPUTS:
                for ws, bs in ((0.3, 0.2), (0.0, 0.5)):
                    yield (rand(*out_shape(outputs, n, None, k), device=device, dtype=dtype),
                           rand(n, p, device=device, dtype=dtype, noncontig=i % 2 == 0),
                           rand(n, k, m, device=device, dtype=dtype, noncontig=i % 2 == 0), ws, bs, outputs)

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_reference(self, device, dtype):
        check_in_place_op(_ops.ntk_diag_accumulate, _reference.ntk_diag_accumulate, self.sample_inputs(device, dtype), dtype)

    def test_equals_diagonal_of_full(self, device):
        a, d = rand(6, 4, device=device, dtype=torch.float64), rand(6, 3, 5, device=device, dtype=torch.float64)
        full = torch.zeros(6, 6, 3, 3, dtype=torch.float64, device=device)
        _ops.ntk_accumulate(full, a, a, d, d, 0.4, 0.3, "full")
        diag = torch.zeros(6, 3, 3, dtype=torch.float64, device=device)
        _ops.ntk_diag_accumulate(diag, a, d, 0.4, 0.3, "full")
        assert rel_err(diag, torch.diagonal(full, dim1=0, dim2=1).movedim(-1, 0)) <= 1e-12

    @pytest.mark.no_emulation  # minutes under the emulator; test_bias_out_opcheck_and_errors keeps a sample
    def test_opcheck(self, device):
        for args in self.sample_inputs(device, torch.float64):
            torch.library.opcheck(_ops._library().ntk_diag_accumulate.default, args)

    def test_compile(self, device):
        def f(out, a, d):
            _ops.ntk_diag_accumulate(out, a, d, 0.5, 0.1, "per_output")
            return out
        cf = torch.compile(f, fullgraph=True, backend="aot_eager")
        a, d = rand(3, 4, device=device, dtype=torch.float64), rand(3, 2, 5, device=device, dtype=torch.float64)
        ref = torch.zeros(3, 2, dtype=torch.float64, device=device)
        _reference.ntk_diag_accumulate(ref, a, d, 0.5, 0.1, "per_output")
        torch.testing.assert_close(cf(torch.zeros_like(ref), a, d), ref)

    def test_bad_inputs(self):
        z = torch.zeros
        with pytest.raises(RuntimeError, match=r"d.size\(0\) must equal a.size\(0\) \(3\), got shape \(4, 2, 5\)"):
            _ops._library().ntk_diag_accumulate(z(3), z(3, 4), z(4, 2, 5), 1.0, 1.0, "trace")
        with pytest.raises(RuntimeError, match=r"out must have shape \[3, 2\]"):
            _ops._library().ntk_diag_accumulate(z(3), z(3, 4), z(3, 2, 5), 1.0, 1.0, "per_output")


def network_arguments(model):
    """mlp_ntk's network arguments for a model, as the engine builds them."""
    return _network_arguments(fastntk.parse_model(model))


def make_network(widths, activation, parametrization, bias, device, dtype, seed=0):
    return fastntk.MLP(widths, activation=activation, parametrization=parametrization, sigma_w=1.3,
                       sigma_b=0.3 if parametrization == "ntk" else 0.2, bias=bias, seed=seed,
                       dtype=dtype).to(device)


# (widths, N1, N2): K > 1, K = 1, a width-1 layer, a single layer, deeper.
MLP_SHAPES = [([5, 7, 6, 3], 5, 3), ([4, 9, 1], 4, 6), ([3, 1, 4, 2], 3, 3), ([6, 2], 4, 2),
              ([3, 5, 5, 5, 5, 4], 2, 3)]


def mlp_modes():
    """(outputs, layerwise, diagonal) of every kind the op computes."""
    return [(o, lw, dg) for o in OUTPUTS for lw in (False, True) for dg in (False, True)]


class TestMlpNtk:
    @staticmethod
    def sample_inputs(device, dtype):
        """(args, kwargs): every shape, activation (cycled), parametrization,
        with and without bias, x2 given and None, every mode."""
        for i, (widths, n1, n2) in enumerate(MLP_SHAPES):
            act = ACTS[i % len(ACTS)][0]
            for parametrization in ("ntk", "standard"):
                net = make_network(widths, act, parametrization, i % 2 == 0, device, dtype, seed=i)
                x1 = rand(n1, widths[0], device=device, dtype=dtype)
                x2 = rand(n2, widths[0], device=device, dtype=dtype, noncontig=True)
                for outputs, layerwise, diagonal in mlp_modes():
                    for second in ((None,) if diagonal else (None, x2)):
                        yield (x1, second, *network_arguments(net), outputs), {"layerwise": layerwise,
                                                                               "diagonal": diagonal}

    @pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
    def test_matches_reference(self, device, dtype):
        samples = list(self.sample_inputs(device, dtype))
        for args, kwargs in samples[::7] if EMULATION else samples:  # every shape and mode still, emulated
            got = _ops.mlp_ntk(*args, **kwargs)
            ref = _reference.mlp_ntk(*args, **kwargs)
            assert got.shape == ref.shape
            assert rel_err(got, ref) <= (1e-12 if dtype == torch.float64 else 1e-5), (args[-1], kwargs)

    @pytest.mark.parametrize("activation", [a for a, _ in ACTS])
    @pytest.mark.parametrize("parametrization", ["ntk", "standard"])
    def test_matches_jacobian_oracle(self, device, activation, parametrization):
        """Independent of the reference: float64 torch.func Jacobians of the
        network's own forward, every mode, both sides, with and without bias."""
        if EMULATION and parametrization == "standard":
            pytest.skip("the kernels see only the scales; one parametrization suffices emulated")
        from conftest import TOL, oracle_layerwise, oracle_ntk, reduce_outputs
        for bias, (widths, n1, n2) in ((True, ([4, 6, 5, 3], 4, 3)), (False, ([3, 5, 2], 3, 4))):
            net = make_network(widths, activation, parametrization, bias, device, torch.float64)
            x1 = rand(n1, widths[0], device=device, dtype=torch.float64)
            x2 = rand(n2, widths[0], device=device, dtype=torch.float64)
            layers = fastntk.parse_model(net)
            args = network_arguments(net)
            for second in (None, x2):
                full, lw = oracle_ntk(net, x1, second), oracle_layerwise(net, layers, x1, second)
                diag = torch.diagonal(oracle_ntk(net, x1), dim1=0, dim2=1).movedim(-1, 0)
                diag_lw = torch.diagonal(oracle_layerwise(net, layers, x1), dim1=2, dim2=3).movedim(-1, 2)
                for outputs in OUTPUTS:
                    for layerwise, want in ((False, full), (True, lw)):
                        got = _ops.mlp_ntk(x1, second, *args, outputs, layerwise)
                        assert rel_err(got, reduce_outputs(want, outputs)) <= TOL[torch.float64], outputs
                    if second is None:
                        for layerwise, want in ((False, diag), (True, diag_lw)):
                            got = _ops.mlp_ntk(x1, None, *args, outputs, layerwise, diagonal=True)
                            assert rel_err(got, reduce_outputs(want, outputs)) <= TOL[torch.float64], outputs

    def test_mixed_activations_and_output_activation(self, device):
        """A network whose layers differ in activation and parameters, ending in
        an activation, against the Jacobian oracle."""
        from conftest import TOL, oracle_ntk, reduce_outputs
        net = nn.Sequential(nn.Linear(4, 5), nn.LeakyReLU(0.2), nn.Linear(5, 6), nn.Softplus(beta=2.0, threshold=1.0),
                            nn.Linear(6, 3), nn.Sigmoid()).double().to(device)
        x1 = rand(4, 4, device=device, dtype=torch.float64)
        x2 = rand(3, 4, device=device, dtype=torch.float64)
        for second in (None, x2):
            ref = oracle_ntk(net, x1, second)
            for outputs in OUTPUTS:
                got = _ops.mlp_ntk(x1, second, *network_arguments(net), outputs)
                assert rel_err(got, reduce_outputs(ref, outputs)) <= TOL[torch.float64], outputs

    def test_symmetric_is_exact(self, device):
        if fastntk.backend() != "compiled":
            pytest.skip("exact symmetry is the compiled kernels' (the reference is symmetric to rounding)")
        net = make_network([3, 8, 8, 2], "tanh", "ntk", True, device, torch.float64)
        x = rand(7, 3, device=device, dtype=torch.float64)
        got = _ops.mlp_ntk(x, None, *network_arguments(net), "full")
        assert torch.equal(got, got.permute(1, 0, 3, 2))

    @pytest.mark.parametrize("activation", ["relu", "tanh"])
    @pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
    def test_non_finite_parameter_gives_nan_everywhere(self, device, activation, value):
        """Any NaN/Inf weight or bias, even one the activation would mask
        (-Inf behind ReLU, +-Inf behind tanh) or one a zero bias scale leaves
        out, makes every entry NaN, in every mode; the reference agrees."""
        x1 = rand(4, 3, device=device, dtype=torch.float64)
        x2 = rand(2, 3, device=device, dtype=torch.float64)
        x1[:, 1] = 0.0  # a zero input column: an Inf weight there gives Inf * 0 = NaN
        for position in [("weights", 0, (0, 1)), ("weights", 1, (2, 0)), ("weights", 2, (1, 3)),
                         ("biases", 0, (1,)), ("biases", 1, (4,)), ("biases", 2, (0,)), ("zero_scale_bias", 1, (2,))]:
            net = make_network([3, 5, 5, 2], activation, "ntk", True, device, torch.float64)
            args = list(network_arguments(net))
            kind, l, index = position
            tensors = args[0] if kind == "weights" else args[1]
            tensors[l] = tensors[l].clone()
            tensors[l][index] = value
            if kind == "zero_scale_bias":
                args[3] = [0.0 if i == l else s for i, s in enumerate(args[3])]
            for second, outputs, layerwise, diagonal in [(None, "full", False, False), (x2, "trace", True, False),
                                                         (None, "per_output", False, True)]:
                got = _ops.mlp_ntk(x1, second, *args, outputs, layerwise, diagonal=diagonal)
                ref = _reference.mlp_ntk(x1, second, *args, outputs, layerwise, diagonal=diagonal)
                assert torch.isnan(got).all() and torch.isnan(ref).all(), (position, outputs)

    def test_zero_inputs(self, device):
        net = make_network([3, 4, 2], "relu", "ntk", True, device, torch.float64)
        got = _ops.mlp_ntk(torch.zeros(0, 3, device=device, dtype=torch.float64), None, *network_arguments(net),
                           "per_output", True)
        assert got.shape == (2, 2, 0, 0, 2)

    def test_opcheck(self, device):
        samples = list(self.sample_inputs(device, torch.float64))
        for args, kwargs in samples[::37] if EMULATION else samples[::5]:
            torch.library.opcheck(_ops._library().mlp_ntk.default, args, kwargs)

    def test_compile(self, device):
        net = make_network([4, 5, 2], "gelu", "ntk", True, device, torch.float64)
        args = network_arguments(net)
        f = torch.compile(lambda x: _ops.mlp_ntk(x, None, *args, "full"), fullgraph=True, backend="aot_eager")
        x = rand(3, 4, device=device, dtype=torch.float64)
        torch.testing.assert_close(f(x), _reference.mlp_ntk(x, None, *args, "full"))

    @pytest.mark.parametrize("change,match", [
        (lambda a: a.update(weights=[]), "weights must hold at least one layer's weight, got an empty list"),
        (lambda a: a.update(scales=[1.0]), "one entry per layer, got lengths 2, 2, 1, 2, 2"),
        (lambda a: a.update(activation_params=[0.01]), "activation_params must hold 3 values .* 6 in all, got 1"),
        (lambda a: a.update(x1=torch.zeros(3)), r"x1 must have 2 dimensions, got shape \(3\)"),
        (lambda a: a.update(x1=torch.zeros(2, 5)), r"weights\[0\].size\(1\) must equal x1.size\(1\) \(5\), got shape \(6, 4\)"),
        (lambda a: a["weights"].__setitem__(1, torch.zeros(2, 7)),
         r"weights\[1\].size\(1\) must equal the previous layer's output size \(6\), got shape \(2, 7\)"),
        (lambda a: a["weights"].__setitem__(1, torch.zeros(2, 6, 1)), r"weights\[1\] must have 2 dimensions"),
        (lambda a: a["weights"].__setitem__(0, torch.zeros(6, 4, dtype=torch.float64)),
         r"weights\[0\] must have the dtype of x1 \((Float|torch.float32)\), got (Double|torch.float64)"),
        (lambda a: a["biases"].__setitem__(0, torch.zeros(5)), r"biases\[0\] must have shape \(6,\), got shape \(5\)"),
        (lambda a: a["activations"].__setitem__(0, "swish"), r"activations\[0\]: activation must be one of .*got 'swish'"),
        (lambda a: a.update(outputs="diag"), "outputs must be one of full, trace, per_output"),
        (lambda a: a.update(x2=torch.zeros(3, 5)), r"x2.size\(1\) must equal x1.size\(1\) \(4\), got shape \(3, 5\)"),
        (lambda a: a.update(x2=torch.zeros(3, 4), diagonal=True), "x2 must be None when diagonal is true"),
        (lambda a: a.update(x1=torch.zeros(2, 4, dtype=torch.int32)), "x1 must be float32 or float64, got (Int|torch.int32)"),
    ])
    def test_bad_inputs(self, change, match):
        args = {"x1": torch.zeros(2, 4), "x2": None, "weights": [torch.zeros(6, 4), torch.zeros(2, 6)],
                "biases": [torch.zeros(6), None], "scales": [1.0, 1.0], "bias_scales": [1.0, 0.0],
                "activations": ["relu", "identity"], "activation_params": [0.01, 1.0, 20.0] * 2,
                "outputs": "full", "layerwise": False, "diagonal": False}
        change(args)
        with pytest.raises((RuntimeError, ValueError), match=match):
            _ops._library().mlp_ntk(*args.values())
        # The fake kernel (torch.compile, FakeTensor) refuses it alike.
        with pytest.raises((RuntimeError, ValueError), match=match):
            _ops._mlp_ntk_fake(*args.values())

    def test_refuses_grad(self):
        w = torch.zeros(2, 4, requires_grad=True)
        with pytest.raises(RuntimeError, match=r"weights\[0\] requires grad.*not differentiable"):
            _ops.mlp_ntk(torch.zeros(3, 4), None, [w], [None], [1.0], [0.0], ["identity"], [0.01, 1.0, 20.0], "full")


def test_schemas_match_compiled(ops_namespace):
    """The Python fallback defines exactly the C++ schemas (of the emulated
    CUDA extension too, when the tests run on it)."""
    if fastntk.backend() != "compiled":
        pytest.skip("compiled extension not loaded")
    cpp = fastntk.backend_info()["schemas"]
    assert len(cpp) == len(_ops.SCHEMAS)
    for name, schema in _ops.SCHEMAS.items():
        registered = _ops._library().__getattr__(name).default._schema
        assert str(torch._C.parse_schema(f"{ops_namespace}::{schema}")) == str(registered)
        assert any(str(torch._C.parse_schema(f"{ops_namespace}::{s}")) == str(registered) for s in cpp)


@pytest.mark.no_emulation
def test_reference_backend_in_subprocess():
    """Without the compiled ops the same op names run the reference kernels,
    with a warning, and the NTK is unchanged."""
    code = (
        "import warnings, torch\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import fastntk\n"
        "assert fastntk.backend() == 'reference', fastntk.backend()\n"
        "assert any('reference ops' in str(x.message) for x in w)\n"
        "net = fastntk.MLP([4, 7, 3], activation='gelu', sigma_b=0.2, seed=0, dtype=torch.float64)\n"
        "x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))\n"
        "torch.save(fastntk.ntk(net, x, layerwise=True), 'ref.pt')\n"
    )
    env = dict(os.environ, FASTNTK_FORCE_REFERENCE="1")
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp, check=True)
        ref = torch.load(os.path.join(tmp, "ref.pt"))
    net = fastntk.MLP([4, 7, 3], activation="gelu", sigma_b=0.2, seed=0, dtype=torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(fastntk.ntk(net, x, layerwise=True), ref) <= 1e-12
