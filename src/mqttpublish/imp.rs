// SPDX-License-Identifier: MPL-2.0

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;
use gst_base::prelude::*;
use gst_base::subclass::prelude::*;
use once_cell::sync::Lazy;

use super::MessageFormat;
use crate::config::PublisherConfig;
use crate::filter::Filter;
use crate::jpeg::{self, JpegEncoder};
use crate::meta::{self, FrameContext};
use crate::mqtt::{
    ConnectionConfig, Leaky, Limits, Notice, Protocol, Pushed, QoS, Secret, Stats, TlsFiles, Worker,
};

static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "mqttpublish",
        gst::DebugColorFlags::empty(),
        Some("MQTT publisher of analytics metadata"),
    )
});

const DEFAULT_HOST: &str = "localhost";
const DEFAULT_PORT: u32 = 1883;
const DEFAULT_TOPIC: &str = "dlstreamer_pipeline_results";
const DEFAULT_QOS: u32 = 0;
const DEFAULT_RETAIN: bool = false;
const DEFAULT_PROTOCOL: u32 = 4;
const DEFAULT_CLEAN_SESSION: bool = true;
const DEFAULT_KEEP_ALIVE: u32 = 60;
const DEFAULT_PUBLISH_FRAME: bool = false;
const DEFAULT_JPEG_QUALITY: u32 = 85;
const DEFAULT_FRAME_INTERVAL: u32 = 1;
const DEFAULT_SKIP_EMPTY: bool = false;
const DEFAULT_ADD_SINK_TIME: bool = false;
const DEFAULT_MAX_QUEUED_MESSAGES: u32 = 256;
const DEFAULT_MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;
const DEFAULT_MAX_MESSAGE_SIZE: u32 = 4 * 1024 * 1024;
const DEFAULT_FLUSH_TIMEOUT_MS: u32 = 5000;
/// A stop gives up flushing when nothing completed for this long.
const STOP_FLUSH_STALL: Duration = Duration::from_millis(250);

/// What the user set. Properties that a configuration file or the environment can also
/// set are tracked in `explicit`, so that precedence is: property, file, environment.
#[derive(Debug, Clone)]
struct Settings {
    host: String,
    port: u32,
    topic: String,
    qos: u32,
    retain: bool,
    protocol: u32,
    client_id: Option<String>,
    clean_session: bool,
    keep_alive: u32,
    username: Option<String>,
    password: Option<Secret>,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    publish_frame: bool,
    jpeg_quality: u32,
    frame_interval: u32,
    message_format: MessageFormat,
    source: Option<String>,
    tags: Option<String>,
    skip_empty: bool,
    add_sink_time: bool,
    config: Option<String>,
    max_queued_messages: u32,
    max_queued_bytes: u64,
    leaky: Leaky,
    max_message_size: u32,
    flush_timeout_ms: u32,
    explicit: HashSet<&'static str>,
    /// Rejected property values by property name; the element refuses to start while any
    /// is left.
    rejected: BTreeMap<&'static str, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: DEFAULT_HOST.into(),
            port: DEFAULT_PORT,
            topic: DEFAULT_TOPIC.into(),
            qos: DEFAULT_QOS,
            retain: DEFAULT_RETAIN,
            protocol: DEFAULT_PROTOCOL,
            client_id: None,
            clean_session: DEFAULT_CLEAN_SESSION,
            keep_alive: DEFAULT_KEEP_ALIVE,
            username: None,
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            publish_frame: DEFAULT_PUBLISH_FRAME,
            jpeg_quality: DEFAULT_JPEG_QUALITY,
            frame_interval: DEFAULT_FRAME_INTERVAL,
            message_format: MessageFormat::default(),
            source: None,
            tags: None,
            skip_empty: DEFAULT_SKIP_EMPTY,
            add_sink_time: DEFAULT_ADD_SINK_TIME,
            config: None,
            max_queued_messages: DEFAULT_MAX_QUEUED_MESSAGES,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            leaky: Leaky::default(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            flush_timeout_ms: DEFAULT_FLUSH_TIMEOUT_MS,
            explicit: HashSet::new(),
            rejected: BTreeMap::new(),
        }
    }
}

/// How messages are built, fixed at start.
struct Options {
    filter: Option<Filter>,
    publish_frame: bool,
    jpeg_quality: u8,
    frame_interval: u64,
    message_format: MessageFormat,
    source: Option<String>,
    tags: Option<String>,
    skip_empty: bool,
    add_sink_time: bool,
    max_message_size: usize,
    flush_timeout: Duration,
}

/// The negotiated input.
enum Input {
    None,
    Raw {
        info: Box<gst_video::VideoInfo>,
        /// Made on the first frame that needs it.
        encoder: Option<Box<JpegEncoder>>,
    },
    Jpeg {
        width: u32,
        height: u32,
    },
}

/// Frames that produced no message or no image, counted in `stats`.
#[derive(Debug, Default, Clone, Copy)]
struct FrameCounters {
    /// Skipped by `skip-empty` or emptied by the configuration's filter.
    skipped: u64,
    /// Published without an image because encoding failed.
    unencoded: u64,
}

struct Started {
    /// Shared with a streaming thread that waits for room in the queue without holding
    /// the state lock.
    worker: Arc<Worker>,
    options: Options,
    input: Input,
    /// `frame_id` of the next buffer.
    next_frame_id: u64,
    /// Messages built so far, for `frame-interval`.
    messages: u64,
    frames: FrameCounters,
    /// Reused for every encoded frame.
    jpeg: Vec<u8>,
    oversize_warned: bool,
    /// Size of the last metadata message, to allocate each payload once.
    payload_hint: usize,
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

/// A client id unique to this process and element instance.
fn unique_client_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "gstmqtt-{:x}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// Checks a `tags` value: a JSON object, stored in compact form.
fn parse_tags(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("tags: invalid JSON ({e}) in {text:?}"))?;
    if !value.is_object() {
        return Err(format!("tags: expected a JSON object, got {value}"));
    }
    Ok(value.to_string())
}

/// The value in effect for a setting the configuration file can also set: the property
/// when the user set it, else the file's value when it has one, else the property's
/// default.
fn layered<T>(explicitly_set: bool, property: T, file: Option<T>) -> T {
    match file {
        Some(value) if !explicitly_set => value,
        _ => property,
    }
}

/// Checks a topic to publish to.
fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        Err("topic: the topic is empty".into())
    } else if topic.contains(['+', '#']) {
        Err(format!(
            "topic: {topic:?} contains a wildcard (+ or #), which is only valid in subscriptions"
        ))
    } else if topic.contains('\0') {
        Err("topic: contains a NUL character".into())
    } else {
        Ok(())
    }
}

impl MqttPublish {
    /// The connection and message settings in effect: properties over the configuration
    /// file over the environment over the defaults.
    fn resolve(&self, settings: &Settings) -> Result<(ConnectionConfig, Limits, Options), String> {
        let file = match &settings.config {
            Some(path) => {
                let file =
                    PublisherConfig::load(Path::new(path)).map_err(|e| format!("config: {e}"))?;
                if !file.unknown_keys.is_empty() {
                    gst::element_imp_warning!(
                        self,
                        gst::LibraryError::Settings,
                        (
                            "config: {} has keys this element does not know, ignored: {}",
                            path,
                            file.unknown_keys.join(", ")
                        )
                    );
                }
                file
            }
            None => PublisherConfig::default(),
        };
        let set = |name: &str| settings.explicit.contains(name);

        let env_host = std::env::var("MQTT_HOST").ok().filter(|h| !h.is_empty());
        let host = if set("host") {
            settings.host.clone()
        } else {
            file.host
                .clone()
                .or(env_host)
                .unwrap_or_else(|| settings.host.clone())
        };
        let env_port = match std::env::var("MQTT_PORT") {
            Ok(text) if !text.is_empty() => Some(
                text.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("MQTT_PORT: {text:?} is not a TCP port (1..65535)"))?,
            ),
            _ => None,
        };
        let port = if set("port") {
            u16::try_from(settings.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("port: {} is not a TCP port (1..65535)", settings.port))?
        } else {
            file.port.or(env_port).unwrap_or(DEFAULT_PORT as u16)
        };
        if host.is_empty() {
            return Err("host: the broker host is empty".into());
        }

        let topic = layered(set("topic"), settings.topic.clone(), file.topic.clone());
        check_topic(&topic)?;
        let qos = layered(
            set("qos"),
            QoS::from_level(i64::from(settings.qos)).map_err(|e| format!("qos: {e}"))?,
            file.qos,
        );
        let protocol = layered(
            set("protocol"),
            Protocol::from_level(i64::from(settings.protocol))
                .map_err(|e| format!("protocol: {e}"))?,
            file.protocol,
        );
        // rumqttc's MQTT 5 client cannot keep alive more often than every 5 s, nor not at all.
        if protocol == Protocol::V5 && settings.keep_alive < 5 {
            return Err(format!(
                "keep-alive: {} s is not supported with protocol 5; use 5 s or more",
                settings.keep_alive
            ));
        }
        let publish_frame = layered(
            set("publish-frame"),
            settings.publish_frame,
            file.publish_frame,
        );
        let client_id = layered(
            set("client-id"),
            settings.client_id.clone(),
            file.client_id.clone().map(Some),
        )
        .filter(|id| !id.is_empty())
        .unwrap_or_else(unique_client_id);
        let username = layered(
            set("username"),
            settings.username.clone(),
            file.username.clone().map(Some),
        );
        let password = layered(
            set("password"),
            settings.password.clone(),
            file.password.clone().map(Some),
        );
        let credentials = match (username, password) {
            (Some(user), password) => Some((user, password.unwrap_or_default())),
            (None, Some(_)) => return Err("password: is set but username is not".into()),
            (None, None) => None,
        };

        let tls_ca = layered(
            set("tls-ca-file"),
            settings.tls_ca_file.clone(),
            file.tls_ca_file.clone().map(Some),
        );
        let tls_cert = layered(
            set("tls-cert-file"),
            settings.tls_cert_file.clone(),
            file.tls_cert_file.clone().map(Some),
        );
        let tls_key = layered(
            set("tls-key-file"),
            settings.tls_key_file.clone(),
            file.tls_key_file.clone().map(Some),
        );
        let tls = match tls_ca {
            Some(ca) => Some(
                TlsFiles {
                    ca,
                    cert: tls_cert,
                    key: tls_key,
                }
                .load()?,
            ),
            None if tls_cert.is_some() || tls_key.is_some() => {
                return Err(
                    "tls-cert-file/tls-key-file: set, but TLS needs tls-ca-file (the CA that signs the broker's certificate)"
                        .into(),
                )
            }
            None => None,
        };
        if !settings.clean_session && !set("client-id") && file.client_id.is_none() {
            gst::element_imp_warning!(
                self,
                gst::LibraryError::Settings,
                ("clean-session=false without a fixed client-id: the broker cannot resume the session after a restart of the pipeline")
            );
        }

        let filter = file.filter.as_ref().map(|config| {
            let mut filter = Filter::default();
            config.apply(&mut filter);
            filter
        });

        let max_message_size = settings.max_message_size as usize;
        let connection = ConnectionConfig {
            host,
            port,
            client_id,
            clean_session: settings.clean_session,
            keep_alive: Duration::from_secs(u64::from(settings.keep_alive)),
            credentials,
            tls,
            protocol,
            topic,
            qos,
            retain: settings.retain,
            max_message_size,
        };
        let limits = Limits {
            max_messages: settings.max_queued_messages.max(1) as usize,
            max_bytes: settings.max_queued_bytes as usize,
            leaky: settings.leaky,
        };
        let options = Options {
            filter,
            publish_frame,
            jpeg_quality: settings.jpeg_quality as u8,
            frame_interval: u64::from(settings.frame_interval.max(1)),
            message_format: settings.message_format,
            source: settings.source.clone(),
            tags: settings.tags.clone(),
            skip_empty: settings.skip_empty,
            add_sink_time: settings.add_sink_time,
            max_message_size,
            flush_timeout: Duration::from_millis(u64::from(settings.flush_timeout_ms)),
        };
        Ok((connection, limits, options))
    }

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
        };
        let _ = self.obj().post_message(
            gst::message::Element::builder(structure)
                .src(&*self.obj())
                .build(),
        );
    }

    fn stats_structure(stats: &Stats, frames: FrameCounters) -> gst::Structure {
        let dropped = stats.dropped_queue_full
            + stats.dropped_oversize
            + stats.dropped_disconnected
            + stats.dropped_stopped;
        gst::Structure::builder("mqttpublish-stats")
            .field("messages-queued", stats.queued)
            .field("messages-published", stats.published)
            .field("messages-acknowledged", stats.acknowledged)
            .field("messages-dropped", dropped)
            .field("dropped-queue-full", stats.dropped_queue_full)
            .field("dropped-oversize", stats.dropped_oversize)
            .field("dropped-disconnected", stats.dropped_disconnected)
            .field("dropped-stopped", stats.dropped_stopped)
            .field("frames-skipped", frames.skipped)
            .field("frames-unencoded", frames.unencoded)
            .field("reconnects", stats.reconnects)
            .field("bytes-sent", stats.bytes_sent)
            .field("in-flight", stats.in_flight)
            .field("queue-depth", stats.queue_depth)
            .field("queue-bytes", stats.queue_bytes)
            .field("connected", stats.connected)
            .build()
    }

    /// Builds the message for one buffer; `None` when the frame is skipped.
    fn build_message(
        &self,
        started: &mut Started,
        buffer: &gst::BufferRef,
    ) -> Result<Option<Vec<u8>>, gst::FlowError> {
        let publishing = &started.options;
        let frame_id = started.next_frame_id;
        started.next_frame_id += 1;

        let mut objects = meta::read_objects(buffer).objects;
        if let Some(filter) = &publishing.filter {
            let had_objects = !objects.is_empty();
            filter.apply_to_objects(&mut objects);
            if had_objects && objects.is_empty() {
                started.frames.skipped += 1;
                return Ok(None);
            }
        }
        if publishing.skip_empty && objects.is_empty() {
            started.frames.skipped += 1;
            return Ok(None);
        }

        let (width, height) = match &started.input {
            Input::Raw { info, .. } => (info.width(), info.height()),
            Input::Jpeg { width, height } => (*width, *height),
            Input::None => (0, 0),
        };
        let timestamp = self
            .obj()
            .segment()
            .downcast_ref::<gst::ClockTime>()
            .and_then(|segment| segment.to_stream_time(buffer.pts()))
            .map(gst::ClockTime::nseconds);
        let ctx = FrameContext {
            width,
            height,
            timestamp,
            frame_id: Some(frame_id),
            sink_time: publishing.add_sink_time.then(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
            }),
            source: publishing.source.as_deref(),
            tags: publishing.tags.as_deref(),
        };

        let with_frame =
            publishing.publish_frame && started.messages % publishing.frame_interval == 0;
        started.messages += 1;
        let mut payload = Vec::with_capacity(started.payload_hint);
        if !with_frame {
            meta::write_frame_json(&mut payload, &objects, &ctx);
            started.payload_hint = payload.len() + 64;
            return Ok(Some(payload));
        }

        let map;
        let jpeg: &[u8] = match &mut started.input {
            Input::Jpeg { .. } => {
                map = buffer.map_readable().map_err(|_| {
                    gst::element_imp_error!(
                        self,
                        gst::ResourceError::Read,
                        ("Cannot map the JPEG buffer")
                    );
                    gst::FlowError::Error
                })?;
                map.as_slice()
            }
            Input::Raw { info, encoder } => {
                let encoder = match encoder {
                    Some(encoder) => encoder,
                    None => encoder.insert(Box::new(
                        JpegEncoder::new(info, publishing.jpeg_quality).map_err(|e| {
                            gst::element_imp_error!(self, gst::StreamError::Format, ("{}", e));
                            gst::FlowError::NotNegotiated
                        })?,
                    )),
                };
                let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
                    .map_err(|_| {
                        gst::element_imp_error!(
                            self,
                            gst::ResourceError::Read,
                            ("Cannot map the video frame")
                        );
                        gst::FlowError::Error
                    })?;
                started.jpeg.clear();
                match encoder.encode(&frame, &mut started.jpeg) {
                    Ok(()) => &started.jpeg,
                    Err(e) => {
                        started.frames.unencoded += 1;
                        gst::warning!(CAT, imp = self, "Cannot encode frame {frame_id}: {e}");
                        &[]
                    }
                }
            }
            Input::None => &[],
        };

        let b64_len = jpeg.len().div_ceil(3) * 4;
        payload.reserve(b64_len + 64);
        let (open, middle, close): (&[u8], &[u8], &[u8]) = match publishing.message_format {
            MessageFormat::Array => (b"[", b",\"", b"\"]"),
            MessageFormat::Object => (b"{\"metadata\":", b",\"blob\":\"", b"\"}"),
        };
        payload.extend_from_slice(open);
        meta::write_frame_json(&mut payload, &objects, &ctx);
        payload.extend_from_slice(middle);
        let start = payload.len();
        payload.resize(start + b64_len, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(jpeg, &mut payload[start..])
            .expect("buffer sized for the base64 text");
        payload.truncate(start + written);
        payload.extend_from_slice(close);
        Ok(Some(payload))
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
                        "Shape of messages that carry a frame: a JSON array [metadata, \"<base64 \
                         JPEG>\"] or an object {\"metadata\": .., \"blob\": ..}. Messages without a \
                         frame are the metadata object.",
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
                        "Messages larger than this many bytes are dropped, counted in stats and \
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
        let name = pspec.name();
        let string = || {
            value
                .get::<Option<String>>()
                .expect("type checked upstream")
        };
        match name {
            "host" => {
                settings.explicit.insert("host");
                settings.host = string().unwrap_or_default();
            }
            "port" => {
                settings.explicit.insert("port");
                settings.port = value.get().expect("type checked upstream");
            }
            "topic" => {
                settings.explicit.insert("topic");
                settings.topic = string().unwrap_or_default();
            }
            "qos" => {
                settings.explicit.insert("qos");
                settings.qos = value.get().expect("type checked upstream");
            }
            "retain" => settings.retain = value.get().expect("type checked upstream"),
            "protocol" => {
                settings.explicit.insert("protocol");
                settings.protocol = value.get().expect("type checked upstream");
            }
            "client-id" => {
                settings.explicit.insert("client-id");
                settings.client_id = string().filter(|s| !s.is_empty());
            }
            "clean-session" => settings.clean_session = value.get().expect("type checked upstream"),
            "keep-alive" => settings.keep_alive = value.get().expect("type checked upstream"),
            "username" => {
                settings.explicit.insert("username");
                settings.username = string().filter(|s| !s.is_empty());
            }
            "password" => {
                settings.explicit.insert("password");
                settings.password = string().map(Secret::new);
            }
            "tls-ca-file" => {
                settings.explicit.insert("tls-ca-file");
                settings.tls_ca_file = string().filter(|s| !s.is_empty());
            }
            "tls-cert-file" => {
                settings.explicit.insert("tls-cert-file");
                settings.tls_cert_file = string().filter(|s| !s.is_empty());
            }
            "tls-key-file" => {
                settings.explicit.insert("tls-key-file");
                settings.tls_key_file = string().filter(|s| !s.is_empty());
            }
            "publish-frame" => {
                settings.explicit.insert("publish-frame");
                settings.publish_frame = value.get().expect("type checked upstream");
            }
            "jpeg-quality" => settings.jpeg_quality = value.get().expect("type checked upstream"),
            "frame-interval" => {
                settings.frame_interval = value.get().expect("type checked upstream")
            }
            "message-format" => {
                settings.message_format = value.get().expect("type checked upstream")
            }
            "source" => settings.source = string(),
            "tags" => match string()
                .filter(|s| !s.is_empty())
                .map(|t| parse_tags(&t))
                .transpose()
            {
                Ok(tags) => {
                    settings.tags = tags;
                    settings.rejected.remove("tags");
                }
                Err(e) => {
                    gst::warning!(CAT, imp = self, "Ignoring {e}");
                    settings.rejected.insert("tags", e);
                }
            },
            "skip-empty" => settings.skip_empty = value.get().expect("type checked upstream"),
            "add-sink-time" => settings.add_sink_time = value.get().expect("type checked upstream"),
            "config" => settings.config = string().filter(|s| !s.is_empty()),
            "max-queued-messages" => {
                settings.max_queued_messages = value.get().expect("type checked upstream")
            }
            "max-queued-bytes" => {
                settings.max_queued_bytes = value.get().expect("type checked upstream")
            }
            "leaky" => settings.leaky = value.get().expect("type checked upstream"),
            "max-message-size" => {
                settings.max_message_size = value.get().expect("type checked upstream")
            }
            "flush-timeout" => {
                settings.flush_timeout_ms = value.get().expect("type checked upstream")
            }
            other => unreachable!("unknown property {other}"),
        }
    }

    fn property(&self, _id: usize, pspec: &glib::ParamSpec) -> glib::Value {
        let settings = self.settings.lock().unwrap();
        match pspec.name() {
            "host" => settings.host.to_value(),
            "port" => settings.port.to_value(),
            "topic" => settings.topic.to_value(),
            "qos" => settings.qos.to_value(),
            "retain" => settings.retain.to_value(),
            "protocol" => settings.protocol.to_value(),
            "client-id" => settings.client_id.to_value(),
            "clean-session" => settings.clean_session.to_value(),
            "keep-alive" => settings.keep_alive.to_value(),
            "username" => settings.username.to_value(),
            "tls-ca-file" => settings.tls_ca_file.to_value(),
            "tls-cert-file" => settings.tls_cert_file.to_value(),
            "tls-key-file" => settings.tls_key_file.to_value(),
            "publish-frame" => settings.publish_frame.to_value(),
            "jpeg-quality" => settings.jpeg_quality.to_value(),
            "frame-interval" => settings.frame_interval.to_value(),
            "message-format" => settings.message_format.to_value(),
            "source" => settings.source.to_value(),
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
                        Self::stats_structure(&started.worker.stats(), started.frames)
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

impl GstObjectImpl for MqttPublish {}

impl ElementImpl for MqttPublish {
    fn metadata() -> Option<&'static gst::subclass::ElementMetadata> {
        static ELEMENT_METADATA: Lazy<gst::subclass::ElementMetadata> = Lazy::new(|| {
            gst::subclass::ElementMetadata::new(
                "MQTT analytics publisher",
                "Sink/Network/Video",
                "Publishes the detections and classifications on each buffer as gvametaconvert \
                 JSON, optionally with the frame as base64 JPEG, to an MQTT broker without \
                 stalling the pipeline",
                "gst-plugin-analyticsmqtt contributors",
            )
        });
        Some(&*ELEMENT_METADATA)
    }

    fn pad_templates() -> &'static [gst::PadTemplate] {
        static PAD_TEMPLATES: Lazy<Vec<gst::PadTemplate>> = Lazy::new(|| {
            let raw = gst_video::VideoCapsBuilder::new()
                .format_list(jpeg::SUPPORTED_FORMATS.iter().copied())
                .build();
            let mut caps = raw;
            caps.get_mut()
                .unwrap()
                .append(gst::Caps::builder("image/jpeg").build());
            vec![gst::PadTemplate::new(
                "sink",
                gst::PadDirection::Sink,
                gst::PadPresence::Always,
                &caps,
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
        let (connection, limits, options) = self
            .resolve(&settings)
            .map_err(|e| gst::error_msg!(gst::LibraryError::Settings, ("{}", e)))?;
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
        let worker = self.start_worker(connection, limits).map_err(|e| {
            gst::error_msg!(
                gst::ResourceError::Failed,
                ("Cannot start the connection thread: {}", e)
            )
        })?;
        *self.state.lock().unwrap() = State::Started(Box::new(Started {
            worker: Arc::new(worker),
            options,
            input: Input::None,
            next_frame_id: 0,
            messages: 0,
            frames: FrameCounters::default(),
            jpeg: Vec::new(),
            oversize_warned: false,
            payload_hint: 1024,
        }));
        Ok(())
    }

    fn stop(&self) -> Result<(), gst::ErrorMessage> {
        let state = std::mem::take(&mut *self.state.lock().unwrap());
        if let State::Started(started) = state {
            let worker = started.worker;
            // Whatever EOS did not flush gets a short chance to go out.
            worker.flush(started.options.flush_timeout, Some(STOP_FLUSH_STALL));
            let stats = worker.stop();
            gst::info!(CAT, imp = self, "Stopped: {stats:?}");
            *self.last_stats.lock().unwrap() = (stats, started.frames);
        }
        Ok(())
    }

    fn set_caps(&self, caps: &gst::Caps) -> Result<(), gst::LoggableError> {
        let s = caps
            .structure(0)
            .ok_or_else(|| gst::loggable_error!(CAT, "Empty caps"))?;
        let input = if s.name() == "image/jpeg" {
            Input::Jpeg {
                width: s.get::<i32>("width").unwrap_or(0).max(0) as u32,
                height: s.get::<i32>("height").unwrap_or(0).max(0) as u32,
            }
        } else {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|_| gst::loggable_error!(CAT, "Invalid video caps {caps}"))?;
            Input::Raw {
                info: Box::new(info),
                encoder: None,
            }
        };
        if let State::Started(started) = &mut *self.state.lock().unwrap() {
            started.input = input;
        }
        Ok(())
    }

    fn render(&self, buffer: &gst::Buffer) -> Result<gst::FlowSuccess, gst::FlowError> {
        let mut state = self.state.lock().unwrap();
        let State::Started(started) = &mut *state else {
            return Err(gst::FlowError::Flushing);
        };
        let Some(payload) = self.build_message(started, buffer)? else {
            return Ok(gst::FlowSuccess::Ok);
        };

        if payload.len() > started.options.max_message_size {
            started.worker.count_oversize();
            if !std::mem::replace(&mut started.oversize_warned, true) {
                gst::element_imp_warning!(
                    self,
                    gst::ResourceError::Write,
                    (
                        "A message of {} bytes is larger than max-message-size ({} bytes) and was dropped; further drops are counted in stats",
                        payload.len(),
                        started.options.max_message_size
                    )
                );
            }
            return Ok(gst::FlowSuccess::Ok);
        }

        // A blocking push (leaky=none) must not hold the state lock: stop() and the stats
        // property take it.
        let worker = started.worker.clone();
        drop(state);
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
        let timeout = started.options.flush_timeout;
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
