// SPDX-License-Identifier: MPL-2.0

//! The gvametaconvert JSON: written for publishing, parsed for replay.
//!
//! Writing goes straight into a byte buffer, keys in alphabetical order as DL Streamer emits
//! them, without building an intermediate `serde_json::Value` tree: it runs once per frame
//! in the streaming thread.

use serde_json::{Map, Value};

use super::frame::{self, FrameResults};
use super::{
    valid_confidence, valid_rotation, BoundingBox, Classification, Detection, Object, Rect,
};

/// Frame-level facts that go into the JSON next to the objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameContext<'a> {
    /// Frame size in pixels; 0 when unknown (no video caps), then `resolution` is omitted.
    pub width: u32,
    pub height: u32,
    /// Buffer stream time in nanoseconds.
    pub timestamp: Option<u64>,
    pub frame_id: Option<u64>,
    /// Wall-clock time (ns since the UNIX epoch) at which the sink received the buffer,
    /// for latency measurements.
    pub sink_time: Option<u64>,
    pub source: Option<&'a str>,
    /// A JSON object, already serialized (validated when the user set it).
    pub tags: Option<&'a str>,
    /// Write the frame-level tensors (`tensors`) with their raw output, as `gvametaconvert
    /// add-tensor-data=true` does.
    pub add_tensor_data: bool,
}

/// Object keys written by this module; a classification named like one of them would make
/// a duplicate key and is left out.
const OBJECT_KEYS: [&str; 9] = [
    "detection",
    "h",
    "id",
    "parent_id",
    "region_id",
    "roi_type",
    "w",
    "x",
    "y",
];

/// Appends the gvametaconvert JSON of one frame to `out`: its objects, then the full-frame
/// object when there are frame-level results (see [`frame`]).
pub fn write_frame_json(
    out: &mut Vec<u8>,
    objects: &[Object],
    frame: &FrameResults,
    ctx: &FrameContext,
) {
    out.push(b'{');
    write_frame_fields(out, &mut true, objects, frame, ctx);
    out.push(b'}');
}

/// Appends the keys of the gvametaconvert JSON of one frame, without the braces, so that
/// other documents can embed them. `first`: no key was written before.
pub(super) fn write_frame_fields(
    out: &mut Vec<u8>,
    first: &mut bool,
    objects: &[Object],
    frame: &FrameResults,
    ctx: &FrameContext,
) {
    if let Some(frame_id) = ctx.frame_id {
        key(out, first, "frame_id");
        write_int(out, frame_id);
    }
    key(out, first, "objects");
    out.push(b'[');
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_object(out, object, ctx);
    }
    if !frame.is_empty() {
        if !objects.is_empty() {
            out.push(b',');
        }
        frame::write_full_frame_object(out, frame, ctx);
    }
    out.push(b']');
    if ctx.width > 0 && ctx.height > 0 {
        key(out, first, "resolution");
        out.extend_from_slice(b"{\"height\":");
        write_int(out, ctx.height);
        out.extend_from_slice(b",\"width\":");
        write_int(out, ctx.width);
        out.push(b'}');
    }
    if let Some(sink_time) = ctx.sink_time {
        key(out, first, "sink_time");
        write_int(out, sink_time);
    }
    if let Some(source) = ctx.source {
        key(out, first, "source");
        write_str(out, source);
    }
    if let Some(tags) = ctx.tags {
        key(out, first, "tags");
        out.extend_from_slice(tags.as_bytes());
    }
    if frame::has_top_level_tensors(frame, ctx) {
        key(out, first, "tensors");
        frame::write_top_level_tensors(out, frame);
    }
    if let Some(timestamp) = ctx.timestamp {
        key(out, first, "timestamp");
        write_int(out, timestamp);
    }
}

/// A key of an object's JSON other than a classification.
enum Field {
    Detection,
    H,
    Id(i64),
    ParentId(i32),
    RegionId,
    RoiType,
    W,
    X,
    Y,
}

impl Field {
    fn key(&self) -> &'static str {
        match self {
            Field::Detection => "detection",
            Field::H => "h",
            Field::Id(_) => "id",
            Field::ParentId(_) => "parent_id",
            Field::RegionId => "region_id",
            Field::RoiType => "roi_type",
            Field::W => "w",
            Field::X => "x",
            Field::Y => "y",
        }
    }
}

fn write_object(out: &mut Vec<u8>, object: &Object, ctx: &FrameContext) {
    // In alphabetical order; the optional ones are left out when absent.
    let fields = [
        Some(Field::Detection),
        Some(Field::H),
        object.tracking_id.map(Field::Id),
        object.parent_id.map(Field::ParentId),
        Some(Field::RegionId),
        Some(Field::RoiType),
        Some(Field::W),
        Some(Field::X),
        Some(Field::Y),
    ];
    // Classifications are keyed by their name, so they go between the fixed keys in
    // alphabetical order. An object has few, and they usually come sorted already.
    let mut classifications: Vec<&Classification> = object
        .classifications
        .iter()
        .filter(|c| !OBJECT_KEYS.contains(&c.name.as_str()))
        .collect();
    if !classifications.is_sorted_by_key(|c| &c.name) {
        classifications.sort_by_key(|c| &c.name);
    }
    let mut classifications = classifications.into_iter().peekable();

    out.push(b'{');
    let mut first = true;
    for field in fields.into_iter().flatten() {
        while let Some(c) = classifications.next_if(|c| c.name.as_str() < field.key()) {
            name_key(out, &mut first, &c.name);
            write_classification(out, c);
        }
        key(out, &mut first, field.key());
        match field {
            Field::Detection => write_detection(out, object, ctx),
            Field::H => write_int(out, object.rect.h),
            Field::Id(id) => write_int(out, id),
            Field::ParentId(id) => write_int(out, id),
            Field::RegionId => write_int(out, object.region_id),
            Field::RoiType => write_str(out, &object.label),
            Field::W => write_int(out, object.rect.w),
            Field::X => write_int(out, object.rect.x),
            Field::Y => write_int(out, object.rect.y),
        }
    }
    for c in classifications {
        name_key(out, &mut first, &c.name);
        write_classification(out, c);
    }
    out.push(b'}');
}

fn write_detection(out: &mut Vec<u8>, object: &Object, ctx: &FrameContext) {
    let detection = object.detection.as_ref();
    let bbox = detection
        .and_then(|d| d.bounding_box)
        .or_else(|| BoundingBox::from_rect(object.rect, ctx.width, ctx.height));
    out.push(b'{');
    let mut first = true;
    if let Some(b) = bbox {
        key(out, &mut first, "bounding_box");
        out.extend_from_slice(b"{\"x_max\":");
        write_float(out, b.x_max);
        out.extend_from_slice(b",\"x_min\":");
        write_float(out, b.x_min);
        out.extend_from_slice(b",\"y_max\":");
        write_float(out, b.y_max);
        out.extend_from_slice(b",\"y_min\":");
        write_float(out, b.y_min);
        out.push(b'}');
    }
    if let Some(confidence) = detection.and_then(|d| d.confidence) {
        key(out, &mut first, "confidence");
        write_float(out, confidence);
    }
    key(out, &mut first, "label");
    write_str(out, &object.label);
    if let Some(label_id) = detection.and_then(|d| d.label_id) {
        key(out, &mut first, "label_id");
        write_int(out, label_id);
    }
    // Not in gvametaconvert's JSON, which drops the rotation gvadetect writes: only oriented
    // boxes carry it, so the JSON of every other object stays gvametaconvert's.
    if let Some(rotation) = detection.and_then(|d| d.rotation) {
        key(out, &mut first, "rotation");
        write_float(out, rotation);
    }
    out.push(b'}');
}

fn write_classification(out: &mut Vec<u8>, c: &Classification) {
    out.push(b'{');
    let mut first = true;
    if let Some(confidence) = c.confidence {
        key(out, &mut first, "confidence");
        write_float(out, confidence);
    }
    key(out, &mut first, "label");
    write_str(out, &c.label);
    if let Some(label_id) = c.label_id {
        key(out, &mut first, "label_id");
        write_int(out, label_id);
    }
    if let Some(model_name) = &c.model_name {
        key(out, &mut first, "model");
        out.extend_from_slice(b"{\"name\":");
        write_str(out, model_name);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Writes the key `name`, one of this module's own, which need no escaping.
#[inline]
pub(super) fn key(out: &mut Vec<u8>, first: &mut bool, name: &'static str) {
    debug_assert!(!name.bytes().any(needs_escape), "{name}");
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// Writes a key that comes from the metadata (a classification's name).
fn name_key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    write_str(out, name);
    out.push(b':');
}

fn needs_escape(byte: u8) -> bool {
    byte == b'"' || byte == b'\\' || byte < 0x20
}

pub(super) fn write_str(out: &mut Vec<u8>, s: &str) {
    // Labels and names rarely need escaping: copy those as they are.
    if !s.bytes().any(needs_escape) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail, and a str always serializes.
    serde_json::to_writer(&mut *out, s).expect("string serializes");
}

pub(super) fn write_float(out: &mut Vec<u8>, v: f64) {
    // Non-finite values never reach here (see `valid_confidence`, `BoundingBox::from_rect`),
    // and serde_json would write them as `null` rather than break the document.
    serde_json::to_writer(&mut *out, &v).expect("float serializes");
}

pub(super) fn write_int(out: &mut Vec<u8>, v: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// One line of a recorded gvametaconvert JSON-lines file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordedFrame {
    pub objects: Vec<Object>,
    /// The results about the whole frame: from the full-frame object and the top-level
    /// `tensors`.
    pub frame: FrameResults,
    /// `(width, height)` the recording was made at.
    pub resolution: Option<(u32, u32)>,
    pub timestamp: Option<u64>,
}

/// Parses one gvametaconvert JSON object (one line of a JSON-lines recording). The error
/// names the offending field, e.g. `objects[2].detection.confidence: ...`.
pub fn parse_frame_line(line: &str) -> Result<RecordedFrame, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let frame = value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, got {}", kind(&value)))?;

    let resolution = match frame.get("resolution") {
        None => None,
        Some(r) => {
            let r = as_object(r, "resolution")?;
            Some((
                required_u32(r, "width", "resolution")?,
                required_u32(r, "height", "resolution")?,
            ))
        }
    };
    let timestamp = optional_u64(frame, "timestamp", "")?;

    let mut objects = Vec::new();
    let mut full_frame = Vec::new();
    match frame.get("objects") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                match item.as_object() {
                    Some(o) if frame::is_full_frame_object(o) => {
                        full_frame.push((o, format!("objects[{i}]")))
                    }
                    _ => objects.push(parse_object(item, i, resolution)?),
                }
            }
        }
        Some(other) => return Err(format!("objects: expected an array, got {}", kind(other))),
    }
    let frame_results = frame::parse_recorded(&full_frame, frame.get("tensors"))?;

    Ok(RecordedFrame {
        objects,
        frame: frame_results,
        resolution,
        timestamp,
    })
}

fn parse_object(
    value: &Value,
    index: usize,
    resolution: Option<(u32, u32)>,
) -> Result<Object, String> {
    let path = format!("objects[{index}]");
    let o = as_object(value, &path)?;

    let detection_value = o.get("detection");
    let detection = detection_value
        .map(|d| as_object(d, &format!("{path}.detection")))
        .transpose()?;

    let label = match (o.get("roi_type"), detection.and_then(|d| d.get("label"))) {
        (Some(Value::String(s)), _) | (None, Some(Value::String(s))) => s.clone(),
        (Some(other), _) => {
            return Err(format!(
                "{path}.roi_type: expected a string, got {}",
                kind(other)
            ))
        }
        _ => return Err(format!("{path}: has neither roi_type nor detection.label")),
    };

    let bounding_box = match detection.and_then(|d| d.get("bounding_box")) {
        None => None,
        Some(b) => {
            let bpath = format!("{path}.detection.bounding_box");
            let b = as_object(b, &bpath)?;
            let coord = |name: &str| -> Result<f64, String> {
                match b.get(name).and_then(Value::as_f64) {
                    Some(v) if v.is_finite() => Ok(v),
                    _ => Err(format!("{bpath}.{name}: expected a number")),
                }
            };
            Some(BoundingBox {
                x_min: coord("x_min")?,
                y_min: coord("y_min")?,
                x_max: coord("x_max")?,
                y_max: coord("y_max")?,
            })
        }
    };

    let pixels = ["x", "y", "w", "h"].map(|k| o.get(k));
    let rect = if pixels.iter().all(Option::is_some) {
        Rect {
            x: required_u32(o, "x", &path)?,
            y: required_u32(o, "y", &path)?,
            w: required_u32(o, "w", &path)?,
            h: required_u32(o, "h", &path)?,
        }
    } else {
        match (bounding_box, resolution) {
            (Some(b), Some((w, h))) => b.to_rect(w, h),
            _ => {
                return Err(format!(
                    "{path}: needs x, y, w and h, or detection.bounding_box and a resolution"
                ))
            }
        }
    };

    let detection = detection
        .map(|d| -> Result<Detection, String> {
            let dpath = format!("{path}.detection");
            let rotation = match d.get("rotation") {
                None => None,
                Some(v) => match v.as_f64() {
                    Some(r) if r.is_finite() => valid_rotation(r),
                    _ => return Err(format!("{dpath}.rotation: expected a number, got {v}")),
                },
            };
            Ok(Detection {
                confidence: optional_confidence(d, &dpath)?,
                label_id: optional_i32(d, "label_id", &dpath)?,
                bounding_box,
                rotation,
            })
        })
        .transpose()?;

    let mut classifications = Vec::new();
    for (name, value) in o {
        if OBJECT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let Some(c) = value.as_object() else { continue };
        let Some(label) = c.get("label") else {
            continue;
        };
        let cpath = format!("{path}.{name}");
        let label = label
            .as_str()
            .ok_or_else(|| format!("{cpath}.label: expected a string, got {}", kind(label)))?;
        let model_name = match c.get("model") {
            None => None,
            Some(m) => match as_object(m, &format!("{cpath}.model"))?.get("name") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return Err(format!(
                        "{cpath}.model.name: expected a string, got {}",
                        kind(other)
                    ))
                }
            },
        };
        classifications.push(Classification {
            name: name.clone(),
            label: label.to_owned(),
            confidence: optional_confidence(c, &cpath)?,
            label_id: optional_i32(c, "label_id", &cpath)?,
            model_name,
        });
    }

    Ok(Object {
        label,
        rect,
        region_id: optional_i32(o, "region_id", &path)?.unwrap_or(index as i32),
        parent_id: optional_i32(o, "parent_id", &path)?.filter(|id| *id >= 0),
        tracking_id: match o.get("id") {
            None => None,
            Some(v) => Some(
                v.as_i64()
                    .ok_or_else(|| format!("{path}.id: expected an integer, got {v}"))?,
            ),
        },
        detection,
        classifications,
    })
}

/// What a JSON value is, for error messages: "an array", "a string", ...
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn as_object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: expected an object, got {}", kind(v)))
}

fn field_path(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn optional_u64(o: &Map<String, Value>, name: &str, parent: &str) -> Result<Option<u64>, String> {
    o.get(name)
        .map(|v| {
            v.as_u64().ok_or_else(|| {
                format!(
                    "{}: expected a non-negative integer, got {v}",
                    field_path(parent, name)
                )
            })
        })
        .transpose()
}

fn required_u32(o: &Map<String, Value>, name: &str, parent: &str) -> Result<u32, String> {
    let v = o
        .get(name)
        .ok_or_else(|| format!("{}: missing", field_path(parent, name)))?;
    v.as_u64()
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| {
            format!(
                "{}: expected a non-negative 32-bit integer, got {v}",
                field_path(parent, name)
            )
        })
}

pub(super) fn optional_i32(
    o: &Map<String, Value>,
    name: &str,
    parent: &str,
) -> Result<Option<i32>, String> {
    o.get(name)
        .map(|v| {
            v.as_i64()
                .and_then(|v| i32::try_from(v).ok())
                .ok_or_else(|| {
                    format!(
                        "{}: expected a 32-bit integer, got {v}",
                        field_path(parent, name)
                    )
                })
        })
        .transpose()
}

pub(super) fn optional_confidence(
    o: &Map<String, Value>,
    parent: &str,
) -> Result<Option<f64>, String> {
    o.get("confidence")
        .map(|v| {
            v.as_f64().and_then(valid_confidence).ok_or_else(|| {
                format!("{parent}.confidence: expected a number between 0 and 1, got {v}")
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn car() -> Object {
        Object {
            label: "car".into(),
            rect: Rect {
                x: 333,
                y: 127,
                w: 255,
                h: 198,
            },
            region_id: 12,
            parent_id: None,
            tracking_id: Some(7),
            detection: Some(Detection {
                confidence: Some(0.92),
                label_id: Some(0),
                bounding_box: Some(BoundingBox {
                    x_min: 0.26,
                    y_min: 0.17,
                    x_max: 0.46,
                    y_max: 0.45,
                }),
                rotation: None,
            }),
            classifications: vec![Classification {
                name: "color".into(),
                label: "red".into(),
                confidence: Some(0.81),
                label_id: Some(3),
                model_name: Some("color_net".into()),
            }],
        }
    }

    fn json(objects: &[Object], ctx: &FrameContext) -> String {
        let mut out = Vec::new();
        write_frame_json(&mut out, objects, &FrameResults::default(), ctx);
        String::from_utf8(out).unwrap()
    }

    const CTX: FrameContext = FrameContext {
        width: 1280,
        height: 720,
        timestamp: Some(1_400_000_000),
        frame_id: Some(5),
        sink_time: Some(1_700_000_000_123_456_789),
        source: Some("rtsp://camera-7/stream"),
        tags: Some(r#"{"site":"dock-3"}"#),
        add_tensor_data: false,
    };

    #[test]
    fn schema_is_pinned_field_by_field() {
        assert_eq!(
            json(&[car()], &CTX),
            concat!(
                r#"{"frame_id":5,"objects":[{"color":{"confidence":0.81,"label":"red","label_id":3,"#,
                r#""model":{"name":"color_net"}},"detection":{"bounding_box":{"x_max":0.46,"#,
                r#""x_min":0.26,"y_max":0.45,"y_min":0.17},"confidence":0.92,"label":"car","#,
                r#""label_id":0},"h":198,"id":7,"region_id":12,"roi_type":"car","w":255,"#,
                r#""x":333,"y":127}],"resolution":{"height":720,"width":1280},"#,
                r#""sink_time":1700000000123456789,"#,
                r#""source":"rtsp://camera-7/stream","tags":{"site":"dock-3"},"#,
                r#""timestamp":1400000000}"#
            )
        );
    }

    #[test]
    fn classifications_go_between_the_object_keys_in_alphabetical_order() {
        let mut object = car();
        object.classifications = ["zone", "age", "type", "gender"]
            .into_iter()
            .map(|name| Classification {
                name: name.into(),
                label: "x".into(),
                ..Classification::default()
            })
            .collect();
        let text = json(&[object], &FrameContext::default());
        let keys = [
            "age",
            "detection",
            "gender",
            "h",
            "id",
            "roi_type",
            "type",
            "w",
            "y",
            "zone",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).expect(k))
            .collect();
        assert!(at.is_sorted(), "keys out of order in {text}");
        serde_json::from_str::<Value>(&text).unwrap();
    }

    #[test]
    fn optional_frame_fields_are_left_out() {
        let ctx = FrameContext::default();
        assert_eq!(json(&[], &ctx), r#"{"objects":[]}"#);
    }

    #[test]
    fn object_without_params_gets_a_box_from_its_rect_and_no_confidence() {
        let object = Object {
            label: "thing".into(),
            rect: Rect {
                x: 320,
                y: 180,
                w: 640,
                h: 360,
            },
            region_id: 1,
            parent_id: Some(0),
            ..Object::default()
        };
        let text = json(&[object], &CTX);
        let v: Value = serde_json::from_str(&text).unwrap();
        let o = &v["objects"][0];
        assert_eq!(
            o["detection"],
            serde_json::json!({
                "bounding_box": {"x_max": 0.75, "x_min": 0.25, "y_max": 0.75, "y_min": 0.25},
                "label": "thing"
            })
        );
        assert_eq!(o["parent_id"], 0);
        assert!(o.get("id").is_none(), "no tracking id: no id key");
    }

    #[test]
    fn hostile_labels_stay_valid_json() {
        let mut object = car();
        object.label = "a \"quoted\"\nlabel\u{0}".into();
        object.classifications[0].label = "\u{1F600}\t".into();
        let text = json(&[object.clone()], &CTX);
        let v: Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["objects"][0]["roi_type"], object.label.as_str());
        assert_eq!(v["objects"][0]["color"]["label"], "\u{1F600}\t");
    }

    #[test]
    fn classifications_named_like_object_keys_are_left_out() {
        let mut object = car();
        object.classifications[0].name = "x".into();
        let v: Value = serde_json::from_str(&json(&[object], &CTX)).unwrap();
        assert_eq!(v["objects"][0]["x"], 333);
    }

    #[test]
    fn written_frames_parse_back_to_the_same_objects() {
        let text = json(&[car()], &CTX);
        let frame = parse_frame_line(&text).unwrap();
        assert_eq!(frame.objects, [car()]);
        assert_eq!(frame.resolution, Some((1280, 720)));
        assert_eq!(frame.timestamp, Some(1_400_000_000));
    }

    const CAR_JSON: &str = concat!(
        r#"{"color":{"confidence":0.81,"label":"red","label_id":3,"model":{"name":"color_net"}},"#,
        r#""detection":{"bounding_box":{"x_max":0.46,"x_min":0.26,"y_max":0.45,"y_min":0.17},"#,
        r#""confidence":0.92,"label":"car","label_id":0},"h":198,"id":7,"region_id":12,"#,
        r#""roi_type":"car","w":255,"x":333,"y":127}"#
    );

    #[test]
    fn the_full_frame_object_follows_the_objects_and_tensors_come_before_the_timestamp() {
        use crate::meta::Tensor;
        let frame = FrameResults {
            tensors: vec![Tensor {
                name: "inference_layer_name:prob".into(),
                precision: Some(10),
                dims: Some(vec![1, 2]),
                data: Some(
                    [0.5f32, 0.25]
                        .iter()
                        .flat_map(|v| v.to_ne_bytes())
                        .collect(),
                ),
                ..Tensor::default()
            }],
            classifications: Vec::new(),
        };
        let tensor = concat!(
            r#"{"data":[0.5,0.25],"dims":[1,2],"layout":"ANY","#,
            r#""name":"inference_layer_name:prob","precision":"FP32"}"#
        );
        let ctx = FrameContext {
            width: 1280,
            height: 720,
            timestamp: Some(5),
            add_tensor_data: true,
            ..FrameContext::default()
        };
        let mut out = Vec::new();
        write_frame_json(&mut out, &[car()], &frame, &ctx);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            format!(
                "{{\"objects\":[{CAR_JSON},{{\"h\":720,\"tensors\":[{tensor}],\"w\":1280,\"x\":0,\
                 \"y\":0}}],\"resolution\":{{\"height\":720,\"width\":1280}},\
                 \"tensors\":[{tensor}],\"timestamp\":5}}"
            )
        );
        let parsed = parse_frame_line(&text).unwrap();
        assert_eq!(parsed.objects, [car()]);
        assert_eq!(parsed.frame, frame);

        // Without the tensor data: the bare full-frame object, no tensors.
        let mut out = Vec::new();
        let ctx = FrameContext {
            add_tensor_data: false,
            ..ctx
        };
        write_frame_json(&mut out, &[], &frame, &ctx);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            concat!(
                r#"{"objects":[{"h":720,"w":1280,"x":0,"y":0}],"#,
                r#""resolution":{"height":720,"width":1280},"timestamp":5}"#
            )
        );
    }

    #[test]
    fn an_oriented_box_carries_its_rotation_in_the_detection() {
        let mut object = car();
        object.detection.as_mut().unwrap().rotation = Some(0.5);
        let text = json(&[object.clone()], &FrameContext::default());
        assert!(
            text.contains(r#""label":"car","label_id":0,"rotation":0.5}"#),
            "{text}"
        );
        assert_eq!(parse_frame_line(&text).unwrap().objects, [object]);
        // A rotation of 0 is an axis-aligned box, as gvadetect writes it for every box.
        let zero = text.replace("\"rotation\":0.5", "\"rotation\":0");
        let parsed = parse_frame_line(&zero).unwrap();
        assert_eq!(parsed.objects[0].detection.as_ref().unwrap().rotation, None);
        assert!(parse_frame_line(&text.replace("0.5}", "\"r\"}"))
            .unwrap_err()
            .contains("objects[0].detection.rotation"));
    }

    #[test]
    fn parse_errors_name_the_field() {
        let cases = [
            ("[]", "expected a JSON object"),
            (r#"{"objects":{}}"#, "objects: expected an array"),
            (
                r#"{"objects":[{"x":1,"y":1,"w":1,"h":1}]}"#,
                "objects[0]: has neither roi_type",
            ),
            (
                r#"{"objects":[{"roi_type":"a","x":-1,"y":1,"w":1,"h":1}]}"#,
                "objects[0].x",
            ),
            (
                r#"{"objects":[{"roi_type":"a","detection":{"bounding_box":{"x_min":0}}}]}"#,
                "bounding_box.y_min",
            ),
            (
                r#"{"resolution":{"width":"wide","height":1}}"#,
                "resolution.width",
            ),
            (r#"{"timestamp":-5}"#, "timestamp"),
            (
                r#"{"objects":[{"roi_type":"a","x":1,"y":1,"w":1,"h":1,"color":{"label":3}}]}"#,
                "objects[0].color.label",
            ),
        ];
        for (line, expected) in cases {
            let err = parse_frame_line(line).unwrap_err();
            assert!(
                err.contains(expected),
                "{line}: {err:?} should contain {expected:?}"
            );
        }
    }
}
