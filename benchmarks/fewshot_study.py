"""The few-shot study: does DDPM-PA keep more diversity than plain fine-tuning on real images?

    python -m benchmarks.fewshot_study                   # the whole study: checks, validation, test
    python -m benchmarks.fewshot_study validation        # the sweep on the validation domain only
    python -m benchmarks.fewshot_study test              # the frozen settings on the test domain only
    python -m benchmarks.fewshot_study sampler           # sampler check: metrics vs sampler steps
    python -m benchmarks.fewshot_study source            # does the source model make clothing?
    python -m benchmarks.fewshot_study report            # tables and plots from the committed JSON

Setting (ddpm_pa_fast/train/fashion.py): the source UNet pretrained on 8 Fashion-MNIST classes is
adapted to 10 shots of a held-out class. Settings are chosen on the validation domain (sandal) only;
the test domain (ankle boot) runs once, with the frozen settings, which are TrainConfig's defaults.
Both methods start from the same source model with the same seeds, steps and settings, and every
evaluation samples the same starting noise (ddpm_pa_fast/train/study.py lists the metrics).

The rule that picks the frozen settings from the validation sweep, fixed in code (freeze()) before the
sweep ran (issue 20's round; the earlier rounds' rule and results are in the git history):
1. the learning rate stays the earlier round's (2e-4, at which fine-tuning drifts towards copies of the
   shots; the sweep records that it still does);
2. a DDPM-PA variant is admissible when the mean over seeds of its fidelity at the last step (the share
   of samples a 10-class classifier calls the target class) is at least FIDELITY_FLOOR: it makes
   target-domain images, not textures;
3. of the admissible variants, the one with the highest mean over seeds of its diversity advantage at
   equal fidelity: its intra-cluster diversity at the last step minus fine-tuning's where fine-tuning's
   path (same seed) reaches the same fidelity. None admissible: the authors' formulation ("base").
benchmarks/results/fewshot/frozen.json records the choice; the trainer's defaults are those settings
(tests/test_fewshot.py checks it).

Runs are independent worker processes, --jobs at a time with one torch thread each (on this 2-core
machine two single-thread runs do more work per second than one two-thread run: the batches are
small). Each run writes one JSON file of rows under benchmarks/results/fewshot/<split>/; a finished
file is not run again, so an interrupted study continues where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "fewshot"

# Evaluation protocol, fixed for the whole study.
NUM_SAMPLES = 256
SAMPLE_SEED = 1234
EVAL_EVERY = 250
VALIDATION_DDPM_PA_EVAL_EVERY = 500
# Fine-tuning crosses most of its fidelity and KID range within its first 150 steps, and the comparisons
# at an equal level of adaptation read its path there: its runs are also evaluated at these steps.
FINETUNE_EARLY_EVAL_STEPS = (10, 25, 50, 100, 150)
# The test domain runs long enough to show whether DDPM-PA plateaus while fine-tuning collapses.
TEST_STEPS = 2000
FIDELITY_FLOOR = 0.5
SEEDS = (0, 1, 2)
# The sampler's own error: the source model at these DDIM step counts (`sampler`), and the test domain's
# final models of seed 0 at FINAL_SAMPLER_STEPS beside the study's own (TrainConfig.sample_steps).
SAMPLER_STEPS = (10, 25, 50, 100, 200)
SAMPLER_ETAS = (0.0, 1.0)
FINAL_SAMPLER_STEPS = (100,)

# The validation sweep: a base (the authors' formulation: their loss weights, HF-MSE weighted 1 in x0
# space at every t, pair terms at every t, one t per pair subset, no clipping) and DDPM-PA variants that
# change how the x0-space terms are weighted across noise levels (docs/ddpm_pa_spec.md, "A defect of the
# formulation itself"): the HF-MSE weighting x the pair terms' t cut-off. Pinned here, so that the
# sweep reruns the same whatever the defaults became. Name -> (methods, overrides).
VALIDATION_BASE = {
    "steps": 1000,
    "batch_size": 8,
    "lr": 2e-4,
    "grad_clip": 0.0,
    "ema_decay": 0.999,
    "w_pair": 4.0,
    "w_hf_pair": 4.0,
    "w_hf_mse": 1.0,
    "pair_size": 3,
    "pair_timesteps": "shared",
    "hf_mse_weighting": "x0",
    "min_snr_gamma": 5.0,
    "hf_mse_max_t": None,
    "pair_max_t": None,
    "lora_rank": None,
}
VALIDATION_VARIANTS = {
    "base": (("finetune", "ddpm-pa"), {}),
    "eps": (("ddpm-pa",), {"hf_mse_weighting": "eps"}),
    "min-snr": (("ddpm-pa",), {"hf_mse_weighting": "min-snr"}),
    "base-pair-max-t-500": (("ddpm-pa",), {"pair_max_t": 500}),
    "eps-pair-max-t-500": (("ddpm-pa",), {"hf_mse_weighting": "eps", "pair_max_t": 500}),
    "min-snr-pair-max-t-500": (("ddpm-pa",), {"hf_mse_weighting": "min-snr", "pair_max_t": 500}),
    # Issue 22: LoRA (rank 4, diffusers' LoRA scripts' default; alpha = rank; TrainConfig's default
    # targets) for both methods, the base's settings otherwise. Low rank may itself brake the copying of
    # the shots; its fine-tuning is recorded beside fine-tuning's path, which the rule still reads.
    "lora-r4": (("finetune", "ddpm-pa"), {"lora_rank": 4}),
}
VALIDATION_SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Run:
    split: str
    variant: str
    method: str
    seed: int
    overrides: tuple = ()

    @property
    def path(self) -> Path:
        return RESULTS / self.split / f"{self.variant}--{self.method}--seed{self.seed}.json"


def train_defaults():
    """TrainConfig's defaults: the frozen settings and the sampler every evaluation uses."""
    from ddpm_pa_fast.train.trainer import TrainConfig

    return TrainConfig("", "", "")


def planned_runs(split: str) -> list[Run]:
    """Seed by seed, so that an interrupted study has every variant at the first seeds."""
    if split == "test":
        steps = (("steps", TEST_STEPS),)
        variants = [("frozen", ("finetune", "ddpm-pa"), steps)]
        if frozen_variant() != "base":
            # The authors' formulation beside the frozen one (the demo's four panels, with seeds).
            published = tuple(sorted({**VALIDATION_BASE, "steps": TEST_STEPS}.items()))
            variants.append(("published", ("ddpm-pa",), published))
        return [
            Run("test", name, m, s, overrides)
            for s in SEEDS
            for name, methods, overrides in variants
            for m in methods
        ]
    return [
        Run("validation", name, m, s, tuple(sorted({**VALIDATION_BASE, **overrides}.items())))
        for s in VALIDATION_SEEDS
        for name, (methods, overrides) in VALIDATION_VARIANTS.items()
        for m in methods
    ]


def frozen_variant() -> str:
    """The validation variant that frozen.json holds ("base" before the sweep has been frozen)."""
    path = RESULTS / "frozen.json"
    return json.loads(path.read_text()).get("ddpm_pa_variant", "base") if path.exists() else "base"


def run_eval_every(run: Run) -> int:
    """EVAL_EVERY, but for DDPM-PA on the validation domain: the rule reads its last step only, and
    half the evaluations (80 s each on one core) keep the sweep's 3 seeds inside a session."""
    return (
        VALIDATION_DDPM_PA_EVAL_EVERY if run.split == "validation" and run.method == "ddpm-pa" else EVAL_EVERY
    )


def run_extra_eval_steps(run: Run) -> tuple[int, ...]:
    return FINETUNE_EARLY_EVAL_STEPS if run.method == "finetune" else ()


def run_sampler_check(run: Run) -> tuple[int, ...]:
    """The final models of the test domain's first seed are evaluated again at FINAL_SAMPLER_STEPS."""
    return FINAL_SAMPLER_STEPS if run.split == "test" and run.seed == SEEDS[0] else ()


def run_one(run: Run, backend: str = "auto") -> None:
    """Trains and evaluates one run in this process with the loss on `backend` (recorded in the run's
    config; the maths is the same on every backend); writes run.path."""
    from ddpm_pa_fast.train import fashion
    from ddpm_pa_fast.train.study import DomainEvaluator, track_adaptation
    from ddpm_pa_fast.train.trainer import TrainConfig

    evaluator = DomainEvaluator(run.split)
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            model_dir=str(fashion.SOURCE_MODEL_DIR),
            data_dir=str(fashion.shots_dir(run.split)),
            output_dir=tmp,
            method=run.method,
            seed=run.seed,
            progress=False,
            save_model=False,
            backend=backend,
            **dict(run.overrides),
        )
        rows, _ = track_adaptation(
            config,
            evaluator,
            run_eval_every(run),
            NUM_SAMPLES,
            SAMPLE_SEED,
            run_sampler_check(run),
            run_extra_eval_steps(run),
        )
    for row in rows:
        row["variant"] = run.variant
    record = {"run": dataclasses.asdict(run), "config": dataclasses.asdict(config), "rows": rows}
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = run.path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(record, indent=1))
    os.replace(tmp_path, run.path)


def source_rows(split: str) -> Path:
    """The source model's metrics on a domain (the step-0 point of every curve)."""
    from ddpm_pa_fast.train import fashion
    from ddpm_pa_fast.train.study import DomainEvaluator, source_row

    path = RESULTS / split / "source.json"
    defaults = train_defaults()
    if path.exists():
        [row] = json.loads(path.read_text())["rows"]
        _refuse_another_sampler(path, row.get("sampler_steps"), row.get("sampler_eta"))
    else:
        row, _ = source_row(
            str(fashion.SOURCE_MODEL_DIR),
            DomainEvaluator(split),
            NUM_SAMPLES,
            defaults.sample_steps,
            SAMPLE_SEED,
            defaults.sample_eta,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rows": [row]}, indent=1))
    return path


def _refuse_another_sampler(path: Path, steps, eta) -> None:
    """A result kept from an earlier launch must have been sampled as this one samples (TrainConfig's
    sample_steps and sample_eta; files written before eta was recorded carry none): the curves and the
    rule compare its numbers with new ones."""

    defaults = train_defaults()
    if (steps, eta) != (defaults.sample_steps, defaults.sample_eta):
        raise SystemExit(
            f"{path} was sampled with DDIM steps {steps}, eta {eta}; this study samples with steps "
            f"{defaults.sample_steps}, eta {defaults.sample_eta}: delete it (and its split's other results) "
            "to re-run"
        )


def launch(runs: list[Run], jobs: int, backend: str = "auto") -> None:
    """Runs the unfinished runs, `jobs` at a time in worker processes of one torch thread each."""
    from ddpm_pa_fast.train.study import run_in_parallel

    for run in runs:
        if run.path.exists():
            config = json.loads(run.path.read_text())["config"]
            _refuse_another_sampler(run.path, config["sample_steps"], config.get("sample_eta"))
    todo = [r for r in runs if not r.path.exists()]
    print(
        f"{len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to run, {jobs} at a time",
        flush=True,
    )

    def done(task, _, seconds):
        run = task[0]
        print(
            f"{run.split}/{run.variant}/{run.method}/seed{run.seed}: done, {seconds:.0f} s into the batch",
            flush=True,
        )

    run_in_parallel(run_one, [(run, backend) for run in todo], jobs, on_done=done)


def load_rows(split: str) -> list[dict]:
    rows = []
    for path in sorted((RESULTS / split).glob("*.json")):
        rows.extend(json.loads(path.read_text())["rows"])
    return rows


def report(split: str) -> None:
    from ddpm_pa_fast.train.study import (
        CURVE_METRICS,
        METHOD_LABELS,
        equal_level_table,
        markdown_table,
        plot_curves,
        plot_tradeoff,
        summarise,
    )

    rows = load_rows(split)
    if not rows:
        print(f"no results for {split} yet")
        return
    source = [r for r in rows if r["method"] == "source"]
    for r in source:
        r.setdefault("variant", "source")
    variants = sorted({r["variant"] for r in rows if r["method"] != "source"})
    out = RESULTS / split
    lines = [
        f"# Few-shot study, {split} domain",
        "",
        f"Fidelity ceiling: the 10-class classifier calls {source[0]['fidelity_real']:.3f} of the 1,000 "
        "held-out real images of the class the target class (p > 0.5)."
        if source
        else "",
        "",
    ]
    last = max(r["step"] for r in rows)
    lines += [
        f"## Every variant at step {last} (mean over seeds)",
        "",
        "| variant | method | " + " | ".join(label for _, label, _ in CURVE_METRICS) + " |",
        "|" + " --- |" * (2 + len(CURVE_METRICS)),
    ]
    for variant in variants:
        chosen = [r for r in rows if r.get("variant") == variant]
        stats = {key: summarise(chosen, key) for key, _, _ in CURVE_METRICS}
        for method in ("finetune", "ddpm-pa"):
            if (method, last) in stats[CURVE_METRICS[0][0]]:
                cells = [f"{stats[key][(method, last)][0]:.4f}" for key, _, _ in CURVE_METRICS]
                lines.append(f"| {variant} | {METHOD_LABELS[method]} | " + " | ".join(cells) + " |")
    lines.append("")
    for variant in variants:
        chosen = source + [r for r in rows if r.get("variant") == variant]
        if not any(r["method"] == "finetune" for r in chosen):
            # A DDPM-PA-only variant is compared with fine-tuning at the same settings' learning rate.
            own = "frozen" if split == "test" else "base"
            chosen += [r for r in rows if r.get("variant") == own and r["method"] == "finetune"]
        lines += [f"## {variant}", "", markdown_table(chosen), ""]
        plot_curves(chosen, out / f"curves-{variant}.png", f"{split} domain, {variant}")
    for along, label in (("fidelity", "fidelity"), ("kid", "KID")):
        lines += [
            f"## Diversity and nearest-shot distance at equal {label}",
            "",
            f"DDPM-PA's last evaluation against fine-tuning's path through ({label}, metric), linear between "
            f"its evaluations (source model at step 0), at DDPM-PA's {label}; same seed, fine-tuning at the "
            f"same learning rate. Positive: DDPM-PA kept more at that {label}. Plot: tradeoff.png.",
            "",
        ]
        for variant in variants:
            if not any(r.get("variant") == variant and r["method"] == "ddpm-pa" for r in rows):
                continue
            finetune = (
                variant
                if any(r.get("variant") == variant and r["method"] == "finetune" for r in rows)
                else None
            )
            finetune = finetune or ("frozen" if split == "test" else "base")
            lines += [f"### {variant}", "", *equal_level_table(rows, along, variant, finetune), ""]
        own_base = "frozen" if split == "test" else "base"
        for variant in variants:
            if variant == own_base or not any(
                r.get("variant") == variant and r["method"] == "finetune" for r in rows
            ):
                continue
            # A variant's own fine-tuning (e.g. LoRA's) against fine-tuning's path at the base settings.
            lines += [
                f"### {variant}: its fine-tuning against fine-tuning's path ({own_base})",
                "",
                *equal_level_table(rows, along, variant, own_base, ours_method="finetune"),
                "",
            ]
    plot_tradeoff(
        rows,
        out / "tradeoff.png",
        f"{split} domain: diversity against KID and against fidelity, every evaluation",
    )
    lines += sampler_check_table(rows)
    (out / "summary.md").write_text("\n".join(lines))
    keys = sorted({k for r in rows for k, v in r.items() if not isinstance(v, (list, dict))})
    with open(out / "rows.csv", "w") as f:
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r.get(k, "")) for k in keys) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'summary.md'}, {out / 'rows.csv'}, curves-*.png and tradeoff.png")


def sampler_check_table(rows: list[dict]) -> list[str]:
    """Markdown lines: the final models' metrics at the study's sampler steps and at FINAL_SAMPLER_STEPS."""
    from ddpm_pa_fast.train.study import CURVE_METRICS, METHOD_LABELS

    checked = [r for r in rows if r.get("sampler_check")]
    if not checked:
        return []
    study_steps = train_defaults().sample_steps
    lines = [
        "## The sampler's own error: final models from the same noise, DDIM steps",
        "",
        "| method | seed | DDIM steps | " + " | ".join(label for _, label, _ in CURVE_METRICS) + " |",
        "|" + " --- |" * (3 + len(CURVE_METRICS)),
    ]
    for r in checked:
        # JSON keeps the step counts as strings.
        extra = sorted(r["sampler_check"].items(), key=lambda item: int(item[0]))
        for steps, metrics in [(study_steps, r), *extra]:
            cells = " | ".join(f"{metrics[key]:.4f}" for key, _, _ in CURVE_METRICS)
            lines.append(f"| {METHOD_LABELS[r['method']]} | {r['seed']} | {steps} | {cells} |")
    return [*lines, ""]


def _drifts(rows: list[dict], variant: str) -> bool:
    """Fine-tuning drifts towards copies: nearest-shot distance and diversity lower at the last
    evaluation than at the first (means over seeds)."""
    from ddpm_pa_fast.train.study import summarise

    steps = sorted({r["step"] for r in rows if r.get("variant") == variant and r["method"] == "finetune"})
    chosen = [r for r in rows if r.get("variant") == variant]
    near, div = summarise(chosen, "nearest_train_distance"), summarise(chosen, "intra_cluster_diversity")
    first, last = ("finetune", steps[0]), ("finetune", steps[-1])
    return near[last][0] < near[first][0] and div[last][0] < div[first][0]


def ddpm_pa_candidates(rows: list[dict]) -> dict[str, dict]:
    """Per DDPM-PA variant: the last step's fidelity (mean over seeds), whether it is admissible, and
    its diversity advantage over fine-tuning at equal fidelity per seed and on average (freeze's rule)."""
    from ddpm_pa_fast.train.study import equal_level_differences

    candidates = {}
    for variant, (methods, _) in VALIDATION_VARIANTS.items():
        if "ddpm-pa" not in methods or not any(
            r.get("variant") == variant and r["method"] == "ddpm-pa" for r in rows
        ):
            continue
        per_seed = equal_level_differences(rows, "fidelity", variant, "base")
        fidelity = [d["ours"]["fidelity"] for d in per_seed.values()]
        advantage = {
            seed: d["ours"]["intra_cluster_diversity"] - d["finetune"]["intra_cluster_diversity"]
            for seed, d in per_seed.items()
            if d["finetune"]["intra_cluster_diversity"] is not None
        }
        mean_fidelity = sum(fidelity) / len(fidelity)
        candidates[variant] = {
            "seeds": sorted(per_seed),
            "step": max(d["ours"]["step"] for d in per_seed.values()),
            "fidelity": mean_fidelity,
            "intra_cluster_diversity": sum(d["ours"]["intra_cluster_diversity"] for d in per_seed.values())
            / len(per_seed),
            "admissible": mean_fidelity >= FIDELITY_FLOOR,
            "diversity_advantage_at_equal_fidelity": advantage,
            "mean_advantage": sum(advantage.values()) / len(advantage) if advantage else None,
        }
    return candidates


def freeze() -> dict:
    """Applies the rule of the module doc to the validation results; writes frozen.json."""
    rows = load_rows("validation")
    candidates = ddpm_pa_candidates(rows)
    admissible = [v for v, c in candidates.items() if c["admissible"] and c["mean_advantage"] is not None]
    chosen = max(admissible, key=lambda v: candidates[v]["mean_advantage"]) if admissible else "base"
    settings = {**VALIDATION_BASE, **VALIDATION_VARIANTS[chosen][1]}
    record = {
        "settings": settings,
        "finetune_drifts": _drifts(rows, "base"),
        "ddpm_pa_variant": chosen,
        "ddpm_pa_candidates_at_last_step": candidates,
        "rule": f"DDPM-PA: of the variants whose mean fidelity at the last step is >= {FIDELITY_FLOOR}, the "
        "highest mean (over seeds) diversity advantage over fine-tuning at equal fidelity (fine-tuning's "
        "path, same seed); none: the authors' formulation (base). lr: 2e-4, kept from the earlier round",
    }
    (RESULTS / "frozen.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return record


def check_defaults_are_frozen() -> None:
    """The test domain runs TrainConfig's defaults: they must be the frozen settings."""

    frozen = json.loads((RESULTS / "frozen.json").read_text())["settings"]
    defaults = train_defaults()
    differ = {k: (getattr(defaults, k), v) for k, v in frozen.items() if getattr(defaults, k) != v}
    if differ:
        raise SystemExit(f"TrainConfig's defaults differ from frozen.json (default, frozen): {differ}")


def sampler_check(split: str, steps_list: list[int], etas: list[float], seeds: list[int]) -> None:
    """Source-model metrics against the number of sampler steps and eta: the sampler's own error, and
    the share of samples the classifier puts in a source class with p > 0.5. Other noise seeds at one
    setting give the spread that 256 samples alone cause, to compare the steps' differences with."""
    from ddpm_pa_fast.train import fashion
    from ddpm_pa_fast.train.evaluate import class_probabilities
    from ddpm_pa_fast.train.study import DomainEvaluator, source_row

    evaluator = DomainEvaluator(split)
    path = RESULTS / "sampler_steps.json"
    # Settings measured before are kept, so that one more costs only its own sampling.
    previous = json.loads(path.read_text())["rows"] if path.exists() else []
    todo = [(n, eta, seed) for eta in etas for n in steps_list for seed in seeds]
    # Rows written before eta and the seed were settings were deterministic DDIM from SAMPLE_SEED.
    for r in previous:
        r.setdefault("sampler_eta", 0.0)
        r.setdefault("sample_seed", SAMPLE_SEED)
    rows = [r for r in previous if (r["sampler_steps"], r["sampler_eta"], r["sample_seed"]) not in todo]
    for n, eta, seed in todo:
        t0 = time.time()
        row, samples = source_row(str(fashion.SOURCE_MODEL_DIR), evaluator, NUM_SAMPLES, n, seed, eta)
        share = (class_probabilities(samples, evaluator.classifier).max(1).values > 0.5).double().mean()
        row.update(
            sampler_steps=n,
            sampler_eta=eta,
            sample_seed=seed,
            source_class_share=share.item(),
            seconds=time.time() - t0,
        )
        rows.append(row)
        # Written after each setting, so that an interrupted check keeps what it measured.
        rows.sort(key=lambda r: (r["sampler_eta"], r["sampler_steps"], r["sample_seed"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"split": split, "machine": platform.processor() or platform.machine(), "rows": rows},
                indent=1,
            )
        )
        print(
            f"eta {eta:g} {n:4d} steps seed {seed}: share in a source class {row['source_class_share']:.3f} "
            f"diversity {row['intra_cluster_diversity']:.4f} KID {row['kid']:.4f} "
            f"nearest {row['nearest_train_distance']:.4f} haar div {row['haar_intra_cluster_diversity']:.4f} "
            f"({row['seconds']:.0f} s)",
            flush=True,
        )


def source_check(num_samples: int = 1000) -> None:
    """The source model on its own domain: over num_samples samples, the share that the classifier puts
    in a source class with probability > 0.5, and KID against the source classes' test images."""
    import torch

    from ddpm_pa_fast.train import fashion
    from ddpm_pa_fast.train.classifier import load_classifier
    from ddpm_pa_fast.train.evaluate import class_probabilities, kid
    from ddpm_pa_fast.train.sampling import load_model_folder, sample_images, save_grid

    defaults = train_defaults()
    classifier = load_classifier(fashion.CLASSIFIER_DIR)
    unet, scheduler = load_model_folder(fashion.SOURCE_MODEL_DIR)
    t0 = time.time()
    samples = sample_images(
        unet, scheduler, num_samples, defaults.sample_steps, seed=SAMPLE_SEED, eta=defaults.sample_eta
    )
    seconds = time.time() - t0
    probabilities = class_probabilities(samples, classifier)
    confident = probabilities.max(1).values > 0.5
    counts = torch.bincount(probabilities.argmax(1)[confident], minlength=len(fashion.SOURCE_CLASSES))
    test = fashion.load_uint8_images(fashion.SOURCE_TEST_FILE)
    real = fashion.to_model_range(test["images"])
    result = {
        "num_samples": num_samples,
        "sampler_steps": defaults.sample_steps,
        "sampler_eta": defaults.sample_eta,
        "sample_seconds": seconds,
        "share_in_a_source_class_p_gt_0.5": confident.double().mean().item(),
        "confident_samples_per_class": dict(zip(fashion.SOURCE_CLASSES, counts.tolist(), strict=True)),
        "kid_vs_source_test": kid(samples, real, classifier),
        # The floor of that KID: real images against real images of the same classes.
        "kid_source_test_halves": kid(real[::2], real[1::2], classifier),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "source_model.json").write_text(json.dumps(result, indent=1))
    save_grid(samples[:100], RESULTS / "source_model_samples.png", columns=10, scale=3)
    print(json.dumps(result, indent=1))


def main(argv=None) -> None:
    from ddpm_pa_fast.train.cli import parse_eta

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what", nargs="?", default="all", choices=("all", "validation", "test", "report", "sampler", "source")
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (default %(default)s)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", "torch", "cpu"),
        help="the loss's backend in every run (default %(default)s; recorded in each run's config)",
    )
    parser.add_argument(
        "--sampler-steps",
        type=int,
        nargs="+",
        default=list(SAMPLER_STEPS),
        help="the sampler check's DDIM step counts (default %(default)s); settings measured before are kept",
    )
    parser.add_argument(
        "--sampler-etas",
        type=parse_eta,
        nargs="+",
        default=list(SAMPLER_ETAS),
        help="the sampler check's DDIM etas (default %(default)s)",
    )
    parser.add_argument(
        "--sampler-seeds",
        type=int,
        nargs="+",
        default=[SAMPLE_SEED],
        help="the sampler check's noise seeds (default %(default)s, the study's)",
    )
    args = parser.parse_args(argv)
    # The source and sampler checks run for "all" unless their results exist already.
    if args.what == "source" or (args.what == "all" and not (RESULTS / "source_model.json").exists()):
        source_check()
    if args.what == "sampler" or (args.what == "all" and not (RESULTS / "sampler_steps.json").exists()):
        sampler_check("validation", args.sampler_steps, args.sampler_etas, args.sampler_seeds)
    if args.what in ("source", "sampler"):
        return
    splits = {"all": ("validation", "test"), "validation": ("validation",), "test": ("test",), "report": ()}
    for split in splits[args.what]:
        if split == "test":
            check_defaults_are_frozen()
        source_rows(split)
        launch(planned_runs(split), args.jobs, args.backend)
        if split == "validation":
            freeze()
    for split in ("validation", "test"):
        report(split)


if __name__ == "__main__":
    main()
