// SPDX-License-Identifier: MPL-2.0

//! ClsMtds of no object: results about the whole frame (scene classification), read as DL
//! Streamer 2026.1's `gvametaconvert` reads them.
//!
//! A ClsMtd is about the whole frame when it IS_PART_OF no ODMtd and no ODMtd CONTAINs it or
//! RELATEs_TO it (DL Streamer's `gvadetect` relates each ODMtd to a ClsMtd listing the
//! model's classes, which is not a result). Like a ClsMtd of an object, all its classes make
//! one result: the labels joined by spaces, the highest confidence; the results are named
//! `classification`, `classification_2`, ... (GStreamer 1.26 has no semantic tags, which DL
//! Streamer puts in the name). None has a `label_id`: DL Streamer finds it through a class
//! descriptor, which it recognizes by its semantic tag.
//!
//! DL Streamer 2026's `gvaclassify` writes a full-frame result twice, as a `GstGVATensorMeta`
//! and as a ClsMtd of the same label: such a ClsMtd is the tensor's result and is not
//! published again, and it goes when the tensor's result is removed.

use std::collections::HashSet;

use gst::glib;
use gst_analytics::{
    AnalyticsClassificationMtd, AnalyticsMetaRefExt, AnalyticsMtdRef, AnalyticsODMtd,
    AnalyticsRelationMeta, AnalyticsRelationMetaClassificationExt, RelTypes,
};

use super::super::frame::{FrameResults, Tensor};
use super::super::{Classification, CAT};
use super::{read_cls, rebuild, CLASSIFICATION};

/// A ClsMtd of no object.
pub struct FrameCls {
    pub id: u32,
    pub classification: Classification,
    /// The tensor meta carrying the same result, by index.
    pub paired: Option<usize>,
}

/// Whether the record `id` belongs to an object: part of an ODMtd, or contained by or
/// related to one.
fn belongs_to_an_object(meta: &gst::MetaRef<'_, AnalyticsRelationMeta>, id: u32) -> bool {
    meta.iter_direct_related::<AnalyticsODMtd>(id, RelTypes::IS_PART_OF)
        .next()
        .is_some()
        || meta.iter::<AnalyticsODMtd>().any(|od| {
            meta.relation(od.id(), id)
                .intersects(RelTypes::CONTAIN | RelTypes::RELATE_TO)
        })
}

/// Every ClsMtd of no object on `buffer`, paired with the labelled tensors of `tensors`.
fn read_all(buffer: &gst::BufferRef, tensors: &[Tensor], invalid: &mut u32) -> Vec<FrameCls> {
    let Some(meta) = buffer.meta::<AnalyticsRelationMeta>() else {
        return Vec::new();
    };
    let mut unpaired_tensors: Vec<(usize, String)> = tensors
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((i, t.label.clone().filter(|l| !l.is_empty())?)))
        .collect();
    let mut out = Vec::new();
    let mut published = 0;
    for cls in meta.iter::<AnalyticsClassificationMtd>() {
        if belongs_to_an_object(&meta, cls.id()) {
            continue;
        }
        let mut n = 0;
        let Some(mut classification) = read_cls(&cls, &mut n, invalid) else {
            continue;
        };
        let paired = unpaired_tensors
            .iter()
            .position(|(_, label)| *label == classification.label)
            .map(|at| unpaired_tensors.remove(at).0);
        if paired.is_none() {
            published += 1;
            classification.name = if published == 1 {
                CLASSIFICATION.to_owned()
            } else {
                format!("{CLASSIFICATION}_{published}")
            };
        }
        out.push(FrameCls {
            id: cls.id(),
            classification,
            paired,
        });
    }
    gst::trace!(CAT, "Read {} frame-level ClsMtds", out.len());
    out
}

/// The frame-level ClsMtds on `buffer` that are results of their own (not also carried by
/// one of `tensors`).
pub fn read(buffer: &gst::BufferRef, tensors: &[Tensor], invalid: &mut u32) -> Vec<FrameCls> {
    read_all(buffer, tensors, invalid)
        .into_iter()
        .filter(|cls| cls.paired.is_none())
        .collect()
}

/// Leaves out of the relation meta each frame-level ClsMtd for which `keep` returns false,
/// and the ClsMtds of the tensors being removed (`doomed_tensors`, parallel to `tensors`,
/// read before their removal). Returns how many results of their own were removed.
pub fn retain(
    buffer: &mut gst::BufferRef,
    tensors: &[Tensor],
    doomed_tensors: &[bool],
    keep: &mut impl FnMut(&Classification) -> bool,
    invalid: &mut u32,
) -> u32 {
    let mut removed = 0;
    let mut doomed = HashSet::new();
    for cls in read_all(buffer, tensors, invalid) {
        match cls.paired {
            Some(i) => {
                if doomed_tensors.get(i).copied().unwrap_or(false) {
                    doomed.insert(cls.id);
                }
            }
            None => {
                if !keep(&cls.classification) {
                    doomed.insert(cls.id);
                    removed += 1;
                }
            }
        }
    }
    if !doomed.is_empty() {
        rebuild(buffer, &doomed);
    }
    removed
}

/// Attaches each labelled result of `frame` as a ClsMtd of one class related to nothing, as
/// DL Streamer 2026's `gvaclassify inference-region=full-frame` does beside its tensor meta.
pub fn attach(buffer: &mut gst::BufferRef, frame: &FrameResults) {
    let results: Vec<Classification> = frame
        .tensors
        .iter()
        .filter_map(Tensor::classification)
        .chain(frame.classifications.iter().cloned())
        .filter(|c| !c.label.is_empty())
        .collect();
    if results.is_empty() {
        return;
    }
    let mut meta = match buffer.meta_mut::<AnalyticsRelationMeta>() {
        Some(meta) => meta,
        None => AnalyticsRelationMeta::add(buffer),
    };
    for c in results {
        let added = meta.add_one_cls_mtd(
            c.confidence.unwrap_or(0.0) as f32,
            glib::Quark::from_str(c.label.as_str()),
        );
        if let Err(err) = added.map(|m: AnalyticsMtdRef<'_, AnalyticsClassificationMtd>| m.id()) {
            gst::warning!(CAT, "Could not attach a ClsMtd for {}: {err}", c.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::frame::CLASSIFICATION_RESULT;
    use gst_analytics::AnalyticsRelationMetaODExt;

    fn q(s: &str) -> glib::Quark {
        glib::Quark::from_str(s)
    }

    fn tensor(label: &str) -> Tensor {
        Tensor {
            name: "scene".into(),
            kind: Some(CLASSIFICATION_RESULT.into()),
            label: Some(label.into()),
            confidence: Some(0.5),
            model_name: Some("scene-net".into()),
            ..Tensor::default()
        }
    }

    /// A buffer with an object (its attribute, a class descriptor it relates to) and two
    /// ClsMtds of no object.
    fn buffer() -> gst::Buffer {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        {
            let mut meta = AnalyticsRelationMeta::add(buffer.get_mut().unwrap());
            let od = meta.add_od_mtd(q("car"), 1, 2, 3, 4, 0.9).unwrap().id();
            let color = meta.add_one_cls_mtd(0.8, q("red")).unwrap().id();
            meta.set_relation(RelTypes::CONTAIN, od, color).unwrap();
            meta.set_relation(RelTypes::IS_PART_OF, color, od).unwrap();
            let descriptor = meta
                .add_cls_mtd(&[0.0, 0.0], &[q("car"), q("bus")])
                .unwrap()
                .id();
            meta.set_relation(RelTypes::RELATE_TO, od, descriptor)
                .unwrap();
            meta.add_cls_mtd(&[0.75, 0.25], &[q("indoor"), q("office")])
                .unwrap();
            meta.add_one_cls_mtd(0.5, q("day")).unwrap();
        }
        buffer
    }

    #[test]
    fn only_classifications_of_no_object_are_frame_level() {
        let buffer = buffer();
        let mut invalid = 0;
        let all: Vec<Classification> = read(&buffer, &[], &mut invalid)
            .into_iter()
            .map(|c| c.classification)
            .collect();
        assert_eq!(
            all,
            [
                Classification {
                    name: "classification".into(),
                    label: "indoor office".into(),
                    confidence: Some(0.75),
                    ..Classification::default()
                },
                Classification {
                    name: "classification_2".into(),
                    label: "day".into(),
                    confidence: Some(0.5),
                    ..Classification::default()
                }
            ]
        );
        // The tensor meta of the same label carries "day": not published twice.
        let unpaired = read(&buffer, &[tensor("day")], &mut invalid);
        assert_eq!(unpaired.len(), 1);
        assert_eq!(unpaired[0].classification.name, "classification");
        assert_eq!(invalid, 0);
    }

    #[test]
    fn removing_keeps_the_object_and_follows_the_tensor() {
        let mut buffer = buffer();
        let tensors = [tensor("day")];
        let mut invalid = 0;
        // "day" goes with its tensor; "indoor office" stays (kept by `keep`).
        let removed = retain(
            buffer.get_mut().unwrap(),
            &tensors,
            &[true],
            &mut |c: &Classification| c.label != "day",
            &mut invalid,
        );
        assert_eq!(removed, 0, "counted with the tensor");
        let left = read(&buffer, &[], &mut invalid);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].classification.label, "indoor office");
        let objects = crate::meta::read_objects(&buffer).objects;
        assert_eq!(objects[0].classifications[0].label, "red");

        let removed = retain(
            buffer.get_mut().unwrap(),
            &[],
            &[],
            &mut |c: &Classification| c.confidence.unwrap_or(0.0) > 0.8,
            &mut invalid,
        );
        assert_eq!(removed, 1);
        assert!(read(&buffer, &[], &mut invalid).is_empty());
        assert_eq!(crate::meta::read_objects(&buffer).objects.len(), 1);
    }

    #[test]
    fn attached_results_are_classifications_of_no_object() {
        gst::init().unwrap();
        let mut buffer = gst::Buffer::new();
        let frame = FrameResults {
            tensors: vec![
                tensor("indoor"),
                Tensor {
                    name: "inference_layer_name:prob".into(),
                    ..Tensor::default()
                },
            ],
            classifications: Vec::new(),
        };
        attach(buffer.get_mut().unwrap(), &frame);
        let mut invalid = 0;
        let all = read_all(&buffer, &frame.tensors, &mut invalid);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].paired, Some(0));
        assert_eq!(all[0].classification.label, "indoor");
    }
}
