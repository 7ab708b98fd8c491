"""The few-shot study on Fashion-MNIST: adapt the source model to a held-out class with DDPM-PA and with
plain fine-tuning, and evaluate both along the run. `ddpm-pa-fast demo` and benchmarks/fewshot_study.py
are built on it.

Every evaluation samples `num_samples` images (DDIM, sampling.py) from one fixed starting
noise (so the source, fine-tuned and DDPM-PA models are compared on the same noise), and reports,
against the domain's 10 shots and its 1,000 held-out reference images (fashion.py):
- intra_cluster_diversity / nearest_train_distance with the classifier-LPIPS distance (evaluate.py);
- the same two with the weights-free Haar distance (haar_*), as a cross-check;
- kid / kid_std against the reference set in the classifier's feature space;
- fidelity: the share of samples that a 10-class classifier (trained on every class but the shots,
  assets/fidelity_classifier/) calls the target class with p > 0.5, and fidelity_real, the same share
  for the 1,000 held-out real images of the class (the ceiling). That classifier judges this one share
  and nothing else: the distances and KID use the source classifier, which never saw a target class.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import fashion
from .classifier import load_classifier
from .data import load_images
from .evaluate import ClassifierPerceptualDistance, HaarMultiscaleDistance, evaluate_samples, fidelity, kid
from .sampling import DEFAULT_SAMPLE_ETA, image_grid
from .trainer import TrainConfig, Trainer

# The curves and tables: (metric key, label, higher is better).
CURVE_METRICS = (
    ("fidelity", "fidelity: share called the target class (p > 0.5)", True),
    ("intra_cluster_diversity", "intra-cluster diversity (classifier-LPIPS)", True),
    ("kid", "KID vs held-out images (classifier features)", False),
    ("nearest_train_distance", "nearest-shot distance (classifier-LPIPS)", True),
    ("haar_intra_cluster_diversity", "intra-cluster diversity (Haar, cross-check)", True),
)
METHOD_LABELS = {"source": "source", "finetune": "fine-tuning", "ddpm-pa": "DDPM-PA"}


class DomainEvaluator:
    """The metrics of samples for one target domain ("validation" or "test"), its fixed inputs loaded once."""

    def __init__(
        self,
        split: str,
        classifier_dir: str | Path | None = None,
        fidelity_classifier_dir: str | Path | None = None,
    ):
        self.split = split
        self.shots = load_images(fashion.shots_dir(split), channels=1, size=fashion.IMAGE_SIZE)
        self.domain = fashion.TARGET_DOMAINS[split]
        self.reference = fashion.reference_images(split)
        self.classifier = load_classifier(classifier_dir or fashion.CLASSIFIER_DIR)
        self.distance = ClassifierPerceptualDistance(self.classifier)
        self.haar = HaarMultiscaleDistance()
        self.fidelity_classifier = load_classifier(fidelity_classifier_dir or fashion.FIDELITY_CLASSIFIER_DIR)
        self.label = fashion.CLASS_NAMES.index(self.domain)
        self.fidelity_real = fidelity(self.reference, self.fidelity_classifier, self.label)

    def __call__(self, samples: torch.Tensor) -> dict:
        metrics = evaluate_samples(samples, self.shots, self.distance)
        haar = evaluate_samples(samples, self.shots, self.haar)
        metrics["haar_intra_cluster_diversity"] = haar["intra_cluster_diversity"]
        metrics["haar_nearest_train_distance"] = haar["nearest_train_distance"]
        metrics.update(kid(samples, self.reference, self.classifier))
        metrics["fidelity"] = fidelity(samples, self.fidelity_classifier, self.label)
        metrics["fidelity_real"] = self.fidelity_real
        return metrics


def track_adaptation(
    config: TrainConfig,
    evaluator: DomainEvaluator,
    eval_every: int,
    num_samples: int,
    sample_seed: int,
    final_sample_steps: tuple[int, ...] = (),
    extra_eval_steps: tuple[int, ...] = (),
) -> tuple[list[dict], torch.Tensor]:
    """Trains config (from its source model) and evaluates its EMA weights every eval_every steps and at
    the end. Returns one row per evaluation (method, seed, step, train_seconds without the evaluations,
    metrics) and the samples of the last one (the final model).

    final_sample_steps: sampler step counts at which the final model is evaluated again, from the same
    noise, into the last row's "sampler_check" ({steps: metrics}): does the sampler's own error move the
    comparison?
    extra_eval_steps: steps evaluated besides every eval_every-th (fine-tuning moves most early on)."""
    trainer = Trainer(config)
    rows: list[dict] = []
    last: list[torch.Tensor] = []
    eval_seconds = 0.0
    start = time.perf_counter()

    def on_step(t: Trainer) -> None:
        nonlocal eval_seconds
        if t.step % eval_every and t.step != config.steps and t.step not in extra_eval_steps:
            return
        t0 = time.perf_counter()
        last[:] = [t.sample(num_samples, seed=sample_seed)]
        metrics = evaluator(last[0])
        eval_seconds += time.perf_counter() - t0
        row = {
            "method": config.method,
            "seed": config.seed,
            "step": t.step,
            "train_seconds": time.perf_counter() - start - eval_seconds,
            **metrics,
        }
        if t.step == config.steps:
            row["sampler_check"] = {
                n: evaluator(t.sample(num_samples, seed=sample_seed, num_steps=n)) for n in final_sample_steps
            }
        rows.append(row)
        print(
            f"  {METHOD_LABELS[config.method]} seed {config.seed} step {t.step}: fidelity "
            f"{row['fidelity']:.3f}, diversity "
            f"{row['intra_cluster_diversity']:.4f}, nearest-shot {row['nearest_train_distance']:.4f}, "
            f"KID {row['kid']:.4f} ({row['train_seconds']:.0f} s training, {eval_seconds:.0f} s evaluating)",
            flush=True,
        )

    trainer.train(on_step)
    return rows, last[0]


def source_row(
    model_dir: str,
    evaluator: DomainEvaluator,
    num_samples: int,
    sample_steps: int,
    sample_seed: int,
    sample_eta: float = DEFAULT_SAMPLE_ETA,
):
    """(the step-0 row, the source model's samples (num_samples, C, H, W)): the source model in model_dir
    sampled with sample_images(num_samples, sample_steps, sample_seed, eta=sample_eta) and scored by the
    evaluator; the row records the sampler's steps and eta."""
    from .sampling import load_model_folder, sample_images

    unet, scheduler = load_model_folder(model_dir)
    samples = sample_images(unet, scheduler, num_samples, sample_steps, sample_seed, eta=sample_eta)
    row = {
        "method": "source",
        "seed": -1,
        "step": 0,
        "train_seconds": 0.0,
        "sampler_steps": sample_steps,
        "sampler_eta": sample_eta,
        **evaluator(samples),
    }
    return row, samples


def summarise(rows: list[dict], key: str) -> dict[tuple[str, int], tuple[float, float, int]]:
    """{(method, step): (mean, sample std over seeds, seed count)} of one metric."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["step"]), []).append(row[key])
    out = {}
    for group, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        out[group] = (mean, std, len(values))
    return out


def markdown_table(rows: list[dict], steps: list[int] | None = None) -> str:
    """Mean +- std over seeds of every CURVE_METRICS metric, per method and evaluated step."""
    steps = steps or sorted({r["step"] for r in rows})
    stats = {key: summarise(rows, key) for key, _, _ in CURVE_METRICS}
    header = "| method | step | seeds | " + " | ".join(label for _, label, _ in CURVE_METRICS) + " |"
    lines = [header, "|" + " --- |" * (3 + len(CURVE_METRICS))]
    methods = [m for m in METHOD_LABELS if any(r["method"] == m for r in rows)]
    for method in methods:
        for step in steps:
            if (method, step) not in stats[CURVE_METRICS[0][0]]:
                continue
            cells = []
            for key, _, _ in CURVE_METRICS:
                mean, std, n = stats[key][(method, step)]
                cells.append(f"{mean:.4f} +- {std:.4f}" if n > 1 else f"{mean:.4f}")
            lines.append(f"| {METHOD_LABELS[method]} | {step} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_label(method: str, variant: str | None, named: bool) -> str:
    """ "DDPM-PA (eps)" where a plot holds several variants of a method (named), else "DDPM-PA"."""
    return f"{METHOD_LABELS[method]} ({variant})" if named and variant else METHOD_LABELS[method]


def plot_curves(rows: list[dict], path: str | Path, title: str) -> Path:
    """Each CURVE_METRICS metric against steps: per method (and variant, where a method has several) the
    mean over seeds and its min-max band; the source model's value at step 0 starts every curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = [r for r in rows if r["method"] == "source"]
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.6))
    palettes = {
        "finetune": ["tab:orange", "tab:olive"],
        "ddpm-pa": ["tab:blue", "tab:green", "tab:red", "tab:purple"],
    }
    series = sorted(
        {(r["method"], r.get("variant")) for r in rows if r["method"] in palettes},
        key=lambda mv: (list(palettes).index(mv[0]), str(mv[1])),
    )
    for ax, (key, label, higher_better) in zip(axes, CURVE_METRICS, strict=True):
        for method, variant in series:
            variants = [v for m, v in series if m == method]
            colour = palettes[method][variants.index(variant) % len(palettes[method])]
            runs = [r for r in rows if r["method"] == method and r.get("variant") == variant]
            steps = sorted({r["step"] for r in runs})
            per_step = [[r[key] for r in runs if r["step"] == s] for s in steps]
            if source:
                steps, per_step = [0, *steps], [[source[0][key]], *per_step]
            means = [sum(v) / len(v) for v in per_step]
            seeds = len({r["seed"] for r in runs})
            legend = (
                f"{run_label(method, variant, len(variants) > 1)} ({seeds} seed{'s' if seeds > 1 else ''})"
            )
            ax.plot(steps, means, color=colour, marker="o", ms=3, label=legend)
            ax.fill_between(
                steps, [min(v) for v in per_step], [max(v) for v in per_step], color=colour, alpha=0.2
            )
        if key == "fidelity" and source and "fidelity_real" in source[0]:
            ax.axhline(source[0]["fidelity_real"], color="k", ls=":", lw=1, label="real held-out images")
        ax.set_title(label + (" (higher: better)" if higher_better else " (lower: better)"), fontsize=8)
        ax.set_xlabel("adaptation step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save_figure(fig, path, title, dpi=110)


def trajectory(rows: list[dict], method: str, seed: int, variant: str | None = None) -> list[dict]:
    """One run's evaluations in step order, starting from the source model's row (step 0) when rows
    hold it."""
    run = sorted(
        (
            r
            for r in rows
            if r["method"] == method
            and r["seed"] == seed
            and (variant is None or r.get("variant") == variant)
        ),
        key=lambda r: r["step"],
    )
    return [r for r in rows if r["method"] == "source"][:1] + run


def value_at(path: list[dict], along: str, level: float, key: str) -> float | None:
    """`key` where a run's path through (`along`, `key`), linear between evaluations, first reaches
    `along` = level (None if it never does): what that run had there. KID falls and fidelity rises along
    an adaptation run, not always monotonically, hence the first crossing."""
    for a, b in zip(path, path[1:], strict=False):
        low, high = sorted((a[along], b[along]))
        if low <= level <= high:
            if a[along] == b[along]:
                return max(a[key], b[key])
            w = (level - a[along]) / (b[along] - a[along])
            return (1 - w) * a[key] + w * b[key]
    return None


# The comparisons at an equal level of adaptation: (the level's metric, the metrics compared there).
EQUAL_LEVEL_KEYS = ("intra_cluster_diversity", "nearest_train_distance")
EQUAL_LEVEL_LABELS = {
    "kid": "KID",
    "fidelity": "fidelity",
    "intra_cluster_diversity": "diversity",
    "nearest_train_distance": "nearest-shot distance",
}


def equal_level_differences(
    rows: list[dict],
    along: str,
    variant: str | None = None,
    finetune_variant: str | None = None,
    ours_method: str = "ddpm-pa",
) -> dict[int, dict]:
    """Per seed of `ours_method` (DDPM-PA, or fine-tuning of another variant, e.g. LoRA): its last
    evaluation (of `variant`) and, for each EQUAL_LEVEL_KEYS metric, fine-tuning's value where its path
    (of `finetune_variant`, same seed) reaches the same `along` level (None where it never does)."""
    out = {}
    for seed in sorted(
        {
            r["seed"]
            for r in rows
            if r["method"] == ours_method and (variant is None or r.get("variant") == variant)
        }
    ):
        ours = trajectory(rows, ours_method, seed, variant)[-1]
        path = trajectory(rows, "finetune", seed, finetune_variant)
        out[seed] = {
            "ours": ours,
            "finetune": {key: value_at(path, along, ours[along], key) for key in EQUAL_LEVEL_KEYS},
        }
    return out


def equal_level_table(
    rows: list[dict],
    along: str,
    variant: str | None = None,
    finetune_variant: str | None = None,
    ours_method: str = "ddpm-pa",
) -> list[str]:
    """Markdown lines: per seed, the last evaluation of `ours_method` (of `variant`) beside fine-tuning's
    diversity and nearest-shot distance at the same `along` ("kid" or "fidelity") on fine-tuning's path
    (of `finetune_variant`, same seed): does it keep more at an equal level of adaptation?"""
    level = EQUAL_LEVEL_LABELS[along]
    ours_label = f"{variant} {METHOD_LABELS[ours_method]}" if ours_method == "finetune" else "DDPM-PA"
    header = ["seed", f"{ours_label} step", f"{ours_label} {level}"]
    for key in EQUAL_LEVEL_KEYS:
        name = EQUAL_LEVEL_LABELS[key]
        header += [f"{ours_label} {name}", f"fine-tuning {name} at that {level}", "difference"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    differences: dict[str, list[float]] = {key: [] for key in EQUAL_LEVEL_KEYS}
    for seed, d in equal_level_differences(rows, along, variant, finetune_variant, ours_method).items():
        ours = d["ours"]
        cells = [str(seed), str(ours["step"]), f"{ours[along]:.3f}"]
        for key in EQUAL_LEVEL_KEYS:
            theirs = d["finetune"][key]
            cells.append(f"{ours[key]:.3f}")
            if theirs is None:
                cells += [f"(fine-tuning never reached that {level})", "-"]
            else:
                differences[key].append(ours[key] - theirs)
                cells += [f"{theirs:.3f}", f"{differences[key][-1]:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(len(v) > 1 for v in differences.values()):
        cells = ["mean +- std", "", ""]
        for key in EQUAL_LEVEL_KEYS:
            cells += ["", "", _mean_std(differences[key])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return f"{mean:+.3f} +- {std:.3f}"


def plot_tradeoff(rows: list[dict], path: str | Path, title: str) -> Path:
    """Intra-cluster diversity against KID (left) and against fidelity (right): each run's path from the
    source model through its evaluations (the step at the last point). Up and towards the target (left
    for KID, right for fidelity) is better: more diversity at a level of adaptation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12.0, 4.8))
    runs = sorted({(r.get("variant", ""), r["method"], r["seed"]) for r in rows if r["method"] != "source"})
    variants = {m: sorted({v for v, method, _ in runs if method == m}) for m in ("finetune", "ddpm-pa")}
    # Fine-tuning in warm colours, dashed; DDPM-PA's variants in the others.
    palettes = {
        "finetune": ["tab:orange", "tab:olive", "tab:gray"],
        "ddpm-pa": ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:cyan"],
    }
    named = len(variants["ddpm-pa"]) > 1
    source = [r for r in rows if r["method"] == "source"]
    for ax, along, xlabel in (
        (axes[0], "kid", "KID vs held-out target images (lower: closer to the target)"),
        (axes[1], "fidelity", "fidelity: share called the target class (higher: more on target)"),
    ):
        labelled = set()
        for variant, method, seed in runs:
            run = trajectory(rows, method, seed, variant)
            palette = palettes[method]
            colour = palette[variants[method].index(variant) % len(palette)]
            label = run_label(method, variant, named)
            ax.plot(
                [r[along] for r in run],
                [r["intra_cluster_diversity"] for r in run],
                color=colour,
                marker="o",
                ms=3,
                alpha=0.85,
                ls="-" if method == "ddpm-pa" else "--",
                label=None if label in labelled else label,
            )
            labelled.add(label)
            ax.annotate(
                str(run[-1]["step"]), (run[-1][along], run[-1]["intra_cluster_diversity"]), fontsize=6
            )
        if source:
            ax.plot(source[0][along], source[0]["intra_cluster_diversity"], "k*", ms=10, label="source")
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("intra-cluster diversity (classifier-LPIPS)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _save_figure(fig, path, title, dpi=110)


def _save_figure(fig, path: str | Path, title: str, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def comparison_figure(
    shots: torch.Tensor, panels: dict[str, torch.Tensor], path: str | Path, title: str
) -> Path:
    """The paper's kind of figure: the 10 shots, then one grid per model from the same starting noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(images: torch.Tensor, columns: int):
        return image_grid(images, columns)[..., 0].numpy()

    columns = 8
    fig = plt.figure(figsize=(3.3 * len(panels), 5.0))
    spec = fig.add_gridspec(2, len(panels), height_ratios=[1, 5])
    top = fig.add_subplot(spec[0, :])
    top.imshow(grid(shots, len(shots)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    top.set_title(f"the {len(shots)} training shots", fontsize=9)
    top.axis("off")
    for i, (name, images) in enumerate(panels.items()):
        ax = fig.add_subplot(spec[1, i])
        ax.imshow(grid(images, columns), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    return _save_figure(fig, path, title, dpi=130)


def _one_torch_thread() -> None:
    torch.set_num_threads(1)


def run_in_parallel(function, tasks: list[tuple], jobs: int, on_done=None) -> list:
    """function(*task) for every task in `jobs` spawned worker processes of one torch thread each (in this
    process, as it is, when jobs is 1); results in task order. Few-shot steps and sampling batches are
    small, so on a 2-core machine two one-thread workers do more per second than one two-thread process.
    on_done(task, result, seconds) is called as each finishes; an exception in a worker is raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list = [None] * len(tasks)
    if jobs <= 1:
        started = time.perf_counter()
        for i, task in enumerate(tasks):
            results[i] = function(*task)
            if on_done is not None:
                on_done(task, results[i], time.perf_counter() - started)
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_one_torch_thread) as pool:
        started = time.perf_counter()
        futures = {pool.submit(function, *task): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done is not None:
                on_done(tasks[i], results[i], time.perf_counter() - started)
    return results


def adapt(
    config: TrainConfig,
    split: str,
    eval_every: int,
    num_samples: int,
    sample_seed: int,
    extra_eval_steps: tuple[int, ...] = (),
):
    """Worker entry: track_adaptation of one run on the domain `split`, its evaluator built in the worker."""
    return track_adaptation(
        config,
        DomainEvaluator(split),
        eval_every,
        num_samples,
        sample_seed,
        extra_eval_steps=extra_eval_steps,
    )


__all__ = [
    "CURVE_METRICS",
    "DomainEvaluator",
    "comparison_figure",
    "equal_level_differences",
    "equal_level_table",
    "markdown_table",
    "plot_curves",
    "plot_tradeoff",
    "run_label",
    "source_row",
    "summarise",
    "adapt",
    "run_in_parallel",
    "track_adaptation",
    "trajectory",
    "value_at",
]
