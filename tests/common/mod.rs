// SPDX-License-Identifier: MPL-2.0

//! Shared integration-test harness: real parts, never mocks.
//!
//! - [`Broker`]: a real `mosquitto` process on a free loopback port, configured
//!   per test in its own temporary directory (plain / TLS listeners, password
//!   file, persistence, raw extra configuration), with stop / kill / pause /
//!   resume / restart-on-the-same-port and access to the broker log.
//! - [`TlsFiles`]: a CA, server and client certificates plus negative-test
//!   variants (unrelated CA, expired server certificate, certificate for another
//!   host name), generated in the test with the `openssl` command line tool;
//!   [`DlspsRecipe`]: the certificates of the DLSPS document's `openssl` recipe.
//! - [`Subscriber`]: a real MQTT client (rumqttc, MQTT 3.1.1 or 5) that is
//!   subscribed before its constructor returns and records every publish it
//!   receives, across reconnects.
//! - [`MosquittoPub`]: runs the real `mosquitto_pub` client.
//! - [`Run`]: a pipeline from a gst-launch description, set to PLAYING, with what its
//!   bus said (warnings, element messages with the time they were posted), the `stats`
//!   of its `mqttpublish` named `sink` and the arrival times of that sink's buffers.
//! - [`dlstreamer`]: DL Streamer's frame tensor meta (`GstGVATensorMeta`) registered and
//!   filled as `gvainference` and `gvaclassify` do, without the plugin's code.
//!
//! Use it from a test file with `mod common;` and `use common::*;`:
//!
//! ```ignore
//! let tls = TlsFiles::generate();
//! let mut broker = Broker::builder().tls(&tls, true).persistence(true).start();
//! let subscriber = Subscriber::builder(&broker, "analytics/#")
//!     .tls(&tls)
//!     .qos(QoS::AtLeastOnce)
//!     .connect(); // returns once the SUBACK arrived
//! // ... run a pipeline publishing to broker.host():broker.tls_port() ...
//! let messages = subscriber.wait_for(3, Duration::from_secs(10));
//! broker.stop();
//! broker.start(); // same ports, same configuration and database
//! ```
//!
//! Requirements: `/usr/sbin/mosquitto`, `mosquitto_passwd`, `mosquitto_pub`
//! (Debian packages mosquitto, mosquitto-clients) and `openssl`. Tests may run
//! as root: every broker configuration says `user root`.

// Every test binary includes this module but uses only a part of it.
#![allow(dead_code)]

mod broker;
pub mod dlstreamer;
mod pipeline;
mod publish;
mod subscriber;
mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

// Re-exports for the test files; each uses only some of them.
#[allow(unused_imports)]
pub use broker::{Broker, BrokerBuilder, BrokerOutput, Kind, LogLine};
#[allow(unused_imports)]
pub use pipeline::{Flow, Run};
#[allow(unused_imports)]
pub use publish::MosquittoPub;
#[allow(unused_imports)]
pub use rumqttc::QoS;
#[allow(unused_imports)]
pub use subscriber::{Message, Protocol, Subscriber, SubscriberBuilder};
#[allow(unused_imports)]
pub use tls::{certificate_text, DlspsRecipe, TlsFiles};

/// Loopback IPv4 address all harness parts use by default.
pub const LOCALHOST_V4: &str = "127.0.0.1";
/// Loopback IPv6 address used by brokers built with [`BrokerBuilder::ipv6`].
pub const LOCALHOST_V6: &str = "::1";

/// Polls `condition` every `interval` until it returns `true` or `timeout`
/// has passed; returns whether the condition was met.
///
/// The condition is evaluated one last time after the deadline so a slow
/// machine never turns a late success into a failure.
pub fn wait_until(
    timeout: Duration,
    interval: Duration,
    mut condition: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return condition();
        }
        thread::sleep(interval);
    }
}

/// Runs the case `name` of a table of cases: a failure inside it, from an assertion of the
/// test or a wait of the harness alike, names the case.
#[track_caller]
pub fn case<T>(name: &str, body: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(value) => value,
        Err(panic) => panic!("{name}: {}", panic_text(&*panic)),
    }
}

/// The text a panic was raised with.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Returns a TCP port that is currently free on 127.0.0.1 (and on ::1 too
/// when `ipv6` is set), for a listener a test starts (a broker, a proxy).
///
/// Ports come from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, from 32768 by default), each at most once per
/// process, starting at an offset taken from the process id. The ephemeral range is
/// where the kernel picks the local port of every outgoing connection and of every
/// `bind` to port 0: a port picked there may be taken by another test's connection or
/// listener between the check and the broker's `bind`, which a slow start (RabbitMQ,
/// seconds on a loaded machine) leaves time for. Below it, only another process that
/// asks for the port by number can take it; [`Broker`] retries with a new port when
/// its broker cannot bind.
pub fn free_port(ipv6: bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// The lowest port handed out.
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let end = ephemeral_range_start().max(FIRST + 1_000);
    let span = end - FIRST;
    let offset = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..200 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % span) as u16;
        let free = TcpListener::bind((LOCALHOST_V4, port)).is_ok()
            && (!ipv6 || TcpListener::bind((LOCALHOST_V6, port)).is_ok());
        if free {
            return port;
        }
    }
    panic!("could not find a free loopback port from {FIRST} to {end}");
}

/// The first port of the kernel's ephemeral range (32768 when it cannot be read).
fn ephemeral_range_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Initializes GStreamer and registers this crate's plugin, once per test binary.
pub fn init_plugin() {
    use std::sync::Once;
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        gst::init().unwrap();
        gstanalyticsmqtt::plugin_register_static().expect("plugin registers");
    });
}

/// A directory in `dir` holding only this crate's plugin as built for the running test
/// binary, for the `GST_PLUGIN_PATH` of a `gst-launch-1.0` or `gst-inspect-1.0` child.
///
/// Cargo builds the plugin next to the test binary (`<target dir>/<profile>/deps`,
/// wherever `CARGO_TARGET_DIR` puts it) and copies it to `<profile>` only on `cargo build`.
/// The copy goes to a directory of its own so that the registry scan opens nothing else
/// of `deps` (proc-macro libraries, for one).
pub fn plugin_dir(dir: &Path) -> PathBuf {
    let file = format!(
        "{}gstanalyticsmqtt{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("path of the test binary");
    let built = exe.with_file_name(&file);
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("create the plugin directory");
    std::fs::copy(&built, plugins.join(&file))
        .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    plugins
}

/// What a child process printed, stdout then stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The threads of this process.
pub fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The open file descriptors of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The resident memory of this process (`VmRSS`), in KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The sample recording in `pipelines/`: 300 frames of five objects, 640x480.
pub fn sample_recording() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/sample.jsonl").to_string()
}

/// A counter of an element's `stats` structure.
pub fn stat(stats: &gst::Structure, name: &str) -> u64 {
    stats
        .get::<u64>(name)
        .unwrap_or_else(|_| panic!("stats has no {name}: {stats}"))
}

/// A TCP proxy on a free loopback port to the broker at `upstream`, for each client:
/// `pump` carries what the client sends to the broker (given the client's side to read and
/// the broker's side to write, on a thread of its own); the broker's answers pass as they
/// come. Returns the proxy's port.
pub fn tcp_proxy(
    upstream: u16,
    pump: impl Fn(std::net::TcpStream, std::net::TcpStream) + Clone + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (from_client, to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut from_server, mut to_client) = (server, client);
            let pump = pump.clone();
            thread::spawn(move || pump(from_client, to_server));
            thread::spawn(move || {
                let _ = std::io::copy(&mut from_server, &mut to_client);
            });
        }
    });
    port
}

/// The `host` and `port` properties of an `mqttpublish` publishing to `broker`.
pub fn to(broker: &Broker) -> String {
    format!("host={} port={}", broker.host(), broker.port())
}

/// Every message of an `mqttpublish` accounted for in its `stats`:
/// queued = published + dropped + in flight + still queued.
pub fn assert_accounted(stats: &gst::Structure) {
    assert_eq!(
        stat(stats, "messages-queued"),
        stat(stats, "messages-published")
            + stat(stats, "messages-dropped")
            + stat(stats, "in-flight")
            + stat(stats, "queue-depth"),
        "{stats}"
    );
}

/// Brings the gst-launch `description` to PAUSED, which must fail, and returns the text
/// of the error it posted.
pub fn start_error(description: &str) -> String {
    start_gerror(description).to_string()
}

/// Brings the gst-launch `description` to PAUSED, which must fail, and returns the error
/// it posted, with the domain and code an application checks.
pub fn start_gerror(description: &str) -> gst::glib::Error {
    use gst::prelude::*;
    init_plugin();
    let pipeline = gst::parse::launch(description).unwrap();
    assert!(
        pipeline.set_state(gst::State::Paused).is_err(),
        "{description} must not start"
    );
    let msg = pipeline
        .bus()
        .unwrap()
        .timed_pop_filtered(gst::ClockTime::from_seconds(5), &[gst::MessageType::Error])
        .expect("an error on the bus");
    pipeline.set_state(gst::State::Null).unwrap();
    match msg.view() {
        gst::MessageView::Error(err) => err.error(),
        _ => unreachable!(),
    }
}
