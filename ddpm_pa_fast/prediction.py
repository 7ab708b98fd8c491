"""The DDPM-PA loss's coefficients and target for a diffusers scheduler's prediction type.

The loss reads the model's output `pred` through x0 = a_t * x_t - b_t * pred and regresses it on a
target (docs/ddpm_pa_spec.md writes it for a noise prediction). With x_t = sqrt(abar) x0 + sqrt(1-abar) eps:

    epsilon:       pred = eps,  a_t = sqrt(1 / abar),  b_t = sqrt(1 / abar - 1),  target = eps
    v_prediction:  pred = v,    a_t = sqrt(abar),      b_t = sqrt(1 - abar),      target = v
                   v = sqrt(abar) eps - sqrt(1 - abar) x0   (Salimans & Ho 2022; diffusers' get_velocity)

For v: a_t x_t - b_t v = abar x0 + a_t b_t eps - a_t b_t eps + (1 - abar) x0 = x0, so the fused kernels
compute the right x0 and mse unchanged. An x0 ("sample") prediction is not supported.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


class LossCoefficients(NamedTuple):
    """What DDPMPALoss takes besides the models' predictions: loss(x_t, pred_ada, pred_src, target, a_t, b_t).

    a_t, b_t: shape (N,); target: shape of the sample (the noise for epsilon, v for v_prediction).
    """

    a_t: torch.Tensor
    b_t: torch.Tensor
    target: torch.Tensor


def check_prediction_type(prediction_type, name: str = "prediction_type") -> str:
    """prediction_type itself if the loss can read that parameterisation, else ValueError naming `name`."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(p) for p in PREDICTION_TYPES)}, got {prediction_type!r}"
            + (
                " (an x0 prediction has no noise term for the DDPM-PA loss to read; it is not supported)"
                if prediction_type == "sample"
                else ""
            )
        )
    return prediction_type


def alphas_cumprod_float64(scheduler) -> torch.Tensor:
    """abar_t = prod_{s <= t} (1 - beta_s), float64 (T,) on the CPU, from a DDPM-style scheduler's betas.

    In float64, as improved-diffusion does (the trainer's NoiseSchedule takes it from here): a_t for
    epsilon is 1 / sqrt(abar_t), whose relative error is abar's, and float32 cumulative products lose
    digits over 1000 steps. Raises TypeError if the scheduler has no 1-D betas tensor."""
    betas = getattr(scheduler, "betas", None)
    if not isinstance(betas, torch.Tensor) or betas.ndim != 1:
        raise TypeError(
            "scheduler must be a diffusers DDPM-style scheduler with a 1-D `betas` tensor (e.g. "
            f"DDPMScheduler), got {type(scheduler).__name__}"
        )
    return torch.cumprod(1.0 - betas.detach().cpu().to(torch.float64), dim=0)


def resolve_prediction_type(scheduler, prediction_type: str | None = None) -> str:
    """prediction_type, or the scheduler's config.prediction_type when None; checked (ValueError)."""
    if prediction_type is not None:
        return check_prediction_type(prediction_type)
    prediction_type = getattr(getattr(scheduler, "config", None), "prediction_type", None)
    if prediction_type is None:
        raise ValueError(
            "the scheduler has no config.prediction_type; pass prediction_type= "
            f"({' or '.join(repr(p) for p in PREDICTION_TYPES)})"
        )
    return check_prediction_type(prediction_type, "the scheduler's config.prediction_type")


def coefficient_tables(scheduler, prediction_type: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), float64 on the CPU, one entry per training timestep: a[t], b[t] are the loss's a_t, b_t.

    Errors as loss_coefficients'; the trainer makes them once, which also checks a model folder.
    """
    prediction_type = resolve_prediction_type(scheduler, prediction_type)
    abar = alphas_cumprod_float64(scheduler)
    if prediction_type == "epsilon":
        if not bool((abar > 0).all()):
            raise ValueError(
                "prediction_type 'epsilon' needs abar_t > 0 at every timestep; this schedule reaches "
                "abar = 0 (zero terminal SNR), where x0 cannot be read from a noise prediction: use "
                "'v_prediction'"
            )
        return (1.0 / abar).sqrt(), (1.0 / abar - 1.0).sqrt()
    return abar.sqrt(), (1.0 - abar).sqrt()


def loss_coefficients(
    scheduler,
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str | None = None,
) -> LossCoefficients:
    """The DDPM-PA loss's a_t, b_t and target for a diffusers scheduler, so that a training loop
    written for diffusers calls the loss without deriving them:

        noisy = scheduler.add_noise(clean, noise, timesteps)
        a_t, b_t, target = loss_coefficients(scheduler, clean, noise, timesteps)
        out = DDPMPALoss()(noisy, unet(noisy, timesteps).sample, source_prediction, target, a_t, b_t)

    Arguments (the order of diffusers' scheduler.get_velocity(sample, noise, timesteps)):
        scheduler: a diffusers DDPMScheduler, or any scheduler with its `betas` (1-D, the training
            schedule) and `config.prediction_type`.
        sample: the clean images x0, (N, ...), float.
        noise: the noise eps that made x_t, same shape as sample.
        timesteps: integer tensor of shape (N,), entries in [0, len(scheduler.betas)); any device.
        prediction_type: "epsilon" or "v_prediction"; None (default) reads scheduler.config.prediction_type,
            which is what the model was trained to predict and what its sampler assumes.

    Returns LossCoefficients(a_t, b_t, target) on sample's device: a_t and b_t of shape (N,), float64 for
    a float64 sample and float32 otherwise, computed in float64 from the betas; target of sample's shape
    and dtype (promoted with noise's): the noise itself for epsilon, v = sqrt(abar) eps - sqrt(1 - abar) x0
    (diffusers' get_velocity, computed in float32 or float64) for v_prediction. Nothing here carries a
    gradient. The coefficients are the module doc's table.

    Raises ValueError for a prediction type other than "epsilon" and "v_prediction" (it names the
    argument, or the scheduler's config, and the allowed values), for mismatched shapes, for non-integer
    timesteps or timesteps outside [0, T) (their values are read on the host), and for epsilon on a
    schedule with abar = 0 (zero terminal SNR: x0 cannot be read from a
    noise prediction there; use v_prediction); TypeError for a scheduler without betas.
    """
    prediction_type = resolve_prediction_type(scheduler, prediction_type)
    if not isinstance(sample, torch.Tensor) or not sample.is_floating_point() or sample.ndim < 1:
        raise ValueError("sample must be a floating-point tensor of shape (N, ...)")
    if not isinstance(noise, torch.Tensor) or noise.shape != sample.shape:
        raise ValueError(
            f"noise must be a tensor of sample's shape {tuple(sample.shape)}, got "
            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__}"
        )
    a_table, b_table = coefficient_tables(scheduler, prediction_type)
    check_timesteps(timesteps, a_table.numel(), sample.shape[0])
    return coefficients_at(a_table, b_table, prediction_type, sample, noise, timesteps)


def coefficients_at(
    a_table: torch.Tensor,
    b_table: torch.Tensor,
    prediction_type: str,
    sample: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> LossCoefficients:
    """loss_coefficients from tables already made by coefficient_tables (arguments already checked): a
    training loop makes them once, on its device, instead of once per step."""
    n = sample.shape[0]
    dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
    index = timesteps.to(device=sample.device, dtype=torch.long)
    a_t = a_table.to(device=sample.device, dtype=dtype)[index]
    b_t = b_table.to(device=sample.device, dtype=dtype)[index]
    if prediction_type == "epsilon":
        target = noise
    else:
        shape = (n,) + (1,) * (sample.ndim - 1)
        out_dtype = torch.promote_types(sample.dtype, noise.dtype)
        target = (
            a_t.reshape(shape) * noise.detach().to(dtype) - b_t.reshape(shape) * sample.detach().to(dtype)
        ).to(out_dtype)
    return LossCoefficients(a_t, b_t, target)


# How the x0-space HF-MSE term is weighted across noise levels (docs/ddpm_pa_spec.md, "A defect of the
# formulation itself"); "x0" is the authors' formulation.
HF_MSE_WEIGHTINGS = ("x0", "eps", "min-snr")
DEFAULT_MIN_SNR_GAMMA = 5.0


def check_timesteps(timesteps, num_timesteps: int, n: int | None = None) -> None:
    """timesteps must be an integer tensor (of shape (n,) when n is given) with values in [0, T).

    Reads the values on the host (one synchronisation) to refuse what indexing would wrap around
    (t = -1 would read t = T - 1). Raises ValueError naming `timesteps` and the valid range."""
    if (
        not isinstance(timesteps, torch.Tensor)
        or timesteps.is_floating_point()
        or timesteps.is_complex()
        or timesteps.dtype == torch.bool
        or (n is not None and tuple(timesteps.shape) != (n,))
    ):
        shape = f" of shape ({n},) (one per sample)" if n is not None else ""
        got = (
            f"{timesteps.dtype} of shape {tuple(timesteps.shape)}"
            if isinstance(timesteps, torch.Tensor)
            else type(timesteps).__name__
        )
        raise ValueError(f"timesteps must be an integer tensor{shape}, got {got}")
    expected = f"timesteps must lie in [0, {num_timesteps}) (the scheduler's training steps)"
    if torch.compiler.is_compiling():
        # Inside a graph the values cannot reach Python: the check becomes an op that fails at run time.
        in_range = torch.logical_and(timesteps >= 0, timesteps < num_timesteps).all()
        torch._assert_async(in_range, expected)
        return
    if timesteps.numel() and timesteps.device.type != "meta":
        low, high = int(timesteps.min()), int(timesteps.max())
        if low < 0 or high >= num_timesteps:
            raise ValueError(f"{expected}, got values from {low} to {high}")


def hf_mse_weight_table(
    scheduler,
    weighting: str = "x0",
    *,
    gamma: float = DEFAULT_MIN_SNR_GAMMA,
    max_t: int | None = None,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """The per-timestep weight of the x0-space HF-MSE term, float64 (T,) on the CPU; see hf_mse_weights."""
    if weighting not in HF_MSE_WEIGHTINGS:
        raise ValueError(
            f"weighting must be one of {', '.join(repr(w) for w in HF_MSE_WEIGHTINGS)}, got {weighting!r}"
        )
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma < math.inf:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    abar = alphas_cumprod_float64(scheduler)
    num_timesteps = abar.numel()
    if max_t is not None and (
        isinstance(max_t, bool) or not isinstance(max_t, int) or not 0 < max_t <= num_timesteps
    ):
        raise ValueError(f"max_t must be an integer in [1, {num_timesteps}] or None, got {max_t!r}")
    if weighting == "x0":
        table = torch.ones_like(abar)
    elif weighting == "eps":
        _, b = coefficient_tables(scheduler, prediction_type)
        table = 1.0 / b.square()
    else:
        snr = abar / (1.0 - abar)
        table = snr.clamp(max=float(gamma))
    if max_t is not None:
        table = torch.where(torch.arange(num_timesteps) < max_t, table, torch.zeros_like(table))
    return table


def hf_mse_weights(
    scheduler,
    timesteps: torch.Tensor,
    weighting: str = "x0",
    *,
    gamma: float = DEFAULT_MIN_SNR_GAMMA,
    max_t: int | None = None,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """Per-sample weights of DDPM-PA's HF-MSE term for `hf_mse_weight=` of ddpm_pa_loss / DDPMPALoss.

    The term compares HF(x0_ada) with HF(x0) in x0 space, so it equals b_t^2 mean HF(pred - target)^2:
    its weight in the model's own space grows as 1/SNR_t (b_t^2 = 24,777 at t = 999 on the linear
    schedule), and at high noise its large, noisy gradient drowns the rest (docs/ddpm_pa_spec.md, "A
    defect of the formulation itself"). The weightings, w(t) multiplying the x0-space term:
        "x0":      1, the authors' formulation (DDPM-PA, Zhu et al. 2022, eq. 6; their code).
        "eps":     1 / b_t^2: the HF-MSE of the prediction itself, HF(pred - target), in noise space for
                   an epsilon model (in v space for a v_prediction model).
        "min-snr": min(SNR_t, gamma), SNR_t = abar_t / (1 - abar_t): Min-SNR-gamma (Hang et al. 2023,
                   arXiv 2303.09556, sec. 3.4) in its x0-space form. For an epsilon model this is
                   their epsilon-loss weight min(SNR_t, gamma) / SNR_t applied to HF(eps_ada - eps).
    max_t: if given, w(t) = 0 for t >= max_t (HF-MSE only below that noise level), for any weighting.

    scheduler: a diffusers DDPMScheduler (or any scheduler with 1-D `betas` and config.prediction_type).
    timesteps: integer tensor (N,) in [0, T), any device. gamma: > 0 (5, the paper's choice, by default).
    Returns float32 (N,) on timesteps' device (no gradient), from a float64 table.

    Raises ValueError for an unknown weighting, gamma <= 0, max_t outside [1, T], timesteps that are not
    an integer (N,) tensor or lie outside [0, T) (their values are read on the host), or "eps" on a
    zero-terminal-SNR schedule with an epsilon model (as loss_coefficients); TypeError for a scheduler
    without betas.
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.dim() != 1:
        raise ValueError(
            "timesteps must be an integer tensor of shape (N,), got "
            + (
                f"shape {tuple(timesteps.shape)}"
                if isinstance(timesteps, torch.Tensor)
                else type(timesteps).__name__
            )
        )
    table = hf_mse_weight_table(
        scheduler, weighting, gamma=gamma, max_t=max_t, prediction_type=prediction_type
    )
    check_timesteps(timesteps, table.numel(), timesteps.shape[0])
    return table.to(dtype=torch.float32)[timesteps.cpu()].to(timesteps.device)
