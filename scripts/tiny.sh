#!/usr/bin/env bash
# Set up (if needed) and align the miniature world's pre-trained model on this machine (local
# backend). Its first run copies that model's released build (fgrpo/miniature/released/) into
# $FGRPO_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fgrpo launch recipes/miniature.py --backend local "$@"
