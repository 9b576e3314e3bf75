#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""An independent producer of GStreamer analytics metadata, for tests/analytics.rs.

Pushes FRAMES raw 320x240 frames through `appsrc ! [metafilter ...] ! mqttpublish`, each
carrying, in a GstAnalyticsRelationMeta written through GI (GstAnalytics):

- car:    ODMtd (10, 20, 100, 50), confidence 0.9; a ClsMtd "red" 0.8 it CONTAINs;
          a TrackingMtd with id 7 related to it
- person: ODMtd (200, 40, 30, 80), confidence 0.3; a TrackingMtd with id 8

With --legacy-roi each object also gets a GstVideoRegionOfInterestMeta whose id is the
ODMtd's id, laid out as DL Streamer's gvadetect/gvaclassify/gvatrack write it: a
`detection` param (normalized box, confidence, label_id), an `object_id` param and, for
the car, a `color` classification param (label "red", model_name "color_net").

With --frame-results each frame also carries, after the objects, results of the GStreamer
1.26 analytics API written to the relation conventions:

- a ClsMtd of no object (no relation at all): a scene classification, "indoor" 0.7 and
  "office" 0.6;
- truck: an oriented ODMtd (100, 150, 80, 40) rotated by 0.5 radians, confidence 0.8,
  without an ROI meta;
- a semantic SegmentationMtd of no object: an 8x6 GRAY8 mask over the whole frame, with
  region ids 0 and 3.

    producer.py HOST PORT TOPIC FRAMES [--legacy-roi] [--frame-results] [--filter 'PROPS']
                [--sink 'PROPS']

--filter puts a metafilter with PROPS before the sink; --sink adds PROPS to mqttpublish.

mqttpublish and metafilter come from GST_PLUGIN_PATH. Exits 0 after end of stream.
"""
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstAnalytics", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstAnalytics, GstVideo  # noqa: E402

WIDTH, HEIGHT = 320, 240
OBJECTS = [
    # label, box, confidence, label_id, tracking id, classification (label, confidence)
    ("car", (10, 20, 100, 50), 0.9, 2, 7, ("red", 0.8)),
    ("person", (200, 40, 30, 80), 0.3, 0, 8, None),
]


def add_objects(buf, legacy_roi):
    rmeta = GstAnalytics.buffer_add_analytics_relation_meta(buf)
    for label, (x, y, w, h), conf, label_id, track_id, cls in OBJECTS:
        ok, od = rmeta.add_od_mtd(GLib.quark_from_string(label), x, y, w, h, conf)
        assert ok, "add_od_mtd"
        if cls is not None:
            ok, c = rmeta.add_one_cls_mtd(cls[1], GLib.quark_from_string(cls[0]))
            assert ok, "add_one_cls_mtd"
            assert rmeta.set_relation(GstAnalytics.RelTypes.CONTAIN, od.id, c.id)
            assert rmeta.set_relation(GstAnalytics.RelTypes.IS_PART_OF, c.id, od.id)
        ok, t = rmeta.add_tracking_mtd(track_id, 0)
        assert ok, "add_tracking_mtd"
        assert rmeta.set_relation(GstAnalytics.RelTypes.RELATE_TO, od.id, t.id)

        if legacy_roi:
            roi = GstVideo.buffer_add_video_region_of_interest_meta(buf, label, x, y, w, h)
            roi.id = od.id
            det = Gst.Structure.new_empty("detection")
            det.set_value("x_min", float(x) / WIDTH)
            det.set_value("x_max", float(x + w) / WIDTH)
            det.set_value("y_min", float(y) / HEIGHT)
            det.set_value("y_max", float(y + h) / HEIGHT)
            det.set_value("confidence", float(conf))
            det.set_value("label_id", label_id)
            roi.add_param(det)
            oid = Gst.Structure.new_empty("object_id")
            oid.set_value("id", track_id)
            roi.add_param(oid)
            if cls is not None:
                s = Gst.Structure.new_empty("color")
                s.set_value("label", cls[0])
                s.set_value("confidence", float(cls[1]))
                s.set_value("model_name", "color_net")
                s.set_value("type", "classification_result")
                roi.add_param(s)


def add_frame_results(buf):
    rmeta = GstAnalytics.buffer_get_analytics_relation_meta(buf)
    quarks = [GLib.quark_from_string(label) for label in ("indoor", "office")]
    ok, _ = rmeta.add_cls_mtd([0.7, 0.6], quarks)
    assert ok, "add_cls_mtd"
    ok, _ = rmeta.add_oriented_od_mtd(
        GLib.quark_from_string("truck"), 100, 150, 80, 40, 0.5, 0.8
    )
    assert ok, "add_oriented_od_mtd"
    mask = Gst.Buffer.new_allocate(None, 8 * 6, None)
    GstVideo.buffer_add_video_meta(
        mask, GstVideo.VideoFrameFlags.NONE, GstVideo.VideoFormat.GRAY8, 8, 6
    )
    ok, _ = rmeta.add_segmentation_mtd(
        mask, GstAnalytics.SegmentationType.SEMANTIC, [0, 3], 0, 0, WIDTH, HEIGHT
    )
    assert ok, "add_segmentation_mtd"


def main(argv):
    args = argv[1:]
    legacy_roi = "--legacy-roi" in args
    frame_results = "--frame-results" in args
    filter_props = None
    if "--filter" in args:
        filter_props = args[args.index("--filter") + 1]
    sink_props = ""
    if "--sink" in args:
        sink_props = " " + args[args.index("--sink") + 1]
    host, port, topic, frames = args[0], int(args[1]), args[2], int(args[3])

    Gst.init(None)
    desc = (
        f"appsrc name=src format=time caps=video/x-raw,format=RGB,width={WIDTH},"
        f"height={HEIGHT},framerate=10/1 "
    )
    if filter_props is not None:
        desc += f"! metafilter {filter_props} "
    desc += f"! mqttpublish host={host} port={port} topic={topic} qos=1 leaky=no{sink_props}"
    pipeline = Gst.parse_launch(desc)
    src = pipeline.get_by_name("src")
    pipeline.set_state(Gst.State.PLAYING)

    size = WIDTH * HEIGHT * 3
    for i in range(frames):
        buf = Gst.Buffer.new_allocate(None, size, None)
        buf.pts = i * Gst.SECOND // 10
        buf.duration = Gst.SECOND // 10
        add_objects(buf, legacy_roi)
        if frame_results:
            add_frame_results(buf)
        if src.emit("push-buffer", buf) != Gst.FlowReturn.OK:
            print("push-buffer failed", file=sys.stderr)
            return 1
    src.emit("end-of-stream")

    msg = pipeline.get_bus().timed_pop_filtered(
        30 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR
    )
    pipeline.set_state(Gst.State.NULL)
    if msg is None:
        print("no end of stream within 30 s", file=sys.stderr)
        return 1
    if msg.type == Gst.MessageType.ERROR:
        err, debug = msg.parse_error()
        print(f"error: {err.message} ({debug})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
