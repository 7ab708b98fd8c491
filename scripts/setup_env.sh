#!/usr/bin/env bash
# Creates (or updates) the project's virtual environment and builds the package into it.
#
#   source scripts/setup_env.sh      # then python, pytest, ddpm-pa-fast come from the venv
#   bash scripts/setup_env.sh        # set-up only
#
# VENV (default: ./.venv) chooses where; TORCH_SPEC (default: torch==2.13.0, the CPU build) which torch
# to install: on a GPU machine use a CUDA build, e.g. TORCH_SPEC="torch==2.14.1". EXTRA_PINS (default:
# none) holds more requirements fixed, space-separated, e.g. EXTRA_PINS="triton==3.6.0 numpy<2.4"
# (scripts/test_min_versions.sh: the oldest versions we support).
# Everything comes from package registries: no other download, at set-up or at run time.

_ddpm_pa_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$_ddpm_pa_repo/.venv}"

# The work runs in a subshell with strict error handling, so that sourcing this file never changes the
# caller's shell options; only VENV and PATH are exported to the caller. Its status is read on the next
# line, not with `( ... ) || ...`: on the left of || bash ignores set -e inside the subshell, and a
# failed build went on to say "built and installed".
(
  set -euo pipefail
  setup_start=$(date +%s)
  log() { echo "[setup +$(( $(date +%s) - setup_start ))s] $*"; }
  torch_spec="${TORCH_SPEC:-torch==2.13.0}"
  # The pins go into both pip calls: in the second, with the extras, they keep the resolver from
  # moving torch (or a pinned package) to satisfy some other package.
  read -r -a extra_pins <<< "${EXTRA_PINS:-}"
  pins=("$torch_spec" "${extra_pins[@]}")
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  log "installing ${pins[*]} and the build tools"
  # setuptools < 81: pytorch_wavelets (a test peer) still imports pkg_resources.
  "${pip[@]}" "${pins[@]}" "setuptools>=77,<81" wheel numpy pybind11 ninja
  # The build is skipped when nothing it depends on changed since the last successful one: the sources
  # it compiles and the files that say how (content hashes), torch's version and the build switches.
  # So the second README command after the first takes seconds, not a rebuild.
  stamp_file="$VENV/.ddpm_pa_fast_build_stamp"
  stamp=$(
    cd "$_ddpm_pa_repo"
    "$VENV/bin/python" -c 'import torch; print(torch.__version__)'
    env | grep -E '^(FORCE_CUDA|FORCE_ONLY_CPU|TORCH_CUDA_ARCH_LIST|CUDA_HOME|CC|CXX|CFLAGS|CXXFLAGS)=' | sort || true
    find csrc kernels setup.py pyproject.toml -type f -print0 | sort -z | xargs -0 sha256sum
  )
  stamp=$(printf '%s' "$stamp" | sha256sum | cut -d' ' -f1)
  # The import runs from the repository, whatever the caller's directory: a ddpm_pa_fast folder there
  # (another checkout, with its own build) would be imported instead.
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
    && (cd "$_ddpm_pa_repo" && "$VENV/bin/python" -c 'import ddpm_pa_fast._C') 2>/dev/null; then
    log "ddpm_pa_fast is built and installed for these sources, torch and flags: no rebuild"
  else
    rm -f "$stamp_file"
    log "building ddpm_pa_fast (C++ extension) and installing its extras"
    # --no-build-isolation: the extension must be compiled against the torch installed above.
    MAX_JOBS="${MAX_JOBS:-2}" "${pip[@]}" --no-build-isolation -e "$_ddpm_pa_repo[triton,train,test,bench]" \
      "${pins[@]}"
    echo "$stamp" > "$stamp_file"
    log "built and installed"
  fi
  cd "$_ddpm_pa_repo"
  "$VENV/bin/python" -c "import ddpm_pa_fast, torch; print('[setup] ready: torch', torch.__version__, \
'| backends for CPU tensors:', ddpm_pa_fast.available_backends('cpu'))"
)
_ddpm_pa_setup_status=$?
if [ "$_ddpm_pa_setup_status" -ne 0 ]; then
  echo "[setup] failed (exit $_ddpm_pa_setup_status)" >&2
  return 1 2>/dev/null || exit 1
fi

export VENV
export PATH="$VENV/bin:$PATH"
