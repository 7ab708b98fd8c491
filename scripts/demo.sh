#!/usr/bin/env bash
# The main job, from a fresh clone: set up the environment, then adapt the bundled Fashion-MNIST source
# model (assets/source_model, 8 classes) to 10 photos of ankle boots, a class it never saw, with plain
# fine-tuning, with DDPM-PA as published and with DDPM-PA at the study's frozen settings (or, where those
# are the published ones, at the validation's best-fidelity weighting), one seed each; evaluate each at
# the end and print the table (about 8 minutes on 2 CPU cores after set-up).
#
#   bash scripts/demo.sh [extra `ddpm-pa-fast demo` options, e.g. --split validation]
#
# Outputs in ${DEMO_OUT:-demo_output}/: comparison.png, curves.png, <model>/samples.png for source,
# finetune, ddpm-pa-published and ddpm-pa (or ddpm-pa-best-validation), metrics.json.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start=$(date +%s)
# shellcheck source=setup_env.sh
source "$repo/scripts/setup_env.sh"
echo "[demo] set-up took $(( $(date +%s) - start )) s"
ddpm-pa-fast demo --output-dir "${DEMO_OUT:-$repo/demo_output}" "$@"
echo "[demo] total wall time $(( $(date +%s) - start )) s"
