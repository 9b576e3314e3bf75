// SPDX-License-Identifier: MPL-2.0

//! What the user asked `mqttpublish` for, and how it resolves into what runs.
//!
//! Precedence, strongest first: a property set on the element, the `config` file (a DLSPS
//! `mqtt_publisher` section), for host and port the `MQTT_HOST` / `MQTT_PORT` environment
//! variables (as DLSPS reads them), the defaults. [`resolve`] is a pure function of the
//! three sources; it returns its warnings instead of posting them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::message::MessageOptions;
use super::{MessageFormat, MetadataSource};
use crate::config::{parse_tcp_port, tcp_port, ConfigFile, PublisherConfig};
use crate::error::SettingError;
use crate::filter::Filter;
use crate::mqtt::{Broker, ConnectionConfig, Limits, Protocol, QoS, Secret, Sharing};
use crate::spool::SyncPolicy;
use crate::tls::TlsFiles;

pub const DEFAULT_HOST: &str = "localhost";
pub const DEFAULT_TOPIC: &str = "dlstreamer_pipeline_results";
pub const DEFAULT_RETAIN: bool = false;
pub const DEFAULT_CLEAN_SESSION: bool = true;
pub const DEFAULT_PUBLISH_FRAME: bool = false;
pub const DEFAULT_SKIP_EMPTY: bool = false;
pub const DEFAULT_ADD_SINK_TIME: bool = false;
pub const DEFAULT_ADD_TENSOR_DATA: bool = false;

/// A numeric property's range and default, stated once: its `ParamSpec` declares them
/// (gst-inspect-1.0 shows them, and GLib refuses a value outside the range, naming the
/// property and the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Number<T> {
    pub name: &'static str,
    pub min: T,
    pub max: T,
    pub default: T,
}

pub const PORT: Number<u32> = Number {
    name: "port",
    min: 1,
    max: 65535,
    default: 1883,
};
pub const QOS: Number<u32> = Number {
    name: "qos",
    min: 0,
    max: 2,
    default: 0,
};
/// MQTT 3.1 (level 3) is not supported.
pub const PROTOCOL: Number<u32> = Number {
    name: "protocol",
    min: 4,
    max: 5,
    default: 4,
};
pub const KEEP_ALIVE: Number<u32> = Number {
    name: "keep-alive",
    min: 0,
    max: 65535,
    default: 60,
};
/// Milliseconds; 30 s as DLSPS waits at most.
pub const MAX_RECONNECT_DELAY: Number<u32> = Number {
    name: "max-reconnect-delay",
    min: 100,
    max: 3_600_000,
    default: 30_000,
};
pub const JPEG_QUALITY: Number<u32> = Number {
    name: "jpeg-quality",
    min: 1,
    max: 100,
    default: 85,
};
pub const FRAME_INTERVAL: Number<u32> = Number {
    name: "frame-interval",
    min: 1,
    max: u32::MAX,
    default: 1,
};
pub const MAX_QUEUED_MESSAGES: Number<u32> = Number {
    name: "max-queued-messages",
    min: 1,
    max: u32::MAX,
    default: 256,
};
pub const MAX_QUEUED_BYTES: Number<u64> = Number {
    name: "max-queued-bytes",
    min: 1,
    max: u64::MAX,
    default: 64 * 1024 * 1024,
};
pub const MAX_MESSAGE_SIZE: Number<u32> = Number {
    name: "max-message-size",
    min: 1024,
    max: 256 * 1024 * 1024,
    default: 4 * 1024 * 1024,
};
pub const SPOOL_MAX_BYTES: Number<u64> = Number {
    name: "spool-max-bytes",
    min: 1024 * 1024,
    max: u64::MAX,
    default: 1024 * 1024 * 1024,
};
/// Seconds; 0: no age limit.
pub const SPOOL_MAX_AGE: Number<u32> = Number {
    name: "spool-max-age",
    min: 0,
    max: u32::MAX,
    default: 0,
};
/// Milliseconds.
pub const SPOOL_SYNC_INTERVAL: Number<u32> = Number {
    name: "spool-sync-interval",
    min: 1,
    max: 600_000,
    default: 500,
};
/// Out of 100 hand-overs while live messages and the spool's backlog both wait.
pub const SPOOL_REPLAY_SHARE: Number<u32> = Number {
    name: "spool-replay-share",
    min: 1,
    max: 100,
    default: 50,
};
/// Milliseconds.
pub const FLUSH_TIMEOUT: Number<u32> = Number {
    name: "flush-timeout",
    min: 0,
    max: 600_000,
    default: 5000,
};

/// A setting the configuration file can also provide, as a property left it: `None` when
/// the property was never set, `Some(None)` when it was set to nothing, which hides the
/// file's value too.
pub type Layered<T> = Option<Option<T>>;

/// What the user set with properties. A setting that the configuration file or the
/// environment can also provide is an `Option` (or [`Layered`]): `None` until a property
/// sets it, so that the file can never win over a property.
#[derive(Debug, Clone)]
pub struct Settings {
    pub host: Option<String>,
    pub port: Option<u32>,
    pub topic: Option<String>,
    pub qos: Option<u32>,
    pub retain: bool,
    pub protocol: Option<u32>,
    pub client_id: Layered<String>,
    pub clean_session: bool,
    pub keep_alive: u32,
    pub max_reconnect_delay_ms: u32,
    pub username: Layered<String>,
    pub password: Layered<Secret>,
    pub tls_ca_file: Layered<String>,
    pub tls_cert_file: Layered<String>,
    pub tls_key_file: Layered<String>,
    pub publish_frame: Option<bool>,
    pub jpeg_quality: u32,
    pub frame_interval: u32,
    pub message_format: MessageFormat,
    pub metadata_source: MetadataSource,
    pub source: Option<String>,
    pub tags: Option<String>,
    pub skip_empty: bool,
    pub add_sink_time: bool,
    pub add_tensor_data: bool,
    pub pipeline_name: Option<String>,
    pub pipeline_version: Option<String>,
    pub config: Option<String>,
    pub config_pipeline: Option<String>,
    pub max_queued_messages: u32,
    pub max_queued_bytes: u64,
    pub leaky: super::Leaky,
    pub max_message_size: u32,
    pub flush_timeout_ms: u32,
    pub shared_connection: Option<String>,
    pub spool_location: Option<String>,
    pub spool_max_bytes: u64,
    pub spool_max_age: u32,
    pub spool_sync: super::SpoolSync,
    pub spool_sync_interval: u32,
    pub spool_replay_share: u32,
    /// Why the `tags` value set last cannot be used; the element refuses to start with it.
    pub rejected_tags: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            host: None,
            port: None,
            topic: None,
            qos: None,
            retain: DEFAULT_RETAIN,
            protocol: None,
            client_id: None,
            clean_session: DEFAULT_CLEAN_SESSION,
            keep_alive: KEEP_ALIVE.default,
            max_reconnect_delay_ms: MAX_RECONNECT_DELAY.default,
            username: None,
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            publish_frame: None,
            jpeg_quality: JPEG_QUALITY.default,
            frame_interval: FRAME_INTERVAL.default,
            message_format: MessageFormat::default(),
            metadata_source: MetadataSource::default(),
            source: None,
            tags: None,
            skip_empty: DEFAULT_SKIP_EMPTY,
            add_sink_time: DEFAULT_ADD_SINK_TIME,
            add_tensor_data: DEFAULT_ADD_TENSOR_DATA,
            pipeline_name: None,
            pipeline_version: None,
            config: None,
            config_pipeline: None,
            max_queued_messages: MAX_QUEUED_MESSAGES.default,
            max_queued_bytes: MAX_QUEUED_BYTES.default,
            leaky: super::Leaky::default(),
            max_message_size: MAX_MESSAGE_SIZE.default,
            flush_timeout_ms: FLUSH_TIMEOUT.default,
            shared_connection: None,
            spool_location: None,
            spool_max_bytes: SPOOL_MAX_BYTES.default,
            spool_max_age: SPOOL_MAX_AGE.default,
            spool_sync: super::SpoolSync::default(),
            spool_sync_interval: SPOOL_SYNC_INTERVAL.default,
            spool_replay_share: SPOOL_REPLAY_SHARE.default,
            rejected_tags: None,
        }
    }
}

/// The configuration a started element runs with.
#[derive(Debug)]
pub struct Resolved {
    /// Its `tls` is left empty: the files in [`Resolved::tls`] are read at start.
    pub connection: ConnectionConfig,
    pub tls: Option<TlsFiles>,
    pub limits: Limits,
    pub message: MessageOptions,
    pub flush_timeout: Duration,
    pub spool: Option<SpoolSettings>,
    /// The shared connection to publish over; `None`: a connection of its own.
    pub sharing: Option<Sharing>,
    /// Settings that work but probably not as the user meant, for the element to post.
    pub warnings: Vec<String>,
}

/// The disk spool a started element publishes through.
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolSettings {
    /// `spool-location`: the spool is the folder named after `identity` in it.
    pub location: PathBuf,
    /// The client id the user set, which names the spool; `None`: the element's name does.
    pub identity: Option<String>,
    pub max_bytes: u64,
    pub max_age: Option<Duration>,
    pub sync: SyncPolicy,
    pub replay_share: u32,
}

impl SpoolSettings {
    /// The spool's folder for an element named `element`: `<location>/<identity>`, with
    /// the identity's `/` (and a leading `.`) replaced so that it stays one folder.
    pub fn dir(&self, element: &str) -> PathBuf {
        let identity = self.identity.as_deref().unwrap_or(element);
        let mut name: String = identity
            .chars()
            .map(|c| if c == '/' || c == '\0' { '_' } else { c })
            .collect();
        if name.starts_with('.') || name.is_empty() {
            name.insert(0, '_');
        }
        self.location.join(name)
    }
}

/// Reads the configuration file the settings name; an empty configuration without one.
/// `gst_pipeline` is the name of the GStreamer pipeline, which picks the pipeline entry of
/// a DLSPS `config.json` when `config-pipeline` does not.
pub fn load_config(
    settings: &Settings,
    gst_pipeline: &str,
) -> Result<PublisherConfig, SettingError> {
    match &settings.config {
        Some(path) => ConfigFile::read(Path::new(path))
            .and_then(|file| file.publisher(settings.config_pipeline.as_deref(), gst_pipeline))
            .map_err(|e| e.context("config")),
        None if settings.config_pipeline.is_some() => Err(
            "config-pipeline: is set but config is not: it picks a pipeline of a DLSPS \
                 config.json"
                .into(),
        ),
        None => Ok(PublisherConfig::default()),
    }
}

/// The settings in effect: `settings` over `file` over the environment (`env` looks a
/// variable up) over the defaults. Errors name the setting and the value.
pub fn resolve(
    settings: &Settings,
    file: &PublisherConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Resolved, SettingError> {
    let mut warnings = Vec::new();
    let path = settings.config.as_deref().unwrap_or_default();
    let place = if file.place.is_empty() {
        String::new()
    } else {
        format!(": {}", file.place)
    };
    if !file.unknown_keys.is_empty() {
        warnings.push(format!(
            "config: {path}{place} has keys this element does not know, ignored: {}",
            file.unknown_keys.join(", ")
        ));
    }
    warnings.extend(
        file.warnings
            .iter()
            .map(|warning| format!("config: {path}: {warning}")),
    );

    let host = match &settings.host {
        Some(host) => host.clone(),
        None => file
            .host
            .clone()
            .or_else(|| env("MQTT_HOST").filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.into()),
    };
    if host.is_empty() {
        return Err("host: the broker host is empty".into());
    }
    let port = match settings.port {
        Some(port) => tcp_port("port", port)?,
        None => match (file.port, env("MQTT_PORT").filter(|p| !p.is_empty())) {
            (Some(port), _) => port,
            (None, Some(text)) => parse_tcp_port("MQTT_PORT", &text)?,
            (None, None) => PORT.default as u16,
        },
    };

    let topic = settings
        .topic
        .clone()
        .or_else(|| file.topic.clone())
        .unwrap_or_else(|| DEFAULT_TOPIC.into());
    check_topic(&topic)?;
    let qos = match settings.qos {
        Some(level) => QoS::from_level(i64::from(level)).map_err(|e| format!("qos: {e}"))?,
        None => file.qos.unwrap_or_default(),
    };
    let protocol = match settings.protocol {
        Some(level) => {
            Protocol::from_level(i64::from(level)).map_err(|e| format!("protocol: {e}"))?
        }
        None => file.protocol.unwrap_or_default(),
    };
    // rumqttc's MQTT 5 client cannot keep alive more often than every 5 s, nor not at all.
    if protocol == Protocol::V5 && settings.keep_alive < 5 {
        return Err(format!(
            "keep-alive: {} s is not supported with protocol 5; use 5 s or more",
            settings.keep_alive
        )
        .into());
    }

    let client_id = settings
        .client_id
        .clone()
        .unwrap_or_else(|| file.client_id.clone());
    if !settings.clean_session && settings.client_id.is_none() && file.client_id.is_none() {
        warnings.push(
            "clean-session=false without a fixed client-id: the broker cannot resume the \
             session after a restart of the pipeline"
                .into(),
        );
    }
    let username = layered(&settings.username, &file.username);
    let password = layered(&settings.password, &file.password);
    let credentials = match (username, password) {
        (Some(user), password) => Some((user, password.unwrap_or_default())),
        (None, Some(_)) => return Err("password: is set but username is not".into()),
        (None, None) => None,
    };

    let cert = layered(&settings.tls_cert_file, &file.tls_cert_file);
    let key = layered(&settings.tls_key_file, &file.tls_key_file);
    let tls =
        match layered(&settings.tls_ca_file, &file.tls_ca_file) {
            Some(ca) => Some(TlsFiles { ca, cert, key }),
            None if cert.is_some() || key.is_some() => return Err(
                "tls-cert-file/tls-key-file: set, but TLS needs tls-ca-file (the CA that signs \
                 the broker's certificate)"
                    .into(),
            ),
            None => None,
        };

    let spool = settings
        .spool_location
        .clone()
        .or_else(|| file.spool_location.clone())
        .filter(|location| !location.is_empty())
        .map(|location| SpoolSettings {
            location: PathBuf::from(location),
            identity: client_id.clone().filter(|id| !id.is_empty()),
            max_bytes: settings.spool_max_bytes,
            max_age: (settings.spool_max_age > 0)
                .then(|| Duration::from_secs(u64::from(settings.spool_max_age))),
            sync: match settings.spool_sync {
                super::SpoolSync::Interval => SyncPolicy::Interval(Duration::from_millis(
                    u64::from(settings.spool_sync_interval),
                )),
                super::SpoolSync::Always => SyncPolicy::Always,
                super::SpoolSync::None => SyncPolicy::None,
            },
            replay_share: settings.spool_replay_share,
        });

    let sharing = settings
        .shared_connection
        .clone()
        .or_else(|| file.shared_connection.clone())
        .filter(|name| !name.is_empty())
        .map(|name| Sharing {
            name,
            tls: tls.clone(),
            fixed_client_id: client_id.as_ref().is_some_and(|id| !id.is_empty()),
        });
    if let (Some(sharing), Some(_)) = (&sharing, &spool) {
        return Err(format!(
            "shared-connection={:?}: cannot be combined with spool-location, which needs a \
             connection of its own; unset one of them",
            sharing.name
        )
        .into());
    }

    let max_message_size = settings.max_message_size as usize;
    let connection = ConnectionConfig {
        brokers: parse_brokers(&host, port)?,
        max_reconnect_delay: Duration::from_millis(u64::from(settings.max_reconnect_delay_ms)),
        client_id: client_id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(unique_client_id),
        clean_session: settings.clean_session,
        keep_alive: Duration::from_secs(u64::from(settings.keep_alive)),
        credentials,
        tls: None,
        protocol,
        topic,
        qos,
        retain: settings.retain,
        max_message_size,
    };
    let limits = Limits {
        max_messages: settings.max_queued_messages.max(1) as usize,
        max_bytes: settings.max_queued_bytes as usize,
        leaky: settings.leaky.into(),
    };
    let message = MessageOptions {
        filter: file.filter.as_ref().map(|config| {
            let mut filter = Filter::default();
            config.apply(&mut filter);
            filter
        }),
        publish_frame: settings
            .publish_frame
            .or(file.publish_frame)
            .unwrap_or(DEFAULT_PUBLISH_FRAME),
        jpeg_quality: settings.jpeg_quality as u8,
        frame_interval: u64::from(settings.frame_interval.max(1)),
        format: settings.message_format,
        metadata_source: settings.metadata_source,
        source: settings.source.clone(),
        tags: settings.tags.clone(),
        skip_empty: settings.skip_empty,
        add_sink_time: settings.add_sink_time,
        add_tensor_data: settings.add_tensor_data,
        pipeline_name: settings.pipeline_name.clone(),
        // DLSPS puts the name of the config.json pipeline there.
        pipeline_version: settings
            .pipeline_version
            .clone()
            .or_else(|| file.pipeline.clone())
            .unwrap_or_default(),
    };
    Ok(Resolved {
        connection,
        tls,
        limits,
        message,
        flush_timeout: Duration::from_millis(u64::from(settings.flush_timeout_ms)),
        spool,
        sharing,
        warnings,
    })
}

/// The brokers of a `host` value: `host`, `host:port`, `[v6 address]:port`, or several of
/// them separated by commas (failover); a broker without a port uses `port`.
pub fn parse_brokers(text: &str, port: u16) -> Result<Vec<Broker>, SettingError> {
    let mut brokers = Vec::new();
    for entry in text.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(format!("host: {text:?} has an empty entry").into());
        }
        let (host, port) = if let Some(rest) = entry.strip_prefix('[') {
            let Some((host, after)) = rest.split_once(']') else {
                return Err(format!("host: {entry:?} lacks the closing ]").into());
            };
            match after.strip_prefix(':') {
                Some(p) => (host, parse_port(entry, p)?),
                None if after.is_empty() => (host, port),
                None => return Err(format!("host: {entry:?} is not [address]:port").into()),
            }
        } else {
            match entry.rsplit_once(':') {
                // A bare IPv6 address has several colons and no port.
                Some((host, p)) if !host.contains(':') => (host, parse_port(entry, p)?),
                _ => (entry, port),
            }
        };
        if host.is_empty() {
            return Err(format!("host: {entry:?} has no host name").into());
        }
        brokers.push(Broker {
            host: host.to_owned(),
            port,
        });
    }
    Ok(brokers)
}

fn parse_port(entry: &str, text: &str) -> Result<u16, SettingError> {
    parse_tcp_port(format_args!("host: {entry:?}"), text).map_err(Into::into)
}

/// The value of a [`Layered`] setting: the property's when it was set, else the file's.
fn layered<T: Clone>(property: &Layered<T>, file: &Option<T>) -> Option<T> {
    property.clone().unwrap_or_else(|| file.clone())
}

/// A client id unique to this process and element instance.
pub fn unique_client_id() -> String {
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
pub fn parse_tags(text: &str) -> Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("tags: invalid JSON ({e}) in {text:?}"))?;
    if !value.is_object() {
        return Err(format!("tags: expected a JSON object, got {value}"));
    }
    Ok(value.to_string())
}

/// Checks a topic to publish to.
pub fn check_topic(topic: &str) -> Result<(), SettingError> {
    if topic.is_empty() {
        Err("topic: the topic is empty".into())
    } else if topic.contains(['+', '#']) {
        Err(format!(
            "topic: {topic:?} contains a wildcard (+ or #), which is only valid in subscriptions"
        )
        .into())
    } else if topic.contains('\0') {
        Err("topic: contains a NUL character".into())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(value: serde_json::Value) -> PublisherConfig {
        PublisherConfig::from_value(&value).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn resolved(settings: &Settings, file: &PublisherConfig) -> Resolved {
        resolve(settings, file, no_env).unwrap()
    }

    fn error(settings: &Settings, file: &PublisherConfig) -> String {
        resolve(settings, file, no_env).unwrap_err().to_string()
    }

    #[test]
    fn shared_connection_comes_from_the_property_or_the_file_and_refuses_a_spool() {
        let none = resolved(&Settings::default(), &PublisherConfig::default());
        assert!(none.sharing.is_none());
        let from_file = resolved(
            &Settings::default(),
            &file(json!({"shared_connection": "farm", "client_id": "farm-1",
                         "tls": {"ca_cert": "/ca.pem"}})),
        );
        let sharing = from_file.sharing.unwrap();
        assert_eq!(sharing.name, "farm");
        assert!(sharing.fixed_client_id);
        assert_eq!(sharing.tls.unwrap().ca, "/ca.pem");
        let property = Settings {
            shared_connection: Some("cams".into()),
            ..Settings::default()
        };
        let over_file = resolved(&property, &file(json!({"shared_connection": "farm"})));
        let sharing = over_file.sharing.unwrap();
        assert_eq!(sharing.name, "cams");
        assert!(
            !sharing.fixed_client_id,
            "a generated client id is not fixed"
        );
        let with_spool = Settings {
            spool_location: Some("/var/spool/x".into()),
            ..property
        };
        let e = error(&with_spool, &PublisherConfig::default());
        assert!(
            e.contains("shared-connection=\"cams\"") && e.contains("spool-location"),
            "{e}"
        );
    }

    #[test]
    fn defaults_without_properties_file_or_environment() {
        let r = resolved(&Settings::default(), &PublisherConfig::default());
        let c = &r.connection;
        assert_eq!(
            (c.brokers[0].host.as_str(), c.brokers[0].port),
            (DEFAULT_HOST, 1883)
        );
        assert_eq!(c.topic, DEFAULT_TOPIC);
        assert_eq!((c.qos, c.protocol), (QoS::AtMostOnce, Protocol::V311));
        assert!(c.client_id.starts_with("gstmqtt-"), "{}", c.client_id);
        assert!(c.credentials.is_none() && r.tls.is_none());
        assert_eq!(c.max_reconnect_delay, Duration::from_secs(30));
        assert!(!r.message.publish_frame && r.message.filter.is_none());
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn the_environment_gives_host_and_port_when_nothing_else_does() {
        let vars = env(&[("MQTT_HOST", "broker.example"), ("MQTT_PORT", "1884")]);
        let r = resolve(&Settings::default(), &PublisherConfig::default(), vars).unwrap();
        assert_eq!(
            (
                r.connection.brokers[0].host.as_str(),
                r.connection.brokers[0].port
            ),
            ("broker.example", 1884)
        );

        // Empty variables count as unset.
        let vars = env(&[("MQTT_HOST", ""), ("MQTT_PORT", "")]);
        let r = resolve(&Settings::default(), &PublisherConfig::default(), vars).unwrap();
        assert_eq!(
            (
                r.connection.brokers[0].host.as_str(),
                r.connection.brokers[0].port
            ),
            (DEFAULT_HOST, 1883)
        );
    }

    #[test]
    fn the_file_wins_over_the_environment() {
        let vars = env(&[("MQTT_HOST", "from-env"), ("MQTT_PORT", "1884")]);
        let f = file(json!({"host": "from-file", "port": 1885}));
        let r = resolve(&Settings::default(), &f, vars).unwrap();
        assert_eq!(
            (
                r.connection.brokers[0].host.as_str(),
                r.connection.brokers[0].port
            ),
            ("from-file", 1885)
        );
    }

    #[test]
    fn a_property_wins_over_the_file_and_the_environment() {
        let vars = env(&[("MQTT_HOST", "from-env"), ("MQTT_PORT", "1884")]);
        let f = file(json!({
            "host": "from-file", "port": 1885, "topic": "file/topic", "qos": 2,
            "protocol": 5, "publish_frame": true, "client_id": "file-id",
            "username": "file-user", "password": "file-password",
        }));
        let settings = Settings {
            host: Some("from-property".into()),
            port: Some(1886),
            topic: Some("property/topic".into()),
            qos: Some(1),
            protocol: Some(4),
            publish_frame: Some(false),
            client_id: Some(Some("property-id".into())),
            username: Some(Some("property-user".into())),
            ..Settings::default()
        };
        let r = resolve(&settings, &f, vars).unwrap();
        let c = &r.connection;
        assert_eq!(
            (c.brokers[0].host.as_str(), c.brokers[0].port),
            ("from-property", 1886)
        );
        assert_eq!(c.topic, "property/topic");
        assert_eq!((c.qos, c.protocol), (QoS::AtLeastOnce, Protocol::V311));
        assert_eq!(c.client_id, "property-id");
        assert!(!r.message.publish_frame);
        // The password the property did not set still comes from the file.
        let (user, password) = c.credentials.clone().unwrap();
        assert_eq!(
            (user.as_str(), password.expose()),
            ("property-user", "file-password")
        );
    }

    #[test]
    fn a_property_set_to_nothing_hides_the_files_value() {
        let f = file(json!({"client_id": "file-id", "tls": {"ca_cert": "/ca.pem"}}));
        let settings = Settings {
            client_id: Some(None),
            tls_ca_file: Some(None),
            ..Settings::default()
        };
        let r = resolved(&settings, &f);
        assert!(r.connection.client_id.starts_with("gstmqtt-"));
        assert!(r.tls.is_none());
        // Left alone, the file's values apply.
        let r = resolved(&Settings::default(), &f);
        assert_eq!(r.connection.client_id, "file-id");
        assert_eq!(r.tls.unwrap().ca, "/ca.pem");
    }

    #[test]
    fn the_files_tls_and_filter_are_used() {
        let f = file(json!({
            "tls": {"ca_cert": "/ca.pem", "client_cert": "/c.pem", "client_key": "/k.pem"},
            "filter": {"type": "detection", "label_score": {"box": 0.4}},
        }));
        let r = resolved(&Settings::default(), &f);
        let tls = r.tls.unwrap();
        assert_eq!(
            (tls.ca.as_str(), tls.cert.as_deref(), tls.key.as_deref()),
            ("/ca.pem", Some("/c.pem"), Some("/k.pem"))
        );
        assert_eq!(r.message.filter.unwrap().label_score["box"], 0.4);
    }

    #[test]
    fn errors_name_the_setting_and_the_value() {
        let bad_env = env(&[("MQTT_PORT", "99999")]);
        let err = resolve(&Settings::default(), &PublisherConfig::default(), bad_env)
            .unwrap_err()
            .to_string();
        assert_eq!(err, r#"MQTT_PORT: "99999" is not a TCP port (1..65535)"#);

        let none = PublisherConfig::default();
        let cases = [
            (
                Settings {
                    host: Some(String::new()),
                    ..Settings::default()
                },
                "host: the broker host is empty",
            ),
            (
                Settings {
                    topic: Some("a/+/b".into()),
                    ..Settings::default()
                },
                "topic: \"a/+/b\" contains a wildcard",
            ),
            (
                Settings {
                    topic: Some(String::new()),
                    ..Settings::default()
                },
                "topic: the topic is empty",
            ),
            (
                Settings {
                    protocol: Some(3),
                    ..Settings::default()
                },
                "protocol: MQTT 3.1 (protocol 3) is not supported",
            ),
            (
                Settings {
                    password: Some(Some(Secret::new("pw".into()))),
                    ..Settings::default()
                },
                "password: is set but username is not",
            ),
            (
                Settings {
                    tls_cert_file: Some(Some("/c.pem".into())),
                    ..Settings::default()
                },
                "tls-cert-file/tls-key-file: set, but TLS needs tls-ca-file",
            ),
        ];
        for (settings, expected) in cases {
            let err = error(&settings, &none);
            assert!(err.starts_with(expected), "{err:?} is not {expected:?}");
        }
        // The file's protocol counts for the keep-alive check.
        let settings = Settings {
            keep_alive: 2,
            ..Settings::default()
        };
        let err = error(&settings, &file(json!({"protocol": 5})));
        assert!(
            err.starts_with("keep-alive: 2 s is not supported with protocol 5"),
            "{err}"
        );
    }

    #[test]
    fn a_property_wins_even_over_a_bad_environment() {
        let bad_env = env(&[("MQTT_PORT", "nope")]);
        let settings = Settings {
            port: Some(1884),
            ..Settings::default()
        };
        let r = resolve(&settings, &PublisherConfig::default(), bad_env).unwrap();
        assert_eq!(r.connection.brokers[0].port, 1884);
    }

    #[test]
    fn warnings_for_unknown_keys_and_a_session_that_cannot_be_resumed() {
        let settings = Settings {
            config: Some("/etc/pipeline.json".into()),
            clean_session: false,
            ..Settings::default()
        };
        let r = resolved(&settings, &file(json!({"qso": 1})));
        assert_eq!(
            r.warnings,
            [
                "config: /etc/pipeline.json has keys this element does not know, ignored: qso",
                "clean-session=false without a fixed client-id: the broker cannot resume the \
                 session after a restart of the pipeline",
            ]
        );
        // A fixed id from the file is enough.
        let r = resolved(&settings, &file(json!({"client_id": "cam-1"})));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }

    #[test]
    fn tags_must_be_a_json_object() {
        assert_eq!(
            parse_tags(r#"{ "site": "dock-3" }"#).unwrap(),
            r#"{"site":"dock-3"}"#
        );
        assert!(parse_tags("[1]")
            .unwrap_err()
            .starts_with("tags: expected a JSON object"));
        assert!(parse_tags("{")
            .unwrap_err()
            .starts_with("tags: invalid JSON"));
    }
    #[test]
    fn a_config_json_pipeline_names_the_version_and_the_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"config": {"pipelines": [
                {"name": "dock", "pipeline": "..", "mqtt_publisher": {"topic": "dock/results", "qso": 1}},
                {"name": "gate", "pipeline": ".."}
            ]}}"#,
        )
        .unwrap();
        let settings = Settings {
            config: Some(path.display().to_string()),
            ..Settings::default()
        };
        let file = load_config(&settings, "dock").unwrap();
        let r = resolved(&settings, &file);
        assert_eq!(r.connection.topic, "dock/results");
        assert_eq!(r.message.pipeline_version, "dock");
        assert_eq!(
            r.warnings,
            [format!(
                "config: {}: pipeline \"dock\" has keys this element does not know, ignored: qso",
                path.display()
            )]
        );
        // The property wins over the entry's name.
        let named = Settings {
            pipeline_version: Some("v2".into()),
            ..settings.clone()
        };
        assert_eq!(resolved(&named, &file).message.pipeline_version, "v2");

        // The other entry has no mqtt_publisher: the defaults, and a warning.
        let gate = Settings {
            config_pipeline: Some("gate".into()),
            ..settings.clone()
        };
        let file = load_config(&gate, "dock").unwrap();
        let r = resolved(&gate, &file);
        assert_eq!(r.connection.topic, DEFAULT_TOPIC);
        assert!(
            r.warnings[0].ends_with(
                "pipeline \"gate\" has no \"mqtt_publisher\": DLSPS publishes \
                 nothing over MQTT for it; only the element's properties and defaults apply"
            ),
            "{:?}",
            r.warnings
        );

        // Neither config-pipeline nor the GStreamer pipeline's name picks one.
        let err = load_config(&settings, "pipeline0").unwrap_err();
        assert_eq!(
            err,
            SettingError::Invalid(format!(
                "config: {}: config.pipelines has 2 pipelines (\"dock\", \"gate\") and none is \
                 named like the GStreamer pipeline (\"pipeline0\"): set config-pipeline to the \
                 one to use",
                path.display()
            ))
        );
        // config-pipeline without config.
        let alone = Settings {
            config_pipeline: Some("dock".into()),
            ..Settings::default()
        };
        assert!(load_config(&alone, "p")
            .unwrap_err()
            .to_string()
            .starts_with("config-pipeline: is set but config is not"));
    }

    #[test]
    fn host_takes_a_list_of_brokers_for_failover() {
        let b = |host: &str, port| Broker {
            host: host.into(),
            port,
        };
        assert_eq!(parse_brokers("h1", 1883).unwrap(), [b("h1", 1883)]);
        assert_eq!(
            parse_brokers("h1:1884, h2 ,[::1]:1885,::1", 1883).unwrap(),
            [b("h1", 1884), b("h2", 1883), b("::1", 1885), b("::1", 1883)]
        );
        for (bad, words) in [
            ("h1:abc", "\"abc\" is not a TCP port"),
            ("h1,,h2", "empty entry"),
            ("[::1", "closing ]"),
            (":1883", "no host name"),
            ("h1:70000", "not a TCP port"),
        ] {
            let error = parse_brokers(bad, 1883).unwrap_err().to_string();
            assert!(error.contains(words), "{bad}: {error}");
        }
        // A JSON array in the configuration file.
        let f = file(json!({"host": ["n1:4001", "n2:4002"]}));
        let r = resolve(&Settings::default(), &f, no_env).unwrap();
        assert_eq!(r.connection.brokers, [b("n1", 4001), b("n2", 4002)]);
    }
}
