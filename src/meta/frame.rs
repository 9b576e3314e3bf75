// SPDX-License-Identifier: MPL-2.0

//! Results about the whole frame rather than one object, and the JSON DL Streamer's
//! `gvametaconvert` (2025.2) writes for them.
//!
//! - A [`Tensor`] is one `GstGVATensorMeta` (the [`super::gva_tensor`] module): what
//!   `gvainference` and `gvaclassify inference-region=full-frame` attach, a structure named
//!   `inference_layer_name:<layer>` or `classification_layer_name:<layer>` (or the model's
//!   `attribute_name`), read field by field as DL Streamer's `GVA::Tensor` reads it.
//! - With the `analytics` feature, a `ClsMtd` that no ODMtd contains or relates to (and that
//!   is part of none) is a frame-level [`Classification`], converted as DL Streamer 2026.1
//!   converts it: its labels joined by spaces, its highest confidence.
//!
//! In the JSON, frame-level results make one more entry of `objects`, after the objects: the
//! full-frame object `{"h":H,"w":W,"x":0,"y":0}` with one classification per frame-level
//! ClsMtd (`classification`, `classification_2`, ...) and per tensor that has a `label` or a
//! `label_id` (keyed by its `attribute_name`, else its structure name, as `{confidence,
//! label, label_id, model{name}}`). Keys are written in byte order and, as in
//! `gvametaconvert`, the first of two results with the same key wins. With
//! `add-tensor-data`, the full-frame object also lists every frame-level result under
//! `tensors`, and the top level lists the tensors without a `type` (raw `gvainference`
//! outputs), each entry with its `data`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::json::{key, write_float, write_int, write_str, FrameContext};
use super::Classification;

/// DL Streamer's `GVAPrecision` codes, by name (`gva_tensor_meta.h`); any other code, and
/// no `precision` field, is `UNSPECIFIED`.
const PRECISIONS: [(i32, &str); 18] = [
    (10, "FP32"),
    (11, "FP16"),
    (12, "BF16"),
    (13, "FP64"),
    (20, "Q78"),
    (30, "I16"),
    (39, "U4"),
    (40, "U8"),
    (49, "I4"),
    (50, "I8"),
    (60, "U16"),
    (70, "I32"),
    (74, "U32"),
    (72, "I64"),
    (73, "U64"),
    (71, "BIN"),
    (41, "BOOL"),
    (80, "CUSTOM"),
];
const UNSPECIFIED: &str = "UNSPECIFIED";
const PRECISION_U8: i32 = 40;
const PRECISION_I64: i32 = 72;

/// DL Streamer's `GVALayout` codes, by name; any other code, and no `layout` field, is `ANY`.
const LAYOUTS: [(i32, &str); 3] = [(1, "NCHW"), (2, "NHWC"), (193, "NC")];
const ANY: &str = "ANY";

/// The `type` DL Streamer's classification converters give their results.
pub const CLASSIFICATION_RESULT: &str = "classification_result";

/// Keys of the full-frame object other than its classifications.
const FULL_FRAME_KEYS: [&str; 5] = ["h", "tensors", "w", "x", "y"];
/// Keys every region has and the full-frame object has not: a classification named like one
/// of them is left out, or the object would no longer read as the full-frame object.
const REGION_KEYS: [&str; 3] = ["detection", "region_id", "roi_type"];

/// One `GstGVATensorMeta`: the fields of its structure that `gvametaconvert` reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tensor {
    /// The structure's name: `inference_layer_name:<layer>`,
    /// `classification_layer_name:<layer>`, or the model's `attribute_name`.
    pub name: String,
    pub attribute_name: Option<String>,
    /// The `type` field (`classification_result` for classification results); tensors
    /// without one are raw outputs.
    pub kind: Option<String>,
    /// `GVAPrecision` and `GVALayout` codes.
    pub precision: Option<i32>,
    pub layout: Option<i32>,
    /// `Some` whenever the structure has a `dims` field (empty when it is not an array).
    pub dims: Option<Vec<u32>>,
    pub model_name: Option<String>,
    pub layer_name: Option<String>,
    pub format: Option<String>,
    pub label: Option<String>,
    pub label_id: Option<i32>,
    /// Always finite and within 0..1 (see [`super::valid_confidence`]).
    pub confidence: Option<f64>,
    /// The bytes of `data_buffer`, read only when the tensor data is published.
    pub data: Option<Vec<u8>>,
}

impl Tensor {
    /// The JSON key of this tensor's classification in the full-frame object.
    pub fn key(&self) -> &str {
        self.attribute_name.as_deref().unwrap_or(&self.name)
    }

    /// The classification result this tensor carries, when it has a `label` or a
    /// `label_id`, as `gvametaconvert` takes it (an empty label when it has none).
    pub fn classification(&self) -> Option<Classification> {
        (self.label.is_some() || self.label_id.is_some()).then(|| Classification {
            name: self.key().to_owned(),
            label: self.label.clone().unwrap_or_default(),
            confidence: self.confidence,
            label_id: self.label_id,
            model_name: self.model_name.clone().filter(|m| !m.is_empty()),
        })
    }

    fn precision_name(&self) -> &'static str {
        name_of(&PRECISIONS, self.precision).unwrap_or(UNSPECIFIED)
    }

    fn layout_name(&self) -> &'static str {
        name_of(&LAYOUTS, self.layout).unwrap_or(ANY)
    }
}

fn name_of(table: &[(i32, &'static str)], code: Option<i32>) -> Option<&'static str> {
    let code = code?;
    table
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, name)| *name)
}

fn code_of(table: &[(i32, &'static str)], name: &str) -> Option<i32> {
    table.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}

/// Results about the whole frame read from one buffer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FrameResults {
    /// The `GstGVATensorMeta`s, in the order they were attached.
    pub tensors: Vec<Tensor>,
    /// Frame-level classifications of the relation meta (ClsMtd with no ODMtd), named
    /// `classification`, `classification_2`, ...
    pub classifications: Vec<Classification>,
}

impl FrameResults {
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty() && self.classifications.is_empty()
    }
}

/// One key of the full-frame object.
enum Entry<'a> {
    Tensors,
    Int(u32),
    Classification(Cow<'a, Classification>),
}

/// Writes the full-frame object of `frame` (which is not empty).
pub(super) fn write_full_frame_object(out: &mut Vec<u8>, frame: &FrameResults, ctx: &FrameContext) {
    let mut entries: Vec<(&str, Entry)> = Vec::new();
    if ctx.add_tensor_data {
        entries.push(("tensors", Entry::Tensors));
    }
    entries.extend([
        ("x", Entry::Int(0)),
        ("y", Entry::Int(0)),
        ("w", Entry::Int(ctx.width)),
        ("h", Entry::Int(ctx.height)),
    ]);
    // DL Streamer 2026.1 reads the relation meta's results before the tensor metas.
    for c in &frame.classifications {
        entries.push((&c.name, Entry::Classification(Cow::Borrowed(c))));
    }
    for tensor in &frame.tensors {
        if let Some(c) = tensor.classification() {
            entries.push((tensor.key(), Entry::Classification(Cow::Owned(c))));
        }
    }
    // gvametaconvert's objects are std::maps: keys in byte order, the first of a key kept.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|(key, _)| !REGION_KEYS.contains(key) && seen.insert(*key));
    entries.sort_by(|a, b| a.0.cmp(b.0));

    out.push(b'{');
    for (i, (name, entry)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        match entry {
            Entry::Tensors => write_full_frame_tensors(out, frame),
            Entry::Int(v) => write_int(out, *v),
            Entry::Classification(c) => write_classification(out, c),
        }
    }
    out.push(b'}');
}

/// `confidence`, `label` (when there is one) and `label_id` of a frame-level result.
fn write_result_fields(out: &mut Vec<u8>, first: &mut bool, c: &Classification) {
    if let Some(confidence) = c.confidence {
        key(out, first, "confidence");
        write_float(out, confidence);
    }
    if !c.label.is_empty() {
        key(out, first, "label");
        write_str(out, &c.label);
    }
    if let Some(label_id) = c.label_id {
        key(out, first, "label_id");
        write_int(out, label_id);
    }
}

/// A frame-level classification: `label` only when there is one, `model` only with a name.
fn write_classification(out: &mut Vec<u8>, c: &Classification) {
    out.push(b'{');
    let first = &mut true;
    write_result_fields(out, first, c);
    if let Some(model_name) = &c.model_name {
        key(out, first, "model");
        out.extend_from_slice(b"{\"name\":");
        write_str(out, model_name);
        out.push(b'}');
    }
    out.push(b'}');
}

/// The full-frame object's `tensors`: every frame-level result.
fn write_full_frame_tensors(out: &mut Vec<u8>, frame: &FrameResults) {
    out.push(b'[');
    let mut first = true;
    for c in &frame.classifications {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_classification_tensor(out, c);
    }
    for tensor in &frame.tensors {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_tensor(out, tensor);
    }
    out.push(b']');
}

/// A frame-level ClsMtd as an entry of `tensors`, as DL Streamer 2026.1 writes the structure
/// it converts it into (no model or layer name, so its `type` is written).
fn write_classification_tensor(out: &mut Vec<u8>, c: &Classification) {
    out.push(b'{');
    let first = &mut true;
    write_result_fields(out, first, c);
    key(out, first, "layout");
    write_str(out, ANY);
    key(out, first, "name");
    write_str(out, "classification");
    key(out, first, "precision");
    write_str(out, UNSPECIFIED);
    key(out, first, "type");
    write_str(out, CLASSIFICATION_RESULT);
    out.push(b'}');
}

/// Whether the top level gets a `tensors` array: with the tensor data, when some tensor has
/// no `type`.
pub(super) fn has_top_level_tensors(frame: &FrameResults, ctx: &FrameContext) -> bool {
    ctx.add_tensor_data && frame.tensors.iter().any(|t| t.kind.is_none())
}

/// The top-level `tensors`: the tensors without a `type`.
pub(super) fn write_top_level_tensors(out: &mut Vec<u8>, frame: &FrameResults) {
    out.push(b'[');
    let mut first = true;
    for tensor in frame.tensors.iter().filter(|t| t.kind.is_none()) {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        write_tensor(out, tensor);
    }
    out.push(b']');
}

/// One entry of a `tensors` array, as `gvametaconvert`'s `convert_tensor` writes it:
/// `precision` and `layout` always (as names), the other fields when the structure has
/// them, `data` decoded by precision (U8 and I64 as integers, everything else read as
/// 32-bit floats, as DL Streamer reads it).
fn write_tensor(out: &mut Vec<u8>, t: &Tensor) {
    let first = &mut true;
    out.push(b'{');
    if let Some(confidence) = t.confidence {
        key(out, first, "confidence");
        write_float(out, confidence);
    }
    if let Some(data) = t.data.as_deref().filter(|data| !data.is_empty()) {
        let mut values = Vec::new();
        decode_data(t.precision, data, &mut values);
        if !values.is_empty() {
            key(out, first, "data");
            out.push(b'[');
            for (i, value) in values.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match value {
                    Number::U8(v) => write_int(out, *v),
                    Number::I64(v) => write_int(out, *v),
                    Number::F32(v) => write_float(out, f64::from(*v)),
                }
            }
            out.push(b']');
        }
    }
    if let Some(dims) = &t.dims {
        key(out, first, "dims");
        if dims.is_empty() {
            // An empty array is a null in DL Streamer's JSON.
            out.extend_from_slice(b"null");
        } else {
            out.push(b'[');
            for (i, d) in dims.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_int(out, *d);
            }
            out.push(b']');
        }
    }
    if let Some(format) = t.format.as_deref().filter(|s| !s.is_empty()) {
        key(out, first, "format");
        write_str(out, format);
    }
    if t.name != "detection" {
        if let Some(label) = t.label.as_deref().filter(|s| !s.is_empty()) {
            key(out, first, "label");
            write_str(out, label);
        }
    }
    if let Some(label_id) = t.label_id {
        key(out, first, "label_id");
        write_int(out, label_id);
    }
    if let Some(layer_name) = t.layer_name.as_deref().filter(|s| !s.is_empty()) {
        key(out, first, "layer_name");
        write_str(out, layer_name);
    }
    key(out, first, "layout");
    write_str(out, t.layout_name());
    if let Some(model_name) = t.model_name.as_deref().filter(|s| !s.is_empty()) {
        key(out, first, "model_name");
        write_str(out, model_name);
    }
    if !t.name.is_empty() {
        key(out, first, "name");
        write_str(out, &t.name);
    }
    key(out, first, "precision");
    write_str(out, t.precision_name());
    out.push(b'}');
}

/// One value of a tensor's data.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    U8(u8),
    I64(i64),
    F32(f32),
}

/// The values in `data`, read as DL Streamer reads them: whole elements only, in the
/// machine's byte order.
fn decode_data(precision: Option<i32>, data: &[u8], values: &mut Vec<Number>) {
    match precision {
        Some(PRECISION_U8) => values.extend(data.iter().map(|b| Number::U8(*b))),
        Some(PRECISION_I64) => values.extend(
            data.chunks_exact(8)
                .map(|c| Number::I64(i64::from_ne_bytes(c.try_into().expect("8 bytes")))),
        ),
        _ => values.extend(
            data.chunks_exact(4)
                .map(|c| Number::F32(f32::from_ne_bytes(c.try_into().expect("4 bytes")))),
        ),
    }
}

/// Whether an entry of a gvametaconvert JSON's `objects` is the full-frame object: at `x` 0,
/// `y` 0, with none of the `detection`, `roi_type` and `region_id` every region has.
pub fn is_full_frame_object(object: &Map<String, Value>) -> bool {
    let zero = |k: &str| object.get(k).and_then(Value::as_u64) == Some(0);
    zero("x") && zero("y") && REGION_KEYS.iter().all(|k| !object.contains_key(*k))
}

/// Reads the frame-level results of a recorded line back into the tensors `gvainference` and
/// `gvaclassify` would have attached: `full_frame` are the line's full-frame objects (with
/// their paths, for errors), `top` its top-level `tensors`.
///
/// - A full-frame object's own `tensors` (written with `add-tensor-data`) are every frame
///   tensor, in order; one not also in the top-level `tensors` had a `type`, and gets
///   `classification_result`.
/// - Without them, the top-level `tensors` are the raw tensors, and each classification of
///   the full-frame object not carried by one of them becomes a classification result.
/// - A full-frame object with nothing else (a raw tensor recorded without its data) becomes
///   one empty tensor, which is what brings the full-frame object back.
pub(super) fn parse_recorded(
    full_frame: &[(&Map<String, Value>, String)],
    top: Option<&Value>,
) -> Result<FrameResults, String> {
    let top: &[Value] = match top {
        None => &[],
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(format!(
                "tensors: expected an array, got {}",
                super::json::kind(other)
            ))
        }
    };
    let mut tensors = Vec::new();
    let mut raw_taken = false;
    for (object, path) in full_frame {
        match object.get("tensors") {
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let mut tensor = parse_tensor(item, &format!("{path}.tensors[{i}]"))?;
                    if tensor.kind.is_none() && !top.contains(item) {
                        tensor.kind = Some(CLASSIFICATION_RESULT.to_owned());
                    }
                    tensors.push(tensor);
                }
            }
            Some(other) => {
                return Err(format!(
                    "{path}.tensors: expected an array, got {}",
                    super::json::kind(other)
                ))
            }
            None if !raw_taken => {
                for (i, item) in top.iter().enumerate() {
                    tensors.push(parse_tensor(item, &format!("tensors[{i}]"))?);
                }
                raw_taken = true;
            }
            None => {}
        }
        for (name, value) in object.iter() {
            if FULL_FRAME_KEYS.contains(&name.as_str()) {
                continue;
            }
            let Some(c) = value.as_object() else { continue };
            if tensors.iter().any(|t| t.key() == name) {
                continue;
            }
            let cpath = format!("{path}.{name}");
            let label = optional_string(c, "label", &cpath)?;
            let label_id = super::json::optional_i32(c, "label_id", &cpath)?;
            if label.is_none() && label_id.is_none() {
                continue;
            }
            let model_name = match c.get("model") {
                None => None,
                Some(m) => match m.as_object().and_then(|m| m.get("name")) {
                    Some(Value::String(s)) => Some(s.clone()).filter(|s| !s.is_empty()),
                    _ => return Err(format!("{cpath}.model: expected {{\"name\": a string}}")),
                },
            };
            tensors.push(Tensor {
                name: name.clone(),
                kind: Some(CLASSIFICATION_RESULT.to_owned()),
                label,
                label_id,
                confidence: super::json::optional_confidence(c, &cpath)?,
                model_name,
                ..Tensor::default()
            });
        }
        if tensors.is_empty() {
            // DL Streamer's empty tensor meta.
            tensors.push(Tensor {
                name: "meta".into(),
                ..Tensor::default()
            });
        }
    }
    if full_frame.is_empty() {
        for (i, item) in top.iter().enumerate() {
            tensors.push(parse_tensor(item, &format!("tensors[{i}]"))?);
        }
    }
    Ok(FrameResults {
        tensors,
        classifications: Vec::new(),
    })
}

fn optional_string(
    o: &Map<String, Value>,
    name: &str,
    parent: &str,
) -> Result<Option<String>, String> {
    match o.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{parent}.{name}: expected a string, got {}",
            super::json::kind(other)
        )),
    }
}

/// One recorded entry of a `tensors` array, back into the tensor it was written from.
fn parse_tensor(value: &Value, path: &str) -> Result<Tensor, String> {
    let o = value.as_object().ok_or_else(|| {
        format!(
            "{path}: expected an object, got {}",
            super::json::kind(value)
        )
    })?;
    let precision =
        match optional_string(o, "precision", path)? {
            None => None,
            Some(name) if name == UNSPECIFIED => None,
            Some(name) => Some(code_of(&PRECISIONS, &name).ok_or_else(|| {
                format!("{path}.precision: {name:?} is not a DL Streamer precision")
            })?),
        };
    let layout = match optional_string(o, "layout", path)? {
        None => None,
        Some(name) if name == ANY => None,
        Some(name) => Some(
            code_of(&LAYOUTS, &name)
                .ok_or_else(|| format!("{path}.layout: {name:?} is not a DL Streamer layout"))?,
        ),
    };
    let dims = match o.get("dims") {
        None => None,
        Some(Value::Null) => Some(Vec::new()),
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|d| d.as_u64().and_then(|d| u32::try_from(d).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| format!("{path}.dims: expected non-negative 32-bit integers"))?,
        ),
        Some(other) => {
            return Err(format!(
                "{path}.dims: expected an array, got {}",
                super::json::kind(other)
            ))
        }
    };
    let data = match o.get("data") {
        None => None,
        Some(Value::Array(items)) => Some(encode_data(precision, items, path)?),
        Some(other) => {
            return Err(format!(
                "{path}.data: expected an array, got {}",
                super::json::kind(other)
            ))
        }
    };
    let name = optional_string(o, "name", path)?.unwrap_or_default();
    // A detection structure's label is the region's, never written in its tensor.
    let label = match name.as_str() {
        "detection" => None,
        _ => optional_string(o, "label", path)?,
    };
    Ok(Tensor {
        name,
        attribute_name: None,
        kind: optional_string(o, "type", path)?,
        precision,
        layout,
        dims,
        model_name: optional_string(o, "model_name", path)?,
        layer_name: optional_string(o, "layer_name", path)?,
        format: optional_string(o, "format", path)?,
        label,
        label_id: super::json::optional_i32(o, "label_id", path)?,
        confidence: super::json::optional_confidence(o, path)?,
        data,
    })
}

/// Recorded data values back into the bytes of `data_buffer`, by precision.
fn encode_data(precision: Option<i32>, items: &[Value], path: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let bad = |what: &str| format!("{path}.data[{i}]: expected {what}, got {item}");
        match precision {
            Some(PRECISION_U8) => {
                let v = item
                    .as_u64()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| bad("an integer from 0 to 255"))?;
                bytes.push(v);
            }
            Some(PRECISION_I64) => {
                let v = item.as_i64().ok_or_else(|| bad("a 64-bit integer"))?;
                bytes.extend_from_slice(&v.to_ne_bytes());
            }
            _ => {
                // A value that is not finite is written as null.
                let v = match item {
                    Value::Null => f32::NAN,
                    _ => item
                        .as_f64()
                        .filter(|v| v.abs() <= f64::from(f32::MAX))
                        .ok_or_else(|| bad("a 32-bit float"))? as f32,
                };
                bytes.extend_from_slice(&v.to_ne_bytes());
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    /// `gvainference`'s output of a layer `prob` [1, 4], FP32, NC.
    fn raw() -> Tensor {
        Tensor {
            name: "inference_layer_name:prob".into(),
            precision: Some(10),
            layout: Some(193),
            dims: Some(vec![1, 4]),
            model_name: Some("resnet-50".into()),
            layer_name: Some("prob".into()),
            data: Some(f32_bytes(&[0.25, -1.5, 3.0, 0.1])),
            ..Tensor::default()
        }
    }

    /// `gvaclassify inference-region=full-frame` with a model-proc `attribute_name`.
    fn scene() -> Tensor {
        Tensor {
            name: "scene".into(),
            attribute_name: Some("scene".into()),
            kind: Some(CLASSIFICATION_RESULT.into()),
            precision: Some(10),
            layout: Some(193),
            dims: Some(vec![1, 2]),
            model_name: Some("scene-net".into()),
            layer_name: Some("prob".into()),
            label: Some("indoor".into()),
            label_id: Some(0),
            confidence: Some(0.875),
            data: Some(f32_bytes(&[0.875, 0.125])),
            ..Tensor::default()
        }
    }

    fn ctx(add_tensor_data: bool) -> FrameContext<'static> {
        FrameContext {
            width: 640,
            height: 480,
            add_tensor_data,
            ..FrameContext::default()
        }
    }

    fn full_frame(frame: &FrameResults, add_tensor_data: bool) -> String {
        let mut out = Vec::new();
        write_full_frame_object(&mut out, frame, &ctx(add_tensor_data));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_full_frame_object_as_gvametaconvert_writes_it() {
        let frame = FrameResults {
            tensors: vec![raw(), scene()],
            classifications: Vec::new(),
        };
        assert_eq!(
            full_frame(&frame, false),
            concat!(
                r#"{"h":480,"scene":{"confidence":0.875,"label":"indoor","label_id":0,"#,
                r#""model":{"name":"scene-net"}},"w":640,"x":0,"y":0}"#
            )
        );
        assert_eq!(
            full_frame(&frame, true),
            concat!(
                r#"{"h":480,"scene":{"confidence":0.875,"label":"indoor","label_id":0,"#,
                r#""model":{"name":"scene-net"}},"tensors":[{"data":[0.25,-1.5,3.0,"#,
                r#"0.10000000149011612],"dims":[1,4],"layer_name":"prob","layout":"NC","#,
                r#""model_name":"resnet-50","name":"inference_layer_name:prob","#,
                r#""precision":"FP32"},{"confidence":0.875,"data":[0.875,0.125],"dims":[1,2],"#,
                r#""label":"indoor","label_id":0,"layer_name":"prob","layout":"NC","#,
                r#""model_name":"scene-net","name":"scene","precision":"FP32"}],"#,
                r#""w":640,"x":0,"y":0}"#
            )
        );
        // Only the raw tensor (no `type`) goes to the top level.
        let mut out = Vec::new();
        assert!(has_top_level_tensors(&frame, &ctx(true)));
        assert!(!has_top_level_tensors(&frame, &ctx(false)));
        write_top_level_tensors(&mut out, &frame);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1);
        assert_eq!(v[0]["name"], "inference_layer_name:prob");
    }

    #[test]
    fn relation_meta_classifications_come_first_and_the_first_of_a_key_wins() {
        let frame = FrameResults {
            tensors: vec![
                Tensor {
                    name: "x".into(),
                    label: Some("shadowed".into()),
                    ..Tensor::default()
                },
                Tensor {
                    name: "classification_layer_name:out".into(),
                    label_id: Some(3),
                    ..Tensor::default()
                },
            ],
            classifications: vec![Classification {
                name: "classification".into(),
                label: "indoor office".into(),
                confidence: Some(0.5),
                ..Classification::default()
            }],
        };
        assert_eq!(
            full_frame(&frame, false),
            concat!(
                r#"{"classification":{"confidence":0.5,"label":"indoor office"},"#,
                r#""classification_layer_name:out":{"label_id":3},"h":480,"w":640,"x":0,"y":0}"#
            )
        );
        let with_data: Value = serde_json::from_str(&full_frame(&frame, true)).unwrap();
        assert_eq!(
            with_data["tensors"][0],
            serde_json::json!({"confidence": 0.5, "label": "indoor office", "layout": "ANY",
                "name": "classification", "precision": "UNSPECIFIED", "type": "classification_result"})
        );
        assert_eq!(
            with_data["tensors"][2],
            serde_json::json!({"label_id": 3, "layout": "ANY",
                "name": "classification_layer_name:out", "precision": "UNSPECIFIED"})
        );
    }

    #[test]
    fn data_is_decoded_by_precision() {
        let mut values = Vec::new();
        decode_data(Some(PRECISION_U8), &[1, 255], &mut values);
        assert_eq!(values, [Number::U8(1), Number::U8(255)]);
        values.clear();
        let bytes: Vec<u8> = [-2i64, 7].iter().flat_map(|v| v.to_ne_bytes()).collect();
        decode_data(Some(PRECISION_I64), &bytes, &mut values);
        assert_eq!(values, [Number::I64(-2), Number::I64(7)]);
        values.clear();
        // FP16 and everything else is read as 32-bit floats; a partial element is left out.
        decode_data(Some(11), &[0, 0, 128, 63, 1], &mut values);
        assert_eq!(values, [Number::F32(1.0)]);
    }

    #[test]
    fn recorded_frame_results_read_back_to_what_was_written() {
        let frame = FrameResults {
            tensors: vec![raw(), scene()],
            classifications: Vec::new(),
        };
        let mut object = Vec::new();
        write_full_frame_object(&mut object, &frame, &ctx(true));
        let mut top = Vec::new();
        write_top_level_tensors(&mut top, &frame);
        let object: Map<String, Value> = serde_json::from_slice(&object).unwrap();
        let top: Value = serde_json::from_slice(&top).unwrap();
        let read = parse_recorded(&[(&object, "objects[0]".into())], Some(&top)).unwrap();
        // attribute_name is not in the JSON; the structure's name is the same.
        let mut expected = frame.clone();
        expected.tensors[1].attribute_name = None;
        expected.tensors[0].data = Some(f32_bytes(&[0.25, -1.5, 3.0, 0.1]));
        assert_eq!(read, expected);

        // Without the data: the classification, and an empty tensor for a bare object.
        let mut object = Vec::new();
        write_full_frame_object(&mut object, &frame, &ctx(false));
        let object: Map<String, Value> = serde_json::from_slice(&object).unwrap();
        let read = parse_recorded(&[(&object, "objects[0]".into())], None).unwrap();
        assert_eq!(read.tensors.len(), 1);
        assert_eq!(read.tensors[0].classification(), scene().classification());
        let bare: Map<String, Value> =
            serde_json::from_str(r#"{"h":480,"w":640,"x":0,"y":0}"#).unwrap();
        let read = parse_recorded(&[(&bare, "objects[0]".into())], None).unwrap();
        assert_eq!(
            read.tensors,
            [Tensor {
                name: "meta".into(),
                ..Tensor::default()
            }]
        );
    }

    #[test]
    fn recorded_tensor_errors_name_the_field() {
        let cases = [
            (r#"{"tensors":{}}"#, "objects[0].tensors: expected an array"),
            (
                r#"{"tensors":[{"precision":"FP99"}]}"#,
                "tensors[0].precision",
            ),
            (r#"{"tensors":[{"dims":[-1]}]}"#, "tensors[0].dims"),
            (
                r#"{"tensors":[{"precision":"U8","data":[256]}]}"#,
                "tensors[0].data[0]",
            ),
            (
                r#"{"scene":{"label":"a","confidence":2}}"#,
                "objects[0].scene.confidence",
            ),
        ];
        for (text, expected) in cases {
            let object: Map<String, Value> = serde_json::from_str(text).unwrap();
            let err = parse_recorded(&[(&object, "objects[0]".into())], None).unwrap_err();
            assert!(
                err.contains(expected),
                "{text}: {err:?} should contain {expected:?}"
            );
        }
    }
}
