// SPDX-License-Identifier: MPL-2.0

//! The `mqttpublish` element: GStreamer glue. Settings are resolved in [`super::settings`],
//! messages built in [`super::message`] and published by the connection worker of
//! [`crate::mqtt`]; what the worker reports becomes bus messages in [`super::notices`], and
//! what a run lost is reported by [`super::report`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::message::{Assembler, FrameCounters, Input};
use super::notices::{self, Alert};
use super::report;
use super::settings::{
    self, Number, Settings, DEFAULT_ADD_SINK_TIME, DEFAULT_CLEAN_SESSION, DEFAULT_HOST,
    DEFAULT_PUBLISH_FRAME, DEFAULT_RETAIN, DEFAULT_SKIP_EMPTY, DEFAULT_TOPIC, FLUSH_TIMEOUT,
    FRAME_INTERVAL, JPEG_QUALITY, KEEP_ALIVE, MAX_MESSAGE_SIZE, MAX_QUEUED_BYTES,
    MAX_QUEUED_MESSAGES, MAX_RECONNECT_DELAY, PORT, PROTOCOL, QOS, SPOOL_MAX_AGE, SPOOL_MAX_BYTES,
    SPOOL_REPLAY_SHARE, SPOOL_SYNC_INTERVAL,
};
use super::spooling::{self, Outcome};
use super::{Leaky, MessageFormat, MetadataSource, SpoolSync};
use crate::config;
use crate::jpeg;
use crate::mqtt::{self, Flushed, Notice, Pushed, Secret, SpoolStart, Stats, Worker};
use crate::pipeline;

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "mqttpublish",
        gst::DebugColorFlags::empty(),
        Some("MQTT publisher of analytics metadata"),
    )
});

/// A stop gives up flushing when nothing completed for this long.
const STOP_FLUSH_STALL: Duration = Duration::from_millis(250);

struct Started {
    /// Shared with a streaming thread that waits for room in the queue without holding
    /// the state lock.
    worker: Arc<Worker>,
    assembler: Assembler,
    flush_timeout: Duration,
    delivery: Delivery,
}

/// What the run learnt about delivery.
#[derive(Default)]
struct Delivery {
    /// Whether the upstream is live, once asked (at the first buffer).
    upstream_live: Option<bool>,
    /// End of stream reported what was lost (or that nothing was), and no buffer came
    /// after it.
    reported: bool,
    /// What the broker refused for good, in words (see [`Notice::Refused`]).
    refusal: Option<String>,
    /// The refusal ended the run with an error.
    refusal_reported: bool,
}

impl Delivery {
    /// Whether a refusal ends the run: it does when the upstream is not live (a file job:
    /// nothing would ever be delivered); a live pipeline keeps retrying. `Some(reason)` the
    /// first time, to post the error with.
    fn refusal_ends_run(&mut self) -> Option<Option<String>> {
        let reason = self.refusal.as_ref()?;
        if self.upstream_live != Some(false) {
            return None;
        }
        if std::mem::replace(&mut self.refusal_reported, true) {
            Some(None)
        } else {
            Some(Some(reason.clone()))
        }
    }
}

#[derive(Default)]
enum State {
    #[default]
    Stopped,
    Started(Box<Started>),
}

#[derive(Default)]
pub struct MqttPublish {
    settings: Mutex<Settings>,
    state: Mutex<State>,
    /// Counters of the last run, kept readable after the element stops.
    last_stats: Mutex<(Stats, FrameCounters)>,
    /// Ask upstream whether it is live before the next buffer: set by a new stream, caps,
    /// segment or latency, which is when liveness can change.
    check_live: AtomicBool,
}

#[glib::object_subclass]
impl ObjectSubclass for MqttPublish {
    const NAME: &'static str = "GstMqttPublish";
    type Type = super::MqttPublish;
    type ParentType = gst_base::BaseSink;
}

/// The `ParamSpec` of a numeric property, with its range and default from `number`.
fn uint(number: Number<u32>, nick: &str, blurb: &str) -> glib::ParamSpec {
    glib::ParamSpecUInt::builder(number.name)
        .nick(nick)
        .blurb(blurb)
        .minimum(number.min)
        .maximum(number.max)
        .default_value(number.default)
        .mutable_ready()
        .build()
}

impl ObjectImpl for MqttPublish {
    fn constructed(&self) {
        self.parent_constructed();
        // Publishing is not rendering: never wait for the clock unless asked to.
        self.obj().set_sync(false);
        // Holding on to the last frame serves nothing here.
        self.obj().set_enable_last_sample(false);
    }

    fn properties() -> &'static [glib::ParamSpec] {
        static PROPERTIES: Lazy<Vec<glib::ParamSpec>> = Lazy::new(|| {
            let string = |name, nick, blurb| {
                glib::ParamSpecString::builder(name)
                    .nick(nick)
                    .blurb(blurb)
                    .mutable_ready()
            };
            let boolean = |name, nick, blurb, default| {
                glib::ParamSpecBoolean::builder(name)
                    .nick(nick)
                    .blurb(blurb)
                    .default_value(default)
                    .mutable_ready()
                    .build()
            };
            vec![
                string(
                    "host",
                    "Broker host",
                    "MQTT broker host, or a comma-separated list to fail over (h1:1883,[::1]:1884). \
                     Unset: the config file's host, then MQTT_HOST, then localhost",
                )
                .default_value(Some(DEFAULT_HOST))
                .build(),
                uint(
                    PORT,
                    "Broker port",
                    "Broker TCP port, for hosts given without one. Unset: the config file's port, \
                     then MQTT_PORT, then 1883",
                ),
                string(
                    "topic",
                    "Topic",
                    "MQTT topic to publish to (no wildcards). Config file key: topic",
                )
                .default_value(Some(DEFAULT_TOPIC))
                .build(),
                uint(
                    QOS,
                    "Quality of service",
                    "0 at most once, 1 at least once, 2 exactly once. Config file key: qos",
                ),
                boolean(
                    "retain",
                    "Retain",
                    "Ask the broker to keep the last message for new subscribers",
                    DEFAULT_RETAIN,
                ),
                uint(
                    PROTOCOL,
                    "Protocol level",
                    "4 for MQTT 3.1.1, 5 for MQTT 5. Config file key: protocol",
                ),
                string(
                    "client-id",
                    "Client id",
                    "MQTT client id; unset: a unique one. A fixed one lets clean-session=false \
                     resume the session",
                )
                .build(),
                boolean(
                    "clean-session",
                    "Clean session",
                    "Start a new session at each connection; false (with a fixed client-id) \
                     gets what was unacknowledged delivered after a reconnection",
                    DEFAULT_CLEAN_SESSION,
                ),
                uint(
                    KEEP_ALIVE,
                    "Keep-alive",
                    "Seconds between pings while idle (0: none, MQTT 3.1.1 only; protocol 5 \
                     needs 5 or more)",
                ),
                uint(
                    MAX_RECONNECT_DELAY,
                    "Longest reconnection delay",
                    "Longest wait in milliseconds between two passes over the brokers: after a \
                     failure the element goes on to the next broker at once, and once every \
                     one has failed waits 1 s, doubling per pass up to this, with jitter",
                ),
                string(
                    "username",
                    "User name",
                    "User name to authenticate with. Config file key: username",
                )
                .build(),
                glib::ParamSpecString::builder("password")
                    .nick("Password")
                    .blurb(
                        "Password to authenticate with (needs username); write-only, never \
                         shown or logged. Config file key: password",
                    )
                    .write_only()
                    .mutable_ready()
                    .build(),
                string(
                    "tls-ca-file",
                    "TLS CA file",
                    "PEM CA certificate(s) of the broker's certificate; setting it enables TLS. \
                     Config file key: tls.ca_cert",
                )
                .build(),
                string(
                    "tls-cert-file",
                    "TLS client certificate",
                    "PEM client certificate for mutual TLS (needs tls-key-file). Config file \
                     key: tls.client_cert",
                )
                .build(),
                string(
                    "tls-key-file",
                    "TLS client key",
                    "PEM client key (PKCS#1, PKCS#8 or SEC1) for mutual TLS. Config file key: \
                     tls.client_key",
                )
                .build(),
                glib::ParamSpecBoolean::builder("publish-frame")
                    .nick("Publish frame")
                    .blurb(
                        "Add the frame as base64 JPEG to the messages (raw video is encoded, \
                         JPEG sent as is). Config file key: publish_frame",
                    )
                    .default_value(DEFAULT_PUBLISH_FRAME)
                    .mutable_ready()
                    .build(),
                uint(
                    JPEG_QUALITY,
                    "JPEG quality",
                    "JPEG quality when encoding raw video frames",
                ),
                uint(
                    FRAME_INTERVAL,
                    "Frame interval",
                    "With publish-frame, add the frame to every Nth message only",
                ),
                glib::ParamSpecEnum::builder_with_default("message-format", MessageFormat::default())
                    .nick("Message format")
                    .blurb("Shape of the messages: as the DLSPS document, as the DLSPS code, or what DLSPS publishes")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default(
                    "metadata-source",
                    MetadataSource::default(),
                )
                .nick("Metadata source")
                .blurb("Publish gvametaconvert's attached JSON when there is one, or always build it from the metas")
                .mutable_ready()
                .build(),
                string(
                    "pipeline-name",
                    "Pipeline name",
                    "pipeline.name in dlsps messages; unset: the GStreamer pipeline's name",
                )
                .build(),
                string(
                    "pipeline-version",
                    "Pipeline version",
                    "pipeline.version in dlsps messages; unset: the config.json entry's name, \
                     else \"\"",
                )
                .build(),
                string(
                    "source",
                    "Source",
                    "A source URI or name, added to every message as \"source\"",
                )
                .build(),
                string(
                    "tags",
                    "Tags",
                    "A JSON object added to every message as \"tags\", e.g. {\"site\":\"dock-3\"}",
                )
                .build(),
                boolean(
                    "skip-empty",
                    "Skip empty frames",
                    "Publish nothing for frames without objects (counted in stats)",
                    DEFAULT_SKIP_EMPTY,
                ),
                boolean(
                    "add-sink-time",
                    "Add sink time",
                    "Add \"sink_time\", the wall-clock time (ns since the epoch) the buffer \
                     arrived, for latency measurements",
                    DEFAULT_ADD_SINK_TIME,
                ),
                boolean(
                    "add-tensor-data",
                    "Add tensor data",
                    "Publish the frame-level tensors (gvainference, gvaclassify full-frame) with \
                     their raw output, as gvametaconvert add-tensor-data=true does",
                    settings::DEFAULT_ADD_TENSOR_DATA,
                ),
                config::config_property(),
                config::config_pipeline_property(),
                uint(
                    MAX_QUEUED_MESSAGES,
                    "Queue limit (messages)",
                    "Most messages waiting for the broker; beyond it the leaky policy applies",
                ),
                glib::ParamSpecUInt64::builder(MAX_QUEUED_BYTES.name)
                    .nick("Queue limit (bytes)")
                    .blurb(
                        "Most payload bytes waiting for the broker; beyond it the leaky policy \
                         applies",
                    )
                    .minimum(MAX_QUEUED_BYTES.min)
                    .maximum(MAX_QUEUED_BYTES.max)
                    .default_value(MAX_QUEUED_BYTES.default)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("leaky", Leaky::default())
                    .nick("Leaky")
                    .blurb(
                        "What to do when the queue is full; auto waits when the upstream is not \
                         live and drops the oldest when it is. Drops are counted and warned about",
                    )
                    .mutable_ready()
                    .build(),
                uint(
                    MAX_MESSAGE_SIZE,
                    "Largest message",
                    "Largest message in bytes: a larger one goes without its image, or is \
                     dropped and counted",
                ),
                uint(
                    FLUSH_TIMEOUT,
                    "Flush timeout",
                    "Milliseconds to wait at end of stream for queued messages to be delivered",
                ),
                string(
                    "shared-connection",
                    "Shared connection",
                    "Name of an MQTT connection to share with the other sinks of the process \
                     that give the same name: one client and one TCP connection for all of \
                     them, which must then have the same host, port, client-id, clean-session, \
                     protocol, keep-alive, max-reconnect-delay, credentials and TLS files (a \
                     sink that differs fails to start, naming the setting). Topic, QoS, retain, \
                     queue and leaky stay each sink's own; not with spool-location. Unset: a \
                     connection of its own. Config file key: shared_connection",
                )
                .build(),
                string(
                    "spool-location",
                    "Spool location",
                    "Folder for a disk spool: messages wait there until delivered, across \
                     outages and restarts (in a folder named after client-id, else the \
                     element). Config file key: spool_location",
                )
                .build(),
                glib::ParamSpecUInt64::builder(SPOOL_MAX_BYTES.name)
                    .nick("Spool limit (bytes)")
                    .blurb(
                        "Most bytes the spool holds; beyond it the leaky policy applies (a live \
                         upstream drops the oldest)",
                    )
                    .minimum(SPOOL_MAX_BYTES.min)
                    .maximum(SPOOL_MAX_BYTES.max)
                    .default_value(SPOOL_MAX_BYTES.default)
                    .mutable_ready()
                    .build(),
                uint(
                    SPOOL_MAX_AGE,
                    "Spool age limit",
                    "Seconds after which spooled messages are dropped (counted); 0: never",
                ),
                glib::ParamSpecEnum::builder_with_default("spool-sync", SpoolSync::default())
                    .nick("Spool sync")
                    .blurb("When spooled messages are flushed to the disk")
                    .mutable_ready()
                    .build(),
                uint(
                    SPOOL_SYNC_INTERVAL,
                    "Spool sync interval",
                    "Milliseconds between flushes to the disk with spool-sync=interval",
                ),
                uint(
                    SPOOL_REPLAY_SHARE,
                    "Spool replay share",
                    "Out of 100 messages sent while live ones wait, how many come from the \
                     spool's backlog",
                ),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters of the current or last run: messages queued, published, \
                         acknowledged and dropped (by reason), frames skipped or sent without \
                         an image, reconnects, queue and connection state",
                    )
                    .read_only()
                    .build(),
            ]
        });
        PROPERTIES.as_ref()
    }

    fn set_property(&self, _id: usize, value: &glib::Value, pspec: &glib::ParamSpec) {
        let mut settings = self.settings.lock().unwrap();
        let string = || {
            value
                .get::<Option<String>>()
                .expect("type checked upstream")
        };
        let non_empty = || string().filter(|s| !s.is_empty());
        match pspec.name() {
            "host" => settings.host = Some(string().unwrap_or_default()),
            "port" => settings.port = Some(get(value)),
            "topic" => settings.topic = Some(string().unwrap_or_default()),
            "qos" => settings.qos = Some(get(value)),
            "retain" => settings.retain = get(value),
            "protocol" => settings.protocol = Some(get(value)),
            "client-id" => settings.client_id = Some(non_empty()),
            "clean-session" => settings.clean_session = get(value),
            "keep-alive" => settings.keep_alive = get(value),
            "max-reconnect-delay" => settings.max_reconnect_delay_ms = get(value),
            "username" => settings.username = Some(non_empty()),
            "password" => settings.password = Some(string().map(Secret::new)),
            "tls-ca-file" => settings.tls_ca_file = Some(non_empty()),
            "tls-cert-file" => settings.tls_cert_file = Some(non_empty()),
            "tls-key-file" => settings.tls_key_file = Some(non_empty()),
            "publish-frame" => settings.publish_frame = Some(get(value)),
            "jpeg-quality" => settings.jpeg_quality = get(value),
            "frame-interval" => settings.frame_interval = get(value),
            "message-format" => settings.message_format = get(value),
            "metadata-source" => settings.metadata_source = get(value),
            "source" => settings.source = string(),
            "pipeline-name" => settings.pipeline_name = string(),
            "pipeline-version" => settings.pipeline_version = string(),
            "tags" => match non_empty().map(|t| settings::parse_tags(&t)).transpose() {
                Ok(tags) => {
                    settings.tags = tags;
                    settings.rejected_tags = None;
                }
                Err(e) => {
                    gst::warning!(CAT, imp = self, "Ignoring {e}");
                    settings.rejected_tags = Some(e);
                }
            },
            "skip-empty" => settings.skip_empty = get(value),
            "add-sink-time" => settings.add_sink_time = get(value),
            "add-tensor-data" => settings.add_tensor_data = get(value),
            "config" => settings.config = non_empty(),
            "config-pipeline" => settings.config_pipeline = non_empty(),
            "max-queued-messages" => settings.max_queued_messages = get(value),
            "max-queued-bytes" => settings.max_queued_bytes = get(value),
            "leaky" => {
                settings.leaky = match get(value) {
                    Leaky::None => Leaky::No,
                    leaky => leaky,
                }
            }
            "max-message-size" => settings.max_message_size = get(value),
            "flush-timeout" => settings.flush_timeout_ms = get(value),
            "shared-connection" => settings.shared_connection = non_empty(),
            "spool-location" => settings.spool_location = non_empty(),
            "spool-max-bytes" => settings.spool_max_bytes = get(value),
            "spool-max-age" => settings.spool_max_age = get(value),
            "spool-sync" => settings.spool_sync = get(value),
            "spool-sync-interval" => settings.spool_sync_interval = get(value),
            "spool-replay-share" => settings.spool_replay_share = get(value),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host" => settings.host.as_deref().unwrap_or(DEFAULT_HOST).to_value(),
            "port" => settings.port.unwrap_or(PORT.default).to_value(),
            "topic" => settings
                .topic
                .as_deref()
                .unwrap_or(DEFAULT_TOPIC)
                .to_value(),
            "qos" => settings.qos.unwrap_or(QOS.default).to_value(),
            "retain" => settings.retain.to_value(),
            "protocol" => settings.protocol.unwrap_or(PROTOCOL.default).to_value(),
            "client-id" => settings.client_id.clone().flatten().to_value(),
            "clean-session" => settings.clean_session.to_value(),
            "keep-alive" => settings.keep_alive.to_value(),
            "max-reconnect-delay" => settings.max_reconnect_delay_ms.to_value(),
            "username" => settings.username.clone().flatten().to_value(),
            "tls-ca-file" => settings.tls_ca_file.clone().flatten().to_value(),
            "tls-cert-file" => settings.tls_cert_file.clone().flatten().to_value(),
            "tls-key-file" => settings.tls_key_file.clone().flatten().to_value(),
            "publish-frame" => settings
                .publish_frame
                .unwrap_or(DEFAULT_PUBLISH_FRAME)
                .to_value(),
            "jpeg-quality" => settings.jpeg_quality.to_value(),
            "frame-interval" => settings.frame_interval.to_value(),
            "message-format" => settings.message_format.to_value(),
            "metadata-source" => settings.metadata_source.to_value(),
            "source" => settings.source.to_value(),
            "pipeline-name" => settings.pipeline_name.to_value(),
            "pipeline-version" => settings.pipeline_version.to_value(),
            "tags" => settings.tags.to_value(),
            "skip-empty" => settings.skip_empty.to_value(),
            "add-sink-time" => settings.add_sink_time.to_value(),
            "add-tensor-data" => settings.add_tensor_data.to_value(),
            "config" => settings.config.to_value(),
            "config-pipeline" => settings.config_pipeline.to_value(),
            "max-queued-messages" => settings.max_queued_messages.to_value(),
            "max-queued-bytes" => settings.max_queued_bytes.to_value(),
            "leaky" => settings.leaky.to_value(),
            "max-message-size" => settings.max_message_size.to_value(),
            "flush-timeout" => settings.flush_timeout_ms.to_value(),
            "shared-connection" => settings.shared_connection.to_value(),
            "spool-location" => settings.spool_location.to_value(),
            "spool-max-bytes" => settings.spool_max_bytes.to_value(),
            "spool-max-age" => settings.spool_max_age.to_value(),
            "spool-sync" => settings.spool_sync.to_value(),
            "spool-sync-interval" => settings.spool_sync_interval.to_value(),
            "spool-replay-share" => settings.spool_replay_share.to_value(),
            "stats" => {
                drop(settings);
                match &*self.state.lock().unwrap() {
                    State::Started(started) => report::stats_structure(
                        &started.worker.stats(),
                        started.assembler.counters(),
                    ),
                    State::Stopped => {
                        let (stats, frames) = *self.last_stats.lock().unwrap();
                        report::stats_structure(&stats, frames)
                    }
                }
                .to_value()
            }
            other => unreachable!("unknown property {other}"),
        }
    }
}

/// A property value, of the type its `ParamSpec` guarantees.
fn get<'a, T: glib::value::FromValue<'a>>(value: &'a glib::Value) -> T {
    value.get().expect("type checked upstream")
}

impl GstObjectImpl for MqttPublish {}

impl ElementImpl for MqttPublish {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "MQTT analytics publisher",
                "Sink/Network/Video",
                &format!(
                    "Publishes the detections and classifications on each buffer as \
                     gvametaconvert JSON, optionally with the frame as base64 JPEG, to an MQTT \
                     broker; a live pipeline never waits for the broker, a file job never \
                     loses a message to it. {}",
                    crate::meta::READS
                ),
                "gst-plugin-analyticsmqtt contributors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        // Metadata rides on any buffer: GPU memory and every format are accepted, and the
        // image goes along only where it can be encoded (see `message`).
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            vec![gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &gst::Caps::new_any(),
            )
            .unwrap()]
        });
        PAD_TEMPLATES.as_ref()
    }

    /// Starts publishing on NULL to READY, before `GstBaseSink` would call `start()`:
    /// `GstBaseSink` follows a failed `start()` with an error of its own ("state change
    /// failed and some element failed to post a proper error message"), whatever the
    /// element posted, so a bad setting would be reported twice.
    fn change_state(
        &self,
        transition: gst::StateChange,
    ) -> Result<gst::StateChangeSuccess, gst::StateChangeError> {
        if transition == gst::StateChange::NullToReady {
            if let Err(err) = self.start_publishing() {
                self.post_error_message(err);
                return Err(gst::StateChangeError);
            }
        }
        let result = self.parent_change_state(transition);
        if result.is_err() && transition == gst::StateChange::NullToReady {
            let _ = self.stop();
        }
        result
    }

    fn send_event(&self, event: gst::Event) -> bool {
        // The pipeline configures latency when it goes to PLAYING and when a live element
        // appears or changes: ask again whether the upstream is live.
        if let gst::EventView::Latency(_) = event.view() {
            self.check_live.store(true, Ordering::Relaxed);
        }
        self.parent_send_event(event)
    }
}

impl BaseSinkImpl for MqttPublish {
    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::take(&mut *self.state.lock().unwrap());
        if let State::Started(started) = state {
            let worker = started.worker;
            // Whatever EOS did not flush gets a short chance to go out.
            worker.flush(started.flush_timeout, Some(STOP_FLUSH_STALL));
            let stats = worker.stop();
            gst::info!(CAT, imp = self, "Stopped: {stats:?}");
            // Stopped before the end of the stream (or while it flushed): what was lost
            // has not been reported yet.
            if !started.delivery.reported {
                self.report_loss(&stats, None, None);
            }
            *self.last_stats.lock().unwrap() = (stats, started.assembler.counters());
        }
        Ok(())
    }

    /// Anything is accepted; when frames are published, the caps the encoder takes come
    /// first, so that an upstream free to choose (videotestsrc, a converter) picks one.
    fn caps(&self, filter: Option<&gst::Caps>) -> Option<gst::Caps> {
        let publish_frame = match &*self.state.lock().unwrap() {
            State::Started(started) => started.assembler.publish_frame(),
            State::Stopped => self
                .settings
                .lock()
                .unwrap()
                .publish_frame
                .unwrap_or(DEFAULT_PUBLISH_FRAME),
        };
        let filter = filter?;
        if !publish_frame {
            return Some(filter.clone());
        }
        static ENCODABLE: Lazy<gst::Caps> = Lazy::new(|| {
            let mut caps = gst_video::VideoCapsBuilder::new()
                .format_list(jpeg::SUPPORTED_FORMATS.iter().copied())
                .build();
            caps.get_mut()
                .unwrap()
                .append(gst::Caps::builder("image/jpeg").build());
            caps
        });
        let mut caps = ENCODABLE.intersect_with_mode(filter, gst::CapsIntersectMode::First);
        caps.merge(filter.clone());
        Some(caps)
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        // Walking the pipeline for a jpegenc happens before the state lock is taken.
        let input = Input::from_caps(caps, || self.upstream_jpeg_quality());
        let warning = match &mut *self.state.lock().unwrap() {
            State::Started(started) => started.assembler.set_input(input),
            State::Stopped => None,
        };
        if let Some(warning) = warning {
            gst::element_imp_warning!(self, gst::StreamError::Format, ("{}", warning));
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.check_live.swap(false, Ordering::Relaxed) {
            self.check_upstream_live();
        }
        let timestamp = self
            .obj()
            .segment()
            .downcast_ref::<gst::ClockTime>()
            .and_then(|segment| segment.to_stream_time(buffer.pts()))
            .map(gst::ClockTime::nseconds);
        let mut state = self.state.lock().unwrap();
        let State::Started(started) = &mut *state else {
            return Err(gst::FlowError::Flushing);
        };
        if let Some(first) = started.delivery.refusal_ends_run() {
            drop(state);
            if let Some(reason) = first {
                self.post_refusal_error(&reason);
            }
            return Err(gst::FlowError::Error);
        }
        // The stream goes on after an end of stream (a seek): report again.
        started.delivery.reported = false;
        let max_size = started.worker.max_payload();
        let Some(built) = started.assembler.build(buffer, timestamp, max_size) else {
            return Ok(gst::FlowSuccess::Ok);
        };

        // A push that waits for room (leaky=no, or auto with an upstream that is not
        // live) must not hold the state lock: stop() and the stats property take it.
        let worker = started.worker.clone();
        drop(state);
        for warning in &built.warnings {
            gst::element_imp_warning!(self, gst::StreamError::Encode, ("{}", warning));
        }
        match worker.push(built.payload) {
            Pushed::Flushing => Err(gst::FlowError::Flushing),
            Pushed::Queued { .. } | Pushed::DroppedNew { .. } => Ok(gst::FlowSuccess::Ok),
        }
    }

    fn event(&self, event: gst::Event) -> bool {
        match event.view() {
            gst::EventView::StreamStart(_)
            | gst::EventView::Caps(_)
            | gst::EventView::Segment(_) => self.check_live.store(true, Ordering::Relaxed),
            // Posts an error or warning first if messages were lost, so that the
            // application sees it before the EOS message that parent_event() posts.
            gst::EventView::Eos(_) => self.end_of_stream(),
            _ => {}
        }
        self.parent_event(event)
    }

    fn unlock(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(started) = &*self.state.lock().unwrap() {
            started.worker.set_flushing(true);
        }
        Ok(())
    }

    fn unlock_stop(&self) -> Result<(), gst::ErrorMessage> {
        if let State::Started(started) = &*self.state.lock().unwrap() {
            started.worker.set_flushing(false);
        }
        Ok(())
    }
}

impl MqttPublish {
    /// Resolves the settings, reads the files they name and starts the connection worker.
    fn start_publishing(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if let Some(reason) = &settings.rejected_tags {
            return Err(gst::error_msg!(gst::LibraryError::Settings, ("{}", reason)));
        }
        let pipeline_name = pipeline::outermost_bin(self.obj().upcast_ref())
            .name()
            .to_string();
        let resolved = settings::load_config(&settings, &pipeline_name)
            .and_then(|file| settings::resolve(&settings, &file, |name| std::env::var(name).ok()))
            .map_err(|e| e.to_error_message())?;
        for warning in &resolved.warnings {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", warning));
        }
        let mut message = resolved.message;
        if message.pipeline_name.is_none() {
            message.pipeline_name = Some(pipeline_name);
        }
        let mut connection = resolved.connection;
        connection.tls = resolved
            .tls
            .as_ref()
            .map(|files| files.load())
            .transpose()
            .map_err(|e| e.to_error_message())?;
        gst::info!(
            CAT,
            imp = self,
            "Publishing to {} topic {:?} as {:?} (QoS {}, MQTT level {}, TLS {})",
            connection
                .brokers
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            connection.topic,
            connection.client_id,
            connection.qos.level(),
            connection.protocol.level(),
            if connection.tls.is_some() {
                "on"
            } else {
                "off"
            },
        );
        let spool = match &resolved.spool {
            Some(spool) => self.open_spool(spool)?,
            None => None,
        };
        // Held until the run's state is in place, so that a notice the new worker sends at
        // once (a refusal) finds it.
        let mut state = self.state.lock().unwrap();
        let element = self.obj().downgrade();
        let worker = Worker::start(
            self.obj().name(),
            connection,
            resolved.limits,
            spool,
            resolved.sharing,
            move |broker, notice| {
                if let Some(element) = element.upgrade() {
                    element.imp().post_notice(&broker.to_string(), notice);
                }
            },
        )
        .map_err(|e| match e {
            mqtt::StartError::Differs(reason) => {
                gst::error_msg!(gst::LibraryError::Settings, ("{}", reason))
            }
            mqtt::StartError::Runtime(e) => gst::error_msg!(
                gst::ResourceError::Failed,
                ("Cannot start the connection runtime: {}", e)
            ),
        })?;
        *state = State::Started(Box::new(Started {
            worker: Arc::new(worker),
            assembler: Assembler::new(message),
            flush_timeout: resolved.flush_timeout,
            delivery: Delivery::default(),
        }));
        Ok(())
    }

    /// Opens the spool (see [`spooling`]) and posts what it held at start.
    fn open_spool(
        &self,
        settings: &settings::SpoolSettings,
    ) -> Result<Option<SpoolStart>, gst::ErrorMessage> {
        let pipeline = pipeline::outermost_bin(self.obj().upcast_ref()).name();
        let opening = match spooling::open(settings, &self.obj().name(), &pipeline)? {
            Outcome::Open(opening) => opening,
            Outcome::Unusable(warning) => {
                gst::element_imp_warning!(self, gst::ResourceError::OpenWrite, ("{}", warning));
                return Ok(None);
            }
        };
        for warning in opening.warnings() {
            gst::element_imp_warning!(self, gst::ResourceError::Read, ("{}", warning));
        }
        let opened = &opening.opened;
        gst::info!(
            CAT,
            imp = self,
            "Spool {}: {} messages ({} bytes) in {} files from a previous run to publish, next sequence {}",
            opening.dir.display(),
            opened.messages,
            opened.bytes,
            opened.files,
            opened.next_sequence
        );
        let _ = self.obj().post_message(
            gst::message::Element::builder(opening.message())
                .src(&*self.obj())
                .build(),
        );
        Ok(Some(opening.start))
    }

    /// Asks upstream whether it is live (the latency query GstBaseSink makes, which
    /// answers "not live" when nobody answers) and tells the queue, which decides what
    /// `leaky=auto` does. Runs in the streaming thread, without the state lock: upstream
    /// elements answer the query under locks of their own.
    fn check_upstream_live(&self) {
        let live = match self.obj().query_latency() {
            Ok((_, upstream_live, _, _)) => upstream_live,
            Err(e) => {
                gst::debug!(CAT, imp = self, "Latency query failed ({e}): not live");
                false
            }
        };
        let mut state = self.state.lock().unwrap();
        let State::Started(started) = &mut *state else {
            return;
        };
        if started.delivery.upstream_live == Some(live) {
            return;
        }
        started.delivery.upstream_live = Some(live);
        let policy = started.worker.set_upstream_live(live);
        let leaky = started.worker.leaky();
        drop(state);
        let what = match policy {
            mqtt::Leaky::Upstream => "drops the new message when the queue is full",
            mqtt::Leaky::Downstream => "drops the oldest message when the queue is full",
            mqtt::Leaky::No | mqtt::Leaky::Auto => {
                "waits for room when the queue is full (back-pressure: nothing is dropped)"
            }
        };
        gst::info!(
            CAT,
            imp = self,
            "The upstream is {}live: leaky={} {what}",
            if live { "" } else { "not " },
            leaky.nick()
        );
    }

    /// Posts what the connection worker reports (see [`notices`]); a refusal for good ends
    /// a file job's run.
    fn post_notice(&self, broker: &str, notice: Notice) {
        let posting = notices::describe(broker, &notice);
        if let Some(log) = &posting.log {
            gst::info!(CAT, imp = self, "{log}");
        }
        match posting.alert {
            Some(Alert::Warning(kind, text)) => {
                gst::element_imp_warning!(self, kind, ("{}", text))
            }
            Some(Alert::Error(kind, text)) => gst::element_imp_error!(self, kind, ("{}", text)),
            None => {}
        }
        let _ = self.obj().post_message(
            gst::message::Element::builder(posting.message)
                .src(&*self.obj())
                .build(),
        );
        // After the message: the error it may cause ends the run.
        if let Notice::Refused { reason } = notice {
            let mut state = self.state.lock().unwrap();
            let State::Started(started) = &mut *state else {
                return;
            };
            started.delivery.refusal = Some(reason);
            if let Some(Some(reason)) = started.delivery.refusal_ends_run() {
                drop(state);
                self.post_refusal_error(&reason);
            }
        }
    }

    fn post_refusal_error(&self, reason: &str) {
        gst::element_imp_error!(
            self,
            gst::ResourceError::OpenWrite,
            ("The MQTT broker refused the connection: {}.", reason),
            ["The upstream is not live, so nothing would ever be delivered: stopping."]
        );
    }

    /// End of stream: waits up to flush-timeout for everything to be delivered, then
    /// reports what was lost (see [`report`]).
    fn end_of_stream(&self) {
        // Wait without holding the state lock, so the stats stay readable.
        let state = self.state.lock().unwrap();
        let State::Started(started) = &*state else {
            return;
        };
        let worker = started.worker.clone();
        let timeout = started.flush_timeout;
        let live = started.delivery.upstream_live.unwrap_or(false);
        drop(state);
        if worker.flush(timeout, None) == Flushed::Interrupted {
            // Flushing or stopping: stop() reports.
            return;
        }
        worker.end_drop_episode();
        let fatal = report::loss_is_fatal(live, worker.leaky());
        self.report_loss(&worker.stats(), Some(timeout), fatal);
        if let State::Started(started) = &mut *self.state.lock().unwrap() {
            started.delivery.reported = true;
        }
    }

    /// Posts [`report::loss`]: the element message, then the error or warning.
    fn report_loss(
        &self,
        stats: &Stats,
        flush_timeout: Option<Duration>,
        fatal: Option<mqtt::Leaky>,
    ) {
        let Some(loss) = report::loss(stats, flush_timeout, fatal) else {
            gst::info!(CAT, imp = self, "Every message was delivered: {stats:?}");
            return;
        };
        let _ = self.obj().post_message(
            gst::message::Element::builder(loss.message)
                .src(&*self.obj())
                .build(),
        );
        match loss.error {
            Some(debug) => gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("{}", loss.text),
                ["{}", debug]
            ),
            None => {
                gst::element_imp_warning!(self, gst::ResourceError::Write, ("{}", loss.text))
            }
        }
    }

    /// The `quality` of a `jpegenc` in the pipeline, which made the JPEG frames arriving
    /// here (DLSPS reads it from its pipeline string the same way).
    fn upstream_jpeg_quality(&self) -> Option<u8> {
        let bin = pipeline::outermost_bin(self.obj().upcast_ref())
            .downcast::<gst::Bin>()
            .ok()?;
        bin.iterate_recurse()
            .into_iter()
            .flatten()
            .find(|element| element.factory().is_some_and(|f| f.name() == "jpegenc"))
            .and_then(|jpegenc| jpegenc.property_value("quality").get::<i32>().ok())
            .and_then(|quality| u8::try_from(quality).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_properties_declare_the_ranges_and_defaults_of_the_table() {
        gst::init().unwrap();
        let properties = MqttPublish::properties();
        let find = |name| {
            properties
                .iter()
                .find(|p| p.name() == name)
                .unwrap_or_else(|| panic!("no property {name}"))
        };
        for number in [
            PORT,
            QOS,
            PROTOCOL,
            KEEP_ALIVE,
            MAX_RECONNECT_DELAY,
            JPEG_QUALITY,
            FRAME_INTERVAL,
            MAX_QUEUED_MESSAGES,
            MAX_MESSAGE_SIZE,
            FLUSH_TIMEOUT,
        ] {
            let spec = find(number.name)
                .downcast_ref::<glib::ParamSpecUInt>()
                .unwrap();
            assert_eq!(
                (spec.minimum(), spec.maximum(), spec.default_value()),
                (number.min, number.max, number.default),
                "{}",
                number.name
            );
        }
        let bytes = find(MAX_QUEUED_BYTES.name)
            .downcast_ref::<glib::ParamSpecUInt64>()
            .unwrap();
        assert_eq!(
            (bytes.minimum(), bytes.maximum(), bytes.default_value()),
            (1, u64::MAX, MAX_QUEUED_BYTES.default)
        );
    }

    #[test]
    fn refusal_ends_only_a_run_whose_upstream_is_not_live_and_errors_once() {
        let mut delivery = Delivery::default();
        assert_eq!(delivery.refusal_ends_run(), None);
        delivery.refusal = Some("not authorized".into());
        // Liveness not known yet, or live: keep retrying.
        assert_eq!(delivery.refusal_ends_run(), None);
        delivery.upstream_live = Some(true);
        assert_eq!(delivery.refusal_ends_run(), None);
        delivery.upstream_live = Some(false);
        assert_eq!(
            delivery.refusal_ends_run(),
            Some(Some("not authorized".into()))
        );
        assert_eq!(delivery.refusal_ends_run(), Some(None));
    }
}
