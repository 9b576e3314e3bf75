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
use gst::glib::translate::ToGlibPtr;
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
    let mut out = Objects::default();
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
        CStr::from_ptr(text).to_string_lossy().into_owned()
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
    // Deprecated for the GStreamer 1.26 `IdStr` API; on 1.22 it is the lookup without the
    // name hashing.
    #[allow(deprecated)]
    s.value_by_quark(name).ok()
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
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
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
    match value.type_() {
        glib::Type::F64 => value.get::<f64>().ok(),
        glib::Type::F32 => value.get::<f32>().ok().map(f64::from),
        _ => integer_value(value).map(|v| v as f64),
    }
}

/// An integer field as `i64`, whatever integer type the producer used.
pub(super) fn integer(s: &gst::StructureRef, name: glib::Quark) -> Option<i64> {
    integer_value(field(s, name)?)
}

fn integer_value(value: &glib::SendValue) -> Option<i64> {
    match value.type_() {
        glib::Type::I32 => value.get::<i32>().ok().map(i64::from),
        glib::Type::I64 => value.get::<i64>().ok(),
        glib::Type::U32 => value.get::<u32>().ok().map(i64::from),
        glib::Type::U64 => value.get::<u64>().ok().and_then(|v| i64::try_from(v).ok()),
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
