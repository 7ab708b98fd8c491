"""The CUDA build's bookkeeping, checked without a GPU: every schema has a CUDA registration, and the
import-time CUDA-version check accepts a matching build and names what to rebuild otherwise.

That the kernels compile is proved by scripts/ci_cuda_build.sh (a real nvcc build against torch's
CUDA 13.0 wheel); their numbers are checked against the reference by the device-parametrized tests
wherever a GPU exists.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess
import types

import pytest
import torch

from ddpm_pa_fast import _cuda_check

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _defined_ops():
    return set(re.findall(r'm\.def\("(\w+)\(', (ROOT / "csrc" / "ops.cpp").read_text()))


def test_every_schema_has_exactly_one_cuda_registration():
    registrations = []
    for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        text = source.read_text()
        for block in re.findall(r"TORCH_LIBRARY_IMPL\(ddpm_pa_fast, CUDA, m\) \{(.*?)\n\}", text, re.S):
            registrations += re.findall(r'm\.impl\("(\w+)"', block)
    defined = _defined_ops()
    assert defined, "no schemas found in csrc/ops.cpp"
    assert sorted(registrations) == sorted(defined)


@pytest.fixture(scope="module")
def fake_extensions(tmp_path_factory):
    """Two shared libraries standing in for the extension: one built "with CUDA 13.0", one CPU-only."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build the stand-in libraries")
    folder = tmp_path_factory.mktemp("fake_ext")
    libraries = {}
    for name, body in {
        "cuda13": f"int {_cuda_check.BUILD_VERSION_SYMBOL}(void) {{ return 13000; }}",
        "cpu_only": "int unrelated_symbol(void) { return 0; }",
    }.items():
        source, library = folder / f"{name}.c", folder / f"{name}.so"
        source.write_text(body + "\n")
        subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
        libraries[name] = types.SimpleNamespace(__file__=str(library))
    return libraries


def test_cpu_only_build_has_no_cuda_version_and_passes(fake_extensions):
    assert _cuda_check.extension_cuda_version(fake_extensions["cpu_only"]) is None
    _cuda_check.check_extension_cuda_version(fake_extensions["cpu_only"])


def test_reads_the_build_version(fake_extensions):
    assert _cuda_check.extension_cuda_version(fake_extensions["cuda13"]) == (13, 0)


@pytest.mark.parametrize("torch_cuda", ["13.0", "13.2"])
def test_same_major_version_passes(fake_extensions, monkeypatch, torch_cuda):
    monkeypatch.setattr(torch.version, "cuda", torch_cuda)
    _cuda_check.check_extension_cuda_version(fake_extensions["cuda13"])


def test_other_major_version_says_what_to_rebuild(fake_extensions, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    with pytest.raises(_cuda_check.CUDAVersionMismatchError) as info:
        _cuda_check.check_extension_cuda_version(fake_extensions["cuda13"])
    message = str(info.value)
    assert "built with CUDA 13.0" in message and "uses CUDA 12.8" in message
    assert _cuda_check.REBUILD_COMMAND in message
    assert isinstance(info.value, ImportError)  # ops.py treats it as "extension unavailable"


def test_cpu_only_torch_says_what_to_rebuild(fake_extensions, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(_cuda_check.CUDAVersionMismatchError, match="CPU-only build.*FORCE_ONLY_CPU=1"):
        _cuda_check.check_extension_cuda_version(fake_extensions["cuda13"])
