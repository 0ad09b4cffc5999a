#!/bin/bash
# Producer flow control, A/B on one binary: the 2p/2c transient queue (ack=auto, 128 B, TCP),
# RUNS times with the gate off (STAMPEDE_QUEUE_FLOW_BACKLOG=0, the behaviour before it) and on
# (the default), alternated, a fresh broker for each run; then CHECKS runs of the persistent queue
# and of fan-out 1->100 each way, to see that they did not drop. Prints one summary line a run.
#   RUNS=10 CHECKS=3 DUR=5 bench/scripts/queue-modes.sh
# Ports 61713 (STOMP) and 15774 (WS), management HTTP off, so it can run beside compare.sh.
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/target/release/stampede-bench}
STAMPEDE=${STAMPEDE:-$ROOT/target/release/stampede}
RUNS=${RUNS:-10} CHECKS=${CHECKS:-3} DUR=${DUR:-5} WARM=${WARM:-2}
run_one() { # label flow_backlog bench-args...
  local label=$1 backlog=$2; shift 2
  local dir; dir=$(mktemp -d)
  STAMPEDE_QUEUE_FLOW_BACKLOG=$backlog "$STAMPEDE" --stomp-addr 127.0.0.1:61713 --ws-addr 127.0.0.1:15774 \
    --http-addr none --data-dir "$dir/data" --log-level warn >"$dir/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/61713) 2>/dev/null && break; sleep 0.2; done
  timeout $((DUR * 3 + 60)) "$BENCH" --url tcp://127.0.0.1:61713 --label "$label" --duration "$DUR" \
    --warmup "$WARM" --broker-pid "$pid" "$@" 2>&1 | grep '^#'
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir"
}
for i in $(seq 1 "$RUNS"); do
  run_one "gate-off-$i" 0 queue -p 2 -c 2 --ack auto
  run_one "gate-on-$i" 8192 queue -p 2 -c 2 --ack auto
done
for i in $(seq 1 "$CHECKS"); do
  run_one "persistent-gate-off-$i" 0 queue -p 2 -c 2 --persistent --ack client-individual --window 1000
  run_one "persistent-gate-on-$i" 8192 queue -p 2 -c 2 --persistent --ack client-individual --window 1000
  run_one "fanout-gate-off-$i" 0 fanout -n 100 -s 128
  run_one "fanout-gate-on-$i" 8192 fanout -n 100 -s 128
done
