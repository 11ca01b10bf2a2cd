#!/usr/bin/env bash
# Create .venv with the CPU build of torch and fgrpo (editable) with its test extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# torch first, by exact version: a bare `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
# open_clip is the reference architecture in tests/rewards/test_hpsv2.py. --no-deps: it requires
# torchvision (only CUDA builds exist, which do not load with CPU torch) and timm, neither needed there.
.venv/bin/pip install -q --no-deps "open_clip_torch==3.3.0"
