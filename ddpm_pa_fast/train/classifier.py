"""The evaluation network of the Fashion-MNIST benchmark: a small CNN classifier of the 8 source classes.

It never sees a target class. Three uses, all offline (its weights are committed in
assets/source_classifier/):
- its feature maps give the LPIPS-like perceptual distance of evaluate.ClassifierPerceptualDistance;
- its pooled penultimate features are KID's feature space (the role Inception's pool3 plays for FID);
- its class probabilities say whether the source model generates recognisable clothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class SourceClassifier(nn.Module):
    """Three stages of two 3x3 convs (16, 32, 64 channels at 32, 16, 8 px), global average pool, a
    linear head.

    Input: (N, 1, 32, 32) float in [-1, 1]. forward() gives logits (N, num_classes);
    stage_features() the ReLU output of each stage (the LPIPS-style layers); features() the pooled
    64-d penultimate vector.
    """

    def __init__(self, num_classes: int = 8, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.widths = tuple(widths)
        stages, channels = [], 1
        for width in self.widths:
            stages.append(
                nn.Sequential(
                    nn.Conv2d(channels, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=1),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(channels, num_classes)

    def stage_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, stage in enumerate(self.stages):
            if i:
                x = nn.functional.max_pool2d(x, 2)
            x = stage(x)
            maps.append(x)
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_features(x)[-1].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_classifier(model: SourceClassifier, folder: str | Path, info: dict | None = None) -> Path:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    config = {"num_classes": model.head.out_features, "widths": list(model.widths), **(info or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return folder


def load_classifier(folder: str | Path) -> SourceClassifier:
    """The classifier in eval mode, its weights frozen. Raises FileNotFoundError naming the missing file."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"classifier file {str(folder / name)!r} not found (scripts/make_assets.py)"
            )
    config = json.loads((folder / CONFIG_FILE).read_text())
    model = SourceClassifier(config["num_classes"], tuple(config["widths"]))
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return model.eval().requires_grad_(False)


__all__ = ["SourceClassifier", "load_classifier", "save_classifier"]
