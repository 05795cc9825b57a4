"""Build fastntk._C_cuda_emu: the CUDA kernels and drivers of csrc/cuda/*.cu
compiled as C++ by g++ for the CPU emulator (csrc/emulation/cuda_emu.h),
against the installed CPU torch, under AddressSanitizer and
UndefinedBehaviorSanitizer.

Writes a ninja file into the build directory and runs ninja there, so object
files are kept and a rebuild after a change compiles only what it touches
(header dependencies included). The default build directory is outside the
repository, like scripts/cuda_check.sh's, so that CI keeps it between runs:
$FASTNTK_CACHE (~/.cache/fastntk)/emu-build-<torch version>-<hash of the
repository's path>. Prints the environment a process that
imports the module needs (ASan must be loaded first) with --print-env.

Usage: python scripts/build_emulated.py [--csrc DIR] [--build-dir DIR] [--out FILE] [--jobs N]
       python scripts/build_emulated.py --print-env
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
import sysconfig
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CXX = os.environ.get("CXX", "g++")
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize=vptr", "-fno-sanitize-recover=undefined"]


def default_out() -> str:
    return os.path.join(REPO, "fastntk", "_C_cuda_emu" + sysconfig.get_config_var("EXT_SUFFIX"))


def default_build_dir() -> str:
    import torch

    cache = os.environ.get("FASTNTK_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fastntk"))
    key = hashlib.sha1(REPO.encode()).hexdigest()[:8]
    return os.path.join(cache, f"emu-build-{torch.__version__}-{key}")


def runtime_env() -> dict[str, str]:
    """LD_PRELOAD and ASAN_OPTIONS for a Python process that loads the module:
    the ASan runtime must come first, with the C++ runtime right after it
    (python does not link libstdc++, and ASan's exception interceptor needs it
    at start-up); Python's own allocations are not leaks worth reporting."""
    def lib(name: str) -> str:
        return subprocess.run([CXX, f"-print-file-name={name}"], check=True, capture_output=True,
                              text=True).stdout.strip()

    return {"LD_PRELOAD": f"{lib('libasan.so')} {os.path.realpath(lib('libstdc++.so.6'))}",
            "ASAN_OPTIONS": "detect_leaks=0",
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def flags() -> tuple[list[str], list[str]]:
    import torch
    from torch.utils import cpp_extension

    cflags = ["-std=c++17", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", *SANITIZE,
              "-DFASTNTK_CUDA_EMULATION", "-DTORCH_EXTENSION_NAME=_C_cuda_emu", "-DTORCH_API_INCLUDE_EXTENSION_H",
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
              "-Wall", "-Wno-unused-function", "-Wno-sign-compare"]
    pybind_abi = getattr(cpp_extension, "_get_pybind11_abi_build_flags", None)
    if pybind_abi is not None:  # what torch's own extension builds pass (deprecated, still honoured)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            cflags += pybind_abi()
    includes = cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]
    cflags += [f"-isystem{p}" for p in includes]
    lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
    ldflags = ["-shared", *SANITIZE, f"-L{lib_dir}", "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    return cflags, ldflags


def write_ninja(csrc: str, build_dir: str, out: str) -> str:
    cflags, ldflags = flags()
    sources = [os.path.join(csrc, "emulation", f) for f in ("module.cpp", "cuda_emu.cpp", "selftest.cpp")]
    sources += sorted(os.path.join(csrc, "cuda", f) for f in os.listdir(os.path.join(csrc, "cuda"))
                      if f.endswith(".cu"))
    q = shlex.quote
    lines = [
        "ninja_required_version = 1.3",
        f"cxx = {CXX}",
        f"cflags = -I{q(csrc)} {' '.join(q(f) for f in cflags)}",
        f"ldflags = {' '.join(q(f) for f in ldflags)}",
        "rule compile",
        "  command = $cxx -x c++ -MMD -MF $out.d $cflags -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = emulate: compile $in",
        "rule link",
        "  command = $cxx $in $ldflags -o $out",
        "  description = emulate: link $out",
    ]
    objects = []
    for src in sources:
        obj = os.path.join(build_dir, os.path.basename(src) + ".o")
        objects.append(obj)
        lines.append(f"build {obj}: compile {src}")
    lines.append(f"build {out}: link {' '.join(objects)}")
    lines.append(f"default {out}")
    path = os.path.join(build_dir, "build.ninja")
    text = "\n".join(lines) + "\n"
    if not os.path.exists(path) or open(path).read() != text:  # unchanged file: ninja keeps its state
        with open(path, "w") as f:
            f.write(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csrc", default=os.path.join(REPO, "csrc"))
    parser.add_argument("--build-dir", help="object files and build.ninja (default: see above)")
    parser.add_argument("--out", default=default_out())
    parser.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    parser.add_argument("--print-env", action="store_true", help="print the runtime environment as shell exports")
    args = parser.parse_args(argv)
    if args.print_env:
        for key, value in runtime_env().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    args.build_dir = args.build_dir or default_build_dir()
    os.makedirs(args.build_dir, exist_ok=True)
    write_ninja(os.path.abspath(args.csrc), os.path.abspath(args.build_dir), os.path.abspath(args.out))
    ninja = os.path.join(os.path.dirname(sys.executable), "ninja")
    cmd = [ninja if os.path.exists(ninja) else "ninja", "-C", args.build_dir, "-j", str(args.jobs)]
    print(f"emulate: building {os.path.relpath(args.out)} in {args.build_dir}", flush=True)
    return subprocess.run(cmd).returncode


if __name__ == "__main__":
    sys.exit(main())
