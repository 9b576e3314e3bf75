// SPDX-License-Identifier: MPL-2.0

//! Publishing with the real `mosquitto_pub` client.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{wait_until, Broker, QoS, TlsFiles};

/// How long one `mosquitto_pub` run may take before it is killed.
const PUB_TIMEOUT: Duration = Duration::from_secs(15);

/// One `mosquitto_pub` invocation: publishes a single message (read from
/// standard input, so any bytes work) and exits.
#[derive(Debug, Clone)]
pub struct MosquittoPub {
    host: String,
    port: u16,
    tls_port: Option<u16>,
    topic: String,
    payload: Vec<u8>,
    args: Vec<String>,
    tls: bool,
}

impl MosquittoPub {
    /// Publishes `payload` to `topic` on the plain listener of `broker`,
    /// MQTT 3.1.1, QoS 0, not retained.
    pub fn new(broker: &Broker, topic: &str, payload: impl AsRef<[u8]>) -> Self {
        MosquittoPub {
            host: broker.host().to_owned(),
            port: broker.port(),
            tls_port: broker.has_tls().then(|| broker.tls_port()),
            topic: topic.to_owned(),
            payload: payload.as_ref().to_vec(),
            args: Vec::new(),
            tls: false,
        }
    }

    /// Quality of service of the message (`-q`).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.args.extend(["-q".into(), (qos as u8).to_string()]);
        self
    }

    /// Publishes a retained message (`-r`).
    pub fn retain(mut self) -> Self {
        self.args.push("-r".into());
        self
    }

    /// Uses MQTT 5 (`-V mqttv5`).
    pub fn v5(mut self) -> Self {
        self.args.extend(["-V".into(), "mqttv5".into()]);
        self
    }

    /// Adds an MQTT 5 user property to the PUBLISH (needs [`Self::v5`]).
    pub fn user_property(mut self, key: &str, value: &str) -> Self {
        self.args.extend(
            ["-D", "publish", "user-property", key, value]
                .iter()
                .map(|s| s.to_string()),
        );
        self
    }

    /// Sets the MQTT 5 content type of the PUBLISH (needs [`Self::v5`]).
    pub fn content_type(mut self, content_type: &str) -> Self {
        self.args.extend(
            ["-D", "publish", "content-type", content_type]
                .iter()
                .map(|s| s.to_string()),
        );
        self
    }

    /// Client id (`-i`).
    pub fn client_id(mut self, id: &str) -> Self {
        self.args.extend(["-i".into(), id.to_owned()]);
        self
    }

    /// User name and password (`-u`, `-P`).
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.args.extend([
            "-u".into(),
            user.to_owned(),
            "-P".into(),
            password.to_owned(),
        ]);
        self
    }

    /// Connects to the broker's TLS listener trusting `files.ca` and
    /// presenting `files.client_cert`.
    pub fn tls(self, files: &TlsFiles) -> Self {
        self.cafile(&files.ca)
            .client_cert(&files.client_cert, &files.client_key)
    }

    /// Connects to the broker's TLS listener trusting only `ca`.
    pub fn cafile(mut self, ca: &Path) -> Self {
        self.tls = true;
        self.args
            .extend(["--cafile".into(), ca.display().to_string()]);
        self
    }

    /// Presents a client certificate (`--cert`, `--key`).
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        self.args.extend([
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ]);
        self
    }

    /// Overrides the host name or address to connect to.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Overrides the port to connect to.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self.tls_port = Some(port);
        self
    }

    /// Runs `mosquitto_pub` and returns its output (killed after a timeout).
    pub fn run(&self) -> Output {
        let port = if self.tls {
            self.tls_port
                .expect("TLS publish, but the broker has no TLS listener")
        } else {
            self.port
        };
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                &self.host,
                "-p",
                &port.to_string(),
                "-t",
                &self.topic,
                "-s",
            ])
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub (is mosquitto-clients installed?)");
        {
            let mut stdin = child.stdin.take().expect("piped stdin");
            // The client may exit early (e.g. connection refused): ignore EPIPE.
            let _ = stdin.write_all(&self.payload);
        }
        let exited = wait_until(PUB_TIMEOUT, Duration::from_millis(10), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = child.kill();
        }
        child.wait_with_output().expect("wait for mosquitto_pub")
    }

    /// Runs `mosquitto_pub`; `Err` holds its exit status and output.
    pub fn try_publish(&self) -> Result<(), String> {
        let output = self.run();
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "mosquitto_pub {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Runs `mosquitto_pub` and panics if it fails.
    #[track_caller]
    pub fn publish(&self) {
        if let Err(error) = self.try_publish() {
            panic!("publishing to {:?} failed: {error}", self.topic);
        }
    }
}
