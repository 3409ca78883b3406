#!/usr/bin/env bash
# The README's second command: the whole test suite. Sets up what it needs (ONNX Runtime for the
# worker, the exporter's Python environment), then runs the model contract tests (pytest) and the
# Rust tests (unit, parity, integration).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ort.sh
scripts/setup-python.sh
echo "== model contract tests (pytest) =="
.venv/bin/python -m pytest -q models/tests
echo "== Rust tests (cargo test) =="
cargo test --locked --all-targets
