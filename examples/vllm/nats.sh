#!/usr/bin/env bash
# NATS with JetStream for the deployment: a nats-server binary when there is one (NATS_SERVER, else on PATH;
# `make deps` at the repository root builds one into build/bin without root), else SplitZip's embedded server.
# NATS_PORT (4222), NATS_HOST (127.0.0.1), NATS_STORE (a temporary directory).
set -euo pipefail
cd "$(dirname "$0")"
NATS_PORT=${NATS_PORT:-4222}
NATS_HOST=${NATS_HOST:-127.0.0.1}
NATS_STORE=${NATS_STORE:-$(mktemp -d /tmp/splitzip-nats.XXXXXX)}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || true)}
[ -z "$NATS_SERVER" ] && [ -x ../../build/bin/nats-server ] && NATS_SERVER=../../build/bin/nats-server
if [ -n "$NATS_SERVER" ]; then
  exec "$NATS_SERVER" -js -a "$NATS_HOST" -p "$NATS_PORT" -sd "$NATS_STORE"
fi
exec "${PYTHON:-python3}" embedded_nats.py --host "$NATS_HOST" --port "$NATS_PORT" --store "$NATS_STORE"
