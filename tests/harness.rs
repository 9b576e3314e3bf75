// SPDX-License-Identifier: MPL-2.0

//! Tests of the shared test harness itself, against real mosquitto,
//! `mosquitto_pub` and `openssl`: if these fail, the element tests built on
//! the harness cannot be trusted.
//!
//! Each test checks harness behaviour that no element test exercises (IPv6,
//! the broker log, retained messages, MQTT 5 properties, foreign client
//! certificates, anonymous clients refused, offline persistent sessions,
//! pause, clean-up, broker limits); what the element tests exercise anyway,
//! such as a plain publish and its QoS, they check themselves.

mod common;

use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::*;

/// Generous bound for anything that should take milliseconds.
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn retained_message_is_delivered_on_subscribe() {
    let broker = Broker::new();
    MosquittoPub::new(&broker, "harness/retained", "kept")
        .qos(QoS::AtLeastOnce)
        .retain()
        .publish();

    let subscriber = Subscriber::new(&broker, "harness/retained");
    let messages = subscriber.wait_for(1, TIMEOUT);
    assert_eq!(messages[0].payload_str(), "kept");
    assert!(messages[0].retain, "{messages:?}");
    subscriber.assert_count_after(1, Duration::from_millis(200));
}

/// Clients over ::1 and 127.0.0.1 on one broker: what they publish arrives as sent, with its
/// flags, and the broker log shows who connected (not the readiness probes) and what was
/// published, every line with a UNIX seconds timestamp.
#[test]
fn ipv4_and_ipv6_clients_are_served_and_logged() {
    let broker = Broker::builder().ipv6(true).start();
    let subscriber = Subscriber::builder(&broker, "harness/#")
        .host(LOCALHOST_V6)
        .connect();

    MosquittoPub::new(&broker, "harness/v6", "over ::1")
        .host(LOCALHOST_V6)
        .publish();
    MosquittoPub::new(&broker, "harness/v4", [0u8, 159, 255])
        .qos(QoS::AtLeastOnce)
        .publish();

    let messages = subscriber.wait_for(2, TIMEOUT);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0].topic, "harness/v6");
    assert_eq!(messages[0].payload_str(), "over ::1");
    assert_eq!(messages[0].qos, QoS::AtMostOnce);
    assert!(!messages[0].retain);
    assert_eq!(messages[1].topic, "harness/v4");
    assert_eq!(messages[1].payload, [0u8, 159, 255]);
    assert_eq!(messages[1].qos, QoS::AtLeastOnce);
    assert!(!messages[1].retain);

    // The broker log shows the publishes and who connected.
    let log = broker.log();
    assert!(
        log.contains("Received PUBLISH from") && log.contains("'harness/v4'"),
        "{log}"
    );
    // The subscriber and the two mosquitto_pub runs; no readiness probes. The lines come
    // through the harness's reader of mosquitto's output, which may lag behind.
    wait_until(TIMEOUT, Duration::from_millis(20), || {
        broker.connection_attempts().len() >= 3
    });
    let attempts = broker.connection_attempts();
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    assert!(attempts.iter().all(|line| line.broker_time.is_some()));
    assert!(
        attempts
            .iter()
            .any(|l| l.text.starts_with("New connection from ::1:")),
        "{attempts:#?}"
    );

    let start = broker.wait_for_log("running", TIMEOUT);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let logged = start.broker_time.expect("timestamped line");
    assert!(logged.abs_diff(now) < 60, "{logged} vs {now}");
    // Every log file line starts with the same UNIX seconds stamp.
    for line in broker.log().lines() {
        let (stamp, _) = line.split_once(": ").expect("timestamp prefix");
        assert!(stamp.parse::<u64>().is_ok(), "{line}");
    }
}

#[test]
fn mqtt5_subscriber_sees_properties() {
    let broker = Broker::new();
    let subscriber = Subscriber::builder(&broker, "harness/v5")
        .v5()
        .qos(QoS::ExactlyOnce)
        .connect();

    MosquittoPub::new(&broker, "harness/v5", r#"{"a":1}"#)
        .v5()
        .qos(QoS::ExactlyOnce)
        .user_property("source", "harness")
        .user_property("frame", "7")
        .content_type("application/json")
        .publish();

    let message = &subscriber.wait_for(1, TIMEOUT)[0];
    assert_eq!(message.qos, QoS::ExactlyOnce);
    assert_eq!(
        message.user_properties,
        [
            ("source".to_owned(), "harness".to_owned()),
            ("frame".to_owned(), "7".to_owned())
        ]
    );
    assert_eq!(message.user_property("frame"), Some("7"));
    assert_eq!(message.content_type.as_deref(), Some("application/json"));
}

#[test]
fn tls_mutual_authentication_round_trip() {
    let tls = TlsFiles::generate();
    let broker = Broker::builder().tls(&tls, true).start();
    let subscriber = Subscriber::builder(&broker, "harness/tls")
        .tls(&tls)
        .connect();

    MosquittoPub::new(&broker, "harness/tls", "secret")
        .qos(QoS::AtLeastOnce)
        .tls(&tls)
        .publish();
    assert_eq!(subscriber.wait_for(1, TIMEOUT)[0].payload_str(), "secret");

    // The listener really requires a certificate signed by the CA.
    let no_cert = MosquittoPub::new(&broker, "harness/tls", "x")
        .cafile(&tls.ca)
        .try_publish();
    assert!(no_cert.is_err(), "published without a client certificate");
    let stranger = MosquittoPub::new(&broker, "harness/tls", "x")
        .cafile(&tls.ca)
        .client_cert(&tls.other_client_cert, &tls.other_client_key)
        .try_publish();
    assert!(
        stranger.is_err(),
        "published with a foreign client certificate"
    );
    // And clients check the server against their CA.
    let wrong_ca = Subscriber::builder(&broker, "harness/tls")
        .tls_ca(&tls.other_ca)
        .client_cert(&tls.client_cert, &tls.client_key)
        .try_connect();
    assert!(wrong_ca.is_err(), "connected trusting an unrelated CA");
    subscriber.assert_count_after(1, Duration::from_millis(200));
}

#[test]
fn tls_without_client_certificate_and_bad_server_certificates() {
    let tls = TlsFiles::generate();
    let broker = Broker::builder().tls(&tls, false).start();
    // Server-only TLS: a client with just the CA gets in.
    let subscriber = Subscriber::builder(&broker, "harness/tls")
        .tls_ca(&tls.ca)
        .connect();
    MosquittoPub::new(&broker, "harness/tls", "one-way")
        .cafile(&tls.ca)
        .publish();
    assert_eq!(subscriber.wait_for(1, TIMEOUT)[0].payload_str(), "one-way");

    let expired = Broker::builder()
        .tls_with(
            &tls.ca,
            &tls.expired_server_cert,
            &tls.expired_server_key,
            false,
        )
        .start();
    let error = Subscriber::builder(&expired, "harness/tls")
        .tls_ca(&tls.ca)
        .try_connect()
        .err()
        .expect("accepted an expired server certificate");
    assert!(error.contains("certificate expired"), "{error}");

    let wrong_host = Broker::builder()
        .tls_with(
            &tls.ca,
            &tls.wrong_host_server_cert,
            &tls.wrong_host_server_key,
            false,
        )
        .start();
    let error = Subscriber::builder(&wrong_host, "harness/tls")
        .tls_ca(&tls.ca)
        .try_connect()
        .err()
        .expect("accepted a certificate for another host");
    assert!(error.contains("not valid for name"), "{error}");
    // mosquitto_pub checks the host name too.
    let checked_by_name = MosquittoPub::new(&wrong_host, "harness/tls", "x")
        .cafile(&tls.ca)
        .try_publish();
    assert!(
        checked_by_name.is_err(),
        "mosquitto_pub accepted the wrong host"
    );
}

#[test]
fn password_broker_refuses_wrong_password() {
    let broker = Broker::builder()
        .user("alice", "right-password")
        .user("bob", "other")
        .start();

    let subscriber = Subscriber::builder(&broker, "harness/auth")
        .credentials("alice", "right-password")
        .connect();
    MosquittoPub::new(&broker, "harness/auth", "welcome")
        .credentials("bob", "other")
        .publish();
    assert_eq!(subscriber.wait_for(1, TIMEOUT)[0].payload_str(), "welcome");

    let error = Subscriber::builder(&broker, "harness/auth")
        .credentials("alice", "wrong-password")
        .try_connect()
        .err()
        .expect("connected with a wrong password");
    assert!(error.contains("refused"), "{error}");
    let wrong = MosquittoPub::new(&broker, "harness/auth", "intruder")
        .credentials("bob", "wrong")
        .try_publish();
    assert!(wrong.is_err(), "published with a wrong password");
    let anonymous = MosquittoPub::new(&broker, "harness/auth", "intruder").try_publish();
    assert!(anonymous.is_err(), "published anonymously");

    broker.wait_for_log("not authorised", TIMEOUT);
    subscriber.assert_count_after(1, Duration::from_millis(200));
}

/// Persistent QoS 1 subscribers of both protocols that are offline while a message is
/// published and the broker restarts get the message when they come back.
#[test]
fn persistent_sessions_of_both_protocols_survive_restart() {
    let mut broker = Broker::builder().persistence(true).start();
    let port = broker.port();
    let protocols = [Protocol::V311, Protocol::V5];
    let mut subscribers: Vec<Subscriber> = protocols
        .iter()
        .map(|protocol| {
            let mut subscriber = Subscriber::builder(&broker, "harness/persist")
                .protocol(*protocol)
                .persistent_session(&format!("harness-persistent-{protocol:?}"))
                .qos(QoS::AtLeastOnce)
                .connect();
            subscriber.disconnect();
            subscriber
        })
        .collect();

    MosquittoPub::new(&broker, "harness/persist", "while away")
        .qos(QoS::AtLeastOnce)
        .publish();
    broker.stop();
    assert!(!broker.is_running());
    assert!(broker.log().contains("Saving in-memory database"));
    broker.start();
    assert_eq!(broker.port(), port);

    for (subscriber, protocol) in subscribers.iter_mut().zip(protocols) {
        subscriber.reconnect();
        let messages = subscriber.wait_for(1, TIMEOUT);
        assert_eq!(subscriber.session_present(), Some(true), "{protocol:?}");
        assert_eq!(messages[0].payload_str(), "while away", "{protocol:?}");
        assert_eq!(messages[0].qos, QoS::AtLeastOnce, "{protocol:?}");
    }
}

#[test]
fn subscriber_follows_broker_restarts() {
    let mut broker = Broker::new();
    let subscriber = Subscriber::new(&broker, "harness/restart");

    broker.stop();
    assert!(broker.log().contains("terminating"));
    broker.start();
    // No persistence: the subscriber subscribes again by itself.
    subscriber.wait_subscribed(2, TIMEOUT);
    MosquittoPub::new(&broker, "harness/restart", "after stop").publish();
    subscriber.wait_for(1, TIMEOUT);

    broker.kill();
    assert!(!broker.is_running());
    broker.start();
    subscriber.wait_subscribed(3, TIMEOUT);
    MosquittoPub::new(&broker, "harness/restart", "after kill").publish();
    let messages = subscriber.wait_for(2, TIMEOUT);
    assert_eq!(messages[1].payload_str(), "after kill");
    assert_eq!(subscriber.session_present(), Some(false));
}

#[test]
fn paused_broker_delivers_after_resume() {
    let mut broker = Broker::new();
    let subscriber = Subscriber::new(&broker, "harness/pause");

    broker.pause();
    let publisher = MosquittoPub::new(&broker, "harness/pause", "late");
    let publishing = thread::spawn(move || publisher.try_publish());
    // Deliberate wait: nothing may arrive while the broker is frozen.
    subscriber.assert_count_after(0, Duration::from_millis(300));
    assert!(broker.is_running());

    broker.resume();
    assert_eq!(subscriber.wait_for(1, TIMEOUT)[0].payload_str(), "late");
    publishing.join().unwrap().expect("publish after resume");
}

#[test]
fn dropping_the_broker_kills_it() {
    let broker = Broker::new();
    let port = broker.port();
    let dir = broker.dir().to_path_buf();
    assert!(TcpStream::connect((broker.host(), port)).is_ok());
    drop(broker);
    assert!(TcpStream::connect((LOCALHOST_V4, port)).is_err());
    assert!(!dir.exists(), "temp dir left behind");
}

#[test]
fn queue_limit_and_extra_lines_reach_the_broker() {
    let broker = Broker::builder()
        .max_inflight(1)
        .max_queued(2)
        .extra("max_keepalive 120")
        .start();
    let config = std::fs::read_to_string(broker.config_path()).unwrap();
    for line in [
        "user root",
        "max_inflight_messages 1",
        "max_queued_messages 2",
        "max_keepalive 120",
    ] {
        assert!(
            config.lines().any(|l| l == line),
            "{line:?} missing:\n{config}"
        );
    }

    let mut subscriber = Subscriber::builder(&broker, "harness/queue")
        .persistent_session("harness-queue")
        .connect();
    subscriber.disconnect();
    for n in 0..5 {
        MosquittoPub::new(&broker, "harness/queue", format!("m{n}"))
            .qos(QoS::AtLeastOnce)
            .publish();
    }
    subscriber.reconnect();
    // The broker kept the first two for the offline client, dropped the rest.
    subscriber.wait_for(2, TIMEOUT);
    subscriber.assert_count_after(2, Duration::from_millis(300));
    let payloads: Vec<String> = subscriber
        .messages()
        .iter()
        .map(|m| m.payload_str().to_owned())
        .collect();
    assert_eq!(payloads, ["m0", "m1"]);
}
