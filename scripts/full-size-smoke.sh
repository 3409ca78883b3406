#!/usr/bin/env bash
# The full-size smoke (not in CI: ~45 min and ~20 GB on 2 cores). A customer's first run, with random
# weights in the real formats:
#   1. checkpoints  a diffusers SD-2-inpainting directory, the paper's nested FPIP.bin and an ArcFace
#                   iresnet50 .pth at full width (python -m pva.checkpoints)
#   2. export       python -m pva.export --base --pva --face (every part loaded from them, summary lines)
#   3. graphs       each exported graph against the PyTorch stack built from the same checkpoints
#                   (relative error max|onnx - torch| / max|torch| <= 1e-3; python -m pva.smoke)
#   4. parity       the Rust pipeline against the Python reference on the same inputs (fixtures written
#                   by python -m pva.reference.fixtures on this model; cargo test --test parity with
#                   PVA_PARITY_MODEL/PVA_PARITY_FIXTURES: per-step latents and the final image)
#   5. edit         pva-worker edit of examples/job.json at guidance 1 and 3
#   6. tune         pva-worker tune, 2 steps, two references
# Each step prints its wall time and peak RSS (/usr/bin/time); the summary is in WORK/summary.txt.
#
#   scripts/full-size-smoke.sh [--work DIR] [--size sd2|tiny] [--resolution PX] [--steps N] [--keep]
#                              [--from graphs|parity|edit|tune]
#
# --size tiny runs the same steps on the narrow architecture in a few minutes (the script's own check).
# --resolution exports at another resolution (recorded in the manifest) when 512 px does not fit.
# WORK (default /tmp/pva-full-size-smoke) is removed first unless --keep; it holds ~15 GB at sd2.
# --from STEP reruns from that step on an earlier run's WORK (the export takes ~20 min at sd2 here;
# `graphs` needs the checkpoints, which are removed once the graphs pass).
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/pva-full-size-smoke
size=sd2
resolution=""
steps=3
keep=0
from=checkpoints
while [ $# -gt 0 ]; do
  case "$1" in
    --work) work="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --resolution) resolution="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --keep) keep=1; shift ;;
    --from) from="$2"; keep=1; shift 2 ;;
    *) echo "usage: scripts/full-size-smoke.sh [--work DIR] [--size sd2|tiny] [--resolution PX] [--steps N] [--keep] [--from STEP]" >&2; exit 2 ;;
  esac
done
scripts/setup-ort.sh >/dev/null
scripts/setup-python.sh >/dev/null
cargo build --release --locked --bins --quiet
[ "$keep" = 1 ] || rm -rf "$work"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
py="$PWD/.venv/bin/python"
summary="$work/summary.txt"
[ "$from" != checkpoints ] || : >"$summary"
# at STEP: true when STEP is at or after --from.
steps_in_order=(checkpoints graphs parity edit tune)
at() {
  local s
  for s in "${steps_in_order[@]}"; do
    [ "$s" = "$from" ] && return 0
    [ "$s" = "$1" ] && return 1
  done
  echo "unknown --from step: $from" >&2; exit 2
}
say() { echo "$*" | tee -a "$summary"; }
# measure LABEL COMMAND...: runs it, its output to WORK/LABEL.log (and the terminal), then one summary line.
measure() {
  local label="$1"; shift
  echo "== $label: $*"
  /usr/bin/time -f "%e %M" -o "$work/$label.time" "$@" 2>&1 | tee "$work/$label.log"
  read -r wall rss <"$work/$label.time"
  say "$(printf '%-14s %8.1f s  peak RSS %5.1f GB' "$label" "$wall" "$(echo "$rss * 1024 / 10^9" | bc -l)")"
}
say "full-size smoke: size $size${resolution:+ at $resolution px}, $steps denoising steps, $(nproc) cores, $(date -u +%FT%TZ)"

ckpt="$work/checkpoints"
sources=(--base "$ckpt/stable-diffusion-2-inpainting" --pva "$ckpt/FPIP.bin" --face "$ckpt/ms1mv3_arcface_r50.pth")
if at checkpoints; then
  measure checkpoints "$py" -m pva.checkpoints --size "$size" --out "$ckpt" --seed 1
  measure export "$py" -m pva.export --size "$size" "${sources[@]}" --out "$work/model" ${resolution:+--resolution "$resolution"}
  # The loader's summary lines (not the per-graph timing lines, "unet: 99.9 s, ...").
  grep -E '^(unet|vae|text encoder|face embedder|id former|visual projections|<new1>):' "$work/export.log" \
    | grep -vE ': [0-9.]+ s, |bytes stored' | tee -a "$summary"
  # pva.share: what each graph stores in frozen_weights.bin and what the tuning graph reads from it.
  grep -E 'bytes stored|^frozen_weights.bin:' "$work/export.log" | tee -a "$summary"
  du -sh "$work/model" | awk '{print "model directory: " $1}' | tee -a "$summary"
fi

if at graphs; then
  measure graphs "$py" -m pva.smoke --model "$work/model" --size "$size" "${sources[@]}"
  grep -E '^graphs:' "$work/graphs.log" | tee -a "$summary"
  rm -rf "$ckpt"  # the graphs hold everything from here on
fi

if at parity; then
measure fixtures "$py" -m pva.reference.fixtures --model "$work/model" --out "$work/fixtures" --steps "$steps"
# The tolerance per stage (max abs): the tests' 1e-4 for the bundled models, 1e-3 at full width.
PVA_PARITY_MODEL="$work/model" PVA_PARITY_FIXTURES="$work/fixtures" PVA_PARITY_TOL="${PARITY_TOL:-1e-3}" \
  measure parity cargo test --release --locked --quiet --test parity -- --nocapture --test-threads 1
grep -E '^fixtures/' "$work/parity.log" | tee -a "$summary"
fi

# NOTE: cpu_arena = false: at full size on the CPU provider the arenas' kept peaks add up (a tuning
# step at 256 px was OOM-killed at 24 GB in its second step with the arena on; docs/memory.md).
cat >"$work/worker.toml" <<TOML
[engine]
model_dir = "$work/model"
cpu_arena = false
TOML
export PVA_CONFIG="$work/worker.toml"
rm -rf "$work/out"  # edit answers a job whose stored result is a success from it
at edit && for guidance in 1 3; do
  "$py" - "$work/job-g$guidance.json" "$steps" "$guidance" <<'PY'
import json, sys
job = json.load(open("examples/job.json"))
job.update(job_id=f"smoke-g{sys.argv[3]}", steps=int(sys.argv[2]), guidance=float(sys.argv[3]), num_outputs=1)
json.dump(job, open(sys.argv[1], "w"), indent=2)
PY
  measure "edit-g$guidance" target/release/pva-worker edit "$work/job-g$guidance.json" --root examples --out "$work/out"
  grep -E '^ +(model_load|denoise|decode):|identity score' "$work/edit-g$guidance.log" | sed 's/^ */  /' | tee -a "$summary"
done
at tune && measure tune target/release/pva-worker tune --identity smoke-person --steps 2 --out "$work/adapter.safetensors" \
  --reference examples/photos/obama2.jpg --face-box 200,185,330,395 \
  --reference examples/photos/obama3.jpg --face-box 600,240,330,420
[ ! -f "$work/tune.log" ] || grep -E '^ +(model_load|tune):|loss' "$work/tune.log" | sed 's/^ */  /' | tee -a "$summary"
echo
echo "== summary ($work/summary.txt)"
cat "$summary"
