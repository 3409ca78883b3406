#!/usr/bin/env bash
# Train the demo model (models/demo) from scratch on one GPU in about 10 minutes: the synthetic-face
# dataset (2,000 persons x 8 images), then every stage (vae, face, base, pva1, pva2) fitted into a time
# budget by `python -m pva.train run --budget-minutes`, at batch sizes a GPU wants. Writes the trained
# weights (weights.safetensors, what `python -m pva.train export` needs), the log and the training
# output to OUT when it ends (also when training fails or runs past TRAIN_TIMEOUT seconds, default 540),
# so a partial run still returns every finished stage.
#
#   scripts/gpu/train_demo.sh OUT [BUDGET_MINUTES, default 7.5] [more `pva.train run` arguments]
#   # then, on any machine with the repo's .venv:
#   cat OUT/weights.safetensors.part-* > W/weights.safetensors
#   .venv/bin/python -m pva.train export --size demo --work W --out models/demo
#
# To train further from a shipped model instead of from scratch: recover its weights here first
# (`.venv/bin/python -m pva.train import --size demo --model models/demo --work W`, which needs onnx),
# carry W's file to the device and name it in INIT_WEIGHTS, and pick the stages:
#   INIT_WEIGHTS=W/weights.safetensors scripts/gpu/train_demo.sh OUT 8 --stages pva1,decoder --compile reduce-overhead
# The next demo model (models/train/README.md, "What the latents carry"): retrain from the detail-weighted
# VAE, keeping the face embedder and warm-starting the UNet and text encoder:
#   INIT_WEIGHTS=W/weights.safetensors scripts/gpu/train_demo.sh OUT 8 --stages vae,base,pva1,pva2
# (the file is 17.5 MB; the device copies at most 64 MiB of working tree, so delete models/tiny and
# models/demo from the checkout for that call and `git checkout models` afterwards).
# Needs python3 with CUDA torch, transformers and safetensors, plus models/requirements.txt's diffusers
# and open_clip_torch (scripts/gpu/python-env.sh installs them from carried wheels).
# Environment: PYTHON (default python3), DEVICE (default cuda), PERSONS (default 2000), JOBS (default
# the CPU count) and WORK (checkpoints, default /tmp/pva-demo-work; rerunning with the same WORK resumes).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: scripts/gpu/train_demo.sh OUT [BUDGET_MINUTES] [pva.train run arguments]}
budget=${2:-7.5}
shift $(( $# >= 2 ? 2 : 1 ))
source scripts/gpu/python-env.sh
device=${DEVICE:-cuda}
work=${WORK:-/tmp/pva-demo-work}
data=${DATA:-/tmp/pva-demo-faces}
mkdir -p "$out" "$work"
if [ -n "${INIT_WEIGHTS:-}" ] && [ ! -f "$work/weights.safetensors" ]; then
  cp "$INIT_WEIGHTS" "$work/weights.safetensors"
fi
collect() {
  # weights.safetensors in 15 MB parts (a device run returns files of at most 16 MB); rejoin with
  #   cat OUT/weights.safetensors.part-* > WORK/weights.safetensors
  if [ -f "$work/weights.safetensors" ]; then
    rm -f "$out"/weights.safetensors.part-*
    split -b 15M "$work/weights.safetensors" "$out/weights.safetensors.part-"
  fi
  if [ -f "$work/log.jsonl" ]; then cp "$work/log.jsonl" "$out/log.jsonl"; fi
}
trap collect EXIT
[ "$device" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONUNBUFFERED=1
"$python" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
if [ ! -d "$data" ]; then
  "$python" -m pva.train data --out "$data" --persons "${PERSONS:-2000}" --images 8 --jobs "${JOBS:-$(nproc)}"
fi
timeout "${TRAIN_TIMEOUT:-540}" "$python" -m pva.train run --size demo --data "$data" --work "$work" --device "$device" \
  --budget-minutes "$budget" --log-every 250 --save-seconds 60 \
  --set vae.batch=128 --set face.batch=256 --set base.batch=256 --set pva1.batch=256 --set pva2.batch=128 \
  --set decoder.batch=256 \
  "$@" 2>&1 | tee -a "$out/train.log"
