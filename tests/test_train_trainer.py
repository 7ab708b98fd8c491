"""The trainer: the loss it optimises, frozen source, precisions, checkpoints and exact resume."""

import dataclasses

import pytest
import torch

pytest.importorskip("diffusers")

from ddpm_pa_fast import reference as R  # noqa: E402
from ddpm_pa_fast.train import checkpoint as C  # noqa: E402
from ddpm_pa_fast.train import trainer as T  # noqa: E402
from tests.test_train_common import tiny_config  # noqa: E402


def _params(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize(
    "weighting",
    [
        {},
        {"hf_mse_weighting": "eps"},
        {"hf_mse_weighting": "min-snr", "min_snr_gamma": 2.0},
        {"hf_mse_weighting": "eps", "hf_mse_max_t": 30},
        {"hf_mse_max_t": 30},
    ],
    ids=["authors", "eps", "min-snr", "eps-max-t", "x0-max-t"],
)
def test_loss_is_the_authors_total_full_batch_mse_and_subset_pairs(tmp_path, backend, weighting):
    """The step's loss against a float64 statement written out by hand: mse over the batch, the HF-MSE
    weighted per sample by w(t) (1 for the authors' formulation; 1/b_t^2, min(SNR_t, gamma), and 0 at
    t >= --hf-mse-max-t), the pair terms on the subset."""
    torch.manual_seed(0)
    config = tiny_config(
        tmp_path,
        batch_size=5,
        pair_size=3,
        w_pair=2.0,
        w_hf_pair=3.0,
        w_hf_mse=0.5,
        backend=backend,
        **weighting,
    )
    trainer = T.Trainer(config)
    g = torch.Generator().manual_seed(5)
    n = 5
    x0 = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    noise, eps_src = torch.randn(n, 3, 8, 8, generator=g), torch.randn(n, 3, 8, 8, generator=g)
    t = torch.tensor([3, 50, 99, 0, 20])
    x_t = trainer.schedule.q_sample(x0, t, noise)
    eps_ada = (noise + 0.3 * torch.randn(n, 3, 8, 8, generator=g)).requires_grad_(True)
    pair_state = trainer.pair_generator.get_state()
    pair, rest = trainer._draw_pairs(n)
    terms = trainer._loss(x0, x_t, t, noise, eps_ada, eps_src[pair], eps_ada, pair, rest)
    (grad,) = torch.autograd.grad(terms["loss"], eps_ada)

    subset = torch.randperm(n, generator=torch.Generator().set_state(pair_state))[:3]
    a, b = (c.double().reshape(-1, 1, 1, 1) for c in trainer.schedule.x0_coefficients(t))
    abar = trainer.scheduler.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    snr = abar / (1 - abar)
    w = {"x0": torch.ones_like(b), "eps": 1 / b.square(), "min-snr": snr.clamp(max=2.0)}[
        weighting.get("hf_mse_weighting", "x0")
    ]
    if "hf_mse_max_t" in weighting:
        w = torch.where(t.reshape(-1, 1, 1, 1) < weighting["hf_mse_max_t"], w, torch.zeros_like(w))
    e = eps_ada.detach().double().requires_grad_(True)
    x_t64, noise64, src64 = x_t.double(), noise.double(), eps_src.double()
    x0_ada, x0_tgt, x0_src = a * x_t64 - b * e, a * x_t64 - b * noise64, a * x_t64 - b * src64
    hf = R.ddpm_pa_high_frequency
    hf_mse = (w * (hf(x0_ada) - hf(x0_tgt)).square()).mean()
    expected = (
        (noise64 - e).square().mean()
        + 0.5 * hf_mse
        + 2.0 * R.pairwise_similarity_kl(x0_src[subset], x0_ada[subset])
        + 3.0 * R.pairwise_similarity_kl(hf(x0_src[subset]), hf(x0_ada[subset]))
    )
    (expected_grad,) = torch.autograd.grad(expected, e)
    torch.testing.assert_close(terms["loss"].double(), expected, rtol=1e-5, atol=1e-6)
    # The loss forms x0 in float32, where HF(x0_ada) - HF(x0) cancels to b_t HF(eps_ada - eps): at t = 0
    # (b_t = 0.01) that loses digits, which "eps" weights by 1/b_t^2; hence an absolute tolerance scaled
    # to the gradient's size.
    torch.testing.assert_close(
        grad.double(), expected_grad, rtol=1e-4, atol=1e-5 * expected_grad.abs().max().item()
    )
    torch.testing.assert_close(
        terms["mse"].double(), (noise64 - e).square().mean().detach(), rtol=1e-5, atol=0
    )
    torch.testing.assert_close(terms["hf_mse"].double(), hf_mse.detach(), rtol=1e-5, atol=1e-7)


def test_authors_formulation_runs_the_unweighted_loss(tmp_path, monkeypatch):
    """With the authors' weighting the fused loss gets no weight tensor: its unweighted computation,
    bit for bit what it was before weightings existed."""
    trainer = T.Trainer(tiny_config(tmp_path, steps=1))
    assert trainer.hf_mse_weight_table is None
    seen = []
    real = trainer.pa_loss.forward
    monkeypatch.setattr(trainer.pa_loss, "forward", lambda *a, **k: seen.append(k) or real(*a, **k))
    trainer.train()
    assert seen == [{"hf_mse_weight": None}]


def test_pair_max_t_drops_the_pair_terms_and_the_source_forward(tmp_path, monkeypatch):
    """At a step whose pair subset's t is at or above --pair-max-t there are no pair terms: the source
    model does not run and pair_img = pair_hf = 0; below it, the step is the usual one."""
    trainer = T.Trainer(tiny_config(tmp_path, steps=8, pair_max_t=50))
    pairs, timesteps, source_calls = [], [], []
    draw, q_sample, source = trainer._draw_pairs, trainer.schedule.q_sample, trainer.source_prediction
    monkeypatch.setattr(trainer, "_draw_pairs", lambda n: pairs.append(draw(n)) or pairs[-1])
    monkeypatch.setattr(
        trainer.schedule, "q_sample", lambda x0, t, e: timesteps.append(t) or q_sample(x0, t, e)
    )
    monkeypatch.setattr(trainer, "source_prediction", lambda *a: source_calls.append(a) or source(*a))
    logged = [trainer.training_step() for _ in range(8)]
    below = [int(t[pair[0]]) < 50 for (pair, _), t in zip(pairs, timesteps, strict=True)]
    assert 0 < sum(below) < 8, "the seed should give steps on both sides of the cut-off"
    assert len(source_calls) == sum(below)
    for is_below, step in zip(below, logged, strict=True):
        assert (step["pair_img"] != 0.0) == is_below and (step["pair_hf"] != 0.0) == is_below


def test_source_stays_frozen_and_outside_the_optimizer(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, steps=2))
    before = _params(trainer.source)
    trainer.train()
    assert not trainer.source.training
    assert all(not p.requires_grad for p in trainer.source.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.source.parameters(), strict=True))
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.source.parameters()}
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.adapted.parameters(), strict=True))


def test_nvtx_ranges_of_a_step(tmp_path, monkeypatch):
    names = []
    real = T.annotate
    monkeypatch.setattr(T, "annotate", lambda name: (names.append(name), real(name))[1])
    T.Trainer(tiny_config(tmp_path, steps=1)).train()
    assert names == [
        "train/source_forward",
        "train/adapted_forward",
        "train/loss",
        "train/backward",
        "train/optimizer_step",
    ]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_keeps_fp32_master_weights(tmp_path, precision):
    trainer = T.Trainer(tiny_config(tmp_path, precision=precision, steps=2))
    summary = trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_terms"].values())
    assert all(p.dtype == torch.float32 for p in trainer.adapted.parameters())
    assert trainer.scaler.is_enabled() == (precision == "fp16")


def test_learned_variance_model_adds_vlb(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, learned_variance=True, steps=2))
    assert trainer.learned_variance
    summary = trainer.train()
    assert "vlb" in summary["final_terms"] and summary["final_terms"]["vlb"] > 0


def test_finetune_method_runs_without_source_forward(tmp_path, monkeypatch):
    trainer = T.Trainer(tiny_config(tmp_path, method="finetune", steps=2))
    monkeypatch.setattr(trainer, "source_forward", None)
    summary = trainer.train()
    assert set(summary["final_terms"]) == {"mse", "loss"}


def _all_state(trainer):
    return _params(trainer.adapted), trainer.ema.shadow, trainer.optimizer.state_dict()["state"]


def test_resume_is_bit_for_bit(tmp_path):
    straight = T.Trainer(tiny_config(tmp_path, steps=6, output_dir=str(tmp_path / "a")))
    straight.train()
    first = T.Trainer(tiny_config(tmp_path, steps=3, checkpoint_every=3, output_dir=str(tmp_path / "b")))
    first.train()
    resumed = T.Trainer(
        tiny_config(
            tmp_path, steps=6, output_dir=str(tmp_path / "b"), resume=str(tmp_path / "b" / "checkpoints")
        )
    )
    assert resumed.step == 3
    resumed.train()
    params_a, ema_a, opt_a = _all_state(straight)
    params_b, ema_b, opt_b = _all_state(resumed)
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(ema_a, ema_b, strict=True))
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    assert straight.pair_generator.get_state().equal(resumed.pair_generator.get_state())


def test_checkpoints_rotate_and_hold_the_full_state(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, steps=4, checkpoint_every=1, keep_checkpoints=2))
    trainer.train()
    files = C.list_checkpoints(tmp_path / "out" / "checkpoints")
    assert [f.name for f in files] == ["checkpoint-00000003.pt", "checkpoint-00000004.pt"]
    assert not list((tmp_path / "out" / "checkpoints").glob("*.tmp"))
    state = C.load_checkpoint(files[-1])
    assert state["step"] == 4 and set(C.REQUIRED_KEYS) <= set(state)
    assert {"noise_generator", "pair_generator", "batches", "torch"} <= set(state["rng"][0])
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in state["model"])


def test_compile_prefixes_are_stripped():
    state = {"_orig_mod.conv.weight": 1, "module._orig_mod.out.bias": 2, "plain": 3}
    assert C.clean_state_dict(state) == {"conv.weight": 1, "out.bias": 2, "plain": 3}


def test_corrupt_checkpoint_is_reported_not_loaded(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, steps=2, checkpoint_every=2))
    trainer.train()
    path = C.list_checkpoints(tmp_path / "out" / "checkpoints")[-1]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(C.CheckpointError, match="corrupt"):
        T.Trainer(tiny_config(tmp_path, steps=4, resume=str(path)))
    torch.save({"step": 1}, path)
    with pytest.raises(C.CheckpointError, match="incomplete"):
        C.load_checkpoint(path)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load_checkpoint(tmp_path / "nope.pt")


def test_samples_and_saved_model(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, steps=2, sample_every=2, save_model=True))
    trainer.train()
    assert (tmp_path / "out" / "samples" / "step-00000002.png").is_file()
    from ddpm_pa_fast.train.sampling import load_model_folder

    unet, _ = load_model_folder(tmp_path / "out" / "model")
    for saved, shadow in zip(unet.parameters(), trainer.ema.shadow, strict=True):
        assert torch.equal(saved, shadow)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(pair_size=5, batch_size=4), "--pair-size"),
        (dict(pair_size=1), "--pair-size"),
        (dict(method="gan"), "--method"),
        (dict(precision="fp8"), "--precision"),
        (dict(steps=0), "--steps"),
        (dict(ema_decay=1.0), "--ema-decay"),
        (dict(sample_eta=1.5), "--sample-eta"),
        (dict(sample_eta=-0.1), "--sample-eta"),
        (dict(hf_mse_weighting="snr"), "--hf-mse-weighting"),
        (dict(min_snr_gamma=0.0), "--min-snr-gamma"),
        (dict(hf_mse_max_t=0), "--hf-mse-max-t"),
        (dict(hf_mse_max_t=101), "--hf-mse-max-t must be at most the scheduler's T = 100"),
        (dict(pair_max_t=0), "--pair-max-t"),
        (dict(pair_max_t=101), "--pair-max-t must be at most the scheduler's T = 100"),
        (dict(pair_max_t=50, pair_timesteps="per-sample"), "--pair-max-t needs --pair-timesteps shared"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, match):
    with pytest.raises(T.ConfigError, match=match):
        T.Trainer(dataclasses.replace(tiny_config(tmp_path), **overrides))


def test_half_precision_source_keeps_the_adapted_model_fp32(tmp_path):
    trainer = T.Trainer(tiny_config(tmp_path, source_precision="bf16", steps=2))
    assert all(p.dtype == torch.bfloat16 for p in trainer.source.parameters())
    assert all(p.dtype == torch.float32 for p in trainer.adapted.parameters())
    summary = trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_terms"].values())


# ---- --resume with changed settings (issue 21 J: pytorch/examples#816) ----


def _checkpoint(tmp_path, **overrides):
    T.Trainer(tiny_config(tmp_path, steps=2, checkpoint_every=2, **overrides)).train()
    return tmp_path / "out" / "checkpoints"


def test_resume_applies_a_new_lr_weight_decay_and_ema_decay_and_says_so(tmp_path, capsys):
    """optimizer.load_state_dict brings back the checkpoint's hyperparameters: the run's own replace them."""
    folder = _checkpoint(tmp_path, lr=2e-4, weight_decay=0.0, ema_decay=0.999, warmup_steps=4)
    config = tiny_config(
        tmp_path, steps=4, lr=1e-3, weight_decay=0.01, ema_decay=0.99, warmup_steps=4, resume=str(folder)
    )
    trainer = T.Trainer(config)
    assert set(trainer.resume_changes) == {"lr", "weight_decay", "ema_decay", "steps", "checkpoint_every"}
    group = trainer.optimizer.param_groups[0]
    # The schedule continues at step 2 of a 4-step warm-up: lr = 1e-3 * 3 / 4.
    assert group["lr"] == pytest.approx(1e-3 * 3 / 4) and group["weight_decay"] == 0.01
    assert trainer.ema.decay == 0.99
    trainer.train()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    printed = capsys.readouterr().out
    assert "[resume] --lr 0.0002 -> 0.001 from step 3" in printed and "--weight-decay 0.0 -> 0.01" in printed


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(seed=1), r"--seed 1 differs from the checkpoint's 0 and cannot change on --resume"),
        (dict(method="finetune"), r"--method 'finetune' differs"),
        (dict(precision="bf16"), r"--precision 'bf16' differs"),
    ],
)
def test_resume_refuses_settings_that_cannot_change_before_any_step(tmp_path, monkeypatch, change, pattern):
    folder = _checkpoint(tmp_path)
    monkeypatch.setattr(T.Trainer, "training_step", lambda self: pytest.fail("a step ran"))
    with pytest.raises(T.ConfigError, match=pattern):
        T.Trainer(tiny_config(tmp_path, steps=4, resume=str(folder), **change))


def test_resume_refuses_another_source_model(tmp_path):
    folder = _checkpoint(tmp_path)
    other = tiny_config(tmp_path / "other")
    with pytest.raises(T.ConfigError, match="--model-dir .* differs from the checkpoint's"):
        T.Trainer(
            dataclasses.replace(tiny_config(tmp_path, steps=4, resume=str(folder)), model_dir=other.model_dir)
        )


def test_resume_with_fewer_images_is_refused_before_any_step(tmp_path):
    """It crashed with IndexError at the first step: the batch order indexes the checkpoint's images."""
    from tests.test_train_common import write_images

    folder = _checkpoint(tmp_path)
    fewer = write_images(tmp_path / "fewer", count=4)
    config = tiny_config(tmp_path, steps=4, resume=str(folder), data_dir=str(fewer))
    with pytest.raises(T.ConfigError, match="--data-dir holds 4 images, the checkpoint was trained on 6"):
        T.Trainer(config)
