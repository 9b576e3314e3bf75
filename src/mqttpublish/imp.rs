// SPDX-License-Identifier: MPL-2.0

//! The `mqttpublish` element: GStreamer glue. Settings are resolved in [`super::settings`],
//! messages built in [`super::message`], and published by the connection worker of
//! [`crate::mqtt`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::message::{Assembler, FrameCounters};
use super::settings::{
    self, Settings, DEFAULT_ADD_SINK_TIME, DEFAULT_CLEAN_SESSION, DEFAULT_FLUSH_TIMEOUT_MS,
    DEFAULT_FRAME_INTERVAL, DEFAULT_HOST, DEFAULT_JPEG_QUALITY, DEFAULT_KEEP_ALIVE,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_QUEUED_BYTES, DEFAULT_MAX_QUEUED_MESSAGES, DEFAULT_PORT,
    DEFAULT_PROTOCOL, DEFAULT_PUBLISH_FRAME, DEFAULT_QOS, DEFAULT_RETAIN, DEFAULT_SKIP_EMPTY,
    DEFAULT_TOPIC,
};
use super::MessageFormat;
use crate::jpeg;
use crate::mqtt::{
    ConnectionConfig, Leaky, Limits, Notice, Pushed, Secret, SizeLimit, Stats, Worker,
};

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
}

impl MqttPublish {
    fn start_worker(&self, config: ConnectionConfig, limits: Limits) -> std::io::Result<Worker> {
        let element = self.obj().downgrade();
        let broker = format!("{}:{}", config.host, config.port);
        Worker::start(config, limits, move |notice| {
            if let Some(element) = element.upgrade() {
                element.imp().post_notice(&broker, notice);
            }
        })
    }

    /// Posts a connection event: an element message always, and a warning for trouble the
    /// user has to act on.
    fn post_notice(&self, broker: &str, notice: Notice) {
        let structure = match &notice {
            Notice::Connected { session_present } => {
                gst::info!(CAT, imp = self, "Connected to {broker}");
                gst::Structure::builder("mqttpublish-connected")
                    .field("broker", broker)
                    .field("session-present", *session_present)
                    .build()
            }
            Notice::Disconnected {
                reason,
                attempt,
                retry_in,
            } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "Not connected to {broker} ({reason}), attempt {attempt}, retrying in {retry_in:?}"
                );
                if *attempt == 1 {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::OpenWrite,
                        (
                            "Not connected to the MQTT broker at {}: {}. Retrying with backoff; messages wait in the queue.",
                            broker,
                            reason
                        )
                    );
                }
                gst::Structure::builder("mqttpublish-disconnected")
                    .field("broker", broker)
                    .field("reason", reason.as_str())
                    .field("attempt", *attempt)
                    .field("retry-in-ms", retry_in.as_millis() as u64)
                    .build()
            }
            Notice::ClientIdConflict { reason } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Busy,
                    ("MQTT broker at {}: {}", broker, reason)
                );
                gst::Structure::builder("mqttpublish-client-id-conflict")
                    .field("broker", broker)
                    .field("reason", reason.as_str())
                    .build()
            }
            Notice::Failed { reason } => {
                gst::element_imp_error!(
                    self,
                    gst::ResourceError::Failed,
                    ("The MQTT connection thread stopped: {}", reason)
                );
                gst::Structure::builder("mqttpublish-failed")
                    .field("broker", broker)
                    .field("reason", reason.as_str())
                    .build()
            }
            Notice::Discarded { count } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "MQTT broker at {} started a new session: {} messages in flight were lost (use clean-session=false and a fixed client-id to keep them)",
                        broker,
                        count
                    )
                );
                gst::Structure::builder("mqttpublish-discarded")
                    .field("broker", broker)
                    .field("count", *count)
                    .build()
            }
            Notice::Oversize { size, limit } => {
                let (limit_name, limit) = match *limit {
                    SizeLimit::Configured(max) => ("max-message-size", max as u64),
                    SizeLimit::Broker(max) => ("the broker's maximum packet size", u64::from(max)),
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "A message of {} bytes is larger than {} ({} bytes) and was dropped; further drops are counted in stats",
                        size,
                        limit_name,
                        limit
                    )
                );
                gst::Structure::builder("mqttpublish-oversize")
                    .field("broker", broker)
                    .field("size", *size as u64)
                    .field("limit", limit)
                    .build()
            }
        };
        let _ = self.obj().post_message(
            gst::message::Element::builder(structure)
                .src(&*self.obj())
                .build(),
        );
    }

    /// The name of the outermost bin holding this element (the pipeline).
    fn pipeline_name(&self) -> String {
        let mut top: gst::Object = self.obj().clone().upcast();
        while let Some(parent) = top.parent() {
            top = parent;
        }
        top.name().to_string()
    }

    fn stats_structure(stats: &Stats, frames: FrameCounters) -> gst::Structure {
        gst::Structure::builder("mqttpublish-stats")
            .field("messages-queued", stats.queued)
            .field("messages-published", stats.published)
            .field("messages-acknowledged", stats.acknowledged)
            .field("messages-dropped", stats.dropped())
            .field("dropped-queue-full", stats.dropped_queue_full)
            .field("dropped-oversize", stats.dropped_oversize)
            .field("dropped-disconnected", stats.dropped_disconnected)
            .field("dropped-stopped", stats.dropped_stopped)
            .field("frames-skipped", frames.skipped)
            .field("frames-unencoded", frames.unencoded())
            .field("unencoded-memory", frames.no_image_memory)
            .field("unencoded-format", frames.no_image_format)
            .field("unencoded-oversize", frames.no_image_oversize)
            .field("unencoded-failed", frames.no_image_failed)
            .field("reconnects", stats.reconnects)
            .field("bytes-sent", stats.bytes_sent)
            .field("in-flight", stats.in_flight)
            .field("queue-depth", stats.queue_depth)
            .field("queue-bytes", stats.queue_bytes)
            .field("connected", stats.connected)
            .build()
    }
}

#[glib::object_subclass]
impl ObjectSubclass for MqttPublish {
    const NAME: &'static str = "GstMqttPublish";
    type Type = super::MqttPublish;
    type ParentType = gst_base::BaseSink;
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
            vec![
                glib::ParamSpecString::builder("host")
                    .nick("Broker host")
                    .blurb(
                        "Host name or IP address of the MQTT broker. When not set, the \
                         configuration file's \"host\", then the MQTT_HOST environment variable, \
                         then localhost is used.",
                    )
                    .default_value(Some(DEFAULT_HOST))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("port")
                    .nick("Broker port")
                    .blurb(
                        "TCP port of the MQTT broker. When not set, the configuration file's \
                         \"port\", then the MQTT_PORT environment variable, then 1883 is used.",
                    )
                    .minimum(1)
                    .maximum(65535)
                    .default_value(DEFAULT_PORT)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("topic")
                    .nick("Topic")
                    .blurb(
                        "The MQTT topic to publish to; wildcards (+, #) and the empty topic are \
                         refused. Config file key: topic.",
                    )
                    .default_value(Some(DEFAULT_TOPIC))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("qos")
                    .nick("Quality of service")
                    .blurb(
                        "MQTT quality of service: 0 at most once, 1 at least once, 2 exactly \
                         once. Config file key: qos.",
                    )
                    .maximum(2)
                    .default_value(DEFAULT_QOS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("retain")
                    .nick("Retain")
                    .blurb("Ask the broker to keep the last message for new subscribers.")
                    .default_value(DEFAULT_RETAIN)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("protocol")
                    .nick("Protocol level")
                    .blurb(
                        "MQTT protocol level: 4 for MQTT 3.1.1, 5 for MQTT 5. MQTT 3.1 (3) is not \
                         supported. Config file key: protocol.",
                    )
                    .minimum(3)
                    .maximum(5)
                    .default_value(DEFAULT_PROTOCOL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("client-id")
                    .nick("Client id")
                    .blurb(
                        "MQTT client id. When unset, a unique id is generated so that two \
                         pipelines never push each other off the broker; set a fixed id to \
                         resume a session with clean-session=false.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("clean-session")
                    .nick("Clean session")
                    .blurb(
                        "Start a new session at each connection. With false, a fixed client-id \
                         and QoS 1 or 2, messages not acknowledged at a disconnection are \
                         delivered after reconnecting.",
                    )
                    .default_value(DEFAULT_CLEAN_SESSION)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("keep-alive")
                    .nick("Keep-alive")
                    .blurb(
                        "Seconds between keep-alive pings while idle; a dead connection is \
                         noticed within about twice this. 0 disables keep-alive (MQTT 3.1.1 \
                         only: protocol 5 needs 5 or more).",
                    )
                    .maximum(65535)
                    .default_value(DEFAULT_KEEP_ALIVE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("username")
                    .nick("User name")
                    .blurb("User name to authenticate with. Config file key: username.")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("password")
                    .nick("Password")
                    .blurb(
                        "Password to authenticate with (needs username). Write-only: it is never \
                         shown, logged or put in error messages. Config file key: password.",
                    )
                    .write_only()
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-ca-file")
                    .nick("TLS CA file")
                    .blurb(
                        "PEM file with the CA certificate(s) that sign the broker's certificate. \
                         Setting it enables TLS; the broker's certificate and host name are \
                         always verified. Config file key: tls.ca_cert.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-cert-file")
                    .nick("TLS client certificate")
                    .blurb(
                        "PEM file with the client certificate for mutual TLS (needs \
                         tls-key-file). Config file key: tls.client_cert.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tls-key-file")
                    .nick("TLS client key")
                    .blurb(
                        "PEM file with the client's private key (PKCS#1, PKCS#8 or SEC1) for \
                         mutual TLS. Config file key: tls.client_key.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("publish-frame")
                    .nick("Publish frame")
                    .blurb(
                        "Add the frame as base64 JPEG to the messages (see message-format and \
                         frame-interval). Raw video is encoded here; image/jpeg input is sent \
                         as is. Config file key: publish_frame.",
                    )
                    .default_value(DEFAULT_PUBLISH_FRAME)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("jpeg-quality")
                    .nick("JPEG quality")
                    .blurb("JPEG quality (1-100) when encoding raw video frames.")
                    .minimum(1)
                    .maximum(100)
                    .default_value(DEFAULT_JPEG_QUALITY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("frame-interval")
                    .nick("Frame interval")
                    .blurb(
                        "With publish-frame, add the frame to every Nth message only (1: every \
                         message); the others carry metadata only.",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_FRAME_INTERVAL)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("message-format", MessageFormat::default())
                    .nick("Message format")
                    .blurb(
                        "Shape of the messages. array: the gvametaconvert metadata, or with \
                         publish-frame [metadata, \"<base64 JPEG>\"] (the DLSPS document). object: \
                         always {\"metadata\": .., \"blob\": \"<base64 JPEG>\" or \"\"} (the DLSPS \
                         code). dlsps: what DLSPS publishes, the object envelope around DLSPS's \
                         metadata (frame, pipeline and gva_meta keys besides the gvametaconvert \
                         ones; see the README). With publish-frame, a frame without an image \
                         carries \"\" in its place, so one topic sees one shape.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("pipeline-name")
                    .nick("Pipeline name")
                    .blurb(
                        "pipeline.name in message-format=dlsps messages. Default: the name of \
                         the GStreamer pipeline holding this element.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("pipeline-version")
                    .nick("Pipeline version")
                    .blurb(
                        "pipeline.version in message-format=dlsps messages (DLSPS puts the \
                         pipeline's name from its config.json there). Default: \"\".",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("source")
                    .nick("Source")
                    .blurb("A source URI or name, added to every message as \"source\".")
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("tags")
                    .nick("Tags")
                    .blurb(
                        "A JSON object added to every message as \"tags\", e.g. \
                         '{\"site\":\"dock-3\"}'.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("skip-empty")
                    .nick("Skip empty frames")
                    .blurb("Publish nothing for frames that carry no objects (counted in stats).")
                    .default_value(DEFAULT_SKIP_EMPTY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoolean::builder("add-sink-time")
                    .nick("Add sink time")
                    .blurb(
                        "Add \"sink_time\": the wall-clock time (nanoseconds since the UNIX epoch) \
                         at which the sink received the buffer, so that subscribers can measure \
                         latency.",
                    )
                    .default_value(DEFAULT_ADD_SINK_TIME)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("config")
                    .nick("Configuration file")
                    .blurb(
                        "Path to a JSON file with a DL Streamer Pipeline Server mqtt_publisher \
                         section (bare or under \"mqtt_publisher\"): topic, qos, protocol, \
                         publish_frame, tls, filter, and host, port, client_id, username, \
                         password. Read at start. Properties set explicitly win over the file; \
                         the file wins over MQTT_HOST/MQTT_PORT.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queued-messages")
                    .nick("Queue limit (messages)")
                    .blurb(
                        "Most messages waiting for the broker; beyond it the leaky policy applies.",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_MAX_QUEUED_MESSAGES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-queued-bytes")
                    .nick("Queue limit (bytes)")
                    .blurb(
                        "Most payload bytes waiting for the broker; beyond it the leaky policy \
                         applies.",
                    )
                    .minimum(1)
                    .default_value(DEFAULT_MAX_QUEUED_BYTES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("leaky", Leaky::default())
                    .nick("Leaky")
                    .blurb(
                        "What to do when the queue is full: drop the oldest message \
                         (downstream), drop the new one (upstream), or block the pipeline until \
                         there is room (none, lossless; flushing and state changes still \
                         unblock it). Drops are counted in stats.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-message-size")
                    .nick("Largest message")
                    .blurb(
                        "Largest message in bytes. A message with a frame's image that would be \
                         larger goes without the image (metadata kept, counted as \
                         unencoded-oversize); one still larger is dropped, counted in stats and \
                         warned about once. With MQTT 5 the broker's own limit applies too; with \
                         MQTT 3.1.1 keep this at or below the broker's limit, which it does not \
                         announce.",
                    )
                    .minimum(1024)
                    .maximum(256 * 1024 * 1024)
                    .default_value(DEFAULT_MAX_MESSAGE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("flush-timeout")
                    .nick("Flush timeout")
                    .blurb(
                        "Milliseconds to wait at end of stream for queued messages to be sent \
                         and QoS 1/2 messages acknowledged before passing the end of stream on.",
                    )
                    .maximum(600_000)
                    .default_value(DEFAULT_FLUSH_TIMEOUT_MS)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecBoxed::builder::<gst::Structure>("stats")
                    .nick("Statistics")
                    .blurb(
                        "Counters of the current or last run: messages-queued, \
                         messages-published, messages-acknowledged, messages-dropped (= \
                         dropped-queue-full + dropped-oversize + dropped-disconnected + \
                         dropped-stopped), frames-skipped (skip-empty or emptied by the config's \
                         filter), frames-unencoded (sent without an image because encoding \
                         failed), reconnects, bytes-sent, in-flight, queue-depth, queue-bytes and \
                         connected. messages-queued = published + \
                         dropped + in-flight + queue-depth.",
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
            "username" => settings.username = Some(non_empty()),
            "password" => settings.password = Some(string().map(Secret::new)),
            "tls-ca-file" => settings.tls_ca_file = Some(non_empty()),
            "tls-cert-file" => settings.tls_cert_file = Some(non_empty()),
            "tls-key-file" => settings.tls_key_file = Some(non_empty()),
            "publish-frame" => settings.publish_frame = Some(get(value)),
            "jpeg-quality" => settings.jpeg_quality = get(value),
            "frame-interval" => settings.frame_interval = get(value),
            "message-format" => settings.message_format = get(value),
            "source" => settings.source = string(),
            "pipeline-name" => settings.pipeline_name = string(),
            "pipeline-version" => settings.pipeline_version = string(),
            "tags" => match non_empty().map(|t| settings::parse_tags(&t)).transpose() {
                Ok(tags) => {
                    settings.tags = tags;
                    settings.rejected.remove("tags");
                }
                Err(e) => {
                    gst::warning!(CAT, imp = self, "Ignoring {e}");
                    settings.rejected.insert("tags", e);
                }
            },
            "skip-empty" => settings.skip_empty = get(value),
            "add-sink-time" => settings.add_sink_time = get(value),
            "config" => settings.config = non_empty(),
            "max-queued-messages" => settings.max_queued_messages = get(value),
            "max-queued-bytes" => settings.max_queued_bytes = get(value),
            "leaky" => settings.leaky = get(value),
            "max-message-size" => settings.max_message_size = get(value),
            "flush-timeout" => settings.flush_timeout_ms = get(value),
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host" => settings.host.as_deref().unwrap_or(DEFAULT_HOST).to_value(),
            "port" => settings.port.unwrap_or(DEFAULT_PORT).to_value(),
            "topic" => settings
                .topic
                .as_deref()
                .unwrap_or(DEFAULT_TOPIC)
                .to_value(),
            "qos" => settings.qos.unwrap_or(DEFAULT_QOS).to_value(),
            "retain" => settings.retain.to_value(),
            "protocol" => settings.protocol.unwrap_or(DEFAULT_PROTOCOL).to_value(),
            "client-id" => settings.client_id.clone().flatten().to_value(),
            "clean-session" => settings.clean_session.to_value(),
            "keep-alive" => settings.keep_alive.to_value(),
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
            "source" => settings.source.to_value(),
            "pipeline-name" => settings.pipeline_name.to_value(),
            "pipeline-version" => settings.pipeline_version.to_value(),
            "tags" => settings.tags.to_value(),
            "skip-empty" => settings.skip_empty.to_value(),
            "add-sink-time" => settings.add_sink_time.to_value(),
            "config" => settings.config.to_value(),
            "max-queued-messages" => settings.max_queued_messages.to_value(),
            "max-queued-bytes" => settings.max_queued_bytes.to_value(),
            "leaky" => settings.leaky.to_value(),
            "max-message-size" => settings.max_message_size.to_value(),
            "flush-timeout" => settings.flush_timeout_ms.to_value(),
            "stats" => {
                drop(settings);
                match &*self.state.lock().unwrap() {
                    State::Started(started) => {
                        Self::stats_structure(&started.worker.stats(), started.assembler.counters())
                    }
                    State::Stopped => {
                        let (stats, frames) = *self.last_stats.lock().unwrap();
                        Self::stats_structure(&stats, frames)
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
                     broker without stalling the pipeline. {}",
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
}

impl BaseSinkImpl for MqttPublish {
    fn start(&self) -> Result<(), gst::ErrorMessage> {
        let settings = self.settings.lock().unwrap().clone();
        if let Some((property, reason)) = settings.rejected.iter().next() {
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("Invalid {}: {}", property, reason)
            ));
        }
        let resolved = settings::load_config(&settings)
            .and_then(|file| settings::resolve(&settings, &file, |name| std::env::var(name).ok()))
            .map_err(|e| e.to_error_message())?;
        for warning in &resolved.warnings {
            gst::element_imp_warning!(self, gst::LibraryError::Settings, ("{}", warning));
        }
        let mut message = resolved.message;
        if message.pipeline_name.is_none() {
            message.pipeline_name = Some(self.pipeline_name());
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
            "Publishing to {}:{} topic {:?} as {:?} (QoS {}, MQTT level {}, TLS {})",
            connection.host,
            connection.port,
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
        let worker = self
            .start_worker(connection, resolved.limits)
            .map_err(|e| {
                gst::error_msg!(
                    gst::ResourceError::Failed,
                    ("Cannot start the connection thread: {}", e)
                )
            })?;
        *self.state.lock().unwrap() = State::Started(Box::new(Started {
            worker: Arc::new(worker),
            assembler: Assembler::new(message),
            flush_timeout: resolved.flush_timeout,
        }));
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::take(&mut *self.state.lock().unwrap());
        if let State::Started(started) = state {
            let worker = started.worker;
            // Whatever EOS did not flush gets a short chance to go out.
            worker.flush(started.flush_timeout, Some(STOP_FLUSH_STALL));
            let stats = worker.stop();
            gst::info!(CAT, imp = self, "Stopped: {stats:?}");
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
        let mut state = self.state.lock().unwrap();
        if let State::Started(started) = &mut *state {
            if let Some(warning) = started.assembler.set_caps(caps) {
                drop(state);
                gst::element_imp_warning!(self, gst::StreamError::Format, ("{}", warning));
            }
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
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
        let max_size = started.worker.max_payload();
        let Some(built) = started.assembler.build(buffer, timestamp, max_size) else {
            return Ok(gst::FlowSuccess::Ok);
        };

        // A blocking push (leaky=none) must not hold the state lock: stop() and the stats
        // property take it.
        let worker = started.worker.clone();
        drop(state);
        if let Some(warning) = built.warning {
            gst::element_imp_warning!(self, gst::StreamError::Encode, ("{}", warning));
        }
        let payload = built.payload;
        match worker.push(payload) {
            Pushed::Flushing => Err(gst::FlowError::Flushing),
            Pushed::Queued { .. } | Pushed::DroppedNew => Ok(gst::FlowSuccess::Ok),
        }
    }

    fn event(&self, event: gst::Event) -> bool {
        if let gst::EventView::Eos(_) = event.view() {
            self.flush_on_eos();
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
    fn flush_on_eos(&self) {
        // Wait without holding the state lock, so the stats stay readable.
        let state = self.state.lock().unwrap();
        let State::Started(started) = &*state else {
            return;
        };
        let worker = started.worker.clone();
        let timeout = started.flush_timeout;
        drop(state);
        if !worker.flush(timeout, None) {
            let stats = worker.stats();
            gst::element_imp_warning!(
                self,
                gst::ResourceError::Write,
                (
                    "End of stream: {} messages were not delivered within flush-timeout ({} ms): {} queued, {} in flight",
                    stats.queue_depth + stats.in_flight,
                    timeout.as_millis(),
                    stats.queue_depth,
                    stats.in_flight
                )
            );
        }
    }
}
