"""Proof that the emulated CUDA tests can fail: inject one bug at a time into
a copy of csrc/, build the emulated extension from it, run the emulator, op
and engine tests on it (first in the default order, then, if nothing failed, randomized
on a shrunken GPU) and report for each bug whether and how it was caught.

Usage: python scripts/emu_mutants.py [--only NAME ...] [--markdown FILE] [--build-dir DIR]

Each bug is written into csrc/ itself for the time of its build, and the
original restored right after (also on an error or Ctrl-C), so that `make
emulate`'s object files serve and only the changed file recompiles; do not
edit csrc/ while it runs. The mutant module goes to build/emu-mutants/pkg, a
copy of the package, never to fastntk/. Exit status 1 when a mutant is not
caught.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(REPO, "build", "emu-mutants")
PKG = os.path.join(WORK, "pkg")  # a fastntk package copy whose _C_cuda_emu is the mutant
# test_emulation.py first: its back-to-back reductions on a looping grid are
# the quickest to fail, and the only tests where one block reduces twice.
TESTS = ["tests/test_emulation.py", "tests/test_ops.py", "tests/test_ntk.py"]
SHRUNK = {"FASTNTK_EMU_SEED": "7", "FASTNTK_EMU_SMS": "1", "FASTNTK_EMU_MAX_GRID_X": "32",
          "FASTNTK_EMU_MAX_SCRATCH": "4096"}


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    path: str  # relative to csrc/
    old: str
    new: str


# Grouped by file: consecutive mutants of one file recompile only it.
MUTANTS = [
    Mutant("barrier-in-divergent-branch", "the trace-symmetric kernel's __syncthreads only in threadIdx.y == 0",
           "cuda/ntk_accumulate_cuda.cu", "  }\n  __syncthreads();\n  for (int r = threadIdx.y;",
           "  }\n  if (threadIdx.y == 0) __syncthreads();\n  for (int r = threadIdx.y;"),
    Mutant("tile-edge-off-by-one", "the trace-symmetric tile's column bound c < b.cols became c <= b.cols",
           "cuda/ntk_accumulate_cuda.cu", "    if (i < b.rows && c < b.cols && c >= i) {",
           "    if (i < b.rows && c <= b.cols && c >= i) {"),
    Mutant("wrong-mirror-index", "the generic kernel mirrors (i, j, k, k') to (j, i, k, k') instead of (j, i, k', k)",
           "cuda/ntk_accumulate_cuda.cu", "    const int64_t om = (j * n2 + gi) * per_out + e_t;",
           "    const int64_t om = (j * n2 + gi) * per_out + e;"),
    Mutant("block-over-1024-threads", "the trace-symmetric kernel launched with 32 x 40 = 1280 threads",
           "cuda/ntk_accumulate_cuda.cu", "tiles, dim3(kTile, kTileRows), 0, stream",
           "tiles, dim3(kTile, kTileRows * 5), 0, stream"),
    Mutant("wrong-layer-offset", "a pass's weight scales indexed from layer 0, not from the pass's first layer",
           "cuda/ntk_accumulate_cuda.cu", "terms.ws[l - l0] = static_cast<scalar_t>(weight_scales[l]);",
           "terms.ws[l - l0] = static_cast<scalar_t>(weight_scales[l - l0]);"),
    Mutant("missing-lower-triangle-skip", "symmetric blocks no longer skip j < i (pairs counted twice)",
           "cuda/ntk_accumulate_cuda.cu", "    if (b.symmetric && j < gi) continue;  // written by the mirror of (j, gi)\n",
           ""),
    Mutant("grid-stride-bound", "the backprop epilogue's grid-stride loop runs while idx <= total",
           "cuda/backprop_delta_cuda.cu", "       idx < total; idx += stride) {", "       idx <= total; idx += stride) {"),
    Mutant("threads-leave-before-barrier", "threads past the row length return before block_reduce_sum",
           "cuda/ntk_diag_accumulate_cuda.cu", "    const scalar_t* ai = a + i * p;\n",
           "    const scalar_t* ai = a + i * p;\n    if (threadIdx.x >= p) return;\n"),
    Mutant("removed-barrier", "the first __syncthreads of block_reduce_sum removed",
           "cuda/launch.cuh", "  if (lane == 0) shared[warp] = v;\n  __syncthreads();\n",
           "  if (lane == 0) shared[warp] = v;\n"),
    Mutant("removed-trailing-barrier", "the trailing __syncthreads of block_reduce_sum removed",
           "cuda/launch.cuh", "  __syncthreads();  // let the caller reuse `shared`\n", ""),
    Mutant("shared-index-out-of-bounds", "block_reduce_sum writes shared[warp + 1] (8 slots)",
           "cuda/launch.cuh", "  if (lane == 0) shared[warp] = v;", "  if (lane == 0) shared[warp + 1] = v;"),
]


def sync_tree(src: str, dst: str) -> None:
    """Make dst a copy of src, rewriting only files whose content differs."""
    for root, _, files in os.walk(src):
        for f in files:
            s = os.path.join(root, f)
            d = os.path.join(dst, os.path.relpath(s, src))
            os.makedirs(os.path.dirname(d), exist_ok=True)
            with open(s, "rb") as fs:
                data = fs.read()
            if not os.path.exists(d) or open(d, "rb").read() != data:
                with open(d, "wb") as fd:
                    fd.write(data)


def classify(output: str, returncode: int) -> str:
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", output)
    if m:
        return f"ASan: {m.group(1)}"
    m = re.search(r"runtime error: ([^\n]{0,60})", output)
    if m:
        return f"UBSan: {m.group(1)}"
    if "divergent barrier" in output:
        m = re.search(r"divergent barrier[^\n]*?(__syncthreads|__shfl\w*|__syncwarp)[^\n]*? at ([\w/.]+:\d+)", output)
        return "emulator: divergent barrier" + (f" ({m.group(1)} at {m.group(2)})" if m else "")
    if "invalid configuration" in output:
        m = re.search(r"invalid configuration: ([^;\n]*)", output)
        return "emulator: launch refused" + (f" ({m.group(1).strip()})" if m else "")
    m = re.search(r"^FAILED (\S+)", output, re.M)
    if m:
        return f"wrong result ({m.group(1).split('::', 1)[-1]})"
    if returncode < 0:
        return f"test process killed by signal {-returncode}, no report"
    return f"failed, exit status {returncode} (see log)"


def run_tests(env_extra: dict[str, str], log: str) -> tuple[int, str]:
    env = dict(os.environ, FASTNTK_TEST_EMULATION="1", PYTHONPATH=PKG + os.pathsep + os.path.join(REPO, "tests"),
               **env_extra)
    for key in SHRUNK:
        if key not in env_extra:
            env.pop(key, None)
    # Run from WORK so that `python -m pytest` puts the package copy, not the
    # worktree's fastntk/, first on the path.
    # --capture=sys: ASan writes its report to file descriptor 2, which
    # pytest's default capture would swallow when ASan ends the process.
    proc = subprocess.run([sys.executable, "-m", "pytest", *(os.path.join(REPO, t) for t in TESTS), "-x", "-q",
                           "--capture=sys",
                           "-p", "no:cacheprovider", "-c", os.path.join(REPO, "pyproject.toml"), "--rootdir", REPO],
                          cwd=WORK, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    with open(log, "w") as f:
        f.write(out)
    return proc.returncode, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)")
    parser.add_argument("--markdown", help="also write the result table to this file")
    parser.add_argument("--build-dir", help="the emulated build's directory (default: make emulate's)")
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    import build_emulated

    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    runtime = build_emulated.runtime_env()
    os.makedirs(WORK, exist_ok=True)
    # The package under test: the worktree's Python files, the mutant's module.
    sync_tree(os.path.join(REPO, "fastntk"), os.path.join(PKG, "fastntk"))
    for f in os.listdir(os.path.join(REPO, "fastntk")):
        if f.startswith("_C.") and f.endswith(".so"):
            shutil.copy2(os.path.join(REPO, "fastntk", f), os.path.join(PKG, "fastntk", f))
    out_so = os.path.join(PKG, "fastntk", "_C_cuda_emu" + sysconfig.get_config_var("EXT_SUFFIX"))
    rows, missed = [], 0
    build_dir = args.build_dir or build_emulated.default_build_dir()
    for m in mutants:
        path = os.path.join(REPO, "csrc", m.path)
        with open(path) as f:
            original = f.read()
        if original.count(m.old) != 1:
            raise SystemExit(f"mutant {m.name}: the text to replace occurs {original.count(m.old)} times in {m.path}")
        t0 = time.time()
        try:
            with open(path, "w") as f:
                f.write(original.replace(m.old, m.new))
            build = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "build_emulated.py"),
                                    "--build-dir", build_dir, "--out", out_so], capture_output=True, text=True)
        finally:
            with open(path, "w") as f:
                f.write(original)
        if build.returncode != 0:
            rows.append((m, "did not compile", "-"))
            print(f"{m.name}: did not compile\n{build.stdout[-2000:]}{build.stderr[-2000:]}", flush=True)
            missed += 1
            continue
        how, run = "NOT caught", "-"
        for label, knobs in (("default", {}), ("randomized + shrunken", SHRUNK)):
            status, out = run_tests({**runtime, **knobs}, os.path.join(WORK, f"{m.name}.{label.split()[0]}.log"))
            if status != 0:
                how, run = classify(out, status), label
                break
        missed += how == "NOT caught"
        rows.append((m, how, run))
        print(f"{m.name}: {how} [{run}] ({time.time() - t0:.0f} s)", flush=True)
    table = ["| injected bug | where | caught by | run |", "|---|---|---|---|"]
    table += [f"| {m.what} | `{m.path}` | {how} | {run} |" for m, how, run in rows]
    print("\n".join(table))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(table) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
