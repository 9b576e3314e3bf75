// SPDX-License-Identifier: MPL-2.0

//! Reading the `mqtt_publisher` settings out of their section.

use serde_json::Value;

use super::tcp_port;
use crate::error::shown;
use crate::filter::{filter_config_from_value, FilterConfig};
use crate::mqtt::{Protocol, QoS, Secret};

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
    /// This plugin's key: the directory of the disk spool.
    pub spool_location: Option<String>,
    /// This plugin's key: the name of the connection to share with other sinks.
    pub shared_connection: Option<String>,
    /// Keys this plugin does not know, for a warning.
    pub unknown_keys: Vec<String>,
    /// Where in its file the section is (see `Found::place`); empty when it is the file or
    /// under `mqtt_publisher`.
    pub place: String,
    /// The name of the DLSPS `config.json` pipeline entry it comes from.
    pub pipeline: Option<String>,
    /// Other things ignored, as DLSPS ignores them, for a warning.
    pub warnings: Vec<String>,
}

impl PublisherConfig {
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
                "port" => config.port = Some(tcp_port(key, integer(key, v)?)?),
                "client_id" => config.client_id = Some(string(key, v)?),
                "spool_location" => config.spool_location = Some(string(key, v)?),
                "shared_connection" => config.shared_connection = Some(string(key, v)?),
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
                // DLSPS makes no filter of an empty one.
                "filter" if v.is_null() || v.as_object().is_some_and(|m| m.is_empty()) => {
                    config.warnings.push(format!(
                        "filter is {v}, so nothing is filtered (as in DLSPS)"
                    ))
                }
                "filter" => {
                    let filter = filter_config_from_value(v)?;
                    config
                        .unknown_keys
                        .extend(filter.unknown_keys.iter().map(|k| format!("filter.{k}")));
                    config.filter = Some(filter);
                }
                _ => config.unknown_keys.push(key.clone()),
            }
        }
        Ok(config)
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
    fn unknown_keys_are_collected() {
        let v: Value =
            serde_json::from_str(r#"{"topic": "t", "qso": 1, "tls": {"ca": "x"}}"#).unwrap();
        let c = PublisherConfig::from_value(&v).unwrap();
        assert_eq!(c.unknown_keys, ["qso", "tls.ca"]);
    }

    #[test]
    fn a_filter_without_type_is_refused_in_the_section() {
        let missing = "filter.type: missing; a filter needs \"type\": \"detection\" or \
                       \"classification\"";
        let v: Value = serde_json::from_str(r#"{"filter":{"label_score":{"box":0.4}}}"#).unwrap();
        assert_eq!(PublisherConfig::from_value(&v).unwrap_err(), missing);
    }

    #[test]
    fn keys_dlsps_ignores_are_collected_for_a_warning() {
        let v: Value = serde_json::from_str(
            r#"{"type": "mqtt", "filter": {"type": "detection", "label_scores": {}}}"#,
        )
        .unwrap();
        let c = PublisherConfig::from_value(&v).unwrap();
        assert_eq!(c.unknown_keys, ["filter.label_scores", "type"]);
        for empty in ["null", "{}"] {
            let v: Value = serde_json::from_str(&format!(r#"{{"filter": {empty}}}"#)).unwrap();
            let c = PublisherConfig::from_value(&v).unwrap();
            assert_eq!(c.filter, None);
            assert_eq!(
                c.warnings,
                [format!(
                    "filter is {empty}, so nothing is filtered (as in DLSPS)"
                )]
            );
        }
    }
}
