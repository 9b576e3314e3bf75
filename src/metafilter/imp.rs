// SPDX-License-Identifier: MPL-2.0

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use crate::config::{self, FilterConfig};
use crate::error::SettingError;
use crate::filter::{Filter, FilterType};
use crate::meta;

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
    /// Shared with the streaming thread, which takes a reference per buffer.
    filter: Arc<Filter>,
    config: Option<PathBuf>,
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

impl MetaFilter {
    /// Applies a change to the filter, or records why it was rejected.
    fn update_filter(
        &self,
        settings: &mut Settings,
        property: &'static str,
        change: Result<impl FnOnce(&mut Filter), SettingError>,
    ) {
        match change {
            Ok(change) => {
                change(Arc::make_mut(&mut settings.filter));
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
                        "A JSON object mapping labels to their minimum confidence (0 to 1), \
                         e.g. '{\"box\":0.4,\"shipping label\":0.4}'. Results of a listed label \
                         below its threshold are removed. Invalid JSON or thresholds are ignored \
                         with a warning and the element then refuses to start.",
                    )
                    .default_value(Some("{}"))
                    .mutable_playing()
                    .build(),
                glib::ParamSpecDouble::builder("threshold")
                    .nick("Default threshold")
                    .blurb(
                        "The minimum confidence, from 0 to 1, for labels not listed in \
                         label-score; 0 lets every unlisted label pass. A value outside 0..1 is \
                         ignored with a warning and the element then refuses to start.",
                    )
                    .minimum(f64::MIN)
                    .maximum(f64::MAX)
                    .default_value(DEFAULT_THRESHOLD)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("type", FilterType::default())
                    .nick("Filter type")
                    .blurb(
                        "What the thresholds apply to: whole detected objects (detection) or \
                         the classification results attached to objects (classification).",
                    )
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("drop-unscored")
                    .nick("Drop unscored")
                    .blurb(
                        "Also remove results that carry no confidence (or an invalid one) when a \
                         threshold applies to their label. By default they are kept.",
                    )
                    .default_value(DEFAULT_DROP_UNSCORED)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecBoolean::builder("drop-empty")
                    .nick("Drop emptied buffers")
                    .blurb(
                        "Drop buffers that carried objects and have none left after filtering \
                         (for a metadata-only branch). Buffers that had no objects pass.",
                    )
                    .default_value(DEFAULT_DROP_EMPTY)
                    .mutable_playing()
                    .build(),
                glib::ParamSpecString::builder("config")
                    .nick("Configuration file")
                    .blurb(
                        "Path to a JSON file holding a DL Streamer Pipeline Server filter \
                         ({\"type\":..,\"label_score\":..}), bare, under \"filter\" or under \
                         \"mqtt_publisher\".\"filter\". It is read when set; properties set \
                         after it override its values.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters since the element started: buffers, buffers-dropped, \
                         objects-removed, classifications-removed and invalid-confidences \
                         (NaN, infinite or outside 0..1, treated as no confidence).",
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
                let parsed = config::parse_label_score(text.as_deref().unwrap_or("{}"))
                    .map_err(|e| SettingError::Invalid(format!("invalid label-score: {e}")));
                self.update_filter(
                    &mut settings,
                    "label-score",
                    parsed.map(|map| move |f: &mut Filter| f.label_score = map),
                );
            }
            "threshold" => {
                let value = value.get::<f64>().expect("type checked upstream");
                let checked = config::check_threshold("threshold", value)
                    .map_err(|e| SettingError::Invalid(format!("invalid {e}")));
                self.update_filter(
                    &mut settings,
                    "threshold",
                    checked.map(|t| move |f: &mut Filter| f.threshold = t),
                );
            }
            "type" => {
                let kind = value.get::<FilterType>().expect("type checked upstream");
                Arc::make_mut(&mut settings.filter).kind = kind;
            }
            "drop-unscored" => {
                let drop = value.get::<bool>().expect("type checked upstream");
                Arc::make_mut(&mut settings.filter).drop_unscored = drop;
            }
            "drop-empty" => {
                settings.drop_empty = value.get().expect("type checked upstream");
            }
            "config" => {
                let path = value
                    .get::<Option<String>>()
                    .expect("type checked upstream")
                    .map(PathBuf::from);
                let loaded = match &path {
                    None => Ok(FilterConfig::default()),
                    Some(path) => {
                        config::load_filter_file(path).map_err(|e| e.context("invalid config"))
                    }
                };
                if loaded.is_ok() {
                    settings.config = path;
                }
                self.update_filter(
                    &mut settings,
                    "config",
                    loaded.map(|config| move |f: &mut Filter| config.apply(f)),
                );
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
            "config" => settings
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .to_value(),
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
        let settings = self.settings.lock().unwrap();
        if let Some(error) = SettingError::join(settings.rejected.values()) {
            return Err(error.to_error_message());
        }
        gst::debug!(CAT, imp = self, "Starting with {:?}", settings.filter);
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
