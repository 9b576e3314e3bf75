// SPDX-License-Identifier: MPL-2.0

//! Objects carried in `GstAnalyticsRelationMeta` (GStreamer >= 1.24), alone or beside the
//! `GstVideoRegionOfInterestMeta` of [`super::roi`], read the way DL Streamer's
//! `gvametaconvert` reads them (its `GVA::VideoFrame::regions()`):
//!
//! - one object per object-detection record (`ODMtd`), in the order of the relation meta:
//!   the label is the ODMtd's type, the pixel box and the confidence are its location;
//! - the `ClsMtd` records the ODMtd CONTAINs are its classification results (as DL Streamer's
//!   `gvaclassify` relates them); like DL Streamer, all classes of one record make one result
//!   whose label is their labels joined by spaces and whose confidence is the highest;
//! - a `TrackingMtd` related to the ODMtd, in either direction, gives the tracking id;
//! - an ODMtd that IS_PART_OF another ODMtd has that one as its parent;
//! - a region-of-interest meta whose `id` is the ODMtd's id (DL Streamer's `gvadetect` writes
//!   both and gives the ROI meta the ODMtd's id) is the same object: its `detection`
//!   parameters (normalized box, `label_id`) and its classification results are used, and
//!   the object appears once;
//! - region-of-interest metas of no ODMtd follow, read as [`super::roi`] reads them.
//!
//! A buffer without a relation meta is handled by [`super::roi`] alone, exactly as in the
//! build without the `analytics` feature.
//!
//! An oriented box (GStreamer 1.26) is read, with the `analytics-oriented` feature, as DL
//! Streamer reads it: the box before rotation and the rotation (radians, clockwise about its
//! centre). Without that feature the 1.24 API reads the axis-aligned box around it.
//!
//! ClsMtds that belong to no object are results about the whole frame: see [`frame`].

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::ops::ControlFlow;

use gst::buffer::BufferMetaForeachAction;
use gst::glib;
use gst::glib::translate::IntoGlib;
use gst_analytics::{
    AnalyticsAnyMtd, AnalyticsClassificationMtd, AnalyticsMetaRefExt, AnalyticsMtdRef,
    AnalyticsODMtd, AnalyticsRelationMeta, AnalyticsRelationMetaClassificationExt,
    AnalyticsRelationMetaODExt, AnalyticsRelationMetaTrackingExt, AnalyticsTrackingMtd, RelTypes,
};
use gst_video::VideoRegionOfInterestMeta;

use super::{
    roi, valid_confidence, valid_rotation, Classification, Detection, Object, Objects, Rect, CAT,
};

pub(super) mod frame;

/// The attribute name of a classification read from a `ClsMtd`: DL Streamer names the
/// structure it converts a ClsMtd into `classification`. A second result on the same object
/// is `classification_2`, and so on, so that each keeps a JSON key of its own.
const CLASSIFICATION: &str = "classification";

/// Where each object read from a buffer came from, parallel to [`Objects::objects`].
#[derive(Debug, Clone, Default)]
struct Source {
    /// The ODMtd id, for objects that have one.
    od: Option<u32>,
    /// The index among the buffer's ROI metas, for objects read from an ROI meta alone.
    roi_index: Option<usize>,
    /// For each classification of the object: the ClsMtd it was read from, `None` for a
    /// param structure of the ROI meta.
    cls: Vec<Option<u32>>,
    /// The ClsMtds left out because the ROI meta carries a result with the same label:
    /// (label, ClsMtd id). Removing that result removes them too.
    hidden_cls: Vec<(String, u32)>,
}

/// Reads every object on `buffer`: see the module documentation for the order and merging.
pub fn read_objects(buffer: &gst::BufferRef) -> Objects {
    match read_with_sources(buffer) {
        Some((objects, _)) => objects,
        None => roi::read_objects(buffer),
    }
}

/// How many objects `buffer` carries.
pub fn object_count(buffer: &gst::BufferRef) -> usize {
    match read_with_sources(buffer) {
        Some((objects, _)) => objects.objects.len(),
        None => roi::object_count(buffer),
    }
}

/// `None` when the buffer has no relation meta (the ROI reader alone applies).
fn read_with_sources(buffer: &gst::BufferRef) -> Option<(Objects, Vec<Source>)> {
    let meta = buffer.meta::<AnalyticsRelationMeta>()?;
    let mut out = Objects::default();
    let mut sources = Vec::new();

    let rois: Vec<_> = buffer.iter_meta::<VideoRegionOfInterestMeta>().collect();
    let mut paired = vec![false; rois.len()];
    let mut by_id: HashMap<i32, Vec<usize>> = HashMap::new();
    for (i, roi) in rois.iter().enumerate() {
        by_id.entry(roi.id()).or_default().push(i);
    }

    for od in meta.iter::<AnalyticsODMtd>() {
        let od_id = od.id();
        // Every ROI meta of this id is this object; the first one gives the parameters.
        let mut roi_object = None;
        let same_id = i32::try_from(od_id).ok().and_then(|id| by_id.get(&id));
        for &i in same_id.into_iter().flatten() {
            if roi_object.is_none() {
                roi_object = Some(roi::read_object(&rois[i], &mut out.invalid_confidences));
            }
            paired[i] = true;
        }
        let (object, source) = read_od(&meta, &od, roi_object, &mut out.invalid_confidences);
        out.objects.push(object);
        sources.push(source);
    }
    for (i, roi) in rois.iter().enumerate() {
        if !paired[i] {
            let object = roi::read_object(roi, &mut out.invalid_confidences);
            sources.push(Source {
                od: None,
                roi_index: Some(i),
                cls: vec![None; object.classifications.len()],
                hidden_cls: Vec::new(),
            });
            out.objects.push(object);
        }
    }
    gst::trace!(
        CAT,
        "Read {} objects ({} with an ODMtd) from buffer {:?}",
        out.objects.len(),
        sources.iter().filter(|s| s.od.is_some()).count(),
        buffer.pts()
    );
    Some((out, sources))
}

fn read_od(
    meta: &gst::MetaRef<'_, AnalyticsRelationMeta>,
    od: &AnalyticsMtdRef<'_, AnalyticsODMtd>,
    roi_object: Option<Object>,
    invalid: &mut u32,
) -> (Object, Source) {
    let od_id = od.id();
    let from_roi = roi_object.is_some();
    let mut object = roi_object.unwrap_or_default();
    let mut source = Source {
        od: Some(od_id),
        roi_index: None,
        cls: vec![None; object.classifications.len()],
        hidden_cls: Vec::new(),
    };

    if let Some(label) = od.obj_type() {
        object.label = quark_string(label);
    }
    let location = od_location(od);
    if let Some(loc) = location {
        object.rect = pixel_rect(loc.x, loc.y, loc.w, loc.h);
    }
    object.region_id = i32::try_from(od_id).unwrap_or(i32::MAX);
    let rotation = location.and_then(|loc| valid_rotation(f64::from(loc.r)));
    match &mut object.detection {
        Some(detection) => {
            // The ROI meta's `detection` may lack it (not every producer writes it).
            detection.rotation = detection.rotation.or(rotation);
        }
        None => {
            let confidence = location.and_then(|loc| {
                let value = f64::from(loc.confidence);
                let valid = valid_confidence(value);
                if valid.is_none() {
                    *invalid += 1;
                    gst::debug!(
                        CAT,
                        "ODMtd {od_id}: confidence {value} is not within 0..1, read as none"
                    );
                }
                valid
            });
            object.detection = Some(Detection {
                confidence,
                label_id: None,
                bounding_box: None,
                rotation,
            });
        }
    }

    // Parent: the ODMtd this one IS_PART_OF.
    if let Some(parent) = meta
        .iter_direct_related::<AnalyticsODMtd>(od_id, RelTypes::IS_PART_OF)
        .next()
    {
        object.parent_id = i32::try_from(parent.id()).ok();
    }

    // Tracking id: a TrackingMtd related either way.
    if let Some(tracking) = tracking_of(meta, od_id) {
        let (id, _, _, _) = tracking.info();
        object.tracking_id = Some(i64::try_from(id).unwrap_or(i64::MAX));
    }

    // Classifications: the ClsMtds the ODMtd CONTAINs. A result the ROI meta already carries
    // (DL Streamer writes both) is not repeated.
    let mut n = 0;
    for cls in meta.iter_direct_related::<AnalyticsClassificationMtd>(od_id, RelTypes::CONTAIN) {
        let Some(classification) = read_cls(&cls, &mut n, invalid) else {
            continue;
        };
        if from_roi
            && object
                .classifications
                .iter()
                .any(|c| c.label == classification.label)
        {
            source.hidden_cls.push((classification.label, cls.id()));
            continue;
        }
        object.classifications.push(classification);
        source.cls.push(Some(cls.id()));
    }
    (object, source)
}

fn read_cls(
    cls: &AnalyticsMtdRef<'_, AnalyticsClassificationMtd>,
    n: &mut usize,
    invalid: &mut u32,
) -> Option<Classification> {
    if cls.is_empty() {
        return None;
    }
    let mut label = String::new();
    let mut best: Option<f64> = None;
    for (quark, level) in cls.iterate() {
        let text = quark_string(quark);
        if !text.is_empty() {
            if !label.is_empty() && !label.ends_with(char::is_whitespace) {
                label.push(' ');
            }
            label.push_str(&text);
        }
        let value = f64::from(level);
        match valid_confidence(value) {
            Some(v) => best = Some(best.map_or(v, |b: f64| b.max(v))),
            None => {
                *invalid += 1;
                gst::debug!(
                    CAT,
                    "ClsMtd {}: confidence {value} is not within 0..1, read as none",
                    cls.id()
                );
            }
        }
    }
    *n += 1;
    let name = if *n == 1 {
        CLASSIFICATION.to_owned()
    } else {
        format!("{CLASSIFICATION}_{n}")
    };
    Some(Classification {
        name,
        label,
        confidence: best,
        label_id: None,
        model_name: None,
    })
}

/// The first TrackingMtd related to the ODMtd `od`, in either direction.
fn tracking_of<'a>(
    meta: &'a gst::MetaRef<'a, AnalyticsRelationMeta>,
    od: u32,
) -> Option<AnalyticsMtdRef<'a, AnalyticsTrackingMtd>> {
    meta.iter_direct_related::<AnalyticsTrackingMtd>(od, RelTypes::ANY)
        .next()
        .or_else(|| {
            meta.iter::<AnalyticsTrackingMtd>()
                .find(|t| !meta.relation(t.id(), od).is_empty())
        })
}

/// A pixel box of the relation meta (signed, may reach outside the frame) as an ROI
/// rectangle: the part right and below of the origin.
fn pixel_rect(x: i32, y: i32, w: i32, h: i32) -> Rect {
    let span = |start: i32, len: i32| {
        let end = i64::from(start) + i64::from(len.max(0));
        let start = i64::from(start).max(0);
        let end = end.max(start);
        let clamp = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        (clamp(start), clamp(end - start))
    };
    let (x, w) = span(x, w);
    let (y, h) = span(y, h);
    Rect { x, y, w, h }
}

/// An ODMtd's box, confidence and rotation.
#[derive(Debug, Clone, Copy, Default)]
struct OdLocation {
    x: i32,
    y: i32,
    w: i32,
    h: i32,
    /// Radians, clockwise about the centre; 0 for an axis-aligned box.
    r: f32,
    confidence: f32,
}

/// The box of `od` before rotation, and its rotation (GStreamer >= 1.26).
#[cfg(feature = "analytics-oriented")]
fn od_location(od: &AnalyticsMtdRef<'_, AnalyticsODMtd>) -> Option<OdLocation> {
    od.oriented_location().ok().map(|loc| OdLocation {
        x: loc.x,
        y: loc.y,
        w: loc.w,
        h: loc.h,
        r: loc.r,
        confidence: loc.loc_conf_lvl,
    })
}

/// The box of `od`: with the GStreamer 1.24 API, the axis-aligned box around an oriented one.
#[cfg(not(feature = "analytics-oriented"))]
fn od_location(od: &AnalyticsMtdRef<'_, AnalyticsODMtd>) -> Option<OdLocation> {
    od.location().ok().map(|loc| OdLocation {
        x: loc.x,
        y: loc.y,
        w: loc.w,
        h: loc.h,
        r: 0.0,
        confidence: loc.loc_conf_lvl,
    })
}

/// Adds an ODMtd: an oriented one when the box has a rotation and the build has the
/// GStreamer 1.26 API, else an axis-aligned one.
fn add_od(
    meta: &mut gst::MetaRefMut<'_, AnalyticsRelationMeta, gst::meta::Standalone>,
    label: glib::Quark,
    l: &OdLocation,
) -> Result<u32, glib::BoolError> {
    #[cfg(feature = "analytics-oriented")]
    if l.r != 0.0 {
        return meta
            .add_oriented_od_mtd(label, l.x, l.y, l.w, l.h, l.r, l.confidence)
            .map(|m| m.id());
    }
    meta.add_od_mtd(label, l.x, l.y, l.w, l.h, l.confidence)
        .map(|m| m.id())
}

/// A label quark as text; invalid UTF-8 becomes U+FFFD rather than reaching the JSON.
fn quark_string(quark: glib::Quark) -> String {
    // SAFETY: `g_quark_to_string` returns a NUL-terminated string that lives as long as the
    // process, or NULL.
    unsafe {
        let text = glib::ffi::g_quark_to_string(quark.into_glib());
        if text.is_null() {
            return String::new();
        }
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

/// Removes from `buffer` every object for which `keep` returns false: its ODMtd with the
/// ClsMtds it contains and the TrackingMtds related to it, and the ROI metas of its id (or,
/// for an object read from an ROI meta alone, that ROI meta). Returns how many objects were
/// removed and how many invalid confidences were seen.
pub fn retain_objects(
    buffer: &mut gst::BufferRef,
    mut keep: impl FnMut(&Object) -> bool,
) -> (u32, u32) {
    let Some((objects, sources)) = read_with_sources(buffer) else {
        return roi::retain_objects(buffer, keep);
    };
    let mut removed = 0;
    let mut doomed_od = HashSet::new();
    let mut doomed_roi = HashSet::new();
    for (object, source) in objects.objects.iter().zip(&sources) {
        if keep(object) {
            continue;
        }
        removed += 1;
        match (source.od, source.roi_index) {
            (Some(od), _) => {
                doomed_od.insert(od);
            }
            (None, Some(i)) => {
                doomed_roi.insert(i);
            }
            (None, None) => {}
        }
    }
    if removed == 0 {
        return (0, objects.invalid_confidences);
    }

    let doomed_ids: HashSet<i32> = doomed_od
        .iter()
        .filter_map(|id| i32::try_from(*id).ok())
        .collect();
    let mut index = 0;
    buffer.foreach_meta_mut(|mut meta| {
        let Some(roi) = meta.downcast_ref::<VideoRegionOfInterestMeta>() else {
            return ControlFlow::Continue(BufferMetaForeachAction::Keep);
        };
        let i = index;
        index += 1;
        if doomed_roi.contains(&i) || doomed_ids.contains(&roi.id()) {
            ControlFlow::Continue(BufferMetaForeachAction::Remove)
        } else {
            ControlFlow::Continue(BufferMetaForeachAction::Keep)
        }
    });

    if !doomed_od.is_empty() {
        let doomed_mtds = belonging_to(buffer, &doomed_od);
        rebuild(buffer, &doomed_mtds);
    }
    (removed, objects.invalid_confidences)
}

/// Removes from the objects on `buffer` every classification result for which `keep`
/// returns false; the objects themselves stay. Returns how many results were removed and
/// how many invalid confidences were seen.
pub fn retain_classifications(
    buffer: &mut gst::BufferRef,
    mut keep: impl FnMut(&Object, &Classification) -> bool,
) -> (u32, u32) {
    let Some((objects, sources)) = read_with_sources(buffer) else {
        return roi::retain_classifications(buffer, keep);
    };
    // The ClsMtds to drop, and per ROI meta id the names of the param structures to drop.
    let mut doomed_cls = HashSet::new();
    let mut doomed_params: HashMap<i32, Vec<String>> = HashMap::new();
    let mut doomed_roi_only: HashMap<usize, Vec<String>> = HashMap::new();
    let mut removed = 0;
    for (object, source) in objects.objects.iter().zip(&sources) {
        for (c, cls) in object.classifications.iter().zip(&source.cls) {
            if keep(object, c) {
                continue;
            }
            removed += 1;
            match (cls, source.od, source.roi_index) {
                (Some(cls), _, _) => {
                    doomed_cls.insert(*cls);
                }
                (None, Some(_), _) => {
                    doomed_params
                        .entry(object.region_id)
                        .or_default()
                        .push(c.name.clone());
                    // The same result as a ClsMtd would take its place.
                    doomed_cls.extend(
                        source
                            .hidden_cls
                            .iter()
                            .filter(|(label, _)| *label == c.label)
                            .map(|(_, id)| *id),
                    );
                }
                (None, None, Some(i)) => doomed_roi_only.entry(i).or_default().push(c.name.clone()),
                (None, None, None) => {}
            }
        }
    }
    if removed == 0 {
        return (0, objects.invalid_confidences);
    }
    if !doomed_params.is_empty() || !doomed_roi_only.is_empty() {
        for (i, mut roi) in buffer
            .iter_meta_mut::<VideoRegionOfInterestMeta>()
            .enumerate()
        {
            let names = if let Some(names) = doomed_roi_only.get(&i) {
                names
            } else if let Some(names) = doomed_params.get(&roi.id()) {
                names
            } else {
                continue;
            };
            roi::retain_params(&mut roi, |s| !names.iter().any(|n| n == s.name().as_str()));
        }
    }
    if !doomed_cls.is_empty() {
        rebuild(buffer, &doomed_cls);
    }
    (removed, objects.invalid_confidences)
}

/// The records that go with the removed ODMtds: themselves, the ClsMtds they contain and
/// the TrackingMtds related to them.
fn belonging_to(buffer: &gst::BufferRef, doomed_od: &HashSet<u32>) -> HashSet<u32> {
    let mut doomed = doomed_od.clone();
    let Some(meta) = buffer.meta::<AnalyticsRelationMeta>() else {
        return doomed;
    };
    for &od in doomed_od {
        for cls in meta.iter_direct_related::<AnalyticsClassificationMtd>(od, RelTypes::CONTAIN) {
            doomed.insert(cls.id());
        }
        for tracking in meta.iter_direct_related::<AnalyticsTrackingMtd>(od, RelTypes::ANY) {
            doomed.insert(tracking.id());
        }
        for tracking in meta.iter::<AnalyticsTrackingMtd>() {
            if !meta.relation(tracking.id(), od).is_empty() {
                doomed.insert(tracking.id());
            }
        }
    }
    doomed
}

/// A record copied out of a relation meta.
enum Record {
    Od {
        label: Option<glib::Quark>,
        location: OdLocation,
    },
    Cls {
        levels: Vec<f32>,
        quarks: Vec<glib::Quark>,
    },
    Tracking {
        id: u64,
        first_seen: gst::ClockTime,
    },
}

/// Replaces the relation meta of `buffer` by one without the records in `doomed`: the
/// GStreamer API cannot remove a record, so the others are copied into a new meta, with
/// their relations, and the ROI metas' ids (and parent ids) follow their ODMtd's new id.
/// Records of types other than ODMtd, ClsMtd and TrackingMtd cannot be copied with the
/// GStreamer 1.24 API and are dropped (logged).
fn rebuild(buffer: &mut gst::BufferRef, doomed: &HashSet<u32>) {
    let Some(meta) = buffer.meta::<AnalyticsRelationMeta>() else {
        return;
    };
    let mut kept: Vec<(u32, Record)> = Vec::new();
    let mut dropped_other = 0;
    for mtd in meta.iter::<AnalyticsAnyMtd>() {
        let id = mtd.id();
        if doomed.contains(&id) {
            continue;
        }
        let record = if let Some(od) = mtd.downcast_ref::<AnalyticsODMtd>() {
            Record::Od {
                label: od.obj_type(),
                location: od_location(od).unwrap_or_default(),
            }
        } else if let Some(cls) = mtd.downcast_ref::<AnalyticsClassificationMtd>() {
            let (quarks, levels) = cls.iterate().unzip();
            Record::Cls { levels, quarks }
        } else if let Some(tracking) = mtd.downcast_ref::<AnalyticsTrackingMtd>() {
            let (id, first_seen, _, _) = tracking.info();
            Record::Tracking { id, first_seen }
        } else {
            dropped_other += 1;
            continue;
        };
        kept.push((id, record));
    }
    let mut relations: Vec<(u32, u32, RelTypes)> = Vec::new();
    for (a, _) in &kept {
        for b in meta.iter_direct_related::<AnalyticsAnyMtd>(*a, RelTypes::ANY) {
            if !doomed.contains(&b.id()) {
                relations.push((*a, b.id(), meta.relation(*a, b.id())));
            }
        }
    }
    let old_ods: HashSet<u32> = kept
        .iter()
        .filter(|(_, r)| matches!(r, Record::Od { .. }))
        .map(|(id, _)| *id)
        .collect();
    let tracking_state: HashMap<u32, (gst::ClockTime, bool)> = meta
        .iter::<AnalyticsTrackingMtd>()
        .map(|t| {
            let (_, _, last_seen, lost) = t.info();
            (t.id(), (last_seen, lost))
        })
        .collect();
    if dropped_other > 0 {
        gst::warning!(
            CAT,
            "Dropped {dropped_other} analytics records of types this element cannot copy"
        );
    }

    buffer.foreach_meta_mut(|mut meta| {
        if meta.downcast_ref::<AnalyticsRelationMeta>().is_some() {
            ControlFlow::Break(BufferMetaForeachAction::Remove)
        } else {
            ControlFlow::Continue(BufferMetaForeachAction::Keep)
        }
    });

    let mut new_ids: HashMap<u32, u32> = HashMap::new();
    {
        let mut meta = AnalyticsRelationMeta::add(buffer);
        for (old, record) in &kept {
            let new = match record {
                Record::Od { label, location } => add_od(
                    &mut meta,
                    label.unwrap_or_else(|| glib::Quark::from_str("")),
                    location,
                ),
                Record::Cls { levels, quarks } => meta.add_cls_mtd(levels, quarks).map(|m| m.id()),
                Record::Tracking { id, first_seen } => {
                    meta.add_tracking_mtd(*id, *first_seen).map(|m| m.id())
                }
            };
            match new {
                Ok(new) => {
                    new_ids.insert(*old, new);
                }
                Err(err) => gst::warning!(CAT, "Could not copy analytics record {old}: {err}"),
            }
        }
        for (old, (last_seen, lost)) in &tracking_state {
            let Some(new) = new_ids.get(old) else {
                continue;
            };
            // The crate's `mtd_mut` borrows the meta for its whole lifetime; the two setters
            // are called on the record directly.
            // SAFETY: `new` is the id of a TrackingMtd just added to this meta, which is
            // borrowed mutably here.
            unsafe {
                let mut mtd = gst_analytics::ffi::GstAnalyticsTrackingMtd {
                    id: *new,
                    meta: meta.as_mut_ptr(),
                };
                gst_analytics::ffi::gst_analytics_tracking_mtd_update_last_seen(
                    &mut mtd,
                    last_seen.into_glib(),
                );
                if *lost {
                    gst_analytics::ffi::gst_analytics_tracking_mtd_set_lost(&mut mtd);
                }
            }
        }
        for (a, b, rel) in relations {
            if let (Some(a), Some(b)) = (new_ids.get(&a), new_ids.get(&b)) {
                if let Err(err) = meta.set_relation(rel, *a, *b) {
                    gst::warning!(CAT, "Could not copy an analytics relation: {err}");
                }
            }
        }
    }

    // The ROI metas of kept objects follow their ODMtd's new id. An ROI meta of no ODMtd
    // whose id one of the new ids takes gets a fresh id, so it stays an object of its own.
    let remap = |id: i32| -> Option<i32> {
        let old = u32::try_from(id).ok().filter(|id| old_ods.contains(id))?;
        new_ids.get(&old).and_then(|new| i32::try_from(*new).ok())
    };
    let new_ods: HashSet<i32> = old_ods
        .iter()
        .filter_map(|old| new_ids.get(old))
        .filter_map(|new| i32::try_from(*new).ok())
        .collect();
    let mut fresh = buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .map(|r| r.id())
        .chain(new_ods.iter().copied())
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    for mut roi in buffer.iter_meta_mut::<VideoRegionOfInterestMeta>() {
        if let Some(new) = remap(roi.id()) {
            roi.set_id(new);
        } else if new_ods.contains(&roi.id()) {
            gst::debug!(CAT, "ROI meta id {} renumbered to {fresh}", roi.id());
            roi.set_id(fresh);
            fresh = fresh.saturating_add(1);
        }
        if let Some(new) = remap(roi.parent_id()) {
            roi.set_parent_id(new);
        }
    }
}

/// Attaches `objects` to `buffer` the way DL Streamer's `gvadetect`, `gvaclassify` and
/// `gvatrack` do since they write both forms: for each object an ODMtd (label, pixel box,
/// confidence), a ClsMtd per classification result (the ODMtd CONTAINs it, it IS_PART_OF
/// the ODMtd), a TrackingMtd for the tracking id (the ODMtd RELATEs_TO it), and the ROI meta
/// of [`roi::attach_objects`] with the ODMtd's id as its `id`. Region and parent ids of the
/// objects become the ODMtd ids.
pub fn attach_objects(buffer: &mut gst::BufferRef, objects: &[Object], width: u32, height: u32) {
    // Replayed recordings do not know when a tracker first saw an object: this frame.
    let first_seen = buffer.pts().unwrap_or(gst::ClockTime::ZERO);
    let mut region_to_od: HashMap<i32, i32> = HashMap::new();
    let mut attached = Vec::with_capacity(objects.len());
    {
        let mut meta = match buffer.meta_mut::<AnalyticsRelationMeta>() {
            Some(meta) => meta,
            None => AnalyticsRelationMeta::add(buffer),
        };
        let mut od_ids = Vec::with_capacity(objects.len());
        for object in objects {
            let r = object.rect;
            let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
            let location = OdLocation {
                x: clamp(r.x),
                y: clamp(r.y),
                w: clamp(r.w),
                h: clamp(r.h),
                r: object
                    .detection
                    .as_ref()
                    .and_then(|d| d.rotation)
                    .unwrap_or(0.0) as f32,
                confidence: object.confidence().unwrap_or(0.0) as f32,
            };
            let od = match add_od(
                &mut meta,
                glib::Quark::from_str(object.label.as_str()),
                &location,
            ) {
                Ok(od) => od,
                Err(err) => {
                    gst::warning!(CAT, "Could not attach an ODMtd: {err}");
                    od_ids.push(None);
                    continue;
                }
            };
            for c in &object.classifications {
                let added = meta
                    .add_one_cls_mtd(
                        c.confidence.unwrap_or(0.0) as f32,
                        glib::Quark::from_str(c.label.as_str()),
                    )
                    .map(|m| m.id());
                if let Ok(cls) = added {
                    let _ = meta.set_relation(RelTypes::CONTAIN, od, cls);
                    let _ = meta.set_relation(RelTypes::IS_PART_OF, cls, od);
                }
            }
            if let Some(id) = object.tracking_id {
                if let Ok(t) = meta
                    .add_tracking_mtd(u64::try_from(id).unwrap_or(0), first_seen)
                    .map(|m| m.id())
                {
                    let _ = meta.set_relation(RelTypes::RELATE_TO, od, t);
                }
            }
            od_ids.push(Some(od));
            if let Ok(od) = i32::try_from(od) {
                region_to_od.insert(object.region_id, od);
            }
        }
        // Parents: an ODMtd IS_PART_OF its parent's.
        for (object, od) in objects.iter().zip(&od_ids) {
            let (Some(od), Some(parent)) = (od, object.parent_id) else {
                continue;
            };
            if let Some(parent) = region_to_od
                .get(&parent)
                .and_then(|p| u32::try_from(*p).ok())
            {
                let _ = meta.set_relation(RelTypes::IS_PART_OF, *od, parent);
                let _ = meta.set_relation(RelTypes::CONTAIN, parent, *od);
            }
        }
        for (object, od) in objects.iter().zip(od_ids) {
            let mut object = object.clone();
            if let Some(od) = od.and_then(|od| i32::try_from(od).ok()) {
                object.region_id = od;
            }
            object.parent_id = object
                .parent_id
                .map(|p| region_to_od.get(&p).copied().unwrap_or(p));
            attached.push(object);
        }
    }
    roi::attach_objects(buffer, &attached, width, height);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::BoundingBox;

    fn init() {
        gst::init().unwrap();
    }

    fn q(s: &str) -> glib::Quark {
        glib::Quark::from_str(s)
    }

    /// A buffer as GStreamer's own analytics elements leave it: relation meta only.
    /// Returns it with the ids of the two ODMtds.
    fn relation_only() -> (gst::Buffer, u32, u32) {
        let mut buffer = gst::Buffer::new();
        let (car, person);
        {
            let mut meta = AnalyticsRelationMeta::add(buffer.get_mut().unwrap());
            car = meta
                .add_od_mtd(q("car"), 10, 20, 30, 40, 0.75)
                .unwrap()
                .id();
            let color = meta.add_one_cls_mtd(0.5, q("red")).unwrap().id();
            meta.set_relation(RelTypes::CONTAIN, car, color).unwrap();
            let track = meta
                .add_tracking_mtd(42, gst::ClockTime::ZERO)
                .unwrap()
                .id();
            meta.set_relation(RelTypes::RELATE_TO, track, car).unwrap();
            person = meta
                .add_od_mtd(q("person"), -5, 0, 20, 10, 0.25)
                .unwrap()
                .id();
        }
        (buffer, car, person)
    }

    #[test]
    fn odmtd_with_its_classification_and_tracking_id() {
        init();
        let (buffer, car, person) = relation_only();
        let objects = read_objects(&buffer);
        assert_eq!(objects.invalid_confidences, 0);
        let [a, b] = &objects.objects[..] else {
            panic!("two objects expected: {objects:?}");
        };
        assert_eq!(a.label, "car");
        assert_eq!(
            a.rect,
            Rect {
                x: 10,
                y: 20,
                w: 30,
                h: 40
            }
        );
        assert_eq!(a.region_id, car as i32);
        assert_eq!(a.tracking_id, Some(42));
        assert_eq!(a.confidence(), Some(f64::from(0.75f32)));
        assert_eq!(a.classifications.len(), 1);
        assert_eq!(a.classifications[0].name, "classification");
        assert_eq!(a.classifications[0].label, "red");
        assert_eq!(a.classifications[0].confidence, Some(0.5));
        assert_eq!(b.label, "person");
        assert_eq!(b.region_id, person as i32);
        // The part of the box inside the frame.
        assert_eq!(
            b.rect,
            Rect {
                x: 0,
                y: 0,
                w: 15,
                h: 10
            }
        );
        assert_eq!(b.tracking_id, None);
        assert!(b.classifications.is_empty());
        assert_eq!(object_count(&buffer), 2);
    }

    #[test]
    fn an_roi_meta_with_the_odmtd_id_is_the_same_object() {
        init();
        let (mut buffer, car, _) = relation_only();
        let recorded = Object {
            label: "car".into(),
            rect: Rect {
                x: 10,
                y: 20,
                w: 30,
                h: 40,
            },
            region_id: car as i32,
            detection: Some(Detection {
                confidence: Some(0.75),
                label_id: Some(3),
                bounding_box: Some(BoundingBox {
                    x_min: 0.1,
                    y_min: 0.2,
                    x_max: 0.4,
                    y_max: 0.6,
                }),
                rotation: None,
            }),
            classifications: vec![Classification {
                name: "color".into(),
                label: "red".into(),
                confidence: Some(0.5),
                label_id: Some(1),
                model_name: Some("color_net".into()),
            }],
            ..Object::default()
        };
        // And one ROI meta of no ODMtd, as another producer adds it.
        let other = Object {
            label: "box".into(),
            rect: Rect {
                x: 1,
                y: 2,
                w: 3,
                h: 4,
            },
            region_id: 77,
            ..Object::default()
        };
        roi::attach_objects(buffer.get_mut().unwrap(), &[recorded, other], 100, 100);
        let objects = read_objects(&buffer).objects;
        let labels: Vec<&str> = objects.iter().map(|o| o.label.as_str()).collect();
        assert_eq!(labels, ["car", "person", "box"]);
        let car = &objects[0];
        // The ROI meta's parameters, the relation meta's tracking id; "red" once.
        assert_eq!(car.detection.as_ref().unwrap().label_id, Some(3));
        assert_eq!(car.confidence(), Some(0.75));
        assert_eq!(car.tracking_id, Some(42));
        assert_eq!(car.classifications.len(), 1);
        assert_eq!(car.classifications[0].name, "color");
        assert_eq!(objects[2].region_id, 77);
    }

    #[test]
    fn without_a_relation_meta_the_roi_reader_alone_applies() {
        init();
        let mut buffer = gst::Buffer::new();
        let object = Object {
            label: "box".into(),
            rect: Rect {
                x: 1,
                y: 2,
                w: 3,
                h: 4,
            },
            region_id: 5,
            tracking_id: Some(9),
            ..Object::default()
        };
        roi::attach_objects(buffer.get_mut().unwrap(), &[object], 100, 100);
        assert_eq!(read_objects(&buffer), roi::read_objects(&buffer));
    }

    #[test]
    fn removing_an_object_removes_what_belongs_to_it() {
        init();
        let (mut buffer, car, person) = relation_only();
        let rois = [car, person].map(|id| Object {
            label: "x".into(),
            region_id: id as i32,
            ..Object::default()
        });
        roi::attach_objects(buffer.get_mut().unwrap(), &rois, 100, 100);

        let (removed, _) = retain_objects(buffer.get_mut().unwrap(), |o| o.label != "car");
        assert_eq!(removed, 1);
        let objects = read_objects(&buffer).objects;
        assert_eq!(objects.len(), 1, "{objects:?}");
        assert_eq!(objects[0].label, "person");
        // One ROI meta left, carrying the person's new ODMtd id.
        let rois: Vec<i32> = buffer
            .iter_meta::<VideoRegionOfInterestMeta>()
            .map(|r| r.id())
            .collect();
        assert_eq!(rois, [objects[0].region_id]);
        // The car's classification and tracking records are gone too.
        let meta = buffer.meta::<AnalyticsRelationMeta>().unwrap();
        assert_eq!(meta.iter::<AnalyticsClassificationMtd>().count(), 0);
        assert_eq!(meta.iter::<AnalyticsTrackingMtd>().count(), 0);
        assert_eq!(meta.iter::<AnalyticsODMtd>().count(), 1);
    }

    #[test]
    fn renumbered_odmtds_never_take_the_id_of_an_roi_meta_of_their_own() {
        init();
        let mut buffer = gst::Buffer::new();
        {
            let mut meta = AnalyticsRelationMeta::add(buffer.get_mut().unwrap());
            let a = meta.add_od_mtd(q("a"), 0, 0, 1, 1, 0.1).unwrap().id();
            let cls = meta.add_one_cls_mtd(0.5, q("x")).unwrap().id();
            let b = meta.add_od_mtd(q("b"), 0, 0, 1, 1, 0.9).unwrap().id();
            meta.set_relation(RelTypes::CONTAIN, b, cls).unwrap();
            assert_eq!((a, cls, b), (0, 1, 2));
        }
        // An ROI meta of another producer, with the id the ClsMtd has.
        let other = Object {
            label: "box".into(),
            region_id: 1,
            ..Object::default()
        };
        roi::attach_objects(buffer.get_mut().unwrap(), &[other], 100, 100);
        let (removed, _) = retain_objects(buffer.get_mut().unwrap(), |o| o.label != "a");
        assert_eq!(removed, 1);
        let objects = read_objects(&buffer).objects;
        let labels: Vec<&str> = objects.iter().map(|o| o.label.as_str()).collect();
        assert_eq!(labels, ["b", "box"], "{objects:?}");
        assert_eq!(objects[0].classifications[0].label, "x");
        assert_ne!(objects[0].region_id, objects[1].region_id);
    }

    #[test]
    fn removing_a_result_carried_in_both_forms_removes_both() {
        init();
        let (mut buffer, car, _) = relation_only();
        let roi_car = Object {
            label: "car".into(),
            region_id: car as i32,
            classifications: vec![Classification {
                name: "color".into(),
                label: "red".into(),
                confidence: Some(0.5),
                ..Classification::default()
            }],
            ..Object::default()
        };
        roi::attach_objects(buffer.get_mut().unwrap(), &[roi_car], 100, 100);
        assert_eq!(read_objects(&buffer).objects[0].classifications.len(), 1);
        let (removed, _) =
            retain_classifications(buffer.get_mut().unwrap(), |_, c| c.label != "red");
        assert_eq!(removed, 1);
        let objects = read_objects(&buffer).objects;
        assert!(objects[0].classifications.is_empty(), "{objects:?}");
    }

    #[test]
    fn removing_a_classification_keeps_the_object() {
        init();
        let (mut buffer, _, _) = relation_only();
        let (removed, _) =
            retain_classifications(buffer.get_mut().unwrap(), |_, c| c.label != "red");
        assert_eq!(removed, 1);
        let objects = read_objects(&buffer).objects;
        assert_eq!(objects.len(), 2);
        assert!(objects[0].classifications.is_empty());
        assert_eq!(objects[0].tracking_id, Some(42));
    }

    #[test]
    fn attached_objects_read_back_once_with_both_forms_present() {
        init();
        let objects = vec![
            Object {
                label: "car".into(),
                rect: Rect {
                    x: 10,
                    y: 20,
                    w: 30,
                    h: 40,
                },
                region_id: 100,
                tracking_id: Some(7),
                detection: Some(Detection {
                    confidence: Some(0.5),
                    label_id: Some(2),
                    bounding_box: None,
                    rotation: None,
                }),
                classifications: vec![Classification {
                    name: "color".into(),
                    label: "blue".into(),
                    confidence: Some(0.25),
                    ..Classification::default()
                }],
                ..Object::default()
            },
            Object {
                label: "plate".into(),
                rect: Rect {
                    x: 12,
                    y: 50,
                    w: 10,
                    h: 5,
                },
                region_id: 101,
                parent_id: Some(100),
                ..Object::default()
            },
        ];
        let mut buffer = gst::Buffer::new();
        attach_objects(buffer.get_mut().unwrap(), &objects, 100, 100);
        let meta = buffer.meta::<AnalyticsRelationMeta>().unwrap();
        let ods: Vec<u32> = meta.iter::<AnalyticsODMtd>().map(|m| m.id()).collect();
        assert_eq!(ods.len(), 2);
        let rois: Vec<i32> = buffer
            .iter_meta::<VideoRegionOfInterestMeta>()
            .map(|r| r.id())
            .collect();
        assert_eq!(rois, ods.iter().map(|id| *id as i32).collect::<Vec<_>>());

        let read = read_objects(&buffer).objects;
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].label, "car");
        assert_eq!(read[0].tracking_id, Some(7));
        assert_eq!(read[0].classifications.len(), 1);
        assert_eq!(read[0].classifications[0].name, "color");
        assert_eq!(read[1].parent_id, Some(ods[0] as i32));
        assert_eq!(read[1].region_id, ods[1] as i32);
    }

    #[cfg(feature = "analytics-oriented")]
    #[test]
    fn an_oriented_box_is_read_before_rotation_and_keeps_its_rotation_when_rebuilt() {
        init();
        let mut buffer = gst::Buffer::new();
        {
            let mut meta = AnalyticsRelationMeta::add(buffer.get_mut().unwrap());
            meta.add_oriented_od_mtd(q("truck"), 600, 400, 200, 100, 0.785, 0.5)
                .unwrap();
            meta.add_od_mtd(q("cone"), 10, 10, 5, 5, 0.2).unwrap();
        }
        let truck = Rect {
            x: 600,
            y: 400,
            w: 200,
            h: 100,
        };
        let rotation = Some(f64::from(0.785f32));
        let objects = read_objects(&buffer).objects;
        assert_eq!(objects[0].rect, truck, "the box before rotation");
        assert_eq!(objects[0].detection.as_ref().unwrap().rotation, rotation);
        assert_eq!(objects[1].detection.as_ref().unwrap().rotation, None);

        // Removing the cone rebuilds the relation meta: the truck stays oriented.
        let (removed, _) = retain_objects(buffer.get_mut().unwrap(), |o| o.label != "cone");
        assert_eq!(removed, 1);
        let objects = read_objects(&buffer).objects;
        assert_eq!(objects.len(), 1);
        assert_eq!(objects[0].rect, truck);
        assert_eq!(objects[0].detection.as_ref().unwrap().rotation, rotation);
    }
}
