// SPDX-License-Identifier: MPL-2.0

//! The JSON configuration files users share with DL Streamer Pipeline Server: the
//! `mqtt_publisher` section `mqttpublish` reads, and its `filter`, which `metafilter`
//! reads too, found in a DLSPS `config.json` (by pipeline), a REST request body, or a file
//! of their own (see [`section`]). Errors name the key and show a value only when it
//! cannot hold a secret. What DLSPS refuses is refused; what it ignores is ignored with a
//! warning.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{shown, SettingError};
use crate::filter::{filter_config_from_value, FilterConfig};
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
    /// The `mqtt_publisher` section.
    Publisher,
    /// The `filter` of the `mqtt_publisher` section (or, in a file of its own, under
    /// `filter` or bare).
    Filter,
}

/// Which pipeline entry of a DLSPS `config.json` to read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pick<'a> {
    /// The entry asked for by name (the `config-pipeline` property).
    pub name: Option<&'a str>,
    /// The name of the GStreamer pipeline holding the element, tried when `name` is unset
    /// and the file has several pipelines. `None` while it is not known (before the
    /// element starts): [`section`] then leaves such a choice undecided.
    pub gst_pipeline: Option<&'a str>,
}

/// What [`section`] found in a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The section. `None` only for [`Section::Publisher`], when the pipeline entry picked
    /// has no `mqtt_publisher`.
    pub value: Option<Value>,
    /// Where in the document it is, for messages: `pipeline "name"` (a `config.json`),
    /// `destination.metadata` or `destination.metadata[i]` (a REST request body); empty
    /// for a file holding the section itself or under `mqtt_publisher`.
    pub place: String,
    /// The name of the `config.json` pipeline entry it belongs to.
    pub pipeline: Option<String>,
    /// What in the document is ignored, as DLSPS ignores it, for a warning.
    pub warnings: Vec<String>,
}

impl Found {
    fn at(value: Option<Value>, place: String) -> Self {
        Found {
            value,
            place,
            pipeline: None,
            warnings: Vec::new(),
        }
    }

    /// `message` prefixed with the place, when there is one.
    pub fn here(&self, message: impl fmt::Display) -> String {
        if self.place.is_empty() {
            message.to_string()
        } else {
            format!("{}: {message}", self.place)
        }
    }
}

/// Picks `section` out of a configuration document, which is one of:
///
/// - a DLSPS `config.json`: `{"config": {"pipelines": [{"name": .., "mqtt_publisher":
///   {..}}, ..]}}`; the entry named `pick.name`, else the only one, else the one named
///   like the GStreamer pipeline;
/// - a DLSPS REST request body: `{"destination": {"metadata": {"type": "mqtt", ..}}}`, or
///   a list of such entries (the last `mqtt` one counts, as in DLSPS); `type` is taken out;
/// - `{"mqtt_publisher": {..}}` (a pipeline entry, for one) or the section itself.
///
/// `Ok(None)`: several pipelines and nothing yet to choose by (`pick.gst_pipeline` unknown).
/// Errors name the key; pipeline names and `type` values are shown, nothing else.
pub fn section(document: &Value, section: Section, pick: Pick) -> Result<Option<Found>, String> {
    let Some(map) = document.as_object() else {
        // Refused by the parsers with "expected a JSON object".
        return Ok(Some(Found::at(Some(document.clone()), String::new())));
    };
    let forms: Vec<&str> = ["config", "destination", "mqtt_publisher"]
        .into_iter()
        .filter(|key| map.contains_key(*key))
        .collect();
    if forms.len() > 1 {
        return Err(format!(
            "has both {:?} and {:?}: a file holds one of a DLSPS config.json (\"config\"), a \
             REST request body (\"destination\") or an mqtt_publisher section",
            forms[0], forms[1]
        ));
    }
    let publisher = match forms.first().copied() {
        Some("config") => match pipeline_entry(&map["config"], pick)? {
            Some(found) => found,
            None => return Ok(None),
        },
        Some("destination") => {
            if let Some(name) = pick.name {
                return Err(not_a_config_json(name));
            }
            request_entry(&map["destination"])?
        }
        Some(_) => {
            check_entry_name(map, pick)?;
            Found::at(map.get("mqtt_publisher").cloned(), String::new())
        }
        None => {
            check_entry_name(map, pick)?;
            let found = Found::at(Some(document.clone()), String::new());
            // A filter in a file of its own: under "filter" or bare.
            if section == Section::Filter && !map.contains_key("filter") {
                return Ok(Some(found));
            }
            found
        }
    };
    Ok(Some(match section {
        Section::Publisher => publisher,
        Section::Filter => {
            let filter = publisher
                .value
                .as_ref()
                .and_then(|p| p.get("filter"))
                .cloned();
            match filter {
                Some(filter) => Found {
                    value: Some(filter),
                    ..publisher
                },
                None if publisher.value.is_none() => {
                    return Err(publisher.here("has no \"mqtt_publisher\", so no filter"))
                }
                None => {
                    let what = if publisher.place.starts_with("destination") {
                        "has no \"filter\""
                    } else {
                        "mqtt_publisher has no \"filter\""
                    };
                    return Err(publisher.here(what));
                }
            }
        }
    }))
}

fn not_a_config_json(name: &str) -> String {
    format!(
        "config-pipeline is {name:?}, but the file is not a DLSPS config.json: it has no \
         pipelines to pick from"
    )
}

/// `config-pipeline` set with a file that is not a `config.json`: right only when the file
/// is the pipeline entry of that name.
fn check_entry_name(map: &serde_json::Map<String, Value>, pick: Pick) -> Result<(), String> {
    let Some(wanted) = pick.name else {
        return Ok(());
    };
    match map.get("name").and_then(Value::as_str) {
        Some(name) if name == wanted => Ok(()),
        Some(name) => Err(format!(
            "config-pipeline is {wanted:?}, but the file is the pipeline entry {name:?}"
        )),
        None => Err(not_a_config_json(wanted)),
    }
}

/// The `mqtt_publisher` of the pipeline entry `pick` picks in the `config` object of a
/// DLSPS `config.json`.
fn pipeline_entry(config: &Value, pick: Pick) -> Result<Option<Found>, String> {
    if !config.is_object() {
        return Err(format!(
            "config: expected a JSON object, got {}",
            shown(config)
        ));
    }
    let pipelines = config
        .get("pipelines")
        .ok_or("config.pipelines: missing; a DLSPS config.json lists its pipelines there")?
        .as_array()
        .ok_or_else(|| {
            format!(
                "config.pipelines: expected a list, got {}",
                shown(&config["pipelines"])
            )
        })?;
    let mut entries = Vec::with_capacity(pipelines.len());
    for (i, entry) in pipelines.iter().enumerate() {
        let map = entry.as_object().ok_or_else(|| {
            format!(
                "config.pipelines[{i}]: expected a JSON object, got {}",
                shown(entry)
            )
        })?;
        let name = map
            .get("name")
            .ok_or_else(|| format!("config.pipelines[{i}].name: missing"))?;
        let name = name.as_str().ok_or_else(|| {
            format!(
                "config.pipelines[{i}].name: expected a string, got {}",
                shown(name)
            )
        })?;
        entries.push((name, map));
    }
    let names = || {
        entries
            .iter()
            .map(|(name, _)| format!("{name:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let named = |wanted: &str| -> Result<Option<usize>, String> {
        let mut matches = entries
            .iter()
            .enumerate()
            .filter(|(_, (name, _))| *name == wanted);
        let first = matches.next().map(|(i, _)| i);
        if matches.next().is_some() {
            return Err(format!(
                "config.pipelines: more than one pipeline is named {wanted:?}"
            ));
        }
        Ok(first)
    };
    let index = if let Some(wanted) = pick.name {
        named(wanted)?.ok_or_else(|| {
            format!(
                "config-pipeline: no pipeline {wanted:?} in config.pipelines, which has {}",
                names()
            )
        })?
    } else {
        match entries.len() {
            0 => return Err("config.pipelines: empty, no pipeline to read".into()),
            1 => 0,
            _ => match pick.gst_pipeline {
                None => return Ok(None),
                Some(gst_pipeline) => named(gst_pipeline)?.ok_or_else(|| {
                    format!(
                        "config.pipelines has {} pipelines ({}) and none is named like the \
                         GStreamer pipeline ({gst_pipeline:?}): set config-pipeline to the \
                         one to use",
                        entries.len(),
                        names()
                    )
                })?,
            },
        }
    };
    let (name, map) = entries[index];
    let mut found = Found::at(
        map.get("mqtt_publisher").cloned(),
        format!("pipeline {name:?}"),
    );
    found.pipeline = Some(name.to_owned());
    if found.value.is_none() {
        found.warnings.push(format!(
            "pipeline {name:?} has no \"mqtt_publisher\": DLSPS publishes nothing over MQTT \
             for it; only the element's properties and defaults apply"
        ));
    }
    Ok(Some(found))
}

/// The `mqtt` entry of `destination.metadata` in a DLSPS REST request body, without its
/// `type`.
fn request_entry(destination: &Value) -> Result<Found, String> {
    let metadata = destination
        .get("metadata")
        .ok_or("destination.metadata: missing; the MQTT settings of a request are there")?;
    let is_mqtt = |entry: &Value| entry.get("type").and_then(Value::as_str) == Some("mqtt");
    let without_type = |entry: &Value| {
        let mut entry = entry.clone();
        if let Some(map) = entry.as_object_mut() {
            map.remove("type");
        }
        entry
    };
    match metadata {
        Value::Object(_) if is_mqtt(metadata) => Ok(Found::at(
            Some(without_type(metadata)),
            "destination.metadata".into(),
        )),
        Value::Object(map) => Err(match map.get("type") {
            None => "destination.metadata.type: missing; use \"mqtt\"".into(),
            Some(kind) => format!(
                "destination.metadata.type: {}, not \"mqtt\": no MQTT settings here",
                shown(kind)
            ),
        }),
        Value::Array(entries) => {
            let mut warnings = Vec::new();
            let mut mqtt = Vec::new();
            let mut kinds = Vec::new();
            for (i, entry) in entries.iter().enumerate() {
                let map = entry.as_object().ok_or_else(|| {
                    format!(
                        "destination.metadata[{i}]: expected a JSON object, got {}",
                        shown(entry)
                    )
                })?;
                match map.get("type") {
                    None => warnings.push(format!(
                        "destination.metadata[{i}] has no \"type\" and is ignored, as DLSPS \
                         ignores it"
                    )),
                    Some(_) if is_mqtt(entry) => mqtt.push(i),
                    Some(kind) => kinds.push(shown(kind)),
                }
            }
            let Some(&last) = mqtt.last() else {
                return Err(format!(
                    "destination.metadata: no entry with \"type\": \"mqtt\" (types found: {})",
                    if kinds.is_empty() {
                        "none".to_owned()
                    } else {
                        kinds.join(", ")
                    }
                ));
            };
            if mqtt.len() > 1 {
                let shown: Vec<String> = mqtt.iter().map(|i| format!("[{i}]")).collect();
                warnings.push(format!(
                    "destination.metadata has {} \"mqtt\" entries ({}): the last one is used, \
                     as DLSPS uses it",
                    mqtt.len(),
                    shown.join(", ")
                ));
            }
            let mut found = Found::at(
                Some(without_type(&entries[last])),
                format!("destination.metadata[{last}]"),
            );
            found.warnings = warnings;
            Ok(found)
        }
        other => Err(format!(
            "destination.metadata: expected a JSON object or a list, got {}",
            shown(other)
        )),
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
    /// Where in its file the section is (see [`Found::place`]); empty when it is the file
    /// or under `mqtt_publisher`.
    pub place: String,
    /// The name of the DLSPS `config.json` pipeline entry it comes from.
    pub pipeline: Option<String>,
    /// Other things ignored, as DLSPS ignores them, for a warning.
    pub warnings: Vec<String>,
}

/// A configuration file as read, in any of the forms [`section`] knows.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub document: Value,
}

impl ConfigFile {
    pub fn read(path: &Path) -> Result<Self, SettingError> {
        Ok(ConfigFile {
            path: path.to_owned(),
            document: read_json_file(path)?,
        })
    }

    fn invalid(&self, message: impl fmt::Display) -> SettingError {
        SettingError::Invalid(format!("{}: {message}", self.path.display()))
    }

    fn section(&self, section: Section, pick: Pick) -> Result<Option<Found>, SettingError> {
        self::section(&self.document, section, pick).map_err(|e| self.invalid(e))
    }

    /// The `mqtt_publisher` section `pick` picks. `gst_pipeline` is known when this is
    /// called, so the choice is always made.
    pub fn publisher(
        &self,
        name: Option<&str>,
        gst_pipeline: &str,
    ) -> Result<PublisherConfig, SettingError> {
        let pick = Pick {
            name,
            gst_pipeline: Some(gst_pipeline),
        };
        let found = self
            .section(Section::Publisher, pick)?
            .ok_or_else(|| self.invalid("several pipelines: set config-pipeline"))?;
        let mut config = match &found.value {
            Some(value) => {
                PublisherConfig::from_value(value).map_err(|e| self.invalid(found.here(e)))?
            }
            None => PublisherConfig::default(),
        };
        let mut warnings = found.warnings.clone();
        warnings.extend(config.warnings.drain(..).map(|w| found.here(w)));
        config.warnings = warnings;
        config.place = found.place;
        config.pipeline = found.pipeline;
        Ok(config)
    }

    /// The filter `pick` picks, with warnings for what is ignored in it; `None` while the
    /// pipeline entry cannot be chosen yet (see [`Pick::gst_pipeline`]).
    pub fn filter(&self, pick: Pick) -> Result<Option<(FilterConfig, Vec<String>)>, SettingError> {
        let Some(found) = self.section(Section::Filter, pick)? else {
            return Ok(None);
        };
        let value = found.value.as_ref().unwrap_or(&Value::Null);
        let filter = filter_config_from_value(value).map_err(|e| self.invalid(found.here(e)))?;
        let mut warnings = found.warnings.clone();
        if !filter.unknown_keys.is_empty() {
            warnings.push(found.here(format!(
                "filter has keys DLSPS and this element ignore: {}",
                filter.unknown_keys.join(", ")
            )));
        }
        Ok(Some((filter, warnings)))
    }
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

/// A TCP port: 1 to 65535.
/// The outermost bin holding `element`: the GStreamer pipeline, whose name picks the
/// config.json entry when `config-pipeline` is not set.
pub fn outermost_bin(element: &gst::Object) -> gst::Object {
    use gst::prelude::*;
    let mut top = element.clone();
    while let Some(parent) = top.parent() {
        top = parent;
    }
    top
}

pub fn tcp_port(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p > 0)
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
    fn a_filter_without_type_is_refused_in_the_section() {
        let missing = "filter.type: missing; a filter needs \"type\": \"detection\" or \
                       \"classification\"";
        let v: Value = serde_json::from_str(r#"{"filter":{"label_score":{"box":0.4}}}"#).unwrap();
        assert_eq!(PublisherConfig::from_value(&v).unwrap_err(), missing);
    }

    fn pick(name: Option<&'static str>, gst_pipeline: Option<&'static str>) -> Pick<'static> {
        Pick { name, gst_pipeline }
    }

    fn publisher(document: &Value, p: Pick) -> Result<Option<Found>, String> {
        section(document, Section::Publisher, p)
    }

    fn two_pipelines() -> Value {
        serde_json::json!({"config": {"logging": {"C_LOG_LEVEL": "INFO"}, "pipelines": [
            {"name": "cam_a", "source": "gstreamer", "pipeline": "videotestsrc ! appsink name=destination",
             "mqtt_publisher": {"topic": "a", "qos": 1}},
            {"name": "cam_b", "pipeline": "videotestsrc ! appsink name=destination",
             "mqtt_publisher": {"topic": "b", "filter": {"type": "detection", "label_score": {"box": 0.5}}}}
        ]}})
    }

    #[test]
    fn a_config_json_pipeline_is_picked_by_name_then_by_the_gstreamer_pipeline() {
        let doc = two_pipelines();
        let found = publisher(&doc, pick(Some("cam_b"), Some("pipeline0")))
            .unwrap()
            .unwrap();
        assert_eq!(found.value.unwrap()["topic"], "b");
        assert_eq!(found.place, r#"pipeline "cam_b""#);
        assert_eq!(found.pipeline.as_deref(), Some("cam_b"));
        // config-pipeline wins over the GStreamer pipeline's name.
        let found = publisher(&doc, pick(Some("cam_a"), Some("cam_b")))
            .unwrap()
            .unwrap();
        assert_eq!(found.value.unwrap()["topic"], "a");
        // Without it, the GStreamer pipeline's name.
        let found = publisher(&doc, pick(None, Some("cam_b"))).unwrap().unwrap();
        assert_eq!(found.value.unwrap()["topic"], "b");
        // Before start, undecided.
        assert_eq!(publisher(&doc, pick(None, None)), Ok(None));
        let filter = section(&doc, Section::Filter, pick(Some("cam_b"), None))
            .unwrap()
            .unwrap();
        assert_eq!(filter.value.unwrap()["label_score"]["box"], 0.5);
    }

    #[test]
    fn an_ambiguous_or_wrong_pipeline_choice_lists_the_names() {
        let doc = two_pipelines();
        assert_eq!(
            publisher(&doc, pick(None, Some("pipeline0"))).unwrap_err(),
            r#"config.pipelines has 2 pipelines ("cam_a", "cam_b") and none is named like the GStreamer pipeline ("pipeline0"): set config-pipeline to the one to use"#
        );
        assert_eq!(
            publisher(&doc, pick(Some("cam_c"), Some("pipeline0"))).unwrap_err(),
            r#"config-pipeline: no pipeline "cam_c" in config.pipelines, which has "cam_a", "cam_b""#
        );
        let twice = serde_json::json!({"config": {"pipelines": [{"name": "x"}, {"name": "x"}]}});
        assert_eq!(
            publisher(&twice, pick(Some("x"), None)).unwrap_err(),
            r#"config.pipelines: more than one pipeline is named "x""#
        );
    }

    #[test]
    fn the_only_pipeline_is_used_whatever_the_gstreamer_pipeline_is_called() {
        let doc = serde_json::json!({"config": {"pipelines": [
            {"name": "only", "pipeline": "..", "mqtt_publisher": {"topic": "t"}}]}});
        let found = publisher(&doc, pick(None, None)).unwrap().unwrap();
        assert_eq!(found.value.unwrap()["topic"], "t");
        assert!(found.warnings.is_empty());
    }

    #[test]
    fn a_pipeline_without_mqtt_publisher_is_a_warning_and_no_filter_an_error() {
        let doc =
            serde_json::json!({"config": {"pipelines": [{"name": "plain", "pipeline": ".."}]}});
        let found = publisher(&doc, pick(None, None)).unwrap().unwrap();
        assert_eq!(found.value, None);
        assert_eq!(
            found.warnings,
            [
                r#"pipeline "plain" has no "mqtt_publisher": DLSPS publishes nothing over MQTT for it; only the element's properties and defaults apply"#
            ]
        );
        assert_eq!(
            section(&doc, Section::Filter, pick(None, None)).unwrap_err(),
            r#"pipeline "plain": has no "mqtt_publisher", so no filter"#
        );
        let doc = serde_json::json!({"mqtt_publisher": {"topic": "t"}});
        assert_eq!(
            section(&doc, Section::Filter, pick(None, None)).unwrap_err(),
            r#"mqtt_publisher has no "filter""#
        );
    }

    #[test]
    fn malformed_config_json_errors_name_the_key() {
        let cases = [
            (
                serde_json::json!({"config": {}}),
                "config.pipelines: missing",
            ),
            (
                serde_json::json!({"config": []}),
                "config: expected a JSON object, got an array",
            ),
            (
                serde_json::json!({"config": {"pipelines": {}}}),
                "config.pipelines: expected a list, got an object",
            ),
            (
                serde_json::json!({"config": {"pipelines": []}}),
                "config.pipelines: empty",
            ),
            (
                serde_json::json!({"config": {"pipelines": ["x"]}}),
                r#"config.pipelines[0]: expected a JSON object, got "x""#,
            ),
            (
                serde_json::json!({"config": {"pipelines": [{"pipeline": ".."}]}}),
                "config.pipelines[0].name: missing",
            ),
            (
                serde_json::json!({"config": {"pipelines": [{"name": 1}]}}),
                "config.pipelines[0].name: expected a string, got 1",
            ),
            (
                serde_json::json!({"config": {"pipelines": []}, "destination": {}}),
                r#"has both "config" and "destination""#,
            ),
        ];
        for (doc, expected) in cases {
            let err = publisher(&doc, pick(None, Some("p"))).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{doc}: {err:?} is not {expected:?}"
            );
        }
    }

    #[test]
    fn a_rest_request_gives_its_mqtt_entry_without_type() {
        let doc = serde_json::json!({
            "source": {"uri": "file:///video.avi", "type": "uri"},
            "destination": {
                "metadata": {"type": "mqtt", "publish_frame": true, "topic": "pallet"},
                "frame": {"type": "rtsp", "path": "pallet"}
            },
            "parameters": {"detection-properties": {"device": "CPU"}}
        });
        let found = publisher(&doc, pick(None, None)).unwrap().unwrap();
        assert_eq!(
            found.value.unwrap(),
            serde_json::json!({"publish_frame": true, "topic": "pallet"})
        );
        assert_eq!(found.place, "destination.metadata");
        assert!(found.warnings.is_empty());

        // A list: the last mqtt entry counts, as in DLSPS; entries without a type are ignored.
        let doc = serde_json::json!({"destination": {"metadata": [
            {"type": "mqtt", "topic": "first"},
            {"type": "file", "path": "/tmp/x.json"},
            {"topic": "untyped"},
            {"type": "mqtt", "topic": "last", "filter": {"type": "detection"}}
        ]}});
        let found = publisher(&doc, pick(None, None)).unwrap().unwrap();
        assert_eq!(found.value.as_ref().unwrap()["topic"], "last");
        assert_eq!(found.place, "destination.metadata[3]");
        assert_eq!(
            found.warnings,
            [
                r#"destination.metadata[2] has no "type" and is ignored, as DLSPS ignores it"#,
                r#"destination.metadata has 2 "mqtt" entries ([0], [3]): the last one is used, as DLSPS uses it"#,
            ]
        );
        let filter = section(&doc, Section::Filter, pick(None, None))
            .unwrap()
            .unwrap();
        assert_eq!(filter.value.unwrap()["type"], "detection");
    }

    #[test]
    fn a_rest_request_without_an_mqtt_entry_is_refused() {
        let cases = [
            (
                serde_json::json!({"destination": {"frame": {"type": "rtsp"}}}),
                "destination.metadata: missing",
            ),
            (
                serde_json::json!({"destination": {"metadata": {"type": "file"}}}),
                r#"destination.metadata.type: "file", not "mqtt""#,
            ),
            (
                serde_json::json!({"destination": {"metadata": {"topic": "t"}}}),
                "destination.metadata.type: missing",
            ),
            (
                serde_json::json!({"destination": {"metadata": [{"type": "kafka"}]}}),
                r#"destination.metadata: no entry with "type": "mqtt" (types found: "kafka")"#,
            ),
            (
                serde_json::json!({"destination": {"metadata": "mqtt"}}),
                "destination.metadata: expected a JSON object or a list",
            ),
        ];
        for (doc, expected) in cases {
            let err = publisher(&doc, pick(None, None)).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{doc}: {err:?} is not {expected:?}"
            );
        }
        let doc = serde_json::json!({"destination": {"metadata": {"type": "mqtt"}}});
        assert!(publisher(&doc, pick(Some("x"), None))
            .unwrap_err()
            .contains("not a DLSPS config.json"));
    }

    #[test]
    fn config_pipeline_with_a_file_that_has_no_pipelines() {
        let bare = serde_json::json!({"topic": "t"});
        assert_eq!(
            publisher(&bare, pick(Some("cam"), None)).unwrap_err(),
            r#"config-pipeline is "cam", but the file is not a DLSPS config.json: it has no pipelines to pick from"#
        );
        // A single pipeline entry of that name is fine; of another name, not.
        let entry = serde_json::json!({"name": "cam", "mqtt_publisher": {"topic": "t"}});
        assert!(publisher(&entry, pick(Some("cam"), None)).is_ok());
        assert!(publisher(&entry, pick(Some("other"), None))
            .unwrap_err()
            .contains(r#"the file is the pipeline entry "cam""#));
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
