// SPDX-License-Identifier: MPL-2.0

//! The JSON configuration files users share with DL Streamer Pipeline Server: the
//! `mqtt_publisher` section `mqttpublish` reads, and its `filter`, which `metafilter`
//! reads too. Errors name the key and show a value only when it cannot hold a secret.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::SettingError;
use crate::filter::{Filter, FilterType};
use crate::meta;
use crate::mqtt::{Protocol, QoS, Secret};

/// Reads and parses a JSON file. Errors name the file, and the line and column for bad JSON.
/// A value that looks like JSON text rather than a path, and a file that does not exist, get
/// an error saying that the setting takes the path to a JSON file.
pub fn read_json_file(path: &Path) -> Result<Value, SettingError> {
    let shown_path = path.display().to_string();
    if path.is_dir() {
        return Err(SettingError::Unreadable(format!(
            "{shown_path}: is a directory, not a JSON file"
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        match shown_path.trim_start().chars().next() {
            // Not shown: the JSON may hold a password.
            Some(first @ ('{' | '[')) if e.kind() == std::io::ErrorKind::NotFound => {
                SettingError::Invalid(format!(
                    "takes the path to a JSON file, not JSON text (the value starts with \
                     {first:?})"
                ))
            }
            _ if e.kind() == std::io::ErrorKind::NotFound => SettingError::NotFound(format!(
                "cannot read {shown_path}: {e}; the value must be the path to an existing \
                 JSON file"
            )),
            _ => SettingError::io(format!("cannot read {shown_path}: {e}"), &e),
        }
    })?;
    serde_json::from_str(&text)
        .map_err(|e| SettingError::Invalid(format!("{shown_path}: invalid JSON: {e}")))
}

/// The part of a configuration document an element reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The `mqtt_publisher` section: under that key, or the document itself.
    Publisher,
    /// The filter: under `mqtt_publisher.filter`, under `filter`, or the document itself.
    Filter,
}

/// Picks `section` out of a configuration document.
pub fn section(document: &Value, section: Section) -> &Value {
    let publisher = document.get("mqtt_publisher");
    match section {
        Section::Publisher => publisher.unwrap_or(document),
        Section::Filter => publisher
            .and_then(|p| p.get("filter"))
            .or_else(|| document.get("filter"))
            .unwrap_or(document),
    }
}

/// The `mqtt_publisher` section of a DL Streamer Pipeline Server configuration, plus the
/// keys this plugin adds (`host`, `port`, `client_id`, `username`, `password`). Every field
/// is optional: what is set here is laid over the element's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublisherConfig {
    pub topic: Option<String>,
    pub qos: Option<QoS>,
    pub protocol: Option<Protocol>,
    pub publish_frame: Option<bool>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub filter: Option<FilterConfig>,
    /// Keys this plugin does not know, for a warning.
    pub unknown_keys: Vec<String>,
}

impl PublisherConfig {
    /// Reads a file holding the section bare or under `mqtt_publisher`.
    pub fn load(path: &Path) -> Result<Self, SettingError> {
        let document = read_json_file(path)?;
        Self::from_value(section(&document, Section::Publisher))
            .map_err(|e| SettingError::Invalid(format!("{}: {e}", path.display())))
    }

    /// Parses the section. Errors name the key, e.g. `qos: expected 0, 1 or 2, got "high"`.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let map = value
            .as_object()
            .ok_or_else(|| format!("expected a JSON object, got {}", shown(value)))?;
        let mut config = PublisherConfig::default();
        for (key, v) in map {
            match key.as_str() {
                "topic" => config.topic = Some(string(key, v)?),
                "qos" => {
                    config.qos =
                        Some(QoS::from_level(integer(key, v)?).map_err(|e| format!("{key}: {e}"))?)
                }
                "protocol" => {
                    config.protocol = Some(
                        Protocol::from_level(integer(key, v)?)
                            .map_err(|e| format!("{key}: {e}"))?,
                    )
                }
                "publish_frame" => {
                    config.publish_frame = Some(v.as_bool().ok_or_else(|| {
                        format!("{key}: expected true or false, got {}", shown(v))
                    })?)
                }
                // One broker, or a list of them for failover: "h1:p1,h2:p2" or a JSON
                // array of such strings.
                "host" => {
                    config.host = Some(match v.as_array() {
                        Some(list) => list
                            .iter()
                            .map(|item| string(key, item))
                            .collect::<Result<Vec<_>, _>>()?
                            .join(","),
                        None => string(key, v)?,
                    })
                }
                "port" => {
                    let port = integer(key, v)?;
                    config.port =
                        Some(tcp_port(port).ok_or_else(|| {
                            format!("{key}: {port} is not a TCP port (1..65535)")
                        })?);
                }
                "client_id" => config.client_id = Some(string(key, v)?),
                "username" => config.username = Some(string(key, v)?),
                "password" => {
                    // Never echo the value: it is a secret.
                    let password = v
                        .as_str()
                        .ok_or_else(|| format!("{key}: expected a string"))?;
                    config.password = Some(Secret::new(password.to_owned()));
                }
                "tls" => {
                    let tls = v
                        .as_object()
                        .ok_or_else(|| format!("tls: expected an object, got {}", shown(v)))?;
                    for (tls_key, path) in tls {
                        let full = format!("tls.{tls_key}");
                        let path = Some(string(&full, path)?);
                        match tls_key.as_str() {
                            "ca_cert" => config.tls_ca_file = path,
                            "client_cert" => config.tls_cert_file = path,
                            "client_key" => config.tls_key_file = path,
                            _ => config.unknown_keys.push(full),
                        }
                    }
                }
                "filter" => config.filter = Some(filter_config_from_value(v)?),
                _ => config.unknown_keys.push(key.clone()),
            }
        }
        Ok(config)
    }
}

/// A filter as written in a DLSPS configuration: `type` is required (DLSPS refuses a filter
/// without one), `label_score` optional, so that it can be laid over the current settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterConfig {
    pub kind: FilterType,
    pub label_score: Option<HashMap<String, f64>>,
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
            other => return Err(format!("filter: unknown key {other:?}")),
        }
    }
    let kind = kind.ok_or(
        "filter.type: missing; a filter needs \"type\": \"detection\" or \"classification\"",
    )?;
    Ok(FilterConfig { kind, label_score })
}

/// Loads a filter from a JSON file holding it bare, under `filter`, or under
/// `mqtt_publisher.filter` (a DLSPS pipeline configuration section).
pub fn load_filter_file(path: &Path) -> Result<FilterConfig, SettingError> {
    let document = read_json_file(path)?;
    filter_config_from_value(section(&document, Section::Filter))
        .map_err(|e| SettingError::Invalid(format!("{}: {e}", path.display())))
}

/// A TCP port: 1 to 65535.
pub fn tcp_port(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p > 0)
}

/// A value as an error message shows it: a string, number, boolean or null as written, an
/// object or an array only by its kind. A container can hold a secret at any depth, e.g.
/// `"tls": {"client_key": {"path": "..", "password": ".."}}`, and a password must never
/// reach an error message (found by the `config_file` fuzz target).
fn shown(v: &Value) -> String {
    match v {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        scalar => scalar.to_string(),
    }
}

fn string(key: &str, v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{key}: expected a string, got {}", shown(v)))
}

fn integer(key: &str, v: &Value) -> Result<i64, String> {
    v.as_i64()
        .ok_or_else(|| format!("{key}: expected an integer, got {}", shown(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dlsps_example_section() {
        let v: Value = serde_json::from_str(
            r#"{"mqtt_publisher": {
                "publish_frame": true,
                "topic": "dlstreamer_pipeline_results",
                "qos": 1,
                "protocol": 4,
                "filter": {"type": "detection", "label_score": {"shipping label": 0.4, "box": 0.4}},
                "tls": {"ca_cert": "/certs/ca.crt", "client_key": "/certs/client.key", "client_cert": "/certs/client.crt"}
            }}"#,
        )
        .unwrap();
        let c = PublisherConfig::from_value(&v["mqtt_publisher"]).unwrap();
        assert_eq!(c.publish_frame, Some(true));
        assert_eq!(c.topic.as_deref(), Some("dlstreamer_pipeline_results"));
        assert_eq!(c.qos, Some(QoS::AtLeastOnce));
        assert_eq!(c.protocol, Some(Protocol::V311));
        assert_eq!(c.tls_ca_file.as_deref(), Some("/certs/ca.crt"));
        assert_eq!(c.tls_cert_file.as_deref(), Some("/certs/client.crt"));
        assert_eq!(c.tls_key_file.as_deref(), Some("/certs/client.key"));
        assert_eq!(
            c.filter.unwrap().label_score.unwrap()["shipping label"],
            0.4
        );
        assert!(c.unknown_keys.is_empty());
    }

    #[test]
    fn errors_name_the_key_and_never_the_password() {
        let cases = [
            (r#"{"qos": "high"}"#, "qos: expected an integer"),
            (r#"{"qos": 3}"#, "qos: QoS 3"),
            (r#"{"protocol": 3}"#, "use 4 (MQTT 3.1.1) or 5"),
            (r#"{"port": 70000}"#, "port: 70000"),
            (r#"{"topic": 5}"#, "topic: expected a string"),
            (
                r#"{"publish_frame": "yes"}"#,
                "publish_frame: expected true or false",
            ),
            (
                r#"{"tls": {"ca_cert": 1}}"#,
                "tls.ca_cert: expected a string",
            ),
            (r#"{"filter": {"type": "x"}}"#, "filter.type"),
        ];
        for (text, expected) in cases {
            let v: Value = serde_json::from_str(text).unwrap();
            let err = PublisherConfig::from_value(&v).unwrap_err();
            assert!(err.contains(expected), "{text}: {err:?} lacks {expected:?}");
        }
        let v: Value = serde_json::from_str(r#"{"password": 123456789}"#).unwrap();
        let err = PublisherConfig::from_value(&v).unwrap_err();
        assert!(
            err.contains("password") && !err.contains("123456789"),
            "{err}"
        );
    }

    #[test]
    fn errors_never_show_a_password_nested_in_a_wrong_value() {
        let secret = "s3cr3t-Pa55";
        let cases = [
            (
                r#"{"tls": {"client_key": {"path": "/k", "password": "s3cr3t-Pa55"}}}"#,
                "tls.client_key: expected a string, got an object",
            ),
            (
                r#"{"publish_frame": {"password": "s3cr3t-Pa55"}}"#,
                "publish_frame: expected true or false, got an object",
            ),
            (
                r#"{"username": {"name": "u", "password": "s3cr3t-Pa55"}}"#,
                "username: expected a string, got an object",
            ),
            (
                r#"{"qos": [{"password": "s3cr3t-Pa55"}]}"#,
                "qos: expected an integer, got an array",
            ),
            (
                r#"{"tls": [{"password": "s3cr3t-Pa55"}]}"#,
                "tls: expected an object, got an array",
            ),
            (
                r#"[{"password": "s3cr3t-Pa55"}]"#,
                "expected a JSON object, got an array",
            ),
            (
                r#"{"filter": [{"password": "s3cr3t-Pa55"}]}"#,
                "filter: expected a JSON object, got an array",
            ),
            (
                r#"{"filter": {"type": {"password": "s3cr3t-Pa55"}}}"#,
                "filter.type: expected a string, got an object",
            ),
            (
                r#"{"filter": {"label_score": {"box": {"password": "s3cr3t-Pa55"}}}}"#,
                "threshold must be a number, got an object",
            ),
            (
                r#"{"filter": {"label_score": [{"password": "s3cr3t-Pa55"}]}}"#,
                "thresholds, got an array",
            ),
        ];
        for (text, expected) in cases {
            let v: Value = serde_json::from_str(text).unwrap();
            let err = PublisherConfig::from_value(&v).unwrap_err();
            assert!(!err.contains(secret), "{text}: {err}");
            assert!(err.contains(expected), "{text}: {err:?} lacks {expected:?}");
        }
        // Scalars are still shown: they are the value of the key the message names.
        let v: Value = serde_json::from_str(r#"{"qos": "high"}"#).unwrap();
        let err = PublisherConfig::from_value(&v).unwrap_err();
        assert_eq!(err, r#"qos: expected an integer, got "high""#);
    }

    #[test]
    fn json_text_or_a_missing_file_is_told_to_be_a_path() {
        let err = read_json_file(Path::new(r#"{"qos":1,"password":"s3cr3t"}"#)).unwrap_err();
        assert_eq!(
            err,
            SettingError::Invalid(
                "takes the path to a JSON file, not JSON text (the value starts with '{')".into()
            )
        );
        let err = read_json_file(Path::new(" [1]")).unwrap_err();
        assert!(
            err.message().ends_with("(the value starts with '[')"),
            "{err}"
        );
        let err = read_json_file(Path::new("/nonexistent/pipeline.json")).unwrap_err();
        assert_eq!(
            err,
            SettingError::NotFound(
                "cannot read /nonexistent/pipeline.json: No such file or directory (os error 2); \
                 the value must be the path to an existing JSON file"
                    .into()
            )
        );
    }

    #[test]
    fn unknown_keys_are_collected() {
        let v: Value =
            serde_json::from_str(r#"{"topic": "t", "qso": 1, "tls": {"ca": "x"}}"#).unwrap();
        let c = PublisherConfig::from_value(&v).unwrap();
        assert_eq!(c.unknown_keys, ["qso", "tls.ca"]);
    }

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
        // Also in the mqtt_publisher section.
        let v: Value = serde_json::from_str(r#"{"filter":{"label_score":{"box":0.4}}}"#).unwrap();
        assert_eq!(PublisherConfig::from_value(&v).unwrap_err(), missing);
    }

    #[test]
    fn errors_show_objects_and_arrays_only_by_kind() {
        // They may hold a password (see `config::shown`).
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
