#!/usr/bin/env bash
# Where Stampede spends its time, and how many frames it puts in one socket write.
#
#   bench/profile.sh            # both parts; output in bench/results/profile-*/
#   PARTS=strace bench/profile.sh
#   (needs target/release/stampede-bench and target/release/stampede:
#    cargo build --release -p stampede-bench && cargo build --release -p stampede-broker)
#
# 1. Write coalescing: a fresh release broker, a fan-out 1->100 (128 B) run, and
#    `strace -c -f -e trace=write,writev,sendto` attached for STRACE_S seconds of the measured
#    window; frames/write = deliveries in those seconds / write calls. strace slows the broker, so
#    the deliveries are the generator's count over the same seconds (it reports delivered/s).
# 2. Profile: `perf` needs hardware counters (`perf stat -e instructions true`); where they are
#    missing (this VM) the broker runs under `valgrind --tool=callgrind` for a short fan-out
#    (1->10, TCP) and a persistent queue run, and callgrind_annotate lists the top functions.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$ROOT/bench/results/profile-$(date +%Y%m%d-%H%M%S)}
PARTS=${PARTS:-"strace callgrind"}
STRACE_S=${STRACE_S:-5}
BENCH=$ROOT/target/release/stampede-bench
STAMPEDE=$ROOT/target/release/stampede
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; }
trap cleanup EXIT

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need() { command -v "$1" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null 2>&1; }

start() { # [wrapper...]
    rm -rf "$OUT/data"
    "$@" "$STAMPEDE" --stomp-addr 127.0.0.1:61613 --ws-addr 127.0.0.1:15674 --data-dir "$OUT/data" \
        --log-level warn >"$OUT/broker.log" 2>&1 &
    PID=$!
    wait_port 61613 120 || { echo "broker did not start"; cat "$OUT/broker.log"; exit 1; }
}

if [[ " $PARTS " == *" strace "* ]]; then
    need strace strace
    start
    for url in tcp://127.0.0.1:61613 ws://127.0.0.1:15674/ws; do
        t=${url%%:*}
        "$BENCH" --url "$url" --label stampede --warmup 2 --duration $((STRACE_S + 2)) fanout -n 100 -s 128 \
            >"$OUT/strace-$t.bench" 2>&1 &
        b=$!
        sleep 3
        timeout -s INT "$STRACE_S" strace -c -f -e trace=write,writev,sendto -p "$PID" -o "$OUT/strace-$t.txt"
        wait $b
        calls=$(awk '$NF ~ /^(write|writev|sendto)$/ {s += $4} END {print s + 0}' "$OUT/strace-$t.txt")
        rate=$(grep -o '"delivered_per_s":[0-9.]*' "$OUT/strace-$t.bench" | cut -d: -f2)
        python3 - "$t" "$calls" "${rate:-0}" "$STRACE_S" <<'EOF' | tee -a "$OUT/summary.txt"
import sys
t, calls, rate, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
frames = rate * secs
print(f"write coalescing {t}: {calls} write calls in {secs:.0f} s under strace, ~{frames:,.0f} MESSAGE frames "
      f"delivered meanwhile -> {frames / calls if calls else 0:.1f} frames/write (delivered {rate:,.0f}/s under strace)")
EOF
    done
    # Are persistent receipts fsync-gated? Count fsync-family calls during a persistent run.
    "$BENCH" --label stampede --warmup 2 --duration $((STRACE_S + 2)) queue -p 2 -c 2 --persistent \
        --ack client-individual >"$OUT/strace-fsync.bench" 2>&1 &
    b=$!
    sleep 3
    timeout -s INT "$STRACE_S" strace -c -f -e trace=fsync,fdatasync,sync_file_range,msync -p "$PID" \
        -o "$OUT/strace-fsync.txt"
    wait $b
    syncs=$(awk '$NF ~ /^(fsync|fdatasync|sync_file_range|msync)$/ {s += $4} END {print s + 0}' "$OUT/strace-fsync.txt")
    sent=$(grep -o '"sent_per_s":[0-9.]*' "$OUT/strace-fsync.bench" | cut -d: -f2)
    echo "persistent queue under strace: ${sent:-?} confirmed sends/s, $syncs fsync-family calls in $STRACE_S s" \
        | tee -a "$OUT/summary.txt"
    kill "$PID"; wait "$PID" 2>/dev/null; PID=
fi

if [[ " $PARTS " == *" callgrind "* ]]; then
    if perf stat -e instructions true >/dev/null 2>&1 && ! perf stat -e instructions true 2>&1 | grep -q 'not supported'; then
        echo "perf has hardware counters here; callgrind is used anyway for a deterministic profile"
    fi
    need valgrind valgrind
    start valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" --separate-threads=no
    "$BENCH" --label stampede-callgrind --warmup 1 --duration 8 --drain 10 fanout -n 10 -s 128 --rate 5000 \
        | grep '^#' | tee -a "$OUT/summary.txt"
    "$BENCH" --label stampede-callgrind --warmup 1 --duration 8 --drain 10 queue -p 2 -c 2 --persistent \
        --ack client-individual --rate 1000 | grep '^#' | tee -a "$OUT/summary.txt"
    kill -TERM "$PID"; wait "$PID" 2>/dev/null; PID=
    callgrind_annotate --inclusive=no "$OUT/callgrind.out" 2>/dev/null | head -45 >"$OUT/callgrind-self.txt"
    callgrind_annotate --inclusive=yes "$OUT/callgrind.out" 2>/dev/null | head -60 >"$OUT/callgrind-inclusive.txt"
    echo "top self cost: $OUT/callgrind-self.txt; inclusive: $OUT/callgrind-inclusive.txt"
fi
echo "summary: $OUT/summary.txt"
