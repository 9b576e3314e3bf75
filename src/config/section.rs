// SPDX-License-Identifier: MPL-2.0

//! Finding the section an element reads in a configuration document: a DLSPS
//! `config.json` (by pipeline entry), a REST request body, an `mqtt_publisher` section or a
//! filter of its own.

use std::fmt;

use serde_json::Value;

use crate::error::shown;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
