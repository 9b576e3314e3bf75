// SPDX-License-Identifier: MPL-2.0

//! What `mqttpublish` publishes for the inputs and consumers of DL Streamer deployments:
//! GPU memory and formats the encoder does not take, and the `dlsps` payload read by an
//! application written against DL Streamer Pipeline Server.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{init_plugin, sample_recording, stat, to, Broker, Message, Run, Subscriber};
use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;
use serde_json::Value;

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

fn json(message: &Message) -> Value {
    serde_json::from_slice(&message.payload).expect("payload is JSON")
}

/// A detected object: label, pixel box, confidence.
type Detected<'a> = (&'a str, (u32, u32, u32, u32), f64);

/// A buffer as DL Streamer's gvadetect leaves it: a ROI meta per object with a `detection`
/// param (label id, confidence, normalized box).
fn detected(pts_ms: u64, size: usize, objects: &[Detected]) -> gst::Buffer {
    let mut buffer = gst::Buffer::with_size(size).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
        for (label, rect, confidence) in objects {
            let mut roi = VideoRegionOfInterestMeta::add(b, label, *rect);
            roi.add_param(
                gst::Structure::builder("detection")
                    .field("label_id", 1i32)
                    .field("confidence", *confidence)
                    .field("x_min", 0.1f64)
                    .field("y_min", 0.1f64)
                    .field("x_max", 0.2f64)
                    .field("y_max", 0.2f64)
                    .build(),
            );
        }
    }
    buffer
}

/// Pushes `frames` buffers with `caps` through `appsrc ! mqttpublish props` and returns the
/// final stats and the warnings.
fn push_through(
    caps: &gst::Caps,
    buffer_size: usize,
    frames: u64,
    props: &str,
) -> (gst::Structure, Vec<String>) {
    init_plugin();
    let mut run = Run::publish("appsrc name=src format=time", props);
    let appsrc = run.element("src").downcast::<gst_app::AppSrc>().unwrap();
    appsrc.set_caps(Some(caps));
    for i in 0..frames {
        appsrc
            .push_buffer(detected(
                i * 33,
                buffer_size,
                &[
                    ("person", (10, 20, 30, 40), 0.9),
                    ("car", (50, 60, 70, 80), 0.6),
                ],
            ))
            .unwrap();
    }
    appsrc.end_of_stream().unwrap();
    run.wait_eos(LONG);
    let warnings = run.warnings();
    (run.stop(), warnings)
}

fn gpu_caps(memory: &str) -> gst::Caps {
    gst::Caps::builder("video/x-raw")
        .features([memory])
        .field("format", "NV12")
        .field("width", 1920)
        .field("height", 1080)
        .field("framerate", gst::Fraction::new(30, 1))
        .build()
}

#[test]
fn gpu_memory_frames_publish_their_metadata_with_and_without_publish_frame() {
    for memory in ["memory:VAMemory", "memory:DMABuf"] {
        for publish_frame in [false, true] {
            init_plugin();
            let broker = Broker::new();
            let sub = Subscriber::new(&broker, TOPIC);
            // The buffer's bytes stand for GPU memory: they must never be read.
            let (stats, warnings) = push_through(
                &gpu_caps(memory),
                16,
                5,
                &format!("{} publish-frame={publish_frame}", to(&broker)),
            );
            let what = format!("{memory} publish-frame={publish_frame}");
            let messages = sub.wait_for(5, LONG);
            for (i, message) in messages.iter().enumerate() {
                let v = json(message);
                let metadata = if publish_frame {
                    assert_eq!(v[1], "", "{what}: no image, same shape: {v}");
                    &v[0]
                } else {
                    &v
                };
                assert_eq!(metadata["frame_id"], i as u64, "{what}");
                assert_eq!(metadata["resolution"]["width"], 1920, "{what}");
                let labels: Vec<&str> = metadata["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["detection"]["label"].as_str().unwrap())
                    .collect();
                assert_eq!(labels, ["person", "car"], "{what}");
            }
            assert_eq!(stat(&stats, "messages-published"), 5, "{what}: {stats}");
            let (counted, named) = if publish_frame { (5, 1) } else { (0, 0) };
            assert_eq!(stat(&stats, "unencoded-memory"), counted, "{what}: {stats}");
            assert_eq!(
                warnings
                    .iter()
                    .filter(|w| w.contains(memory) && w.contains("without images"))
                    .count(),
                named,
                "{what}: warned once naming the caps: {warnings:?}"
            );
        }
    }
}

#[test]
fn formats_the_encoder_does_not_take_publish_their_metadata() {
    init_plugin();
    for format in ["I420_10LE", "RGB16"] {
        let broker = Broker::new();
        let sub = Subscriber::new(&broker, TOPIC);
        let info = gst_video::VideoInfo::builder(format.parse().unwrap(), 64, 32)
            .build()
            .unwrap();
        let (stats, warnings) = push_through(
            &info.to_caps().unwrap(),
            info.size(),
            3,
            &format!("{} publish-frame=true", to(&broker)),
        );
        for message in sub.wait_for(3, LONG) {
            let v = json(&message);
            assert_eq!(v[1], "", "{format}: {v}");
            assert_eq!(v[0]["objects"].as_array().unwrap().len(), 2, "{format}");
        }
        assert_eq!(stat(&stats, "unencoded-format"), 3, "{format}: {stats}");
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(format) && w.contains("JPEG encoder does not take")),
            "{format}: {warnings:?}"
        );
    }
}

/// The consumer side of a DLSPS deployment, as its applications are written: it reads
/// `msg["metadata"]` and `msg["blob"]` and the keys DLSPS documents, and prints what it found
/// as one JSON line per message.
const DLSPS_APP: &str = r#"
import base64, json, sys, threading, time
import paho.mqtt.client as mqtt

host, port, topic, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = []

def on_message(client, userdata, msg):
    payload = json.loads(msg.payload)
    metadata = payload["metadata"]
    blob = payload["blob"]
    frame = base64.b64decode(blob) if blob else b""
    regions = metadata["gva_meta"]
    seen.append({
        "frame_id": metadata["frame_id"],
        "img_handle": metadata["img_handle"],
        "size": [metadata["width"], metadata["height"], metadata["channels"]],
        "img_format": metadata["img_format"],
        "caps": metadata["caps"].split(",")[0],
        "encoding": [metadata.get("encoding_type"), metadata.get("encoding_level")],
        "jpeg": frame[:2] == b"\xff\xd8",
        "labels": [r["tensor"][0]["label"] for r in regions],
        "boxes": [[r["x"], r["y"], r["width"], r["height"]] for r in regions],
        "objects": len(metadata["objects"]),
        "pipeline": [metadata["pipeline"]["name"], metadata["pipeline"]["version"],
                     metadata["pipeline"]["status"]["state"]],
        "time": metadata["time"],
        "tags": metadata.get("tags"),
    })

subscribed = threading.Event()

def on_subscribe(client, userdata, mid, *rest):
    subscribed.set()

client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2) if hasattr(mqtt, "CallbackAPIVersion") else mqtt.Client()
client.on_message = on_message
client.on_subscribe = on_subscribe
client.connect(host, port)
client.subscribe(topic)
client.loop_start()
# Ready once the broker has acknowledged the subscription (SUBACK).
if not subscribed.wait(30):
    sys.exit("no SUBACK within 30 s")
print("subscribed", flush=True)
deadline = time.monotonic() + 30
while len(seen) < count and time.monotonic() < deadline:
    time.sleep(0.05)
client.loop_stop()
for entry in seen:
    print(json.dumps(entry))
"#;

#[test]
fn a_dlsps_application_reads_the_dlsps_format_unchanged() {
    let broker = Broker::new();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("app.py");
    std::fs::write(&app, DLSPS_APP).unwrap();
    let mut child = Command::new("/usr/bin/python3")
        .arg(&app)
        .args(["127.0.0.1", &broker.port().to_string(), TOPIC, "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("Debian's python3 with python3-paho-mqtt (scripts/deps.sh)");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(
        line.trim(),
        "subscribed",
        "the application is ready (SUBACK received)"
    );

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut run = Run::start(&format!(
        "videotestsrc num-buffers=4 ! video/x-raw,format=RGB,width=640,height=480,framerate=30/1 \
         ! metareplay location={} ! mqttpublish name=sink {} message-format=dlsps \
         publish-frame=true frame-interval=2 pipeline-version=counting tags={{\\\"line\\\":\\\"3\\\"}}",
        sample_recording(),
        to(&broker)
    ));
    run.wait_eos(LONG);
    run.stop();

    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let seen: Vec<Value> = rest
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let recorded: Vec<Value> = std::fs::read_to_string(sample_recording())
        .unwrap()
        .lines()
        .take(4)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (i, (entry, recorded)) in seen.iter().zip(&recorded).enumerate() {
        assert_eq!(entry["frame_id"], i as u64);
        assert_eq!(entry["size"], serde_json::json!([640, 480, 3]));
        assert_eq!(entry["img_format"], "RGB");
        assert_eq!(entry["caps"], "video/x-raw");
        let labels: Vec<&str> = recorded["objects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["detection"]["label"].as_str().unwrap())
            .collect();
        assert_eq!(entry["labels"], serde_json::json!(labels), "frame {i}");
        assert_eq!(entry["objects"], labels.len());
        let with_image = i % 2 == 0;
        assert_eq!(entry["jpeg"], with_image, "frame {i}");
        let encoding = if with_image {
            serde_json::json!(["jpeg", 85])
        } else {
            serde_json::json!([null, null])
        };
        assert_eq!(entry["encoding"], encoding, "frame {i}");
        // The pipeline's name is the GStreamer pipeline's.
        assert_eq!(entry["pipeline"][1], "counting");
        assert_eq!(entry["pipeline"][2], "RUNNING");
        assert!(entry["time"].as_u64().unwrap() >= before);
        assert_eq!(entry["tags"], serde_json::json!({"line": "3"}));
    }
    let handles: std::collections::HashSet<&str> = seen
        .iter()
        .map(|e| e["img_handle"].as_str().unwrap())
        .collect();
    assert_eq!(handles.len(), 4, "a new img_handle per frame");
    assert!(seen[0]["pipeline"][0]
        .as_str()
        .unwrap()
        .starts_with("pipeline"));
}

#[test]
fn dlsps_reports_the_quality_of_the_jpegenc_that_made_the_frames() {
    init_plugin();
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let mut run = Run::start(&format!(
        "videotestsrc num-buffers=2 ! video/x-raw,width=320,height=240 ! jpegenc quality=42 \
         ! mqttpublish name=sink {} message-format=dlsps publish-frame=true",
        to(&broker)
    ));
    run.wait_eos(LONG);
    run.stop();
    for message in sub.wait_for(2, LONG) {
        let v = json(&message);
        let m = &v["metadata"];
        assert_eq!(m["encoding_type"], "jpeg", "{m}");
        assert_eq!(m["encoding_level"], 42, "{m}");
        assert_eq!(m["img_format"], "none", "{m}");
        assert!(m["caps"].as_str().unwrap().starts_with("image/jpeg"), "{m}");
        assert_eq!(
            (m["width"].as_u64(), m["height"].as_u64()),
            (Some(320), Some(240))
        );
        assert!(!v["blob"].as_str().unwrap().is_empty());
    }
}
