// SPDX-License-Identifier: MPL-2.0

//! One MQTT payload to one frame of detections.
//!
//! Understands the three shapes `mqttpublish` sends (and DLSPS and its users send):
//!
//! - the gvametaconvert metadata object;
//! - `[metadata, "<base64 JPEG>"]` (`message-format=array` with frames);
//! - `{"metadata": .., "blob": "<base64 JPEG>" or ""}` (`object` and `dlsps`), where DLSPS
//!   metadata may carry its boxes in `gva_meta` instead of `objects`.
//!
//! gvametaconvert's full-frame object (at 0,0, without the `detection`, `roi_type` and
//! `region_id` of a region) is no box: its classifications are results about the whole frame
//! (a scene classification), read into [`Frame::frame_labels`].
//!
//! Every field is untrusted: a payload that cannot be read is an `Err` with a sentence saying
//! why, a field that cannot be read is left out with a warning, and every string and list that
//! reaches the page is bounded.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Map, Value};

/// Objects read from one message; the rest are counted in a warning.
pub const MAX_OBJECTS: usize = 1000;
/// Characters kept of a label, attribute name, source or topic.
pub const MAX_TEXT_CHARS: usize = 100;
/// Classification attributes kept per object.
pub const MAX_ATTRIBUTES: usize = 8;
/// Largest width or height accepted from `resolution`.
pub const MAX_DIMENSION: u64 = 32_768;

/// The payload's shape, shown on the page next to each source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The bare gvametaconvert object.
    Metadata,
    /// `[metadata, image]`.
    Array,
    /// `{"metadata": .., "blob": ..}` with gvametaconvert metadata.
    Object,
    /// `{"metadata": .., "blob": ..}` with DLSPS metadata (`gva_meta`, `pipeline`, ...).
    Dlsps,
}

/// One detected object, box in pixels of the frame's resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub label: String,
    /// 0..=1, or `None` when absent or not a valid confidence.
    pub confidence: Option<f64>,
    /// The tracking id, when a tracker set one.
    pub track_id: Option<i64>,
    pub attributes: Vec<Attribute>,
}

/// A classification result on an object (`"color": {"label": "red", ..}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Attribute {
    pub name: String,
    pub label: String,
    pub confidence: Option<f64>,
}

/// What the page needs of one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub shape: Shape,
    pub source: Option<String>,
    pub frame_id: Option<u64>,
    /// From `resolution` (or DLSPS `width`/`height`).
    pub resolution: Option<(u32, u32)>,
    pub objects: Vec<Object>,
    /// Classifications of the whole frame: those of the full-frame object.
    pub frame_labels: Vec<Attribute>,
    /// The base64 JPEG, checked to decode to a JPEG.
    pub image: Option<String>,
    /// `sink_time`: wall clock (ns since the UNIX epoch) when the publisher's sink got the buffer.
    pub sink_time_ns: Option<u64>,
    /// DLSPS `time`: wall clock (ns) when the message was published.
    pub publish_time_ns: Option<u64>,
    /// DLSPS `pipeline`: the publishing pipeline as DLSPS's REST status describes it.
    pub pipeline: Option<Pipeline>,
    /// Fields that were left out, each a sentence.
    pub warnings: Vec<String>,
}

/// What the page shows of DLSPS's `pipeline` key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pipeline {
    pub name: Option<String>,
    /// `status.state`, e.g. `RUNNING`.
    pub state: Option<String>,
    /// `status.avg_fps`.
    pub avg_fps: Option<f64>,
}

/// Reads one payload.
pub fn parse(payload: &[u8]) -> Result<Frame, String> {
    if payload.is_empty() {
        return Err("empty message".into());
    }
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| format!("not valid JSON: {e}"))?;
    let mut warnings = Vec::new();
    let (shape, metadata, blob) = match value {
        Value::Array(mut items) => {
            if items.len() != 2 {
                return Err(format!(
                    "a JSON array of {} items; expected [metadata, \"<base64 JPEG>\"]",
                    items.len()
                ));
            }
            let blob = items.pop().unwrap();
            let Value::Object(metadata) = items.pop().unwrap() else {
                return Err("the first item of the array is not a metadata object".into());
            };
            (Shape::Array, metadata, Some(blob))
        }
        Value::Object(mut map) if map.contains_key("metadata") => {
            let blob = map.remove("blob");
            let Some(Value::Object(metadata)) = map.remove("metadata") else {
                return Err("\"metadata\" is not a JSON object".into());
            };
            let dlsps = metadata.contains_key("gva_meta") || metadata.contains_key("pipeline");
            let shape = if dlsps { Shape::Dlsps } else { Shape::Object };
            if blob.is_none() {
                warnings.push("the envelope has no \"blob\"".into());
            }
            (shape, metadata, blob)
        }
        Value::Object(map) => (Shape::Metadata, map, None),
        other => {
            return Err(format!(
                "a JSON {}; expected a metadata object, [metadata, image] or {{\"metadata\", \"blob\"}}",
                kind(&other)
            ))
        }
    };

    let image = match blob {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) if text.is_empty() => None,
        Some(Value::String(text)) => match check_jpeg(&text) {
            Ok(()) => Some(text),
            Err(why) => {
                warnings.push(why);
                None
            }
        },
        Some(other) => {
            warnings.push(format!(
                "the image is a JSON {}, not a string",
                kind(&other)
            ));
            None
        }
    };

    let resolution = resolution(&metadata, &mut warnings);
    let (objects, frame_labels) = objects(&metadata, resolution, &mut warnings)?;
    Ok(Frame {
        shape,
        source: match metadata.get("source") {
            Some(Value::String(s)) => Some(bounded(s)),
            Some(Value::Null) | None => None,
            Some(_) => {
                warnings.push("\"source\" is not a string".into());
                None
            }
        },
        frame_id: metadata.get("frame_id").and_then(Value::as_u64),
        resolution,
        objects,
        frame_labels,
        image,
        sink_time_ns: metadata.get("sink_time").and_then(Value::as_u64),
        publish_time_ns: metadata.get("time").and_then(Value::as_u64),
        pipeline: metadata
            .get("pipeline")
            .and_then(Value::as_object)
            .map(|p| {
                let status = p.get("status").and_then(Value::as_object);
                Pipeline {
                    name: text(p.get("name")),
                    state: status.and_then(|s| text(s.get("state"))),
                    avg_fps: status.and_then(|s| number(s.get("avg_fps"))),
                }
            }),
        warnings,
    })
}

/// A string cut to [`MAX_TEXT_CHARS`] characters, control characters replaced.
pub fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_TEXT_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(MAX_TEXT_CHARS).is_some() {
        out.push('…');
    }
    out
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn check_jpeg(text: &str) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("the image is not valid base64 ({e})"))?;
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Ok(())
    } else {
        Err(format!("the image ({} bytes) is not a JPEG", bytes.len()))
    }
}

fn dimension(value: Option<&Value>) -> Option<u32> {
    value
        .and_then(Value::as_u64)
        .filter(|v| (1..=MAX_DIMENSION).contains(v))
        .map(|v| v as u32)
}

fn resolution(metadata: &Map<String, Value>, warnings: &mut Vec<String>) -> Option<(u32, u32)> {
    let (width, height) = match metadata.get("resolution") {
        Some(Value::Object(r)) => (r.get("width"), r.get("height")),
        // DLSPS metadata has the caps' size at the top level as well.
        _ => (metadata.get("width"), metadata.get("height")),
    };
    if width.is_none() && height.is_none() {
        return None;
    }
    match (dimension(width), dimension(height)) {
        (Some(w), Some(h)) => Some((w, h)),
        _ => {
            warnings.push(format!(
                "the resolution is not two integers from 1 to {MAX_DIMENSION}"
            ));
            None
        }
    }
}

fn number(value: Option<&Value>) -> Option<f64> {
    value.and_then(Value::as_f64).filter(|v| v.is_finite())
}

fn confidence(value: Option<&Value>) -> Option<f64> {
    number(value).filter(|c| (0.0..=1.0).contains(c))
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(bounded)
}

/// The objects, and the classifications of the whole frame.
fn objects(
    metadata: &Map<String, Value>,
    resolution: Option<(u32, u32)>,
    warnings: &mut Vec<String>,
) -> Result<(Vec<Object>, Vec<Attribute>), String> {
    let (list, dlsps) = match (metadata.get("objects"), metadata.get("gva_meta")) {
        (Some(Value::Array(list)), _) => (list, false),
        (Some(Value::Null) | None, Some(Value::Array(list))) => (list, true),
        (Some(Value::Null) | None, _) => return Ok((Vec::new(), Vec::new())),
        (Some(other), _) => {
            return Err(format!(
                "\"objects\" is a JSON {}, not an array",
                kind(other)
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len().min(MAX_OBJECTS));
    let mut frame_labels = Vec::new();
    let mut unreadable = 0usize;
    for item in list.iter().take(MAX_OBJECTS) {
        if let Value::Object(map) = item {
            if !dlsps && is_full_frame(map) {
                frame_labels.extend(attributes(map));
                frame_labels.truncate(MAX_ATTRIBUTES);
                continue;
            }
        }
        let object = match item {
            Value::Object(map) if dlsps => gva_meta_object(map),
            Value::Object(map) => gvametaconvert_object(map, resolution),
            _ => None,
        };
        match object {
            Some(object) => out.push(object),
            None => unreadable += 1,
        }
    }
    if list.len() > MAX_OBJECTS {
        warnings.push(format!(
            "{} objects; only the first {MAX_OBJECTS} are shown",
            list.len()
        ));
    }
    if unreadable > 0 {
        warnings.push(format!(
            "{unreadable} object(s) without a readable box were left out"
        ));
    }
    Ok((out, frame_labels))
}

/// gvametaconvert's full-frame object: at 0,0, with none of the keys of a region.
fn is_full_frame(map: &Map<String, Value>) -> bool {
    let zero = |k: &str| map.get(k).and_then(Value::as_u64) == Some(0);
    zero("x")
        && zero("y")
        && ["detection", "roi_type", "region_id"]
            .iter()
            .all(|k| !map.contains_key(*k))
}

/// The classification results of a gvametaconvert object: its keys whose value is an object
/// with a `label`, other than `detection`.
fn attributes(map: &Map<String, Value>) -> impl Iterator<Item = Attribute> + '_ {
    map.iter()
        .filter(|(key, _)| key.as_str() != "detection")
        .filter_map(|(key, value)| {
            let result = value.as_object()?;
            Some(Attribute {
                name: bounded(key),
                label: text(result.get("label"))?,
                confidence: confidence(result.get("confidence")),
            })
        })
        .take(MAX_ATTRIBUTES)
}

/// A box is four finite numbers with a non-negative size.
fn pixel_box(x: Option<f64>, y: Option<f64>, w: Option<f64>, h: Option<f64>) -> Option<[f64; 4]> {
    let [x, y, w, h] = [x?, y?, w?, h?];
    (w >= 0.0 && h >= 0.0).then_some([x, y, w, h])
}

fn gvametaconvert_object(
    map: &Map<String, Value>,
    resolution: Option<(u32, u32)>,
) -> Option<Object> {
    let detection = map.get("detection").and_then(Value::as_object);
    let [x, y, w, h] = pixel_box(
        number(map.get("x")),
        number(map.get("y")),
        number(map.get("w")),
        number(map.get("h")),
    )
    .or_else(|| {
        // Only the normalized box: scale it to the resolution.
        let bb = detection?.get("bounding_box")?.as_object()?;
        let (width, height) = resolution?;
        let (x0, x1) = (number(bb.get("x_min"))?, number(bb.get("x_max"))?);
        let (y0, y1) = (number(bb.get("y_min"))?, number(bb.get("y_max"))?);
        let (width, height) = (f64::from(width), f64::from(height));
        pixel_box(
            Some(x0 * width),
            Some(y0 * height),
            Some((x1 - x0) * width),
            Some((y1 - y0) * height),
        )
    })?;
    let label = detection
        .and_then(|d| text(d.get("label")))
        .or_else(|| text(map.get("roi_type")))
        .unwrap_or_else(|| "?".into());
    let attributes = attributes(map).collect();
    Some(Object {
        x,
        y,
        w,
        h,
        label,
        confidence: detection.and_then(|d| confidence(d.get("confidence"))),
        track_id: map.get("id").and_then(Value::as_i64),
        attributes,
    })
}

fn gva_meta_object(map: &Map<String, Value>) -> Option<Object> {
    let [x, y, w, h] = pixel_box(
        number(map.get("x")),
        number(map.get("y")),
        number(map.get("width")),
        number(map.get("height")),
    )?;
    let tensors: &[Value] = map
        .get("tensor")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let detection = tensors
        .iter()
        .filter_map(Value::as_object)
        .find(|t| t.get("name").and_then(Value::as_str) == Some("detection"));
    let attributes = tensors
        .iter()
        .filter_map(Value::as_object)
        .filter(|t| t.get("name").and_then(Value::as_str) != Some("detection"))
        .filter_map(|t| {
            Some(Attribute {
                name: text(t.get("name")).unwrap_or_else(|| "?".into()),
                label: text(t.get("label"))?,
                confidence: confidence(t.get("confidence")),
            })
        })
        .take(MAX_ATTRIBUTES)
        .collect();
    Some(Object {
        x,
        y,
        w,
        h,
        label: detection
            .and_then(|d| text(d.get("label")))
            .unwrap_or_else(|| "?".into()),
        confidence: detection.and_then(|d| confidence(d.get("confidence"))),
        track_id: map.get("object_id").and_then(Value::as_i64),
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG_B64: &str = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAA=="; // FF D8 FF E0 ...

    const METADATA: &str = r#"{"frame_id":7,"objects":[{"color":{"confidence":0.81,"label":"red","label_id":3},
        "detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.5,"y_min":0.25},"confidence":0.92,
        "label":"car","label_id":3},"h":120,"id":4,"region_id":0,"roi_type":"car","w":160,"x":160,"y":120}],
        "resolution":{"height":480,"width":640},"source":"cam-1","sink_time":1700000000000000000,"timestamp":0}"#;

    fn car() -> Object {
        Object {
            x: 160.0,
            y: 120.0,
            w: 160.0,
            h: 120.0,
            label: "car".into(),
            confidence: Some(0.92),
            track_id: Some(4),
            attributes: vec![Attribute {
                name: "color".into(),
                label: "red".into(),
                confidence: Some(0.81),
            }],
        }
    }

    #[test]
    fn the_three_shapes_give_the_same_objects() {
        let bare = parse(METADATA.as_bytes()).unwrap();
        let array = parse(format!("[{METADATA},\"{JPEG_B64}\"]").as_bytes()).unwrap();
        let object =
            parse(format!("{{\"metadata\":{METADATA},\"blob\":\"\"}}").as_bytes()).unwrap();
        assert_eq!(
            (bare.shape, array.shape, object.shape),
            (Shape::Metadata, Shape::Array, Shape::Object)
        );
        for frame in [&bare, &array, &object] {
            assert_eq!(frame.objects, vec![car()]);
            assert_eq!(frame.resolution, Some((640, 480)));
            assert_eq!(frame.source.as_deref(), Some("cam-1"));
            assert_eq!(frame.frame_id, Some(7));
            assert_eq!(frame.sink_time_ns, Some(1_700_000_000_000_000_000));
            assert!(frame.warnings.is_empty(), "{:?}", frame.warnings);
        }
        assert_eq!(array.image.as_deref(), Some(JPEG_B64));
        assert_eq!(bare.image, None);
        assert_eq!(object.image, None);
    }

    #[test]
    fn dlsps_metadata_is_read_from_gva_meta_when_objects_are_absent() {
        let payload = format!(
            r#"{{"metadata":{{"width":640,"height":480,"channels":3,"caps":"video/x-raw","img_format":"I420",
            "img_handle":"ABCDEFGHIJ","gva_meta":[{{"x":160,"y":120,"width":160,"height":120,"object_id":4,
            "tensor":[{{"name":"detection","confidence":0.92,"label_id":3,"label":"car"}},
            {{"name":"color","confidence":0.81,"label_id":3,"label":"red"}}]}}],
            "pipeline":{{"name":"p","status":{{"state":"RUNNING","avg_fps":14.5}}}},"frame_id":7,
            "time":1700000000000000001}},"blob":"{JPEG_B64}"}}"#
        );
        let frame = parse(payload.as_bytes()).unwrap();
        assert_eq!(frame.shape, Shape::Dlsps);
        assert_eq!(frame.objects, vec![car()]);
        assert_eq!(frame.resolution, Some((640, 480)));
        assert_eq!(frame.publish_time_ns, Some(1_700_000_000_000_000_001));
        assert_eq!(
            frame.pipeline,
            Some(Pipeline {
                name: Some("p".into()),
                state: Some("RUNNING".into()),
                avg_fps: Some(14.5)
            })
        );
        assert!(frame.image.is_some());
    }

    #[test]
    fn dlsps_metadata_with_objects_uses_the_gvametaconvert_objects() {
        let payload = format!(
            r#"{{"metadata":{},"blob":""}}"#,
            METADATA.replacen('{', r#"{"gva_meta":[],"width":640,"height":480,"#, 1)
        );
        let frame = parse(payload.as_bytes()).unwrap();
        assert_eq!(frame.shape, Shape::Dlsps);
        assert_eq!(frame.objects, vec![car()]);
    }

    #[test]
    fn a_normalized_box_alone_is_scaled_to_the_resolution() {
        let payload = r#"{"objects":[{"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":1,"y_min":0.5},
            "label":"box"}}],"resolution":{"height":200,"width":400}}"#;
        let frame = parse(payload.as_bytes()).unwrap();
        let o = &frame.objects[0];
        assert_eq!((o.x, o.y, o.w, o.h), (100.0, 100.0, 100.0, 100.0));
        assert_eq!(o.confidence, None);
    }

    #[test]
    fn unreadable_payloads_say_why() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty"),
            (b"{not json", "not valid JSON"),
            (b"\xff\xfe", "not valid JSON"),
            (b"42", "a JSON number"),
            (b"[1,2,3]", "array of 3 items"),
            (br#"{"metadata":"x","blob":""}"#, "\"metadata\" is not"),
            (br#"{"objects":{}}"#, "\"objects\" is a JSON object"),
        ];
        for (payload, expected) in cases {
            let err = parse(payload).unwrap_err();
            assert!(err.contains(expected), "{payload:?}: {err}");
        }
        let deep = "[".repeat(10_000);
        assert!(parse(deep.as_bytes())
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn hostile_fields_are_bounded_or_left_out_with_a_warning() {
        let long = "<script>x</script>".repeat(100);
        let payload = format!(
            r#"[{{"objects":[{{"x":1,"y":2,"w":3,"h":4,"detection":{{"label":"{long}\u0007","confidence":7}}}},
            {{"x":"a","y":2,"w":3,"h":4}}, 5, {{"x":1,"y":1,"w":-3,"h":4}}],
            "resolution":{{"width":1e12,"height":-1}},"source":{{"a":1}}}}, "bm90IGEganBlZw=="]"#
        );
        let frame = parse(payload.as_bytes()).unwrap();
        assert_eq!(frame.objects.len(), 1);
        let label = &frame.objects[0].label;
        assert_eq!(label.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(!label.chars().any(char::is_control));
        assert_eq!(frame.objects[0].confidence, None);
        assert_eq!(frame.resolution, None);
        assert_eq!(frame.image, None);
        assert_eq!(frame.source, None);
        let warnings = frame.warnings.join("; ");
        for expected in [
            "3 object(s) without a readable box",
            "resolution",
            "not a JPEG",
            "\"source\"",
        ] {
            assert!(warnings.contains(expected), "{warnings}");
        }
    }

    #[test]
    fn objects_are_bounded() {
        let one = r#"{"x":1,"y":1,"w":1,"h":1}"#;
        let list = vec![one; MAX_OBJECTS + 5].join(",");
        let frame = parse(format!(r#"{{"objects":[{list}]}}"#).as_bytes()).unwrap();
        assert_eq!(frame.objects.len(), MAX_OBJECTS);
        assert!(frame.warnings[0].contains(&format!("{} objects", MAX_OBJECTS + 5)));
    }

    #[test]
    fn the_full_frame_object_is_no_box_but_the_frame_labels() {
        let payload = r#"{"objects":[{"detection":{"label":"car","confidence":0.5},"h":10,"region_id":0,
            "roi_type":"car","w":10,"x":0,"y":0},{"h":480,"scene":{"confidence":0.875,"label":"indoor",
            "label_id":0,"model":{"name":"scene-net"}},"tensors":[{"name":"scene","label":"indoor"}],
            "w":640,"x":0,"y":0}],"resolution":{"height":480,"width":640}}"#;
        let frame = parse(payload.as_bytes()).unwrap();
        assert_eq!(frame.objects.len(), 1, "the car at 0,0 is a region");
        assert_eq!(frame.objects[0].label, "car");
        assert_eq!(
            frame.frame_labels,
            [Attribute {
                name: "scene".into(),
                label: "indoor".into(),
                confidence: Some(0.875),
            }]
        );
        assert!(frame.warnings.is_empty(), "{:?}", frame.warnings);
    }
}
