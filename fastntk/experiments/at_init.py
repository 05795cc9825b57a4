"""What the experiments on the NTK at initialization share: the ICML 2022
network and inputs, the phases, and the exact sigma_w-scaling shortcut.

Network convention (the ICML setup, the default everywhere): ``depth`` is
the number of hidden layers, the network is ``fastntk.MLP([n_0] + [width] *
depth + [1])`` with n_0 = width, ReLU, standard parametrization
(W ~ N(0, sigma_w^2 / fan_in)), biases initialised to zero (sigma_b = 0) but
trained, so they count in the NTK; scalar output. Inputs lie on the unit
sphere: x = e_1 and x' = c e_1 + sqrt(1 - c^2) e_2 for cosine c (the law of
the kernel depends only on the norms and the cosine, since the weights are
rotation invariant).

Speed-up used when it is exact: for a positively homogeneous activation
(relu, leaky_relu, identity) in standard parametrization with sigma_b = 0,
the network with seed s at sigma_w^2 = v has the weights of the one at
sigma_w^2 = 1 times sqrt(v), so per init its layer-l weight term scales as
v^(L-1) and its bias term as v^(L-l) (L = depth + 1 weight layers). One
ensemble at sigma_w^2 = 1 then gives every sigma_w^2, init by init, exactly
what separate ensembles with the same seeds would give (a test checks it).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..ensemble import ensemble_ntk
from .registry import add_list_argument

#: The 16 sigma_w^2 values of Seleznova & Kutyniok (ICML 2022).
ICML_SIGMA_W2 = (0.5, 0.8, 1.0, 1.2, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0, 2.1, 2.2, 2.5, 3.0, 3.5)
PHASES = ("ordered", "edge_of_chaos", "chaotic")
_HOMOGENEOUS = ("relu", "leaky_relu", "identity")

#: The network paragraph of every at-init experiment's --help.
NETWORK_HELP = """\
Network: an MLP with DEPTH hidden layers of width WIDTH and a scalar output,
ReLU, standard parametrization (W ~ N(0, sigma_w^2/fan_in)), biases
initialised to zero (--sigma-b 0) but trained, so they count in the NTK.
DEPTH always counts hidden layers (DEPTH + 1 weight layers). Init i uses seed
SEED + i, i.e. it is fastntk.MLP(..., seed=SEED + i): every number can be
reproduced one network at a time. For ReLU with sigma_b = 0 the phases are:
ordered sigma_w^2 < 2, edge of chaos (EOC) sigma_w^2 = 2, chaotic > 2.

Lists and ranges: --depths 1 2 5 10, or 1:20 (1..20 inclusive), or 1:49:4
(step 4); --sigma-w2 accepts the word icml for the 16 ICML values.
"""


def phase_of(sigma_w2: float, activation: str = "relu", sigma_b: float = 0.0) -> str:
    """``"ordered"``, ``"edge_of_chaos"`` or ``"chaotic"``, from
    :func:`fastntk.infinite.phase` (chi_1 < 1, = 1, > 1)."""
    from .. import infinite

    return infinite.phase(activation, math.sqrt(sigma_w2), sigma_b, tol=1e-6)


def sphere_inputs(n0: int, cosines: Sequence[float], dtype=torch.float64) -> torch.Tensor:
    """(1 + len(cosines), n0): x_0 = e_1, then c e_1 + sqrt(1 - c^2) e_2 for each cosine c."""
    if n0 < 2:
        raise ValueError(f"the input dimension must be >= 2 to place two inputs at a given cosine; got {n0}")
    for c in cosines:
        if not isinstance(c, (int, float, np.floating, np.integer)) or not -1.0 <= float(c) <= 1.0:
            raise ValueError(f"cosines must be numbers in [-1, 1]; got {c!r} in {list(cosines)!r}")
    x = torch.zeros(1 + len(cosines), n0, dtype=dtype)
    x[0, 0] = 1.0
    for i, c in enumerate(cosines):
        x[i + 1, 0] = c
        x[i + 1, 1] = math.sqrt(max(0.0, 1.0 - c * c))
    return x


def homogeneous(activation: str, parametrization: str, sigma_b: float) -> bool:
    """Whether the sigma_w-scaling shortcut is exact for these settings."""
    return activation in _HOMOGENEOUS and parametrization == "standard" and sigma_b == 0


def per_init_layerwise(widths, x, seeds, sigma_w2s, *, activation, parametrization, sigma_b,
                       device, chunk) -> dict:
    """{sigma_w2: (S, L, 2, N, N) per-init layerwise trace kernels}, using the
    homogeneity scaling when exact, else one ensemble per sigma_w2."""
    depth = len(widths) - 2
    return dict(per_init_layerwise_depths(widths, [depth], x, seeds, sigma_w2s, activation=activation,
                                          parametrization=parametrization, sigma_b=sigma_b, device=device,
                                          chunk=chunk))[depth]


def per_init_layerwise_depths(widths, depths, x, seeds, sigma_w2s, *, activation, parametrization, sigma_b,
                              device, chunk, progress=False, sampler="seeded"):
    """Yields (depth, {sigma_w2: (S, depth + 1, 2, N, N) per-init layerwise trace
    kernels}) for each depth (hidden layers) of ``widths``'s sweep
    (:func:`fastntk.ensemble.ensemble_ntk` with ``depths``: the weights drawn and the
    forward pass run once for all depths), using the homogeneity scaling when
    exact, else one sweep per sigma_w2. ``progress``: the ensemble's bar over inits; ``sampler``: its
    sampler (the homogeneity scaling holds per init for either)."""
    common = dict(depths=depths, seeds=seeds, activation=activation, parametrization=parametrization,
                  sigma_b=sigma_b, outputs="trace", layerwise=True, keep=True, quantiles=None, progress=progress,
                  device=device, chunk=chunk, sampler=sampler)
    if not homogeneous(activation, parametrization, sigma_b):
        per_v = {v: ensemble_ntk(widths, x, sigma_w=math.sqrt(v), **common) for v in sigma_w2s}
        for d in depths:
            yield d, {v: per_v[v][d].kernels for v in sigma_w2s}
        return
    base = ensemble_ntk(widths, x, sigma_w=1.0, **common)
    for d in depths:
        L = d + 1
        out = {}
        for v in sigma_w2s:
            f = torch.empty(L, 2, dtype=torch.float64)
            f[:, 0] = v ** (L - 1)
            f[:, 1] = torch.tensor([v ** (L - l) for l in range(1, L + 1)], dtype=torch.float64)
            out[v] = base[d].kernels * f[None, :, :, None, None]
        yield d, out


def infinite_ntk(x, n_layers, activation, sigma_w2, sigma_b, parametrization, width):
    """The infinite-width (standard parametrization: expected) kernel on x, or None where
    :func:`fastntk.infinite.ntk` has no formula for these settings."""
    from .. import infinite

    try:
        return infinite.ntk(x, depth=n_layers, activation=activation, sigma_w=math.sqrt(sigma_w2),
                            sigma_b=sigma_b, parametrization=parametrization,
                            widths=None if n_layers == 1 else [width] * (n_layers - 1))
    except (ValueError, TypeError, NotImplementedError):
        return None


def add_network_arguments(parser, *, depths_help: str, width_help: str, inits_help: str,
                          sigma_help: str, cosine_help: str | None) -> None:
    """The at-init experiments' flags: --depths, --sigma-w2, --width, --inits,
    [--cosine], --activation, --parametrization, --sigma-b, --chunk."""
    add_list_argument(parser, "--depths", int, "D", depths_help)
    add_list_argument(parser, "--sigma-w2", float, "S", sigma_help)
    add_list_argument(parser, "--width", int, "W", width_help)
    parser.add_argument("--inits", type=int, metavar="N", help=inits_help)
    if cosine_help is not None:
        parser.add_argument("--cosine", nargs="+", type=float, action="extend", metavar="C", help=cosine_help)
    parser.add_argument("--activation", default="relu",
                        help="activation (default: %(default)s; relu, leaky_relu, identity use the exact "
                             "sigma_w-scaling shortcut, others run one ensemble per sigma_w^2)")
    parser.add_argument("--parametrization", default="standard", choices=("standard", "ntk"),
                        help="default: %(default)s (the ICML setup)")
    parser.add_argument("--sigma-b", type=float, default=0.0,
                        help="bias std at init (default: %(default)s; biases are trained either way)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="inits per batched call (default: automatic, ~256 MB per chunk)")


def network_settings(args) -> dict:
    """The keyword arguments every at-init experiment takes from the parsed flags."""
    return dict(activation=args.activation, parametrization=args.parametrization, sigma_b=args.sigma_b,
                seed=args.seed, device=args.device, chunk=args.chunk)
