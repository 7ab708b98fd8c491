"""The Fashion-MNIST few-shot benchmark: committed assets, the classifier distance, KID, the study's
tables, and the trainer's pair-timestep option."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ddpm_pa_fast.train import evaluate as E
from ddpm_pa_fast.train import fashion, study
from ddpm_pa_fast.train import trainer as T
from ddpm_pa_fast.train.classifier import SourceClassifier, load_classifier, save_classifier
from ddpm_pa_fast.train.data import load_images
from ddpm_pa_fast.train.sampling import load_model_folder

from .test_train_common import tiny_config


@pytest.fixture(scope="module")
def classifier():
    return load_classifier(fashion.CLASSIFIER_DIR)


# ---- committed assets ----


@pytest.mark.parametrize("split", ["validation", "test"])
def test_each_target_domain_has_10_shots_and_1000_reference_images(split):
    shots = load_images(fashion.shots_dir(split), channels=1, size=fashion.IMAGE_SIZE)
    reference = fashion.reference_images(split)
    assert shots.shape == (10, 1, 32, 32) and reference.shape == (1000, 1, 32, 32)
    assert reference.min() >= -1 and reference.max() <= 1
    # The 2-pixel padding is background (-1), as in every Fashion-MNIST image here.
    assert torch.all(shots[..., :2, :] == -1) and torch.all(reference[..., :, -2:] == -1)
    # The shots come from the training split, the reference set from the test split: no shot is in it.
    distances = torch.cdist(shots.flatten(1), reference.flatten(1))
    assert distances.min() > 1.0


def test_the_two_target_domains_are_held_out_and_differ():
    assert set(fashion.TARGET_DOMAINS.values()) == {"sandal", "ankle_boot"}
    assert len(fashion.SOURCE_CLASSES) == 8
    assert not set(fashion.TARGET_DOMAINS.values()) & set(fashion.SOURCE_CLASSES)
    with pytest.raises(ValueError, match="held-out"):
        fashion.source_index(torch.tensor([5]).numpy())


def test_classifier_recognises_source_test_images(classifier):
    test = fashion.load_uint8_images(fashion.SOURCE_TEST_FILE)
    probabilities = E.class_probabilities(fashion.to_model_range(test["images"]), classifier)
    accuracy = (probabilities.argmax(1) == test["labels"]).double().mean().item()
    assert accuracy > 0.85


def test_source_model_is_the_fashion_mnist_unet():
    unet, scheduler = load_model_folder(fashion.SOURCE_MODEL_DIR)
    assert (unet.config.in_channels, unet.config.out_channels, unet.config.sample_size) == (1, 1, 32)
    assert scheduler.config.prediction_type == "epsilon"
    built, _ = fashion.build_source_model()
    assert list(unet.config.block_out_channels) == list(built.config.block_out_channels)


def test_classifier_save_load_round_trip_and_missing_file(tmp_path):
    torch.manual_seed(0)
    model = SourceClassifier().eval()
    save_classifier(model, tmp_path / "c", {"note": 1})
    loaded = load_classifier(tmp_path / "c")
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), model(x))
    assert not any(p.requires_grad for p in loaded.parameters())
    (tmp_path / "c" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_classifier(tmp_path / "c")


# ---- the classifier distance and KID ----


def test_classifier_distance_is_lpips_recipe_by_hand(classifier):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 1, 32, 32, generator=g) * 2 - 1, torch.rand(2, 1, 32, 32, generator=g) * 2 - 1
    d = E.ClassifierPerceptualDistance(classifier).matrix(a, b)
    with torch.no_grad():
        fa, fb = classifier.stage_features(a), classifier.stage_features(b)
    for i in range(3):
        for j in range(2):
            terms = []
            for x, y in zip(fa, fb, strict=True):
                ux = x[i].double() / (x[i].double().norm(dim=0, keepdim=True) + 1e-10)
                uy = y[j].double() / (y[j].double().norm(dim=0, keepdim=True) + 1e-10)
                terms.append((ux - uy).square().sum(0).mean())
            torch.testing.assert_close(d[i, j], torch.stack(terms).mean(), rtol=1e-9, atol=1e-12)
    assert torch.all((d >= 0) & (d <= 2))


def test_classifier_distance_zero_on_copies_and_symmetric(classifier):
    x = fashion.reference_images("validation")[:6]
    d = E.ClassifierPerceptualDistance(classifier).matrix(x, x)
    assert torch.all(d.diagonal().abs() < 1e-12)
    torch.testing.assert_close(d, d.T)
    assert torch.all(d + torch.eye(6, dtype=d.dtype) > 0.01)


def test_classifier_distance_names_the_shape_it_takes(classifier):
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 32\)"):
        E.ClassifierPerceptualDistance(classifier).matrix(
            torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
        )


def test_get_distance_classifier():
    assert E.get_distance("classifier").name == "classifier-lpips"


def test_kid_separates_domains_and_is_near_zero_within_one(classifier):
    sandals, boots = fashion.reference_images("validation"), fashion.reference_images("test")
    same = E.kid(sandals[:300], sandals[300:], classifier, subsets=20)
    other = E.kid(boots[:300], sandals[300:], classifier, subsets=20)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert other["kid"] > 20 * max(same["kid"], 1e-3)
    assert E.kid(boots[:300], sandals[300:], classifier, subsets=20) == other  # seeded subsets


# ---- the study's evaluator and tables ----


@pytest.mark.parametrize("split", ["validation", "test"])
def test_fidelity_classifier_knows_the_target_class_and_nothing_else_calls_it(split):
    """The fidelity metric: most held-out real images of the target class are called that class, almost
    no image of a source class is (so a texture or a source garment does not count as on target)."""
    evaluator = study.DomainEvaluator(split)
    assert evaluator.fidelity_real > 0.85
    source_test = fashion.to_model_range(fashion.load_uint8_images(fashion.SOURCE_TEST_FILE)["images"])
    assert E.fidelity(source_test, evaluator.fidelity_classifier, evaluator.label) < 0.02


def test_fidelity_names_what_it_needs():
    classifier = SourceClassifier(10).eval()
    with pytest.raises(ValueError, match="at least 1 image"):
        E.fidelity(torch.zeros(0, 1, 32, 32), classifier, 3)
    with pytest.raises(ValueError, match=r"label must be in \[0, 10\)"):
        E.fidelity(torch.zeros(2, 1, 32, 32), classifier, 10)


def test_domain_evaluator_on_the_shots_themselves():
    evaluator = study.DomainEvaluator("validation")
    m = evaluator(evaluator.shots.repeat(3, 1, 1, 1))
    assert m["nearest_train_distance"] == pytest.approx(0.0, abs=1e-9)
    assert m["intra_cluster_diversity"] == pytest.approx(0.0, abs=1e-9)
    assert m["haar_intra_cluster_diversity"] == pytest.approx(0.0, abs=1e-9)
    assert m["cluster_sizes"] == [3] * 10
    assert m["distance"] == "classifier-lpips" and m["kid"] > 0


def _row(method, seed, step, value):
    return {
        "method": method,
        "seed": seed,
        "step": step,
        **{key: value for key, _, _ in study.CURVE_METRICS},
    }


def test_summary_mean_and_sample_std_over_seeds():
    rows = [_row("ddpm-pa", s, 100, v) for s, v in enumerate([1.0, 2.0, 4.0])] + [_row("source", -1, 0, 5.0)]
    stats = study.summarise(rows, "kid")
    mean, std, n = stats[("ddpm-pa", 100)]
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    table = study.markdown_table(rows)
    assert "| DDPM-PA | 100 | 3 | 2.3333 +- 1.5275 |" in table and "| source | 0 | 1 | 5.0000 |" in table


def test_plot_curves_writes_a_png(tmp_path):
    rows = [_row("source", -1, 0, 1.0)] + [
        _row(m, s, step, 1.0 + 0.1 * s) for m in ("finetune", "ddpm-pa") for s in (0, 1) for step in (5, 10)
    ]
    path = study.plot_curves(rows, tmp_path / "c.png", "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_curves_titles_each_metric_and_counts_seeds_in_the_legend(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(study, "_save_figure", lambda fig, path, title, dpi: figures.append(fig) or path)
    rows = [_row("finetune", 0, 5, 1.0), *(_row("ddpm-pa", s, 5, 1.0) for s in (0, 1))]
    study.plot_curves(rows, tmp_path / "c.png", "t")
    axes = figures[0].axes
    titles = [ax.get_title() for ax in axes]
    assert [t.rsplit(" (", 1)[0] for t in titles] == [label for _, label, _ in study.CURVE_METRICS]
    legend = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert legend == ["fine-tuning (1 seed)", "DDPM-PA (2 seeds)"]


def _point(method, seed, step, kid, diversity, variant="v", fidelity=0.0, nearest=0.5):
    return {
        "method": method,
        "seed": seed,
        "step": step,
        "kid": kid,
        "fidelity": fidelity,
        "intra_cluster_diversity": diversity,
        "nearest_train_distance": nearest,
        "variant": variant,
    }


def test_value_at_reads_the_first_crossing_of_the_path():
    source = _point("source", -1, 0, 3.0, 0.8)
    path = [source, _point("finetune", 0, 10, 1.0, 0.4), _point("finetune", 0, 20, 2.0, 0.2)]
    d = "intra_cluster_diversity"
    assert study.value_at(path, "kid", 2.0, d) == pytest.approx(0.6)  # first crossing: 3.0 -> 1.0
    assert study.value_at(path, "kid", 1.5, d) == pytest.approx(0.5)
    assert study.value_at(path, "kid", 3.0, d) == pytest.approx(0.8)
    assert study.value_at(path, "kid", 0.5, d) is None and study.value_at(path, "kid", 3.5, d) is None


def test_equal_level_table_compares_each_seed_with_fine_tuning_of_its_own_seed_and_variant():
    source = _point("source", -1, 0, 3.0, 0.8, fidelity=0.0, nearest=0.9)
    rows = [source]
    for seed, end in ((0, 0.5), (1, 0.3)):
        rows += [
            _point("finetune", seed, 10, 1.0, end, "a", fidelity=1.0, nearest=0.1),
            _point("finetune", seed, 10, 1.0, 9.0, "b", fidelity=1.0),
        ]
        rows += [_point("ddpm-pa", seed, 10, 2.0, 0.7, "a", fidelity=0.5, nearest=0.6)]
    for along in ("kid", "fidelity"):
        lines = study.equal_level_table(rows, along, "a", "a")
        # Both levels are halfway along fine-tuning's path: seed 0 diversity (0.8 + 0.5) / 2 = 0.65, seed 1
        # (0.8 + 0.3) / 2 = 0.55; nearest-shot distance (0.9 + 0.1) / 2 = 0.5 for both.
        level = "2.000" if along == "kid" else "0.500"
        assert lines[2] == f"| 0 | 10 | {level} | 0.700 | 0.650 | +0.050 | 0.600 | 0.500 | +0.100 |"
        assert lines[3] == f"| 1 | 10 | {level} | 0.700 | 0.550 | +0.150 | 0.600 | 0.500 | +0.100 |"
        assert lines[4].endswith(f"| +0.100 +- {math.sqrt(0.005):.3f} |  |  | +0.100 +- 0.000 |")
    never = study.equal_level_table(rows + [_point("ddpm-pa", 2, 10, 5.0, 0.1, "a")], "kid", "a", "a")
    assert "(fine-tuning never reached that KID)" in never[4]


def test_plot_tradeoff_draws_every_run_from_the_source(tmp_path, monkeypatch):
    """Diversity against KID (left) and against fidelity (right), each run's path from the source."""
    figures = []
    monkeypatch.setattr(study, "_save_figure", lambda fig, path, title, dpi: figures.append(fig) or path)
    rows = [_point("source", -1, 0, 3.0, 0.8, fidelity=0.1)]
    rows += [_point(m, s, 10, 1.0 + s, 0.5, fidelity=0.9) for m in ("finetune", "ddpm-pa") for s in (0, 1)]
    study.plot_tradeoff(rows, tmp_path / "t.png", "t")
    for ax, start in zip(figures[0].axes, (3.0, 0.1), strict=True):
        runs = [line for line in ax.get_lines() if len(line.get_xdata()) == 2]
        assert len(runs) == 4 and all(line.get_xdata()[0] == start for line in runs)
    legend = figures[0].axes[1].get_legend().get_texts()
    assert [t.get_text() for t in legend] == ["DDPM-PA", "fine-tuning", "source"]


def test_track_adaptation_evaluates_the_extra_steps(tmp_path):
    config = tiny_config(tmp_path, steps=4, sample_steps=2)
    rows, _ = study.track_adaptation(config, _summary_evaluator, 3, 4, 0, extra_eval_steps=(1,))
    assert [r["step"] for r in rows] == [1, 3, 4]


def test_run_in_parallel_keeps_task_order_in_workers_and_in_process():
    done = []
    tasks = [(2, 10), (3, 2), (5, 1)]
    assert study.run_in_parallel(pow, tasks, jobs=2, on_done=lambda t, r, s: done.append(t)) == [1024, 9, 5]
    assert sorted(done) == sorted(tasks)
    threads = torch.get_num_threads()
    assert study.run_in_parallel(pow, tasks, jobs=1) == [1024, 9, 5]
    assert torch.get_num_threads() == threads


# ---- the trainer's pair timesteps ----


@pytest.mark.parametrize("mode", ["shared", "per-sample"])
def test_pair_timesteps(tmp_path, monkeypatch, mode):
    trainer = T.Trainer(tiny_config(tmp_path, batch_size=6, pair_size=3, pair_timesteps=mode))
    seen = {}
    original = trainer.schedule.q_sample

    def spy(x0, t, noise):
        seen["t"] = t.clone()
        return original(x0, t, noise)

    monkeypatch.setattr(trainer.schedule, "q_sample", spy)
    state = trainer.pair_generator.get_state()
    shared_steps = 0
    for _ in range(4):
        pair = torch.randperm(6, generator=torch.Generator().set_state(state))[:3]
        trainer.training_step()
        state = trainer.pair_generator.get_state()
        shared_steps += int(torch.unique(seen["t"][pair]).numel() == 1)
    # 4 steps of 3 independent draws from 100 timesteps: all equal by chance has probability ~4e-4.
    assert shared_steps == (4 if mode == "shared" else 0)


def test_pair_timesteps_is_checked_and_saved(tmp_path):
    with pytest.raises(T.ConfigError, match="--pair-timesteps"):
        T.Trainer(tiny_config(tmp_path, pair_timesteps="one"))
    trainer = T.Trainer(tiny_config(tmp_path, pair_timesteps="per-sample"))
    assert trainer.state_dict()["config"]["pair_timesteps"] == "per-sample"


def test_on_step_runs_after_every_step(tmp_path):
    steps = []
    T.Trainer(tiny_config(tmp_path, steps=3)).train(on_step=lambda t: steps.append(t.step))
    assert steps == [1, 2, 3]


def _summary_evaluator(samples: torch.Tensor) -> dict:
    """Stands in for DomainEvaluator: the keys track_adaptation prints, read off the samples."""
    return {
        "fidelity": (samples > 0).double().mean().item(),
        "intra_cluster_diversity": samples.std().item(),
        "nearest_train_distance": samples.mean().item(),
        "kid": samples.abs().mean().item(),
    }


def test_track_adaptation_checks_the_sampler_on_the_final_model_only(tmp_path):
    config = tiny_config(tmp_path, steps=2, sample_steps=2)
    rows, last = study.track_adaptation(config, _summary_evaluator, 1, 4, 0, final_sample_steps=(3, 5))
    assert ["sampler_check" in r for r in rows] == [False, True]
    check = rows[-1]["sampler_check"]
    assert set(check) == {3, 5}
    # Other step counts give other samples from the same noise; the row itself is the configured count.
    assert check[3] != check[5] and check[3]["kid"] != rows[-1]["kid"]
    assert rows[-1]["kid"] == _summary_evaluator(last)["kid"]


def test_study_tables_the_sampler_check_as_json_keeps_it():
    from benchmarks import fewshot_study

    metrics = {key: 0.5 for key, _, _ in study.CURVE_METRICS}
    check = {"100": {**metrics, "kid": 0.25}}
    row = {"method": "ddpm-pa", "seed": 0, "step": 10, **metrics, "sampler_check": check}
    lines = fewshot_study.sampler_check_table(json.loads(json.dumps([row])))
    body = [line for line in lines if line.startswith("| DDPM-PA")]
    steps = T.TrainConfig("", "", "").sample_steps
    assert [line.split(" | ")[2] for line in body] == [str(steps), "100"]
    assert "0.2500" in body[1] and "0.2500" not in body[0]
    assert fewshot_study.sampler_check_table([{k: v for k, v in row.items() if k != "sampler_check"}]) == []


def test_frozen_defaults_are_the_studys(tmp_path):
    """The trainer's defaults are the settings the validation study froze (docs/training.md)."""
    frozen = json.loads((fashion.REPO / "benchmarks" / "results" / "fewshot" / "frozen.json").read_text())
    defaults = T.TrainConfig("", "", "")
    for key, value in frozen["settings"].items():
        assert getattr(defaults, key) == value, key


def test_demos_fourth_panel_is_the_validation_sweeps_best_fidelity():
    """Where the rule froze the authors' formulation, the demo's fourth run is the DDPM-PA variant of the
    highest mean validation fidelity, as frozen.json records it."""
    from benchmarks import fewshot_study
    from ddpm_pa_fast.train import demo

    frozen = json.loads((fashion.REPO / "benchmarks" / "results" / "fewshot" / "frozen.json").read_text())
    candidates = frozen["ddpm_pa_candidates_at_last_step"]
    best = max(candidates, key=lambda variant: candidates[variant]["fidelity"])
    assert frozen["ddpm_pa_variant"] == "base" and not candidates[best]["admissible"]
    assert fewshot_study.VALIDATION_VARIANTS[best][1] == demo.VALIDATION_BEST_FIDELITY
    runs = demo.demo_runs(T.TrainConfig("", "", ""))
    assert list(runs) == ["finetune", "ddpm-pa-published", "ddpm-pa-best-validation"]


# ---- source pretraining (scripts/make_assets.py) ----


def _make_assets_module():
    import importlib.util

    path = fashion.REPO / "scripts" / "make_assets.py"
    spec = importlib.util.spec_from_file_location("make_assets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_source_pretraining_resumes_exactly(tmp_path):
    """An interrupted pretraining continued with --resume ends with the same weights, bit for bit."""
    from safetensors.torch import load_file

    make_assets = _make_assets_module()
    x = torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    common = ["source", "--steps", "4", "--batch-size", "2", "--checkpoint-every", "1", "--threads", "1"]

    def run(name, *extra):
        args = make_assets.build_parser().parse_args(
            [*common, "--out", str(tmp_path / name), "--run-dir", str(tmp_path / f"run-{name}"), *extra]
        )
        make_assets.pretrain_source(x, args.out, args)
        return tmp_path / name / "source_model" / "diffusion_pytorch_model.safetensors"

    straight = load_file(run("straight"))
    run("resumed", "--stop-at", "2")
    assert not (tmp_path / "resumed" / "source_model").exists()
    resumed = load_file(run("resumed", "--resume"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


# ---- sampling ----


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eta=1.5), "eta must be in"),
        (dict(eta=-1.0), "eta must be in"),
        (dict(num_steps=0), "num_steps must be"),
        (dict(batch_size=0), "batch_size must be"),
        (dict(num_images=0), "num_images must be"),
    ],
)
def test_sampling_names_a_bad_argument(tmp_path, kwargs, match):
    from ddpm_pa_fast.train.sampling import sample_images

    from .test_train_common import write_tiny_model

    unet, scheduler = load_model_folder(write_tiny_model(tmp_path / "m"))
    with pytest.raises(ValueError, match=match):
        sample_images(unet, scheduler, **{"num_images": 2, "num_steps": 2, **kwargs})


def test_sample_cli_takes_eta_and_names_a_bad_one(tmp_path, capsys):
    """`ddpm-pa-fast sample --sample-eta 0` is deterministic DDIM; the default (1) adds noise each step."""
    import numpy as np
    from PIL import Image

    from ddpm_pa_fast.train import cli
    from ddpm_pa_fast.train.sampling import sample_images, to_uint8_hwc

    from .test_train_common import write_tiny_model

    model = write_tiny_model(tmp_path / "m")
    unet, scheduler = load_model_folder(model)
    base = ["sample", "--model-dir", str(model), "--num-images", "3", "--sample-steps", "3", "--seed", "5"]
    for eta in ("0", "1"):
        args = [
            *base,
            "--sample-eta",
            eta,
            "--grid",
            str(tmp_path / "g.png"),
            "--images-dir",
            str(tmp_path / eta),
        ]
        assert cli.main(args) == 0
        written = torch.stack(
            [torch.from_numpy(np.array(Image.open(f))) for f in sorted((tmp_path / eta).glob("*.png"))]
        )
        expected = to_uint8_hwc(sample_images(unet, scheduler, 3, 3, seed=5, eta=float(eta)))
        assert torch.equal(written, expected)
    assert not torch.equal(
        sample_images(unet, scheduler, 3, 3, seed=5, eta=0.0), sample_images(unet, scheduler, 3, 3, seed=5)
    )
    for bad in ("2", "-0.5", "one"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*base, "--sample-eta", bad, "--grid", str(tmp_path / "g.png")])
        assert exit_info.value.code == 2
        assert "argument --sample-eta: must be" in capsys.readouterr().err


def test_study_report_writes_tables_and_plots_from_the_run_files(tmp_path, monkeypatch):
    from benchmarks import fewshot_study

    monkeypatch.setattr(fewshot_study, "RESULTS", tmp_path)
    metrics = {key: 0.5 for key, _, _ in study.CURVE_METRICS}
    (tmp_path / "test").mkdir()
    source = {
        "method": "source",
        "seed": -1,
        "step": 0,
        **metrics,
        "fidelity_real": 0.9,
        "kid": 3.0,
        "intra_cluster_diversity": 0.8,
    }
    (tmp_path / "test" / "source.json").write_text(json.dumps({"rows": [source]}))
    runs = (("frozen", "finetune", 1.0, 0.2), ("frozen", "ddpm-pa", 2.0, 0.7), ("lora", "finetune", 2.5, 0.6))
    for variant, method, kid, diversity in runs:
        run = fewshot_study.Run("test", variant, method, 0)
        row = {
            **metrics,
            "method": method,
            "seed": 0,
            "step": 10,
            "kid": kid,
            "intra_cluster_diversity": diversity,
        }
        run.path.write_text(json.dumps({"rows": [{**row, "variant": variant}]}))
    fewshot_study.report("test")
    summary = (tmp_path / "test" / "summary.md").read_text()
    # Fine-tuning at KID 2.0 on its path 3.0 -> 1.0 has diversity (0.8 + 0.2) / 2 = 0.5.
    assert "| 0 | 10 | 2.000 | 0.700 | 0.500 | +0.200 |" in summary
    # A variant's own fine-tuning against that path: at KID 2.5, diversity (3 * 0.8 + 1 * 0.2) / 4 = 0.65.
    assert "### lora: its fine-tuning against fine-tuning's path (frozen)" in summary
    assert "| seed | lora fine-tuning step | lora fine-tuning KID |" in summary
    assert "| 0 | 10 | 2.500 | 0.600 | 0.650 | -0.050 |" in summary
    assert "## Diversity and nearest-shot distance at equal fidelity" in summary
    assert "Fidelity ceiling" in summary
    for name in ("tradeoff.png", "curves-frozen.png", "rows.csv"):
        assert (tmp_path / "test" / name).stat().st_size > 0


def test_study_plans_every_variant_seed_by_seed_and_evaluates_fine_tuning_early(tmp_path, monkeypatch):
    from benchmarks import fewshot_study as FS

    monkeypatch.setattr(FS, "RESULTS", tmp_path)
    runs = FS.planned_runs("validation")
    per_seed = sum(len(methods) for methods, _ in FS.VALIDATION_VARIANTS.values())
    assert [r.seed for r in runs] == [s for s in FS.VALIDATION_SEEDS for _ in range(per_seed)]
    assert len({r.path for r in runs}) == len(runs)
    authors = [r for r in runs if r.variant == "base" and r.method == "ddpm-pa"][0]
    assert (
        dict(authors.overrides)["hf_mse_weighting"] == "x0" and dict(authors.overrides)["pair_max_t"] is None
    )
    assert FS.run_extra_eval_steps(FS.Run("test", "frozen", "finetune", 0)) == FS.FINETUNE_EARLY_EVAL_STEPS
    assert FS.run_extra_eval_steps(FS.Run("test", "frozen", "ddpm-pa", 0)) == ()
    # Before a non-authors' variant is frozen, the test domain runs the frozen settings only; after, the
    # authors' formulation beside them, every run for TEST_STEPS.
    assert {(r.variant, r.method) for r in FS.planned_runs("test")} == {
        ("frozen", "finetune"),
        ("frozen", "ddpm-pa"),
    }
    (tmp_path / "frozen.json").write_text(json.dumps({"ddpm_pa_variant": "eps"}))
    test_runs = FS.planned_runs("test")
    assert ("published", "ddpm-pa") in {(r.variant, r.method) for r in test_runs}
    assert all(dict(r.overrides)["steps"] == FS.TEST_STEPS for r in test_runs)


def test_freeze_applies_the_fidelity_rule(tmp_path, monkeypatch):
    """The admissible variant (fidelity >= the floor) with the most diversity over fine-tuning at equal
    fidelity wins; a more diverse variant below the floor does not."""
    from benchmarks import fewshot_study as FS

    monkeypatch.setattr(FS, "RESULTS", tmp_path)
    rows = [_point("source", -1, 0, 3.0, 0.8, fidelity=0.0)]
    for seed in (0, 1):
        rows += [
            _point("finetune", seed, 100, 1.0, 0.4, "base", fidelity=1.0),
            _point(
                "ddpm-pa", seed, 100, 2.0, 0.79, "base", fidelity=0.05
            ),  # textures: most diverse, off target
            _point("ddpm-pa", seed, 100, 2.0, 0.7, "eps", fidelity=0.6),  # fine-tuning there: 0.8 - 0.4 * 0.6
            _point("ddpm-pa", seed, 100, 2.0, 0.5, "min-snr", fidelity=0.9),
        ]
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "rows.json").write_text(json.dumps({"rows": rows}))
    record = FS.freeze()
    assert record["ddpm_pa_variant"] == "eps"
    candidates = record["ddpm_pa_candidates_at_last_step"]
    assert not candidates["base"]["admissible"] and candidates["min-snr"]["admissible"]
    assert candidates["eps"]["mean_advantage"] == pytest.approx(0.7 - (0.8 - 0.4 * 0.6))
    assert record["settings"]["hf_mse_weighting"] == "eps"
    assert json.loads((tmp_path / "frozen.json").read_text())["ddpm_pa_variant"] == "eps"


def test_study_refuses_results_sampled_another_way(tmp_path, monkeypatch):
    """A run or source row kept from an earlier launch must have been sampled with today's sampler
    (steps and eta): the eta = 0 results must not be mixed into an eta = 1 study."""
    from benchmarks import fewshot_study

    monkeypatch.setattr(fewshot_study, "RESULTS", tmp_path)
    defaults = T.TrainConfig("", "", "")
    run = fewshot_study.Run("validation", "base", "finetune", 0)
    run.path.parent.mkdir(parents=True)
    old = {"sample_steps": defaults.sample_steps}  # written before eta was recorded
    run.path.write_text(json.dumps({"config": old, "rows": []}))
    with pytest.raises(SystemExit, match="eta None"):
        fewshot_study.launch([run], 1)
    source = tmp_path / "validation" / "source.json"
    source.write_text(json.dumps({"rows": [{"sampler_steps": defaults.sample_steps, "sampler_eta": 0.0}]}))
    with pytest.raises(SystemExit, match="source.json was sampled with DDIM steps"):
        fewshot_study.source_rows("validation")
    today = {"sample_steps": defaults.sample_steps, "sample_eta": defaults.sample_eta}
    run.path.write_text(json.dumps({"config": today, "rows": []}))
    fewshot_study.launch([run], 1)  # finished and sampled alike: nothing to run, nothing refused


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sampling_in_chunks_equals_one_batch_and_matches_the_solver_by_hand(tmp_path, eta):
    """Every chunk starts the sampler's schedule afresh (a shared multistep solver once ran off its
    timestep table on the second chunk), a sample's added noise does not depend on its chunk, and the
    result is DDIM with x0 clipping: the starting noise, then each step's noise for all samples, drawn
    from the seed's generator."""
    from diffusers import DDIMScheduler

    from ddpm_pa_fast.train.sampling import sample_images

    from .test_train_common import write_tiny_model

    unet, scheduler = load_model_folder(write_tiny_model(tmp_path / "m"))
    whole = sample_images(unet, scheduler, 5, num_steps=4, seed=3, batch_size=5, eta=eta)
    chunked = sample_images(unet, scheduler, 5, num_steps=4, seed=3, batch_size=2, eta=eta)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    solver = DDIMScheduler.from_config(scheduler.config)
    assert solver.config.clip_sample
    solver.set_timesteps(4)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 8, 8, generator=generator)
    with torch.no_grad():
        for t in solver.timesteps:
            noise = torch.randn(x.shape, generator=generator) if eta else None
            x = solver.step(unet(x, t).sample, t, x, eta=eta, variance_noise=noise).prev_sample
    torch.testing.assert_close(whole, x.clamp(-1, 1), rtol=1e-5, atol=1e-6)
