// SPDX-License-Identifier: MPL-2.0

//! Fuzzes the configuration-file path: bytes -> `serde_json::from_slice` ->
//! `config::section` (a DLSPS config.json, a REST request body, an mqtt_publisher section)
//! -> `PublisherConfig::from_value` (and `filter_config_from_value`), the way
//! `ConfigFile::publisher` and `ConfigFile::filter` see a file.
//!
//! Besides "no panic" it checks that errors are non-empty and that no error (nor the
//! `Debug` form of a parsed configuration) ever shows the value of a `password` key: every
//! `password` key in the input, at any depth, gets a recognisable secret planted as its
//! value before parsing, and the outputs are searched for it.

#![no_main]

use gstanalyticsmqtt::internals::{
    config_section, filter_config_from_value, ConfigPick, ConfigSection, PublisherConfig,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

/// Planted as the value of string (and container) passwords.
const SECRET: &str = "s3cr3t-CANARY-q7Zx";
/// Planted as the value of numeric passwords. Its digits are what is searched for.
const SECRET_NUMBER: u64 = 7_351_928_460_117;
const SECRET_DIGITS: &str = "7351928460117";

/// Replaces the value of every `password` key, at any depth, with the secret. Returns how
/// many were planted.
///
/// Not inside `label_score` maps: there the keys are class labels and the values
/// thresholds, so a label called "password" holds no secret.
fn plant(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => plant_in_map(map),
        Value::Array(items) => items.iter_mut().map(plant).sum(),
        _ => 0,
    }
}

fn plant_in_map(map: &mut Map<String, Value>) -> usize {
    let mut planted = 0;
    for (key, v) in map.iter_mut() {
        if key == "password" {
            *v = match v {
                Value::Number(_) => Value::from(SECRET_NUMBER),
                Value::Array(_) => Value::Array(vec![SECRET.into()]),
                Value::Object(_) => {
                    Value::Object(Map::from_iter([("secret".to_owned(), SECRET.into())]))
                }
                // null and booleans cannot be told apart from other values in a message.
                Value::Null | Value::Bool(_) => continue,
                Value::String(_) => SECRET.into(),
            };
            planted += 1;
        } else if key != "label_score" {
            planted += plant(v);
        }
    }
    planted
}

fn check_error(what: &str, input: &Value, err: &str, secrets_planted: bool) {
    assert!(!err.is_empty(), "{what}: empty error for {input}");
    if secrets_planted {
        assert!(
            !err.contains(SECRET) && !err.contains(SECRET_DIGITS),
            "{what}: error shows a password value\n  input: {input}\n  error: {err}"
        );
    }
}

fn check_config(what: &str, input: &Value, section: &Value, secrets_planted: bool) {
    match PublisherConfig::from_value(section) {
        Ok(config) => {
            // A configuration is logged with `{:?}` in places: the password stays hidden.
            let shown = format!("{config:?}");
            if secrets_planted {
                assert!(
                    !shown.contains(SECRET) && !shown.contains(SECRET_DIGITS),
                    "{what}: Debug shows a password value\n  input: {input}\n  {shown}"
                );
            }
            if let Some(port) = config.port {
                assert!(port > 0, "{what}: port 0 accepted from {input}");
            }
        }
        Err(err) => check_error(what, input, &err, secrets_planted),
    }
}

fn check_filter(what: &str, input: &Value, filter: &Value, secrets_planted: bool) {
    match filter_config_from_value(filter) {
        Ok(config) => {
            for (label, threshold) in config.label_score.iter().flatten() {
                assert!(
                    (0.0..=1.0).contains(threshold),
                    "{what}: threshold {threshold} for {label:?} accepted from {input}"
                );
            }
        }
        Err(err) => check_error(what, input, &err, secrets_planted),
    }
}

/// Picks `section` as the elements do: before start (no GStreamer pipeline name yet) and at
/// start, and checks what it found or the error.
fn check_section(
    what: &str,
    input: &Value,
    value: &Value,
    section: ConfigSection,
    secrets_planted: bool,
    check: fn(&str, &Value, &Value, bool),
) {
    for gst_pipeline in [None, Some("pipeline0")] {
        let pick = ConfigPick {
            name: None,
            gst_pipeline,
        };
        match config_section(value, section, pick) {
            Ok(Some(found)) => {
                for warning in &found.warnings {
                    check_error(what, input, warning, secrets_planted);
                }
                if let Some(section) = &found.value {
                    check(what, input, section, secrets_planted);
                }
            }
            Ok(None) => assert!(
                gst_pipeline.is_none(),
                "{what}: undecided with the GStreamer pipeline's name known: {input}"
            ),
            Err(err) => check_error(what, input, &err, secrets_planted),
        }
    }
}

/// Runs every parser on `value` the way the file loaders pick their section.
fn check_all(input: &Value, value: &Value, secrets_planted: bool) {
    // `ConfigFile::publisher`: a config.json pipeline's, a request's, or the section.
    check_section(
        "publisher section",
        input,
        value,
        ConfigSection::Publisher,
        secrets_planted,
        check_config,
    );
    check_config("publisher whole", input, value, secrets_planted);

    // `ConfigFile::filter`: the filter of any of those, under `filter`, or bare.
    check_section(
        "filter section",
        input,
        value,
        ConfigSection::Filter,
        secrets_planted,
        check_filter,
    );
    check_filter("filter whole", input, value, secrets_planted);
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    // The untouched input, for robustness alone.
    check_all(&value, &value, false);

    // An input that spells the secret itself would show it legitimately (e.g. as a topic
    // in an error): only check for leaks when the secret appears nowhere but where it is
    // planted.
    let text = value.to_string();
    if text.contains(SECRET) || text.contains(SECRET_DIGITS) {
        return;
    }
    let mut planted = value.clone();
    let mut count = plant(&mut planted);
    // Make sure a password is present next to the other keys of a bare section too.
    if let Value::Object(map) = &mut planted {
        if !map.contains_key("password") {
            map.insert("password".to_owned(), SECRET.into());
            count += 1;
        }
    }
    if count > 0 {
        check_all(&planted, &planted, true);
    }
});
