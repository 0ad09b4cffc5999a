#!/usr/bin/env bash
# Stampede vs RabbitMQ vs ActiveMQ with the same load generator (stampede-bench), on loopback.
#
#   bench/compare.sh                       # all brokers, all scenarios, 10 s each (~15-20 min)
#   DUR=5 BROKERS="stampede rabbitmq" bench/compare.sh
#   SCENARIOS="fanout latency" bench/compare.sh
#
# Installs rabbitmq-server and activemq from Debian's packages when missing (apt-get update once),
# starts every broker directly in the background (no systemd) on 127.0.0.1 with explicit ports and
# a fresh data dir under $OUT, runs the scenarios against each, stops them (trap), and prints a
# table (bench/table.py) from the JSON lines in $OUT/results.jsonl.
#
# Ports: Stampede 61613 (STOMP) / 15674 (WS /ws); RabbitMQ 61623 / 15684 (WS /ws), AMQP 5682;
# ActiveMQ 61633 (stomp+nio, tcpNoDelay; Debian's build has no WebSocket, so TCP only); the
# forwarding floor (not a broker, latency only) 61699.
# File descriptors: this script raises its soft RLIMIT_NOFILE to the hard limit before starting
# anything, so every broker (and the generator, which also raises its own) inherits it. A process
# cannot go past the hard limit without CAP_SYS_RESOURCE; the connections scenario is sized to fit.
set -u -o pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${DUR:-10}
WARM=${WARM:-2}
BROKERS=${BROKERS:-"stampede rabbitmq activemq floor"}
SCENARIOS=${SCENARIOS:-"connections fanout latency queue"}
CONNS=${CONNS:-10000}
OUT=${OUT:-$ROOT/bench/results/$(date +%Y%m%d-%H%M%S)}
BENCH=$ROOT/target/release/stampede-bench
STAMPEDE=$ROOT/target/release/stampede
RMQ_NODE=stampedebench@localhost
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
LOG=$OUT/compare.log
: > "$RESULTS"

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "RLIMIT_NOFILE soft/hard: $(ulimit -Sn)/$(ulimit -Hn); results in $OUT"

# --- helpers -----------------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
port_pid() { # pid of the process listening on 127.0.0.1:port
    ss -ltnpH "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2
}
APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || { log "no apt-get: cannot install $*"; return 1; }
    if [ -z "$APT_UPDATED" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$LOG" 2>&1 || log "apt-get update failed"
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$LOG" 2>&1
}

PIDS=()
cleanup() {
    local p
    if [ -n "${RMQ_STARTED:-}" ]; then
        timeout 20 /usr/lib/rabbitmq/bin/rabbitmqctl -n "$RMQ_NODE" stop >>"$LOG" 2>&1 || true
    fi
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    sleep 1
    for p in "${PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- builds --------------------------------------------------------------------------------------
FLOOR=$ROOT/target/release/forwarding-floor
if [ ! -x "$BENCH" ] || [ ! -x "$STAMPEDE" ] || [ ! -x "$FLOOR" ] || [ -n "${REBUILD:-}" ]; then
    log "building stampede-bench, the forwarding floor and stampede (release)"
    (cd "$ROOT" && cargo build --release -p stampede-bench &&
        cargo build --release -p stampede-broker) >>"$LOG" 2>&1 || { log "build failed, see $LOG"; exit 1; }
fi

# --- brokers -------------------------------------------------------------------------------------
start_stampede() {
    local dir=$OUT/stampede
    rm -rf "$dir" && mkdir -p "$dir"
    "$STAMPEDE" --stomp-addr 127.0.0.1:61613 --ws-addr 127.0.0.1:15674 --data-dir "$dir/data" \
        --log-level warn >"$dir/stdout.log" 2>&1 &
    PIDS+=($!)
    BROKER_PID=$!
    wait_port 61613 30 && wait_port 15674 10 || { log "stampede did not start: $(tail -5 "$dir/stdout.log")"; return 1; }
    TCP_URL=tcp://127.0.0.1:61613 WS_URL=ws://127.0.0.1:15674/ws AUTH=()
}

start_rabbitmq() {
    if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
        log "installing rabbitmq-server"
        apt_install rabbitmq-server || { log "rabbitmq-server failed to install"; return 1; }
    fi
    local dir=$OUT/rabbitmq
    rm -rf "$dir" && mkdir -p "$dir/mnesia" "$dir/log"
    echo '[rabbitmq_stomp,rabbitmq_web_stomp].' >"$dir/enabled_plugins"
    cat >"$dir/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:5682
stomp.listeners.tcp.1 = 127.0.0.1:61623
stomp.tcp_listen_options.nodelay = true
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = 15684
web_stomp.ws_frame = binary
loopback_users = none
EOF
    (
        ulimit -n "$(ulimit -Hn)"
        export RABBITMQ_NODENAME=$RMQ_NODE RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=5682 \
            RABBITMQ_DIST_PORT=25682 RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
            RABBITMQ_CONFIG_FILE=$dir/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins \
            RABBITMQ_PID_FILE=$dir/rabbit.pid ERL_EPMD_ADDRESS=127.0.0.1
        exec /usr/lib/rabbitmq/bin/rabbitmq-server >"$dir/stdout.log" 2>&1
    ) &
    PIDS+=($!)
    RMQ_STARTED=1
    wait_port 61623 90 && wait_port 15684 20 || { log "rabbitmq did not start: $(tail -5 "$dir/stdout.log")"; return 1; }
    BROKER_PID=$(port_pid 61623)
    PIDS+=("$BROKER_PID")
    TCP_URL=tcp://127.0.0.1:61623 WS_URL=ws://127.0.0.1:15684/ws AUTH=(--login guest --passcode guest)
}

start_activemq() {
    if [ ! -e /usr/share/activemq/bin/activemq.jar ]; then
        log "installing activemq"
        apt_install activemq || { log "activemq failed to install"; return 1; }
    fi
    local dir=$OUT/activemq
    rm -rf "$dir" && mkdir -p "$dir/conf" "$dir/data" "$dir/tmp"
    cp /etc/activemq/instances-available/main/log4j2.properties "$dir/conf/" 2>/dev/null || true
    cat >"$dir/conf/activemq.xml" <<'EOF'
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false" brokerName="bench"
          dataDirectory="${activemq.data}">
    <persistenceAdapter>
      <kahaDB directory="${activemq.data}/kahadb" enableJournalDiskSyncs="true"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp+nio://127.0.0.1:61633?transport.tcpNoDelay=true&amp;maximumConnections=100000"/>
    </transportConnectors>
  </broker>
</beans>
EOF
    # Java directly, not Debian's /usr/bin/activemq: that wrapper switches to the activemq user
    # (which cannot write here) and forces its own -Xmx512M from /usr/share/activemq/activemq-options.
    local opens=(--add-reads=java.xml=java.logging)
    local m
    for m in java.base/java.security java.base/java.net java.base/java.lang java.base/java.util \
        java.naming/javax.naming.spi java.rmi/sun.rmi.transport.tcp java.base/java.util.concurrent \
        java.base/java.util.concurrent.atomic; do
        opens+=("--add-opens=$m=ALL-UNNAMED")
    done
    (
        ulimit -n "$(ulimit -Hn)"
        cd "$dir" && exec java -Xms2G -Xmx2G -Djava.awt.headless=true -Djava.io.tmpdir="$dir/tmp" "${opens[@]}" \
            -Dactivemq.classpath="$dir/conf" -Dactivemq.home=/usr/share/activemq -Dactivemq.base="$dir" \
            -Dactivemq.conf="$dir/conf" -Dactivemq.data="$dir/data" \
            -jar /usr/share/activemq/bin/activemq.jar start "xbean:file:$dir/conf/activemq.xml" >"$dir/stdout.log" 2>&1
    ) &
    PIDS+=($!)
    wait_port 61633 90 || { log "activemq did not start: $(tail -5 "$dir/stdout.log")"; return 1; }
    BROKER_PID=$(port_pid 61633)
    PIDS+=("$BROKER_PID")
    TCP_URL=tcp://127.0.0.1:61633 WS_URL= AUTH=()
}

# Not a broker: the least any broker could add on this machine (bench/src/bin/forwarding-floor.rs,
# one blocking thread per connection, a SEND written straight to the subscribers). Only the
# latency scenario runs against it; table.py shows it beside the brokers, never as a peer.
start_floor() {
    "$FLOOR" 127.0.0.1:61699 >"$OUT/floor.log" 2>&1 &
    PIDS+=($!)
    BROKER_PID=$!
    wait_port 61699 10 || { log "forwarding floor did not start"; return 1; }
    TCP_URL=tcp://127.0.0.1:61699 WS_URL= AUTH=()
}

stop_broker() {
    cleanup
    RMQ_STARTED=
    sleep 1
}

# --- scenarios ----------------------------------------------------------------------------------
run() { # label url args...
    local label=$1 url=$2
    shift 2
    log "$label $url $*"
    timeout $((${DUR%.*} * 3 + 90)) "$BENCH" --url "$url" "${AUTH[@]}" --label "$label" --duration "$DUR" \
        --warmup "$WARM" --json-out "$RESULTS" --broker-pid "$BROKER_PID" "$@" 2>>"$LOG" | grep '^#' | tee -a "$LOG"
    [ "${PIPESTATUS[0]}" = 0 ] || log "run failed or timed out ($label $*)"
}

scenarios() { # label
    local b=$1 urls=("$TCP_URL") s
    [ -n "$WS_URL" ] && urls+=("$WS_URL")
    for s in $SCENARIOS; do
        [ "$b" = floor ] && [ "$s" != latency ] && continue
        case $s in
        fanout)
            for u in "${urls[@]}"; do run "$b" "$u" fanout -n 100 -s 128; done
            run "$b" "$TCP_URL" fanout -n 1 -s 128
            run "$b" "$TCP_URL" fanout -n 10 -s 1024
            run "$b" "$TCP_URL" fanout -n 1000 -s 128
            run "$b" "$TCP_URL" fanout -n 10 -s 16384
            ;;
        fanout100) # the headline fan-out only
            for u in "${urls[@]}"; do run "$b" "$u" fanout -n 100 -s 128; done
            ;;
        latency)
            for r in 1000 10000 50000; do run "$b" "$TCP_URL" latency --rate $r; done
            [ -n "$WS_URL" ] && run "$b" "$WS_URL" latency --rate 10000
            ;;
        queue)
            run "$b" "$TCP_URL" queue -p 2 -c 2 --persistent --ack client-individual --window 1000
            run "$b" "$TCP_URL" queue -p 2 -c 2 --ack auto
            ;;
        connections)
            local u=${WS_URL:-$TCP_URL}
            run "$b" "$u" connections -k "$CONNS" --per-source 1000 --heart-beat 10000,10000
            ;;
        esac
    done
}

for b in $BROKERS; do
    log "=== $b ==="
    BROKER_PID=0
    if "start_$b"; then
        log "$b running, pid $BROKER_PID"
        scenarios "$b"
    else
        log "skipping $b"
    fi
    stop_broker
done

python3 "$ROOT/bench/table.py" "$RESULTS" | tee "$OUT/table.md"
log "results: $RESULTS, table: $OUT/table.md"
