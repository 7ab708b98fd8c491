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

The rule that picks the frozen settings from the validation sweep, fixed before it ran:
1. learning rate: the one at which plain fine-tuning drifts towards copies of the shots within the run
   (nearest-shot distance and diversity falling), the regime the paper studies; of two that do, the
   smaller;
2. DDPM-PA's options (pair timesteps, weights, HF terms, clipping): the variant with the highest
   intra-cluster diversity at the last step whose KID is at most 1.1x fine-tuning's at that step; the
   base if none beats it.
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
# The test domain is also evaluated at these early steps: fine-tuning crosses most of its KID range within
# the first 250 steps, and the comparison at equal KID reads fine-tuning's path there. Added after the
# validation sweep (which evaluated every 250 steps only); the settings do not depend on it.
TEST_EARLY_EVAL_STEPS = (50, 100, 150)
# Fine-tuning on the test domain reaches KID 0.7-1.0 by step 50: its first steps, where its path crosses
# DDPM-PA's KID, are measured by a second, 50-step run per seed, evaluated at these steps and at 50. The
# trainer's learning rate is constant, so these are the full run's first steps: the step-50 evaluation
# must equal the full run's (recorded as overlap_with_full_run, and kept out of the rows).
TEST_FIRST_STEPS = 50
TEST_FIRST_EVAL_STEPS = (10, 20, 30, 40)
SEEDS = (0, 1, 2)
# The sampler's own error: the source model at these DDIM step counts (`sampler`), and the test domain's
# final models of seed 0 at FINAL_SAMPLER_STEPS beside the study's own (TrainConfig.sample_steps).
SAMPLER_STEPS = (10, 25, 50, 100, 200)
SAMPLER_ETAS = (0.0, 1.0)
FINAL_SAMPLER_STEPS = (100,)

# The validation sweep: a base (the authors' loss weights, no clipping, one t per pair subset) and
# variants that each change it in one respect, run for both methods where the change applies to both.
# Pinned here, so that the sweep reruns the same whatever the defaults became. Name -> (methods, overrides).
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
}
VALIDATION_VARIANTS = {
    "base": (("finetune", "ddpm-pa"), {}),
    "per-sample-t": (("ddpm-pa",), {"pair_timesteps": "per-sample"}),
    "no-hf-terms": (("ddpm-pa",), {"w_hf_pair": 0.0, "w_hf_mse": 0.0}),
    "clip-1": (("ddpm-pa",), {"grad_clip": 1.0}),
    "lr-5e-4": (("finetune", "ddpm-pa"), {"lr": 5e-4}),
    # Added for the eta = 1 re-run, after the eta = 0 study found DDPM-PA held to the source at the
    # authors' pair weights: smaller pair weights let the noise loss adapt more.
    "pair-weights-1": (("ddpm-pa",), {"w_pair": 1.0, "w_hf_pair": 1.0}),
    "pair-weights-0.25": (("ddpm-pa",), {"w_pair": 0.25, "w_hf_pair": 0.25}),
    # The EMA's window: about 100 steps instead of the whole run.
    "ema-0.99": (("ddpm-pa",), {"ema_decay": 0.99}),
}
VALIDATION_SEEDS = (0,)


@dataclasses.dataclass(frozen=True)
class Run:
    split: str
    variant: str
    method: str
    seed: int
    overrides: tuple = ()
    # Names a run that covers only part of the variant's run (its rows keep the variant).
    part: str = ""

    @property
    def path(self) -> Path:
        part = f"--{self.part}" if self.part else ""
        return RESULTS / self.split / f"{self.variant}--{self.method}--seed{self.seed}{part}.json"


def train_defaults():
    """TrainConfig's defaults: the frozen settings and the sampler every evaluation uses."""
    from ddpm_pa_fast.train.trainer import TrainConfig

    return TrainConfig("", "", "")


def planned_runs(split: str) -> list[Run]:
    if split == "test":
        first = (("steps", TEST_FIRST_STEPS),)
        return [Run("test", "frozen", m, s) for s in SEEDS for m in ("finetune", "ddpm-pa")] + [
            Run("test", "frozen", "finetune", s, first, part="first-steps") for s in SEEDS
        ]
    return [
        Run("validation", name, m, s, tuple(sorted({**VALIDATION_BASE, **overrides}.items())))
        for name, (methods, overrides) in VALIDATION_VARIANTS.items()
        for s in VALIDATION_SEEDS
        for m in methods
    ]


def run_extra_eval_steps(run: Run) -> tuple[int, ...]:
    if run.split != "test":
        return ()
    return TEST_FIRST_EVAL_STEPS if run.part == "first-steps" else TEST_EARLY_EVAL_STEPS


def run_sampler_check(run: Run) -> tuple[int, ...]:
    """The final models of the test domain's first seed are evaluated again at FINAL_SAMPLER_STEPS."""
    return FINAL_SAMPLER_STEPS if run.split == "test" and run.seed == SEEDS[0] and not run.part else ()


def run_one(run: Run) -> None:
    """Trains and evaluates one run in this process; writes run.path."""
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
            **dict(run.overrides),
        )
        rows, _ = track_adaptation(
            config,
            evaluator,
            EVAL_EVERY,
            NUM_SAMPLES,
            SAMPLE_SEED,
            run_sampler_check(run),
            run_extra_eval_steps(run),
        )
    for row in rows:
        row["variant"] = run.variant
    record = {"run": dataclasses.asdict(run), "config": dataclasses.asdict(config), "rows": rows}
    if run.part:
        record.update(_overlap_with_full_run(run, rows))
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = run.path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(record, indent=1))
    os.replace(tmp_path, run.path)


def _overlap_with_full_run(run: Run, rows: list[dict]) -> dict:
    """The part run's last evaluation beside the full run's at the same step ({step, metric: [part, full]},
    and whether every metric is equal); that row leaves the part's rows, which the full run has."""
    full = dataclasses.replace(run, overrides=(), part="")
    full_rows = json.loads(full.path.read_text())["rows"] if full.path.exists() else []
    last = rows[-1]
    twin = [r for r in full_rows if r["step"] == last["step"]]
    rows.remove(last)
    if not twin:
        return {"overlap_with_full_run": None}
    from ddpm_pa_fast.train.study import CURVE_METRICS

    keys = [key for key, _, _ in CURVE_METRICS]
    return {
        "overlap_with_full_run": {"step": last["step"], **{k: [last[k], twin[0][k]] for k in keys}},
        "equals_full_run": all(abs(last[k] - twin[0][k]) <= 1e-6 * max(1.0, abs(twin[0][k])) for k in keys),
    }


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


def launch(runs: list[Run], jobs: int) -> None:
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

    run_in_parallel(run_one, [(run,) for run in todo], jobs, on_done=done)


def load_rows(split: str) -> list[dict]:
    rows = []
    for path in sorted((RESULTS / split).glob("*.json")):
        rows.extend(json.loads(path.read_text())["rows"])
    return rows


def report(split: str) -> None:
    from ddpm_pa_fast.train.study import (
        CURVE_METRICS,
        METHOD_LABELS,
        equal_kid_table,
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
    lines = [f"# Few-shot study, {split} domain", ""]
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
            # A DDPM-PA-only variant is compared with fine-tuning at the base settings.
            chosen += [r for r in rows if r.get("variant") == "base" and r["method"] == "finetune"]
        lines += [f"## {variant}", "", markdown_table(chosen), ""]
        plot_curves(chosen, out / f"curves-{variant}.png", f"{split} domain, {variant}")
    lines += [
        "## Diversity at equal KID",
        "",
        "DDPM-PA's last evaluation against fine-tuning's path through (KID, diversity), linear between its "
        "evaluations (source model at step 0), at DDPM-PA's KID; same seed, and fine-tuning at the same "
        "learning rate. Positive: DDPM-PA kept more diversity at that KID. Plot: tradeoff.png.",
        "",
    ]
    for variant in variants:
        if not any(r.get("variant") == variant and r["method"] == "ddpm-pa" for r in rows):
            continue
        has_own = any(r.get("variant") == variant and r["method"] == "finetune" for r in rows)
        lines += [f"### {variant}", "", *equal_kid_table(rows, variant, variant if has_own else "base"), ""]
    plot_tradeoff(rows, out / "tradeoff.png", f"{split} domain: diversity against KID, every evaluation")
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


KID_TOLERANCE = 1.1


def _last(rows: list[dict], variant: str, method: str) -> dict:
    run = [r for r in rows if r.get("variant") == variant and r["method"] == method]
    return max(run, key=lambda r: r["step"])


def _drifts(rows: list[dict], variant: str) -> bool:
    """Fine-tuning drifts towards copies: nearest-shot distance and diversity lower at the last
    evaluation than at the first."""
    run = sorted(
        (r for r in rows if r.get("variant") == variant and r["method"] == "finetune"),
        key=lambda r: r["step"],
    )
    first, last = run[0], run[-1]
    return (
        last["nearest_train_distance"] < first["nearest_train_distance"]
        and last["intra_cluster_diversity"] < first["intra_cluster_diversity"]
    )


def freeze() -> dict:
    """Applies the rule of the module doc to the validation results; writes frozen.json."""
    rows = load_rows("validation")
    lr_variants = sorted(
        (v for v, (methods, o) in VALIDATION_VARIANTS.items() if "finetune" in methods and set(o) <= {"lr"}),
        key=lambda v: VALIDATION_VARIANTS[v][1].get("lr", VALIDATION_BASE["lr"]),
    )
    drifting = [v for v in lr_variants if _drifts(rows, v)]
    lr_variant = drifting[0] if drifting else lr_variants[-1]
    settings = {**VALIDATION_BASE, **VALIDATION_VARIANTS[lr_variant][1]}
    finetune_kid = _last(rows, lr_variant, "finetune")["kid"]
    candidates = {}
    for variant, (methods, overrides) in VALIDATION_VARIANTS.items():
        # Candidates run at the chosen learning rate; the other learning rates were compared above.
        if "ddpm-pa" not in methods or overrides.get("lr", VALIDATION_BASE["lr"]) != settings["lr"]:
            continue
        last = _last(rows, variant, "ddpm-pa")
        candidates[variant] = {
            "intra_cluster_diversity": last["intra_cluster_diversity"],
            "kid": last["kid"],
            "kid_ok": last["kid"] <= KID_TOLERANCE * finetune_kid,
        }
    admissible = [v for v, c in candidates.items() if c["kid_ok"]]
    chosen = (
        max(admissible, key=lambda v: candidates[v]["intra_cluster_diversity"]) if admissible else lr_variant
    )
    settings.update(VALIDATION_VARIANTS[chosen][1])
    record = {
        "settings": settings,
        "learning_rate_from": lr_variant,
        "finetune_drifts": {v: _drifts(rows, v) for v in lr_variants},
        "ddpm_pa_variant": chosen,
        "finetune_kid_at_last_step": finetune_kid,
        "ddpm_pa_candidates_at_last_step": candidates,
        "rule": "lr: the smallest at which fine-tuning drifts (nearest-shot distance and diversity lower at "
        "the last evaluation than at the first); DDPM-PA: the highest diversity at the last step with KID "
        f"<= {KID_TOLERANCE} x fine-tuning's",
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
        launch(planned_runs(split), args.jobs)
        if split == "validation":
            freeze()
    for split in ("validation", "test"):
        report(split)


if __name__ == "__main__":
    main()
