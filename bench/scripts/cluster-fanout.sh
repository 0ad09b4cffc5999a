#!/usr/bin/env bash
# Cross-node topic fan-out 1 -> N against one node, with the same generator:
#   1. one Stampede node, the publisher and N subscribers on it;
#   2. three nodes joined through one nats-server, the publisher on node A and the N
#      subscribers spread round-robin over A, B and C (two thirds of them cross NATS).
# Prints the generator's JSON lines (and appends them to $OUT, default /tmp/cluster-fanout.jsonl).
#
#   bench/scripts/cluster-fanout.sh            # N=100, 128-byte bodies, DUR=10 s each
#   N=1000 DUR=5 bench/scripts/cluster-fanout.sh
#
# Needs target/release/stampede and target/release/stampede-bench (cargo build --release -p
# stampede-broker -p stampede-bench) and nats-server (tests/.venv, or $NATS_SERVER).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
N="${N:-100}"; DUR="${DUR:-10}"; SIZE="${SIZE:-128}"
OUT="${OUT:-${TMPDIR:-/tmp}/cluster-fanout.jsonl}"
BIN="$ROOT/target/release/stampede"; BENCH="$ROOT/target/release/stampede-bench"
NATS="${NATS_SERVER:-$ROOT/tests/.venv/bin/nats-server}"
for f in "$BIN" "$BENCH" "$NATS"; do [ -x "$f" ] || { echo "missing $f" >&2; exit 1; }; done
mkdir -p "$(dirname "$OUT")"
WORK="$(mktemp -d)"; PIDS=()
stop_all() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap 'stop_all; rm -rf "$WORK"' EXIT
wait_ready() { for _ in $(seq 1 100); do curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz" 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 not ready" >&2; return 1; }
node() {  # node INDEX [cluster]
  local i="$1"; shift
  env STAMPEDE_STORAGE=memory "$@" "$BIN" \
    --stomp-addr "127.0.0.1:$((62613 + 10 * i))" --ws-addr "127.0.0.1:$((62614 + 10 * i))" \
    --http-addr "127.0.0.1:$((62612 + 10 * i))" --metrics-public --log-level warn > "$WORK/node-$i.log" 2>&1 &
  PIDS+=($!)
  wait_ready $((62612 + 10 * i))
}

# 1. single node
node 0
"$BENCH" --url tcp://127.0.0.1:62613 --duration "$DUR" --label "single node 1->$N" --json-out "$OUT" \
  fanout -n "$N" -s "$SIZE"
stop_all

# 2. three nodes through NATS
printf 'listen: "127.0.0.1:62222"\njetstream { store_dir: "%s/js", sync_interval: always }\n' "$WORK" > "$WORK/nats.conf"
"$NATS" -c "$WORK/nats.conf" > "$WORK/nats.log" 2>&1 &
PIDS+=($!)
for i in 0 1 2; do node "$i" STAMPEDE_CLUSTER__NATS_URLS=nats://127.0.0.1:62222 STAMPEDE_CLUSTER__NODE_NAME="node-$i"; done
"$BENCH" --url tcp://127.0.0.1:62613 --duration "$DUR" --label "3 nodes 1->$N (publisher on A, subscribers over A,B,C)" \
  --json-out "$OUT" fanout -n "$N" -s "$SIZE" \
  --subscriber-urls tcp://127.0.0.1:62613,tcp://127.0.0.1:62623,tcp://127.0.0.1:62633
