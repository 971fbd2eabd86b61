#!/usr/bin/env python3
"""NATS for the deployment without installing nats-server: SplitZip's embedded server (JetStream on), kept
running until interrupted.

    python embedded_nats.py --host 127.0.0.1 --port 4222 [--store /var/lib/splitzip-nats]
"""

from __future__ import annotations

import argparse
import signal
import threading

from splitzip_connector.handoff import ControlPlane

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=4222)
ap.add_argument("--store", default="", help="JetStream store directory (default: a temporary one)")
a = ap.parse_args()
plane = ControlPlane(embedded_host=a.host, embedded_port=a.port, embedded_store_dir=a.store)
print(f"NATS (embedded) listening at {plane.client_url}", flush=True)
stop = threading.Event()
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda *_: stop.set())
stop.wait()
plane.close()
