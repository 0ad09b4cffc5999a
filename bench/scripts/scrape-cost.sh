#!/bin/bash
# Cost of a Prometheus scrape every second on the data path (issue 13): fan-out 1->100 and the
# persistent 2p/2c queue, RUNS times each with the management listener on and /metrics fetched
# every second ("scraped") and without a scraper ("quiet"), alternated, a fresh broker each run.
#   RUNS=3 DUR=8 bench/scripts/scrape-cost.sh
# Ports 61713 (STOMP), 15774 (WS), 15873 (management HTTP).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/target/release/stampede-bench}
STAMPEDE=${STAMPEDE:-$ROOT/target/release/stampede}
RUNS=${RUNS:-3} DUR=${DUR:-8} WARM=${WARM:-2}
run_one() { # label scrape(0|1) bench-args...
  local label=$1 scrape=$2; shift 2
  local dir; dir=$(mktemp -d)
  "$STAMPEDE" --stomp-addr 127.0.0.1:61713 --ws-addr 127.0.0.1:15774 --http-addr 127.0.0.1:15873 \
    --data-dir "$dir/data" --log-level warn >"$dir/log" 2>&1 &
  local pid=$! scraper=
  for _ in $(seq 1 50); do (echo > /dev/tcp/127.0.0.1/61713) 2>/dev/null && break; sleep 0.2; done
  if [ "$scrape" = 1 ]; then
    ( while :; do curl -s -o /dev/null http://127.0.0.1:15873/metrics; sleep 1; done ) &
    scraper=$!
  fi
  timeout $((DUR * 3 + 60)) "$BENCH" --url tcp://127.0.0.1:61713 --label "$label" --duration "$DUR" \
    --warmup "$WARM" --broker-pid "$pid" "$@" 2>&1 | grep '^#'
  [ -n "$scraper" ] && kill "$scraper"
  kill "$pid"; wait "$pid" 2>/dev/null; rm -rf "$dir"
}
for i in $(seq 1 "$RUNS"); do
  run_one "fanout-quiet-$i" 0 fanout -n 100 -s 128
  run_one "fanout-scraped-$i" 1 fanout -n 100 -s 128
  run_one "persistent-quiet-$i" 0 queue -p 2 -c 2 --persistent --ack client-individual --window 1000
  run_one "persistent-scraped-$i" 1 queue -p 2 -c 2 --persistent --ack client-individual --window 1000
done
