"""The embedded default: adapt the bundled source model to the bundled 10-shot target set with DDPM-PA and
with plain fine-tuning, sample both (and the source model) from the same noise, and compare.

Writes <output>/<method>/samples.png (grid), <output>/<method>/images/*.png, <output>/target.png and
<output>/metrics.json, and prints a table.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from .data import load_images
from .evaluate import evaluate_samples, get_distance, hf_energy
from .sampling import load_model_folder, sample_images, save_grid, save_images
from .trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / "assets" / "source_model"
DEFAULT_DATA_DIR = REPO / "assets" / "target_10shot"


def run_demo(
    base: TrainConfig, num_samples: int, sample_seed: int = 1234, distance_kind: str = "auto"
) -> dict:
    out = Path(base.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_images = load_images(base.data_dir)
    save_grid(train_images, out / "target.png", columns=len(train_images))
    distance = get_distance(distance_kind)
    results = {}

    unet, scheduler = load_model_folder(base.model_dir)
    t0 = time.perf_counter()
    samples = sample_images(unet.to(base.device), scheduler, num_samples, base.sample_steps, sample_seed)
    results["source"] = {"train_seconds": 0.0, "sample_seconds": time.perf_counter() - t0}
    save_grid(samples, out / "source" / "samples.png")
    results["source"].update(evaluate_samples(samples, train_images, distance))

    for method in ("ddpm-pa", "finetune"):
        config = dataclasses.replace(base, method=method, output_dir=str(out / method))
        trainer = Trainer(config)
        summary = trainer.train()
        t0 = time.perf_counter()
        samples = trainer.sample(num_samples, seed=sample_seed)
        summary["sample_seconds"] = time.perf_counter() - t0
        save_grid(samples, out / method / "samples.png")
        save_images(samples, out / method / "images")
        summary.update(evaluate_samples(samples, train_images, distance))
        results[method] = summary

    metrics = {
        "config": {k: v for k, v in dataclasses.asdict(base).items() if k not in ("method", "resume")},
        "num_samples": num_samples,
        "sample_seed": sample_seed,
        "distance": distance.name,
        "target_hf_energy": hf_energy(train_images),
        "results": results,
        "wall_seconds": time.perf_counter() - start,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))
    print(f"wrote {out / 'metrics.json'} and sample grids in {out}/<model>/samples.png")
    return metrics


def format_table(metrics: dict) -> str:
    lines = [
        f"distance: {metrics['distance']}; {metrics['num_samples']} samples per model; "
        f"target set HF energy {metrics['target_hf_energy']:.4f}",
        f"{'model':<10} {'intra-cluster div.':>18} {'nearest-train dist.':>19} {'HF energy':>10} "
        f"{'train s':>8}",
    ]
    for name, r in metrics["results"].items():
        lines.append(
            f"{name:<10} {r['intra_cluster_diversity']:>18.4f} {r['nearest_train_distance']:>19.4f} "
            f"{r['hf_energy']:>10.4f} {r['train_seconds']:>8.1f}"
        )
    lines.append(f"total {metrics['wall_seconds']:.0f} s")
    return "\n".join(lines)


__all__ = ["DEFAULT_DATA_DIR", "DEFAULT_MODEL_DIR", "format_table", "run_demo"]
