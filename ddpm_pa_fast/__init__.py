"""ddpm_pa_fast: fused CPU, CUDA and Triton kernels for the DDPM-PA few-shot diffusion losses.

    from ddpm_pa_fast import DDPMPALoss, ddpm_pa_loss, pairwise_similarity_kl
    from ddpm_pa_fast import ddpm_pa_high_frequency, haar_dwt2d, haar_idwt2d, DWTForward, DWTInverse
    from ddpm_pa_fast import loss_coefficients   # a_t, b_t and target from a diffusers scheduler
    from ddpm_pa_fast import hf_mse_weights      # hf_mse_weight= across noise levels (x0, eps, min-snr)
    from ddpm_pa_fast import adapters_off        # LoRA: the source prediction from the same model (peft)

The maths is in docs/ddpm_pa_spec.md; ddpm_pa_fast.reference is its plain-PyTorch statement.
"""

from .backends import BACKEND_NAMES, BackendUnavailableError, available_backends, backend_name
from .functional import (
    ddpm_pa_high_frequency,
    ddpm_pa_loss,
    haar_dwt2d,
    haar_idwt2d,
    pairwise_similarity_kl,
)
from .lora import adapters_off
from .modules import DDPMPAHighFrequency, DDPMPALoss, DWTForward, DWTInverse, PairwiseSimilarityKL
from .prediction import (
    HF_MSE_WEIGHTINGS,
    PREDICTION_TYPES,
    LossCoefficients,
    hf_mse_weights,
    loss_coefficients,
)
from .reference import DDPMPALossOutput

__version__ = "0.1.0"

__all__ = [
    "BACKEND_NAMES",
    "BackendUnavailableError",
    "DDPMPAHighFrequency",
    "DDPMPALoss",
    "DDPMPALossOutput",
    "DWTForward",
    "DWTInverse",
    "HF_MSE_WEIGHTINGS",
    "LossCoefficients",
    "PREDICTION_TYPES",
    "PairwiseSimilarityKL",
    "adapters_off",
    "available_backends",
    "backend_name",
    "ddpm_pa_high_frequency",
    "ddpm_pa_loss",
    "haar_dwt2d",
    "haar_idwt2d",
    "hf_mse_weights",
    "loss_coefficients",
    "pairwise_similarity_kl",
]
