# SPDX-License-Identifier: MPL-2.0
# shellcheck shell=bash
# The local mosquitto and the subscriber start-up shared by scripts/run.sh and
# scripts/bench.sh. Source it; the caller defines log() and cleans up broker_pid
# on exit (stop_process "$broker_pid").
#
#   free_port                        a free TCP port on 127.0.0.1
#   port_open HOST PORT              whether something accepts connections there
#   broker_config PORT [LINE...]     a mosquitto.conf on stdout: root, one listener
#                                    on 127.0.0.1:PORT, anonymous, no persistence,
#                                    log to stderr, then the extra LINEs
#   broker_start CONF LOG PORT       starts mosquitto with CONF in the background
#                                    (broker_pid), its log appended to LOG; returns
#                                    once 127.0.0.1:PORT accepts connections, exits
#                                    the script with the log if it does not within 5 s
#   broker_stop                      stops that mosquitto
#   wait_ready FILE PID              waits up to 10 s for a subscriber (PID) to
#                                    create its ready FILE; exits the script if not
#   stop_process PID                 kills and reaps PID if it still runs

BROKER_HOST=127.0.0.1
broker_pid=

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

broker_config() {
    local port=$1
    shift
    cat <<EOF
user root
listener $port $BROKER_HOST
allow_anonymous true
persistence false
EOF
    local line
    for line in "$@"; do
        printf '%s\n' "$line"
    done
    echo "log_dest stderr"
}

broker_start() {
    local conf=$1 log_file=$2 port=$3 _
    mosquitto -c "$conf" 2>>"$log_file" &
    broker_pid=$!
    for _ in $(seq 100); do
        port_open "$BROKER_HOST" "$port" && return 0
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            broker_pid=
            break
        fi
        sleep 0.05
    done
    log "mosquitto did not start:"
    cat "$log_file" >&2
    exit 1
}

broker_stop() {
    stop_process "$broker_pid"
    broker_pid=
}

wait_ready() {
    local file=$1 pid=$2 _
    for _ in $(seq 200); do
        [[ -e "$file" ]] && return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    log "the subscriber did not subscribe"
    exit 1
}

stop_process() {
    local pid=$1
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
