"""neural-tangents' infinite-width ``stax`` kernel_fn on given inputs (runs in .venv-nt).

    .venv-nt/bin/python benchmarks/nt_infinite.py --inputs DIR/x_N.npy --case CASE_JSON --out DIR/result.npz

Needs no torch; benchmarks/bench_infinite.py --nt writes the inputs, calls
this once per case in a fresh process and compares. A case is
``{"activation": "relu"|"erf"|"gelu"|"tanh", "depth": L, "sigma_w": ...,
"sigma_b": ..., "deg": d}``: L weight layers (L - 1 hidden), NTK
parametrization, ``stax.Dense(1, W_std=sigma_w, b_std=sigma_b,
parameterization="ntk")`` with the activation after every hidden layer:
``stax.Relu()``, ``stax.Erf()`` (erf(x)), ``stax.Gelu(approximate=False)``
(all closed forms) and ``stax.ElementwiseNumerical(jnp.tanh, deg)`` (tanh has
no closed form there: Gauss-Hermite quadrature of degree deg).

Float64 (jax_enable_x64), one XLA thread (set XLA_FLAGS before starting:
the caller does). ``kernel_fn`` under jax.jit: the first call (trace,
compile, run) and, when the first took under 10 s, the second (run)
are timed apart (second_call_s = -1 when not run), wall clock and
process CPU time. Writes the NTK (N, N)
and the timings.
"""

from __future__ import annotations

import argparse
import json
import time


def network(case: dict):
    import jax.numpy as jnp
    from neural_tangents import stax

    act = {"relu": lambda: stax.Relu(), "erf": lambda: stax.Erf(),
           "gelu": lambda: stax.Gelu(approximate=False),
           "tanh": lambda: stax.ElementwiseNumerical(jnp.tanh, case.get("deg", 25))}[case["activation"]]
    layers = []
    for _ in range(case["depth"] - 1):
        layers += [stax.Dense(1, W_std=case["sigma_w"], b_std=case["sigma_b"], parameterization="ntk"), act()]
    layers.append(stax.Dense(1, W_std=case["sigma_w"], b_std=case["sigma_b"], parameterization="ntk"))
    return stax.serial(*layers)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", required=True, help=".npy of float64 inputs (N, n0)")
    ap.add_argument("--case", required=True, help="the case as JSON")
    ap.add_argument("--out", required=True, help=".npz written: ntk, first_call_s, second_call_s")
    args = ap.parse_args()
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import neural_tangents as nt

    case = json.loads(args.case)
    x = jax.numpy.asarray(np.load(args.inputs))
    kernel_fn = jax.jit(network(case), static_argnames="get")
    start, cpu = time.perf_counter(), time.process_time()
    theta = kernel_fn(x, None, "ntk").block_until_ready()
    first, first_cpu = time.perf_counter() - start, time.process_time() - cpu
    second = second_cpu = -1.0  # not run: compilation is negligible next to a long first call
    if first < 10:
        start, cpu = time.perf_counter(), time.process_time()
        theta = kernel_fn(x, None, "ntk").block_until_ready()
        second, second_cpu = time.perf_counter() - start, time.process_time() - cpu
    np.savez(args.out, ntk=np.asarray(theta, dtype=np.float64), first_call_s=first, second_call_s=second,
             first_call_cpu_s=first_cpu, second_call_cpu_s=second_cpu,
             jax=jax.__version__, neural_tangents=getattr(nt, "__version__", "0.6.5"))


if __name__ == "__main__":
    main()
