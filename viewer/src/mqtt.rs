// SPDX-License-Identifier: MPL-2.0

//! The subscriber: connects, subscribes to every topic, feeds messages to the hub, and
//! reconnects after 1 s, 2 s, 4 s (4 s at most) when the broker goes away.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, SubscribeReasonCode,
    TlsConfiguration, Transport,
};

use crate::hub::Hub;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(4);
/// rumqttc's own bound on a packet it reads. Larger ones cost a reconnect; the viewer's
/// `--max-message-size` (smaller) is checked on every message below it.
pub const MAX_PACKET: usize = 64 * 1024 * 1024;

/// The CA and, for brokers that require one, the client certificate and key (PEM, read).
pub struct TlsFiles {
    pub ca: Vec<u8>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

/// Where and how to subscribe.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub tls: Option<TlsFiles>,
    pub topics: Vec<String>,
    pub qos: QoS,
    pub keep_alive: Duration,
}

pub async fn run(settings: Settings, hub: Arc<Hub>) {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options.set_keep_alive(settings.keep_alive);
    options.set_clean_session(true);
    options.set_max_packet_size(MAX_PACKET, 64 * 1024);
    if let Some((user, password)) = &settings.credentials {
        options.set_credentials(user, password);
    }
    if let Some(tls) = &settings.tls {
        options.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: tls.ca.clone(),
            alpn: None,
            client_auth: tls.client.clone(),
        }));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let mut retry = FIRST_RETRY;
    let mut connected = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if ack.code != ConnectReturnCode::Success {
                    // rumqttc reports a refusal as an error on the next poll as well.
                    continue;
                }
                retry = FIRST_RETRY;
                connected = true;
                hub.connection("connected", None, None);
                for topic in &settings.topics {
                    if let Err(e) = client.try_subscribe(topic, settings.qos) {
                        hub.error(topic, format!("could not subscribe: {e}"));
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|code| matches!(code, SubscribeReasonCode::Failure))
                {
                    hub.error(
                        "",
                        format!(
                            "the broker refused a subscription (topics: {})",
                            settings.topics.join(", ")
                        ),
                    );
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                hub.message(&publish.topic, &publish.payload);
            }
            Ok(_) => {}
            Err(error) => {
                let detail = error.to_string();
                if std::mem::take(&mut connected) {
                    hub.error("", format!("lost the broker connection: {detail}"));
                }
                hub.connection("disconnected", Some(detail), Some(retry));
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
                hub.connection("connecting", None, None);
            }
        }
    }
}
