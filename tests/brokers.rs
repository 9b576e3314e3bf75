// SPDX-License-Identifier: MPL-2.0

//! `mqttpublish` against RabbitMQ (`rabbitmq_mqtt`) and NATS (JetStream + MQTT), Debian's
//! packages, started by the harness on free loopback ports: the same matrix for both
//! (QoS 0/1/2 x protocol 4/5, frames, credentials, a 5 MB message, a persistent session
//! across a broker restart), each case checked by a real subscriber and by what the element
//! said; and failover across a three-node NATS cluster.
//!
//! A RabbitMQ node takes 10 to 20 s to start here, so each broker's matrix is one test on
//! one broker, its cases run one after the other with topics and client ids of their own;
//! the restart comes last. A failing case does not hide the others: all run, and the test
//! fails naming each failure.

mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{
    assert_accounted, plugin_dir, sample_recording, stat, Broker, Kind, Message, QoS, Run,
    Subscriber,
};
use gst::prelude::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(30);
const USER: &str = "camera";
const PASSWORD: &str = "s3cret-pw";

/// `buffers` frames of the sample recording; a live source runs at 30 fps.
fn replay(buffers: u32, live: bool) -> String {
    format!(
        "videotestsrc num-buffers={buffers} is-live={live} \
         ! video/x-raw,width=640,height=480,framerate=30/1 ! metareplay location={}",
        sample_recording()
    )
}

fn frame_id(message: &Message) -> u64 {
    let v: Value = serde_json::from_slice(&message.payload).expect("payload is JSON");
    let meta = if v.is_array() { &v[0] } else { &v };
    meta["frame_id"].as_u64().expect("frame_id")
}

fn frame_ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(frame_id).collect()
}

/// `mqttpublish` properties for `broker`, as the camera user, to `topic`.
fn props(broker: &Broker, topic: &str, extra: &str) -> String {
    format!(
        "host={} port={} topic={topic} username={USER} password={PASSWORD} {extra}",
        broker.host(),
        broker.port()
    )
}

fn subscriber(broker: &Broker, topic: &str) -> Subscriber {
    Subscriber::builder(broker, topic)
        .credentials(USER, PASSWORD)
        .qos(QoS::AtLeastOnce)
        .connect()
}

/// The element messages called `name` that the run posted.
fn posted(run: &Run, name: &str) -> Vec<gst::Structure> {
    run.element_messages(name)
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// Element messages called `name`, waiting for the first: a refusal ends a file job with an
/// error, and the connection thread posts the disconnection it came with right after.
fn posted_soon(run: &Run, name: &str) -> Vec<gst::Structure> {
    common::wait_until(LONG, Duration::from_millis(20), || {
        !posted(run, name).is_empty()
    });
    posted(run, name)
}

/// The broker for a matrix: one user, and for NATS room for the 5 MB message (its default
/// `max_payload` is 1 MB).
fn matrix_broker(kind: Kind) -> Broker {
    let builder = match kind {
        Kind::RabbitMq => Broker::rabbitmq(),
        Kind::Nats => Broker::nats().extra("max_payload: 8MB"),
        Kind::Mosquitto => Broker::builder(),
    };
    let started = Instant::now();
    let broker = builder.user(USER, PASSWORD).start();
    eprintln!("{} started in {:?}", kind.name(), started.elapsed());
    broker
}

/// Runs every case on `broker`, then fails naming each case that failed.
fn run_matrix(broker: &mut Broker, cases: &[Case]) {
    let mut failures = Vec::new();
    // BROKER_CASE=<name> runs one case (to debug it).
    let only = std::env::var("BROKER_CASE").ok();
    for (name, case) in cases {
        if only.as_deref().is_some_and(|only| only != *name) {
            continue;
        }
        let started = Instant::now();
        let topic = format!("matrix/{}/{name}", broker.kind().name());
        let outcome = catch_unwind(AssertUnwindSafe(|| case(broker, &topic)));
        eprintln!(
            "{} {name}: {} in {:?}",
            broker.kind().name(),
            if outcome.is_ok() { "ok" } else { "FAILED" },
            started.elapsed()
        );
        if let Err(panic) = outcome {
            failures.push(format!("{name}: {}", common::panic_text(&*panic)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        broker.kind().name(),
        failures.join("\n")
    );
}

/// A case of the matrix: its name, and what it does with a broker and a topic of its own.
type Case = (&'static str, fn(&mut Broker, &str));

const CASES: &[Case] = &[
    ("qos0_protocol4", |b, t| qos_with_protocol_4(b, t, 0)),
    ("qos1_protocol4", |b, t| qos_with_protocol_4(b, t, 1)),
    ("qos2_protocol4", |b, t| qos_with_protocol_4(b, t, 2)),
    ("qos0_protocol5", |b, t| protocol_5_is_refused(b, t, 0)),
    ("qos1_protocol5", |b, t| protocol_5_is_refused(b, t, 1)),
    ("qos2_protocol5", |b, t| protocol_5_is_refused(b, t, 2)),
    ("frames", frames),
    ("wrong_password", wrong_password),
    ("wrong_password_gst_launch", wrong_password_gst_launch),
    ("message_of_5_mb", message_of_5_mb),
    // Last: it restarts the broker.
    (
        "persistent_session_across_restart",
        persistent_session_across_restart,
    ),
];

#[test]
fn rabbitmq_matrix() {
    let mut broker = matrix_broker(Kind::RabbitMq);
    run_matrix(&mut broker, CASES);
}

#[test]
fn nats_matrix() {
    let mut broker = matrix_broker(Kind::Nats);
    run_matrix(&mut broker, CASES);
}

/// 20 messages of a file job at QoS `qos` with MQTT 3.1.1: every frame arrives, nothing is
/// lost. QoS 2, which neither broker takes, goes at QoS 1, said once: RabbitMQ answers QoS 2
/// with PUBACK, NATS closes the connection (and gets the messages again at QoS 1).
fn qos_with_protocol_4(broker: &mut Broker, topic: &str, qos: u32) {
    let sub = subscriber(broker, topic);
    let mut run = Run::publish(
        &replay(20, false),
        &props(broker, topic, &format!("qos={qos} protocol=4")),
    );
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let downgrades = posted(&run, "mqttpublish-qos-downgraded");
    let stats = run.stop();

    let messages = sub.wait_for(20, LONG);
    let ids: BTreeSet<u64> = frame_ids(&messages).into_iter().collect();
    assert_eq!(ids, (0..20).collect(), "every frame arrives");
    if qos < 2 {
        assert_eq!(
            frame_ids(&messages),
            (0..20).collect::<Vec<_>>(),
            "in order, once"
        );
    }
    assert_eq!(stat(&stats, "messages-published"), 20, "{stats}");
    assert_eq!(stat(&stats, "messages-dropped"), 0, "{stats}");
    assert_accounted(&stats);
    assert!(
        warnings.iter().all(|w| !w.contains("client id")),
        "nobody blames the client id: {warnings:?}"
    );

    if qos == 2 {
        assert_eq!(downgrades.len(), 1, "said once: {downgrades:?}");
        let d = &downgrades[0];
        assert_eq!(
            (
                d.get::<u32>("requested").unwrap(),
                d.get::<u32>("granted").unwrap()
            ),
            (2, 1)
        );
        let why = match broker.kind() {
            Kind::RabbitMq => "acknowledged a QoS 2 message with PUBACK",
            _ => "closed the connection after each QoS 2 message",
        };
        let warning = warnings
            .iter()
            .find(|w| w.contains("Publishing at QoS 1 instead of 2"))
            .unwrap_or_else(|| panic!("a warning names the downgrade: {warnings:?}"));
        assert!(warning.contains(why), "{warning}");
        assert_eq!(
            warnings
                .iter()
                .filter(|w| w.contains("instead of 2"))
                .count(),
            1,
            "{warnings:?}"
        );
    } else {
        assert!(downgrades.is_empty(), "{downgrades:?}");
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}

/// MQTT 5, which neither broker speaks: a file job ends with an error that says so and
/// what to change; the bus message's reason says the same; nothing is published.
fn protocol_5_is_refused(broker: &mut Broker, topic: &str, qos: u32) {
    let sub = subscriber(broker, topic);
    let mut run = Run::publish(
        &replay(5, false),
        &props(broker, topic, &format!("qos={qos} protocol=5")),
    );
    let error = run.wait_error(LONG);
    let disconnected = posted_soon(&run, "mqttpublish-disconnected");
    let refused = posted(&run, "mqttpublish-refused");
    let stats = run.stop();

    assert!(error.contains("refused the connection"), "{error}");
    assert!(error.contains("set protocol=4"), "{error}");
    assert!(error.contains("MQTT 5"), "{error}");
    let reason = disconnected[0].get::<String>("reason").unwrap();
    assert!(reason.contains("set protocol=4"), "{reason}");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(stat(&stats, "messages-published"), 0);
    sub.assert_count_after(0, Duration::from_millis(200));
}

/// Frames as base64 JPEG: each message carries a 640x480 picture.
fn frames(broker: &mut Broker, topic: &str) {
    let sub = subscriber(broker, topic);
    let mut run = Run::publish(
        &replay(3, false),
        &props(broker, topic, "qos=1 publish-frame=true"),
    );
    run.wait_eos(LONG);
    run.stop();
    let messages = sub.wait_for(3, LONG);
    assert_eq!(frame_ids(&messages), [0, 1, 2]);
    for message in &messages {
        let (width, height) = jpeg_size(message);
        assert_eq!((width, height), (640, 480));
    }
}

/// Width and height of the JPEG of a `[metadata, "<base64 JPEG>"]` message.
fn jpeg_size(message: &Message) -> (u16, u16) {
    use base64::Engine;
    let v: Value = serde_json::from_slice(&message.payload).unwrap();
    let jpeg = base64::engine::general_purpose::STANDARD
        .decode(v[1].as_str().expect("a base64 image"))
        .unwrap();
    let mut decoder = jpeg_decoder::Decoder::new(jpeg.as_slice());
    decoder.read_info().expect("a JPEG");
    let info = decoder.info().unwrap();
    (info.width, info.height)
}

/// Wrong password: the file job ends with an error naming it and what to check, never the
/// password itself.
fn wrong_password(broker: &mut Broker, topic: &str) {
    let sub = subscriber(broker, topic);
    let mut run = Run::publish(
        &replay(3, false),
        &format!(
            "host={} port={} topic={topic} username={USER} password=wrong-pw",
            broker.host(),
            broker.port()
        ),
    );
    let error = run.wait_error(LONG);
    let warnings = run.warnings();
    let disconnected = posted_soon(&run, "mqttpublish-disconnected");
    run.stop();
    assert!(error.contains("check username and password"), "{error}");
    let reason = disconnected[0].get::<String>("reason").unwrap();
    let refusal = match broker.kind() {
        Kind::RabbitMq => "CONNACK: bad user name or password",
        // NATS answers a wrong password with "not authorized".
        _ => "CONNACK: not authorized",
    };
    assert!(reason.contains(refusal), "{reason}");
    for text in warnings.iter().chain([&error, &reason]) {
        assert!(!text.contains("wrong-pw"), "{text}");
    }
    sub.assert_count_after(0, Duration::from_millis(200));
}

/// The same with `gst-launch-1.0`: it exits non-zero and prints why.
fn wrong_password_gst_launch(broker: &mut Broker, topic: &str) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let description = format!(
        "{} ! mqttpublish host={} port={} topic={topic} username={USER} password=wrong-pw",
        replay(3, false),
        broker.host(),
        broker.port()
    );
    let out = Command::new("gst-launch-1.0")
        .args(description.split_whitespace())
        .env("GST_PLUGIN_PATH", &plugins)
        .stdin(Stdio::null())
        .output()
        .expect("gst-launch-1.0 runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
    assert!(printed.contains("check username and password"), "{printed}");
    assert!(!printed.contains("wrong-pw"), "{printed}");
}

/// One message of more than 5 MB (a 2400x1800 frame) arrives whole.
fn message_of_5_mb(broker: &mut Broker, topic: &str) {
    let sub = subscriber(broker, topic);
    let source = format!(
        "videotestsrc num-buffers=1 pattern=snow ! video/x-raw,width=2400,height=1800 \
         ! metareplay location={}",
        sample_recording()
    );
    let mut run = Run::publish(
        &source,
        &props(
            broker,
            topic,
            "qos=1 publish-frame=true jpeg-quality=95 max-message-size=16777216",
        ),
    );
    run.wait_eos(LONG);
    let stats = run.stop();
    let messages = sub.wait_for(1, LONG);
    assert_eq!(messages.len(), 1);
    assert!(
        messages[0].payload.len() > 5 * 1024 * 1024,
        "{} bytes",
        messages[0].payload.len()
    );
    assert_eq!(jpeg_size(&messages[0]), (2400, 1800));
    assert_eq!(stat(&stats, "frames-unencoded"), 0, "{stats}");
    assert_eq!(stat(&stats, "messages-published"), 1, "{stats}");
}

/// QoS 1, `clean-session=false`, a fixed client id, a live source, the broker restarted
/// mid-stream (RabbitMQ stopped, NATS killed): a persistent subscriber gets every frame (at least once), the video never
/// stalls, nothing is dropped or reported lost. RabbitMQ keeps no publisher session across
/// its restart: what it had not acknowledged is published again (`republished`).
fn persistent_session_across_restart(broker: &mut Broker, topic: &str) {
    let sub = Subscriber::builder(broker, topic)
        .credentials(USER, PASSWORD)
        .qos(QoS::AtLeastOnce)
        .persistent_session(&format!("matrix-sub-{}", std::process::id()))
        .connect();
    let mut run = Run::publish(
        &replay(100_000, true),
        &props(
            broker,
            topic,
            &format!(
                "qos=1 clean-session=false client-id=matrix-pub-{} max-queued-messages=5000",
                std::process::id()
            ),
        ),
    );
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    // Two seconds of frames arrive before the restart.
    sub.wait_for(60, LONG);
    match broker.kind() {
        // A crash. Stopped gracefully (SIGTERM), NATS 2.9.10 loses the message it
        // acknowledged last before exiting (the same frame in 8 of 8 runs here): nothing a
        // publisher can see or make up for; see README, Brokers.
        Kind::Nats => broker.kill(),
        _ => broker.stop(),
    }
    // The outage itself: the broker stays down for a second.
    thread::sleep(Duration::from_secs(1));
    broker.start();
    assert!(wait_connected(&mut run, 2, Duration::from_secs(60)));
    wait_published_after_reconnection(&run, 60);
    let ended = end_of_stream(run);
    let stats = &ended.stats;

    assert!(stat(stats, "messages-queued") > 60, "{stats}");
    assert_eq!(stat(stats, "republished"), ended.republished, "{stats}");
    assert_lossless(&ended, &sub, broker);
    let connected = &ended.connected;
    assert_eq!(connected.len(), 2, "{connected:?}");
    let resumed = connected[1].get::<bool>("session-present").unwrap();
    match broker.kind() {
        // RabbitMQ keeps no publisher session across its restart.
        Kind::RabbitMq => assert!(!resumed),
        // NATS keeps sessions in JetStream.
        _ => assert!(resumed),
    }
    assert_no_loss_reported(&ended.warnings);
}

/// Waits until the run posted `n` `mqttpublish-connected` messages.
fn wait_connected(run: &mut Run, n: usize, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if posted(run, "mqttpublish-connected").len() >= n {
            return true;
        }
        run.pump(Duration::from_millis(100));
    }
    false
}

/// Waits, right after a reconnection, until the element has published every message queued
/// until then and `more` after them; panics after `LONG` naming what did not go out.
fn wait_published_after_reconnection(run: &Run, more: u64) {
    let queued = stat(&run.stats(), "messages-queued");
    run.wait_stats(
        &format!("the {queued} messages queued before the reconnection and {more} more published"),
        LONG,
        |s| stat(s, "messages-published") >= queued + more,
    );
}

/// What a live run said and counted, ended by an end of stream.
struct Ended {
    connected: Vec<gst::Structure>,
    disconnected: Vec<gst::Structure>,
    /// The messages the `mqttpublish-republished` messages announced, in all.
    republished: u64,
    warnings: Vec<String>,
    /// The longest time between two buffers reaching the sink.
    gap: Duration,
    stats: gst::Structure,
}

/// Ends a live run with an end of stream once `frames` frames have reached the sink, and
/// waits up to `timeout` for it to come out (the element's flush-timeout and more); returns
/// the frames that reached the sink.
#[track_caller]
fn end_after(run: &mut Run, frames: usize, timeout: Duration, round: u32) -> u64 {
    let flowing = common::wait_until(LONG, Duration::from_millis(5), || {
        run.flow.count() >= frames
    });
    assert!(flowing, "round {round}: the video stalled after the kill");
    run.pipeline.send_event(gst::event::Eos::new());
    run.wait_eos(timeout);
    run.flow.count() as u64
}

/// Ends a live run with an end of stream and returns what it said and counted.
fn end_of_stream(mut run: Run) -> Ended {
    run.pipeline.send_event(gst::event::Eos::new());
    run.wait_eos(LONG);
    finished(run)
}

/// What a run that reached its end of stream said and counted.
fn finished(run: Run) -> Ended {
    Ended {
        connected: posted(&run, "mqttpublish-connected"),
        disconnected: posted(&run, "mqttpublish-disconnected"),
        republished: posted(&run, "mqttpublish-republished")
            .iter()
            .map(|s| s.get::<u64>("count").unwrap())
            .sum(),
        warnings: run.warnings(),
        gap: run.flow.longest_gap(),
        stats: run.stop(),
    }
}

/// Nothing lost: nothing dropped, every message queued published, every frame at the
/// subscriber, and the video never stalled.
#[track_caller]
fn assert_lossless(ended: &Ended, sub: &Subscriber, broker: &Broker) {
    let stats = &ended.stats;
    let queued = stat(stats, "messages-queued");
    assert_eq!(stat(stats, "messages-dropped"), 0, "{stats}");
    assert_eq!(stat(stats, "messages-published"), queued, "{stats}");
    assert_accounted(stats);
    assert_every_frame(sub, queued, broker);
    let gap = ended.gap;
    assert!(
        gap < Duration::from_millis(500),
        "the video stalled for {gap:?}"
    );
}

/// Every frame id of `0..n` the subscriber received, waiting up to `LONG` for all; panics
/// naming the missing ones (BROKER_LOG=1 prints the log of `broker` then).
#[track_caller]
fn assert_every_frame(sub: &Subscriber, n: u64, broker: &Broker) {
    let expected: BTreeSet<u64> = (0..n).collect();
    let mut got = BTreeSet::new();
    let complete = common::wait_until(LONG, Duration::from_millis(100), || {
        got = frame_ids(&sub.messages()).into_iter().collect();
        got.is_superset(&expected)
    });
    if !complete && std::env::var("BROKER_LOG").is_ok() {
        eprintln!("{}", broker.log_text());
    }
    let missing: Vec<&u64> = expected.difference(&got).collect();
    assert!(
        complete,
        "{} of {n} frames missing: {missing:?}",
        missing.len()
    );
}

/// No warning says that messages were lost or not delivered.
#[track_caller]
fn assert_no_loss_reported(warnings: &[String]) {
    assert!(
        warnings
            .iter()
            .all(|w| !w.contains("lost") && !w.contains("not delivered")),
        "{warnings:?}"
    );
}

/// At least once with a broker that lost the session: mosquitto without persistence,
/// frozen while QoS 1 messages are written and not acknowledged, killed and started again,
/// answers with session-present=false. The element publishes the unacknowledged messages
/// again (counted in `republished`, announced with `mqttpublish-republished`), the
/// subscriber gets every frame, and nothing is counted or reported lost.
#[test]
fn unacknowledged_messages_are_published_again_when_the_broker_lost_the_session() {
    let mut broker = Broker::new();
    let sub = Subscriber::builder(&broker, "again")
        .qos(QoS::AtLeastOnce)
        .connect();
    let mut run = Run::publish(
        &replay(100_000, true),
        &format!(
            "host={} port={} topic=again qos=1 clean-session=false client-id=again-{}",
            broker.host(),
            broker.port(),
            std::process::id()
        ),
    );
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    // A second of frames arrives before the freeze.
    sub.wait_for(30, LONG);
    broker.pause();
    // Written while the broker is frozen: never acknowledged (0.7 s of frames).
    run.wait_stats("20 messages in flight to the frozen broker", LONG, |s| {
        stat(s, "in-flight") >= 20
    });
    let unacknowledged = stat(&run.stats(), "in-flight");
    broker.kill();
    broker.start();
    assert!(wait_connected(&mut run, 2, LONG));
    wait_published_after_reconnection(&run, 30);
    let ended = end_of_stream(run);
    let stats = &ended.stats;

    assert!(
        unacknowledged > 5,
        "messages were in flight: {unacknowledged}"
    );
    assert!(!ended.connected[1].get::<bool>("session-present").unwrap());
    let republished = stat(stats, "republished");
    assert!(republished >= unacknowledged, "{stats}");
    assert_eq!(ended.republished, republished);
    assert_lossless(&ended, &sub, &broker);
    assert_no_loss_reported(&ended.warnings);
}

/// Failover across a three-node NATS cluster (JetStream, MQTT sessions on every node),
/// QoS 1, clean-session=false, a live source that the test ends 7 s after the kill with an
/// end of stream that waits up to 30 s (flush-timeout) for delivery, `host` listing the
/// node that leads JetStream first and another node second. Three rounds, each killing
/// (SIGKILL) the node in use: the first kills the listed node the element does not use for
/// 3 s before (NATS resets the element's connection as JetStream moves its leaders, and the
/// element may move off the leader; it says which it killed), the others kill the leader
/// 3 s into the stream. The other node then answers CONNECT only
/// once JetStream has elected a new leader (it closes each CONNECT after 4 s until then),
/// while the dead node refuses at once: the element fails over at once and retries the pair
/// with waits doubling between passes. Nothing is lost in any round (every frame reaches a
/// persistent subscriber on the third node, none stays in flight), the video never
/// stalls, and the element says which broker it moved to. The killed node is started again
/// before the next round.
#[test]
fn nats_cluster_failover_loses_nothing() {
    let mut nodes = Broker::nats_cluster(3);
    let started = Instant::now();
    let mut restarted = None;
    for round in 1..=3 {
        let (killed, outage, leader) = failover_round(&mut nodes, round, restarted);
        restarted = Some(killed);
        eprintln!(
            "round {round}: the node in use killed ({}), reconnected {outage:?} later; {:?} \
             so far",
            if leader {
                "the leader"
            } else {
                "not the leader"
            },
            started.elapsed()
        );
    }
}

/// Frames of a failover round after the node in use is killed (7 s at 30 fps), before the
/// test ends the stream. The live source has no end of its own: however long the first
/// round's restart of a node and its rejoining take on a loaded machine (up to a dozen
/// seconds), the stream is under way when the node in use dies.
const FRAMES_AFTER_THE_KILL: usize = 210;

/// One round of [`nats_cluster_failover_loses_nothing`]; `restarted` is the node the round
/// before killed and started again. Returns the node killed, the time from its death to
/// the reconnection, and whether it led JetStream.
fn failover_round(
    nodes: &mut [Broker],
    round: u32,
    restarted: Option<usize>,
) -> (usize, Duration, bool) {
    let address = |b: &Broker| format!("{}:{}", b.host(), b.port());
    let topic = format!("failover/{round}");
    let (leader, other, third, sub) = round_nodes(nodes, restarted, &topic);
    let mut run = Run::publish(
        &replay(100_000, true),
        &format!(
            "host={},{} topic={topic} qos=1 clean-session=false client-id=failover-{}-{round} \
             max-queued-messages=5000 flush-timeout=30000",
            address(&nodes[leader]),
            address(&nodes[other]),
            std::process::id()
        ),
    );
    assert!(run.wait_element_message("mqttpublish-connected", LONG));

    let used = if round == 1 {
        // Two seconds of frames, then the listed node the element does not use, down for
        // three seconds.
        sub.wait_for(60, LONG);
        nodes[other].kill();
        thread::sleep(Duration::from_secs(3));
        nodes[other].start();
        nodes[other].wait_mqtt_ready(Duration::from_secs(60));
        let in_use = settle(&mut run);
        if in_use == address(&nodes[leader]) {
            leader
        } else {
            other
        }
    } else {
        // Three seconds of frames; the leader is in use.
        sub.wait_for(90, LONG);
        assert_eq!(
            jetstream_leader(nodes),
            leader,
            "round {round}: JetStream's leader moved"
        );
        leader
    };
    let spare = if used == leader { other } else { leader };
    let before = posted(&run, "mqttpublish-connected").len();
    let killed = Instant::now();
    let at_kill = run.flow.count();
    nodes[used].kill();
    // The end of stream waits for delivery (flush-timeout).
    let frames = end_after(
        &mut run,
        at_kill + FRAMES_AFTER_THE_KILL,
        Duration::from_secs(90),
        round,
    );
    // The failures from the death to the reconnection.
    let connected_at = run.element_messages("mqttpublish-connected");
    assert!(
        connected_at.len() > before,
        "round {round}: {connected_at:?}"
    );
    let reconnected = connected_at[before].1;
    let failures: Vec<gst::Structure> = run
        .element_messages("mqttpublish-disconnected")
        .into_iter()
        .filter(|(_, at)| *at > killed && *at < reconnected)
        .map(|(s, _)| s)
        .collect();
    let ended = finished(run);
    assert!(!failures.is_empty(), "round {round}: no failure reported");

    assert_eq!(
        ended
            .connected
            .last()
            .unwrap()
            .get::<String>("broker")
            .unwrap(),
        address(&nodes[spare]),
        "round {round}"
    );
    // The lost connection fails over at once; each pass over the pair ends with a wait,
    // twice the one before.
    let first = &failures[0];
    assert_eq!(
        (
            first.get::<String>("broker").unwrap(),
            first.get::<String>("next-broker").unwrap(),
        ),
        (address(&nodes[used]), address(&nodes[spare])),
        "round {round}: the move is reported: {failures:?}"
    );
    let waits: Vec<u64> = failures
        .iter()
        .map(|d| d.get::<u64>("retry-in-ms").unwrap())
        .collect();
    for (i, wait) in waits.iter().enumerate() {
        assert_eq!(*wait == 0, i % 2 == 0, "round {round}: {failures:?}");
    }
    let passes: Vec<u64> = waits.iter().copied().filter(|ms| *ms > 0).collect();
    assert!(
        passes.windows(2).all(|w| w[1] == 2 * w[0])
            && passes.first().is_none_or(|ms| ms % 1000 == 0),
        "round {round}: {passes:?}"
    );
    let warnings = &ended.warnings;
    assert!(
        warnings.iter().any(|w| w.contains(&address(&nodes[spare]))),
        "round {round}: {warnings:?}"
    );
    assert_lossless(&ended, &sub, &nodes[third]);
    assert_eq!(
        stat(&ended.stats, "messages-queued"),
        frames,
        "round {round}"
    );

    nodes[used].start();
    nodes[used].wait_mqtt_ready(Duration::from_secs(60));
    (used, reconnected - killed, used == leader)
}

/// Failover with a spool, when the cluster needs longer than the end of stream waits: a
/// live run (QoS 1, `host` listing JetStream's leader first and another node second,
/// flush-timeout=1000) loses the leader (SIGKILL) half a second before the test ends it,
/// while the other node is frozen (SIGSTOP) until the run has stopped: what
/// was not acknowledged stays in the spool, the element says so, and counts it as kept,
/// not lost. The next run on the same spool and client id publishes it
/// before its own frames: every frame of both runs reaches a persistent subscriber on the
/// third node. Three rounds, each killing the node that leads JetStream at the time; the
/// killed node is started again before the next round.
#[test]
fn nats_cluster_failover_with_a_spool_keeps_what_the_end_of_stream_left() {
    let mut nodes = Broker::nats_cluster(3);
    let mut restarted = None;
    for round in 1..=3 {
        let killed = spool_failover_round(&mut nodes, round, restarted);
        restarted = Some(killed);
    }
}

/// Frames of a spool failover round: the first run's (live) before the leader is killed,
/// and after it, before the test ends the stream (half a second); the second run's.
const SPOOL_ROUND_FRAMES: (usize, usize, u64) = (135, 15, 30);

/// The frames of `run` (the element's `source`) the subscriber received, by frame id.
fn frames_of(sub: &Subscriber, run: &str) -> BTreeSet<u64> {
    sub.messages()
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("payload is JSON");
            let meta = if v.is_array() { &v[0] } else { &v };
            (meta["source"] == run).then(|| meta["frame_id"].as_u64().expect("frame_id"))
        })
        .collect()
}

/// One round of [`nats_cluster_failover_with_a_spool_keeps_what_the_end_of_stream_left`];
/// returns the node killed.
fn spool_failover_round(nodes: &mut [Broker], round: u32, restarted: Option<usize>) -> usize {
    let address = |b: &Broker| format!("{}:{}", b.host(), b.port());
    let topic = format!("spool-failover/{round}");
    let (leader, other, _, sub) = round_nodes(nodes, restarted, &topic);
    let spool = tempfile::tempdir().unwrap();
    let (before_the_kill, after_the_kill, second) = SPOOL_ROUND_FRAMES;
    let hosts = format!("{},{}", address(&nodes[leader]), address(&nodes[other]));
    let sink = |run: &str, flush_timeout: u32| {
        format!(
            "host={hosts} topic={topic} qos=1 clean-session=false \
             client-id=spool-failover-{}-{round} source={run} spool-location={} \
             max-queued-messages=5000 flush-timeout={flush_timeout}",
            std::process::id(),
            spool.path().display()
        )
    };

    let mut run = Run::publish(&replay(100_000, true), &sink("run1", 1000));
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    sub.wait_for(60, LONG);
    assert_eq!(
        run.element_messages("mqttpublish-connected")
            .last()
            .unwrap()
            .0
            .get::<String>("broker")
            .unwrap(),
        address(&nodes[leader]),
        "round {round}: the element publishes to JetStream's leader"
    );
    let under_way = common::wait_until(LONG, Duration::from_millis(5), || {
        run.flow.count() >= before_the_kill
    });
    assert!(under_way, "round {round}: the stream stalled");
    // The spare node frozen (SIGSTOP) while the leader dies: the cluster needs longer than
    // the end of stream waits, for certain. Half a second of frames after the kill, which
    // no node can take, then the end of the stream.
    nodes[other].pause();
    nodes[leader].kill();
    let at_kill = run.flow.count();
    let first = end_after(
        &mut run,
        at_kill + after_the_kill,
        Duration::from_secs(30),
        round,
    );
    let undelivered = posted(&run, "mqttpublish-undelivered");
    let ended = finished(run);
    nodes[other].resume();
    let stats = &ended.stats;
    assert_eq!(
        undelivered.len(),
        1,
        "round {round}: {stats} {:?} {:?}",
        ended.disconnected,
        ended.connected
    );
    let kept = undelivered[0].get::<u64>("kept-in-spool").unwrap();
    assert_eq!(
        stat(stats, "messages-queued"),
        first,
        "round {round}: {stats}"
    );
    assert!(
        kept > 0,
        "round {round}: nothing was left for the spool: {stats}"
    );
    assert_eq!(stat(stats, "messages-dropped"), 0, "round {round}: {stats}");
    assert_accounted(stats);
    assert!(
        ended.warnings.iter().any(|w| w.contains(&format!(
            "{kept} messages not delivered yet are kept in the spool"
        ))),
        "round {round}: {:?}",
        ended.warnings
    );

    // The next run, with the leader still down: the kept messages go first.
    let mut run = Run::publish(&replay(second as u32, false), &sink("run2", 60_000));
    run.wait_eos(Duration::from_secs(90));
    let undelivered = posted(&run, "mqttpublish-undelivered");
    assert!(undelivered.is_empty(), "round {round}: {undelivered:?}");
    let ended = finished(run);
    let stats = &ended.stats;
    assert!(
        stat(stats, "spool-restored") >= kept,
        "round {round}: {stats}"
    );
    assert_eq!(stat(stats, "spool-messages"), 0, "round {round}: {stats}");
    assert_accounted(stats);
    for (name, frames) in [("run1", first), ("run2", second)] {
        let expected: BTreeSet<u64> = (0..frames).collect();
        let mut got = BTreeSet::new();
        let complete = common::wait_until(LONG, Duration::from_millis(100), || {
            got = frames_of(&sub, name);
            got.is_superset(&expected)
        });
        let missing: Vec<&u64> = expected.difference(&got).collect();
        assert!(
            complete,
            "round {round}: {name}: frames missing: {missing:?}"
        );
    }
    eprintln!(
        "round {round}: the leader killed; {kept} messages kept in the spool and published \
         by the next run"
    );

    nodes[leader].start();
    nodes[leader].wait_mqtt_ready(Duration::from_secs(60));
    leader
}

/// The nodes of a failover round: JetStream's leader, the other node `host` lists, the
/// third, and a persistent QoS 1 subscriber to `topic` on the third. The subscriber is
/// never on `restarted`, the node just started again: a subscription made there while it
/// is still joining the cluster can get nothing (seen here).
fn round_nodes(
    nodes: &[Broker],
    restarted: Option<usize>,
    topic: &str,
) -> (usize, usize, usize, Subscriber) {
    let leader = jetstream_leader(nodes);
    let other = restarted
        .filter(|r| *r != leader)
        .unwrap_or((leader + 1) % 3);
    let third = 3 - leader - other;
    let client = format!("sub-{}-{}", std::process::id(), topic.replace('/', "-"));
    let sub = Subscriber::builder(&nodes[third], topic)
        .qos(QoS::AtLeastOnce)
        .persistent_session(&client)
        .connect();
    (leader, other, third, sub)
}

/// The index in `nodes` of the node that leads JetStream, once the cluster has one.
#[track_caller]
fn jetstream_leader(nodes: &[Broker]) -> usize {
    let mut leader = None;
    let known = common::wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        leader = nodes.iter().find_map(Broker::jetstream_leader);
        leader.is_some()
    });
    assert!(known, "no JetStream leader");
    let leader = leader.unwrap();
    nodes
        .iter()
        .position(|node| node.server_name() == leader)
        .unwrap_or_else(|| panic!("the leader {leader:?} is none of the nodes"))
}

/// Two brokers, the first a closed port: its refusal sends the element to the second at
/// once (`retry-in-ms` 0), not after a backoff delay. Then the second broker is stopped:
/// the lost connection fails over at once too, and the waits come after each pass over the
/// pair (the closed port's refusals), 1 s then 2 s, until the broker is back. Every frame
/// arrives.
#[test]
fn a_broker_that_refuses_sends_the_element_to_the_next_without_waiting() {
    let closed = format!("127.0.0.1:{}", common::free_port(false));
    let mut broker = Broker::new();
    let live = format!("{}:{}", broker.host(), broker.port());
    let sub = Subscriber::builder(&broker, "pass")
        .qos(QoS::AtLeastOnce)
        .connect();
    let mut run = Run::publish(
        &replay(100_000, true),
        &format!(
            "host={closed},{live} topic=pass qos=1 clean-session=false client-id=pass-{} \
             max-queued-messages=5000",
            std::process::id()
        ),
    );
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    let refused = run.element_messages("mqttpublish-disconnected");
    let connected = run.element_messages("mqttpublish-connected");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(
        failure(&refused[0].0),
        (closed.clone(), 1, 0, live.clone()),
        "on to the next broker without a wait"
    );
    assert_eq!(connected[0].0.get::<String>("broker").unwrap(), live);
    // The refusal and the connection take milliseconds; the first backoff delay is 1 s.
    let took = connected[0].1 - refused[0].1;
    assert!(took < Duration::from_secs(1), "connected {took:?} later");

    sub.wait_for(30, LONG);
    broker.stop();
    // The lost connection, then a pass (the closed port, the stopped broker), then the
    // closed port again: five failures in all, the last one followed by a 2 s wait.
    let five = common::wait_until(LONG, Duration::from_millis(20), || {
        run.element_messages("mqttpublish-disconnected").len() >= 5
    });
    assert!(
        five,
        "{:?}",
        run.element_messages("mqttpublish-disconnected")
    );
    broker.start();
    assert!(wait_connected(&mut run, 2, LONG));
    wait_published_after_reconnection(&run, 30);
    let ended = end_of_stream(run);

    let failures: Vec<_> = ended.disconnected.iter().map(failure).collect();
    assert_eq!(
        failures[..5],
        [
            (closed.clone(), 1, 0, live.clone()),
            (live.clone(), 1, 0, closed.clone()),
            (closed.clone(), 2, 1000, live.clone()),
            (live.clone(), 3, 0, closed.clone()),
            (closed.clone(), 4, 2000, live.clone()),
        ],
        "{failures:?}"
    );
    let connected: Vec<String> = ended
        .connected
        .iter()
        .map(|c| c.get::<String>("broker").unwrap())
        .collect();
    assert_eq!(connected, [live.clone(), live], "{connected:?}");
    assert_lossless(&ended, &sub, &broker);
}

/// `broker`, `attempt`, `retry-in-ms` and `next-broker` of an `mqttpublish-disconnected`.
fn failure(message: &gst::Structure) -> (String, u32, u64, String) {
    (
        message.get("broker").unwrap(),
        message.get("attempt").unwrap(),
        message.get("retry-in-ms").unwrap(),
        message.get("next-broker").unwrap(),
    )
}

/// Waits until the element has been connected for a second with nothing left waiting
/// (at most a few frames in flight); returns the broker it is connected to.
fn settle(run: &mut Run) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut calm_since: Option<Instant> = None;
    while Instant::now() < deadline {
        run.pump(Duration::from_millis(100));
        let stats = run.stats();
        let calm = stats.get::<bool>("connected").unwrap()
            && stat(&stats, "queue-depth") + stat(&stats, "in-flight") < 10;
        match (calm, calm_since) {
            (false, _) => calm_since = None,
            (true, None) => calm_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() >= Duration::from_secs(1) => {
                let connected = posted(run, "mqttpublish-connected");
                return connected.last().unwrap().get::<String>("broker").unwrap();
            }
            (true, Some(_)) => {}
        }
    }
    panic!("the element did not settle: {}", run.stats());
}

/// A resumed session after the connection was lost with rumqttc's in-flight window full
/// (100 unacknowledged) and more publishes waiting in its request channel: the broker
/// stops answering (SIGSTOP) while QoS 1 messages are written, rumqttc's keep-alive gives
/// up, the broker resumes and the element resumes the session (session-present=true). The
/// waiting publishes are taken back and queued again (`Session::take_unsent`), the
/// unacknowledged ones resent by rumqttc: every frame arrives, none stays in flight, the
/// counts add up. (mosquitto acknowledges the resent publishes at once, so rumqttc's own
/// packet-id collisions, which this taking back avoids, do not happen here; they need a
/// broker slow to acknowledge after the resume, as a NATS cluster moving its leaders.)
#[test]
fn a_resumed_session_with_a_full_window_loses_nothing() {
    let mut broker = Broker::new();
    let sub = Subscriber::builder(&broker, "resume")
        .qos(QoS::AtLeastOnce)
        .connect();
    let mut run = Run::publish(
        &format!(
            "videotestsrc num-buffers=100000 is-live=true \
             ! video/x-raw,width=64,height=48,framerate=100/1 ! metareplay location={} loop=true",
            sample_recording()
        ),
        &format!(
            "host={} port={} topic=resume qos=1 clean-session=false client-id=resume-{} \
             keep-alive=2 max-queued-messages=5000",
            broker.host(),
            broker.port(),
            std::process::id()
        ),
    );
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    // Half a second of frames arrives before the freeze.
    sub.wait_for(50, LONG);
    broker.pause();
    // The window full and more waiting in the channel, then the keep-alive ends the
    // connection: 2 to 4 s after the freeze (the ping goes out on the keep-alive's tick and
    // fails on the next), at least 200 frames, where the window and the channel hold 164.
    // With keep-alive=1 the connection could end 1.1 s after the freeze, before 110 frames.
    let mut full = 0;
    let dropped = common::wait_until(LONG, Duration::from_millis(50), || {
        let stats = run.stats();
        full = full.max(stat(&stats, "in-flight"));
        !stats.get::<bool>("connected").unwrap()
    });
    assert!(dropped, "the keep-alive ends the connection");
    broker.resume();
    assert!(wait_connected(&mut run, 2, LONG));
    wait_published_after_reconnection(&run, 200);
    let ended = end_of_stream(run);
    let (connected, stats) = (&ended.connected, &ended.stats);

    assert!(
        full > 110,
        "the window was full and more waited: {full} in flight"
    );
    assert!(connected[1].get::<bool>("session-present").unwrap());
    let queued = stat(stats, "messages-queued");
    assert_eq!(stat(stats, "in-flight"), 0, "{stats}");
    assert_eq!(stat(stats, "messages-published"), queued, "{stats}");
    assert_accounted(stats);
    assert_every_frame(&sub, queued, &broker);
}
