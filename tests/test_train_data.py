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
