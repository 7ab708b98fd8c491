"""The `ddpm-pa-fast` command: every subcommand's --help, sample -> evaluate, and a tiny demo."""

import json

import pytest

pytest.importorskip("diffusers")

from ddpm_pa_fast.train import cli  # noqa: E402
from tests.test_train_common import tiny_config, train_cli_args  # noqa: E402


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
                *train_cli_args(config, str(tmp_path / "run")),
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


@pytest.mark.parametrize("weighting", ["x0", "eps"])
def test_tiny_demo_writes_figures_metrics_and_table(tmp_path, capsys, weighting):
    """The main job on the bundled assets, shrunk: 2 steps, 12 samples of 2 DDIM steps, in this process.
    Four panels either way: with a frozen weighting other than the authors', DDPM-PA as published runs
    beside it; with the authors', beside the validation's best-fidelity weighting."""
    out = tmp_path / "demo"
    argv = ["demo", "--output-dir", str(out), "--steps", "2", "--eval-every", "1", "--num-samples", "12"]
    argv += ["--sample-steps", "2", "--jobs", "1", "--backend", "torch", "--split", "validation"]
    argv += ["--hf-mse-weighting", weighting]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "intra-cluster div." in printed and "classifier-lpips" in printed and "KID" in printed
    assert "fidelity" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["domain"] == "sandal" and metrics["distance"] == "classifier-lpips"
    # With the authors' weighting as the frozen one, the fourth panel is the best validation weighting.
    fourth = "ddpm-pa" if weighting != "x0" else "ddpm-pa-best-validation"
    runs = ["finetune", "ddpm-pa-published", fourth]
    assert [(r["run"], r["step"]) for r in metrics["rows"]] == [("source", 0)] + [
        (run, step) for run in runs for step in (1, 2)
    ]
    table = printed[printed.index("model ") :]
    assert len(
        [line for line in table.splitlines() if line.split()[0] in ("source", "fine-tuning", "DDPM-PA")]
    ) == 1 + len(runs)
    assert all(0.0 <= r["fidelity"] <= 1.0 for r in metrics["rows"])
    for name in ("source", *runs):
        assert (out / name / "samples.png").is_file()
    for name in ("comparison.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_demo_script_passes_only_options_the_demo_takes():
    """scripts/demo.sh is the README's main job: its `ddpm-pa-fast demo` line must parse (it once passed
    --data-dir after the demo stopped taking it)."""
    import shlex
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    lines = [line for line in script.splitlines() if line.strip().startswith("ddpm-pa-fast demo")]
    assert len(lines) == 1
    words = [w for w in shlex.split(lines[0]) if w != "$@"]
    words = ["out" if "DEMO_OUT" in w else w for w in words]
    args = cli.build_parser().parse_args(words[1:])
    assert args.command == "demo" and args.split == "test"
