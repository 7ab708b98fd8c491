#!/usr/bin/env bash
# The main job, from a fresh clone: set up the environment, then adapt the bundled 32x32 source model
# (assets/source_model) to the bundled 10-shot textured target set (assets/target_10shot) with DDPM-PA
# and with plain fine-tuning, sample both, and print the metrics table.
#
#   bash scripts/demo.sh [extra `ddpm-pa-fast demo` options, e.g. --steps 300]
#
# Outputs in ${DEMO_OUT:-demo_output}/: target.png, {source,ddpm-pa,finetune}/samples.png, metrics.json.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
# shellcheck source=setup_env.sh
source "$repo/scripts/setup_env.sh"
echo "[demo] set-up took $(( $(date +%s) - start )) s"
ddpm-pa-fast demo \
  --model-dir "$repo/assets/source_model" \
  --data-dir "$repo/assets/target_10shot" \
  --output-dir "${DEMO_OUT:-$repo/demo_output}" \
  "$@"
echo "[demo] total wall time $(( $(date +%s) - start )) s"
