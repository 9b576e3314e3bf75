#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Subscribe to analytics results published by `mqttpublish` and check them.

Each MQTT message is expected to be a JSON array of two items, the format of
DL Streamer Pipeline Server's MQTT publisher with frame publishing on:

    [metadata, base64_jpeg]

where `metadata` is gvametaconvert JSON (at least `objects` and
`resolution: {"width": W, "height": H}`) and `base64_jpeg` is the frame as a
base64-encoded JPEG. The JPEG's size is read from its SOF header, so no image
library is needed.

Usage (needs only `pip install "paho-mqtt>=2"`):

    python3 subscriber.py --count 300 --width 640 --height 480

It prints a summary (messages, objects, labels, image sizes) and exits with
status 0 when exactly --count valid messages arrived, 1 otherwise, 2 when it
could not connect. Without --count it runs until Ctrl-C or --timeout and only
checks that every message is well formed.
"""

import argparse
import base64
import binascii
import collections
import json
import sys
import time

try:
    import paho.mqtt.client as mqtt
except ImportError:
    sys.exit('paho-mqtt is missing: pip install "paho-mqtt>=2"')

if not hasattr(mqtt, "CallbackAPIVersion"):
    sys.exit('paho-mqtt 2.x is required: pip install "paho-mqtt>=2"')

MAX_ERRORS_SHOWN = 10


def jpeg_size(data):
    """Returns (width, height) from a JPEG's SOF segment; raises ValueError."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        # SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC).
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            return width, height
        if marker in (0xD9, 0xDA):  # EOI or start of scan before any SOF
            break
        pos += 2 + length
    raise ValueError("no SOF segment in JPEG")


class Checker:
    """Validates messages and keeps the numbers for the summary."""

    def __init__(self, width, height):
        self.width = width
        self.height = height
        self.messages = 0
        self.valid = 0
        self.objects = 0
        self.labels = collections.Counter()
        self.image_sizes = collections.Counter()
        self.jpeg_bytes = 0
        self.errors = []

    def check(self, payload):
        self.messages += 1
        try:
            self._check(payload)
            self.valid += 1
        except KeyError as e:
            self.errors.append(f"message {self.messages}: missing field {e.args[0]!r}")
        except (ValueError, TypeError, AttributeError) as e:
            self.errors.append(f"message {self.messages}: {e}")

    def _check(self, payload):
        try:
            message = json.loads(payload)
        except ValueError as e:
            raise ValueError(f"payload is not JSON: {e}") from None
        if not isinstance(message, list) or len(message) != 2:
            raise ValueError("payload is not a JSON array [metadata, base64_jpeg]")
        metadata, image_b64 = message
        if not isinstance(metadata, dict):
            raise ValueError("metadata is not a JSON object")

        objects = metadata["objects"]
        if not isinstance(objects, list):
            raise ValueError("metadata.objects is not an array")
        resolution = metadata["resolution"]
        meta_size = (resolution["width"], resolution["height"])

        if not isinstance(image_b64, str):
            raise ValueError("frame is not a base64 string")
        try:
            jpeg = base64.b64decode(image_b64, validate=True)
        except binascii.Error as e:
            raise ValueError(f"frame is not valid base64: {e}") from None
        image_size = jpeg_size(jpeg)

        if meta_size != image_size:
            raise ValueError(f"resolution {meta_size} differs from JPEG size {image_size}")
        if self.width and self.height and image_size != (self.width, self.height):
            raise ValueError(f"JPEG is {image_size}, expected {(self.width, self.height)}")

        self.objects += len(objects)
        for obj in objects:
            label = (obj.get("detection") or {}).get("label")
            self.labels[label if label is not None else "<no label>"] += 1
        self.image_sizes[image_size] += 1
        self.jpeg_bytes += len(jpeg)

    def summary(self, expected):
        lines = [f"messages:    {self.messages} received, {self.valid} valid"
                 + (f", {expected} expected" if expected is not None else "")]
        lines.append(f"objects:     {self.objects}")
        labels = ", ".join(f"{label} ({n})" for label, n in sorted(self.labels.items()))
        lines.append(f"labels:      {labels or '-'}")
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sorted(self.image_sizes.items()))
        lines.append(f"image size:  {sizes or '-'}")
        if self.valid:
            lines.append(f"jpeg bytes:  {self.jpeg_bytes // self.valid} on average")
        for error in self.errors[:MAX_ERRORS_SHOWN]:
            lines.append(f"error: {error}")
        if len(self.errors) > MAX_ERRORS_SHOWN:
            lines.append(f"... and {len(self.errors) - MAX_ERRORS_SHOWN} more errors")
        return "\n".join(lines)

    def ok(self, expected):
        if self.errors or self.messages == 0:
            return False
        return expected is None or self.messages == expected


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", default="dlstreamer_pipeline_results")
    p.add_argument("--count", type=int, help="number of messages expected")
    p.add_argument("--width", type=int, default=0, help="expected frame width (0: any)")
    p.add_argument("--height", type=int, default=0, help="expected frame height (0: any)")
    p.add_argument("--timeout", type=float, default=120.0,
                   help="give up after this many seconds (default 120)")
    p.add_argument("--linger", type=float, default=1.0,
                   help="after --count messages, wait this long for unexpected extra ones")
    p.add_argument("--ready-file",
                   help="create this file once subscribed (lets a script start publishing)")
    return p.parse_args()


def main():
    args = parse_args()
    checker = Checker(args.width, args.height)
    state = {"subscribed": False, "failed": None}

    def on_connect(client, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            state["failed"] = f"connection refused: {reason_code}"
            return
        client.subscribe(args.topic, qos=1)

    def on_subscribe(_client, _userdata, _mid, reason_codes, _properties):
        if any(rc.is_failure for rc in reason_codes):
            state["failed"] = f"subscription to {args.topic} refused: {reason_codes}"
            return
        state["subscribed"] = True
        print(f"subscribed to {args.topic} on {args.host}:{args.port}", flush=True)
        if args.ready_file:
            with open(args.ready_file, "w", encoding="utf-8") as f:
                f.write("ready\n")

    def on_message(_client, _userdata, msg):
        checker.check(msg.payload)
        if checker.messages % 100 == 0:
            print(f"... {checker.messages} messages", flush=True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    try:
        client.connect(args.host, args.port)
    except OSError as e:
        print(f"cannot connect to {args.host}:{args.port}: {e}", file=sys.stderr)
        return 2

    deadline = time.monotonic() + args.timeout
    done_at = None  # when --count messages had arrived
    try:
        while time.monotonic() < deadline and state["failed"] is None:
            client.loop(timeout=0.1)
            if args.count is not None and checker.messages >= args.count:
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at >= args.linger:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()

    if state["failed"]:
        print(state["failed"], file=sys.stderr)
        return 2
    if time.monotonic() >= deadline and not (args.count is not None and done_at):
        print(f"stopped after the {args.timeout:g} s timeout")
    print(checker.summary(args.count))
    ok = checker.ok(args.count)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
