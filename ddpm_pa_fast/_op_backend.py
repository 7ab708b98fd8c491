"""The five backend functions on top of a namespace of registered ops that follow csrc/ops.cpp's
contracts. The C++ ops (torch.ops.ddpm_pa_fast) and the Triton ops (torch.ops.ddpm_pa_fast_triton)
both do, so backends "cpu", "cuda" and "triton" share this one adapter."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._haar_levels import analysis_levels, synthesis_levels
from .reference import DDPMPALossOutput

# What every backend module provides (ddpm_pa_fast.backends calls these by name).
BACKEND_FUNCTIONS = (
    "ddpm_pa_high_frequency",
    "haar_dwt2d",
    "haar_idwt2d",
    "pairwise_similarity_kl",
    "ddpm_pa_loss",
)


def _constant(t: torch.Tensor | None) -> torch.Tensor | None:
    """t cut from the graph. Detached only when it requires grad: a detach is an op call (about a
    microsecond of host time), and the usual x_t, noise and coefficients need none."""
    return t.detach() if t is not None and t.requires_grad else t


class OpBackend:
    """Backend functions with the reference's positional signatures, over `ops()` (called at each use,
    so a namespace can be loaded lazily). Arguments arrive validated by ddpm_pa_fast.functional."""

    def __init__(self, ops: Callable[[], object]):
        self._ops = ops

    def ddpm_pa_high_frequency(self, x: torch.Tensor) -> torch.Tensor:
        return self._ops().ddpm_pa_high_frequency(x)

    def haar_dwt2d(self, x: torch.Tensor, levels: int = 1, mode: str = "zero"):
        return analysis_levels(self._ops().haar_dwt2d, x, levels, mode)

    def haar_idwt2d(self, yl: torch.Tensor, yh, mode: str = "zero") -> torch.Tensor:
        # mode does not change the Haar synthesis (as in pytorch_wavelets).
        return synthesis_levels(self._ops().haar_idwt2d, yl, yh)

    def pairwise_similarity_kl(self, src, ada, tau: float = 1.0, reduction: str = "mean") -> torch.Tensor:
        # The source features are a constant of the loss (the frozen model).
        loss, _, _ = self._ops().pairwise_similarity_kl(src.detach(), ada, tau, reduction)
        return loss

    def ddpm_pa_loss(
        self,
        x_t,
        eps_ada,
        eps_src,
        noise,
        a_t,
        b_t,
        w_pair=4.0,
        w_hf_pair=4.0,
        w_hf_mse=1.0,
        tau=1.0,
        reduction="mean",
        *,
        mse_weight=None,
        hf_mse_weight=None,
    ) -> DDPMPALossOutput:
        # Only eps_ada gets a gradient (the spec); the rest enter as constants, as in the reference.
        *terms, _grams = self._ops().ddpm_pa_loss(
            _constant(x_t),
            eps_ada,
            _constant(eps_src),
            _constant(noise),
            _constant(a_t),
            _constant(b_t),
            _constant(mse_weight),
            _constant(hf_mse_weight),
            w_pair,
            w_hf_pair,
            w_hf_mse,
            tau,
            reduction,
        )
        return DDPMPALossOutput(*terms)

    def export(self, namespace: dict) -> None:
        """Binds the five functions as module-level names of a backend module."""
        for name in BACKEND_FUNCTIONS:
            namespace[name] = getattr(self, name)
