#!/usr/bin/env bash
# Create or refresh .venv with exactly the pins of pyproject.toml (dependencies + dev).
# Idempotent: a stamp holding the hash of pyproject.toml makes a second run return at once.
# Usage: bash launch/setup.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.gtgen-setup-stamp

"$PYTHON" - <<'PY' || { echo "setup: Python >= 3.11 is required (set PYTHON=...)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
PY

want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x $VENV/bin/python && -f $STAMP && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "setup: installing the pinned environment into $VENV (first run downloads several GB)" >&2
[[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
req=$(mktemp)
trap 'rm -f "$req" "$req.nodeps"' EXIT
# pyproject.toml is the one place pins are written; turn it into a requirements list.
"$VENV/bin/python" - "$req" <<'PY'
import sys, tomllib
config = tomllib.load(open("pyproject.toml", "rb"))
project = config["project"]
pins = project["dependencies"] + project["optional-dependencies"]["dev"]
open(sys.argv[1], "w").write("\n".join(pins) + "\n")
open(sys.argv[1] + ".nodeps", "w").write("\n".join(config["tool"]["gtgen"]["weight-packages"]))
PY
quiet() { grep -v "is ignored: it is neither a file nor a directory" || true; }  # pip.conf noise
"$VENV/bin/python" -m pip install --quiet --upgrade pip 2>&1 | quiet
"$VENV/bin/python" -m pip install --quiet --progress-bar off -r "$req" 2>&1 | quiet
"$VENV/bin/python" -m pip install --quiet --progress-bar off --no-deps -r "$req.nodeps" 2>&1 | quiet
echo "$want" > "$STAMP"
echo "setup: done ($VENV)" >&2
