// SPDX-License-Identifier: MPL-2.0

//! A real broker per test: mosquitto, RabbitMQ (with `rabbitmq_mqtt`) or NATS (JetStream and
//! MQTT), each in its own temporary directory on free loopback ports, with the same
//! start / stop / kill / pause / restart and log access.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use super::{free_port, wait_until, TlsFiles, LOCALHOST_V4, LOCALHOST_V6};

/// The broker binaries.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// The server script itself, not Debian's wrapper in /usr/sbin, which switches to the
/// rabbitmq user (who cannot read the temporary directory).
const RABBITMQ: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const EPMD: &str = "/usr/bin/epmd";
const NATS: &str = "/usr/sbin/nats-server";
/// How long a start may take before the test fails (generous: loaded CI). RabbitMQ takes
/// 10 to 20 s on two busy cores.
const START_TIMEOUT: Duration = Duration::from_secs(15);
const RABBITMQ_START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `stop()` waits after SIGTERM before it falls back to SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the readiness and exit polls.
const POLL: Duration = Duration::from_millis(10);
/// How many times a first start picks new ports after a bind failure.
const PORT_ATTEMPTS: usize = 5;

/// Which broker a [`Broker`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    #[default]
    Mosquitto,
    /// RabbitMQ 3.10 with `rabbitmq_mqtt`: MQTT 3.1.1 only, keeps no publisher session
    /// across its own restart.
    RabbitMq,
    /// NATS 2.9 with JetStream and MQTT: MQTT 3.1.1, QoS 0 and 1 only, sessions in
    /// JetStream.
    Nats,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Mosquitto => "mosquitto",
            Kind::RabbitMq => "RabbitMQ",
            Kind::Nats => "NATS",
        }
    }
}

/// One node of a NATS cluster: its route port and the route ports of all nodes.
#[derive(Debug, Clone)]
struct ClusterNode {
    index: usize,
    route_ports: Vec<u16>,
    /// MQTT port, chosen with the cluster.
    port: u16,
    /// HTTP monitoring port (`/jsz`: which node leads JetStream).
    monitor_port: u16,
}

/// Options of [`Broker`]; create with [`Broker::builder`] (mosquitto), [`Broker::rabbitmq`]
/// or [`Broker::nats`], finish with [`BrokerBuilder::start`].
#[derive(Debug, Clone, Default)]
pub struct BrokerBuilder {
    kind: Kind,
    cluster: Option<ClusterNode>,
    ipv6: bool,
    persistence: bool,
    tls: Option<TlsListener>,
    users: Vec<(String, String)>,
    max_inflight: Option<u32>,
    max_queued: Option<u32>,
    extra: Vec<String>,
}

/// The TLS listener's files (copied into the broker's directory) and policy.
#[derive(Debug, Clone)]
struct TlsListener {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    require_certificate: bool,
}

impl BrokerBuilder {
    /// Also listen on `::1` (same port numbers as on 127.0.0.1).
    pub fn ipv6(mut self, enabled: bool) -> Self {
        self.ipv6 = enabled;
        self
    }

    /// Turns persistence on or off (default off). The database lives in the
    /// broker's temporary directory, so it survives [`Broker::stop`] /
    /// [`Broker::start`] but not the [`Broker`] value. Mosquitto writes it on
    /// a clean shutdown ([`Broker::stop`]), not on [`Broker::kill`].
    pub fn persistence(mut self, enabled: bool) -> Self {
        self.persistence = enabled;
        self
    }

    /// Adds a TLS listener (see [`Broker::tls_port`]) with the CA, server
    /// certificate and key of `files`. With `require_certificate` clients
    /// must present a certificate signed by that CA.
    pub fn tls(self, files: &TlsFiles, require_certificate: bool) -> Self {
        self.tls_with(
            &files.ca,
            &files.server_cert,
            &files.server_key,
            require_certificate,
        )
    }

    /// Like [`BrokerBuilder::tls`] with explicit files, e.g. the expired or
    /// wrong-host server certificate of [`TlsFiles`]. The files are copied
    /// into the broker's directory when it is built.
    pub fn tls_with(
        mut self,
        ca: &Path,
        cert: &Path,
        key: &Path,
        require_certificate: bool,
    ) -> Self {
        self.tls = Some(TlsListener {
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            require_certificate,
        });
        self
    }

    /// Adds a user to the password file (generated with `mosquitto_passwd`)
    /// and turns anonymous access off. May be called several times (RabbitMQ: once, as its
    /// default user).
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_owned(), password.to_owned()));
        self
    }

    /// `max_inflight_messages`: QoS 1/2 messages the broker has in flight to
    /// one client at a time.
    pub fn max_inflight(mut self, messages: u32) -> Self {
        self.max_inflight = Some(messages);
        self
    }

    /// `max_queued_messages`: QoS 1/2 messages queued for one client beyond
    /// those in flight (including while a persistent client is offline).
    pub fn max_queued(mut self, messages: u32) -> Self {
        self.max_queued = Some(messages);
        self
    }

    /// Appends a raw line to the configuration file. Lines come after all
    /// listeners, so listener-specific options apply to the last listener
    /// (the TLS one when there is one).
    pub fn extra(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    /// Writes the configuration, starts mosquitto and waits until every
    /// listener accepts connections. Panics (with the broker's output) if
    /// it does not come up within a generous timeout.
    #[track_caller]
    pub fn start(self) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("harness-broker-")
            .tempdir()
            .expect("create broker temp dir");
        let root = dir.path().to_path_buf();
        let tls = self.tls.as_ref().map(|tls| {
            let copy = |from: &Path, name: &str| {
                let to = root.join(name);
                fs::copy(from, &to)
                    .unwrap_or_else(|e| panic!("copy {} to broker dir: {e}", from.display()));
                to
            };
            TlsListener {
                ca: copy(&tls.ca, "ca.pem"),
                cert: copy(&tls.cert, "server.pem"),
                key: copy(&tls.key, "server.key"),
                require_certificate: tls.require_certificate,
            }
        });
        let password_file = (self.kind == Kind::Mosquitto && !self.users.is_empty()).then(|| {
            let file = root.join("passwords");
            write_password_file(&file, &self.users);
            file
        });
        if self.persistence {
            fs::create_dir(root.join("persistence")).expect("create persistence dir");
        }
        assert!(
            self.kind == Kind::Mosquitto || (self.tls.is_none() && !self.ipv6),
            "TLS and IPv6 listeners are only set up for mosquitto"
        );
        assert!(
            self.kind != Kind::RabbitMq || self.users.len() <= 1,
            "RabbitMQ gets one user, its default user"
        );
        let config_name = match self.kind {
            Kind::Mosquitto => "mosquitto.conf",
            Kind::RabbitMq => "rabbitmq.conf",
            Kind::Nats => "nats.conf",
        };
        let mut broker = Broker {
            config_path: root.join(config_name),
            log_path: root.join("broker.log"),
            epmd: None,
            aux_ports: Vec::new(),
            port: 0,
            tls_port: None,
            options: self,
            tls,
            password_file,
            child: None,
            readers: Vec::new(),
            lines: Arc::new(Mutex::new(Vec::new())),
            probe_addrs: Vec::new(),
            dir,
        };

        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match &broker.options.cluster {
                Some(node) => broker.port = node.port,
                None => broker.port = free_port(broker.options.ipv6),
            }
            broker.tls_port = broker.tls.as_ref().map(|_| free_port(broker.options.ipv6));
            // RabbitMQ: Erlang distribution and epmd.
            broker.aux_ports = match broker.options.kind {
                Kind::RabbitMq => vec![free_port(false), free_port(false)],
                _ => Vec::new(),
            };
            broker.write_config();
            match broker.launch() {
                Ok(()) => return broker,
                Err(failure) if is_port_clash(&failure) && broker.options.cluster.is_none() => {
                    last_failure = failure;
                }
                Err(failure) => panic!("{failure}"),
            }
        }
        panic!("no free port after {PORT_ATTEMPTS} attempts: {last_failure}");
    }
}

/// Whether a start failed because a port was taken meanwhile.
fn is_port_clash(failure: &str) -> bool {
    let failure = failure.to_ascii_lowercase();
    failure.contains("address already in use") || failure.contains("eaddrinuse")
}

/// What a broker printed, shared with the clients of a test so that a client that cannot
/// connect can say what the broker said meanwhile (see [`Broker::output`]).
#[derive(Debug, Clone)]
pub struct BrokerOutput {
    broker: String,
    lines: Arc<Mutex<Vec<LogLine>>>,
}

impl BrokerOutput {
    /// The broker and the last lines it printed.
    pub fn describe(&self) -> String {
        const LAST: usize = 40;
        let lines = self.lines.lock().unwrap();
        let skipped = lines.len().saturating_sub(LAST);
        let mut text = format!(
            "{}, its last {} lines of output:\n",
            self.broker,
            lines.len() - skipped
        );
        for line in &lines[skipped..] {
            let _ = writeln!(text, "  {}", line.text);
        }
        text
    }
}

/// One line mosquitto logged (captured from its standard error).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When the harness read the line: millisecond-precise, unlike the
    /// broker's own timestamp.
    pub at: Instant,
    /// Wall clock time matching [`LogLine::at`].
    pub wall: SystemTime,
    /// The broker's timestamp (UNIX seconds), if the line has one.
    pub broker_time: Option<u64>,
    /// The message without the timestamp prefix.
    pub text: String,
}

/// A real mosquitto process serving on free loopback ports, configured and
/// run in its own temporary directory. Dropping it kills the process.
///
/// The configuration always has `user root` (mosquitto started as root
/// otherwise drops to the `mosquitto` user, which cannot read the temporary
/// directory), logs everything (`log_type all`, `connection_messages true`,
/// UNIX-seconds timestamps) to a file and to standard error, and allows
/// anonymous clients unless users were added.
pub struct Broker {
    options: BrokerBuilder,
    /// RabbitMQ's own epmd (Erlang port mapper), on a loopback port of its own.
    epmd: Option<Child>,
    /// RabbitMQ: the Erlang distribution port and epmd's port.
    aux_ports: Vec<u16>,
    tls: Option<TlsListener>,
    password_file: Option<PathBuf>,
    port: u16,
    tls_port: Option<u16>,
    config_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    readers: Vec<JoinHandle<()>>,
    lines: Arc<Mutex<Vec<LogLine>>>,
    /// Local addresses of the readiness probes, to tell them from clients.
    probe_addrs: Vec<SocketAddr>,
    // Last field: removed after everything else is dropped.
    dir: TempDir,
}

impl Broker {
    /// A broker with one plain listener on 127.0.0.1 and default options.
    pub fn new() -> Broker {
        Broker::builder().start()
    }

    /// Options for a mosquitto broker; see [`BrokerBuilder`].
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// Options for a RabbitMQ node with `rabbitmq_mqtt` (its own node name, ports, epmd
    /// and directories). Only [`BrokerBuilder::user`] applies.
    pub fn rabbitmq() -> BrokerBuilder {
        BrokerBuilder {
            kind: Kind::RabbitMq,
            ..BrokerBuilder::default()
        }
    }

    /// Options for a NATS server with JetStream and MQTT. [`BrokerBuilder::user`] and
    /// [`BrokerBuilder::extra`] (a line of its configuration) apply.
    pub fn nats() -> BrokerBuilder {
        BrokerBuilder {
            kind: Kind::Nats,
            ..BrokerBuilder::default()
        }
    }

    /// A NATS cluster of `nodes` servers with JetStream and MQTT sessions replicated on
    /// every node (`stream_replicas`), started together; returns once each node accepts
    /// MQTT connections.
    pub fn nats_cluster(nodes: usize) -> Vec<Broker> {
        let route_ports: Vec<u16> = (0..nodes).map(|_| free_port(false)).collect();
        let handles: Vec<_> = (0..nodes)
            .map(|index| {
                let builder = BrokerBuilder {
                    kind: Kind::Nats,
                    cluster: Some(ClusterNode {
                        index,
                        route_ports: route_ports.clone(),
                        port: free_port(false),
                        monitor_port: free_port(false),
                    }),
                    ..BrokerBuilder::default()
                };
                thread::spawn(move || builder.start())
            })
            .collect();
        let brokers: Vec<Broker> = handles
            .into_iter()
            .map(|h| h.join().expect("a NATS node starts"))
            .collect();
        for broker in &brokers {
            broker.wait_mqtt_ready(Duration::from_secs(60));
        }
        brokers
    }

    /// The server name of a NATS cluster node, `n1`, `n2` ... in the order
    /// [`Broker::nats_cluster`] returns them.
    #[track_caller]
    pub fn server_name(&self) -> String {
        let node = self.options.cluster.as_ref().expect("a NATS cluster node");
        format!("n{}", node.index + 1)
    }

    /// The server name of the node leading JetStream's meta group as this running cluster
    /// node sees it (its monitoring endpoint `/jsz`), `None` while there is no leader.
    #[track_caller]
    pub fn jetstream_leader(&self) -> Option<String> {
        use std::io::{Read, Write};
        let node = self.options.cluster.as_ref().expect("a NATS cluster node");
        let addr = SocketAddr::new(LOCALHOST_V4.parse().unwrap(), node.monitor_port);
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /jsz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        let jsz: serde_json::Value = serde_json::from_str(body).ok()?;
        jsz["meta_cluster"]["leader"]
            .as_str()
            .filter(|leader| !leader.is_empty())
            .map(str::to_owned)
    }

    /// Which broker this is.
    pub fn kind(&self) -> Kind {
        self.options.kind
    }

    /// Waits until an MQTT 3.1.1 CONNECT gets CONNACK "accepted" (a NATS cluster answers
    /// only once JetStream has a leader); panics with the log after `timeout`.
    #[track_caller]
    pub fn wait_mqtt_ready(&self, timeout: Duration) {
        let addr = SocketAddr::new(self.host().parse().unwrap(), self.port);
        let mut last = String::new();
        let ready = wait_until(
            timeout,
            Duration::from_millis(200),
            || match mqtt_connect_probe(addr) {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    false
                }
            },
        );
        assert!(
            ready,
            "{} on port {} did not accept an MQTT connection within {timeout:?} ({last}); log:\n{}",
            self.kind().name(),
            self.port,
            self.log_text()
        );
    }

    /// The host clients connect to: `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        LOCALHOST_V4
    }

    /// Port of the plain (non-TLS) listener.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the broker has a TLS listener.
    pub fn has_tls(&self) -> bool {
        self.tls_port.is_some()
    }

    /// Port of the TLS listener; panics if the broker has none.
    #[track_caller]
    pub fn tls_port(&self) -> u16 {
        self.tls_port
            .expect("this broker has no TLS listener (use BrokerBuilder::tls)")
    }

    /// The broker's temporary directory (configuration, log, persistence).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the generated `mosquitto.conf`.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Process id of the running broker, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Pid of the process if it has not exited. An exited child is reaped
    /// by `try_wait`, after which its pid must not be signalled any more.
    fn live_pid(&mut self) -> Option<u32> {
        if self.is_running() {
            self.pid()
        } else {
            None
        }
    }

    /// Whether the broker process is alive (a paused broker is alive).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("poll the broker").is_none(),
            None => false,
        }
    }

    /// Starts the broker again after [`Broker::stop`] or [`Broker::kill`],
    /// on the same ports with the same configuration (and, with persistence,
    /// the same database). Waits until it accepts connections.
    ///
    /// Panics if it is already running or does not come up.
    #[track_caller]
    pub fn start(&mut self) {
        assert!(!self.is_running(), "broker is already running");
        self.reap();
        // The old process is gone; its ports can only be busy briefly.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.launch() {
                Ok(()) => return,
                Err(failure)
                    if failure.contains("Address already in use") && Instant::now() < deadline =>
                {
                    thread::sleep(Duration::from_millis(200));
                }
                Err(failure) => panic!("{failure}"),
            }
        }
    }

    /// Sends SIGTERM and waits for the process to exit (mosquitto saves its
    /// persistence database on the way). Falls back to SIGKILL after a
    /// timeout. A paused broker is resumed so it can handle the signal.
    pub fn stop(&mut self) {
        let Some(pid) = self.live_pid() else {
            self.reap();
            return;
        };
        signal(pid, libc::SIGTERM);
        signal(pid, libc::SIGCONT);
        let exited = wait_until(STOP_TIMEOUT * 3, POLL, || !self.is_running());
        if !exited {
            eprintln!(
                "{} ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
                self.kind().name()
            );
            signal(pid, libc::SIGKILL);
        }
        self.reap();
    }

    /// Sends SIGKILL and waits for the process to be gone: an abrupt crash,
    /// no clean disconnects, nothing saved.
    pub fn kill(&mut self) {
        if let Some(pid) = self.live_pid() {
            signal(pid, libc::SIGKILL);
        }
        self.reap();
    }

    /// Freezes the broker with SIGSTOP: its sockets stay open but nothing
    /// is answered (a hung broker).
    #[track_caller]
    pub fn pause(&mut self) {
        let pid = self.live_pid().expect("broker is not running");
        signal(pid, libc::SIGSTOP);
    }

    /// Lets a paused broker continue (SIGCONT).
    #[track_caller]
    pub fn resume(&mut self) {
        let pid = self.live_pid().expect("broker is not running");
        signal(pid, libc::SIGCONT);
    }

    /// The broker log file (all runs of this broker), one line per event,
    /// each `SECONDS: message` with SECONDS a UNIX time. The readiness
    /// probes of each start show up as connections that send nothing;
    /// [`Broker::connection_attempts`] leaves them out.
    pub fn log(&self) -> String {
        match self.kind() {
            Kind::Mosquitto => fs::read_to_string(&self.log_path).unwrap_or_default(),
            // RabbitMQ and NATS log to their output only.
            _ => self.log_text(),
        }
    }

    /// All lines logged so far (all runs), captured from the broker's
    /// standard error with a millisecond-precise arrival time.
    pub fn log_lines(&self) -> Vec<LogLine> {
        self.lines.lock().unwrap().clone()
    }

    /// Lines `New connection from ADDRESS on port PORT.`: every TCP (and
    /// TLS) connection a client opened, whether it got further or not,
    /// except the harness's own readiness probes.
    pub fn connection_attempts(&self) -> Vec<LogLine> {
        let probes: Vec<String> = self
            .probe_addrs
            .iter()
            .map(|addr| format!("New connection from {}:{} ", addr.ip(), addr.port()))
            .collect();
        self.log_lines()
            .into_iter()
            .filter(|line| line.text.starts_with("New connection from "))
            .filter(|line| !probes.iter().any(|probe| line.text.starts_with(probe)))
            .collect()
    }

    /// Waits until a log line containing `needle` appears and returns the
    /// first such line; panics with the log after `timeout`.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> LogLine {
        let mut found = None;
        wait_until(timeout, POLL, || {
            found = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.text.contains(needle))
                .cloned();
            found.is_some()
        });
        match found {
            Some(line) => line,
            None => panic!(
                "broker did not log {needle:?} within {timeout:?}; log:\n{}",
                self.log_text()
            ),
        }
    }

    /// A handle on the broker's output, for clients that quote it when they fail.
    pub fn output(&self) -> BrokerOutput {
        BrokerOutput {
            broker: format!("{} on port {}", self.kind().name(), self.port),
            lines: Arc::clone(&self.lines),
        }
    }

    /// Captured log as text, for failure messages.
    pub fn log_text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .fold(String::new(), |mut text, line| {
                let _ = writeln!(text, "{}", line.text);
                text
            })
    }

    /// Writes the broker's configuration for the current ports.
    fn write_config(&self) {
        match self.options.kind {
            Kind::Mosquitto => self.write_mosquitto_config(),
            Kind::RabbitMq => self.write_rabbitmq_config(),
            Kind::Nats => self.write_nats_config(),
        }
    }

    /// `rabbitmq.conf`: only the MQTT listener (no AMQP), logs to the console (captured),
    /// the plugin file naming `rabbitmq_mqtt`.
    fn write_rabbitmq_config(&self) {
        let root = self.dir.path();
        let mut conf = vec![
            "# Written by the integration test harness (tests/common).".to_string(),
            "listeners.tcp = none".into(),
            format!("mqtt.listeners.tcp.default = {LOCALHOST_V4}:{}", self.port),
            "log.console = true".into(),
            "log.console.level = info".into(),
            "log.file = false".into(),
            // Our clients all come from loopback anyway.
            "loopback_users = none".into(),
        ];
        match self.options.users.first() {
            Some((user, password)) => {
                conf.push(format!("default_user = {user}"));
                conf.push(format!("default_pass = {password}"));
                conf.push("mqtt.allow_anonymous = false".into());
            }
            None => conf.push("mqtt.allow_anonymous = true".into()),
        }
        conf.extend(self.options.extra.iter().cloned());
        fs::write(&self.config_path, conf.join("\n") + "\n").expect("write rabbitmq.conf");
        fs::write(root.join("enabled_plugins"), "[rabbitmq_mqtt].\n")
            .expect("write enabled_plugins");
    }

    /// `nats.conf`: the client port picked by the server, JetStream in the broker's
    /// directory (so sessions survive a restart), MQTT on our port; in a cluster the routes
    /// to every node and sessions replicated on all of them.
    fn write_nats_config(&self) {
        let root = self.dir.path();
        let name = match &self.options.cluster {
            Some(node) => format!("n{}", node.index + 1),
            None => "harness".into(),
        };
        let mut conf = vec![
            "# Written by the integration test harness (tests/common).".to_string(),
            format!("server_name: {name}"),
            format!("listen: \"{LOCALHOST_V4}:-1\""),
            "logtime: true".into(),
            format!(
                "jetstream {{ store_dir: \"{}\" }}",
                root.join("jetstream").display()
            ),
        ];
        // A message in flight to a persistent subscriber when the server stopped is
        // delivered again after `ack_wait` (30 s by default): 2 s keeps tests short.
        let mut mqtt = format!(
            "mqtt {{ listen: \"{LOCALHOST_V4}:{}\", ack_wait: \"2s\"",
            self.port
        );
        if let Some(node) = &self.options.cluster {
            let routes: Vec<String> = node
                .route_ports
                .iter()
                .map(|port| format!("\"nats-route://{LOCALHOST_V4}:{port}\""))
                .collect();
            conf.push(format!(
                "cluster {{ name: harness, listen: \"{LOCALHOST_V4}:{}\", routes: [{}] }}",
                node.route_ports[node.index],
                routes.join(", ")
            ));
            conf.push(format!("http: \"{LOCALHOST_V4}:{}\"", node.monitor_port));
            mqtt.push_str(&format!(", stream_replicas: {}", node.route_ports.len()));
        }
        mqtt.push_str(" }");
        conf.push(mqtt);
        if !self.options.users.is_empty() {
            let users: Vec<String> = self
                .options
                .users
                .iter()
                .map(|(user, password)| format!("{{ user: \"{user}\", password: \"{password}\" }}"))
                .collect();
            conf.push(format!("authorization {{ users: [{}] }}", users.join(", ")));
        }
        conf.extend(self.options.extra.iter().cloned());
        fs::write(&self.config_path, conf.join("\n") + "\n").expect("write nats.conf");
    }

    /// Writes `mosquitto.conf` for the current ports.
    fn write_mosquitto_config(&self) {
        let root = self.dir.path();
        let options = &self.options;
        let mut conf = String::new();
        let mut line = |text: String| {
            conf.push_str(&text);
            conf.push('\n');
        };
        line("# Written by the integration test harness (tests/common).".into());
        line("# Started as root, mosquitto would drop to the mosquitto user".into());
        line("# and could not read this root-only directory.".into());
        line("user root".into());
        line(format!("log_dest file {}", self.log_path.display()));
        line("log_dest stderr".into());
        line("log_type all".into());
        line("log_timestamp true".into());
        line("log_timestamp_format %s".into());
        line("connection_messages true".into());
        match &self.password_file {
            Some(file) => {
                line("allow_anonymous false".into());
                line(format!("password_file {}", file.display()));
            }
            None => line("allow_anonymous true".into()),
        }
        if options.persistence {
            line("persistence true".into());
            // Mosquitto appends the file name: the trailing slash matters.
            line(format!(
                "persistence_location {}/",
                root.join("persistence").display()
            ));
        } else {
            line("persistence false".into());
        }
        if let Some(messages) = options.max_inflight {
            line(format!("max_inflight_messages {messages}"));
        }
        if let Some(messages) = options.max_queued {
            line(format!("max_queued_messages {messages}"));
        }
        for address in self.addresses() {
            line(format!("listener {} {}", self.port, address));
        }
        if let (Some(tls), Some(port)) = (&self.tls, self.tls_port) {
            for address in self.addresses() {
                line(format!("listener {port} {address}"));
                line(format!("cafile {}", tls.ca.display()));
                line(format!("certfile {}", tls.cert.display()));
                line(format!("keyfile {}", tls.key.display()));
                line(format!("require_certificate {}", tls.require_certificate));
            }
        }
        for extra in &options.extra {
            line(extra.clone());
        }
        fs::write(&self.config_path, conf).expect("write mosquitto.conf");
    }

    /// Loopback addresses the listeners bind to.
    fn addresses(&self) -> Vec<&'static str> {
        if self.options.ipv6 {
            vec![LOCALHOST_V4, LOCALHOST_V6]
        } else {
            vec![LOCALHOST_V4]
        }
    }

    /// Socket addresses of all listeners.
    fn listener_addrs(&self) -> Vec<SocketAddr> {
        let ports = std::iter::once(self.port).chain(self.tls_port);
        ports
            .flat_map(|port| {
                self.addresses()
                    .into_iter()
                    .map(move |ip| SocketAddr::new(ip.parse().unwrap(), port))
            })
            .collect()
    }

    /// Spawns mosquitto and waits until every listener accepts a
    /// connection. On failure the process is gone and the error text
    /// contains its output.
    fn launch(&mut self) -> Result<(), String> {
        let program = match self.options.kind {
            Kind::Mosquitto => MOSQUITTO,
            Kind::RabbitMq => RABBITMQ,
            Kind::Nats => NATS,
        };
        let mut command = Command::new(program);
        match self.options.kind {
            Kind::Mosquitto | Kind::Nats => {
                command.arg("-c").arg(&self.config_path);
            }
            Kind::RabbitMq => self.rabbitmq_environment(&mut command),
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} (run scripts/deps.sh): {e}"));
        let first_line = self.lines.lock().unwrap().len();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        self.readers = vec![
            read_lines(stdout, Arc::clone(&self.lines)),
            read_lines(stderr, Arc::clone(&self.lines)),
        ];
        self.child = Some(child);

        let mut pending = self.listener_addrs();
        let timeout = match self.options.kind {
            Kind::RabbitMq => RABBITMQ_START_TIMEOUT,
            _ => START_TIMEOUT,
        };
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() {
            if !self.is_running() {
                self.reap();
                return Err(self.start_failure("exited during start-up", first_line));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(self.start_failure("did not accept connections in time", first_line));
            }
            pending.retain(
                |addr| match TcpStream::connect_timeout(addr, Duration::from_secs(1)) {
                    Ok(probe) => {
                        if let Ok(local) = probe.local_addr() {
                            self.probe_addrs.push(local);
                        }
                        false
                    }
                    Err(_) => true,
                },
            );
            if !pending.is_empty() {
                thread::sleep(POLL);
            }
        }
        Ok(())
    }

    fn start_failure(&self, what: &str, first_line: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let output: Vec<&str> = lines[first_line..]
            .iter()
            .map(|l| l.text.as_str())
            .collect();
        format!(
            "{} {what}\nconfig {}:\n{}\noutput:\n{}",
            self.kind().name(),
            self.config_path.display(),
            fs::read_to_string(&self.config_path).unwrap_or_default(),
            output.join("\n")
        )
    }

    /// Waits for the exited (or killed) process and its log readers.
    fn reap(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// RabbitMQ's environment: node name, directories, ports, and an epmd of its own on
    /// loopback (started here, on the first launch). `RUNNING_UNDER_SYSTEMD` makes the
    /// script exec the Erlang VM, so that the child is the broker itself and signals reach
    /// it.
    fn rabbitmq_environment(&mut self, command: &mut Command) {
        let root = self.dir.path().to_path_buf();
        let (dist_port, epmd_port) = (self.aux_ports[0], self.aux_ports[1]);
        if self.epmd.is_none() {
            let epmd = Command::new(EPMD)
                .args(["-address", LOCALHOST_V4, "-port", &epmd_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {EPMD} (run scripts/deps.sh): {e}"));
            self.epmd = Some(epmd);
            let addr = SocketAddr::new(LOCALHOST_V4.parse().unwrap(), epmd_port);
            wait_until(START_TIMEOUT, POLL, || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
            });
        }
        let path = |name: &str| root.join(name).display().to_string();
        command
            .env("HOME", &root)
            .env(
                "RABBITMQ_NODENAME",
                format!("harness{}@localhost", self.port),
            )
            .env("RABBITMQ_CONFIG_FILE", &self.config_path)
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", path("mnesia"))
            .env("RABBITMQ_LOG_BASE", path("log"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", path("plugins-expand"))
            .env("RABBITMQ_PID_FILE", path("rabbitmq.pid"))
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("ERL_EPMD_PORT", epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", LOCALHOST_V4)
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RUNNING_UNDER_SYSTEMD", "1");
    }
}

/// Reads a broker's output into `lines`, one [`LogLine`] each.
fn read_lines(
    stream: impl std::io::Read + Send + 'static,
    lines: Arc<Mutex<Vec<LogLine>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for text in BufReader::new(stream).lines() {
            let Ok(text) = text else { break };
            lines.lock().unwrap().push(parse_log_line(&text));
        }
    })
}

/// One MQTT 3.1.1 CONNECT (clean session, no credentials) and its CONNACK: `Ok` when the
/// broker accepts it, else what went wrong.
fn mqtt_connect_probe(addr: SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let id = b"harness-probe";
    let mut packet = vec![0x10, (10 + 2 + id.len()) as u8];
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    packet.extend_from_slice(&[0, id.len() as u8]);
    packet.extend_from_slice(id);
    stream.write_all(&packet).map_err(|e| e.to_string())?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(|e| format!("no CONNACK: {e}"))?;
    let _ = stream.write_all(&[0xe0, 0]);
    match connack {
        [0x20, 2, _, 0] => Ok(()),
        other => Err(format!("CONNACK {other:?}")),
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

/// Sends `sig` to the process `pid` (one we started).
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our
    // own child, which we have not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Splits `SECONDS: message`.
fn parse_log_line(text: &str) -> LogLine {
    let (broker_time, message) = match text.split_once(": ") {
        Some((stamp, rest)) if stamp.bytes().all(|b| b.is_ascii_digit()) => {
            (stamp.parse().ok(), rest)
        }
        _ => (None, text),
    };
    LogLine {
        at: Instant::now(),
        wall: SystemTime::now(),
        broker_time,
        text: message.to_owned(),
    }
}

/// Generates a mosquitto password file with `mosquitto_passwd -b`.
fn write_password_file(file: &Path, users: &[(String, String)]) {
    for (index, (name, password)) in users.iter().enumerate() {
        let mut command = Command::new("mosquitto_passwd");
        if index == 0 {
            command.arg("-c");
        }
        let output = command
            .arg("-b")
            .arg(file)
            .arg(name)
            .arg(password)
            .output()
            .expect("run mosquitto_passwd (is mosquitto installed?)");
        assert!(
            output.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
