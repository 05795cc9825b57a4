"""Models fastntk understands: the :class:`MLP` it ships, and the parsing of a
model into the list of dense layers the NTK engine works on.

A dense layer computes ``h = c * a @ W^T + beta * b`` followed by an
elementwise activation. :func:`parse_model` accepts a :class:`MLP` (NTK or
standard parametrization) or a ``torch.nn.Sequential`` of ``nn.Linear``
layers and supported activations (standard parametrization: c = beta = 1),
and refuses anything else with a ``TypeError`` naming the module.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ._reference import ACTIVATIONS, activation_forward, pre_activation

PARAMETRIZATIONS = ("ntk", "standard")


class Erf(nn.Module):
    """Elementwise error function, ``torch.erf``: the activation with a closed
    form infinite-width kernel (Williams 1997)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.erf(x)


@dataclass(frozen=True)
class Activation:
    """An elementwise activation phi, by name, with its parameters.

    ``name`` is one of ``identity, relu, leaky_relu, tanh, sigmoid, gelu,
    gelu_tanh, silu, softplus, erf``; ``negative_slope`` is used by
    leaky_relu, ``beta`` and ``threshold`` by softplus (as in nn.Softplus).
    """

    name: str = "identity"
    negative_slope: float = 0.01
    beta: float = 1.0
    threshold: float = 20.0

    def __post_init__(self):
        if self.name not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {self.name!r}")

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """phi(h), elementwise; identical to the corresponding nn module."""
        return activation_forward(h, *self.op_args())

    def op_args(self) -> tuple:
        """The (activation, negative_slope, beta, threshold) arguments of the ops."""
        return (self.name, self.negative_slope, self.beta, self.threshold)

    @classmethod
    def from_module(cls, module: nn.Module) -> "Activation | None":
        """The activation a module applies, or None if it is not one we know."""
        if isinstance(module, nn.Identity):
            return cls("identity")
        if isinstance(module, nn.LeakyReLU):
            return cls("leaky_relu", negative_slope=float(module.negative_slope))
        if isinstance(module, nn.Softplus):
            return cls("softplus", beta=float(module.beta), threshold=float(module.threshold))
        if isinstance(module, nn.GELU):
            return cls("gelu_tanh" if module.approximate == "tanh" else "gelu")
        for kind, name in ((nn.ReLU, "relu"), (nn.Tanh, "tanh"), (nn.Sigmoid, "sigmoid"),
                           (nn.SiLU, "silu"), (Erf, "erf")):
            if type(module) is kind:
                return cls(name)
        return None


IDENTITY = Activation("identity")


@dataclass(frozen=True)
class DenseLayer:
    """One weight layer as the engine sees it: h = scale * a @ weight^T +
    bias_scale * bias, then ``activation`` (identity after the output layer
    unless the model ends in an activation).

    Attributes
    ----------
    weight : (n_out, n_in) tensor (detached, sharing the model's storage, when
        made by :func:`parse_model`).
    bias : (n_out,) tensor or None.
    scale : c_l; bias_scale : beta_l (0 when there is no bias).
    activation : the activation applied to this layer's output.
    weight_trained, bias_trained : whether the model's tensor requires grad;
        a frozen tensor is not trained, so it has no term in the NTK.
    weight_param, bias_param : index of the model's parameter tensor (in
        order of first use); layers that use one tensor (a module repeated in
        a Sequential, tied weights) share the index. None: a tensor of its own.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    scale: float
    bias_scale: float
    activation: Activation
    weight_trained: bool = True
    bias_trained: bool = True
    weight_param: int | None = None
    bias_param: int | None = None

    @property
    def fan_in(self) -> int:
        return self.weight.shape[1]

    @property
    def fan_out(self) -> int:
        return self.weight.shape[0]

    def pre_activation(self, a: torch.Tensor) -> torch.Tensor:
        """h = scale * a @ weight^T + bias_scale * bias, (N, n_out)."""
        return pre_activation(a, self.weight, self.bias, self.scale, self.bias_scale)


def _parameter_list(params: nn.ParameterList) -> list:
    """The entries of a ParameterList, read from its parameter dict (its
    indexing costs several microseconds per entry, on every NTK call)."""
    found = params._parameters
    n = len(params)
    if len(found) == n:
        return [found[str(i)] for i in range(n)]
    return list(params)


class MLP(nn.Module):
    """A dense network in NTK or standard parametrization.

    ``h^l = c_l W^l a^{l-1} + beta_l b^l``, ``a^l = phi(h^l)``, output
    ``f = h^L`` (no activation on the last layer).

    Parameters
    ----------
    widths : [n_0, n_1, ..., n_L], input dimension, hidden widths, outputs K.
    activation : one of ``relu, leaky_relu, tanh, sigmoid, gelu, gelu_tanh,
        silu, softplus, erf, identity``.
    parametrization : ``"ntk"``: W, b ~ N(0, 1) and c_l = sigma_w /
        sqrt(n_{l-1}), beta_l = sigma_b applied in forward; ``"standard"``:
        W ~ N(0, sigma_w^2 / n_{l-1}), b ~ N(0, sigma_b^2), c = beta = 1.
    sigma_w, sigma_b : weight and bias standard deviations (sigma_b = 0
        keeps the biases, initialised at zero in standard parametrization and
        trained; in NTK parametrization beta = 0 removes them from the NTK).
    bias : whether layers have biases.
    seed, generator : reproducible initialization (give at most one).
    dtype, device : of the parameters.

    Examples
    --------
    >>> net = MLP([784, 2048, 2048, 10], activation="relu", sigma_w=2**0.5)
    >>> net(torch.randn(5, 784)).shape
    torch.Size([5, 10])

    ``mirrored=True`` returns a :class:`MirroredMLP` instead: two exact
    copies of this network, output (f_1 - f_2) / sqrt(2), exactly 0 at init.
    """

    def __new__(cls, *args, mirrored: bool = False, **kwargs):
        if not isinstance(mirrored, bool):
            raise TypeError(f"mirrored must be a bool; got {type(mirrored).__name__} {mirrored!r}")
        if mirrored and cls is MLP:
            return MirroredMLP(*args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        widths: Sequence[int],
        activation: str = "relu",
        parametrization: str = "ntk",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        bias: bool = True,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        mirrored: bool = False,
    ):
        super().__init__()
        widths = _check_widths(widths)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}; got {activation!r}")
        if parametrization not in PARAMETRIZATIONS:
            raise ValueError(f"parametrization must be one of {', '.join(PARAMETRIZATIONS)}; got {parametrization!r}")
        for name, value in (("sigma_w", sigma_w), ("sigma_b", sigma_b)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if seed is not None and generator is not None:
            raise ValueError("give at most one of seed and generator")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        dtype = dtype or torch.get_default_dtype()
        self.widths = widths
        self.activation = activation
        self.parametrization = parametrization
        self.sigma_w = float(sigma_w)
        self.sigma_b = float(sigma_b)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList() if bias else None
        ntk_param = parametrization == "ntk"
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            w_std = 1.0 if ntk_param else self.sigma_w / math.sqrt(fan_in)
            w = torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64) * w_std
            self.weights.append(nn.Parameter(w.to(dtype=dtype, device=device)))
            if bias:
                b_std = 1.0 if ntk_param else self.sigma_b
                b = torch.randn(fan_out, generator=generator, dtype=torch.float64) * b_std
                self.biases.append(nn.Parameter(b.to(dtype=dtype, device=device)))

    def _layers(self) -> list[DenseLayer]:
        phi = Activation(self.activation)
        ntk_param = self.parametrization == "ntk"
        weights = _parameter_list(self.weights)
        biases = [None] * len(weights) if self.biases is None else _parameter_list(self.biases)
        bias_scale = 0.0 if self.biases is None else (self.sigma_b if ntk_param else 1.0)
        last = len(weights) - 1
        return [
            DenseLayer(
                weight=w,
                bias=b,
                scale=self.sigma_w / math.sqrt(w.shape[1]) if ntk_param else 1.0,
                bias_scale=bias_scale,
                activation=phi if l < last else IDENTITY,
            )
            for l, (w, b) in enumerate(zip(weights, biases))
        ]

    def dense_layers(self) -> list[DenseLayer]:
        """This network as a list of :class:`DenseLayer` (detached views)."""
        return _detached(self._layers())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_0) -> (N, K), through the same per-layer code as the NTK engine."""
        for layer in self._layers():
            x = layer.activation(layer.pre_activation(x))
        return x

    def extra_repr(self) -> str:
        return (f"widths={self.widths}, activation={self.activation!r}, "
                f"parametrization={self.parametrization!r}, sigma_w={self.sigma_w:g}, "
                f"sigma_b={self.sigma_b:g}, bias={self.biases is not None}")


class MirroredMLP(nn.Module):
    """Mirrored initialization: f(x) = (f_1(x) - f_2(x)) / sqrt(2), where f_2
    starts as an exact copy of f_1, so the output is exactly 0 at init while
    the NTK is that of one copy (Chen, Li & Lin). Both copies are trained.

    Made by ``MLP(..., mirrored=True)`` (same arguments as :class:`MLP`).
    The NTK is (Theta_1 + Theta_2) / 2, the average of the copies' kernels
    (their parameters are disjoint and each enters with weight 1/sqrt(2));
    at init it equals the single copy's. :func:`ntk_parts` gives the engine
    the two copies.

    Attributes
    ----------
    first, second : the two :class:`MLP` copies.
    """

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.first = MLP(*args, **kwargs)
        self.second = copy.deepcopy(self.first)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, n_0) -> (N, K); exactly 0 while the copies are equal."""
        return (self.first(x) - self.second(x)) * _INV_SQRT2

    def extra_repr(self) -> str:
        return "mirrored: (first(x) - second(x)) / sqrt(2)"


_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def ntk_parts(model: nn.Module) -> list[tuple[float, nn.Module]]:
    """The model's NTK as sum_i c_i Theta(part_i): ``[(1.0, model)]`` for a
    single network, ``[(0.5, first), (0.5, second)]`` for a
    :class:`MirroredMLP`."""
    check_forward_is_standard(model)
    if isinstance(model, MirroredMLP):
        return [(0.5, model.first), (0.5, model.second)]
    return [(1.0, model)]


# The classes whose forward the engine reproduces from their parameters
# alone. A subclass that overrides forward, or a forward hook, changes
# model(x) in a way the parsed layers cannot show: refused, as a wrong
# kernel would otherwise come back without a warning.
_STANDARD_FORWARD = (nn.Sequential, nn.Linear, nn.Identity, nn.Dropout, nn.ReLU, nn.LeakyReLU, nn.Tanh,
                     nn.Sigmoid, nn.GELU, nn.SiLU, nn.Softplus, Erf, MLP, MirroredMLP)
_STANDARD_TYPES = frozenset(_STANDARD_FORWARD)


def check_forward_is_standard(model) -> None:
    """Refuse a model whose output is not what its parsed layers compute.

    Raises
    ------
    TypeError
        If any module of ``model`` has a forward hook or forward pre-hook (or
        global forward hooks are registered), or is a subclass of a supported
        module that overrides ``forward``; the message names the module.
    """
    if not isinstance(model, nn.Module):
        return  # parse_model names the type
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        raise TypeError("global forward hooks are registered (torch.nn.modules.module.register_module_forward_hook "
                        "or _pre_hook): they can change every layer's output, which fastntk's layerwise "
                        "kernel would not see; remove them before computing the NTK")
    for name, module in model.named_modules():
        if not (module._forward_hooks or module._forward_pre_hooks) and type(module) in _STANDARD_TYPES:
            continue  # the common case (the classes themselves), without the loop over the bases below
        where = f"model.{name}" if name else "model"
        if module._forward_hooks or module._forward_pre_hooks:
            raise TypeError(f"{where} ({type(module).__name__}) has a forward hook or forward pre-hook: it can "
                            "change the module's output, which fastntk's layerwise kernel would not see; "
                            "remove it (handle.remove()) before computing the NTK")
        for base in _STANDARD_FORWARD:
            if isinstance(module, base) and type(module).forward is not base.forward:
                raise TypeError(f"{where} ({type(module).__name__}) subclasses {base.__name__} but overrides "
                                "forward(); fastntk computes the kernel of the standard forward only. Use "
                                f"{base.__name__} itself, or compute this model's NTK with torch.func")


def _check_widths(widths) -> list[int]:
    try:
        widths = list(widths)
    except TypeError:
        raise TypeError(f"widths must be a sequence of ints [n_0, ..., n_L]; got {widths!r}") from None
    if len(widths) < 2:
        raise ValueError(f"widths must list at least an input and an output size, [n_0, ..., n_L]; got {widths!r}")
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
            raise ValueError(f"widths[{i}] must be a positive int; got {w!r} in widths={widths!r}")
    return widths


SUPPORTED_MODULES = ("fastntk.MLP, nn.Linear, or nn.Sequential of nn.Linear and elementwise activations "
                     "(ReLU, LeakyReLU, Tanh, Sigmoid, GELU, SiLU, Softplus, Identity, fastntk.Erf; "
                     "Dropout in eval mode)")


def _detached(layers: list[DenseLayer]) -> list[DenseLayer]:
    """The engine's view of layers holding the model's own parameters:
    detached tensors, each tensor's requires_grad as ``*_trained``, and one
    index per distinct tensor (by identity, as ``named_parameters`` and
    ``torch.func.functional_call`` count them) so that a tensor used at
    several layers is recognised as one parameter."""
    index: dict[int, int] = {}

    def param(t: torch.Tensor | None) -> int | None:
        return None if t is None else index.setdefault(id(t), len(index))

    # DenseLayer(...), not dataclasses.replace: this runs on every NTK call
    return [DenseLayer(
        weight=layer.weight.detach(), bias=None if layer.bias is None else layer.bias.detach(),
        scale=layer.scale, bias_scale=layer.bias_scale, activation=layer.activation,
        weight_trained=layer.weight.requires_grad, bias_trained=layer.bias is not None and layer.bias.requires_grad,
        weight_param=param(layer.weight), bias_param=param(layer.bias),
    ) for layer in layers]


def _flatten_sequential(model: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    items = []
    # Not named_children(): it skips a module that appears twice, which the
    # forward pass (iterating _modules) applies twice.
    for name, module in model._modules.items():
        if module is None:
            continue
        if isinstance(module, nn.Sequential):
            items += _flatten_sequential(module, f"{prefix}{name}.")
        else:
            items.append((f"{prefix}{name}", module))
    return items


def parse_model(model: nn.Module) -> list[DenseLayer]:
    """The dense layers of ``model``, in order.

    Parameters
    ----------
    model : a :class:`MLP`, a single ``nn.Linear``, or an ``nn.Sequential`` (nested allowed) of
        ``nn.Linear`` (with or without bias) each followed by at most one
        supported activation; ``nn.Identity`` and ``nn.Dropout`` in eval
        mode (or p = 0) are skipped.

    A module may appear several times, and layers may share a weight or bias
    tensor (tied weights): each tensor is one parameter, recorded by
    ``weight_param`` / ``bias_param``. Tensors with ``requires_grad=False``
    are marked untrained (``weight_trained`` / ``bias_trained``).

    Returns
    -------
    list of :class:`DenseLayer`, one per application of a weight layer, in
    the order of the forward pass; the last one's activation is the model's
    output activation (identity if none).

    Raises
    ------
    TypeError
        If ``model`` is not an nn.Module, or contains an unsupported module,
        or modules in an unsupported order, or a forward hook or a supported
        module whose forward is overridden (see
        :func:`check_forward_is_standard`); the message names the module.
    ValueError
        If ``model`` is on the meta device (no values to compute with).
    """
    check_forward_is_standard(model)
    if isinstance(model, MLP):
        layers = model.dense_layers()
    elif isinstance(model, nn.Sequential):
        layers = _detached(_parse_sequential(model))
    elif type(model) is nn.Linear:
        layers = _detached(_parse_sequential(nn.Sequential(model)))
    elif isinstance(model, MirroredMLP):
        raise TypeError("a mirrored MLP is two networks, not one chain of layers: parse each of "
                        "fastntk.models.ntk_parts(model) (fastntk.ntk does so)")
    elif isinstance(model, nn.Module):
        raise TypeError(f"model must be {SUPPORTED_MODULES}; got {type(model).__name__}")
    else:
        raise TypeError(f"model must be a torch.nn.Module ({SUPPORTED_MODULES}); got {type(model).__name__}")
    dtypes = {p.dtype for l in layers for p in (l.weight, l.bias) if p is not None}
    devices = {p.device for l in layers for p in (l.weight, l.bias) if p is not None}
    if len(dtypes) > 1 or len(devices) > 1:
        raise TypeError(f"model parameters must share one dtype and device; got dtypes {sorted(map(str, dtypes))} "
                        f"and devices {sorted(map(str, devices))}")
    if not all(d.is_floating_point for d in dtypes):
        raise TypeError(f"model parameters must be real floating point (float16, bfloat16, float32, float64); "
                        f"got {dtypes.pop()}")
    if devices.pop().type == "meta":
        raise ValueError("model is on the meta device: its parameters have shapes but no values; "
                         "materialize it first, e.g. model.to_empty(device='cpu') and initialize the weights")
    return layers


def _parse_sequential(model: nn.Sequential) -> list[DenseLayer]:
    specs: list[list] = []  # [linear, activation or None]
    for name, module in _flatten_sequential(model):
        where = f"model[{name}] ({module!r})"
        if isinstance(module, nn.Dropout):
            if module.training and module.p > 0:
                raise TypeError(f"{where} is dropout in training mode, which makes the NTK random; "
                                "call model.eval() first")
            continue
        if type(module) is nn.Linear:
            specs.append([module, None])
            continue
        act = Activation.from_module(module)
        if act is None:
            raise TypeError(f"unsupported module {where}: fastntk supports {SUPPORTED_MODULES}")
        if act.name == "identity":
            continue
        if not specs:
            raise TypeError(f"{where} comes before any nn.Linear; the model must start with nn.Linear")
        if specs[-1][1] is not None:
            raise TypeError(f"{where} follows another activation ({specs[-1][1].name}); "
                            "fastntk supports one activation per nn.Linear")
        specs[-1][1] = act
    if not specs:
        raise TypeError(f"model contains no nn.Linear layer; fastntk supports {SUPPORTED_MODULES}")
    layers = []
    for i, (linear, act) in enumerate(specs):
        if i and linear.in_features != specs[i - 1][0].out_features:
            raise TypeError(f"nn.Linear {i} expects {linear.in_features} features but the previous layer "
                            f"outputs {specs[i - 1][0].out_features}")
        layers.append(DenseLayer(
            weight=linear.weight,
            bias=linear.bias,
            scale=1.0,
            bias_scale=0.0 if linear.bias is None else 1.0,
            activation=act or IDENTITY,
        ))
    return layers
