"""The two torch.func recipes of the PyTorch "Neural Tangent Kernels" tutorial.

- Jacobian contraction: jacrev of the functional model w.r.t. every
  parameter, then one einsum per parameter, summed.
- NTK-vector products (``empirical_ntk_ntk_vps``): for each pair (x1_i,
  x2_j), vmap over the K basis vectors of a vjp at x1_i followed by a jvp at
  x2_j; vmapped over both batches.

Both return fastntk's conventions: full (N1, N2, K, K), trace (N1, N2) (a
sum over outputs), per_output (N1, N2, K).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap


def _func(net):
    params = {k: v.detach() for k, v in net.named_parameters()}

    def f(p, x):
        return functional_call(net, p, (x,))

    return f, params


def _contract(per_param, compute):
    if compute == "full":
        return per_param("Naf,Mbf->NMab")
    if compute == "trace":
        return per_param("Naf,Maf->NM")
    return per_param("Naf,Maf->NMa")


def empirical_ntk_jacobian_contraction(net, x1, x2, compute="full"):
    f, params = _func(net)
    jac1 = jacrev(f)(params, x1)  # {name: (N1, K, *param shape)}
    jac2 = jac1 if x2 is x1 else jacrev(f)(params, x2)
    j1 = [j.flatten(2) for j in jac1.values()]
    j2 = [j.flatten(2) for j in jac2.values()]
    return _contract(lambda eq: sum(torch.einsum(eq, a, b) for a, b in zip(j1, j2)), compute)


def empirical_ntk_ntk_vps(net, x1, x2, compute="full"):
    f, params = _func(net)

    def f_single(p, x):
        return f(p, x.unsqueeze(0)).squeeze(0)

    def get_ntk(xa, xb):
        out, vjp_fn = vjp(lambda p: f_single(p, xa), params)

        def ntk_slice(vec):
            (cot,) = vjp_fn(vec)                                  # vec^T J(xa)
            return jvp(lambda p: f_single(p, xb), (params,), (cot,))[1]  # J(xb) J(xa)^T vec

        basis = torch.eye(out.numel(), dtype=out.dtype)
        return vmap(ntk_slice)(basis)  # [k_a, k_b] = Theta(xa, xb)_{k_a k_b}

    result = vmap(vmap(get_ntk, (None, 0)), (0, None))(x1, x2)  # (N1, N2, K, K)
    if compute == "full":
        return result
    if compute == "trace":
        return torch.einsum("NMKK->NM", result)
    return torch.einsum("NMKK->NMK", result)
