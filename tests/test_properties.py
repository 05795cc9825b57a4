"""Property-based tests (hypothesis): random dense networks, inputs and
modes against the float64 torch.func oracle of conftest.py, and the
kernel's invariants (modes agree with each other, symmetry, batch
permutation and concatenation, nothing the user passed in changes).

Networks: depth 1-6, widths 1-64, K = 1-5 outputs, every activation (with
random leaky_relu / softplus parameters in nn.Sequential), both
parametrizations, biases on or off per layer, fastntk.MLP and nn.Sequential
(nested, with nn.Identity and eval-mode nn.Dropout, an output activation,
weights stored transposed). Inputs: 1-12 rows (1-450 for narrow networks),
scales 1e-8 to 1e8, repeated and zero rows, transposed storage.
Not generated: a module used twice (shared parameters) and frozen
parameters, which have tests of their own.

Tolerance: fastntk and the oracle are both float64 computations of the same
sums; their difference is rounding, bounded by a small multiple of the
*scale* of the kernel, sqrt(max_i tr Theta(x1_i, x1_i) max_j tr Theta(x2_j,
x2_j)), which by Cauchy-Schwarz bounds every entry of every mode and of
every layerwise term (each is a sum of inner products of gradients). An
entry that cancels to ~0 is thus judged by the size of what cancelled.
The float32 kernels are checked the same way against a float32 oracle.

Profiles: "ci" (the default; derandomized, so every run checks the same
examples, a few hundred in all) and "fuzz" (random; FASTNTK_FUZZ_EXAMPLES
examples in all, shared among the tests in proportion to their ci counts:
`make fuzz`; pytest's --hypothesis-seed=N repeats a run).
FASTNTK_HYPOTHESIS_PROFILE selects one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import fastntk
from fastntk._reference import ACTIVATIONS
from conftest import oracle_layerwise, oracle_ntk_per_param, param_jacobians, reduce_outputs

# ------------------------------------------------------------------ profiles
_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=_HEALTH)
settings.register_profile("fuzz", derandomize=False, deadline=None, print_blob=True,
                          suppress_health_check=_HEALTH)
PROFILE = os.environ.get("FASTNTK_HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

#: Examples per test in the ci profile; the fuzz profile scales them so
#: that they add up to FASTNTK_FUZZ_EXAMPLES.
CI_EXAMPLES = {"oracle": 100, "large_batch": 15, "float32": 40, "modes": 80, "swap": 50, "permutation": 50,
               "concatenation": 50, "unchanged": 40}


def examples(test: str) -> settings:
    n = CI_EXAMPLES[test]
    if PROFILE == "fuzz":
        total = int(os.environ.get("FASTNTK_FUZZ_EXAMPLES", "20000"))
        n = max(1, round(total * n / sum(CI_EXAMPLES.values())))
    return settings(max_examples=n)


#: float64 rounding bound, relative to the kernel's scale (module docstring):
#: a few chained GEMMs of length <= 64 and a sum over <= 6 layers, each
#: within ~(length) * 1.1e-16 of its exact value, with a wide margin.
TOL64 = 1e-11
#: float32 (unit roundoff 6e-8 instead of 1.1e-16): 6 layers x 64 terms of
#: it is 2.3e-5 for each of fastntk and the float32 oracle.
TOL32 = 1e-4
OUTPUTS = ("full", "trace", "per_output")


# ------------------------------------------------------------------ networks
@dataclass(frozen=True)
class Net:
    """A network description drawn by hypothesis (its repr is the failing
    example); ``build()`` makes the float64 model."""

    kind: str  # "mlp" or "sequential"
    widths: tuple[int, ...]
    activations: tuple[fastntk.Activation | None, ...]  # after each layer; the last: output activation
    parametrization: str
    bias: tuple[bool, ...]
    sigma_w: float
    sigma_b: float
    seed: int
    extras: bool = False  # sequential: nesting, nn.Identity and eval-mode nn.Dropout
    transposed_weights: bool = False  # sequential: weights are transposed views

    def build(self) -> nn.Module:
        if self.kind == "mlp":
            return fastntk.MLP(list(self.widths), self.activations[0].name, self.parametrization,
                               self.sigma_w, self.sigma_b, self.bias[0], seed=self.seed,
                               dtype=torch.float64)
        g = torch.Generator().manual_seed(self.seed)
        modules: list[nn.Module] = []
        for l, (n_in, n_out) in enumerate(zip(self.widths[:-1], self.widths[1:])):
            modules.append(self._linear(n_in, n_out, self.bias[l], g))
            if self.activations[l] is not None:
                modules.append(activation_module(self.activations[l]))
            if self.extras and l % 2 == 0:
                modules.append(nn.Dropout(0.5) if l % 4 == 0 else nn.Identity())
        if self.extras:
            half = len(modules) // 2
            modules = [nn.Sequential(*modules[:half]), *modules[half:]]
        return nn.Sequential(*modules).eval()

    def _linear(self, n_in: int, n_out: int, bias: bool, g: torch.Generator) -> nn.Linear:
        lin = nn.Linear(n_in, n_out, bias=bias, dtype=torch.float64)
        w = torch.randn(n_in, n_out, generator=g, dtype=torch.float64).t() * (self.sigma_w / math.sqrt(n_in))
        lin.weight = nn.Parameter(w if self.transposed_weights else w.contiguous())
        if bias:
            lin.bias = nn.Parameter(torch.randn(n_out, generator=g, dtype=torch.float64) * self.sigma_b)
        return lin


_MODULES = {
    "identity": lambda a: nn.Identity(),
    "relu": lambda a: nn.ReLU(),
    "leaky_relu": lambda a: nn.LeakyReLU(a.negative_slope),
    "tanh": lambda a: nn.Tanh(),
    "sigmoid": lambda a: nn.Sigmoid(),
    "gelu": lambda a: nn.GELU(),
    "gelu_tanh": lambda a: nn.GELU(approximate="tanh"),
    "silu": lambda a: nn.SiLU(),
    "softplus": lambda a: nn.Softplus(a.beta, a.threshold),
    "erf": lambda a: fastntk.Erf(),
}
assert set(_MODULES) == set(ACTIVATIONS), "a new activation needs its module here"


def activation_module(a: fastntk.Activation) -> nn.Module:
    return _MODULES[a.name](a)


@st.composite
def sequential_activations(draw):
    name = draw(st.sampled_from(ACTIVATIONS))
    if name == "leaky_relu":
        return fastntk.Activation(name, negative_slope=draw(st.sampled_from([0.01, 0.2, -0.5, 1.5])))
    if name == "softplus":
        return fastntk.Activation(name, beta=draw(st.sampled_from([1.0, 0.5, 3.0])),
                                  threshold=draw(st.sampled_from([20.0, 1.0, 5.0])))
    return fastntk.Activation(name)


@st.composite
def nets(draw, max_width: int = 64) -> Net:
    depth = draw(st.integers(1, 6))
    widths = (draw(st.integers(1, max_width)),) + tuple(
        draw(st.integers(1, max_width)) for _ in range(depth - 1)) + (draw(st.integers(1, 5)),)
    sigma_w = draw(st.sampled_from([1.0, 0.5, 2 ** 0.5, 1.87]))  # sigma_w^2 up to 3.5
    sigma_b = draw(st.sampled_from([0.0, 0.1, 1.0]))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    if draw(st.booleans()):
        return Net("mlp", widths, (fastntk.Activation(draw(st.sampled_from(ACTIVATIONS))),),
                   draw(st.sampled_from(["ntk", "standard"])), (draw(st.booleans()),), sigma_w, sigma_b, seed)
    hidden = tuple(draw(st.none() | sequential_activations()) for _ in range(depth - 1))
    output = draw(st.none() | sequential_activations()) if draw(st.integers(0, 3)) == 0 else None
    return Net("sequential", widths, hidden + (output,), "standard",
               tuple(draw(st.booleans()) for _ in range(depth)), sigma_w, sigma_b, seed,
               extras=draw(st.booleans()), transposed_weights=draw(st.booleans()))


@st.composite
def batches(draw, n_in: int, max_rows: int = 12) -> torch.Tensor:
    """(N, n_in) float64 inputs at scale 10^(-8..8), sometimes with a
    repeated row, a zero row, or transposed storage."""
    n = draw(st.integers(1, max_rows))
    scale = 10.0 ** draw(st.integers(-8, 8) | st.just(0))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    pattern = draw(st.sampled_from(["plain", "repeated_row", "zero_row", "transposed"]))
    if pattern == "transposed":
        return torch.randn(n_in, n, generator=g, dtype=torch.float64).t() * scale
    x = torch.randn(n, n_in, generator=g, dtype=torch.float64) * scale
    if pattern == "repeated_row":
        x[-1] = x[0]
    elif pattern == "zero_row":
        x[n // 2] = 0.0
    return x


def n_inputs(net: Net) -> int:
    return net.widths[0]


# ------------------------------------------------------------------ checks
def self_gram(jac: dict[str, torch.Tensor]) -> torch.Tensor:
    """(N, K, K) Theta(x_i, x_i) from per-parameter Jacobians {name: (N, K, P)}."""
    return sum(torch.einsum("ikp,ilp->ikl", j, j) for j in jac.values())


def scale_of(diag1: torch.Tensor, diag2: torch.Tensor | None = None) -> float:
    """sqrt(max_i tr Theta(x1_i, x1_i) * max_j tr Theta(x2_j, x2_j)) from the
    trace diagonals (N,): by Cauchy-Schwarz it bounds |every entry|."""
    s1 = diag1.max().item()
    s2 = s1 if diag2 is None else diag2.max().item()
    return math.sqrt(s1 * s2)


def fastntk_scale(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None) -> float:
    """The scale from fastntk's own ntk_diag, for the invariants (fastntk
    against itself); test_matches_oracle checks ntk_diag against the oracle."""
    return scale_of(*(fastntk.ntk_diag(model, x, outputs="trace") for x in (x1, x2) if x is not None))


def assert_close(got: torch.Tensor, want: torch.Tensor, scale: float, what: str, tol: float = TOL64):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    err = (got - want).abs().max().item() if got.numel() else 0.0
    assert err <= tol * scale, f"{what}: max |error| {err:.3e} > {tol:g} x scale {scale:.3e}"


def swap_sides(t: torch.Tensor, mode: str, lead: int = 0) -> torch.Tensor:
    """Theta(x2, x1) from Theta(x1, x2): transpose samples (and outputs)."""
    t = t.transpose(lead, lead + 1)
    return t.transpose(lead + 2, lead + 3) if mode == "full" else t


def snapshot(model: nn.Module, *xs: torch.Tensor) -> list:
    """Everything the call must not change, bit for bit."""
    state = [(n, p.detach().clone(), p.requires_grad, p._version, p.stride(),
              None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()]
    state += [(n, b.clone(), b._version) for n, b in model.named_buffers()]
    state += [m.training for m in model.modules()]
    state += [(x.clone(), x._version, x.stride(), x.requires_grad) for x in xs]
    return state


def assert_same_snapshot(before: list, after: list):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        if isinstance(b, tuple):
            for u, v in zip(b, a):
                if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
                    assert (u is None) == (v is None) and (u is None or torch.equal(u, v)), (b, a)
                else:
                    assert u == v, (b, a)
        else:
            assert b == a


# ------------------------------------------------------------------ oracle
def check_against_oracle(net: Net, x1: torch.Tensor, x2: torch.Tensor | None, tol: float = TOL64):
    """Every outputs mode, layerwise or not, and ntk_diag, against torch.func
    on the same network in the inputs' dtype."""
    model = net.build().to(x1.dtype)
    jac1 = param_jacobians(model, x1)
    diag = self_gram(jac1)  # (N1, K, K)
    diag2 = None if x2 is None else self_gram(param_jacobians(model, x2))
    trace = lambda d: None if d is None else torch.diagonal(d, dim1=1, dim2=2).sum(-1)
    scale, diag_scale = scale_of(trace(diag), trace(diag2)), scale_of(trace(diag))
    ref_lw = oracle_layerwise(model, fastntk.parse_model(model), x1, x2, per=oracle_ntk_per_param(model, x1, x2))
    ref = ref_lw.sum((0, 1))
    for mode in OUTPUTS:
        assert_close(fastntk.ntk(model, x1, x2, outputs=mode), reduce_outputs(ref, mode), scale, mode, tol)
        assert_close(fastntk.ntk(model, x1, x2, outputs=mode, layerwise=True), reduce_outputs(ref_lw, mode), scale,
                     f"layerwise {mode}", tol)
        assert_close(fastntk.ntk_diag(model, x1, outputs=mode), reduce_outputs(diag, mode), diag_scale, f"diag {mode}",
                     tol)


@given(net=nets(), data=st.data())
@examples("oracle")
def test_matches_oracle(net, data):
    x1 = data.draw(batches(n_inputs(net)), label="x1")
    x2 = data.draw(st.none() | batches(n_inputs(net)), label="x2")
    check_against_oracle(net, x1, x2)


@given(net=nets(max_width=8), data=st.data())
@examples("large_batch")
def test_large_batches_match_oracle(net, data):
    """Narrow networks, up to 450 inputs: several output tiles, row blocks and
    fused layer groups in the kernels."""
    x1 = data.draw(batches(n_inputs(net), max_rows=450), label="x1")
    x2 = data.draw(st.none() | batches(n_inputs(net), max_rows=450), label="x2")
    check_against_oracle(net, x1, x2)


@given(net=nets(), data=st.data())
@examples("float32")
def test_float32_matches_the_float32_oracle(net, data):
    """The float32 kernels (other SIMD widths, other loop tails) against
    torch.func on the same float32 network: the same forward, so the same
    ReLU masks; what differs is float32 rounding."""
    x1 = data.draw(batches(n_inputs(net)), label="x1").float()
    x2 = data.draw(st.none() | batches(n_inputs(net)), label="x2")
    check_against_oracle(net, x1, None if x2 is None else x2.float(), TOL32)


# ------------------------------------------------------------------ invariants
@given(net=nets(), data=st.data())
@examples("modes")
def test_modes_agree(net, data):
    """trace = sum of per-output = sum of the full kernel's output diagonal;
    layerwise terms sum to the total; ntk_diag = the kernel's sample diagonal."""
    model = net.build()
    x1 = data.draw(batches(n_inputs(net)), label="x1")
    x2 = data.draw(st.none() | batches(n_inputs(net)), label="x2")
    scale = fastntk_scale(model, x1, x2)
    full = fastntk.ntk(model, x1, x2)
    for mode in OUTPUTS:
        got = fastntk.ntk(model, x1, x2, outputs=mode)
        assert_close(got, reduce_outputs(full, mode), scale, f"{mode} vs full")
        lw = fastntk.ntk(model, x1, x2, outputs=mode, layerwise=True)
        assert_close(lw.sum((0, 1)), got, scale, f"layerwise {mode} sum")
    per_output = fastntk.ntk(model, x1, x2, outputs="per_output")
    assert_close(fastntk.ntk(model, x1, x2, outputs="trace"), per_output.sum(-1), scale, "trace vs per_output")
    sym = fastntk.ntk(model, x1, layerwise=True)
    diag_scale = fastntk_scale(model, x1, None)
    for mode in OUTPUTS:
        want = torch.diagonal(reduce_outputs(sym, mode), dim1=2, dim2=3).movedim(-1, 2)  # (L, 2, N, ...)
        got = fastntk.ntk_diag(model, x1, outputs=mode, layerwise=True)
        assert_close(got, want, diag_scale, f"ntk_diag layerwise {mode}")
        assert_close(fastntk.ntk_diag(model, x1, outputs=mode), want.sum((0, 1)), diag_scale, f"ntk_diag {mode}")


@given(net=nets(), data=st.data())
@examples("swap")
def test_swapping_arguments_transposes(net, data):
    """Theta(x2, x1) = Theta(x1, x2) transposed over samples and outputs;
    Theta(x, x) with x2 = None is exactly symmetric and equals x2 = x.clone()."""
    model = net.build()
    x1 = data.draw(batches(n_inputs(net)), label="x1")
    x2 = data.draw(batches(n_inputs(net)), label="x2")
    layerwise = data.draw(st.booleans(), label="layerwise")
    lead = 2 if layerwise else 0
    scale = fastntk_scale(model, x1, x2)
    for mode in OUTPUTS:
        a = fastntk.ntk(model, x1, x2, outputs=mode, layerwise=layerwise)
        b = fastntk.ntk(model, x2, x1, outputs=mode, layerwise=layerwise)
        assert_close(b, swap_sides(a, mode, lead), scale, f"swap {mode}")
        sym = fastntk.ntk(model, x1, outputs=mode, layerwise=layerwise)
        assert torch.equal(sym, swap_sides(sym, mode, lead)), f"x2=None not exactly symmetric ({mode})"
        assert_close(fastntk.ntk(model, x1, x1.clone(), outputs=mode, layerwise=layerwise), sym,
                     fastntk_scale(model, x1, None), f"x2=None vs x2=x1 ({mode})")


@given(net=nets(), data=st.data())
@examples("permutation")
def test_permuting_the_batch_permutes_the_kernel(net, data):
    model = net.build()
    x1 = data.draw(batches(n_inputs(net), max_rows=20), label="x1")
    x2 = data.draw(st.none() | batches(n_inputs(net), max_rows=20), label="x2")
    p1 = torch.tensor(data.draw(st.permutations(range(len(x1))), label="p1"))
    p2 = p1 if x2 is None else torch.tensor(data.draw(st.permutations(range(len(x2))), label="p2"))
    mode = data.draw(st.sampled_from(OUTPUTS), label="outputs")
    scale = fastntk_scale(model, x1, x2)
    base = fastntk.ntk(model, x1, x2, outputs=mode)
    permuted = fastntk.ntk(model, x1[p1], None if x2 is None else x2[p2], outputs=mode)
    assert_close(permuted, base[p1][:, p2], scale, f"permuted {mode}")
    assert_close(fastntk.ntk_diag(model, x1[p1], outputs=mode), fastntk.ntk_diag(model, x1, outputs=mode)[p1],
                 fastntk_scale(model, x1, None), f"permuted diag {mode}")


@given(net=nets(), data=st.data())
@examples("concatenation")
def test_concatenated_batches_give_the_blocks(net, data):
    model = net.build()
    n = n_inputs(net)
    a, b = (data.draw(batches(n, max_rows=20), label=name) for name in ("a", "b"))
    c, d = (data.draw(batches(n, max_rows=20), label=name) for name in ("c", "d"))
    mode = data.draw(st.sampled_from(OUTPUTS), label="outputs")
    layerwise = data.draw(st.booleans(), label="layerwise")
    ab, cd = torch.cat([a, b]), torch.cat([c, d])
    na, nc = len(a), len(c)
    lead = (slice(None),) * (2 if layerwise else 0)
    kw = dict(outputs=mode, layerwise=layerwise)

    whole = fastntk.ntk(model, ab, cd, **kw)
    scale = fastntk_scale(model, ab, cd)
    for rows, cols, x, y in (((None, na), (None, nc), a, c), ((None, na), (nc, None), a, d),
                             ((na, None), (None, nc), b, c), ((na, None), (nc, None), b, d)):
        block = whole[lead + (slice(*rows), slice(*cols))]
        assert_close(block, fastntk.ntk(model, x, y, **kw), scale, f"block {rows} x {cols} ({mode})")

    sym = fastntk.ntk(model, ab, **kw)
    scale = fastntk_scale(model, ab, None)
    assert_close(sym[lead + (slice(None, na), slice(None, na))], fastntk.ntk(model, a, **kw), scale, "sym aa")
    assert_close(sym[lead + (slice(None, na), slice(na, None))], fastntk.ntk(model, a, b, **kw), scale, "sym ab")
    assert_close(sym[lead + (slice(na, None), slice(na, None))], fastntk.ntk(model, b, **kw), scale, "sym bb")
    assert_close(fastntk.ntk_diag(model, ab, **kw),
                 torch.cat([fastntk.ntk_diag(model, a, **kw), fastntk.ntk_diag(model, b, **kw)], dim=len(lead)),
                 scale, "diag")


@given(net=nets(max_width=16), data=st.data())
@examples("unchanged")
def test_model_and_inputs_are_unchanged(net, data):
    """Bit for bit, including .grad, requires_grad, version counters (no
    in-place write even of equal values), strides and training flags."""
    model = net.build()
    if data.draw(st.booleans(), label="train mode"):
        model.train()
        if any(isinstance(m, nn.Dropout) for m in model.modules()):
            for m in model.modules():  # dropout in training mode is refused; keep it eval
                if isinstance(m, nn.Dropout):
                    m.eval()
    params = list(model.parameters())
    for p in params[::2]:
        p.grad = torch.randn_like(p)
    x1 = data.draw(batches(n_inputs(net)), label="x1")
    x2 = data.draw(st.none() | batches(n_inputs(net)), label="x2")
    if data.draw(st.booleans(), label="x1 requires grad"):
        x1.requires_grad_()
    before = snapshot(model, *([x1] if x2 is None else [x1, x2]))
    for mode in OUTPUTS:
        for layerwise in (False, True):
            fastntk.ntk(model, x1, x2, outputs=mode, layerwise=layerwise)
            fastntk.ntk_diag(model, x1, outputs=mode, layerwise=layerwise)
    assert_same_snapshot(before, snapshot(model, *([x1] if x2 is None else [x1, x2])))
