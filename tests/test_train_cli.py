"""The `ddpm-pa-fast` command: every subcommand's --help, sample -> evaluate, and a tiny demo."""

import json

import pytest

pytest.importorskip("diffusers")

from ddpm_pa_fast.train import cli  # noqa: E402
from tests.test_train_common import tiny_config  # noqa: E402


@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: ddpm-pa-fast {command}" in capsys.readouterr().out


def test_train_sample_evaluate_round_trip(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert (
        cli.main(
            [
                "train",
                "--model-dir",
                config.model_dir,
                "--data-dir",
                config.data_dir,
                "--output-dir",
                str(tmp_path / "run"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--backend",
                "torch",
                "--checkpoint-every",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000002.pt").is_file()
    assert (
        cli.main(
            [
                "sample",
                "--model-dir",
                str(tmp_path / "run" / "model"),
                "--num-images",
                "6",
                "--sample-steps",
                "2",
                "--grid",
                str(tmp_path / "grid.png"),
                "--images-dir",
                str(tmp_path / "samples"),
            ]
        )
        == 0
    )
    assert (tmp_path / "grid.png").is_file() and len(list((tmp_path / "samples").glob("*.png"))) == 6
    capsys.readouterr()
    assert (
        cli.main(
            [
                "evaluate",
                "--samples",
                str(tmp_path / "samples"),
                "--data-dir",
                config.data_dir,
                "--distance",
                "haar",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["distance"] == "haar-multiscale-rms" and metrics["num_samples"] == 6


def test_tiny_demo_writes_grids_metrics_and_table(tmp_path, capsys):
    config = tiny_config(tmp_path)
    assert (
        cli.main(
            [
                "demo",
                "--model-dir",
                config.model_dir,
                "--data-dir",
                config.data_dir,
                "--output-dir",
                str(tmp_path / "demo"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--num-samples",
                "6",
                "--sample-steps",
                "2",
                "--backend",
                "torch",
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "intra-cluster div." in out and ("haar-multiscale-rms" in out or "lpips" in out)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert set(metrics["results"]) == {"source", "ddpm-pa", "finetune"}
    for name in metrics["results"]:
        assert (tmp_path / "demo" / name / "samples.png").is_file()
