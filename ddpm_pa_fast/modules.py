"""nn.Module wrappers of the public functions.

DWTForward and DWTInverse take pytorch_wavelets' constructor and call (for wave='haar'), so they drop
in where `from pytorch_wavelets import DWTForward, DWTInverse` was.
"""

from __future__ import annotations

import torch
from torch import nn

from . import _validation as V
from . import functional as F
from .backends import BACKEND_NAMES
from .reference import DDPMPALossOutput

HAAR_NAMES = ("haar", "db1")


def _check_backend(backend: str) -> str:
    return V.check_choice(backend, "backend", BACKEND_NAMES)


def _check_wave(wave) -> str:
    if wave not in HAAR_NAMES:
        raise ValueError(
            f"wave must be 'haar' (or its alias 'db1'); only the Haar wavelet is implemented, got {wave!r}"
        )
    return wave


class DDPMPALoss(nn.Module):
    """The DDPM-PA loss as a module: forward(x_t, eps_ada, eps_src, noise, a_t, b_t) -> DDPMPALossOutput.

    Defaults are the authors' weights (w_pair = w_hf_pair = 4, w_hf_mse = 1), tau = 1 and their
    nn.KLDivLoss() 'mean' reduction of the pairwise terms.
    """

    def __init__(
        self,
        w_pair: float = 4.0,
        w_hf_pair: float = 4.0,
        w_hf_mse: float = 1.0,
        tau: float = 1.0,
        reduction: str = "mean",
        backend: str = "auto",
    ):
        super().__init__()
        self.w_pair = V.check_weight(w_pair, "w_pair")
        self.w_hf_pair = V.check_weight(w_hf_pair, "w_hf_pair")
        self.w_hf_mse = V.check_weight(w_hf_mse, "w_hf_mse")
        self.tau = V.check_positive(tau, "tau")
        self.reduction = V.check_choice(reduction, "reduction", V.LOSS_REDUCTIONS)
        self.backend = _check_backend(backend)

    def forward(self, x_t, eps_ada, eps_src, noise, a_t, b_t) -> DDPMPALossOutput:
        return F.ddpm_pa_loss(
            x_t,
            eps_ada,
            eps_src,
            noise,
            a_t,
            b_t,
            self.w_pair,
            self.w_hf_pair,
            self.w_hf_mse,
            self.tau,
            self.reduction,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"w_pair={self.w_pair}, w_hf_pair={self.w_hf_pair}, w_hf_mse={self.w_hf_mse}, "
            f"tau={self.tau}, reduction={self.reduction!r}, backend={self.backend!r}"
        )


class PairwiseSimilarityKL(nn.Module):
    """KL(P_src || P_ada) of pairwise cosine similarities: forward(src, ada)."""

    def __init__(self, tau: float = 1.0, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        self.tau = V.check_positive(tau, "tau")
        self.reduction = V.check_choice(reduction, "reduction", V.KL_REDUCTIONS)
        self.backend = _check_backend(backend)

    def forward(self, src: torch.Tensor, ada: torch.Tensor) -> torch.Tensor:
        return F.pairwise_similarity_kl(src, ada, self.tau, self.reduction, backend=self.backend)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, reduction={self.reduction!r}, backend={self.backend!r}"


class DDPMPAHighFrequency(nn.Module):
    """DDPM-PA's high-frequency map LH + HL + HH: (N, C, H, W) -> (N, C, H // 2, W // 2)."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = _check_backend(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.ddpm_pa_high_frequency(x, backend=self.backend)


class DWTForward(nn.Module):
    """pytorch_wavelets.DWTForward for wave='haar': forward(x) -> (yl, yh), yh finest level first."""

    def __init__(self, J: int = 1, wave: str = "haar", mode: str = "zero", backend: str = "auto"):
        super().__init__()
        self.J = V.check_levels(J, "J")
        self.wave = _check_wave(wave)
        self.mode = V.check_choice(mode, "mode", V.DWT_MODES)
        self.backend = _check_backend(backend)

    def forward(self, x: torch.Tensor):
        return F.haar_dwt2d(x, self.J, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"J={self.J}, wave={self.wave!r}, mode={self.mode!r}, backend={self.backend!r}"


class DWTInverse(nn.Module):
    """pytorch_wavelets.DWTInverse for wave='haar': forward((yl, yh)) -> x."""

    def __init__(self, wave: str = "haar", mode: str = "zero", backend: str = "auto"):
        super().__init__()
        self.wave = _check_wave(wave)
        self.mode = V.check_choice(mode, "mode", V.DWT_MODES)
        self.backend = _check_backend(backend)

    def forward(self, coeffs) -> torch.Tensor:
        if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
            raise ValueError("coeffs must be a pair (yl, yh) as returned by DWTForward")
        yl, yh = coeffs
        return F.haar_idwt2d(yl, yh, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}, mode={self.mode!r}, backend={self.backend!r}"
