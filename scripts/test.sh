#!/usr/bin/env bash
# The README's second command: the whole test suite. Sets up what it needs — ONNX Runtime for the
# worker, the exporter's Python environment (and the Python client's packages), the TypeScript
# client's packages and build, the s3s-fs S3 server, promtool — makes sure RabbitMQ is
# running on 127.0.0.1:5672, then runs the model contract tests (pytest) and every Rust test (unit,
# parity with the Python reference, integration against RabbitMQ and S3).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-ort.sh
scripts/setup-python.sh
scripts/setup-node-client.sh
scripts/setup-s3.sh
scripts/setup-promtool.sh
scripts/setup-helm.sh
scripts/ensure-rabbitmq.sh
echo "== model contract tests (pytest) =="
.venv/bin/python -m pytest -q models/tests tests/schema
echo "== Rust tests (cargo test) =="
# The link step of a dozen test binaries needs a few GB free; say how much there is, so a linker that
# dies of a full disk (SIGBUS) is recognisable from the log.
df -h . | tail -n 1 | awk '{print "disk free for target/: " $4}'
cargo test --locked --all-targets
