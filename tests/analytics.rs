// SPDX-License-Identifier: MPL-2.0

//! GstAnalyticsRelationMeta end to end (GStreamer >= 1.24, `--features analytics`; run by
//! `scripts/gst126.sh` in a Debian 13 root with GStreamer 1.26).
//!
//! An independent producer (`tests/analytics/producer.py`: Python, GstAnalytics through GI)
//! writes ODMtd + ClsMtd + TrackingMtd records, with and without DL Streamer's legacy ROI
//! meta of the same id, and (GStreamer 1.26) a ClsMtd of no object, an oriented ODMtd and a
//! SegmentationMtd, into `appsrc ! [metafilter] ! mqttpublish`; a real mosquitto on a free
//! loopback port delivers the messages to a real `mosquitto_sub`, and the tests assert that
//! exactly the produced results arrive, each once.
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
    produce_messages(args)
        .iter()
        .map(|message| {
            // The metadata itself, or inside the envelope of message-format=dlsps.
            let metadata = message.get("metadata").unwrap_or(message);
            metadata["objects"]
                .as_array()
                .unwrap_or_else(|| panic!("objects in {message}"))
                .clone()
        })
        .collect()
}

/// Runs the producer with `args` and returns the messages a `mosquitto_sub` subscribed
/// beforehand received.
fn produce_messages(args: &[&str]) -> Vec<Value> {
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
    let messages: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON message"))
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
    let filter = "type=classification threshold=0.9";
    for args in [
        &["--filter", filter][..],
        &["--legacy-roi", "--filter", filter],
    ] {
        for objects in produce(args) {
            let [car, person] = &objects[..] else {
                panic!("{args:?}: the objects stay: {objects:?}");
            };
            assert_car(car);
            // With the legacy ROI meta, in both forms.
            assert!(
                classifications(car).is_empty(),
                "{args:?}: red (0.8) is removed: {car}"
            );
            assert_person(person);
        }
    }
}

#[test]
fn dlsps_gva_meta_comes_from_the_relation_meta() {
    for message in produce_messages(&["--sink", "message-format=dlsps"]) {
        let gva_meta = message["metadata"]["gva_meta"].as_array().unwrap();
        let [car, person] = &gva_meta[..] else {
            panic!("one gva_meta entry per object: {message}");
        };
        assert_eq!(
            (car["x"].as_u64(), car["y"].as_u64()),
            (Some(10), Some(20)),
            "{car}"
        );
        assert_eq!(
            (car["width"].as_u64(), car["height"].as_u64()),
            (Some(100), Some(50))
        );
        assert_eq!(car["object_id"], 7);
        let tensor = car["tensor"].as_array().unwrap();
        assert_eq!(tensor.len(), 2, "detection and classification: {car}");
        assert_eq!(tensor[0]["name"], "detection");
        assert_eq!(tensor[0]["label"], "car");
        assert_close(&tensor[0]["confidence"], 0.9);
        assert_eq!(tensor[1]["name"], "classification");
        assert_eq!(tensor[1]["label"], "red");
        assert_eq!(person["object_id"], 8);
    }
}

/// The full-frame object of the producer's `--frame-results`: the ClsMtd of no object as DL
/// Streamer 2026.1 writes it (labels joined, the highest confidence, under `classification`
/// for want of a semantic tag in GStreamer 1.26), in a 320x240 frame.
fn assert_full_frame(full_frame: &Value) {
    let keys: Vec<&str> = full_frame
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["classification", "h", "w", "x", "y"], "{full_frame}");
    assert_eq!(
        [
            &full_frame["x"],
            &full_frame["y"],
            &full_frame["w"],
            &full_frame["h"]
        ],
        [0, 0, 320, 240]
    );
    let classification = &full_frame["classification"];
    assert_eq!(classification["label"], "indoor office");
    assert_close(&classification["confidence"], f64::from(0.7f32));
    assert!(classification.get("label_id").is_none(), "{classification}");
    assert!(classification.get("model").is_none(), "{classification}");
}

/// The oriented truck: with `analytics-oriented` the box before rotation and its rotation,
/// as gvadetect writes it; with the GStreamer 1.24 API the axis-aligned box around it.
fn assert_truck(truck: &Value) {
    assert_eq!(truck["roi_type"], "truck", "{truck}");
    assert_close(&truck["detection"]["confidence"], 0.8);
    let rect = ["x", "y", "w", "h"].map(|k| truck[k].as_u64().unwrap());
    #[cfg(feature = "analytics-oriented")]
    {
        assert_eq!(rect, [100, 150, 80, 40], "{truck}");
        assert_close(&truck["detection"]["rotation"], 0.5);
    }
    #[cfg(not(feature = "analytics-oriented"))]
    {
        assert_eq!(rect, [95, 133, 90, 74], "{truck}");
        assert!(truck["detection"].get("rotation").is_none(), "{truck}");
    }
}

#[test]
fn frame_level_results_oriented_boxes_and_segmentation_as_dl_streamer_writes_them() {
    for message in produce_messages(&["--frame-results"]) {
        let objects = message["objects"].as_array().unwrap();
        // The segmentation mask is left out, as gvametaconvert leaves it out: nothing else.
        let [car, person, truck, full_frame] = &objects[..] else {
            panic!("the three objects, then the full-frame object: {message}");
        };
        assert_car(car);
        assert_eq!(car["classification"]["label"], "red");
        assert_person(person);
        assert_truck(truck);
        assert_full_frame(full_frame);
        let keys: Vec<&str> = message
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["frame_id", "objects", "resolution", "timestamp"],
            "{message}"
        );
    }
}

#[test]
fn metafilter_removes_a_frame_level_classification_below_the_threshold() {
    // indoor office (0.7) goes, the car's red (0.8) stays.
    let filter = "type=classification threshold=0.75";
    for objects in produce(&["--frame-results", "--filter", filter]) {
        let [car, person, truck] = &objects[..] else {
            panic!("no full-frame object left: {objects:?}");
        };
        assert_car(car);
        assert_eq!(car["classification"]["label"], "red");
        assert_person(person);
        // Rebuilt without the ClsMtd, the relation meta keeps the truck oriented.
        assert_truck(truck);
    }
    // The detection type leaves results about the whole frame.
    for objects in produce(&["--frame-results", "--filter", "threshold=0.5"]) {
        let [car, truck, full_frame] = &objects[..] else {
            panic!("the person (0.3) goes: {objects:?}");
        };
        assert_car(car);
        assert_truck(truck);
        assert_full_frame(full_frame);
    }
}

#[test]
fn dlsps_carries_the_full_frame_object_and_gva_meta_the_regions() {
    for message in produce_messages(&["--frame-results", "--sink", "message-format=dlsps"]) {
        let m = &message["metadata"];
        let objects = m["objects"].as_array().unwrap();
        assert_eq!(objects.len(), 4, "{m}");
        assert_full_frame(&objects[3]);
        let gva_meta = m["gva_meta"].as_array().unwrap();
        let labels: Vec<&Value> = gva_meta.iter().map(|r| &r["tensor"][0]["label"]).collect();
        assert_eq!(labels, ["car", "person", "truck"], "{m}");
    }
}

/// One object per frame, as `gvametapublish` records it: a tracked car in a 640x480 frame.
const RECORDING_LINE: &str = r#"{"objects":[{"x":100,"y":100,"w":200,"h":100,"roi_type":"car","id":5,"region_id":0,"detection":{"confidence":0.9,"label":"car","label_id":1,"bounding_box":{"x_min":0.15625,"x_max":0.46875,"y_min":0.2083333333,"y_max":0.4166666667}}}],"resolution":{"width":640,"height":480},"timestamp":0}"#;

#[test]
fn metareplay_output_is_drawn_by_objectdetectionoverlay_and_published_once() {
    use gst::prelude::*;

    common::init_plugin();
    let broker = Broker::new();
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("car.jsonl");
    std::fs::write(&recording, format!("{RECORDING_LINE}\n").repeat(3)).unwrap();
    let topic = "analytics/replay";
    let port = broker.port().to_string();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", broker.host(), "-p", &port, "-t", topic, "-q", "1"])
        .args(["-C", "3", "-W", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs");
    broker.wait_for_log("Received SUBSCRIBE", Duration::from_secs(10));

    // Black frames; GStreamer's own overlay draws the ODMtds it finds, in red, without labels.
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=3 pattern=black \
         ! video/x-raw,format=RGBA,width=640,height=480,framerate=10/1 \
         ! metareplay location={} \
         ! objectdetectionoverlay draw-labels=false object-detection-outline-color=0xffff0000 \
         ! tee name=t ! queue ! appsink name=frames sync=false \
         t. ! queue ! mqttpublish host={} port={port} topic={topic} qos=1 leaky=no",
        recording.display(),
        broker.host()
    ))
    .expect("objectdetectionoverlay (gstreamer1.0-plugins-bad >= 1.24) and this plugin")
    .downcast::<gst::Pipeline>()
    .unwrap();
    let appsink = pipeline
        .by_name("frames")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();

    let mut frames = 0;
    while let Some(sample) = appsink.try_pull_sample(gst::ClockTime::from_seconds(10)) {
        let buffer = sample.buffer().unwrap();
        let map = buffer.map_readable().unwrap();
        let stride = 640 * 4;
        let red = |x: usize, y: usize| map[y * stride + x * 4];
        let green = |x: usize, y: usize| map[y * stride + x * 4 + 1];
        // The left edge of the box, halfway down, is drawn red; inside and far away is black.
        assert!(
            (97..=103).any(|x| red(x, 150) > 128 && green(x, 150) < 64),
            "no red outline at x=100, y=150: {:?}",
            (95..=105).map(|x| red(x, 150)).collect::<Vec<_>>()
        );
        assert_eq!((red(200, 150), green(200, 150)), (0, 0), "inside the box");
        assert_eq!((red(500, 400), green(500, 400)), (0, 0), "outside the box");
        frames += 1;
        if frames == 3 {
            break;
        }
    }
    assert_eq!(frames, 3);
    let bus = pipeline.bus().unwrap();
    let msg = bus
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(30),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("end of stream");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    pipeline.set_state(gst::State::Null).unwrap();

    let received = sub.wait_with_output().unwrap();
    assert!(received.status.success(), "mosquitto_sub: {received:?}");
    let text = String::from_utf8(received.stdout).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let message: Value = serde_json::from_str(line).unwrap();
        let objects = message["objects"].as_array().unwrap();
        // metareplay attached the car as an ODMtd and as an ROI meta of the same id.
        let [car] = &objects[..] else {
            panic!("the car once: {line}");
        };
        assert_eq!(car["roi_type"], "car");
        assert_eq!(car["id"], 5);
        assert_eq!(
            (car["x"].as_u64(), car["w"].as_u64()),
            (Some(100), Some(200))
        );
        assert_eq!(car["detection"]["label_id"], 1);
        assert_close(&car["detection"]["confidence"], 0.9);
    }
}

#[test]
fn gst_inspect_says_this_build_reads_relation_meta() {
    common::init_plugin();
    for name in ["mqttpublish", "metafilter"] {
        let factory = gst::ElementFactory::find(name).unwrap();
        let description = factory.metadata("description").unwrap();
        assert!(
            description.contains("Reads GstAnalyticsRelationMeta"),
            "{name}: {description}"
        );
    }
    let factory = gst::ElementFactory::find("metareplay").unwrap();
    assert!(factory
        .metadata("description")
        .unwrap()
        .contains("GstAnalyticsRelationMeta (ODMtd"));
}
