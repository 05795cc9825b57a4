"""fastntk.scale.distributed with two gloo processes (torch.multiprocessing
in a subprocess) against the one-process results: the gathered kernel, the
kernel written to a shared file, sharded ntk_vp and eigh."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import torch

import fastntk
from conftest import rel_err

WORKER = textwrap.dedent("""
    import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
    import fastntk
    from fastntk.scale import distributed

    def setup():
        net = fastntk.MLP([5, 16, 16, 3], activation="tanh", sigma_b=0.2, seed=0, dtype=torch.float64)
        x = torch.randn(23, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        v = torch.randn(23, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        return net, x, v

    def worker(rank, world, tmp):
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
        net, x, v = setup()
        torch.set_num_threads(1)
        full = distributed.ntk(net, x, block_size=5)
        two_sided = distributed.ntk(net, x, x[:9], outputs="per_output")
        on_file = distributed.ntk(net, x, outputs="trace", out=f"{tmp}/kernel.bin")
        rows = distributed.shard(23, world, rank)
        vp = distributed.ntk_vp(net, x[rows.start:rows.stop], v[rows.start:rows.stop])
        vp_full = distributed.ntk_vp(net, x[rows.start:rows.stop], v[rows.start:rows.stop, None].expand(-1, 3),
                                     outputs="full")
        values, vectors = distributed.eigh(net, x[rows.start:rows.stop], k=3)
        pieces = [None] * world
        dist.all_gather_object(pieces, (rows.start, vp, vp_full, vectors))
        if rank == 0:
            torch.save({"full": full, "two_sided": two_sided, "file": on_file.clone(), "values": values,
                        "pieces": pieces}, f"{tmp}/result.pt")
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(worker, args=(2, sys.argv[1]), nprocs=2)
""")


def test_two_gloo_processes_equal_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=120,
                   capture_output=True, text=True)
    got = torch.load(tmp_path / "result.pt")
    namespace: dict = {}
    exec(WORKER.split("def worker")[0], namespace)
    net, x, v = namespace["setup"]()
    assert rel_err(got["full"], fastntk.ntk(net, x)) <= 1e-13
    assert rel_err(got["two_sided"], fastntk.ntk(net, x, x[:9], outputs="per_output")) <= 1e-13
    trace = fastntk.ntk(net, x, outputs="trace")
    assert rel_err(got["file"], trace) <= 1e-13
    pieces = sorted(got["pieces"], key=lambda p: p[0])
    assert [p[0] for p in pieces] == [0, 12]
    assert rel_err(torch.cat([p[1] for p in pieces]), trace @ v) <= 1e-12
    full_vp = torch.einsum("ijkl,jl->ik", fastntk.ntk(net, x), v[:, None].expand(-1, 3))
    assert rel_err(torch.cat([p[2] for p in pieces]), full_vp) <= 1e-12
    ref_values, ref_vectors = torch.linalg.eigh(trace)
    assert rel_err(got["values"], ref_values.flip(0)[:3]) <= 1e-8
    vectors = torch.cat([p[3] for p in pieces])
    overlap = (vectors.t() @ ref_vectors.flip(1)[:, :3]).abs()  # eigenvectors up to sign
    torch.testing.assert_close(overlap, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0)
