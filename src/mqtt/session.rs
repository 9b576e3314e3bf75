// SPDX-License-Identifier: MPL-2.0

//! One rumqttc client and event loop, MQTT 3.1.1 or 5, behind a single interface that
//! speaks in the few events the worker cares about, names what a broker refused, and
//! works around two ways rumqttc 0.25 loses publishes across a reconnection (see
//! [`Session::take_unsent`]).

use bytes::Bytes;
use rumqttc::tokio_rustls::rustls;
use rumqttc::v5;
use rumqttc::{NetworkOptions, Transport};

use super::{Broker, ConnectionConfig, Protocol, QoS};

/// What the worker needs to know about an event-loop event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The broker accepted the connection.
    Connected {
        session_present: bool,
        /// The largest packet the broker accepts, when it says (MQTT 5).
        max_packet_size: Option<u32>,
        /// The highest QoS the broker accepts, when it says (MQTT 5).
        max_qos: Option<u8>,
    },
    /// A publish was written to the socket (`pkid` 0 for QoS 0).
    Written {
        pkid: u16,
    },
    /// The broker received a QoS 2 publish (PUBREC): it owns the message now.
    Received {
        pkid: u16,
    },
    /// A QoS 1/2 publish completed: PUBACK (`puback`) or PUBCOMP.
    Completed {
        pkid: u16,
        puback: bool,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    Other,
}

/// What a broker refused, in a way a retry will not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// CONNACK "unacceptable protocol version" (NATS answers MQTT 5 so).
    ProtocolVersion,
    /// The broker closed the connection without answering an MQTT 5 CONNECT (RabbitMQ 3
    /// does). A guess: only a repeat makes it a refusal.
    ClosedOnMqtt5Connect,
    /// CONNACK "bad user name or password".
    BadCredentials,
    /// CONNACK "not authorized".
    NotAuthorized,
    /// CONNACK "identifier rejected" / "client identifier not valid".
    ClientId,
    /// Another CONNACK refusal that will not change by itself (banned, bad authentication
    /// method), by its MQTT name.
    Other(&'static str),
}

impl Refusal {
    /// Plain words: what the broker refused and what to change.
    pub fn describe(self, config: &ConnectionConfig) -> String {
        match self {
            Refusal::ProtocolVersion => match config.protocol {
                Protocol::V5 => "the broker does not accept MQTT 5 (CONNACK: unacceptable \
                                 protocol version); set protocol=4 (MQTT 3.1.1)"
                    .into(),
                Protocol::V311 => "the broker does not accept MQTT 3.1.1 (CONNACK: \
                                   unacceptable protocol version); set protocol=5"
                    .into(),
            },
            Refusal::ClosedOnMqtt5Connect => "the broker closed the connection instead of \
                 accepting the MQTT 5 CONNECT, as brokers that speak only MQTT 3.1.1 do \
                 (RabbitMQ 3, NATS 2); set protocol=4 (MQTT 3.1.1)"
                .into(),
            Refusal::BadCredentials => match &config.credentials {
                Some((user, _)) => format!(
                    "the broker refused the user name {user:?} or its password (CONNACK: bad \
                     user name or password); check username and password"
                ),
                None => "the broker requires a user name and password (CONNACK: bad user \
                         name or password); set username and password"
                    .into(),
            },
            Refusal::NotAuthorized => {
                let who = match &config.credentials {
                    Some((user, _)) => format!("user {user:?}"),
                    None => "anonymous clients".into(),
                };
                format!(
                    "the broker does not authorize {who} to connect (CONNACK: not \
                     authorized, as mosquitto and NATS answer a wrong password); check username and \
                     password, and that the broker lets the user connect (RabbitMQ: \
                     permissions on its vhost)"
                )
            }
            Refusal::ClientId => format!(
                "the broker rejected the client id {:?} (CONNACK: identifier rejected); set a \
                 client-id it accepts (MQTT 3.1.1 guarantees 1 to 23 letters and digits)",
                config.client_id
            ),
            Refusal::Other(code) => {
                format!("the broker refused the connection (CONNACK: {code}); see its log")
            }
        }
    }

    /// Whether one answer is enough to conclude (a guess needs a repeat).
    pub fn definitive(self) -> bool {
        self != Refusal::ClosedOnMqtt5Connect
    }
}

/// A lost connection or a failed attempt.
#[derive(Debug)]
pub struct Failure {
    /// In words (rumqttc's, or the refusal's).
    pub reason: String,
    pub refusal: Option<Refusal>,
    /// Events rumqttc had produced and not yet returned when the connection failed.
    pub stale: Vec<Event>,
    /// Publishes rumqttc held but had never written, taken back by [`Session::take_unsent`].
    pub unsent: usize,
    /// The connection was up (CONNACK received) when it failed.
    pub was_connected: bool,
}

/// The two protocol flavours of rumqttc.
pub enum Session {
    V4 {
        client: rumqttc::AsyncClient,
        eventloop: Box<rumqttc::EventLoop>,
        connected: bool,
    },
    V5 {
        client: v5::AsyncClient,
        eventloop: Box<v5::EventLoop>,
        connected: bool,
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

fn transport(config: &ConnectionConfig) -> Transport {
    match &config.tls {
        Some(tls) => Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls.clone())),
        None => Transport::Tcp,
    }
}

/// Leave headroom over the largest payload for the fixed header and topic.
fn max_packet(config: &ConnectionConfig) -> usize {
    config.max_message_size + config.topic.len() + 64
}

fn v4_options(config: &ConnectionConfig, broker: &Broker) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(&config.client_id, &broker.host, broker.port);
    let max_packet = max_packet(config);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_session(config.clean_session)
        .set_max_packet_size(max_packet, max_packet)
        .set_inflight(QOS_INFLIGHT)
        .set_transport(transport(config));
    if let Some((user, password)) = &config.credentials {
        options.set_credentials(user, password.expose());
    }
    options
}

fn v5_options(config: &ConnectionConfig, broker: &Broker) -> v5::MqttOptions {
    let mut options = v5::MqttOptions::new(&config.client_id, &broker.host, broker.port);
    options
        .set_keep_alive(config.keep_alive)
        .set_clean_start(config.clean_session)
        .set_max_packet_size(Some(max_packet(config) as u32))
        .set_transport(transport(config));
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
    options
}

fn v4_event(event: rumqttc::Event) -> Event {
    use rumqttc::{Event as E, Outgoing, Packet};
    match event {
        E::Incoming(Packet::ConnAck(ack)) => Event::Connected {
            session_present: ack.session_present,
            max_packet_size: None,
            max_qos: None,
        },
        E::Incoming(Packet::PubAck(ack)) => Event::Completed {
            pkid: ack.pkid,
            puback: true,
        },
        E::Incoming(Packet::PubRec(rec)) => Event::Received { pkid: rec.pkid },
        E::Incoming(Packet::PubComp(comp)) => Event::Completed {
            pkid: comp.pkid,
            puback: false,
        },
        E::Outgoing(Outgoing::Publish(pkid)) => Event::Written { pkid },
        E::Outgoing(Outgoing::Disconnect) => Event::DisconnectSent,
        _ => Event::Other,
    }
}

fn v5_event(event: v5::Event) -> Event {
    use v5::mqttbytes::v5::Packet;
    use v5::Event as E;
    match event {
        E::Incoming(Packet::ConnAck(ack)) => {
            let properties = ack.properties.as_ref();
            Event::Connected {
                session_present: ack.session_present,
                max_packet_size: properties.and_then(|p| p.max_packet_size),
                max_qos: properties.and_then(|p| p.max_qos),
            }
        }
        E::Incoming(Packet::PubAck(ack)) => Event::Completed {
            pkid: ack.pkid,
            puback: true,
        },
        E::Incoming(Packet::PubRec(rec)) => Event::Received { pkid: rec.pkid },
        E::Incoming(Packet::PubComp(comp)) => Event::Completed {
            pkid: comp.pkid,
            puback: false,
        },
        E::Outgoing(rumqttc::Outgoing::Publish(pkid)) => Event::Written { pkid },
        E::Outgoing(rumqttc::Outgoing::Disconnect) => Event::DisconnectSent,
        _ => Event::Other,
    }
}

/// An I/O error that means the peer closed or reset the connection.
fn closed_by_peer(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
    )
}

fn v4_refusal(code: rumqttc::ConnectReturnCode) -> Option<Refusal> {
    use rumqttc::ConnectReturnCode as C;
    match code {
        C::RefusedProtocolVersion => Some(Refusal::ProtocolVersion),
        C::BadClientId => Some(Refusal::ClientId),
        C::BadUserNamePassword => Some(Refusal::BadCredentials),
        C::NotAuthorized => Some(Refusal::NotAuthorized),
        C::Success | C::ServiceUnavailable => None,
    }
}

fn v5_refusal(code: v5::mqttbytes::v5::ConnectReturnCode) -> Option<Refusal> {
    use v5::mqttbytes::v5::ConnectReturnCode as C;
    Some(match code {
        C::RefusedProtocolVersion | C::UnsupportedProtocolVersion => Refusal::ProtocolVersion,
        C::BadClientId | C::ClientIdentifierNotValid => Refusal::ClientId,
        C::BadUserNamePassword => Refusal::BadCredentials,
        C::NotAuthorized => Refusal::NotAuthorized,
        C::Banned => Refusal::Other("banned"),
        C::BadAuthenticationMethod => Refusal::Other("bad authentication method"),
        // Busy, unavailable, rate limits, moved: another attempt may get through.
        _ => return None,
    })
}

impl Session {
    pub fn new(config: &ConnectionConfig, broker: &Broker) -> Self {
        match config.protocol {
            Protocol::V311 => {
                let (client, mut eventloop) =
                    rumqttc::AsyncClient::new(v4_options(config, broker), REQUEST_CHANNEL);
                eventloop.set_network_options(network_options());
                Session::V4 {
                    client,
                    eventloop: Box::new(eventloop),
                    connected: false,
                }
            }
            Protocol::V5 => {
                let (client, eventloop) =
                    v5::AsyncClient::new(v5_options(config, broker), REQUEST_CHANNEL);
                Session::V5 {
                    client,
                    eventloop: Box::new(eventloop),
                    connected: false,
                }
            }
        }
    }

    /// Connects to `broker` from the next attempt on (failover), keeping the session
    /// state (what is to be sent again if the broker has the session).
    pub fn set_broker(&mut self, config: &ConnectionConfig, broker: &Broker) {
        match self {
            Session::V4 { eventloop, .. } => eventloop.mqtt_options = v4_options(config, broker),
            Session::V5 { eventloop, .. } => eventloop.options = v5_options(config, broker),
        }
    }

    /// Drives the connection until the next event. A failure says why, in words, and
    /// carries what rumqttc had not handed out yet ([`Failure::stale`]); the publishes it
    /// had never written are taken back ([`Failure::unsent`]).
    pub async fn poll(&mut self) -> Result<Event, Failure> {
        let result = match self {
            Session::V4 {
                eventloop,
                connected,
                ..
            } => {
                use rumqttc::ConnectionError;
                let was_connected = *connected;
                match eventloop.poll().await {
                    Ok(event) => {
                        let event = v4_event(event);
                        if matches!(event, Event::Connected { .. }) {
                            *connected = true;
                        }
                        Ok(event)
                    }
                    Err(e) => {
                        *connected = false;
                        let port = eventloop.mqtt_options.broker_address().1;
                        let (reason, refusal) = match &e {
                            ConnectionError::Tls(tls) => {
                                (with_tls_hint(e.to_string(), tls, port), None)
                            }
                            ConnectionError::ConnectionRefused(code) => {
                                (e.to_string(), v4_refusal(*code))
                            }
                            _ => (e.to_string(), None),
                        };
                        Err(Failure {
                            reason,
                            refusal,
                            stale: Vec::new(),
                            unsent: 0,
                            was_connected,
                        })
                    }
                }
            }
            Session::V5 {
                eventloop,
                connected,
                ..
            } => {
                use v5::ConnectionError;
                let was_connected = *connected;
                match eventloop.poll().await {
                    Ok(event) => {
                        let event = v5_event(event);
                        if matches!(event, Event::Connected { .. }) {
                            *connected = true;
                        }
                        Ok(event)
                    }
                    Err(e) => {
                        *connected = false;
                        let port = eventloop.options.broker_address().1;
                        let (reason, refusal) = match &e {
                            ConnectionError::Tls(tls) => {
                                (with_tls_hint(e.to_string(), tls, port), None)
                            }
                            ConnectionError::ConnectionRefused(code) => {
                                (e.to_string(), v5_refusal(*code))
                            }
                            // An MQTT 3.1.1 CONNACK refusing the protocol (code 1), read as
                            // MQTT 5: not a valid MQTT 5 reason code.
                            ConnectionError::MqttState(state)
                                if format!("{state:?}").contains("InvalidConnectReturnCode(1)") =>
                            {
                                (e.to_string(), Some(Refusal::ProtocolVersion))
                            }
                            ConnectionError::MqttState(v5::StateError::ConnFail { reason }) => {
                                (e.to_string(), v5_refusal(*reason))
                            }
                            ConnectionError::MqttState(v5::StateError::ConnectionAborted)
                                if !was_connected =>
                            {
                                (e.to_string(), Some(Refusal::ClosedOnMqtt5Connect))
                            }
                            ConnectionError::Io(io) if !was_connected && closed_by_peer(io) => {
                                (e.to_string(), Some(Refusal::ClosedOnMqtt5Connect))
                            }
                            _ => (e.to_string(), None),
                        };
                        Err(Failure {
                            reason,
                            refusal,
                            stale: Vec::new(),
                            unsent: 0,
                            was_connected,
                        })
                    }
                }
            }
        };
        result.map_err(|mut failure| {
            failure.stale = self.take_stale_events();
            failure.unsent = self.take_unsent();
            failure
        })
    }

    /// Events rumqttc queued before the connection failed and would hand out after the
    /// next CONNACK (a write it reported before the socket failed, an acknowledgement
    /// read in the same batch).
    fn take_stale_events(&mut self) -> Vec<Event> {
        match self {
            Session::V4 { eventloop, .. } => {
                eventloop.state.events.drain(..).map(v4_event).collect()
            }
            Session::V5 { eventloop, .. } => {
                eventloop.state.events.drain(..).map(v5_event).collect()
            }
        }
    }

    /// Takes back the publishes rumqttc holds but never wrote, returning how many: those
    /// that were in its request channel when the connection failed (it moves them to
    /// `pending` with packet id 0) and the one parked on a packet-id collision. The worker
    /// queues them again.
    ///
    /// rumqttc 0.25 loses such publishes on a resumed session: it sends `pending` in order,
    /// the resent publishes keep their packet ids while the never-written ones draw new
    /// ids from a counter that was not reset, so they collide with resent publishes not
    /// yet acknowledged; each collision replaces the one parked before it, which is then
    /// never sent (its frame never arrives and it stays "in flight"). And `clean()` leaves
    /// the parked publish out of `pending` (bytebeamio/rumqtt#1056): lost, and on a new
    /// session the client stays blocked until `CollisionTimeout`.
    fn take_unsent(&mut self) -> usize {
        match self {
            Session::V4 { eventloop, .. } => {
                use rumqttc::Request;
                let before = eventloop.pending.len();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(p) if p.pkid == 0));
                let parked = eventloop.state.collision.take().is_some();
                before - eventloop.pending.len() + usize::from(parked)
            }
            Session::V5 { eventloop, .. } => {
                use v5::Request;
                let before = eventloop.pending.len();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(p) if p.pkid == 0));
                let parked = eventloop.state.collision.take().is_some();
                before - eventloop.pending.len() + usize::from(parked)
            }
        }
    }

    /// Takes every publish out of what rumqttc would send again on a resumed session
    /// (when the worker publishes them again itself, e.g. at another QoS); returns how many.
    pub fn take_resends(&mut self) -> usize {
        match self {
            Session::V4 { eventloop, .. } => {
                use rumqttc::Request;
                let before = eventloop.pending.len();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(_)));
                before - eventloop.pending.len()
            }
            Session::V5 { eventloop, .. } => {
                use v5::Request;
                let before = eventloop.pending.len();
                eventloop
                    .pending
                    .retain(|r| !matches!(r, Request::Publish(_)));
                before - eventloop.pending.len()
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
    /// `user_properties` go with it on MQTT 5; MQTT 3.1.1 has no place for them.
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Bytes,
        user_properties: Vec<(String, String)>,
    ) -> Result<(), String> {
        match self {
            Publisher::V4(client) => client
                .publish_bytes(topic, qos.v4(), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Publisher::V5(client) if user_properties.is_empty() => client
                .publish(topic, qos.v5(), retain, payload)
                .await
                .map_err(|e| e.to_string()),
            Publisher::V5(client) => client
                .publish_with_properties(
                    topic,
                    qos.v5(),
                    retain,
                    payload,
                    v5::mqttbytes::v5::PublishProperties {
                        user_properties,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::mpsc;
    use std::thread;

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

    /// An MQTT peer on a loopback port that accepts one connection, answers CONNACK without
    /// reading the CONNECT, and when told resets the connection (closing with the CONNECT
    /// unread makes the close a reset): every write after that fails.
    fn resetting_peer(protocol: Protocol) -> (u16, mpsc::Sender<()>, thread::JoinHandle<()>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (reset, told) = mpsc::channel();
        let peer = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // Wait for the CONNECT, and leave it unread.
            stream.peek(&mut [0u8; 1]).unwrap();
            // Accepted, no session (MQTT 5: and no properties).
            let connack: &[u8] = match protocol {
                Protocol::V311 => &[0x20, 2, 0, 0],
                Protocol::V5 => &[0x20, 3, 0, 0, 0],
            };
            stream.write_all(connack).unwrap();
            told.recv().unwrap();
        });
        (port, reset, peer)
    }

    /// rumqttc (patched, third_party/rumqttc) writes the publishes waiting in its channel
    /// together. When the connection fails, every publish handed over is either reported
    /// written (in order, packet ids 1, 2, ...: how the worker matches writes to messages)
    /// and kept to be sent again, or taken back unsent: none is lost between the two,
    /// whether the failure meets a batch just written or is read first.
    #[test]
    fn a_connection_lost_under_a_batch_leaves_every_publish_written_or_taken_back() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut batches_written = 0;
            for _ in 0..20 {
                let (port, reset, peer) = resetting_peer(protocol);
                let broker = Broker {
                    host: "127.0.0.1".into(),
                    port,
                };
                let config = ConnectionConfig {
                    brokers: vec![broker.clone()],
                    max_reconnect_delay: std::time::Duration::from_secs(1),
                    client_id: "batch-test".into(),
                    clean_session: false,
                    keep_alive: std::time::Duration::from_secs(60),
                    credentials: None,
                    tls: None,
                    protocol,
                    topic: "t".into(),
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    max_message_size: 4096,
                };
                let (written, unsent, resends) = runtime.block_on(async {
                    let mut session = Session::new(&config, &broker);
                    let connected = session.poll().await;
                    assert!(
                        matches!(connected, Ok(Event::Connected { .. })),
                        "{connected:?}"
                    );
                    reset.send(()).unwrap();
                    peer.join().unwrap();
                    let publisher = session.publisher();
                    for _ in 0..REQUEST_CHANNEL {
                        let payload = Bytes::from(vec![b'x'; 1000]);
                        publisher
                            .publish("t", QoS::AtLeastOnce, false, payload, Vec::new())
                            .await
                            .unwrap();
                    }
                    let mut written = Vec::new();
                    let failure = loop {
                        match session.poll().await {
                            Ok(Event::Written { pkid }) => written.push(pkid),
                            Ok(event) => panic!("{protocol:?}: {event:?}"),
                            Err(failure) => break failure,
                        }
                    };
                    for event in &failure.stale {
                        match event {
                            Event::Written { pkid } => written.push(*pkid),
                            other => panic!("{protocol:?}: {other:?}"),
                        }
                    }
                    (written, failure.unsent, session.take_resends())
                });
                let expected: Vec<u16> = (1..=written.len() as u16).collect();
                assert_eq!(written, expected, "{protocol:?}");
                assert_eq!(written.len() + unsent, REQUEST_CHANNEL, "{protocol:?}");
                assert_eq!(resends, written.len(), "{protocol:?}");
                if written.len() > 1 {
                    batches_written += 1;
                }
            }
            // rumqttc reads the reset or writes a batch first at random: 20 tries make
            // a run without a batch written as good as impossible.
            assert!(batches_written > 0, "{protocol:?}");
        }
    }

    /// Why [`Session::take_unsent`] exists, shown on rumqttc's own state machine: after a
    /// lost connection with the in-flight window full, the resent publishes hold every
    /// packet id, and the publishes that had waited in the request channel (packet id 0)
    /// all collide; each collision replaces the publish parked before, so of 64 only the
    /// last can ever be sent. If this fails, rumqttc changed (see bytebeamio/rumqtt#1056):
    /// check whether the taking back is still needed.
    #[test]
    fn rumqttc_loses_waiting_publishes_that_collide_on_a_resumed_session() {
        use rumqttc::{MqttState, Publish, QoS, Request};
        let publish = || Request::Publish(Publish::new("t", QoS::AtLeastOnce, vec![0u8]));
        let mut state = MqttState::new(QOS_INFLIGHT, false);
        for _ in 0..QOS_INFLIGHT {
            state.handle_outgoing_packet(publish()).unwrap();
        }
        // The connection is lost: rumqttc moves the unacknowledged publishes to `pending`
        // (the event loop appends what waited in its channel), then resends them.
        let resent = state.clean();
        assert_eq!(resent.len(), usize::from(QOS_INFLIGHT));
        for request in resent {
            state.handle_outgoing_packet(request).unwrap();
        }
        let mut parked = Vec::new();
        for _ in 0..REQUEST_CHANNEL {
            state.handle_outgoing_packet(publish()).unwrap();
            parked.push(state.collision.as_ref().map(|p| p.pkid));
        }
        // Every waiting publish collided; rumqttc holds the 100 resent and the one parked
        // last: 63 of the 64 are gone, never to be sent.
        assert!(parked.iter().all(Option::is_some), "{parked:?}");
        let held = usize::from(state.inflight()) + usize::from(state.collision.is_some());
        assert_eq!(usize::from(QOS_INFLIGHT) + REQUEST_CHANNEL - held, 63);
    }
}
