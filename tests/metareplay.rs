// SPDX-License-Identifier: MPL-2.0

//! `metareplay` attaches recordings exactly as DL Streamer attaches live results, and
//! `metafilter` downstream of it removes exactly what is below threshold.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{init_plugin, sample_recording, start_error};
use gst::prelude::*;
use gst_video::VideoRegionOfInterestMeta;

/// Label, pixel x and confidence of each object on a frame.
type FrameObjects = Vec<(String, u32, f64)>;

fn recording(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    f
}

const LINE: &str = r#"{"objects":[{"color":{"confidence":0.8,"label":"red","label_id":3,"model":{"name":"attributes"}},"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.75,"y_min":0.5},"confidence":0.9,"label":"car","label_id":2},"h":120,"id":42,"region_id":7,"roi_type":"car","w":160,"x":160,"y":240}],"resolution":{"height":480,"width":640},"timestamp":0}"#;

/// A harness around a `metareplay` reading `location`, with `props` set as from gst-launch.
fn harness_with(location: &Path, caps: &str, props: &[(&str, &str)]) -> gst_check::Harness {
    init_plugin();
    // Properties go on before the harness starts the element, which reads the recording.
    let element = gst::ElementFactory::make("metareplay")
        .property("location", location.to_str().unwrap())
        .build()
        .unwrap();
    for (name, value) in props {
        element.set_property_from_str(name, value);
    }
    let mut h = gst_check::Harness::with_element(&element, Some("sink"), Some("src"));
    h.play();
    h.set_src_caps_str(caps);
    h
}

fn harness(location: &Path, caps: &str) -> gst_check::Harness {
    harness_with(location, caps, &[])
}

const VGA: &str = "video/x-raw,format=RGB,width=640,height=480,framerate=30/1";

#[test]
fn attaches_metas_laid_out_like_dl_streamer() {
    let file = recording(&[LINE]);
    let mut h = harness(file.path(), VGA);
    let out = h
        .push_and_pull(gst::Buffer::with_size(16).unwrap())
        .unwrap();
    let rois: Vec<_> = out.iter_meta::<VideoRegionOfInterestMeta>().collect();
    assert_eq!(rois.len(), 1);
    let roi = &rois[0];
    assert_eq!(roi.roi_type(), "car");
    assert_eq!(roi.rect(), (160, 240, 160, 120));
    // The recorded region_id; with the `analytics` feature the id of the object's ODMtd, as
    // DL Streamer's gvadetect sets it since it writes both forms.
    #[cfg(not(feature = "analytics"))]
    assert_eq!(roi.id(), 7);
    #[cfg(feature = "analytics")]
    {
        use gst_analytics::{AnalyticsMetaRefExt, AnalyticsODMtd, AnalyticsRelationMeta};
        let meta = out.meta::<AnalyticsRelationMeta>().expect("relation meta");
        let ods: Vec<u32> = meta.iter::<AnalyticsODMtd>().map(|od| od.id()).collect();
        assert_eq!(ods.len(), 1);
        assert_eq!(roi.id(), ods[0] as i32);
    }
    assert_eq!(roi.parent_id(), -1);

    let detection = roi.param("detection").expect("detection param");
    assert_eq!(detection.get::<f64>("confidence").unwrap(), 0.9);
    assert_eq!(detection.get::<i32>("label_id").unwrap(), 2);
    assert_eq!(detection.get::<f64>("x_min").unwrap(), 0.25);
    assert_eq!(detection.get::<f64>("x_max").unwrap(), 0.5);
    assert_eq!(detection.get::<f64>("y_min").unwrap(), 0.5);
    assert_eq!(detection.get::<f64>("y_max").unwrap(), 0.75);

    let tracking = roi.param("object_id").expect("object_id param");
    assert_eq!(tracking.get::<i32>("id").unwrap(), 42);

    let color = roi.param("color").expect("classification param");
    assert_eq!(color.get::<&str>("label").unwrap(), "red");
    assert_eq!(color.get::<f64>("confidence").unwrap(), 0.8);
    assert_eq!(color.get::<i32>("label_id").unwrap(), 3);
    assert_eq!(color.get::<&str>("model_name").unwrap(), "attributes");
    assert_eq!(color.get::<&str>("type").unwrap(), "classification_result");
}

#[test]
fn rescales_boxes_recorded_at_another_size() {
    let file = recording(&[LINE]);
    let mut h = harness(
        file.path(),
        "video/x-raw,format=RGB,width=1280,height=960,framerate=30/1",
    );
    let out = h
        .push_and_pull(gst::Buffer::with_size(16).unwrap())
        .unwrap();
    let roi = out.meta::<VideoRegionOfInterestMeta>().unwrap();
    assert_eq!(roi.rect(), (320, 480, 320, 240));
}

#[test]
fn lines_go_to_buffers_in_order_and_loop_starts_again() {
    let lines: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|l| format!(r#"{{"objects":[{{"roi_type":"{l}","x":1,"y":2,"w":3,"h":4}}]}}"#))
        .collect();
    let file = recording(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    let labels = |h: &mut gst_check::Harness| -> Vec<String> {
        let out = h
            .push_and_pull(gst::Buffer::with_size(16).unwrap())
            .unwrap();
        out.iter_meta::<VideoRegionOfInterestMeta>()
            .map(|r| r.roi_type().to_string())
            .collect()
    };

    let mut h = harness(file.path(), VGA);
    let seen: Vec<_> = (0..5).map(|_| labels(&mut h)).collect();
    assert_eq!(seen, [vec!["a"], vec!["b"], vec!["c"], vec![], vec![]]);
    let stats = h.element().unwrap().property::<gst::Structure>("stats");
    assert_eq!(stats.get::<u64>("buffers-unmatched").unwrap(), 2);

    let mut h = harness_with(file.path(), VGA, &[("loop", "true")]);
    let seen: Vec<_> = (0..5).map(|_| labels(&mut h)).collect();
    assert_eq!(
        seen,
        [vec!["a"], vec!["b"], vec!["c"], vec!["a"], vec!["b"]]
    );
}

#[test]
fn match_by_timestamp_uses_stream_time() {
    let ms = 1_000_000u64;
    let lines: Vec<String> = [("early", 0), ("late", 100 * ms)]
        .iter()
        .map(|(l, t)| {
            format!(
                r#"{{"objects":[{{"roi_type":"{l}","x":1,"y":2,"w":3,"h":4}}],"timestamp":{t}}}"#
            )
        })
        .collect();
    let file = recording(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    let mut h = harness_with(file.path(), VGA, &[("match", "timestamp")]);

    let mut labels_at = |pts_ms: u64| -> Vec<String> {
        let mut buffer = gst::Buffer::with_size(16).unwrap();
        {
            let b = buffer.get_mut().unwrap();
            b.set_pts(gst::ClockTime::from_mseconds(pts_ms));
            b.set_duration(gst::ClockTime::from_mseconds(33));
        }
        let out = h.push_and_pull(buffer).unwrap();
        out.iter_meta::<VideoRegionOfInterestMeta>()
            .map(|r| r.roi_type().to_string())
            .collect()
    };
    assert_eq!(labels_at(0), ["early"]);
    assert_eq!(
        labels_at(50),
        Vec::<String>::new(),
        "no line within half a frame"
    );
    assert_eq!(labels_at(110), ["late"], "10 ms off, within half a frame");
}

/// A line of `gvametaconvert add-tensor-data=true`: an oriented car (its `rotation` as
/// gvadetect writes it in `detection`), then the full-frame object of a `gvainference`
/// output and a `gvaclassify inference-region=full-frame` result, and the raw output again
/// at the top level.
const FRAME_LINE: &str = concat!(
    r#"{"objects":[{"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.75,"#,
    r#""y_min":0.5},"confidence":0.9,"label":"car","label_id":2,"rotation":0.5},"h":120,"#,
    r#""region_id":7,"roi_type":"car","w":160,"x":160,"y":240},"#,
    r#"{"h":480,"scene":{"confidence":0.875,"label":"indoor","label_id":0,"#,
    r#""model":{"name":"scene-net"}},"tensors":[{"data":[0.25,-1.5,3.0,0.125],"dims":[1,4],"#,
    r#""layer_name":"prob","layout":"NC","model_name":"resnet-50","#,
    r#""name":"inference_layer_name:prob","precision":"FP32"},{"confidence":0.875,"#,
    r#""data":[0.875,0.125],"dims":[1,2],"label":"indoor","label_id":0,"layer_name":"prob","#,
    r#""layout":"NC","model_name":"scene-net","name":"scene","precision":"FP32"}],"#,
    r#""w":640,"x":0,"y":0}],"resolution":{"height":480,"width":640},"#,
    r#""tensors":[{"data":[0.25,-1.5,3.0,0.125],"dims":[1,4],"layer_name":"prob","#,
    r#""layout":"NC","model_name":"resnet-50","name":"inference_layer_name:prob","#,
    r#""precision":"FP32"}],"timestamp":0}"#
);

#[test]
fn frame_level_results_are_attached_as_dl_streamer_attaches_them() {
    use common::dlstreamer::{data_bytes, f32_bytes, structures};

    let file = recording(&[FRAME_LINE]);
    let mut h = harness(file.path(), VGA);
    let out = h
        .push_and_pull(gst::Buffer::with_size(16).unwrap())
        .unwrap();

    // One region, the full-frame object is none.
    let rois: Vec<_> = out.iter_meta::<VideoRegionOfInterestMeta>().collect();
    assert_eq!(rois.len(), 1);
    let detection = rois[0].param("detection").unwrap();
    assert_eq!(detection.get::<f64>("rotation").unwrap(), 0.5);

    // The tensor metas, read by name as DL Streamer reads them.
    let tensors = structures(&out);
    let names: Vec<&str> = tensors.iter().map(|s| s.name().as_str()).collect();
    assert_eq!(names, ["inference_layer_name:prob", "scene"]);
    let (raw, scene) = (&tensors[0], &tensors[1]);
    assert_eq!(raw.get::<i32>("precision").unwrap(), 10, "FP32");
    assert_eq!(raw.get::<i32>("layout").unwrap(), 193, "NC");
    let dims: Vec<u32> = raw
        .get::<gst::Array>("dims")
        .unwrap()
        .iter()
        .map(|v| v.get::<u32>().unwrap())
        .collect();
    assert_eq!(dims, [1, 4]);
    assert_eq!(raw.get::<&str>("layer_name").unwrap(), "prob");
    assert_eq!(raw.get::<&str>("model_name").unwrap(), "resnet-50");
    assert_eq!(data_bytes(raw), f32_bytes(&[0.25, -1.5, 3.0, 0.125]));
    assert_eq!(
        raw.value("data").unwrap().type_(),
        gst::glib::Type::POINTER,
        "the pointer DL Streamer's C readers use"
    );
    assert!(!raw.has_field("type"), "a raw output has no type");
    assert_eq!(scene.get::<&str>("type").unwrap(), "classification_result");
    assert_eq!(scene.get::<&str>("label").unwrap(), "indoor");
    assert_eq!(scene.get::<i32>("label_id").unwrap(), 0);
    assert_eq!(scene.get::<f64>("confidence").unwrap(), 0.875);
    assert_eq!(scene.get::<&str>("model_name").unwrap(), "scene-net");
    assert_eq!(data_bytes(scene), f32_bytes(&[0.875, 0.125]));

    // With the relation meta, also as DL Streamer 2026 writes them: a ClsMtd of no object
    // for the classification, and an oriented ODMtd (GStreamer 1.26).
    #[cfg(feature = "analytics")]
    {
        use gst_analytics::{
            AnalyticsAnyMtd, AnalyticsClassificationMtd, AnalyticsMetaRefExt, AnalyticsODMtd,
            AnalyticsRelationMeta, RelTypes,
        };
        let meta = out.meta::<AnalyticsRelationMeta>().expect("relation meta");
        let od = meta.iter::<AnalyticsODMtd>().next().unwrap();
        // The ClsMtds related to nothing: the frame's.
        let frame_level: Vec<_> = meta
            .iter::<AnalyticsClassificationMtd>()
            .filter(|c| {
                meta.iter_direct_related::<AnalyticsAnyMtd>(c.id(), RelTypes::ANY)
                    .next()
                    .is_none()
                    && meta.relation(od.id(), c.id()).is_empty()
            })
            .map(|c| c.iterate().collect::<Vec<_>>())
            .collect();
        assert_eq!(
            frame_level,
            [vec![(gst::glib::Quark::from_str("indoor"), 0.875f32)]]
        );
        #[cfg(feature = "analytics-oriented")]
        {
            let loc = od.oriented_location().unwrap();
            assert_eq!(
                (loc.x, loc.y, loc.w, loc.h, loc.r),
                (160, 240, 160, 120, 0.5)
            );
        }
    }
}

fn replay_error(location: &str) -> String {
    start_error(&format!(
        "fakesrc num-buffers=1 ! metareplay location=\"{location}\" ! fakesink"
    ))
}

#[test]
fn malformed_lines_are_errors_with_file_and_line() {
    let file = recording(&[LINE, "", r#"{"objects":[{"roi_type":"box","x":1}]}"#]);
    let path = file.path().to_str().unwrap();
    let err = replay_error(path);
    assert!(err.contains(&format!("{path}:3")), "{err}");
    assert!(err.contains("objects[0]"), "{err}");

    let file = recording(&[LINE, "{\"objects\": [}"]);
    let path = file.path().to_str().unwrap();
    let err = replay_error(path);
    assert!(
        err.contains(&format!("{path}:2")) && err.contains("invalid JSON"),
        "{err}"
    );

    let file = recording(&[
        r#"{"objects":[{"roi_type":"box","x":1,"y":1,"w":1,"h":1,"detection":{"confidence":7}}]}"#,
    ]);
    let err = replay_error(file.path().to_str().unwrap());
    assert!(err.contains("objects[0].detection.confidence"), "{err}");

    let err = replay_error("/nonexistent/recording.jsonl");
    assert!(err.contains("/nonexistent/recording.jsonl"), "{err}");
}

/// The gst-launch pipeline from the README: every object the filter removed was below its
/// label's threshold, and every object below it was removed.
#[test]
fn replayed_sample_through_metafilter_removes_exactly_the_objects_below_threshold() {
    init_plugin();
    let thresholds = [("box", 0.4), ("shipping label", 0.4), ("car", 0.3)];
    let label_score = serde_json::to_string(
        &thresholds
            .iter()
            .map(|(l, t)| (l.to_string(), *t))
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=300 ! video/x-raw,width=640,height=480 \
         ! metareplay location={} ! metafilter name=filter ! fakesink name=sink",
        sample_recording()
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();

    pipeline
        .by_name("filter")
        .unwrap()
        .set_property("label-score", &label_score);

    let seen: Arc<Mutex<Vec<FrameObjects>>> = Arc::default();
    let sink_pad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    let seen_probe = seen.clone();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let buffer = info.buffer().unwrap();
        let objects = buffer
            .iter_meta::<VideoRegionOfInterestMeta>()
            .map(|roi| {
                let confidence = roi
                    .param("detection")
                    .unwrap()
                    .get::<f64>("confidence")
                    .unwrap();
                (roi.roi_type().to_string(), roi.rect().0, confidence)
            })
            .collect();
        seen_probe.lock().unwrap().push(objects);
        gst::PadProbeReturn::Ok
    });

    pipeline.set_state(gst::State::Playing).unwrap();
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(
            gst::ClockTime::from_seconds(60),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        )
        .expect("pipeline finishes");
    assert!(matches!(msg.view(), gst::MessageView::Eos(_)), "{msg:?}");
    let stats = pipeline
        .by_name("filter")
        .unwrap()
        .property::<gst::Structure>("stats");
    pipeline.set_state(gst::State::Null).unwrap();

    // What the recording says should survive.
    let text = std::fs::read_to_string(sample_recording()).unwrap();
    let mut expected_removed = 0u64;
    let expected: Vec<FrameObjects> = text
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["objects"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|o| {
                    let label = o["roi_type"].as_str().unwrap().to_string();
                    let confidence = o["detection"]["confidence"].as_f64().unwrap();
                    let threshold = thresholds
                        .iter()
                        .find(|(l, _)| *l == label)
                        .map_or(0.0, |(_, t)| *t);
                    if confidence < threshold {
                        expected_removed += 1;
                        None
                    } else {
                        Some((label, o["x"].as_u64().unwrap() as u32, confidence))
                    }
                })
                .collect()
        })
        .collect();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 300);
    assert_eq!(*seen, expected);
    assert!(
        expected_removed > 100,
        "the sample straddles the thresholds"
    );
    assert_eq!(
        stats.get::<u64>("objects-removed").unwrap(),
        expected_removed
    );
}
