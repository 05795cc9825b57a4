"""Per-kernel resource usage of the CUDA build, from ptxas's -v report:
registers, static shared memory, stack frame and spills, for every kernel
and architecture; fails when a kernel spills or exceeds a hardware limit.

ninja prints each compile's output in one piece after its command line, so
the report of every .cu compiled in this build is cut out of the build log and
stored next to its object file (OBJ.ptxas); objects ninja did not rebuild keep
their stored report. Used by scripts/cuda_check.sh.

Usage: python scripts/cuda_resources.py BUILD_LOG BUILD_DIR CU_FILE...
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

MAX_REGISTERS = 255  # per thread, every architecture since sm_35
MAX_STATIC_SHARED = 48 * 1024  # per block without opt-in
THREADS_PER_BLOCK = 256  # every launch but the trace-symmetric tile (32 x 8 = 256 too)
REGISTERS_PER_SM = 64 * 1024

# pip -v indents the build's output.
COMPILE = re.compile(r"^\s*\[\d+/\d+\] .*nvcc.* -c (\S+\.cu) -o (\S+\.o)")
ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def split_log(log: str) -> dict[str, tuple[str, str]]:
    """{object path: (source, ptxas lines)} for every nvcc compile in the log."""
    out: dict[str, tuple[str, str]] = {}
    current = None
    for line in log.splitlines():
        m = COMPILE.match(line)
        if m:
            current = m.group(2)
            out[current] = (m.group(1), "")
        elif line.lstrip().startswith("["):
            current = None
        elif current and ("ptxas" in line or "bytes stack frame" in line):
            src, text = out[current]
            out[current] = (src, text + line + "\n")
    return out


def parse(report: str) -> list[dict]:
    """One row per (kernel, arch): registers, smem, stack, spill stores/loads."""
    rows, row = [], None
    for line in report.splitlines():
        m = ENTRY.search(line)
        if m:
            row = {"kernel": m.group(1), "arch": m.group(2), "registers": 0, "smem": 0, "stack": 0, "spill": 0}
            rows.append(row)
            continue
        if row is None:
            continue
        m = PROPS.search(line)
        if m:
            row["stack"], row["spill"] = int(m.group(1)), int(m.group(2)) + int(m.group(3))
        m = USED.search(line)
        if m:
            row["registers"] = int(m.group(1))
            row["smem"] = int(m.group(2) or 0)
    return rows


def demangle(names: list[str]) -> list[str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
        return out.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def short(name: str) -> str:
    """The kernel's name and template arguments, without namespaces or parameters."""
    name = name.replace("fastntk::", "").replace("(anonymous namespace)::", "")
    name = name[len("void "):] if name.startswith("void ") else name  # templates mangle their return type
    depth, cut = 0, len(name)
    for i, ch in enumerate(name):  # drop the parameter list: the first '(' outside template brackets
        depth += ch == "<"
        depth -= ch == ">"
        if ch == "(" and depth == 0:
            cut = i
            break
    return name[:cut].replace("OutputMode::k", "").replace("(OutputMode)", "")


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    log_path, build_dir, paths = argv[0], argv[1], argv[2:]
    sources = [os.path.basename(s) for s in paths]
    # A source whose kernels are all in other files (a host-side driver, such
    # as mlp_ntk_cuda.cu) has an empty report, and that is no failure.
    with_kernels = {os.path.basename(p) for p in paths if "__global__" in open(p, errors="replace").read()}
    with open(log_path, errors="replace") as f:
        compiled = split_log(f.read())
    for obj, (_, text) in compiled.items():
        with open(obj + ".ptxas", "w") as f:
            f.write(text)
    rows, missing = [], []
    for src in sources:
        objs = [os.path.join(root, f) for root, _, files in os.walk(build_dir) for f in files
                if f == src.rsplit(".", 1)[0] + ".o"]
        reports = [o + ".ptxas" for o in objs if os.path.exists(o + ".ptxas")]
        if not reports:
            missing.append(src)
            continue
        with open(max(reports, key=os.path.getmtime)) as f:
            found = parse(f.read())
        if not found and src in with_kernels:
            missing.append(src)
        rows += [dict(r, source=src) for r in found]
    if missing:
        print(f"cuda-check: FAILED: no ptxas report for {', '.join(missing)} (delete their objects to rebuild)")
        return 1
    names = demangle([r["kernel"] for r in rows])
    problems = []
    print(f"cuda-check: {'kernel':<62} {'arch':<6} {'regs':>4} {'smem B':>7} {'stack B':>7} {'spill B':>7}")
    for r, name in sorted(zip(rows, names), key=lambda x: (x[0]["source"], short(x[1]), x[0]["arch"])):
        label = short(name)
        print(f"cuda-check:   {label[:60]:<60} {r['arch']:<6} {r['registers']:>4} {r['smem']:>7} {r['stack']:>7} "
              f"{r['spill']:>7}")
        if r["spill"]:
            problems.append(f"{label} ({r['arch']}) spills {r['spill']} bytes")
        if r["registers"] > MAX_REGISTERS or r["registers"] * THREADS_PER_BLOCK > REGISTERS_PER_SM:
            problems.append(f"{label} ({r['arch']}) uses {r['registers']} registers: a {THREADS_PER_BLOCK}-thread "
                            f"block needs at most {REGISTERS_PER_SM // THREADS_PER_BLOCK}")
        if r["smem"] > MAX_STATIC_SHARED:
            problems.append(f"{label} ({r['arch']}) uses {r['smem']} bytes of static shared memory "
                            f"(at most {MAX_STATIC_SHARED})")
    if problems:
        print("cuda-check: FAILED: " + "; ".join(problems))
        return 1
    archs = sorted({r["arch"] for r in rows})
    print(f"cuda-check: resources OK: {len(rows)} kernel builds ({', '.join(archs)}), no spills, within limits")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
