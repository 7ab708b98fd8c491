"""NVTX ranges for Nsight Systems: one per op forward/backward and per trainer phase.

The nvtx package makes a push/pop cheap when no profiler is attached. Under torch.compile tracing the
range is skipped, so that it never breaks a graph; compiled regions show up as their own kernels.
"""

from __future__ import annotations

import contextlib
import functools

import torch

try:
    import nvtx as _nvtx
except ImportError:  # nvtx is a declared dependency, but a missing profiler hook must never break maths.
    _nvtx = None

DOMAIN = "ddpm_pa_fast"


_NO_RANGE = contextlib.nullcontext()


@functools.cache
def _range(name: str):
    # One reusable range per name: an nvtx.annotate holds only its message and domain handle (its
    # enter and exit push and pop), and building one per call cost about a microsecond of each op's
    # host time. Whether a profiler is attached is fixed when the process starts.
    return _nvtx.annotate(name, domain=DOMAIN)


def annotate(name: str):
    """A context manager that marks `name` as an NVTX range in the ddpm_pa_fast domain."""
    if _nvtx is None or torch.compiler.is_compiling():
        return _NO_RANGE
    return _range(name)
