#!/usr/bin/env bash
# Persistent queue consumed/s with the same generator (P producers, C consumers, every SEND
# persistent:true with a receipt, client-individual acks):
#   1. one Stampede node on sled, fsync = always (the RECEIPT waits for the fsync);
#   2. three nodes joined through one nats-server (JetStream R1, sync_interval: always; the
#      RECEIPT waits for JetStream's publish acknowledgement), the producers on node A and the
#      consumers spread round-robin over A, B and C.
# Prints the generator's JSON lines (and appends them to $OUT, default /tmp/cluster-queue.jsonl).
#
#   bench/scripts/cluster-queue.sh            # P=2 C=3, 128-byte bodies, DUR=10 s each
#   P=4 C=6 DUR=5 bench/scripts/cluster-queue.sh
#   ONLY=cluster SYNC=2m bench/scripts/cluster-queue.sh   # JetStream only, NATS's default fsync interval
#
# Needs target/release/stampede and target/release/stampede-bench (cargo build --release -p
# stampede-broker -p stampede-bench) and nats-server (tests/.venv, or $NATS_SERVER).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SYNC="${SYNC:-always}"; P="${P:-2}"; C="${C:-3}"; DUR="${DUR:-10}"; SIZE="${SIZE:-128}"; WINDOW="${WINDOW:-1000}"
OUT="${OUT:-${TMPDIR:-/tmp}/cluster-queue.jsonl}"
BIN="$ROOT/target/release/stampede"; BENCH="$ROOT/target/release/stampede-bench"
NATS="${NATS_SERVER:-$ROOT/tests/.venv/bin/nats-server}"
for f in "$BIN" "$BENCH" "$NATS"; do [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }; done
mkdir -p "$(dirname "$OUT")"
WORK="$(mktemp -d)"; PIDS=()
stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_all; rm -rf "$WORK"' EXIT
wait_ready() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not ready" >&2; return 1; }
node() {  # node INDEX [VAR=value ...]
  local i="$1"; shift
  env STAMPEDE_FSYNC=always "$@" "$BIN" --data-dir "$WORK/data-$i" \
    --stomp-addr "127.0.0.1:$((62613 + 10 * i))" --ws-addr "127.0.0.1:$((62614 + 10 * i))" \
    --http-addr "127.0.0.1:$((62612 + 10 * i))" --metrics-public --log-level warn > "$WORK/node-$i.log" 2>&1 &
  PIDS+=($!)
  wait_ready $((62612 + 10 * i))
}
queue() {  # queue LABEL [extra flags]
  local label="$1"; shift
  "$BENCH" --url tcp://127.0.0.1:62613 --duration "$DUR" --label "$label" --json-out "$OUT" \
    queue -p "$P" -c "$C" --persistent --ack client-individual --window "$WINDOW" -s "$SIZE" "$@"
}

# 1. single node, sled (ONLY=cluster skips it)
if [ "${ONLY:-}" != cluster ]; then
  node 0
  queue "single node sled fsync=always ${P}p/${C}c persistent"
  stop_all
fi

# 2. three nodes, JetStream R1
printf 'listen: "127.0.0.1:62222"\njetstream { store_dir: "%s/js", sync_interval: %s }\n' "$WORK" "$SYNC" > "$WORK/nats.conf"
"$NATS" -c "$WORK/nats.conf" > "$WORK/nats.log" 2>&1 &
PIDS+=($!)
for i in 0 1 2; do node "$i" STAMPEDE_CLUSTER__NATS_URLS=nats://127.0.0.1:62222 STAMPEDE_CLUSTER__NODE_NAME="node-$i"; done
queue "3 nodes JetStream R1 sync_interval=${SYNC} ${P}p/${C}c persistent (producers on A, consumers over A,B,C)" \
  --consumer-urls tcp://127.0.0.1:62613,tcp://127.0.0.1:62623,tcp://127.0.0.1:62633
