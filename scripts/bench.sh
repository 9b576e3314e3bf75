#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The performance benchmark: mqttpublish against a fakesink baseline, a plain rumqttc
# publisher and a DLSPS-style Python publisher, all in one run against one local broker.
#
#   scripts/bench.sh                 # everything, about 12-15 minutes on 2 cores
#   WORKLOADS="w1 w2" scripts/bench.sh
#
# Not part of scripts/test.sh. Works from a fresh clone: installs what it needs
# (scripts/deps.sh, plus the Debian packages `time`, `python3-gi` and
# `gir1.2-gst-plugins-base-1.0`, and a virtualenv target/bench-venv with paho-mqtt and
# opencv-python-headless), builds the plugin and the benchmark programs in release mode
# (examples/bench_pipeline.rs, bench_subscriber.rs, bench_relay.rs, and
# bench/raw-publisher with rumqttc as released; into $CARGO_TARGET_DIR if set), starts its
# own mosquitto on a free loopback port
# (persistence off; scripts/lib/broker.sh) and stops it at the end.
#
# Workloads (bench/README.md explains the measurements):
#   w1   metadata only, W1_N buffers of 64x48 video with 5 objects, QoS 0 and 1:
#        fakesink baseline, mqttpublish (leaky=no and default), raw rumqttc, Python; and
#        what building one message costs alone (examples/message_build_bench.rs)
#   w2   W2_N 1280x720 frames, I420 and BGRx, publish-frame: baseline, jpegenc !
#        mqttpublish, mqttpublish encoding itself, Python with OpenCV
#   w3   latency at 30 fps for W3_SECONDS: metadata only and with 720p frames,
#        mqttpublish (add-sink-time) and the raw publisher (its own send time)
#   w4   W4_BRANCHES live 30 fps sources into mqttpublish (QoS 1) for W4_SECONDS vs the
#        same into fakesink: CPU share of one core, messages lost
#   mem  720p frames with the broker down for OUTAGE_SECONDS: peak RSS against
#        max-queued-bytes, and the queue draining after the broker returns
#   spool  the disk spool (spool-location): W1's rows again with spool-sync=interval and
#        always (CPU per message against W1's, disk bytes per message); then an outage's
#        backlog (SPOOL_CAMERAS x 30 fps x SPOOL_OUTAGE_SECONDS of 720p frames, spooled
#        with no broker) published by a live 720p camera on the same spool for
#        SPOOL_LIVE_SECONDS: how fast the backlog drains, the live frames' latency
#   w5   W5_BRANCHES live 30 fps sources, each with its own mqttpublish (QoS 1,
#        add-sink-time), in one process against a three-node NATS cluster (JetStream,
#        MQTT; its own, on free loopback ports) for W5_SECONDS, vs the same into
#        fakesink: CPU, threads, peak RSS, p99 latency at a subscriber on another node,
#        messages lost
#   w6   for each N of W6_BRANCHES, N live 64x48 30 fps sources, each with its own
#        mqttpublish (QoS 1, add-sink-time), in one process against the local mosquitto
#        for W6_SECONDS, vs the same into fakesink: what the shared connection runtime
#        costs as sinks multiply: CPU, threads, peak RSS, delivered, p50/p99 latency;
#        each N once with a connection per sink and once with all the sinks on one
#        (shared-connection);
#        then the same sinks once more through a relay in front of the broker
#        (examples/bench_relay.rs), on a wall-clock pipeline clock, for the latency by
#        stage: the live source's due time -> the sink -> the socket -> the subscriber
#
# Knobs (environment): W1_N=20000 W2_N=300 W3_SECONDS=60 W3_QOS=0 W4_SECONDS=60
# W4_BRANCHES=16 OUTAGE_SECONDS=60 MEM_BEFORE=10 MEM_AFTER=30 MEM_QUEUE_BYTES=33554432
# MEM_SLACK_MIB=16 REPEAT=5 (w1/w2 runs per row; the median is reported) W5_SECONDS=60
# W5_BRANCHES=64 W6_SECONDS=30 W6_BRANCHES="64 256" W6_SPREAD=0 SPOOL_CAMERAS=4 SPOOL_OUTAGE_SECONDS=60
# SPOOL_LIVE_SECONDS=60
# WORKLOADS="w1 w2 w3 w4 mem spool w5 w6" BENCH_DIR=target/bench (results.jsonl, RESULTS.md, logs).
#
# Prints the result tables (also written to $BENCH_DIR/RESULTS.md) and whether each
# target is met. Exits non-zero only when the benchmark itself could not run.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

W1_N=${W1_N:-20000}
W2_N=${W2_N:-300}
W3_SECONDS=${W3_SECONDS:-60}
W3_QOS=${W3_QOS:-0}
W4_SECONDS=${W4_SECONDS:-60}
W4_BRANCHES=${W4_BRANCHES:-16}
OUTAGE_SECONDS=${OUTAGE_SECONDS:-60}
MEM_BEFORE=${MEM_BEFORE:-10}
MEM_AFTER=${MEM_AFTER:-30}
MEM_QUEUE_BYTES=${MEM_QUEUE_BYTES:-33554432}
MEM_SLACK_MIB=${MEM_SLACK_MIB:-16}
REPEAT=${REPEAT:-5}
W5_SECONDS=${W5_SECONDS:-60}
W5_BRANCHES=${W5_BRANCHES:-64}
SPOOL_CAMERAS=${SPOOL_CAMERAS:-4}
SPOOL_OUTAGE_SECONDS=${SPOOL_OUTAGE_SECONDS:-60}
SPOOL_LIVE_SECONDS=${SPOOL_LIVE_SECONDS:-60}
W6_SECONDS=${W6_SECONDS:-30}
W6_BRANCHES=${W6_BRANCHES:-"64 256"}
W6_SPREAD=${W6_SPREAD:-0}
WORKLOADS=${WORKLOADS:-"w1 w2 w3 w4 mem spool w5 w6"}
BENCH_DIR=${BENCH_DIR:-target/bench}
VENV=target/bench-venv

log() { printf 'bench: %s\n' "$*" >&2; }

# --- dependencies -------------------------------------------------------------------

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
deps_main
# Only the benchmark needs these (GNU time, PyGObject for the Python reference); they are
# installed here, not listed in deps.sh, because the test suite does not use them.
APT_PACKAGES=(time python3-gi gir1.2-gst-plugins-base-1.0 python3-venv)
deps_install_packages
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh

log "building the plugin and the benchmark programs (release)"
cargo build --release --lib --examples
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}
# The raw publisher is a cargo project of its own, so that it measures rumqttc as a plain
# user gets it from crates.io, not the plugin's patched copy (third_party/rumqttc).
cargo build --release --locked --manifest-path bench/raw-publisher/Cargo.toml --target-dir "$TARGET_DIR"
RELEASE_DIR=$TARGET_DIR/release
EXAMPLES=$RELEASE_DIR/examples
RAW_PUBLISHER=$RELEASE_DIR/raw_publisher
export GST_PLUGIN_PATH="$RELEASE_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

# The virtualenv sees Debian's PyGObject (python3-gi) through --system-site-packages,
# so it is made with Debian's python3, whatever python3 is first on PATH.
if ! "$VENV/bin/python" -c 'import gi' 2>/dev/null; then
    log "creating the Python virtualenv $VENV"
    rm -rf "$VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
if ! "$VENV/bin/python" -c 'import paho.mqtt.client, cv2, numpy' 2>/dev/null; then
    log "installing paho-mqtt and opencv-python-headless into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        'paho-mqtt>=2,<3' 'opencv-python-headless>=4.8,<5'
fi
PYTHON=$REPO_DIR/$VENV/bin/python

# --- work area, broker, cleanup -----------------------------------------------------

mkdir -p "$BENCH_DIR"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)
WORK=$(mktemp -d)
RESULTS=$BENCH_DIR/results.jsonl
: >"$RESULTS"
LOGS=$BENCH_DIR/logs
rm -rf "$LOGS"
mkdir -p "$LOGS"

sub_pid=
pub_pid=
relay_pid=
nats_pids=()
cleanup() {
    local pid
    for pid in "$pub_pid" "$sub_pid" "$relay_pid" "$broker_pid" "${nats_pids[@]}"; do
        stop_process "$pid"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PORT=$(free_port)
# max_queued_messages 0: no per-subscriber queue limit, so a message the subscriber does
# not get is the publisher's doing, not the broker's (mosquitto drops even QoS 0 beyond
# 1000).
# set_tcp_nodelay true: send to subscribers at once. mosquitto leaves Nagle's algorithm
# on by default: a message to a subscriber then waits for the ACK of the previous one,
# which Linux delays, adding up to ~10 ms to some messages at 30 fps whoever published
# them.
broker_config "$PORT" "max_queued_messages 0" "set_tcp_nodelay true" >"$WORK/mosquitto.conf"

start_broker() {
    broker_start "$WORK/mosquitto.conf" "$LOGS/mosquitto.log" "$PORT"
}

# start_subscriber TOPIC-FILTER [bench_subscriber options...]
start_subscriber() {
    local filter=$1
    shift
    rm -f "$WORK/sub.ready" "$WORK/sub.stop"
    "$EXAMPLES/bench_subscriber" --port="${SUB_PORT:-$PORT}" --topic="$filter" \
        --ready-file="$WORK/sub.ready" --stop-file="$WORK/sub.stop" "$@" \
        >"$WORK/sub.json" 2>>"$LOGS/subscriber.log" &
    sub_pid=$!
    wait_ready "$WORK/sub.ready" "$sub_pid"
}

stop_subscriber() {
    touch "$WORK/sub.stop"
    wait "$sub_pid" || {
        log "the subscriber failed"
        exit 1
    }
    sub_pid=
}

# measure KEY-JSON TOPIC-FILTER [--sub-opts "OPTS"] -- COMMAND...
# (the subscriber connects to $SUB_PORT, the local mosquitto unless a workload says)
# Runs COMMAND (a publisher printing one JSON object) under GNU time with a subscriber
# on TOPIC-FILTER, and appends one record to results.jsonl.
measure() {
    local key=$1 filter=$2
    shift 2
    local sub_opts=()
    if [[ "${1:-}" == --sub-opts ]]; then
        read -r -a sub_opts <<<"$2"
        shift 2
    fi
    [[ "$1" == -- ]] && shift
    local name
    name=$(/usr/bin/python3 -c 'import json,sys; k=json.loads(sys.argv[1]); print("-".join(str(v) for v in k.values()))' "$key")
    start_subscriber "$filter" "${sub_opts[@]}"
    local rc=0
    /usr/bin/time -f '{"user":%U,"sys":%S,"wall":%e,"max_rss_kib":%M}' -o "$WORK/time.json" \
        "$@" >"$WORK/pub.json" 2>"$LOGS/$name.log" || rc=$?
    stop_subscriber
    if ((rc != 0)); then
        log "FAILED ($name, exit $rc); last lines of $LOGS/$name.log:"
        tail -5 "$LOGS/$name.log" >&2
        exit 1
    fi
    /usr/bin/python3 bench/report.py record "$key" "$WORK/pub.json" "$WORK/time.json" \
        "$WORK/sub.json" >>"$RESULTS"
    log "$name: $(tail -1 "$RESULTS" | /usr/bin/python3 bench/report.py brief)"
}

# capture FILE TOPIC PIPELINE...: the first message a pipeline publishes, saved to FILE.
capture() {
    local file=$1 topic=$2
    shift 2
    start_subscriber "$topic" --save-first="$file"
    "$EXAMPLES/bench_pipeline" "$@" >/dev/null 2>>"$LOGS/capture.log"
    stop_subscriber
    [[ -s "$file" ]] || {
        log "no message captured on $topic"
        exit 1
    }
}

SAMPLE=$REPO_DIR/pipelines/sample.jsonl
MQTT="port=$PORT"

start_broker
log "mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1:$PORT"
/usr/bin/python3 bench/report.py meta \
    "$(printf '{"W1_N":%s,"W2_N":%s,"W3_SECONDS":%s,"W3_QOS":%s,"W4_SECONDS":%s,"W4_BRANCHES":%s,"OUTAGE_SECONDS":%s,"MEM_QUEUE_BYTES":%s,"MEM_SLACK_MIB":%s,"REPEAT":%s,"W5_SECONDS":%s,"W5_BRANCHES":%s,"SPOOL_CAMERAS":%s,"SPOOL_OUTAGE_SECONDS":%s,"SPOOL_LIVE_SECONDS":%s,"W6_SECONDS":%s,"W6_BRANCHES":"%s","W6_SPREAD":%s}' \
        "$W1_N" "$W2_N" "$W3_SECONDS" "$W3_QOS" "$W4_SECONDS" "$W4_BRANCHES" "$OUTAGE_SECONDS" "$MEM_QUEUE_BYTES" "$MEM_SLACK_MIB" "$REPEAT" "$W5_SECONDS" "$W5_BRANCHES" "$SPOOL_CAMERAS" "$SPOOL_OUTAGE_SECONDS" "$SPOOL_LIVE_SECONDS" "$W6_SECONDS" "$W6_BRANCHES" "$W6_SPREAD")" \
    "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- src 2>/dev/null || echo '+dirty')" \
    >>"$RESULTS"

# A first run brings the GStreamer registry up to date, so no run pays for the scan.
"$EXAMPLES/bench_pipeline" videotestsrc num-buffers=1 ! metareplay location="$SAMPLE" ! fakesink >/dev/null

# --- W1: metadata only ----------------------------------------------------------------

w1() {
    local src="videotestsrc num-buffers=$W1_N ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! metareplay location=$SAMPLE loop=true"
    capture "$WORK/w1.json" bench/capture/w1 \
        videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=64,height=48 \
        ! metareplay location="$SAMPLE" ! mqttpublish $MQTT topic=bench/capture/w1
    local rep qos
    for rep in $(seq "$REPEAT"); do
        measure "{\"w\":\"w1\",\"row\":\"baseline\",\"qos\":\"-\",\"rep\":$rep}" bench/w1/none \
            -- "$EXAMPLES/bench_pipeline" $src ! fakesink
        # Building the message alone (reading the metas, writing the JSON), no publishing.
        measure "{\"w\":\"w1\",\"row\":\"build\",\"qos\":\"-\",\"rep\":$rep}" bench/w1/none \
            -- "$EXAMPLES/message_build_bench"
        for qos in 0 1; do
            measure "{\"w\":\"w1\",\"row\":\"mqttpublish\",\"qos\":$qos,\"rep\":$rep}" "bench/w1/m$qos" \
                -- "$EXAMPLES/bench_pipeline" $src ! mqttpublish $MQTT qos=$qos topic=bench/w1/m$qos leaky=no
            measure "{\"w\":\"w1\",\"row\":\"mqttpublish-default\",\"qos\":$qos,\"rep\":$rep}" "bench/w1/d$qos" \
                -- "$EXAMPLES/bench_pipeline" $src ! mqttpublish $MQTT qos=$qos topic=bench/w1/d$qos
            measure "{\"w\":\"w1\",\"row\":\"raw\",\"qos\":$qos,\"rep\":$rep}" "bench/w1/r$qos" \
                -- "$RAW_PUBLISHER" --port="$PORT" --qos="$qos" --topic="bench/w1/r$qos" \
                --count="$W1_N" --payload="$WORK/w1.json"
            measure "{\"w\":\"w1\",\"row\":\"python\",\"qos\":$qos,\"rep\":$rep}" "bench/w1/p$qos" \
                -- "$PYTHON" bench/reference_publisher.py --port "$PORT" --qos "$qos" --topic "bench/w1/p$qos" \
                $src ! appsink name=sink
        done
    done
}

# --- spool: the disk spool --------------------------------------------------------------

spool() {
    local src="videotestsrc num-buffers=$W1_N ! video/x-raw,format=I420,width=64,height=48,framerate=30/1 ! metareplay location=$SAMPLE loop=true"
    local rep qos sync
    for rep in $(seq "$REPEAT"); do
        for qos in 0 1; do
            for sync in interval always; do
                rm -rf "$WORK/spool-w1"
                measure "{\"w\":\"spool\",\"row\":\"w1-$sync\",\"qos\":$qos,\"rep\":$rep}" bench/spool/w1 \
                    -- "$EXAMPLES/bench_pipeline" $src ! mqttpublish $MQTT qos=$qos leaky=no topic=bench/spool/w1 \
                    spool-location="$WORK/spool-w1" spool-sync=$sync
            done
        done
    done

    # The outage: no broker answers while the cameras' frames go to the spool.
    local backlog=$((SPOOL_CAMERAS * 30 * SPOOL_OUTAGE_SECONDS)) closed
    local spool_opts="client-id=bench-replay spool-location=$WORK/spool-replay spool-max-bytes=17179869184"
    closed=$(free_port)
    rm -rf "$WORK/spool-replay"
    log "spool: spooling an outage's backlog of $backlog 720p frames"
    gst-launch-1.0 -q videotestsrc num-buffers="$backlog" \
        ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
        ! metareplay location="$SAMPLE" loop=true \
        ! mqttpublish port="$closed" qos=1 publish-frame=true flush-timeout=0 $spool_opts \
        >"$LOGS/spool-backlog.log" 2>&1 || true
    # The broker is back: a live camera on the same spool, its frames stamped (the
    # backlog's are not, so the latency is the live frames' only).
    measure "{\"w\":\"spool\",\"row\":\"replay\",\"backlog\":$backlog}" bench/spool/replay --sub-opts --latency \
        -- "$EXAMPLES/bench_pipeline" --duration="$SPOOL_LIVE_SECONDS" --timeline --sample-interval=0.25 \
        videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 \
        ! metareplay location="$SAMPLE" loop=true \
        ! mqttpublish $MQTT qos=1 publish-frame=true add-sink-time=true topic=bench/spool/replay $spool_opts
    rm -rf "$WORK/spool-w1" "$WORK/spool-replay"
}

# --- W2: frames -----------------------------------------------------------------------

w2() {
    local rep fmt src
    for rep in $(seq "$REPEAT"); do
        for fmt in I420 BGRx; do
            src="videotestsrc num-buffers=$W2_N ! video/x-raw,format=$fmt,width=1280,height=720,framerate=30/1 ! metareplay location=$SAMPLE loop=true"
            measure "{\"w\":\"w2\",\"row\":\"baseline\",\"format\":\"$fmt\",\"rep\":$rep}" bench/w2/none \
                -- "$EXAMPLES/bench_pipeline" $src ! fakesink
            measure "{\"w\":\"w2\",\"row\":\"jpegenc\",\"format\":\"$fmt\",\"rep\":$rep}" bench/w2/j \
                -- "$EXAMPLES/bench_pipeline" $src ! jpegenc quality=85 \
                ! mqttpublish $MQTT publish-frame=true leaky=no topic=bench/w2/j
            measure "{\"w\":\"w2\",\"row\":\"internal\",\"format\":\"$fmt\",\"rep\":$rep}" bench/w2/i \
                -- "$EXAMPLES/bench_pipeline" $src \
                ! mqttpublish $MQTT publish-frame=true jpeg-quality=85 leaky=no topic=bench/w2/i
            measure "{\"w\":\"w2\",\"row\":\"python\",\"format\":\"$fmt\",\"rep\":$rep}" bench/w2/p \
                -- "$PYTHON" bench/reference_publisher.py --port "$PORT" --topic bench/w2/p --publish-frame \
                $src ! appsink name=sink
        done
    done
}

# --- W3: latency ----------------------------------------------------------------------

w3() {
    local meta="videotestsrc is-live=true ! video/x-raw,format=I420,width=640,height=480,framerate=30/1 ! metareplay location=$SAMPLE loop=true"
    local frames="videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1 ! metareplay location=$SAMPLE loop=true"
    local count=$((W3_SECONDS * 30))
    capture "$WORK/w3-meta.json" bench/capture/w3m \
        videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=640,height=480 \
        ! metareplay location="$SAMPLE" ! mqttpublish $MQTT add-sink-time=true topic=bench/capture/w3m
    capture "$WORK/w3-frames.json" bench/capture/w3f \
        videotestsrc num-buffers=1 ! video/x-raw,format=I420,width=1280,height=720 \
        ! metareplay location="$SAMPLE" \
        ! mqttpublish $MQTT add-sink-time=true publish-frame=true topic=bench/capture/w3f
    measure "{\"w\":\"w3\",\"row\":\"mqttpublish\",\"payload\":\"metadata\"}" bench/w3/mm --sub-opts --latency \
        -- "$EXAMPLES/bench_pipeline" --duration="$W3_SECONDS" $meta \
        ! mqttpublish $MQTT qos="$W3_QOS" add-sink-time=true topic=bench/w3/mm
    measure "{\"w\":\"w3\",\"row\":\"raw\",\"payload\":\"metadata\"}" bench/w3/rm --sub-opts --latency \
        -- "$RAW_PUBLISHER" --port="$PORT" --qos="$W3_QOS" --topic=bench/w3/rm \
        --count="$count" --rate=30 --stamp --payload="$WORK/w3-meta.json"
    measure "{\"w\":\"w3\",\"row\":\"mqttpublish\",\"payload\":\"720p frame\"}" bench/w3/mf --sub-opts --latency \
        -- "$EXAMPLES/bench_pipeline" --duration="$W3_SECONDS" $frames \
        ! mqttpublish $MQTT qos="$W3_QOS" add-sink-time=true publish-frame=true topic=bench/w3/mf
    measure "{\"w\":\"w3\",\"row\":\"raw\",\"payload\":\"720p frame\"}" bench/w3/rf --sub-opts --latency \
        -- "$RAW_PUBLISHER" --port="$PORT" --qos="$W3_QOS" --topic=bench/w3/rf \
        --count="$count" --rate=30 --stamp --payload="$WORK/w3-frames.json"
}

# --- W4: many streams -----------------------------------------------------------------

# live_branches N SINK...: N live 64x48 30 fps sources with the sample's objects, each into
# SINK (its words, @i@ standing for the branch number), in the array desc.
# live_branches N SINK...: N live 30 fps sources, each into SINK (@i@ is the branch's
# number). With LIVE_SPREAD=1 their frames are due at phases spread evenly over the frame
# period (videotestsrc timestamp-offset), as independent cameras' are; otherwise they
# start together and their frames come within a few milliseconds of each other.
live_branches() {
    local n=$1 i offset=
    shift
    desc=()
    for i in $(seq 0 $((n - 1))); do
        if [[ ${LIVE_SPREAD:-0} == 1 ]]; then
            offset="timestamp-offset=$((i * 33333333 / n))"
        fi
        desc+=(videotestsrc is-live=true $offset ! video/x-raw,format=I420,width=64,height=48,framerate=30/1
            ! metareplay location="$SAMPLE" loop=true ! "${@//@i@/$i}")
    done
}

w4() {
    local row desc
    for row in baseline mqttpublish; do
        if [[ $row == baseline ]]; then
            live_branches "$W4_BRANCHES" fakesink
        else
            live_branches "$W4_BRANCHES" mqttpublish name=m@i@ $MQTT qos=1 topic=bench/w4/@i@
        fi
        measure "{\"w\":\"w4\",\"row\":\"$row\",\"branches\":$W4_BRANCHES}" 'bench/w4/#' \
            -- "$EXAMPLES/bench_pipeline" --duration="$W4_SECONDS" "${desc[@]}"
    done
}

# --- memory: broker outage ------------------------------------------------------------

mem() {
    local total=$((MEM_BEFORE + OUTAGE_SECONDS + MEM_AFTER)) row
    local desc=(videotestsrc is-live=true ! video/x-raw,format=I420,width=1280,height=720,framerate=30/1
        ! metareplay location="$SAMPLE" loop=true
        ! mqttpublish $MQTT qos=1 publish-frame=true max-queued-bytes="$MEM_QUEUE_BYTES"
        max-queued-messages=1000000 topic=bench/mem)
    for row in broker-up outage; do
        start_subscriber bench/mem
        rm -f "$WORK/pub.started"
        /usr/bin/time -f '{"user":%U,"sys":%S,"wall":%e,"max_rss_kib":%M}' -o "$WORK/time.json" \
            "$EXAMPLES/bench_pipeline" --duration="$total" --timeline --sample-interval=0.5 \
            --started-file="$WORK/pub.started" "${desc[@]}" \
            >"$WORK/pub.json" 2>"$LOGS/mem-$row.log" &
        pub_pid=$!
        local down_at=null up_at=null
        if [[ $row == outage ]]; then
            while [[ ! -e "$WORK/pub.started" ]]; do
                kill -0 "$pub_pid" 2>/dev/null || break
                sleep 0.05
            done
            sleep "$MEM_BEFORE"
            log "stopping the broker for ${OUTAGE_SECONDS}s"
            down_at=$(date +%s.%N)
            broker_stop
            sleep "$OUTAGE_SECONDS"
            start_broker
            up_at=$(date +%s.%N)
            log "broker back"
        fi
        local rc=0
        wait "$pub_pid" || rc=$?
        pub_pid=
        stop_subscriber
        if ((rc != 0)); then
            log "FAILED (mem-$row, exit $rc)"
            tail -5 "$LOGS/mem-$row.log" >&2
            exit 1
        fi
        /usr/bin/python3 bench/report.py record \
            "{\"w\":\"mem\",\"row\":\"$row\",\"down_at\":$down_at,\"up_at\":$up_at}" \
            "$WORK/pub.json" "$WORK/time.json" "$WORK/sub.json" >>"$RESULTS"
        log "mem-$row: $(tail -1 "$RESULTS" | /usr/bin/python3 bench/report.py brief)"
    done
}

# --- W5: many cameras against a NATS cluster ----------------------------------------

# Starts three NATS servers (JetStream, MQTT, sessions on all three) on free loopback
# ports in $WORK; NATS_MQTT holds their MQTT ports.
nats_cluster_start() {
    local i _ routes=() cports=() mports=()
    for i in 0 1 2; do
        cports+=("$(free_port)")
        mports+=("$(free_port)")
    done
    for i in 0 1 2; do
        routes+=("\"nats-route://127.0.0.1:${cports[$i]}\"")
    done
    for i in 0 1 2; do
        mkdir -p "$WORK/nats$i"
        cat >"$WORK/nats$i/nats.conf" <<EOF
server_name: n$((i + 1))
listen: "127.0.0.1:-1"
jetstream { store_dir: "$WORK/nats$i/js" }
cluster { name: bench, listen: "127.0.0.1:${cports[$i]}", routes: [$(IFS=,; echo "${routes[*]}")] }
mqtt { listen: "127.0.0.1:${mports[$i]}", stream_replicas: 3 }
EOF
        nats-server -c "$WORK/nats$i/nats.conf" 2>>"$LOGS/nats$i.log" &
        nats_pids+=($!)
    done
    NATS_MQTT=("${mports[@]}")
    for i in 0 1 2; do
        for _ in $(seq 200); do
            port_open 127.0.0.1 "${mports[$i]}" && break
            sleep 0.1
        done
    done
    # JetStream elects its leaders before MQTT sessions work.
    sleep 5
}

w5() {
    local sink row i desc
    nats_cluster_start
    log "NATS cluster: MQTT on 127.0.0.1 ports ${NATS_MQTT[*]}"
    for row in baseline mqttpublish; do
        desc=()
        for i in $(seq 0 $((W5_BRANCHES - 1))); do
            if [[ $row == baseline ]]; then
                sink="fakesink"
            else
                # The sinks alternate between the first two nodes (each failing over to
                # the other); the subscriber is on the third.
                if ((i % 2)); then
                    sink="127.0.0.1:${NATS_MQTT[1]},127.0.0.1:${NATS_MQTT[0]}"
                else
                    sink="127.0.0.1:${NATS_MQTT[0]},127.0.0.1:${NATS_MQTT[1]}"
                fi
                sink="mqttpublish name=m$i host=$sink qos=1 add-sink-time=true topic=bench/w5/$i"
            fi
            desc+=(videotestsrc is-live=true ! video/x-raw,format=I420,width=64,height=48,framerate=30/1
                ! metareplay location="$SAMPLE" loop=true ! $sink)
        done
        SUB_PORT=${NATS_MQTT[2]} measure "{\"w\":\"w5\",\"row\":\"$row\",\"branches\":$W5_BRANCHES}" \
            'bench/w5/#' --sub-opts --latency \
            -- "$EXAMPLES/bench_pipeline" --duration="$W5_SECONDS" "${desc[@]}"
    done
    for i in "${nats_pids[@]}"; do
        stop_process "$i"
    done
    nats_pids=()
}

# --- W6: many sinks on the shared connection runtime ---------------------------------

w6() {
    local n row desc
    # W6_SPREAD=1: the sources' frames due at spread phases (live_branches).
    local LIVE_SPREAD=$W6_SPREAD
    for n in $W6_BRANCHES; do
        for row in baseline mqttpublish shared; do
            case $row in
            baseline) live_branches "$n" fakesink ;;
            mqttpublish)
                live_branches "$n" mqttpublish name=m@i@ $MQTT qos=1 add-sink-time=true topic=bench/w6/@i@
                ;;
            shared)
                live_branches "$n" mqttpublish name=m@i@ $MQTT qos=1 add-sink-time=true topic=bench/w6/@i@ \
                    shared-connection=w6
                ;;
            esac
            measure "{\"w\":\"w6\",\"row\":\"$row\",\"branches\":$n}" 'bench/w6/#' --sub-opts --latency \
                -- "$EXAMPLES/bench_pipeline" --duration="$W6_SECONDS" "${desc[@]}"
        done
        w6_stages "$n"
    done
}

# w6_stages N: W6's mqttpublish row again, through bench_relay, for the latency by stage.
# Every time is read from the wall clock: the pipeline's clock (--realtime-clock) gives
# when each frame was due (base time + its timestamp), the payload's sink_time when the
# sink took it, the relay when its PUBLISH reached the socket, the subscriber when it
# arrived. The connection worker's trace (GST_DEBUG) counts how often the mover let a
# batch gather (its linger) instead of handing a message over at once. The message times
# stay in $LOGS (w6-stages-N.relayed.tsv, .received.tsv) for a closer look.
w6_stages() {
    local n=$1 relay_port key
    relay_port=$(free_port)
    rm -f "$WORK/relay.ready" "$WORK/relay.stop"
    "$EXAMPLES/bench_relay" --port="$relay_port" --broker-port="$PORT" \
        --ready-file="$WORK/relay.ready" --stop-file="$WORK/relay.stop" \
        --dump="$LOGS/w6-stages-$n.relayed.tsv" >"$WORK/relay.json" 2>>"$LOGS/relay.log" &
    relay_pid=$!
    wait_ready "$WORK/relay.ready" "$relay_pid"
    live_branches "$n" mqttpublish name=m@i@ host=127.0.0.1 port="$relay_port" qos=1 \
        add-sink-time=true topic=bench/w6/@i@
    key="{\"w\":\"w6\",\"row\":\"stages\",\"branches\":$n}"
    GST_DEBUG=mqttpublish-connection:7 GST_DEBUG_NO_COLOR=1 \
        measure "$key" 'bench/w6/#' --sub-opts "--latency --dump=$LOGS/w6-stages-$n.received.tsv" \
        -- "$EXAMPLES/bench_pipeline" --realtime-clock --duration="$W6_SECONDS" "${desc[@]}"
    touch "$WORK/relay.stop"
    wait "$relay_pid" || {
        log "the relay failed"
        exit 1
    }
    relay_pid=
    /usr/bin/python3 bench/report.py stages "$key" "$WORK/pub.json" "$WORK/relay.json" \
        "$LOGS/w6-stages-$n".{relayed,received}.tsv "$LOGS/w6-stages-$n.log" >>"$RESULTS"
    log "w6 stages, $n sinks: $(tail -1 "$RESULTS" | /usr/bin/python3 bench/report.py brief)"
}

for workload in $WORKLOADS; do
    case $workload in
    w1 | w2 | w3 | w4 | mem | spool | w5 | w6)
        log "=== $workload"
        "$workload"
        ;;
    *)
        log "unknown workload $workload (use w1 w2 w3 w4 mem spool w5 w6)"
        exit 2
        ;;
    esac
done

broker_stop
/usr/bin/python3 bench/report.py report "$RESULTS" | tee "$BENCH_DIR/RESULTS.md"
log "results: $BENCH_DIR/RESULTS.md (raw data: $RESULTS, logs: $LOGS)"
