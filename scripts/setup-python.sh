#!/usr/bin/env bash
# Creates .venv (gitignored) with the exporter's pinned packages (models/requirements.txt) and the
# Python client's (clients/python/requirements.txt), then
# installs the `pva` package (models/pyproject.toml) editable, so that `.venv/bin/python -m pva.<module>`
# and the tests import it from this checkout. Idempotent: a second run only checks the pins and that
# `pva` resolves to this checkout. The default torch wheel brings ~4 GB of CUDA packages (~3 min).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
stamp=.venv/.requirements.sha256
want=$(sha256sum models/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "${pip[@]}" -r models/requirements.txt
  echo "$want" > "$stamp"
fi
# The Python client's pinned packages (clients/python/requirements.txt: pika, boto3), checked alike.
client_stamp=.venv/.client-requirements.sha256
client_want=$(sha256sum clients/python/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$client_stamp" 2>/dev/null)" != "$client_want" ]; then
  "${pip[@]}" -r clients/python/requirements.txt
  echo "$client_want" > "$client_stamp"
fi
# The package: editable, without dependencies (the pins above are the dependencies). Reinstalled when
# pyproject.toml changes or `pva` does not resolve to this checkout's models/pva (a moved checkout).
pkg_stamp=.venv/.pva.sha256
pkg_want=$(sha256sum models/pyproject.toml | cut -d' ' -f1)
origin=$(.venv/bin/python -c 'import importlib.util as u; s = u.find_spec("pva"); print(s.origin if s else "")' 2>/dev/null || true)
if [ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ] || [ "$origin" != "$PWD/models/pva/__init__.py" ]; then
  # With setuptools >= 64 already in .venv (torch's requirements bring it) the build needs no network.
  isolation=()
  if .venv/bin/python -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null; then
    isolation=(--no-build-isolation)
  fi
  "${pip[@]}" --no-deps "${isolation[@]}" -e models
  echo "$pkg_want" > "$pkg_stamp"
fi
