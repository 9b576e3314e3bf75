#!/usr/bin/env bash
# The main job: publishes analytics metadata and frames over MQTT end to end.
#
#   1. installs missing dependencies (scripts/deps.sh)
#   2. builds the plugin (cargo build --release)
#   3. starts a local mosquitto on 127.0.0.1:1883 unless something listens
#      there already (and stops it again at the end)
#   4. creates a Python virtualenv in target/venv with paho-mqtt
#   5. starts scripts/subscriber.py on the results topic
#   6. runs a pipeline that replays pipelines/sample.jsonl onto a test video
#      and publishes every frame with mqttpublish
#   7. the subscriber checks every message and prints a summary
#
# Exits non-zero if any step fails or the subscriber saw a wrong message count
# or a malformed message.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

MQTT_HOST=127.0.0.1
MQTT_PORT=1883
TOPIC=dlstreamer_pipeline_results
FRAMES=300
WIDTH=640
HEIGHT=480
VENV=target/venv

log() { printf 'run: %s\n' "$*" >&2; }

# shellcheck source=scripts/deps.sh
. scripts/deps.sh
deps_main

log "building the plugin"
cargo build --release

work=$(mktemp -d)
broker_pid=
subscriber_pid=
cleanup() {
    if [[ -n "$subscriber_pid" ]] && kill -0 "$subscriber_pid" 2>/dev/null; then
        kill "$subscriber_pid" 2>/dev/null || true
        wait "$subscriber_pid" 2>/dev/null || true
    fi
    if [[ -n "$broker_pid" ]]; then
        log "stopping the mosquitto started by this script (pid $broker_pid)"
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() {
    (exec 3<>"/dev/tcp/$MQTT_HOST/$MQTT_PORT") 2>/dev/null
}

if port_open; then
    log "using the MQTT broker already listening on $MQTT_HOST:$MQTT_PORT"
else
    log "starting mosquitto on $MQTT_HOST:$MQTT_PORT"
    cat >"$work/mosquitto.conf" <<EOF
user root
listener $MQTT_PORT $MQTT_HOST
allow_anonymous true
persistence false
log_dest stderr
EOF
    mosquitto -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
    broker_pid=$!
    for _ in $(seq 50); do
        port_open && break
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            broker_pid=
            break
        fi
        sleep 0.1
    done
    if ! port_open; then
        log "mosquitto did not start:"
        cat "$work/mosquitto.log" >&2
        exit 1
    fi
fi

# A virtualenv with paho-mqtt; reused across runs, (re)created when broken.
if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    log "creating the Python virtualenv $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import paho.mqtt.client' 2>/dev/null; then
    log "installing paho-mqtt into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3'
fi

log "starting the subscriber on $TOPIC"
"$VENV/bin/python" scripts/subscriber.py \
    --host "$MQTT_HOST" --port "$MQTT_PORT" --topic "$TOPIC" \
    --count "$FRAMES" --width "$WIDTH" --height "$HEIGHT" \
    --timeout 300 --ready-file "$work/subscriber.ready" &
subscriber_pid=$!
for _ in $(seq 100); do
    [[ -e "$work/subscriber.ready" ]] && break
    kill -0 "$subscriber_pid" 2>/dev/null || break
    sleep 0.1
done
if [[ ! -e "$work/subscriber.ready" ]]; then
    log "the subscriber did not subscribe"
    exit 1
fi

log "running the pipeline"
pipeline_rc=0
GST_PLUGIN_PATH="$REPO_DIR/target/release${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}" \
    gst-launch-1.0 \
    videotestsrc num-buffers="$FRAMES" \
    ! "video/x-raw,width=$WIDTH,height=$HEIGHT" \
    ! metareplay location=pipelines/sample.jsonl \
    ! mqttpublish publish-frame=true ||
    pipeline_rc=$?
if ((pipeline_rc != 0)); then
    log "gst-launch-1.0 failed (exit $pipeline_rc)"
    exit "$pipeline_rc"
fi

subscriber_rc=0
wait "$subscriber_pid" || subscriber_rc=$?
subscriber_pid=
if ((subscriber_rc != 0)); then
    log "FAILED: the subscriber did not get the expected messages (exit $subscriber_rc)"
    exit "$subscriber_rc"
fi
log "OK: $FRAMES frames published and verified"
