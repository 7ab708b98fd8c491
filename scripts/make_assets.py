"""Builds every asset of the few-shot study and the demo from Fashion-MNIST.

    apt-get install dataset-fashion-mnist            # the only prerequisite (Debian; Zalando SE, MIT)
    python scripts/make_assets.py data               # target shots, reference sets, source test set
    python scripts/make_assets.py classifier         # the 8-class evaluation classifier (~2 min)
    python scripts/make_assets.py fidelity           # the 10-class fidelity classifier (~3 min)
    python scripts/make_assets.py source [--resume]  # pretrain the source UNet (checkpoints, resumable)
    python scripts/make_assets.py all

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017): 70,000 28x28 grey photos of 10 clothing classes. Images
are padded with 2 background pixels to 32x32 (the UNet halves the size twice) and scaled to [-1, 1].

Domains (ddpm_pa_fast.train.fashion holds the class split):
- source: the 48,000 training images of the 8 classes other than sandal and ankle boot;
- validation target (settings are chosen here): sandal; test target (reported, never tuned on): ankle
  boot. Both are footwear, the one family the source knows through its sneakers, so adapting to them
  is the paper's setting (a related domain, as FFHQ -> babies) rather than learning a new object from
  ten pictures. Ankle boots, the farther from sneakers of the two (a shaft, a heel), are kept for the test.
- per target: 10 shots (PNGs, drawn from the training split) and a reference set of 1,000 other images
  of the class (from the test split) for KID;
- source test set: 250 test images of each source class, for the source model's KID.

Outputs under assets/ (see assets/README.md): domains/<class>/shots/*.png,
domains/<class>/reference.safetensors, source_test.safetensors, source_classifier/, fidelity_classifier/,
source_model/.
Deterministic for a given torch version and thread count (fixed seeds, --threads).
"""

from __future__ import annotations

import argparse
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ddpm_pa_fast.train import fashion  # noqa: E402
from ddpm_pa_fast.train.classifier import SourceClassifier, save_classifier  # noqa: E402

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
SHOTS = 10
REFERENCE_COUNT = 1000
SOURCE_TEST_PER_CLASS = 250


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, gzip) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 32, 32) uint8 padded with background, labels (N,)) of Fashion-MNIST's train or t10k."""
    if not IDX_DIR.is_dir():
        raise SystemExit(
            f"{IDX_DIR} not found: `apt-get install dataset-fashion-mnist` installs Fashion-MNIST's IDX files"
        )
    images = read_idx(IDX_DIR / f"{split}-images-idx3-ubyte.gz")
    labels = read_idx(IDX_DIR / f"{split}-labels-idx1-ubyte.gz")
    pad = (fashion.IMAGE_SIZE - images.shape[-1]) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad))), labels.astype(np.int64)


def make_data(out: Path, seed: int) -> None:
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    rng = np.random.default_rng(seed)
    train_images, train_labels = load_split("train")
    test_images, test_labels = load_split("t10k")
    for name in fashion.TARGET_DOMAINS.values():
        label = fashion.CLASS_NAMES.index(name)
        folder = out / "domains" / name
        shots = folder / "shots"
        shots.mkdir(parents=True, exist_ok=True)
        for old in shots.glob("*.png"):
            old.unlink()
        chosen = rng.choice(np.flatnonzero(train_labels == label), SHOTS, replace=False)
        for i, index in enumerate(sorted(chosen)):
            Image.fromarray(train_images[index]).save(shots / f"{i:02d}-train{index:05d}.png")
        reference = rng.choice(np.flatnonzero(test_labels == label), REFERENCE_COUNT, replace=False)
        save_file(
            {"images": torch.from_numpy(test_images[np.sort(reference)][:, None].copy())},
            folder / "reference.safetensors",
            metadata={"source": f"Fashion-MNIST t10k, class {label} ({name})"},
        )
        print(f"wrote {SHOTS} shots and {REFERENCE_COUNT} reference images of {name} to {folder}")
    picked = np.concatenate(
        [
            np.sort(rng.choice(np.flatnonzero(test_labels == label), SOURCE_TEST_PER_CLASS, replace=False))
            for label in fashion.SOURCE_LABELS
        ]
    )
    save_file(
        {
            "images": torch.from_numpy(test_images[picked][:, None].copy()),
            "labels": torch.from_numpy(fashion.source_index(test_labels[picked])),
        },
        out / "source_test.safetensors",
        metadata={"source": "Fashion-MNIST t10k, the 8 source classes; labels index SOURCE_CLASSES"},
    )
    print(f"wrote {len(picked)} source-class test images to {out / 'source_test.safetensors'}")


def source_training_set():
    """The source domain: Fashion-MNIST's training images of the 8 source classes, in [-1, 1]."""
    import torch

    images, labels = load_split("train")
    keep = np.isin(labels, fashion.SOURCE_LABELS)
    x = torch.from_numpy(images[keep][:, None].copy()).float() / 127.5 - 1.0
    return x, torch.from_numpy(fashion.source_index(labels[keep]))


def train_classifier(x, y, test_x, test_y, num_classes: int, seed: int, epochs: int, threads: int):
    """A SourceClassifier of num_classes trained on (x, y), [-1, 1] images and class indices; returns
    (model in eval mode, its accuracy on (test_x, test_y))."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = SourceClassifier(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    batch, steps_per_epoch = 128, len(x) // 128
    lr_schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(steps_per_epoch):
            rows = order[i * batch : (i + 1) * batch]
            # Random horizontal flips: clothing is left-right symmetric in kind, not in pixels.
            images = torch.where(
                torch.rand(len(rows), 1, 1, 1, generator=generator) < 0.5, x[rows], x[rows].flip(-1)
            )
            loss = torch.nn.functional.cross_entropy(model(images), y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_schedule.step()
        model.eval()
        with torch.no_grad():
            accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
        print(
            f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, test accuracy {accuracy:.4f}, "
            f"{time.time() - start:.0f} s",
            flush=True,
        )
    return model, accuracy


def make_classifier(out: Path, seed: int, epochs: int, threads: int) -> None:
    x, y = source_training_set()
    test = fashion.load_uint8_images(out / "source_test.safetensors")
    model, accuracy = train_classifier(
        x,
        y,
        fashion.to_model_range(test["images"]),
        test["labels"],
        len(fashion.SOURCE_CLASSES),
        seed,
        epochs,
        threads,
    )
    save_classifier(model, out / "source_classifier", {"source_test_accuracy": round(accuracy, 4)})
    print(f"wrote the classifier to {out / 'source_classifier'}")


def shot_indices(out: Path) -> list[int]:
    """Training-split indices of every target domain's shots (their PNG names end in -trainNNNNN)."""
    return sorted(
        int(path.stem.rsplit("-train", 1)[1])
        for name in fashion.TARGET_DOMAINS.values()
        for path in (out / "domains" / name / "shots").glob("*.png")
    )


def make_fidelity_classifier(out: Path, seed: int, epochs: int, threads: int) -> None:
    """All 10 classes' training images but the targets' shots: the classifier that judges whether a
    sample is of the target class (the fidelity metric); never used for a distance or KID."""
    import torch

    images, labels = load_split("train")
    keep = np.ones(len(labels), dtype=bool)
    shots = shot_indices(out)
    if len(shots) != SHOTS * len(fashion.TARGET_DOMAINS):
        raise SystemExit(
            f"expected {SHOTS} shots per target domain under {out / 'domains'}, found {len(shots)}"
        )
    keep[shots] = False
    x = torch.from_numpy(images[keep][:, None].copy()).float() / 127.5 - 1.0
    test_images, test_labels = load_split("t10k")
    model, accuracy = train_classifier(
        x,
        torch.from_numpy(labels[keep]),
        torch.from_numpy(test_images[:, None].copy()).float() / 127.5 - 1.0,
        torch.from_numpy(test_labels),
        len(fashion.CLASS_NAMES),
        seed,
        epochs,
        threads,
    )
    info = {
        "classes": list(fashion.CLASS_NAMES),
        "test_accuracy": round(accuracy, 4),
        "trained_on": f"Fashion-MNIST train, all 10 classes, {int(keep.sum())} images "
        f"(the {len(shots)} shots left out)",
    }
    save_classifier(model, out / "fidelity_classifier", info)
    print(f"wrote the fidelity classifier to {out / 'fidelity_classifier'}")


def pretrain_source(x, out: Path, args) -> None:
    """Pretrains the source UNet on the images x (N, 1, 32, 32) in [-1, 1]; checkpoints every
    --checkpoint-every steps through the trainer's checkpoint module, so that `--resume` continues exactly
    where an interrupted run stopped (--stop-at simulates the interruption)."""
    import torch

    from ddpm_pa_fast.train import checkpoint as ckpt
    from ddpm_pa_fast.train.diffusion import NoiseSchedule
    from ddpm_pa_fast.train.ema import EMA

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    unet, scheduler = fashion.build_source_model()
    schedule = NoiseSchedule(scheduler)
    ema = EMA(unet.parameters(), decay=0.999)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    steps, warmup = args.steps, 200

    def lr_lambda(s: int) -> float:
        return min(1.0, (s + 1) / warmup) * (
            0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
        )

    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    generator = torch.Generator().manual_seed(args.seed)
    step, elapsed = 0, 0.0
    run_dir = Path(args.run_dir)
    if args.resume:
        state = ckpt.load_checkpoint(run_dir / "checkpoints")
        unet.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        lr_schedule.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["rng"]["generator"])
        step, elapsed = state["step"], state["elapsed_seconds"]
        print(f"resumed from {state['path']} at step {step}")
    n_params = sum(p.numel() for p in unet.parameters())
    print(f"pretraining the source model ({n_params / 1e6:.2f} M parameters) to step {steps}", flush=True)
    start, running = time.time() - elapsed, None
    while step < min(steps, args.stop_at or steps):
        rows = torch.randint(0, len(x), (args.batch_size,), generator=generator)
        flip = torch.rand(args.batch_size, 1, 1, 1, generator=generator) < 0.5
        x0 = torch.where(flip, x[rows].flip(-1), x[rows])
        t = torch.randint(0, schedule.num_timesteps, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        loss = (unet(schedule.q_sample(x0, t, noise), t).sample - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.update()
        step += 1
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if step % 100 == 0 or step == steps:
            print(
                f"step {step:6d}  loss {running:.4f}  lr {lr_schedule.get_last_lr()[0]:.2e}  "
                f"{time.time() - start:6.0f} s",
                flush=True,
            )
        if step % args.checkpoint_every == 0 or step == steps:
            state = {
                "model": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": lr_schedule.state_dict(),
                "scaler": {},
                "rng": {"generator": generator.get_state()},
                "elapsed_seconds": time.time() - start,
            }
            ckpt.save_checkpoint(state, run_dir / "checkpoints", step, keep=2)
    if step < steps:
        print(f"stopped at step {step} (--stop-at); continue with --resume")
        return
    ema.copy_to()
    folder = out / "source_model"
    unet.save_pretrained(folder, safe_serialization=True)
    scheduler.save_pretrained(folder)
    print(
        f"wrote the source model (EMA weights) to {folder}: {step} steps, "
        f"{time.time() - start:.0f} s of training"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=("data", "classifier", "fidelity", "source", "all"))
    parser.add_argument("--out", type=Path, default=REPO / "assets", help="output folder (default: assets/)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (fixes the summation order)")
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2500, help="source pretraining steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument(
        "--run-dir",
        default=str(REPO / "runs" / "pretrain_source"),
        help="checkpoints of the source pretraining (default: runs/pretrain_source)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in --run-dir"
    )
    parser.add_argument("--stop-at", type=int, default=0, help="stop after this step, as if interrupted")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.stage in ("data", "all"):
        make_data(args.out, args.seed)
    if args.stage in ("classifier", "all"):
        make_classifier(args.out, args.seed, args.classifier_epochs, args.threads)
    if args.stage in ("fidelity", "all"):
        make_fidelity_classifier(args.out, args.seed, args.classifier_epochs, args.threads)
    if args.stage in ("source", "all"):
        pretrain_source(source_training_set()[0], args.out, args)


if __name__ == "__main__":
    main()
