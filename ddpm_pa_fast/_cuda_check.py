"""Import-time check that the extension's CUDA kernels were built for the CUDA of the torch we run.

The extension exports one C symbol, ``ddpm_pa_fast_cuda_build_version`` (csrc/cuda/build_info_cuda.cu),
only when it was built with its CUDA kernels; it returns CUDART_VERSION (1000 * major + 10 * minor).
Kernels built for another CUDA major version than torch's fail at their first launch with an opaque
error, so we say at import what to rebuild instead. Minor versions within one major release are
compatible (CUDA's minor-version compatibility), as torch's own extension check assumes.
"""

from __future__ import annotations

import ctypes

import torch

BUILD_VERSION_SYMBOL = "ddpm_pa_fast_cuda_build_version"
REBUILD_COMMAND = "FORCE_CUDA=1 pip install --no-build-isolation --force-reinstall --no-deps -e ."


class CUDAVersionMismatchError(ImportError):
    """The extension's CUDA kernels were built for a CUDA version that this torch does not use.

    An ImportError, so that code treating a missing extension as "use backend='torch'" treats this
    the same way, with this message as the reason.
    """


def extension_cuda_version(extension) -> tuple[int, int] | None:
    """(major, minor) of the CUDA the loaded extension module was built with; None for a CPU-only build."""
    library = ctypes.CDLL(extension.__file__)
    try:
        build_version = getattr(library, BUILD_VERSION_SYMBOL)
    except AttributeError:
        return None
    build_version.restype = ctypes.c_int
    build_version.argtypes = []
    version = build_version()
    return version // 1000, (version % 1000) // 10


def check_extension_cuda_version(extension) -> None:
    """Raises CUDAVersionMismatchError when the extension's CUDA kernels do not match torch.version.cuda.

    A CPU-only build of the extension passes: it has no CUDA kernels to mismatch.
    """
    built = extension_cuda_version(extension)
    if built is None:
        return
    built_text = f"{built[0]}.{built[1]}"
    if torch.version.cuda is None:
        raise CUDAVersionMismatchError(
            f"ddpm_pa_fast's C++ extension ({extension.__file__}) was built with CUDA {built_text}, but the "
            f"installed torch {torch.__version__} is a CPU-only build. Rebuild the extension for this torch "
            f"from the repository root: `FORCE_ONLY_CPU=1 pip install --no-build-isolation --force-reinstall "
            f"--no-deps -e .`, or install a CUDA {built[0]} build of torch."
        )
    torch_major = int(torch.version.cuda.split(".")[0])
    if torch_major != built[0]:
        raise CUDAVersionMismatchError(
            f"ddpm_pa_fast's C++ extension ({extension.__file__}) was built with CUDA {built_text}, but "
            f"torch {torch.__version__} uses CUDA {torch.version.cuda}. Rebuild the extension against this "
            f"torch, with a CUDA {torch_major}.x toolkit as CUDA_HOME, from the repository root: "
            f"`{REBUILD_COMMAND}`."
        )
