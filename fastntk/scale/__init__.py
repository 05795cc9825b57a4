"""Scale: bounded memory, out-of-core kernels, matrix-free products and
eigenvalues, and torch.distributed.

- :mod:`fastntk.scale.products`: :func:`ntk_vp`, :class:`NTKOperator`,
  :func:`ntk_operator`, :func:`eigh`, :func:`kernel_regression`: Theta v
  without forming Theta.
- :mod:`fastntk.scale.blocked`: :func:`blocked_ntk`, :func:`blocked_ntk_diag`
  (what ``fastntk.ntk(..., max_memory=, block_size=, out=, resume=)`` runs):
  row/column blocks within a memory budget, written into a preallocated or
  file-backed output, resumable.
- :mod:`fastntk.scale.distributed`: the same over torch.distributed ranks.
"""

from . import distributed
from .blocked import blocked_ntk, blocked_ntk_diag
from .products import KernelRegression, NTKOperator, eigh, kernel_regression, ntk_operator, ntk_vp

__all__ = ["distributed", "blocked_ntk", "blocked_ntk_diag", "NTKOperator", "KernelRegression", "ntk_vp", "ntk_operator", "eigh", "kernel_regression"]
