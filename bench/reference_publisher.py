#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""The Python reference publisher of the benchmark (scripts/bench.sh).

What a DL Streamer Pipeline Server-style Python publisher does: the pipeline ends in an
`appsink`; a Python callback reads the region-of-interest metas of each buffer (through
ctypes, as DL Streamer's gstgva Python module does), builds the gvametaconvert-style
metadata dict, serializes it with json.dumps and publishes it with paho-mqtt (network
I/O on paho's own thread). With --publish-frame the frame is mapped without copying,
converted and encoded with OpenCV (cv2.imencode, JPEG quality 85), base64-encoded and
sent as [metadata, "<base64 JPEG>"], as DLSPS does.

    reference_publisher.py --port 1883 --topic t --qos 1 [--publish-frame] \
        'videotestsrc num-buffers=100 ! ... ! appsink name=sink'

The appsink must be named `sink`; emit-signals and sync=false are set here. The CPU
(getrusage, all threads) and wall clocks start just before PLAYING, once paho is
connected and the pipeline is PAUSED, and stop when every message was written (QoS 0)
or acknowledged (QoS 1). One JSON object is printed, like the Rust benchmark programs.

Needs PyGObject with GStreamer (Debian: python3-gi gir1.2-gst-plugins-base-1.0),
paho-mqtt 2, and numpy + opencv-python-headless for --publish-frame.
"""

import argparse
import base64
import ctypes
import json
import resource
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstVideo  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402

_gst = ctypes.CDLL("libgstreamer-1.0.so.0")
_gst.gst_buffer_iterate_meta_filtered.restype = ctypes.c_void_p
_gst.gst_buffer_iterate_meta_filtered.argtypes = [
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_size_t,
]
_gst.gst_structure_get_name.restype = ctypes.c_char_p
_gst.gst_structure_get_name.argtypes = [ctypes.c_void_p]
_gst.gst_structure_get_string.restype = ctypes.c_char_p
_gst.gst_structure_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_gst.gst_structure_get_double.restype = ctypes.c_int
_gst.gst_structure_get_double.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_double),
]
_gst.gst_structure_get_int.restype = ctypes.c_int
_gst.gst_structure_get_int.argtypes = [
    ctypes.c_void_p,
    ctypes.c_char_p,
    ctypes.POINTER(ctypes.c_int),
]
_gst.gst_buffer_map.restype = ctypes.c_int
_gst.gst_buffer_unmap.restype = None

ROI_API = hash(GstVideo.video_region_of_interest_meta_api_get_type())


class RoiMeta(ctypes.Structure):
    """GstVideoRegionOfInterestMeta (gst-plugins-base 1.22)."""

    _fields_ = [
        ("flags", ctypes.c_uint),
        ("info", ctypes.c_void_p),
        ("roi_type", ctypes.c_uint32),
        ("id", ctypes.c_int),
        ("parent_id", ctypes.c_int),
        ("x", ctypes.c_uint),
        ("y", ctypes.c_uint),
        ("w", ctypes.c_uint),
        ("h", ctypes.c_uint),
        ("params", ctypes.c_void_p),
    ]


class GList(ctypes.Structure):
    pass


GList._fields_ = [
    ("data", ctypes.c_void_p),
    ("next", ctypes.POINTER(GList)),
    ("prev", ctypes.POINTER(GList)),
]


class MapInfo(ctypes.Structure):
    _fields_ = [
        ("memory", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("data", ctypes.POINTER(ctypes.c_ubyte)),
        ("size", ctypes.c_size_t),
        ("maxsize", ctypes.c_size_t),
        ("user_data", ctypes.c_void_p * 4),
        ("_gst_reserved", ctypes.c_void_p * 4),
    ]


_gst.gst_buffer_map.argtypes = [ctypes.c_void_p, ctypes.POINTER(MapInfo), ctypes.c_int]
_gst.gst_buffer_unmap.argtypes = [ctypes.c_void_p, ctypes.POINTER(MapInfo)]
GST_MAP_READ = 1


def get_double(structure, field):
    value = ctypes.c_double()
    if _gst.gst_structure_get_double(structure, field, ctypes.byref(value)):
        return value.value
    return None


def get_int(structure, field):
    value = ctypes.c_int()
    if _gst.gst_structure_get_int(structure, field, ctypes.byref(value)):
        return value.value
    return None


def read_objects(buffer):
    """The buffer's objects as gvametaconvert JSON dicts."""
    objects = []
    state = ctypes.c_void_p()
    buffer_ptr = hash(buffer)  # PyGObject: the GstBuffer pointer, as gstgva uses it
    while True:
        meta_ptr = _gst.gst_buffer_iterate_meta_filtered(buffer_ptr, ctypes.byref(state), ROI_API)
        if not meta_ptr:
            break
        roi = RoiMeta.from_address(meta_ptr)
        label = GLib.quark_to_string(roi.roi_type)
        obj = {"x": roi.x, "y": roi.y, "w": roi.w, "h": roi.h, "region_id": roi.id, "roi_type": label}
        if roi.parent_id >= 0:
            obj["parent_id"] = roi.parent_id
        node = ctypes.cast(roi.params, ctypes.POINTER(GList))
        while node:
            param = node.contents.data
            name = _gst.gst_structure_get_name(param).decode()
            if name == "detection":
                detection = {
                    "bounding_box": {
                        "x_max": get_double(param, b"x_max"),
                        "x_min": get_double(param, b"x_min"),
                        "y_max": get_double(param, b"y_max"),
                        "y_min": get_double(param, b"y_min"),
                    },
                    "label": label,
                }
                confidence = get_double(param, b"confidence")
                if confidence is not None:
                    detection["confidence"] = confidence
                label_id = get_int(param, b"label_id")
                if label_id is not None:
                    detection["label_id"] = label_id
                obj["detection"] = detection
            elif name == "object_id":
                obj["id"] = get_int(param, b"id")
            else:
                class_label = _gst.gst_structure_get_string(param, b"label")
                if class_label is not None:
                    result = {"label": class_label.decode(errors="replace")}
                    confidence = get_double(param, b"confidence")
                    if confidence is not None:
                        result["confidence"] = confidence
                    label_id = get_int(param, b"label_id")
                    if label_id is not None:
                        result["label_id"] = label_id
                    model = _gst.gst_structure_get_string(param, b"model_name")
                    if model is not None:
                        result["model"] = {"name": model.decode(errors="replace")}
                    obj[name] = result
            node = node.contents.next
        objects.append(obj)
    return objects


class FrameEncoder:
    """Raw frame to base64 JPEG with OpenCV, the way DLSPS encodes frames."""

    def __init__(self, caps):
        import cv2
        import numpy as np

        self.cv2 = cv2
        self.np = np
        s = caps.get_structure(0)
        self.width = s.get_value("width")
        self.height = s.get_value("height")
        self.format = s.get_value("format")
        if self.format not in ("I420", "BGRx", "BGR"):
            raise SystemExit(f"reference publisher: format {self.format} not handled")

    def encode(self, buffer):
        cv2, np = self.cv2, self.np
        info = MapInfo()
        buffer_ptr = hash(buffer)
        if not _gst.gst_buffer_map(buffer_ptr, ctypes.byref(info), GST_MAP_READ):
            raise RuntimeError("cannot map the buffer")
        try:
            data = np.ctypeslib.as_array(info.data, shape=(info.size,))
            w, h = self.width, self.height
            if self.format == "I420":
                image = cv2.cvtColor(data[: w * h * 3 // 2].reshape(h * 3 // 2, w), cv2.COLOR_YUV2BGR_I420)
            elif self.format == "BGRx":
                image = cv2.cvtColor(data[: w * h * 4].reshape(h, w, 4), cv2.COLOR_BGRA2BGR)
            else:
                image = data[: w * h * 3].reshape(h, w, 3)
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
        finally:
            _gst.gst_buffer_unmap(buffer_ptr, ctypes.byref(info))
        if not ok:
            raise RuntimeError("cv2.imencode failed")
        return base64.b64encode(jpeg.tobytes()).decode("ascii")


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", required=True)
    p.add_argument("--qos", type=int, default=0, choices=(0, 1))
    p.add_argument("--publish-frame", action="store_true")
    p.add_argument("pipeline", nargs="+")
    args = p.parse_args()

    Gst.init(None)
    pipeline = Gst.parse_launch(" ".join(args.pipeline))
    sink = pipeline.get_by_name("sink")
    if sink is None:
        sys.exit("reference publisher: the pipeline needs an appsink named sink")
    sink.set_property("emit-signals", True)
    sink.set_property("sync", False)

    lock = threading.Lock()
    done = threading.Condition(lock)
    counters = {"sent": 0, "completed": 0, "connected": False}

    def on_connect(_client, _userdata, _flags, reason_code, _properties):
        with lock:
            counters["connected"] = not reason_code.is_failure
            done.notify_all()

    def on_publish(_client, _userdata, _mid, _reason_code, _properties):
        with lock:
            counters["completed"] += 1
            done.notify_all()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"python-reference-{id(args)}")
    client.on_connect = on_connect
    client.on_publish = on_publish
    client.max_queued_messages_set(0)  # unbounded, like DLSPS
    client.connect(args.host, args.port, keepalive=60)
    client.loop_start()
    with lock:
        if not done.wait_for(lambda: counters["connected"], timeout=10):
            sys.exit("reference publisher: cannot connect to the broker")

    state = {"frame_id": 0, "encoder": None}

    def on_new_sample(appsink):
        sample = appsink.emit("pull-sample")
        buffer = sample.get_buffer()
        caps = sample.get_caps()
        s = caps.get_structure(0)
        metadata = {
            "frame_id": state["frame_id"],
            "objects": read_objects(buffer),
            "resolution": {"height": s.get_value("height"), "width": s.get_value("width")},
            "timestamp": buffer.pts,
        }
        state["frame_id"] += 1
        if args.publish_frame:
            if state["encoder"] is None:
                state["encoder"] = FrameEncoder(caps)
            payload = json.dumps([metadata, state["encoder"].encode(buffer)])
        else:
            payload = json.dumps(metadata)
        client.publish(args.topic, payload, qos=args.qos)
        with lock:
            counters["sent"] += 1
        return Gst.FlowReturn.OK

    sink.connect("new-sample", on_new_sample)

    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PAUSED)
    pipeline.get_state(30 * Gst.SECOND)
    if args.publish_frame:
        import cv2  # noqa: F401  (imported before the clocks start, like the Rust side's setup)

    user0, sys0 = cpu_seconds()
    start = time.monotonic()
    pipeline.set_state(Gst.State.PLAYING)
    while True:
        msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            sys.exit(f"reference publisher: {err.message} ({debug})")
        break
    with lock:
        done.wait_for(lambda: counters["completed"] >= counters["sent"], timeout=60)
        sent, completed = counters["sent"], counters["completed"]
    user1, sys1 = cpu_seconds()
    wall = time.monotonic() - start

    pipeline.set_state(Gst.State.NULL)
    client.disconnect()
    client.loop_stop()
    print(
        json.dumps(
            {
                "cpu_user": user1 - user0,
                "cpu_sys": sys1 - sys0,
                "wall": wall,
                "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                "messages": sent,
                "completed": completed,
            }
        )
    )


if __name__ == "__main__":
    main()
