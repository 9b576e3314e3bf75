// SPDX-License-Identifier: MPL-2.0

//! CPU cost per frame of `gstanalyticsmqtt::internals::JpegEncoder` against GStreamer's
//! `jpegenc` (libjpeg-turbo) and the pure Rust `jpeg-encoder` crate, on the same
//! frame, in the same process.
//!
//! ```text
//! cargo run --release --example jpeg_bench -- [--frames N] [--size WxH]
//!     [--quality Q] [--pattern P] [--repeat R] [--all] [--only CASE]
//! ```
//!
//! Each frame is made once by `videotestsrc ! videoconvert` and then encoded N times:
//! by the module in a loop (mapping the buffer each time, as a sink would), by
//! `appsrc ! jpegenc ! fakesink` (the same buffer pushed N times), and by
//! `jpeg-encoder` after the copy into the contiguous layout it needs. CPU time is
//! user + system time of the whole process (all threads), from `getrusage()`.
//!
//! Outside this process, `/usr/bin/time -v gst-launch-1.0 videotestsrc
//! num-buffers=300 pattern=smpte ! video/x-raw,format=I420,width=1280,height=720 !
//! jpegenc quality=85 ! fakesink`, less the same pipeline without `jpegenc`, gives
//! `jpegenc`'s share too.

use std::time::Instant;

use gst::prelude::*;
use gstanalyticsmqtt::internals::{JpegEncoder, SUPPORTED_FORMATS};

struct Options {
    frames: u32,
    width: u32,
    height: u32,
    quality: u8,
    pattern: String,
    all: bool,
    repeat: u32,
    only: Option<String>,
}

fn parse_args() -> Options {
    let mut opts = Options {
        frames: 300,
        width: 1280,
        height: 720,
        quality: 85,
        pattern: "smpte".into(),
        all: false,
        repeat: 3,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("option needs a value");
        match arg.as_str() {
            "--frames" => opts.frames = value().parse().expect("--frames N"),
            "--quality" => opts.quality = value().parse().expect("--quality 1..100"),
            "--pattern" => opts.pattern = value(),
            "--size" => {
                let v = value();
                let (w, h) = v.split_once('x').expect("--size WxH");
                opts.width = w.parse().expect("width");
                opts.height = h.parse().expect("height");
            }
            "--repeat" => opts.repeat = value().parse().expect("--repeat N"),
            "--all" => opts.all = true,
            "--only" => opts.only = Some(value()),
            _ => panic!("unknown argument {arg}"),
        }
    }
    opts
}

/// User + system CPU time of this process, all threads, in seconds.
fn cpu_time() -> f64 {
    // SAFETY: getrusage() only writes the struct it is given.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

struct Cost {
    cpu_ms: f64,
    wall_ms: f64,
    bytes: usize,
}

fn measure(frames: u32, mut f: impl FnMut() -> usize) -> Cost {
    let (cpu, wall) = (cpu_time(), Instant::now());
    let bytes = f();
    Cost {
        cpu_ms: (cpu_time() - cpu) * 1e3 / f64::from(frames),
        wall_ms: wall.elapsed().as_secs_f64() * 1e3 / f64::from(frames),
        bytes: bytes / frames as usize,
    }
}

fn keep_min(best: &mut Option<Cost>, new: Option<Cost>) {
    if let Some(new) = new {
        if best.as_ref().is_none_or(|b| new.cpu_ms < b.cpu_ms) {
            *best = Some(new);
        }
    }
}

fn make_frame(opts: &Options, caps: &str) -> gst::Sample {
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers=1 pattern={} ! videoconvert ! {caps} ! appsink name=sink",
        opts.pattern
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let sample = sink.pull_sample().expect("a frame from videotestsrc");
    pipeline.set_state(gst::State::Null).unwrap();
    sample
}

fn bench_module(opts: &Options, sample: &gst::Sample, convert: bool) -> Cost {
    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    let buffer = sample.buffer().unwrap();
    let mut encoder = JpegEncoder::new(&info, opts.quality).unwrap();
    encoder.set_colour_conversion(convert);
    let mut out = Vec::new();
    measure(opts.frames, || {
        let mut total = 0;
        for _ in 0..opts.frames {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).unwrap();
            out.clear();
            encoder.encode(&frame, &mut out).unwrap();
            total += out.len();
        }
        total
    })
}

fn bench_jpegenc(opts: &Options, sample: &gst::Sample) -> Option<Cost> {
    let caps = sample.caps().unwrap();
    let jpegenc = gst::ElementFactory::find("jpegenc").expect("jpegenc (gst-plugins-good)");
    if !jpegenc
        .static_pad_templates()
        .iter()
        .any(|t| t.direction() == gst::PadDirection::Sink && t.caps().can_intersect(caps))
    {
        return None;
    }
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! jpegenc quality={} ! fakesink name=sink sync=false",
        opts.quality
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(&caps.to_owned()));
    let bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sink_pad = pipeline
        .by_name("sink")
        .unwrap()
        .static_pad("sink")
        .unwrap();
    let counter = bytes.clone();
    sink_pad.add_probe(gst::PadProbeType::BUFFER, move |_, probe| {
        if let Some(buffer) = probe.buffer() {
            counter.fetch_add(buffer.size(), std::sync::atomic::Ordering::Relaxed);
        }
        gst::PadProbeReturn::Ok
    });
    let buffer = sample.buffer_owned().unwrap();
    let bus = pipeline.bus().unwrap();

    let cost = measure(opts.frames, || {
        pipeline.set_state(gst::State::Playing).unwrap();
        for i in 0..opts.frames {
            let mut b = buffer.copy();
            b.get_mut()
                .unwrap()
                .set_pts(gst::ClockTime::from_mseconds(u64::from(i) * 40));
            src.push_buffer(b).unwrap();
        }
        src.end_of_stream().unwrap();
        bus.timed_pop_filtered(gst::ClockTime::NONE, &[gst::MessageType::Eos])
            .unwrap();
        bytes.load(std::sync::atomic::Ordering::Relaxed)
    });
    pipeline.set_state(gst::State::Null).unwrap();
    Some(cost)
}

/// `jpeg-encoder` takes contiguous packed pixels only: planar YUV is first expanded
/// to full resolution YCbCr, padded rows are packed. That copy is part of its cost.
fn bench_jpeg_encoder(opts: &Options, sample: &gst::Sample) -> Option<Cost> {
    use gst_video::prelude::*;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    let info = gst_video::VideoInfo::from_caps(sample.caps().unwrap()).unwrap();
    let buffer = sample.buffer().unwrap();
    let (w, h) = (info.width() as usize, info.height() as usize);
    let (color, bpp) = match info.format() {
        gst_video::VideoFormat::I420 => (ColorType::Ycbcr, 3),
        gst_video::VideoFormat::Bgrx => (ColorType::Bgra, 4),
        gst_video::VideoFormat::Rgb => (ColorType::Rgb, 3),
        _ => return None,
    };
    let mut pixels = vec![0u8; w * h * bpp];
    let mut out = Vec::new();
    Some(measure(opts.frames, || {
        let mut total = 0;
        for _ in 0..opts.frames {
            let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).unwrap();
            if info.format() == gst_video::VideoFormat::I420 {
                let (ys, us, vs) = (
                    frame.plane_stride()[0] as usize,
                    frame.plane_stride()[1] as usize,
                    frame.plane_stride()[2] as usize,
                );
                let (y, u, v) = (
                    frame.plane_data(0).unwrap(),
                    frame.plane_data(1).unwrap(),
                    frame.plane_data(2).unwrap(),
                );
                for (row, out) in pixels.chunks_exact_mut(w * 3).enumerate() {
                    let (yr, ur, vr) = (&y[row * ys..], &u[row / 2 * us..], &v[row / 2 * vs..]);
                    for (x, px) in out.chunks_exact_mut(3).enumerate() {
                        px.copy_from_slice(&[yr[x], ur[x / 2], vr[x / 2]]);
                    }
                }
            } else {
                let stride = frame.plane_stride()[0] as usize;
                let data = frame.plane_data(0).unwrap();
                for (row, out) in pixels.chunks_exact_mut(w * bpp).enumerate() {
                    out.copy_from_slice(&data[row * stride..row * stride + w * bpp]);
                }
            }
            out.clear();
            let mut encoder = Encoder::new(&mut out, opts.quality);
            encoder.set_sampling_factor(SamplingFactor::F_2_2);
            encoder.encode(&pixels, w as u16, h as u16, color).unwrap();
            total += out.len();
        }
        total
    }))
}

fn main() {
    gst::init().unwrap();
    let opts = parse_args();

    let size = format!("width={},height={}", opts.width, opts.height);
    // (name, caps, colour conversion). videotestsrc makes HD I420 as limited range
    // BT.709, which the module converts to JPEG's full range BT.601 and jpegenc
    // does not.
    let mut cases: Vec<(String, String, bool)> = vec![
        (
            "I420 bt709 (converted)".into(),
            format!("video/x-raw,format=I420,{size},colorimetry=bt709"),
            true,
        ),
        (
            "I420 bt709 (as is, like jpegenc)".into(),
            format!("video/x-raw,format=I420,{size},colorimetry=bt709"),
            false,
        ),
        (
            "I420 bt601 (converted)".into(),
            format!("video/x-raw,format=I420,{size},colorimetry=bt601"),
            true,
        ),
        (
            "I420 full range bt601 (direct)".into(),
            format!("video/x-raw,format=I420,{size},colorimetry=1:4:0:0"),
            true,
        ),
        (
            "BGRx".into(),
            format!("video/x-raw,format=BGRx,{size}"),
            true,
        ),
    ];
    if opts.all {
        for format in SUPPORTED_FORMATS {
            let name = format.to_str();
            let caps = format!("video/x-raw,format={name},{size}");
            cases.push((name.to_string(), caps, true));
        }
    }

    println!(
        "{} frames {}x{} quality {} pattern {}, least of {} runs; \
         CPU ms/frame (user+sys, all threads), wall ms/frame, bytes/frame",
        opts.frames, opts.width, opts.height, opts.quality, opts.pattern, opts.repeat
    );
    println!(
        "{:<34} {:>22} {:>22} {:>22} {:>8} {:>8}",
        "case", "module", "jpegenc", "jpeg-encoder", "mod/enc", "rust/enc"
    );
    let show = |c: &Option<Cost>| match c {
        Some(c) => format!("{:6.2} {:6.2} {:8}", c.cpu_ms, c.wall_ms, c.bytes),
        None => format!("{:>22}", "-"),
    };
    let ratio = |a: &Option<Cost>, b: &Option<Cost>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a.cpu_ms / b.cpu_ms),
        _ => "-".into(),
    };
    for (name, caps, convert) in cases {
        if opts
            .only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            continue;
        }
        let sample = make_frame(&opts, &caps);
        // The least of a few runs, interleaved, to damp noise from other processes.
        let (mut module, mut jpegenc, mut rust) = (None, None, None);
        for _ in 0..opts.repeat {
            keep_min(&mut module, Some(bench_module(&opts, &sample, convert)));
            keep_min(&mut jpegenc, bench_jpegenc(&opts, &sample));
            keep_min(&mut rust, bench_jpeg_encoder(&opts, &sample));
        }
        println!(
            "{:<34} {} {} {} {:>8} {:>8}",
            name,
            show(&module),
            show(&jpegenc),
            show(&rust),
            ratio(&module, &jpegenc),
            ratio(&rust, &jpegenc)
        );
    }
}
