// SPDX-License-Identifier: MPL-2.0

//! GstAnalyticsRelationMeta end to end (GStreamer >= 1.24, `--features analytics`; run by
//! `scripts/gst126.sh` in a Debian 13 root with GStreamer 1.26).
//!
//! An independent producer (`tests/analytics/producer.py`: Python, GstAnalytics through GI)
//! writes ODMtd + ClsMtd + TrackingMtd records, with and without DL Streamer's legacy ROI
//! meta of the same id, into `appsrc ! [metafilter] ! mqttpublish`; a real mosquitto on a
//! free loopback port delivers the messages to a real `mosquitto_sub`, and the tests
//! assert that exactly the produced objects arrive, each once.
#![cfg(feature = "analytics")]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{plugin_dir, Broker};
use serde_json::Value;

const PRODUCER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/analytics/producer.py");
const FRAMES: usize = 5;

/// Runs the producer with `args` and returns the `objects` of each message a
/// `mosquitto_sub` subscribed beforehand received.
fn produce(args: &[&str]) -> Vec<Vec<Value>> {
    let broker = Broker::new();
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let topic = "analytics/test";
    let port = broker.port().to_string();
    let count = FRAMES.to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", broker.host(), "-p", &port, "-t", topic, "-q", "1"])
        .args(["-C", &count, "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (Debian package mosquitto-clients)");
    broker.wait_for_log("Received SUBSCRIBE", Duration::from_secs(10));

    let out = Command::new("python3")
        .arg(PRODUCER)
        .args([broker.host(), &port, topic, &count])
        .args(args)
        .env("GST_PLUGIN_PATH", &plugins)
        .output()
        .expect("python3 runs the producer (python3-gst-1.0, gir1.2-gst-plugins-bad-1.0)");
    assert!(
        out.status.success(),
        "producer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let received = sub.wait_with_output().unwrap();
    assert!(received.status.success(), "mosquitto_sub: {received:?}");
    let text = String::from_utf8(received.stdout).unwrap();
    let messages: Vec<Vec<Value>> = text
        .lines()
        .map(|line| {
            let message: Value = serde_json::from_str(line).expect("a JSON message");
            message["objects"]
                .as_array()
                .unwrap_or_else(|| panic!("objects in {line}"))
                .clone()
        })
        .collect();
    assert_eq!(messages.len(), FRAMES, "{text}");
    messages
}

fn float(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("a number: {v}"))
}

fn assert_close(v: &Value, expected: f64) {
    assert!((float(v) - expected).abs() < 1e-6, "{v} != {expected}");
}

/// The car and the person as the producer wrote them, in a frame of 320x240.
fn assert_car(car: &Value) {
    assert_eq!(car["roi_type"], "car", "{car}");
    assert_eq!((car["x"].as_u64(), car["y"].as_u64()), (Some(10), Some(20)));
    assert_eq!(
        (car["w"].as_u64(), car["h"].as_u64()),
        (Some(100), Some(50))
    );
    assert_eq!(car["id"], 7, "the TrackingMtd's id: {car}");
    assert_close(&car["detection"]["confidence"], 0.9);
    assert_eq!(car["detection"]["label"], "car");
    let b = &car["detection"]["bounding_box"];
    assert_close(&b["x_min"], 10.0 / 320.0);
    assert_close(&b["x_max"], 110.0 / 320.0);
    assert_close(&b["y_min"], 20.0 / 240.0);
    assert_close(&b["y_max"], 70.0 / 240.0);
}

fn assert_person(person: &Value) {
    assert_eq!(person["roi_type"], "person", "{person}");
    assert_eq!(
        (person["x"].as_u64(), person["y"].as_u64()),
        (Some(200), Some(40))
    );
    assert_eq!(
        (person["w"].as_u64(), person["h"].as_u64()),
        (Some(30), Some(80))
    );
    assert_eq!(person["id"], 8, "{person}");
    assert_close(&person["detection"]["confidence"], 0.3);
}

/// The keys of an object besides the fixed ones: its classifications.
fn classifications(object: &Value) -> Vec<&str> {
    const FIXED: [&str; 10] = [
        "detection",
        "h",
        "id",
        "parent_id",
        "region_id",
        "roi_type",
        "w",
        "x",
        "y",
        "tensors",
    ];
    let mut keys: Vec<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .filter(|k| !FIXED.contains(k))
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn relation_meta_objects_are_published_with_their_classification_and_tracking_id() {
    for objects in produce(&[]) {
        let [car, person] = &objects[..] else {
            panic!("exactly the two produced objects: {objects:?}");
        };
        assert_car(car);
        assert_eq!(classifications(car), ["classification"], "{car}");
        assert_eq!(car["classification"]["label"], "red");
        assert_close(&car["classification"]["confidence"], 0.8);
        assert_person(person);
        assert!(classifications(person).is_empty(), "{person}");
        assert_ne!(car["region_id"], person["region_id"]);
    }
}

#[test]
fn an_object_in_both_forms_is_published_once() {
    for objects in produce(&["--legacy-roi"]) {
        let [car, person] = &objects[..] else {
            panic!("each object once, not once per form: {objects:?}");
        };
        assert_car(car);
        // The ROI meta's parameters: its label_id and its named classification (which is
        // also the ClsMtd's "red", not repeated).
        assert_eq!(car["detection"]["label_id"], 2);
        assert_eq!(classifications(car), ["color"], "{car}");
        assert_eq!(car["color"]["label"], "red");
        assert_eq!(car["color"]["model"]["name"], "color_net");
        assert_person(person);
        assert_eq!(person["detection"]["label_id"], 0);
    }
}

#[test]
fn metafilter_removes_relation_meta_objects_below_the_threshold() {
    for args in [
        &["--filter", "threshold=0.5"][..],
        &["--legacy-roi", "--filter", "threshold=0.5"],
    ] {
        for objects in produce(args) {
            let [car] = &objects[..] else {
                panic!(
                    "{args:?}: only the car (0.9) passes 0.5, not the person (0.3): {objects:?}"
                );
            };
            assert_car(car);
        }
    }
}

#[test]
fn metafilter_removes_relation_meta_classifications_below_the_threshold() {
    for objects in produce(&["--filter", "type=classification threshold=0.9"]) {
        let [car, person] = &objects[..] else {
            panic!("the objects stay: {objects:?}");
        };
        assert_car(car);
        assert!(
            classifications(car).is_empty(),
            "red (0.8) is removed: {car}"
        );
        assert_person(person);
    }
}
