// SPDX-License-Identifier: MPL-2.0

//! The metadata model shared by every element.
//!
//! Producers attach analytics results to video buffers in their own way; this module reads
//! them into plain Rust types ([`Object`], [`Detection`], [`Classification`], and for
//! results about the whole frame [`FrameResults`]) and writes them out as the JSON that DL
//! Streamer's `gvametaconvert` produces.
//!
//! All access to buffer metadata goes through the functions re-exported here
//! ([`read_objects`], [`retain_objects`], [`retain_classifications`], [`attach_objects`], and
//! [`read_frame_results`], [`retain_frame_classifications`], [`attach_frame_results`]).
//! Objects are backed by `GstVideoRegionOfInterestMeta` (the [`roi`] module) and, with the
//! `analytics` feature, also by GStreamer >= 1.24's `GstAnalyticsRelationMeta` (the
//! `analytics` module, which pairs the two forms of one object); frame-level results by DL
//! Streamer's `GstGVATensorMeta` (the [`gva_tensor`] module) and, with `analytics`, the
//! relation meta's ClsMtds of no object. The elements do not know which.

#[cfg(feature = "analytics")]
mod analytics;
mod dlsps;
mod frame;
mod gva_json;
mod gva_meta;
mod gva_tensor;
mod json;
mod roi;

use once_cell::sync::Lazy;

/// Metadata reading and writing, shared by every element: `GST_DEBUG=analyticsmeta:6`.
static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "analyticsmeta",
        gst::DebugColorFlags::empty(),
        Some("Analytics metadata model: reading, filtering and attaching detections"),
    )
});

#[cfg(feature = "analytics")]
pub use analytics::{
    attach_objects, object_count, read_objects, retain_classifications, retain_objects,
};
pub use dlsps::{write_dlsps_metadata, DlspsFrame, PipelineInfo};
pub use frame::{is_full_frame_object, FrameResults, Tensor};
pub use gva_json::{attach as attach_json_message, json_messages, rewrite_json_messages};
pub use json::{
    kind as json_kind, parse_frame_line, write_frame_json, FrameContext, RecordedFrame,
};
#[cfg(not(feature = "analytics"))]
pub use roi::{attach_objects, object_count, read_objects, retain_classifications, retain_objects};

/// What this build reads, for the element descriptions that `gst-inspect-1.0` shows.
#[cfg(feature = "analytics")]
pub const READS: &str = "Reads GstAnalyticsRelationMeta (ODMtd with the ClsMtd it contains \
     and its TrackingMtd; ClsMtds of no object as frame-level results) and \
     GstVideoRegionOfInterestMeta; an object carried in both (same id) counts once. \
     Frame-level results also from DL Streamer's GstGVATensorMeta.";
#[cfg(not(feature = "analytics"))]
pub const READS: &str = "Reads GstVideoRegionOfInterestMeta, and frame-level results from DL \
     Streamer's GstGVATensorMeta (built without the analytics feature, so not \
     GstAnalyticsRelationMeta).";

/// What `metareplay` attaches in this build, for its description.
#[cfg(feature = "analytics")]
pub const ATTACHES: &str = "region-of-interest metadata and GstAnalyticsRelationMeta (ODMtd, \
     ClsMtd, TrackingMtd) laid out like DL Streamer's gvadetect/gvaclassify/gvatrack, and \
     frame-level results as its gvainference/gvaclassify GstGVATensorMeta and ClsMtds";
#[cfg(not(feature = "analytics"))]
pub const ATTACHES: &str = "region-of-interest metadata laid out like DL Streamer's \
     gvadetect/gvaclassify, and frame-level results as its gvainference/gvaclassify \
     GstGVATensorMeta";

/// A rectangle in pixels, as carried by a region-of-interest meta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// A box in coordinates normalized to the frame size (0..1).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct BoundingBox {
    pub x_min: f64,
    pub y_min: f64,
    pub x_max: f64,
    pub y_max: f64,
}

impl BoundingBox {
    /// The normalized box of a pixel rectangle in a frame of `width` x `height`, clipped to
    /// the frame. `None` when the frame size is unknown.
    pub fn from_rect(rect: Rect, width: u32, height: u32) -> Option<Self> {
        if width == 0 || height == 0 {
            return None;
        }
        let (fw, fh) = (f64::from(width), f64::from(height));
        let clip = |v: f64| v.clamp(0.0, 1.0);
        Some(BoundingBox {
            x_min: clip(f64::from(rect.x) / fw),
            y_min: clip(f64::from(rect.y) / fh),
            x_max: clip((f64::from(rect.x) + f64::from(rect.w)) / fw),
            y_max: clip((f64::from(rect.y) + f64::from(rect.h)) / fh),
        })
    }

    /// The pixel rectangle this box covers in a frame of `width` x `height`.
    pub fn to_rect(self, width: u32, height: u32) -> Rect {
        let (fw, fh) = (f64::from(width), f64::from(height));
        let px = |v: f64, size: f64| (v.clamp(0.0, 1.0) * size).round() as u32;
        let (x0, x1) = (px(self.x_min, fw), px(self.x_max, fw));
        let (y0, y1) = (px(self.y_min, fh), px(self.y_max, fh));
        Rect {
            x: x0,
            y: y0,
            w: x1.saturating_sub(x0),
            h: y1.saturating_sub(y0),
        }
    }
}

/// The result of an object detector for one object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detection {
    /// The detector's confidence, always finite and within 0..1 (see [`valid_confidence`]).
    pub confidence: Option<f64>,
    pub label_id: Option<i32>,
    /// The normalized box as the detector reported it.
    pub bounding_box: Option<BoundingBox>,
    /// The rotation of an oriented box, in radians, clockwise about its centre (GStreamer
    /// 1.26's oriented ODMtd, the `rotation` of DL Streamer's `detection` structure); the
    /// object's rectangle and bounding box are then the box before rotation. `None` for an
    /// axis-aligned box (a rotation of 0), and always finite (see [`valid_rotation`]).
    pub rotation: Option<f64>,
}

/// One classification result attached to an object (e.g. `color: red`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Classification {
    /// The attribute name: the name of the param structure, and the JSON key.
    pub name: String,
    /// The class, e.g. `red`.
    pub label: String,
    /// Always finite and within 0..1 (see [`valid_confidence`]).
    pub confidence: Option<f64>,
    pub label_id: Option<i32>,
    pub model_name: Option<String>,
}

/// One detected object on a frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    /// The object's class, the region-of-interest type.
    pub label: String,
    pub rect: Rect,
    /// The id of the region-of-interest meta.
    pub region_id: i32,
    /// The id of the region this one was found in, when there is one.
    pub parent_id: Option<i32>,
    /// The tracking id, when a tracker set one.
    pub tracking_id: Option<i64>,
    /// `None` for objects attached without detector output (a label and a box only).
    pub detection: Option<Detection>,
    pub classifications: Vec<Classification>,
}

impl Object {
    /// The detection confidence, `None` for an unscored object.
    pub fn confidence(&self) -> Option<f64> {
        self.detection.as_ref().and_then(|d| d.confidence)
    }
}

/// Objects read from one buffer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Objects {
    pub objects: Vec<Object>,
    /// How many confidences were NaN, infinite or outside 0..1 and were therefore read as
    /// "no confidence".
    pub invalid_confidences: u32,
}

/// Checks a confidence read from a producer: the value when it is usable, `None` when it
/// is NaN, infinite or outside 0..1.
pub fn valid_confidence(value: f64) -> Option<f64> {
    (value.is_finite() && (0.0..=1.0).contains(&value)).then_some(value)
}

/// Checks a rotation read from a producer: `None` for 0 (an axis-aligned box) and for
/// values that are not finite.
pub fn valid_rotation(value: f64) -> Option<f64> {
    (value.is_finite() && value != 0.0).then_some(value)
}

/// Reads the results about the whole frame on `buffer`: its `GstGVATensorMeta`s and, with
/// the `analytics` feature, the ClsMtds of the relation meta that belong to no object (one
/// carried in both forms, a tensor meta and a ClsMtd of the same label, counts once, as the
/// tensor). `with_data` also copies the tensors' raw output; the tensors whose output cannot
/// be read (their name and why) are returned beside, read without it.
pub fn read_frame_results(buffer: &gst::BufferRef, with_data: bool) -> (FrameResults, Vec<String>) {
    let mut invalid = 0;
    let mut unreadable = Vec::new();
    let tensors = gva_tensor::read(buffer, with_data, &mut invalid, &mut unreadable);
    #[cfg(feature = "analytics")]
    let classifications = analytics::frame::read(buffer, &tensors, &mut invalid)
        .into_iter()
        .map(|cls| cls.classification)
        .collect();
    #[cfg(not(feature = "analytics"))]
    let classifications = Vec::new();
    let results = FrameResults {
        tensors,
        classifications,
    };
    (results, unreadable)
}

/// Removes from `buffer` every frame-level classification result for which `keep` returns
/// false: a tensor meta with a `label` or `label_id` goes whole (with its raw output, as a
/// classification parameter goes from an object), a ClsMtd of no object is left out of the
/// relation meta. Returns how many results were removed and how many invalid confidences
/// were seen.
pub fn retain_frame_classifications(
    buffer: &mut gst::BufferRef,
    mut keep: impl FnMut(&Classification) -> bool,
) -> (u32, u32) {
    let mut invalid = 0;
    let tensors = gva_tensor::read(buffer, false, &mut invalid, &mut Vec::new());
    let doomed: Vec<bool> = tensors
        .iter()
        .map(|t| t.classification().is_some_and(|c| !keep(&c)))
        .collect();
    if doomed.iter().any(|d| *d) {
        let mut index = 0;
        gva_tensor::retain(buffer, |_| {
            let keep = !doomed.get(index).copied().unwrap_or(false);
            index += 1;
            keep
        });
    }
    let removed = doomed.iter().filter(|d| **d).count() as u32;
    #[cfg(feature = "analytics")]
    let removed =
        removed + analytics::frame::retain(buffer, &tensors, &doomed, &mut keep, &mut invalid);
    (removed, invalid)
}

/// Attaches frame-level results as the producers of this build attach them: each tensor as
/// a `GstGVATensorMeta`, as `gvainference`/`gvaclassify` do and, with the `analytics`
/// feature, each labelled one also as a ClsMtd of no object, as DL Streamer 2026's
/// `gvaclassify` writes both.
pub fn attach_frame_results(buffer: &mut gst::BufferRef, frame: &FrameResults) {
    for tensor in &frame.tensors {
        if !gva_tensor::attach(buffer, tensor) {
            gst::warning!(CAT, "Could not attach the tensor meta {}", tensor.name);
        }
    }
    #[cfg(feature = "analytics")]
    analytics::frame::attach(buffer, frame);
}
