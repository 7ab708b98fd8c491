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


# Transparent pixels are composited over this background (white, as a product photo's cut-out is meant
# to be seen) before the image is read; a model with 4 channels keeps the alpha channel instead.
TRANSPARENT_BACKGROUND = (255, 255, 255)
# Pillow modes read exactly, by their full scale: bilevel, 8-bit and 16-bit (PNG, TIFF) integers.
_FULL_SCALE = {
    "1": 1.0,
    "L": 255.0,
    "RGB": 255.0,
    "RGBA": 255.0,
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
}
# ITU-R 601-2 luma, the weights of Pillow's convert("L"), for colour images given to a 1-channel model.
_LUMA = (0.299, 0.587, 0.114)


def read_image(path: str | Path, channels: int) -> torch.Tensor:
    """One image file as float32 (channels, H, W) in [-1, 1], scaled by its real bit depth.

    The EXIF orientation is applied (as diffusers.utils.load_image does). Modes: 1 (bilevel), L, P
    (palette), RGB, CMYK (Pillow's conversion to RGB), I;16 (16-bit grey PNG and TIFF, as Pillow >= 10
    opens them); LA, PA, RGBA and a palette with
    transparency are composited over TRANSPARENT_BACKGROUND (kept as a fourth channel for a 4-channel
    model). Grey images are repeated over 3 channels; colour images become luma for a 1-channel model.
    Raises DataError naming the file for an unreadable file, and naming the file and mode for a mode
    whose values have no known full scale (I from other formats, F: floating point), which would be
    read wrong rather than refused."""
    import numpy as np
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"cannot read image {str(path)!r}: {error}") from error
    mode = image.mode
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    elif mode == "CMYK":
        image = image.convert("RGB")
    if image.mode == "RGBA" and channels != 4:
        background = Image.new("RGBA", image.size, (*TRANSPARENT_BACKGROUND, 255))
        image = Image.alpha_composite(background, image).convert("RGB")
    scale = _FULL_SCALE.get(image.mode)
    if scale is None:
        raise DataError(
            f"cannot read image {str(path)!r} exactly: Pillow mode {mode!r} has no known full scale "
            "(modes read: 1, L, LA, P, PA, RGB, RGBA, CMYK, 16-bit I;16 PNG/TIFF); save it as 8- or 16-bit"
        )
    array = torch.from_numpy(np.asarray(image).astype(np.float32) / scale)
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[-1] == 1 and channels in (3, 4):
        array = array.expand(-1, -1, 3)
    elif array.shape[-1] in (3, 4) and channels == 1:
        array = sum(w * array[..., i : i + 1] for i, w in enumerate(_LUMA))
    if channels == 4 and array.shape[-1] == 3:
        array = torch.cat([array, torch.ones_like(array[..., :1])], dim=-1)
    return array.permute(2, 0, 1).contiguous() * 2.0 - 1.0


def load_images(
    folder: str | Path, channels: int = 3, size: int | None = None, min_count: int = 1
) -> torch.Tensor:
    """All images of `folder` as one float tensor (N, channels, H, W) in [-1, 1], sorted by file name,
    each read by read_image (its bit depth, transparency and EXIF orientation).

    Raises DataError for a missing or empty folder, an unreadable file or mode, images of different
    sizes, a size other than `size` (the model's sample_size), or fewer than `min_count` images.
    """
    if channels not in (1, 3, 4):
        raise DataError(f"the model takes {channels} input channels; image data has 1, 3 or 4")
    files = image_files(folder)
    if len(files) < min_count:
        raise DataError(
            f"data folder {str(folder)!r} holds {len(files)} images, fewer than the {min_count} needed "
            "(the pair subset size --pair-size, at least 2)"
        )
    images = []
    for path in files:
        image = read_image(path, channels)
        if images and image.shape[1:] != images[0].shape[1:]:
            (h0, w0), (h, w) = images[0].shape[1:], image.shape[1:]
            raise DataError(
                f"images must all have one size: {files[0].name} is {w0}x{h0}, {path.name} is {w}x{h} "
                "(width x height)"
            )
        images.append(image)
    height, width = images[0].shape[1:]
    if size is not None and (height, width) != (size, size):
        raise DataError(
            f"the model's sample_size is {size}x{size}, the images in {str(folder)!r} are "
            f"{width}x{height}; resize them first"
        )
    return torch.stack(images)


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
