// SPDX-License-Identifier: MPL-2.0

//! One rumqttc client and event loop, MQTT 3.1.1 or 5, behind a single interface that
//! speaks in the few events the worker cares about.

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

    /// Drives the connection until the next event. Errors are connection losses.
    pub async fn poll(&mut self) -> Result<Event, String> {
        match self {
            Session::V4 { eventloop, .. } => {
                use rumqttc::{Event as E, Outgoing, Packet};
                Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
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
                use v5::Event as E;
                Ok(match eventloop.poll().await.map_err(|e| e.to_string())? {
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
