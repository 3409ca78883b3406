#!/usr/bin/env bash
# The TypeScript client (clients/typescript): Node and npm from Debian when missing, its pinned
# packages (package-lock.json, `npm ci`) and its build (tsc into clients/typescript/dist, gitignored
# with node_modules), which tests/serve/clients.rs runs against a serving worker. Idempotent: a second
# run only checks the lock file's hash and rebuilds (a second or two).
set -euo pipefail
cd "$(dirname "$0")/../clients/typescript"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
stamp=node_modules/.pva-lock.sha256
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  npm ci --no-audit --no-fund --silent
  echo "$want" > "$stamp"
fi
npx --no-install tsc -p .
