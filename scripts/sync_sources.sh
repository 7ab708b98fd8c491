#!/usr/bin/env bash
# Mirrors the repository's sources into a scratch folder where another environment builds them, so
# that the work tree's own build (ddpm_pa_fast/_C*.so, built for the main venv's torch) is never
# clobbered by a build for another torch.
#
#   bash scripts/sync_sources.sh DEST
#
# The sources are what git would commit (tracked + untracked, minus ignored files). A file is copied
# only when its content changed, and the copy gets the current time, so ninja recompiles exactly what
# changed (preserving the work tree's times could leave an object newer than an edit made while it was
# being built). Files gone from the sources are removed from DEST; build outputs there are kept
# (build/, *.so, build.log, __pycache__/, *.egg-info/), so an unchanged tree is not rebuilt.
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$1"
STAGE="$DEST.staging"

rm -rf "$STAGE" && mkdir -p "$STAGE" "$DEST"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
  | tar --null --no-recursion --ignore-failed-read -T - -cf - 2>/dev/null) | tar -xf - -C "$STAGE"
(cd "$DEST" && find . -type f ! -path './build/*' ! -name '*.so' ! -name build.log \
  ! -path '*/__pycache__/*' ! -path '*.egg-info/*') | while IFS= read -r f; do
  [ -e "$STAGE/$f" ] || rm -f "$DEST/$f"
done
(cd "$STAGE" && find . -type f) | while IFS= read -r f; do
  cmp -s "$STAGE/$f" "$DEST/$f" || { mkdir -p "$(dirname "$DEST/$f")" && cp "$STAGE/$f" "$DEST/$f"; }
done
rm -rf "$STAGE"
