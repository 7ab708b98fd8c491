"""The few-shot benchmark on Fashion-MNIST: its class split, its source model, and its committed assets.

Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando SE, MIT licence): 28x28 grey photos of 10 clothing
classes, padded here with 2 background pixels to 32x32. Eight classes form the source domain; two are
held out as few-shot targets, one to choose settings on (validation) and one to report on (test).
scripts/make_assets.py builds every file under assets/ from the IDX files; nothing here needs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
IMAGE_SIZE = 32
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
# Settings are chosen on the validation domain only, then frozen and run once on the test domain.
TARGET_DOMAINS = {"validation": "sandal", "test": "ankle_boot"}
SOURCE_LABELS = tuple(i for i, name in enumerate(CLASS_NAMES) if name not in TARGET_DOMAINS.values())
SOURCE_CLASSES = tuple(CLASS_NAMES[i] for i in SOURCE_LABELS)
SOURCE_MODEL_DIR = ASSETS / "source_model"
CLASSIFIER_DIR = ASSETS / "source_classifier"
# The 10-class classifier that judges fidelity (is a sample of the target class?); nothing else.
FIDELITY_CLASSIFIER_DIR = ASSETS / "fidelity_classifier"
SOURCE_TEST_FILE = ASSETS / "source_test.safetensors"


def source_index(labels: np.ndarray) -> np.ndarray:
    """Fashion-MNIST labels of source classes (int64) -> indices into SOURCE_CLASSES."""
    lookup = np.full(len(CLASS_NAMES), -1, dtype=np.int64)
    lookup[list(SOURCE_LABELS)] = np.arange(len(SOURCE_LABELS))
    index = lookup[labels]
    if (index < 0).any():
        raise ValueError("labels hold a held-out target class; only source classes have an index")
    return index


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, 1, H, W) -> float32 in [-1, 1], the models' range."""
    return images.float() / 127.5 - 1.0


def load_uint8_images(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a committed safetensors image set ("images" uint8 (N, 1, 32, 32), maybe "labels")."""
    from safetensors.torch import load_file

    return load_file(str(path))


def domain_dir(split: str) -> Path:
    """assets/domains/<class>/ of the validation or test target domain."""
    if split not in TARGET_DOMAINS:
        raise ValueError(f"split must be one of {', '.join(TARGET_DOMAINS)}, got {split!r}")
    return ASSETS / "domains" / TARGET_DOMAINS[split]


def shots_dir(split: str) -> Path:
    """The folder of the domain's 10 training shots (PNGs), what the trainer's --data-dir takes."""
    return domain_dir(split) / "shots"


def reference_images(split: str) -> torch.Tensor:
    """The domain's 1,000 held-out reference images, float32 (1000, 1, 32, 32) in [-1, 1], for KID."""
    return to_model_range(load_uint8_images(domain_dir(split) / "reference.safetensors")["images"])


def build_source_model():
    """The untrained source UNet2DModel (epsilon prediction, 1 channel, 32x32) and its DDPMScheduler."""
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        # Sized for 2 CPU cores: 0.64 M parameters, self-attention only in the 8x8 middle block.
        block_out_channels=(16, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=32,
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small", clip_sample=True
    )
    return unet, scheduler


__all__ = [
    "ASSETS",
    "CLASSIFIER_DIR",
    "CLASS_NAMES",
    "FIDELITY_CLASSIFIER_DIR",
    "IMAGE_SIZE",
    "SOURCE_CLASSES",
    "SOURCE_LABELS",
    "SOURCE_MODEL_DIR",
    "SOURCE_TEST_FILE",
    "TARGET_DOMAINS",
    "build_source_model",
    "domain_dir",
    "load_uint8_images",
    "reference_images",
    "shots_dir",
    "source_index",
    "to_model_range",
]
