"""Triton kernels of ddpm_pa_fast, installed as ddpm_pa_fast.kernels (setup.py's package_dir).

One module per op, each holding its @triton.jit kernels and their launchers, registered with
torch.library.triton_op in the namespace ddpm_pa_fast_triton (forward, backward and autograd):
high_frequency, haar_dwt, pairwise_kl, ddpm_pa_loss; _common holds launch sizes and the deterministic
partial-sum kernel. Importing this package imports triton: ddpm_pa_fast.triton_ops does so lazily.
"""

from . import ddpm_pa_loss, haar_dwt, high_frequency, pairwise_kl  # noqa: F401  (register the ops)
