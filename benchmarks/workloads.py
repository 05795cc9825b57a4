"""Workloads, methods and the analytic cost model shared by the benchmark
suite, the memory script, the scaling study and the report.

Every method is built by :func:`make_method` as a zero-argument callable on a
fixed network and input batch, so the pytest-benchmark suite, the
fresh-process memory measurement and the neural-tangents export all time and
check exactly the same computation.

Network: :class:`fastntk.MLP`, NTK parametrization, ReLU, biases on,
sigma_w = sqrt(2), sigma_b = 0.1 (so the bias terms count), float32, input
dimension d = 64, inputs x ~ N(0, 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fastntk

SIGMA_W = 2 ** 0.5
SIGMA_B = 0.1
D_IN = 64
SEED = 0
#: torch.func methods are skipped when the Jacobian N K P float32 would exceed this.
JACOBIAN_LIMIT_BYTES = 12e9


@dataclass(frozen=True)
class Workload:
    name: str
    depth: int      # hidden layers
    width: int
    k: int          # outputs
    n: int          # inputs (x2 = x1)
    outputs: tuple  # which output modes to benchmark
    note: str = ""

    @property
    def widths(self) -> list[int]:
        return [D_IN] + [self.width] * self.depth + [self.k]

    @property
    def n_params(self) -> int:
        w = self.widths
        return sum(a * b + b for a, b in zip(w[:-1], w[1:]))

    @property
    def jacobian_bytes(self) -> int:
        return self.n * self.k * self.n_params * 4

    @property
    def ntkvp_bytes(self) -> int:
        """The tutorial's NTK-vector products vmap a vjp over x1 and a jvp over
        x2: its largest batched tangent is one layer's weights per (x1, x2)
        pair and output, N^2 K max(n_{l-1} n_l) floats."""
        w = self.widths
        return self.n * self.n * self.k * max(a * b for a, b in zip(w[:-1], w[1:])) * 4


WORKLOADS = {
    "S": Workload("S", 3, 512, 1, 128, ("full",), "small"),
    "M": Workload("M", 3, 1024, 10, 256, ("full", "trace"), "K = 10"),
    "W": Workload("W", 3, 4096, 1, 256, ("full",), "wide"),
    "D": Workload("D", 20, 256, 1, 128, ("full",), "deep"),
    "L": Workload("L", 3, 4096, 1, 4096, ("full",), "large N: Jacobian methods do not fit"),
}

#: Methods and which workloads they run on. fastntk_* and plain_* run on
#: every workload ("L": only the full mode of each, the point being who runs).
FASTNTK_MODES = ("full", "trace", "per_output", "diag", "layerwise")
TORCHFUNC = ("torchfunc_jac", "torchfunc_ntkvp")


def methods_for(w: Workload) -> list[str]:
    if w.name == "L":
        return ["fastntk_full", "plain_full", "torchfunc_jac_full", "torchfunc_ntkvp_full"]
    out = []
    for mode in FASTNTK_MODES:
        out += [f"fastntk_{mode}", f"plain_{mode}"]
    out += [f"{m}_{o}" for m in TORCHFUNC for o in w.outputs]
    return out


def make_net(w: Workload, widths: list[int] | None = None) -> fastntk.MLP:
    return fastntk.MLP(widths or w.widths, activation="relu", parametrization="ntk",
                       sigma_w=SIGMA_W, sigma_b=SIGMA_B, seed=SEED, dtype=torch.float32)


def make_input(n: int, d: int = D_IN) -> torch.Tensor:
    g = torch.Generator().manual_seed(SEED + 1)
    return torch.randn(n, d, generator=g, dtype=torch.float32)


# ------------------------------------------------------------------ FLOPs

def _mode(method: str) -> str:
    mode = method.split("_")[-1] if "_" in method else method
    return "per_output" if mode == "output" else mode


def flop_parts(widths: list[int], n: int, method: str) -> dict[str, float]:
    """Analytic FLOPs of the layerwise method by part (multiply-add = 2 FLOPs),
    x2 = x1, every pair (i, j) counted:

    forward      sum_l 2 N n_{l-1} n_l
    backward     sum_{l >= 2} 2 N K n_l n_{l-1}      (K signals through W^l)
    gram         full:       sum_l 2 N^2 (n_{l-1} + K^2 n_l)
                 trace/per_output: sum_l 2 N^2 (n_{l-1} + K n_l)
                 diag:       sum_l 2 N (n_{l-1} + K^2 n_l)
    hadamard     the accumulation: N^2 K^2 (full), N^2 K (per_output), N^2
                 (trace) per layer (and per term when layerwise); not a GEMM,
                 counted too.
    """
    mode = _mode(method)
    k = widths[-1]
    L = len(widths) - 1
    kk = {"full": k * k, "layerwise": k * k, "trace": k, "per_output": k, "diag": k * k}[mode]
    pairs = n if mode == "diag" else n * n
    return {
        "forward": float(sum(2 * n * a * b for a, b in zip(widths[:-1], widths[1:]))),
        "backward": float(sum(2 * n * k * widths[l] * widths[l - 1] for l in range(2, L + 1))),
        "gram": float(sum(2 * pairs * (widths[l - 1] + kk * widths[l]) for l in range(1, L + 1))),
        "hadamard": float(L * pairs * {"full": k * k, "layerwise": 2 * k * k, "trace": 1,
                                       "per_output": k, "diag": k * k}[mode]),
    }


def flops(widths: list[int], n: int, method: str) -> float:
    """Analytic FLOPs of the layerwise method with every pair (i, j) computed
    (:func:`flop_parts`, summed): the count charged to every method, torch.func
    included (their own work is larger: this makes the ratios comparable)."""
    return sum(flop_parts(widths, n, method).values())


def flops_symmetric(widths: list[int], n: int, method: str) -> float:
    """What the symmetric method must do for x2 = x1: the forward and backward
    GEMMs, and the Grams and the accumulation over the N (N + 1) / 2 pairs
    i <= j only (Theta is symmetric; fastntk computes the upper triangle).
    The per-sample diagonal has no pairs to halve."""
    parts = flop_parts(widths, n, method)
    half = 1.0 if _mode(method) == "diag" else (n + 1) / (2 * n)
    return parts["forward"] + parts["backward"] + half * (parts["gram"] + parts["hadamard"])


def gemm_shapes(widths: list[int], n: int) -> list[tuple[int, int, int]]:
    """(rows, inner, cols) of every GEMM of the full-mode layerwise method,
    x2 = x1 and both halves of each Gram: forward a^{l-1} W^T, backward
    delta^{l+1} W (N K rows), the activation Gram (N x N) and the delta Gram
    (N K x N K) of each layer."""
    k, L = widths[-1], len(widths) - 1
    shapes = [(n, widths[l - 1], widths[l]) for l in range(1, L + 1)]
    shapes += [(n * k, widths[l], widths[l - 1]) for l in range(2, L + 1)]
    shapes += [(n, widths[l - 1], n) for l in range(1, L + 1)]
    shapes += [(n * k, widths[l], n * k) for l in range(1, L + 1)]
    return shapes


def own_shape_gemms(widths: list[int], n: int):
    """(callable, flops): one call runs every GEMM of :func:`gemm_shapes` once
    (torch.mm on random float32 operands made here), flops their count. Its
    time gives the GEMM rate on the workload's own shapes, which for small
    layers is well below the large-GEMM rate the peak floor assumes."""
    g = torch.Generator().manual_seed(SEED + 2)
    operands = [(torch.randn(m, i, generator=g), torch.randn(i, c, generator=g)) for m, i, c in gemm_shapes(widths, n)]
    total = float(sum(2 * m * i * c for m, i, c in gemm_shapes(widths, n)))

    def run():
        for a, b in operands:
            torch.mm(a, b)
    return run, total


def output_bytes(widths: list[int], n: int, method: str) -> int:
    mode = _mode(method)
    k, L = widths[-1], len(widths) - 1
    if mode == "full":
        return n * n * k * k * 4
    return 4 * {"trace": n * n, "per_output": n * n * k, "diag": n * k * k,
                "layerwise": 2 * L * n * n * k * k}[mode]


def state_bytes(widths: list[int], n: int, method: str) -> int:
    """Memory the layerwise method cannot avoid: pre-activations of every
    layer (N sum n_l), two layers of signals (2 N K max n_l) and the output."""
    k = widths[-1]
    return 4 * (n * sum(widths[1:]) + 2 * n * k * max(widths[1:])) + output_bytes(widths, n, method)


# ---------------------------------------------------------------- methods

def _fastntk(net, x, mode):
    if mode == "diag":
        return lambda: fastntk.ntk_diag(net, x)
    if mode == "layerwise":
        return lambda: fastntk.ntk(net, x, layerwise=True)
    return lambda: fastntk.ntk(net, x, outputs=mode)


def _plain(net, x, mode):
    from plain_layerwise import plain_ntk, plain_ntk_diag
    if mode == "diag":
        return lambda: plain_ntk_diag(net, x)
    if mode == "layerwise":
        return lambda: plain_ntk(net, x, layerwise=True)
    return lambda: plain_ntk(net, x, outputs=mode)


def _torchfunc(net, x, kind, mode):
    from torchfunc_ntk import empirical_ntk_jacobian_contraction, empirical_ntk_ntk_vps
    fn = empirical_ntk_jacobian_contraction if kind == "jac" else empirical_ntk_ntk_vps
    return lambda: fn(net, x, x, mode)


def skip_reason(w: Workload, method: str) -> str | None:
    """Why a method does not run on a workload (None: it runs)."""
    if method.startswith("torchfunc") and w.jacobian_bytes > JACOBIAN_LIMIT_BYTES:
        return (f"Jacobian N*K*P*4 = {w.jacobian_bytes / 1e9:.1f} GB > "
                f"{JACOBIAN_LIMIT_BYTES / 1e9:.0f} GB limit (would run out of the 24 GB here)")
    if method.startswith("torchfunc_ntkvp") and w.ntkvp_bytes > JACOBIAN_LIMIT_BYTES:
        return (f"batched tangents N^2*K*max(n_l n_l-1)*4 = {w.ntkvp_bytes / 1e9:.1f} GB > "
                f"{JACOBIAN_LIMIT_BYTES / 1e9:.0f} GB limit (would run out of the 24 GB here)")
    return None


def make_method(method: str, net, x):
    """A zero-argument callable computing ``method`` on (net, x)."""
    family, mode = method.split("_", 1)
    if family == "fastntk":
        return _fastntk(net, x, mode)
    if family == "plain":
        return _plain(net, x, mode)
    if family == "torchfunc":
        kind, mode = mode.split("_", 1)
        return _torchfunc(net, x, kind, mode)
    raise ValueError(f"unknown method {method!r}")


def reference_method(method: str) -> str:
    """The fastntk method whose output ``method`` must equal."""
    family, mode = method.split("_", 1)
    if family == "torchfunc":
        mode = mode.split("_", 1)[1]
    return f"fastntk_{mode}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300))


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 GEMM rate of this machine, GFLOP/s (median of repeats)."""
    import time
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * n ** 3 / times[len(times) // 2] / 1e9


def fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(b) < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GB"

