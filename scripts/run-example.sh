#!/usr/bin/env bash
# The README's first command: set up ONNX Runtime, build, and run the bundled example job on the
# embedded defaults (bundled model, local files, no broker). Leaves the outputs under out/example/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ort.sh
cargo build --release --locked --quiet
out=out/example
# A stored result.json is answered as is (as the service answers a re-sent job): start afresh.
rm -rf "$out"
mkdir -p "$out"
# The demo model (models/demo, the embedded default) on a held-out synthetic person: it was trained on
# synthetic faces only (models/train), so this is the job it can do well. examples/job.json is the same
# kind of job on real photos (what the tiny contract model and the tests use).
target/release/pva-worker edit examples/demo-job.json --out "$out" --contact-sheet "$out/contact-sheet.png"
