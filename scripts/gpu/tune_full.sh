#!/usr/bin/env bash
# PVA's 40-step adapter tuning at full size (SD-2-inpainting geometry, random weights) on one GPU, in
# PyTorch: seconds for 40 steps, milliseconds per step and peak GPU memory, for the paper's loop
# (batch 1 x accumulation 2) and the batched step. Meant to finish well under 10 minutes on one H100
# (building the random 1.3B-parameter stack on the CPU is the slow part).
#
#   scripts/gpu/tune_full.sh [more models/export/tune_full.py arguments, e.g. --loops batched]
#
# Needs python3 with CUDA torch, transformers and safetensors, plus models/requirements.txt's
# diffusers and open_clip_torch. On a machine without network, download their wheels here first:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 open_clip_torch==3.3.0 \
#     ftfy==6.3.1 wcwidth regex==2026.11.19
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
if ! "$python" -c "import diffusers, open_clip" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --target /tmp/pva-site .whl/*.whl
    export PYTHONPATH=/tmp/pva-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "tune_full.sh: needs diffusers and open_clip_torch (see the header for the wheels)" >&2
    exit 2
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1
exec timeout 570 "$python" models/export/tune_full.py --size sd2 --device cuda --steps 40 "$@"
