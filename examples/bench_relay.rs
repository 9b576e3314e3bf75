// SPDX-License-Identifier: MPL-2.0

//! The benchmark's relay (`scripts/bench.sh`, W6's stages): a TCP relay in front of the
//! broker that notes when each PUBLISH a client sends arrives, so that a message's latency
//! can be split at the socket: before it (the publisher's process) and after it (the
//! broker and the subscriber).
//!
//! ```sh
//! target/release/examples/bench_relay --port=1884 --broker-port=1883 \
//!     --ready-file=ready --stop-file=stop --dump=relayed.tsv
//! ```
//!
//! - Listens on 127.0.0.1:`--port`; for each client, connects to the broker on
//!   127.0.0.1:`--broker-port` and passes the bytes both ways as they come, each read
//!   written on at once (`TCP_NODELAY` both sides).
//! - Reads the client's MQTT 3.1.1 packets as they pass: for each PUBLISH, `--dump` gets a
//!   line with the topic, the payload's `"sink_time"` (0 when absent) and the wall-clock
//!   time (ns since the epoch) of the read that completed the packet, tab-separated.
//! - Creates `--ready-file` once it listens; once `--stop-file` exists it writes out the
//!   dump and prints one JSON object (`publishes`, `connections`, `cpu`: its own CPU
//!   seconds, user + system), then exits.
//!
//! One thread (tokio's current-thread runtime) serves every connection: its own delay in
//! reading a socket counts before the socket, so the split is an upper bound of the
//! publisher's part.

mod bench_util;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use bench_util::{fail, json_u64, wall_ns, Args, CpuTime};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the relay noted, shared by the connections of its one thread.
struct Noted {
    dump: RefCell<BufWriter<File>>,
    publishes: Cell<u64>,
    connections: Cell<u64>,
}

/// The length of the complete MQTT packet at the start of `bytes` and where its variable
/// header starts, or `None` while it is incomplete.
fn packet(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for i in 1..5 {
        let byte = *bytes.get(i)?;
        remaining |= usize::from(byte & 0x7f) << (7 * (i - 1));
        if byte & 0x80 == 0 {
            let total = i + 1 + remaining;
            return (bytes.len() >= total).then_some((total, i + 1));
        }
    }
    fail("a packet with a remaining length over 4 bytes: not MQTT")
}

/// The topic and payload of a PUBLISH packet (MQTT 3.1.1), given its first byte and the
/// bytes after its fixed header.
fn publish(first: u8, body: &[u8]) -> Option<(&str, &[u8])> {
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + topic_len)?).ok()?;
    let packet_id = if (first >> 1) & 3 > 0 { 2 } else { 0 };
    Some((topic, body.get(2 + topic_len + packet_id..)?))
}

/// Passes what `client` sends on to `broker`, noting each PUBLISH.
async fn client_to_broker(
    mut client: tokio::net::tcp::OwnedReadHalf,
    mut broker: tokio::net::tcp::OwnedWriteHalf,
    noted: Rc<Noted>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let arrived = wall_ns();
        if broker.write_all(&buffer[..n]).await.is_err() {
            break;
        }
        pending.extend_from_slice(&buffer[..n]);
        let mut start = 0;
        while let Some((len, header)) = packet(&pending[start..]) {
            let first = pending[start];
            if first >> 4 == 3 {
                if let Some((topic, payload)) =
                    publish(first, &pending[start + header..start + len])
                {
                    let sink_time = json_u64(payload, "sink_time").unwrap_or(0);
                    writeln!(noted.dump.borrow_mut(), "{topic}\t{sink_time}\t{arrived}")
                        .unwrap_or_else(|e| fail(&format!("--dump: {e}")));
                    noted.publishes.set(noted.publishes.get() + 1);
                }
            }
            start += len;
        }
        pending.drain(..start);
    }
}

/// Relays one client's connection to the broker, both ways, until either side closes.
async fn relay(client: TcpStream, broker_port: u16, noted: Rc<Noted>) {
    let Ok(broker) = TcpStream::connect(("127.0.0.1", broker_port)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = broker.set_nodelay(true);
    noted.connections.set(noted.connections.get() + 1);
    let (client_read, mut client_write) = client.into_split();
    let (mut broker_read, broker_write) = broker.into_split();
    let back = async move {
        let _ = tokio::io::copy(&mut broker_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(client_to_broker(client_read, broker_write, noted), back);
}

fn main() {
    let args = Args::parse(&[]);
    let port: u16 = args.number("port", 0);
    let broker_port: u16 = args.number("broker-port", 1883);
    let ready_file = args.get("ready-file").map(str::to_owned);
    let stop_file = args.required("stop-file").to_owned();
    let dump_path = args.required("dump").to_owned();
    let dump = File::create(&dump_path).unwrap_or_else(|e| fail(&format!("{dump_path}: {e}")));
    let noted = Rc::new(Noted {
        dump: RefCell::new(BufWriter::new(dump)),
        publishes: Cell::new(0),
        connections: Cell::new(0),
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| fail(&format!("listen on 127.0.0.1:{port}: {e}")));
        if let Some(path) = &ready_file {
            std::fs::write(path, "ready\n").unwrap_or_else(|e| fail(&format!("{path}: {e}")));
        }
        let accept = async {
            loop {
                if let Ok((client, _)) = listener.accept().await {
                    tokio::task::spawn_local(relay(client, broker_port, Rc::clone(&noted)));
                }
            }
        };
        let watch = async {
            while !Path::new(&stop_file).exists() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = watch => {}
        }
    });
    noted
        .dump
        .borrow_mut()
        .flush()
        .unwrap_or_else(|e| fail(&format!("--dump: {e}")));
    let cpu = CpuTime::now();
    println!(
        "{}",
        json!({
            "publishes": noted.publishes.get(),
            "connections": noted.connections.get(),
            "cpu": cpu.user + cpu.sys,
        })
    );
}
