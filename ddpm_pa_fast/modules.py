"""nn.Module wrappers of the public functions.

DWTForward and DWTInverse take pytorch_wavelets' constructor and call (for wave='haar'), and hold its
filter buffers, so they drop in where `from pytorch_wavelets import DWTForward, DWTInverse` was, and
checkpoints of models that hold either module load both ways.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _validation as V
from . import functional as F
from .backends import BACKEND_NAMES
from .reference import DDPMPALossOutput

HAAR_NAMES = ("haar", "db1")

# pytorch_wavelets' filters for wave='haar', as its DWTForward and DWTInverse register them (prep_filt_afb2d,
# prep_filt_sfb2d): the analysis filters are pywt's dec_lo and dec_hi reversed, the synthesis ones rec_lo
# and rec_hi; for Haar both are low [1, 1]/sqrt2 and high [1, -1]/sqrt2. Column filters have shape
# (1, 1, 2, 1), row filters (1, 1, 1, 2).
_HAAR_LOW = (math.sqrt(0.5), math.sqrt(0.5))
_HAAR_HIGH = (math.sqrt(0.5), -math.sqrt(0.5))
_COLUMN, _ROW = (1, 1, 2, 1), (1, 1, 1, 2)


def _haar_filter_layout(letter: str) -> dict[str, tuple[tuple[float, float], tuple[int, ...]]]:
    """Buffer name -> (taps, shape) of pytorch_wavelets' four filters; letter 'h' (analysis) or 'g'."""
    return {
        f"{letter}0_col": (_HAAR_LOW, _COLUMN),
        f"{letter}1_col": (_HAAR_HIGH, _COLUMN),
        f"{letter}0_row": (_HAAR_LOW, _ROW),
        f"{letter}1_row": (_HAAR_HIGH, _ROW),
    }


def _check_backend(backend: str) -> str:
    return V.check_choice(backend, "backend", BACKEND_NAMES)


def _check_wave(wave) -> str:
    if wave not in HAAR_NAMES:
        raise ValueError(
            f"wave must be 'haar' (or its alias 'db1'); only the Haar wavelet is implemented, got {wave!r}"
        )
    return wave


class DDPMPALoss(nn.Module):
    """The DDPM-PA loss as a module: forward(x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight=None,
    hf_mse_weight=None) -> DDPMPALossOutput (ddpm_pa_fast.functional.ddpm_pa_loss; the optional
    per-sample weights of mse and hf_mse, shape (N,), come from e.g. ddpm_pa_fast.hf_mse_weights).

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

    def forward(
        self, x_t, eps_ada, eps_src, noise, a_t, b_t, mse_weight=None, hf_mse_weight=None
    ) -> DDPMPALossOutput:
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
            mse_weight=mse_weight,
            hf_mse_weight=hf_mse_weight,
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


class _HaarFilterBuffers(nn.Module):
    """pytorch_wavelets' four filter buffers, with its names, shapes and dtype (the default dtype at
    construction), so that state dicts load strictly in both directions.

    The kernels compute the Haar wavelet from constants and never read the buffers. A state dict whose
    filters are not Haar's is therefore refused rather than loaded into buffers that would change nothing.
    """

    def _register_haar_filters(self, letter: str) -> None:
        self._haar_filters = _haar_filter_layout(letter)
        for name, (taps, shape) in self._haar_filters.items():
            self.register_buffer(name, torch.tensor(taps, dtype=torch.get_default_dtype()).reshape(shape))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        refused = [
            self._not_haar_message(prefix + name, state_dict[prefix + name], taps, shape)
            for name, (taps, shape) in self._haar_filters.items()
            if prefix + name in state_dict and not _holds_haar_filter(state_dict[prefix + name], taps, shape)
        ]
        if refused:
            # Reported through error_msgs, as torch reports its own loading errors; nothing is loaded.
            error_msgs.extend(refused)
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _not_haar_message(self, key: str, value, taps, shape) -> str:
        got = (
            f"{[round(v, 8) for v in value.detach().double().cpu().flatten().tolist()]} of shape "
            f"{tuple(value.shape)} ({value.dtype})"
            if isinstance(value, torch.Tensor)
            else f"an object of type {type(value).__name__}"
        )
        return (
            f"{key} must hold the Haar filter {[round(t, 8) for t in taps]} of shape {shape}, as "
            f"pytorch_wavelets stores it for wave='haar': ddpm_pa_fast.{type(self).__name__} computes only "
            f"the Haar wavelet; got {got}"
        )


def _holds_haar_filter(value, taps, shape) -> bool:
    """value is the Haar filter to the precision of its dtype, and at least float32's (pytorch_wavelets
    builds its filters in the default dtype, so a float64 copy of its module holds float32-rounded taps)."""
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or tuple(value.shape) != shape:
        return False
    tolerance = max(torch.finfo(value.dtype).eps, torch.finfo(torch.float32).eps)
    expected = torch.tensor(taps, dtype=torch.float64).reshape(shape)
    return torch.allclose(value.detach().double().cpu(), expected, rtol=0.0, atol=tolerance)


class DWTForward(_HaarFilterBuffers):
    """pytorch_wavelets.DWTForward for wave='haar': forward(x) -> (yl, yh), yh finest level first.

    Holds pytorch_wavelets' buffers h0_col, h1_col, h0_row, h1_row (see _HaarFilterBuffers).
    """

    def __init__(self, J: int = 1, wave: str = "haar", mode: str = "zero", backend: str = "auto"):
        super().__init__()
        self.J = V.check_levels(J, "J")
        self.wave = _check_wave(wave)
        self.mode = V.check_choice(mode, "mode", V.DWT_MODES)
        self.backend = _check_backend(backend)
        self._register_haar_filters("h")

    def forward(self, x: torch.Tensor):
        return F.haar_dwt2d(x, self.J, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"J={self.J}, wave={self.wave!r}, mode={self.mode!r}, backend={self.backend!r}"


class DWTInverse(_HaarFilterBuffers):
    """pytorch_wavelets.DWTInverse for wave='haar': forward((yl, yh)) -> x.

    Holds pytorch_wavelets' buffers g0_col, g1_col, g0_row, g1_row (see _HaarFilterBuffers).
    """

    def __init__(self, wave: str = "haar", mode: str = "zero", backend: str = "auto"):
        super().__init__()
        self.wave = _check_wave(wave)
        self.mode = V.check_choice(mode, "mode", V.DWT_MODES)
        self.backend = _check_backend(backend)
        self._register_haar_filters("g")

    def forward(self, coeffs) -> torch.Tensor:
        if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
            raise ValueError("coeffs must be a pair (yl, yh) as returned by DWTForward")
        yl, yh = coeffs
        return F.haar_idwt2d(yl, yh, self.mode, backend=self.backend)

    def extra_repr(self) -> str:
        return f"wave={self.wave!r}, mode={self.mode!r}, backend={self.backend!r}"
