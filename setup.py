"""Builds the C++ extension ddpm_pa_fast._C from csrc/.

The CPU kernels are always built. The CUDA kernels are built when FORCE_CUDA=1, or when torch is a
CUDA build and a CUDA toolkit is found (CUDA_HOME). Whether a GPU is present never matters: build
machines often have none. FORCE_ONLY_CPU=1 skips CUDA even where it could be built.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
# The CUDA architectures our kernels are tuned for: Ampere (A100) and Hopper (H100/H200), plus PTX
# so that newer GPUs can JIT-compile. TORCH_CUDA_ARCH_LIST overrides.
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0+PTX"


def _log(message):
    print(f"[ddpm_pa_fast setup] {message}", file=sys.stderr, flush=True)


def _want_cuda():
    from torch.utils import cpp_extension

    if os.environ.get("FORCE_ONLY_CPU", "0") == "1":
        return False, "FORCE_ONLY_CPU=1"
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True, "FORCE_CUDA=1"
    import torch

    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, f"torch is a CUDA {torch.version.cuda} build and CUDA_HOME={cpp_extension.CUDA_HOME}"


def _extensions():
    from torch.utils import cpp_extension

    with_cuda, why = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    # No -std flag: torch appends the standard its headers need (C++17 up to 2.13, C++20 from 2.14),
    # and an explicit one would override it.
    cxx_flags = ["-O3", "-fopenmp"]
    define_macros = [("Py_LIMITED_API", "0x030A0000")]
    extension = cpp_extension.CppExtension
    extra_compile_args = {"cxx": cxx_flags}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCH_LIST)
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
        extension = cpp_extension.CUDAExtension
        define_macros.append(("DDPM_PA_WITH_CUDA", "1"))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        _log(
            f"building CPU + CUDA kernels ({why}); TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}"
        )
    else:
        _log(f"building CPU kernels only ({why}); set FORCE_CUDA=1 to build the CUDA kernels")
    return [
        extension(
            name="ddpm_pa_fast._C",
            sources=sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(no_python_abi_suffix=True)


setup(
    packages=find_packages(include=["ddpm_pa_fast", "ddpm_pa_fast.*"]) + ["ddpm_pa_fast.kernels"],
    # The Triton kernels live in the top-level kernels/ folder but install as ddpm_pa_fast.kernels,
    # so that no top-level package named "kernels" lands on anyone's path.
    package_dir={"ddpm_pa_fast.kernels": "kernels"},
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
