"""Loading a diffusers model folder, sampling with few DDIM steps, and writing images and grids."""

from __future__ import annotations

import math
from pathlib import Path

import torch


class ModelFolderError(ValueError):
    """The model folder does not hold a diffusers UNet2DModel and DDPMScheduler."""


def load_model_folder(folder: str | Path):
    """(UNet2DModel, DDPMScheduler) from a local folder, never the hub.

    Accepts a flat folder (config.json + weights + scheduler_config.json, as scripts/make_assets.py and
    Trainer.save_model write) or a DDPMPipeline folder with unet/ and scheduler/ subfolders.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {str(folder)!r} does not exist or is not a directory")
    unet_dir = folder / "unet" if (folder / "unet").is_dir() else folder
    scheduler_dir = folder / "scheduler" if (folder / "scheduler").is_dir() else folder
    if not (unet_dir / "config.json").is_file():
        raise ModelFolderError(f"no UNet2DModel config.json in {str(unet_dir)!r}")
    if not (scheduler_dir / "scheduler_config.json").is_file():
        raise ModelFolderError(f"no DDPMScheduler scheduler_config.json in {str(scheduler_dir)!r}")
    unet = UNet2DModel.from_pretrained(unet_dir, local_files_only=True, low_cpu_mem_usage=False)
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    return unet, scheduler


# The sampler every evaluation uses unless told otherwise (TrainConfig.sample_steps / sample_eta), chosen on
# the source model (benchmarks/results/fewshot/sampler_steps.json and source_model.json, docs/training.md):
# stochastic DDIM, eta = 1, DDPM's ancestral step on a 50-step subsequence. Deterministic DDIM (eta = 0)
# put 56% of the Fashion-MNIST source model's 1,000 samples in a source class with p > 0.5, eta = 1 81%.
DEFAULT_SAMPLE_STEPS = 50
DEFAULT_SAMPLE_ETA = 1.0


@torch.no_grad()
def sample_images(
    unet,
    scheduler,
    num_images: int,
    num_steps: int = DEFAULT_SAMPLE_STEPS,
    seed: int = 0,
    batch_size: int = 32,
    eta: float = DEFAULT_SAMPLE_ETA,
) -> torch.Tensor:
    """num_images samples in [-1, 1], float32 (num_images, C, H, W) on the CPU, with DDIM (Song et al.
    2021, eq. 12) in num_steps steps over the DDPM schedule, clipping x0 as the scheduler's config says
    (clip_sample). eta scales the noise added at each step: 0 is deterministic DDIM, 1 the DDPM posterior's
    variance on the step subsequence (DDPM's ancestral sampler, except that DDIM keeps the noise implied
    by the unclipped output where x0 is clipped: diffusers' use_clipped_model_output=False). The model's
    output is read in its own parameterisation, the scheduler's prediction_type (epsilon, v_prediction or
    sample).

    The seed fixes the starting noise and then each step's added noise, drawn for all num_images at once:
    models sampled with one seed and one num_images start from and are perturbed by the same noise (at
    eta > 0 a sample depends on num_images, as the noise of step k follows step k-1's for all samples),
    and batch_size (the chunk that goes through the UNet) changes a sample only by rounding.

    Why not DPM-Solver++, whose metrics settle in fewer steps: it does not clip x0, and a third of the
    Fashion-MNIST source model's samples diverged into saturated noise (benchmarks/results/fewshot/).

    Raises ValueError if num_images or num_steps < 1, batch_size < 1 or eta outside [0, 1]."""
    from diffusers import DDIMScheduler

    for name, value in (("num_images", num_images), ("num_steps", num_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: ancestral), got {eta!r}")
    # from_config carries prediction_type over; named anyway, as reading a v model's output as noise
    # would sample garbage without an error.
    solver = DDIMScheduler.from_config(scheduler.config, prediction_type=scheduler.config.prediction_type)
    solver.set_timesteps(num_steps)
    device = next(unet.parameters()).device
    channels, size = unet.config.in_channels, unet.config.sample_size
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_images, channels, size, size, generator=generator).to(device)
    was_training = unet.training
    unet.eval()
    # Steps outside, chunks inside: each step's added noise is drawn for all samples at once (on the CPU
    # generator, so a seed gives the same noise on every device), and a sample's noise does not depend on
    # its chunk. DDIM keeps no state between steps.
    for t in solver.timesteps:
        variance_noise = torch.randn(x.shape, generator=generator).to(device) if eta > 0 else None
        outputs = []
        chunks = x.split(batch_size)
        noise_chunks = [None] * len(chunks) if variance_noise is None else variance_noise.split(batch_size)
        for chunk, noise in zip(chunks, noise_chunks, strict=True):
            # A learned-variance model outputs 2C channels; DDIM uses the prediction (the first C) only.
            prediction = unet(chunk, t.to(device)).sample[:, :channels]
            outputs.append(solver.step(prediction, t, chunk, eta=eta, variance_noise=noise).prev_sample)
        x = torch.cat(outputs)
    unet.train(was_training)
    return x.clamp(-1, 1).float().cpu()


def to_uint8_hwc(images: torch.Tensor) -> torch.Tensor:
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def image_grid(images: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """Images (N, C, H, W) in [-1, 1] as one uint8 (rows, columns, C) grid on white, 2-pixel gaps."""
    n, c, h, w = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    pixels = to_uint8_hwc(images)
    grid = torch.full((rows * (h + 2) + 2, columns * (w + 2) + 2, c), 255, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        grid[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + col * (w + 2) : 2 + col * (w + 2) + w] = pixels[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, columns: int | None = None, scale: int = 2) -> Path:
    """Writes images (N, C, H, W) in [-1, 1] as one PNG grid, upscaled by `scale` (nearest)."""
    from PIL import Image

    grid = image_grid(images, columns)
    c = grid.shape[-1]
    array = grid.numpy() if c != 1 else grid[..., 0].numpy()
    image = Image.fromarray(array)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def save_images(images: torch.Tensor, folder: str | Path) -> Path:
    """Writes each image as folder/000000.png ... (what `ddpm-pa-fast evaluate --samples` reads)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8_hwc(images)
    for i, p in enumerate(pixels):
        array = p.numpy() if p.shape[-1] != 1 else p[..., 0].numpy()
        Image.fromarray(array).save(folder / f"{i:06d}.png")
    return folder
