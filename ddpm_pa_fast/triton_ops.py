"""Backend "triton": the reference's five functions on the Triton kernels (torch.ops.ddpm_pa_fast_triton).

The kernels live in the repository's kernels/ folder, installed as ddpm_pa_fast.kernels. Triton is an
optional dependency, so nothing here imports it until a function runs; unavailable_reason() says
whether it can run and, if not, how to get it. Arguments arrive validated by ddpm_pa_fast.functional.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import pathlib
import sys

import torch

from .reference import DDPMPALossOutput

INSTALL_HINT = "install it with `pip install ddpm_pa_fast[triton]`"


def unavailable_reason(device_type: str) -> str | None:
    """None when the Triton kernels can run on device_type tensors; otherwise why not and how to fix it."""
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed; {INSTALL_HINT}"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return None
        return (
            "Triton kernels run on CUDA tensors; on CPU tensors only in Triton's interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported)"
        )
    return (
        f"Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1), got tensors on {device_type}"
    )


@functools.cache
def load_kernels():
    """Imports ddpm_pa_fast.kernels (registering the triton ops) and returns torch.ops.ddpm_pa_fast_triton.

    Installed, the kernels are the subpackage ddpm_pa_fast.kernels. In a source checkout run without
    installing, they are the repository's top-level kernels/ folder, loaded under that same name.
    """
    name = f"{__package__}.kernels"
    if importlib.util.find_spec(name) is None:
        folder = pathlib.Path(__file__).resolve().parent.parent / "kernels"
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None:
            raise ImportError(f"ddpm_pa_fast.kernels is not installed and {folder} does not exist")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        importlib.import_module(name)
    return torch.ops.ddpm_pa_fast_triton


def ddpm_pa_high_frequency(x: torch.Tensor) -> torch.Tensor:
    return load_kernels().ddpm_pa_high_frequency(x)


def haar_dwt2d(
    x: torch.Tensor, levels: int = 1, mode: str = "zero"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    ops = load_kernels()
    yl, yh = x, []
    for _ in range(levels):
        yl, band = ops.haar_dwt2d(yl, mode)
        yh.append(band)
    return yl, yh


def haar_idwt2d(yl: torch.Tensor, yh, mode: str = "zero") -> torch.Tensor:
    """As reference.haar_idwt2d: None bands are zeros, and a reconstruction one row/column larger than
    the next finer level's bands is cropped. mode does not change the synthesis (pytorch_wavelets')."""
    ops = load_kernels()
    ll = yl
    for j in range(len(yh) - 1, -1, -1):
        band = yh[j]
        if band is None:
            band = ll.new_zeros(ll.shape[0], ll.shape[1], 3, ll.shape[2], ll.shape[3])
        h, w = band.shape[-2:]
        if ll.shape[-2] not in (h, h + 1) or ll.shape[-1] not in (w, w + 1):
            raise ValueError(
                f"yh[{j}] has spatial size {(h, w)}, which does not fit the coarser level's "
                f"reconstruction of size {tuple(ll.shape[-2:])}"
            )
        ll = ops.haar_idwt2d(ll[..., :h, :w], band)
    return ll


def pairwise_similarity_kl(
    src: torch.Tensor, ada: torch.Tensor, tau: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    loss, _, _ = load_kernels().pairwise_similarity_kl(src.detach(), ada, tau, reduction)
    return loss


def ddpm_pa_loss(
    x_t: torch.Tensor,
    eps_ada: torch.Tensor,
    eps_src: torch.Tensor,
    noise: torch.Tensor,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    w_pair: float = 4.0,
    w_hf_pair: float = 4.0,
    w_hf_mse: float = 1.0,
    tau: float = 1.0,
    reduction: str = "mean",
) -> DDPMPALossOutput:
    # Only eps_ada gets a gradient (the spec); the rest enter as constants, as in the reference.
    constants = (t.detach() for t in (x_t, eps_src, noise, a_t, b_t))
    x_t, eps_src, noise, a_t, b_t = constants
    *terms, _ = load_kernels().ddpm_pa_loss(
        x_t, eps_ada, eps_src, noise, a_t, b_t, w_pair, w_hf_pair, w_hf_mse, tau, reduction
    )
    return DDPMPALossOutput(*terms)
