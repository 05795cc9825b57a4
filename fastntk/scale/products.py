"""Matrix-free NTK products: Theta v without forming Theta.

Theta = J J^T, and per layer J^T v is a parameter-shaped gradient, so

    G_l = c_l sum_j u_j a_j^T,   g_l = beta_l sum_j u_j,   u_j = sum_k' v_jk' delta^l_jk'
    (Theta v)_ik = sum_l delta^l_ik . (c_l G_l a_i + beta_l g_l)

(DESIGN.md, "NTK-vector product"): two GEMMs per layer and block of inputs,
O(N P) flops for P parameters and no N x N matrix. ``outputs="per_output"``
applies Theta_kk to each output's column separately (one G per output k),
and ``"trace"`` is the sum over k of that with the same v for every k.

Memory: the gradients G (one parameter-sized copy per right-hand side, K
copies for trace/per_output), plus the signals of the inputs: cached for all
inputs when they fit the budget (every product after the first then costs
only the GEMMs), else recomputed block by block in each product (forward and
backward passes per product: about twice the work, in bounded memory).

The GEMMs are ATen's (at::matmul -> BLAS/cuBLAS); a custom kernel would only
fuse the small reshapes around them (see docs/scale.md for the measurement).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..models import DenseLayer
from ..ntk import _check_input, _check_model, _check_outputs, _compute_dtype, _forward, _layer_signals, _shared_tensors
from ._memory import budget, check_block_size, pass_elements_per_input, signal_elements_per_input


#: On the CPU a block's largest temporaries (block x K x widest layer) stay
#: under this many elements (16 MB in float32): glibc serves larger
#: allocations with fresh mmaps, and their page faults then cost as much as
#: the arithmetic (one product of a [16, 4096, 1] MLP on 20,000 inputs, one
#: thread: 0.48 s user + 0.54 s system in one block, 0.46 s + 0.00 s in
#: blocks of 1024).
_CPU_BLOCK_ELEMENTS = 2**22


def _block_features(layers: list[DenseLayer], x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(a^{l-1}, delta^l) for l = 0 .. L-1] of one block of inputs, from the
    engine's own forward and backward passes."""
    features: list = [None] * len(layers)
    for l, a_prev, delta in _layer_signals(layers, x, _forward(layers, x)):
        features[l] = (a_prev, delta)
    return features


@dataclasses.dataclass
class _Inputs:
    """One side of the operator: inputs in blocks, their signals cached or
    recomputed on each pass."""

    layers: list[DenseLayer]
    x: torch.Tensor
    block_size: int
    cache: bool
    _cached: list | None = None

    def blocks(self):
        """Yield (slice, features) over the inputs."""
        if self.cache and self._cached is not None:
            yield from self._cached
            return
        computed = []
        for start in range(0, self.x.shape[0], self.block_size):
            rows = slice(start, min(start + self.block_size, self.x.shape[0]))
            item = (rows, _block_features(self.layers, self.x[rows]))
            if self.cache:
                computed.append(item)
            yield item
        if self.cache:
            self._cached = computed


def _applied_gradients(layers: list[DenseLayer], grads: list[list[torch.Tensor]]) -> list[tuple]:
    """Per layer l, the (weight, bias) gradients to contract with layer l's
    signals: c_l G_W and beta_l G_b, where G is the gradient of the
    parameter tensor layer l uses. ``grads[l]`` holds the unscaled
    per-use sums (u^T a, sum u); a parameter's gradient is c_u times them,
    summed over every layer u that uses it (tied weights, a repeated module),
    and a frozen tensor has none."""
    coefficient = [(layer.scale if layer.weight_trained else 0.0,
                    layer.bias_scale if layer.bias is not None and layer.bias_trained else 0.0)
                   for layer in layers]
    param_grads = [[coefficient[l][kind] * grads[l][kind] for kind in (0, 1)] for l in range(len(layers))]
    for tensor in _shared_tensors(layers):
        total = sum(param_grads[u][tensor.kind] for u in tensor.uses)
        for u in tensor.uses:
            param_grads[u][tensor.kind] = total
    return [(coefficient[l][0] * g_w, coefficient[l][1] * g_b) for l, (g_w, g_b) in enumerate(param_grads)]


def _cotangent(delta: torch.Tensor, v: torch.Tensor, per_output: bool) -> torch.Tensor:
    """u: (b, R n) with R = m (full) or K m (per_output); v is (b, K, m)."""
    b = delta.shape[0]
    if per_output:
        return (v.unsqueeze(-1) * delta.unsqueeze(2)).reshape(b, -1)  # (b, K, m, n)
    return torch.bmm(v.transpose(1, 2), delta).reshape(b, -1)  # (b, m, n)


def _apply(delta: torch.Tensor, back: torch.Tensor, per_output: bool) -> torch.Tensor:
    """(b, K, m) from the signals (b, K, n) and back = c G a + beta g (b, R n)."""
    b, k, n = delta.shape
    if per_output:
        back = back.reshape(b * k, -1, n)  # (bK, m, n)
        return torch.bmm(back, delta.reshape(b * k, n, 1)).reshape(b, k, -1)
    return torch.bmm(delta, back.reshape(b, -1, n).transpose(1, 2))  # (b, K, m)


class NTKOperator:
    """Theta(x1, x2) as a linear operator, never formed: ``op @ V``.

    Parameters
    ----------
    model : as in :func:`fastntk.ntk`.
    x1 : (N1, n_0) rows of the kernel; x2 : (N2, n_0) columns, or None for x1.
    outputs : ``"trace"``: the (N1, N2) kernel sum_k Theta_kk; ``"full"``:
        the (N1 K, N2 K) kernel Theta_kk' (rows ``i * K + k``);
        ``"per_output"``: Theta_kk applied to output k's column, a
        block-diagonal (N1 K, N2 K) operator.
    max_memory : bytes or a string like ``"4GB"``; default half the free
        memory. Bounds the signals cached (or the blocks recomputed) and the
        parameter-sized gradients.
    block_size : inputs per block (default: from the budget, and on the CPU
        at most 2**22 / (K x widest layer), e.g. 1024 for width 4096 and
        K = 1, so that the blocks' temporaries are reused rather than
        mapped afresh).
    cache : keep every input's signals between products (default: when they
        fit in half the budget).

    Attributes
    ----------
    shape : (rows, columns) as above; dtype, device : the model's (float32
        for half-precision models).
    """

    def __init__(self, model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None, *,
                 outputs: str = "trace", max_memory: int | str | None = None, block_size: int | None = None,
                 cache: bool | None = None, _reduce: Callable[[torch.Tensor], None] | None = None):
        layers = _check_model(model)
        self.outputs = _check_outputs(outputs)
        block_size = check_block_size(block_size)
        if cache is not None and not isinstance(cache, bool):
            raise TypeError(f"cache must be None, True or False; got {type(cache).__name__} {cache!r}")
        x1 = _check_input("x1", x1, layers)
        x2_given = x2 is not None
        x2 = _check_input("x2", x2, layers) if x2_given else x1
        layers, x1, x2 = _compute_dtype(layers, x1, x2)
        self.layers = layers
        self.k = layers[-1].fan_out
        self.dtype, self.device = x1.dtype, x1.device
        kf = 1 if self.outputs == "trace" else self.k
        self.shape = (x1.shape[0] * kf, x2.shape[0] * kf)
        self._reduce = _reduce
        self._budget = budget(max_memory, self.device)
        itemsize = x1.element_size()
        cached_bytes = itemsize * signal_elements_per_input(layers) * (x1.shape[0] + x2_given * x2.shape[0])
        self._cache = cached_bytes <= self._budget // 2 if cache is None else cache
        if block_size is None:
            widest = max(l.fan_out for l in layers)
            per_input = itemsize * (pass_elements_per_input(layers) + 2 * self.k * widest)
            block_size = max(1, min(x1.shape[0], int(self._budget // 4 // per_input)))
            if self.device.type == "cpu":
                block_size = min(block_size, max(1, _CPU_BLOCK_ELEMENTS // (self.k * widest)))
        self._rows = _Inputs(layers, x1, block_size, self._cache)
        self._cols = _Inputs(layers, x2, block_size, self._cache) if x2_given else self._rows

    def _columns_per_pass(self) -> int:
        """Right-hand sides per pass so that the gradients (R copies of the
        parameters each) take at most a quarter of the budget."""
        params = sum(l.fan_in * l.fan_out + l.fan_out for l in self.layers)
        copies = 1 if self.outputs == "full" else self.k
        return max(1, int(self._budget // 4 // (self.dtype.itemsize * params * copies)))

    def _check_operand(self, v: torch.Tensor) -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a torch.Tensor; got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[0] != self.shape[1]:
            raise ValueError(f"v must have shape ({self.shape[1]},) or ({self.shape[1]}, m); got {tuple(v.shape)}")
        if not v.is_floating_point():
            raise TypeError(f"v must be a floating-point tensor; got dtype {v.dtype}")
        return v.detach().to(dtype=self.dtype, device=self.device)

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        """Theta @ v for v of shape (columns, m) -> (rows, m)."""
        v = self._check_operand(v)
        if v.dim() == 1:
            return self.matmat(v.unsqueeze(1)).squeeze(1)
        step = self._columns_per_pass()
        with torch.no_grad():
            return torch.cat([self._product(v[:, s:s + step]) for s in range(0, v.shape[1], step)], dim=1)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """Theta @ v for v of shape (columns,) -> (rows,)."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def __matmul__(self, v: torch.Tensor) -> torch.Tensor:
        return self.matmat(v)

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        """One pass of m = v.shape[1] right-hand sides."""
        m, k, layers = v.shape[1], self.k, self.layers
        per_output = self.outputs != "full"
        # (N2, K, m): the trace operator is per_output with one v for every output.
        v3 = v.unsqueeze(1).expand(-1, k, -1) if self.outputs == "trace" else v.reshape(-1, k, m)
        grads = [None] * len(layers)  # per layer: (R n, p) weight gradient, (R n,) bias gradient
        for rows, features in self._cols.blocks():
            for l, (a, delta) in enumerate(features):
                u = _cotangent(delta, v3[rows], per_output)
                g_w, g_b = u.t() @ a, u.sum(0)
                if grads[l] is None:
                    grads[l] = [g_w, g_b]
                else:
                    grads[l][0] += g_w
                    grads[l][1] += g_b
        if self._reduce is not None:
            for g in grads:
                self._reduce(g[0])
                self._reduce(g[1])
        # The scales go on the gradients (parameter-sized) rather than on the
        # (block x R n) products, and the bias term rides in the GEMM (addmm).
        scaled = _applied_gradients(layers, grads)
        out = torch.empty((self._rows.x.shape[0], k, m), dtype=self.dtype, device=self.device)
        for rows, features in self._rows.blocks():
            acc = None
            for l, (a, delta) in enumerate(features):
                g_w, g_b = scaled[l]
                term = _apply(delta, torch.addmm(g_b, a, g_w.t()), per_output)
                acc = term if acc is None else acc.add_(term)
            out[rows] = acc
        return out.sum(1) if self.outputs == "trace" else out.reshape(-1, m)

    def scipy(self):
        """This operator as a ``scipy.sparse.linalg.LinearOperator`` (numpy in
        and out, float64 for a float64 model, else float32)."""
        from scipy.sparse.linalg import LinearOperator

        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32

        def matmat(v):
            return self.matmat(torch.as_tensor(np.asarray(v, dtype=np_dtype))).cpu().numpy()

        return LinearOperator(self.shape, matvec=matmat, matmat=matmat, rmatvec=matmat if self._symmetric else None,
                              dtype=np_dtype)

    @property
    def _symmetric(self) -> bool:
        return self._cols is self._rows


def ntk_vp(model: nn.Module, x: torch.Tensor, v: torch.Tensor, x2: torch.Tensor | None = None, *,
           outputs: str = "trace", max_memory: int | str | None = None,
           block_size: int | None = None) -> torch.Tensor:
    """Theta(x, x2) v without forming Theta: O(N P) time, no N x N memory.

    Parameters
    ----------
    model : as in :func:`fastntk.ntk`.
    x : (N1, n_0) inputs (rows of Theta).
    v : ``"trace"``: (N2,) or (N2, m); ``"full"`` and ``"per_output"``:
        (N2, K) or (N2, K, m).
    x2 : (N2, n_0) inputs (columns), or None for x.
    outputs : ``"trace"`` (sum_k Theta_kk), ``"full"`` (Theta_kk') or
        ``"per_output"`` (Theta_kk applied to v[:, k]).
    max_memory, block_size : see :class:`NTKOperator`.

    Returns
    -------
    Tensor shaped like v with N1 rows: (N1,), (N1, m), (N1, K) or (N1, K, m).

    Examples
    --------
    >>> net = fastntk.MLP([8, 64, 3], seed=0)
    >>> x = torch.randn(100, 8)
    >>> fastntk.ntk_vp(net, x, torch.ones(100)).shape
    torch.Size([100])
    """
    # Cached when the signals fit: with x2 = x1 both passes then share one forward/backward.
    op = NTKOperator(model, x, x2, outputs=outputs, max_memory=max_memory, block_size=block_size)
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"v must be a torch.Tensor; got {type(v).__name__}")
    n2 = op.shape[1] if op.outputs == "trace" else op.shape[1] // op.k
    if op.outputs == "trace":
        if v.dim() not in (1, 2) or v.shape[0] != n2:
            raise ValueError(f"v must have shape ({n2},) or ({n2}, m) for outputs='trace'; got {tuple(v.shape)}")
        return op.matmat(v)
    if v.dim() not in (2, 3) or tuple(v.shape[:2]) != (n2, op.k):
        raise ValueError(f"v must have shape ({n2}, {op.k}) or ({n2}, {op.k}, m) for outputs={op.outputs!r}; "
                         f"got {tuple(v.shape)}")
    flat = op.matmat(v.reshape(n2 * op.k, -1))
    n1 = op.shape[0] // op.k
    return flat.reshape((n1, op.k) + tuple(v.shape[2:]))


def ntk_operator(model: nn.Module, x: torch.Tensor, x2: torch.Tensor | None = None, *,
                 outputs: str = "trace", max_memory: int | str | None = None,
                 block_size: int | None = None):
    """Theta(x, x2) as a ``scipy.sparse.linalg.LinearOperator`` (for eigsh,
    cg, ...). Shapes as :class:`NTKOperator`, whose signals it caches when
    they fit. For GPU work use :class:`NTKOperator` itself (torch in and out).

    Examples
    --------
    >>> from scipy.sparse.linalg import eigsh
    >>> op = fastntk.ntk_operator(fastntk.MLP([8, 64, 1], seed=0), torch.randn(200, 8))
    >>> eigsh(op, k=3, return_eigenvectors=False).shape
    (3,)
    """
    return NTKOperator(model, x, x2, outputs=outputs, max_memory=max_memory, block_size=block_size).scipy()


def _default_iterations(n: int, k: int) -> int:
    return min(n, max(20 * k, 200))


def lanczos(matmat: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, which: str, *,
            dtype: torch.dtype, device: torch.device, tol: float, max_iter: int | None = None,
            allsum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, seed: int = 0,
            n_total: int | None = None):
    """k extreme eigenpairs of a symmetric operator by Lanczos with full
    reorthogonalization (no restarts), stopping when every wanted Ritz pair's
    residual |beta_j s_ji| is below tol times the largest Ritz value.

    ``matmat`` maps (n, 1) to (n, 1); ``allsum`` completes inner products of
    vectors that are sharded over processes (the identity in one process),
    n being this process's rows and n_total everyone's (default n).
    Returns (values (k,), vectors (n, k), converged: bool).
    """
    n_total = n if n_total is None else n_total
    max_iter = min(n_total, _default_iterations(n_total, k) if max_iter is None else max_iter)
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    basis = torch.zeros(n, max_iter + 1, dtype=dtype, device=device)
    basis[:, :1] = q / allsum((q * q).sum()).sqrt()
    alphas, betas = [], []
    values = vectors = None
    converged = False
    for j in range(max_iter):
        w = matmat(basis[:, j:j + 1])
        alphas.append(allsum((basis[:, j:j + 1] * w).sum()).item())
        for _ in range(2):  # twice is enough (Kahan: "twice is enough")
            w = w - basis[:, :j + 1] @ allsum(basis[:, :j + 1].t() @ w)
        beta = allsum((w * w).sum()).sqrt().item()
        betas.append(beta)
        steps = j + 1
        if steps >= k and (steps % 5 == 0 or steps == max_iter or beta == 0.0 or steps == n_total):
            t = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
            theta, s = np.linalg.eigh(t)
            order = np.argsort(theta)[::-1][:k] if which == "LA" else np.argsort(theta)[:k]
            residual = np.abs(beta * s[-1, order])
            scale = max(np.abs(theta).max(), np.finfo(np.float64).tiny)
            values, ritz = theta[order], s[:, order]
            if np.all(residual <= tol * scale) or beta <= 1e-14 * scale or steps == n_total:
                converged = True
                break
        if beta == 0.0:
            break
        basis[:, j + 1:j + 2] = w / beta
    if values is None:
        raise ValueError(f"k = {k} eigenpairs need at least k Lanczos steps; max_iter = {max_iter}")
    vectors = basis[:, :len(alphas)] @ torch.as_tensor(ritz, dtype=dtype, device=device)
    return torch.as_tensor(values.copy(), dtype=dtype, device=device), vectors, converged


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-5


def _check_which(which) -> str:
    if which not in ("LA", "SA"):
        raise ValueError(f"which must be 'LA' (largest) or 'SA' (smallest algebraic); got {which!r}")
    return which


def eigh(model: nn.Module, x: torch.Tensor, k: int = 20, *, which: str = "LA", outputs: str = "trace",
         method: str | None = None, tol: float | None = None, max_iter: int | None = None,
         max_memory: int | str | None = None, block_size: int | None = None):
    """The k largest (``which="LA"``) or smallest (``"SA"``) eigenpairs of the
    NTK Theta(x, x), without forming it.

    Parameters
    ----------
    model : as in :func:`fastntk.ntk`.
    x : (N, n_0) inputs.
    k : number of eigenpairs, 1 <= k < N (N K for ``outputs="full"``).
    which : ``"LA"`` or ``"SA"``.
    outputs : ``"trace"`` (N x N kernel) or ``"full"`` (N K x N K).
    method : ``"scipy"`` (ARPACK's implicitly restarted Lanczos, eigsh; CPU
        only) or ``"lanczos"`` (torch, full reorthogonalization, any device).
        Default: scipy on CPU, lanczos elsewhere.
    tol : relative accuracy of the eigenvalues (default 1e-10 for a float64
        model, 1e-5 otherwise).
    max_iter : Lanczos steps (default min(N, max(20 k, 200))); ARPACK's
        maxiter for scipy.
    max_memory, block_size : see :class:`NTKOperator`.

    Returns
    -------
    (values, vectors): values (k,) sorted from the most extreme (descending
    for LA, ascending for SA); vectors (N, k) for trace, (N, K, k) for full,
    orthonormal columns. Model dtype and device.
    """
    if outputs not in ("trace", "full"):
        raise ValueError(f"outputs must be 'trace' or 'full' for eigh; got {outputs!r}")
    which = _check_which(which)
    op = NTKOperator(model, x, outputs=outputs, max_memory=max_memory, block_size=block_size)
    tol = _default_tol(op.dtype) if tol is None else tol
    n = op.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an int with 1 <= k < {n} (the operator's size); got {k!r}")
    if method is None:
        method = "scipy" if op.device.type == "cpu" else "lanczos"
    if method == "scipy":
        if op.device.type != "cpu":
            raise ValueError("method='scipy' runs on the CPU only; use method='lanczos' for a CUDA model")
        from scipy.sparse.linalg import eigsh as scipy_eigsh

        values, vectors = scipy_eigsh(op.scipy(), k=k, which=which, tol=tol, maxiter=max_iter)
        order = np.argsort(values)[::-1] if which == "LA" else np.argsort(values)
        values = torch.as_tensor(values[order].copy(), dtype=op.dtype)
        vectors = torch.as_tensor(vectors[:, order].copy(), dtype=op.dtype)
    elif method == "lanczos":
        values, vectors, converged = lanczos(op.matmat, n, k, which, dtype=op.dtype, device=op.device,
                                             tol=tol, max_iter=max_iter)
        if not converged:
            import warnings

            warnings.warn(f"eigh: Lanczos did not reach tol = {tol} in {max_iter or _default_iterations(n, k)} "
                          "steps; raise max_iter", RuntimeWarning, stacklevel=2)
    else:
        raise ValueError(f"method must be 'scipy', 'lanczos' or None; got {method!r}")
    if outputs == "full":
        vectors = vectors.reshape(-1, op.k, k)
    return values, vectors


def conjugate_gradient(matmat: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                       preconditioner: torch.Tensor, *, tol: float, max_iter: int,
                       allsum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
    """Solve A x = b for every column of b (n, m) by Jacobi-preconditioned
    conjugate gradients; stops when every column's residual norm is below
    tol |b|. Returns (x, iterations, relative residuals (m,))."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = r / preconditioner
    p = z.clone()
    rz = allsum((r * z).sum(0))
    b_norm = allsum((b * b).sum(0)).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    rel = torch.ones_like(b_norm)
    for it in range(1, max_iter + 1):
        ap = matmat(p)
        step = rz / allsum((p * ap).sum(0))
        x += step * p
        r -= step * ap
        rel = allsum((r * r).sum(0)).sqrt() / b_norm
        if bool((rel <= tol).all()):
            return x, it, rel
        z = r / preconditioner
        rz_new = allsum((r * z).sum(0))
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x, max_iter, rel


@dataclasses.dataclass
class KernelRegression:
    """The solution of (Theta(x, x) + ridge I) alpha = y and its predictions.

    Attributes
    ----------
    alpha : shaped like y: (N,) or (N, m) for trace, (N, K) for full.
    iterations : conjugate-gradient steps taken.
    residual : relative residual |(Theta + ridge) alpha - y| / |y| per column.
    """

    model: nn.Module
    x: torch.Tensor
    outputs: str
    alpha: torch.Tensor
    iterations: int
    residual: torch.Tensor
    max_memory: int | str | None = None
    block_size: int | None = None

    def predict(self, x_new: torch.Tensor) -> torch.Tensor:
        """Theta(x_new, x) alpha, matrix-free (one gradient pass over x, one
        apply over x_new): (M,) / (M, m) for trace, (M, K) for full."""
        return ntk_vp(self.model, x_new, self.alpha, self.x, outputs=self.outputs,
                      max_memory=self.max_memory, block_size=self.block_size)


def kernel_regression(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ridge: float = 0.0, *,
                      outputs: str = "full", tol: float | None = None, max_iter: int | None = None,
                      max_memory: int | str | None = None, block_size: int | None = None) -> KernelRegression:
    """NTK kernel regression: solve (Theta(x, x) + ridge I) alpha = y by
    Jacobi-preconditioned conjugate gradients on matrix-free products.

    For the linearized network's prediction pass ``y - model(x)`` and add
    ``model(x_new)`` to :meth:`KernelRegression.predict`.

    Parameters
    ----------
    model : as in :func:`fastntk.ntk`.
    x : (N, n_0) training inputs.
    y : ``"full"``: (N, K) targets (or (N,) when K = 1); ``"trace"``: (N,) or
        (N, m), each column regressed on the scalar kernel sum_k Theta_kk.
    ridge : >= 0, added to the diagonal (0: interpolation; Theta must then be
        non-singular on x).
    outputs : ``"full"`` or ``"trace"``.
    tol : relative residual to reach per column (default 1e-10 for a float64
        model, 1e-5 otherwise). max_iter : default 10 N.
    max_memory, block_size : see :class:`NTKOperator`.

    Returns
    -------
    :class:`KernelRegression` with ``alpha`` and ``predict(x_new)``.
    """
    from ..ntk import ntk_diag

    if outputs not in ("trace", "full"):
        raise ValueError(f"outputs must be 'trace' or 'full' for kernel_regression; got {outputs!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"ridge must be a finite number >= 0; got {ridge!r}")
    op = NTKOperator(model, x, outputs=outputs, max_memory=max_memory, block_size=block_size)
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point torch.Tensor; got {type(y).__name__}")
    n = x.shape[0]
    if outputs == "full":
        if op.k == 1 and y.shape == (n,):
            y = y.unsqueeze(1)
        if tuple(y.shape) != (n, op.k):
            raise ValueError(f"y must have shape ({n}, {op.k}) for outputs='full'; got {tuple(y.shape)}")
        diag = torch.diagonal(ntk_diag(model, x, outputs="full"), dim1=1, dim2=2).reshape(-1, 1)
    else:
        if y.dim() not in (1, 2) or y.shape[0] != n:
            raise ValueError(f"y must have shape ({n},) or ({n}, m) for outputs='trace'; got {tuple(y.shape)}")
        diag = ntk_diag(model, x, outputs="trace").reshape(-1, 1)
    b = y.detach().to(dtype=op.dtype, device=op.device).reshape(op.shape[0], -1)
    ridge = float(ridge)
    tol = _default_tol(op.dtype) if tol is None else tol
    alpha, iterations, residual = conjugate_gradient(
        lambda p: op.matmat(p) + ridge * p, b, diag.to(op.dtype) + ridge, tol=tol,
        max_iter=10 * op.shape[0] if max_iter is None else max_iter)
    if bool((residual > tol).any()):
        import warnings

        warnings.warn(f"kernel_regression: conjugate gradients stopped at relative residual "
                      f"{residual.max().item():.2e} > tol = {tol}; raise ridge or max_iter", RuntimeWarning,
                      stacklevel=2)
    return KernelRegression(model, x, outputs, alpha.reshape(y.shape), iterations, residual,
                            max_memory, block_size)
