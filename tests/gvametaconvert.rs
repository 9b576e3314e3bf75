// SPDX-License-Identifier: MPL-2.0

//! `gvametaconvert ! mqttpublish`: the JSON DL Streamer's gvametaconvert attaches
//! (`GstGVAJSONMeta`) is what gets published, as `gvametapublish` sends it. `metareplay
//! attach-json=true` attaches recorded lines the same way.
//!
//! And without gvametaconvert: the frame tensor metas of `gvainference` and `gvaclassify
//! inference-region=full-frame` (made by `common::dlstreamer`, as DL Streamer makes them)
//! are published as gvametaconvert would write them, byte for byte the same as the JSON
//! meta of the same buffer.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::dlstreamer::{self, f32_bytes, FP32, LAYOUT_ANY, LAYOUT_NC};
use common::{init_plugin, stat, to, Broker, Message, Run, Subscriber};
use gst::prelude::*;
use gstanalyticsmqtt::internals::attach_json_message;
use serde_json::Value;

const TOPIC: &str = "dlstreamer_pipeline_results";
const LONG: Duration = Duration::from_secs(30);

/// Lines as gvametaconvert writes them with `add-tensor-data=true timestamp-utc=true`: keys
/// this plugin never writes itself (tensors, a UTC timestamp string, an extra key).
const LINES: [&str; 3] = [
    r#"{"objects":[{"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.5,"y_min":0.25},"confidence":0.91,"label":"person","label_id":1},"h":120,"region_id":0,"roi_type":"person","tensors":[{"confidence":0.91,"data":[0.1,0.2],"layer_name":"detection_out","model_name":"person-detection-0202","name":"detection","precision":"FP32"}],"w":160,"x":160,"y":120}],"resolution":{"height":480,"width":640},"timestamp":0,"timestamp_utc":"2026-12-03T10:00:00.000000Z","vendor":{"line":3}}"#,
    r#"{"objects":[{"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.5,"y_min":0.25},"confidence":0.2,"label":"person","label_id":1},"h":120,"region_id":0,"roi_type":"person","tensors":[{"data":[0.3],"name":"detection"}],"w":160,"x":160,"y":120}],"resolution":{"height":480,"width":640},"timestamp":33333333,"timestamp_utc":"2026-12-03T10:00:00.033333Z","vendor":{"line":3}}"#,
    r#"{"objects":[],"resolution":{"height":480,"width":640},"timestamp":66666666,"timestamp_utc":"2026-12-03T10:00:00.066666Z"}"#,
];

fn recording(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn source(location: &Path, extra: &str) -> String {
    format!(
        "videotestsrc num-buffers=3 ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! metareplay location={} attach-json=true {extra}",
        location.display()
    )
}

fn publish(
    source: &str,
    props: &str,
    broker: &Broker,
    expected: usize,
) -> (Vec<Message>, gst::Structure, Vec<String>) {
    let sub = Subscriber::new(broker, TOPIC);
    let mut run = Run::publish(source, props);
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    let messages = sub.wait_for(expected, LONG);
    sub.assert_count_after(expected, Duration::from_millis(200));
    (messages, stats, warnings)
}

/// The `appsrc` named `src` of `run`, giving 64x48 GRAY8 frames.
fn gray_appsrc(run: &Run) -> gst_app::AppSrc {
    let appsrc = run.element("src").downcast::<gst_app::AppSrc>().unwrap();
    appsrc.set_caps(Some(
        &gst_video::VideoInfo::builder(gst_video::VideoFormat::Gray8, 64, 48)
            .build()
            .unwrap()
            .to_caps()
            .unwrap(),
    ));
    appsrc
}

fn json(message: &Message) -> Value {
    serde_json::from_slice(&message.payload).expect("payload is JSON")
}

#[test]
fn recorded_lines_arrive_byte_for_byte_with_frame_id() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    let location = recording(dir.path(), "tensors.jsonl", &LINES);
    let (messages, stats, _) = publish(&source(&location, ""), &to(&broker), &broker, 3);
    for (i, (message, line)) in messages.iter().zip(LINES).enumerate() {
        let prefix = format!("{{\"frame_id\":{i},");
        let text = message.payload_str();
        assert!(text.starts_with(&prefix), "{text}");
        assert_eq!(&text[prefix.len()..], &line[1..], "frame {i}: as recorded");
    }
    assert_eq!(stat(&stats, "json-invalid"), 0);

    // metadata-source=metas: built from the metas, without the keys only the JSON has.
    let (messages, _, _) = publish(
        &source(&location, ""),
        &format!("{} metadata-source=metas", to(&broker)),
        &broker,
        3,
    );
    let first = json(&messages[0]);
    assert_eq!(first["objects"][0]["roi_type"], "person");
    assert!(first.get("timestamp_utc").is_none(), "{first}");
    assert!(first["objects"][0].get("tensors").is_none(), "{first}");
}

#[test]
fn two_json_metas_merge_and_the_element_adds_only_what_is_missing() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    let first = recording(dir.path(), "first.jsonl", &LINES);
    let second = recording(
        dir.path(),
        "second.jsonl",
        &[r#"{"objects":[],"source":"gvametaconvert source=","extra":1}"#; 3],
    );
    let (messages, _, _) = publish(
        &format!(
            "{} ! metareplay location={} attach-json=true",
            source(&first, ""),
            second.display()
        ),
        &format!(
            "{} source=element-source tags={{\\\"site\\\":\\\"dock\\\"}}",
            to(&broker)
        ),
        &broker,
        3,
    );
    let v = json(&messages[0]);
    // The second meta's keys win, as DLSPS merges them.
    assert_eq!(v["objects"], serde_json::json!([]));
    assert_eq!(v["extra"], 1);
    assert_eq!(v["timestamp_utc"], "2026-12-03T10:00:00.000000Z");
    assert_eq!(
        v["source"], "gvametaconvert source=",
        "the JSON's own source stays"
    );
    assert_eq!(
        v["tags"],
        serde_json::json!({"site": "dock"}),
        "added: the JSON had none"
    );
    assert_eq!(v["frame_id"], 0);
}

#[test]
fn invalid_json_is_published_from_the_metas_counted_and_warned_once() {
    init_plugin();
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let mut run = Run::publish("appsrc name=src format=time", &to(&broker));
    let appsrc = gray_appsrc(&run);
    for (i, text) in ["not json", "[1,2]", r#"{"objects":[],"ok":true}"#]
        .into_iter()
        .enumerate()
    {
        let mut buffer = gst::Buffer::with_size(64 * 48).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(i as u64 * 33));
            let mut roi = gst_video::VideoRegionOfInterestMeta::add(b, "car", (1, 2, 3, 4));
            roi.add_param(
                gst::Structure::builder("detection")
                    .field("confidence", 0.5f64)
                    .build(),
            );
            assert!(attach_json_message(b, text));
        }
        appsrc.push_buffer(buffer).unwrap();
    }
    appsrc.end_of_stream().unwrap();
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    let messages = sub.wait_for(3, LONG);
    for message in &messages[..2] {
        let v = json(message);
        assert_eq!(
            v["objects"][0]["roi_type"], "car",
            "built from the metas: {v}"
        );
    }
    assert_eq!(
        json(&messages[2])["ok"],
        true,
        "a valid one is published as attached"
    );
    assert_eq!(stat(&stats, "json-invalid"), 2, "{stats}");
    let named: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("gvametaconvert"))
        .collect();
    assert_eq!(named.len(), 1, "{warnings:?}");
    assert!(named[0].contains("invalid JSON"), "{named:?}");
}

#[test]
fn what_a_filter_removes_never_reaches_the_json() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    let location = recording(dir.path(), "tensors.jsonl", &LINES);
    // metafilter after the JSON was attached (after gvametaconvert in a DL Streamer
    // pipeline), then the configuration's filter in mqttpublish.
    let (messages, _, _) = publish(
        &source(&location, "! metafilter label-score={\\\"person\\\":0.5}"),
        &to(&broker),
        &broker,
        3,
    );
    let objects: Vec<usize> = messages
        .iter()
        .map(|m| json(m)["objects"].as_array().unwrap().len())
        .collect();
    assert_eq!(objects, [1, 0, 0], "the 0.2 person is gone from the JSON");
    let first = json(&messages[0]);
    assert_eq!(
        first["timestamp_utc"], "2026-12-03T10:00:00.000000Z",
        "the rest stays"
    );
    assert_eq!(first["objects"][0]["tensors"][0]["precision"], "FP32");

    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"mqtt_publisher": {"filter": {"type": "detection", "label_score": {"person": 0.95}}}}"#,
    )
    .unwrap();
    let (messages, stats, _) = publish(
        &source(&location, ""),
        &format!("{} config={}", to(&broker), config.display()),
        &broker,
        1,
    );
    // Frames 0 and 1 had a person below 0.95 and nothing else: skipped, as from the metas.
    assert_eq!(json(&messages[0])["frame_id"], 2);
    assert_eq!(stat(&stats, "frames-skipped"), 2);
}

#[test]
fn the_dlsps_format_merges_the_json_into_its_metadata() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    let location = recording(dir.path(), "tensors.jsonl", &LINES);
    let (messages, _, _) = publish(
        &source(&location, ""),
        &format!("{} message-format=dlsps", to(&broker)),
        &broker,
        3,
    );
    let v = json(&messages[0]);
    let m = &v["metadata"];
    assert_eq!(m["timestamp_utc"], "2026-12-03T10:00:00.000000Z");
    assert_eq!(m["vendor"]["line"], 3);
    assert_eq!(m["objects"][0]["tensors"][0]["layer_name"], "detection_out");
    assert_eq!(m["gva_meta"][0]["tensor"][0]["label"], "person");
    assert_eq!(m["frame_id"], 0);
    assert_eq!(m["width"], 640);
    assert_eq!(v["blob"], "");
}

/// What gvametaconvert (v2025.2.0, `jsonconverter.cpp`, `convert_tensor.cpp`) writes for a
/// 64x48 frame at stream time 0 carrying [`frame_tensors`]: no region, so `objects` holds the
/// full-frame object alone (`convert_frame_classification`): x and y 0, the frame's size,
/// and per tensor with a label its classification, keyed by `attribute_name` else the
/// structure's name. nlohmann's std::map writes every object's keys in byte order.
const FRAME_JSON: &str = concat!(
    r#"{"objects":[{"classification_layer_name:out":{"confidence":0.5,"label":"day","#,
    r#""label_id":1,"model":{"name":"daynight"}},"h":48,"scene":{"confidence":0.875,"#,
    r#""label":"indoor","label_id":0,"model":{"name":"scene-net"}},"w":64,"x":0,"y":0}],"#,
    r#""resolution":{"height":48,"width":64},"timestamp":0}"#
);

/// The same with `add-tensor-data=true`: the full-frame object lists every tensor
/// (`convert_tensor`: `precision` and `layout` by name, `dims`, `name`, `model_name`,
/// `layer_name`, `label`, `confidence`, `label_id`, `data` as 32-bit floats), and the top
/// level lists those without a `type` (`convert_frame_tensors`): the gvainference output.
const FRAME_JSON_WITH_TENSORS: &str = concat!(
    r#"{"objects":[{"classification_layer_name:out":{"confidence":0.5,"label":"day","#,
    r#""label_id":1,"model":{"name":"daynight"}},"h":48,"scene":{"confidence":0.875,"#,
    r#""label":"indoor","label_id":0,"model":{"name":"scene-net"}},"tensors":["#,
    r#"{"data":[0.25,-1.5,3.0,0.125],"dims":[1,4],"layer_name":"prob","layout":"NC","#,
    r#""model_name":"resnet-50","name":"inference_layer_name:prob","precision":"FP32"},"#,
    r#"{"confidence":0.875,"data":[0.875,0.125],"dims":[1,2],"label":"indoor","label_id":0,"#,
    r#""layer_name":"prob","layout":"NC","model_name":"scene-net","name":"scene","#,
    r#""precision":"FP32"},"#,
    r#"{"confidence":0.5,"data":[0.25,0.5],"dims":[1,2],"label":"day","label_id":1,"#,
    r#""layer_name":"out","layout":"ANY","model_name":"daynight","#,
    r#""name":"classification_layer_name:out","precision":"FP32"}],"w":64,"x":0,"y":0}],"#,
    r#""resolution":{"height":48,"width":64},"#,
    r#""tensors":[{"data":[0.25,-1.5,3.0,0.125],"dims":[1,4],"layer_name":"prob","#,
    r#""layout":"NC","model_name":"resnet-50","name":"inference_layer_name:prob","#,
    r#""precision":"FP32"}],"timestamp":0}"#
);

/// A frame as `gvainference` (layer `prob` of resnet-50) and two `gvaclassify
/// inference-region=full-frame` (one with a model-proc `attribute_name`) leave it.
fn frame_tensors(buffer: &mut gst::BufferRef) {
    dlstreamer::attach(
        buffer,
        dlstreamer::gvainference(
            "resnet-50",
            "prob",
            FP32,
            LAYOUT_NC,
            &[1, 4],
            &f32_bytes(&[0.25, -1.5, 3.0, 0.125]),
        ),
        "inference0",
    );
    dlstreamer::attach(
        buffer,
        dlstreamer::gvaclassify(
            "scene-net",
            "prob",
            Some("scene"),
            LAYOUT_NC,
            &["indoor", "outdoor"],
            &[0.875, 0.125],
        ),
        "classify0",
    );
    dlstreamer::attach(
        buffer,
        dlstreamer::gvaclassify(
            "daynight",
            "out",
            None,
            LAYOUT_ANY,
            &["night", "day"],
            &[0.25, 0.5],
        ),
        "classify1",
    );
}

/// Pushes one 64x48 frame carrying [`frame_tensors`] (and, with `json`, that text as the JSON
/// meta gvametaconvert attaches) through `mqttpublish props` and returns what a subscriber
/// received.
fn publish_frame_tensors(broker: &Broker, json: Option<&str>, props: &str) -> String {
    init_plugin();
    let sub = Subscriber::new(broker, TOPIC);
    let mut run = Run::publish(
        "appsrc name=src format=time",
        &format!("{} {props}", to(broker)),
    );
    let appsrc = gray_appsrc(&run);
    let mut buffer = gst::Buffer::with_size(64 * 48).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        b.set_pts(gst::ClockTime::ZERO);
        frame_tensors(b);
        if let Some(json) = json {
            assert!(attach_json_message(b, json));
        }
    }
    appsrc.push_buffer(buffer).unwrap();
    appsrc.end_of_stream().unwrap();
    run.wait_eos(LONG);
    let warnings = run.warnings();
    assert!(warnings.is_empty(), "{warnings:?}");
    run.stop();
    let messages = sub.wait_for(1, LONG);
    messages[0].payload_str().to_owned()
}

fn with_frame_id(json: &str) -> String {
    format!("{{\"frame_id\":0,{}", &json[1..])
}

#[test]
fn frame_tensors_are_published_as_gvametaconvert_writes_them() {
    let broker = Broker::new();
    for (props, expected) in [
        ("", FRAME_JSON),
        ("add-tensor-data=true", FRAME_JSON_WITH_TENSORS),
    ] {
        // Built from the tensor metas alone.
        let built = publish_frame_tensors(&broker, None, props);
        assert_eq!(built, with_frame_id(expected), "{props}");
        // The same buffer with gvametaconvert's JSON: the JSON is published, and it is the
        // same text, key for key.
        let attached = publish_frame_tensors(&broker, Some(expected), props);
        assert_eq!(attached, built, "{props}");
        let from_metas = publish_frame_tensors(
            &broker,
            Some(expected),
            &format!("{props} metadata-source=metas"),
        );
        assert_eq!(from_metas, built, "{props}");
    }
}

#[test]
fn recorded_frame_results_are_replayed_and_published_as_recorded() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::new();
    for (props, line) in [
        ("", FRAME_JSON),
        ("add-tensor-data=true", FRAME_JSON_WITH_TENSORS),
    ] {
        let location = recording(dir.path(), "frame.jsonl", &[line]);
        let sub = Subscriber::new(&broker, TOPIC);
        let mut run = Run::publish(
            &format!(
                "videotestsrc num-buffers=1 ! video/x-raw,format=GRAY8,width=64,height=48 \
                 ! metareplay location={}",
                location.display()
            ),
            &format!("{} {props}", to(&broker)),
        );
        run.wait_eos(LONG);
        run.stop();
        let messages = sub.wait_for(1, LONG);
        assert_eq!(messages[0].payload_str(), with_frame_id(line), "{props}");
    }
}

#[test]
fn dlsps_merges_the_frame_level_results_and_lists_regions_only_in_gva_meta() {
    let broker = Broker::new();
    let expected: Value = serde_json::from_str(FRAME_JSON_WITH_TENSORS).unwrap();
    for json in [None, Some(FRAME_JSON_WITH_TENSORS)] {
        let text =
            publish_frame_tensors(&broker, json, "message-format=dlsps add-tensor-data=true");
        let v: Value = serde_json::from_str(&text).unwrap();
        let m = &v["metadata"];
        // DLSPS merges gvametaconvert's keys into its metadata as they are.
        for key in ["objects", "tensors", "resolution", "timestamp"] {
            assert_eq!(m[key], expected[key], "{key} from {json:?}: {m}");
        }
        // gva_meta comes from the frame's regions, and there are none.
        assert_eq!(m["gva_meta"], serde_json::json!([]), "{m}");
        assert_eq!(m["frame_id"], 0);
        assert_eq!(v["blob"], "");
    }
}

#[test]
fn the_configuration_filter_removes_frame_level_classifications() {
    let broker = Broker::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"mqtt_publisher": {"filter": {"type": "classification", "label_score": {"day": 0.6}}}}"#,
    )
    .unwrap();
    let props = format!("config={}", config.display());
    for json in [None, Some(FRAME_JSON)] {
        let text = publish_frame_tensors(&broker, json, &props);
        let v: Value = serde_json::from_str(&text).unwrap();
        let full_frame = &v["objects"][0];
        assert!(
            full_frame.get("classification_layer_name:out").is_none(),
            "day (0.5) is below 0.6, from {json:?}: {v}"
        );
        assert_eq!(full_frame["scene"]["label"], "indoor", "from {json:?}: {v}");
        assert_eq!(
            (full_frame["x"].as_u64(), full_frame["w"].as_u64()),
            (Some(0), Some(64))
        );
    }
}

#[test]
fn a_tensor_whose_data_cannot_be_read_is_published_without_it_counted_and_warned_once() {
    init_plugin();
    let broker = Broker::new();
    let sub = Subscriber::new(&broker, TOPIC);
    let mut run = Run::publish(
        "appsrc name=src format=time",
        &format!("{} add-tensor-data=true", to(&broker)),
    );
    let appsrc = gray_appsrc(&run);
    for i in 0..2u64 {
        let mut buffer = gst::Buffer::with_size(64 * 48).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(i * 33));
            // A producer that put text where DL Streamer puts the bytes.
            let mut bad = dlstreamer::gvainference("net", "out", FP32, LAYOUT_NC, &[1, 1], &[]);
            bad.set("data_buffer", gst::glib::Variant::from("0.5"));
            bad.remove_field("data");
            dlstreamer::attach(b, bad, "inference0");
            let good = dlstreamer::gvainference(
                "net",
                "prob",
                FP32,
                LAYOUT_NC,
                &[1, 1],
                &f32_bytes(&[0.5]),
            );
            dlstreamer::attach(b, good, "inference1");
        }
        appsrc.push_buffer(buffer).unwrap();
    }
    appsrc.end_of_stream().unwrap();
    run.wait_eos(LONG);
    let warnings = run.warnings();
    let stats = run.stop();
    for message in sub.wait_for(2, LONG) {
        let v = json(&message);
        let tensors = v["tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), 2, "{v}");
        assert_eq!(tensors[0]["name"], "inference_layer_name:out");
        assert!(tensors[0].get("data").is_none(), "{v}");
        assert_eq!(tensors[1]["data"], serde_json::json!([0.5]));
    }
    assert_eq!(stat(&stats, "tensor-data-invalid"), 2, "{stats}");
    let named: Vec<&String> = warnings
        .iter()
        .filter(|w| w.contains("tensor-data-invalid"))
        .collect();
    assert_eq!(named.len(), 1, "{warnings:?}");
    assert!(
        named[0].contains("inference_layer_name:out") && named[0].contains("not a byte array"),
        "{named:?}"
    );
}
