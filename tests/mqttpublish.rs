// SPDX-License-Identifier: MPL-2.0

//! `mqttpublish` against a real mosquitto per test, checked by a real subscriber.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    assert_accounted, certificate_text, init_plugin, sample_recording, start_error, start_gerror,
    stat, to, Broker, DlspsRecipe, Message, QoS, Run, Subscriber, TlsFiles,
};
use gst::glib;
use gst::prelude::*;
use serde_json::Value;

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

fn replay(buffers: u32) -> String {
    format!(
        "videotestsrc num-buffers={buffers} ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! metareplay location={}",
        sample_recording()
    )
}

fn json(message: &Message) -> Value {
    serde_json::from_slice(&message.payload).expect("payload is JSON")
}

fn frame_ids(messages: &[Message]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| {
            let v = json(m);
            let meta = if v.is_array() { &v[0] } else { &v };
            meta["frame_id"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn metadata_messages_carry_the_recorded_objects() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let mut run = Run::publish(&replay(30), &to(&broker));
    run.wait_eos(LONG);
    let stats = run.stop();

    let messages = sub.wait_for(30, LONG);
    assert_eq!(messages.len(), 30);
    assert_eq!(frame_ids(&messages), (0..30).collect::<Vec<_>>());

    let recorded: Vec<Value> = std::fs::read_to_string(sample_recording())
        .unwrap()
        .lines()
        .take(30)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (message, recorded) in messages.iter().zip(&recorded) {
        let v = json(message);
        assert!(
            v.is_object(),
            "metadata-only messages are the object itself"
        );
        assert_eq!(v["objects"], recorded["objects"], "objects as recorded");
        assert_eq!(
            v["resolution"],
            serde_json::json!({"height": 480, "width": 640})
        );
        assert_eq!(v["timestamp"], recorded["timestamp"], "stream time in ns");
    }
    assert_eq!(stat(&stats, "messages-published"), 30);
    assert_eq!(stat(&stats, "messages-dropped"), 0);
    assert_accounted(&stats);
}

fn decode_jpeg(bytes: &[u8]) -> (u16, u16, Vec<u8>) {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    let pixels = decoder.decode().expect("a valid JPEG");
    let info = decoder.info().unwrap();
    assert_eq!(info.pixel_format, jpeg_decoder::PixelFormat::RGB24);
    (info.width, info.height, pixels)
}

fn mean_rgb(pixels: &[u8]) -> [f64; 3] {
    let n = (pixels.len() / 3) as f64;
    let mut sum = [0f64; 3];
    for px in pixels.chunks_exact(3) {
        for c in 0..3 {
            sum[c] += f64::from(px[c]);
        }
    }
    sum.map(|s| s / n)
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

#[test]
fn frames_arrive_as_jpeg_of_the_right_size_and_colour_in_both_formats() {
    for (format, caps) in [
        ("array", "I420"),
        ("object", "BGRx"),
        ("array", "NV12"),
        ("object", "RGB"),
    ] {
        let broker = Broker::new();
        let sub = Subscriber::new(&broker, TOPIC);
        // A solid red frame: the decoded image must be red, whatever the raw layout.
        let source = format!(
            "videotestsrc num-buffers=5 pattern=red ! video/x-raw,format={caps},width=322,height=242 \
             ! metareplay location={}",
            sample_recording()
        );
        let mut run = Run::publish(
            &source,
            &format!("{} publish-frame=true message-format={format}", to(&broker)),
        );
        run.wait_eos(LONG);
        run.stop();

        for message in sub.wait_for(5, LONG) {
            let v = json(&message);
            let (meta, blob) = match format {
                "array" => (&v[0], v[1].as_str().expect("[metadata, base64]")),
                _ => (
                    &v["metadata"],
                    v["blob"].as_str().expect("{metadata, blob}"),
                ),
            };
            assert!(meta["objects"].is_array(), "{format}: metadata first");
            let (width, height, pixels) = decode_jpeg(&base64_decode(blob));
            assert_eq!((width, height), (322, 242), "{caps}");
            let [r, g, b] = mean_rgb(&pixels);
            assert!(
                r > 230.0 && g < 25.0 && b < 25.0,
                "{caps}: red, got {r:.0},{g:.0},{b:.0}"
            );
        }
    }
}

#[test]
fn jpeg_input_is_sent_as_it_is() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let source = format!(
        "videotestsrc num-buffers=3 ! video/x-raw,width=320,height=240 ! jpegenc quality=50 \
         ! metareplay location={} ! tee name=t t. ! queue ! multifilesink location={}/%d.jpg t. ! queue",
        sample_recording(),
        broker.dir().display()
    );
    let mut run = Run::publish(&source, &format!("{} publish-frame=true", to(&broker)));
    run.wait_eos(LONG);
    run.stop();
    for (i, message) in sub.wait_for(3, LONG).iter().enumerate() {
        let v = json(message);
        let sent = base64_decode(v[1].as_str().unwrap());
        let original = std::fs::read(broker.dir().join(format!("{i}.jpg"))).unwrap();
        assert_eq!(sent, original, "frame {i} byte for byte");
        assert_eq!(v[0]["resolution"]["width"], 320);
    }
}

#[test]
fn every_qos_on_both_protocols() {
    for protocol in [4, 5] {
        for qos in [0u32, 1, 2] {
            let broker = Broker::new();
            let sub = Subscriber::builder(&broker, TOPIC)
                .qos(QoS::ExactlyOnce)
                .connect();
            let mut run = Run::publish(
                &replay(20),
                &format!("{} qos={qos} protocol={protocol}", to(&broker)),
            );
            run.wait_eos(LONG);
            let stats = run.stop();
            let messages = sub.wait_for(20, LONG);
            assert_eq!(
                frame_ids(&messages),
                (0..20).collect::<Vec<_>>(),
                "qos {qos} v{protocol}"
            );
            let expected_qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][qos as usize];
            assert!(
                messages.iter().all(|m| m.qos == expected_qos),
                "qos {qos} v{protocol}"
            );
            let acknowledged = if qos == 0 { 0 } else { 20 };
            assert_eq!(
                stat(&stats, "messages-acknowledged"),
                acknowledged,
                "{stats}"
            );
            assert_eq!(stat(&stats, "messages-published"), 20, "{stats}");
            assert_accounted(&stats);
        }
    }
}

#[test]
fn mutual_tls_with_required_client_certificate() {
    let tls = TlsFiles::generate();
    let broker = Broker::builder().tls(&tls, true).start();
    let sub = Subscriber::new(&broker, TOPIC);
    let props = format!(
        "host=localhost port={} tls-ca-file={} tls-cert-file={} tls-key-file={}",
        broker.tls_port(),
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let mut run = Run::publish(&replay(10), &props);
    run.wait_eos(LONG);
    let stats = run.stop();
    assert_eq!(sub.wait_for(10, LONG).len(), 10);
    assert_eq!(stat(&stats, "messages-published"), 10);
    assert!(run_log_has_tls_client(&broker));
}

/// The users' own certificates: the DLSPS document's openssl recipe, whose client
/// certificate is X.509 v1, against a broker that requires a client certificate.
#[test]
fn dlsps_certificate_recipe_with_a_v1_client_certificate() {
    let recipe = DlspsRecipe::generate();
    let client = certificate_text(&recipe.client_cert);
    assert!(client.contains("Version: 1 (0x0)"), "{client}");
    assert!(!client.contains("X509v3 extensions"), "{client}");
    let server = certificate_text(&recipe.server_cert);
    assert!(
        server.contains("Version: 3 (0x2)") && server.contains("IP Address:127.0.0.1"),
        "{server}"
    );

    let broker = Broker::builder()
        .tls_with(&recipe.ca, &recipe.server_cert, &recipe.server_key, true)
        .start();
    // A DLSPS user's consumer: mosquitto_sub with the same client certificate, over TLS.
    // (The harness' rumqttc subscriber cannot: rustls refuses to load a v1 certificate as
    // its own.)
    let consumer = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.tls_port().to_string()])
        .args(["--cafile", recipe.ca.to_str().unwrap()])
        .args(["--cert", recipe.client_cert.to_str().unwrap()])
        .args(["--key", recipe.client_key.to_str().unwrap()])
        .args([
            "-i",
            "dlsps-consumer",
            "-t",
            TOPIC,
            "-q",
            "1",
            "-C",
            "20",
            "-W",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    broker.wait_for_log("Sending SUBACK to dlsps-consumer", LONG);
    let tls = |ca: &Path| {
        format!(
            "host=127.0.0.1 port={} qos=1 tls-ca-file={} tls-cert-file={} tls-key-file={}",
            broker.tls_port(),
            ca.display(),
            recipe.client_cert.display(),
            recipe.client_key.display()
        )
    };
    let mut run = Run::publish(&replay(20), &tls(&recipe.ca));
    run.wait_eos(LONG);
    let stats = run.stop();
    assert_eq!(stat(&stats, "messages-acknowledged"), 20, "{stats}");
    assert!(run_log_has_tls_client(&broker));
    let consumed = consumer.wait_with_output().unwrap();
    assert!(consumed.status.success(), "{consumed:?}");
    let frame_ids: Vec<u64> = String::from_utf8(consumed.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["frame_id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(frame_ids, (0..20).collect::<Vec<u64>>());

    // Trusting another CA, the publisher refuses the broker: nothing is sent, and the file
    // job ends with an error counting what was not delivered. (The handshake fails within
    // milliseconds, well within the wait for the end.)
    let mut run = Run::publish(
        &replay(5),
        &format!("{} flush-timeout=1000", tls(&recipe.other_ca)),
    );
    let error = run.wait_error(LONG);
    assert!(
        error.contains("5 of 5 messages were not delivered"),
        "{error}"
    );
    let warnings = run.warnings();
    let stats = run.stop();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("Not connected") && w.contains("UnknownIssuer")),
        "a warning names the unknown issuer: {warnings:?}"
    );
    assert_eq!(stat(&stats, "messages-published"), 0, "{stats}");
    let log = broker.log();
    assert_eq!(log.matches("Received PUBLISH").count(), 20, "{log}");
}

/// The broker saw a connection on its TLS listener from our client.
fn run_log_has_tls_client(broker: &Broker) -> bool {
    broker
        .log()
        .contains(&format!("on port {}", broker.tls_port()))
}

#[test]
fn bad_settings_are_refused_at_start_with_the_setting_named() {
    let cases = [
        ("topic=\"a/+/b\"", "wildcard"),
        ("topic=\"a/#\"", "wildcard"),
        ("topic=\"\"", "topic: the topic is empty"),
        (
            "protocol=5 keep-alive=2",
            "keep-alive: 2 s is not supported with protocol 5",
        ),
        (
            "tls-ca-file=/nonexistent/ca.pem",
            "tls-ca-file: cannot read /nonexistent/ca.pem",
        ),
        ("tls-ca-file=/", "tls-ca-file: / is a directory"),
        ("tags=\"{oops\"", "tags: invalid JSON"),
        ("tags=\"[1]\"", "tags: expected a JSON object"),
        (
            "config=/nonexistent.json",
            "config: cannot read /nonexistent.json: No such file or directory (os error 2); \
             the value must be the path to an existing JSON file",
        ),
        // JSON where the path belongs: said so, and the JSON (a password here) not shown.
        (
            r#"config={"password":"hunter2-secret"}"#,
            "config: takes the path to a JSON file, not JSON text (the value starts with '{')",
        ),
        (
            "password=hunter2-secret",
            "password: is set but username is not",
        ),
    ];
    for (props, expected) in cases {
        let err = start_error(&format!("fakesrc ! mqttpublish {props}"));
        assert!(
            err.contains(expected),
            "{props}: {err:?} should contain {expected:?}"
        );
        assert!(
            !err.contains("hunter2-secret"),
            "the password never shows: {err}"
        );
    }

    // GLib refuses a value outside the range; a valid one after it is taken.
    init_plugin();
    let pipeline =
        gst::parse::launch("fakesrc ! mqttpublish name=sink port=188300 port=1884").unwrap();
    pipeline.set_state(gst::State::Ready).unwrap();
    let sink = pipeline
        .downcast_ref::<gst::Bin>()
        .unwrap()
        .by_name("sink")
        .unwrap();
    assert_eq!(sink.property::<u32>("port"), 1884);
    pipeline.set_state(gst::State::Null).unwrap();

    let tls = TlsFiles::generate();
    // A key where a certificate belongs, and a certificate where the key belongs.
    let err = start_error(&format!(
        "fakesrc ! mqttpublish tls-ca-file={} tls-cert-file={} tls-key-file={}",
        tls.ca.display(),
        tls.client_key.display(),
        tls.client_cert.display()
    ));
    assert!(err.contains("tls-cert-file"), "{err}");
}

#[test]
fn start_errors_carry_the_domain_applications_check() {
    for missing in [
        "mqttpublish config=/nonexistent.json",
        "mqttpublish tls-ca-file=/nonexistent/ca.pem",
        "metafilter config=/nonexistent.json ! fakesink",
    ] {
        let err = start_gerror(&format!("fakesrc ! {missing}"));
        assert!(
            err.matches(gst::ResourceError::NotFound),
            "{missing}: {err}"
        );
    }
    let err = start_gerror("fakesrc ! mqttpublish tls-ca-file=/");
    assert!(err.matches(gst::ResourceError::OpenRead), "{err}");
    let err = start_gerror("fakesrc ! mqttpublish topic=a/#");
    assert!(err.matches(gst::LibraryError::Settings), "{err}");
    assert!(err.to_string().contains("topic"), "{err}");
}

fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join("pipeline.json");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.display().to_string()
}

#[test]
fn dlsps_configuration_file() {
    let tls = TlsFiles::generate();
    let broker = Broker::builder().tls(&tls, true).start();
    let sub = Subscriber::new(&broker, "site/results");
    // The DLSPS example, with our host/port keys and TLS paths that exist here.
    let config = config_file(
        broker.dir(),
        &format!(
            r#"{{"mqtt_publisher": {{
                "publish_frame": true,
                "topic": "site/results",
                "qos": 1,
                "protocol": 4,
                "host": "localhost",
                "port": {},
                "filter": {{"type": "detection", "label_score": {{"shipping label": 0.4, "box": 0.4}}}},
                "tls": {{"ca_cert": "{}", "client_key": "{}", "client_cert": "{}"}}
            }}}}"#,
            broker.tls_port(),
            tls.ca.display(),
            tls.client_key.display(),
            tls.client_cert.display()
        ),
    );
    let mut run = Run::publish(&replay(30), &format!("config={config}"));
    run.wait_eos(LONG);
    let stats = run.stop();

    let messages = sub.wait_for(30, LONG);
    assert!(messages.iter().all(|m| m.qos == QoS::AtLeastOnce));
    for message in &messages {
        let v = json(message);
        assert!(v[1].is_string(), "publish_frame adds the frame");
        for object in v[0]["objects"].as_array().unwrap() {
            let label = object["roi_type"].as_str().unwrap();
            let confidence = object["detection"]["confidence"].as_f64().unwrap();
            if label == "box" || label == "shipping label" {
                assert!(confidence >= 0.4, "filtered: {label} {confidence}");
            }
        }
    }
    assert_eq!(stat(&stats, "messages-acknowledged"), 30);
}

#[test]
fn a_config_filter_without_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(
        dir.path(),
        r#"{"mqtt_publisher": {"topic": "t", "filter": {"label_score": {"box": 0.4}}}}"#,
    );
    let err = start_gerror(&format!("fakesrc ! mqttpublish config={config}"));
    assert!(err.matches(gst::LibraryError::Settings), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("config: {config}: filter.type: missing")),
        "{text}"
    );
}

#[test]
fn precedence_property_over_file_over_environment() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, "from/property");
    let file_topic_sub = Subscriber::new(&broker, "from/file");
    // The environment names a port where nothing listens; the file names the real one.
    std::env::set_var("MQTT_HOST", "127.0.0.1");
    std::env::set_var("MQTT_PORT", "1");
    let config = config_file(
        broker.dir(),
        &format!(
            r#"{{"topic": "from/file", "port": {}, "qos": 1}}"#,
            broker.port()
        ),
    );
    // topic: property beats file; port: file beats environment; qos: file beats default.
    let mut run = Run::publish(&replay(3), &format!("config={config} topic=from/property"));
    run.wait_eos(LONG);
    run.stop();
    let messages = sub.wait_for(3, LONG);
    assert!(messages.iter().all(|m| m.qos == QoS::AtLeastOnce));
    file_topic_sub.assert_count_after(0, Duration::from_millis(200));

    // Without host/port anywhere else, the environment is used.
    std::env::set_var("MQTT_PORT", broker.port().to_string());
    let env_sub = Subscriber::new(&broker, "from/env");
    let mut run = Run::publish(&replay(2), "topic=from/env");
    run.wait_eos(LONG);
    run.stop();
    std::env::remove_var("MQTT_HOST");
    std::env::remove_var("MQTT_PORT");
    assert_eq!(env_sub.wait_for(2, LONG).len(), 2);
}

#[test]
fn unknown_config_keys_are_named_in_a_warning() {
    let broker = Broker::new();
    let config = config_file(broker.dir(), r#"{"topic": "t", "qso": 1}"#);
    let mut run = Run::publish(&replay(1), &format!("{} config={config}", to(&broker)));
    run.wait_eos(LONG);
    let warnings = run.warnings();
    run.stop();
    assert!(warnings.iter().any(|w| w.contains("qso")), "{warnings:?}");
}

#[test]
fn what_dlsps_ignores_in_a_request_or_config_json_is_warned_about_once() {
    let broker = Broker::new();
    let sub = Subscriber::builder(&broker, "#")
        .qos(QoS::ExactlyOnce)
        .connect();
    // A list of metadata destinations: the last mqtt entry counts, as in DLSPS.
    let request = config_file(
        broker.dir(),
        r#"{"destination": {"metadata": [
            {"type": "mqtt", "topic": "first", "qos": 1},
            {"type": "file", "path": "/tmp/results.jsonl", "format": "json-lines"},
            {"topic": "untyped"},
            {"type": "mqtt", "topic": "last", "qos": 2, "filter": {"type": "detection", "labels": {}}}
        ]}}"#,
    );
    let mut run = Run::publish(&replay(3), &format!("{} config={request}", to(&broker)));
    run.wait_eos(LONG);
    let warnings = run.warnings();
    run.stop();
    let messages = sub.wait_for(3, LONG);
    assert!(
        messages
            .iter()
            .all(|m| m.topic == "last" && m.qos == QoS::ExactlyOnce),
        "{messages:?}"
    );
    assert_eq!(
        warnings,
        [
            format!(
                "config: {request}: destination.metadata[3] has keys this element does not \
                 know, ignored: filter.labels"
            ),
            format!(
                "config: {request}: destination.metadata[2] has no \"type\" and is ignored, \
                 as DLSPS ignores it"
            ),
            format!(
                "config: {request}: destination.metadata has 2 \"mqtt\" entries ([0], [3]): the \
                 last one is used, as DLSPS uses it"
            ),
        ]
    );
    sub.assert_count_after(3, Duration::from_millis(200));
}

#[test]
fn a_config_json_pipeline_without_mqtt_publisher_leaves_the_defaults_with_a_warning() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let config = config_file(
        broker.dir(),
        r#"{"config": {"pipelines": [{"name": "plain", "pipeline": "..."}]}}"#,
    );
    let mut run = Run::publish(&replay(2), &format!("{} config={config}", to(&broker)));
    run.wait_eos(LONG);
    let warnings = run.warnings();
    run.stop();
    assert_eq!(sub.wait_for(2, LONG).len(), 2);
    assert_eq!(
        warnings,
        [format!(
            "config: {config}: pipeline \"plain\" has no \"mqtt_publisher\": DLSPS publishes \
             nothing over MQTT for it; only the element's properties and defaults apply"
        )]
    );
}

#[test]
fn eos_waits_until_every_qos1_message_is_acknowledged() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let mut run = Run::publish(&replay(300), &format!("{} qos=1", to(&broker)));
    run.wait_eos(LONG);
    // At EOS, before stopping: everything acknowledged already.
    let stats = run.stats();
    assert_eq!(stat(&stats, "messages-acknowledged"), 300, "{stats}");
    assert_eq!(stat(&stats, "in-flight"), 0);
    assert_eq!(stat(&stats, "queue-depth"), 0);
    run.stop();
    assert_eq!(sub.wait_for(300, LONG).len(), 300);
}

/// A file job (a source that is not live) with the default `leaky=auto` and a queue far
/// smaller than the backlog the source builds: the streaming thread waits for room, and
/// every message arrives, in order, with nothing dropped or warned about.
#[test]
fn a_file_job_waits_for_room_by_default_and_loses_nothing() {
    let mut broker = Broker::new();
    let sub = Subscriber::builder(&broker, TOPIC)
        .qos(QoS::AtLeastOnce)
        .connect();
    let frames = 500;
    let source = format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=64,height=48 \
         ! metareplay location={} loop=true",
        sample_recording()
    );
    let props = format!("{} qos=1 max-queued-messages=4", to(&broker));
    let mut run = Run::publish(&source, &props);
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    assert_eq!(stat(&stats, "messages-dropped"), 0, "{stats}");
    assert_eq!(stat(&stats, "messages-acknowledged"), frames, "{stats}");
    assert!(warnings.is_empty(), "{warnings:?}");
    let messages = sub.wait_for(frames as usize, LONG);
    assert_eq!(frame_ids(&messages), (0..frames).collect::<Vec<_>>());

    // The same job dropping the oldest loses messages when a backlog builds: the queue
    // is too small to hold one, so the run above delivered everything by waiting. The
    // broker is frozen for the backlog to build whatever the machine's speed: past
    // rumqttc's in-flight window (100) and request channel (64), the queue overflows.
    let mut run = Run::publish(&source, &format!("{props} leaky=downstream"));
    assert!(run.wait_element_message("mqttpublish-connected", LONG));
    broker.pause();
    run.wait_stats("every frame handed to the element", LONG, |s| {
        stat(s, "messages-queued") == frames
    });
    broker.resume();
    run.wait_eos(LONG);
    let episodes = run.element_messages("mqttpublish-dropping").len();
    let stats = run.stop();
    assert!(stat(&stats, "dropped-queue-full") > 0, "{stats}");
    assert_accounted(&stats);
    // Overflowing again and again, milliseconds apart, is one episode: one warning at the
    // first drop, not one per overflow.
    assert_eq!(episodes, 1, "{stats}");
}

#[test]
fn full_queue_drops_by_policy_and_counts() {
    for (leaky, survivors) in [("downstream", 15..20), ("upstream", 0..5)] {
        let mut broker = Broker::new();
        broker.stop();
        let mut run = Run::publish(
            &replay(20),
            &format!(
                "{} max-queued-messages=5 leaky={leaky} flush-timeout=100",
                to(&broker)
            ),
        );
        run.wait_eos(LONG);
        let stats = run.stats();
        assert_eq!(stat(&stats, "dropped-queue-full"), 15, "{leaky}: {stats}");
        assert_eq!(stat(&stats, "queue-depth"), 5, "{leaky}: {stats}");
        assert_accounted(&stats);

        // The broker comes back: the five kept are the ones the policy says.
        broker.start();
        let sub = Subscriber::new(&broker, TOPIC);
        let messages = sub.wait_for(5, LONG);
        assert_eq!(
            frame_ids(&messages),
            survivors.collect::<Vec<_>>(),
            "{leaky}"
        );
        run.stop();
    }
}

#[test]
fn oversize_frames_go_without_the_image_and_the_metadata_is_kept() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let snow = format!(
        "videotestsrc num-buffers=4 pattern=snow ! video/x-raw,width=640,height=480 ! metareplay location={}",
        sample_recording()
    );
    // A 640x480 snow frame is far over 4 KiB; its metadata is well under.
    let mut run = Run::publish(
        &snow,
        &format!(
            "{} publish-frame=true jpeg-quality=100 max-message-size=4096",
            to(&broker)
        ),
    );
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    assert_eq!(stat(&stats, "unencoded-oversize"), 4, "{stats}");
    assert_eq!(stat(&stats, "frames-unencoded"), 4, "{stats}");
    assert_eq!(stat(&stats, "dropped-oversize"), 0, "{stats}");
    assert_eq!(stat(&stats, "messages-published"), 4, "{stats}");
    assert_eq!(
        warnings.iter().filter(|w| w.contains("size limit")).count(),
        1,
        "{warnings:?}"
    );
    let messages = sub.wait_for(4, LONG);
    for message in &messages {
        let v = json(message);
        assert_eq!(v[1], "", "the image is left out: {v}");
        assert!(!v[0]["objects"].as_array().unwrap().is_empty(), "{v}");
    }
    assert_eq!(frame_ids(&messages), [0, 1, 2, 3]);

    // What does not fit even without the image is dropped, counted and warned about once.
    let mut run = Run::publish(
        &snow,
        &format!(
            "{} publish-frame=true max-message-size=1024 source={}",
            to(&broker),
            "a-very-long-source-name/".repeat(50)
        ),
    );
    // A file job that loses messages ends with an error naming them.
    let error = run.wait_error(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    assert!(
        error.contains(
            "4 of 4 messages were not delivered (4 dropped: larger than max-message-size"
        ),
        "{error}"
    );
    assert_eq!(stat(&stats, "dropped-oversize"), 4, "{stats}");
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w.contains("max-message-size"))
            .count(),
        1,
        "{warnings:?}"
    );
    assert_accounted(&stats);
    sub.assert_count_after(4, Duration::from_millis(200));
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn source_tags_sink_time_skip_empty_and_frame_interval() {
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    // Frames 0..3 have objects; the recording ends there, so frames 3..6 have none.
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("three.jsonl");
    let text = std::fs::read_to_string(sample_recording()).unwrap();
    let lines: Vec<&str> = text.lines().take(3).collect();
    std::fs::write(&recording, lines.join("\n")).unwrap();
    let before = now_ns();
    let mut run = Run::publish(
        &format!(
            "videotestsrc num-buffers=6 ! video/x-raw,width=64,height=48 ! metareplay location={}",
            recording.display()
        ),
        &format!(
            "{} source=rtsp://camera-7/stream tags=\"{{\\\"site\\\":\\\"dock-3\\\"}}\" skip-empty=true publish-frame=true frame-interval=2 add-sink-time=true",
            to(&broker)
        ),
    );
    run.wait_eos(LONG);
    let after = now_ns();
    let stats = run.stop();
    let messages = sub.wait_for(3, LONG);
    sub.assert_count_after(3, Duration::from_millis(200));
    assert_eq!(stat(&stats, "frames-skipped"), 3);
    let values: Vec<Value> = messages.iter().map(json).collect();
    // One shape on the topic: every 2nd message has the image, the others "".
    for (i, value) in values.iter().enumerate() {
        let blob = value[1].as_str().expect("[metadata, image]");
        assert_eq!(blob.is_empty(), i % 2 == 1, "message {i}: {value}");
    }
    let meta = &values[1][0];
    assert_eq!(meta["source"], "rtsp://camera-7/stream");
    assert_eq!(meta["tags"], serde_json::json!({"site": "dock-3"}));
    let sink_time = meta["sink_time"].as_u64().expect("sink_time");
    assert!(
        (before..=after).contains(&sink_time),
        "{before} <= {sink_time} <= {after}"
    );
}

#[test]
fn username_and_password() {
    let broker = Broker::builder().user("camera", "s3cret-pw").start();
    let sub = Subscriber::builder(&broker, TOPIC)
        .credentials("camera", "s3cret-pw")
        .connect();
    let mut run = Run::publish(
        &replay(3),
        &format!("{} username=camera password=s3cret-pw", to(&broker)),
    );
    run.wait_eos(LONG);
    run.stop();
    assert_eq!(sub.wait_for(3, LONG).len(), 3);

    let mut run = Run::publish(
        &replay(3),
        &format!("{} username=camera password=wrong-pw", to(&broker)),
    );
    // The default flush-timeout: the refusal, not the end of the stream's wait for
    // delivery, ends the job, however long the CONNACK takes on a busy machine.
    let error = run.wait_error(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    // Refused for good, in a file job: it ends at once, saying what to check.
    assert!(
        error.contains("CONNACK: not authorized") && error.contains("check username and password"),
        "{error}"
    );
    assert!(!error.contains("wrong-pw"), "{error}");
    assert_eq!(stat(&stats, "messages-published"), 0);
    assert!(
        warnings.iter().any(|w| w.contains("Not connected")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().all(|w| !w.contains("wrong-pw")),
        "{warnings:?}"
    );
    // Write-only: reading it back is refused by GObject, so nothing can leak that way.
    let pspec = run_pspec("password");
    assert!(!pspec.flags().contains(glib::ParamFlags::READABLE));
}

fn run_pspec(name: &str) -> glib::ParamSpec {
    init_plugin();
    let sink = gst::ElementFactory::make("mqttpublish").build().unwrap();
    sink.find_property(name).unwrap()
}

#[test]
fn stats_stay_readable_after_stop_and_count_each_run() {
    let broker = Broker::new();
    for _ in 0..3 {
        let mut run = Run::publish(&replay(5), &to(&broker));
        run.wait_eos(LONG);
        let stats = run.stop();
        assert_eq!(
            stat(&stats, "messages-published"),
            5,
            "each run starts from zero"
        );
        assert!(
            !stats.get::<bool>("connected").unwrap(),
            "stopped: not connected"
        );
    }
}

#[test]
fn mqtt5_broker_packet_limit_never_costs_the_connection_or_the_metadata() {
    let broker = Broker::builder().extra("max_packet_size 20000").start();
    let sub = Subscriber::builder(&broker, TOPIC).v5().connect();
    // Every other message carries a 640x480 frame of ~26 KB: over the broker's limit. Once
    // the CONNACK has told the limit, such frames go without the image; built before it,
    // they are dropped by the connection.
    let mut run = Run::publish(
        &replay(10),
        &format!(
            "{} protocol=5 qos=1 publish-frame=true frame-interval=2 clean-session=false \
             client-id=limit-test",
            to(&broker)
        ),
    );
    // Ends with EOS, or with an error when a message had to be dropped.
    let error = match run.pump(LONG) {
        Some(message) => match message.view() {
            gst::MessageView::Error(e) => Some(e.error().to_string()),
            _ => None,
        },
        None => panic!("neither EOS nor an error"),
    };
    let stats = run.stop();
    let dropped = stat(&stats, "dropped-oversize");
    let without_image = stat(&stats, "unencoded-oversize");
    assert_eq!(dropped + without_image, 5, "{stats}");
    // A file job that lost messages ends with an error naming them.
    match &error {
        Some(error) => assert!(
            dropped > 0
                && error.contains(&format!(
                    "{dropped} of 10 messages were not delivered ({dropped} dropped: larger than"
                )),
            "{error}"
        ),
        None => assert_eq!(dropped, 0, "{stats}"),
    }
    let messages = sub.wait_for(10 - dropped as usize, LONG);
    sub.assert_count_after(10 - dropped as usize, Duration::from_millis(200));
    let ids = frame_ids(&messages);
    assert!(
        [1, 3, 5, 7, 9].iter().all(|id| ids.contains(id)),
        "the metadata-only ones: {ids:?}"
    );
    for value in messages.iter().map(json) {
        assert!(value[1].as_str().unwrap().len() < 20000, "{}", value[0]);
    }
    assert_eq!(
        stat(&stats, "reconnects"),
        0,
        "the connection survived: {stats}"
    );
    assert_accounted(&stats);
}

#[test]
fn leaky_takes_the_queue_elements_no_and_its_earlier_name_none() {
    init_plugin();
    for (set, reads) in [
        ("no", "no"),
        ("none", "no"),
        ("upstream", "upstream"),
        ("downstream", "downstream"),
        ("auto", "auto"),
    ] {
        let sink = gst::ElementFactory::make("mqttpublish")
            .property_from_str("leaky", set)
            .build()
            .unwrap();
        let value = sink.property_value("leaky");
        let (_, leaky) = gst::glib::EnumValue::from_value(&value).unwrap();
        assert_eq!(leaky.nick(), reads, "leaky={set}");
    }
}
