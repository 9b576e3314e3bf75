// SPDX-License-Identifier: MPL-2.0

//! The JSON configuration files users share with DL Streamer Pipeline Server: the
//! `mqtt_publisher` section `mqttpublish` reads, and its `filter`, which `metafilter`
//! reads too, found in a DLSPS `config.json` (by pipeline), a REST request body, or a file
//! of their own. [`section()`] finds the section in a document, [`PublisherConfig`] reads
//! the publisher settings, [`crate::filter::FilterConfig`] the filter; [`ConfigFile`] puts
//! the three together for the elements. Errors name the key and show a value only when it
//! cannot hold a secret. What DLSPS refuses is refused; what it ignores is ignored with a
//! warning.

use std::fmt;
use std::path::{Path, PathBuf};

use gst::glib;
use gst::prelude::*;
use serde_json::Value;

use crate::error::SettingError;
use crate::filter::{filter_config_from_value, FilterConfig};

mod publisher;
mod section;

pub use publisher::PublisherConfig;
pub use section::{section, Found, Pick, Section};

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

/// A configuration file as read, in any of the forms [`section()`] knows.
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

    /// The section picked by `name` (`config-pipeline`), else by `gst_pipeline` (the name of
    /// the GStreamer pipeline, known once the element starts), so the choice is always made.
    fn section(
        &self,
        section: Section,
        name: Option<&str>,
        gst_pipeline: &str,
    ) -> Result<Found, SettingError> {
        let pick = Pick {
            name,
            gst_pipeline: Some(gst_pipeline),
        };
        self::section(&self.document, section, pick)
            .map_err(|e| self.invalid(e))?
            .ok_or_else(|| self.invalid("several pipelines: set config-pipeline"))
    }

    /// The `mqtt_publisher` section of the pipeline entry `name`, else `gst_pipeline`, picks.
    pub fn publisher(
        &self,
        name: Option<&str>,
        gst_pipeline: &str,
    ) -> Result<PublisherConfig, SettingError> {
        let found = self.section(Section::Publisher, name, gst_pipeline)?;
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

    /// The filter of the pipeline entry `name`, else `gst_pipeline`, picks, with warnings for
    /// what is ignored in it.
    pub fn filter(
        &self,
        name: Option<&str>,
        gst_pipeline: &str,
    ) -> Result<(FilterConfig, Vec<String>), SettingError> {
        let found = self.section(Section::Filter, name, gst_pipeline)?;
        let value = found.value.as_ref().unwrap_or(&Value::Null);
        let filter = filter_config_from_value(value).map_err(|e| self.invalid(found.here(e)))?;
        let mut warnings = found.warnings.clone();
        if !filter.unknown_keys.is_empty() {
            warnings.push(found.here(format!(
                "filter has keys DLSPS and this element ignore: {}",
                filter.unknown_keys.join(", ")
            )));
        }
        Ok((filter, warnings))
    }
}

/// The `config` property of the elements that read a configuration file, `metafilter` and
/// `mqttpublish`.
pub fn config_property() -> glib::ParamSpec {
    glib::ParamSpecString::builder("config")
        .nick("Configuration file")
        .blurb(
            "Path to a DL Streamer Pipeline Server JSON file (a config.json, a REST request body \
             or an mqtt_publisher section), read at start; properties set explicitly win over it.",
        )
        .mutable_ready()
        .build()
}

/// The `config-pipeline` property that goes with [`config_property`].
pub fn config_pipeline_property() -> glib::ParamSpec {
    glib::ParamSpecString::builder("config-pipeline")
        .nick("Configuration pipeline")
        .blurb(
            "The config.json pipeline entry to read; unset, the only one, else the one named like \
             the GStreamer pipeline holding the element.",
        )
        .mutable_ready()
        .build()
}

/// A TCP port: 1 to 65535. Errors name `what` and show the value, e.g. `port: 0 is not a
/// TCP port (1..65535)`.
pub fn tcp_port<T>(what: impl fmt::Display, value: T) -> Result<u16, String>
where
    T: TryInto<u16> + fmt::Display + Copy,
{
    let port = value.try_into().ok().filter(|port| *port > 0);
    port.ok_or_else(|| not_a_tcp_port(what, value))
}

/// A TCP port written as text, e.g. in `MQTT_PORT`. Errors show the text quoted, e.g.
/// `MQTT_PORT: "99999" is not a TCP port (1..65535)`.
pub fn parse_tcp_port(what: impl fmt::Display, text: &str) -> Result<u16, String> {
    let port = text.parse::<u16>().ok().filter(|port| *port > 0);
    port.ok_or_else(|| not_a_tcp_port(what, format_args!("{text:?}")))
}

fn not_a_tcp_port(what: impl fmt::Display, value: impl fmt::Display) -> String {
    format!("{what}: {value} is not a TCP port (1..65535)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_port_is_1_to_65535_and_errors_show_the_value_as_given() {
        assert_eq!(tcp_port("port", 1883u32), Ok(1883));
        assert_eq!(tcp_port("port", 65535i64), Ok(65535));
        assert_eq!(
            tcp_port("port", 0u64),
            Err("port: 0 is not a TCP port (1..65535)".into())
        );
        assert_eq!(
            tcp_port("port", -1i64),
            Err("port: -1 is not a TCP port (1..65535)".into())
        );
        assert_eq!(parse_tcp_port("MQTT_PORT", "8883"), Ok(8883));
        for text in ["0", "65536", "-1", "", "1883 ", "abc"] {
            assert_eq!(
                parse_tcp_port("MQTT_PORT", text),
                Err(format!("MQTT_PORT: {text:?} is not a TCP port (1..65535)")),
            );
        }
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
}
