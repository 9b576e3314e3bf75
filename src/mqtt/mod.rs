// SPDX-License-Identifier: MPL-2.0

//! The MQTT connection: a bounded queue per sink fed by its streaming thread, and a
//! connection task, a sink's own or shared by the sinks of one `shared-connection` name, on
//! a tokio runtime all the sinks of the process share, that owns rumqttc's event loop,
//! reconnects with backoff and accounts for every message of each sink.

mod backlog;
mod backoff;
mod connection;
mod queue;
mod session;
mod spooler;
mod tracker;
mod worker;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls;

pub use connection::{Sharing, StartError};
/// Locks `mutex` even when a thread panicked holding it. The sink's shared state (the
/// tracker, the spool's backlog) is updated in steps that each leave it whole, and a panic
/// in one thread (the spooler's, which reports it) must not take the others down with it.
pub(crate) fn relock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub use queue::{Bound, DropEpisode, Leaky, Limits, Message, Overflow, Pushed, Queue};
pub use spooler::Policies as SpoolPolicies;
pub use tracker::Stats;
pub use worker::{
    runtime_tasks as connection_tasks, Flushed, Notice, SizeLimit, SpoolStart, Worker,
    DEFAULT_THREADS as DEFAULT_CONNECTION_THREADS, THREADS_ENV as CONNECTION_THREADS_ENV,
    THREAD_NAME as CONNECTION_THREAD_NAME,
};

/// The MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

impl Protocol {
    /// The protocol from its level as DLSPS configurations write it.
    pub fn from_level(level: i64) -> Result<Self, String> {
        match level {
            4 => Ok(Protocol::V311),
            5 => Ok(Protocol::V5),
            3 => Err(
                "MQTT 3.1 (protocol 3) is not supported: use 4 (MQTT 3.1.1) or 5 (MQTT 5)".into(),
            ),
            other => Err(format!(
                "unknown protocol {other}: use 4 (MQTT 3.1.1) or 5 (MQTT 5)"
            )),
        }
    }

    pub fn level(self) -> u32 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Quality of service of the publishes.
// The names MQTT gives the three levels.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum QoS {
    #[default]
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl QoS {
    pub fn from_level(level: i64) -> Result<Self, String> {
        match level {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(format!("QoS {other} does not exist: use 0, 1 or 2")),
        }
    }

    pub fn level(self) -> u32 {
        self as u32
    }

    /// The QoS of a level a broker announced (MQTT 5 Maximum QoS), if valid.
    pub fn from_granted(level: u8) -> Option<Self> {
        QoS::from_level(i64::from(level)).ok()
    }

    fn v4(self) -> rumqttc::QoS {
        match self {
            QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
            QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }

    fn v5(self) -> rumqttc::v5::mqttbytes::QoS {
        use rumqttc::v5::mqttbytes::QoS as Q;
        match self {
            QoS::AtMostOnce => Q::AtMostOnce,
            QoS::AtLeastOnce => Q::AtLeastOnce,
            QoS::ExactlyOnce => Q::ExactlyOnce,
        }
    }
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One broker to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Everything the worker needs to connect and publish.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The brokers, tried in turn (failover); at least one.
    pub brokers: Vec<Broker>,
    /// The longest wait between two passes over the brokers (see `backoff`).
    pub max_reconnect_delay: Duration,
    pub client_id: String,
    pub clean_session: bool,
    pub keep_alive: Duration,
    pub credentials: Option<(String, Secret)>,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub protocol: Protocol,
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    /// Largest payload the worker will ever be handed.
    pub max_message_size: usize,
}
