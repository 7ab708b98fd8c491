"""The few-shot target set: a folder of same-size images, checked before any training step."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class DataError(ValueError):
    """The training images cannot be used; the message says which file or folder and why."""


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"data folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise DataError(f"data folder {str(folder)!r} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(
            f"data folder {str(folder)!r} holds no images (looked for {', '.join(IMAGE_SUFFIXES)})"
        )
    return files


def load_images(
    folder: str | Path, channels: int = 3, size: int | None = None, min_count: int = 1
) -> torch.Tensor:
    """All images of `folder` as one float tensor (N, channels, H, W) in [-1, 1], sorted by file name.

    Raises DataError for a missing or empty folder, an unreadable file, images of different sizes, a
    size other than `size` (the model's sample_size), or fewer than `min_count` images.
    """
    from PIL import Image, UnidentifiedImageError

    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise DataError(f"the model takes {channels} input channels; image data has 1, 3 or 4")
    files = image_files(folder)
    if len(files) < min_count:
        raise DataError(
            f"data folder {str(folder)!r} holds {len(files)} images, fewer than the {min_count} needed "
            "(the pair subset size --pair-size, at least 2)"
        )
    arrays, first_size = [], None
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert(mode)
                image.load()
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {str(path)!r}: {error}") from error
        if first_size is None:
            first_size = image.size
        elif image.size != first_size:
            raise DataError(
                f"images must all have one size: {files[0].name} is {first_size[0]}x{first_size[1]}, "
                f"{path.name} is {image.size[0]}x{image.size[1]} (width x height)"
            )
        arrays.append(
            torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(
                image.size[1], image.size[0], channels
            )
        )
    if size is not None and first_size != (size, size):
        raise DataError(
            f"the model's sample_size is {size}x{size}, the images in {str(folder)!r} are "
            f"{first_size[0]}x{first_size[1]}; resize them first"
        )
    return torch.stack(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class BatchStream:
    """Endless full batches from a small image set: shuffled epochs, concatenated, so every batch holds
    exactly `batch_size` images however few the set has. Rank r of a world of W takes slice r of each
    global batch of W * batch_size (rank-sharded batches). Its whole state is in state_dict()."""

    def __init__(self, count: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.count, self.batch_size, self.rank, self.world_size = count, batch_size, rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)

    def next_indices(self) -> torch.Tensor:
        needed = self.batch_size * self.world_size
        while self.order.numel() < needed:
            self.order = torch.cat([self.order, torch.randperm(self.count, generator=self.generator)])
        global_batch, self.order = self.order[:needed], self.order[needed:]
        return global_batch[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order = state["order"].clone()
