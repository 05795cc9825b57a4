"""Build fastntk's compiled ops.

A CUDAExtension when FORCE_CUDA=1, or when torch was built with CUDA and a
CUDA toolkit is found; otherwise a CppExtension (CPU kernels only). Settings
honoured: CUDA_HOME, TORCH_CUDA_ARCH_LIST (defaulted when no GPU is visible),
MAX_JOBS, NVCC_FLAGS (split like a shell), FASTNTK_CXX_FLAGS and
FASTNTK_LINK_FLAGS (extra C++ compiler and linker flags, split like a shell,
after the defaults so that e.g. an -O level there wins; scripts/sanitize.sh
uses them), DEBUG=1, FORCE_CUDA=1,
FASTNTK_NO_EXTENSION=1 (pure-Python install that runs on the reference ops).
When the toolkit lacks the cuBLAS/cuSPARSE headers, those of the NVIDIA
wheels installed with torch are used. Install with
``pip install --no-build-isolation .`` so the build uses your torch.
"""

import glob
import os
import shlex
import sys

from setuptools import setup

# Without a visible GPU torch cannot guess the architectures: build for
# Ampere (8.0, 8.6), Ada (8.9) and Hopper (9.0), plus PTX for newer GPUs.
DEFAULT_CUDA_ARCH_LIST = "8.0;8.6;8.9;9.0+PTX"


def _log(msg: str) -> None:
    print(f"[fastntk setup] {msg}", file=sys.stderr)


def _nvidia_wheel_includes(cuda_home: str) -> list[str]:
    """Include directories of the NVIDIA wheels torch came with (nvidia/cu13/include,
    or nvidia/<library>/include in older layouts), when the toolkit lacks the
    cuBLAS/cuSPARSE headers that ATen's CUDA headers include (a minimal toolkit
    has only nvcc and the runtime)."""
    if os.path.exists(os.path.join(cuda_home, "include", "cusparse.h")):
        return []
    import importlib.util

    spec = importlib.util.find_spec("nvidia")
    found = []
    for base in (spec.submodule_search_locations or []) if spec else []:
        for inc in sorted(glob.glob(os.path.join(base, "*", "include"))):
            if any(os.path.exists(os.path.join(inc, h)) for h in ("cusparse.h", "cublas_v2.h", "cusolverDn.h")):
                found.append(inc)
    return found


def _extensions():
    if os.environ.get("FASTNTK_NO_EXTENSION", "0") == "1":
        _log("FASTNTK_NO_EXTENSION=1: no compiled ops, the reference ops will be used")
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    force_cuda = os.environ.get("FORCE_CUDA", "0") == "1"
    use_cuda = force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None)
    debug = os.environ.get("DEBUG", "0") == "1"
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))

    # No -std flag: torch's BuildExtension adds the standard its headers need
    # (C++17 up to some releases, C++20 from torch 2.14, whose ATen.h refuses C++17).
    cxx_flags = ["-O0", "-g"] if debug else ["-O3"]
    link_flags = []
    parallel = torch.__config__.parallel_info()
    if "OpenMP" in parallel and "not available" not in parallel.split("OpenMP")[1].split("\n")[0]:
        # at::parallel_for is header code: it only runs threads if we build with OpenMP too.
        cxx_flags += ["-fopenmp"]
        link_flags += ["-fopenmp"]
    cxx_flags += shlex.split(os.environ.get("FASTNTK_CXX_FLAGS", ""))
    link_flags += shlex.split(os.environ.get("FASTNTK_LINK_FLAGS", ""))
    define_macros = []
    extra_compile_args = {"cxx": cxx_flags}
    include_dirs = [os.path.join(here, "csrc")]

    if use_cuda:
        if torch.version.cuda is None:
            raise RuntimeError(
                "FORCE_CUDA=1 but this torch is a CPU build "
                f"(torch {torch.__version__}); install a CUDA build of torch to compile the CUDA kernels"
            )
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME")
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
            _log(f"no GPU visible and no TORCH_CUDA_ARCH_LIST: using {DEFAULT_CUDA_ARCH_LIST}")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        wheel_includes = _nvidia_wheel_includes(CUDA_HOME)
        if wheel_includes:
            _log(f"{CUDA_HOME} has no cuBLAS/cuSPARSE headers: using the NVIDIA wheels' {wheel_includes}")
            include_dirs += wheel_includes
        nvcc_flags = ["-O0", "-g", "-G"] if debug else ["-O3"]
        nvcc_flags += ["--expt-relaxed-constexpr"]
        nvcc_flags += shlex.split(os.environ.get("NVCC_FLAGS", ""))
        extra_compile_args["nvcc"] = nvcc_flags
        arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "auto (visible GPU)")
        define_macros += [("WITH_CUDA", None), ("FASTNTK_CUDA_ARCH_LIST", f'"{arch}"')]
        ext_cls = CUDAExtension
    else:
        ext_cls = CppExtension

    _log(f"torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}")
    _log(f"building {'CUDA' if use_cuda else 'CPU-only'} extension; FORCE_CUDA={int(force_cuda)} "
         f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '')!r} "
         f"MAX_JOBS={os.environ.get('MAX_JOBS', '')!r} DEBUG={int(debug)}")
    _log(f"compile flags {extra_compile_args}; sources {sources}")

    ext = ext_cls(
        name="fastntk._C",
        sources=sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=link_flags,
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
