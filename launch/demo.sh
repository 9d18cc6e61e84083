#!/usr/bin/env bash
# The offline demo, end to end: set-up, then data -> tokenizer -> codes -> GPT -> samples
# -> evaluation on the built-in mnist, and runs/demo/report.md. Re-run to resume.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
exec .venv/bin/python -m launch.demo "$@"
