#!/usr/bin/env bash
# Makes sure a RabbitMQ broker accepts connections on 127.0.0.1:5672 (the integration tests use it with
# guest/guest). This machine kind runs one already; if it is down, start it and wait.
set -euo pipefail
listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if listening; then
  echo "RabbitMQ is accepting connections on 127.0.0.1:5672"
  exit 0
fi
command -v rabbitmq-server >/dev/null || { echo "RabbitMQ is not running and not installed" >&2; exit 1; }
echo "starting RabbitMQ"
rabbitmq-server -detached
for _ in $(seq 1 120); do
  if listening; then echo "RabbitMQ is up"; exit 0; fi
  sleep 1
done
echo "RabbitMQ did not come up within 120 s" >&2
exit 1
