// SPDX-License-Identifier: MPL-2.0

//! CPU cost of building one W1 message (scripts/bench.sh): what `mqttpublish` does on the
//! streaming thread for every buffer before it queues the message, without publishing it.
//!
//! ```text
//! cargo run --release --example message_build_bench -- [--messages N]
//! ```
//!
//! The buffer is W1's: 64x48 I420 with the first frame of `pipelines/sample.jsonl` (five
//! objects, one with a classification) attached as `metareplay` attaches them. The message
//! is built by the element's own assembler with the default settings (gvametaconvert JSON
//! from the ROI metas, no image). Prints, as one JSON line, nanoseconds per message for
//! reading the objects alone and for building the whole message, each the best of five
//! runs, and the message's size.

use std::time::Instant;

use gstanalyticsmqtt::internals::{
    attach_objects, parse_frame_line, read_objects, Assembler, MessageFormat, MessageInput,
    MessageOptions, MetadataSource,
};

fn best_of_five(messages: u32, mut run: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..messages {
                run();
            }
            start.elapsed().as_nanos() as f64 / f64::from(messages)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    gst::init().unwrap();
    let args: Vec<String> = std::env::args().collect();
    let messages: u32 = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("--messages N"))
        .unwrap_or(200_000);

    let caps: gst::Caps = "video/x-raw,format=I420,width=64,height=48,framerate=30/1"
        .parse()
        .unwrap();
    let info = gst_video::VideoInfo::from_caps(&caps).unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/sample.jsonl");
    let line = std::fs::read_to_string(sample).unwrap();
    let frame = parse_frame_line(line.lines().next().unwrap()).unwrap();
    let mut buffer = gst::Buffer::with_size(info.size()).unwrap();
    attach_objects(buffer.get_mut().unwrap(), &frame.objects, 64, 48);

    let mut assembler = Assembler::new(MessageOptions {
        filter: None,
        publish_frame: false,
        jpeg_quality: 85,
        frame_interval: 1,
        format: MessageFormat::Array,
        metadata_source: MetadataSource::Auto,
        source: None,
        tags: None,
        skip_empty: false,
        add_sink_time: false,
        add_tensor_data: false,
        pipeline_name: None,
        pipeline_version: String::new(),
    });
    assembler.set_input(MessageInput::from_caps(&caps, || None));
    let size = assembler
        .build(&buffer, Some(0), usize::MAX)
        .expect("a message")
        .payload
        .len();

    let read = best_of_five(messages, || {
        std::hint::black_box(read_objects(std::hint::black_box(&buffer)));
    });
    let build = best_of_five(messages, || {
        std::hint::black_box(assembler.build(std::hint::black_box(&buffer), Some(0), usize::MAX));
    });
    println!(
        "{{\"objects\":{},\"message_bytes\":{size},\"messages\":{messages},\"read_ns\":{read:.0},\"build_ns\":{build:.0}}}",
        frame.objects.len()
    );
}
