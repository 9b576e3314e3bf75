#!/bin/sh
# SPDX-License-Identifier: MPL-2.0
#
# DL Streamer on an Intel GPU: decoding, inference and classification on the GPU, the
# frames staying in GPU memory (VAMemory). mqttpublish publishes their metadata; it cannot
# read images in GPU memory, so it publishes no image for them (counted in stats as
# unencoded-memory). The settings are those of the vehicle_color_gpu pipeline of the DLSPS
# config.json next to this script: topic gate/vehicles, QoS 2, no frames, classification
# results below 0.5 for "blue" removed.
#
#   MQTT_HOST=broker MQTT_PORT=1883 pipelines/gpu.sh video.mp4 detector.xml classifier.xml
#
# It needs DL Streamer (gvadetect, gvaclassify, gvametaconvert) and the VA-API plugins
# (vapostproc) with a GPU, which this repository's tests do not have: unlike file-job.sh
# and live-camera.sh, this script is not run by the tests. gst-launch-1.0 names its
# pipeline pipeline0, which matches no entry of config.json: config-pipeline picks one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: MQTT_HOST=.. MQTT_PORT=.. $0 VIDEO DETECTOR_XML CLASSIFIER_XML"
video=${1:?$usage}
detector=${2:?$usage}
classifier=${3:?$usage}

exec gst-launch-1.0 -e filesrc location="$video" ! decodebin3 \
    ! vapostproc ! 'video/x-raw(memory:VAMemory)' \
    ! gvadetect model="$detector" device=GPU pre-process-backend=va-surface-sharing \
    ! gvaclassify model="$classifier" device=GPU pre-process-backend=va-surface-sharing \
    ! queue ! gvametaconvert add-empty-results=true \
    ! mqttpublish config="$here/config.json" config-pipeline=vehicle_color_gpu
