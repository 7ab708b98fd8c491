"""What `import kernels` gets from a source checkout's root: see kernels/__init__.py."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def import_the_other_kernels_package(init_file: str) -> None:
    """Replaces sys.modules["kernels"] (this folder, being imported) with the `kernels` package found on
    sys.path outside this checkout, executed in its place; the import statement then returns that one.

    Raises ModuleNotFoundError when there is none, as `import kernels` would without this folder.
    """
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(init_file)))
    elsewhere = [p for p in sys.path if os.path.abspath(p or os.getcwd()) != checkout]
    spec = importlib.machinery.PathFinder.find_spec("kernels", elsewhere)
    if spec is None:
        del sys.modules["kernels"]
        raise ModuleNotFoundError(
            "No module named 'kernels' (this checkout's kernels/ folder is ddpm_pa_fast.kernels, the Triton "
            "kernels of ddpm_pa_fast, not a top-level package)",
            name="kernels",
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["kernels"]
        raise
