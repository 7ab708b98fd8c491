"""The C++ extension's ops (torch.ops.ddpm_pa_fast.*): loading, fake kernels, backend entry.

The schemas are defined once in csrc/ops.cpp; CPU kernels register in csrc/cpu/, CUDA kernels in
csrc/cuda/. The dispatcher picks the device, so backends "cpu" and "cuda" both call these functions.
"""

from __future__ import annotations

import ctypes
import functools
import warnings

import torch

from ._cuda_check import CUDAVersionMismatchError, check_extension_cuda_version
from ._op_backend import OpBackend

BUILD_HINT = (
    "build it from the repository root with `pip install --no-build-isolation -e .` "
    "(add FORCE_CUDA=1 for the CUDA kernels)"
)

try:
    from . import _C  # loading registers the ops with the dispatcher

    check_extension_cuda_version(_C)
    _LOAD_ERROR = None
except CUDAVersionMismatchError as error:
    # Said once, at import: the kernels are there but built for another CUDA than torch's.
    warnings.warn(str(error), stacklevel=2)
    _LOAD_ERROR = error
except ImportError as error:  # the package stays usable with backend="torch"
    _LOAD_ERROR = error


@functools.cache
def cpu_isa() -> str | None:
    """The instruction set the CPU kernels run with: "avx512", "avx2" or "baseline" (None: no extension).

    The best this CPU supports (x86-64-v4, x86-64-v3, or the baseline the wheel targets), unless the
    environment variable DDPM_PA_CPU_ISA names a lower one. Chosen once per process, when this module
    is imported; asking for a set the CPU lacks, or for an unknown name, warns then and keeps the best
    supported one.
    """
    if _LOAD_ERROR is not None:
        return None
    library = ctypes.CDLL(_C.__file__)
    library.ddpm_pa_fast_cpu_isa.restype = ctypes.c_char_p
    library.ddpm_pa_fast_cpu_isa_note.restype = ctypes.c_char_p
    note = library.ddpm_pa_fast_cpu_isa_note().decode()
    if note:
        warnings.warn(note, stacklevel=2)
    return library.ddpm_pa_fast_cpu_isa().decode()


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


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in, and of the Gram matrices they return."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_images(x: torch.Tensor, name: str) -> None:
    torch._check(
        x.dim() == 4, lambda: f"{name} must be a 4-D (N, C, H, W) tensor, got shape {tuple(x.shape)}"
    )


# ---------------------------------------------------------------------------------------------
# Fake kernels (shapes and dtypes only), so the ops trace under torch.compile and export.


def _register_fakes() -> None:
    register_fake = torch.library.register_fake

    @register_fake("ddpm_pa_fast::ddpm_pa_high_frequency")
    def _(x):
        _check_images(x, "x")
        n, c, h, w = x.shape
        return x.new_empty(n, c, h // 2, w // 2)

    @register_fake("ddpm_pa_fast::ddpm_pa_high_frequency_backward")
    def _(grad_hf, height, width):
        _check_images(grad_hf, "grad_hf")
        torch._check(
            grad_hf.shape[2] == height // 2 and grad_hf.shape[3] == width // 2,
            lambda: f"grad_hf must have spatial size (height // 2, width // 2), got {tuple(grad_hf.shape)}",
        )
        return grad_hf.new_empty(grad_hf.shape[0], grad_hf.shape[1], height, width)

    @register_fake("ddpm_pa_fast::haar_dwt2d")
    def _(x, mode):
        _check_images(x, "x")
        n, c, h, w = x.shape
        return x.new_empty(n, c, (h + 1) // 2, (w + 1) // 2), x.new_empty(n, c, 3, (h + 1) // 2, (w + 1) // 2)

    @register_fake("ddpm_pa_fast::haar_dwt2d_backward")
    def _(grad_yl, grad_yh, height, width, mode):
        _check_images(grad_yl, "grad_yl")
        torch._check(
            grad_yl.shape[2] == (height + 1) // 2 and grad_yl.shape[3] == (width + 1) // 2,
            lambda: (
                "grad_yl must have spatial size (ceil(height / 2), ceil(width / 2)), "
                f"got {tuple(grad_yl.shape)}"
            ),
        )
        torch._check(
            grad_yh.dim() == 5 and grad_yh.shape[2] == 3,
            lambda: f"grad_yh must have shape (N, C, 3, h, w), got {tuple(grad_yh.shape)}",
        )
        return grad_yl.new_empty(grad_yl.shape[0], grad_yl.shape[1], height, width)

    @register_fake("ddpm_pa_fast::haar_idwt2d")
    def _(yl, yh):
        _check_images(yl, "yl")
        torch._check(
            yh.dim() == 5 and yh.shape[2] == 3 and yh.shape[3:] == yl.shape[2:],
            lambda: f"yh must have shape (N, C, 3, h, w) matching yl, got {tuple(yh.shape)}",
        )
        n, c, h, w = yl.shape
        return yl.new_empty(n, c, 2 * h, 2 * w)

    @register_fake("ddpm_pa_fast::pairwise_similarity_kl")
    def _(src, ada, tau, reduction):
        torch._check(
            src.dim() >= 2, lambda: f"src must have at least 2 dimensions, got shape {tuple(src.shape)}"
        )
        torch._check(src.shape == ada.shape, lambda: f"ada must have the shape of src {tuple(src.shape)}")
        torch._check(src.shape[0] >= 2, lambda: "src must hold at least 2 samples")
        n = src.shape[0]
        loss = src.new_empty(n) if reduction == "none" else src.new_empty(())
        acc = _accumulation_dtype(src.dtype)
        return loss, src.new_empty(n, n, dtype=acc), src.new_empty(n, n, dtype=acc)

    @register_fake("ddpm_pa_fast::pairwise_similarity_kl_backward")
    def _(grad_loss, ada, gram_src, gram_ada, tau, reduction):
        n = ada.shape[0]
        torch._check(
            gram_src.shape == (n, n) and gram_ada.shape == (n, n), lambda: f"grams must have shape ({n}, {n})"
        )
        return ada.new_empty(ada.shape)

    def check_per_sample(x_t, **per_sample):
        # a_t, b_t and the optional weights (None: absent): one value per sample, on x_t's device.
        n = x_t.shape[0]
        for name, t in per_sample.items():
            if t is None:
                continue
            torch._check(
                t.numel() == n,
                lambda name=name, t=t: f"{name} must hold one value per sample of x_t ({n}), got shape "
                f"{tuple(t.shape)}",
            )
            torch._check(
                t.device == x_t.device,
                lambda name=name, t=t: f"{name} must be on the device of x_t ({x_t.device}), got {t.device}",
            )

    @register_fake("ddpm_pa_fast::ddpm_pa_loss")
    def _(
        x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight, hf_mse_weight, w_pair, w_hf_pair, w_hf_mse, tau,
        reduction,
    ):
        _check_images(x_t, "x_t")
        for name, t in (("eps_ada", eps_ada), ("eps_src", eps_src), ("noise", noise)):
            torch._check(
                t.shape == x_t.shape,
                lambda name=name: f"{name} must have the shape of x_t {tuple(x_t.shape)}",
            )
        n = x_t.shape[0]
        torch._check(n >= 2, lambda: "x_t must hold at least 2 samples")
        check_per_sample(x_t, a_t=a_t, b_t=b_t, mse_weight=mse_weight, hf_mse_weight=hf_mse_weight)
        terms = [x_t.new_empty(()) for _ in range(5)]
        return (*terms, x_t.new_empty(4, n, n, dtype=_accumulation_dtype(x_t.dtype)))

    @register_fake("ddpm_pa_fast::ddpm_pa_loss_backward")
    def _(
        grad_terms, grams, x_t, eps_ada, noise, a_t, b_t, mse_weight, hf_mse_weight, w_pair, w_hf_pair,
        w_hf_mse, tau, reduction,
    ):
        _check_images(x_t, "x_t")
        torch._check(grad_terms.numel() == 5, lambda: "grad_terms must hold 5 values")
        check_per_sample(x_t, a_t=a_t, b_t=b_t, mse_weight=mse_weight, hf_mse_weight=hf_mse_weight)
        return x_t.new_empty(x_t.shape)


# Autograd is registered in C++ (csrc/autograd.cpp): each backward is a registered op, so compiled
# graphs keep it as one node, and none reads a tensor's value on the host.
if _LOAD_ERROR is None:
    _register_fakes()
    cpu_isa()  # chooses now, on the importing thread, and warns here about a DDPM_PA_CPU_ISA it cannot follow


# ---------------------------------------------------------------------------------------------
# Backend "cpu" / "cuda": the reference's five functions on the ops above (the dispatcher picks the
# device's kernels).
OpBackend(lambda: torch.ops.ddpm_pa_fast).export(globals())
