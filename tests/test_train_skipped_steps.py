"""fp16 training: an update that GradScaler skips (inf/NaN gradients) is not a step (issue 13, part D).

The step count, --steps, the LR schedule, the EMA and the checkpoint, sample and on_step cadences advance
only on applied updates; skipped ones are counted, shown and checkpointed, and resume stays exact.
Overflow is forced deterministically: a gradient hook makes chosen calls' gradients infinite (what an fp16
overflow hands GradScaler), and one test overflows for real with a huge initial loss scale.
"""

import pytest
import torch

pytest.importorskip("diffusers")

from ddpm_pa_fast.train import checkpoint as C  # noqa: E402
from ddpm_pa_fast.train import trainer as T  # noqa: E402
from tests.test_train_common import tiny_config  # noqa: E402

INIT_SCALE = 2.0**16  # GradScaler's default


def _overflow_on(trainer, calls):
    """Gives the gradients of training_step calls number `calls` (0-based, counted from the trainer's
    own state, so that a resumed run counts on) an inf entry: GradScaler must skip those updates."""

    def hook(grad):
        call = trainer.step + trainer.skipped_steps
        return torch.full_like(grad, float("inf")) if call in calls else grad

    next(trainer.adapted.parameters()).register_hook(hook)


def _adam_steps(trainer):
    return {int(state["step"]) for state in trainer.optimizer.state.values()}


@pytest.mark.parametrize("method", ["ddpm-pa", "finetune"])
def test_skipped_updates_advance_nothing_but_the_skip_count(tmp_path, capsys, method):
    # The case: three of the first four calls overflow, with a 10-step warm-up.
    lr, warmup = 1e-3, 10
    trainer = T.Trainer(
        tiny_config(
            tmp_path,
            method=method,
            precision="fp16",
            steps=3,
            lr=lr,
            warmup_steps=warmup,
            checkpoint_every=1,
            keep_checkpoints=10,
            sample_every=2,
            progress=True,
        )
    )
    _overflow_on(trainer, {0, 1, 3})
    applied_lrs = []
    trainer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: applied_lrs.append(optimizer.param_groups[0]["lr"])
    )
    seen = []
    summary = trainer.train(on_step=lambda t: seen.append((t.step, t.skipped_steps)))

    assert (trainer.step, trainer.skipped_steps) == (3, 3)
    assert (summary["steps"], summary["skipped_steps"]) == (3, 3)
    assert trainer.lr_scheduler.last_epoch == 3
    assert trainer.ema.num_updates == 3
    assert _adam_steps(trainer) == {3}
    # Each applied update ran at its own warm-up LR: the first at lr / 10, not at a later one.
    assert applied_lrs == pytest.approx([lr * 1 / warmup, lr * 2 / warmup, lr * 3 / warmup])
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(lr * 4 / warmup)
    assert trainer.scaler.get_scale() == INIT_SCALE * 0.5**3
    # Cadences: on_step, checkpoints and samples after applied updates only, each step once.
    assert seen == [(1, 2), (2, 3), (3, 3)]
    names = [p.name for p in C.list_checkpoints(tmp_path / "out" / "checkpoints")]
    assert names == [f"checkpoint-{s:08d}.pt" for s in (1, 2, 3)]
    assert [p.name for p in sorted((tmp_path / "out" / "samples").iterdir())] == ["step-00000002.png"]
    assert C.load_checkpoint(tmp_path / "out" / "checkpoints")["skipped_steps"] == 3
    # The progress bar shows the count (its last redraw is at close).
    assert "skipped=3" in capsys.readouterr().err


def test_fp32_and_bf16_never_skip(tmp_path):
    for precision in ("fp32", "bf16"):
        trainer = T.Trainer(tiny_config(tmp_path, precision=precision, steps=2))
        summary = trainer.train()
        assert (summary["steps"], summary["skipped_steps"]) == (2, 0)
        assert trainer.ema.num_updates == trainer.lr_scheduler.last_epoch == 2


def test_a_real_fp16_overflow_is_skipped_and_not_counted_as_a_step(tmp_path):
    """No hook: a loss scale of 2**24 overflows the fp16 backward until GradScaler has backed off."""
    trainer = T.Trainer(tiny_config(tmp_path, precision="fp16", steps=2))
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24)
    summary = trainer.train()
    assert summary["skipped_steps"] >= 1
    assert trainer.step == summary["steps"] == 2
    assert trainer.ema.num_updates == trainer.lr_scheduler.last_epoch == 2
    assert _adam_steps(trainer) == {2}
    assert trainer.scaler.get_scale() == 2.0**24 * 0.5 ** summary["skipped_steps"]


@pytest.mark.parametrize("method", ["ddpm-pa", "finetune"])
def test_resume_across_skipped_updates_is_exact(tmp_path, method):
    # Calls 0, 1, 3 and 7 overflow: 3 skipped before the checkpoint at step 3, 1 after it.
    skipped_calls = {0, 1, 3, 7}
    straight = T.Trainer(
        tiny_config(tmp_path, method=method, precision="fp16", steps=6, output_dir=str(tmp_path / "a"))
    )
    _overflow_on(straight, skipped_calls)
    straight.train()
    first = T.Trainer(
        tiny_config(
            tmp_path,
            method=method,
            precision="fp16",
            steps=3,
            checkpoint_every=3,
            output_dir=str(tmp_path / "b"),
        )
    )
    _overflow_on(first, skipped_calls)
    first.train()
    resumed = T.Trainer(
        tiny_config(
            tmp_path,
            method=method,
            precision="fp16",
            steps=6,
            output_dir=str(tmp_path / "b"),
            resume=str(tmp_path / "b" / "checkpoints"),
        )
    )
    assert (resumed.step, resumed.skipped_steps) == (3, 3)
    assert resumed.scaler.get_scale() == INIT_SCALE * 0.5**3
    _overflow_on(resumed, skipped_calls)
    resumed.train()

    assert (straight.step, straight.skipped_steps) == (resumed.step, resumed.skipped_steps) == (6, 4)
    for a, b in zip(straight.adapted.parameters(), resumed.adapted.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema.shadow, resumed.ema.shadow, strict=True):
        assert torch.equal(a, b)
    assert straight.ema.num_updates == resumed.ema.num_updates == 6
    assert straight.lr_scheduler.state_dict() == resumed.lr_scheduler.state_dict()
    assert straight.scaler.state_dict() == resumed.scaler.state_dict()
    opt_a, opt_b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg_sq"], opt_b[k]["exp_avg_sq"]) for k in opt_a)
    assert all(torch.equal(opt_a[k]["step"], opt_b[k]["step"]) for k in opt_a)


def test_a_checkpoint_without_a_skip_count_resumes_with_zero(tmp_path):
    """Checkpoints written before skipped updates were counted still load."""
    T.Trainer(tiny_config(tmp_path, steps=1, checkpoint_every=1)).train()
    path = C.list_checkpoints(tmp_path / "out" / "checkpoints")[-1]
    state = torch.load(path, weights_only=True)
    del state["skipped_steps"]
    torch.save(state, path)
    resumed = T.Trainer(tiny_config(tmp_path, steps=2, resume=str(path)))
    assert (resumed.step, resumed.skipped_steps) == (1, 0)


def test_endless_skipping_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "MAX_CONSECUTIVE_SKIPPED_STEPS", 4)
    trainer = T.Trainer(tiny_config(tmp_path, precision="fp16", steps=2))
    _overflow_on(trainer, range(1000))
    with pytest.raises(FloatingPointError, match=r"skipped 4 optimizer updates in a row.*--precision"):
        trainer.train()
    assert (trainer.step, trainer.skipped_steps, trainer.ema.num_updates) == (0, 4, 0)
