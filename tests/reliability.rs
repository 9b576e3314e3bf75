// SPDX-License-Identifier: MPL-2.0

//! Faults, hostile input and security: `mqttpublish` against a real mosquitto that is
//! stopped, killed, frozen and misconfigured, with the numbers a user relies on asserted.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    assert_accounted, case, init_plugin, plugin_dir, sample_recording, stat, to, wait_until,
    Broker, QoS, Run, Subscriber, TlsFiles,
};
use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;
use serde_json::Value;

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

fn live_source(buffers: u32) -> String {
    format!(
        "videotestsrc is-live=true num-buffers={buffers} \
         ! video/x-raw,width=64,height=48,framerate=30/1 \
         ! metareplay location={} loop=true",
        sample_recording()
    )
}

/// An object to attach: label, pixel rectangle, param structure.
type Roi<'a> = (&'a str, (u32, u32, u32, u32), gst::Structure);

fn frame_id(payload: &[u8]) -> u64 {
    let v: Value = serde_json::from_slice(payload).unwrap();
    let meta = if v.is_array() { &v[0] } else { &v };
    meta["frame_id"].as_u64().unwrap()
}

/// 1. SIGTERM, 5 s down, restart: every frame arrives, video never stalls, one reconnect.
#[test]
fn broker_restart_is_lossless_with_a_persistent_session() {
    let mut broker = Broker::builder().persistence(true).start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .persistent_session("reliability-subscriber")
        .qos(QoS::AtLeastOnce)
        .connect();
    let frames = 330; // 11 s at 30 fps
    let mut run = Run::publish(
        &live_source(frames),
        &format!(
            "{} qos=1 clean-session=false client-id=reliability-1",
            to(&broker)
        ),
    );
    assert!(sub.wait_for(30, LONG).len() >= 30);
    broker.stop();
    let down = Instant::now();
    run.pump(Duration::from_secs(5));
    let flowed_while_down = run.flow.count();
    broker.start();
    let outage = down.elapsed();
    run.wait_eos(LONG);
    let stats = run.stats();
    let gap = run.flow.longest_gap();
    run.stop();

    assert!(outage >= Duration::from_secs(5));
    let mut ids: Vec<u64> = sub
        .wait_for(frames as usize, LONG)
        .iter()
        .map(|m| frame_id(&m.payload))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids,
        (0..u64::from(frames)).collect::<Vec<_>>(),
        "every frame_id"
    );
    assert!(
        gap < Duration::from_millis(500),
        "video stalled for {gap:?}"
    );
    assert!(
        flowed_while_down > 30 + 100,
        "buffers kept flowing while the broker was down"
    );
    assert_eq!(stat(&stats, "reconnects"), 1, "{stats}");
    assert_eq!(stat(&stats, "messages-dropped"), 0, "{stats}");
}

/// 2. SIGKILL with QoS 0 and clean sessions: no stall, publishing resumes within the
///    backoff bound, every message accounted for.
#[test]
fn broker_kill_with_qos0_accounts_for_everything() {
    let mut broker = Broker::new();
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtMostOnce)
        .connect();
    let mut run = Run::publish(&live_source(240), &to(&broker));
    sub.wait_for(20, LONG);
    broker.kill();
    run.pump(Duration::from_secs(2));
    let before_restart = sub.count();
    broker.start();
    let restarted = Instant::now();
    let sub_after = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtMostOnce)
        .connect();
    // The retries come 1, 3 and 7 s after the loss (waits of 1, 2 and 4 s): the broker
    // back about 2 s after the loss is found by the attempt at 3 s, or, when its start
    // took over a second on a busy machine, by the one at 7 s. Either way publishing
    // resumes within the wait in force (at most 4 s) plus a connection's round trips.
    sub_after.wait_for(1, LONG);
    let resumed = restarted.elapsed();
    run.wait_eos(LONG);
    let stats = run.stats();
    let gap = run.flow.longest_gap();
    run.stop();

    assert!(
        resumed < Duration::from_secs(5),
        "resumed {resumed:?} after the broker was back"
    );
    assert!(
        gap < Duration::from_millis(500),
        "video stalled for {gap:?}"
    );
    assert_eq!(stat(&stats, "messages-queued"), 240);
    assert_accounted(&stats);
    assert!(before_restart >= 20);
}

/// 3. Broker absent at start: PLAYING at once, retries 1 s, 2 s, 4 s apart, and once the
///    broker is up, says so and delivers every message queued while it was away.
#[test]
fn broker_absent_at_start_retries_with_backoff() {
    let mut broker = Broker::new();
    broker.stop();
    // 20 s of video at 10 fps: the broker comes back after the sink's fourth attempt (~7 s),
    // the sink at its next retry (~15 s), with ~150 messages queued (the default queue holds
    // 256).
    let frames = 200;
    let started = Instant::now();
    let mut run = Run::publish(
        &format!(
            "videotestsrc is-live=true num-buffers={frames} \
             ! video/x-raw,width=64,height=48,framerate=10/1 \
             ! metareplay location={} loop=true",
            sample_recording()
        ),
        &format!("{} qos=1", to(&broker)),
    );
    let (result, state, _) = run.pipeline.state(gst::ClockTime::from_seconds(1));
    assert_eq!(result, Ok(gst::StateChangeSuccess::Success));
    assert_eq!(state, gst::State::Playing);
    assert!(started.elapsed() < Duration::from_secs(2));

    // The broker stays away for four attempts (0, 1, 3 and 7 s after the start); then read
    // when each failed attempt was reported.
    let four_failed = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        run.element_messages("mqttpublish-disconnected").len() >= 4
    });
    assert!(
        four_failed,
        "the sink did not report four failed attempts within 15 s: {:?}",
        run.element_messages("mqttpublish-disconnected")
    );
    let attempts: Vec<(u32, u64, Instant)> = run
        .element_messages("mqttpublish-disconnected")
        .into_iter()
        .map(|(s, posted)| {
            (
                s.get("attempt").unwrap(),
                s.get("retry-in-ms").unwrap(),
                posted,
            )
        })
        .collect();
    let retry_in: Vec<u64> = attempts.iter().map(|a| a.1).collect();
    assert_eq!(&retry_in[..4], [1000, 2000, 4000, 8000], "{attempts:?}");
    for pair in attempts.windows(2) {
        let gap = pair[1].2 - pair[0].2;
        let expected = Duration::from_millis(pair[0].1);
        assert!(
            gap >= expected - Duration::from_millis(100)
                && gap < expected + Duration::from_millis(1500),
            "attempt {} came {gap:?} after the previous one, expected {expected:?}",
            pair[1].0
        );
    }

    broker.start();
    let sub = Subscriber::new(&broker, TOPIC);
    assert!(run.wait_element_message("mqttpublish-connected", Duration::from_secs(10)));
    run.wait_eos(LONG);
    let stats = run.stop();
    // Queued while down, delivered once up.
    assert_eq!(sub.wait_for(frames, LONG).len(), frames);
    assert_eq!(stat(&stats, "messages-acknowledged"), frames as u64);
}

/// `max-reconnect-delay` bounds every wait: at 400 ms, below the first delay of 1 s, each
/// wait is drawn between 200 and 400 ms (the jitter that keeps a fleet of cameras from
/// reconnecting in lockstep), and the sink retries that often, then publishes once the
/// broker is up.
#[test]
fn max_reconnect_delay_bounds_every_wait_with_jitter() {
    let mut broker = Broker::new();
    broker.stop();
    let mut run = Run::publish(
        &live_source(100_000),
        &format!("{} qos=1 max-reconnect-delay=400", to(&broker)),
    );
    let eight_failed = wait_until(LONG, Duration::from_millis(20), || {
        run.element_messages("mqttpublish-disconnected").len() >= 8
    });
    let failures = run.element_messages("mqttpublish-disconnected");
    assert!(eight_failed, "{failures:?}");
    let waits: Vec<u64> = failures
        .iter()
        .map(|(s, _)| s.get("retry-in-ms").unwrap())
        .collect();
    assert!(waits.iter().all(|ms| (200..=400).contains(ms)), "{waits:?}");
    assert!(
        waits.iter().any(|ms| *ms != waits[0]),
        "jittered: {waits:?}"
    );
    // Eight failures within a fraction of what a 1 s, 2 s, 4 s ... backoff takes (7 s
    // for four).
    let took = failures[7].1 - failures[0].1;
    assert!(took < Duration::from_secs(7), "{took:?}: {waits:?}");

    broker.start();
    let sub = Subscriber::new(&broker, TOPIC);
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    sub.wait_for(10, LONG);
    let stats = run.stop();
    assert_accounted(&stats);
}

/// 5. A frozen broker (SIGSTOP): leaky queues never block the streaming thread; a
///    blocking queue does, but a flushing seek and a state change to NULL still finish.
#[test]
fn frozen_broker_never_blocks_leaky_queues() {
    for leaky in ["downstream", "upstream"] {
        case(leaky, || {
            let mut broker = Broker::new();
            // Up to rumqttc's in-flight window (100) plus its request channel (64) can go out
            // before the queue (20) fills: 2,000 buffers as fast as they come overflow it.
            let mut run = Run::publish(
                &format!(
                    "videotestsrc num-buffers=2000 ! video/x-raw,width=64,height=48 \
                     ! metareplay location={} loop=true",
                    sample_recording()
                ),
                &format!(
                    "{} qos=1 leaky={leaky} max-queued-messages=20 flush-timeout=100",
                    to(&broker)
                ),
            );
            broker.pause();
            run.wait_eos(LONG);
            let gap = run.flow.longest_gap();
            let stats = run.stats();
            let stopping = Instant::now();
            run.stop();
            let stop_took = stopping.elapsed();
            broker.resume();
            assert!(gap < Duration::from_millis(500), "stalled for {gap:?}");
            assert!(stat(&stats, "dropped-queue-full") > 0, "{stats}");
            assert_accounted(&stats);
            assert!(
                stop_took < Duration::from_secs(3),
                "stop took {stop_took:?}"
            );
        });
    }
}

/// `leaky=no`, and the default `leaky=auto` with a source that is not live, wait for room:
/// with the broker frozen the streaming thread blocks, and a flushing seek and a state
/// change to NULL still finish at once.
#[test]
fn frozen_broker_blocking_queue_unblocks_on_seek_and_null() {
    for (name, leaky) in [("leaky=no", "leaky=no"), ("the default leaky=auto", "")] {
        case(name, || {
            let mut broker = Broker::new();
            let run = Run::publish(
                &format!(
                    "videotestsrc num-buffers=100000 ! video/x-raw,width=64,height=48 \
                     ! metareplay location={} loop=true",
                    sample_recording()
                ),
                &format!("{} qos=1 {leaky} max-queued-messages=10", to(&broker)),
            );
            run.wait_stats("publishing", LONG, |s| stat(s, "messages-published") > 0);
            broker.pause();
            // The queue fills and the streaming thread blocks: a buffer reached the sink and waits
            // for room (every buffer is one message).
            run.wait_stats("the queue full and a buffer waiting for room", LONG, |s| {
                stat(s, "queue-depth") == 10 && run.flow.count() as u64 > stat(s, "messages-queued")
            });
            // Messages go on into rumqttc's channel and the socket's buffers until those are
            // full too, and the queue refills behind them: wait until nothing moves.
            let (mut last, mut since) = (run.flow.count(), Instant::now());
            let settled = wait_until(LONG, Duration::from_millis(50), || {
                let now = run.flow.count();
                if now != last {
                    (last, since) = (now, Instant::now());
                }
                since.elapsed() >= Duration::from_secs(1)
            });
            assert!(settled, "the flow never stopped with the broker frozen");
            let flowing = run.flow.count();
            // The check itself: nothing flows for half a second.
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(
                run.flow.count(),
                flowing,
                "blocked: lossless mode waits for room"
            );
            assert_eq!(stat(&run.stats(), "queue-depth"), 10, "the queue is full");

            let seeking = Instant::now();
            assert!(run
                .pipeline
                .seek_simple(gst::SeekFlags::FLUSH, gst::ClockTime::ZERO)
                .is_ok());
            // Blocked, it would never finish; 3 s leaves a busy machine room.
            let _ = run.pipeline.state(gst::ClockTime::from_seconds(3));
            assert!(
                seeking.elapsed() < Duration::from_secs(3),
                "seek took {:?}",
                seeking.elapsed()
            );

            let stopping = Instant::now();
            let stats = run.stop();
            assert!(
                stopping.elapsed() < Duration::from_secs(3),
                "NULL took {:?}",
                stopping.elapsed()
            );
            broker.resume();
            assert_eq!(
                stat(&stats, "dropped-queue-full"),
                0,
                "lossless mode never drops"
            );
            assert_accounted(&stats);
        });
    }
}

/// A live source while the broker is away, with a small queue: the first drop is a warning
/// naming the cause and the policy, the count follows once the sink has reconnected and
/// the queue has room again, and the end-of-stream report counts what `stats` counts.
#[test]
fn live_drops_are_announced_counted_and_match_stats() {
    let mut broker = Broker::new();
    broker.stop();
    // 6 s at 30 fps: the broker is back after about 1 s, and the count comes once nothing
    // was dropped for a second, before the end of the stream even when the broker's start
    // took over a second on a busy machine and the retry that finds it is the one 3 s
    // after the first failure.
    let frames = 180;
    let mut run = Run::publish(
        &live_source(frames),
        &format!(
            "{} qos=1 max-queued-messages=10 flush-timeout=5000",
            to(&broker)
        ),
    );
    // The sink's first attempt fails at once; its retry 1 s later finds the broker.
    let first_failed = wait_until(LONG, Duration::from_millis(20), || {
        !run.element_messages("mqttpublish-disconnected").is_empty()
    });
    assert!(
        first_failed,
        "the sink's first attempt was not reported failed"
    );
    broker.start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    // Live: losing messages is a warning, never an error.
    run.wait_eos(LONG);
    let at_eos = run.stats();
    let warnings = run.warnings();
    let dropping = run.element_messages("mqttpublish-dropping");
    let dropped = run.element_messages("mqttpublish-dropped");
    let undelivered = run.element_messages("mqttpublish-undelivered");
    let stats = run.stop();

    let lost = stat(&stats, "messages-dropped");
    assert!(
        lost > 0,
        "the queue overflowed while the broker was away: {stats}"
    );
    assert_eq!(stat(&stats, "dropped-queue-full"), lost, "{stats}");
    assert_eq!(stat(&stats, "messages-acknowledged"), frames as u64 - lost);

    // The first drop: once, with its cause and the policy auto chose.
    assert_eq!(dropping.len(), 1, "{dropping:?}");
    let first = &dropping[0].0;
    assert!(!first.get::<bool>("connected").unwrap(), "{first}");
    assert_eq!(first.get::<&str>("leaky").unwrap(), "auto", "{first}");
    assert_eq!(
        first.get::<&str>("policy").unwrap(),
        "downstream",
        "{first}"
    );
    assert_eq!(first.get::<u64>("limit").unwrap(), 10, "{first}");
    assert!(
        warnings.iter().any(|w| w.starts_with("Dropping messages")
            && w.contains("max-queued-messages=10")
            && w.contains("is not connected")
            && w.contains("leaky=auto (the upstream is live) drops the oldest")),
        "{warnings:?}"
    );

    // The count, once the queue had room again, before the end of the stream.
    assert_eq!(dropped.len(), 1, "{dropped:?}");
    let episode = &dropped[0].0;
    assert_eq!(episode.get::<u64>("count").unwrap(), lost, "{episode}");
    assert!(!episode.get::<bool>("at-end").unwrap(), "{episode}");
    assert!(
        dropped[0].1 > dropping[0].1,
        "the count comes after the first drop"
    );
    assert!(
        warnings.iter().any(
            |w| w.starts_with(&format!("{lost} messages dropped (the oldest)"))
                && w.contains("room again")
        ),
        "{warnings:?}"
    );

    // End of stream: every message lost in the run, as stats count them.
    assert_eq!(undelivered.len(), 1, "{undelivered:?}");
    let report = &undelivered[0].0;
    assert_eq!(
        report.get::<u64>("undelivered").unwrap(),
        stat(&at_eos, "messages-dropped")
            + stat(&at_eos, "queue-depth")
            + stat(&at_eos, "in-flight"),
        "{report} {at_eos}"
    );
    assert_eq!(report.get::<u64>("undelivered").unwrap(), lost, "{report}");
    assert!(!report.get::<bool>("error").unwrap(), "{report}");
    assert!(
        warnings.iter().any(|w| w.starts_with(&format!(
            "End of stream: {lost} of {frames} messages were not delivered ({lost} dropped: queue full)"
        ))),
        "{warnings:?}"
    );

    assert_eq!(
        sub.wait_for(frames as usize - lost as usize, LONG).len(),
        frames as usize - lost as usize
    );
    sub.assert_count_after(frames as usize - lost as usize, Duration::from_millis(200));
}

/// 7. Two sinks with the same explicit client id: the bus says so.
#[test]
fn duplicate_client_ids_are_reported() {
    let broker = Broker::new();
    let mut run = Run::start(&format!(
        "{} ! tee name=t t. ! queue ! mqttpublish name=sink host={h} port={p} client-id=same-id \
         t. ! queue ! mqttpublish name=twin host={h} port={p} client-id=same-id",
        live_source(100_000),
        h = broker.host(),
        p = broker.port()
    ));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut conflict = None;
    while conflict.is_none() && Instant::now() < deadline {
        run.pump(Duration::from_millis(500));
        conflict = run
            .element_messages("mqttpublish-client-id-conflict")
            .into_iter()
            .next();
    }
    let warnings = run.warnings();
    run.stop();
    let (conflict, _) = conflict.expect("a client-id conflict message");
    let reason: String = conflict.get("reason").unwrap();
    assert!(reason.contains("same-id"), "{reason}");
    assert!(
        warnings.iter().any(|w| w.contains("same-id")),
        "{warnings:?}"
    );
}

/// A sink with the TLS properties `tls` publishes 15 live frames to `address` (its `host`
/// and `port`) of `broker`, which does not let it connect: nothing goes out, in plain text
/// or otherwise, and nothing arrives. Returns its warnings and disconnection messages.
fn tls_refused(
    broker: &Broker,
    address: &str,
    tls: &str,
) -> (Vec<String>, Vec<(gst::Structure, Instant)>) {
    let sub = Subscriber::new(broker, TOPIC);
    let mut run = Run::publish(
        &live_source(15),
        &format!("{address} {tls} flush-timeout=200"),
    );
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stats();
    let disconnected = run.element_messages("mqttpublish-disconnected");
    run.stop();
    assert_eq!(stat(&stats, "messages-published"), 0, "{stats}");
    sub.assert_count_after(0, Duration::from_millis(300));
    (warnings, disconnected)
}

/// A TLS failure: the broker's certificate and what the sink trusts and presents.
#[derive(Clone, Copy)]
struct TlsFailure<'a> {
    name: &'a str,
    server_cert: &'a Path,
    server_key: &'a Path,
    /// The CA the sink trusts.
    ca: &'a Path,
    /// Whether the sink presents the client certificate the broker requires.
    client_cert: bool,
    /// What a warning names.
    cause: &'a str,
}

/// 8. TLS failures: no connection, a warning naming the cause, no plaintext fallback.
#[test]
fn tls_failures_name_the_cause_and_never_fall_back() {
    let tls = TlsFiles::generate();
    // What connects; each case breaks one thing of it.
    let valid = TlsFailure {
        name: "",
        server_cert: &tls.server_cert,
        server_key: &tls.server_key,
        ca: &tls.ca,
        client_cert: true,
        cause: "",
    };
    let cases = [
        TlsFailure {
            name: "wrong CA",
            ca: &tls.other_ca,
            cause: "UnknownIssuer",
            ..valid
        },
        TlsFailure {
            name: "expired",
            server_cert: &tls.expired_server_cert,
            server_key: &tls.expired_server_key,
            cause: "certificate expired",
            ..valid
        },
        TlsFailure {
            name: "other host",
            server_cert: &tls.wrong_host_server_cert,
            server_key: &tls.wrong_host_server_key,
            cause: "not valid for name",
            ..valid
        },
        TlsFailure {
            name: "no client cert",
            client_cert: false,
            cause: "CertificateRequired",
            ..valid
        },
    ];
    for failure in cases {
        case(failure.name, || {
            let broker = Broker::builder()
                .tls_with(&tls.ca, failure.server_cert, failure.server_key, true)
                .start();
            let client = if failure.client_cert {
                format!(
                    "tls-cert-file={} tls-key-file={}",
                    tls.client_cert.display(),
                    tls.client_key.display()
                )
            } else {
                String::new()
            };
            let (warnings, _) = tls_refused(
                &broker,
                &format!("host=localhost port={}", broker.tls_port()),
                &format!("tls-ca-file={} {client}", failure.ca.display()),
            );
            assert!(
                warnings.iter().any(|w| w.contains("Not connected")),
                "a warning says why: {warnings:?}"
            );
            assert!(
                warnings.iter().any(|w| w.contains(failure.cause)),
                "a warning names {:?}: {warnings:?}",
                failure.cause
            );
        });
    }
}

/// 8b. TLS to a port that speaks plain MQTT: the warning asks whether the port speaks TLS.
#[test]
fn tls_to_a_plain_port_asks_whether_it_is_a_tls_port() {
    let tls = TlsFiles::generate();
    let broker = Broker::new();
    let (warnings, disconnected) = tls_refused(
        &broker,
        &format!("host=127.0.0.1 port={}", broker.port()),
        &format!("tls-ca-file={}", tls.ca.display()),
    );
    let hint = format!(
        "(is port {} a TLS port? the broker closed the connection during the TLS handshake)",
        broker.port()
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Not connected") && w.contains(&hint)),
        "a warning asks about the port: {warnings:?}"
    );
    let (first, _) = disconnected.first().expect("a disconnected message");
    let reason: String = first.get("reason").unwrap();
    assert!(reason.contains(&hint), "{reason}");
}

/// 9. The password never shows: not in a full debug log, errors or gst-inspect.
///
/// It goes in through the configuration file: GStreamer's own pipeline parser logs the
/// whole gst-launch description at debug level, so a password typed there is the
/// parser's to leak, not ours (the README says so).
#[test]
fn password_never_appears_in_debug_output() {
    let broker = Broker::builder().user("camera", "pa55-w0rd-xyzzy").start();
    let plugin_dir = plugin_dir(broker.dir());
    let sub = Subscriber::builder(&broker, TOPIC)
        .credentials("camera", "pa55-w0rd-xyzzy")
        .connect();
    let mut expected = 0;
    for (password, delivered) in [("pa55-w0rd-xyzzy", 5), ("wrong-pa55-xyzzy", 0)] {
        case(password, || {
            let config = broker.dir().join("secret.json");
            std::fs::write(
                &config,
                format!(
                    r#"{{"mqtt_publisher": {{"username": "camera", "password": "{password}"}}}}"#
                ),
            )
            .unwrap();
            let out = std::process::Command::new("gst-launch-1.0")
                .args([
                    "videotestsrc",
                    "num-buffers=5",
                    "!",
                    "metareplay",
                    &format!("location={}", sample_recording()),
                    "!",
                    "mqttpublish",
                    "host=127.0.0.1",
                    &format!("port={}", broker.port()),
                    &format!("config={}", config.display()),
                    "flush-timeout=1000",
                ])
                .env("GST_PLUGIN_PATH", &plugin_dir)
                .env("GST_DEBUG", "*:9")
                .env("GST_DEBUG_NO_COLOR", "1")
                .output()
                .expect("gst-launch-1.0 runs");
            let output = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(output.contains("mqttpublish"), "debug output captured");
            assert!(!output.contains("xyzzy"), "{password} leaked");
            if delivered == 0 {
                assert!(
                    output.contains("Not connected"),
                    "the refusal is reported: {}",
                    &output[output.len().saturating_sub(3000)..]
                );
            }
            expected += delivered;
            sub.wait_for(expected, LONG);
            // And no more: a settle in which nothing may arrive.
            sub.assert_count_after(expected, Duration::from_millis(300));
            assert_eq!(sub.count() % 5, 0);
        });
    }
    assert_eq!(sub.count(), 5, "only the right password published");

    let inspect = std::process::Command::new("gst-inspect-1.0")
        .arg("mqttpublish")
        .env("GST_PLUGIN_PATH", &plugin_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        text.contains("password") && text.contains("Write only"),
        "{text}"
    );
}

/// Waits for the end of the stream of `pipeline`; fails at an error or after `LONG`.
fn wait_eos(pipeline: &gst::Pipeline) {
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(LONG.as_secs()),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .unwrap_or_else(|| panic!("no end of the stream within {LONG:?}"));
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
}

/// 10. Hostile label and tag text: always valid JSON.
#[test]
fn hostile_labels_produce_valid_json() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    init_plugin();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property(
            "caps",
            gst::Caps::builder("video/x-raw")
                .field("format", "RGB")
                .field("width", 64i32)
                .field("height", 48i32)
                .field("framerate", gst::Fraction::new(30, 1))
                .build(),
        )
        .property("format", gst::Format::Time)
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("mqttpublish")
        .name("sink")
        .property("host", broker.host())
        .property("port", u32::from(broker.port()))
        .property("max-message-size", 8u32 * 1024 * 1024)
        .build()
        .unwrap();
    pipeline.add_many([&src, &sink]).unwrap();
    src.link(&sink).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let appsrc = src.downcast::<gst_app::AppSrc>().unwrap();

    let labels = [
        "say \"hi\"".to_string(),
        "line\nbreak\ttab\u{1}control".to_string(),
        "\u{1F4A9} \\ backslash </script>".to_string(),
        "x".repeat(1024 * 1024),
    ];
    for (i, label) in labels.iter().enumerate() {
        let mut buffer = gst::Buffer::with_size(64 * 48 * 3).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(i as u64 * 33));
            let mut roi = VideoRegionOfInterestMeta::add(b, label, (1, 2, 3, 4));
            roi.add_param(
                gst::Structure::builder("detection")
                    .field("confidence", 0.5f64)
                    .field("label_id", 1i32)
                    .build(),
            );
            roi.add_param(
                gst::Structure::builder("color")
                    .field("label", label.as_str())
                    .field("confidence", 0.5f64)
                    .build(),
            );
        }
        appsrc.push_buffer(buffer).unwrap();
    }
    // A C producer can attach a label that is not UTF-8 at all.
    let mut buffer = gst::Buffer::with_size(64 * 48 * 3).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(200));
        let mut roi = VideoRegionOfInterestMeta::add(b, "placeholder", (1, 2, 3, 4));
        // SAFETY: the meta is a transparent wrapper of the C struct; quarks live forever.
        unsafe {
            let raw = &mut *roi as *mut VideoRegionOfInterestMeta
                as *mut gst_video::ffi::GstVideoRegionOfInterestMeta;
            (*raw).roi_type = gst::glib::ffi::g_quark_from_string(c"caf\xe9 \xff".as_ptr());
        }
    }
    appsrc.push_buffer(buffer).unwrap();
    appsrc.end_of_stream().unwrap();
    wait_eos(&pipeline);
    pipeline.set_state(gst::State::Null).unwrap();

    let messages = sub.wait_for(labels.len() + 1, LONG);
    for (message, label) in messages.iter().zip(&labels) {
        let v: Value = serde_json::from_slice(&message.payload).expect("valid JSON");
        assert_eq!(v["objects"][0]["roi_type"], label.as_str());
        assert_eq!(v["objects"][0]["color"]["label"], label.as_str());
    }
    let v: Value = serde_json::from_slice(&messages[labels.len()].payload).expect("valid JSON");
    assert_eq!(
        v["objects"][0]["roi_type"], "caf\u{FFFD} \u{FFFD}",
        "invalid bytes replaced"
    );
}

/// 12. Misbehaving producers: 10,000 ROIs, odd values, caps changing mid-stream.
#[test]
fn misbehaving_producers_never_crash_the_sink() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    init_plugin();
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("appsrc")
        .property("format", gst::Format::Time)
        .build()
        .unwrap();
    let filter = gst::ElementFactory::make("metafilter")
        .name("filter")
        .property("threshold", 0.5f64)
        .build()
        .unwrap();
    let sink = gst::ElementFactory::make("mqttpublish")
        .name("sink")
        .property("host", broker.host())
        .property("port", u32::from(broker.port()))
        .property("max-message-size", 16u32 * 1024 * 1024)
        .build()
        .unwrap();
    pipeline.add_many([&src, &filter, &sink]).unwrap();
    gst::Element::link_many([&src, &filter, &sink]).unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let appsrc = src.downcast::<gst_app::AppSrc>().unwrap();

    let caps = |w: i32, h: i32| {
        gst::Caps::builder("video/x-raw")
            .field("format", "GRAY8")
            .field("width", w)
            .field("height", h)
            .field("framerate", gst::Fraction::new(30, 1))
            .build()
    };
    let frame = |pts: u64, w: usize, h: usize, rois: &[Roi]| {
        let mut buffer = gst::Buffer::with_size(w * h).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(pts));
            for (label, rect, param) in rois {
                let mut roi = VideoRegionOfInterestMeta::add(b, label, *rect);
                roi.add_param(param.clone());
            }
        }
        buffer
    };
    let det = |confidence: f64| {
        gst::Structure::builder("detection")
            .field("confidence", confidence)
            .build()
    };

    appsrc.set_caps(Some(&caps(64, 48)));
    // Odd values: NaN/inf/negative confidence, a box outside the frame, a zero-size box,
    // a confidence of the wrong type.
    appsrc
        .push_buffer(frame(
            0,
            64,
            48,
            &[
                ("nan", (1, 1, 5, 5), det(f64::NAN)),
                ("inf", (1, 1, 5, 5), det(f64::INFINITY)),
                ("negative", (1, 1, 5, 5), det(-1.0)),
                ("outside", (6000, 7000, 500, 500), det(0.9)),
                ("empty", (10, 10, 0, 0), det(0.9)),
                (
                    "stringly",
                    (1, 1, 5, 5),
                    gst::Structure::builder("detection")
                        .field("confidence", "high")
                        .build(),
                ),
            ],
        ))
        .unwrap();
    // 10,000 objects on one buffer.
    let many: Vec<_> = (0..10_000)
        .map(|i| ("crowd", (i % 64, i / 200, 1, 1), det(0.9)))
        .collect();
    appsrc.push_buffer(frame(33, 64, 48, &many)).unwrap();
    // Caps change mid-stream.
    appsrc.set_caps(Some(&caps(128, 96)));
    appsrc
        .push_buffer(frame(66, 128, 96, &[("later", (64, 48, 32, 24), det(0.9))]))
        .unwrap();
    appsrc.end_of_stream().unwrap();

    wait_eos(&pipeline);
    let filter_stats = pipeline
        .by_name("filter")
        .unwrap()
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();

    assert_eq!(
        stat(&filter_stats, "invalid-confidences"),
        3,
        "{filter_stats}"
    );
    let messages = sub.wait_for(3, LONG);
    let values: Vec<Value> = messages
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let labels: Vec<&str> = values[0]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["roi_type"].as_str().unwrap())
        .collect();
    // Unscored objects stay (drop-unscored is off); the odd boxes stay, clipped.
    assert_eq!(
        labels,
        ["nan", "inf", "negative", "outside", "empty", "stringly"]
    );
    for o in values[0]["objects"].as_array().unwrap() {
        for k in ["x_min", "x_max", "y_min", "y_max"] {
            let v = o["detection"]["bounding_box"][k].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{o}");
        }
        if ["nan", "inf", "negative", "stringly"].contains(&o["roi_type"].as_str().unwrap()) {
            assert!(o["detection"].get("confidence").is_none(), "{o}");
        }
    }
    assert_eq!(values[1]["objects"].as_array().unwrap().len(), 10_000);
    assert_eq!(
        values[2]["resolution"],
        serde_json::json!({"height": 96, "width": 128})
    );
    assert_eq!(
        values[2]["objects"][0]["detection"]["bounding_box"]["x_min"],
        0.5
    );
}

/// A state change to NULL does not wait for an end-of-stream flush that cannot finish.
#[test]
fn null_interrupts_an_end_of_stream_flush() {
    let mut broker = Broker::new();
    broker.stop();
    let run = Run::publish(
        &format!(
            "videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48 ! metareplay location={}",
            sample_recording()
        ),
        &format!("{} flush-timeout=8000", to(&broker)),
    );
    // The five buffers are queued and the sink sits in its EOS flush: the end of the stream
    // has left the element before it.
    let upstream = run
        .element("sink")
        .static_pad("sink")
        .unwrap()
        .peer()
        .unwrap();
    run.wait_stats(
        "five messages queued and the end of the stream at the sink",
        LONG,
        |s| stat(s, "queue-depth") == 5 && upstream.sticky_event::<gst::event::Eos>(0).is_some(),
    );
    assert_eq!(stat(&run.stats(), "queue-depth"), 5);
    let stopping = Instant::now();
    run.stop();
    // Far from the 8 s flush-timeout, with room for a busy machine.
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "NULL took {:?}",
        stopping.elapsed()
    );
}
