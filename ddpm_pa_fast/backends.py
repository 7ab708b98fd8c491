"""Backend choice: which implementation runs the five ops for tensors on a given device.

Every backend module exposes the reference's five functions with the same positional arguments,
called with arguments that the public layer (functional.py) has already validated:
- "torch": ddpm_pa_fast.reference, vectorised PyTorch, any device;
- "cpu": the C++ extension's CPU kernels (ddpm_pa_fast.ops);
- "cuda": the C++ extension's CUDA kernels (ddpm_pa_fast.ops), when built with FORCE_CUDA=1;
- "triton": the Triton kernels (ddpm_pa_fast.triton_ops), on CUDA tensors, or on CPU tensors under
  TRITON_INTERPRET=1.
"auto" takes the first available of a device's preference list.
"""

from __future__ import annotations

import functools
import importlib

import torch

BACKEND_NAMES = ("auto", "torch", "cpu", "cuda", "triton")
# Fastest first. On CUDA the hand-written kernels precede Triton's; both precede plain PyTorch.
AUTO_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

_MODULES = {
    "torch": "ddpm_pa_fast.reference",
    "cpu": "ddpm_pa_fast.ops",
    "cuda": "ddpm_pa_fast.ops",
    "triton": "ddpm_pa_fast.triton_ops",
}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says how to get it."""


def _unavailable_reason(name: str, device_type: str) -> str | None:
    if name == "torch":
        return None
    if name == "cpu":
        if device_type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got tensors on {device_type}"
        from . import ops

        return ops.extension_unavailable_reason()
    if name == "cuda":
        if device_type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got tensors on {device_type}"
        from . import ops

        return ops.cuda_unavailable_reason()
    from . import triton_ops

    return triton_ops.unavailable_reason(device_type)


@functools.cache
def _resolve(name: str, device_type: str):
    if name == "auto":
        for candidate in AUTO_PREFERENCE.get(device_type, ("torch",)):
            if _unavailable_reason(candidate, device_type) is None:
                return importlib.import_module(_MODULES[candidate])
        raise AssertionError("the torch backend is always available")
    reason = _unavailable_reason(name, device_type)
    if reason is not None:
        raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
    return importlib.import_module(_MODULES[name])


def resolve_backend(name: str, device: torch.device):
    """The backend module that runs `name` ('auto' or a backend) for tensors on `device`."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")
    return _resolve(name, torch.device(device).type)


def backend_name(name: str, device: torch.device) -> str:
    """The name of the backend that `name` resolves to on `device` ('auto' made concrete)."""
    module = resolve_backend(name, device)
    if module.__name__ == _MODULES["torch"]:
        return "torch"
    if module.__name__ == _MODULES["triton"]:
        return "triton"
    return torch.device(device).type


def available_backends(device: torch.device) -> list[str]:
    """The backends that can run tensors on `device` in this installation."""
    device_type = torch.device(device).type
    return [n for n in BACKEND_NAMES[1:] if _unavailable_reason(n, device_type) is None]
