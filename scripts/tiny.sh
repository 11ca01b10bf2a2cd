#!/usr/bin/env bash
# Set up (if needed) and align the miniature world's pre-trained model on this machine (local
# backend). Its first run pre-trains that model (about 10 minutes on 2 cores) into $FGRPO_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fgrpo launch recipes/miniature.py --backend local "$@"
