//! The gvametaconvert JSON: written for publishing, parsed for replay.
//!
//! Writing goes straight into a byte buffer, keys in alphabetical order as DL Streamer emits
//! them, without building an intermediate `serde_json::Value` tree: it runs once per frame
//! in the streaming thread.

use std::io::Write;

use serde_json::{Map, Value};

use super::{valid_confidence, BoundingBox, Classification, Detection, Object, Rect};

/// Frame-level facts that go into the JSON next to the objects.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameContext<'a> {
    /// Frame size in pixels; 0 when unknown (no video caps), then `resolution` is omitted.
    pub width: u32,
    pub height: u32,
    /// Buffer stream time in nanoseconds.
    pub timestamp: Option<u64>,
    pub frame_id: Option<u64>,
    pub source: Option<&'a str>,
    /// A JSON object, already serialized (validated when the user set it).
    pub tags: Option<&'a str>,
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

/// Appends the gvametaconvert JSON of one frame to `out`.
pub fn write_frame_json(out: &mut Vec<u8>, objects: &[Object], ctx: &FrameContext) {
    out.push(b'{');
    let mut first = true;
    if let Some(frame_id) = ctx.frame_id {
        key(out, &mut first, "frame_id");
        write_int(out, frame_id);
    }
    key(out, &mut first, "objects");
    out.push(b'[');
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_object(out, object, ctx);
    }
    out.push(b']');
    if ctx.width > 0 && ctx.height > 0 {
        key(out, &mut first, "resolution");
        out.extend_from_slice(b"{\"height\":");
        write_int(out, ctx.height);
        out.extend_from_slice(b",\"width\":");
        write_int(out, ctx.width);
        out.push(b'}');
    }
    if let Some(source) = ctx.source {
        key(out, &mut first, "source");
        write_str(out, source);
    }
    if let Some(tags) = ctx.tags {
        key(out, &mut first, "tags");
        out.extend_from_slice(tags.as_bytes());
    }
    if let Some(timestamp) = ctx.timestamp {
        key(out, &mut first, "timestamp");
        write_int(out, timestamp);
    }
    out.push(b'}');
}

enum ObjectField<'a> {
    Classification(&'a Classification),
    Fixed(&'static str),
}

fn write_object(out: &mut Vec<u8>, object: &Object, ctx: &FrameContext) {
    let mut fields: Vec<(&str, ObjectField)> = Vec::with_capacity(10);
    fields.push(("detection", ObjectField::Fixed("detection")));
    fields
        .extend(["h", "region_id", "roi_type", "w", "x", "y"].map(|k| (k, ObjectField::Fixed(k))));
    if object.tracking_id.is_some() {
        fields.push(("id", ObjectField::Fixed("id")));
    }
    if object.parent_id.is_some() {
        fields.push(("parent_id", ObjectField::Fixed("parent_id")));
    }
    fields.extend(
        object
            .classifications
            .iter()
            .filter(|c| !OBJECT_KEYS.contains(&c.name.as_str()))
            .map(|c| (c.name.as_str(), ObjectField::Classification(c))),
    );
    fields.sort_by(|a, b| a.0.cmp(b.0));

    out.push(b'{');
    let mut first = true;
    for (name, field) in fields {
        key(out, &mut first, name);
        match field {
            ObjectField::Classification(c) => write_classification(out, c),
            ObjectField::Fixed("detection") => write_detection(out, object, ctx),
            ObjectField::Fixed("h") => write_int(out, object.rect.h),
            ObjectField::Fixed("id") => write_int(out, object.tracking_id.unwrap_or_default()),
            ObjectField::Fixed("parent_id") => write_int(out, object.parent_id.unwrap_or(-1)),
            ObjectField::Fixed("region_id") => write_int(out, object.region_id),
            ObjectField::Fixed("roi_type") => write_str(out, &object.label),
            ObjectField::Fixed("w") => write_int(out, object.rect.w),
            ObjectField::Fixed("x") => write_int(out, object.rect.x),
            ObjectField::Fixed(_) => write_int(out, object.rect.y),
        }
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

fn key(out: &mut Vec<u8>, first: &mut bool, name: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    write_str(out, name);
    out.push(b':');
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail, and a str always serializes.
    serde_json::to_writer(&mut *out, s).expect("string serializes");
}

fn write_float(out: &mut Vec<u8>, v: f64) {
    // Non-finite values never reach here (see `valid_confidence`, `BoundingBox::from_rect`),
    // and serde_json would write them as `null` rather than break the document.
    serde_json::to_writer(&mut *out, &v).expect("float serializes");
}

fn write_int(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    write!(out, "{v}").expect("writing to a Vec cannot fail");
}

/// One line of a recorded gvametaconvert JSON-lines file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordedFrame {
    pub objects: Vec<Object>,
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

    let objects = match frame.get("objects") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse_object(item, i, resolution))
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("objects: expected an array, got {}", kind(other))),
    };

    Ok(RecordedFrame {
        objects,
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
            Ok(Detection {
                confidence: optional_confidence(d, &dpath)?,
                label_id: optional_i32(d, "label_id", &dpath)?,
                bounding_box,
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

fn kind(v: &Value) -> &'static str {
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

fn optional_i32(o: &Map<String, Value>, name: &str, parent: &str) -> Result<Option<i32>, String> {
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

fn optional_confidence(o: &Map<String, Value>, parent: &str) -> Result<Option<f64>, String> {
    o.get("confidence")
        .map(|v| {
            v.as_f64()
                .and_then(|c| valid_confidence(c).ok())
                .ok_or_else(|| {
                    format!("{parent}.confidence: expected a number between 0 and 1, got {v}")
                })
        })
        .transpose()
}
