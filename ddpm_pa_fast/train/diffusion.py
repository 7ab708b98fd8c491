"""The forward noising process and the improved-DDPM variational term, from a diffusers DDPMScheduler.

Coefficients are computed in float64 from the scheduler's betas (as improved-diffusion does) and kept in
float32 on the training device. The L_vlb maths follows improved-diffusion's GaussianDiffusion._vb_terms_bpd
(Nichol & Dhariwal 2021), which the DDPM-PA authors' code calls with the mean detached.
"""

from __future__ import annotations

import math

import torch

from ..prediction import alphas_cumprod_float64, check_timesteps

LEARNED_VARIANCE_TYPES = ("learned_range",)


def _gather(coef: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return coef[t].reshape(-1, 1, 1, 1)


class NoiseSchedule:
    """The per-timestep coefficients of a DDPMScheduler's beta schedule, float32 on `device`.

    Raises TypeError if the scheduler has no 1-D betas tensor (prediction.alphas_cumprod_float64). Every
    method that takes timesteps t refuses, with a ValueError naming `timesteps` and [0, T), a t that is not
    an integer tensor or lies outside the schedule (indexing would wrap t = -1 around to T - 1)."""

    def __init__(self, scheduler, device: torch.device | str = "cpu"):
        abar = alphas_cumprod_float64(scheduler)
        betas = scheduler.betas.detach().cpu().to(torch.float64)
        alphas = 1.0 - betas
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        self.num_timesteps = betas.shape[0]
        self.variance_type = scheduler.config.variance_type
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # The posterior variance is 0 at t = 0; improved-diffusion clips its log to the t = 1 value.
        posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        table = {
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1.0 - abar).sqrt(),
            "sqrt_recip_abar": (1.0 / abar).sqrt(),
            "sqrt_recipm1_abar": (1.0 / abar - 1.0).sqrt(),
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
            "posterior_log_variance_clipped": posterior_log_variance_clipped,
            "log_betas": torch.log(betas),
        }
        for name, values in table.items():
            setattr(self, name, values.to(device=device, dtype=torch.float32))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
        check_timesteps(t, self.num_timesteps)
        return _gather(self.sqrt_abar, t) * x0 + _gather(self.sqrt_one_minus_abar, t) * noise

    def x0_coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, b_t) = (sqrt(1 / abar_t), sqrt(1 / abar_t - 1)), shape (N,): x0 = a_t x_t - b_t eps."""
        check_timesteps(t, self.num_timesteps)
        return self.sqrt_recip_abar[t], self.sqrt_recipm1_abar[t]

    def vb_terms_bpd(
        self,
        eps: torch.Tensor,
        var_values: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """vb_terms_bpd_x0 for a noise prediction eps (x0 = sqrt(1/abar) x_t - sqrt(1/abar - 1) eps)."""
        check_timesteps(t, self.num_timesteps)
        a, b = _gather(self.sqrt_recip_abar, t), _gather(self.sqrt_recipm1_abar, t)
        return self.vb_terms_bpd_x0(a * x_t - b * eps, var_values, x0, x_t, t)

    def vb_terms_bpd_x0(
        self,
        pred_x0: torch.Tensor,
        var_values: torch.Tensor,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """improved-DDPM's L_vlb per sample, in bits: KL(q(x_{t-1}|x_t,x0) || p(x_{t-1}|x_t)), and at t = 0
        the decoder's discretized Gaussian negative log-likelihood of x0.

        pred_x0 is the model's prediction of x0, whatever it predicts (pass it detached, as DDPM-PA does,
        so that only the variance learns from this term); var_values in [-1, 1] interpolates the log
        variance between the clipped posterior variance and beta_t ("learned_range"). clip_denoised is
        False, as in the authors' call.
        """
        check_timesteps(t, self.num_timesteps)
        coef1, coef2 = _gather(self.posterior_mean_coef1, t), _gather(self.posterior_mean_coef2, t)
        true_mean = coef1 * x0 + coef2 * x_t
        true_log_variance = _gather(self.posterior_log_variance_clipped, t)
        model_mean = coef1 * pred_x0 + coef2 * x_t
        frac = (var_values + 1) / 2
        model_log_variance = frac * _gather(self.log_betas, t) + (1 - frac) * true_log_variance
        kl = normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)
        kl = kl.flatten(1).mean(1) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
        decoder_nll = decoder_nll.flatten(1).mean(1) / math.log(2.0)
        return torch.where(t == 0, decoder_nll, kl)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """improved-diffusion's tanh approximation of the standard normal CDF (kept for identical numbers)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """Log-likelihood of images x in [-1, 1] quantised to 256 levels under N(means, exp(log_scales)^2),
    elementwise, in nats; the end bins extend to +-infinity."""
    centered_x = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered_x + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered_x - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    cdf_delta = cdf_plus - cdf_min
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log(cdf_delta.clamp(min=1e-12))),
    )
