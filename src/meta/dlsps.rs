// SPDX-License-Identifier: MPL-2.0

//! The metadata DL Streamer Pipeline Server (DLSPS) publishes with each frame: its own keys
//! around the gvametaconvert JSON, as its publisher builds them, so that applications
//! written against DLSPS read messages from this plugin unchanged.
//!
//! ```text
//! {"height":480,"width":640,"channels":3,"caps":"video/x-raw, ...","img_format":"RGB",
//!  "img_handle":"Q0W2E9R4T1",
//!  "objects":[..],"resolution":{..},"timestamp":..,          <- gvametaconvert keys
//!                         (with the full-frame object and `tensors`, as DLSPS merges them)
//!  "gva_meta":[{"x":..,"y":..,"height":..,"width":..,"object_id":7,   <- regions only
//!               "tensor":[{"name":"detection","confidence":..,"label_id":..,"label":"box"}]}],
//!  "encoding_type":"jpeg","encoding_level":85,               <- only with an image
//!  "pipeline":{"name":..,"version":..,"instance_id":..,"status":{..}},
//!  "frame_id":0,"tags":{..},"time":1764000000000000000}
//! ```

use super::json::{key, write_float, write_frame_fields, write_int, write_str};
use super::{FrameContext, FrameResults, Object};

/// The pipeline DLSPS reports in every message: `pipeline.name`, `pipeline.version`,
/// `pipeline.instance_id` and `pipeline.status`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineInfo {
    pub name: String,
    pub version: String,
    /// 32 hexadecimal digits, new for every run.
    pub instance_id: String,
    /// Wall-clock start of the run, seconds since the UNIX epoch.
    pub start_time: f64,
}

/// Facts about the frame that DLSPS adds to the gvametaconvert keys.
#[derive(Debug, Clone, Copy)]
pub struct DlspsFrame<'a> {
    /// The negotiated caps as text.
    pub caps: &'a str,
    /// The caps' `format`, `None` for caps without one (JPEG, GPU memory without a format).
    pub format: Option<&'a str>,
    /// Random, 10 characters `A-Z0-9`, one per frame.
    pub img_handle: &'a str,
    /// `(type, level)` of the image published with this frame, `None` without an image.
    pub encoding: Option<(&'a str, Option<u8>)>,
    pub pipeline: &'a PipelineInfo,
    /// Frames per second since the start of the run.
    pub avg_fps: f64,
    /// Wall-clock time of publishing, nanoseconds since the UNIX epoch.
    pub time: u64,
}

impl DlspsFrame<'_> {
    /// Channels as DLSPS counts them: 4 for RGBA and BGRA, 1 for GRAY8, otherwise 3.
    fn channels(&self) -> u32 {
        match self.format {
            Some("RGBA" | "BGRA") => 4,
            Some("GRAY8") => 1,
            _ => 3,
        }
    }
}

/// Appends the DLSPS metadata object of one frame to `out`. `ctx` is the gvametaconvert
/// context; its `frame_id` and `tags` are written where DLSPS puts them. `attached`: the
/// JSON object gvametaconvert attached, whose keys DLSPS merges in place of the ones
/// written from `objects`, `frame_results` and `ctx` (without `frame_id`, and without `tags` when
/// `ctx` has them). `gva_meta` lists the objects only: DLSPS builds it from the frame's
/// regions, which the frame-level results are not.
pub fn write_dlsps_metadata(
    out: &mut Vec<u8>,
    objects: &[Object],
    frame_results: &FrameResults,
    ctx: &FrameContext,
    frame: &DlspsFrame,
    attached: Option<&str>,
) {
    let first = &mut true;
    out.push(b'{');
    key(out, first, "height");
    write_int(out, ctx.height);
    key(out, first, "width");
    write_int(out, ctx.width);
    key(out, first, "channels");
    write_int(out, frame.channels());
    key(out, first, "caps");
    write_str(out, frame.caps);
    key(out, first, "img_format");
    write_str(out, frame.format.unwrap_or("none"));
    key(out, first, "img_handle");
    write_str(out, frame.img_handle);
    match attached.map(|json| json.trim()) {
        Some(json) => {
            let fields = json
                .strip_prefix('{')
                .and_then(|json| json.strip_suffix('}'))
                .unwrap_or_default()
                .trim();
            if !fields.is_empty() {
                out.push(b',');
                out.extend_from_slice(fields.as_bytes());
            }
        }
        None => {
            let inner = FrameContext {
                frame_id: None,
                tags: None,
                ..*ctx
            };
            write_frame_fields(out, first, objects, frame_results, &inner);
        }
    }
    key(out, first, "gva_meta");
    write_gva_meta(out, objects);
    if let Some((kind, level)) = frame.encoding {
        key(out, first, "encoding_type");
        write_str(out, kind);
        key(out, first, "encoding_level");
        match level {
            Some(level) => write_int(out, level),
            None => out.extend_from_slice(b"null"),
        }
    }
    key(out, first, "pipeline");
    write_pipeline(out, frame);
    if let Some(frame_id) = ctx.frame_id {
        key(out, first, "frame_id");
        write_int(out, frame_id);
    }
    if let Some(tags) = ctx.tags {
        key(out, first, "tags");
        out.extend_from_slice(tags.as_bytes());
    }
    key(out, first, "time");
    write_int(out, frame.time);
    out.push(b'}');
}

/// `gva_meta`: one entry per object with its pixel box, tracking id and tensors (the
/// detection first, then each classification), as DLSPS reads them through gstgva.
fn write_gva_meta(out: &mut Vec<u8>, objects: &[Object]) {
    out.push(b'[');
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let first = &mut true;
        out.push(b'{');
        key(out, first, "x");
        write_int(out, object.rect.x);
        key(out, first, "y");
        write_int(out, object.rect.y);
        key(out, first, "height");
        write_int(out, object.rect.h);
        key(out, first, "width");
        write_int(out, object.rect.w);
        key(out, first, "object_id");
        match object.tracking_id {
            Some(id) => write_int(out, id),
            None => out.extend_from_slice(b"null"),
        }
        key(out, first, "tensor");
        out.push(b'[');
        let detection = object.detection.as_ref().map(|d| Tensor {
            name: "detection",
            confidence: d.confidence,
            label_id: d.label_id,
            label: &object.label,
        });
        let classifications = object.classifications.iter().map(|c| Tensor {
            name: &c.name,
            confidence: c.confidence,
            label_id: c.label_id,
            label: &c.label,
        });
        for (j, tensor) in detection.into_iter().chain(classifications).enumerate() {
            if j > 0 {
                out.push(b',');
            }
            tensor.write(out);
        }
        out.extend_from_slice(b"]}");
    }
    out.push(b']');
}

/// One entry of `gva_meta[].tensor`.
struct Tensor<'a> {
    name: &'a str,
    confidence: Option<f64>,
    label_id: Option<i32>,
    label: &'a str,
}

impl Tensor<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        let first = &mut true;
        out.push(b'{');
        key(out, first, "name");
        write_str(out, self.name);
        key(out, first, "confidence");
        match self.confidence {
            Some(confidence) => write_float(out, confidence),
            None => out.extend_from_slice(b"null"),
        }
        key(out, first, "label_id");
        match self.label_id {
            Some(label_id) => write_int(out, label_id),
            None => out.extend_from_slice(b"null"),
        }
        key(out, first, "label");
        write_str(out, self.label);
        out.push(b'}');
    }
}

/// `pipeline`: DLSPS's pipeline name, version, instance id and status (its REST API's
/// status object; this element runs while it publishes, so the state is `RUNNING`).
fn write_pipeline(out: &mut Vec<u8>, frame: &DlspsFrame) {
    let pipeline = frame.pipeline;
    let elapsed = (frame.time as f64 / 1e9 - pipeline.start_time).max(0.0);
    let first = &mut true;
    out.push(b'{');
    key(out, first, "name");
    write_str(out, &pipeline.name);
    key(out, first, "version");
    write_str(out, &pipeline.version);
    key(out, first, "instance_id");
    write_str(out, &pipeline.instance_id);
    key(out, first, "status");
    let status = &mut true;
    out.push(b'{');
    key(out, status, "avg_fps");
    write_float(out, frame.avg_fps);
    key(out, status, "avg_pipeline_latency");
    out.extend_from_slice(b"null");
    key(out, status, "elapsed_time");
    write_float(out, elapsed);
    key(out, status, "id");
    write_str(out, &pipeline.instance_id);
    key(out, status, "message");
    write_str(out, "");
    key(out, status, "start_time");
    write_float(out, pipeline.start_time);
    key(out, status, "state");
    write_str(out, "RUNNING");
    out.extend_from_slice(b"}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Classification, Detection, Rect};
    use serde_json::{json, Value};

    fn pipeline() -> PipelineInfo {
        PipelineInfo {
            name: "user_defined_pipelines".into(),
            version: "pallet_defect_detection".into(),
            instance_id: "0123456789abcdef0123456789abcdef".into(),
            start_time: 1_700_000_000.0,
        }
    }

    fn write(objects: &[Object], frame: &DlspsFrame) -> Value {
        let ctx = FrameContext {
            width: 640,
            height: 480,
            timestamp: Some(33),
            frame_id: Some(4),
            source: Some("cam"),
            tags: Some(r#"{"site":"dock"}"#),
            ..Default::default()
        };
        let mut out = Vec::new();
        write_dlsps_metadata(
            &mut out,
            objects,
            &FrameResults::default(),
            &ctx,
            frame,
            None,
        );
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn carries_the_dlsps_keys_around_the_gvametaconvert_ones() {
        let pipeline = pipeline();
        let object = Object {
            label: "box".into(),
            rect: Rect {
                x: 10,
                y: 20,
                w: 30,
                h: 40,
            },
            region_id: 3,
            tracking_id: Some(7),
            detection: Some(Detection {
                confidence: Some(0.5),
                label_id: Some(2),
                bounding_box: None,
                rotation: None,
            }),
            classifications: vec![Classification {
                name: "color".into(),
                label: "red".into(),
                confidence: Some(0.25),
                label_id: None,
                model_name: None,
            }],
            ..Default::default()
        };
        let m = write(
            &[object],
            &DlspsFrame {
                caps: "video/x-raw, format=(string)BGRA",
                format: Some("BGRA"),
                img_handle: "ABCDE12345",
                encoding: Some(("jpeg", Some(85))),
                pipeline: &pipeline,
                avg_fps: 30.0,
                time: 1_700_000_002_000_000_000,
            },
        );
        assert_eq!(m["height"], 480);
        assert_eq!(m["width"], 640);
        assert_eq!(m["channels"], 4);
        assert_eq!(m["caps"], "video/x-raw, format=(string)BGRA");
        assert_eq!(m["img_format"], "BGRA");
        assert_eq!(m["img_handle"], "ABCDE12345");
        assert_eq!(m["objects"][0]["roi_type"], "box");
        assert_eq!(m["objects"][0]["id"], 7);
        assert_eq!(m["resolution"], json!({"height": 480, "width": 640}));
        assert_eq!(m["timestamp"], 33);
        assert_eq!(m["source"], "cam");
        assert_eq!(
            m["gva_meta"],
            json!([{
                "x": 10, "y": 20, "height": 40, "width": 30, "object_id": 7,
                "tensor": [
                    {"name": "detection", "confidence": 0.5, "label_id": 2, "label": "box"},
                    {"name": "color", "confidence": 0.25, "label_id": null, "label": "red"}
                ]
            }])
        );
        assert_eq!(m["encoding_type"], "jpeg");
        assert_eq!(m["encoding_level"], 85);
        assert_eq!(m["pipeline"]["name"], "user_defined_pipelines");
        assert_eq!(m["pipeline"]["version"], "pallet_defect_detection");
        let status = &m["pipeline"]["status"];
        assert_eq!(status["id"], m["pipeline"]["instance_id"]);
        assert_eq!(status["state"], "RUNNING");
        assert_eq!(status["avg_fps"], 30.0);
        assert_eq!(status["elapsed_time"], 2.0);
        assert_eq!(m["frame_id"], 4);
        assert_eq!(m["tags"], json!({"site": "dock"}));
        assert_eq!(m["time"], 1_700_000_002_000_000_000u64);
    }

    #[test]
    fn without_an_image_there_are_no_encoding_keys() {
        let pipeline = pipeline();
        let m = write(
            &[],
            &DlspsFrame {
                caps: "video/x-raw(memory:VAMemory), width=(int)640",
                format: None,
                img_handle: "ABCDE12345",
                encoding: None,
                pipeline: &pipeline,
                avg_fps: 0.0,
                time: 0,
            },
        );
        assert_eq!(m["img_format"], "none");
        assert_eq!(m["channels"], 3);
        assert_eq!(m["gva_meta"], json!([]));
        assert!(m.get("encoding_type").is_none(), "{m}");
        assert!(m.get("encoding_level").is_none(), "{m}");
    }

    #[test]
    fn frame_level_results_are_merged_as_gvametaconvert_writes_them_and_not_in_gva_meta() {
        use crate::meta::Tensor;
        let pipeline = pipeline();
        let frame = FrameResults {
            tensors: vec![Tensor {
                name: "scene".into(),
                kind: Some("classification_result".into()),
                label: Some("indoor".into()),
                confidence: Some(0.75),
                ..Tensor::default()
            }],
            classifications: Vec::new(),
        };
        let ctx = FrameContext {
            width: 640,
            height: 480,
            ..Default::default()
        };
        let mut out = Vec::new();
        write_dlsps_metadata(
            &mut out,
            &[],
            &frame,
            &ctx,
            &DlspsFrame {
                caps: "video/x-raw",
                format: Some("RGB"),
                img_handle: "ABCDE12345",
                encoding: None,
                pipeline: &pipeline,
                avg_fps: 1.0,
                time: 0,
            },
            None,
        );
        let m: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            m["objects"],
            json!([{"h": 480, "scene": {"confidence": 0.75, "label": "indoor"}, "w": 640, "x": 0, "y": 0}])
        );
        assert_eq!(m["gva_meta"], json!([]));
    }
}
