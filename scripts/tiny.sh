#!/usr/bin/env bash
# Set up (if needed) and align the tiny Wan model on this machine (local backend).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fgrpo launch recipes/tiny.py --backend local "$@"
