// SPDX-License-Identifier: MPL-2.0

//! The benchmark's yardstick (`scripts/bench.sh`): rumqttc 0.25.1 as released, used
//! directly, publishing one pre-serialized payload `--count` times, with no GStreamer, no
//! queue and no metadata work. It runs rumqttc the way `mqttpublish` does (AsyncClient on
//! a current-thread tokio runtime, TCP_NODELAY, a 64-request channel), so the difference
//! between the two is what the element adds, against what a plain rumqttc user gets.
//!
//! A cargo project of its own (bench/raw-publisher, with its own Cargo.lock), so that it
//! gets rumqttc from crates.io, not the plugin's patched copy (third_party/rumqttc).
//!
//! ```sh
//! cargo build --release --manifest-path bench/raw-publisher/Cargo.toml
//! target/release/raw_publisher --port=1883 --topic=t --qos=1 \
//!     --count=20000 --payload=message.json [--rate=30] [--stamp]
//! ```
//!
//! - `--rate`: messages per second (0, the default: as fast as rumqttc takes them).
//! - `--stamp`: the payload must contain `"sink_time":<digits>`; the digits are replaced
//!   by the wall-clock time (ns since the epoch) just before each publish, so that a
//!   subscriber measures latency the same way as with `mqttpublish add-sink-time=true`.
//!
//! The clocks start once the broker accepted the connection and stop when the last
//! message was written (QoS 0) or acknowledged (QoS 1); the program then prints one JSON
//! object with the CPU time (getrusage, all threads), the wall time and the peak RSS.

// The helpers of the plugin's benchmark programs (examples/), shared by path.
#[path = "../../../examples/bench_util/mod.rs"]
mod bench_util;

use std::time::{Duration, Instant};

use bench_util::{fail, proc_status_kib, wall_ns, Args, CpuTime};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};
use serde_json::json;

/// The payload, split around the `sink_time` digits when stamping.
enum Payload {
    Fixed(Vec<u8>),
    Stamped { head: Vec<u8>, tail: Vec<u8> },
}

impl Payload {
    fn new(bytes: Vec<u8>, stamp: bool) -> Payload {
        if !stamp {
            return Payload::Fixed(bytes);
        }
        const KEY: &[u8] = b"\"sink_time\":";
        let at = bytes
            .windows(KEY.len())
            .position(|w| w == KEY)
            .unwrap_or_else(|| fail("--stamp: the payload has no \"sink_time\":"))
            + KEY.len();
        let digits = bytes[at..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        Payload::Stamped {
            head: bytes[..at].to_vec(),
            tail: bytes[at + digits..].to_vec(),
        }
    }

    /// The bytes of the next message: a fresh buffer each time, as a real publisher builds
    /// one per message.
    fn next(&self) -> Vec<u8> {
        match self {
            Payload::Fixed(bytes) => bytes.clone(),
            Payload::Stamped { head, tail } => {
                let stamp = wall_ns().to_string();
                let mut out = Vec::with_capacity(head.len() + stamp.len() + tail.len());
                out.extend_from_slice(head);
                out.extend_from_slice(stamp.as_bytes());
                out.extend_from_slice(tail);
                out
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Payload::Fixed(bytes) => bytes.len(),
            Payload::Stamped { head, tail } => head.len() + 19 + tail.len(),
        }
    }
}

fn main() {
    let args = Args::parse(&["stamp"]);
    let host = args.string("host", "127.0.0.1");
    let port: u16 = args.number("port", 1883);
    let topic = args.required("topic").to_owned();
    let qos = match args.number("qos", 0u8) {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => fail(&format!("--qos={q}: only 0 and 1 are measured")),
    };
    let count: u64 = args.number("count", 1000);
    let rate: f64 = args.number("rate", 0.0);
    let path = args.required("payload");
    let bytes = std::fs::read(path).unwrap_or_else(|e| fail(&format!("{path}: {e}")));
    let payload = Payload::new(bytes, args.flag("stamp"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let mut options =
            MqttOptions::new(format!("raw-publisher-{}", std::process::id()), host, port);
        let max_packet = payload.len() + topic.len() + 1024;
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_clean_session(true)
            .set_max_packet_size(max_packet.max(10 * 1024), max_packet.max(10 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);

        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => fail(&format!("cannot connect: {e}")),
            }
        }

        let cpu_start = CpuTime::now();
        let start = Instant::now();
        let publish = async {
            let mut ticks = (rate > 0.0).then(|| {
                let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval
            });
            for _ in 0..count {
                if let Some(ticks) = &mut ticks {
                    ticks.tick().await;
                }
                if let Err(e) = client.publish(&topic, qos, false, payload.next()).await {
                    fail(&format!("publish: {e}"));
                }
            }
        };
        let drive = async {
            let mut done = 0u64;
            while done < count {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => {
                        done += 1
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => done += 1,
                    Ok(_) => {}
                    Err(e) => fail(&format!("connection lost: {e}")),
                }
            }
        };
        tokio::join!(publish, drive);
        let cpu = CpuTime::now().since(cpu_start);
        let wall = start.elapsed().as_secs_f64();

        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if event == Event::Outgoing(Outgoing::Disconnect) {
                    break;
                }
            }
        })
        .await;

        println!(
            "{}",
            json!({
                "cpu_user": cpu.user,
                "cpu_sys": cpu.sys,
                "wall": wall,
                "peak_rss_kib": proc_status_kib("VmHWM"),
                "messages": count,
                "payload_bytes": payload.len(),
            })
        );
    });
}
