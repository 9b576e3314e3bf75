// SPDX-License-Identifier: MPL-2.0

//! `metafilter` behaviour on buffers carrying metadata built the way DL Streamer's
//! gvadetect, gvatrack and gvaclassify build it.

mod common;

use std::io::Write;

use common::{init_plugin, start_error};
use gst::glib;
use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;

/// One object as gvadetect attaches it: an ROI meta with a `detection` param.
struct Det<'a> {
    label: &'a str,
    confidence: Option<f64>,
    classes: &'a [(&'a str, &'a str, f64)],
}

fn det(label: &str, confidence: f64) -> Det<'_> {
    Det {
        label,
        confidence: Some(confidence),
        classes: &[],
    }
}

fn buffer_with(objects: &[Det]) -> gst::Buffer {
    let mut buffer = gst::Buffer::with_size(16).unwrap();
    {
        let buffer = buffer.get_mut().unwrap();
        for (i, o) in objects.iter().enumerate() {
            let mut roi = VideoRegionOfInterestMeta::add(buffer, o.label, (10, 20, 30, 40));
            roi.set_id(i as i32);
            if let Some(confidence) = o.confidence {
                roi.add_param(
                    gst::Structure::builder("detection")
                        .field("label_id", 1i32)
                        .field("confidence", confidence)
                        .field("x_min", 0.1f64)
                        .field("x_max", 0.3f64)
                        .field("y_min", 0.2f64)
                        .field("y_max", 0.5f64)
                        .field("layer_name", "DetectionOutput")
                        .field("model_name", "detector")
                        .build(),
                );
            }
            roi.add_param(
                gst::Structure::builder("object_id")
                    .field("id", 100 + i as i32)
                    .build(),
            );
            for (attribute, label, confidence) in o.classes {
                roi.add_param(
                    gst::Structure::builder(*attribute)
                        .field("label", *label)
                        .field("label_id", 2i32)
                        .field("confidence", *confidence)
                        .field("type", "classification_result")
                        .field("layer_name", "color")
                        .field("model_name", "attributes")
                        .field("data_buffer", glib::Bytes::from_static(&[0u8; 8]))
                        .build(),
                );
            }
        }
    }
    buffer
}

/// Labels and confidences of the objects on `buffer`, in order.
fn objects(buffer: &gst::BufferRef) -> Vec<(String, Option<f64>)> {
    buffer
        .iter_meta::<VideoRegionOfInterestMeta>()
        .map(|roi| {
            let confidence = roi
                .param("detection")
                .and_then(|d| d.get::<f64>("confidence").ok());
            (roi.roi_type().to_string(), confidence)
        })
        .collect()
}

fn harness(props: &[(&str, &dyn ToValue)]) -> gst_check::Harness {
    init_plugin();
    let filter = gst::ElementFactory::make("metafilter").build().unwrap();
    for (name, value) in props {
        filter.set_property_from_value(name, &value.to_value());
    }
    started(&filter)
}

/// A harness around `filter`, which it starts: the properties set before are in effect, the
/// config file is read.
fn started(filter: &gst::Element) -> gst_check::Harness {
    let mut h = gst_check::Harness::with_element(filter, Some("sink"), Some("src"));
    h.set_src_caps_str("video/x-raw,format=RGB,width=640,height=480,framerate=30/1");
    h
}

fn stat(h: &gst_check::Harness, name: &str) -> u64 {
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    stats.get::<u64>(name).unwrap()
}

#[test]
fn removes_exactly_the_objects_below_their_label_threshold() {
    let mut h = harness(&[("label-score", &r#"{"box":0.4,"shipping label":0.6}"#)]);
    let out = h
        .push_and_pull(buffer_with(&[
            det("box", 0.39),
            det("box", 0.4),
            det("shipping label", 0.59),
            det("shipping label", 0.95),
            det("person", 0.01),
        ]))
        .unwrap();
    assert_eq!(
        objects(&out),
        [
            ("box".to_string(), Some(0.4)),
            ("shipping label".to_string(), Some(0.95)),
            ("person".to_string(), Some(0.01)),
        ]
    );
    assert_eq!(stat(&h, "objects-removed"), 2);
}

#[test]
fn threshold_applies_to_unlisted_labels() {
    let mut h = harness(&[("label-score", &r#"{"box":0.1}"#), ("threshold", &0.5f64)]);
    let out = h
        .push_and_pull(buffer_with(&[
            det("box", 0.2),
            det("person", 0.49),
            det("car", 0.5),
        ]))
        .unwrap();
    assert_eq!(
        objects(&out),
        [
            ("box".to_string(), Some(0.2)),
            ("car".to_string(), Some(0.5))
        ]
    );
}

#[test]
fn unscored_objects_are_kept_unless_drop_unscored() {
    let unscored = |label| Det {
        label,
        confidence: None,
        classes: &[],
    };
    let input = || buffer_with(&[unscored("box"), unscored("person"), det("box", 0.9)]);

    let mut h = harness(&[("label-score", &r#"{"box":0.4}"#)]);
    assert_eq!(objects(&h.push_and_pull(input()).unwrap()).len(), 3);

    let mut h = harness(&[("label-score", &r#"{"box":0.4}"#), ("drop-unscored", &true)]);
    let out = h.push_and_pull(input()).unwrap();
    assert_eq!(
        objects(&out),
        [("person".to_string(), None), ("box".to_string(), Some(0.9))],
        "only the unscored object whose label has a threshold goes"
    );
}

#[test]
fn classification_results_below_threshold_leave_their_object() {
    let mut h = harness(&[("label-score", &r#"{"red":0.5}"#)]);
    h.element()
        .unwrap()
        .set_property_from_str("type", "classification");
    let classes = [("color", "red", 0.3), ("type", "sedan", 0.2)];
    let out = h
        .push_and_pull(buffer_with(&[Det {
            label: "car",
            confidence: Some(0.1),
            classes: &classes,
        }]))
        .unwrap();
    let rois: Vec<_> = out.iter_meta::<VideoRegionOfInterestMeta>().collect();
    assert_eq!(rois.len(), 1, "the object stays whatever its confidence");
    let names: Vec<String> = rois[0].params().map(|p| p.name().to_string()).collect();
    assert_eq!(names, ["detection", "object_id", "type"]);
    assert_eq!(stat(&h, "classifications-removed"), 1);
    assert_eq!(stat(&h, "objects-removed"), 0);
}

/// A frame as `gvainference` and two `gvaclassify inference-region=full-frame` leave it,
/// and gvametaconvert's JSON of it.
fn frame_results() -> gst::Buffer {
    use common::dlstreamer::{self, f32_bytes, FP32, LAYOUT_ANY, LAYOUT_NC};
    let mut buffer = gst::Buffer::with_size(16).unwrap();
    {
        let b = buffer.get_mut().unwrap();
        let raw = f32_bytes(&[0.5, 0.25]);
        let inference = dlstreamer::gvainference("net", "prob", FP32, LAYOUT_NC, &[1, 2], &raw);
        dlstreamer::attach(b, inference, "inference0");
        let scene = ["indoor", "outdoor"];
        let scene = dlstreamer::gvaclassify(
            "scene-net",
            "prob",
            Some("scene"),
            LAYOUT_NC,
            &scene,
            &[0.875, 0.125],
        );
        dlstreamer::attach(b, scene, "classify0");
        let daytime = ["night", "day"];
        let daytime =
            dlstreamer::gvaclassify("daynight", "out", None, LAYOUT_ANY, &daytime, &[0.25, 0.5]);
        dlstreamer::attach(b, daytime, "classify1");
        assert!(gstanalyticsmqtt::internals::attach_json_message(
            b,
            r#"{"objects":[{"classification_layer_name:out":{"confidence":0.5,"label":"day","label_id":1,"model":{"name":"daynight"}},"h":480,"scene":{"confidence":0.875,"label":"indoor","label_id":0,"model":{"name":"scene-net"}},"w":640,"x":0,"y":0}],"resolution":{"height":480,"width":640},"timestamp":0}"#
        ));
    }
    buffer
}

#[test]
fn frame_level_classifications_below_their_threshold_are_removed() {
    use common::dlstreamer::structures;
    let names = |buffer: &gst::BufferRef| -> Vec<String> {
        structures(buffer)
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    };

    // "day" (0.5) is below 0.6, "indoor" (0.875) is not; the raw output is no result.
    let mut h = harness(&[("label-score", &r#"{"day":0.6,"indoor":0.6}"#)]);
    h.element()
        .unwrap()
        .set_property_from_str("type", "classification");
    let out = h.push_and_pull(frame_results()).unwrap();
    assert_eq!(names(&out), ["inference_layer_name:prob", "scene"]);
    assert_eq!(stat(&h, "classifications-removed"), 1);
    // gvametaconvert's JSON of the frame loses it too.
    let json: serde_json::Value =
        serde_json::from_str(&gstanalyticsmqtt::internals::json_messages(&out)[0]).unwrap();
    let full_frame = &json["objects"][0];
    assert!(
        full_frame.get("classification_layer_name:out").is_none(),
        "{full_frame}"
    );
    assert_eq!(full_frame["scene"]["label"], "indoor");

    // The detection type leaves results about the whole frame, whatever the thresholds.
    let mut h = harness(&[("threshold", &0.99f64), ("drop-unscored", &true)]);
    let out = h.push_and_pull(frame_results()).unwrap();
    assert_eq!(
        names(&out),
        [
            "inference_layer_name:prob",
            "scene",
            "classification_layer_name:out"
        ]
    );
    let json = &gstanalyticsmqtt::internals::json_messages(&out)[0];
    assert!(json.contains("classification_layer_name:out"), "{json}");
    assert_eq!(stat(&h, "objects-removed"), 0);
}

#[test]
fn drop_empty_drops_only_buffers_that_lost_all_objects() {
    let mut h = harness(&[("threshold", &0.5f64), ("drop-empty", &true)]);
    h.push(buffer_with(&[det("box", 0.1), det("car", 0.2)]))
        .unwrap();
    h.push(buffer_with(&[])).unwrap();
    h.push(buffer_with(&[det("box", 0.1), det("car", 0.7)]))
        .unwrap();
    assert_eq!(h.buffers_in_queue(), 2);
    assert!(
        objects(&h.pull().unwrap()).is_empty(),
        "had no objects: passes"
    );
    assert_eq!(objects(&h.pull().unwrap()).len(), 1);
    assert_eq!(stat(&h, "buffers-dropped"), 1);
}

#[test]
fn invalid_confidences_are_unscored_and_counted() {
    let mut h = harness(&[("threshold", &0.5f64), ("drop-unscored", &true)]);
    let out = h
        .push_and_pull(buffer_with(&[
            det("box", f64::NAN),
            det("box", f64::INFINITY),
            det("box", -0.5),
            det("box", 1.5),
            det("box", 0.7),
        ]))
        .unwrap();
    assert_eq!(objects(&out), [("box".to_string(), Some(0.7))]);
    assert_eq!(stat(&h, "invalid-confidences"), 4);
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn config_file_in_every_dlsps_shape() {
    for text in [
        r#"{"type":"detection","label_score":{"box":0.5}}"#,
        r#"{"filter":{"type":"detection","label_score":{"box":0.5}}}"#,
        r#"{"mqtt_publisher":{"topic":"t","qos":1,"filter":{"type":"detection","label_score":{"box":0.5}}}}"#,
    ] {
        let file = config_file(text);
        let mut h = harness(&[("config", &file.path().to_str().unwrap())]);
        let out = h
            .push_and_pull(buffer_with(&[det("box", 0.45), det("box", 0.55)]))
            .unwrap();
        assert_eq!(objects(&out), [("box".to_string(), Some(0.55))], "{text}");
    }
}

#[test]
fn the_config_file_is_read_at_start() {
    init_plugin();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filter.json");
    let filter = gst::ElementFactory::make("metafilter")
        .property("config", path.to_str().unwrap())
        .build()
        .unwrap();
    // Written after the property was set: what counts is the file as the start finds it.
    std::fs::write(&path, r#"{"type":"detection","label_score":{"box":0.9}}"#).unwrap();
    let mut h = started(&filter);
    assert_eq!(filter.property::<String>("label-score"), r#"{"box":0.9}"#);
    let out = h
        .push_and_pull(buffer_with(&[det("box", 0.5), det("box", 0.95)]))
        .unwrap();
    assert_eq!(objects(&out), [("box".to_string(), Some(0.95))]);
}

/// Objects left by a metafilter whose properties were set from text as gst-launch-1.0
/// sets them: `first`, then `second`.
fn filtered_in_order(
    first: (&str, &str),
    second: (&str, &str),
    objects_in: &[Det],
) -> Vec<(String, Option<f64>)> {
    init_plugin();
    let filter = gst::ElementFactory::make("metafilter").build().unwrap();
    for (name, value) in [first, second] {
        filter.set_property_from_str(name, value);
    }
    let mut h = started(&filter);
    let out = h.push_and_pull(buffer_with(objects_in)).unwrap();
    objects(&out)
}

#[test]
fn label_score_property_wins_over_the_config_file_in_either_order() {
    let file = config_file(r#"{"type":"detection","label_score":{"box":0.9,"car":0.9}}"#);
    let config = ("config", file.path().to_str().unwrap());
    let label_score = ("label-score", r#"{"box":0.3}"#);
    let input = [det("box", 0.2), det("box", 0.5), det("car", 0.5)];
    // The property's map replaces the file's: box needs 0.3, car nothing.
    let expected = [
        ("box".to_string(), Some(0.5)),
        ("car".to_string(), Some(0.5)),
    ];
    assert_eq!(filtered_in_order(config, label_score, &input), expected);
    assert_eq!(filtered_in_order(label_score, config, &input), expected);
}

#[test]
fn type_property_wins_over_the_config_file_in_either_order() {
    let file = config_file(r#"{"type":"classification","label_score":{"box":0.9}}"#);
    let config = ("config", file.path().to_str().unwrap());
    let kind = ("type", "detection");
    // Filtering detections with the file's label_score: the box below 0.9 goes. (Filtering
    // classifications would leave it: it has none.)
    let input = [det("box", 0.5), det("box", 0.95)];
    let expected = [("box".to_string(), Some(0.95))];
    assert_eq!(filtered_in_order(config, kind, &input), expected);
    assert_eq!(filtered_in_order(kind, config, &input), expected);
}

#[test]
fn the_config_file_wins_over_the_defaults_and_unsetting_it_restores_them() {
    let file = config_file(r#"{"type":"detection","label_score":{"box":0.9}}"#);
    let mut h = harness(&[("config", &file.path().to_str().unwrap())]);
    let filter = h.element().unwrap();
    assert_eq!(filter.property::<String>("label-score"), r#"{"box":0.9}"#);
    let out = h
        .push_and_pull(buffer_with(&[det("box", 0.5), det("box", 0.95)]))
        .unwrap();
    assert_eq!(objects(&out), [("box".to_string(), Some(0.95))]);
    filter.set_property("config", None::<&str>);
    assert_eq!(filter.property::<String>("label-score"), "{}");
    let out = h.push_and_pull(buffer_with(&[det("box", 0.5)])).unwrap();
    assert_eq!(objects(&out), [("box".to_string(), Some(0.5))]);
}

/// Sets `property` to a bad value after a good one and checks the good one stays and the
/// element refuses to start with an error naming the property.
fn assert_rejected(property: &str, good: &dyn ToValue, bad: &dyn ToValue, expected: &[&str]) {
    init_plugin();
    let filter = gst::ElementFactory::make("metafilter").build().unwrap();
    filter.set_property_from_value(property, &good.to_value());
    let before = filter.property_value(property);
    filter.set_property_from_value(property, &bad.to_value());
    let after = filter.property_value(property);
    assert_eq!(
        before.serialize().unwrap(),
        after.serialize().unwrap(),
        "{property} keeps its old value"
    );
    assert_refused_at_start(property, good, bad, expected);
}

/// Sets `property` to a bad value after a good one on the element of a pipeline and checks
/// that the element refuses to start with an error naming the property. For `config`, which
/// is read at start, this is where a bad value shows.
fn assert_refused_at_start(
    property: &str,
    good: &dyn ToValue,
    bad: &dyn ToValue,
    expected: &[&str],
) {
    init_plugin();
    let [good, bad] = [good, bad].map(|v| v.to_value().serialize().unwrap());
    let text = start_error(&format!(
        "fakesrc ! metafilter {property}={good} {property}={bad} ! fakesink"
    ));
    for part in expected {
        assert!(text.contains(part), "{text:?} should mention {part:?}");
    }
}

#[test]
fn invalid_label_score_is_rejected_and_named() {
    assert_rejected(
        "label-score",
        &r#"{"box":0.4}"#,
        &"{box:0.4",
        &["label-score", "invalid JSON"],
    );
    assert_rejected(
        "label-score",
        &"{}",
        &r#"{"box":"high"}"#,
        &["label-score", "box", "number"],
    );
    assert_rejected(
        "label-score",
        &"{}",
        &r#"{"box":2}"#,
        &["label-score", "box", "0..1"],
    );
}

#[test]
fn invalid_threshold_is_refused_and_the_old_value_kept() {
    // The range is the ParamSpec's (gst-inspect-1.0 shows it): GLib refuses a value outside
    // it, NaN included, and the property keeps its value.
    init_plugin();
    let spec = gst::ElementFactory::make("metafilter")
        .build()
        .unwrap()
        .find_property("threshold")
        .unwrap()
        .downcast::<glib::ParamSpecDouble>()
        .unwrap();
    assert_eq!((spec.minimum(), spec.maximum()), (0.0, 1.0));
    for bad in ["1.5", "-0.1", "1e309", "-1e309", "nan"] {
        let pipeline = gst::parse::launch(&format!(
            "fakesrc ! metafilter name=f threshold=0.2 threshold={bad} ! fakesink"
        ))
        .unwrap();
        let filter = pipeline
            .downcast_ref::<gst::Bin>()
            .unwrap()
            .by_name("f")
            .unwrap();
        assert_eq!(filter.property::<f64>("threshold"), 0.2, "threshold={bad}");
    }
}

#[test]
fn invalid_config_files_are_rejected_and_named() {
    let good = config_file(r#"{"type":"detection"}"#);
    let good = good.path().to_str().unwrap();
    let unknown_type = config_file(r#"{"filter":{"type":"segmentation"}}"#);
    assert_refused_at_start(
        "config",
        &good,
        &unknown_type.path().to_str().unwrap(),
        &["config", "filter.type", "segmentation"],
    );
    // DLSPS refuses a filter without a type; so does metafilter, in every shape.
    for text in [
        r#"{"label_score":{"box":0.4}}"#,
        r#"{"filter":{"label_score":{"box":0.4}}}"#,
        r#"{"mqtt_publisher":{"filter":{"label_score":{"box":0.4}}}}"#,
    ] {
        let no_type = config_file(text);
        assert_refused_at_start(
            "config",
            &good,
            &no_type.path().to_str().unwrap(),
            &[
                "config",
                "filter.type: missing",
                "detection",
                "classification",
            ],
        );
    }
    let bad_json = config_file("{\n  \"type\": detection\n}");
    assert_refused_at_start(
        "config",
        &good,
        &bad_json.path().to_str().unwrap(),
        &["config", "invalid JSON", "line 2"],
    );
    assert_refused_at_start(
        "config",
        &good,
        &"/nonexistent/filter.json",
        &[
            "config",
            "/nonexistent/filter.json",
            "the value must be the path to an existing JSON file",
        ],
    );
    assert_refused_at_start(
        "config",
        &good,
        &r#"{"type":"detection","label_score":{"box":0.4}}"#,
        &["config: takes the path to a JSON file, not JSON text (the value starts with '{')"],
    );
    let dir = tempfile::tempdir().unwrap();
    assert_refused_at_start(
        "config",
        &good,
        &dir.path().to_str().unwrap(),
        &["config", "directory"],
    );
}

#[test]
fn config_pipeline_picks_the_config_json_entry_in_either_order() {
    init_plugin();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/config.json");
    for (pipeline, kind, label_score) in [
        (
            "pallet_detection",
            "detection",
            r#"{"box":0.4,"shipping label":0.4}"#,
        ),
        ("vehicle_color_gpu", "classification", r#"{"blue":0.5}"#),
    ] {
        let settings = [("config", config), ("config-pipeline", pipeline)];
        for order in [settings, [settings[1], settings[0]]] {
            let filter = gst::ElementFactory::make("metafilter").build().unwrap();
            for (name, value) in order {
                filter.set_property_from_str(name, value);
            }
            // The file is read at start.
            let _h = started(&filter);
            let shown: serde_json::Value =
                serde_json::from_str(&filter.property::<String>("label-score")).unwrap();
            let expected: serde_json::Value = serde_json::from_str(label_score).unwrap();
            assert_eq!(shown, expected, "{order:?}");
            let kind_now = filter.property_value("type").serialize().unwrap();
            assert_eq!(kind_now, kind, "{order:?}");
        }
    }
    // Two pipelines and no name: nothing from the file until the start picks (or fails).
    let filter = gst::ElementFactory::make("metafilter").build().unwrap();
    filter.set_property("config", config);
    assert_eq!(filter.property::<String>("label-score"), "{}");
}
