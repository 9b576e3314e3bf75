#!/usr/bin/env bash
# SPDX-License-Identifier: MPL-2.0
# The main job: publishes analytics metadata and frames over MQTT end to end.
#
#   1. installs missing dependencies (scripts/deps.sh)
#   2. builds the plugin (cargo build --release, into $CARGO_TARGET_DIR if set)
#   3. starts a local mosquitto on 127.0.0.1:1883 unless something listens
#      there already (and stops it again at the end; scripts/lib/broker.sh)
#   4. creates a Python virtualenv in target/venv with paho-mqtt
#   5. starts scripts/subscriber.py on the results topic
#   6. runs a pipeline that replays pipelines/sample.jsonl onto a test video
#      and publishes every frame with mqttpublish
#   7. the subscriber checks every message and prints a summary
#
#   8. with --viewer (or VIEWER=1): keeps a live pipeline publishing the
#      recording with frames in a loop, serves the live viewer
#      (viewer/, analyticsmqtt-viewer) on 127.0.0.1:${VIEWER_PORT:-8080}, prints
#      its URL and runs until Ctrl-C
#
# Exits non-zero if any step fails or the subscriber saw a wrong message count
# or a malformed message.
set -euo pipefail

VIEWER=${VIEWER:-0}
VIEWER_PORT=${VIEWER_PORT:-8080}
for arg in "$@"; do
    case $arg in
    --viewer) VIEWER=1 ;;
    *)
        echo "usage: scripts/run.sh [--viewer]  (VIEWER=1, VIEWER_PORT=8080)" >&2
        exit 2
        ;;
    esac
done

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
# shellcheck source=scripts/lib/broker.sh
. scripts/lib/broker.sh

log "building the plugin"
cargo build --release
PLUGIN_DIR=${CARGO_TARGET_DIR:-$REPO_DIR/target}/release
if [[ "$VIEWER" == 1 ]]; then
    log "building the viewer"
    # Its own crate and Cargo.lock (viewer/Cargo.toml), sharing the target directory.
    cargo build --release --manifest-path viewer/Cargo.toml \
        --target-dir "${CARGO_TARGET_DIR:-$REPO_DIR/target}"
fi

work=$(mktemp -d)
subscriber_pid=
viewer_pid=
live_pid=
cleanup() {
    stop_process "$subscriber_pid"
    stop_process "$live_pid"
    stop_process "$viewer_pid"
    if [[ -n "$broker_pid" ]]; then
        log "stopping the mosquitto started by this script (pid $broker_pid)"
        broker_stop
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if port_open "$MQTT_HOST" "$MQTT_PORT"; then
    log "using the MQTT broker already listening on $MQTT_HOST:$MQTT_PORT"
else
    log "starting mosquitto on $MQTT_HOST:$MQTT_PORT"
    broker_config "$MQTT_PORT" >"$work/mosquitto.conf"
    broker_start "$work/mosquitto.conf" "$work/mosquitto.log" "$MQTT_PORT"
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
wait_ready "$work/subscriber.ready" "$subscriber_pid"

log "running the pipeline"
pipeline_rc=0
GST_PLUGIN_PATH="$PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}" \
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

if [[ "$VIEWER" == 1 ]]; then
    if port_open 127.0.0.1 "$VIEWER_PORT"; then
        log "something listens on 127.0.0.1:$VIEWER_PORT already; set VIEWER_PORT"
        exit 1
    fi
    "${CARGO_TARGET_DIR:-$REPO_DIR/target}/release/analyticsmqtt-viewer" \
        --host "$MQTT_HOST" --port "$MQTT_PORT" --topic "$TOPIC" \
        --listen "127.0.0.1:$VIEWER_PORT" &
    viewer_pid=$!
    log "running a live pipeline (the recording in a loop, 15 fps, with frames)"
    GST_PLUGIN_PATH="$PLUGIN_DIR${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}" \
        gst-launch-1.0 -q \
        videotestsrc is-live=true \
        ! "video/x-raw,width=$WIDTH,height=$HEIGHT,framerate=15/1" \
        ! metareplay location=pipelines/sample.jsonl loop=true \
        ! mqttpublish host="$MQTT_HOST" port="$MQTT_PORT" topic="$TOPIC" \
        publish-frame=true add-sink-time=true source=sample-camera &
    live_pid=$!
    log "viewer: open http://127.0.0.1:$VIEWER_PORT/ in a browser; Ctrl-C stops it all"
    # Runs until Ctrl-C (or until the viewer or the pipeline stops).
    wait -n "$viewer_pid" "$live_pid" || true
    log "the viewer or the live pipeline stopped"
fi
