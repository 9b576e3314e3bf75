// SPDX-License-Identifier: MPL-2.0

//! The benchmark's subscriber (`scripts/bench.sh`): counts the messages a publisher got
//! through the broker, per topic, and optionally their latency.
//!
//! ```sh
//! target/release/examples/bench_subscriber --port=1883 --topic='bench/#' \
//!     --ready-file=ready --stop-file=stop [--latency] [--save-first=message.json] \
//!     [--dump=received.tsv]
//! ```
//!
//! - Subscribes (again after every reconnection, so it survives a broker restart) with
//!   QoS 1, so that the publisher's QoS is the one that applies; creates `--ready-file`
//!   once the broker confirmed the subscription.
//! - Ends once `--stop-file` exists and no message came for `--idle` seconds (default 1),
//!   or after `--timeout` seconds, and prints one JSON object: the total count and
//!   payload bytes, the count per topic and, with `--latency`, receive time minus the
//!   `"sink_time"` in each payload (both wall clock, ns since the epoch) as p50/p99/max in
//!   milliseconds, and each topic's p99: the median topic's and the worst (`topic_p99`).
//! - `--save-first` writes the first payload to a file (the raw publisher's payload).
//! - `--dump` writes a line per message: topic, the payload's `"timestamp"` and
//!   `"sink_time"` (0 when absent) and the receive time (wall clock, ns since the epoch),
//!   tab-separated, for `bench/report.py stages` to follow each message through its stages.

mod bench_util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use bench_util::{fail, json_u64, wall_ns, Args};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[derive(Default)]
struct Counts {
    total: u64,
    bytes: u64,
    topics: BTreeMap<String, u64>,
    /// Receive time minus sink time, in nanoseconds, per topic.
    latencies: BTreeMap<String, Vec<i64>>,
    /// Messages whose payload had no parsable sink_time (with --latency).
    unstamped: u64,
    last: Option<Instant>,
    first_saved: bool,
    dump: Option<BufWriter<File>>,
}

/// The value at quantile `q` (0..1) of sorted values, nearest rank.
fn quantile(sorted: &[i64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64
}

fn main() {
    let args = Args::parse(&["latency"]);
    let host = args.string("host", "127.0.0.1");
    let port: u16 = args.number("port", 1883);
    let filter = args.required("topic").to_owned();
    let ready_file = args.get("ready-file").map(str::to_owned);
    let stop_file = args.get("stop-file").map(str::to_owned);
    let save_first = args.get("save-first").map(str::to_owned);
    let idle = Duration::from_secs_f64(args.number("idle", 1.0));
    let timeout = Duration::from_secs_f64(args.number("timeout", 3600.0));
    let latency = args.flag("latency");
    let dump = args.get("dump").map(|path| {
        BufWriter::new(File::create(path).unwrap_or_else(|e| fail(&format!("{path}: {e}"))))
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let counts = RefCell::new(Counts {
        dump,
        ..Counts::default()
    });
    runtime.block_on(async {
        let mut options = MqttOptions::new(
            format!("bench-subscriber-{}", std::process::id()),
            host,
            port,
        );
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(64 << 20, 64 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 16);

        // Never cancelled: rumqttc's poll() is not safe to drop half-way through a write.
        let receive = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Err(e) = client.try_subscribe(filter.as_str(), QoS::AtLeastOnce) {
                            fail(&format!("subscribe: {e}"));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(path) = &ready_file {
                            std::fs::write(path, "ready\n")
                                .unwrap_or_else(|e| fail(&format!("{path}: {e}")));
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let received = wall_ns();
                        let mut c = counts.borrow_mut();
                        c.total += 1;
                        c.bytes += p.payload.len() as u64;
                        *c.topics.entry(p.topic.clone()).or_default() += 1;
                        c.last = Some(Instant::now());
                        if latency {
                            match json_u64(&p.payload, "sink_time") {
                                Some(sent) => c
                                    .latencies
                                    .entry(p.topic.clone())
                                    .or_default()
                                    .push(received as i64 - sent as i64),
                                None => c.unstamped += 1,
                            }
                        }
                        if let Some(dump) = &mut c.dump {
                            let field = |key| json_u64(&p.payload, key).unwrap_or(0);
                            writeln!(
                                dump,
                                "{}\t{}\t{}\t{received}",
                                p.topic,
                                field("timestamp"),
                                field("sink_time")
                            )
                            .unwrap_or_else(|e| fail(&format!("--dump: {e}")));
                        }
                        if let (Some(path), false) = (&save_first, c.first_saved) {
                            std::fs::write(path, &p.payload)
                                .unwrap_or_else(|e| fail(&format!("{path}: {e}")));
                            c.first_saved = true;
                        }
                    }
                    Ok(_) => {}
                    // The broker is down (the outage test): try again shortly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        };
        let watch = async {
            let start = Instant::now();
            let mut stop_seen: Option<Instant> = None;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if start.elapsed() >= timeout {
                    return;
                }
                if stop_seen.is_none()
                    && stop_file.as_deref().is_some_and(|f| Path::new(f).exists())
                {
                    stop_seen = Some(Instant::now());
                }
                if let Some(seen) = stop_seen {
                    let quiet = counts.borrow().last.is_none_or(|t| t.elapsed() >= idle);
                    if seen.elapsed() >= idle && quiet {
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = receive => {}
            _ = watch => {}
        }
    });

    let mut c = counts.into_inner();
    if let Some(mut dump) = c.dump.take() {
        dump.flush()
            .unwrap_or_else(|e| fail(&format!("--dump: {e}")));
    }
    let mut out = json!({ "total": c.total, "bytes": c.bytes, "topics": c.topics });
    if latency {
        let ms = |ns: f64| ns / 1e6;
        // Fairness: each topic's p99, then the median topic's and the worst.
        let mut p99s: Vec<(f64, String)> = c
            .latencies
            .iter_mut()
            .map(|(topic, l)| {
                l.sort_unstable();
                (quantile(l, 0.99), topic.clone())
            })
            .collect();
        p99s.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut all: Vec<i64> = c.latencies.values().flatten().copied().collect();
        all.sort_unstable();
        out["latency_ms"] = json!({
            "count": all.len(),
            "unstamped": c.unstamped,
            "p50": ms(quantile(&all, 0.50)),
            "p99": ms(quantile(&all, 0.99)),
            "max": ms(all.last().copied().unwrap_or(0) as f64),
            "mean": ms(all.iter().sum::<i64>() as f64 / all.len().max(1) as f64),
        });
        if let Some((worst, topic)) = p99s.last() {
            out["latency_ms"]["topic_p99"] = json!({
                "topics": p99s.len(),
                "median": ms(p99s[(p99s.len() - 1) / 2].0),
                "worst": ms(*worst),
                "worst_topic": topic,
            });
        }
    }
    println!("{out}");
}
