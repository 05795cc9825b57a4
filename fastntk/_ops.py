"""Thin typed wrappers over ``torch.ops.fastntk.*``, their fake (meta)
implementations, and the fallback registration.

The compiled extension ``fastntk._C`` defines the op schemas (csrc/ops.cpp)
and the CPU (and, when built with CUDA, CUDA) kernels. When it cannot be
loaded, or when ``FASTNTK_FORCE_REFERENCE=1``, the same schemas are defined
here and the pure-PyTorch functions of :mod:`fastntk._reference` are
registered as their implementation, so ``torch.ops.fastntk.*`` exists either
way; :func:`backend` says which is active. A device the compiled extension has
no kernel for (CUDA with a CPU-only build) also gets the reference kernels.

The ops are not differentiable: the NTK is computed under ``torch.no_grad``
and the wrappers refuse inputs that require grad rather than silently
returning values without a gradient.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from . import _reference

#: The op schemas, identical to csrc/ops.cpp (a test checks they agree).
SCHEMAS = {
    "backprop_delta": (
        "backprop_delta(Tensor delta_next, Tensor weight, Tensor h, float scale, "
        "str activation, float negative_slope=0.01, float beta=1., "
        "float threshold=20.) -> Tensor"
    ),
    "ntk_accumulate": (
        "ntk_accumulate(Tensor(a!) out, Tensor a1, Tensor a2, Tensor d1, "
        "Tensor d2, float weight_scale, float bias_scale, str outputs, "
        "Tensor(b!)? bias_out=None) -> ()"
    ),
    "ntk_accumulate_layers": (
        "ntk_accumulate_layers(Tensor(a!) out, Tensor[] a1, Tensor[] a2, "
        "Tensor[] d1, Tensor[] d2, float[] weight_scales, float[] bias_scales, "
        "str outputs) -> ()"
    ),
    "ntk_diag_accumulate": (
        "ntk_diag_accumulate(Tensor(a!) out, Tensor a, Tensor d, "
        "float weight_scale, float bias_scale, str outputs) -> ()"
    ),
    "mlp_ntk": (
        "mlp_ntk(Tensor x1, Tensor? x2, Tensor[] weights, Tensor?[] biases, "
        "float[] scales, float[] bias_scales, str[] activations, "
        "float[] activation_params, str outputs, bool layerwise=False, "
        "bool diagonal=False) -> Tensor"
    ),
}

_load_error: str | None = None
_C = None
if os.environ.get("FASTNTK_FORCE_REFERENCE", "0") == "1":
    _load_error = "FASTNTK_FORCE_REFERENCE=1"
else:
    try:
        from . import _C  # noqa: F811  (registers the ops with the dispatcher)
    except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
        _load_error = f"{type(exc).__name__}: {exc}"

_fallback_lib = None
if _C is None:
    warnings.warn(
        f"fastntk: compiled ops unavailable ({_load_error}); using the pure-PyTorch "
        "reference ops (exact, but slower). Reinstall with "
        "`pip install --no-build-isolation .` to build them.",
        RuntimeWarning,
        stacklevel=2,
    )
    _fallback_lib = torch.library.Library("fastntk", "DEF")
    for _name, _schema in SCHEMAS.items():
        _fallback_lib.define(_schema)
        _fallback_lib.impl(_name, getattr(_reference, _name), "CPU")
        _fallback_lib.impl(_name, getattr(_reference, _name), "CUDA")
else:
    _impl_lib = torch.library.Library("fastntk", "IMPL")
    for _name in SCHEMAS:
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastntk::{_name}", "CUDA"):
            _impl_lib.impl(_name, getattr(_reference, _name), "CUDA")


#: The op library the wrappers call. Only _route changes it: the tests run the
#: same calls through torch.ops.fastntk_emu, the CUDA kernels executed by the
#: CPU emulator (csrc/emulation/), which registers the same schemas.
_namespace = "fastntk"


def _library():
    """``torch.ops.<namespace>`` that the wrappers below call."""
    return getattr(torch.ops, _namespace)


@contextlib.contextmanager
def _route(namespace: str):
    """Within the block, the wrappers (and so the engine) call
    ``torch.ops.<namespace>`` instead of ``torch.ops.fastntk``."""
    global _namespace
    previous, _namespace = _namespace, namespace
    try:
        yield
    finally:
        _namespace = previous


def backend() -> str:
    """Which implementation runs ``torch.ops.fastntk.*``.

    Returns
    -------
    str
        ``"compiled"`` when the C++ extension is loaded (see
        :func:`backend_info` for its CUDA kernels), ``"reference"`` when the
        pure-PyTorch fallback is registered instead.
    """
    return "reference" if _C is None else "compiled"


def backend_info() -> dict:
    """Details of the active backend: which devices have compiled kernels,
    whether OpenMP is on, the CUDA arch list, and why the extension did not
    load when it did not."""
    info = {"backend": backend(), "load_error": _load_error}
    if _C is not None:
        info.update(_C.build_info())
    info["compiled_kernels"] = {
        dev: all(
            _C is not None
            and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastntk::{n}", dev)
            and not (dev == "CUDA" and not info.get("cuda"))
            for n in SCHEMAS
        )
        for dev in ("CPU", "CUDA")
    }
    return info


def _refuse_grad(op: str, **tensors: torch.Tensor) -> None:
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t.requires_grad:
            raise RuntimeError(
                f"fastntk.{op}: {name} requires grad, but fastntk ops are not "
                "differentiable; call under torch.no_grad() or pass a detached tensor"
            )


def backprop_delta(
    delta_next: torch.Tensor, weight: torch.Tensor, h: torch.Tensor, scale: float,
    activation: str, negative_slope: float = 0.01, beta: float = 1.0,
    threshold: float = 20.0,
) -> torch.Tensor:
    """Backpropagated signals of one layer for all K outputs.

    delta = phi'(h) * scale * (delta_next @ weight).

    Parameters
    ----------
    delta_next : (N, K, n_next) signals d f_k / d h^{l+1}.
    weight : (n_next, n) the next layer's weight W^{l+1}.
    h : (N, n) this layer's pre-activations.
    scale : the next layer's multiplier c_{l+1}.
    activation : name of phi (see ``fastntk._reference.ACTIVATIONS``).

    Returns
    -------
    (N, K, n) tensor delta^l.
    """
    _refuse_grad("backprop_delta", delta_next=delta_next, weight=weight, h=h)
    return _library().backprop_delta.default(
        delta_next, weight, h, scale, activation, negative_slope, beta, threshold
    )


def ntk_accumulate(
    out: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, d1: torch.Tensor,
    d2: torch.Tensor, weight_scale: float, bias_scale: float, outputs: str,
    bias_out: torch.Tensor | None = None,
) -> None:
    """Add one layer's NTK contribution to ``out`` in place.

    out += (weight_scale * a1 a2^T + bias_scale) (.) <d1, d2>, where the
    delta inner product is over units and broadcast per ``outputs``: full
    (N1, N2, K, K), trace (N1, N2) or per_output (N1, N2, K).

    Parameters
    ----------
    out : contiguous output, shape given by ``outputs``.
    a1, a2 : (N1, p), (N2, p) the layer's input activations a^{l-1}.
    d1, d2 : (N1, K, n), (N2, K, n) the layer's signals delta^l.
    weight_scale, bias_scale : c_l^2 and beta_l^2 (0 drops that term).
    bias_out : optional, shaped like out: then out gets only the weight term
        and bias_out the bias term, from one delta Gram (layerwise mode).
    """
    _refuse_grad("ntk_accumulate", out=out, a1=a1, a2=a2, d1=d1, d2=d2)
    _library().ntk_accumulate.default(out, a1, a2, d1, d2, weight_scale, bias_scale, outputs, bias_out)


def ntk_accumulate_layers(
    out: torch.Tensor, a1: list[torch.Tensor], a2: list[torch.Tensor], d1: list[torch.Tensor],
    d2: list[torch.Tensor], weight_scales: list[float], bias_scales: list[float], outputs: str,
) -> None:
    """Add several layers' NTK contributions to ``out`` in one pass over it.

    out += sum_l (weight_scales[l] * a1[l] a2[l]^T + bias_scales[l]) (.) <d1[l], d2[l]>,
    the sum of :func:`ntk_accumulate` over l, but out is read and written once
    per pass of up to 8 layers instead of once per layer (it is as large as
    the Grams when K is large and the layers narrow).

    Parameters
    ----------
    out : contiguous output, shape given by ``outputs`` (as in :func:`ntk_accumulate`).
    a1, a2 : per layer, (N1, p_l), (N2, p_l) input activations.
    d1, d2 : per layer, (N1, K, n_l), (N2, K, n_l) signals.
    weight_scales, bias_scales : per layer, c_l^2 and beta_l^2.
    outputs : ``"full"``, ``"trace"`` or ``"per_output"``.

    When ``a1[l] is a2[l]`` and ``d1[l] is d2[l]`` for every l, only the upper
    triangle is computed and mirrored (the engine's x2 = x1 case).
    """
    if torch.is_grad_enabled():  # the engine runs under no_grad: skip building the names
        _refuse_grad("ntk_accumulate_layers", out=out, **{
            f"{name}[{l}]": t for name, ts in (("a1", a1), ("a2", a2), ("d1", d1), ("d2", d2))
            for l, t in enumerate(ts)})
    _library().ntk_accumulate_layers.default(
        out, list(a1), list(a2), list(d1), list(d2), [float(s) for s in weight_scales],
        [float(s) for s in bias_scales], outputs)


def ntk_diag_accumulate(
    out: torch.Tensor, a: torch.Tensor, d: torch.Tensor, weight_scale: float,
    bias_scale: float, outputs: str,
) -> None:
    """Add one layer's per-sample diagonal Theta(x_i, x_i) to ``out`` in place.

    out[i] += (weight_scale |a_i|^2 + bias_scale) <d_ik, d_ik'>, with ``out``
    (N, K, K), (N,) or (N, K) for outputs full, trace, per_output.

    Parameters
    ----------
    a : (N, p) input activations; d : (N, K, n) signals.
    """
    _refuse_grad("ntk_diag_accumulate", out=out, a=a, d=d)
    _library().ntk_diag_accumulate.default(out, a, d, weight_scale, bias_scale, outputs)


def mlp_ntk(
    x1: torch.Tensor, x2: torch.Tensor | None, weights: list[torch.Tensor],
    biases: list[torch.Tensor | None], scales: list[float], bias_scales: list[float],
    activations: list[str], activation_params: list[float], outputs: str,
    layerwise: bool = False, diagonal: bool = False,
) -> torch.Tensor:
    """The NTK of a whole dense network in one call: forward pass, batched
    backward pass and the sum over layers, by the per-layer kernels above.

    The network: h^l = scales[l] a^{l-1} weights[l]^T + bias_scales[l] biases[l],
    a^l = phi_l(h^l), a^0 = x, output h^L; every weight and bias is a
    parameter (terms weighted c_l^2 = scales[l]^2 and beta_l^2 =
    bias_scales[l]^2; a None bias has no term).

    Parameters
    ----------
    x1 : (N1, n_0) inputs; x2 : (N2, n_0) inputs, or None for x2 = x1
        (computed once, and the result is exactly symmetric).
    weights : per layer, (n_l, n_{l-1}); biases : per layer, (n_l,) or None.
    scales, bias_scales : per layer, c_l and beta_l.
    activations : per layer, the name of phi_l (see
        ``fastntk._reference.ACTIVATIONS``; the last one is usually
        ``"identity"``).
    activation_params : (negative_slope, beta, threshold) of every layer,
        flattened: 3 L values.
    outputs : ``"full"``, ``"trace"`` or ``"per_output"``.
    layerwise : prepend axes (L, 2): [l, 0] layer l's weight term, [l, 1]
        its bias term.
    diagonal : only Theta(x_i, x_i) (x2 must be None).

    Returns
    -------
    (N1, N2, K, K), (N1, N2) or (N1, N2, K) per ``outputs``; (N1, ...)
    instead of (N1, N2, ...) when diagonal; after (L, 2) when layerwise.
    NaN everywhere if any pre-activation h^l is not finite, which any NaN
    or Inf weight or bias makes it (a bias with bias_scales[l] = 0 is
    checked itself): the op checks N sum_l n_l numbers instead of the
    parameters, and the caller searches the parameters only on failure.
    """
    if torch.is_grad_enabled():  # the engine runs under no_grad: skip building the names
        _refuse_grad("mlp_ntk", x1=x1, **({} if x2 is None else {"x2": x2}), **{
            f"{name}[{l}]": t for name, ts in (("weights", weights), ("biases", biases))
            for l, t in enumerate(ts) if t is not None})
    return _library().mlp_ntk.default(
        x1, x2, list(weights), list(biases), [float(s) for s in scales], [float(s) for s in bias_scales],
        list(activations), [float(p) for p in activation_params], outputs, layerwise, diagonal)


# ---------------------------------------------------------------- fake kernels
# Same checks as csrc/ntk_common.h, on metadata only, so ops trace under
# torch.compile and FakeTensor with the messages the real kernels give.

def _fake_check(cond: bool, msg: str) -> None:
    if not cond:
        raise RuntimeError(msg)


def _out_shape(outputs: str, n1: int, n2: int | None, k: int) -> tuple[int, ...]:
    _reference._check_choice("outputs", outputs, _reference.OUTPUT_MODES)
    lead = (n1,) if n2 is None else (n1, n2)
    return {"full": lead + (k, k), "trace": lead, "per_output": lead + (k,)}[outputs]


@torch.library.register_fake("fastntk::backprop_delta")
def _backprop_delta_fake(delta_next, weight, h, scale, activation,
                         negative_slope=0.01, beta=1.0, threshold=20.0):
    _reference._check_choice("activation", activation, _reference.ACTIVATIONS)
    _fake_check(delta_next.dim() == 3, f"delta_next must have 3 dimensions, got shape {tuple(delta_next.shape)}")
    _fake_check(weight.dim() == 2, f"weight must have 2 dimensions, got shape {tuple(weight.shape)}")
    _fake_check(h.dim() == 2, f"h must have 2 dimensions, got shape {tuple(h.shape)}")
    _fake_check(weight.shape[0] == delta_next.shape[2], "weight.size(0) must equal delta_next.size(2)")
    _fake_check(h.shape[0] == delta_next.shape[0], "h.size(0) must equal delta_next.size(0)")
    _fake_check(h.shape[1] == weight.shape[1], "h.size(1) must equal weight.size(1)")
    return delta_next.new_empty((delta_next.shape[0], delta_next.shape[1], weight.shape[1]))


@torch.library.register_fake("fastntk::ntk_accumulate")
def _ntk_accumulate_fake(out, a1, a2, d1, d2, weight_scale, bias_scale, outputs, bias_out=None):
    if bias_out is not None:
        _fake_check(bias_out.shape == out.shape, f"bias_out must have the shape of out {tuple(out.shape)}, "
                                                 f"got shape {tuple(bias_out.shape)}")
    expected = _out_shape(outputs, a1.shape[0], a2.shape[0], d1.shape[1])
    _fake_check(tuple(out.shape) == expected, f"out must have shape {list(expected)} for this outputs mode, got shape {tuple(out.shape)}")
    _fake_check(a2.shape[1] == a1.shape[1], "a2.size(1) must equal a1.size(1)")
    _fake_check(d1.shape[0] == a1.shape[0], "d1.size(0) must equal a1.size(0)")
    _fake_check(d2.shape[0] == a2.shape[0], "d2.size(0) must equal a2.size(0)")
    _fake_check(tuple(d2.shape[1:]) == tuple(d1.shape[1:]), "d2.size(1), d2.size(2) must equal those of d1")
    for t in (a1, a2, d1, d2):
        _fake_check(t.dtype == out.dtype, f"a1, a2, d1, d2 must have the dtype of out ({out.dtype}), got {t.dtype}")
        _fake_check(t.device == out.device, f"a1, a2, d1, d2 must be on the device of out ({out.device}), got {t.device}")
    return None


@torch.library.register_fake("fastntk::ntk_accumulate_layers")
def _ntk_accumulate_layers_fake(out, a1, a2, d1, d2, weight_scales, bias_scales, outputs):
    lengths = [len(a1), len(a2), len(d1), len(d2), len(weight_scales), len(bias_scales)]
    _fake_check(len(set(lengths)) == 1, "a1, a2, d1, d2, weight_scales and bias_scales must all have one entry "
                                        f"per layer, got lengths {', '.join(map(str, lengths))}")
    for l, layer in enumerate(zip(a1, a2, d1, d2, weight_scales, bias_scales)):
        try:
            _ntk_accumulate_fake(out, *layer, outputs)
        except RuntimeError as exc:
            raise RuntimeError(f"layer {l}: {exc}") from None
    return None


@torch.library.register_fake("fastntk::ntk_diag_accumulate")
def _ntk_diag_accumulate_fake(out, a, d, weight_scale, bias_scale, outputs):
    expected = _out_shape(outputs, a.shape[0], None, d.shape[1])
    _fake_check(tuple(out.shape) == expected, f"out must have shape {list(expected)} for this outputs mode, got shape {tuple(out.shape)}")
    _fake_check(d.shape[0] == a.shape[0], "d.size(0) must equal a.size(0)")
    return None


def _shape_str(t) -> str:
    """A shape as csrc/checks.h's shape_str writes it: (3) and (2, 4)."""
    return "(" + ", ".join(str(d) for d in t.shape) + ")"


@torch.library.register_fake("fastntk::mlp_ntk")
def _mlp_ntk_fake(x1, x2, weights, biases, scales, bias_scales, activations, activation_params, outputs,
                  layerwise=False, diagonal=False):
    n_layers = len(weights)
    _fake_check(n_layers > 0, "weights must hold at least one layer's weight, got an empty list")
    lengths = [len(weights), len(biases), len(scales), len(bias_scales), len(activations)]
    _fake_check(len(set(lengths)) == 1, "weights, biases, scales, bias_scales and activations must all have one "
                                        f"entry per layer, got lengths {', '.join(map(str, lengths))}")
    _fake_check(len(activation_params) == 3 * n_layers,
                "activation_params must hold 3 values (negative_slope, beta, threshold) per layer, "
                f"{3 * n_layers} in all, got {len(activation_params)}")
    _fake_check(x1.dim() == 2, f"x1 must have 2 dimensions, got shape {_shape_str(x1)}")
    _fake_check(x1.dtype in (torch.float32, torch.float64), f"x1 must be float32 or float64, got {x1.dtype}")
    if x2 is not None:
        _fake_check(not diagonal, "x2 must be None when diagonal is true (the diagonal pairs each input with itself)")
        _fake_check(x2.dim() == 2, f"x2 must have 2 dimensions, got shape {_shape_str(x2)}")
        _fake_check(x2.dtype == x1.dtype, f"x1 and x2 must have the same dtype, got {x1.dtype} and {x2.dtype}")
        _fake_check(x2.device == x1.device, f"x1 and x2 must be on the same device, got {x1.device} and {x2.device}")
        _fake_check(x2.shape[1] == x1.shape[1], f"x2.size(1) must equal x1.size(1) ({x1.shape[1]}), "
                                                f"got shape {_shape_str(x2)}")
    fan_in = x1.shape[1]
    for l, (w, b) in enumerate(zip(weights, biases)):
        _fake_check(w.dim() == 2, f"weights[{l}] must have 2 dimensions (n_out, n_in), got shape {_shape_str(w)}")
        _fake_check(w.dtype == x1.dtype, f"weights[{l}] must have the dtype of x1 ({x1.dtype}), got {w.dtype}")
        _fake_check(w.device == x1.device, f"weights[{l}] must be on the device of x1 ({x1.device}), got {w.device}")
        _fake_check(w.shape[1] == fan_in, f"weights[{l}].size(1) must equal "
                                          f"{'x1.size(1)' if l == 0 else 'the previous layer' + chr(39) + 's output size'}"
                                          f" ({fan_in}), got shape {_shape_str(w)}")
        if b is not None:
            _fake_check(b.dim() == 1 and b.shape[0] == w.shape[0],
                        f"biases[{l}] must have shape ({w.shape[0]},), got shape {_shape_str(b)}")
            _fake_check(b.dtype == x1.dtype, f"biases[{l}] must have the dtype of x1 ({x1.dtype}), got {b.dtype}")
        try:
            _reference._check_choice("activation", activations[l], _reference.ACTIVATIONS)
        except ValueError as exc:
            raise RuntimeError(f"activations[{l}]: {exc}") from None
        fan_in = w.shape[0]
    k, n1 = weights[-1].shape[0], x1.shape[0]
    shape = _out_shape(outputs, n1, None if diagonal else (n1 if x2 is None else x2.shape[0]), k)
    if layerwise:
        shape = (n_layers, 2) + shape
    return x1.new_empty(shape)
