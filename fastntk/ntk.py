"""The empirical NTK of dense MLPs, layer by layer, without Jacobians.

A tour of every mode, for a network with K outputs and L weight layers::

    net = fastntk.MLP([784, 2048, 2048, 10], sigma_w=2**0.5)       # K = 10, L = 3
    x1, x2 = torch.randn(256, 784), torch.randn(64, 784)
    fastntk.ntk(net, x1)                          # (256, 256, 10, 10)  Theta(x1, x1)
    fastntk.ntk(net, x1, x2)                      # (256, 64, 10, 10)   Theta(x1, x2)
    fastntk.ntk(net, x1, x2, outputs="trace")     # (256, 64)           sum_k Theta_kk
    fastntk.ntk(net, x1, outputs="per_output")    # (256, 256, 10)      Theta_kk for each k
    fastntk.ntk(net, x1, layerwise=True)          # (3, 2, 256, 256, 10, 10) [layer, weight|bias]
    fastntk.ntk_diag(net, x1)                     # (256, 10, 10)       Theta(x_i, x_i)
    fastntk.ntk_diag(net, x1, outputs="trace")    # (256,)              squared gradient norms

How: one forward pass caches the pre-activations h^l, one backward pass
propagates the signals delta^l = d f_k / d h^l for all K outputs at once
(:func:`fastntk._ops.backprop_delta`), and each layer adds
``(c_l^2 a^{l-1} a'^{l-1 T} + beta_l^2) (.) <delta^l, delta'^l>`` to the
output (:func:`fastntk._ops.ntk_accumulate_layers`). Layers are accumulated
as the backward pass reaches them; where the kernels can add several layers
in one pass over the output (CUDA; CPU when x2 = x1), consecutive layers are
cached until their activations and signals reach the output's size and then
added together. A network whose tensors are all trained and used once goes
through one op call (:func:`fastntk._ops.mlp_ntk`), which runs these same
steps and kernels in C++, without a Python round trip per layer. Memory:
the pre-activations, the output, and at most the
output's size plus one layer of signals (two layers when the output is
smaller): O(N sum n_l + N K max n_l) + 2 x output at most, instead of a
Jacobian's O(N K P).

Conventions: ``outputs="trace"`` is the *sum* over outputs (neural-tangents'
``trace_axes`` averages instead: divide by K to compare). The full kernel is
indexed ``[i, j, k, k']``.
"""

from __future__ import annotations

import contextlib
import functools
import dataclasses
import enum
import math

import torch
from torch import nn

from . import _ops
from ._progress import check_progress, progress_bar
from .models import DenseLayer, MirroredMLP, ntk_parts, parse_model


class Outputs(str, enum.Enum):
    """What to compute over the K network outputs.

    FULL : (N1, N2, K, K), every pair of outputs. Memory and the delta Gram
        cost grow as K^2; use it when the cross-output blocks matter.
    TRACE : (N1, N2), sum_k Theta_kk (not the mean). One GEMM per layer on
        signals flattened to (N, K n_l): the cheapest mode, and the one the
        training-dynamics literature plots.
    PER_OUTPUT : (N1, N2, K), Theta_kk for each k: a batched GEMM. For a
        network whose outputs are exchangeable at init these are K samples
        of the same kernel.
    """

    FULL = "full"
    TRACE = "trace"
    PER_OUTPUT = "per_output"


_OUTPUT_CHOICES = ", ".join(repr(m.value) for m in Outputs)


def _check_outputs(outputs) -> str:
    if isinstance(outputs, Outputs):
        return outputs.value
    if isinstance(outputs, str) and outputs in {m.value for m in Outputs}:
        return outputs
    raise ValueError(f"outputs must be one of {_OUTPUT_CHOICES}; got {outputs!r}")


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__} {value!r}")
    return value


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of t is finite. One reduction (NaN and Inf propagate
    through a sum) instead of torch.isfinite(t).all(), which costs several
    passes and a temporary: ~180 ms per call on a 3 x 4096 MLP, as much as the
    NTK itself. A sum that overflows falls back to the exact check."""
    return math.isfinite(t.sum().item()) or bool(torch.isfinite(t).all())


def _check_input(name: str, x, layers: list[DenseLayer]) -> torch.Tensor:
    """Validate an input batch against the model: (N, n_0), same dtype/device."""
    w = layers[0].weight
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, {w.shape[1]}); got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor ({w.dtype}, like the model); got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, n_0) = (N, {w.shape[1]}); got shape {tuple(x.shape)}")
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"{name} must have {w.shape[1]} features (the model's input size); "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one input")
    if x.dtype != w.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the model's parameters are {w.dtype}; "
                        f"convert one of them (e.g. {name}.to({w.dtype}) or model.to({x.dtype}))")
    if x.dtype not in _INPUT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {x.dtype}")
    if x.device != w.device:
        raise ValueError(f"{name} is on {x.device} but the model is on {w.device}; move one of them")
    if not _all_finite(x):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x.detach()


_INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _compute_dtype(layers: list[DenseLayer], *xs: torch.Tensor):
    """Half-precision models run, accumulate and return in float32: the layers
    and inputs are upcast copies (the model itself is untouched)."""
    if xs[0].dtype not in (torch.float16, torch.bfloat16):
        return (layers,) + xs
    up = lambda t: None if t is None else t.float()
    layers = [dataclasses.replace(l, weight=up(l.weight), bias=up(l.bias)) for l in layers]
    return (layers,) + tuple(x.float() for x in xs)


def _sum_over_parts(fn, model: nn.Module, *args, **kwargs) -> torch.Tensor | None:
    """sum_i c_i fn(part_i, ...) for a model made of several networks (a
    mirrored MLP: see :func:`fastntk.models.ntk_parts`); None for one network."""
    if not isinstance(model, MirroredMLP):
        return None  # one network (parse_model checks it)
    parts = ntk_parts(model)
    terms = [c * fn(part, *args, **kwargs) for c, part in parts]
    return sum(terms[1:], terms[0])


def _blocked_requested(max_memory, block_size, out, resume) -> bool:
    """Whether a call asks for the blocked / out-of-core driver (fastntk.scale)."""
    return max_memory is not None or block_size is not None or out is not None or resume is not False


def _refuse_parts(what: str, model: nn.Module) -> None:
    if len(ntk_parts(model)) > 1:
        raise TypeError(f"{what} are not supported for a model made of several networks "
                        f"({type(model).__name__}); compute its kernel without them")


def _check_model(model: nn.Module, *, finite: bool = True) -> list[DenseLayer]:
    """The model's layers, checked; ``finite=False`` leaves the parameters'
    finiteness to the caller (see :func:`_check_finite_parameters`)."""
    layers = parse_model(model)
    if not any(layer.weight_trained or layer.bias_trained for layer in layers):
        raise ValueError("model has no trainable parameters (every weight and bias has requires_grad=False), "
                         "so its NTK is zero; call model.requires_grad_(True) to count them")
    if finite:
        _check_finite_parameters(layers)
    return layers


def _check_finite_parameters(layers: list[DenseLayer]) -> None:
    """Raise ValueError naming the first NaN/Inf weight or bias. One
    reduction over all parameters' sums (one device sync, one torch.compile
    graph break); the per-tensor search only on failure. The whole-network
    op needs no such pass (a pass over every weight: 3% of a call on a
    3 x 4096 network): it checks the pre-activations, which any non-finite
    parameter makes non-finite, and this runs only when its result is not
    finite."""
    tensors = [(l, kind, p) for l, layer in enumerate(layers)
               for kind, p in (("weight", layer.weight), ("bias", layer.bias)) if p is not None]
    if _all_finite(torch.stack([p.sum() for _, _, p in tensors])):
        return
    for l, kind, p in tensors:
        if not _all_finite(p):
            raise ValueError(f"model layer {l} {kind} contains NaN or Inf values")


@contextlib.contextmanager
def _tf32(allow: bool):
    """Set torch's TF32 matmul flag for the duration of a call (CUDA only)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def _forward(layers: list[DenseLayer], x: torch.Tensor) -> list[torch.Tensor]:
    """Pre-activations h^1 .. h^L, each (N, n_l)."""
    hs, a = [], x
    for layer in layers:
        h = layer.pre_activation(a)
        hs.append(h)
        a = layer.activation(h)
    return hs


def _output_delta(layers: list[DenseLayer], h_last: torch.Tensor) -> torch.Tensor:
    """delta^L = d f_k / d h^L, (N, K, K): the identity, times phi'(h^L) when
    the model ends in an activation."""
    n, k = h_last.shape
    eye = torch.eye(k, dtype=h_last.dtype, device=h_last.device)
    act = layers[-1].activation
    if act.name == "identity":
        return eye.expand(n, k, k)
    return _ops.backprop_delta(eye.expand(n, k, k), eye, h_last, 1.0, *act.op_args())


def _layer_signals(layers: list[DenseLayer], x: torch.Tensor, hs: list[torch.Tensor]):
    """Yield (l, a^{l-1}, delta^l) from the last layer to the first, keeping
    only one layer's signals alive at a time."""
    delta = _output_delta(layers, hs[-1])
    for l in range(len(layers) - 1, -1, -1):
        a_prev = x if l == 0 else layers[l - 1].activation(hs[l - 1])
        yield l, a_prev, delta
        if l > 0:
            nxt = layers[l]
            delta = _ops.backprop_delta(delta, nxt.weight, hs[l - 1], nxt.scale,
                                        *layers[l - 1].activation.op_args())


def _progress_bar(layers: list[DenseLayer], n_pairs: int, outputs: str, progress: bool | None):
    """A bar counting layers as they are added to the output; by default only
    when the Grams are large enough to take a while (> 1e11 flops)."""
    flops = _gram_flops(layers, n_pairs, outputs)
    return progress_bar(progress, len(layers), "fastntk.ntk layers", worth_it=flops > _PROGRESS_FLOPS, unit="layer")


_PROGRESS_FLOPS = 1e11


def _own_coefficients(layer: DenseLayer, l: int, shared: set[tuple[int, int]]) -> tuple[float, float]:
    """(c_l^2, beta_l^2): the multipliers of layer l's weight and bias terms;
    0 for a frozen tensor (not trained, so not in the kernel) and for a tensor
    other layers use too ((l, kind) in ``shared``; its whole term is added by
    :func:`_add_shared_terms`)."""
    own_weight = layer.weight_trained and (l, 0) not in shared
    own_bias = layer.bias is not None and layer.bias_trained and (l, 1) not in shared
    return (layer.scale ** 2 if own_weight else 0.0, layer.bias_scale ** 2 if own_bias else 0.0)


@dataclasses.dataclass(frozen=True)
class _SharedTensor:
    """A trained parameter tensor that several layers use: ``kind`` 0 for a
    weight, 1 for a bias; ``uses`` the layers, in forward order."""

    kind: int
    uses: tuple[int, ...]


def _shared_tensors(layers: list[DenseLayer]) -> list[_SharedTensor]:
    """The trained tensors used by more than one layer."""
    uses: dict[tuple[int, int], list[int]] = {}
    for l, layer in enumerate(layers):
        for kind, index, trained in ((0, layer.weight_param, layer.weight_trained),
                                     (1, layer.bias_param, layer.bias is not None and layer.bias_trained)):
            if index is not None and trained:
                uses.setdefault((kind, index), []).append(l)
    return [_SharedTensor(kind, tuple(ls)) for (kind, _), ls in uses.items() if len(ls) > 1]


def _add_shared_terms(out: torch.Tensor, layers: list[DenseLayer], shared: list[_SharedTensor],
                      layerwise: bool, add_pair) -> None:
    """Add each shared tensor's term. Its gradient is the sum over its uses
    u of c_u delta_u a_{u-1}^T (beta_u delta_u for a bias), so its term is
    sum over pairs (u, v) of c_u c_v <a_{u-1}, a'_{v-1}> <delta_u, delta'_v>,
    cross-layer pairs included. ``add_pair(target, u, v, weight_scale,
    bias_scale)`` adds one pair; with ``layerwise`` the whole term goes into
    the row of the tensor's first use."""
    for tensor in shared:
        target = out[tensor.uses[0], tensor.kind] if layerwise else out
        for u in tensor.uses:
            for v in tensor.uses:
                if tensor.kind == 0:
                    add_pair(target, u, v, layers[u].scale * layers[v].scale, 0.0)
                else:
                    add_pair(target, u, v, 0.0, layers[u].bias_scale * layers[v].bias_scale)


def _accumulate(accumulate, out: torch.Tensor, coefficients: tuple[float, float], layerwise: bool, l: int,
                *tensors, split_bias: bool = False):
    """Add layer l's weight and bias terms (multipliers ``coefficients``), into
    out[l, 0] and out[l, 1] when layerwise (in one call when ``accumulate``
    takes ``bias_out``: split_bias)."""
    weight_scale, bias_scale = coefficients
    if weight_scale == 0.0 and bias_scale == 0.0:
        return
    if not layerwise:
        accumulate(out, *tensors, weight_scale, bias_scale)
        return
    if weight_scale != 0.0 and bias_scale != 0.0 and split_bias:  # one delta Gram serves both terms
        accumulate(out[l, 0], *tensors, weight_scale, bias_scale, bias_out=out[l, 1])
        return
    if weight_scale != 0.0:
        accumulate(out[l, 0], *tensors, weight_scale, 0.0)
    if bias_scale != 0.0:
        accumulate(out[l, 1], *tensors, 0.0, bias_scale)


#: Whether networks that qualify go through the whole-network op; the tests
#: set it False to run the same models through the per-layer path too.
_USE_WHOLE_NETWORK_OP = True


def _whole_network(layers: list[DenseLayer], flops: float, progress: bool | None) -> bool:
    """Whether one :func:`fastntk._ops.mlp_ntk` call can compute the kernel:
    every weight and bias trained and used once (frozen and shared tensors
    take the per-layer path, which weights and pairs their terms), and no
    progress bar over layers wanted (the whole-network op reports none; the
    automatic bar appears only past 1e11 flops, where the per-layer Python
    work is a negligible share of the time anyway)."""
    if not _USE_WHOLE_NETWORK_OP or progress is True or (progress is None and flops > _PROGRESS_FLOPS):
        return False
    if any(not l.weight_trained or (l.bias is not None and not l.bias_trained) for l in layers):
        return False
    return not _shared_tensors(layers)


def _network_arguments(layers: list[DenseLayer]) -> tuple:
    """The network as :func:`fastntk._ops.mlp_ntk` takes it: weights, biases,
    scales, bias scales, activation names and parameters."""
    acts = [layer.activation.op_args() for layer in layers]
    return ([layer.weight for layer in layers], [layer.bias for layer in layers],
            [float(layer.scale) for layer in layers], [float(layer.bias_scale) for layer in layers],
            [a[0] for a in acts], [float(p) for a in acts for p in a[1:]])


def _gram_flops(layers: list[DenseLayer], n_pairs: int, outputs: str) -> float:
    """The Grams' flops, the estimate behind the automatic progress bar."""
    k = layers[-1].fan_out
    k_factor = k * k if outputs == "full" else k
    return 2 * n_pairs * sum(l.fan_in + k_factor * l.fan_out for l in layers)


def ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    outputs: str | Outputs = "full",
    layerwise: bool = False,
    allow_tf32: bool = False,
    progress: bool | None = None,
    max_memory: int | str | None = None,
    block_size: int | None = None,
    out: "torch.Tensor | str | None" = None,
    resume: bool = False,
) -> torch.Tensor:
    """Empirical NTK Theta(x1, x2) of a dense network, exactly, without Jacobians.

    Theta_{kk'}(x, x') = sum_params df_k(x)/dp df_k'(x')/dp, computed per layer as
    ``(c_l^2 <a^{l-1}(x), a^{l-1}(x')> + beta_l^2) <delta^l_k(x), delta^l_k'(x')>``.

    Parameters
    ----------
    model : :class:`fastntk.MLP`, or ``nn.Sequential`` of ``nn.Linear`` and
        elementwise activations (standard parametrization). Left unchanged.
        The sum runs over the trained parameters: tensors with
        ``requires_grad=False`` are left out (weight and bias separately),
        and a tensor used at several layers (a module repeated in the
        Sequential, tied weights) is one parameter, whose gradient sums over
        its uses. A model with no trainable tensor is refused.
    x1 : (N1, n_0) inputs, the model's dtype (float32/float64, or
        float16/bfloat16, computed in float32) and device.
    x2 : (N2, n_0) inputs, or None for x2 = x1 (computed once; the result
        is then exactly symmetric).
    outputs : ``"full"`` -> (N1, N2, K, K); ``"trace"`` -> (N1, N2), the sum
        over outputs; ``"per_output"`` -> (N1, N2, K). See :class:`Outputs`.
    layerwise : if True, prepend axes (L, 2): ``[l, 0]`` is layer l's weight
        term and ``[l, 1]`` its bias term (zero without bias or when frozen);
        they sum to the total. L counts layer applications; a shared tensor's
        whole term is in the row of its first use.
    allow_tf32 : let CUDA GEMMs use TF32 (about 1e-3 relative error in
        float32, several times faster on Ampere and newer). Off by default.
    progress : show a progress bar over layers (tqdm, on stderr). None:
        only for long calls (more than ~10^11 Gram flops) on a terminal.
    max_memory, block_size, out, resume : bounded memory and out of core:
        given any of them, the kernel is computed in row/column blocks by
        :func:`fastntk.scale.blocked_ntk`, which documents them.

    Returns
    -------
    Tensor of the model's dtype (float32 for a float16/bfloat16 model, which
    is computed in float32) and device, shaped as above.

    Raises
    ------
    TypeError, ValueError
        For an unsupported model, or inputs of the wrong type, shape, dtype or
        device, empty, or containing NaN/Inf; the message names the argument.
    FloatingPointError
        If the kernel overflows to Inf/NaN from finite inputs and weights
        (e.g. a deep chaotic network in float32); the message names the
        first layer that overflowed.
    """
    if out is not None or resume is not False:
        _refuse_parts("out= and resume=", model)
    combined = _sum_over_parts(ntk, model, x1, x2, outputs=outputs, layerwise=layerwise, allow_tf32=allow_tf32,
                               progress=progress, max_memory=max_memory, block_size=block_size)
    if combined is not None:
        return combined
    if _blocked_requested(max_memory, block_size, out, resume):
        from .scale.blocked import blocked_ntk

        return blocked_ntk(model, x1, x2, outputs=outputs, layerwise=layerwise, allow_tf32=allow_tf32,
                           progress=progress, max_memory=max_memory, block_size=block_size, out=out,
                           resume=resume)
    layers = _check_model(model, finite=False)  # checked below, by the op's result or before the per-layer path
    outputs = _check_outputs(outputs)
    _check_flag("layerwise", layerwise)
    _check_flag("allow_tf32", allow_tf32)
    check_progress(progress)
    x1 = _check_input("x1", x1, layers)
    symmetric = x2 is None
    x2 = x1 if symmetric else _check_input("x2", x2, layers)
    layers, x1, x2 = _compute_dtype(layers, x1, x2)
    n1, n2, k = x1.shape[0], x2.shape[0], layers[-1].fan_out
    shape = {"full": (n1, n2, k, k), "trace": (n1, n2), "per_output": (n1, n2, k)}[outputs]
    if layerwise:
        shape = (len(layers), 2) + shape

    with torch.no_grad(), _tf32(allow_tf32):
        if _whole_network(layers, _gram_flops(layers, n1 * n2, outputs), progress):
            out = _ops.mlp_ntk(x1, None if symmetric else x2, *_network_arguments(layers), outputs, layerwise)
            _check_finite_result("ntk", out, layers, (x1, None), (x2, None))
            return out
        _check_finite_parameters(layers)
        out = torch.zeros(shape, dtype=x1.dtype, device=x1.device)
        h1 = _forward(layers, x1)
        h2 = h1 if symmetric else _forward(layers, x2)
        signals2 = None if symmetric else _layer_signals(layers, x2, h2)
        _add_kernel(out, layers, _layer_signals(layers, x1, h1), signals2, outputs, layerwise, progress)
        _check_finite_result("ntk", out, layers, (x1, h1), (x2, h2))
    return out


def _add_kernel(out: torch.Tensor, layers: list[DenseLayer], signals1, signals2, outputs: str,
                layerwise: bool, progress: bool | None) -> None:
    """out += Theta(x1, x2) from per-layer signals as :func:`_layer_signals`
    yields them (an iterator or a cached list); signals2 None means x2 = x1:
    one forward/backward pass serves both sides of every Gram, and out comes
    out exactly symmetric. The blocked driver (fastntk.scale) calls this per
    block with the row block's signals cached."""
    symmetric = signals2 is None
    n1, n2 = out.shape[2:4] if layerwise else out.shape[:2]
    pairs = ((l, a1, a1, d1, d1) for l, a1, d1 in signals1) if symmetric else (
        (l, a1, a2, d1, d2) for (l, a1, d1), (_, a2, d2) in zip(signals1, signals2)
    )
    shared = _shared_tensors(layers)
    bar = _progress_bar(layers, n1 * n2, outputs, progress)
    try:
        if layerwise or shared:
            _accumulate_per_layer(out, layers, pairs, outputs, layerwise, shared, bar)
        else:
            # The CPU kernel fuses layers only for x2 = x1 (measured: no gain
            # otherwise), so caching signals would there cost memory for nothing.
            fuses = symmetric or out.device.type != "cpu"
            _accumulate_fused(out, layers, pairs, outputs, bar, cache_limit=out.numel() if fuses else 0)
    finally:
        bar.close()


def _shared_uses(shared: list[_SharedTensor]) -> set[tuple[int, int]]:
    return {(l, t.kind) for t in shared for l in t.uses}


def _accumulate_per_layer(out: torch.Tensor, layers: list[DenseLayer], pairs, outputs: str, layerwise: bool,
                          shared: list[_SharedTensor], bar) -> None:
    """Add each layer's own terms as the backward pass reaches it, keeping
    the signals of layers that use a shared tensor, whose terms
    :func:`_add_shared_terms` adds at the end."""
    accumulate = functools.partial(_ops.ntk_accumulate, outputs=outputs)
    uses = _shared_uses(shared)
    kept = {}
    for l, a1, a2, d1, d2 in pairs:
        _accumulate(accumulate, out, _own_coefficients(layers[l], l, uses), layerwise, l, a1, a2, d1, d2,
                    split_bias=True)
        if (l, 0) in uses or (l, 1) in uses:
            kept[l] = (a1, a2, d1, d2)
        bar.update(1)

    def add_pair(target, u, v, weight_scale, bias_scale):
        accumulate(target, kept[u][0], kept[v][1], kept[u][2], kept[v][3], weight_scale, bias_scale)

    _add_shared_terms(out, layers, shared, layerwise, add_pair)


def _accumulate_fused(out: torch.Tensor, layers: list[DenseLayer], pairs, outputs: str, bar,
                      cache_limit: int) -> None:
    """Add every layer's term to out, caching consecutive layers' activations
    and signals while they hold fewer than ``cache_limit`` elements, then
    adding the group (the layer that reaches the limit included) in one call
    (:func:`fastntk._ops.ntk_accumulate_layers`), whose kernels then read and
    write out once for several layers instead of once per layer. That matters
    when out is large (many inputs, K outputs, narrow layers). The cache peaks
    below cache_limit plus one layer; with cache_limit = 0 (or small), layers
    go one at a time and only two layers of signals are alive. ``bar`` counts
    layers added."""
    pending: list[tuple] = []
    cached = 0

    def flush():
        if pending:
            ls, a1, a2, d1, d2 = zip(*pending)
            weight_scales, bias_scales = zip(*(_own_coefficients(layers[l], l, set()) for l in ls))
            _ops.ntk_accumulate_layers(out, a1, a2, d1, d2, list(weight_scales), list(bias_scales), outputs)
            bar.update(len(pending))
            pending.clear()

    for l, a1, a2, d1, d2 in pairs:
        if _own_coefficients(layers[l], l, set()) == (0.0, 0.0):  # all frozen
            bar.update(1)
            continue
        pending.append((l, a1, a2, d1, d2))
        cached += sum(t.numel() for t in {id(t): t for t in (a1, a2, d1, d2)}.values())
        if cached >= cache_limit:
            flush()
            cached = 0
    flush()


def ntk_diag(
    model: nn.Module,
    x: torch.Tensor,
    *,
    outputs: str | Outputs = "full",
    layerwise: bool = False,
    max_memory: int | str | None = None,
    block_size: int | None = None,
    out: "torch.Tensor | str | None" = None,
    resume: bool = False,
) -> torch.Tensor:
    """Per-sample diagonal Theta(x_i, x_i), linear in N (no N x N matrix).

    With ``outputs="trace"`` this is the squared norm of each example's
    gradient summed over outputs.

    Parameters
    ----------
    model : as in :func:`ntk`.
    x : (N, n_0) inputs.
    outputs : ``"full"`` -> (N, K, K); ``"trace"`` -> (N,); ``"per_output"``
        -> (N, K).
    layerwise : prepend axes (L, 2) (weight, bias terms per layer).
    max_memory, block_size, out, resume : bounded memory and out of core:
        given any of them, inputs go in blocks through
        :func:`fastntk.scale.blocked_ntk_diag`, which documents them.

    Frozen and shared parameters are handled as in :func:`ntk`.

    Returns
    -------
    Tensor of the model's dtype and device, shaped as above.

    Raises
    ------
    TypeError, ValueError, FloatingPointError
        As :func:`ntk`.
    """
    if out is not None or resume is not False:
        _refuse_parts("out= and resume=", model)
    combined = _sum_over_parts(ntk_diag, model, x, outputs=outputs, layerwise=layerwise, max_memory=max_memory,
                               block_size=block_size)
    if combined is not None:
        return combined
    if _blocked_requested(max_memory, block_size, out, resume):
        from .scale.blocked import blocked_ntk_diag

        return blocked_ntk_diag(model, x, outputs=outputs, layerwise=layerwise, max_memory=max_memory,
                                block_size=block_size, out=out, resume=resume)
    layers = _check_model(model, finite=False)  # as in ntk
    outputs = _check_outputs(outputs)
    _check_flag("layerwise", layerwise)
    layers, x = _compute_dtype(layers, _check_input("x", x, layers))
    n, k = x.shape[0], layers[-1].fan_out
    shape = {"full": (n, k, k), "trace": (n,), "per_output": (n, k)}[outputs]
    if layerwise:
        shape = (len(layers), 2) + shape
    shared = _shared_tensors(layers)
    uses = _shared_uses(shared)
    with torch.no_grad():
        if _whole_network(layers, 0.0, None):
            out = _ops.mlp_ntk(x, None, *_network_arguments(layers), outputs, layerwise, diagonal=True)
            _check_finite_result("ntk_diag", out, layers, (x, None))
            return out
        _check_finite_parameters(layers)
        out = torch.zeros(shape, dtype=x.dtype, device=x.device)
        accumulate = functools.partial(_ops.ntk_diag_accumulate, outputs=outputs)
        hs = _forward(layers, x)
        kept = {}
        for l, a, d in _layer_signals(layers, x, hs):
            _accumulate(accumulate, out, _own_coefficients(layers[l], l, uses), layerwise, l, a, d)
            if (l, 0) in uses or (l, 1) in uses:
                kept[l] = (a, d)

        def add_pair(target, u, v, weight_scale, bias_scale):
            if u == v:
                accumulate(target, *kept[u], weight_scale, bias_scale)
            else:
                target += _diag_cross_term(*kept[u], *kept[v], weight_scale, bias_scale, outputs)

        _add_shared_terms(out, layers, shared, layerwise, add_pair)
        _check_finite_result("ntk_diag", out, layers, (x, hs))
    return out


def _diag_cross_term(a_u: torch.Tensor, d_u: torch.Tensor, a_v: torch.Tensor, d_v: torch.Tensor,
                     weight_scale: float, bias_scale: float, outputs: str) -> torch.Tensor:
    """Per-sample (weight_scale <a_u, a_v> + bias_scale) <delta_u, delta_v>
    of two different layers u, v (a: (N, n), d: (N, K, m)), reduced to
    ``outputs``: the cross-layer terms of a shared tensor's diagonal, which
    the diagonal op (one layer's signals) does not cover."""
    a_gram = weight_scale * (a_u * a_v).sum(-1) + bias_scale
    full = torch.einsum("nkf,nlf->nkl", d_u, d_v) * a_gram[:, None, None]
    if outputs == "full":
        return full
    diagonal = torch.diagonal(full, dim1=-2, dim2=-1)
    return diagonal.sum(-1) if outputs == "trace" else diagonal


def _check_finite_result(function: str, out: torch.Tensor, layers: list[DenseLayer], *sides) -> None:
    """Raise if the kernel is not finite: ValueError for a NaN/Inf parameter,
    else FloatingPointError naming where it overflowed. One reduction on the result; the search (another
    forward/backward pass) runs only on failure. ``sides``: (x, [h^l]) of
    each input batch ([h^l] None: recomputed here)."""
    if _all_finite(out):
        return
    _check_finite_parameters(layers)  # a NaN/Inf parameter is bad input, not an overflow
    sites = [_overflow_site(layers, x, _forward(layers, x) if hs is None else hs, out.dtype) for x, hs in sides]
    where = min((s for s in sites if s is not None), default=(len(layers), "the sum over layers"))[1]
    advice = ("compute in float64 (model.double() and inputs .double())" if out.dtype != torch.float64
              else "rescale the inputs or the weights")
    raise FloatingPointError(f"fastntk.{function}: the kernel overflowed to Inf/NaN in {out.dtype} from finite "
                             f"inputs and weights, first in {where}; {advice}")


def _overflow_site(layers: list[DenseLayer], x: torch.Tensor, hs: list[torch.Tensor], dtype: torch.dtype):
    """(l, description) of the first layer whose pre-activations, signals or
    Gram term (bounded by (c^2 max|a|^2 + beta^2) max sum_k |delta_k|^2,
    in float64) leave ``dtype``'s range; None if none does."""
    name = lambda l: f"layer {l} of {len(layers)} (0-based)"
    bad = next((l for l, h in enumerate(hs) if not _all_finite(h)), None)
    if bad is not None:
        return bad, f"the pre-activations of {name(bad)}"
    sites = []
    for l, a, d in _layer_signals(layers, x, hs):
        if not _all_finite(d):  # where the backward pass overflowed: every layer below inherits it
            sites.append((l, f"the backpropagated signals of {name(l)}"))
            break
        a_sq, d_sq = a.double().square().sum(-1).max(), d.double().square().sum((1, 2)).max()
        if (layers[l].scale ** 2 * a_sq + layers[l].bias_scale ** 2) * d_sq > torch.finfo(dtype).max:
            sites.append((l, f"the Gram term of {name(l)}"))
    return min(sites, default=None)
