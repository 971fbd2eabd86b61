#!/usr/bin/env bash
# Multi-host handoff test: NATS, the producer and the consumer each on their own "host" (a network namespace
# with its own address, joined by a bridge), the producer's link shaped with tc. Every address is inside
# namespaces this script creates (10.77.0.0/24); nothing leaves the machine.
#
# usage: tests/netns/multihost.sh [RATE_GBIT ...]   (default: 1 10; 0 means unshaped)
# Needs root, iproute2 (ip, tc) and a nats-server binary: $SPLITZIP_NATS_SERVER (the Makefile sets it), else
# build/bin/nats-server (make deps builds it), else nats-server on PATH. Says why and exits 0 when the machine
# does not allow it or there is no binary; fails when SPLITZIP_NATS_SERVER names a missing one.
set -euo pipefail
[ -z "${SPLITZIP_NATS_SERVER:-}" ] || SPLITZIP_NATS_SERVER=$(realpath -m -- "$SPLITZIP_NATS_SERVER")
cd "$(dirname "$0")/../.."
rates=("${@:-1 10}")
[ $# -gt 0 ] || rates=(1 10)

skip() { echo "multihost: SKIPPED: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces"
command -v ip >/dev/null && command -v tc >/dev/null || skip "iproute2 (ip, tc) not installed"
if [ -n "${SPLITZIP_NATS_SERVER:-}" ]; then
  [ -f "$SPLITZIP_NATS_SERVER" ] && [ -x "$SPLITZIP_NATS_SERVER" ] || {
    echo "multihost: SPLITZIP_NATS_SERVER=$SPLITZIP_NATS_SERVER is not an executable file (make deps builds it)"; exit 1; }
  NATS_SERVER=$SPLITZIP_NATS_SERVER
elif [ -x build/bin/nats-server ]; then
  NATS_SERVER=$PWD/build/bin/nats-server
elif NATS_SERVER=$(command -v nats-server); then
  :
else
  skip "no nats-server binary (make deps builds build/bin/nats-server; or set SPLITZIP_NATS_SERVER)"
fi
ip netns add sz-probe-$$ 2>/dev/null || skip "this machine does not allow network namespaces (ip netns add failed)"
ip netns del sz-probe-$$

NS=(sz-nats sz-prefill sz-decode)
ADDR=(10.77.0.1 10.77.0.2 10.77.0.3)
cleanup() {
  [ -n "${NATS_PID:-}" ] && kill "$NATS_PID" 2>/dev/null || true
  for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
  ip link del sz-br 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip link add sz-br type bridge
ip link set sz-br up
for i in 0 1 2; do
  ns=${NS[$i]}
  ip netns add "$ns"
  ip link add "sz-v$i" type veth peer name "sz-h$i"
  ip link set "sz-v$i" netns "$ns"
  ip link set "sz-h$i" master sz-br up
  ip netns exec "$ns" ip addr add "${ADDR[$i]}/24" dev "sz-v$i"
  ip netns exec "$ns" ip link set "sz-v$i" up
  ip netns exec "$ns" ip link set lo up
done

go build -o bin/splitzip ./cmd/splitzip
store=$(mktemp -d)
ip netns exec sz-nats "$NATS_SERVER" -a 10.77.0.1 -p 4222 -js -sd "$store" >"$store/nats.log" 2>&1 &
NATS_PID=$!
for _ in $(seq 100); do grep -q "Server is ready" "$store/nats.log" && break; sleep 0.1; done
grep -q "Server is ready" "$store/nats.log" || { cat "$store/nats.log"; echo "multihost: nats-server did not start"; exit 1; }

echo "multihost: NATS on ${ADDR[0]} (netns sz-nats), producer on ${ADDR[1]} (sz-prefill), consumer on ${ADDR[2]} (sz-decode)"
for rate in "${rates[@]}"; do
  ip netns exec sz-prefill tc qdisc del dev sz-v1 root 2>/dev/null || true
  label="unshaped"
  if [ "$rate" != 0 ]; then
    # Token bucket on the producer's egress: what the consumer's fetch sees as the link.
    ip netns exec sz-prefill tc qdisc add dev sz-v1 root tbf rate "${rate}gbit" burst 4mb latency 100ms
    label="tc ${rate}Gbit/s"
  fi
  ip netns exec sz-decode bin/splitzip bench transfer -nats nats://10.77.0.1:4222 \
    -producer-prefix "ip netns exec sz-prefill" -producer-listen 10.77.0.2:0 \
    -tokens "${TOKENS:-4096}" -rates 0 -link "$label" -link-rate "$rate" -repeat "${REPEAT:-1}"
done
echo "multihost: PASSED"
