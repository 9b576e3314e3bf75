// SPDX-License-Identifier: MPL-2.0

//! Fuzzes the `label-score` property parser, `filter::parse_label_score`.
//!
//! Checks besides "no panic": errors are non-empty; every accepted threshold is within
//! 0..1; the property and the configuration file's `filter.label_score` agree on what
//! they accept; and an accepted map, written back as JSON, parses again to the same map.
//!
//! "The same" up to how serde_json reads floats: without its `float_roundtrip` feature it
//! does not read every decimal to the nearest f64 (`2e-24` reads as
//! `2.0000000000000002e-24`, and that, written and read again, as `2e-24`), so a threshold
//! may move by an ulp per write and read. The expected map holds what serde_json reads
//! back from the written text of each threshold, and the comparison stays exact.

#![no_main]

use gstanalyticsmqtt::internals::{filter_config_from_value, parse_label_score};
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    // A GObject string property is UTF-8.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_label_score(text);

    // The same text as the `label_score` of a DLSPS filter object.
    let from_config = serde_json::from_str::<Value>(text).ok().map(|v| {
        filter_config_from_value(&serde_json::json!({ "type": "detection", "label_score": v }))
            .map(|c| c.label_score.expect("label_score was given"))
    });

    match parsed {
        Err(err) => {
            assert!(!err.is_empty(), "empty error for {text:?}");
            if let Some(from_config) = from_config {
                assert!(
                    from_config.is_err(),
                    "the property rejects {text:?} ({err}) but the filter file accepts it"
                );
            }
        }
        Ok(map) => {
            for (label, threshold) in &map {
                assert!(
                    threshold.is_finite() && (0.0..=1.0).contains(threshold),
                    "threshold {threshold} for {label:?} accepted from {text:?}"
                );
            }
            match from_config {
                Some(Ok(other)) => assert_eq!(map, other, "property and file differ"),
                other => panic!("the property accepts {text:?} but the file gives {other:?}"),
            }
            // What the element's getter returns (written as it does) parses back to the
            // same thresholds.
            let written = Value::Object(
                map.iter()
                    .map(|(label, t)| (label.clone(), (*t).into()))
                    .collect(),
            )
            .to_string();
            let again = parse_label_score(&written)
                .unwrap_or_else(|e| panic!("written {written:?} does not parse again: {e}"));
            let expected: HashMap<String, f64> = map
                .iter()
                .map(|(label, t)| {
                    let t_text = Value::from(*t).to_string();
                    (
                        label.clone(),
                        serde_json::from_str(&t_text).expect("a float parses"),
                    )
                })
                .collect();
            assert_eq!(expected, again, "{text:?} -> {written:?}");
        }
    }
});
