"""The DDPM-PA trainer: a frozen diffusers source model, its trainable copy, and the fused DDPM-PA loss.

One step (method "ddpm-pa"), after the authors' training_fewshot_losses (docs/ddpm_pa_spec.md):
    t ~ U{0..T-1}, noise ~ N(0, I) per sample; x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise
    pred_src = source(x_t, t)       (frozen: eval mode, inference mode, not in the optimizer, never DDP)
    pred_ada = adapted(x_t, t)
    a_t, b_t, target = loss_coefficients(scheduler, x0, noise, t)    (the scheduler's prediction_type:
        the noise for epsilon, v for v_prediction; x0 = a_t x_t - b_t pred either way)
    loss = mse + w_hf_mse hf_mse    over the whole batch
         + w_pair pair_img + w_hf_pair pair_hf    over a pair subset of --pair-size samples
         (+ w_vlb L_vlb with the mean detached, for a learned-variance model)
hf_mse is weighted per sample by w(t) of --hf-mse-weighting (prediction.hf_mse_weights; "x0", weight 1,
is the authors' formulation, whose weight in noise space grows as 1/SNR_t), and the pair terms are
left out at steps whose pair t is at or above --pair-max-t.
The authors draw the subset (sim_size = 3) with numpy's global RNG; here a seeded torch.Generator that
the checkpoints save. To reuse the fused kernel for the pair terms, DDPMPALoss runs on the subset S of
k samples with the pair weights scaled by N / k, and the plain terms run on the rest R:
    (k / N) * DDPMPALoss_S  +  ((N - k) / N) * (mse_R + w_hf_mse hf_mse_R)
  = mse + w_hf_mse hf_mse (means over all N samples) + w_pair pair_img_S + w_hf_pair pair_hf_S,
which is the authors' total exactly (every sample has the same number of elements). Method "finetune"
is the plain DDPM loss mse (+ L_vlb) of the same model: the comparison baseline.

With --lora-rank the trainer holds one copy of the source's weights: PEFT LoRA adapters on the source
model are what trains (optimizer, EMA, clipping and checkpoints hold them alone), and pred_src is the same
module with its adapters off (ddpm_pa_fast.adapters_off), which is the source model bit for bit. The run
writes the adapters as a PEFT adapter folder (train/adapters.py). Plain fine-tuning without LoRA trains
the loaded model itself: it reads no source prediction, so no frozen copy is kept.

Under fp16, GradScaler skips the optimizer update when the gradients overflow. A skipped update is not a
step: the step count (and so --steps and every cadence), the LR schedule and the EMA advance only on
applied updates; skipped_steps counts the others, and checkpoints keep it with the scaler's state.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .. import DDPMPALoss, adapters_off, backend_name, ddpm_pa_high_frequency
from .. import prediction as P
from .._nvtx import annotate
from . import adapters
from . import checkpoint as ckpt
from .data import BatchStream, DataError, load_images
from .diffusion import LEARNED_VARIANCE_TYPES, NoiseSchedule
from .ema import EMA
from .sampling import DEFAULT_SAMPLE_ETA, DEFAULT_SAMPLE_STEPS, load_model_folder, sample_images, save_grid

METHODS = ("ddpm-pa", "finetune")
# DDPM-PA as published (Zhu et al. 2022, and the authors' code): the HF-MSE term weighted 1 in x0 space at
# every t, the pair terms at every t. TrainConfig's other DDPM-PA settings are theirs too.
AUTHORS_FORMULATION = {"hf_mse_weighting": "x0", "hf_mse_max_t": None, "pair_max_t": None}
PAIR_TIMESTEPS = ("shared", "per-sample")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# GradScaler halves its scale on every skipped update: ~150 in a row take 2**16 below float32's smallest
# number, so 1000 in a row means gradients that no scale makes finite, not a scale still settling.
MAX_CONSECUTIVE_SKIPPED_STEPS = 1000


# What --resume does with a setting that differs from the checkpoint's (docs/training.md, "Resuming"):
# these are refused before any step, with the reason; every other setting applies from the resumed step
# on and is logged as changed ("resume" itself, the checkpoint's path, is not a setting of the run).
RESUME_REFUSED = {
    "model_dir": "the checkpoint's weights, optimizer state and EMA are those of its source model",
    "method": "the run would be neither method",
    "seed": "the run continues the checkpoint's random streams, so a new seed would be ignored",
    "precision": "the fp32 master weights and the GradScaler state are the checkpoint's precision's",
    "lora_rank": "the checkpoint's trained weights are its adapters' (or the whole model's), of their shapes",
    "lora_alpha": "the adapters' weights were trained at the checkpoint's scale alpha / rank",
    "lora_targets": "the checkpoint's adapters sit on its target modules",
}


class ConfigError(ValueError):
    """A training setting is out of range; the message names the option."""


@dataclass
class TrainConfig:
    model_dir: str
    data_dir: str
    output_dir: str
    method: str = "ddpm-pa"
    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 0.0
    w_pair: float = 4.0
    w_hf_pair: float = 4.0
    w_hf_mse: float = 1.0
    tau: float = 1.0
    reduction: str = "mean"
    pair_size: int = 3
    pair_timesteps: str = "shared"
    # The HF-MSE term's weight across noise levels (prediction.hf_mse_weights): "x0" is the authors'
    # formulation; hf_mse_max_t drops the term at t >= it, pair_max_t the pair terms (None: never).
    hf_mse_weighting: str = "x0"
    min_snr_gamma: float = P.DEFAULT_MIN_SNR_GAMMA
    hf_mse_max_t: int | None = None
    pair_max_t: int | None = None
    w_vlb: float = 1.0
    backend: str = "auto"
    precision: str = "fp32"
    source_precision: str = "same"
    compile: bool = False
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    sample_every: int = 0
    num_samples: int = 16
    sample_steps: int = DEFAULT_SAMPLE_STEPS
    sample_eta: float = DEFAULT_SAMPLE_ETA
    resume: str | None = None
    device: str = "cpu"
    progress: bool = True
    save_model: bool = True
    # LoRA (train/adapters.py): None trains every weight of a copy of the source; a rank trains PEFT LoRA
    # adapters on the source model itself, whose adapters-off prediction is then the frozen source.
    lora_rank: int | None = None
    lora_alpha: float | None = None  # None: the rank (scale alpha / rank = 1)
    lora_dropout: float = 0.0
    lora_targets: str = "auto"
    merge: bool = False

    def validate(self) -> None:
        def positive_int(name, minimum=1):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}"
                )

        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.pair_timesteps not in PAIR_TIMESTEPS:
            raise ConfigError(
                f"--pair-timesteps must be one of {', '.join(PAIR_TIMESTEPS)}, got {self.pair_timesteps!r}"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.source_precision not in ("same", "fp16", "bf16"):
            raise ConfigError(f"--source-precision must be same, fp16 or bf16, got {self.source_precision!r}")
        for name in ("steps", "batch_size", "num_samples", "sample_steps"):
            positive_int(name)
        for name in ("warmup_steps", "checkpoint_every", "keep_checkpoints", "sample_every"):
            positive_int(name, 0)
        positive_int("pair_size", 2)
        if self.hf_mse_weighting not in P.HF_MSE_WEIGHTINGS:
            raise ConfigError(
                f"--hf-mse-weighting must be one of {', '.join(P.HF_MSE_WEIGHTINGS)}, "
                f"got {self.hf_mse_weighting!r}"
            )
        if not 0 < self.min_snr_gamma < math.inf:
            raise ConfigError(f"--min-snr-gamma must be a finite number > 0, got {self.min_snr_gamma!r}")
        for name in ("hf_mse_max_t", "pair_max_t"):
            if getattr(self, name) is not None:
                positive_int(name)
        if self.pair_max_t is not None and self.pair_timesteps != "shared":
            raise ConfigError(
                "--pair-max-t needs --pair-timesteps shared: it switches the pair terms by the pair "
                "subset's one t"
            )
        if self.method == "ddpm-pa" and self.pair_size > self.batch_size:
            raise ConfigError(
                f"--pair-size ({self.pair_size}) must not exceed --batch-size ({self.batch_size}): the pair "
                "subset is drawn from each batch"
            )
        for name in ("lr", "tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip", "w_vlb"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"--ema-decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.sample_eta <= 1.0:
            raise ConfigError(f"--sample-eta must be in [0, 1], got {self.sample_eta!r}")
        if self.lora_rank is not None:
            positive_int("lora_rank")
        elif self.merge:
            raise ConfigError("--merge needs --lora-rank: it merges the trained adapters into the base")
        elif (self.lora_alpha, self.lora_dropout, self.lora_targets) != (None, 0.0, "auto"):
            raise ConfigError("--lora-alpha, --lora-dropout and --lora-targets need --lora-rank")
        if self.lora_alpha is not None and not 0 < self.lora_alpha < math.inf:
            raise ConfigError(f"--lora-alpha must be a finite number > 0, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout!r}")
        if self.lora_rank is not None and self.source_precision != "same":
            raise ConfigError(
                "--source-precision needs full fine-tuning: with --lora-rank the source model is the "
                "adapted model's own base weights, which run at --precision"
            )


def _world() -> tuple[int, int, int]:
    """(rank, local_rank, world_size), initialising torch.distributed when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not dist.is_initialized():
        backend = (
            "nccl"
            if torch.cuda.is_available() and os.environ.get("DDPM_PA_DIST_BACKEND") != "gloo"
            else "gloo"
        )
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size()
    return 0, 0, 1


def _numpy_state_to_plain(state):
    # Checkpoints load with weights_only=True, which refuses numpy arrays; a tensor and ints pass.
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _numpy_state_from_plain(state):
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


class Trainer:
    """Adapts the source model in config.model_dir to the images in config.data_dir. See the module doc."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = c = config
        self.rank, local_rank, self.world_size = _world()
        self.is_main = self.rank == 0
        device = torch.device(c.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", local_rank)
        self.device = device

        base, scheduler = load_model_folder(c.model_dir)
        self.scheduler = scheduler
        self.channels = base.config.in_channels
        self.learned_variance = self._check_variance(base, scheduler)
        self.prediction_type, tables = self._loss_coefficient_tables(scheduler, c.model_dir)
        # Made once, on the device: each step only indexes them (prediction.coefficients_at).
        self.loss_tables = [table.to(device=device, dtype=torch.float32) for table in tables]
        self.hf_mse_weight_table = self._hf_mse_weight_table(scheduler, c)
        min_count = c.pair_size if c.method == "ddpm-pa" else 1
        # Bad data stops here, before any model is copied or any step is taken.
        self.images = load_images(c.data_dir, self.channels, base.config.sample_size, min_count).to(device)
        try:
            self.lora_targets = (
                None if c.lora_rank is None else adapters.resolve_targets(base, c.lora_targets)
            )
        except ValueError as error:
            raise ConfigError(str(error)) from error

        torch.manual_seed(c.seed + self.rank)
        base.to(device).eval().requires_grad_(False)
        # self.source: the frozen source model where it is a model of its own (DDPM-PA without LoRA).
        self.lora = c.lora_rank is not None
        self.source = None
        if self.lora:
            # One copy of the weights: the adapted model is the base with adapters, and DDPM-PA's source
            # prediction is the same module with its adapters off (source_prediction).
            alpha = c.lora_alpha if c.lora_alpha is not None else c.lora_rank
            self.adapted = adapters.add_lora(base, c.lora_rank, alpha, c.lora_dropout, self.lora_targets)
            self.adapted.train()
        elif c.method == "ddpm-pa":
            # The source stays frozen beside its trainable copy.
            self.source = base
            self.adapted = copy.deepcopy(base).train().requires_grad_(True)
        else:
            # Plain fine-tuning reads no source prediction: the one copy trains.
            self.adapted = base.train().requires_grad_(True)
        # What the optimizer, the EMA, gradient clipping and the checkpoints hold.
        self.trained_parameters = [p for p in self.adapted.parameters() if p.requires_grad]
        if self.source is not None and c.source_precision != "same":
            # The frozen source needs no fp32 master copy: half weights halve its forward's memory traffic.
            self.source.to(PRECISIONS[c.source_precision])
        self.schedule = NoiseSchedule(scheduler, device)

        self.optimizer = torch.optim.AdamW(self.trained_parameters, lr=c.lr, weight_decay=c.weight_decay)
        warmup = c.warmup_steps
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.autocast_dtype = PRECISIONS[c.precision]
        self.scaler = torch.amp.GradScaler(device.type, enabled=c.precision == "fp16")
        # GradScaler.step calls optimizer.step only when the gradients are finite: this hook is how a
        # step learns whether its update was applied (a public API; no reading of the scaler's internals).
        self._update_applied = False
        self.optimizer.register_step_post_hook(self._mark_update_applied)
        self.ema = EMA(self.trained_parameters, c.ema_decay)

        self.batches = BatchStream(len(self.images), c.batch_size, c.seed, self.rank, self.world_size)
        self.noise_generator = torch.Generator().manual_seed(c.seed * 1_000_003 + 1 + self.rank)
        self.pair_generator = torch.Generator().manual_seed(c.seed * 1_000_003 + 2 + self.rank)
        self.step = 0
        self.skipped_steps = 0
        self._consecutive_skipped_steps = 0

        k, n = c.pair_size, c.batch_size
        # Pair weights scaled by N / k: see the module doc for why this reproduces the authors' total.
        self.pa_loss = DDPMPALoss(
            c.w_pair * n / k, c.w_hf_pair * n / k, c.w_hf_mse, c.tau, c.reduction, backend=c.backend
        )
        self.loss_backend = backend_name(c.backend, device)

        adapted = self.adapted
        if self.world_size > 1:
            adapted = torch.nn.parallel.DistributedDataParallel(
                adapted, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.adapted_forward = torch.compile(adapted) if c.compile else adapted
        # Never through DDP: the source's forward takes no part in the gradient all-reduce.
        source = self.adapted if self.lora else self.source
        self.source_forward = torch.compile(source) if c.compile and source is not None else source

        self.output_dir = Path(c.output_dir)
        self.resume_changes: dict[str, tuple] = {}
        if c.resume:
            self.load_state(ckpt.load_checkpoint(c.resume))

    @staticmethod
    def _check_variance(unet, scheduler) -> bool:
        c_in, c_out = unet.config.in_channels, unet.config.out_channels
        variance_type = scheduler.config.variance_type
        if c_out == 2 * c_in:
            if variance_type not in LEARNED_VARIANCE_TYPES:
                raise ConfigError(
                    f"the model outputs 2C = {c_out} channels (learned variance) but the scheduler's "
                    f"variance_type is {variance_type!r}; expected one of {LEARNED_VARIANCE_TYPES}"
                )
            return True
        if c_out != c_in:
            raise ConfigError(f"the model must output C = {c_in} or 2C channels, got {c_out}")
        if variance_type in LEARNED_VARIANCE_TYPES:
            raise ConfigError(f"variance_type {variance_type!r} needs a model with 2C outputs, got {c_out}")
        return False

    @staticmethod
    def _loss_coefficient_tables(scheduler, model_dir: str) -> tuple[str, tuple[torch.Tensor, torch.Tensor]]:
        """The scheduler's prediction_type and the loss's (a, b) tables for it, if the loss can read it:
        refused here, before any step."""
        try:
            tables = P.coefficient_tables(scheduler)
        except ValueError as error:
            raise ConfigError(f"model folder {model_dir!r}: {error}") from error
        return scheduler.config.prediction_type, tables

    def _hf_mse_weight_table(self, scheduler, c: TrainConfig) -> torch.Tensor | None:
        """hf_mse's weight per timestep on the device, or None for the authors' formulation (weight 1 at
        every t: the loss then runs unweighted, bit for bit as before the weightings existed)."""
        T = len(scheduler.betas)
        for name in ("hf_mse_max_t", "pair_max_t"):
            if getattr(c, name) is not None and getattr(c, name) > T:
                raise ConfigError(
                    f"--{name.replace('_', '-')} must be at most the scheduler's T = {T}, "
                    f"got {getattr(c, name)}"
                )
        if c.hf_mse_weighting == "x0" and c.hf_mse_max_t is None:
            return None
        try:
            table = P.hf_mse_weight_table(
                scheduler, c.hf_mse_weighting, gamma=c.min_snr_gamma, max_t=c.hf_mse_max_t
            )
        except ValueError as error:
            raise ConfigError(f"--hf-mse-weighting {c.hf_mse_weighting}: {error}") from error
        return table.to(device=self.device, dtype=torch.float32)

    def _mark_update_applied(self, optimizer, args, kwargs) -> None:
        self._update_applied = True

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def training_step(self) -> dict[str, float]:
        """One forward, backward and optimizer step; returns the loss terms of this rank's batch.

        When GradScaler skips the update (fp16, inf/NaN gradients), self.step, the LR schedule and the EMA
        stay and self.skipped_steps grows; the batch, noise and pairs drawn are not drawn again.
        MAX_CONSECUTIVE_SKIPPED_STEPS skipped in a row raise FloatingPointError."""
        c = self.config
        x0 = self.images[self.batches.next_indices().to(self.device)]
        n = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=self.noise_generator).to(
            self.device
        )
        noise = torch.randn(x0.shape, generator=self.noise_generator).to(self.device)
        pred_src = pair = rest = None
        if c.method == "ddpm-pa":
            pair, rest = self._draw_pairs(n)
            if c.pair_timesteps == "shared":
                # One t for the whole pair subset, as the authors' text-to-image code and the paper's
                # figure have it: the similarities then compare predictions at one noise level.
                t[pair] = t[pair[0]].clone()
                if c.pair_max_t is not None and int(t[pair[0]]) >= c.pair_max_t:
                    # No pair terms at this noise level: every sample takes the plain terms, and the
                    # source model is not run.
                    pair, rest = None, torch.arange(n, device=self.device)
        x_t = self.schedule.q_sample(x0, t, noise)

        if pair is not None:
            with annotate("train/source_forward"):
                pred_src = self.source_prediction(x_t, t, pair)
        with annotate("train/adapted_forward"), self._autocast():
            output = self.adapted_forward(x_t, t).sample
        output = output.float()
        pred_ada = output[:, : self.channels]

        with annotate("train/loss"):
            terms = self._loss(x0, x_t, t, noise, pred_ada, pred_src, output, pair, rest)
        with annotate("train/backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(terms["loss"]).backward()
        with annotate("train/optimizer_step"):
            if c.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.trained_parameters, c.grad_clip)
            self._update_applied = False
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._update_applied:
                self.lr_scheduler.step()
                self.ema.update()
        if self._update_applied:
            self.step += 1
            self._consecutive_skipped_steps = 0
        else:
            self.skipped_steps += 1
            self._consecutive_skipped_steps += 1
            if self._consecutive_skipped_steps >= MAX_CONSECUTIVE_SKIPPED_STEPS:
                raise FloatingPointError(
                    f"GradScaler skipped {self._consecutive_skipped_steps} optimizer updates in a row after "
                    f"step {self.step} (inf/NaN gradients at every loss scale, now "
                    f"{self.scaler.get_scale():g}): the fp16 gradients do not become finite; train with "
                    "--precision bf16 or fp32, or a lower --lr"
                )
        return {name: value.item() for name, value in terms.items()}

    def _draw_pairs(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair subset (--pair-size samples of the batch, from the seeded pair generator) and the rest."""
        order = torch.randperm(n, generator=self.pair_generator).to(self.device)
        return order[: self.config.pair_size], order[self.config.pair_size :]

    def source_prediction(self, x_t: torch.Tensor, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The frozen source's prediction (noise or v, as its scheduler says) for the batch rows `rows`,
        kept lean.

        Only the pair terms read it, and only on the pair subset, so the source runs on those rows
        alone (in eval mode a sample's prediction does not depend on the rest of its batch): k of N
        forwards instead of N. Inference mode, and the run's autocast or the source's own half precision
        (--source-precision). Under LoRA, the adapted model with its adapters off (adapters_off: eval mode,
        no gradient), which is the source model bit for bit."""
        x_t, t = x_t[rows], t[rows]
        if self.lora:
            with adapters_off(self.adapted), self._autocast():
                return self.source_forward(x_t, t).sample[:, : self.channels].float()
        if self.config.source_precision != "same":
            with torch.inference_mode():
                dtype = PRECISIONS[self.config.source_precision]
                pred_src = self.source_forward(x_t.to(dtype), t).sample[:, : self.channels]
        else:
            with torch.inference_mode(), self._autocast():
                pred_src = self.source_forward(x_t, t).sample[:, : self.channels]
        # Out of inference mode so that a fused loss may save it for backward.
        return pred_src.float().clone()

    def _loss(self, x0, x_t, t, noise, pred_ada, pred_src, output, pair, rest) -> dict[str, torch.Tensor]:
        """The step's loss terms. pred_* are the models' outputs in the scheduler's parameterisation
        (noise or v); for DDPM-PA, pred_src holds the source's prediction of the `pair` rows (pair is None
        at a step whose pair t is at or above --pair-max-t: pair_img and pair_hf are then 0). hf_mse is
        the weighted term that the loss adds (--hf-mse-weighting)."""
        c = self.config
        terms: dict[str, torch.Tensor] = {}
        # The one place that reads the prediction type: for epsilon, target is `noise` itself and a_t, b_t
        # are NoiseSchedule.x0_coefficients(t), bit for bit.
        a_t, b_t, target = P.coefficients_at(*self.loss_tables, self.prediction_type, x0, noise, t)
        if c.method == "finetune":
            terms["mse"] = (target - pred_ada).square().mean()
            total = terms["mse"]
        else:
            n = x0.shape[0]
            h = None if self.hf_mse_weight_table is None else self.hf_mse_weight_table[t]
            total = mse = hf_mse = pair_img = pair_hf = x0.new_zeros(())
            if pair is not None:
                k = pair.numel()
                pa = self.pa_loss(
                    x_t[pair],
                    pred_ada[pair],
                    pred_src,
                    target[pair],
                    a_t[pair],
                    b_t[pair],
                    hf_mse_weight=None if h is None else h[pair],
                )
                total, mse, hf_mse = (k / n) * pa.loss, (k / n) * pa.mse, (k / n) * pa.hf_mse
                pair_img, pair_hf = pa.pair_img, pa.pair_hf
            if rest.numel():
                share = rest.numel() / n
                mse_rest = (target[rest] - pred_ada[rest]).square().mean()
                a, b = a_t[rest].reshape(-1, 1, 1, 1), b_t[rest].reshape(-1, 1, 1, 1)
                hf_ada = ddpm_pa_high_frequency(a * x_t[rest] - b * pred_ada[rest], backend=c.backend)
                hf_tgt = ddpm_pa_high_frequency(a * x_t[rest] - b * target[rest], backend=c.backend)
                hf_squares = (hf_ada - hf_tgt).square()
                if h is not None:
                    hf_squares = hf_squares * h[rest].reshape(-1, 1, 1, 1)
                hf_mse_rest = hf_squares.mean()
                total = total + share * (mse_rest + c.w_hf_mse * hf_mse_rest)
                mse, hf_mse = mse + share * mse_rest, hf_mse + share * hf_mse_rest
            terms.update(mse=mse, hf_mse=hf_mse, pair_img=pair_img, pair_hf=pair_hf)
        if self.learned_variance:
            # improved-DDPM's RESCALED_MSE weighting (T / 1000), as the authors' code uses.
            pred_x0 = a_t.reshape(-1, 1, 1, 1) * x_t - b_t.reshape(-1, 1, 1, 1) * pred_ada.detach()
            vb = self.schedule.vb_terms_bpd_x0(pred_x0, output[:, self.channels :], x0, x_t, t).mean()
            terms["vlb"] = vb
            total = total + c.w_vlb * self.schedule.num_timesteps / 1000.0 * vb
        terms["loss"] = total
        return {name: value.detach() if name != "loss" else value for name, value in terms.items()}

    # ---- state ----

    def _rng_state(self) -> dict:
        state = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": _numpy_state_to_plain(np.random.get_state()),  # noqa: NPY002 (the global RNG is what we restore)
            "noise_generator": self.noise_generator.get_state(),
            "pair_generator": self.pair_generator.get_state(),
            "batches": self.batches.state_dict(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(state["python"])
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))  # noqa: NPY002
        self.noise_generator.set_state(state["noise_generator"])
        self.pair_generator.set_state(state["pair_generator"])
        self.batches.load_state_dict(state["batches"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def state_dict(self) -> dict:
        rng = self._rng_state()
        if self.world_size > 1:
            # Every rank draws its own noise and pairs, so the checkpoint keeps every rank's generators.
            per_rank = [None] * self.world_size
            dist.all_gather_object(per_rank, rng)
        else:
            per_rank = [rng]
        return {
            "config": dataclasses.asdict(self.config),
            "model": self._trained_state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "rng": per_rank,
            "skipped_steps": self.skipped_steps,
            "num_images": len(self.images),
        }

    def _trained_state_dict(self) -> dict:
        """The checkpoint's weights: the whole adapted model, or under LoRA its adapters alone (the base
        is the source model folder's)."""
        if not self.lora:
            return self.adapted.state_dict()
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(self.adapted)

    def _load_trained_state_dict(self, state: dict) -> None:
        if not self.lora:
            self.adapted.load_state_dict(state)
            return
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.adapted, state)
        missing = [key for key in result.missing_keys if "lora_" in key]
        if result.unexpected_keys or missing:
            raise ckpt.CheckpointError(
                f"the checkpoint's adapter weights do not fit this run's adapters: missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]}"
            )

    def _resume_changes(self, state: dict) -> dict[str, tuple]:
        """{setting: (checkpoint's value, this run's)} for the settings that differ; ConfigError, before any
        step, for one that RESUME_REFUSED refuses or a data folder whose image count differs (the batch
        order the checkpoint continues indexes its images)."""
        saved = state.get("config", {})
        current = dataclasses.asdict(self.config)
        changes = {
            name: (saved[name], value)
            for name, value in current.items()
            if name != "resume" and name in saved and saved[name] != value
        }
        for name, reason in RESUME_REFUSED.items():
            if name in changes:
                old, new = changes[name]
                raise ConfigError(
                    f"--{name.replace('_', '-')} {new!r} differs from the checkpoint's {old!r} and cannot "
                    "change "
                    f"on --resume: {reason}"
                )
        count = state.get("num_images")
        if count is None:
            # Checkpoints written before the count was saved: the batch order names its largest index.
            order = state["rng"][self.rank]["batches"]["order"]
            count = (
                None if order.numel() == 0 or int(order.max()) < len(self.images) else int(order.max()) + 1
            )
        if count is not None and count != len(self.images):
            raise ConfigError(
                f"--data-dir holds {len(self.images)} images, the checkpoint was trained on {count}: the "
                "batch "
                "order it continues indexes those; resume with the same images"
            )
        return changes

    def _apply_resumed_settings(self) -> None:
        """The optimizer's and EMA's hyperparameters come back from the checkpoint with its values: this
        run's lr, weight decay and EMA decay replace them (the LR schedule continues at the same step)."""
        c = self.config
        self.lr_scheduler.base_lrs = [c.lr] * len(self.optimizer.param_groups)
        factor = self.lr_scheduler.lr_lambdas[0](self.lr_scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group.update(initial_lr=c.lr, lr=c.lr * factor, weight_decay=c.weight_decay)
        self.lr_scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.ema.decay = c.ema_decay

    def load_state(self, state: dict) -> None:
        self.resume_changes = self._resume_changes(state)
        if len(state["rng"]) != self.world_size:
            raise ckpt.CheckpointError(
                f"checkpoint {state['path']!r} was written by {len(state['rng'])} processes; resuming it "
                f"exactly needs the same number, got {self.world_size}"
            )
        self._load_trained_state_dict(ckpt.clean_state_dict(state["model"]))
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self._set_rng_state(state["rng"][self.rank])
        self.step = state["step"]
        # Checkpoints written before skipped updates were counted have no such key.
        self.skipped_steps = state.get("skipped_steps", 0)
        self._apply_resumed_settings()
        if self.is_main:
            for name, (old, new) in self.resume_changes.items():
                print(
                    f"[resume] --{name.replace('_', '-')} {old!r} -> {new!r} from step {self.step + 1}",
                    flush=True,
                )

    def save_checkpoint(self) -> Path | None:
        state = self.state_dict()  # a collective under DDP: every rank takes part
        if not self.is_main:
            return None
        return ckpt.save_checkpoint(
            state, self.output_dir / "checkpoints", self.step, self.config.keep_checkpoints
        )

    @contextlib.contextmanager
    def ema_weights(self):
        """The adapted model holds the EMA weights inside the block, its training weights after it."""
        self.ema.store()
        self.ema.copy_to()
        try:
            yield self.adapted
        finally:
            self.ema.restore()

    def sample(self, num_images: int, seed: int = 0, num_steps: int | None = None) -> torch.Tensor:
        """num_images samples of the EMA weights (sampling.sample_images), in num_steps DDIM steps
        (default: the config's sample_steps) at the config's sample_eta."""
        with self.ema_weights() as model:
            steps = num_steps or self.config.sample_steps
            return sample_images(model, self.scheduler, num_images, steps, seed, eta=self.config.sample_eta)

    def save_model(self, folder: str | Path) -> Path:
        """Writes the EMA weights: with the scheduler as a model folder that load_model_folder reads, or
        under LoRA (the model is a PeftModel) the adapters alone as a PEFT adapter folder
        (adapter_config.json, adapter_model.safetensors) for the source model folder, which
        PeftModel.from_pretrained(base, folder) and `ddpm-pa-fast sample --adapter-dir` load."""
        folder = Path(folder)
        with self.ema_weights() as model:
            model.save_pretrained(folder, safe_serialization=True)
        if not self.lora:
            self.scheduler.save_pretrained(folder)
        return folder

    # ---- loop ----

    def train(self, on_step=None) -> dict:
        """Runs to config.steps applied updates; returns a summary (final loss terms, wall time, applied
        steps per second, skipped_steps: the updates GradScaler skipped in fp16, resumed runs included).

        on_step(trainer), if given, runs after every applied step (after its checkpoint and samples), e.g.
        to evaluate along the run; its time counts in train_seconds. Skipped updates advance no cadence."""
        from tqdm.auto import tqdm

        c = self.config
        bar = tqdm(
            total=c.steps,
            initial=self.step,
            unit="step",
            disable=not (c.progress and self.is_main),
            desc=c.method if c.method == "finetune" else f"{c.method} ({self.loss_backend} loss)",
            dynamic_ncols=True,
        )
        start, first_step, terms = time.perf_counter(), self.step, {}
        try:
            while self.step < c.steps:
                step_before = self.step
                terms = self.training_step()
                if not all(math.isfinite(v) for v in terms.values()):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: {terms}")
                postfix = {k: f"{v:.4f}" for k, v in terms.items()}
                if self.scaler.is_enabled():
                    postfix["skipped"] = self.skipped_steps
                if self.step == step_before:
                    # Skipped by GradScaler: redraw the bar now, as no update() will while skips last.
                    bar.set_postfix(postfix)
                    continue
                bar.update(1)
                bar.set_postfix(postfix, refresh=False)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save_checkpoint()
                if c.sample_every and self.step % c.sample_every == 0 and self.is_main:
                    save_grid(
                        self.sample(c.num_samples), self.output_dir / "samples" / f"step-{self.step:08d}.png"
                    )
                if on_step is not None:
                    on_step(self)
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        if c.checkpoint_every and self.step % c.checkpoint_every:
            self.save_checkpoint()
        if c.save_model and self.is_main:
            if not self.lora:
                self.save_model(self.output_dir / "model")
            else:
                adapter = self.save_model(self.output_dir / "adapter")
                if c.merge:
                    adapters.merge(c.model_dir, adapter, self.output_dir / "model")
        return {
            "method": c.method,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "loss_backend": self.loss_backend,
            "train_seconds": elapsed,
            "steps_per_second": (self.step - first_step) / elapsed if elapsed > 0 else float("nan"),
            "final_terms": terms,
        }


__all__ = ["METHODS", "ConfigError", "DataError", "TrainConfig", "Trainer"]
