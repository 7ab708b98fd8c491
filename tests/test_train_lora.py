"""`train --lora-rank`: one copy of the weights, the source prediction from the adapters-off model, and
adapter folders that PEFT loads, merged or not."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from ddpm_pa_fast.train import adapters, cli  # noqa: E402
from ddpm_pa_fast.train import checkpoint as C  # noqa: E402
from ddpm_pa_fast.train import trainer as T  # noqa: E402
from ddpm_pa_fast.train.sampling import ModelFolderError, load_model_folder, sample_images  # noqa: E402
from tests.test_train_common import tiny_config, tiny_unet, train_cli_args  # noqa: E402

RANK = 2


def lora_config(tmp_path, **overrides):
    values = dict(lora_rank=RANK, lora_alpha=4.0, steps=4)
    values.update(overrides)
    return tiny_config(tmp_path, **values)


def _adapter_names(trainer) -> set[str]:
    return {name for name, p in trainer.adapted.named_parameters() if "lora_" in name}


def test_source_prediction_is_the_base_model_bit_for_bit_at_every_step(tmp_path):
    trainer = T.Trainer(lora_config(tmp_path))
    original, _ = load_model_folder(trainer.config.model_dir)
    original.eval()
    calls = []
    source_prediction = trainer.source_prediction

    def recorded(x_t, t, rows):
        prediction = source_prediction(x_t, t, rows)
        calls.append((x_t[rows].clone(), t[rows].clone(), prediction, trainer.adapted.training))
        return prediction

    trainer.source_prediction = recorded
    trainer.train()
    assert trainer.source is None and trainer.lora and len(calls) == trainer.config.steps
    with torch.no_grad():
        for x_t, t, prediction, training_after in calls:
            assert torch.equal(prediction, original(x_t, t).sample)
            assert training_after  # the adapted model trains again after the source's forward
            assert not prediction.requires_grad
        # The adapters did train: with them on, the model is not the source any more.
        x_t, t, prediction, _ = calls[-1]
        trainer.adapted.eval()
        assert not torch.equal(trainer.adapted(x_t, t).sample, prediction)


def test_only_adapter_weights_are_trained_and_averaged(tmp_path):
    trainer = T.Trainer(lora_config(tmp_path, method="ddpm-pa"))
    base_before = {n: p.clone() for n, p in trainer.adapted.named_parameters() if "lora_" not in n}
    trainer.train()
    names = {id(p): n for n, p in trainer.adapted.named_parameters()}
    optimized = [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]
    assert set(optimized) == _adapter_names(trainer) and all(".lora_" in n for n in optimized)
    assert [id(p) for p in trainer.ema.parameters] == [id(p) for p in trainer.trained_parameters]
    assert len(trainer.ema.shadow) == len(optimized)
    for name, p in trainer.adapted.named_parameters():
        if "lora_" not in name:
            assert not p.requires_grad and torch.equal(p, base_before[name])
    # No second copy of the base: every weight the trainer holds is the adapted model's.
    assert sum(p.numel() for p in trainer.adapted.parameters()) == sum(
        p.numel() for p in load_model_folder(trainer.config.model_dir)[0].parameters()
    ) + sum(p.numel() for p in trainer.trained_parameters)


@pytest.mark.parametrize("method", ["finetune", "ddpm-pa"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_fp32_adapters(tmp_path, method, precision):
    trainer = T.Trainer(lora_config(tmp_path, method=method, precision=precision, steps=2))
    summary = trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final_terms"].values())
    assert all(p.dtype == torch.float32 for p in trainer.trained_parameters)


def _state(trainer):
    return (
        [p.detach().clone() for p in trainer.trained_parameters],
        trainer.ema.shadow,
        trainer.optimizer.state_dict()["state"],
    )


@pytest.mark.parametrize("method", ["finetune", "ddpm-pa"])
def test_resume_is_bit_for_bit_and_checkpoints_hold_the_adapters_alone(tmp_path, method):
    straight = T.Trainer(lora_config(tmp_path, method=method, steps=6, output_dir=str(tmp_path / "a")))
    straight.train()
    first = T.Trainer(
        lora_config(tmp_path, method=method, steps=3, checkpoint_every=3, output_dir=str(tmp_path / "b"))
    )
    first.train()
    state = C.load_checkpoint(tmp_path / "b" / "checkpoints")
    assert set(state["model"]) == {n.replace(".default", "") for n in _adapter_names(first)}
    resumed = T.Trainer(
        lora_config(
            tmp_path,
            method=method,
            steps=6,
            output_dir=str(tmp_path / "b"),
            resume=str(tmp_path / "b" / "checkpoints"),
        )
    )
    assert resumed.step == 3
    resumed.train()
    params_a, ema_a, opt_a = _state(straight)
    params_b, ema_b, opt_b = _state(resumed)
    assert all(torch.equal(x, y) for x, y in zip(params_a, params_b, strict=True))
    assert all(torch.equal(x, y) for x, y in zip(ema_a, ema_b, strict=True))
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(lora_rank=RANK + 1), "--lora-rank"),
        (dict(lora_alpha=8.0), "--lora-alpha"),
        (dict(lora_targets="conv1"), "--lora-targets"),
        (dict(lora_rank=None, lora_alpha=None), "--lora-rank"),
    ],
)
def test_resume_refuses_other_adapters(tmp_path, change, pattern):
    T.Trainer(lora_config(tmp_path, steps=1, checkpoint_every=1)).train()
    with pytest.raises(T.ConfigError, match=pattern):
        T.Trainer(lora_config(tmp_path, steps=2, resume=str(tmp_path / "out" / "checkpoints"), **change))


def test_saved_adapter_loads_and_merges_to_the_same_samples(tmp_path):
    from peft import PeftModel

    trainer = T.Trainer(lora_config(tmp_path, save_model=True, merge=True, steps=3))
    trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "adapter").glob("adapter_*")) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    expected = trainer.sample(6, seed=3, num_steps=3)

    # PEFT's own loader, on a fresh base: the EMA adapters, bit for bit.
    base, scheduler = load_model_folder(trainer.config.model_dir)
    peft_model = PeftModel.from_pretrained(base, out / "adapter")
    with trainer.ema_weights():
        for name, p in trainer.adapted.named_parameters():
            if "lora_" in name:
                assert torch.equal(dict(peft_model.named_parameters())[name], p)
    # The same weights give the same samples up to float32 rounding (~5e-7 here: the trained and loaded
    # layers' convolutions need not pick the same CPU algorithm).
    loaded, _ = adapters.load_adapted(trainer.config.model_dir, out / "adapter")
    samples = sample_images(loaded, scheduler, 6, 3, seed=3, eta=trainer.config.sample_eta)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-5)

    # The merged folder (written by the run) is a plain UNet2DModel: same samples up to rounding.
    merged, _ = load_model_folder(out / "model")
    assert type(merged).__name__ == "UNet2DModel"
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    samples = sample_images(merged, scheduler, 6, 3, seed=3, eta=trainer.config.sample_eta)
    torch.testing.assert_close(samples, expected, rtol=0, atol=1e-4)
    plain, _ = load_model_folder(trainer.config.model_dir)
    assert not torch.allclose(sample_images(plain, scheduler, 6, 3, seed=3, eta=1.0), expected)


def test_default_targets():
    bundled, _ = load_model_folder(__import__("ddpm_pa_fast.train.fashion").train.fashion.SOURCE_MODEL_DIR)
    assert adapters.default_targets(bundled) == ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
    all_attention = tiny_unet(
        attention_head_dim=4,
        down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
    )
    assert adapters.default_targets(all_attention) == ("to_q", "to_k", "to_v", "to_out.0")
    assert adapters.resolve_targets(all_attention, " to_q, conv1 ") == ("to_q", "conv1")


@pytest.mark.parametrize(
    "overrides, pattern",
    [
        (dict(lora_rank=0), "--lora-rank must be an integer >= 1, got 0"),
        (dict(lora_rank=-2), "--lora-rank must be an integer >= 1"),
        (dict(lora_targets="to_q,proj_in"), "--lora-targets: no module named .proj_in."),
        (dict(lora_targets=" , "), "--lora-targets must name modules"),
        (
            dict(lora_targets="0"),
            "--lora-targets: '0' also names down_blocks.0 .DownBlock2D., which LoRA cannot",
        ),
        (dict(lora_alpha=0.0), "--lora-alpha must be a finite number > 0"),
        (dict(lora_dropout=1.0), r"--lora-dropout must be in \[0, 1\)"),
        (dict(source_precision="bf16"), "--source-precision needs full fine-tuning"),
        (dict(lora_rank=None, lora_alpha=None, merge=True), "--merge needs --lora-rank"),
        (dict(lora_rank=None, lora_alpha=None, lora_targets="conv1"), "need --lora-rank"),
    ],
)
def test_bad_lora_settings_are_named_before_anything_is_written(tmp_path, overrides, pattern):
    with pytest.raises(T.ConfigError, match=pattern):
        T.Trainer(lora_config(tmp_path, **overrides))
    assert not (tmp_path / "out").exists()


def _train_lora_cli(tmp_path, *extra) -> list[str]:
    config = tiny_config(tmp_path)
    return [
        *train_cli_args(config, str(tmp_path / "run")),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--backend",
        "torch",
        "--lora-rank",
        str(RANK),
        "--no-progress",
        *extra,
    ]


def test_cli_train_sample_evaluate_merge_with_an_adapter(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert cli.main(_train_lora_cli(tmp_path, "--merge")) == 0
    run = tmp_path / "run"
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and (run / "model").is_dir()
    sampled = {}
    for name, model in (("adapter", ["--adapter-dir", str(run / "adapter")]), ("merged", [])):
        folder = config.model_dir if model else str(run / "model")
        args = ["--model-dir", folder, *model, "--num-images", "4", "--sample-steps", "2"]
        grid = tmp_path / f"{name}.png"
        assert cli.main(["sample", *args, "--grid", str(grid), "--images-dir", str(tmp_path / name)]) == 0
        sampled[name] = sorted((tmp_path / name).glob("*.png"))
        assert grid.is_file() and len(sampled[name]) == 4
    assert cli.main(["merge", "--model-dir", config.model_dir, "--adapter-dir", str(run / "adapter"),
                     "--output-dir", str(tmp_path / "merged2")]) == 0  # fmt: skip
    merged = (load_model_folder(folder)[0].state_dict() for folder in (tmp_path / "merged2", run / "model"))
    assert all(torch.equal(a, b) for a, b in zip(*(d.values() for d in merged), strict=True))
    capsys.readouterr()
    evaluate = ["evaluate", "--data-dir", config.data_dir, "--distance", "haar", "--num-images", "4"]
    assert cli.main([*evaluate, "--model-dir", config.model_dir, "--adapter-dir", str(run / "adapter"),
                     "--sample-steps", "2", "--json", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text())["num_samples"] == 4


def test_cli_evaluate_samples_a_one_channel_model_against_its_training_images(tmp_path, capsys):
    from ddpm_pa_fast.train import fashion

    shots = str(fashion.shots_dir("validation"))
    args = [
        "evaluate",
        "--model-dir",
        str(fashion.SOURCE_MODEL_DIR),
        "--data-dir",
        shots,
        "--distance",
        "haar",
    ]
    assert (
        cli.main([*args, "--num-images", "4", "--sample-steps", "2", "--json", str(tmp_path / "m.json")]) == 0
    )
    assert json.loads((tmp_path / "m.json").read_text())["num_samples"] == 4
    capsys.readouterr()
    assert cli.main([*args[:-4], "--data-dir", str(tmp_path), "--num-images", "4"]) == 2
    assert "no image" in capsys.readouterr().err.lower()


def test_cli_bad_lora_input_is_one_line_exit_2_nothing_written(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert cli.main(_train_lora_cli(tmp_path, "--lora-rank", "0")) == 2
    assert cli.main(_train_lora_cli(tmp_path, "--lora-targets", "ff.net.0")) == 2
    assert not (tmp_path / "run").exists()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--lora-rank must be" in errors[0] and "--lora-targets" in errors[1]

    # An adapter trained on another base (other channel counts): refused by name, nothing written.
    other = tmp_path / "other"
    other.mkdir()
    other_config = tiny_config(other, lora_rank=RANK, save_model=True, steps=1, batch_size=3)
    tiny_unet(block_out_channels=(16, 32)).save_pretrained(other_config.model_dir)
    T.Trainer(other_config).train()
    capsys.readouterr()
    mismatched = ["--model-dir", config.model_dir, "--adapter-dir", str(other / "out" / "adapter")]
    grid = tmp_path / "grid.png"
    assert cli.main(["sample", *mismatched, "--num-images", "2", "--grid", str(grid)]) == 2
    assert cli.main(["merge", *mismatched, "--output-dir", str(tmp_path / "merged")]) == 2
    assert cli.main(["sample", "--model-dir", config.model_dir, "--adapter-dir", str(tmp_path), "--grid",
                     str(grid)]) == 2  # fmt: skip
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and all("--adapter-dir" in line for line in errors), errors
    assert "does not fit the model" in errors[0] and "size mismatch" in errors[0]
    assert "holds no adapter_config.json" in errors[2]
    assert not grid.exists() and not (tmp_path / "merged").exists()
    with pytest.raises(ModelFolderError, match="--adapter-dir"):
        adapters.load_adapted(config.model_dir, other / "out" / "adapter")


def test_adapter_for_another_layout_or_corrupt_is_refused_by_name(tmp_path):
    """PEFT itself only warns when an adapter's weights and the adapters it builds differ: an adapter
    trained where the base has no such layers would load in part, the rest left at B = 0."""
    config = tiny_config(tmp_path)
    other = tiny_unet(
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D")
    )
    folder = tmp_path / "adapter"
    adapters.add_lora(other, RANK, RANK, 0.0, adapters.default_targets(other)).save_pretrained(folder)
    with pytest.raises(ModelFolderError, match=r"--adapter-dir .* have no adapter \(e.g. unexpected "):
        adapters.load_adapted(config.model_dir, folder)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFolderError, match="--adapter-dir .* does not fit"):
        adapters.load_adapted(config.model_dir, folder)


def test_compile_trains_lora_as_eager(tmp_path):
    pytest.importorskip("torch._inductor")
    eager = T.Trainer(lora_config(tmp_path, steps=2, output_dir=str(tmp_path / "e")))
    eager.train()
    compiled = T.Trainer(lora_config(tmp_path, steps=2, compile=True, output_dir=str(tmp_path / "c")))
    compiled.train()
    for a, b in zip(eager.trained_parameters, compiled.trained_parameters, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
