"""The trainer and the sampler in the model's own parameterisation: epsilon or v (issue 13, part E)."""

import pytest
import torch

pytest.importorskip("diffusers")

from ddpm_pa_fast import reference as R  # noqa: E402
from ddpm_pa_fast.train import trainer as T  # noqa: E402
from ddpm_pa_fast.train.sampling import load_model_folder, sample_images  # noqa: E402
from tests.test_train_common import tiny_config, train_cli_args, write_tiny_model  # noqa: E402

PREDICTION_TYPES = ["epsilon", "v_prediction"]


def _x0_from(prediction_type, abar, x_t, pred):
    if prediction_type == "epsilon":
        return (x_t - (1 - abar).sqrt() * pred) / abar.sqrt()
    return abar.sqrt() * x_t - (1 - abar).sqrt() * pred


@pytest.mark.parametrize("method", ["ddpm-pa", "finetune"])
@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_the_step_loss_is_written_in_the_schedulers_parameterisation(tmp_path, prediction_type, method):
    """The trainer's loss terms and gradient equal the float64 loss in which the model's output is the
    scheduler's prediction type (noise, or v = sqrt(abar) eps - sqrt(1 - abar) x0, diffusers' get_velocity),
    with the pair subset and the rest of the batch as the trainer splits them."""
    config = tiny_config(
        tmp_path, prediction_type=prediction_type, method=method, batch_size=5, pair_size=3, w_hf_mse=0.5
    )
    trainer = T.Trainer(config)
    assert trainer.prediction_type == prediction_type
    g = torch.Generator().manual_seed(5)
    n = 5
    x0 = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(n, 3, 8, 8, generator=g)
    t = torch.tensor([3, 50, 99, 0, 20])
    x_t = trainer.schedule.q_sample(x0, t, noise)
    target = noise if prediction_type == "epsilon" else trainer.scheduler.get_velocity(x0, noise, t)
    pred_ada = (target + 0.3 * torch.randn(n, 3, 8, 8, generator=g)).requires_grad_(True)
    pred_src = target + 0.3 * torch.randn(n, 3, 8, 8, generator=g)
    pair_state = trainer.pair_generator.get_state()
    pair, rest = trainer._draw_pairs(n) if method == "ddpm-pa" else (None, None)
    src = pred_src[pair] if method == "ddpm-pa" else None
    terms = trainer._loss(x0, x_t, t, noise, pred_ada, src, pred_ada, pair, rest)
    (grad,) = torch.autograd.grad(terms["loss"], pred_ada)

    abar = torch.cumprod(1 - trainer.scheduler.betas.double(), 0)[t].reshape(-1, 1, 1, 1)
    p = pred_ada.detach().double().requires_grad_(True)
    x_t64, x064 = x_t.double(), x0.double()
    mse = (target.double() - p).square().mean()
    expected = mse
    if method == "ddpm-pa":
        subset = torch.randperm(n, generator=torch.Generator().set_state(pair_state))[:3]
        hf = R.ddpm_pa_high_frequency
        x0_ada = _x0_from(prediction_type, abar, x_t64, p)
        x0_src = _x0_from(prediction_type, abar, x_t64, pred_src.double())
        # x0_tgt = x0 up to rounding: the loss reads it from the target as it reads x0_ada.
        expected = (
            mse
            + 0.5 * (hf(x0_ada) - hf(x064)).square().mean()
            + 4.0 * R.pairwise_similarity_kl(x0_src[subset], x0_ada[subset])
            + 4.0 * R.pairwise_similarity_kl(hf(x0_src[subset]), hf(x0_ada[subset]))
        )
    (expected_grad,) = torch.autograd.grad(expected, p)
    torch.testing.assert_close(terms["mse"].double(), mse.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["loss"].double(), expected.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("learned_variance", [False, True], ids=["fixed", "learned-variance"])
@pytest.mark.parametrize("method", ["ddpm-pa", "finetune"])
def test_a_v_prediction_model_trains_and_saves_its_parameterisation(tmp_path, method, learned_variance):
    trainer = T.Trainer(
        tiny_config(
            tmp_path,
            learned_variance=learned_variance,
            prediction_type="v_prediction",
            method=method,
            steps=2,
            save_model=True,
        )
    )
    summary = trainer.train()
    assert summary["steps"] == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_terms"].values())
    _, scheduler = load_model_folder(tmp_path / "out" / "model")
    assert scheduler.config.prediction_type == "v_prediction"


def test_vlb_reads_x0_from_a_v_prediction(tmp_path):
    """L_vlb's model mean comes from the x0 that the v prediction implies: the true v gives the true mean,
    so with the posterior variance the KL is 0."""
    trainer = T.Trainer(
        tiny_config(tmp_path, learned_variance=True, prediction_type="v_prediction", method="finetune")
    )
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([5, 30, 60, 99])
    x_t = trainer.schedule.q_sample(x0, t, noise)
    v = trainer.scheduler.get_velocity(x0, noise, t)
    output = torch.cat([v, -torch.ones_like(v)], dim=1)  # var_values = -1: the posterior variance
    terms = trainer._loss(x0, x_t, t, noise, v, None, output, None, None)
    assert terms["vlb"].abs() < 1e-3
    assert terms["mse"] < 1e-10


def test_a_sample_prediction_model_is_refused_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(T.Trainer, "training_step", lambda self: pytest.fail("a step was taken"))
    with pytest.raises(
        T.ConfigError, match=r"prediction_type must be one of 'epsilon', 'v_prediction', got 'sample'"
    ):
        T.Trainer(tiny_config(tmp_path, prediction_type="sample"))


def test_the_cli_names_the_refused_prediction_type(tmp_path, capsys):
    from ddpm_pa_fast.train import cli

    config = tiny_config(tmp_path, prediction_type="sample")
    code = cli.main(train_cli_args(config))
    assert code == 2
    assert "prediction_type must be one of 'epsilon', 'v_prediction', got 'sample'" in capsys.readouterr().err


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction_type", ["v_prediction", "epsilon"])
def test_sampling_reads_the_output_in_the_models_parameterisation(tmp_path, prediction_type, eta):
    """sample_images is DDIM (x0 clipped) where the model's output means what its scheduler says: checked
    against DDIM written out by hand (Song et al. 2021, eq. 12 and 16) from the parameterisation's x0
    formula, deterministic (eta 0) and ancestral (eta 1, each step's noise drawn after the start's)."""
    unet, scheduler = load_model_folder(write_tiny_model(tmp_path / "m", prediction_type=prediction_type))
    assert scheduler.config.prediction_type == prediction_type
    samples = sample_images(unet, scheduler, 3, num_steps=4, seed=3, eta=eta)

    abar_all = torch.cumprod(1 - scheduler.betas.double(), 0)
    steps = scheduler.config.num_train_timesteps
    timesteps = list(range(0, steps, steps // 4))[::-1]  # DDIM's "leading" spacing: 75, 50, 25, 0
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(3, 3, 8, 8, generator=generator).double()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            out = unet(x.float(), torch.tensor(t)).sample.double()
            abar = abar_all[t]
            abar_prev = abar_all[timesteps[i + 1]] if i + 1 < len(timesteps) else abar_all.new_tensor(1.0)
            x0 = _x0_from(prediction_type, abar, x, out)
            # DDIM clips x0 but keeps the noise implied by the unclipped output (use_clipped_model_output
            # is off).
            eps = (x - abar.sqrt() * x0) / (1 - abar).sqrt()
            sigma = eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()
            z = torch.randn(x.shape, generator=generator).double() if eta else 0.0
            x = abar_prev.sqrt() * x0.clamp(-1, 1) + (1 - abar_prev - sigma**2).sqrt() * eps + sigma * z
    torch.testing.assert_close(samples.double(), x.clamp(-1, 1), rtol=1e-4, atol=1e-4)
