"""Backend choice: which implementation runs the five ops for tensors on a given device.

Every backend module exposes the reference's five functions with the same positional arguments,
called with arguments that the public layer (functional.py) has already validated:
- "torch": ddpm_pa_fast.reference, vectorised PyTorch, any device;
- "cpu": the C++ extension's CPU kernels (ddpm_pa_fast.ops);
- "cuda": the C++ extension's CUDA kernels (ddpm_pa_fast.ops), when built with FORCE_CUDA=1;
- "triton": the Triton kernels (ddpm_pa_fast.triton_ops), on CUDA tensors, or on CPU tensors under
  TRITON_INTERPRET=1.
"auto" takes the first available of a device's preference list.

Under torch.compile the choice is made while tracing, never inside the graph: torch.compile calls
_resolve like plain Python and keeps the backend's name as a constant (what is installed does not
change while a process runs); the module is then looked up in a fixed dict, which it traces.
"""

from __future__ import annotations

import torch

from . import ops, reference, triton_ops

BACKEND_NAMES = ("auto", "torch", "cpu", "cuda", "triton")
# Fastest first. On CUDA the hand-written kernels precede Triton's; both precede plain PyTorch.
AUTO_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

# Imported with the package: none imports triton or loads the Triton kernels before they run.
_MODULES = {"torch": reference, "cpu": ops, "cuda": ops, "triton": triton_ops}

# (name, device type) -> the backend it resolved to; resolution reads the file system and the
# dispatcher, so it runs once per pair, not once per call.
_RESOLVED: dict[tuple[str, str], str] = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says how to get it."""


@torch.compiler.assume_constant_result
def _unavailable_reason(name: str, device_type: str) -> str | None:
    """None when backend `name` (not 'auto') can run device_type tensors; otherwise why not and how to
    fix it. Called while torch.compile traces, never inside a graph (see the module docstring)."""
    if name == "torch":
        return None
    if name == "cpu":
        if device_type != "cpu":
            return f"backend 'cpu' runs on CPU tensors, got tensors on {device_type}"
        return ops.extension_unavailable_reason()
    if name == "cuda":
        if device_type != "cuda":
            return f"backend 'cuda' runs on CUDA tensors, got tensors on {device_type}"
        return ops.cuda_unavailable_reason()
    return triton_ops.unavailable_reason(device_type)


@torch.compiler.assume_constant_result
def _resolve(name: str, device_type: str) -> str:
    """The backend (not 'auto') that `name` runs as on device_type tensors.

    Raises BackendUnavailableError when it cannot run there, eagerly and under torch.compile alike.
    """
    resolved = _RESOLVED.get((name, device_type))
    if resolved is None:
        if name == "auto":
            resolved = next(
                c
                for c in AUTO_PREFERENCE.get(device_type, ("torch",))
                if _unavailable_reason(c, device_type) is None
            )
        else:
            reason = _unavailable_reason(name, device_type)
            if reason is not None:
                raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
            resolved = name
        if resolved == "triton":
            triton_ops.load_kernels()  # imports triton: here, outside any graph, on first use
        _RESOLVED[name, device_type] = resolved
    return resolved


def _check_name(name: str) -> None:
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKEND_NAMES))}, got {name!r}")


# (name, torch.device) -> backend module, filled by resolve_backend in eager mode: its per-call path is
# one dict lookup keyed by the tensor's own device object (making a torch.device from it, as
# backend_name does, cost several microseconds of host time per op call). Not _RESOLVED, which
# torch.compile reads through _resolve and which is keyed by device type: reading device.type per call
# instead cost about 10% of the HF map's forward + backward in bench_ops --overhead (measured A/B).
_MODULE_FOR_DEVICE: dict = {}


def resolve_backend(name: str, device: torch.device):
    """The backend module that runs `name` ('auto' or a backend) for tensors on `device`.

    Raises ValueError for an unknown name and BackendUnavailableError for one that cannot run there.
    """
    if torch.compiler.is_compiling():
        return _MODULES[backend_name(name, device)]
    module = _MODULE_FOR_DEVICE.get((name, device)) if isinstance(name, str) else None
    if module is None:
        module = _MODULES[backend_name(name, device)]  # raises for a bad name or an unavailable backend
        _MODULE_FOR_DEVICE[name, device] = module
    return module


def backend_name(name: str, device: torch.device) -> str:
    """The name of the backend that `name` resolves to on `device` ('auto' made concrete).

    Raises ValueError for an unknown name and BackendUnavailableError for one that cannot run there.
    """
    _check_name(name)
    return _resolve(name, torch.device(device).type)


def available_backends(device: torch.device) -> list[str]:
    """The backends that can run tensors on `device` in this installation."""
    device_type = torch.device(device).type
    return [n for n in BACKEND_NAMES[1:] if _unavailable_reason(n, device_type) is None]
