#!/usr/bin/env bash
# The GPU check: one command that builds the CUDA kernels on a GPU machine, runs the CUDA and Triton
# tests on the GPU, compute-sanitizer over every CUDA op, one trainer step in fp16 and bf16 and the op
# benchmark, and writes OUTDIR/summary.md. Made for short GPU slots on a machine with no network
# (docs/gpu_checklist.md): it uses the machine's own python3 and torch, creates no venv and downloads
# nothing; the wheels that scripts/gpu_carry.sh put in .gpu_wheels/ are installed if present.
#
#   bash scripts/gpu_check.sh OUTDIR                    # on the GPU machine: everything, within 7.5 min
#   bash scripts/gpu_check.sh OUTDIR --only bench,train # rerun some steps (the build is kept)
#   bash scripts/gpu_check.sh OUTDIR --cpu-rehearsal    # here, without a GPU: the same steps, GPU parts
#                                                       # replaced by their CPU / interpreter equivalents
#
# Steps, in order (each with its own time budget; each writes OUTDIR/<step>.log, even when it fails or
# runs out of time, and a line in OUTDIR/steps.tsv; OUTDIR/summary.md is rewritten after every step):
#   env       what the machine has (GPU, torch, triton, nvcc, compute-sanitizer, packages)
#   wheels    pip install --no-index --no-deps --target build/gpu_check_site .gpu_wheels/*.whl
#   build     setup.py build_ext --inplace, FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST = the GPU's, MAX_JOBS = cores
#   then, side by side (the GPU has room; the CPU cores are shared out):
#   tests_cuda       every CUDA-parametrized test (pytest -k cuda), in shards, with pytest-timeout
#   tests_triton     tests/test_triton.py with the real Triton compiler on the GPU (TRITON_INTERPRET unset)
#   memcheck         compute-sanitizer --tool memcheck over scripts/gpu_check/ops_once.py --backend cuda
#   racecheck        compute-sanitizer --tool racecheck over the same (our kernels use shared memory)
#   memcheck_triton  memcheck over ops_once.py --backend triton
#   train            scripts/gpu_check/train_step.py: one trainer step, fp16 and bf16 (needs diffusers)
#   then alone on the GPU:
#   bench     python3 -m benchmarks.bench_ops --device cuda --overhead (per-call host cost), then
#             --few-repeats at 8x3x256x256, 32x3x256x256 and 8x4x64x64 (wall, device and CUDA-graph time)
#
# In --cpu-rehearsal mode: the build is CPU-only (FORCE_ONLY_CPU=1), tests_cuda runs the same selection
# (which the CPU skips: it proves the selection and the plugins) and then its CPU twin (-k cpu),
# tests_triton runs under TRITON_INTERPRET=1, the sanitizer steps run ops_once.py on the CPU backend
# without compute-sanitizer, train and bench run on the CPU, and every budget is multiplied by
# GPU_CHECK_TIME_SCALE (default 4 there, 1 on a GPU).
#
# Knobs (environment): PYTHON (default python3), MAX_JOBS (default: the core count), GPU_CHECK_BUDGET
# (seconds for the whole run, default 450), GPU_CHECK_TIME_SCALE, GPU_CHECK_WHEELS (default
# .gpu_wheels), TORCH_CUDA_ARCH_LIST (default: the GPU's own), GPU_CHECK_BENCH_SIZES.
# Exit code: 0 when every step passed (or was skipped because it does not apply), 1 otherwise.

# The body_* functions are called by name ("body_$BODY"); wheel names are plain.
# shellcheck disable=SC2317,SC2012
set -uo pipefail

STEPS="env wheels build tests_cuda tests_triton memcheck racecheck memcheck_triton train bench"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/scripts/gpu_check.sh"

usage() { sed -n '2,40p' "$SELF" | sed 's/^# \{0,1\}//'; }

# ------------------------------------------------------------------------------- arguments and setup
OUTDIR="" MODE="gpu" ONLY="" BODY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-rehearsal) MODE="cpu-rehearsal" ;;
    --only) ONLY="${2:-}"; shift ;;
    --only=*) ONLY="${1#*=}" ;;
    --step-body) BODY="${2:-}"; shift ;;   # internal: run one step's body (under the caller's timeout)
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) if [ -z "$OUTDIR" ]; then OUTDIR="$1"; else echo "gpu_check: one OUTDIR only" >&2; exit 2; fi ;;
  esac
  shift
done
[ -n "$OUTDIR" ] || { usage >&2; exit 2; }
for s in ${ONLY//,/ }; do
  case " $STEPS " in *" $s "*) ;; *) echo "gpu_check: --only: unknown step $s; steps: $STEPS" >&2; exit 2 ;; esac
done
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)" || exit 2
cd "$REPO" || exit 2

PY="${PYTHON:-python3}"
CORES="$(nproc 2>/dev/null || echo 2)"
if [ "$MODE" = "gpu" ]; then SCALE="${GPU_CHECK_TIME_SCALE:-1}"; else SCALE="${GPU_CHECK_TIME_SCALE:-4}"; fi
TOTAL=$(( ${GPU_CHECK_BUDGET:-450} * SCALE ))
WHEELS="${GPU_CHECK_WHEELS:-$REPO/.gpu_wheels}"
SITE="$REPO/build/gpu_check_site"
# Every step sees the carried packages (if installed) and the source tree with the in-place build.
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
export MPLBACKEND=Agg
if [ "$MODE" = "gpu" ]; then
  # The Triton tests must compile for the GPU: tests/conftest.py only sets the interpreter when torch
  # sees no GPU, and an inherited TRITON_INTERPRET=1 would keep it on.
  unset TRITON_INTERPRET
else
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi

# ------------------------------------------------------------------------------------- step bodies
# Each runs as `bash gpu_check.sh OUTDIR --step-body NAME` under `timeout`, its output in NAME.log.

body_env() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); mode $MODE; $CORES cores; repo $REPO"
  nvidia-smi 2>&1 | head -n 20 || echo "nvidia-smi: not found"
  "$PY" --version
  "$PY" - <<'EOF'
import importlib, importlib.metadata as md
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("GPU", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
for name in ["triton", "numpy", "pytest", "pytest-timeout", "ninja", "pybind11", "setuptools", "safetensors",
             "pillow", "tqdm", "matplotlib", "diffusers", "huggingface_hub", "pytorch_wavelets", "ptwt",
             "PyWavelets", "haar_pytorch", "nvtx", "torchmetrics"]:
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
EOF
  command -v nvcc >/dev/null && nvcc --version | grep -i release || echo "nvcc: not found"
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | head -n 2 || echo "compute-sanitizer: not found"
  [ -f "$WHEELS/manifest.txt" ] && { echo "carried: $WHEELS/manifest.txt"; cat "$WHEELS/manifest.txt"; }
  echo "env: $("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'), \
torch $("$PY" -c 'import torch; print(torch.__version__)')"
}

body_wheels() {
  shopt -s nullglob
  local wheels=("$WHEELS"/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "wheels: none carried in $WHEELS (diffusers, the peers and nvtx stay missing)"
    return 0
  fi
  local stamp
  stamp="$(ls -l "${wheels[@]}" | md5sum | cut -c1-32)"
  if [ -f "$SITE/.stamp" ] && [ "$(cat "$SITE/.stamp")" = "$stamp" ]; then
    echo "wheels: ${#wheels[@]} already installed in $SITE"
    return 0
  fi
  rm -rf "$SITE" && mkdir -p "$SITE"
  "$PY" -m pip install --no-index --no-deps --disable-pip-version-check --target "$SITE" "${wheels[@]}" || return 1
  echo "$stamp" > "$SITE/.stamp"
  "$PY" - <<'EOF'
import importlib
failed = []
for module in ["diffusers", "pytorch_wavelets", "ptwt", "pywt", "haar_pytorch", "nvtx", "torchmetrics"]:
    try:
        importlib.import_module(module)
    except Exception as error:  # report every module
        failed.append(f"{module} ({type(error).__name__}: {error})")
print("imports failed: " + "; ".join(failed) if failed else "every carried package imports")
EOF
  echo "wheels: ${#wheels[@]} installed into $SITE"
}

body_build() {
  local arch
  if [ "$MODE" = "gpu" ]; then
    arch="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}"
    [ -n "$arch" ] || { echo "no GPU visible to torch"; return 1; }
    if [ -z "${CUDA_HOME:-}" ]; then
      CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")"
      export CUDA_HOME
    fi
    # torch's CUDA headers include cuBLAS, cuSPARSE, ... headers; a pip-installed torch ships them in
    # its nvidia wheels, which a bare toolkit may lack (as scripts/ci_cuda_build.sh does).
    local nvidia
    nvidia="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia"))')"
    for inc in "$nvidia"/cu*/include; do [ -d "$inc" ] && export CPATH="$inc${CPATH:+:$CPATH}"; done
    echo "build: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=${MAX_JOBS:-$CORES} CUDA_HOME=$CUDA_HOME"
    FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-$CORES}" \
      "$PY" setup.py build_ext --inplace || return 1
  else
    echo "build: FORCE_ONLY_CPU=1 MAX_JOBS=${MAX_JOBS:-$CORES} (rehearsal: the CPU kernels only)"
    FORCE_ONLY_CPU=1 MAX_JOBS="${MAX_JOBS:-$CORES}" "$PY" setup.py build_ext --inplace || return 1
  fi
  "$PY" -c "
import ddpm_pa_fast as D
from ddpm_pa_fast import ops
reason = ops.extension_unavailable_reason()
assert reason is None, reason
device = 'cuda' if '$MODE' == 'gpu' else 'cpu'
print('build: extension loads; backends for', device, 'tensors:', D.available_backends(device))
"
}

# pytest in SHARDS processes side by side, each with its own log and a time limit a little inside the
# step's, so that each prints its summary when stopped (the -v lines name every test that finished).
run_shards() {
  local name=$1 shards=$2 budget=$3; shift 3
  local threads=$(( CORES / (shards + 2) )); [ "$threads" -ge 1 ] || threads=1
  local timeout_opt=() pids=() k rc=0
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    timeout_opt=(--timeout "$(( 120 * SCALE ))")
  else
    echo "pytest-timeout is not installed: no per-test limit (the step's budget still applies)"
  fi
  for k in $(seq 1 "$shards"); do
    GPU_CHECK_SHARD="$k/$shards" OMP_NUM_THREADS="$threads" PYTHONPATH="$REPO/scripts/gpu_check:$PYTHONPATH" \
      timeout -s INT -k 10 "$budget" "$PY" -m pytest -p pytest_shard -p no:cacheprovider -v -rfE \
      --tb=short --maxfail=25 "${timeout_opt[@]}" --junitxml="$OUTDIR/$name.$k.xml" "$@" \
      > "$OUTDIR/$name.$k.log" 2>&1 &
    pids+=($!)
  done
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}"; local r=$?
    echo "shard $((k + 1))/$shards: exit $r, $(tail -n 1 "$OUTDIR/$name.$((k + 1)).log")"
    # 5: no test selected in this shard (fine); 124: the shard's time limit.
    if [ "$r" -ne 0 ] && [ "$r" -ne 5 ]; then rc=$r; fi
  done
  return "$rc"
}

shard_budget() { echo $(( ${GPU_CHECK_STEP_BUDGET:-150} - 15 )); }

body_tests_cuda() {
  local files=(tests --ignore=tests/test_triton.py --ignore=tests/test_fewshot.py)
  if [ "$MODE" = "gpu" ]; then
    run_shards tests_cuda "$(( CORES >= 16 ? 3 : 1 ))" "$(shard_budget)" "${files[@]}" -k cuda
  else
    # The GPU selection, which the CPU skips (proves the selection and the plugins), then its CPU twin.
    local rc=0
    run_shards tests_cuda 1 "$(( $(shard_budget) / 4 ))" "${files[@]}" -k cuda || rc=$?
    run_shards tests_cuda_cpu_twin 1 "$(( $(shard_budget) * 3 / 4 ))" tests/test_ops.py \
      -k "cpu and not lower_instruction_sets" || rc=$?
    return "$rc"
  fi
}

body_tests_triton() {
  if [ "$MODE" = "gpu" ]; then
    run_shards tests_triton "$(( CORES >= 16 ? 6 : 2 ))" "$(shard_budget)" tests/test_triton.py
  else
    run_shards tests_triton 1 "$(shard_budget)" tests/test_triton.py -k "cpu and not compile_for_gpu_targets"
  fi
}

# compute-sanitizer over ops_once.py; in the rehearsal ops_once.py alone on the CPU backend.
sanitize() {
  local tool=$1 backend=$2; shift 2
  if [ "$MODE" = "gpu" ]; then
    command -v compute-sanitizer >/dev/null || { echo "compute-sanitizer not found"; return 1; }
    # No caching allocator: an access past a tensor's end must leave its allocation to be caught.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 50 \
      "$@" "$PY" scripts/gpu_check/ops_once.py --device cuda --backend "$backend"
  else
    echo "rehearsal: would run: compute-sanitizer --tool $tool --error-exitcode 99 --print-limit 50 $*" \
      "$PY scripts/gpu_check/ops_once.py --device cuda --backend $backend"
    "$PY" scripts/gpu_check/ops_once.py --device cpu --backend cpu
  fi
}
# Only our CUDA kernels (namespace ddpm_pa) are instrumented, where this compute-sanitizer can filter.
ours_only() {
  if [ "$MODE" != "gpu" ] || compute-sanitizer --help 2>/dev/null | grep -q -- "--kernel-name"; then
    echo "--kernel-name kns=ddpm_pa"
  fi
}
# shellcheck disable=SC2046
body_memcheck() { sanitize memcheck cuda $(ours_only); }
# shellcheck disable=SC2046
body_racecheck() { sanitize racecheck cuda $(ours_only) --racecheck-report analysis; }
body_memcheck_triton() {
  if [ "$MODE" = "gpu" ]; then sanitize memcheck triton; else
    echo "rehearsal: ops_once.py on the Triton interpreter stands in for memcheck of the Triton kernels"
    "$PY" scripts/gpu_check/ops_once.py --device cpu --backend triton --dtypes float32
  fi
}

body_train() {
  "$PY" -c "import diffusers" 2>/dev/null || { echo "train: diffusers not installed (carry it: scripts/gpu_carry.sh)"; return 77; }
  if [ "$MODE" = "gpu" ]; then
    "$PY" scripts/gpu_check/train_step.py --device cuda --backends cuda triton --json "$OUTDIR/train.json"
  else
    "$PY" scripts/gpu_check/train_step.py --device cpu --backends cpu --json "$OUTDIR/train.json"
  fi
}

body_bench() {
  local device=cuda sizes
  [ "$MODE" = "gpu" ] || device=cpu
  sizes="${GPU_CHECK_BENCH_SIZES:-8x3x256x256 32x3x256x256 8x4x64x64 8x3x256x256/J3}"
  mkdir -p "$OUTDIR/bench"
  # First the per-call host cost against native ops (seconds), then the ops at full sizes (up to
  # 32x3x256x256, and 8x4x64x64: SD-style latents), --quick's repetitions; ours (CUDA and Triton on a
  # GPU), eager torch and torch.compile; on CUDA each row also has the kernels' own time and a CUDA
  # graph replay's, each against the memory bound. CSV and markdown rewritten after every case.
  "$PY" -m benchmarks.bench_ops --device "$device" --overhead --rounds 100 --out "$OUTDIR/bench" || return 1
  # shellcheck disable=SC2086
  "$PY" -m benchmarks.bench_ops --device "$device" --few-repeats --sizes $sizes \
    --providers ours torch compile --out "$OUTDIR/bench" || return 1
  echo "bench: $(grep -c ',ok,' "$OUTDIR/bench/$device.csv" || true) rows ok of $(( $(wc -l < "$OUTDIR/bench/$device.csv") - 1 ))"
}

if [ -n "$BODY" ]; then
  "body_$BODY"
  exit $?
fi

# ------------------------------------------------------------------------------------- the driver
START=$(date +%s)
DEADLINE=$(( START + TOTAL ))
say() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*" | tee -a "$OUTDIR/run.log"; }
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

if [ -z "$ONLY" ]; then
  rm -f "$OUTDIR"/*.log "$OUTDIR"/*.xml "$OUTDIR/steps.tsv" "$OUTDIR/summary.md" "$OUTDIR/train.json"
  rm -rf "$OUTDIR/bench"
fi
[ -f "$OUTDIR/steps.tsv" ] || printf 'step\tstatus\trc\tseconds\tbudget\tlog\tnote\n' > "$OUTDIR/steps.tsv"
{
  echo "MODE=$MODE"
  echo "STARTED=$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "CORES=$CORES"
  echo "TOTAL_BUDGET_S=$TOTAL"
  echo "PYTHON=$("$PY" --version 2>&1) ($PY)"
  # One interpreter for both (each start imports torch: seconds on a loaded machine).
  "$PY" -c '
import torch
print("TORCH=" + torch.__version__, "CUDA", torch.version.cuda)
try:
    import triton
    print("TRITON=" + triton.__version__)
except ImportError as error:
    print("TRITON=missing (%s)" % error)' 2>&1 | grep -E '^(TORCH|TRITON)='
  echo "NVCC=$(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo none)"
  if [ "$MODE" = "gpu" ]; then
    echo "DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  else
    echo "DEVICE=cpu ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
  fi
  echo "COMMIT=$(git rev-parse --short HEAD 2>/dev/null || grep -m1 '^commit' "$WHEELS/manifest.txt" 2>/dev/null || echo unknown)"
  echo "WHEELS=$(ls "$WHEELS"/*.whl 2>/dev/null | wc -l) in ${WHEELS#"$REPO"/}"
} > "$OUTDIR/run.env"

summarize() { "$PY" scripts/gpu_check/summary.py "$OUTDIR" 2>>"$OUTDIR/run.log" || true; }

# step NAME CAP RESERVE: runs NAME's body within min(CAP, time left - RESERVE) seconds (both scaled).
step() {
  local name=$1 cap=$(( $2 * SCALE )) reserve=$(( $3 * SCALE ))
  wanted "$name" || return 0
  local budget=$(( DEADLINE - $(date +%s) - reserve ))
  [ "$budget" -le "$cap" ] || budget=$cap
  local log="$name.log" t0 rc status note=""
  if [ "$budget" -lt $(( 10 * SCALE )) ]; then
    say "$name: skipped, ${budget}s left"
    printf '%s\tskipped\t-\t0\t%s\t%s\tno time left\n' "$name" "$budget" "$log" >> "$OUTDIR/steps.tsv"
    echo "skipped: no time left" > "$OUTDIR/$log"
    summarize
    return 0
  fi
  say "$name: start (budget ${budget}s)"
  t0=$(date +%s)
  local mode_flag=()
  [ "$MODE" = gpu ] || mode_flag=(--cpu-rehearsal)
  GPU_CHECK_STEP_BUDGET="$budget" timeout -s INT -k 20 "$budget" \
    bash "$SELF" "$OUTDIR" --step-body "$name" "${mode_flag[@]}" > "$OUTDIR/$log" 2>&1
  rc=$?
  case $rc in
    0) status=pass ;;
    124|137) status=timeout; note="stopped after ${budget}s" ;;
    77) status=skipped; note="$(tail -n 1 "$OUTDIR/$log")" ;;
    *) status=fail; note="exit $rc" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$budget" "$log" \
    "$note" >> "$OUTDIR/steps.tsv"
  say "$name: $status (exit $rc, $(( $(date +%s) - t0 ))s) -> $OUTDIR/$log"
  summarize
}

say "mode $MODE, OUTDIR $OUTDIR, budget ${TOTAL}s, $CORES cores, python $PY${ONLY:+, only $ONLY}"
# env and wheels are short and everything after needs them: no reserve, they always run.
step env 30 0
step wheels 40 0
build_ok=1
step build 240 220
if wanted build && ! grep -q $'^build\tpass' "$OUTDIR/steps.tsv"; then build_ok=0; fi
if [ "$build_ok" = 1 ]; then
  # Side by side: correctness on the GPU. Each gets min(cap, time left - the benchmark's reserve).
  step tests_cuda 170 100 &
  step tests_triton 170 100 &
  step memcheck 150 100 &
  step racecheck 150 100 &
  step memcheck_triton 150 100 &
  step train 120 100 &
  wait
  step bench 130 8
else
  say "the build failed: the steps that need it are not run (see $OUTDIR/build.log)"
  for s in tests_cuda tests_triton memcheck racecheck memcheck_triton train bench; do
    wanted "$s" && printf '%s\tskipped\t-\t0\t0\tbuild.log\tthe build failed\n' "$s" >> "$OUTDIR/steps.tsv"
  done
fi
echo "WALL_S=$(( $(date +%s) - START ))" >> "$OUTDIR/run.env"
echo "FINISHED=1" >> "$OUTDIR/run.env"
summarize
say "done in $(( $(date +%s) - START ))s: $OUTDIR/summary.md"
sed -n '1,3p' "$OUTDIR/summary.md"
if awk -F'\t' 'NR > 1 && $2 != "pass" && $2 != "skipped" { bad = 1 } END { exit bad ? 0 : 1 }' "$OUTDIR/steps.tsv"; then
  exit 1
fi
exit 0
