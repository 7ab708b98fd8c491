"""Backend "triton": the reference's five functions on the Triton kernels (torch.ops.ddpm_pa_fast_triton).

The kernels live in the repository's kernels/ folder, installed as ddpm_pa_fast.kernels. Triton is an
optional dependency, so nothing here imports it until a function runs; unavailable_reason() says
whether it can run and, if not, how to get it. Arguments arrive validated by ddpm_pa_fast.functional.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pathlib
import sys

import torch

from ._op_backend import OpBackend

INSTALL_HINT = "install it with `pip install ddpm_pa_fast[triton]`"


def unavailable_reason(device_type: str) -> str | None:
    """None when the Triton kernels can run on device_type tensors; otherwise why not and how to fix it."""
    if importlib.util.find_spec("triton") is None:
        return f"triton is not installed; {INSTALL_HINT}"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            return None
        return (
            "Triton kernels run on CUDA tensors; on CPU tensors only in Triton's interpreter "
            "(set TRITON_INTERPRET=1 before triton is imported)"
        )
    return (
        f"Triton kernels run on CUDA tensors (or CPU under TRITON_INTERPRET=1), got tensors on {device_type}"
    )


_KERNELS_LOADED = False


def max_batch() -> int:
    """The largest N the Triton kernels take (kernels/_common.MAX_BATCH); loads the kernels."""
    load_kernels()
    return importlib.import_module(f"{__package__}.kernels._common").MAX_BATCH


def load_kernels():
    """Imports ddpm_pa_fast.kernels (registering the triton ops) and returns torch.ops.ddpm_pa_fast_triton.

    Installed, the kernels are the subpackage ddpm_pa_fast.kernels. In a source checkout run without
    installing, they are the repository's top-level kernels/ folder, loaded under that same name.
    Imports once; later calls only read a flag, which torch.compile traces (ddpm_pa_fast.backends
    loads the kernels when it resolves backend "triton", before a graph that uses them is traced).
    """
    global _KERNELS_LOADED
    if not _KERNELS_LOADED:
        _import_kernels()
        _KERNELS_LOADED = True
    return torch.ops.ddpm_pa_fast_triton


def _import_kernels() -> None:
    name = f"{__package__}.kernels"
    if importlib.util.find_spec(name) is None:
        folder = pathlib.Path(__file__).resolve().parent.parent / "kernels"
        spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None:
            raise ImportError(f"ddpm_pa_fast.kernels is not installed and {folder} does not exist")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        importlib.import_module(name)


# Backend "triton": the reference's functions on the ddpm_pa_fast_triton ops, loaded on first use.
OpBackend(load_kernels).export(globals())
