"""LoRA against full fine-tuning: the bytes a run holds and writes, and its step time, side by side.

    python -m benchmarks.bench_lora [--rounds 20] [--threads 1] [--rank 4] [--out benchmarks/results/lora.md]

Measured on the bundled Fashion-MNIST source model (assets/source_model, batch 8 of its validation
shots), through ddpm_pa_fast.train.Trainer, four cases: plain fine-tuning and DDPM-PA, each with every
weight trained and with LoRA (rank --rank, the trainer's default targets). For each case:
- weights held: every distinct parameter tensor of the trainer's models (DDPM-PA without LoRA keeps the
  frozen source beside its trainable copy; LoRA keeps the base once, with its adapters);
- gradients, optimizer state (AdamW's two moments) and EMA: of the trained parameters;
- checkpoint: the size of the file the trainer writes (trained weights, EMA, optimizer, RNG streams);
- the model the run writes: a diffusers model folder, or the LoRA adapter folder;
- step time: Trainer.training_step, the cases interleaved step by step, median and ratio to fine-tuning.
The same accounting (memory_bytes) is then computed for a 552.8M-parameter UNet2DModel built on the
meta device in the configuration of guided-diffusion's 256x256 unconditional model (ADM, Dhariwal &
Nichol 2021, the source model of the DDPM-PA paper's 256x256 experiments: 552,814,086 parameters there),
with LoRA of the same rank on the same default targets; the table checks that the accounting equals
what was measured on the bundled model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch

from benchmarks.bench_train_step import interleaved_step_times, machine
from ddpm_pa_fast.train import adapters, fashion
from ddpm_pa_fast.train import checkpoint as ckpt
from ddpm_pa_fast.train.sampling import load_model_folder
from ddpm_pa_fast.train.trainer import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]
FLOAT32_BYTES = 4
# guided-diffusion's 256x256 unconditional model in diffusers' UNet2DModel terms: 256 channels x
# (1, 1, 2, 2, 4, 4), 2 ResNet blocks per level, attention at 32, 16, 8 with 64-channel heads, ResNet
# up/downsampling, scale-shift norm, learned variance (6 output channels).
ADM_256_CONFIG = dict(
    sample_size=256,
    in_channels=3,
    out_channels=6,
    block_out_channels=(256, 256, 512, 512, 1024, 1024),
    layers_per_block=2,
    down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
    up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
    attention_head_dim=64,
    downsample_type="resnet",
    upsample_type="resnet",
    resnet_time_scale_shift="scale_shift",
)


def lora_parameter_count(unet: torch.nn.Module, rank: int) -> int:
    """Parameters LoRA of `rank` adds on the trainer's default targets: r (in + out) per Linear,
    r (in k_h k_w + out) per Conv2d (PEFT's A and B). Works on the meta device."""
    targets = adapters.default_targets(unet)
    count = 0
    for name, module in unet.named_modules():
        if not any(adapters.matches(name, target) for target in targets):
            continue
        if isinstance(module, torch.nn.Linear):
            count += rank * (module.in_features + module.out_features)
        elif isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            count += rank * (module.in_channels // module.groups * kh * kw + module.out_channels)
    return count


def memory_bytes(base: int, trained: int, method: str, lora: bool) -> dict[str, int]:
    """float32 bytes of a run on a model of `base` parameters, `trained` of them trained (LoRA: the
    adapters' count): weights held, gradients, AdamW state, EMA, and the checkpoint's tensors."""
    if lora:
        held = base + trained
    else:
        held = 2 * base if method == "ddpm-pa" else base
    return {
        "weights": held * FLOAT32_BYTES,
        "gradients": trained * FLOAT32_BYTES,
        "optimizer": 2 * trained * FLOAT32_BYTES,
        "ema": trained * FLOAT32_BYTES,
        # Trained weights, their EMA and AdamW's two moments.
        "checkpoint_tensors": 4 * trained * FLOAT32_BYTES,
        "model_written": trained * FLOAT32_BYTES,
        # What training holds besides activations: weights, gradients, AdamW state, EMA.
        "total": (held + 4 * trained) * FLOAT32_BYTES,
    }


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measured_bytes(trainer: Trainer, folder: Path) -> dict[str, int]:
    """What the trainer holds and writes, after a step (the optimizer state exists)."""
    models = [trainer.adapted] + ([trainer.source] if trainer.source is not None else [])
    weights = {id(p): p for model in models for p in model.parameters()}
    state = trainer.optimizer.state_dict()["state"]
    optimizer = [v for s in state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    checkpoint = ckpt.save_checkpoint(trainer.state_dict(), folder / "checkpoints", trainer.step, 1)
    written = trainer.save_model(folder / ("adapter" if trainer.lora else "model"))
    held = {
        "weights": _bytes(weights.values()),
        "gradients": _bytes(p.grad for p in trainer.trained_parameters if p.grad is not None),
        "optimizer": _bytes(optimizer),
        "ema": _bytes(trainer.ema.shadow),
    }
    return {
        **held,
        "total": sum(held.values()),
        "checkpoint_file": checkpoint.stat().st_size,
        "model_written": sum(f.stat().st_size for f in written.glob("*.safetensors")),
    }


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lora.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    description = machine()

    with tempfile.TemporaryDirectory() as tmp:
        base = TrainConfig(
            str(fashion.SOURCE_MODEL_DIR),
            str(fashion.shots_dir("validation")),
            tmp,
            progress=False,
            save_model=False,
            steps=10**9,
        )
        cases = {
            (method, lora): Trainer(
                dataclasses.replace(base, method=method, lora_rank=args.rank if lora else None)
            )
            for lora in (False, True)
            for method in ("finetune", "ddpm-pa")
        }
        times = interleaved_step_times(cases, args.warmup, args.rounds)
        base_count = sum(p.numel() for p in cases[("finetune", False)].adapted.parameters())
        measured = {
            key: measured_bytes(trainer, Path(tmp) / f"{key[0]}-{key[1]}") for key, trainer in cases.items()
        }
        trained = {key: sum(p.numel() for p in t.trained_parameters) for key, t in cases.items()}

    bundled, _ = load_model_folder(fashion.SOURCE_MODEL_DIR)
    targets = adapters.default_targets(bundled)
    lora_count = lora_parameter_count(bundled, args.rank)
    assert lora_count == trained[("finetune", True)], (lora_count, trained[("finetune", True)])
    plain = statistics.median(times[("finetune", False)])
    name = {False: "full", True: f"LoRA r{args.rank}"}
    rows = [
        "| method | weights trained | trained params | weights held | gradients | AdamW state | EMA | "
        "total held | checkpoint file | model written | median step ms | x full fine-tuning |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (method, lora), m in measured.items():
        computed = memory_bytes(base_count, trained[(method, lora)], method, lora)
        for key in ("weights", "gradients", "optimizer", "ema", "total", "model_written"):
            # The safetensors file adds a small JSON header to the tensors' bytes.
            slack = 64 * 1024 if key == "model_written" else 0
            assert 0 <= m[key] - computed[key] <= slack, (method, lora, key, m[key], computed[key])
        median = statistics.median(times[(method, lora)])
        rows.append(
            f"| {method} | {name[lora]} | {trained[(method, lora)]:,} | {_mib(m['weights'])} | "
            f"{_mib(m['gradients'])} | {_mib(m['optimizer'])} | {_mib(m['ema'])} | {_mib(m['total'])} | "
            f"{_mib(m['checkpoint_file'])} | {_mib(m['model_written'])} | {median * 1e3:.1f} | "
            f"{median / plain:.2f}x |"
        )

    with torch.device("meta"):
        from diffusers import UNet2DModel

        adm = UNet2DModel(**ADM_256_CONFIG)
    adm_count = sum(p.numel() for p in adm.parameters())
    adm_lora = lora_parameter_count(adm, args.rank)
    adm_rows = [
        "| method | weights trained | trained params | weights held | gradients | AdamW state | EMA | "
        "total held | checkpoint tensors | model written |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lora in (False, True):
        for method in ("finetune", "ddpm-pa"):
            count = adm_lora if lora else adm_count
            c = memory_bytes(adm_count, count, method, lora)
            adm_rows.append(
                f"| {method} | {name[lora]} | {count:,} | {_mib(c['weights'])} | {_mib(c['gradients'])} | "
                f"{_mib(c['optimizer'])} | {_mib(c['ema'])} | {_mib(c['total'])} | "
                f"{_mib(c['checkpoint_tensors'])} | "
                f"{_mib(c['model_written'])} |"
            )
    report = "\n".join(
        [
            "# LoRA against full fine-tuning: bytes held and written, step time",
            "",
            f"Measured: the bundled source model ({base_count:,} parameters, 1x32x32), batch 8, fp32, AdamW; "
            f"LoRA rank {args.rank}, alpha {args.rank}, targets {', '.join(targets)} "
            f"(the trainer's default); {args.rounds} timed steps per case after {args.warmup} warm-up, "
            "interleaved. Sizes in MiB unless marked. Activations are not counted (the same forwards and "
            "backwards in both: LoRA adds its rank-r intermediates).",
            f"Machine: {description}.",
            f"Command: `python -m benchmarks.bench_lora --rounds {args.rounds} --threads {args.threads} "
            f"--rank {args.rank}`",
            "",
            *rows,
            "",
            f"Computed (benchmarks/bench_lora.py memory_bytes, which the rows above check against what the "
            f"trainer held): guided-diffusion's 256x256 unconditional UNet as a diffusers UNet2DModel, "
            f"{adm_count:,} parameters, LoRA rank {args.rank} on the same targets ({adm_lora:,} "
            f"parameters, {adm_lora / adm_count:.2%}).",
            "",
            *adm_rows,
            "",
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
