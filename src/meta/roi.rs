// SPDX-License-Identifier: MPL-2.0

//! Objects carried as `GstVideoRegionOfInterestMeta`, the way DL Streamer's `gvadetect`,
//! `gvatrack` and `gvaclassify` (and other producers) attach them.
//!
//! One meta per object: the label is the ROI type, the pixel box is the ROI rectangle, and
//! the detector output rides along as param structures:
//! - `detection`: `confidence`, `label_id`, normalized `x_min`/`x_max`/`y_min`/`y_max`, and
//!   the `rotation` of an oriented box (radians; `gvadetect` writes 0 for the others);
//! - `object_id`: the tracking `id`;
//! - any other structure with a string `label`: a classification result.

use std::ffi::CStr;
use std::ops::ControlFlow;

use gst::buffer::BufferMetaForeachAction;
use gst::glib;
use gst::glib::translate::{IntoGlib, ToGlibPtr};
use gst::glib::value::FromValue;
use gst_video::VideoRegionOfInterestMeta;
use once_cell::sync::Lazy;

use super::{
    valid_confidence, valid_rotation, BoundingBox, Classification, Detection, Object, Objects,
    Rect, CAT,
};

const DETECTION: &str = "detection";
const OBJECT_ID: &str = "object_id";

/// Reads every object on `buffer`, in the order the producer attached them.
pub fn read_objects(buffer: &gst::BufferRef) -> Objects {
    // Counted first: a walk of the meta list costs less than growing the vector.
    let mut out = Objects {
        objects: Vec::with_capacity(object_count(buffer)),
        ..Objects::default()
    };
    for meta in buffer.iter_meta::<VideoRegionOfInterestMeta>() {
        let object = read_object(&meta, &mut out.invalid_confidences);
        out.objects.push(object);
    }
    gst::trace!(
        CAT,
        "Read {} objects from buffer {:?}",
        out.objects.len(),
        buffer.pts()
    );
    out
}

/// Removes from `buffer` every object for which `keep` returns false. Returns how many were
/// removed and how many invalid confidences were seen.
pub fn retain_objects(
    buffer: &mut gst::BufferRef,
    mut keep: impl FnMut(&Object) -> bool,
) -> (u32, u32) {
    let mut removed = 0;
    let mut invalid = 0;
    buffer.foreach_meta_mut(|mut meta| {
        let Some(roi) = meta.downcast_ref::<VideoRegionOfInterestMeta>() else {
            return ControlFlow::Continue(BufferMetaForeachAction::Keep);
        };
        let object = read_object(roi, &mut invalid);
        if keep(&object) {
            ControlFlow::Continue(BufferMetaForeachAction::Keep)
        } else {
            removed += 1;
            ControlFlow::Continue(BufferMetaForeachAction::Remove)
        }
    });
    (removed, invalid)
}

/// Removes from the objects on `buffer` every classification result for which `keep`
/// returns false; the objects themselves stay. Returns how many results were removed and
/// how many invalid confidences were seen.
pub fn retain_classifications(
    buffer: &mut gst::BufferRef,
    mut keep: impl FnMut(&Object, &Classification) -> bool,
) -> (u32, u32) {
    let mut removed = 0;
    let mut invalid = 0;
    for mut roi in buffer.iter_meta_mut::<VideoRegionOfInterestMeta>() {
        let object = read_object(&roi, &mut invalid);
        let doomed: Vec<&str> = object
            .classifications
            .iter()
            .filter(|c| !keep(&object, c))
            .map(|c| c.name.as_str())
            .collect();
        if doomed.is_empty() {
            continue;
        }
        removed += retain_params(&mut roi, |s| !doomed.contains(&s.name().as_str()));
    }
    (removed, invalid)
}

/// Attaches `objects` to `buffer` as ROI metas laid out exactly as DL Streamer lays them out.
/// `width`/`height` is the frame size, used to derive the normalized detection box from the
/// pixel rectangle when the object has none.
pub fn attach_objects(buffer: &mut gst::BufferRef, objects: &[Object], width: u32, height: u32) {
    for object in objects {
        let rect = object.rect;
        let mut roi =
            VideoRegionOfInterestMeta::add(buffer, &object.label, (rect.x, rect.y, rect.w, rect.h));
        roi.set_id(object.region_id);
        roi.set_parent_id(object.parent_id.unwrap_or(-1));

        if let Some(detection) = &object.detection {
            let bbox = detection
                .bounding_box
                .or_else(|| BoundingBox::from_rect(rect, width, height))
                .unwrap_or_default();
            let mut s = gst::Structure::builder(DETECTION)
                .field("x_min", bbox.x_min)
                .field("x_max", bbox.x_max)
                .field("y_min", bbox.y_min)
                .field("y_max", bbox.y_max);
            if let Some(confidence) = detection.confidence {
                s = s.field("confidence", confidence);
            }
            if let Some(label_id) = detection.label_id {
                s = s.field("label_id", label_id);
            }
            if let Some(rotation) = detection.rotation {
                s = s.field("rotation", rotation);
            }
            roi.add_param(s.field("label", object.label.as_str()).build());
        }
        if let Some(id) = object.tracking_id {
            // DL Streamer stores the tracking id as a plain int.
            let id = i32::try_from(id).unwrap_or(i32::MAX);
            roi.add_param(gst::Structure::builder(OBJECT_ID).field("id", id).build());
        }
        for c in &object.classifications {
            let mut s = gst::Structure::builder(c.name.as_str())
                .field("label", c.label.as_str())
                .field("type", "classification_result");
            if let Some(confidence) = c.confidence {
                s = s.field("confidence", confidence);
            }
            if let Some(label_id) = c.label_id {
                s = s.field("label_id", label_id);
            }
            if let Some(model_name) = &c.model_name {
                s = s.field("model_name", model_name.as_str());
            }
            roi.add_param(s.build());
        }
    }
}

pub(super) fn read_object(roi: &VideoRegionOfInterestMeta, invalid: &mut u32) -> Object {
    let (x, y, w, h) = roi.rect();
    let mut object = Object {
        label: roi_type(roi),
        rect: Rect { x, y, w, h },
        region_id: roi.id(),
        parent_id: Some(roi.parent_id()).filter(|id| *id >= 0),
        ..Object::default()
    };

    let fields = &*FIELDS;
    for param in roi.params() {
        let name = param.name().as_str();
        if name == DETECTION {
            let bounding_box = match (
                number(param, fields.x_min),
                number(param, fields.y_min),
                number(param, fields.x_max),
                number(param, fields.y_max),
            ) {
                (Some(x_min), Some(y_min), Some(x_max), Some(y_max)) => Some(BoundingBox {
                    x_min,
                    y_min,
                    x_max,
                    y_max,
                }),
                _ => None,
            };
            object.detection = Some(Detection {
                confidence: confidence(param, fields.confidence, invalid),
                label_id: integer(param, fields.label_id).and_then(|v| i32::try_from(v).ok()),
                bounding_box,
                rotation: number(param, fields.rotation).and_then(valid_rotation),
            });
        } else if name == OBJECT_ID {
            object.tracking_id = integer(param, fields.id);
        } else if let Some(label) = string(param, fields.label) {
            object.classifications.push(Classification {
                name: name.to_owned(),
                label,
                confidence: confidence(param, fields.confidence, invalid),
                label_id: integer(param, fields.label_id).and_then(|v| i32::try_from(v).ok()),
                model_name: string(param, fields.model_name),
            });
        }
    }
    object
}

/// The label of an ROI. Producers write it as a C string quark, which nothing forces to be
/// UTF-8: invalid bytes become U+FFFD rather than reaching the JSON.
fn roi_type(roi: &VideoRegionOfInterestMeta) -> String {
    // SAFETY: `VideoRegionOfInterestMeta` is a transparent wrapper of the C struct, and
    // `g_quark_to_string` returns a NUL-terminated string that lives as long as the process.
    unsafe {
        let meta = roi as *const VideoRegionOfInterestMeta
            as *const gst_video::ffi::GstVideoRegionOfInterestMeta;
        let text = glib::ffi::g_quark_to_string((*meta).roi_type);
        if text.is_null() {
            return String::new();
        }
        owned_lossy(CStr::from_ptr(text))
    }
}

/// The field names read from every object, as quarks: looking a field up by its
/// name first hashes the name under GLib's global quark lock.
struct Fields {
    x_min: glib::Quark,
    y_min: glib::Quark,
    x_max: glib::Quark,
    y_max: glib::Quark,
    confidence: glib::Quark,
    label_id: glib::Quark,
    label: glib::Quark,
    id: glib::Quark,
    model_name: glib::Quark,
    rotation: glib::Quark,
}

static FIELDS: Lazy<Fields> = Lazy::new(|| Fields {
    x_min: glib::Quark::from_str("x_min"),
    y_min: glib::Quark::from_str("y_min"),
    x_max: glib::Quark::from_str("x_max"),
    y_max: glib::Quark::from_str("y_max"),
    confidence: glib::Quark::from_str("confidence"),
    label_id: glib::Quark::from_str("label_id"),
    label: glib::Quark::from_str("label"),
    id: glib::Quark::from_str("id"),
    model_name: glib::Quark::from_str("model_name"),
    rotation: glib::Quark::from_str("rotation"),
});

fn field(s: &gst::StructureRef, name: glib::Quark) -> Option<&glib::SendValue> {
    // Not `value_by_quark`: for a field that is absent (an optional one, looked up on every
    // object) it builds an error holding a copy of the name, which nobody reads here.
    // SAFETY: the value lives as long as the structure borrowed, and a structure's values
    // are `Send` (GStreamer requires it of every field).
    unsafe {
        let value = gst::ffi::gst_structure_id_get_value(s.as_ptr(), name.into_glib());
        (!value.is_null()).then(|| &*(value as *const glib::SendValue))
    }
}

/// A string field, with invalid UTF-8 replaced (a C producer may set any bytes).
pub(super) fn string(s: &gst::StructureRef, name: glib::Quark) -> Option<String> {
    let value = field(s, name)?;
    if value.type_() != glib::Type::STRING {
        return None;
    }
    // SAFETY: the value holds a string (checked above); the pointer is borrowed for the copy.
    unsafe {
        let text = glib::gobject_ffi::g_value_get_string(value.to_glib_none().0);
        (!text.is_null()).then(|| owned_lossy(CStr::from_ptr(text)))
    }
}

/// A C string as a `String`, invalid UTF-8 replaced. Valid text (nearly always) is checked
/// by the fast UTF-8 validation and copied once.
fn owned_lossy(text: &CStr) -> String {
    match text.to_str() {
        Ok(text) => text.to_owned(),
        Err(_) => text.to_string_lossy().into_owned(),
    }
}

pub(super) fn confidence(
    s: &gst::StructureRef,
    name: glib::Quark,
    invalid: &mut u32,
) -> Option<f64> {
    let value = number(s, name)?;
    let valid = valid_confidence(value);
    if valid.is_none() {
        *invalid += 1;
        gst::debug!(
            CAT,
            "{}.{}: confidence {value} is not within 0..1, read as none",
            s.name(),
            name.as_str()
        );
    }
    valid
}

/// A numeric field as `f64`, whatever numeric type the producer used.
pub(super) fn number(s: &gst::StructureRef, name: glib::Quark) -> Option<f64> {
    let value = field(s, name)?;
    // SAFETY (the `from_value` calls here and in `integer_value`): the value holds exactly
    // the type matched, so reading it as that type needs no second check.
    match value.type_() {
        glib::Type::F64 => Some(unsafe { f64::from_value(value) }),
        glib::Type::F32 => Some(f64::from(unsafe { f32::from_value(value) })),
        _ => integer_value(value).map(|v| v as f64),
    }
}

/// An integer field as `i64`, whatever integer type the producer used.
pub(super) fn integer(s: &gst::StructureRef, name: glib::Quark) -> Option<i64> {
    integer_value(field(s, name)?)
}

fn integer_value(value: &glib::SendValue) -> Option<i64> {
    match value.type_() {
        glib::Type::I32 => Some(i64::from(unsafe { i32::from_value(value) })),
        glib::Type::I64 => Some(unsafe { i64::from_value(value) }),
        glib::Type::U32 => Some(i64::from(unsafe { u32::from_value(value) })),
        glib::Type::U64 => i64::try_from(unsafe { u64::from_value(value) }).ok(),
        _ => None,
    }
}

/// Removes the param structures of `roi` for which `keep` returns false and returns how
/// many were removed.
pub(super) fn retain_params(
    roi: &mut VideoRegionOfInterestMeta,
    mut keep: impl FnMut(&gst::StructureRef) -> bool,
) -> u32 {
    let mut removed = 0;
    // SAFETY: `VideoRegionOfInterestMeta` is a transparent wrapper of the C struct, borrowed
    // mutably here. Its `params` list owns its structures (the meta frees them with
    // `gst_structure_free`), so unlinking a node and freeing its structure is exactly what
    // the meta's own free function would do with it.
    unsafe {
        let meta = roi as *mut VideoRegionOfInterestMeta
            as *mut gst_video::ffi::GstVideoRegionOfInterestMeta;
        let mut node = (*meta).params;
        while !node.is_null() {
            let next = (*node).next;
            let s = (*node).data as *mut gst::ffi::GstStructure;
            if !keep(gst::StructureRef::from_glib_borrow(s)) {
                (*meta).params = glib::ffi::g_list_delete_link((*meta).params, node);
                gst::ffi::gst_structure_free(s);
                removed += 1;
            }
            node = next;
        }
    }
    removed
}

/// How many objects `buffer` carries.
pub fn object_count(buffer: &gst::BufferRef) -> usize {
    buffer.iter_meta::<VideoRegionOfInterestMeta>().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer with one ROI of type `roi_type` (any bytes) carrying `params`, as a C
    /// producer other than DL Streamer may write them.
    fn buffer_with(roi_type: &[u8], params: Vec<gst::Structure>) -> gst::Buffer {
        let mut buffer = gst::Buffer::new();
        {
            let buffer = buffer.get_mut().unwrap();
            let mut roi = VideoRegionOfInterestMeta::add(buffer, "placeholder", (1, 2, 3, 4));
            let quark = std::ffi::CString::new(roi_type).unwrap();
            // SAFETY: the meta is borrowed mutably; a quark lives as long as the process.
            unsafe {
                let meta = &mut *(&mut *roi as *mut VideoRegionOfInterestMeta
                    as *mut gst_video::ffi::GstVideoRegionOfInterestMeta);
                meta.roi_type = glib::ffi::g_quark_from_string(quark.as_ptr());
            }
            for param in params {
                roi.add_param(param);
            }
        }
        buffer
    }

    #[test]
    fn numbers_are_read_whatever_numeric_type_the_producer_used() {
        gst::init().unwrap();
        let buffer = buffer_with(
            b"car",
            vec![
                gst::Structure::builder(DETECTION)
                    .field("x_min", 0.25f32)
                    .field("y_min", 1i32)
                    .field("x_max", 1u64)
                    .field("y_max", 1i64)
                    .field("confidence", 0.5f32)
                    .field("label_id", 7u32)
                    .field("rotation", 0.5f64)
                    .build(),
                gst::Structure::builder(OBJECT_ID)
                    .field("id", 42u64)
                    .build(),
            ],
        );
        let objects = read_objects(&buffer);
        let object = &objects.objects[0];
        assert_eq!(object.label, "car");
        assert_eq!(object.tracking_id, Some(42));
        let detection = object.detection.as_ref().unwrap();
        assert_eq!(
            detection.bounding_box,
            Some(BoundingBox {
                x_min: 0.25,
                y_min: 1.0,
                x_max: 1.0,
                y_max: 1.0
            })
        );
        assert_eq!(detection.confidence, Some(0.5));
        assert_eq!(detection.label_id, Some(7));
        assert_eq!(detection.rotation, Some(0.5));
    }

    #[test]
    fn absent_fields_and_fields_of_another_type_read_as_none() {
        gst::init().unwrap();
        let buffer = buffer_with(
            b"car",
            vec![
                gst::Structure::builder(DETECTION)
                    .field("x_min", 0.1)
                    .field("y_min", 0.1)
                    .field("x_max", "wide")
                    .field("y_max", 0.9)
                    .field("confidence", "high")
                    .field("label_id", u64::MAX)
                    .build(),
                gst::Structure::builder("color")
                    .field("label", "red")
                    .field("model_name", 3i32)
                    .build(),
                gst::Structure::builder("unlabelled")
                    .field("label", 1i32)
                    .build(),
            ],
        );
        let objects = read_objects(&buffer);
        let object = &objects.objects[0];
        let detection = object.detection.as_ref().unwrap();
        assert_eq!(detection.bounding_box, None, "x_max is not a number");
        assert_eq!(detection.confidence, None);
        assert_eq!(detection.label_id, None, "u64::MAX is no i32");
        assert_eq!(detection.rotation, None);
        assert_eq!(
            object.classifications,
            [Classification {
                name: "color".into(),
                label: "red".into(),
                ..Classification::default()
            }]
        );
        assert_eq!(objects.invalid_confidences, 0);
    }

    #[test]
    fn invalid_utf8_in_the_roi_type_becomes_the_replacement_character() {
        gst::init().unwrap();
        // GStreamer refuses invalid UTF-8 in a structure's string fields, but nothing checks
        // the quark of an ROI's type.
        let buffer = buffer_with(b"c\xc3(r", vec![]);
        assert_eq!(read_objects(&buffer).objects[0].label, "c\u{fffd}(r");
    }
}
