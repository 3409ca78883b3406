#!/usr/bin/env bash
# How fast the trainer's diffusion step runs on one GPU, eager vs torch.compile (default and
# reduce-overhead = CUDA graphs): the `base` stage at batch 256 on 500 synthetic persons, steps/s
# measured between steps 100 and 300 of each run (compilation excluded). Prints one line per mode.
# The demo training (scripts/gpu/train_demo.sh) ran at 14-18 steps/s eager on an H100, bound by
# Python and kernel launches; this says how much a compiled step would buy. About 4 minutes.
#
#   scripts/gpu/train_speed.sh [modes, default: off default reduce-overhead]
# Wheels: scripts/gpu/python-env.sh.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/gpu/python-env.sh
device=${DEVICE:-cuda}
export PYTHONUNBUFFERED=1
data=/tmp/pva-speed-faces
"$python" -m pva.train data --out "$data" --persons "${PERSONS:-500}" --images 8 --jobs "${JOBS:-$(nproc)}" || exit 1
for mode in ${@:-off default reduce-overhead}; do
  work=/tmp/pva-speed-$mode
  rm -rf "$work"
  start=$(date +%s)
  timeout "${MODE_TIMEOUT:-120}" "$python" -m pva.train run --size demo --data "$data" --work "$work" \
    --device "$device" --stages base --set base.steps=300 --set base.batch="${BATCH:-256}" --log-every 100 \
    --save-seconds 1e9 --compile "$mode" ${EXTRA:-} > "$work.log" 2>&1
  rc=$?
  "$python" - "$work/log.jsonl" "$mode" "$rc" "$(( $(date +%s) - start ))" <<'PY'
import json, sys
path, mode, rc, wall = sys.argv[1:]
try:
    rows = {r["step"]: r for r in map(json.loads, open(path))}
except FileNotFoundError:
    rows = {}
if 100 in rows and 300 in rows:
    rate = 200 / (rows[300]["time"] - rows[100]["time"])
    print(f"{mode:>16}: {rate:6.1f} steps/s (steps 100-300), loss {rows[300]['loss']:.4f}, run {wall} s, rc {rc}")
else:
    print(f"{mode:>16}: no timing (rc {rc}, {wall} s); log tail follows")
PY
  [ -f "$work/log.jsonl" ] && grep -q '"step": 300' "$work/log.jsonl" || tail -5 "$work.log"
done
