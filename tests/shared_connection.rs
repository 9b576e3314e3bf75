// SPDX-License-Identifier: MPL-2.0

//! `shared-connection`: many `mqttpublish` of one process over one MQTT connection, against
//! a real mosquitto, with what a real subscriber received asserted.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::time::Duration;

use common::{
    assert_accounted, case, init_plugin, sample_recording, start_error, stat, to, wait_until,
    Broker, QoS, Run, Subscriber,
};
use gst::prelude::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(120);

/// A live 64x48 source of `frames` frames at `fps`, with the sample recording's metadata.
fn live_source(frames: u32, fps: u32) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={frames} \
         ! video/x-raw,width=64,height=48,framerate={fps}/1 \
         ! metareplay location={} loop=true",
        sample_recording()
    )
}

fn frame_id(payload: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(payload).unwrap();
    let meta = if v.is_array() { &v[0] } else { &v };
    meta["frame_id"].as_u64().unwrap()
}

/// The distinct frame ids received per topic.
fn frames_per_topic(sub: &Subscriber) -> HashMap<String, BTreeSet<u64>> {
    let mut frames: HashMap<String, BTreeSet<u64>> = HashMap::new();
    for message in sub.messages() {
        frames
            .entry(message.topic.clone())
            .or_default()
            .insert(frame_id(&message.payload));
    }
    frames
}

/// The topics of `topics` that have not received every frame of `0..frames` yet.
fn short_topics(sub: &Subscriber, topics: &[String], frames: u64) -> Vec<String> {
    let received = frames_per_topic(sub);
    topics
        .iter()
        .filter(|topic| received.get(*topic).map_or(0, |ids| ids.len() as u64) < frames)
        .cloned()
        .collect()
}

/// Waits until every topic of `topics` has received every frame of `0..frames`, and
/// checks that nothing else arrived on them; panics after `LONG` naming the short ones.
#[track_caller]
fn assert_every_frame(sub: &Subscriber, topics: &[String], frames: u32) {
    assert!(
        wait_until(LONG, Duration::from_millis(100), || short_topics(
            sub,
            topics,
            frames.into()
        )
        .is_empty()),
        "topics short of their {frames} frames: {:?}",
        short_topics(sub, topics, frames.into())
    );
    let received = frames_per_topic(sub);
    for topic in topics {
        assert_eq!(
            received[topic],
            (0..u64::from(frames)).collect::<BTreeSet<_>>(),
            "{topic}: every frame"
        );
    }
}

/// The established TCP connections of this process to `port` on the loopback, as `ss`
/// lists them.
fn connections_to(port: u16) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("ss runs");
    assert!(out.status.success(), "{}", common::printed(&out));
    let pid = format!("pid={},", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.contains(&pid))
        .count()
}

/// 64 sinks on one shared connection, QoS 1 and a persistent session, through a broker
/// restart: every frame of every sink arrives, over one TCP connection. One sink's end of
/// stream (before the restart) leaves the others publishing.
#[test]
fn sixty_four_sinks_share_one_connection_through_a_broker_restart() {
    const SINKS: usize = 64;
    const FRAMES: u32 = 240;
    const EARLY_FRAMES: u32 = 30;
    let mut broker = Broker::builder().persistence(true).max_queued(0).start();
    let sub = Subscriber::builder(&broker, "cam/#")
        .persistent_session("shared-subscriber")
        .qos(QoS::AtLeastOnce)
        .connect();
    init_plugin();
    let alone = connections_to(broker.port());
    let sink = |i: usize| {
        format!(
            "mqttpublish name=sink{i} {} topic=cam/{i} qos=1 clean-session=false \
             client-id=shared-64 shared-connection=cameras",
            to(&broker)
        )
    };
    // sink0 has a short source of its own: it reaches end of stream first.
    let branches: String = (1..SINKS)
        .map(|i| format!(" t. ! queue ! {}", sink(i)))
        .collect();
    let description = format!(
        "{} ! {}  {} ! tee name=t{branches}",
        live_source(EARLY_FRAMES, 15),
        sink(0),
        live_source(FRAMES, 15),
    );
    let mut run = Run::start(&description);
    let sinks: Vec<gst::Element> = (0..SINKS)
        .map(|i| run.element(&format!("sink{i}")))
        .collect();
    let topics: Vec<String> = (0..SINKS).map(|i| format!("cam/{i}")).collect();

    // sink0 delivered its frames, all of them: its stream ended; the others go on.
    assert_every_frame(&sub, &topics[..1], EARLY_FRAMES);
    let published = |sink: &gst::Element| stat(&sink.property("stats"), "messages-published");
    assert_eq!(published(&sinks[0]), u64::from(EARLY_FRAMES));
    let before: Vec<u64> = sinks.iter().map(published).collect();
    assert!(
        wait_until(LONG, Duration::from_millis(50), || sinks[1..]
            .iter()
            .zip(&before[1..])
            .all(|(sink, before)| published(sink) >= before + 10)),
        "the other sinks stopped publishing after sink0's end of stream"
    );
    // The N sinks: one connection besides the subscriber's.
    assert_eq!(
        connections_to(broker.port()),
        alone + 1,
        "TCP connections of this process to the broker (the subscriber's: {alone})"
    );

    broker.stop();
    run.pump(Duration::from_secs(3));
    broker.start();
    run.wait_eos(LONG);

    assert_every_frame(&sub, &topics[1..], FRAMES);
    assert_every_frame(&sub, &topics[..1], EARLY_FRAMES);
    assert_eq!(
        connections_to(broker.port()),
        alone + 1,
        "TCP connections of this process to the restarted broker"
    );
    for (i, sink) in sinks.iter().enumerate() {
        let stats = sink.property::<gst::Structure>("stats");
        assert_eq!(stat(&stats, "messages-dropped"), 0, "sink{i}: {stats}");
        assert_eq!(stat(&stats, "in-flight"), 0, "sink{i}: {stats}");
        assert_accounted(&stats);
        // Every sink saw the restart: sink0 too, though it had ended its stream.
        assert_eq!(stat(&stats, "reconnects"), 1, "sink{i}: {stats}");
    }
    run.pipeline.set_state(gst::State::Null).unwrap();
    // The last sink to leave closed the connection.
    assert!(
        wait_until(LONG, Duration::from_millis(50), || connections_to(
            broker.port()
        ) == alone),
        "a connection is left after every sink stopped"
    );
}

/// A TCP proxy to the broker at `upstream` that passes what a client sends at
/// `bytes_per_second` at most (the broker's answers pass at once): an uplink narrower
/// than what the publishers would send.
fn narrow_uplink(upstream: u16, bytes_per_second: usize) -> u16 {
    common::tcp_proxy(upstream, move |mut from_client, mut to_server| {
        let mut buf = vec![0u8; 1024];
        loop {
            match from_client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to_server.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_second as f64));
                }
            }
        }
    })
}

/// A sink whose upstream floods it (not live, waiting for room) beside 8 live sinks on the
/// same connection, through an uplink narrower than the flood: the live sinks get their
/// turn, so every live frame arrives and no live sink drops anything, while the flooding
/// sink's queue stays full.
#[test]
fn a_flooding_sink_does_not_starve_live_sinks_on_its_connection() {
    const LIVE: usize = 8;
    const FRAMES: u32 = 100;
    let broker = Broker::builder().max_queued(0).start();
    let sub = Subscriber::builder(&broker, "live/#")
        .qos(QoS::AtLeastOnce)
        .connect();
    // About 150 flood messages a second; the live sinks need about 80.
    let uplink = narrow_uplink(broker.port(), 200_000);
    let shared = format!("host=127.0.0.1 port={uplink} qos=1 shared-connection=mixed");
    let live: String = (0..LIVE)
        .map(|i| {
            format!(
                " {} ! mqttpublish name=live{i} topic=live/{i} max-queued-messages=60 {shared}",
                live_source(FRAMES, 10)
            )
        })
        .collect();
    let description = format!(
        "videotestsrc num-buffers=1000000 ! video/x-raw,width=64,height=48 \
         ! metareplay location={} loop=true \
         ! mqttpublish name=flood topic=flood leaky=no max-queued-messages=60 {shared}{live}",
        sample_recording()
    );
    let run = Run::start(&description);
    let topics: Vec<String> = (0..LIVE).map(|i| format!("live/{i}")).collect();
    let flood = run.element("flood");
    let flood_stats = || flood.property::<gst::Structure>("stats");
    assert_every_frame(&sub, &topics, FRAMES);
    // The flood went on all along: it still has a queue waiting for the uplink.
    let stats = flood_stats();
    assert!(
        stat(&stats, "queue-depth") > 0,
        "the flooding sink's queue drained: no contention: {stats}"
    );
    assert!(
        stat(&stats, "messages-published") > 0,
        "the flooding sink published nothing: {stats}"
    );
    for i in 0..LIVE {
        let stats = run
            .element(&format!("live{i}"))
            .property::<gst::Structure>("stats");
        assert_eq!(stat(&stats, "messages-dropped"), 0, "live{i}: {stats}");
        assert_eq!(
            stat(&stats, "messages-queued"),
            u64::from(FRAMES),
            "live{i}"
        );
    }
    run.pipeline.set_state(gst::State::Null).unwrap();
    assert_accounted(&flood_stats());
}

/// Sinks sharing a connection must agree on every connection setting: one that differs
/// fails at start, naming the setting (and never a password).
#[test]
fn a_sink_whose_connection_settings_differ_fails_at_start_naming_the_setting() {
    let port = common::free_port(false);
    let base = format!("host=127.0.0.1 port={port} shared-connection=differs");
    let cases = [
        ("port", format!("port={}", port + 1), "host/port differs"),
        (
            "host list",
            format!("host=127.0.0.1:{port},127.0.0.2:{port}"),
            "host/port differs",
        ),
        ("client-id", "client-id=other".into(), "client-id differs"),
        (
            "clean-session",
            "clean-session=false client-id=x".into(),
            "client-id differs",
        ),
        ("keep-alive", "keep-alive=30".into(), "keep-alive differs"),
        ("protocol", "protocol=5".into(), "protocol differs"),
        (
            "max-reconnect-delay",
            "max-reconnect-delay=1000".into(),
            "max-reconnect-delay differs",
        ),
        ("username", "username=other".into(), "username differs"),
        (
            "password",
            "username=camera password=wrong-secret".into(),
            "password differs",
        ),
    ];
    for (name, other, expected) in cases {
        case(name, || {
            let first = match name {
                "password" => "username=camera password=right-secret",
                _ => "",
            };
            let description = format!(
                "videotestsrc num-buffers=1 ! mqttpublish name=first {base} {first} \
                 videotestsrc num-buffers=1 ! mqttpublish name=second {base} {other}"
            );
            let error = start_error(&description);
            assert!(error.contains(expected), "{error}");
            assert!(error.contains("shared-connection=\"differs\""), "{error}");
            assert!(!error.contains("secret"), "a password shows: {error}");
        });
    }
    // clean-session alone, the client ids being equal.
    let error = start_error(&format!(
        "videotestsrc num-buffers=1 ! mqttpublish {base} client-id=x \
         videotestsrc num-buffers=1 ! mqttpublish {base} client-id=x clean-session=false"
    ));
    assert!(error.contains("clean-session differs"), "{error}");

    let spool = tempfile::tempdir().unwrap();
    let error = start_error(&format!(
        "videotestsrc num-buffers=1 ! mqttpublish {base} spool-location={}",
        spool.path().display()
    ));
    assert!(
        error.contains("shared-connection") && error.contains("spool-location"),
        "{error}"
    );
}

/// 4 sinks on one connection, QoS 1, and a broker that lost the session (mosquitto without
/// persistence, frozen with each sink's messages written and unacknowledged, killed and
/// restarted): each sink publishes its own unacknowledged messages again, on its own
/// topic, and counts them; every frame of every sink arrives, each on its sink's topic.
#[test]
fn a_lost_session_gives_each_sink_back_its_own_unacknowledged_messages() {
    const SINKS: usize = 4;
    const FRAMES: u32 = 300;
    let mut broker = Broker::new();
    let sub = Subscriber::builder(&broker, "lost/#")
        .qos(QoS::AtLeastOnce)
        .connect();
    let branches: String = (0..SINKS)
        .map(|i| {
            format!(
                " {} ! mqttpublish name=sink{i} topic=lost/{i} source=cam{i} {} qos=1 \
                 clean-session=false client-id=lost-{} shared-connection=lost",
                live_source(FRAMES, 30),
                to(&broker),
                std::process::id()
            )
        })
        .collect();
    let mut run = Run::start(&branches);
    let sinks: Vec<gst::Element> = (0..SINKS)
        .map(|i| run.element(&format!("sink{i}")))
        .collect();
    let topics: Vec<String> = (0..SINKS).map(|i| format!("lost/{i}")).collect();
    assert!(
        wait_until(LONG, Duration::from_millis(50), || {
            let received = frames_per_topic(&sub);
            topics
                .iter()
                .all(|t| received.get(t).map_or(0, BTreeSet::len) >= 30)
        }),
        "a second of frames of every sink before the freeze"
    );
    broker.pause();
    let in_flight = |sink: &gst::Element| stat(&sink.property("stats"), "in-flight");
    assert!(
        wait_until(LONG, Duration::from_millis(20), || sinks
            .iter()
            .all(|sink| in_flight(sink) >= 5)),
        "every sink has messages in flight to the frozen broker"
    );
    let unacknowledged: Vec<u64> = sinks.iter().map(in_flight).collect();
    broker.kill();
    broker.start();
    run.wait_eos(LONG);

    assert_every_frame(&sub, &topics, FRAMES);
    for message in sub.messages() {
        let v: Value = serde_json::from_slice(&message.payload).unwrap();
        let meta = if v.is_array() { &v[0] } else { &v };
        let sink = message.topic.trim_start_matches("lost/");
        assert_eq!(
            meta["source"],
            format!("cam{sink}").as_str(),
            "a message of another sink on {}",
            message.topic
        );
    }
    for (i, sink) in sinks.iter().enumerate() {
        let stats = sink.property::<gst::Structure>("stats");
        assert!(
            stat(&stats, "republished") >= unacknowledged[i],
            "sink{i}: {} unacknowledged at the kill: {stats}",
            unacknowledged[i]
        );
        assert_eq!(stat(&stats, "messages-dropped"), 0, "sink{i}: {stats}");
        assert_eq!(
            stat(&stats, "messages-published"),
            u64::from(FRAMES),
            "sink{i}: {stats}"
        );
        assert_accounted(&stats);
    }
    run.pipeline.set_state(gst::State::Null).unwrap();
}
