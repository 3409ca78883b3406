#!/usr/bin/env bash
# The cold start of `pva-worker serve` (a measurement, not a test): seconds from spawning the process to
# the first 200 of /startupz (model loaded and every inference thread warmed up), and the worker's own
# pva_model_load_seconds and pva_warmup_seconds, for one model directory, N runs.
#
#   scripts/cold-start.sh [model_dir] [runs]
#
# No broker and no store are needed: the broker URL points at a closed port (the worker keeps retrying
# it; /startupz ignores the broker) and the store is never contacted before a job. A ready worker adds
# its broker connection (milliseconds on a LAN) to reach pva_cold_start_seconds.
# Binary: $PVA_WORKER, else target/release/pva-worker, else target/debug/pva-worker.
set -euo pipefail
cd "$(dirname "$0")/.."
model_dir=$(realpath "${1:-models/demo}")
runs=${2:-3}
bin=${PVA_WORKER:-}
if [ -z "$bin" ]; then
  for b in target/release/pva-worker target/debug/pva-worker; do
    [ -x "$b" ] && { bin=$b; break; }
  done
fi
[ -x "${bin:-}" ] || { echo "cold-start: no pva-worker binary (cargo build --release)" >&2; exit 1; }

tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gauge() { sed -n "s/^$1 //p" "$tmp/metrics"; }

echo "binary $bin, model $model_dir, warmup_steps ${PVA__HEALTH__WARMUP_STEPS:-2 (default)}"
for run in $(seq "$runs"); do
  port=$(free_port)
  closed=$(free_port)
  cat >"$tmp/worker.toml" <<EOF
[engine]
model_dir = "$model_dir"
face_model_dir = "$PWD/models/faces"
ort_library = "$PWD/.ort/onnxruntime/capi/libonnxruntime.so.1.31.1"
[amqp]
url = "amqp://guest:guest@127.0.0.1:$closed/%2f"
job_queue = "cold-start.unused"
[metrics]
listen = "127.0.0.1:$port"
[logging]
format = "json"
level = "warn"
EOF
  start=$(date +%s.%N)
  "$bin" --config "$tmp/worker.toml" serve >"$tmp/worker.log" 2>&1 &
  pid=$!
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/startupz")" = 200 ]; do
    kill -0 "$pid" 2>/dev/null || { cat "$tmp/worker.log" >&2; echo "cold-start: the worker exited" >&2; exit 1; }
    sleep 0.02
  done
  end=$(date +%s.%N)
  curl -s "http://127.0.0.1:$port/metrics" >"$tmp/metrics"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  printf 'run %d: spawn -> /startupz 200 %.2f s (pva_model_load_seconds %.2f, pva_warmup_seconds %.2f)\n' \
    "$run" "$(echo "$end - $start" | bc)" "$(gauge pva_model_load_seconds)" "$(gauge pva_warmup_seconds)"
done
