"""Devices, dtypes, the tolerance table and the independent NTK oracle.

The oracle is torch.func: per-parameter Jacobians of the model's own forward
(jacrev), contracted per parameter. It never touches fastntk's engine, so it
checks the layerwise identity, the model parsing and the kernels at once.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from fastntk import _ops

torch.manual_seed(0)

#: FASTNTK_TEST_EMULATION=1 runs every op call of the tests through
#: torch.ops.fastntk_emu: the CUDA kernels and drivers executed by the CPU
#: emulator (csrc/emulation/; `make emulate` builds it, `make test-emulated`
#: runs the op and engine tests that way). Tests marked no_emulation skip.
EMULATION = os.environ.get("FASTNTK_TEST_EMULATION", "0") == "1"

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not EMULATION else [])


@pytest.fixture(autouse=True)
def ops_namespace(request):
    """The op library the test's calls go to: fastntk, or fastntk_emu."""
    if not EMULATION:
        yield "fastntk"
        return
    if request.node.get_closest_marker("no_emulation"):
        pytest.skip("not meaningful for the emulated CUDA ops")
    import emulation
    emulation.load()
    with _ops._route("fastntk_emu"):
        yield "fastntk_emu"

#: Maximum relative error (max |err| / max |ref|) against the float64 oracle.
#: float64 is fixed and tight. float32 is derived from numerics: fastntk may
#: be at most FLOAT32_FACTOR times worse than plain PyTorch float32 on the
#: same computation (torch.func Jacobians in float32), with a floor of a few
#: float32 ulps.
TOL = {torch.float64: 1e-10, torch.float32: None}
FLOAT32_FACTOR = 8.0
FLOAT32_FLOOR = 1e-6


def device_params():
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d for d in DEVICES]


@pytest.fixture(params=device_params())
def device(request):
    return request.param


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: for tests of many small calls (deep
    narrow networks, repeated calls), which gain nothing from threads and,
    on a CPU shared with other jobs, lose much to OpenMP barriers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    assert a.shape == ref.shape, f"shape {tuple(a.shape)} != reference {tuple(ref.shape)}"
    scale = ref.abs().max().item()
    return (a - ref).abs().max().item() / (scale if scale > 0 else 1.0)


def param_jacobians(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: (N, K, P_name)} Jacobians of model(x) w.r.t. each trained
    parameter (requires_grad; frozen ones keep their values). A tensor used
    several times is one entry (named_parameters and functional_call's
    tie_weights see it once), so its Jacobian sums over its uses."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    # A copy: functional_call computes a module repeated in a Sequential
    # correctly but does not restore its parameters afterwards (torch 2.13).
    model = copy.deepcopy(model)

    def f(p, inp):
        return torch.func.functional_call(model, p, (inp,))

    jac = torch.func.jacrev(f)(params, x)
    return {n: j.reshape(j.shape[0], j.shape[1], -1) for n, j in jac.items()}


def oracle_ntk_per_param(model, x1, x2=None) -> dict[str, torch.Tensor]:
    """{name: (N1, N2, K, K)} each parameter's contribution to the NTK."""
    j1 = param_jacobians(model, x1)
    j2 = j1 if x2 is None else param_jacobians(model, x2)
    return {n: torch.einsum("ikp,jlp->ijkl", j1[n], j2[n]) for n in j1}


def oracle_ntk(model, x1, x2=None) -> torch.Tensor:
    """(N1, N2, K, K) the full empirical NTK from Jacobians."""
    return sum(oracle_ntk_per_param(model, x1, x2).values())


def oracle_layerwise(model, layers, x1, x2=None, per=None) -> torch.Tensor:
    """(L, 2, N1, N2, K, K): per-parameter terms placed by the first layer
    that uses each parameter (matched by storage, independently of the
    engine); frozen parameters have no term. ``per``:
    oracle_ntk_per_param(model, x1, x2) if already computed."""
    per = oracle_ntk_per_param(model, x1, x2) if per is None else per
    named = dict(model.named_parameters())
    any_term = next(iter(per.values()))
    out = torch.zeros((len(layers), 2) + any_term.shape, dtype=any_term.dtype)
    placed = set()
    for l, layer in enumerate(layers):
        for kind, t in ((0, layer.weight), (1, layer.bias)):
            if t is None:
                continue
            for name, p in named.items():
                if name in per and name not in placed and p.data_ptr() == t.data_ptr() and p.shape == t.shape:
                    out[l, kind] += per[name]
                    placed.add(name)
    assert placed == set(per), f"parameters not matched to layers: {set(per) - placed}"
    return out


def reduce_outputs(full: torch.Tensor, outputs: str) -> torch.Tensor:
    """(..., K, K) -> the requested outputs mode."""
    if outputs == "full":
        return full
    diag = torch.diagonal(full, dim1=-2, dim2=-1)
    return diag.sum(-1) if outputs == "trace" else diag


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny problems: a second thread only
    adds synchronization, which stalls badly on a loaded machine (measured:
    a 30-input NTK product took 1.5 ms with one thread, 185 ms with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
