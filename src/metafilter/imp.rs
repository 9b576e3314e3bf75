// SPDX-License-Identifier: MPL-2.0

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use crate::config::{self, ConfigFile};
use crate::error::SettingError;
use crate::filter::{check_threshold, parse_label_score, Filter, FilterConfig, FilterType};
use crate::meta;
use crate::pipeline;

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "metafilter",
        gst::DebugColorFlags::empty(),
        Some("Analytics metadata confidence filter"),
    )
});

const DEFAULT_THRESHOLD: f64 = 0.0;
const DEFAULT_DROP_UNSCORED: bool = false;
const DEFAULT_DROP_EMPTY: bool = false;

#[derive(Debug, Default)]
struct Settings {
    /// The filter in effect (see [`Settings::resolve`]). Shared with the streaming thread,
    /// which takes a reference per buffer.
    filter: Arc<Filter>,
    /// `type` and `label-score` as properties set them: `None` until set, so that the
    /// config file never wins over a property, whichever was set first.
    kind: Option<FilterType>,
    label_score: Option<HashMap<String, f64>>,
    threshold: f64,
    drop_unscored: bool,
    /// The config file, and `config-pipeline`, which picks a pipeline of a DLSPS
    /// config.json. The file is read at start.
    config: Option<String>,
    config_pipeline: Option<String>,
    /// The filter of the config file as the last start read it; dropped when `config` or
    /// `config-pipeline` changes, until the next start reads the file again.
    config_filter: Option<FilterConfig>,
    drop_empty: bool,
    /// Rejected property values by property name; the element refuses to start while any
    /// is left (a later valid value for the same property clears it).
    rejected: BTreeMap<&'static str, SettingError>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    buffers: u64,
    buffers_dropped: u64,
    objects_removed: u64,
    classifications_removed: u64,
    invalid_confidences: u64,
}

#[derive(Default)]
pub struct MetaFilter {
    settings: Mutex<Settings>,
    stats: Mutex<Stats>,
}

impl Settings {
    /// Puts the filter in effect together: the defaults, overlaid by the config file,
    /// overlaid by the properties set explicitly.
    fn resolve(&mut self) {
        let mut filter = Filter {
            threshold: self.threshold,
            drop_unscored: self.drop_unscored,
            ..Filter::default()
        };
        if let Some(file) = &self.config_filter {
            file.apply(&mut filter);
        }
        if let Some(kind) = self.kind {
            filter.kind = kind;
        }
        if let Some(label_score) = &self.label_score {
            filter.label_score = label_score.clone();
        }
        self.filter = Arc::new(filter);
    }
}

/// Reads the filter of the config file `config` names, in the pipeline entry
/// `config_pipeline` names, else the one `gst_pipeline` (the name of the GStreamer pipeline)
/// picks. Returns the warnings for what the file holds that is ignored.
fn read_config_filter(
    config: Option<&str>,
    config_pipeline: Option<&str>,
    gst_pipeline: &str,
) -> Result<(Option<FilterConfig>, Vec<String>), SettingError> {
    let Some(path) = config else {
        return match config_pipeline {
            Some(_) => Err(SettingError::Invalid(
                "config-pipeline: is set but config is not: it picks a pipeline of a DLSPS \
                 config.json"
                    .into(),
            )),
            None => Ok((None, Vec::new())),
        };
    };
    let (filter, warnings) = ConfigFile::read(Path::new(path))
        .and_then(|file| file.filter(config_pipeline, gst_pipeline))
        .map_err(|e| e.context("invalid config"))?;
    let warnings = warnings
        .into_iter()
        .map(|warning| format!("config: {path}: {warning}"))
        .collect();
    Ok((Some(filter), warnings))
}

impl MetaFilter {
    /// Applies a change to the settings and puts the filter in effect together again, or
    /// records why the change was rejected.
    fn update_filter(
        &self,
        settings: &mut Settings,
        property: &'static str,
        change: Result<impl FnOnce(&mut Settings), SettingError>,
    ) {
        match change {
            Ok(change) => {
                change(settings);
                settings.resolve();
                settings.rejected.remove(property);
            }
            Err(err) => {
                gst::warning!(CAT, imp = self, "Ignoring {property}: {err}");
                settings.rejected.insert(property, err);
            }
        }
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MetaFilter {
    const NAME: &'static str = "GstMetaFilter";
    type Type = super::MetaFilter;
    type ParentType = gst_base::BaseTransform;
}

impl ObjectImpl for MetaFilter {
    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            vec![
                glib::ParamSpecString::builder("label-score")
                    .nick("Label thresholds")
                    .blurb(
                        "JSON object mapping labels to their minimum confidence (0 to 1), e.g. \
                         '{\"box\":0.4,\"shipping label\":0.4}'; results below it are removed.",
                    )
                    .default_value(Some("{}"))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("threshold")
                    .nick("Default threshold")
                    .blurb(
                        "Minimum confidence (0 to 1) for labels not listed in label-score; 0 \
                         lets them all pass.",
                    )
                    .minimum(0.0)
                    .maximum(1.0)
                    .default_value(DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("type", FilterType::default())
                    .nick("Filter type")
                    .blurb(
                        "What the thresholds apply to: whole detected objects or the \
                         classification results attached to them.",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("drop-unscored")
                    .nick("Drop unscored")
                    .blurb(
                        "Also remove results without a valid confidence when a threshold applies \
                         to their label.",
                    )
                    .default_value(DEFAULT_DROP_UNSCORED)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("drop-empty")
                    .nick("Drop emptied buffers")
                    .blurb("Drop buffers that carried objects and have none left after filtering.")
                    .default_value(DEFAULT_DROP_EMPTY)
                    .mutable_playing()
                    .build(),
                config::config_property(),
                config::config_pipeline_property(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since the element started: buffers, buffers-dropped, \
                         objects-removed, classifications-removed and invalid-confidences.",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        match pspec.name() {
            "label-score" => {
                let text = value
                    .get::<Option<String>>()
                    .expect("type checked upstream");
                let parsed = parse_label_score(text.as_deref().unwrap_or("{}"))
                    .map_err(|e| SettingError::Invalid(format!("invalid label-score: {e}")));
                self.update_filter(
                    &mut settings,
                    "label-score",
                    parsed.map(|map| move |s: &mut Settings| s.label_score = Some(map)),
                );
            }
            "threshold" => {
                let value = value.get::<f64>().expect("type checked upstream");
                let checked = check_threshold("threshold", value)
                    .map_err(|e| SettingError::Invalid(format!("invalid {e}")));
                self.update_filter(
                    &mut settings,
                    "threshold",
                    checked.map(|t| move |s: &mut Settings| s.threshold = t),
                );
            }
            "type" => {
                let kind = value.get::<FilterType>().expect("type checked upstream");
                let change = Ok(move |s: &mut Settings| s.kind = Some(kind));
                self.update_filter(&mut settings, "type", change);
            }
            "drop-unscored" => {
                let drop = value.get::<bool>().expect("type checked upstream");
                let change = Ok(move |s: &mut Settings| s.drop_unscored = drop);
                self.update_filter(&mut settings, "drop-unscored", change);
            }
            "drop-empty" => {
                settings.drop_empty = value.get().expect("type checked upstream");
            }
            "config" => {
                settings.config = value.get().expect("type checked upstream");
                // The file is read at start; what was read from it no longer applies.
                settings.config_filter = None;
                settings.resolve();
            }
            "config-pipeline" => {
                settings.config_pipeline = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .filter(|name| !name.is_empty());
                settings.config_filter = None;
                settings.resolve();
            }
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "label-score" => {
                let map: serde_json::Map<String, serde_json::Value> = settings
                    .filter
                    .label_score
                    .iter()
                    .map(|(label, t)| (label.clone(), (*t).into()))
                    .collect();
                serde_json::Value::Object(map).to_string().to_value()
            }
            "threshold" => settings.filter.threshold.to_value(),
            "type" => settings.filter.kind.to_value(),
            "drop-unscored" => settings.filter.drop_unscored.to_value(),
            "drop-empty" => settings.drop_empty.to_value(),
            "config" => settings.config.to_value(),
            "config-pipeline" => settings.config_pipeline.to_value(),
            "stats" => {
                let stats = *self.stats.lock().unwrap();
                gst::Structure::builder("metafilter-stats")
                    .field("buffers", stats.buffers)
                    .field("buffers-dropped", stats.buffers_dropped)
                    .field("objects-removed", stats.objects_removed)
                    .field("classifications-removed", stats.classifications_removed)
                    .field("invalid-confidences", stats.invalid_confidences)
                    .build()
                    .to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

impl GstObjectImpl for MetaFilter {}

impl ElementImpl for MetaFilter {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "Analytics metadata filter",
                "Filter/Analyzer/Video",
                &format!(
                    "Removes detected objects and classification results whose confidence is \
                     below a per-label threshold from the analytics metadata of each buffer. {}",
                    crate::meta::READS
                ),
                "gst-plugin-analyticsmqtt contributors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let caps = gst::Caps::new_any();
            vec![
                gst::PadTemplate::new(
                    "src",
                    gst::PadDirection::Src,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
                gst::PadTemplate::new(
                    "sink",
                    gst::PadDirection::Sink,
                    gst::PadPresence::Always,
                    &caps,
                )
                .unwrap(),
            ]
        });
        PAD_TEMPLATES.as_ref()
    }
}

impl BaseTransformImpl for MetaFilter {
    const MODE: gst_base::subclass::BaseTransformMode =
        gst_base::subclass::BaseTransformMode::AlwaysInPlace;
    const PASSTHROUGH_ON_SAME_CAPS: bool = false;
    const TRANSFORM_IP_ON_PASSTHROUGH: bool = false;

    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let pipeline_name = pipeline::outermost_bin(self.obj().upcast_ref())
            .name()
            .to_string();
        let (config, config_pipeline) = {
            let settings = self.settings.lock().unwrap();
            (settings.config.clone(), settings.config_pipeline.clone())
        };
        // Not under the settings lock: reading a file may block.
        let read = read_config_filter(
            config.as_deref(),
            config_pipeline.as_deref(),
            &pipeline_name,
        );
        let mut settings = self.settings.lock().unwrap();
        let errors = read.as_ref().err().into_iter();
        if let Some(error) = SettingError::join(errors.chain(settings.rejected.values())) {
            return Err(error.to_error_message());
        }
        let (config_filter, warnings) = read.unwrap_or_default();
        settings.config_filter = config_filter;
        settings.resolve();
        gst::debug!(CAT, imp = self, "Starting with {:?}", settings.filter);
        drop(settings);
        for warning in warnings {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", warning));
        }
        *self.stats.lock().unwrap() = Stats::default();
        Ok(())
    }

    fn transform_ip(
        &self,
        buffer: &mut gst::BufferRef,
    ) -> Result<gst::FlowSuccess, gst::FlowError> {
        let (filter, drop_empty) = {
            let settings = self.settings.lock().unwrap();
            (settings.filter.clone(), settings.drop_empty)
        };

        let before = meta::object_count(buffer);
        let outcome = filter.apply_to_buffer(buffer);
        let emptied = before > 0 && meta::object_count(buffer) == 0;
        let dropped = drop_empty && emptied;

        {
            let mut stats = self.stats.lock().unwrap();
            stats.buffers += 1;
            stats.invalid_confidences += u64::from(outcome.invalid_confidences);
            match filter.kind {
                FilterType::Detection => stats.objects_removed += u64::from(outcome.removed),
                FilterType::Classification => {
                    stats.classifications_removed += u64::from(outcome.removed)
                }
            }
            stats.buffers_dropped += u64::from(dropped);
        }
        if outcome.removed > 0 {
            gst::trace!(
                CAT,
                imp = self,
                "Removed {} results from buffer {:?}",
                outcome.removed,
                buffer.pts()
            );
        }

        if dropped {
            Ok(gst_base::BASE_TRANSFORM_FLOW_DROPPED)
        } else {
            Ok(gst::FlowSuccess::Ok)
        }
    }
}
