"""Triton kernels of ddpm_pa_fast, installed as ddpm_pa_fast.kernels (setup.py's package_dir).

One module per op, each holding its @triton.jit kernels and their launchers, registered with
torch.library.triton_op in the namespace ddpm_pa_fast_triton (forward, backward and autograd):
high_frequency, haar_dwt, pairwise_kl, ddpm_pa_loss; _common holds launch sizes and the deterministic
partial-sum kernel. Importing this package imports triton: ddpm_pa_fast.triton_ops does so lazily.
"""

if __name__ == "kernels":
    # Imported as a top-level package: only from a source checkout's root, where the working directory
    # is on sys.path (installed, this folder is ddpm_pa_fast.kernels and no top-level "kernels" exists).
    # There the folder would shadow Hugging Face's `kernels` package, which transformers >= 5 imports
    # (and with it diffusers' and peft's LoRA code): hand the name to that package, or fail as a
    # missing package would.
    from ._top_level import import_the_other_kernels_package

    import_the_other_kernels_package(__file__)
else:
    from . import ddpm_pa_loss, haar_dwt, high_frequency, pairwise_kl  # noqa: F401  (register the ops)
