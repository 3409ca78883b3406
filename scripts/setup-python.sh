#!/usr/bin/env bash
# Creates .venv (gitignored) with the exporter's pinned packages (models/requirements.txt). Idempotent:
# a second run only checks the pins. The default torch wheel brings ~4 GB of CUDA packages (~3 min).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(sha256sum models/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r models/requirements.txt
  echo "$want" > "$stamp"
fi
