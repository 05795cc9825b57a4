"""The linearized network f_lin(x; w) = f(x; w0) + J(x) (w - w0): the model
NTK theory says a wide network trains like.

:func:`linearize` returns it as an ``nn.Module`` whose parameters start at
w0 and train with any optimizer; its forward pass is one forward-mode
Jacobian-vector product (``torch.func.jvp``), so no Jacobian is ever stored
and a step costs about two forward passes plus their backward.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, jvp


class LinearizedModel(nn.Module):
    """f_lin(x; w) = f(x; w0) + J_w0(x) (w - w0), trainable in w.

    Build it with :func:`linearize`. ``parameters()`` are the trainable w,
    starting at w0 (a copy: the original model is not touched); w0 and the
    frozen parameters of the original are buffers. At w = w0 the outputs
    equal the network's, bit for bit up to the jvp's rounding, and so does
    the NTK: it is the same J(x) J(x')^T, for every w.

    Attributes
    ----------
    base : a frozen copy of the original model at w0 (its parameters turned
        into buffers), evaluated functionally.
    param_names : the original model's trainable parameter names, in the
        order of ``parameters()``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("model has no trainable parameters (requires_grad=True) to linearize in")
        self.param_names = [n for n, _ in trainable]
        self.base = copy.deepcopy(model)
        _parameters_to_buffers(self.base)
        self.weights = nn.ParameterList([nn.Parameter(p.detach().clone()) for _, p in trainable])

    def _w0(self) -> dict:
        buffers = dict(self.base.named_buffers())
        return {n: buffers[n] for n in self.param_names}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w0 = self._w0()
        dw = {n: w - w0[n] for n, w in zip(self.param_names, self.weights)}
        f0, df = jvp(lambda w: functional_call(self.base, w, (x,)), (w0,), (dw,))
        return f0 + df

    def displacement(self) -> float:
        """||w - w0||_2 over all trainable parameters."""
        w0 = self._w0()
        with torch.no_grad():
            return sum(((w - w0[n]) ** 2).sum() for n, w in zip(self.param_names, self.weights)).sqrt().item()


def _parameters_to_buffers(module: nn.Module) -> None:
    # w0 must not be trained or handed to an optimizer: keep it as buffers
    # (modules read their weights by attribute, which finds buffers too).
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            del m._parameters[name]
            m.register_buffer(name, p.detach().clone())


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearized network around the model's current parameters w0.

    Parameters
    ----------
    model : any ``nn.Module`` mapping (N, n_0) -> (N, K) that ``torch.func``
        can differentiate forward (e.g. :class:`fastntk.MLP`,
        ``nn.Sequential``). Left unchanged.

    Returns
    -------
    :class:`LinearizedModel`: (N, n_0) -> (N, K), parameters initialised at
    w0, trainable by any optimizer (``torch.optim.SGD(lin.parameters(), lr)``).

    Examples
    --------
    >>> net = fastntk.MLP([4, 64, 1], seed=0)
    >>> lin = fastntk.linearize(net)
    >>> x = torch.randn(3, 4)
    >>> torch.equal(lin(x), net(x))  # at w = w0
    True
    """
    return LinearizedModel(model)
