#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
#
# A live camera: frames come at the camera's pace and must never wait for the network, so
# mqttpublish's full queue drops its oldest message (leaky=downstream, counted in stats)
# and a slow broker never stalls capture. The settings are the bare mqtt_publisher section next to
# this script (topic dlstreamer_pipeline_results, QoS 1, metadata only, the box / shipping
# label filter); the broker comes from MQTT_HOST and MQTT_PORT.
#
#   MQTT_HOST=broker MQTT_PORT=1883 pipelines/live-camera.sh [/dev/video0]
#
# SOURCE replaces the camera, e.g. an RTSP camera:
#   SOURCE="rtspsrc location=rtsp://camera/stream ! decodebin" pipelines/live-camera.sh
#
# Here the detections are the recording pipelines/sample.jsonl, replayed in a loop by
# metareplay. With DL Streamer, detect and track instead; inference is slow, so a small
# leaky queue in front of it drops frames rather than let them pile up behind it:
#
#   gst-launch-1.0 -e v4l2src device=/dev/video0 ! decodebin ! videoconvert \
#       ! queue leaky=downstream max-size-buffers=2 \
#       ! gvadetect model=/models/detector.xml device=CPU ! gvatrack tracking-type=zero-term-imageless \
#       ! gvametaconvert ! mqttpublish config=pipelines/mqtt_publisher.json leaky=downstream
set -eu
here=$(cd "$(dirname "$0")" && pwd)
source=${SOURCE:-"v4l2src device=${1:-/dev/video0} ! decodebin"}

# $source is split into words on purpose: gst-launch-1.0 joins its arguments.
# shellcheck disable=SC2086
exec gst-launch-1.0 -e $source ! videoconvert ! videoscale \
    ! video/x-raw,width=640,height=480 \
    ! metareplay location="$here/sample.jsonl" loop=true \
    ! mqttpublish config="$here/mqtt_publisher.json" leaky=downstream
