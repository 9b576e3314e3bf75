//! Reading the JSON configuration files users share with DL Streamer Pipeline Server.

use std::path::Path;

use serde_json::Value;

/// Reads and parses a JSON file. Errors name the file, and the line and column for bad JSON.
pub fn read_json_file(path: &Path) -> Result<Value, String> {
    if path.is_dir() {
        return Err(format!(
            "{}: is a directory, not a JSON file",
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: invalid JSON: {e}", path.display()))
}

/// The `mqtt_publisher` section of a DL Streamer Pipeline Server configuration, plus the
/// keys this plugin adds (`host`, `port`, `client_id`, `username`, `password`). Every field
/// is optional: what is set here is laid over the element's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PublisherConfig {
    pub topic: Option<String>,
    pub qos: Option<crate::mqtt::QoS>,
    pub protocol: Option<crate::mqtt::Protocol>,
    pub publish_frame: Option<bool>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<crate::mqtt::Secret>,
    pub tls_ca_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub filter: Option<crate::filter::FilterConfig>,
    /// Keys this plugin does not know, for a warning.
    pub unknown_keys: Vec<String>,
}

impl PublisherConfig {
    /// Reads a file holding the section bare or under `mqtt_publisher`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let value = read_json_file(path)?;
        let section = value.get("mqtt_publisher").unwrap_or(&value);
        Self::from_value(section).map_err(|e| format!("{}: {e}", path.display()))
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
                    config.qos = Some(
                        crate::mqtt::QoS::from_level(integer(key, v)?)
                            .map_err(|e| format!("{key}: {e}"))?,
                    )
                }
                "protocol" => {
                    config.protocol = Some(
                        crate::mqtt::Protocol::from_level(integer(key, v)?)
                            .map_err(|e| format!("{key}: {e}"))?,
                    )
                }
                "publish_frame" => {
                    config.publish_frame = Some(v.as_bool().ok_or_else(|| {
                        format!("{key}: expected true or false, got {}", shown(v))
                    })?)
                }
                "host" => config.host = Some(string(key, v)?),
                "port" => {
                    let port = integer(key, v)?;
                    config.port =
                        Some(u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
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
                    config.password = Some(crate::mqtt::Secret::new(password.to_owned()));
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
                "filter" => config.filter = Some(crate::filter::filter_config_from_value(v)?),
                _ => config.unknown_keys.push(key.clone()),
            }
        }
        Ok(config)
    }
}

/// A value as an error message shows it: a string, number, boolean or null as written, an
/// object or an array only by its kind. A container can hold a secret at any depth, e.g.
/// `"tls": {"client_key": {"path": "..", "password": ".."}}`, and a password must never
/// reach an error message (found by the `config_file` fuzz target).
pub(crate) fn shown(v: &Value) -> String {
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
    use crate::mqtt::{Protocol, QoS};

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
}
