# Helpers shared by the bench scripts (sourced, not run).

# wait_port PORT SECONDS: succeeds once 127.0.0.1:PORT accepts a connection, fails after SECONDS.
wait_port() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
