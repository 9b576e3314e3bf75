// SPDX-License-Identifier: MPL-2.0

//! CPU cost of reading a buffer's objects (what `mqttpublish` does for every message) when
//! they come as ROI meta, as GstAnalyticsRelationMeta, or in both forms (DL Streamer 2026).
//!
//! ```text
//! scripts/gst126.sh run cargo run --release --locked --features analytics \
//!     --example meta_read_bench -- [--reads N]
//! ```
//!
//! The objects are the first frame of `pipelines/sample.jsonl` (five objects, one with a
//! classification, all tracked), attached as `metareplay` attaches them; the forms are then
//! separated by removing the other meta. Prints nanoseconds per read (`read_objects`, the
//! whole buffer) for each form, best of five runs.

use std::ops::ControlFlow;
use std::time::Instant;

use gst::buffer::BufferMetaForeachAction;
use gst_analytics::AnalyticsRelationMeta;
use gst_video::VideoRegionOfInterestMeta;
use gstanalyticsmqtt::internals::{attach_objects, parse_frame_line, read_objects};

fn without<M: gst::MetaAPI + 'static>(buffer: &gst::Buffer) -> gst::Buffer {
    let mut copy = buffer.copy();
    copy.get_mut().unwrap().foreach_meta_mut(|mut meta| {
        if meta.downcast_ref::<M>().is_some() {
            ControlFlow::Continue(BufferMetaForeachAction::Remove)
        } else {
            ControlFlow::Continue(BufferMetaForeachAction::Keep)
        }
    });
    copy
}

fn main() {
    gst::init().unwrap();
    let args: Vec<String> = std::env::args().collect();
    let reads: u32 = args
        .iter()
        .position(|a| a == "--reads")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--reads N"))
        .unwrap_or(200_000);

    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/sample.jsonl");
    let line = std::fs::read_to_string(sample).unwrap();
    let frame = parse_frame_line(line.lines().next().unwrap()).unwrap();
    let mut both = gst::Buffer::new();
    attach_objects(both.get_mut().unwrap(), &frame.objects, 640, 480);
    let roi_only = without::<AnalyticsRelationMeta>(&both);
    let relation_only = without::<VideoRegionOfInterestMeta>(&both);

    println!(
        "{} objects per buffer, {reads} reads, best of 5",
        frame.objects.len()
    );
    for (name, buffer) in [
        ("ROI meta only", &roi_only),
        ("relation meta only", &relation_only),
        ("both forms (DL Streamer 2026)", &both),
    ] {
        let n = read_objects(buffer).objects.len();
        assert_eq!(n, frame.objects.len(), "{name}: every object once");
        let best = (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..reads {
                    std::hint::black_box(read_objects(std::hint::black_box(buffer)));
                }
                start.elapsed().as_nanos() as f64 / f64::from(reads)
            })
            .fold(f64::INFINITY, f64::min);
        println!("{name:32} {best:8.0} ns per buffer");
    }
}
