#!/bin/bash
# A/B of two broker binaries with the same stampede-bench runs, alternated:
#   BASE=/path/to/old/stampede HEAD=target/release/stampede bench/scripts/ab.sh
# Prints the one-line summary of each run (fan-out 1->100 tcp and ws, persistent queue, 10k idle WS).
BENCH=${BENCH:-$(dirname "$0")/../../target/release/stampede-bench}
run_one() { # label bin
  local dir=$(mktemp -d)
  local extra=(); "$2" --help 2>&1 | grep -q -- --http-addr && extra=(--http-addr none)
  "$2" --stomp-addr 127.0.0.1:61613 --ws-addr 127.0.0.1:15674 "${extra[@]}" --data-dir "$dir/data" --log-level warn >"$dir/log" 2>&1 &
  local pid=$!
  for i in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/61613) 2>/dev/null && break; sleep 0.2; done
  sleep 0.5
  $BENCH --url tcp://127.0.0.1:61613 --label "$1" --duration 8 fanout -n 100 -s 128 2>&1 | grep '^#'
  $BENCH --url ws://127.0.0.1:15674/ws --label "$1" --duration 8 fanout -n 100 -s 128 2>&1 | grep '^#'
  $BENCH --url tcp://127.0.0.1:61613 --label "$1" --duration 8 queue -p 2 -c 2 --persistent --ack client-individual --window 1000 2>&1 | grep '^#'
  $BENCH --url ws://127.0.0.1:15674/ws --label "$1" --broker-pid $pid connections -k 10000 --per-source 1000 --heart-beat 10000,10000 2>&1 | grep '^#'
  kill $pid; wait $pid 2>/dev/null; rm -rf "$dir"
}
for round in 1 2; do
  run_one "base-$round" "$BASE"
  run_one "head-$round" "$HEAD"
done
