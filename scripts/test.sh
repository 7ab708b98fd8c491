#!/usr/bin/env bash
# The README's test command: sets up the environment on a fresh machine, then runs the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k triton -x`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup_env.sh
python -m pytest tests "$@"
