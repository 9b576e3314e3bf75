// SPDX-License-Identifier: MPL-2.0

//! Runs one GStreamer pipeline for the benchmark (`scripts/bench.sh`) and prints one JSON
//! object: the CPU and wall time of the streaming phase, the peak RSS, and the `stats` of
//! every `mqttpublish` in the pipeline.
//!
//! ```sh
//! GST_PLUGIN_PATH=target/release target/release/examples/bench_pipeline \
//!     [--duration=SECONDS] [--timeline] [--sample-interval=SECONDS] [--realtime-clock] \
//!     videotestsrc num-buffers=1000 ! ... ! mqttpublish port=1883
//! ```
//!
//! The pipeline is set to PAUSED first, so that every `mqttpublish` starts and connects
//! (the program waits up to `--connect-timeout` seconds for `stats.connected`); the CPU
//! clock (getrusage, all threads) and the wall clock start just before PLAYING and stop at
//! the end-of-stream message, which `mqttpublish` only lets through once its queue is
//! flushed. Without `--duration` the pipeline runs until its sources end; with it, an
//! end-of-stream is sent after that many seconds (for live sources).
//!
//! `threads_cpu` splits the CPU time by kind of thread (its name without digits), e.g. the
//! streaming threads (`videotestsrc:src`) against the connection runtime's
//! (`mqttpublish-rt`); `threads_sleeps` counts the times each kind went to sleep
//! (voluntary context switches), so its wake-ups.
//!
//! `--started-file` is created once the pipeline was set to PLAYING (the clocks' zero;
//! `start_unix` in the output is the same moment as wall-clock seconds).
//!
//! `--realtime-clock` makes the pipeline's clock the system clock in wall-clock time (the
//! clock `add-sink-time` reads) and adds `base_time_ns` to the output: a live source's
//! buffer is due at `base_time_ns` + its running time, on the same clock as `sink_time`.
//!
//! `--timeline` adds samples taken every `--sample-interval` seconds: RSS and the summed
//! queue depth, queue bytes, published and dropped counters, and whether every sink is
//! connected.

mod bench_util;

use std::time::{Duration, Instant};

use bench_util::{fail, proc_status_kib, thread_use, thread_use_since, wall_ns, Args, CpuTime};
use gst::prelude::*;
use serde_json::{json, Map, Value};

fn mqtt_sinks(pipeline: &gst::Pipeline) -> Vec<gst::Element> {
    pipeline
        .iterate_recurse()
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.factory().is_some_and(|f| f.name() == "mqttpublish"))
        .collect()
}

fn stats(sink: &gst::Element) -> gst::Structure {
    sink.property::<gst::Structure>("stats")
}

fn stats_json(s: &gst::StructureRef) -> Value {
    let mut out = Map::new();
    for (name, value) in s.iter() {
        let v = if let Ok(n) = value.get::<u64>() {
            json!(n)
        } else if let Ok(b) = value.get::<bool>() {
            json!(b)
        } else {
            json!(format!("{value:?}"))
        };
        out.insert(name.to_string(), v);
    }
    Value::Object(out)
}

fn counter(s: &gst::StructureRef, name: &str) -> u64 {
    s.get::<u64>(name).unwrap_or(0)
}

fn all_connected(sinks: &[gst::Element]) -> bool {
    sinks
        .iter()
        .all(|s| stats(s).get::<bool>("connected").unwrap_or(false))
}

fn sample(sinks: &[gst::Element], t: f64) -> Value {
    let all: Vec<gst::Structure> = sinks.iter().map(stats).collect();
    let sum = |name: &str| all.iter().map(|s| counter(s, name)).sum::<u64>();
    json!({
        "t": t,
        "rss_kib": proc_status_kib("VmRSS"),
        "connected": all.iter().all(|s| s.get::<bool>("connected").unwrap_or(false)),
        "queue_depth": sum("queue-depth"),
        "queue_bytes": sum("queue-bytes"),
        "published": sum("messages-published"),
        "dropped": sum("messages-dropped"),
        "replayed": sum("spool-replayed"),
    })
}

fn main() {
    let args = Args::parse(&["timeline", "realtime-clock"]);
    let description = args.positional.join(" ");
    if description.is_empty() {
        fail("usage: bench_pipeline [--duration=S] [--timeline] PIPELINE-DESCRIPTION");
    }
    let duration = args.get("duration").map(|_| args.number("duration", 0.0));
    let interval = Duration::from_secs_f64(args.number("sample-interval", 0.5));
    let connect_timeout = Duration::from_secs_f64(args.number("connect-timeout", 10.0));
    let timeline_on = args.flag("timeline");
    let started_file = args.get("started-file").map(str::to_owned);
    let realtime_clock = args.flag("realtime-clock");

    gst::init().unwrap_or_else(|e| fail(&format!("GStreamer: {e}")));
    let pipeline = gst::parse::launch(&description)
        .unwrap_or_else(|e| fail(&format!("cannot build the pipeline: {e}")))
        .downcast::<gst::Pipeline>()
        .unwrap_or_else(|_| fail("the description is not a pipeline"));
    let bus = pipeline.bus().expect("a pipeline has a bus");
    if realtime_clock {
        let clock = gst::SystemClock::obtain();
        clock.set_property("clock-type", gst::ClockType::Realtime);
        pipeline.use_clock(Some(&clock));
    }
    let sinks = mqtt_sinks(&pipeline);

    let check_bus = |timeout: gst::ClockTime| -> Option<gst::Message> {
        let msg = bus.timed_pop(timeout)?;
        if let gst::MessageView::Error(err) = msg.view() {
            let _ = pipeline.set_state(gst::State::Null);
            fail(&format!(
                "error from {}: {} ({:?})",
                err.src().map(|s| s.path_string()).unwrap_or_default(),
                err.error(),
                err.debug()
            ));
        }
        Some(msg)
    };

    if pipeline.set_state(gst::State::Paused).is_err() {
        while check_bus(gst::ClockTime::from_mseconds(100)).is_some() {}
        fail("the pipeline does not start");
    }
    let (result, _, _) = pipeline.state(gst::ClockTime::from_seconds(30));
    if result.is_err() {
        while check_bus(gst::ClockTime::from_mseconds(100)).is_some() {}
        fail("the pipeline does not reach PAUSED");
    }
    let connect_start = Instant::now();
    while !all_connected(&sinks) {
        if connect_start.elapsed() > connect_timeout {
            fail("mqttpublish did not connect to the broker");
        }
        check_bus(gst::ClockTime::from_mseconds(10));
    }

    let cpu_start = CpuTime::now();
    let threads_start = thread_use();
    let start = Instant::now();
    let start_unix = wall_ns() as f64 / 1e9;
    if pipeline.set_state(gst::State::Playing).is_err() {
        fail("the pipeline does not play");
    }
    if let Some(path) = &started_file {
        std::fs::write(path, "playing\n").unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    }
    let mut timeline = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut eos_sent = false;
    // Most threads the process had while streaming (streaming threads and the sinks'
    // connection runtime).
    let mut threads_max = 0;
    loop {
        threads_max = threads_max.max(proc_status_kib("Threads"));
        let elapsed = start.elapsed();
        if timeline_on && elapsed >= next_sample {
            timeline.push(sample(&sinks, elapsed.as_secs_f64()));
            next_sample += interval;
        }
        if let Some(d) = duration {
            if !eos_sent && elapsed.as_secs_f64() >= d {
                pipeline.send_event(gst::event::Eos::new());
                eos_sent = true;
            }
        }
        let wait = if timeline_on || duration.is_some() {
            gst::ClockTime::from_mseconds(50)
        } else {
            gst::ClockTime::from_mseconds(500)
        };
        if let Some(msg) = check_bus(wait) {
            if let gst::MessageView::Eos(_) = msg.view() {
                break;
            }
        }
    }
    let cpu = CpuTime::now().since(cpu_start);
    let threads_use = thread_use_since(&threads_start);
    let threads_cpu: Map<String, Value> = threads_use
        .iter()
        .map(|(kind, (cpu, _))| (kind.clone(), json!(cpu)))
        .collect();
    let threads_sleeps: Map<String, Value> = threads_use
        .iter()
        .map(|(kind, (_, sleeps))| (kind.clone(), json!(sleeps)))
        .collect();
    let wall = start.elapsed().as_secs_f64();
    if timeline_on {
        timeline.push(sample(&sinks, wall));
    }

    // The running time's zero on the clock, set when the pipeline went to PLAYING.
    let base_time = pipeline.base_time().map(gst::ClockTime::nseconds);
    let _ = pipeline.set_state(gst::State::Null);
    // After stopping, `stats` holds the final counters of the run.
    let sink_stats: Map<String, Value> = sinks
        .iter()
        .map(|s| (s.name().to_string(), stats_json(&stats(s))))
        .collect();
    let mut out = json!({
        "cpu_user": cpu.user,
        "cpu_sys": cpu.sys,
        "wall": wall,
        "start_unix": start_unix,
        "peak_rss_kib": proc_status_kib("VmHWM"),
        "threads_max": threads_max,
        "threads_cpu": threads_cpu,
        "threads_sleeps": threads_sleeps,
        "sinks": sink_stats,
    });
    if timeline_on {
        out["timeline"] = Value::Array(timeline);
    }
    if realtime_clock {
        out["base_time_ns"] = json!(base_time);
    }
    println!("{out}");
}
