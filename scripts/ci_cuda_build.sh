#!/usr/bin/env bash
# Proves that the CUDA kernels compile for real: no GPU exists here, so what can be proved is that
# csrc/cuda/*.cu builds against the CUDA 13.0 build of torch with the system nvcc, and that the built
# extension registers a CUDA kernel for every op and passes its own CUDA-version check.
#
# 1. A separate venv (outside the clone, reused when it already holds the right torch) with
#    torch==2.14.1 (the CUDA 13.0 build, from this machine's wheel index) and the build deps.
# 2. A scratch copy of the sources (so the CPU build in the work tree is never clobbered), built with
#    FORCE_CUDA=1 for sm_80 and sm_90 by the system nvcc (CUDA_HOME=/usr/local/cuda).
# 3. The built extension imported in that venv: every op that csrc/ops.cpp defines must have a CUDA
#    kernel, and ddpm_pa_fast/_cuda_check.py must accept the build and reject a faked mismatch.
#
# Non-interactive; prints what it checks; exits non-zero on any failure.
# Knobs (environment): DDPM_PA_CUDA_VENV, DDPM_PA_CUDA_BUILD_DIR, DDPM_PA_CUDA_PYTHON, MAX_JOBS,
# TORCH_CUDA_ARCH_LIST.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DDPM_PA_CUDA_VENV:-/tmp/ddpm_pa_fast-cuda-venv}"
BUILD_DIR="${DDPM_PA_CUDA_BUILD_DIR:-/tmp/ddpm_pa_fast-cuda-build}"
PYTHON="${DDPM_PA_CUDA_PYTHON:-python3}"
TORCH_VERSION="2.14.1"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export MAX_JOBS="${MAX_JOBS:-2}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-8.0;9.0}"

start=$(date +%s)
log() { echo "[ci_cuda_build +$(( $(date +%s) - start ))s] $*"; }
fail() { echo "[ci_cuda_build] FAILED: $*" >&2; exit 1; }

log "repo=$REPO venv=$VENV build_dir=$BUILD_DIR"
[ -x "$CUDA_HOME/bin/nvcc" ] || fail "no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME to a CUDA 13 toolkit)"
log "nvcc: $("$CUDA_HOME/bin/nvcc" --version | grep -i release)"

# --- 1. The CUDA-torch venv ---------------------------------------------------------------------
venv_has_torch() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$TORCH_VERSION" <<'EOF' >/dev/null 2>&1
import sys, importlib.metadata as md
import setuptools, ninja  # noqa: F401  (build deps)
sys.exit(0 if md.version("torch").split("+")[0] == sys.argv[1] else 1)
EOF
}
if venv_has_torch; then
  log "reusing $VENV (torch $TORCH_VERSION already installed)"
else
  log "creating $VENV and installing torch==$TORCH_VERSION + build deps (several GB from the local wheel index)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --progress-bar off "torch==$TORCH_VERSION" "setuptools>=77" wheel ninja numpy
  venv_has_torch || fail "torch==$TORCH_VERSION did not install into $VENV"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
log "torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"

# --- 2. Build in a scratch copy -----------------------------------------------------------------
# scripts/sync_sources.sh copies only what changed and keeps build/ between runs, for ninja.
bash "$REPO/scripts/sync_sources.sh" "$BUILD_DIR"
# torch's CUDA 13 headers include cuBLAS, cuSPARSE, ... headers that the system toolkit does not ship;
# the venv's nvidia wheels do.
export CPATH="$SITE/nvidia/cu13/include${CPATH:+:$CPATH}"
log "building with FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS CUDA_HOME=$CUDA_HOME"
build_start=$(date +%s)
(cd "$BUILD_DIR" && FORCE_CUDA=1 CUDA_HOME="$CUDA_HOME" "$VENV/bin/python" setup.py build_ext --inplace \
  > "$BUILD_DIR/build.log" 2>&1) || { tail -n 80 "$BUILD_DIR/build.log"; fail "the CUDA build failed (log: $BUILD_DIR/build.log)"; }
log "build done in $(( $(date +%s) - build_start ))s"
grep -E "\[ddpm_pa_fast setup\]" "$BUILD_DIR/build.log" || true
SO="$(ls "$BUILD_DIR"/ddpm_pa_fast/_C*.so 2>/dev/null | head -n 1)"
[ -n "$SO" ] || fail "no ddpm_pa_fast/_C*.so in $BUILD_DIR after the build"
# The nvcc flags in the build.ninja that torch wrote for this build show the architectures (ninja
# recompiles an object whenever its command line changes).
NINJA_FILE="$(ls "$BUILD_DIR"/build/temp.*/build.ninja | head -n 1)"
for arch in $(echo "$TORCH_CUDA_ARCH_LIST" | tr ';' ' ' | sed 's/+PTX//g; s/\.//g'); do
  grep -q "code=sm_$arch" "$NINJA_FILE" || fail "the build does not compile for sm_$arch (see $NINJA_FILE)"
  log "CUDA objects are compiled for sm_$arch"
done

# Per-kernel resources of the built library. The toolkit here ships no cuobjdump; the triton wheel
# in this venv (a dependency of torch) bundles one. No kernel may use local memory or a stack frame:
# register spills, or a local array the compiler could not keep in registers, are a silent slowdown.
CUOBJDUMP="$(command -v cuobjdump || true)"
[ -n "$CUOBJDUMP" ] || CUOBJDUMP="$SITE/triton/backends/nvidia/bin/cuobjdump"
[ -x "$CUOBJDUMP" ] || fail "no cuobjdump on PATH or in $SITE/triton/backends/nvidia/bin"
"$CUOBJDUMP" --dump-resource-usage "$SO" > "$BUILD_DIR/resource_usage.txt" 2>&1 \
  || fail "cuobjdump --dump-resource-usage failed (see $BUILD_DIR/resource_usage.txt)"
kernels="$(grep -c "REG:" "$BUILD_DIR/resource_usage.txt" || true)"
[ "$kernels" -gt 0 ] || fail "cuobjdump listed no kernels in $SO"
if grep -B1 -E "STACK:[1-9]|LOCAL:[1-9]" "$BUILD_DIR/resource_usage.txt"; then
  fail "the kernels above use a stack frame or local memory (see $BUILD_DIR/resource_usage.txt)"
fi
log "$kernels kernel instances (all architectures): no stack frame or local memory; most registers: \
$(grep -oE "REG:[0-9]+" "$BUILD_DIR/resource_usage.txt" | cut -d: -f2 | sort -n | tail -n 1)"

# --- 3. Import and check ------------------------------------------------------------------------
log "importing the built extension and checking its CUDA kernels"
"$VENV/bin/python" - "$SO" "$BUILD_DIR/csrc/ops.cpp" "$BUILD_DIR/ddpm_pa_fast/_cuda_check.py" <<'EOF'
import importlib.util
import re
import sys

import torch

so_path, ops_cpp, check_path = sys.argv[1:4]


def load(name, path):
    # Loaded by path, not through the ddpm_pa_fast package, whose other imports this venv need not have.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extension = load("ddpm_pa_fast._C", so_path)
print(f"loaded {so_path}")
defined = re.findall(r'm\.def\("(\w+)\(', open(ops_cpp).read())
registered = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("ddpm_pa_fast::"))
print(f"ops defined in csrc/ops.cpp: {len(defined)}; ops registered in ddpm_pa_fast: {len(registered)}")
failures = []
if not defined:
    failures.append("no m.def(...) found in csrc/ops.cpp")
for name in sorted(set(defined) | set(registered)):
    qualified = f"ddpm_pa_fast::{name}"
    has_cuda = name in registered and torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA")
    print(f"  {qualified:45s} CUDA kernel: {'yes' if has_cuda else 'NO'}")
    if not has_cuda:
        failures.append(f"{qualified} has no CUDA kernel")

check = load("ddpm_pa_fast_cuda_check", check_path)
built = check.extension_cuda_version(extension)
print(f"extension built with CUDA {built}; torch {torch.__version__} uses CUDA {torch.version.cuda}")
if built is None:
    failures.append("the extension exports no CUDA build version: it was built without its CUDA kernels")
else:
    try:
        check.check_extension_cuda_version(extension)
        print("version check: passes for this torch")
    except ImportError as error:
        failures.append(f"version check rejected a matching build: {error}")
    # The check must also fail when it should: pretend torch uses another CUDA major version.
    real_cuda = torch.version.cuda
    torch.version.cuda = f"{built[0] - 1}.8"
    try:
        check.check_extension_cuda_version(extension)
        failures.append(f"version check accepted a faked torch CUDA {torch.version.cuda}")
    except check.CUDAVersionMismatchError as error:
        print(f"version check with a faked torch CUDA {torch.version.cuda} raises: {error}")
    finally:
        torch.version.cuda = real_cuda

if failures:
    print("FAILED:\n  " + "\n  ".join(failures))
    sys.exit(1)
print(f"OK: {len(defined)} ops, each with a CUDA kernel; CUDA version check passes")
EOF
log "all CUDA build checks passed in $(( $(date +%s) - start ))s"
