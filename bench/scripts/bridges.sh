#!/bin/bash
# Webhook and STOMP-bridge throughput and latency (BENCHMARKS.md, "Webhooks and the STOMP bridge").
#   bench/scripts/bridges.sh            # DUR=10 seconds per run, release binaries
# webhook: 1 producer -> /queue/hooks -> a [[webhooks]] POSTing to stampede-bench's HTTP sink,
#   unpaced (throughput; concurrency 4, the default, and 32) and paced at 1,000 msgs/s (latency),
#   transient and persistent (a persistent run drains up to 40 s, so "lost 0" means every
#   receipted message reached the sink).
# bridge: 1 producer -> /queue/bridged on broker A -> an out [[bridges]] -> /queue/bridged on
#   broker B -> 1 consumer, unpaced and paced, transient and persistent.
# Ports 61713/61714 (STOMP), 15774/15775 (WS), 18089 (the sink); management HTTP off.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/target/release/stampede-bench}
STAMPEDE=${STAMPEDE:-$ROOT/target/release/stampede}
DUR=${DUR:-10} WARM=${WARM:-2}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

broker() { # name stomp-port ws-port config -> pid in $PID
  "$STAMPEDE" --config "$4" --stomp-addr "127.0.0.1:$2" --ws-addr "127.0.0.1:$3" --http-addr none \
    --data-dir "$WORK/$1/data" --log-level warn >"$WORK/$1.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/"$2") 2>/dev/null && return; sleep 0.2; done
  echo "broker $1 did not start:"; cat "$WORK/$1.log"; exit 1
}
bench() { timeout $((DUR * 3 + 60)) "$BENCH" --duration "$DUR" --warmup "$WARM" "$@" 2>&1 | grep '^#'; }

webhook() { # label concurrency bench-args...
  local label=$1 concurrency=$2; shift 2
  mkdir -p "$WORK/$label"
  cat >"$WORK/$label.toml" <<TOML
[[webhooks]]
name = "bench"
source = "/queue/hooks"
url = "http://127.0.0.1:18089/hook"
concurrency = $concurrency
TOML
  broker "$label" 61713 15774 "$WORK/$label.toml"; local pid=$PID
  bench --url tcp://127.0.0.1:61713 --label "$label" --broker-pid "$pid" --name hooks --exact-name \
    queue -p 1 -c 0 --webhook-sink 127.0.0.1:18089 "$@"
  kill "$pid"; wait "$pid" 2>/dev/null
}

bridge() { # label bench-args...
  local label=$1; shift
  mkdir -p "$WORK/$label-a" "$WORK/$label-b"
  : >"$WORK/empty.toml"
  cat >"$WORK/$label.toml" <<TOML
[[bridges]]
name = "bench"
direction = "out"
source = "/queue/bridged"
remote_destination = "/queue/bridged"
remote_url = "tcp://127.0.0.1:61714"
TOML
  broker "$label-b" 61714 15775 "$WORK/empty.toml"; local remote=$PID
  broker "$label-a" 61713 15774 "$WORK/$label.toml"; local local_pid=$PID
  bench --url tcp://127.0.0.1:61713 --label "$label" --broker-pid "$local_pid" --name bridged --exact-name \
    queue -p 1 -c 1 --consumer-urls tcp://127.0.0.1:61714 "$@"
  kill "$local_pid" "$remote"; wait "$local_pid" "$remote" 2>/dev/null
}

webhook webhook-c4 4
webhook webhook-c32 32
webhook webhook-c32-1k 32 --rate 1000
webhook webhook-c32-persistent 32 --persistent --ack client-individual --drain 40
webhook webhook-c32-persistent-1k 32 --persistent --ack client-individual --rate 1000
bridge bridge-transient
bridge bridge-1k --rate 1000
bridge bridge-persistent --persistent --ack client-individual --drain 40
bridge bridge-persistent-1k --persistent --ack client-individual --rate 1000
