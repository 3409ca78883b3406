#!/usr/bin/env bash
# PVA's 40-step adapter tuning at full size (SD-2-inpainting geometry, random weights) on one GPU, in
# PyTorch: seconds for 40 steps, milliseconds per step and peak GPU memory, for the paper's loop
# (batch 1 x accumulation 2) and the batched step. Meant to finish well under 10 minutes on one H100
# (building the random 1.3B-parameter stack on the CPU is the slow part).
#
#   scripts/gpu/tune_full.sh [more `python -m pva.bench.tune_full` arguments, e.g. --loops batched]
#
# Needs python3 with CUDA torch, transformers and safetensors, plus models/requirements.txt's
# diffusers and open_clip_torch (scripts/gpu/python-env.sh installs them from carried wheels).
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/python-env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1
exec timeout 570 "$python" -m pva.bench.tune_full --size sd2 --device cuda --steps 40 "$@"
