"""The main job: what DDPM-PA keeps that plain fine-tuning loses, on 10 real images.

The bundled source model (a UNet pretrained on 8 Fashion-MNIST classes) is adapted to the 10 shots of
the held-out test class (ankle boots) with plain fine-tuning and with DDPM-PA: the study's frozen
settings (TrainConfig's defaults, chosen on the validation class), one seed, the two runs side by side.
Both are evaluated every `eval_every` steps (study.py lists the metrics), and the three models sample
from one starting noise. Writes in the output folder:
    comparison.png                      the 10 shots and 64 samples of each model, same noise
    curves.png                          diversity, KID and nearest-shot distance against steps
    {source,finetune,ddpm-pa}/samples.png   each model's grid (4x upscaled)
    metrics.json                        every evaluation row and the settings
and prints the table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from . import fashion
from .sampling import save_grid
from .study import (
    METHOD_LABELS,
    DomainEvaluator,
    adapt,
    comparison_figure,
    plot_curves,
    run_in_parallel,
    source_row,
)
from .trainer import TrainConfig

DEFAULT_MODEL_DIR = fashion.SOURCE_MODEL_DIR
SHOWN_SAMPLES = 64
# The study evaluates every 250 steps; the demo every 500, so that it fits in 10 minutes on 2 CPU cores
# (one evaluation: 256 samples x 50 DDIM steps, about 80 s on one core). Its final row equals the study's.
DEMO_EVAL_EVERY = 500


def run_demo(
    base: TrainConfig,
    split: str = "test",
    num_samples: int = 256,
    eval_every: int = DEMO_EVAL_EVERY,
    sample_seed: int = 1234,
    jobs: int = 2,
) -> dict:
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    domain = fashion.TARGET_DOMAINS[split]
    evaluator = DomainEvaluator(split)
    print(
        f"[demo] {split} domain: {domain}, {len(evaluator.shots)} shots; {num_samples} samples per "
        f"evaluation, DDIM {base.sample_steps} steps (eta {base.sample_eta:g}); evaluating the source model",
        flush=True,
    )
    source, source_samples = source_row(
        base.model_dir, evaluator, num_samples, base.sample_steps, sample_seed, base.sample_eta
    )
    rows, samples = [source], {"source": source_samples}

    methods = ("finetune", "ddpm-pa")
    tasks = [
        (
            dataclasses.replace(
                base, method=m, data_dir=str(fashion.shots_dir(split)), output_dir=str(out / m)
            ),
            split,
            eval_every,
            num_samples,
            sample_seed,
        )
        for m in methods
    ]
    print(
        f"[demo] adapting with {' and '.join(METHOD_LABELS[m] for m in methods)} for {base.steps} steps "
        f"({jobs} processes)",
        flush=True,
    )
    results = run_in_parallel(adapt, tasks, jobs)
    for method, (method_rows, final) in zip(methods, results, strict=True):
        rows += method_rows
        samples[method] = final

    for name, images in samples.items():
        save_grid(images[:SHOWN_SAMPLES], out / name / "samples.png", columns=8, scale=4)
    comparison_figure(
        evaluator.shots,
        {METHOD_LABELS[name]: images[:SHOWN_SAMPLES] for name, images in samples.items()},
        out / "comparison.png",
        f"Fashion-MNIST, 10-shot {domain}: the same starting noise for each model ({base.steps} steps)",
    )
    plot_curves(rows, out / "curves.png", f"10-shot {domain}, seed {base.seed} (one run per method)")
    metrics = {
        "split": split,
        "domain": domain,
        "config": {k: v for k, v in dataclasses.asdict(base).items() if k not in ("method", "resume")},
        "num_samples": num_samples,
        "sample_seed": sample_seed,
        "distance": evaluator.distance.name,
        "rows": rows,
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))
    print(
        f"[demo] wrote {out / 'comparison.png'}, {out / 'curves.png'}, {out}/<model>/samples.png and "
        f"{out / 'metrics.json'}"
    )
    return metrics


def format_table(metrics: dict) -> str:
    """The final evaluation of each model."""
    final = {}
    for row in metrics["rows"]:
        final[row["method"]] = row
    lines = [
        f"10-shot {metrics['domain']} ({metrics['split']} domain); {metrics['num_samples']} samples per "
        f"model; distance: {metrics['distance']} (Haar: haar-multiscale-rms); KID in the classifier's "
        "features",
        f"{'model':<12} {'step':>5} {'intra-cluster div.':>18} {'nearest-shot dist.':>18} {'KID':>8} "
        f"{'Haar div.':>9} {'train s':>8}",
    ]
    for method, r in final.items():
        lines.append(
            f"{METHOD_LABELS[method]:<12} {r['step']:>5} {r['intra_cluster_diversity']:>18.4f} "
            f"{r['nearest_train_distance']:>18.4f} {r['kid']:>8.4f} "
            f"{r['haar_intra_cluster_diversity']:>9.4f} {r['train_seconds']:>8.1f}"
        )
    lines.append(
        "higher diversity and nearest-shot distance: fewer copies of the shots; lower KID: closer "
        "to the 1,000 held-out images of the class"
    )
    lines.append(f"total {metrics['wall_seconds']:.0f} s")
    return "\n".join(lines)


__all__ = ["DEFAULT_MODEL_DIR", "format_table", "run_demo"]
