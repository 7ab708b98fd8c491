"""Makes the embedded default of `ddpm-pa-fast demo`: a tiny pretrained source model and a 10-shot target set.

    python scripts/make_assets.py                    # both (pretraining: ~10 min on 2 CPU cores)
    python scripts/make_assets.py --only-target      # the 10 target PNGs only (a second)

Domains, both procedural and deterministic (numpy's PCG64 seeded with --seed):
- source: 32x32 RGB images of one or two soft-edged ellipses of smooth colour on a smooth two-colour
  linear gradient: no high-frequency content at all;
- target: the same kind of ellipses filled with a high-frequency texture (stripes of period 2-4 pixels in
  one of four orientations, or a checkerboard of cell 1-2 pixels) between two colours. The two domains
  differ almost only in high frequencies, which is where DDPM-PA's Haar terms act.

Outputs: assets/source_model/ (UNet2DModel config.json + diffusion_pytorch_model.safetensors and the
DDPMScheduler's scheduler_config.json, loadable with from_pretrained) and assets/target_10shot/00.png ...
09.png. The source model is an epsilon-prediction UNet2DModel, 32x32, block_out_channels (32, 64, 64),
one ResNet layer per block, no attention (~1.1 M parameters, ~4.3 MB), trained on a fresh batch of
source images every step (AdamW, linear warm-up then cosine decay); the EMA weights are saved.
Pretraining is deterministic for a given torch version and thread count (fixed seeds, --threads).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def _gradient_background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.uniform(0.0, 1.0, 3), rng.uniform(0.0, 1.0, 3)
    angle = rng.uniform(0.0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ramp = np.clip(0.5 + xx * math.cos(angle) + yy * math.sin(angle), 0.0, 1.0)[..., None]
    return (1 - ramp) * c0 + ramp * c1


def _ellipse_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft ellipse: 1 inside, 0 outside, a ~1.5-pixel smooth edge."""
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    ry, rx = rng.uniform(0.15, 0.35, 2) * size
    theta = rng.uniform(0.0, math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    radius = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return np.clip((1.0 - radius) * min(rx, ry) / 1.5 + 0.5, 0.0, 1.0)[..., None]


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A 0/1 high-frequency pattern: stripes (period 2-4, four orientations) or a checkerboard."""
    yy, xx = np.mgrid[0:size, 0:size]
    kind = rng.integers(0, 5)
    if kind == 4:
        cell = int(rng.integers(1, 3))
        pattern = (yy // cell + xx // cell) % 2
    else:
        period = int(rng.integers(2, 5))
        coordinate = (yy, xx, yy + xx, yy - xx)[kind]
        pattern = (coordinate % period) < (period / 2)
    return pattern.astype(np.float64)[..., None]


def make_image(rng: np.random.Generator, textured: bool, size: int = IMAGE_SIZE) -> np.ndarray:
    """One (size, size, 3) float image in [0, 1] of the source (textured=False) or target domain."""
    image = _gradient_background(rng, size)
    for _ in range(int(rng.integers(1, 3))):
        mask = _ellipse_mask(rng, size)
        colour = rng.uniform(0.0, 1.0, 3)
        if textured:
            second = np.clip(colour + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 0.7), 0.0, 1.0)
            fill = colour + (second - colour) * _texture(rng, size)
        else:
            fill = np.broadcast_to(colour, image.shape)
        image = (1 - mask) * image + mask * fill
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def write_target_set(out_dir: Path, seed: int, count: int = 10) -> None:
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.Generator(np.random.PCG64([seed, 1]))
    for i in range(count):
        Image.fromarray(to_uint8(make_image(rng, textured=True))).save(out_dir / f"{i:02d}.png")
    print(f"wrote {count} target images to {out_dir}")


def source_batch(rng: np.random.Generator, batch_size: int):
    import torch

    images = np.stack([to_uint8(make_image(rng, textured=False)) for _ in range(batch_size)])
    # Quantised to uint8 first, so the model sees exactly what a PNG of the domain holds.
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_source_model():
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small", clip_sample=True
    )
    return unet, scheduler


def pretrain_source(out_dir: Path, seed: int, steps: int, batch_size: int, lr: float, threads: int) -> None:
    import torch

    from ddpm_pa_fast.train.diffusion import NoiseSchedule
    from ddpm_pa_fast.train.ema import EMA

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    unet, scheduler = build_source_model()
    schedule = NoiseSchedule(scheduler)
    ema = EMA(unet, decay=0.995)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    warmup = min(200, steps // 10 + 1)
    lr_lambda = lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    rng = np.random.Generator(np.random.PCG64([seed, 0]))
    generator = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"pretraining the source model ({n_params / 1e6:.2f} M parameters) for {steps} steps")
    start, running = time.time(), None
    for step in range(steps):
        x0 = source_batch(rng, batch_size)
        t = torch.randint(0, schedule.num_timesteps, (batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = (unet(schedule.q_sample(x0, t, noise), t).sample - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.update(unet)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {running:.4f}  {time.time() - start:6.0f} s", flush=True)
    ema.copy_to(unet)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir, safe_serialization=True)
    scheduler.save_pretrained(out_dir)
    print(f"wrote the source model to {out_dir} in {time.time() - start:.0f} s")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=REPO / "assets", help="output folder (default: assets/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=2000, help="pretraining steps of the source model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (fixes the float summation order)"
    )
    parser.add_argument("--only-target", action="store_true", help="write the target set only")
    args = parser.parse_args(argv)
    write_target_set(args.out / "target_10shot", args.seed)
    if not args.only_target:
        pretrain_source(
            args.out / "source_model", args.seed, args.steps, args.batch_size, args.lr, args.threads
        )


if __name__ == "__main__":
    main()
