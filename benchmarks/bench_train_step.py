"""Time of one training step: DDPM-PA against plain fine-tuning of the same model, side by side.

    python benchmarks/bench_train_step.py [--rounds 10] [--threads 2] [--compile]
        [--out benchmarks/results/train_step.md]

Setting of the issue's figures: a 6.5 M-parameter UNet2DModel (block_out_channels (64, 128, 128), two
layers per block, attention at the lowest resolution), batch 8x3x32x32, fp32, AdamW, on CPU. Cases,
all through ddpm_pa_fast.train.Trainer.training_step (data, noise, forwards, loss, backward, step, EMA):
- finetune: the plain DDPM loss, the baseline;
- authors' way: DDPM-PA with the source run as the authors' code does (train mode, gradients on) and
  the unfused loss (backend "torch");
- frozen + unfused: source in eval/inference mode, backend "torch";
- frozen + fused: source in eval/inference mode, backend "auto" (the fastest built kernels);
- frozen bf16 source + fused: the same with the source's weights in bfloat16 (--source-precision bf16).
Cases are interleaved step by step in every round so that load changes on a shared machine hit all
of them alike; the table reports medians and the ratio to finetune, and, for each case, what its source
model's forwards were (mode, autograd, rows, dtype), recorded by a forward hook: the proof that a row
times the path it names (tests/test_benchmarks.py checks each case's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from typing_extensions import override

from ddpm_pa_fast.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


class AuthorsWayTrainer(Trainer):
    """The source forward as published: on the whole batch, in train mode, with autograd on (its output
    is detached by the loss); the pair rows are taken from it afterwards."""

    def __init__(self, config):
        super().__init__(config)
        self.source.train().requires_grad_(True)

    @override
    def source_prediction(self, x_t, t, rows):
        with self._autocast():
            return self.source_forward(x_t, t).sample[:, : self.channels].float()[rows]


def record_source_forwards(trainer: Trainer) -> list[dict]:
    """A list that each forward of trainer's source model appends to: its mode, whether autograd
    recorded it, its batch rows and its weights' dtype."""
    seen: list[dict] = []

    def hook(module, args, output):
        seen.append(
            {
                "training": module.training,
                "grad": output.sample.requires_grad,
                "rows": args[0].shape[0],
                "dtype": str(next(module.parameters()).dtype).removeprefix("torch."),
            }
        )

    if trainer.source is not None:
        trainer.source.register_forward_hook(hook)
    return seen


def describe_source_forwards(seen: list[dict]) -> str:
    """One line for the table: the distinct kinds of source forward a case ran."""
    if not seen:
        return "none"
    kinds = sorted({(s["training"], s["grad"], s["rows"], s["dtype"]) for s in seen})
    return "; ".join(
        f"{'train' if training else 'eval'}, {'grad' if grad else 'no grad'}, {rows} rows, {dtype}"
        for training, grad, rows, dtype in kinds
    )


def build_cases(base: TrainConfig) -> dict[str, Trainer]:
    """The table's cases, by name (module doc)."""
    return {
        "finetune": Trainer(dataclasses.replace(base, method="finetune")),
        "authors' way (source with grad, train mode; unfused loss)": AuthorsWayTrainer(
            dataclasses.replace(base, backend="torch")
        ),
        "frozen source + unfused loss (backend torch)": Trainer(dataclasses.replace(base, backend="torch")),
        "frozen source + fused loss (backend auto)": Trainer(dataclasses.replace(base, backend="auto")),
        "frozen bf16 source + fused loss (backend auto)": Trainer(
            dataclasses.replace(base, backend="auto", source_precision="bf16")
        ),
    }


def interleaved_step_times(cases: dict, warmup: int, rounds: int) -> dict[object, list[float]]:
    """Seconds of Trainer.training_step per case, the cases taking turns step by step (so that load
    changes on a shared machine hit all of them alike); `warmup` rounds untimed first."""
    times = {name: [] for name in cases}
    for round_index in range(warmup + rounds):
        for name, trainer in cases.items():
            start = time.perf_counter()
            trainer.training_step()
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def make_setting(folder: Path, batch: int) -> tuple[str, str]:
    from diffusers import DDPMScheduler, UNet2DModel
    from PIL import Image

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        block_out_channels=(64, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    )
    model_dir, data_dir = folder / "model", folder / "data"
    unet.save_pretrained(model_dir)
    DDPMScheduler(num_train_timesteps=1000).save_pretrained(model_dir)
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(batch + 2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(data_dir / f"{i:02d}.png")
    return str(model_dir), str(data_dir)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    return (
        f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average at start {load[0]:.2f}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the models in every case")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_step.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    description = machine()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir, data_dir = make_setting(Path(tmp), args.batch)
        base = TrainConfig(
            model_dir,
            data_dir,
            str(Path(tmp) / "out"),
            batch_size=args.batch,
            progress=False,
            save_model=False,
            compile=args.compile,
            steps=10**9,
        )
        cases = build_cases(base)
        forwards = {name: record_source_forwards(trainer) for name, trainer in cases.items()}
        n_params = sum(p.numel() for p in cases["finetune"].adapted.parameters())
        times = interleaved_step_times(cases, args.warmup, args.rounds)

    plain = statistics.median(times["finetune"])
    rows = [
        "| case | loss backend | source forwards seen | median ms | p20-p80 ms | x plain |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in times.items():
        q = np.quantile(values, [0.2, 0.8]) * 1e3
        median = statistics.median(values)
        backend = "-" if name == "finetune" else cases[name].loss_backend
        rows.append(
            f"| {name} | {backend} | {describe_source_forwards(forwards[name])} | {median * 1e3:.0f} | "
            f"{q[0]:.0f}-{q[1]:.0f} | {median / plain:.2f}x |"
        )
    report = "\n".join(
        [
            "# One training step: DDPM-PA vs plain fine-tuning",
            "",
            f"UNet2DModel with {n_params / 1e6:.2f} M parameters, batch {args.batch}x3x32x32, fp32, AdamW, "
            f"compile={args.compile}; {args.rounds} timed steps per case after {args.warmup} warm-up, "
            "interleaved.",
            f"Machine: {description}.",
            "Command: `python benchmarks/bench_train_step.py "
            f"--rounds {args.rounds} --threads {args.threads}{' --compile' if args.compile else ''}`",
            "",
            *rows,
            "",
            "Target: DDPM-PA (frozen source + fused loss) at most 1.15x plain.",
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
