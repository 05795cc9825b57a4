#!/usr/bin/env bash
# Build fastntk's CUDA extension on a machine without a GPU and prove that it
# compiles, links, imports and registers a CUDA (and CPU) kernel for every op
# in torch.ops.fastntk, and that no kernel spills registers or exceeds the
# hardware's register or shared-memory limits (ptxas's report, per arch). Kernels cannot run here; tests/ runs them on a GPU
# machine (scripts/gpu_check.sh).
#
# The CPU torch wheel cannot build a CUDAExtension, so this uses a separate
# venv with the registry's CUDA build of torch, keyed by torch version, made
# on first use. The source is copied (only files whose content changed) to a
# build directory outside the repository, whose build/ is kept between runs so
# ninja recompiles only what changed; the repository's own CPU-built
# fastntk/_C*.so is never touched.
#
# Settings: TORCH_VERSION (2.14.1, a CUDA 13.0 build matching nvcc 13.0; 2.11.0
# is the torch of the lent GPU machines' image and the oldest we support),
# CUDA_HOME (/usr/local/cuda), TORCH_CUDA_ARCH_LIST (8.0;9.0: A100 and H100), MAX_JOBS (2),
# FASTNTK_CACHE (~/.cache/fastntk), PYTHON (python3, to create the venv).
set -euo pipefail

TORCH_VERSION=${TORCH_VERSION:-2.14.1}
CACHE=${FASTNTK_CACHE:-$HOME/.cache/fastntk}
VENV=$CACHE/cuda-torch-$TORCH_VERSION
BUILD=$CACHE/cuda-build-$TORCH_VERSION
SRC=$BUILD/src
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0"}
export MAX_JOBS=${MAX_JOBS:-2}
export FORCE_CUDA=1

log() { echo "cuda-check: $*"; }
start=$SECONDS

if [ ! -x "$CUDA_HOME/bin/nvcc" ]; then
  log "FAILED: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)" >&2
  exit 1
fi

# 1. The CUDA torch venv (pinned torch, the tools a --no-build-isolation build needs).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION' or torch.version.cuda is None)" 2>/dev/null; then
  log "creating $VENV (torch==$TORCH_VERSION with CUDA; a few GB, once)"
  rm -rf "$VENV"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" numpy pybind11 ninja setuptools wheel
fi
PY=$VENV/bin/python
log "$("$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")'), nvcc $("$CUDA_HOME/bin/nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"

# A minimal toolkit (like this machine's) has nvcc and the runtime but not the
# cuBLAS / cuSPARSE headers that ATen/cuda/CUDAContext.h includes; setup.py
# then uses those of the NVIDIA wheels torch depends on (checked here too).
if [ ! -f "$CUDA_HOME/include/cusparse.h" ]; then
  log "$CUDA_HOME has no cuBLAS/cuSPARSE headers: setup.py must find the NVIDIA wheels' (no NVCC_FLAGS given)"
fi
# ptxas's per-kernel report (registers, shared memory, spills) for step 5.
export NVCC_FLAGS="${NVCC_FLAGS:-} -Xptxas -v"

# 2. Sync the build inputs (tracked files plus new untracked ones that git does
# not ignore, so the check also covers uncommitted work). Copy only changed
# files so that unchanged ones keep their mtime and ninja skips them; remove
# files that are gone from the repository (setup.py globs csrc/).
mkdir -p "$SRC"
list=$(mktemp)
trap 'rm -f "$list"' EXIT
(cd "$REPO" && git ls-files --cached --others --exclude-standard -- \
   setup.py pyproject.toml README.md csrc fastntk | sort -u |
   while IFS= read -r f; do [ -f "$f" ] && printf '%s\n' "$f"; done) > "$list"
copied=0
while IFS= read -r f; do
  if ! cmp -s "$REPO/$f" "$SRC/$f"; then
    mkdir -p "$SRC/$(dirname "$f")"
    cp "$REPO/$f" "$SRC/$f"
    copied=$((copied + 1))
  fi
done < "$list"
removed=0
while IFS= read -r f; do
  rel=${f#"$SRC"/}
  if ! grep -qxF -- "$rel" "$list"; then rm -f "$f"; removed=$((removed + 1)); fi
done < <(find "$SRC/csrc" "$SRC/fastntk" -type f \( -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.py' \) 2>/dev/null)
log "source in $SRC: $copied file(s) updated, $removed removed"

# 3. Build and install into the CUDA venv. pip builds in the source tree, so
# $SRC/build/ (ninja's object files and build.ninja) persists between runs.
# A .cu object without a stored ptxas report (a build before the report
# existed) is removed so that it is recompiled and reported.
for cu in "$SRC"/csrc/cuda/*.cu; do
  base=$(basename "${cu%.cu}")
  find "$SRC/build" -name "$base.o" 2>/dev/null | while IFS= read -r obj; do
    [ -f "$obj.ptxas" ] || rm -f "$obj"
  done
done
log "building (each changed .cu takes 1-2 minutes on 2 cores; log in $BUILD/build.log)"
if ! (cd "$SRC" && "$PY" -m pip install --no-build-isolation --no-deps -v .) > "$BUILD/build.log" 2>&1; then
  tail -n 60 "$BUILD/build.log" >&2
  log "FAILED: the build failed (full log: $BUILD/build.log)" >&2
  exit 1
fi
grep -F "[fastntk setup]" "$BUILD/build.log" | sed 's/^/cuda-check: /' || true
log "built and installed in $((SECONDS - start)) s"

# 3b. Registers, static shared memory, stack and spills of every kernel, per
# architecture; fails on a spill or a kernel over the hardware limits.
"$PY" "$REPO/scripts/cuda_resources.py" "$BUILD/build.log" "$SRC/build" "$SRC"/csrc/cuda/*.cu

# 4. Import the compiled module itself (not the fastntk package, whose Python
# code is not under test here) from outside the source tree, and check the
# dispatcher has a CUDA and a CPU kernel for every fastntk op.
cd "$BUILD"
"$PY" - <<'PYEOF'
import glob
import importlib.util
import os
import sys

import torch

spec = importlib.util.find_spec("fastntk")  # locates the package, runs nothing
if spec is None or not spec.submodule_search_locations:
    sys.exit("cuda-check: FAILED: fastntk is not installed in this venv")
pkg_dir = list(spec.submodule_search_locations)[0]
if os.path.realpath(pkg_dir).startswith(os.path.realpath(os.path.join(os.getcwd(), "src"))):
    sys.exit(f"cuda-check: FAILED: fastntk found in the source tree ({pkg_dir}), not the installed copy")
libs = glob.glob(os.path.join(pkg_dir, "_C*.so"))
if len(libs) != 1:
    sys.exit(f"cuda-check: FAILED: expected one fastntk/_C*.so in {pkg_dir}, found {libs}")
mod_spec = importlib.util.spec_from_file_location("fastntk._C", libs[0])
module = importlib.util.module_from_spec(mod_spec)
mod_spec.loader.exec_module(module)  # also runs the TORCH_LIBRARY registrations
info = module.build_info()
print(f"cuda-check: loaded {libs[0]}")
print(f"cuda-check: build_info: cuda={info['cuda']} cuda_arch_list={info['cuda_arch_list']!r} "
      f"openmp={info['openmp']} ops={len(info['schemas'])}")
if not info["cuda"]:
    sys.exit("cuda-check: FAILED: the extension was built without CUDA")

# Every op the dispatcher knows under the fastntk namespace (overload names
# dropped), so an op added later is checked without editing this script.
ops = sorted({name.split("::", 1)[1].split(".", 1)[0]
              for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastntk::")})
schema_ops = sorted(s.split("(", 1)[0] for s in info["schemas"])
missing = []
if ops != schema_ops:
    missing.append(f"registered ops {ops} != schemas {schema_ops}")
for op in ops:
    have = {key: torch._C._dispatch_has_kernel_for_dispatch_key(f"fastntk::{op}", key)
            for key in ("CPU", "CUDA")}
    print(f"cuda-check:   fastntk::{op:<22} " + " ".join(f"{k}={'yes' if v else 'NO'}" for k, v in have.items()))
    missing += [f"fastntk::{op} has no {k} kernel" for k, v in have.items() if not v]
if not ops:
    missing.append("no ops in torch.ops.fastntk")
if missing:
    sys.exit("cuda-check: FAILED: " + "; ".join(missing))
print(f"cuda-check: OK: {len(ops)} ops, each with CPU and CUDA kernels")
PYEOF
log "done in $((SECONDS - start)) s"
