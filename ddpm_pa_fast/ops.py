"""The C++ extension's ops (torch.ops.ddpm_pa_fast.*): loading, fake kernels, autograd, backend entry.

The schemas are defined once in csrc/ops.cpp; CPU kernels register in csrc/cpu/, CUDA kernels in
csrc/cuda/. The dispatcher picks the device, so backends "cpu" and "cuda" both call these functions.
"""

from __future__ import annotations

import torch

BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(add FORCE_CUDA=1 for the CUDA kernels)"
)

try:
    from . import _C  # noqa: F401  (loading registers the ops with the dispatcher)

    _LOAD_ERROR = None
except ImportError as error:  # the package stays usable with backend="torch"
    _LOAD_ERROR = error


def extension_unavailable_reason() -> str | None:
    """None when the C++ extension is loaded; otherwise why not and how to build it."""
    if _LOAD_ERROR is None:
        return None
    return f"the C++ extension ddpm_pa_fast._C is not built ({_LOAD_ERROR}); {BUILD_HINT}"


def cuda_unavailable_reason() -> str | None:
    """None when the extension has CUDA kernels; otherwise why not and how to get them."""
    reason = extension_unavailable_reason()
    if reason is not None:
        return reason
    if not torch._C._dispatch_has_kernel_for_dispatch_key("ddpm_pa_fast::ddpm_pa_high_frequency", "CUDA"):
        return (
            "the C++ extension was built without CUDA kernels; rebuild with a CUDA build of torch and "
            "`FORCE_CUDA=1 pip install --no-build-isolation -e .`"
        )
    return None
