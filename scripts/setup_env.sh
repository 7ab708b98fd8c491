#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and builds the package into it.
#
#   source scripts/setup_env.sh      # then python, pytest, ddpm-pa-fast come from the venv
#   bash scripts/setup_env.sh        # set-up only
#
# VENV (default: ./.venv) chooses where; TORCH_SPEC (default: torch==2.13.0, the CPU build) which torch
# to install: on a GPU machine use a CUDA build, e.g. TORCH_SPEC="torch==2.14.1".
# Everything comes from package registries: no other download, at set-up or at run time.

_ddpm_pa_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$_ddpm_pa_repo/.venv}"

# The work runs in a subshell with strict error handling, so that sourcing this file never changes the
# caller's shell options; only VENV and PATH are exported to the caller.
(
  set -euo pipefail
  torch_spec="${TORCH_SPEC:-torch==2.13.0}"
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  echo "[setup] installing $torch_spec and the build tools"
  # setuptools < 81: pytorch_wavelets (a test peer) still imports pkg_resources.
  "${pip[@]}" "$torch_spec" "setuptools>=77,<81" wheel numpy pybind11 ninja
  echo "[setup] building ddpm_pa_fast (C++ extension) and installing its extras"
  # --no-build-isolation: the extension must be compiled against the torch installed above.
  MAX_JOBS="${MAX_JOBS:-2}" "${pip[@]}" --no-build-isolation -e "$_ddpm_pa_repo[triton,train,test,bench]"
  "$VENV/bin/python" -c "import ddpm_pa_fast, torch; print('[setup] ready: torch', torch.__version__, \
'| backends for CPU tensors:', ddpm_pa_fast.available_backends('cpu'))"
) || { echo "[setup] failed" >&2; return 1 2>/dev/null || exit 1; }

export VENV
export PATH="$VENV/bin:$PATH"
