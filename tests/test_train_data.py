"""Bad data stops with a clear message before any training step; batches are full and rank-sharded."""

import pytest
import torch

pytest.importorskip("diffusers")

from ddpm_pa_fast.train import cli  # noqa: E402
from ddpm_pa_fast.train import trainer as T  # noqa: E402
from ddpm_pa_fast.train.data import BatchStream, DataError, load_images  # noqa: E402
from tests.test_train_common import tiny_config, write_images  # noqa: E402


def _no_step_taken(tmp_path, monkeypatch):
    def forbidden(self):
        raise AssertionError("a training step ran on bad data")

    monkeypatch.setattr(T.Trainer, "training_step", forbidden)


def _bad_data(tmp_path, kind):
    data = tmp_path / "bad"
    if kind == "missing":
        return data, "does not exist"
    data.mkdir()
    if kind == "empty":
        (data / "notes.txt").write_text("no images here")
        return data, "holds no images"
    write_images(data, count=4)
    if kind == "unreadable":
        (data / "zz.png").write_bytes(b"not a png")
        return data, "cannot read image"
    if kind == "mixed":
        write_images(tmp_path / "big", count=1, size=16)
        (tmp_path / "big" / "00.png").rename(data / "zz.png")
        return data, "must all have one size"
    if kind == "too_few":
        for p in sorted(data.iterdir())[2:]:
            p.unlink()
        return data, "fewer than the 3 needed"
    if kind == "wrong_size":
        for p in data.iterdir():
            p.unlink()
        write_images(data, count=4, size=16)
        return data, "sample_size is 8x8"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "unreadable", "mixed", "too_few", "wrong_size"])
def test_bad_data_stops_before_training(tmp_path, monkeypatch, kind):
    _no_step_taken(tmp_path, monkeypatch)
    data, message = _bad_data(tmp_path, kind)
    config = tiny_config(tmp_path, data_dir=str(data), pair_size=3)
    with pytest.raises(DataError, match=message):
        T.Trainer(config)


def test_cli_reports_bad_data_without_traceback(tmp_path, monkeypatch, capsys):
    _no_step_taken(tmp_path, monkeypatch)
    config = tiny_config(tmp_path)
    code = cli.main(
        [
            "train",
            "--model-dir",
            config.model_dir,
            "--data-dir",
            str(tmp_path / "missing"),
            "--output-dir",
            str(tmp_path / "o"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_images_range_and_order(tmp_path):
    write_images(tmp_path / "d", count=3)
    images = load_images(tmp_path / "d")
    assert images.shape == (3, 3, 8, 8) and images.min() >= -1 and images.max() <= 1


def test_batch_stream_full_batches_and_shards():
    stream = BatchStream(count=5, batch_size=4, seed=0)
    seen = torch.cat([stream.next_indices() for _ in range(5)])
    assert seen.shape == (20,) and torch.equal(torch.bincount(seen, minlength=5), torch.full((5,), 4))
    shards = [BatchStream(count=10, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    whole = BatchStream(count=10, batch_size=6, seed=1)
    for _ in range(3):
        assert torch.equal(torch.cat([s.next_indices() for s in shards]), whole.next_indices())


# ---- image modes (issue 21 G: python-pillow/Pillow#3159's kind) ----


def _ramp(levels: int, dtype):
    import numpy as np

    return np.linspace(0, levels, 8).round().astype(dtype).reshape(1, 8).repeat(2, axis=0)


def _save(tmp_path, name, image, **kwargs):
    folder = tmp_path / name
    folder.mkdir()
    image.save(folder / f"im.{kwargs.pop('suffix', 'png')}", **kwargs)
    return folder


def _expected_ramp(levels: int = 255):
    import numpy as np

    return torch.from_numpy(_ramp(levels, np.int64) / levels * 2.0 - 1.0)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "mode",
    ["1", "L", "LA", "P", "P-transparent", "RGB", "RGBA", "CMYK", "I;16 png", "I;16 tiff"],
)
def test_every_mode_is_scaled_by_its_real_bit_depth(tmp_path, mode, channels):
    """A grey ramp from black to full scale reads as -1 .. 1 in every mode, for 1- and 3-channel models;
    transparent pixels take the white background."""
    import numpy as np
    from PIL import Image

    ramp8 = _ramp(255, np.uint8)
    expected = _expected_ramp()
    if mode == "1":
        image, expected = Image.fromarray(ramp8 > 127), torch.where(expected > 0, 1.0, -1.0).double()
    elif mode == "L":
        image = Image.fromarray(ramp8)
    elif mode == "LA":
        alpha = np.full_like(ramp8, 255)
        alpha[:, 0] = 0  # the black pixel is fully transparent: it reads as the white background
        image = Image.fromarray(np.stack([ramp8, alpha], axis=-1), "LA")
        expected = expected.clone()
        expected[:, 0] = 1.0
    elif mode.startswith("P"):
        image = Image.fromarray(ramp8).convert("P")
        if mode == "P-transparent":
            image.info["transparency"] = int(np.asarray(image)[0, 0])
            expected = expected.clone()
            expected[:, 0] = 1.0
    elif mode == "RGB":
        image = Image.fromarray(np.stack([ramp8] * 3, axis=-1))
    elif mode == "RGBA":
        image = Image.fromarray(np.stack([ramp8] * 3 + [np.full_like(ramp8, 255)], axis=-1))
    elif mode == "CMYK":
        image = Image.fromarray(np.stack([ramp8] * 3, axis=-1)).convert("CMYK")
    else:
        image, expected = Image.fromarray(_ramp(65535, np.uint16)), _expected_ramp(65535)
    suffix = "tiff" if "tiff" in mode or mode == "CMYK" else "png"
    if mode == "P-transparent":
        folder = _save(tmp_path, "m", image, transparency=image.info["transparency"])
    else:
        folder = _save(tmp_path, "m", image, suffix=suffix)
    x = load_images(folder, channels=channels)
    assert x.shape == (1, channels, 2, 8) and x.dtype == torch.float32
    for c in range(channels):
        torch.testing.assert_close(x[0, c].double(), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize(
    "mode, array, suffix",
    [("I", "int32", "tiff"), ("F", "float32", "tiff")],
)
def test_modes_without_a_known_full_scale_are_refused_by_file_and_mode(tmp_path, mode, array, suffix):
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.arange(16, dtype=array).reshape(2, 8))
    assert image.mode == mode
    folder = _save(tmp_path, "m", image, suffix=suffix)
    with pytest.raises(DataError, match=rf"cannot read image .*im\.{suffix}.* exactly: Pillow mode '{mode}'"):
        load_images(folder, channels=1)


def test_exif_orientation_is_applied(tmp_path):
    """As diffusers.utils.load_image: a photo whose EXIF says "rotated" is read upright."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((2, 4), dtype=np.uint8)
    pixels[0, 3] = 255  # top right
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    x = load_images(_save(tmp_path, "m", image, exif=exif), channels=1)
    assert x.shape == (1, 1, 4, 2)
    assert x[0, 0, 3, 1] == 1.0 and (x == 1.0).sum() == 1  # top right, turned clockwise: bottom right


def test_sixteen_bit_ramp_trains_as_its_values(tmp_path):
    """Pillow#3159: a 16-bit ramp 0..65535 loaded as [-1, 1, 1, ...] (convert("L") clipped above 255)."""
    import numpy as np
    from PIL import Image

    folder = _save(tmp_path, "m", Image.fromarray(_ramp(65535, np.uint16)))
    x = load_images(folder, channels=1)
    assert x[0, 0, 0].tolist() == pytest.approx(_expected_ramp(65535)[0].tolist(), abs=1e-6)
    assert x[0, 0, 0, 1] == pytest.approx(2 * 9362 / 65535 - 1, abs=1e-6)
