// SPDX-License-Identifier: MPL-2.0

//! The `mqttpublish` element: GStreamer glue. Settings are resolved in [`super::settings`],
//! messages built in [`super::message`], and published by the connection worker of
//! [`crate::mqtt`].

use std::sync::atomic::{AtomicBool, Ordering};
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
use super::{MessageFormat, MetadataSource};
use crate::config;
use crate::jpeg;
use crate::mqtt::{
    Bound, ConnectionConfig, Flushed, Leaky, Limits, Notice, Pushed, Secret, SizeLimit, Stats,
    Worker,
};
use std::sync::atomic::AtomicU8;

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
    /// What the broker refused for good in this run, in words (see [`Notice::Refused`]).
    refusal: Mutex<Option<String>>,
    /// [`RefusalState`]: whether the refusal ended the run yet.
    refusal_state: AtomicU8,
}

/// Whether a refusal ended the run with an error (it does when the upstream is not live).
#[repr(u8)]
enum RefusalState {
    None = 0,
    ErrorPosted = 1,
}

impl MqttPublish {
    fn start_worker(&self, config: ConnectionConfig, limits: Limits) -> std::io::Result<Worker> {
        let element = self.obj().downgrade();
        *self.refusal.lock().unwrap() = None;
        self.refusal_state
            .store(RefusalState::None as u8, Ordering::SeqCst);
        Worker::start(config, limits, move |broker, notice| {
            if let Some(element) = element.upgrade() {
                element.imp().post_notice(&broker.to_string(), notice);
            }
        })
    }

    /// Ends the run with an error if the broker refused something for good and the upstream
    /// is not live (a file job: nothing would ever be delivered); returns whether it did.
    /// A live pipeline keeps retrying.
    fn fail_on_refusal(&self) -> bool {
        let Some(reason) = self.refusal.lock().unwrap().clone() else {
            return false;
        };
        let live = match &*self.state.lock().unwrap() {
            State::Started(started) => started.delivery.upstream_live,
            State::Stopped => None,
        };
        if live != Some(false) {
            return false;
        }
        if self
            .refusal_state
            .swap(RefusalState::ErrorPosted as u8, Ordering::SeqCst)
            == RefusalState::None as u8
        {
            gst::element_imp_error!(
                self,
                gst::ResourceError::OpenWrite,
                ("The MQTT broker refused the connection: {}.", reason),
                ["The upstream is not live, so nothing would ever be delivered: stopping."]
            );
        }
        true
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
                next,
            } => {
                let next_text = next
                    .as_ref()
                    .map(|next| format!(" with the next broker, {next}"))
                    .unwrap_or_default();
                gst::info!(
                    CAT,
                    imp = self,
                    "Not connected to {broker} ({reason}), attempt {attempt}, retrying in {retry_in:?}{next_text}"
                );
                if *attempt == 1 {
                    gst::element_imp_warning!(
                        self,
                        gst::ResourceError::OpenWrite,
                        (
                            "Not connected to the MQTT broker at {}: {}. Retrying with backoff{}; messages wait in the queue.",
                            broker,
                            reason,
                            next_text
                        )
                    );
                }
                let mut builder = gst::Structure::builder("mqttpublish-disconnected")
                    .field("broker", broker)
                    .field("reason", reason.as_str())
                    .field("attempt", *attempt)
                    .field("retry-in-ms", retry_in.as_millis() as u64);
                if let Some(next) = next {
                    builder = builder.field("next-broker", next.to_string());
                }
                builder.build()
            }
            Notice::Refused { reason } => {
                gst::info!(CAT, imp = self, "{broker} refused: {reason}");
                *self.refusal.lock().unwrap() = Some(reason.clone());
                // The message first: the error it may cause ends the run.
                let structure = gst::Structure::builder("mqttpublish-refused")
                    .field("broker", broker)
                    .field("reason", reason.as_str())
                    .build();
                let _ = self.obj().post_message(
                    gst::message::Element::builder(structure)
                        .src(&*self.obj())
                        .build(),
                );
                self.fail_on_refusal();
                return;
            }
            Notice::QosDowngraded {
                requested,
                granted,
                reason,
            } => {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Settings,
                    (
                        "MQTT broker at {}: {}. Publishing at QoS {} instead of {}{}.",
                        broker,
                        reason,
                        granted.level(),
                        requested.level(),
                        if granted.level() == 1 {
                            " (at least once: a message can arrive twice)"
                        } else {
                            ""
                        }
                    )
                );
                gst::Structure::builder("mqttpublish-qos-downgraded")
                    .field("broker", broker)
                    .field("requested", requested.level())
                    .field("granted", granted.level())
                    .field("reason", reason.as_str())
                    .build()
            }
            Notice::Republished { count } => {
                gst::info!(
                    CAT,
                    imp = self,
                    "{broker} started a new session: publishing {count} unacknowledged messages again"
                );
                gst::Structure::builder("mqttpublish-republished")
                    .field("broker", broker)
                    .field("count", *count)
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
            Notice::Dropping {
                overflow,
                leaky,
                connected,
            } => {
                let (limit_name, limit) = match overflow.bound {
                    Bound::Messages(max) => ("max-queued-messages", max as u64),
                    Bound::Bytes(max) => ("max-queued-bytes", max as u64),
                };
                let why = if *connected {
                    format!("the connection to {broker} does not keep up with the stream")
                } else {
                    format!("the broker at {broker} is not connected")
                };
                let policy = if *leaky == Leaky::Auto {
                    "leaky=auto (the upstream is live)".to_string()
                } else {
                    format!("leaky={}", leaky.nick())
                };
                let which = if overflow.policy == Leaky::Upstream {
                    "the new message"
                } else {
                    "the oldest message"
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "Dropping messages: the queue is full ({}={}) because {}, and {} drops {} to make room. The count follows when the queue has room again.",
                        limit_name,
                        limit,
                        why,
                        policy,
                        which
                    )
                );
                gst::Structure::builder("mqttpublish-dropping")
                    .field("broker", broker)
                    .field("reason", "queue-full")
                    .field("limit-name", limit_name)
                    .field("limit", limit)
                    .field("connected", *connected)
                    .field("leaky", leaky.nick())
                    .field("policy", overflow.policy.nick())
                    .build()
            }
            Notice::Dropped { episode, at_end } => {
                let duration = episode.duration();
                let until = if *at_end {
                    "the end of the stream came first"
                } else {
                    "the queue has room again"
                };
                let which = if episode.policy == Leaky::Upstream {
                    "the new ones"
                } else {
                    "the oldest"
                };
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "{} messages dropped ({}) over {:.1} s while the queue was full; {}.",
                        episode.dropped,
                        which,
                        duration.as_secs_f64(),
                        until
                    )
                );
                gst::Structure::builder("mqttpublish-dropped")
                    .field("broker", broker)
                    .field("reason", "queue-full")
                    .field("count", episode.dropped)
                    .field("policy", episode.policy.nick())
                    .field("duration-ms", duration.as_millis() as u64)
                    .field("at-end", *at_end)
                    .build()
            }
        };
        let _ = self.obj().post_message(
            gst::message::Element::builder(structure)
                .src(&*self.obj())
                .build(),
        );
    }

    /// The `quality` of a `jpegenc` in the pipeline, which made the JPEG frames arriving
    /// here (DLSPS reads it from its pipeline string the same way).
    fn upstream_jpeg_quality(&self) -> Option<u8> {
        let bin = config::outermost_bin(self.obj().upcast_ref())
            .downcast::<gst::Bin>()
            .ok()?;
        bin.iterate_recurse()
            .into_iter()
            .flatten()
            .find(|element| element.factory().is_some_and(|f| f.name() == "jpegenc"))
            .and_then(|jpegenc| jpegenc.property_value("quality").get::<i32>().ok())
            .and_then(|quality| u8::try_from(quality).ok())
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
            .field("republished", stats.republished)
            .field("frames-skipped", frames.skipped)
            .field("json-invalid", frames.json_invalid)
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
                        "Host name or IP address of the MQTT broker, or several brokers for \
                         failover, separated by commas, each with its own port if needed \
                         (\"h1:1883,h2:1884\", IPv6 as [::1]:1883): a failed attempt or a lost \
                         connection moves to the next one, with the same backoff. When not set, \
                         the configuration file's \"host\" (a string or a JSON array of them), \
                         then the MQTT_HOST environment variable, then localhost is used.",
                    )
                    .default_value(Some(DEFAULT_HOST))
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("port")
                    .nick("Broker port")
                    .blurb(
                        "TCP port of the MQTT broker, 1 to 65535. When not set, the \
                         configuration file's \"port\", then the MQTT_PORT environment variable, \
                         then 1883 is used.",
                    )
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
                        "Seconds between keep-alive pings while idle, 0 to 65535; a dead \
                         connection is noticed within about twice this. 0 disables keep-alive \
                         (MQTT 3.1.1 only: protocol 5 needs 5 or more).",
                    )
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
                    .blurb("JPEG quality, 1 to 100, when encoding raw video frames.")
                    .default_value(DEFAULT_JPEG_QUALITY)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("frame-interval")
                    .nick("Frame interval")
                    .blurb(
                        "With publish-frame, add the frame to every Nth message only (1: every \
                         message; 0 is refused); the others carry metadata only.",
                    )
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
                glib::ParamSpecEnum::builder_with_default(
                    "metadata-source",
                    MetadataSource::default(),
                )
                .nick("Metadata source")
                .blurb(
                    "auto: when a buffer carries the JSON DL Streamer's gvametaconvert attached \
                     (GstGVAJSONMeta), publish that JSON as gvametapublish does (with its \
                     tensors, UTC timestamps, ...; frame_id added, source/tags/sink-time only \
                     where it lacks them), else build it from the region-of-interest metas. \
                     metas: always build it from the metas. A JSON meta that is not a JSON \
                     object is counted (json-invalid in stats), warned about once, and the \
                     metadata built from the metas instead.",
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
                         pipeline's name from its config.json there). Default: the name of the \
                         config.json pipeline entry config reads, else \"\".",
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
                        "Path to a JSON file (the path, not JSON text) with DL Streamer Pipeline \
                         Server MQTT settings, in any of the forms DLSPS users have: its \
                         config.json ({\"config\": {\"pipelines\": [{\"name\": .., \
                         \"mqtt_publisher\": {..}}, ..]}}; see config-pipeline), a REST request \
                         body ({\"destination\": {\"metadata\": {\"type\": \"mqtt\", \"topic\": \
                         ..}}}, or a list of such entries: the last mqtt one counts), \
                         {\"mqtt_publisher\": {..}}, or the mqtt_publisher section itself. Keys: \
                         topic, qos, protocol, publish_frame, tls, filter, and this element's \
                         host, port, client_id, username, password. Read at start. Properties \
                         set explicitly win over the file; the file wins over \
                         MQTT_HOST/MQTT_PORT. Keys DLSPS ignores are ignored with a warning.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecString::builder("config-pipeline")
                    .nick("Configuration pipeline")
                    .blurb(
                        "The name of the pipeline entry to read when config is a DLSPS \
                         config.json. Unset: the file's only pipeline, else the one named like \
                         the GStreamer pipeline holding this element (e.g. gst-launch-1.0's \
                         pipeline0, or the name an application gives its pipeline); when none \
                         matches, the start fails with an error listing the names found.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-queued-messages")
                    .nick("Queue limit (messages)")
                    .blurb(
                        "Most messages waiting for the broker, 1 or more; beyond it the leaky \
                         policy applies.",
                    )
                    .default_value(DEFAULT_MAX_QUEUED_MESSAGES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt64::builder("max-queued-bytes")
                    .nick("Queue limit (bytes)")
                    .blurb(
                        "Most payload bytes waiting for the broker, 1 or more; beyond it the \
                         leaky policy applies.",
                    )
                    .default_value(DEFAULT_MAX_QUEUED_BYTES)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecEnum::builder_with_default("leaky", Leaky::default())
                    .nick("Leaky")
                    .blurb(
                        "What to do when the queue is full. auto: wait for room when the \
                         upstream is not live (a file or a non-live test source: nothing is \
                         lost, the pipeline runs at the pace of the broker) and drop the oldest \
                         message when it is live (a camera: the video never waits for the \
                         broker). none: always wait for room. downstream: drop the oldest \
                         message. upstream: drop the new one. Waiting never blocks flushing or \
                         state changes. Drops are counted in stats and announced: a warning at \
                         the first drop, one with the count once the queue has room again. At \
                         end of stream, messages lost with auto or none and an upstream that is \
                         not live are an error (gst-launch-1.0 exits non-zero), otherwise a \
                         warning.",
                    )
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("max-message-size")
                    .nick("Largest message")
                    .blurb(
                        "Largest message in bytes (1024 to 268435456). A message with a frame's \
                         image that would be larger goes without the image (metadata kept, \
                         counted as unencoded-oversize); one still larger is dropped, counted in \
                         stats and warned about once. With MQTT 5 the broker's own limit applies too; with \
                         MQTT 3.1.1 keep this at or below the broker's limit, which it does not \
                         announce.",
                    )
                    .default_value(DEFAULT_MAX_MESSAGE_SIZE)
                    .mutable_ready()
                    .build(),
                glib::ParamSpecUInt::builder("flush-timeout")
                    .nick("Flush timeout")
                    .blurb(
                        "Milliseconds, 0 to 600000, to wait at end of stream for queued \
                         messages to be sent and QoS 1/2 messages acknowledged before passing \
                         the end of stream on.",
                    )
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
                         failed), reconnects, republished (QoS 1/2 messages published again because the \
                         broker lost the session before acknowledging them), bytes-sent, \
                         in-flight, queue-depth, queue-bytes and connected. messages-queued = published + \
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
            "port" => settings.port = self.number(&mut settings, "port", value).or(settings.port),
            "topic" => settings.topic = Some(string().unwrap_or_default()),
            "qos" => settings.qos = self.number(&mut settings, "qos", value).or(settings.qos),
            "retain" => settings.retain = get(value),
            "protocol" => {
                settings.protocol = self
                    .number(&mut settings, "protocol", value)
                    .or(settings.protocol)
            }
            "client-id" => settings.client_id = Some(non_empty()),
            "clean-session" => settings.clean_session = get(value),
            "keep-alive" => {
                if let Some(number) = self.number(&mut settings, "keep-alive", value) {
                    settings.keep_alive = number;
                }
            }
            "username" => settings.username = Some(non_empty()),
            "password" => settings.password = Some(string().map(Secret::new)),
            "tls-ca-file" => settings.tls_ca_file = Some(non_empty()),
            "tls-cert-file" => settings.tls_cert_file = Some(non_empty()),
            "tls-key-file" => settings.tls_key_file = Some(non_empty()),
            "publish-frame" => settings.publish_frame = Some(get(value)),
            "jpeg-quality" => {
                if let Some(number) = self.number(&mut settings, "jpeg-quality", value) {
                    settings.jpeg_quality = number;
                }
            }
            "frame-interval" => {
                if let Some(number) = self.number(&mut settings, "frame-interval", value) {
                    settings.frame_interval = number;
                }
            }
            "message-format" => settings.message_format = get(value),
            "metadata-source" => settings.metadata_source = get(value),
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
            "config-pipeline" => settings.config_pipeline = non_empty(),
            "max-queued-messages" => {
                if let Some(number) = self.number(&mut settings, "max-queued-messages", value) {
                    settings.max_queued_messages = number;
                }
            }
            "max-queued-bytes" => {
                if let Some(number) = self.number(&mut settings, "max-queued-bytes", value) {
                    settings.max_queued_bytes = number;
                }
            }
            "leaky" => settings.leaky = get(value),
            "max-message-size" => {
                if let Some(number) = self.number(&mut settings, "max-message-size", value) {
                    settings.max_message_size = number;
                }
            }
            "flush-timeout" => {
                if let Some(number) = self.number(&mut settings, "flush-timeout", value) {
                    settings.flush_timeout_ms = number;
                }
            }
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
            "metadata-source" => settings.metadata_source.to_value(),
            "source" => settings.source.to_value(),
            "pipeline-name" => settings.pipeline_name.to_value(),
            "pipeline-version" => settings.pipeline_version.to_value(),
            "tags" => settings.tags.to_value(),
            "skip-empty" => settings.skip_empty.to_value(),
            "add-sink-time" => settings.add_sink_time.to_value(),
            "config" => settings.config.to_value(),
            "config-pipeline" => settings.config_pipeline.to_value(),
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

impl MqttPublish {
    /// The value of a numeric property when it is within the range its blurb states (see
    /// [`settings::number_range`]); otherwise `None`, and the value is recorded as rejected.
    fn number<T>(
        &self,
        settings: &mut Settings,
        property: &'static str,
        value: &glib::Value,
    ) -> Option<T>
    where
        T: for<'a> glib::value::FromValue<'a> + Into<u64> + Copy,
    {
        let number: T = get(value);
        match settings::check_number(property, number.into()) {
            Ok(()) => {
                settings.rejected.remove(property);
                Some(number)
            }
            Err(e) => {
                gst::warning!(CAT, imp = self, "Ignoring {e}");
                settings.rejected.insert(property, e);
                None
            }
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
        let mut state = self.state.lock().unwrap();
        if let State::Started(started) = &mut *state {
            if let Some(warning) = started
                .assembler
                .set_caps(caps, || self.upstream_jpeg_quality())
            {
                drop(state);
                gst::element_imp_warning!(self, gst::StreamError::Format, ("{}", warning));
            }
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        if self.check_live.swap(false, Ordering::Relaxed) {
            self.check_upstream_live();
        }
        if self.fail_on_refusal() {
            return Err(gst::FlowError::Error);
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
        // The stream goes on after an end of stream (a seek): report again.
        started.delivery.reported = false;
        let max_size = started.worker.max_payload();
        let Some(built) = started.assembler.build(buffer, timestamp, max_size) else {
            return Ok(gst::FlowSuccess::Ok);
        };

        // A push that waits for room (leaky=none, or auto with an upstream that is not
        // live) must not hold the state lock: stop() and the stats property take it.
        let worker = started.worker.clone();
        drop(state);
        for warning in &built.warnings {
            gst::element_imp_warning!(self, gst::StreamError::Encode, ("{}", warning));
        }
        let payload = built.payload;
        match worker.push(payload) {
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
        if !settings.rejected.is_empty() {
            let reasons: Vec<&str> = settings.rejected.values().map(String::as_str).collect();
            return Err(gst::error_msg!(
                gst::LibraryError::Settings,
                ("{}", reasons.join("; "))
            ));
        }
        let pipeline_name = config::outermost_bin(self.obj().upcast_ref())
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
            delivery: Delivery::default(),
        }));
        Ok(())
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
            Leaky::Upstream => "drops the new message when the queue is full",
            Leaky::Downstream => "drops the oldest message when the queue is full",
            Leaky::No | Leaky::Auto => {
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

    /// End of stream: waits up to flush-timeout for everything to be delivered, then
    /// reports what was lost. Losing messages is an error when the upstream is not live and
    /// the policy waits for room (a file job that was to deliver everything), else a
    /// warning.
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
        let stats = worker.stats();
        let leaky = worker.leaky();
        let lossless = matches!(leaky, Leaky::Auto | Leaky::No);
        self.report_loss(&stats, Some(timeout), (!live && lossless).then_some(leaky));
        if let State::Started(started) = &mut *self.state.lock().unwrap() {
            started.delivery.reported = true;
        }
    }

    /// Reports the messages of this run that were not delivered, if any: an
    /// `mqttpublish-undelivered` element message, then an error (`fatal`: the leaky policy
    /// that was to deliver everything) or a warning. `flush_timeout`: at end of stream
    /// (what is still queued or in flight was not delivered within it); `None`: at stop.
    fn report_loss(&self, stats: &Stats, flush_timeout: Option<Duration>, fatal: Option<Leaky>) {
        let Some(summary) = loss_summary(stats, flush_timeout) else {
            gst::info!(CAT, imp = self, "Every message was delivered: {stats:?}");
            return;
        };
        let _ = self.obj().post_message(
            gst::message::Element::builder(
                gst::Structure::builder("mqttpublish-undelivered")
                    .field("messages", stats.queued)
                    .field("undelivered", stats.lost())
                    .field("dropped", stats.dropped())
                    .field("dropped-queue-full", stats.dropped_queue_full)
                    .field("dropped-oversize", stats.dropped_oversize)
                    .field("dropped-disconnected", stats.dropped_disconnected)
                    .field("dropped-stopped", stats.dropped_stopped)
                    .field("pending", stats.undelivered())
                    .field("end-of-stream", flush_timeout.is_some())
                    .field("error", fatal.is_some())
                    .build(),
            )
            .src(&*self.obj())
            .build(),
        );
        let when = if flush_timeout.is_some() {
            "End of stream"
        } else {
            "Stopped before the end of the stream"
        };
        if let Some(leaky) = fatal {
            gst::element_imp_error!(
                self,
                gst::ResourceError::Write,
                ("{}: {}", when, summary),
                [
                    "The upstream is not live and leaky={} waits for room, so every message was to be delivered. Check the broker connection; a larger flush-timeout waits longer at the end.",
                    leaky.nick()
                ]
            );
        } else {
            gst::element_imp_warning!(self, gst::ResourceError::Write, ("{}: {}", when, summary));
        }
    }
}

/// What a run lost, in words, e.g. "37 of 300 messages were not delivered (12 dropped: queue
/// full; 25 not delivered within flush-timeout 5000 ms: 20 queued, 5 in flight)"; `None`
/// when nothing was lost. See [`MqttPublish::report_loss`] for `flush_timeout`.
fn loss_summary(stats: &Stats, flush_timeout: Option<Duration>) -> Option<String> {
    let lost = stats.lost();
    if lost == 0 {
        return None;
    }
    let mut parts = Vec::new();
    for (count, reason) in [
        (stats.dropped_queue_full, "queue full"),
        (
            stats.dropped_oversize,
            "larger than max-message-size or the broker's limit",
        ),
        (
            stats.dropped_disconnected,
            "in flight when the broker started a new session",
        ),
        (stats.dropped_stopped, "still queued or in flight at stop"),
    ] {
        if count > 0 {
            parts.push(format!("{count} dropped: {reason}"));
        }
    }
    if stats.undelivered() > 0 {
        let within = flush_timeout
            .map(|t| format!(" within flush-timeout {} ms", t.as_millis()))
            .unwrap_or_default();
        parts.push(format!(
            "{} not delivered{within}: {} queued, {} in flight",
            stats.undelivered(),
            stats.queue_depth,
            stats.in_flight
        ));
    }
    Some(format!(
        "{lost} of {} messages were not delivered ({})",
        stats.queued,
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_summary_names_every_reason_and_adds_up() {
        let nothing_lost = Stats {
            queued: 300,
            published: 300,
            ..Stats::default()
        };
        assert_eq!(loss_summary(&nothing_lost, None), None);

        let stats = Stats {
            queued: 300,
            published: 263,
            dropped_queue_full: 10,
            dropped_oversize: 2,
            queue_depth: 20,
            in_flight: 5,
            ..Stats::default()
        };
        assert_eq!(
            loss_summary(&stats, Some(Duration::from_millis(5000))).unwrap(),
            "37 of 300 messages were not delivered (10 dropped: queue full; 2 dropped: larger \
             than max-message-size or the broker's limit; 25 not delivered within \
             flush-timeout 5000 ms: 20 queued, 5 in flight)"
        );

        // After stop, what was left is counted as dropped at stop.
        let stats = Stats {
            queued: 5,
            dropped_disconnected: 1,
            dropped_stopped: 4,
            ..Stats::default()
        };
        assert_eq!(
            loss_summary(&stats, None).unwrap(),
            "5 of 5 messages were not delivered (1 dropped: in flight when the broker started \
             a new session; 4 dropped: still queued or in flight at stop)"
        );
    }
}
