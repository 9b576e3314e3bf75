// SPDX-License-Identifier: MPL-2.0

//! The confidence filter shared by `metafilter` and `mqttpublish`: per-label thresholds
//! applied to the metadata on a buffer or to objects already read off one, and (in
//! [`config`]) its form in DLSPS configurations.

use std::collections::HashMap;

use gst::glib;
use serde_json::Value;

use crate::meta::{self, Classification, FrameResults, Object};

mod config;

pub use config::{check_threshold, filter_config_from_value, parse_label_score, FilterConfig};

/// What a filter removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMetaFilterType")]
pub enum FilterType {
    /// Whole objects whose detection confidence is below their label's threshold.
    #[default]
    #[enum_value(
        name = "Detection: remove objects whose confidence is below their label's threshold",
        nick = "detection"
    )]
    Detection,
    /// Classification results below their label's threshold; the objects stay.
    #[enum_value(
        name = "Classification: remove classification results below their label's threshold",
        nick = "classification"
    )]
    Classification,
}

impl FilterType {
    pub fn from_nick(nick: &str) -> Option<Self> {
        match nick {
            "detection" => Some(FilterType::Detection),
            "classification" => Some(FilterType::Classification),
            _ => None,
        }
    }
}

/// Per-label confidence thresholds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    pub kind: FilterType,
    /// Threshold per label. Labels may contain spaces.
    pub label_score: HashMap<String, f64>,
    /// Threshold for labels not in `label_score`.
    pub threshold: f64,
    /// Remove results that carry no confidence when a threshold applies to their label.
    pub drop_unscored: bool,
}

/// What applying a filter to one frame did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FilterOutcome {
    /// Objects (detection filter) or classification results (classification filter) removed.
    pub removed: u32,
    /// Confidences that were NaN, infinite or outside 0..1 and were treated as absent.
    pub invalid_confidences: u32,
}

impl Filter {
    /// The threshold that applies to `label`, `None` when nothing is configured for it.
    fn threshold_for(&self, label: &str) -> Option<f64> {
        self.label_score
            .get(label)
            .copied()
            .or((self.threshold > 0.0).then_some(self.threshold))
    }

    /// Whether a result with this label and confidence passes the filter.
    pub fn keeps(&self, label: &str, confidence: Option<f64>) -> bool {
        match (self.threshold_for(label), confidence) {
            (None, _) => true,
            (Some(threshold), Some(confidence)) => confidence >= threshold,
            (Some(_), None) => !self.drop_unscored,
        }
    }

    fn keeps_object(&self, object: &Object) -> bool {
        self.keeps(&object.label, object.confidence())
    }

    fn keeps_classification(&self, c: &Classification) -> bool {
        self.keeps(&c.label, c.confidence)
    }

    /// Removes what falls below the thresholds from the metadata on `buffer`: the
    /// region-of-interest metas (with the `classification` type, also the frame-level
    /// results: tensor metas and ClsMtds of no object) and the objects of gvametaconvert's
    /// JSON metas, so that what is published from either never shows what was removed.
    /// Objects described by both are counted once.
    pub fn apply_to_buffer(&self, buffer: &mut gst::BufferRef) -> FilterOutcome {
        let (removed, invalid_confidences) = match self.kind {
            FilterType::Detection => meta::retain_objects(buffer, |o| self.keeps_object(o)),
            FilterType::Classification => {
                let (objects, invalid) =
                    meta::retain_classifications(buffer, |_, c| self.keeps_classification(c));
                let (frame, frame_invalid) =
                    meta::retain_frame_classifications(buffer, |c| self.keeps_classification(c));
                (objects + frame, invalid + frame_invalid)
            }
        };
        let mut removed_from_json = 0;
        meta::rewrite_json_messages(buffer, |text| {
            let mut frame = serde_json::from_str::<serde_json::Map<String, Value>>(text).ok()?;
            let removed = self.apply_to_json(&mut frame);
            removed_from_json = removed_from_json.max(removed);
            (removed > 0).then(|| Value::Object(frame).to_string())
        });
        FilterOutcome {
            removed: removed.max(removed_from_json),
            invalid_confidences,
        }
    }

    /// Removes what falls below the thresholds from objects already read off a buffer.
    /// Returns how many objects or classification results were removed.
    pub fn apply_to_objects(&self, objects: &mut Vec<Object>) -> u32 {
        let before: usize;
        let after: usize;
        match self.kind {
            FilterType::Detection => {
                before = objects.len();
                objects.retain(|o| self.keeps_object(o));
                after = objects.len();
            }
            FilterType::Classification => {
                before = objects.iter().map(|o| o.classifications.len()).sum();
                for o in objects.iter_mut() {
                    o.classifications.retain(|c| self.keeps_classification(c));
                }
                after = objects.iter().map(|o| o.classifications.len()).sum();
            }
        }
        (before - after) as u32
    }

    /// Removes what falls below the thresholds from results about the whole frame read off a
    /// buffer (the `classification` type only: they are not detections). Returns how many
    /// were removed.
    pub fn apply_to_frame(&self, frame: &mut FrameResults) -> u32 {
        if self.kind != FilterType::Classification {
            return 0;
        }
        let before = frame.tensors.len() + frame.classifications.len();
        frame
            .classifications
            .retain(|c| self.keeps_classification(c));
        frame.tensors.retain(|t| {
            t.classification()
                .is_none_or(|c| self.keeps_classification(&c))
        });
        (before - frame.tensors.len() - frame.classifications.len()) as u32
    }

    /// Removes what falls below the thresholds from the `objects` of a gvametaconvert JSON
    /// document (a `GstGVAJSONMeta`'s message), keeping every other key as it is. An object's
    /// label is its `detection.label` (else `roi_type`); a classification result is any
    /// key of an object whose value is an object with a `label`. The full-frame object (see
    /// [`meta::is_full_frame_object`]) is not a detection: the `detection` type leaves it, the
    /// `classification` type removes its results. Returns how many objects or
    /// classification results were removed.
    pub fn apply_to_json(&self, frame: &mut serde_json::Map<String, Value>) -> u32 {
        let Some(Value::Array(objects)) = frame.get_mut("objects") else {
            return 0;
        };
        let confidence = |v: &Value| {
            v.get("confidence")
                .and_then(Value::as_f64)
                .and_then(meta::valid_confidence)
        };
        let mut removed = 0;
        match self.kind {
            FilterType::Detection => objects.retain(|object| {
                if object.as_object().is_some_and(meta::is_full_frame_object) {
                    return true;
                }
                let detection = object.get("detection");
                let label = detection
                    .and_then(|d| d.get("label"))
                    .or_else(|| object.get("roi_type"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let keep = self.keeps(label, detection.and_then(confidence));
                removed += u32::from(!keep);
                keep
            }),
            FilterType::Classification => {
                for object in objects.iter_mut().filter_map(Value::as_object_mut) {
                    object.retain(|key, value| {
                        let label = value.get("label").and_then(Value::as_str);
                        let keep = match label {
                            Some(label) if key != "detection" => {
                                self.keeps(label, confidence(value))
                            }
                            _ => true,
                        };
                        removed += u32::from(!keep);
                        keep
                    });
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(label_score: &[(&str, f64)], threshold: f64, drop_unscored: bool) -> Filter {
        Filter {
            kind: FilterType::Detection,
            label_score: label_score
                .iter()
                .map(|(l, t)| (l.to_string(), *t))
                .collect(),
            threshold,
            drop_unscored,
        }
    }

    #[test]
    fn named_labels_use_their_threshold() {
        let f = filter(&[("box", 0.4), ("shipping label", 0.6)], 0.0, false);
        assert!(f.keeps("box", Some(0.4)));
        assert!(!f.keeps("box", Some(0.39)));
        assert!(!f.keeps("shipping label", Some(0.5)));
        assert!(f.keeps("shipping label", Some(0.6)));
        // Not named and no default threshold: passes.
        assert!(f.keeps("person", Some(0.01)));
    }

    #[test]
    fn default_threshold_applies_to_unnamed_labels() {
        let f = filter(&[("box", 0.2)], 0.5, false);
        assert!(!f.keeps("person", Some(0.49)));
        assert!(f.keeps("person", Some(0.5)));
        assert!(f.keeps("box", Some(0.3)));
    }

    #[test]
    fn unscored_results_are_dropped_only_when_asked_and_a_threshold_applies() {
        let keep = filter(&[("box", 0.4)], 0.0, false);
        assert!(keep.keeps("box", None));
        let drop = filter(&[("box", 0.4)], 0.0, true);
        assert!(!drop.keeps("box", None));
        assert!(drop.keeps("person", None), "no threshold for person");
        let drop_all = filter(&[], 0.3, true);
        assert!(!drop_all.keeps("person", None));
    }

    #[test]
    fn apply_to_json_keeps_every_other_key() {
        let mut frame: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"objects":[
                {"detection":{"confidence":0.9,"label":"box"},"color":{"confidence":0.2,"label":"red"},"tensors":[1]},
                {"detection":{"confidence":0.1,"label":"box"}},
                {"roi_type":"car","region_id":4}
            ],"timestamp":7,"extra":{"k":"v"}}"#,
        )
        .unwrap();
        let mut classification = frame.clone();
        let f = filter(&[("box", 0.5)], 0.0, true);
        assert_eq!(f.apply_to_json(&mut frame), 1);
        let objects = frame["objects"].as_array().unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[0]["tensors"], serde_json::json!([1]));
        assert_eq!(objects[1]["roi_type"], "car", "no threshold for car");
        assert_eq!(frame["extra"]["k"], "v");

        let f = Filter {
            kind: FilterType::Classification,
            ..filter(&[("red", 0.5)], 0.0, false)
        };
        assert_eq!(f.apply_to_json(&mut classification), 1);
        let first = &classification["objects"][0];
        assert!(first.get("color").is_none(), "{first}");
        assert_eq!(first["detection"]["label"], "box", "detections stay");
    }

    #[test]
    fn apply_to_objects_counts_removals() {
        use crate::meta::Detection;
        let object = |label: &str, confidence: f64| Object {
            label: label.into(),
            detection: Some(Detection {
                confidence: Some(confidence),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut objects = vec![object("box", 0.9), object("box", 0.1), object("car", 0.2)];
        let f = filter(&[("box", 0.5)], 0.0, false);
        assert_eq!(f.apply_to_objects(&mut objects), 1);
        assert_eq!(
            objects.iter().map(|o| o.confidence()).collect::<Vec<_>>(),
            [Some(0.9), Some(0.2)]
        );
    }

    #[test]
    fn frame_level_results_are_classifications_never_detections() {
        use crate::meta::Tensor;
        let tensor = |name: &str, label: Option<&str>, confidence: f64| Tensor {
            name: name.into(),
            label: label.map(Into::into),
            confidence: Some(confidence),
            ..Tensor::default()
        };
        let frame = FrameResults {
            tensors: vec![
                tensor("scene", Some("indoor"), 0.9),
                tensor("daytime", Some("day"), 0.3),
                tensor("inference_layer_name:prob", None, 0.1),
            ],
            classifications: vec![Classification {
                name: "classification".into(),
                label: "office".into(),
                confidence: Some(0.2),
                ..Classification::default()
            }],
        };
        let detection = filter(&[], 0.5, true);
        let mut kept = frame.clone();
        assert_eq!(detection.apply_to_frame(&mut kept), 0);
        assert_eq!(kept, frame);

        let classification = Filter {
            kind: FilterType::Classification,
            ..filter(&[("day", 0.5), ("office", 0.5)], 0.0, false)
        };
        let mut filtered = frame.clone();
        assert_eq!(classification.apply_to_frame(&mut filtered), 2);
        let names: Vec<&str> = filtered.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["scene", "inference_layer_name:prob"],
            "raw tensors stay"
        );
        assert!(filtered.classifications.is_empty());

        // In gvametaconvert's JSON: the full-frame object is no detection; its results are
        // classifications.
        let mut json: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"objects":[{"detection":{"confidence":0.9,"label":"box"},"h":1,"region_id":0,"roi_type":"box","w":1,"x":5,"y":5},
                {"daytime":{"confidence":0.3,"label":"day"},"h":480,"scene":{"confidence":0.9,"label":"indoor"},"w":640,"x":0,"y":0}]}"#,
        )
        .unwrap();
        let mut by_classification = json.clone();
        assert_eq!(detection.apply_to_json(&mut json), 0);
        assert_eq!(json["objects"].as_array().unwrap().len(), 2);
        assert_eq!(classification.apply_to_json(&mut by_classification), 1);
        let full_frame = &by_classification["objects"][1];
        assert!(full_frame.get("daytime").is_none(), "{full_frame}");
        assert_eq!(full_frame["scene"]["label"], "indoor");
    }
}
