#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
#
# A file job: every frame of a video file, its detections published over MQTT, nothing
# dropped (leaky=no waits for the broker instead), the last messages flushed at the end.
# The settings are those of the pallet_detection pipeline of the DLSPS config.json next to
# this script: topic warehouse/pallets, QoS 1, frames as JPEG, the box / shipping label
# filter. The broker comes from MQTT_HOST and MQTT_PORT, as in DLSPS.
#
#   MQTT_HOST=broker MQTT_PORT=1883 pipelines/file-job.sh video.avi
#
# Here the detections are the recording pipelines/sample.jsonl, replayed by metareplay.
# With DL Streamer, run the detector instead of metareplay:
#
#   gst-launch-1.0 -e filesrc location=video.avi ! decodebin ! videoconvert \
#       ! gvadetect model=/models/pallet/model.xml device=CPU ! queue \
#       ! gvametaconvert add-empty-results=true \
#       ! mqttpublish config=pipelines/config.json config-pipeline=pallet_detection leaky=no
set -eu
here=$(cd "$(dirname "$0")" && pwd)
video=${1:?usage: MQTT_HOST=.. MQTT_PORT=.. $0 VIDEO}

exec gst-launch-1.0 -e filesrc location="$video" ! decodebin ! videoconvert \
    ! metareplay location="$here/sample.jsonl" \
    ! mqttpublish config="$here/config.json" config-pipeline=pallet_detection leaky=no
