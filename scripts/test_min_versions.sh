#!/usr/bin/env bash
# CI: the whole suite again with the oldest torch and triton we support (pyproject.toml's floors, the
# versions on the GPU machines we borrow): the package builds, imports, its Triton kernels run under
# the interpreter and every test passes there too, not only with the versions scripts/test.sh pins.
#
#   bash scripts/test_min_versions.sh [PYTEST ARGS...]
#
# The environment is scripts/setup_env.sh's, with TORCH_SPEC / EXTRA_PINS set to the oldest versions
# and its own VENV (default ./.venv-min, ignored by git). It builds a scratch copy of the sources
# (scripts/sync_sources.sh; default build/min-versions), so the work tree's extension, built for the
# main venv's torch, is left alone. Both are reused: a second run installs and builds nothing new.
#
# PyPI's torch 2.11.0 for Linux x86-64 is the CUDA 13.0 build: it needs its nvidia-* wheels even on a
# machine without a GPU (libtorch_cuda.so, which every import loads, links cuDNN, cuBLAS, NCCL, ...),
# so the first run downloads about 1.7 GB and fills about 4.6 GB. The CUDA kernels are not built here
# (FORCE_ONLY_CPU=1): scripts/ci_cuda_build.sh compiles them, and no GPU runs them.
set -euo pipefail

MIN_TORCH="2.11.0"
MIN_TRITON="3.6.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="${DDPM_PA_MIN_SRC:-$REPO/build/min-versions}"
export VENV="${DDPM_PA_MIN_VENV:-$REPO/.venv-min}"
export TORCH_SPEC="torch==$MIN_TORCH"
# numpy < 2.4: Triton 3.6's interpreter converts program ids, shape-(1,) arrays, to ints, which numpy
# 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"); Triton 3.8 squeezes
# them first. Only the interpreter (CPU tensors) needs it; compiled kernels on a GPU do not.
export EXTRA_PINS="triton==$MIN_TRITON numpy<2.4"
export FORCE_ONLY_CPU=1

start=$(date +%s)
log() { echo "[test_min_versions +$(( $(date +%s) - start ))s] $*"; }

log "sources -> $SRC, venv -> $VENV, $TORCH_SPEC $EXTRA_PINS"
bash "$REPO/scripts/sync_sources.sh" "$SRC"
# shellcheck source=setup_env.sh
source "$SRC/scripts/setup_env.sh"
log "environment ready"
# setup_env.sh gives the pins to both of its pip calls; this puts the versions in the log, and fails
# should a change there ever let another version in.
python - "$MIN_TORCH" "$MIN_TRITON" <<'EOF'
import importlib.metadata as md
import sys

want = {"torch": sys.argv[1], "triton": sys.argv[2]}
got = {name: md.version(name) for name in want}
print("[test_min_versions] " + ", ".join(f"{name} {version}" for name, version in got.items()))
wrong = [f"{name} {got[name]} (want {version})" for name, version in want.items()
         if got[name].split("+")[0] != version]
sys.exit(f"[test_min_versions] wrong versions: {', '.join(wrong)}" if wrong else 0)
EOF
cd "$SRC"
python -m pytest "${@:-tests}"
log "done"
