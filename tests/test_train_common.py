"""Shared tiny fixtures of the trainer tests (no tests here): a small diffusers model folder and images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

TINY_SIZE = 8


def tiny_unet(**overrides):
    """The tiny UNet2DModel of write_tiny_model (seeded), with `overrides` of its config."""
    from diffusers import UNet2DModel

    config = dict(
        sample_size=TINY_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    config.update(overrides)
    torch.manual_seed(0)
    return UNet2DModel(**config)


def write_tiny_model(
    folder: Path, learned_variance: bool = False, num_timesteps: int = 100, prediction_type: str = "epsilon"
) -> Path:
    """A ~10k-parameter UNet2DModel (8x8, channels (8, 16)) and a DDPMScheduler, via save_pretrained."""
    from diffusers import DDPMScheduler

    unet = tiny_unet(out_channels=6 if learned_variance else 3)
    scheduler = DDPMScheduler(
        num_train_timesteps=num_timesteps,
        variance_type="learned_range" if learned_variance else "fixed_small",
        prediction_type=prediction_type,
    )
    unet.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    return folder


def write_images(folder: Path, count: int = 6, size: int = TINY_SIZE, seed: int = 0) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def tiny_config(
    tmp_path: Path, learned_variance: bool = False, prediction_type: str = "epsilon", **overrides
):
    from ddpm_pa_fast.train.trainer import TrainConfig

    model = tmp_path / ("model_lv" if learned_variance else "model")
    if prediction_type != "epsilon":
        model = model.with_name(f"{model.name}_{prediction_type}")
    if not model.exists():
        write_tiny_model(model, learned_variance, prediction_type=prediction_type)
    data = tmp_path / "data"
    if not data.exists():
        write_images(data)
    values = dict(
        model_dir=str(model),
        data_dir=str(data),
        output_dir=str(tmp_path / "out"),
        steps=3,
        batch_size=4,
        lr=1e-3,
        backend="torch",
        progress=False,
        save_model=False,
        sample_steps=3,
        num_samples=4,
    )
    values.update(overrides)
    return TrainConfig(**values)


def train_cli_args(config, output_dir: str | None = None) -> list[str]:
    """`ddpm-pa-fast train` arguments naming a TrainConfig's model, data and output folders."""
    return [
        "train",
        "--model-dir",
        config.model_dir,
        "--data-dir",
        config.data_dir,
        "--output-dir",
        output_dir or config.output_dir,
    ]
