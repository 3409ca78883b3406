#!/usr/bin/env bash
# The README's first command: set up ONNX Runtime, build, and run the bundled example job on the
# embedded defaults (bundled model, local files, no broker). Leaves the outputs under out/example/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ort.sh
cargo build --release --locked --quiet
out=out/example
mkdir -p "$out"
target/release/pva-worker edit examples/job.json --out "$out" --contact-sheet "$out/contact-sheet.png"
