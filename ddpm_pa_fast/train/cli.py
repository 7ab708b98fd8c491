"""`ddpm-pa-fast`: train, sample, evaluate, demo. Run `ddpm-pa-fast <command> --help` for the options."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..prediction import HF_MSE_WEIGHTINGS
from .checkpoint import CheckpointError
from .data import DataError
from .evaluate import DISTANCES
from .sampling import DEFAULT_SAMPLE_ETA, DEFAULT_SAMPLE_STEPS
from .trainer import METHODS, PAIR_TIMESTEPS, PRECISIONS, ConfigError, TrainConfig


def _add_training_options(p: argparse.ArgumentParser) -> None:
    d = TrainConfig("", "", "")
    defaults = {f.name: getattr(d, f.name) for f in d.__dataclass_fields__.values()}
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--steps", type=int, default=defaults["steps"], help="total optimizer steps (default %(default)s)"
    )
    g.add_argument(
        "--batch-size", type=int, default=defaults["batch_size"], help="images per step per process"
    )
    g.add_argument(
        "--lr", type=float, default=defaults["lr"], help="AdamW learning rate (default %(default)s)"
    )
    g.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    g.add_argument(
        "--warmup-steps", type=int, default=defaults["warmup_steps"], help="linear LR warm-up steps"
    )
    g.add_argument("--grad-clip", type=float, default=defaults["grad_clip"], help="max grad norm, 0 = off")
    g.add_argument(
        "--ema-decay", type=float, default=defaults["ema_decay"], help="EMA decay (default %(default)s)"
    )
    g.add_argument("--seed", type=int, default=defaults["seed"])
    g = p.add_argument_group("DDPM-PA loss")
    g.add_argument(
        "--w-pair", type=float, default=defaults["w_pair"], help="weight of pair_img (default %(default)s)"
    )
    g.add_argument(
        "--w-hf-pair",
        type=float,
        default=defaults["w_hf_pair"],
        help="weight of pair_hf (default %(default)s)",
    )
    g.add_argument(
        "--w-hf-mse", type=float, default=defaults["w_hf_mse"], help="weight of hf_mse (default %(default)s)"
    )
    g.add_argument(
        "--hf-mse-weighting",
        default=defaults["hf_mse_weighting"],
        choices=HF_MSE_WEIGHTINGS,
        help="weight w(t) of hf_mse across noise levels: 'x0' = 1, the authors' formulation (its weight in "
        "noise space grows as 1/SNR_t: b_t^2 = 24,777 at t = 999); 'eps' = 1/b_t^2, the HF-MSE of the "
        "predicted noise itself; 'min-snr' = min(SNR_t, gamma), Hang et al. 2023 (default %(default)s)",
    )
    g.add_argument(
        "--min-snr-gamma",
        type=float,
        default=defaults["min_snr_gamma"],
        help="gamma of --hf-mse-weighting min-snr (default %(default)s)",
    )
    g.add_argument(
        "--hf-mse-max-t",
        type=int,
        default=defaults["hf_mse_max_t"],
        help="hf_mse only at t below this (default: every t, as the authors)",
    )
    g.add_argument(
        "--pair-max-t",
        type=int,
        default=defaults["pair_max_t"],
        help="the pair terms only at steps whose pair subset's shared t is below this (default: every t, "
        "as the authors; needs --pair-timesteps shared)",
    )
    g.add_argument(
        "--w-vlb", type=float, default=defaults["w_vlb"], help="weight of L_vlb for learned-variance models"
    )
    g.add_argument(
        "--tau", type=float, default=defaults["tau"], help="softmax temperature of the similarities"
    )
    g.add_argument(
        "--reduction",
        default=defaults["reduction"],
        choices=("mean", "batchmean", "sum"),
        help="reduction of the pair KL terms ('mean' is the authors' nn.KLDivLoss())",
    )
    g.add_argument(
        "--pair-size",
        type=int,
        default=defaults["pair_size"],
        help="samples of each batch in the pairwise terms (the authors' sim_size, default %(default)s)",
    )
    g.add_argument(
        "--pair-timesteps",
        default=defaults["pair_timesteps"],
        choices=PAIR_TIMESTEPS,
        help="one t shared by the pair subset (the authors' text-to-image code) or one per sample (their "
        "unconditional code); default %(default)s",
    )
    g.add_argument(
        "--backend",
        default=defaults["backend"],
        choices=("auto", "torch", "cpu", "cuda", "triton"),
        help="loss implementation ('auto': the fastest built one)",
    )
    g = p.add_argument_group(
        "LoRA (PEFT)",
        "train low-rank adapters on the source model instead of all the weights of a copy: one copy of the "
        "weights, and DDPM-PA's source prediction is the same model with its adapters off",
    )
    g.add_argument(
        "--lora-rank", type=int, default=defaults["lora_rank"], help="LoRA rank r (default: no LoRA)"
    )
    g.add_argument(
        "--lora-alpha",
        type=float,
        default=defaults["lora_alpha"],
        help="LoRA alpha: the update is scaled by alpha / r (default: r)",
    )
    g.add_argument(
        "--lora-dropout", type=float, default=defaults["lora_dropout"], help="dropout on the LoRA input"
    )
    g.add_argument(
        "--lora-targets",
        default=defaults["lora_targets"],
        help="module names (or their last dotted parts) that take adapters, separated by commas; 'auto' "
        "(default): the attention projections to_q, to_k, to_v, to_out.0 (diffusers' LoRA scripts) plus the "
        "ResNet convolutions conv1, conv2 when some UNet block has no attention",
    )
    g = p.add_argument_group("execution")
    g.add_argument(
        "--precision",
        default=defaults["precision"],
        choices=tuple(PRECISIONS),
        help="fp16: autocast + GradScaler with fp32 master weights",
    )
    g.add_argument(
        "--source-precision",
        default="same",
        choices=("same", "fp16", "bf16"),
        help="run the frozen source in half precision (same: follow --precision)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the source and adapted models")
    g.add_argument("--device", default=defaults["device"], help="cpu, cuda, cuda:N (default %(default)s)")
    _add_sampler_options(g)
    g.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def parse_eta(text: str) -> float:
    """argparse type of a DDIM eta: a float in [0, 1], refused before any model is loaded."""
    try:
        eta = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= eta <= 1.0:
        raise argparse.ArgumentTypeError(
            f"must be in [0, 1] (0: deterministic DDIM, 1: ancestral), got {text}"
        )
    return eta


def _add_sampler_options(group) -> None:
    """--sample-steps and --sample-eta, for `train`/`demo` (TrainConfig's fields) and `sample`."""
    group.add_argument(
        "--sample-steps",
        type=int,
        default=DEFAULT_SAMPLE_STEPS,
        help="DDIM steps when sampling (default %(default)s)",
    )
    group.add_argument(
        "--sample-eta",
        type=parse_eta,
        default=DEFAULT_SAMPLE_ETA,
        help="DDIM eta when sampling: 0 deterministic, 1 ancestral (default %(default)s)",
    )


def _add_model_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument(
        "--model-dir",
        required=required,
        help="model folder (a trained model/, or the source model a LoRA adapter was trained on)",
    )
    p.add_argument(
        "--adapter-dir",
        help="a LoRA adapter folder for --model-dir (the <output-dir>/adapter of `train --lora-rank`)",
    )


def _load_model(args):
    """(model, scheduler) of --model-dir, with --adapter-dir on it if given."""
    from .sampling import load_model_folder

    if args.adapter_dir is None:
        return load_model_folder(args.model_dir)
    from .adapters import load_adapted

    return load_adapted(args.model_dir, args.adapter_dir)


def _sample(args, unet, scheduler):
    from .sampling import sample_images

    return sample_images(
        unet.to(args.device), scheduler, args.num_images, args.sample_steps, args.seed, eta=args.sample_eta
    )


def _config(args, **overrides) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    values["progress"] = not args.no_progress
    values.update(overrides)
    return TrainConfig(**values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddpm-pa-fast",
        description="Few-shot adaptation of a diffusers DDPM with the DDPM-PA losses (fused kernels).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,sample,merge,evaluate,demo}")

    p = sub.add_parser(
        "train",
        help="adapt a source model to a few images",
        description="Adapt a diffusers UNet2DModel + DDPMScheduler folder to an image folder. "
        "Launch with torchrun for several processes.",
    )
    p.add_argument("--model-dir", required=True, help="folder with the source UNet2DModel and DDPMScheduler")
    p.add_argument("--data-dir", required=True, help="folder of target images (all one size)")
    p.add_argument("--output-dir", required=True, help="checkpoints/, samples/ and the final model/ go here")
    p.add_argument("--method", default="ddpm-pa", choices=METHODS, help="ddpm-pa or plain finetune")
    _add_training_options(p)
    g = p.add_argument_group("checkpoints and samples")
    g.add_argument(
        "--checkpoint-every", type=int, default=100, help="steps between checkpoints, 0 = end only"
    )
    g.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept (older ones deleted)")
    g.add_argument("--resume", help="checkpoint file, or a checkpoints folder (its newest file)")
    g.add_argument("--sample-every", type=int, default=0, help="steps between PNG sample grids, 0 = never")
    g.add_argument("--num-samples", type=int, default=16, help="images per sample grid")
    g.add_argument(
        "--merge",
        action="store_true",
        help="with --lora-rank: also write <output-dir>/model, the adapters merged into the base (a plain "
        "diffusers model folder); the adapters alone are always written to <output-dir>/adapter",
    )

    p = sub.add_parser(
        "sample",
        help="sample images from a model folder",
        description="Sample with deterministic DDIM from a model folder (a trained model/).",
    )
    _add_model_options(p, required=True)
    p.add_argument("--num-images", type=int, default=16)
    _add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--grid", required=True, help="PNG grid to write")
    p.add_argument("--images-dir", help="also write every image here (for `evaluate`)")

    p = sub.add_parser(
        "merge",
        help="merge a LoRA adapter folder into its base model",
        description="Write the base model with the adapter merged into its weights as a plain diffusers "
        "model folder (UNet2DModel + scheduler), which loads without peft.",
    )
    _add_model_options(p, required=True)
    p.add_argument("--output-dir", required=True, help="the merged model folder to write")

    p = sub.add_parser(
        "evaluate",
        help="diversity and memorisation metrics of samples",
        description="Intra-cluster diversity and mean nearest-training-image distance of a "
        "folder of samples against the training images.",
    )
    p.add_argument("--samples", help="folder of generated images (or sample them: --model-dir)")
    _add_model_options(p, required=False)
    p.add_argument("--num-images", type=int, default=256, help="with --model-dir: images to sample")
    _add_sampler_options(p)
    p.add_argument("--seed", type=int, default=0, help="with --model-dir: the sampling seed")
    p.add_argument("--device", default="cpu", help="with --model-dir: where to sample")
    p.add_argument("--data-dir", required=True, help="folder of training images")
    p.add_argument(
        "--distance",
        default="auto",
        choices=DISTANCES,
        help="classifier: LPIPS's recipe on the bundled Fashion-MNIST classifier (1-channel 32x32 images); "
        "lpips: LPIPS (AlexNet) if its weights are on disk; haar: weights-free; auto: lpips if on disk, "
        "else haar",
    )
    p.add_argument("--json", help="also write the metrics here")

    p = sub.add_parser(
        "demo",
        help="the main job: DDPM-PA vs fine-tuning on 10 real images (bundled)",
        description="Adapt the bundled Fashion-MNIST source model (8 classes) to 10 shots of a held-out "
        "class with plain fine-tuning, with DDPM-PA as published (--hf-mse-weighting x0, no t cut-offs) "
        "and with DDPM-PA at the study's frozen settings (the training defaults below), evaluate each "
        "along the run, sample every model from one noise, and print the table. Writes comparison.png, "
        "curves.png, <model>/samples.png and metrics.json.",
    )
    from .demo import DEFAULT_MODEL_DIR, DEMO_EVAL_EVERY, DEMO_JOBS

    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR), help="the source model folder")
    p.add_argument(
        "--split",
        default="test",
        choices=("test", "validation"),
        help="target domain: test = ankle boot (reported), validation = sandal (settings chosen on it)",
    )
    p.add_argument("--output-dir", default="demo_output")
    p.add_argument("--num-samples", type=int, default=256, help="samples per model and evaluation")
    p.add_argument(
        "--eval-every",
        type=int,
        default=DEMO_EVAL_EVERY,
        help="steps between evaluations (default %(default)s)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=DEMO_JOBS,
        help="adaptation runs in parallel (one thread each; default %(default)s)",
    )
    _add_training_options(p)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .trainer import Trainer

            summary = Trainer(_config(args)).train()
            print(json.dumps(summary, indent=2))
        elif args.command == "sample":
            from .sampling import save_grid, save_images

            images = _sample(args, *_load_model(args))
            print(f"wrote {save_grid(images, args.grid)}")
            if args.images_dir:
                print(f"wrote {len(images)} images to {save_images(images, args.images_dir)}")
        elif args.command == "evaluate":
            from .data import load_images
            from .evaluate import evaluate_samples, get_distance

            if (args.samples is None) == (args.model_dir is None):
                raise ValueError("give --samples (a folder of images) or --model-dir (to sample), not both")
            if args.adapter_dir is not None and args.model_dir is None:
                raise ValueError("--adapter-dir needs --model-dir, the base model it was trained on")
            if args.samples:
                samples, training = load_images(args.samples), load_images(args.data_dir)
            else:
                # The training images at the model's channels and size (refused before sampling if not).
                unet, scheduler = _load_model(args)
                training = load_images(args.data_dir, unet.config.in_channels, unet.config.sample_size)
                samples = _sample(args, unet, scheduler)
            metrics = evaluate_samples(samples, training, get_distance(args.distance))
            print(json.dumps(metrics, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(metrics, indent=2))
        elif args.command == "merge":
            from .adapters import merge

            if args.adapter_dir is None:
                raise ValueError("--adapter-dir is required: the LoRA adapter folder to merge")
            print(f"wrote {merge(args.model_dir, args.adapter_dir, args.output_dir)}")
        else:
            from .demo import run_demo

            config = _config(
                args, method="ddpm-pa", data_dir="", checkpoint_every=0, save_model=False, progress=False
            )
            run_demo(config, args.split, args.num_samples, args.eval_every, jobs=args.jobs)
    except (DataError, ConfigError, CheckpointError, ValueError) as error:
        print(f"ddpm-pa-fast {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
