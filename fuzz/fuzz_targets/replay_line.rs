// SPDX-License-Identifier: MPL-2.0

//! Fuzzes the replay-file line parser, `meta::parse_frame_line`, and the round trip
//! through the gvametaconvert JSON writer, `meta::write_frame_json`.
//!
//! Checks besides "no panic": errors are non-empty; when a line parses, writing its
//! objects and frame-level results (with the tensor data) back gives valid JSON that parses
//! again to the same frame.
//!
//! "The same" allows for what the writer adds by design (see `expected_after_round_trip`):
//! it always writes a `detection` object with a `bounding_box` (derived from the pixel
//! rectangle when the detector gave none), and leaves out a resolution with a zero side.
//!
//! Floats: the writer gives the shortest decimal that reads back exactly, but serde_json
//! without its `float_roundtrip` feature does not read every decimal to the nearest f64
//! (`1.0354166666666667` reads as `1.0354166666666669`, `2e-24` as
//! `2.0000000000000002e-24`): a float may move by an ulp per write and read. So each
//! expected float is the value serde_json reads back from the writer's own text for it
//! (`json_float`), and the comparison stays exact.

#![no_main]

use gstanalyticsmqtt::internals::{
    parse_frame_line, write_frame_json, BoundingBox, Classification, Detection, FrameContext,
    FrameResults, Object, RecordedFrame, Tensor,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// `x` written and read again the way the JSON writer and the parser do it.
fn json_float(x: f64) -> f64 {
    let text = serde_json::to_string(&x).expect("a finite float serializes");
    serde_json::from_str(&text).expect("a written float parses")
}

fn json_box(b: BoundingBox) -> BoundingBox {
    BoundingBox {
        x_min: json_float(b.x_min),
        y_min: json_float(b.y_min),
        x_max: json_float(b.x_max),
        y_max: json_float(b.y_max),
    }
}

/// What the parser returns for the written form of `frame`'s objects.
fn expected_after_round_trip(frame: &RecordedFrame) -> RecordedFrame {
    let (width, height) = frame.resolution.unwrap_or((0, 0));
    let resolution = frame.resolution.filter(|(w, h)| *w > 0 && *h > 0);
    let objects = frame
        .objects
        .iter()
        .map(|o| {
            let d = o.detection.clone().unwrap_or_default();
            Object {
                detection: Some(Detection {
                    confidence: d.confidence.map(json_float),
                    bounding_box: d
                        .bounding_box
                        .or_else(|| BoundingBox::from_rect(o.rect, width, height))
                        .map(json_box),
                    ..d
                }),
                classifications: o
                    .classifications
                    .iter()
                    .map(|c| Classification {
                        confidence: c.confidence.map(json_float),
                        ..c.clone()
                    })
                    .collect(),
                ..o.clone()
            }
        })
        .collect();
    let frame_results = FrameResults {
        tensors: frame
            .frame
            .tensors
            .iter()
            .map(|t| Tensor {
                confidence: t.confidence.map(json_float),
                ..t.clone()
            })
            .collect(),
        classifications: frame.frame.classifications.clone(),
    };
    RecordedFrame {
        objects,
        frame: frame_results,
        resolution,
        timestamp: frame.timestamp,
    }
}

fuzz_target!(|data: &[u8]| {
    // The replay element reads the file line by line as UTF-8.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let frame = match parse_frame_line(line) {
        Ok(frame) => frame,
        Err(err) => {
            assert!(!err.is_empty(), "empty error for {line:?}");
            return;
        }
    };

    let (width, height) = frame.resolution.unwrap_or((0, 0));
    let ctx = FrameContext {
        width,
        height,
        timestamp: frame.timestamp,
        frame_id: Some(7),
        sink_time: Some(1_700_000_000_000_000_000),
        source: Some("file:///recording.jsonl"),
        tags: Some(r#"{"fuzz":true}"#),
        // Every tensor is written, with its data, so that all of them read back.
        add_tensor_data: true,
    };
    let mut out = Vec::new();
    write_frame_json(&mut out, &frame.objects, &frame.frame, &ctx);

    let written = std::str::from_utf8(&out).expect("the writer writes UTF-8");
    let value: Value = serde_json::from_str(written)
        .unwrap_or_else(|e| panic!("invalid JSON written ({e}): {written}\n  from {line}"));
    assert!(value.is_object(), "not an object: {written}");

    let again = parse_frame_line(written)
        .unwrap_or_else(|e| panic!("written line does not parse ({e}): {written}\n  from {line}"));
    let expected = expected_after_round_trip(&frame);
    assert_eq!(
        again, expected,
        "round trip changed the frame\n  line:    {line}\n  written: {written}"
    );
});
