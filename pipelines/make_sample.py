#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Writes pipelines/sample.jsonl: a recorded detection run in gvametaconvert JSON lines.

The recording stands in for gvadetect + gvatrack + gvaclassify output on machines without
an inference engine: 300 frames of 640x480 at 30 fps, five tracked objects per frame that
drift across the frame, four labels (one of them with a space), confidences spread over
0.05..0.99, and a `color` classification on every car.

    python3 pipelines/make_sample.py [output] [--frames N] [--width W] [--height H]

The output is deterministic (fixed seed), so the sample in the repository can be checked
against this script.
"""

import argparse
import json
import random

LABELS = [("box", 0), ("shipping label", 1), ("person", 2), ("car", 3)]
COLORS = [("red", 0), ("white", 1), ("black", 2), ("blue", 3)]


def make_track(rng, track_id, width, height):
    label, label_id = LABELS[track_id % len(LABELS)]
    w = rng.randint(width // 10, width // 4)
    h = rng.randint(height // 10, height // 4)
    return {
        "id": track_id,
        "label": label,
        "label_id": label_id,
        "x": rng.uniform(0, width - w),
        "y": rng.uniform(0, height - h),
        "w": w,
        "h": h,
        "dx": rng.uniform(-3, 3),
        "dy": rng.uniform(-2, 2),
        "base_confidence": rng.uniform(0.05, 0.99),
        "color": COLORS[track_id % len(COLORS)],
    }


def frame_line(rng, tracks, index, width, height):
    objects = []
    for region_id, t in enumerate(tracks):
        t["x"] = min(max(t["x"] + t["dx"], 0), width - t["w"])
        t["y"] = min(max(t["y"] + t["dy"], 0), height - t["h"])
        x, y = round(t["x"]), round(t["y"])
        confidence = round(min(max(t["base_confidence"] + rng.uniform(-0.04, 0.04), 0.01), 0.99), 4)
        obj = {
            "detection": {
                "bounding_box": {
                    "x_max": (x + t["w"]) / width,
                    "x_min": x / width,
                    "y_max": (y + t["h"]) / height,
                    "y_min": y / height,
                },
                "confidence": confidence,
                "label": t["label"],
                "label_id": t["label_id"],
            },
            "h": t["h"],
            "id": t["id"],
            "region_id": region_id,
            "roi_type": t["label"],
            "w": t["w"],
            "x": x,
            "y": y,
        }
        if t["label"] == "car":
            color, color_id = t["color"]
            obj["color"] = {
                "confidence": round(rng.uniform(0.3, 0.95), 4),
                "label": color,
                "label_id": color_id,
                "model": {"name": "vehicle-attributes-recognition"},
            }
        objects.append(obj)
    return {
        "objects": objects,
        "resolution": {"height": height, "width": width},
        "timestamp": index * 1_000_000_000 // 30,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="pipelines/sample.jsonl")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--objects", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(7)
    tracks = [make_track(rng, i, args.width, args.height) for i in range(args.objects)]
    with open(args.output, "w", encoding="utf-8") as out:
        for index in range(args.frames):
            line = frame_line(rng, tracks, index, args.width, args.height)
            out.write(json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
