// SPDX-License-Identifier: MPL-2.0

//! The filter as DL Streamer Pipeline Server configurations write it:
//! `{"type": "detection"|"classification", "label_score": {..}}`, in the `mqtt_publisher`
//! section or a file of its own, and the `label-score` / `threshold` values of
//! `metafilter`'s properties. Errors name the key and show objects and arrays only by
//! their kind (see [`shown`]).

use std::collections::HashMap;

use serde_json::Value;

use super::{Filter, FilterType};
use crate::error::shown;
use crate::meta;

/// A filter as written in a DLSPS configuration: `type` is required (DLSPS refuses a filter
/// without one), `label_score` optional, so that it can be laid over the current settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub kind: FilterType,
    pub label_score: Option<HashMap<String, f64>>,
    /// Keys DLSPS ignores in a filter, and so does this plugin, for a warning.
    pub unknown_keys: Vec<String>,
}

impl FilterConfig {
    /// Overwrites the parts of `filter` that this configuration sets.
    pub fn apply(&self, filter: &mut Filter) {
        filter.kind = self.kind;
        if let Some(label_score) = &self.label_score {
            filter.label_score = label_score.clone();
        }
    }
}

/// Checks a threshold: a number within 0..1.
pub fn check_threshold(what: &str, value: f64) -> Result<f64, String> {
    meta::valid_confidence(value)
        .ok_or_else(|| format!("{what}: threshold {value} is outside 0..1"))
}

/// Parses a `label_score` JSON object text such as `{"box":0.4,"shipping label":0.4}`.
pub fn parse_label_score(text: &str) -> Result<HashMap<String, f64>, String> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON ({e}) in {text:?}"))?;
    label_score_from_value(&value)
}

fn label_score_from_value(value: &Value) -> Result<HashMap<String, f64>, String> {
    let map = value.as_object().ok_or_else(|| {
        format!(
            "expected a JSON object mapping labels to thresholds, got {}",
            shown(value)
        )
    })?;
    map.iter()
        .map(|(label, v)| {
            let threshold = v.as_f64().ok_or_else(|| {
                format!(
                    "label {label:?}: threshold must be a number, got {}",
                    shown(v)
                )
            })?;
            Ok((
                label.clone(),
                check_threshold(&format!("label {label:?}"), threshold)?,
            ))
        })
        .collect()
}

/// Parses a DLSPS filter object: `{"type": "detection"|"classification", "label_score": {..}}`.
pub fn filter_config_from_value(value: &Value) -> Result<FilterConfig, String> {
    let map = value
        .as_object()
        .ok_or_else(|| format!("filter: expected a JSON object, got {}", shown(value)))?;
    let mut kind = None;
    let mut label_score = None;
    let mut unknown_keys = Vec::new();
    for (key, v) in map {
        match key.as_str() {
            "type" => {
                let nick = v
                    .as_str()
                    .ok_or_else(|| format!("filter.type: expected a string, got {}", shown(v)))?;
                kind = Some(FilterType::from_nick(nick).ok_or_else(|| {
                    format!("filter.type: unknown type {nick:?} (use \"detection\" or \"classification\")")
                })?);
            }
            "label_score" => {
                label_score = Some(
                    label_score_from_value(v).map_err(|e| format!("filter.label_score: {e}"))?,
                );
            }
            other => unknown_keys.push(other.to_owned()),
        }
    }
    let kind = kind.ok_or(
        "filter.type: missing; a filter needs \"type\": \"detection\" or \"classification\"",
    )?;
    Ok(FilterConfig {
        kind,
        label_score,
        unknown_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_score_parsing_names_the_problem() {
        let ok = parse_label_score(r#"{"box":0.4,"shipping label":1}"#).unwrap();
        assert_eq!(ok["shipping label"], 1.0);
        assert_eq!(ok["box"], 0.4);
        let err = parse_label_score(r#"{"box":"high"}"#).unwrap_err();
        assert!(err.contains("\"box\"") && err.contains("number"), "{err}");
        let err = parse_label_score(r#"{"box":1.5}"#).unwrap_err();
        assert!(err.contains("1.5") && err.contains("0..1"), "{err}");
        let err = parse_label_score("{box: 0.4}").unwrap_err();
        assert!(err.contains("invalid JSON"), "{err}");
        let err = parse_label_score("[0.4]").unwrap_err();
        assert!(err.contains("JSON object"), "{err}");
    }

    #[test]
    fn dlsps_filter_object() {
        let v: Value =
            serde_json::from_str(r#"{"type":"classification","label_score":{"red":0.7}}"#).unwrap();
        let c = filter_config_from_value(&v).unwrap();
        assert_eq!(c.kind, FilterType::Classification);
        assert_eq!(c.label_score.unwrap()["red"], 0.7);

        let v: Value = serde_json::from_str(r#"{"type":"segmentation"}"#).unwrap();
        let err = filter_config_from_value(&v).unwrap_err();
        assert!(
            err.contains("filter.type") && err.contains("segmentation"),
            "{err}"
        );
    }

    #[test]
    fn a_filter_without_type_is_refused() {
        let missing = "filter.type: missing; a filter needs \"type\": \"detection\" or \
                       \"classification\"";
        for text in [r#"{"label_score":{"box":0.4}}"#, "{}"] {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(filter_config_from_value(&v).unwrap_err(), missing, "{text}");
        }
    }

    #[test]
    fn errors_show_objects_and_arrays_only_by_kind() {
        // They may hold a password (see `error::shown`).
        let v: Value = serde_json::from_str(
            r#"{"type":"detection","label_score":{"box":{"password":"s3cr3t"}}}"#,
        )
        .unwrap();
        let err = filter_config_from_value(&v).unwrap_err();
        assert!(
            err.ends_with("got an object") && !err.contains("s3cr3t"),
            "{err}"
        );
        let err = parse_label_score(r#"[{"password":"s3cr3t"}]"#).unwrap_err();
        assert!(
            err.ends_with("got an array") && !err.contains("s3cr3t"),
            "{err}"
        );
    }
}
