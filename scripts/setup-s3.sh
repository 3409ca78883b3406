#!/usr/bin/env bash
# Installs s3s-fs, a small S3-compatible server over a directory, into .tools/ (gitignored) for the
# S3 integration tests (tests/s3_store.rs finds it at .tools/bin/s3s-fs, or at $S3S_FS).
#   scripts/setup-s3.sh
# 0.14.1 is the newest release that builds with this machine's rustc; about 7 minutes on 2 cores.
# Idempotent: does nothing when the binary is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
version="0.14.1"
bin=".tools/bin/s3s-fs"
if [ -x "$bin" ]; then
  echo "s3s-fs already installed: $(pwd)/$bin"
  exit 0
fi
# Build outside the shared target/ so this does not wait on (or invalidate) the worker's builds.
cargo install "s3s-fs@${version}" --features binary --locked --root .tools
test -x "$bin" || { echo "setup-s3: $bin missing after cargo install" >&2; exit 1; }
echo "s3s-fs ${version} installed: $(pwd)/$bin"
