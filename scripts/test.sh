#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FGRPO_CACHE="${FGRPO_CACHE:-$PWD/.cache/fgrpo}"
.venv/bin/python -m pytest -q "$@"
