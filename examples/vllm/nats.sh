#!/usr/bin/env bash
# NATS with JetStream for the deployment: nats-server when installed (apt-get install nats-server), else
# SplitZip's embedded server. NATS_PORT (4222), NATS_HOST (127.0.0.1), NATS_STORE (a temporary directory).
set -euo pipefail
cd "$(dirname "$0")"
NATS_PORT=${NATS_PORT:-4222}
NATS_HOST=${NATS_HOST:-127.0.0.1}
NATS_STORE=${NATS_STORE:-$(mktemp -d /tmp/splitzip-nats.XXXXXX)}
if command -v nats-server >/dev/null; then
  exec nats-server -js -a "$NATS_HOST" -p "$NATS_PORT" -sd "$NATS_STORE"
fi
exec "${PYTHON:-python3}" embedded_nats.py --host "$NATS_HOST" --port "$NATS_PORT" --store "$NATS_STORE"
