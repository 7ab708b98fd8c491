"""The thin DDPM-PA trainer: few-shot adaptation of a diffusers UNet2DModel with the fused losses.

Command line: `ddpm-pa-fast {train,sample,evaluate,demo} --help` (cli.py). The pieces:
- diffusion.py: the noise schedule (from a DDPMScheduler) and the improved-DDPM L_vlb term;
- data.py: the few-shot image folder, checked before any training step;
- trainer.py: TrainConfig and Trainer (DDPM-PA or plain fine-tuning, precision, EMA, DDP, checkpoints);
- checkpoint.py, ema.py, sampling.py, evaluate.py, demo.py.
See docs/training.md.
"""
