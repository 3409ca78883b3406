#!/usr/bin/env bash
# Installs `promtool` (the Prometheus CLI that `tests/metrics.rs` uses to lint /metrics) from Debian's
# `prometheus` package (promtool 2.42 on bookworm). We only want the CLI: any prometheus service the
# package started is stopped and disabled afterwards. Needs root (or sudo). Idempotent.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  echo "promtool already installed: $(promtool --version 2>&1 | head -n 1)"
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "setup-promtool: promtool is missing and installing it needs root (or sudo)" >&2
  exit 1
fi

"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends prometheus

# NOTE: on a host with systemd the package enables and starts prometheus.service (a server on :9090,
# the worker's default metrics port); in containers policy-rc.d usually stops it from starting, but a
# SysV init script may still have run. Stop and disable whichever applies; none of it may fail the setup.
for service in prometheus prometheus-node-exporter; do
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    "${as_root[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$service" ]; then
    "${as_root[@]}" "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    if command -v update-rc.d >/dev/null 2>&1; then
      "${as_root[@]}" update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
  fi
done

command -v promtool >/dev/null 2>&1 || {
  echo "setup-promtool: promtool is not on PATH after installing prometheus" >&2
  exit 1
}
echo "promtool installed: $(promtool --version 2>&1 | head -n 1)"
