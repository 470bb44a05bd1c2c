#!/usr/bin/env bash
# Development build into a private directory, so several people (or helper
# sessions) can build the same tree at once without touching ./build or the
# source package:   tools/devbuild.sh /tmp/me  &&  PYTHONPATH=/tmp/me/lib pytest
# The .py files are symlinked, so Python edits need no rebuild; C edits do.
set -euo pipefail
out=${1:?usage: tools/devbuild.sh OUTDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/tmp" "$out/lib/pykfac"
cd "$here"
python3 setup.py -q build_ext --build-temp "$out/tmp" --build-lib "$out/lib" >"$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
grep -E "warning|error" "$out/build.log" | grep -v "^running" || true
for f in "$here"/pykfac/*.py; do ln -sf "$f" "$out/lib/pykfac/$(basename "$f")"; done
# remove links to deleted modules
for f in "$out"/lib/pykfac/*.py; do [ -e "$f" ] || rm -f "$f"; done
echo "built into $out/lib"
