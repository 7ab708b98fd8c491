"""loss_coefficients: the DDPM-PA loss's a_t, b_t and target for a diffusers scheduler's prediction type
(issue 13, part E), against a float64 statement of each parameterisation and diffusers' get_velocity."""

import pytest
import torch

import ddpm_pa_fast
from ddpm_pa_fast import reference as R

diffusers = pytest.importorskip("diffusers")

PREDICTION_TYPES = ["epsilon", "v_prediction"]
SCHEDULES = [
    dict(num_train_timesteps=1000, beta_schedule="linear"),
    dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
    dict(num_train_timesteps=100, beta_schedule="scaled_linear"),
]


def _case(schedule, prediction_type, n=5, seed=0):
    scheduler = diffusers.DDPMScheduler(**schedule, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(n, 3, 8, 8, generator=g)
    last = schedule["num_train_timesteps"] - 1
    t = torch.tensor([0, 1, last // 2, last - 1, last])[:n]
    return scheduler, x0, noise, t


def _abar64(scheduler, t):
    abar = torch.cumprod(1.0 - scheduler.betas.double(), 0)[t]
    return abar.reshape(-1, 1, 1, 1)


def _truth(prediction_type, abar, x0, x_t, noise, pred):
    """float64: the target and the x0 that a prediction `pred` implies, written from the definitions."""
    if prediction_type == "epsilon":
        return noise, (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    return v, abar.sqrt() * x_t - (1 - abar).sqrt() * pred


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: s["beta_schedule"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_coefficients_recover_x0_and_the_target_is_the_parameterisations(schedule, prediction_type):
    scheduler, x0, noise, t = _case(schedule, prediction_type)
    a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t)
    assert a_t.shape == b_t.shape == (5,) and a_t.dtype == b_t.dtype == torch.float32
    assert target.shape == x0.shape and target.dtype == x0.dtype
    abar = _abar64(scheduler, t)
    x_t = abar.sqrt() * x0.double() + (1 - abar).sqrt() * noise.double()
    target64, _ = _truth(prediction_type, abar, x0.double(), x_t, noise.double(), noise.double())
    torch.testing.assert_close(target.double(), target64, rtol=1e-6, atol=1e-6)
    # The loss's own formula recovers x0 from the true prediction (float32 coefficients: a_t reaches
    # 1 / sqrt(abar) ~ 157 at the end of the linear schedule, so the tolerance scales with it).
    x0_back = a_t.double().reshape(-1, 1, 1, 1) * x_t - b_t.double().reshape(-1, 1, 1, 1) * target64
    torch.testing.assert_close(x0_back, x0.double(), rtol=0, atol=1e-7 * float(a_t.max()) * 10)
    if prediction_type == "epsilon":
        assert target is noise
    else:
        torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_float64_sample_gets_float64_coefficients_and_reads_the_scheduler_config(prediction_type):
    scheduler, x0, noise, t = _case(SCHEDULES[0], prediction_type)
    a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0.double(), noise.double(), t)
    assert a_t.dtype == b_t.dtype == target.dtype == torch.float64
    abar = _abar64(scheduler, t).flatten()
    if prediction_type == "epsilon":
        expected = (1 / abar).sqrt(), (1 / abar - 1).sqrt()
    else:
        expected = abar.sqrt(), (1 - abar).sqrt()
    torch.testing.assert_close(a_t, expected[0], rtol=1e-15, atol=0)
    torch.testing.assert_close(b_t, expected[1], rtol=1e-15, atol=0)
    explicit = ddpm_pa_fast.loss_coefficients(scheduler, x0.double(), noise.double(), t, prediction_type)
    assert all(torch.equal(x, y) for x, y in zip(explicit, (a_t, b_t, target), strict=True))


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_fused_loss_with_these_coefficients_is_the_parameterisations_loss(prediction_type, backend):
    """DDPMPALoss(x_t, pred_ada, pred_src, target, a_t, b_t) equals the DDPM-PA loss written in float64
    from the parameterisation's own x0 formula, value and gradient."""
    scheduler, x0, noise, t = _case(SCHEDULES[0], prediction_type, seed=1)
    g = torch.Generator().manual_seed(2)
    x_t = scheduler.add_noise(x0, noise, t)
    a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t)
    pred_ada = (target + 0.3 * torch.randn(x0.shape, generator=g)).requires_grad_(True)
    pred_src = target + 0.3 * torch.randn(x0.shape, generator=g)
    loss_fn = ddpm_pa_fast.DDPMPALoss(w_pair=2.0, w_hf_pair=3.0, w_hf_mse=0.5, backend=backend)
    out = loss_fn(x_t, pred_ada, pred_src, target, a_t, b_t)
    (grad,) = torch.autograd.grad(out.loss, pred_ada)

    abar = _abar64(scheduler, t)
    x_t64, x064, noise64 = x_t.double(), x0.double(), noise.double()
    pred64 = pred_ada.detach().double().requires_grad_(True)
    target64, x0_ada = _truth(prediction_type, abar, x064, x_t64, noise64, pred64)
    _, x0_src = _truth(prediction_type, abar, x064, x_t64, noise64, pred_src.double())
    _, x0_tgt = _truth(prediction_type, abar, x064, x_t64, noise64, target64)
    hf = R.ddpm_pa_high_frequency
    terms = dict(
        mse=(target64 - pred64).square().mean(),
        hf_mse=(hf(x0_ada) - hf(x0_tgt)).square().mean(),
        pair_img=R.pairwise_similarity_kl(x0_src, x0_ada),
        pair_hf=R.pairwise_similarity_kl(hf(x0_src), hf(x0_ada)),
    )
    total = terms["mse"] + 0.5 * terms["hf_mse"] + 2.0 * terms["pair_img"] + 3.0 * terms["pair_hf"]
    (expected_grad,) = torch.autograd.grad(total, pred64)
    for name, value in terms.items():
        torch.testing.assert_close(getattr(out, name).double(), value.detach(), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(out.loss.double(), total.detach(), rtol=2e-4, atol=1e-7)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=2e-3, atol=1e-6)


def test_epsilon_coefficients_are_the_trainers_bit_for_bit():
    """The trainer's epsilon path (a long experiment runs on it) must not move: the helper's a_t and b_t
    are NoiseSchedule.x0_coefficients exactly and its target is the noise tensor itself."""
    from ddpm_pa_fast.train.diffusion import NoiseSchedule

    for schedule in SCHEDULES:
        scheduler = diffusers.DDPMScheduler(**schedule)
        t = torch.arange(schedule["num_train_timesteps"])
        x0 = noise = torch.zeros(t.numel(), 1, 2, 2)
        a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t)
        a_ref, b_ref = NoiseSchedule(scheduler).x0_coefficients(t)
        assert torch.equal(a_t, a_ref) and torch.equal(b_t, b_ref) and target is noise


def test_sample_prediction_is_refused_naming_the_argument_and_the_choices():
    scheduler, x0, noise, t = _case(SCHEDULES[0], "epsilon")
    with pytest.raises(
        ValueError, match=r"^prediction_type must be one of 'epsilon', 'v_prediction', got 'sample'"
    ):
        ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t, prediction_type="sample")
    x0_model = diffusers.DDPMScheduler(prediction_type="sample")
    with pytest.raises(ValueError, match=r"config\.prediction_type must be one of 'epsilon', 'v_prediction'"):
        ddpm_pa_fast.loss_coefficients(x0_model, x0, noise, t)
    assert ddpm_pa_fast.PREDICTION_TYPES == ("epsilon", "v_prediction")


@pytest.mark.parametrize(
    "change, error, pattern",
    [
        (dict(timesteps=torch.zeros(5)), ValueError, "integer tensor of shape"),
        (dict(timesteps=torch.zeros(4, dtype=torch.long)), ValueError, r"shape \(5,\)"),
        (dict(noise=torch.zeros(5, 3, 8, 4)), ValueError, "noise must be a tensor of sample's shape"),
        (dict(sample=torch.zeros(5, 3, 8, 8, dtype=torch.long)), ValueError, "floating-point"),
        (dict(scheduler=object()), TypeError, "betas"),
        (
            dict(timesteps=torch.tensor([-1, 0, 1, 2, 999])),
            ValueError,
            r"timesteps must lie in \[0, 1000\).*-1",
        ),
        (dict(timesteps=torch.tensor([0, 1, 2, 3, 1000])), ValueError, r"timesteps must lie in \[0, 1000\)"),
        (dict(timesteps=torch.tensor([0.0, 1, 2, 3, 4])), ValueError, "integer tensor"),
    ],
)
def test_bad_arguments_are_named(change, error, pattern):
    scheduler, x0, noise, t = _case(SCHEDULES[0], "epsilon")
    args = dict(scheduler=scheduler, sample=x0, noise=noise, timesteps=t, prediction_type="epsilon")
    args.update(change)
    with pytest.raises(error, match=pattern):
        ddpm_pa_fast.loss_coefficients(**args)


def test_zero_terminal_snr_needs_v_prediction():
    """With abar = 0 at the last step, x0 cannot be read from a noise prediction; v can."""
    scheduler = diffusers.DDPMScheduler(rescale_betas_zero_snr=True, prediction_type="epsilon")
    x0, noise, t = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([999])
    with pytest.raises(ValueError, match="zero terminal SNR.*'v_prediction'"):
        ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t)
    a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t, "v_prediction")
    assert (a_t.item(), b_t.item()) == (0.0, 1.0)
    torch.testing.assert_close(target, torch.zeros_like(noise))


# ---- hf_mse_weights: the HF-MSE term's weighting across noise levels (issue 20) ----


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("schedule", SCHEDULES[:2])
def test_hf_mse_weights_are_the_stated_formulas(schedule, prediction_type):
    scheduler, _, _, t = _case(schedule, prediction_type)
    abar = _abar64(scheduler, t).flatten()
    snr = abar / (1 - abar)
    b2 = (1 - abar) / abar if prediction_type == "epsilon" else 1 - abar
    weights = {
        w: ddpm_pa_fast.hf_mse_weights(scheduler, t, w, gamma=5.0) for w in ddpm_pa_fast.HF_MSE_WEIGHTINGS
    }
    assert all(w.dtype == torch.float32 and w.shape == (5,) for w in weights.values())
    torch.testing.assert_close(weights["x0"], torch.ones(5))
    torch.testing.assert_close(weights["eps"].double(), 1 / b2, rtol=1e-6, atol=0)
    torch.testing.assert_close(weights["min-snr"].double(), snr.clamp(max=5.0), rtol=1e-6, atol=0)
    if prediction_type == "epsilon":
        # Hang et al.'s weight of the epsilon loss, min(SNR, gamma) / SNR, on
        # HF(eps_ada - eps) = HF(x0 error) / b_t.
        torch.testing.assert_close(
            (weights["min-snr"].double() * b2), snr.clamp(max=5.0) / snr, rtol=1e-6, atol=0
        )
    cut = ddpm_pa_fast.hf_mse_weights(scheduler, t, "eps", max_t=int(t[2]) + 1)
    torch.testing.assert_close(cut, torch.where(t <= t[2], weights["eps"], torch.zeros(5)))


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_eps_weighting_makes_hf_mse_the_noise_space_hf_error(backend):
    """With "eps" weights the loss's hf_mse is mean HF(eps_ada - eps)^2: the x0-space term's 1/SNR growth
    undone (docs/ddpm_pa_spec.md), computed in float64 from the definitions."""
    scheduler, x0, noise, t = _case(SCHEDULES[0], "epsilon")
    x0, noise = x0.double(), noise.double()
    x_t = scheduler.add_noise(x0, noise, t)
    eps_ada = noise + 0.1 * torch.randn_like(noise)
    a_t, b_t, target = ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t)
    weight = ddpm_pa_fast.hf_mse_weights(scheduler, t, "eps")
    out = ddpm_pa_fast.ddpm_pa_loss(
        x_t, eps_ada, noise, target, a_t, b_t, hf_mse_weight=weight, backend=backend
    )
    expected = R.ddpm_pa_high_frequency(eps_ada - noise).square().mean()
    # The weight is float32: its rounding bounds the agreement.
    torch.testing.assert_close(out.hf_mse, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(weighting="snr"), "weighting must be one of 'x0', 'eps', 'min-snr'"),
        (dict(weighting="min-snr", gamma=0.0), "gamma must be a finite number > 0"),
        (dict(weighting="min-snr", gamma=float("nan")), "gamma must be a finite number > 0"),
        (dict(max_t=0), r"max_t must be an integer in \[1, 1000\]"),
        (dict(max_t=1001), r"max_t must be an integer in \[1, 1000\]"),
        (dict(timesteps=torch.tensor([0, 1000])), r"timesteps must lie in \[0, 1000\)"),
        (dict(timesteps=torch.tensor([-1, 5])), r"timesteps must lie in \[0, 1000\)"),
        (dict(timesteps=torch.tensor([0.5, 5.0])), "timesteps must be an integer tensor"),
        (
            dict(timesteps=torch.zeros(2, 1, dtype=torch.long)),
            r"timesteps must be an integer tensor of shape \(N,\)",
        ),
    ],
)
def test_hf_mse_weights_name_a_bad_argument(kwargs, pattern):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    args = dict(scheduler=scheduler, timesteps=torch.tensor([0, 999]), weighting="x0")
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        ddpm_pa_fast.hf_mse_weights(**args)


def test_compiled_loss_coefficients_refuse_timesteps_outside_the_schedule():
    """Under torch.compile(fullgraph=True) the range check is an op of the graph: it still refuses."""
    scheduler, x0, noise, t = _case(SCHEDULES[0], "v_prediction")
    compiled = torch.compile(ddpm_pa_fast.loss_coefficients, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(
        compiled(scheduler, x0, noise, t).a_t, ddpm_pa_fast.loss_coefficients(scheduler, x0, noise, t).a_t
    )
    with pytest.raises(RuntimeError, match=r"timesteps must lie in \[0, 1000\)"):
        compiled(scheduler, x0, noise, torch.tensor([0, 1, 2, 3, 1000]))
