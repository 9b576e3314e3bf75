// SPDX-License-Identifier: MPL-2.0

//! The viewer as a user sees it: a real mosquitto, the real `mqttpublish` publishing the
//! recorded detections of `pipelines/sample.jsonl`, the viewer binary, and Debian's chromium
//! showing the page. Assertions are on the page's DOM and on the pixels of its screenshot.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::browser::Browser;
use common::*;
use serde_json::Value;

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 1000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// What the page shows of its first source card.
const CARD: &str = "document.querySelector('.source')";
const DESCRIBE: &str =
    "JSON.stringify({state: document.querySelector('#broker-state').dataset.state, \
    detail: document.querySelector('#broker-detail').textContent, \
    count: document.querySelector('.source .message-count')?.textContent, \
    errors: [...document.querySelectorAll('#errors li')].map(li => li.textContent)})";

/// The label statistics the recording gives for its first `frames` lines: per label the
/// detections in all of them, the objects in the last one and the distinct tracking ids.
struct Expected {
    last: Vec<Value>,
    labels: BTreeMap<String, (u64, u64, BTreeSet<i64>)>,
}

fn recorded(frames: usize) -> Expected {
    let text = std::fs::read_to_string(repo_dir().join("pipelines/sample.jsonl")).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .take(frames)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        frames,
        "the recording is shorter than {frames} frames"
    );
    let mut labels: BTreeMap<String, (u64, u64, BTreeSet<i64>)> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        for object in line["objects"].as_array().unwrap() {
            let label = object["detection"]["label"].as_str().unwrap().to_owned();
            let entry = labels.entry(label).or_default();
            entry.0 += 1;
            if index == frames - 1 {
                entry.1 += 1;
            }
            if let Some(id) = object["id"].as_i64() {
                entry.2.insert(id);
            }
        }
    }
    Expected {
        last: lines[frames - 1]["objects"].as_array().unwrap().clone(),
        labels,
    }
}

fn rgb(css: &str) -> [u8; 3] {
    // "rgb(255, 107, 154)"
    let inner = css.trim_start_matches("rgb(").trim_end_matches(')');
    let parts: Vec<u8> = inner
        .split(',')
        .map(|p| p.trim().parse().unwrap())
        .collect();
    [parts[0], parts[1], parts[2]]
}

struct Screenshot {
    width: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Screenshot {
    fn decode(png_bytes: &[u8]) -> Screenshot {
        let mut decoder = png::Decoder::new(png_bytes);
        decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut pixels).unwrap();
        let channels = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => panic!("screenshot colour type {other:?}"),
        };
        assert_eq!(
            (info.width, info.height),
            (WIDTH, HEIGHT),
            "screenshot size"
        );
        Screenshot {
            width: info.width as usize,
            channels,
            pixels,
        }
    }

    fn at(&self, x: f64, y: f64) -> [u8; 3] {
        let i = (y as usize * self.width + x as usize) * self.channels;
        [self.pixels[i], self.pixels[i + 1], self.pixels[i + 2]]
    }
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 24)
}

#[test]
fn the_page_shows_frames_boxes_and_counts_as_published_and_bad_messages_as_errors() {
    const FRAMES: usize = 90;
    let broker = Broker::start();
    let mut viewer = Viewer::start(&broker, &["--topic", "cameras/#", "--qos", "1"]);
    let mut page = Browser::open(&viewer.url, WIDTH, HEIGHT);
    page.wait_for(
        "a broker connection",
        "document.querySelector('#broker-state').dataset.state === 'connected'",
        DESCRIBE,
        TIMEOUT,
    );

    let mut pipeline = gst_launch(&format!(
        "videotestsrc num-buffers={FRAMES} ! video/x-raw,width=640,height=480,framerate=30/1 \
         ! metareplay location=pipelines/sample.jsonl \
         ! mqttpublish host=127.0.0.1 port={} topic=cameras/dock-3 source=dock-3 qos=1 \
           leaky=no publish-frame=true add-sink-time=true",
        broker.port
    ));
    let status = pipeline.0.wait().unwrap();
    assert!(status.success(), "gst-launch-1.0: {status}");
    page.wait_for(
        &format!("{FRAMES} messages"),
        &format!("{CARD}?.querySelector('.message-count').textContent === '{FRAMES}'"),
        DESCRIBE,
        TIMEOUT,
    );
    let expected = recorded(FRAMES);
    // The last frame is drawn once its image has decoded.
    page.wait_for(
        "the last frame",
        &format!(
            "(() => {{ const img = {CARD}.querySelector('.image'); \
             return img.complete && img.naturalWidth === 640 && \
             {CARD}.querySelector('.frame-id').textContent === '{}'; }})()",
            FRAMES - 1
        ),
        DESCRIBE,
        TIMEOUT,
    );

    // The card: topic, source, the frame and one box per object of the last message, where
    // the message puts it.
    let card = page.eval(&format!(
        "(() => {{ const c = {CARD}; const frame = c.querySelector('.frame').getBoundingClientRect(); \
         const img = c.querySelector('.image'); \
         return {{ topic: c.querySelector('.topic').textContent, \
           source: c.querySelector('.source-name').textContent, \
           shape: c.querySelector('.shape').textContent, \
           latency: c.querySelector('.latency').textContent, \
           image: img.src.startsWith('data:image/jpeg;base64,') ? [img.naturalWidth, img.naturalHeight] : null, \
           frame: [frame.left, frame.top, frame.width, frame.height], \
           boxes: [...c.querySelectorAll('.box')].map(b => {{ const r = b.getBoundingClientRect(); \
             return {{ rect: [r.left, r.top, r.width, r.height], tag: b.querySelector('.tag').textContent, \
                       color: getComputedStyle(b).borderLeftColor }}; }}), \
           labels: [...c.querySelectorAll('.labels tbody tr')].map(tr => [tr.dataset.label, \
             +tr.querySelector('.detections').textContent, +tr.querySelector('.now').textContent, \
             +tr.querySelector('.tracks').textContent]) }}; }})()"
    ));
    assert_eq!(card["topic"], "cameras/dock-3");
    assert_eq!(card["source"], "dock-3");
    assert_eq!(card["shape"], "array");
    assert!(
        card["latency"].as_str().unwrap().ends_with(" ms"),
        "latency: {}",
        card["latency"]
    );
    assert_eq!(
        card["image"],
        serde_json::json!([640, 480]),
        "the frame is not shown"
    );
    let frame: Vec<f64> = serde_json::from_value(card["frame"].clone()).unwrap();
    let (scale_x, scale_y) = (frame[2] / 640.0, frame[3] / 480.0);
    assert!(
        (scale_x - scale_y).abs() < 0.01,
        "the frame is distorted: {frame:?}"
    );
    let boxes = card["boxes"].as_array().unwrap();
    assert_eq!(
        boxes.len(),
        expected.last.len(),
        "one box per object of the last message: {boxes:?}"
    );
    for (object, shown) in expected.last.iter().zip(boxes) {
        let rect: Vec<f64> = serde_json::from_value(shown["rect"].clone()).unwrap();
        let want = [
            frame[0] + object["x"].as_f64().unwrap() * scale_x,
            frame[1] + object["y"].as_f64().unwrap() * scale_y,
            object["w"].as_f64().unwrap() * scale_x,
            object["h"].as_f64().unwrap() * scale_y,
        ];
        for (got, want) in rect.iter().zip(want) {
            assert!(
                (got - want).abs() < 1.5,
                "box {rect:?}, expected {want:?} for {object}"
            );
        }
        let label = object["detection"]["label"].as_str().unwrap();
        let confidence = (object["detection"]["confidence"].as_f64().unwrap() * 100.0).round();
        let tag = shown["tag"].as_str().unwrap();
        assert!(
            tag.starts_with(&format!("{label} {confidence}% #{}", object["id"])),
            "tag {tag:?} for {object}"
        );
    }
    let shown_labels: Vec<(String, u64, u64, u64)> =
        serde_json::from_value(card["labels"].clone()).unwrap();
    let want_labels: Vec<(String, u64, u64, u64)> = expected
        .labels
        .iter()
        .map(|(label, (detections, now, ids))| (label.clone(), *detections, *now, ids.len() as u64))
        .collect();
    assert_eq!(shown_labels, want_labels, "label, detections, now, tracks");

    // The pixels: every box's border in its label's colour, on a frame with the test
    // pattern's colour bars (an empty canvas has two colours).
    let png_bytes = page.screenshot();
    // Kept for a person to look at when the test fails.
    let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("viewer-page.png");
    std::fs::write(&kept, &png_bytes).unwrap();
    let shot = Screenshot::decode(&png_bytes);
    for shown in boxes {
        let rect: Vec<f64> = serde_json::from_value(shown["rect"].clone()).unwrap();
        let color = rgb(shown["color"].as_str().unwrap());
        let mid_y = rect[1] + rect[3] / 2.0;
        for (x, y) in [
            (rect[0] + 1.0, mid_y),
            (rect[0] + rect[2] - 2.0, mid_y),
            (rect[0] + rect[2] / 2.0, rect[1] + rect[3] - 2.0),
        ] {
            assert!(
                close(shot.at(x, y), color),
                "pixel ({x}, {y}) is {:?}, not the box colour {color:?}",
                shot.at(x, y)
            );
        }
    }
    let bars: BTreeSet<[u8; 3]> = (0..64)
        .map(|i| {
            let x = frame[0] + 2.0 + (frame[2] - 4.0) * f64::from(i) / 64.0;
            let [r, g, b] = shot.at(x, frame[1] + frame[3] * 0.55);
            [r / 32, g / 32, b / 32]
        })
        .collect();
    assert!(
        bars.len() >= 6,
        "the frame shows {} colours, not the test pattern",
        bars.len()
    );

    // Bad input: a malformed payload and a 10 MiB message are error lines; a label made of
    // markup is shown as text; the viewer goes on.
    // The same bad message twice is one line, counted.
    for _ in 0..2 {
        mosquitto_pub(&broker, "cameras/dock-3", &["-m", "{\"objects\": [1,"]);
    }
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), vec![b'A'; 10 * 1024 * 1024]).unwrap();
    mosquitto_pub(
        &broker,
        "cameras/dock-3",
        &["-f", big.path().to_str().unwrap()],
    );
    let markup = "<img src=x onerror=\"window.pwned=1\">";
    let hostile = serde_json::json!({
        "objects": [{"x": 10, "y": 20, "w": 30, "h": 40,
                     "detection": {"label": markup, "confidence": 0.5}}],
        "resolution": {"width": 640, "height": 480},
        "source": "dock-3"
    });
    mosquitto_pub(&broker, "cameras/dock-3", &["-m", &hostile.to_string()]);
    page.wait_for(
        "two error lines and the next message",
        &format!(
            "document.querySelectorAll('#errors li').length === 2 && \
             {CARD}.querySelector('.message-count').textContent === '{}'",
            FRAMES + 1
        ),
        DESCRIBE,
        TIMEOUT,
    );
    let errors =
        page.eval("[...document.querySelectorAll('#errors li')].map(li => li.textContent)");
    let errors: Vec<String> = serde_json::from_value(errors).unwrap();
    assert!(
        errors[1].contains("cameras/dock-3")
            && errors[1].contains("not valid JSON")
            && errors[1].ends_with("×2"),
        "{errors:?}"
    );
    assert!(
        errors[0].contains(&format!("{} bytes", 10 * 1024 * 1024)) && errors[0].contains("skipped"),
        "{errors:?}"
    );
    let hostile_shown = page.eval(&format!(
        "({{ tag: {CARD}.querySelector('.box .tag').textContent, \
            images: {CARD}.querySelectorAll('.boxes img, .labels img').length, \
            pwned: window.pwned === 1, \
            empty: {CARD}.querySelector('.frame').classList.contains('empty') }})"
    ));
    assert_eq!(hostile_shown["tag"], format!("{markup} 50%"));
    assert_eq!(hostile_shown["images"], 0);
    assert_eq!(hostile_shown["pwned"], false);
    assert_eq!(
        hostile_shown["empty"], true,
        "a message without a frame shows an empty canvas"
    );
    assert!(viewer.process.is_running(), "the viewer stopped");

    // A second source, in the `object` envelope: a card of its own with its frame and boxes.
    let status = gst_launch(&format!(
        "videotestsrc num-buffers=5 ! video/x-raw,width=640,height=480 \
         ! metareplay location=pipelines/sample.jsonl \
         ! mqttpublish host=127.0.0.1 port={} topic=cameras/gate source=gate qos=1 \
           leaky=no publish-frame=true message-format=object",
        broker.port
    ))
    .0
    .wait()
    .unwrap();
    assert!(status.success(), "gst-launch-1.0: {status}");
    let gate = "[...document.querySelectorAll('.source')].find(c => \
                c.querySelector('.source-name').textContent === 'gate')";
    page.wait_for(
        "the second source's fifth frame",
        &format!(
            "{gate}.querySelector('.message-count').textContent === '5' && \
             {gate}.querySelector('.image').naturalWidth === 640 && \
             {gate}.querySelector('.frame-id').textContent === '4'"
        ),
        DESCRIBE,
        TIMEOUT,
    );
    let shown = page.eval(&format!(
        "({{ shape: {gate}.querySelector('.shape').textContent, \
            topic: {gate}.querySelector('.topic').textContent, \
            boxes: {gate}.querySelectorAll('.box').length, \
            cards: document.querySelectorAll('.source').length }})"
    ));
    assert_eq!(shown["shape"], "object");
    assert_eq!(shown["topic"], "cameras/gate");
    assert_eq!(shown["boxes"], recorded(5).last.len());
    assert_eq!(shown["cards"], 2);
    assert_eq!(
        page.eval("document.querySelector('#broker-state').dataset.state"),
        "connected"
    );
}

#[test]
fn the_page_shows_a_broker_restart_and_goes_live_again() {
    let mut broker = Broker::start();
    let viewer = Viewer::start(&broker, &["--topic", "cameras/+"]);
    let mut page = Browser::open(&viewer.url, WIDTH, HEIGHT);
    // Metadata only, live, as DLSPS publishes it: boxes on an empty canvas of the
    // published resolution.
    let _pipeline = gst_launch(&format!(
        "videotestsrc is-live=true ! video/x-raw,width=640,height=480,framerate=20/1 \
         ! metareplay location=pipelines/sample.jsonl loop=true \
         ! mqttpublish host=127.0.0.1 port={} topic=cameras/yard message-format=dlsps",
        broker.port
    ));
    let count = "+(document.querySelector('.source .message-count')?.textContent || 0)";
    page.wait_for(
        "live messages",
        &format!(
            "document.querySelector('#broker-state').dataset.state === 'connected' && {count} > 10 \
             && document.querySelector('.source .frame').classList.contains('empty') \
             && document.querySelectorAll('.source .box').length === 5 \
             && document.querySelector('.source .shape').textContent === 'dlsps' \
             && document.querySelector('.source .pipeline').textContent.includes(' RUNNING ') \
             && document.querySelector('.source .frame').dataset.width === '640'"
        ),
        DESCRIBE,
        TIMEOUT,
    );

    broker.stop();
    page.wait_for(
        "the broker disconnected",
        "document.querySelector('#broker-state').dataset.state === 'disconnected' && \
         document.querySelector('#broker-state').textContent === 'broker disconnected'",
        DESCRIBE,
        TIMEOUT,
    );
    let before = page.eval(count).as_f64().unwrap();
    broker.restart();
    page.wait_for(
        "the broker connected again, with new messages",
        &format!(
            "document.querySelector('#broker-state').dataset.state === 'connected' && \
             {count} > {before} + 10"
        ),
        DESCRIBE,
        TIMEOUT,
    );
    let errors = page.eval("document.querySelector('#errors').textContent");
    assert!(
        errors
            .as_str()
            .unwrap()
            .contains("lost the broker connection"),
        "{errors}"
    );

    // A page opened now starts from the viewer's snapshot: the source, the error lines.
    let now = page.eval(count).as_f64().unwrap();
    page.eval("location.reload()");
    page.wait_for(
        "the snapshot after a reload",
        &format!(
            "document.querySelector('#broker-state').dataset.state === 'connected' && \
             {count} >= {now} && document.querySelectorAll('.source .box').length === 5 && \
             document.querySelector('#errors').textContent.includes('lost the broker connection')"
        ),
        DESCRIBE,
        TIMEOUT,
    );
}

#[test]
fn the_page_shows_the_classifications_of_the_whole_frame_on_the_card() {
    // gvametaconvert's lines for a frame with a car and a scene classification of the whole
    // frame (gvaclassify inference-region=full-frame), replayed as DL Streamer attaches them.
    let line = concat!(
        r#"{"objects":[{"detection":{"bounding_box":{"x_max":0.5,"x_min":0.25,"y_max":0.5,"#,
        r#""y_min":0.25},"confidence":0.9,"label":"car","label_id":2},"h":120,"region_id":0,"#,
        r#""roi_type":"car","w":160,"x":160,"y":120},{"h":480,"scene":{"confidence":0.875,"#,
        r#""label":"indoor","label_id":0,"model":{"name":"scene-net"}},"w":640,"x":0,"y":0}],"#,
        r#""resolution":{"height":480,"width":640},"timestamp":0}"#
    );
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("scene.jsonl");
    std::fs::write(&recording, format!("{line}\n")).unwrap();

    let broker = Broker::start();
    let viewer = Viewer::start(&broker, &["--topic", "cameras/#"]);
    let mut page = Browser::open(&viewer.url, WIDTH, HEIGHT);
    page.wait_for(
        "a broker connection",
        "document.querySelector('#broker-state').dataset.state === 'connected'",
        DESCRIBE,
        TIMEOUT,
    );
    // The gvametaconvert object, and what DLSPS publishes (the same keys merged).
    for (source, format) in [("hall", "array"), ("lobby", "dlsps")] {
        let status = gst_launch(&format!(
            "videotestsrc num-buffers=3 ! video/x-raw,width=640,height=480 \
             ! metareplay location={} loop=true \
             ! mqttpublish host=127.0.0.1 port={} topic=cameras/{source} source={source} qos=1 \
               leaky=no message-format={format}",
            recording.display(),
            broker.port
        ))
        .0
        .wait()
        .unwrap();
        assert!(status.success(), "gst-launch-1.0: {status}");
        let card = format!(
            "[...document.querySelectorAll('.source')].find(c => \
             c.querySelector('.source-name').textContent === '{source}')"
        );
        page.wait_for(
            &format!("the third frame of {source}"),
            &format!("{card}?.querySelector('.frame-id').textContent === '2'"),
            DESCRIBE,
            TIMEOUT,
        );
        let shown = page.eval(&format!(
            "(() => {{ const c = {card}; return {{ \
               labels: [...c.querySelectorAll('.frame-labels li')].map(li => \
                 [li.dataset.name, li.lastChild.textContent]), \
               boxes: [...c.querySelectorAll('.box')].map(b => b.dataset.label), \
               objects: c.querySelector('.object-count').textContent, \
               counted: [...c.querySelectorAll('.labels tbody tr')].map(tr => tr.dataset.label) }}; }})()"
        ));
        assert_eq!(
            shown["labels"],
            serde_json::json!([["scene", "indoor 88%"]]),
            "{format}: {shown}"
        );
        // The full-frame object is no box and no object of its own.
        assert_eq!(
            shown["boxes"],
            serde_json::json!(["car"]),
            "{format}: {shown}"
        );
        assert_eq!(shown["objects"], "1", "{format}: {shown}");
        assert_eq!(
            shown["counted"],
            serde_json::json!(["car"]),
            "{format}: {shown}"
        );
    }
}
