// SPDX-License-Identifier: MPL-2.0

//! The ready examples in `pipelines/`, used as users use them: the DLSPS `config.json`, the
//! REST request body and the bare `mqtt_publisher` section unchanged, the scripts run as
//! they are, the broker named by `MQTT_HOST`/`MQTT_PORT` as in DLSPS. A real mosquitto per
//! test; a real subscriber, at QoS 2 so that each message arrives with the QoS it was
//! published with, on `#` so that a wrong topic shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{
    case, plugin_dir, sample_recording, start_gerror, stat, to, Broker, Message, QoS, Run,
    Subscriber,
};
use gst::prelude::*;
use serde_json::Value;

const LONG: Duration = Duration::from_secs(60);

fn example(name: &str) -> String {
    format!("{}/pipelines/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// What an example configures, as the tests check it on every message.
struct Expected {
    topic: &'static str,
    qos: QoS,
    frames: bool,
    filter: Filter,
}

/// A DLSPS filter as the example files write it.
enum Filter {
    /// Objects of these labels below their threshold are removed.
    Detection(&'static [(&'static str, f64)]),
    /// Classification results of these labels below their threshold are removed.
    Classification(&'static [(&'static str, f64)]),
}

/// The objects of the first `frames` frames of the recording.
fn recorded_objects(frames: usize) -> Vec<Value> {
    std::fs::read_to_string(sample_recording())
        .unwrap()
        .lines()
        .take(frames)
        .flat_map(|line| {
            let frame: Value = serde_json::from_str(line).unwrap();
            frame["objects"].as_array().unwrap().clone()
        })
        .collect()
}

fn detection(object: &Value) -> (&str, f64) {
    (
        object["detection"]["label"].as_str().unwrap(),
        object["detection"]["confidence"].as_f64().unwrap(),
    )
}

/// The classification results of an object: every object key that holds a `label` and a
/// `confidence`, but the detection.
fn classifications(object: &Value) -> Vec<(&str, f64)> {
    object
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, _)| *key != "detection")
        .filter_map(|(_, v)| Some((v.get("label")?.as_str()?, v.get("confidence")?.as_f64()?)))
        .collect()
}

/// Results the filter keeps and removes among `objects`: (kept, removed).
fn split(filter: &Filter, objects: &[Value]) -> (usize, usize) {
    let (rules, results): (_, Vec<(&str, f64)>) = match filter {
        Filter::Detection(rules) => (rules, objects.iter().map(detection).collect()),
        Filter::Classification(rules) => {
            (rules, objects.iter().flat_map(classifications).collect())
        }
    };
    let mut counts = (0, 0);
    for (label, confidence) in results {
        if let Some((_, threshold)) = rules.iter().find(|(l, _)| *l == label) {
            if confidence >= *threshold {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
    }
    counts
}

/// Checks `messages`, the first `frames` frames of the recording, against `expected`.
fn check(messages: &[Message], frames: usize, expected: &Expected) {
    assert_eq!(messages.len(), frames);
    let mut objects = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        assert_eq!(message.topic, expected.topic);
        assert_eq!(message.qos, expected.qos, "message {i}");
        let payload: Value = serde_json::from_slice(&message.payload).unwrap();
        let metadata = if expected.frames {
            // [metadata, "<base64 JPEG>"], the shape of the DLSPS document.
            let jpeg = base64_decode(payload[1].as_str().expect("the frame"));
            let decoded = jpeg_decoder::Decoder::new(jpeg.as_slice())
                .decode()
                .expect("a JPEG");
            assert!(!decoded.is_empty());
            payload[0].clone()
        } else {
            assert!(payload.is_object(), "metadata only: {payload}");
            payload
        };
        assert_eq!(metadata["frame_id"], i as u64);
        objects.extend(metadata["objects"].as_array().unwrap().iter().cloned());
    }
    // The recording has results on both sides of the thresholds; only those above arrive.
    let (kept, removed) = split(&expected.filter, &recorded_objects(frames));
    assert!(kept > 0 && removed > 0, "the recording tests the filter");
    assert_eq!(split(&expected.filter, &objects), (kept, 0));
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("valid base64")
}

/// The settings of the pallet_detection pipeline of pipelines/config.json.
const PALLETS: Expected = Expected {
    topic: "warehouse/pallets",
    qos: QoS::AtLeastOnce,
    frames: true,
    filter: Filter::Detection(&[("box", 0.4), ("shipping label", 0.4)]),
};

/// The settings of the vehicle_color_gpu pipeline of pipelines/config.json.
const VEHICLES: Expected = Expected {
    topic: "gate/vehicles",
    qos: QoS::ExactlyOnce,
    frames: false,
    filter: Filter::Classification(&[("blue", 0.5)]),
};

/// The settings of pipelines/request.json.
const REQUEST: Expected = Expected {
    topic: "dock/3/detections",
    qos: QoS::ExactlyOnce,
    frames: true,
    filter: Filter::Detection(&[("person", 0.5), ("car", 0.5)]),
};

/// The settings of pipelines/mqtt_publisher.json.
const SECTION: Expected = Expected {
    topic: "dlstreamer_pipeline_results",
    qos: QoS::AtLeastOnce,
    frames: false,
    filter: Filter::Detection(&[("box", 0.4), ("shipping label", 0.4)]),
};

fn subscriber(broker: &Broker) -> Subscriber {
    Subscriber::builder(broker, "#")
        .qos(QoS::ExactlyOnce)
        .connect()
}

/// A user's shell: the plugin on `GST_PLUGIN_PATH`, the broker in `MQTT_HOST`/`MQTT_PORT`.
fn user_command(program: impl AsRef<std::ffi::OsStr>, plugins: &Path, broker: &Broker) -> Command {
    let mut command = Command::new(program);
    command
        .env("GST_PLUGIN_PATH", plugins)
        .env("MQTT_HOST", broker.host())
        .env("MQTT_PORT", broker.port().to_string())
        .stdin(Stdio::null());
    command
}

fn succeeded(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // No warning either (unknown keys, ...): gst-launch-1.0 prints them on stdout.
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(!printed.contains("WARNING"), "{printed}");
}

/// `gst-launch-1.0` with `args`, one argument each, as a shell passes them.
fn gst_launch(plugins: &Path, broker: &Broker, args: &[&str]) -> Output {
    user_command("gst-launch-1.0", plugins, broker)
        .args(args)
        .output()
        .expect("gst-launch-1.0 runs")
}

/// `frames` frames of 640x480 video as Motion JPEG in AVI, a video file to process.
fn video_file(dir: &Path, frames: u32) -> PathBuf {
    let path = dir.join("video.avi");
    let mut run = Run::start(&format!(
        "videotestsrc num-buffers={frames} ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! jpegenc ! avimux ! filesink location={}",
        path.display()
    ));
    run.wait_eos(LONG);
    run.pipeline.set_state(gst::State::Null).unwrap();
    path
}

/// An example run as a user runs it: `run`, given a directory of its own, the plugin
/// directory and the broker, publishes `frames` frames of the recording, and the subscriber
/// gets them as `expected` says, and no more.
fn example_publishes(
    frames: usize,
    expected: &Expected,
    run: impl FnOnce(&Path, &Path, &Broker) -> Output,
) {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let broker = Broker::new();
    let sub = subscriber(&broker);
    succeeded(&run(dir.path(), &plugins, &broker));
    check(&sub.wait_for(frames, LONG), frames, expected);
    sub.assert_count_after(frames, Duration::from_millis(300));
}

#[test]
fn the_file_job_script_publishes_as_the_config_json_pallet_pipeline_says() {
    example_publishes(40, &PALLETS, |dir, plugins, broker| {
        let video = video_file(dir, 40);
        user_command(example("file-job.sh"), plugins, broker)
            .arg(&video)
            .output()
            .unwrap()
    });
}

#[test]
fn the_live_camera_script_publishes_as_the_bare_section_says() {
    example_publishes(30, &SECTION, |_, plugins, broker| {
        // No camera here: a live test source in its place.
        user_command(example("live-camera.sh"), plugins, broker)
            .env("SOURCE", "videotestsrc is-live=true num-buffers=30")
            .output()
            .unwrap()
    });
}

#[test]
fn the_rest_request_body_publishes_as_its_mqtt_destination_says() {
    example_publishes(25, &REQUEST, |_, plugins, broker| {
        let location = format!("location={}", sample_recording());
        let config = format!("config={}", example("request.json"));
        gst_launch(
            plugins,
            broker,
            &[
                "-e",
                "videotestsrc",
                "num-buffers=25",
                "!",
                "video/x-raw,width=640,height=480",
                "!",
                "metareplay",
                &location,
                "!",
                "mqttpublish",
                &config,
            ],
        )
    });
}

/// 30 frames of the recording through `tail` (given the broker) in a pipeline an application
/// names after the config.json entry `vehicle_color_gpu`: no warning, and the subscriber
/// gets them as that entry says. Returns the final stats of the element named `sink`.
fn vehicle_pipeline_publishes(tail: impl FnOnce(&Broker) -> String) -> gst::Structure {
    let broker = Broker::new();
    let sub = subscriber(&broker);
    let mut run = Run::start_named(
        "vehicle_color_gpu",
        &format!(
            "videotestsrc num-buffers=30 ! video/x-raw,width=640,height=480 \
             ! metareplay location={} ! {}",
            sample_recording(),
            tail(&broker)
        ),
    );
    run.wait_eos(LONG);
    assert_eq!(run.warnings(), Vec::<String>::new());
    let stats = run.stop();
    check(&sub.wait_for(30, LONG), 30, &VEHICLES);
    stats
}

#[test]
fn the_gstreamer_pipeline_name_picks_the_config_json_pipeline() {
    let stats = vehicle_pipeline_publishes(|broker| {
        format!(
            "mqttpublish name=sink {} config={}",
            to(broker),
            example("config.json")
        )
    });
    assert_eq!(stat(&stats, "messages-acknowledged"), 30);
}

#[test]
fn metafilter_reads_the_filter_of_the_config_json_pipeline() {
    // metafilter filters by the config.json entry; mqttpublish only publishes (no config).
    vehicle_pipeline_publishes(|broker| {
        format!(
            "metafilter config={} ! mqttpublish name=sink {} topic=gate/vehicles qos=2",
            example("config.json"),
            to(broker)
        )
    });
}

#[test]
fn without_a_pipeline_to_pick_the_start_fails_listing_the_names() {
    let expected = format!(
        "{}: config.pipelines has 2 pipelines (\"pallet_detection\", \"vehicle_color_gpu\") \
         and none is named like the GStreamer pipeline (\"pipeline0\"): set config-pipeline to \
         the one to use",
        example("config.json")
    );
    let config = example("config.json");
    // As gst-launch-1.0 prints it.
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(dir.path());
    let broker = Broker::new();
    let config_arg = format!("config={config}");
    for tail in [
        &["mqttpublish", &config_arg][..],
        &["metafilter", &config_arg, "!", "fakesink"],
    ] {
        case(tail[0], || {
            let mut args = vec!["fakesrc", "num-buffers=1", "!"];
            args.extend(tail);
            let out = gst_launch(&plugins, &broker, &args);
            assert!(!out.status.success(), "{args:?} must fail");
            let printed = String::from_utf8_lossy(&out.stderr);
            assert!(
                printed.contains("ERROR: from element") && printed.contains(&expected),
                "{printed}"
            );
        });
    }
    // In the domain an application checks.
    for description in [
        format!("fakesrc ! mqttpublish config={config}"),
        format!("fakesrc ! metafilter config={config} ! fakesink"),
    ] {
        case(&description, || {
            let err = start_gerror(&description);
            assert!(err.matches(gst::LibraryError::Settings), "{err}");
            // This process numbers its pipelines: pipeline0, pipeline1, ...
            let (head, tail) = expected.split_once("pipeline0").unwrap();
            let text = err.to_string();
            assert!(text.contains(head) && text.ends_with(tail), "{text}");
        });
    }
    // A name that is not there is named, with the ones that are.
    let err = start_gerror(&format!(
        "fakesrc ! mqttpublish config={config} config-pipeline=pallet"
    ));
    assert!(err.matches(gst::LibraryError::Settings), "{err}");
    assert!(
        err.to_string().ends_with(
            "config-pipeline: no pipeline \"pallet\" in config.pipelines, which has \
             \"pallet_detection\", \"vehicle_color_gpu\""
        ),
        "{err}"
    );
}
