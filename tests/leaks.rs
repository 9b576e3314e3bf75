// SPDX-License-Identifier: MPL-2.0

//! Resource leaks across state changes, alone in its own test binary: thread, file
//! descriptor and memory counts of the process are only meaningful when no other test
//! runs beside this one.

mod common;

use std::time::Duration;

use common::{
    fd_count, init_plugin, rss_kib, sample_recording, stat, thread_count, wait_until, Broker,
};
use gst::prelude::*;

/// How long threads of stopped pipelines may take to end.
const LONG: Duration = Duration::from_secs(30);

/// 6. 100 PLAYING -> NULL -> PLAYING cycles, and 16 sinks in one pipeline: no leaks.
#[test]
fn repeated_cycles_and_many_sinks_leak_nothing() {
    let broker = Broker::new();
    init_plugin();
    let branches: String = (0..16)
        .map(|i| {
            format!(
                " t. ! queue ! mqttpublish name=sink{i} host={} port={} topic=cam/{i}",
                broker.host(),
                broker.port()
            )
        })
        .collect();
    let description = format!(
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=30/1 \
         ! metareplay location={} loop=true ! tee name=t{branches}",
        sample_recording()
    );
    let pipeline = gst::parse::launch(&description)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();

    let cycle = |pipeline: &gst::Pipeline| {
        pipeline.set_state(gst::State::Playing).unwrap();
        let _ = pipeline.state(gst::ClockTime::from_seconds(5));
        std::thread::sleep(Duration::from_millis(50));
        pipeline.set_state(gst::State::Null).unwrap();
    };
    // Warm up: GStreamer's own thread pools and caches settle.
    for _ in 0..5 {
        cycle(&pipeline);
    }
    let (threads, fds, rss) = (settled_thread_count(), fd_count(), rss_kib());
    for _ in 0..100 {
        cycle(&pipeline);
    }
    // GLib ends the streaming threads it no longer needs a moment after they return: a
    // leaked thread or descriptor is one still there after LONG.
    wait_until(LONG, Duration::from_millis(20), || {
        thread_count() <= threads + 2 && fd_count() <= fds + 2
    });
    let published: u64 = (0..16)
        .map(|i| {
            let stats = pipeline
                .by_name(&format!("sink{i}"))
                .unwrap()
                .property::<gst::Structure>("stats");
            stat(&stats, "messages-published")
        })
        .sum();
    assert!(published > 0, "the sinks published");
    assert!(
        thread_count() <= threads + 2,
        "threads {threads} -> {}",
        thread_count()
    );
    assert!(fd_count() <= fds + 2, "fds {fds} -> {}", fd_count());
    assert!(
        rss_kib() < rss + 20 * 1024,
        "RSS {rss} KiB -> {} KiB",
        rss_kib()
    );
}

/// The process's thread count once it has not changed for 200 ms (streaming threads of the
/// last cycle still ending are not counted in the baseline).
fn settled_thread_count() -> usize {
    let mut last = thread_count();
    let mut since = std::time::Instant::now();
    wait_until(LONG, Duration::from_millis(20), || {
        let now = thread_count();
        if now != last {
            (last, since) = (now, std::time::Instant::now());
        }
        since.elapsed() >= Duration::from_millis(200)
    });
    last
}
