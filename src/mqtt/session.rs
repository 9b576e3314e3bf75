// SPDX-License-Identifier: MPL-2.0

//! One rumqttc client and event loop, MQTT 3.1.1 or 5, behind a single interface that
//! speaks in the few events the worker cares about.

use rumqttc::tokio_rustls::rustls;
use rumqttc::v5;
use rumqttc::{NetworkOptions, Transport};

use super::{ConnectionConfig, Protocol, QoS};

/// What the worker needs to know about an event-loop event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        session_present: bool,
        /// The largest packet the broker accepts, when it says (MQTT 5).
        max_packet_size: Option<u32>,
    },
    /// A publish was written to the socket (`pkid` 0 for QoS 0).
    Written {
        pkid: u16,
    },
    /// A QoS 1/2 publish completed (PUBACK / PUBCOMP).
    Completed {
        pkid: u16,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    Other,
}

/// The two protocol flavours of rumqttc.
pub enum Session {
    V4 {
        client: rumqttc::AsyncClient,
        eventloop: Box<rumqttc::EventLoop>,
    },
    V5 {
        client: v5::AsyncClient,
        eventloop: Box<v5::EventLoop>,
    },
}

/// Size of rumqttc's request channel; the worker never has more than this in flight.
pub const REQUEST_CHANNEL: usize = 64;
/// QoS 1/2 publishes written and not yet acknowledged, at most.
const QOS_INFLIGHT: u16 = 100;

fn network_options() -> NetworkOptions {
    let mut options = NetworkOptions::new();
    // One small message per frame: never wait for Nagle's algorithm.
    options.set_tcp_nodelay(true);
    options.set_connection_timeout(5);
    options
}

impl Session {
    pub fn new(config: &ConnectionConfig) -> Self {
        let transport = match &config.tls {
            Some(tls) => Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())),
            None => Transport::Tcp,
        };
        // Leave headroom over the largest payload for the fixed header and topic.
        let max_packet = config.max_message_size + config.topic.len() + 64;
        match config.protocol {
            Protocol::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(&config.client_id, &config.host, config.port);
                options
                    .set_keep_alive(config.keep_alive)
                    .set_clean_session(config.clean_session)
                    .set_max_packet_size(max_packet, max_packet)
                    .set_inflight(QOS_INFLIGHT)
                    .set_transport(transport);
                if let Some((user, password)) = &config.credentials {
                    options.set_credentials(user, password.expose());
                }
                let (client, mut eventloop) = rumqttc::AsyncClient::new(options, REQUEST_CHANNEL);
                eventloop.set_network_options(network_options());
                Session::V4 {
                    client,
                    eventloop: Box::new(eventloop),
                }
            }
            Protocol::V5 => {
                let mut options =
                    v5::MqttOptions::new(&config.client_id, &config.host, config.port);
                options
                    .set_keep_alive(config.keep_alive)
                    .set_clean_start(config.clean_session)
                    .set_max_packet_size(Some(max_packet as u32))
                    .set_transport(transport);
                if !config.clean_session {
                    // MQTT 5 ends a session at disconnect unless told to keep it.
                    options.set_session_expiry_interval(Some(u32::MAX));
                }
                // As MQTT 3.1.1's default: rumqttc would otherwise size its in-flight
                // window for 65,535 publishes.
                options.set_outgoing_inflight_upper_limit(QOS_INFLIGHT);
                if let Some((user, password)) = &config.credentials {
                    options.set_credentials(user, password.expose());
                }
                options.set_network_options(network_options());
                let (client, eventloop) = v5::AsyncClient::new(options, REQUEST_CHANNEL);
                Session::V5 {
                    client,
                    eventloop: Box::new(eventloop),
                }
            }
        }
    }

    /// Drives the connection until the next event. Errors are connection losses, in words.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Session::V4 { eventloop, .. } => {
                use rumqttc::{ConnectionError, Event as E, Outgoing, Packet};
                let event = eventloop.poll().await.map_err(|e| {
                    let port = eventloop.mqtt_options.broker_address().1;
                    match &e {
                        ConnectionError::Tls(tls) => with_tls_hint(e.to_string(), tls, port),
                        _ => e.to_string(),
                    }
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::Connected {
                        session_present: ack.session_present,
                        max_packet_size: None,
                    },
                    E::Incoming(Packet::PubAck(ack)) => Event::Completed { pkid: ack.pkid },
                    E::Incoming(Packet::PubComp(comp)) => Event::Completed { pkid: comp.pkid },
                    E::Outgoing(Outgoing::Publish(pkid)) => Event::Written { pkid },
                    E::Outgoing(Outgoing::Disconnect) => Event::DisconnectSent,
                    _ => Event::Other,
                })
            }
            Session::V5 { eventloop, .. } => {
                use v5::mqttbytes::v5::Packet;
                use v5::{ConnectionError, Event as E};
                let event = eventloop.poll().await.map_err(|e| {
                    let port = eventloop.options.broker_address().1;
                    match &e {
                        ConnectionError::Tls(tls) => with_tls_hint(e.to_string(), tls, port),
                        _ => e.to_string(),
                    }
                })?;
                Ok(match event {
                    E::Incoming(Packet::ConnAck(ack)) => Event::Connected {
                        session_present: ack.session_present,
                        max_packet_size: ack.properties.and_then(|p| p.max_packet_size),
                    },
                    E::Incoming(Packet::PubAck(ack)) => Event::Completed { pkid: ack.pkid },
                    E::Incoming(Packet::PubComp(comp)) => Event::Completed { pkid: comp.pkid },
                    E::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Event::Written { pkid },
                    E::Outgoing(rumqttc::Outgoing::Disconnect) => Event::DisconnectSent,
                    _ => Event::Other,
                })
            }
        }
    }

    /// Asks rumqttc to send DISCONNECT; the event loop reports [`Event::DisconnectSent`].
    pub fn request_disconnect(&self) -> bool {
        match self {
            Session::V4 { client, .. } => client.try_disconnect().is_ok(),
            Session::V5 { client, .. } => client.try_disconnect().is_ok(),
        }
    }

    /// A handle that can publish from another task of the worker's runtime.
    pub fn publisher(&self) -> Publisher {
        match self {
            Session::V4 { client, .. } => Publisher::V4(client.clone()),
            Session::V5 { client, .. } => Publisher::V5(client.clone()),
        }
    }
}

/// `text`, the words of a TLS failure, with a hint when the failure looks like a port that
/// does not speak TLS: the broker closed the connection during the handshake (mosquitto's
/// plain listener reads the ClientHello as a malformed MQTT packet), or answered it with
/// bytes that are not TLS. rustls alone says "Connection reset by peer".
fn with_tls_hint(text: String, error: &rumqttc::TlsError, port: u16) -> String {
    use std::io::ErrorKind;
    let rumqttc::TlsError::Io(io) = error else {
        return text;
    };
    let not_tls = || {
        io.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .is_some_and(|e| matches!(e, rustls::Error::InvalidMessage(_)))
    };
    let what = match io.kind() {
        ErrorKind::ConnectionReset
        | ErrorKind::ConnectionAborted
        | ErrorKind::UnexpectedEof
        | ErrorKind::BrokenPipe => "the broker closed the connection during the TLS handshake",
        ErrorKind::InvalidData if not_tls() => {
            "the broker answered the TLS handshake with something that is not TLS"
        }
        _ => return text,
    };
    format!("{text} (is port {port} a TLS port? {what})")
}

/// Hands publishes to a [`Session`]'s event loop.
#[derive(Clone)]
pub enum Publisher {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Publisher {
    /// Queues a publish in rumqttc's request channel, waiting while it is full.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        match self {
            Publisher::V4(client) => client
                .publish(topic, qos.v4(), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Publisher::V5(client) => client
                .publish(topic, qos.v5(), retain, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn a_handshake_cut_off_or_answered_in_plain_text_asks_whether_the_port_speaks_tls() {
        let cut_off = [
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::UnexpectedEof,
            io::ErrorKind::BrokenPipe,
            io::ErrorKind::ConnectionAborted,
        ];
        for kind in cut_off {
            let error = rumqttc::TlsError::Io(io::Error::from(kind));
            assert_eq!(
                with_tls_hint("TLS: I/O: reset".into(), &error, 1883),
                "TLS: I/O: reset (is port 1883 a TLS port? the broker closed the connection \
                 during the TLS handshake)",
                "{kind:?}"
            );
        }
        let garbage = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let error = rumqttc::TlsError::Io(io::Error::new(io::ErrorKind::InvalidData, garbage));
        assert!(with_tls_hint("x".into(), &error, 1883).ends_with(
            "(is port 1883 a TLS port? the broker answered the TLS handshake with something \
             that is not TLS)"
        ));
    }

    #[test]
    fn other_tls_failures_keep_their_words() {
        // A certificate the client does not trust is a TLS broker's answer.
        let untrusted = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let error = rumqttc::TlsError::Io(io::Error::new(io::ErrorKind::InvalidData, untrusted));
        assert_eq!(with_tls_hint("words".into(), &error, 8883), "words");
        let error = rumqttc::TlsError::Io(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(with_tls_hint("words".into(), &error, 8883), "words");
    }
}
