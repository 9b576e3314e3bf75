// SPDX-License-Identifier: MPL-2.0

//! The real parts of the viewer tests: a mosquitto per test on a free loopback port, the
//! viewer binary, `gst-launch-1.0` with the plugin's `mqttpublish`, `mosquitto_pub`, and
//! chromium ([`browser`]).

#![allow(dead_code)]

pub mod browser;
// The plugin's test certificates (openssl CLI, self-contained), shared rather than copied.
#[path = "../../../tests/common/tls.rs"]
pub mod tls;

use std::io::{BufRead as _, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The repository root (the plugin, `pipelines/sample.jsonl`).
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when dropped.
pub struct Process(pub Child);

impl Process {
    pub fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// mosquitto on 127.0.0.1 with a port of its own, restartable on the same port.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<Process>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with("allow_anonymous true\n")
    }

    /// A broker whose listener has the configuration `lines` (TLS files, password file).
    pub fn start_with(lines: &str) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("viewer-broker-")
            .tempdir()
            .unwrap();
        let port = free_port();
        std::fs::write(
            dir.path().join("mosquitto.conf"),
            format!("user root\npersistence false\nlistener {port} 127.0.0.1\n{lines}"),
        )
        .unwrap();
        let mut broker = Broker {
            port,
            dir,
            process: None,
        };
        broker.restart();
        broker
    }

    /// Starts it (again) and waits until it accepts connections.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "the broker runs already");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut child = Process(
                Command::new("/usr/sbin/mosquitto")
                    .arg("-c")
                    .arg(self.dir.path().join("mosquitto.conf"))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start mosquitto (Debian package mosquitto)"),
            );
            while child.is_running() && Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.process = Some(child);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            // Exited: the port of the previous run may still be held for a moment.
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on {}",
                self.port
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn stop(&mut self) {
        self.process = None;
    }
}

/// The viewer binary, serving on a free loopback port.
pub struct Viewer {
    pub url: String,
    pub process: Process,
}

impl Viewer {
    /// The Server-Sent Events the page gets, as (name, JSON data), read as they come.
    pub fn events(&self) -> impl Iterator<Item = (String, serde_json::Value)> {
        use std::io::Write as _;
        let address = self
            .url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap();
        let mut stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(stream, "GET /events HTTP/1.0\r\nHost: {address}\r\n\r\n").unwrap();
        let mut lines = BufReader::new(stream)
            .lines()
            .map(|l| l.expect("event stream"));
        std::iter::from_fn(move || {
            let mut name = None;
            for line in lines.by_ref() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let (Some(data), Some(name)) = (line.strip_prefix("data: "), name.take())
                {
                    return Some((name, serde_json::from_str(data).expect("event data")));
                }
            }
            None
        })
    }

    pub fn start(broker: &Broker, args: &[&str]) -> Viewer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_analyticsmqtt-viewer"))
            .args(["--host", "127.0.0.1", "--listen", "127.0.0.1:0"])
            .args(["--port", &broker.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the viewer");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next()
            .expect("the viewer printed nothing")
            .expect("viewer output");
        let url = first
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {first:?}"))
            .to_owned();
        // Keep draining its output.
        thread::spawn(move || lines.for_each(drop));
        Viewer {
            url,
            process: Process(child),
        }
    }
}

/// The folder with the plugin built by `cargo build` in the repository root (scripts/test.sh
/// builds it before the viewer's tests): `ANALYTICSMQTT_PLUGIN_DIR`, or the `debug` folder
/// of the target directory this test runs from (test.sh shares it).
pub fn plugin_dir() -> PathBuf {
    let dir = match std::env::var_os("ANALYTICSMQTT_PLUGIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .unwrap()
            .parent() // deps
            .and_then(Path::parent) // debug
            .unwrap()
            .to_path_buf(),
    };
    assert!(
        dir.join("libgstanalyticsmqtt.so").exists(),
        "no libgstanalyticsmqtt.so in {}: run `cargo build` in the repository root with the \
         same target directory, or set ANALYTICSMQTT_PLUGIN_DIR",
        dir.display()
    );
    dir
}

/// `gst-launch-1.0` with the plugin on `GST_PLUGIN_PATH`; `description` is split at spaces.
pub fn gst_launch(description: &str) -> Process {
    Process(
        Command::new("gst-launch-1.0")
            .arg("-q")
            .args(description.split_whitespace())
            .env("GST_PLUGIN_PATH", plugin_dir())
            .current_dir(repo_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start gst-launch-1.0"),
    )
}

/// Runs `mosquitto_pub` (Debian package mosquitto-clients) to completion.
pub fn mosquitto_pub(broker: &Broker, topic: &str, args: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            topic,
        ])
        .args(args)
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub {args:?}: {status}");
}
