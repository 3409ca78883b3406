#!/usr/bin/env bash
# The benchmarks of issues 3 and 4 (benchmarks, not tests: nothing here passes or fails on a timing).
# Sets up what they need (ONNX Runtime, the Python reference's venv, s3s-fs, RabbitMQ), builds the
# release binaries, then runs
#   1. pva-bench edit        the Rust edit vs the Python reference on the same graphs (docs/benchmarks.md)
#   2. pva-bench throughput  N jobs through RabbitMQ + S3 (pva-worker serve) vs N in process
# and prints both summaries at the end. Full reports: target/bench/edit.txt, target/bench/throughput.txt.
#   scripts/bench.sh [--jobs N] [--rounds N] [--reps N]
# Defaults: 2 rounds of 8 jobs per path, 9 repetitions per edit case. About 4 minutes on 2 cores, after
# the build.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=8
rounds=2
reps=9
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) jobs="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    *) echo "usage: scripts/bench.sh [--jobs N] [--rounds N] [--reps N]" >&2; exit 2 ;;
  esac
done
scripts/setup-ort.sh
scripts/setup-python.sh
scripts/setup-s3.sh
scripts/ensure-rabbitmq.sh
cargo build --release --locked --bins
mkdir -p target/bench
echo "== pva-bench edit =="
target/release/pva-bench edit --reps "$reps" | tee target/bench/edit.txt
echo
echo "== pva-bench throughput =="
target/release/pva-bench throughput --jobs "$jobs" --rounds "$rounds" | tee target/bench/throughput.txt
echo
echo "== summary ($(nproc) cores, load average now: $(cut -d' ' -f1-3 /proc/loadavg)) =="
sed -n "/^summary/,\$p" target/bench/edit.txt
grep -E 'jobs/s|throughput:' target/bench/throughput.txt
