"""The noise schedule and improved-DDPM L_vlb (ddpm_pa_fast.train.diffusion)."""

import math

import pytest
import torch

from ddpm_pa_fast.train import diffusion as Dif

diffusers = pytest.importorskip("diffusers")


def _schedule(variance_type="learned_range", steps=1000):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=steps, variance_type=variance_type)
    return scheduler, Dif.NoiseSchedule(scheduler)


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, lv1, lv2 = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(Dif.normal_kl(m1, lv1, m2, lv2), expected)


def test_discretized_likelihood_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -3.0), (-0.7, -1.0), (0.95, -4.5)):
        log_p = Dif.discretized_gaussian_log_likelihood(
            levels, torch.full_like(levels, mean), torch.full_like(levels, log_scale)
        )
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=2e-3)
        # An interior bin is the normal mass of [x - 1/255, x + 1/255] (up to the tanh CDF approximation).
        i = 128
        normal = torch.distributions.Normal(mean, math.exp(log_scale))
        exact = normal.cdf(levels[i] + 1 / 255) - normal.cdf(levels[i] - 1 / 255)
        assert log_p[i].exp().item() == pytest.approx(exact.item(), rel=2e-2, abs=1e-6)


def test_q_sample_and_x0_coefficients_invert():
    scheduler, s = _schedule()
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = s.q_sample(x0, t, noise)
    abar = scheduler.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, abar.sqrt() * x0 + (1 - abar).sqrt() * noise)
    a, b = s.x0_coefficients(t)
    torch.testing.assert_close(
        a[:, None, None, None] * x_t - b[:, None, None, None] * noise, x0, atol=2e-3, rtol=0
    )


def test_vlb_is_zero_for_the_true_mean_and_posterior_variance():
    _, s = _schedule()
    g = torch.Generator().manual_seed(2)
    x0, noise = torch.rand(3, 3, 8, 8, generator=g) * 2 - 1, torch.randn(3, 3, 8, 8, generator=g)
    t = torch.tensor([5, 300, 900])
    x_t = s.q_sample(x0, t, noise)
    # var_values = -1 selects the (clipped) posterior variance; eps = noise gives the true mean.
    vb = s.vb_terms_bpd(noise, -torch.ones_like(x0), x0, x_t, t)
    assert torch.all(vb.abs() < 1e-3), vb
    # At small t the posterior variance is far below beta_t, so the other end of the range costs bits.
    assert s.vb_terms_bpd(noise, torch.ones_like(x0), x0, x_t, t)[0] > 1e-3


def test_vlb_variance_matches_diffusers_learned_range():
    scheduler, s = _schedule()
    v = torch.tensor(0.3)
    for t in (1, 50, 999):
        ours = (v + 1) / 2 * s.log_betas[t] + (1 - (v + 1) / 2) * s.posterior_log_variance_clipped[t]
        # diffusers returns the interpolated log variance itself for learned_range.
        theirs = scheduler._get_variance(t, predicted_variance=v)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


def test_vlb_at_t0_is_the_decoder_nll_and_gradient_reaches_only_the_variance():
    _, s = _schedule()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 256, (2, 3, 4, 4), generator=g).float() / 127.5 - 1
    noise = torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([0, 0])
    x_t = s.q_sample(x0, t, noise)
    eps = noise + 0.1 * torch.randn(2, 3, 4, 4, generator=g)
    var_values = torch.zeros_like(x0, requires_grad=True)
    eps_leaf = eps.clone().requires_grad_(True)
    vb = s.vb_terms_bpd(eps_leaf.detach(), var_values, x0, x_t, t)
    a, b = s.x0_coefficients(t)
    mean = (
        s.posterior_mean_coef1[t].reshape(-1, 1, 1, 1)
        * (a.reshape(-1, 1, 1, 1) * x_t - b.reshape(-1, 1, 1, 1) * eps)
        + s.posterior_mean_coef2[t].reshape(-1, 1, 1, 1) * x_t
    )
    log_var = 0.5 * (s.log_betas[0] + s.posterior_log_variance_clipped[0])
    nll = -Dif.discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var.expand_as(x0))
    torch.testing.assert_close(vb, nll.flatten(1).mean(1) / math.log(2.0))
    vb.sum().backward()
    assert var_values.grad is not None and var_values.grad.abs().sum() > 0
    assert eps_leaf.grad is None


@pytest.mark.parametrize("bad", [torch.tensor([-1, 5]), torch.tensor([0, 1000]), torch.tensor([0.0, 5.0])])
@pytest.mark.parametrize("method", ["q_sample", "x0_coefficients", "vb_terms_bpd", "vb_terms_bpd_x0"])
def test_timesteps_outside_the_schedule_are_refused_by_name(method, bad):
    """huggingface/diffusers#5921's kind (issue 21 F): t = -1 would index t = 999's coefficients."""
    _, s = _schedule()
    x = torch.zeros(2, 1, 2, 2)
    args = {
        "q_sample": (x, bad, x),
        "x0_coefficients": (bad,),
        "vb_terms_bpd": (x, x, x, x, bad),
        "vb_terms_bpd_x0": (x, x, x, x, bad),
    }[method]
    with pytest.raises(ValueError, match=r"timesteps must (lie in \[0, 1000\)|be an integer tensor)"):
        getattr(s, method)(*args)
