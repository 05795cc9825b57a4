#!/usr/bin/env bash
# Everything that needs a GPU, for a machine that has one: build the CUDA
# extension in place against the machine's own torch (no registry access),
# check every op has a CUDA kernel, compare the CUDA ops with the CPU ops
# (under compute-sanitizer when it is installed), run the test suite (its CUDA
# cases run here), and run benchmarks/gpu_bench.py. Writes a report to $OUT if
# set, else ./gpu-report/: gpu_check.json, gpu_check.md, one log per step, and
# the benchmark's gpu_bench.json / gpu_bench.md.
#
# Settings: PYTHON (python3, with torch >= 2.11 built for CUDA), CUDA_HOME
# (/usr/local/cuda), TORCH_CUDA_ARCH_LIST (default: the visible GPU's),
# MAX_JOBS (nproc), GPU_CHECK_SKIP (space-separated steps to skip: build ops
# sanitizer tests bench), PYTEST_ARGS (-x -q).
#
# Exit status: 0 when every step that ran passed.
set -uo pipefail

PYTHON=${PYTHON:-python3}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REPORT=${OUT:-$REPO/gpu-report}
mkdir -p "$REPORT"
REPORT=$(cd "$REPORT" && pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export FORCE_CUDA=1
SKIP=" ${GPU_CHECK_SKIP:-} "
cd "$REPO"

STEPS=()  # "name status seconds" per step
failed=0
log() { echo "gpu-check: $*"; }

# run_step NAME CMD...: run CMD, tee its output to $REPORT/NAME.log, record status.
run_step() {
  local name=$1; shift
  if [[ $SKIP == *" $name "* ]]; then
    STEPS+=("$name skipped 0"); log "$name: skipped"; return 0
  fi
  log "$name: $*"
  local t0=$SECONDS status
  "$@" 2>&1 | tee "$REPORT/$name.log"
  status=${PIPESTATUS[0]}
  local dt=$((SECONDS - t0))
  if [ "$status" -eq 0 ]; then
    STEPS+=("$name passed $dt"); log "$name: passed in $dt s"
  else
    STEPS+=("$name failed($status) $dt"); log "$name: FAILED (exit $status) after $dt s"; failed=1
  fi
  return "$status"
}

# --- environment ----------------------------------------------------------
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  log "FAILED: $PYTHON has no usable CUDA torch (torch.cuda.is_available() is False); this script needs a GPU" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
  | tee "$REPORT/nvidia-smi.txt"
"$PYTHON" -c 'import torch; print(f"torch {torch.__version__} CUDA {torch.version.cuda}, GPU {torch.cuda.get_device_name(0)} (sm_{"".join(map(str, torch.cuda.get_device_capability(0)))})")' \
  | tee "$REPORT/torch.txt"
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')"

# ATen/cuda/CUDAContext.h includes cuBLAS / cuSPARSE / cuSOLVER headers. A
# toolkit without them: use those of NVIDIA's wheels that pip-installed torch
# depends on, when present.
if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
  inc=$("$PYTHON" -c 'import glob, os, torch; sp = os.path.dirname(os.path.dirname(torch.__file__)); print(next(iter(sorted(glob.glob(os.path.join(sp, "nvidia", "cu*", "include")) + sorted(glob.glob(os.path.join(sp, "nvidia", "cusparse", "include"))))), ""))')
  if [ -n "$inc" ] && [ -f "$inc/cusparse.h" ]; then
    export NVCC_FLAGS="${NVCC_FLAGS:-} -I$inc"
    log "$CUDA_HOME has no cuSPARSE headers: using $inc"
  fi
fi

# --- steps ----------------------------------------------------------------
run_step build "$PYTHON" -m pip install --no-build-isolation --no-deps -e .

check_ops() {
  "$PYTHON" - <<'PYEOF'
import sys
import torch
import fastntk
info = fastntk.backend_info()
print({k: v for k, v in info.items() if k != "schemas"})
ok = info.get("backend") == "compiled" and info.get("compiled_kernels", {}).get("CUDA")
ops = sorted({n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastntk::")})
for op in ops:
    has = torch._C._dispatch_has_kernel_for_dispatch_key(f"fastntk::{op}", "CUDA")
    print(f"fastntk::{op}: CUDA kernel {'yes' if has else 'NO'}")
    ok = ok and has
sys.exit(0 if ok and ops else 1)
PYEOF
}
build_ok=1
for s in "${STEPS[@]}"; do [[ $s == build\ failed* ]] && build_ok=0; done
if [ "$build_ok" -eq 1 ]; then
  run_step ops check_ops

  # The CUDA ops against the CPU ops on odd sizes, every mode, float32 and
  # float64, every activation; under compute-sanitizer memcheck when present.
  cat > "$REPORT/cuda_vs_cpu.py" <<'PYEOF'
import itertools
import sys
import torch
import fastntk  # noqa: F401  (loads the ops)

ops = torch.ops.fastntk
acts = ["identity", "relu", "leaky_relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "softplus", "erf"]
bad = 0


def close(name, got, want, dtype):
    global bad
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    err = ((got.cpu() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item() if want.numel() else 0.0
    flag = "ok" if err <= tol else "MISMATCH"
    bad += flag != "ok"
    print(f"{name}: rel err {err:.2e} {flag}")


g = torch.Generator().manual_seed(0)
for dtype in (torch.float32, torch.float64):
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    for act in acts:
        dn, w, h = r(7, 3, 33), r(33, 45), r(7, 45)
        cpu = ops.backprop_delta(dn, w, h, 0.7, act)
        cuda = ops.backprop_delta(dn.cuda(), w.cuda(), h.cuda(), 0.7, act)
        close(f"backprop_delta {dtype} {act}", cuda, cpu, dtype)
    for (n1, n2, k, p, n), mode, ws in itertools.product(
            [(5, 9, 1, 13, 17), (11, 6, 4, 31, 3), (0, 3, 2, 4, 5), (4, 4, 3, 0, 0)],
            ["full", "trace", "per_output"], [1.3, 0.0]):
        a1, a2, d1, d2 = r(n1, p), r(n2, p), r(n1, k, n), r(n2, k, n)
        shape = {"full": (n1, n2, k, k), "trace": (n1, n2), "per_output": (n1, n2, k)}[mode]
        out = r(*shape)
        out_cuda = out.cuda()
        ops.ntk_accumulate(out, a1, a2, d1, d2, ws, 0.4, mode)
        ops.ntk_accumulate(out_cuda, a1.cuda(), a2.cuda(), d1.cuda().transpose(0, 1).contiguous().transpose(0, 1),
                           d2.cuda(), ws, 0.4, mode)
        close(f"ntk_accumulate {dtype} {mode} {(n1, n2, k, p, n)} ws={ws}", out_cuda, out, dtype)
        dshape = {"full": (n1, k, k), "trace": (n1,), "per_output": (n1, k)}[mode]
        dout = r(*dshape)
        dout_cuda = dout.cuda()
        ops.ntk_diag_accumulate(dout, a1, d1, ws, 0.4, mode)
        ops.ntk_diag_accumulate(dout_cuda, a1.cuda(), d1.cuda(), ws, 0.4, mode)
        close(f"ntk_diag_accumulate {dtype} {mode} {(n1, k, p, n)} ws={ws}", dout_cuda, dout, dtype)
    # Several layers in one call (more than 8: two passes), two-sided and
    # symmetric (same tensors: the mirror path, several row blocks), and the
    # layerwise bias_out split on the symmetric path.
    for mode, (n1, n2, k), symmetric in itertools.product(
            ["full", "trace", "per_output"], [(600, 600, 3), (300, 130, 1)], [False, True]):
        if symmetric and n1 != n2:
            continue
        dims = [(13, 7), (7, 1), (1, 20)] * 3 + [(20, 5)]
        a1 = [r(n1, p) for p, _ in dims]
        d1 = [r(n1, k, n) for _, n in dims]
        a2 = a1 if symmetric else [r(n2, p) for p, _ in dims]
        d2 = d1 if symmetric else [r(n2, k, n) for _, n in dims]
        ws = [(1.3, 0.0, 0.7)[l % 3] for l in range(len(dims))]
        bs = [(0.4, 0.2, 0.0)[l % 3] for l in range(len(dims))]
        shape = {"full": (n1, n2, k, k), "trace": (n1, n2), "per_output": (n1, n2, k)}[mode]
        out = torch.zeros(shape, dtype=dtype)
        out_cuda = out.cuda()
        ops.ntk_accumulate_layers(out, a1, a2, d1, d2, ws, bs, mode)
        a1c, d1c = [t.cuda() for t in a1], [t.cuda() for t in d1]
        a2c, d2c = (a1c, d1c) if symmetric else ([t.cuda() for t in a2], [t.cuda() for t in d2])
        ops.ntk_accumulate_layers(out_cuda, a1c, a2c, d1c, d2c, ws, bs, mode)
        close(f"ntk_accumulate_layers {dtype} {mode} {(n1, n2, k)} symmetric={symmetric}", out_cuda, out, dtype)
        if symmetric:
            t = out_cuda.transpose(0, 1)
            exact = torch.equal(out_cuda, t.transpose(2, 3) if mode == "full" else t)
            print(f"  exactly symmetric: {exact}")
            bad += not exact
            w_out, b_out = torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
            w_cuda, b_cuda = w_out.cuda(), b_out.cuda()
            ops.ntk_accumulate(w_out, a1[0], a1[0], d1[0], d1[0], 1.3, 0.4, mode, b_out)
            ops.ntk_accumulate(w_cuda, a1c[0], a1c[0], d1c[0], d1c[0], 1.3, 0.4, mode, b_cuda)
            close(f"ntk_accumulate bias_out symmetric {dtype} {mode} weight", w_cuda, w_out, dtype)
            close(f"ntk_accumulate bias_out symmetric {dtype} {mode} bias", b_cuda, b_out, dtype)
torch.cuda.synchronize()
print(f"{bad} mismatches")
sys.exit(1 if bad else 0)
PYEOF
  if command -v compute-sanitizer >/dev/null; then
    run_step sanitizer compute-sanitizer --tool memcheck --error-exitcode 3 "$PYTHON" "$REPORT/cuda_vs_cpu.py"
  else
    run_step sanitizer "$PYTHON" "$REPORT/cuda_vs_cpu.py"
  fi

  # shellcheck disable=SC2086
  run_step tests "$PYTHON" -m pytest tests ${PYTEST_ARGS:--x -q}

  if [ -f benchmarks/gpu_bench.py ]; then
    run_step bench "$PYTHON" benchmarks/gpu_bench.py --out "$REPORT"
  fi
fi

# --- report ---------------------------------------------------------------
"$PYTHON" - "$REPORT" "${STEPS[@]}" <<'PYEOF'
import json, os, sys
report_dir, steps = sys.argv[1], [s.split() for s in sys.argv[2:]]
env = {}
for name in ("torch.txt", "nvidia-smi.txt"):
    path = os.path.join(report_dir, name)
    if os.path.exists(path):
        env[name.rsplit(".", 1)[0]] = open(path).read().strip()
rows = [{"step": n, "status": s, "seconds": int(t), "log": f"{n}.log"} for n, s, t in steps]
with open(os.path.join(report_dir, "gpu_check.json"), "w") as f:
    json.dump({"environment": env, "steps": rows}, f, indent=2)
lines = ["# fastntk GPU check", ""] + [f"- {k}: {v}" for k, v in env.items()] + [
    "", "| step | status | seconds | log |", "|---|---|---:|---|"]
lines += [f"| {r['step']} | {r['status']} | {r['seconds']} | {r['log']} |" for r in rows]
bench = os.path.join(report_dir, "gpu_bench.md")
if os.path.exists(bench):
    lines += ["", open(bench).read()]
open(os.path.join(report_dir, "gpu_check.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
log "report in $REPORT; $([ "$failed" -eq 0 ] && echo "all steps passed" || echo "SOME STEPS FAILED")"
exit "$failed"
