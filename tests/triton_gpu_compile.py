"""Compiles Triton kernel launches for real GPU targets, without a GPU.

`python -m tests.triton_gpu_compile LAUNCHES.json` reads launches recorded by
tests/test_triton.py::test_kernels_compile_for_gpu_targets (kernel module and name, argument types,
constexpr values, launch options, as our launchers passed them under the interpreter), compiles each
with Triton's own compiler for sm_80 and sm_90 down to cubin (ptxas included), reads each cubin's
registers and stack (spill) bytes with the cuobjdump bundled in Triton's wheel, and prints one JSON
line per compile. It must run without TRITON_INTERPRET, in a fresh process: the interpreter replaces
the kernels with Python functions that the compiler cannot take.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ddpm_pa_fast import triton_ops

# Compute capability and the most shared memory a block may use there (bytes, opt-in maximum).
TARGETS = {80: 166912, 90: 232448}


CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _resources(cubin: bytes) -> dict:
    """Registers per thread and stack / local bytes of the cubin's one kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        command = [CUOBJDUMP, "--dump-resource-usage", fh.name]
        listing = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    fields = {name: int(value) for name, value in re.findall(r"(REG|STACK|LOCAL):(\d+)", listing)}
    return {"registers": fields["REG"], "stack_bytes": fields["STACK"], "local_bytes": fields["LOCAL"]}


def _constexpr(value):
    return tl.dtype(value["tl_dtype"]) if isinstance(value, dict) else value


def main(path: str) -> None:
    triton_ops.load_kernels()  # imports ddpm_pa_fast.kernels from the install or the checkout
    with open(path) as fh:
        launches = json.load(fh)
    for capability, shared_limit in TARGETS.items():
        for launch in launches:
            kernel = getattr(importlib.import_module(launch["module"]), launch["kernel"])
            source = ASTSource(
                kernel, launch["signature"], {k: _constexpr(v) for k, v in launch["constexprs"].items()}
            )
            result = {"kernel": launch["kernel"], "signature": launch["signature"], "sm": capability}
            target = GPUTarget("cuda", capability, 32)
            try:
                compiled = triton.compile(source, target=target, options=launch["options"])
            except Exception as error:  # reported per launch, so one failure does not hide the others
                result["error"] = f"{type(error).__name__}: {error}"
            else:
                result["cubin_bytes"] = len(compiled.asm["cubin"])
                result["shared_bytes"] = compiled.metadata.shared
                result["shared_limit"] = shared_limit
                result.update(_resources(compiled.asm["cubin"]))
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
