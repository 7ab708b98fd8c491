#!/usr/bin/env bash
# Prepares the carry for the GPU check (docs/gpu_checklist.md): downloads the pinned wheels of
# scripts/gpu_check/wheels.txt for the GPU machine (Python 3.12, Linux x86-64, no network there) into
# the ignored folder .gpu_wheels/, checks that together with what that machine has they meet every
# requirement, that they stay under 40 MiB, writes .gpu_wheels/manifest.txt (commit, sizes, sha256),
# and prints the one command to run there.
#
#   bash scripts/gpu_carry.sh
#   GPU_CARRY_PYTHON_VERSION=3.11 GPU_CARRY_DIR=.gpu_wheels-py311 bash scripts/gpu_carry.sh
#       # the same pins for this machine's Python: what the CPU rehearsal installs
#
# Knobs: PYTHON (whose pip downloads; default python3), GPU_CARRY_DIR, GPU_CARRY_PYTHON_VERSION.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${GPU_CARRY_DIR:-$REPO/.gpu_wheels}"
case "$DIR" in /*) ;; *) DIR="$REPO/$DIR" ;; esac
PYV="${GPU_CARRY_PYTHON_VERSION:-3.12}"
PY="${PYTHON:-python3}"
LIMIT_BYTES=$(( 40 * 1024 * 1024 ))
cd "$REPO"

# Into a fresh folder, then in place of the old one: no stale wheel of an earlier pin stays behind.
TMP="$DIR.download"
rm -rf "$TMP" && mkdir -p "$TMP"
# Lines marked "sdist only" have no wheel on the registry: built here (pure Python, any platform).
grep -v 'sdist only' scripts/gpu_check/wheels.txt > "$TMP.req"
mapfile -t sdists < <(grep 'sdist only' scripts/gpu_check/wheels.txt | sed 's/#.*//; s/ *$//')
echo "[gpu_carry] downloading $(grep -cv '^\s*\(#\|$\)' "$TMP.req") pinned wheels for CPython $PYV, Linux x86-64"
quiet() { grep -v "^WARNING: Location" || true; }   # this machine's pip config names absent local indexes
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYV" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
  -r "$TMP.req" -d "$TMP" 2>&1 | quiet
rm -f "$TMP.req"
if [ ${#sdists[@]} -gt 0 ]; then
  echo "[gpu_carry] building pure-Python wheels from source distributions: ${sdists[*]}"
  "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$TMP" "${sdists[@]}" 2>&1 | quiet
fi
rm -rf "$DIR" && mv "$TMP" "$DIR"

"$PY" scripts/gpu_check/check_carry.py "$DIR" --python-version "$PYV"

total=$(cat "$DIR"/*.whl | wc -c)
echo "[gpu_carry] $(find "$DIR" -name '*.whl' | wc -l) wheels, $(( total / 1024 / 1024 )) MiB ($total bytes) in ${DIR#"$REPO"/}"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "[gpu_carry] FAILED: over the 40 MiB limit" >&2
  exit 1
fi
{
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "made $(date -u '+%Y-%m-%d %H:%M UTC') for CPython $PYV, Linux x86-64; $total bytes"
  (cd "$DIR" && sha256sum -- *.whl)
} > "$DIR/manifest.txt"

carry="${DIR#"$REPO"/}"
cat <<EOF
[gpu_carry] ready. The GPU slot: one command (the check ends within 7.5 minutes; give it 560 s),
carrying ${carry} (ignored by git, so it must be named). The device tool brings back at most 8 files,
so the logs come back as one archive (docs/gpu_checklist.md, section 2):

    timeout -k 5 505 bash scripts/gpu_check.sh /tmp/gc > /tmp/gc.console 2>&1; cp /tmp/gc.console /tmp/gc/;
    tar czf \$OUT/gpu_check.tgz -C /tmp gc; cp /tmp/gc/summary.md \$OUT/

  run tool: that command, carry=["${carry}"], timeout_s=560; then read summary.md first.
EOF
