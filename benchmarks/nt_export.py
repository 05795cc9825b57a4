"""Write each workload's network, inputs and fastntk reference NTK to .npz
files for benchmarks/nt_bench.py, which runs in the separate .venv-nt
(neural-tangents needs an old JAX and numpy < 2; see scripts/bench_nt_setup.sh).

    python benchmarks/nt_export.py [--dir bench-results/nt_inputs] [--workloads S,M,W,D,L]

Weights are stored in torch's layout (W: (n_out, n_in)); nt_bench.py
transposes them into stax.Dense's (n_in, n_out). The reference is fastntk's
float32 output (full; and trace for workloads that benchmark it).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastntk  # noqa: E402
from workloads import SIGMA_B, SIGMA_W, WORKLOADS, Workload, make_input, make_net  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default="bench-results/nt_inputs")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        net, x = make_net(w), make_input(w.n)
        with torch.no_grad():
            refs = {f"ref_{mode}": fastntk.ntk(net, x, outputs=mode).numpy() for mode in w.outputs}
        path = os.path.join(args.dir, f"{name}.npz")
        write_network(path, w, net, x, **refs)
        print(f"wrote {path}")
    return 0


def write_network(path: str, w: Workload, net: fastntk.MLP, x: torch.Tensor, **extra: np.ndarray) -> None:
    """The network of workload w (weights, biases, sigmas) and the inputs x
    as nt_bench.load_network reads them, with extra arrays."""
    arrays = {"x": x.numpy(), "sigma_w": np.float64(SIGMA_W), "sigma_b": np.float64(SIGMA_B),
              "depth": np.int64(w.depth), "width": np.int64(w.width), "k": np.int64(w.k),
              "n_params": np.int64(w.n_params)}
    for l, (wt, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = wt.detach().numpy()
        arrays[f"b{l}"] = b.detach().numpy()
    np.savez(path, **arrays, **extra)


if __name__ == "__main__":
    sys.exit(main())
