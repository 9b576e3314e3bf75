// SPDX-License-Identifier: MPL-2.0

//! A real MQTT subscriber (rumqttc) that records what it receives.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::v5;
use rumqttc::{ConnectionError, Event, Incoming, Outgoing, QoS, Transport};

use super::{Broker, BrokerOutput, TlsFiles};

/// Default time to connect and get the SUBACK (generous: loaded CI).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Time `disconnect()` waits for the client thread to finish.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between reconnection attempts after a connection error.
const RETRY_INTERVAL: Duration = Duration::from_millis(100);
/// Largest packet accepted (payloads of the element under test can be big).
const MAX_PACKET: u32 = 64 * 1024 * 1024;
/// Session expiry requested by persistent MQTT 5 sessions, in seconds.
const SESSION_EXPIRY: u32 = 3600;

/// MQTT protocol version of a [`Subscriber`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (rumqttc's default module).
    #[default]
    V311,
    /// MQTT 5 (rumqttc's `v5` module).
    V5,
}

/// One PUBLISH the subscriber received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name the message was published to.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// QoS the broker delivered it with (the lower of publish and
    /// subscription QoS).
    pub qos: QoS,
    /// Retain flag: set when the message comes from the broker's retained
    /// store (at subscription time), not on live forwarding.
    pub retain: bool,
    /// DUP flag: a redelivery.
    pub dup: bool,
    /// MQTT 5 user properties in order (empty with MQTT 3.1.1).
    pub user_properties: Vec<(String, String)>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 payload format indicator (1: UTF-8).
    pub payload_format_indicator: Option<u8>,
    /// MQTT 5 message expiry interval as forwarded by the broker.
    pub message_expiry_interval: Option<u32>,
    /// MQTT 5 response topic.
    pub response_topic: Option<String>,
    /// MQTT 5 correlation data.
    pub correlation_data: Option<Vec<u8>>,
    /// When the subscriber received it.
    pub received_at: Instant,
}

impl Message {
    /// The payload as UTF-8 text; panics if it is not.
    #[track_caller]
    pub fn payload_str(&self) -> &str {
        match std::str::from_utf8(&self.payload) {
            Ok(text) => text,
            Err(e) => panic!("payload on {:?} is not UTF-8: {e}", self.topic),
        }
    }

    /// First value of the MQTT 5 user property `key`.
    pub fn user_property(&self, key: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Short description for failure messages.
    fn summary(&self) -> String {
        let payload = String::from_utf8_lossy(&self.payload);
        let shown: String = payload.chars().take(60).collect();
        let more = if shown.len() < payload.len() {
            "…"
        } else {
            ""
        };
        format!(
            "{} q{} r{} d{} {shown:?}{more}",
            self.topic, self.qos as u8, self.retain as u8, self.dup as u8
        )
    }
}

/// TLS settings of a subscriber.
#[derive(Debug, Clone)]
struct ClientTls {
    ca: PathBuf,
    client: Option<(PathBuf, PathBuf)>,
}

/// Options of a [`Subscriber`]; create with [`Subscriber::builder`], finish
/// with [`SubscriberBuilder::connect`] or [`SubscriberBuilder::try_connect`].
#[derive(Debug, Clone)]
pub struct SubscriberBuilder {
    host: String,
    plain_port: u16,
    tls_port: Option<u16>,
    port: Option<u16>,
    topic: String,
    protocol: Protocol,
    qos: QoS,
    client_id: Option<String>,
    clean_session: bool,
    credentials: Option<(String, String)>,
    tls: Option<ClientTls>,
    keep_alive: Duration,
    connect_timeout: Duration,
    /// The broker's output, quoted when connecting fails.
    broker_output: BrokerOutput,
}

impl SubscriberBuilder {
    /// Uses MQTT 5 instead of 3.1.1.
    pub fn v5(self) -> Self {
        self.protocol(Protocol::V5)
    }

    /// Protocol version (default MQTT 3.1.1).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Maximum QoS of the subscription (default QoS 1).
    pub fn qos(mut self, qos: QoS) -> Self {
        self.qos = qos;
        self
    }

    /// Client id (default: unique per subscriber).
    pub fn client_id(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self
    }

    /// A persistent session with the fixed client `id`: clean session off
    /// (MQTT 5: clean start off and a session expiry of an hour), so the
    /// broker keeps the subscription and queues QoS 1/2 messages while the
    /// subscriber is away.
    pub fn persistent_session(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self.clean_session = false;
        self
    }

    /// User name and password.
    pub fn credentials(mut self, user: &str, password: &str) -> Self {
        self.credentials = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Connects to the broker's TLS listener, trusting `files.ca` and
    /// presenting `files.client_cert`.
    pub fn tls(self, files: &TlsFiles) -> Self {
        self.tls_ca(&files.ca)
            .client_cert(&files.client_cert, &files.client_key)
    }

    /// Connects to the broker's TLS listener trusting only `ca` (no client
    /// certificate unless [`Self::client_cert`] is called too).
    pub fn tls_ca(mut self, ca: &Path) -> Self {
        let client = self.tls.take().and_then(|tls| tls.client);
        self.tls = Some(ClientTls {
            ca: ca.to_path_buf(),
            client,
        });
        self
    }

    /// Presents this client certificate (call after [`Self::tls_ca`]).
    pub fn client_cert(mut self, cert: &Path, key: &Path) -> Self {
        let tls = self
            .tls
            .as_mut()
            .expect("client_cert() needs tls_ca() first");
        tls.client = Some((cert.to_path_buf(), key.to_path_buf()));
        self
    }

    /// Host name or address to connect to (default the broker's host,
    /// 127.0.0.1); with TLS it is also the name the certificate must match.
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    /// Port to connect to (default: the broker's plain or TLS port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// MQTT keep alive (default 60 s, at least 1 s).
    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// How long connecting and subscribing may take (default 15 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects and subscribes; panics if the subscription is not active
    /// (SUBACK received) within the connect timeout.
    #[track_caller]
    pub fn connect(self) -> Subscriber {
        let topic = self.topic.clone();
        let broker_output = self.broker_output.clone();
        match self.try_connect() {
            Ok(subscriber) => subscriber,
            Err(error) => panic!(
                "subscriber for {topic:?}: {error}\n{}",
                broker_output.describe()
            ),
        }
    }

    /// Connects and subscribes. Fails fast when the broker refuses the
    /// connection (CONNACK refusal), TLS fails or the subscription is
    /// refused, and otherwise after the connect timeout; the error text
    /// names the cause.
    pub fn try_connect(self) -> Result<Subscriber, String> {
        static NEXT_ID: AtomicUsize = AtomicUsize::new(0);
        let client_id = self.client_id.clone().unwrap_or_else(|| {
            format!(
                "harness-sub-{}-{}",
                std::process::id(),
                NEXT_ID.fetch_add(1, Ordering::Relaxed)
            )
        });
        let mut subscriber = Subscriber {
            options: self,
            client_id,
            shared: Arc::new(Shared::default()),
            session: None,
        };
        subscriber.open_session(true)?;
        Ok(subscriber)
    }
}

/// State shared with the client thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    messages: Vec<Message>,
    /// Connections on which the subscription became active.
    subscriptions: usize,
    connected: bool,
    session_present: Option<bool>,
    last_error: Option<String>,
    /// Why the current session thread gave up before ever subscribing.
    fatal: Option<String>,
    /// Whether a client thread is running.
    running: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until `done` holds or `timeout` passes; returns the state.
    fn wait(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&State) -> bool,
    ) -> (MutexGuard<'_, State>, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if done(&state) {
                return (state, true);
            }
            let now = Instant::now();
            if now >= deadline {
                return (state, false);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }
}

/// Handle to one running client thread.
struct Session {
    control: Control,
    stop: Arc<AtomicBool>,
}

/// The request side of a rumqttc client of either protocol version.
#[derive(Clone)]
enum Control {
    V311(rumqttc::Client),
    V5(v5::Client),
}

impl Control {
    fn subscribe(&self, topic: &str, qos: QoS) -> Result<(), String> {
        let result = match self {
            Control::V311(client) => client.try_subscribe(topic, qos).map_err(|e| e.to_string()),
            Control::V5(client) => client
                .try_subscribe(topic, qos_to_v5(qos))
                .map_err(|e| e.to_string()),
        };
        result.map_err(|e| format!("subscribe request: {e}"))
    }

    fn disconnect(&self) {
        // Fails only if the thread is already gone.
        match self {
            Control::V311(client) => {
                let _ = client.try_disconnect();
            }
            Control::V5(client) => {
                let _ = client.try_disconnect();
            }
        }
    }
}

/// What the client thread makes of one rumqttc event.
enum Step {
    ConnAck {
        session_present: bool,
    },
    SubAck(Result<(), String>),
    Publish(Box<Message>),
    DisconnectSent,
    Other,
    /// A connection error; `fatal` if it would recur on every attempt
    /// (refused CONNACK, TLS failure), so a new subscriber gives up.
    Error {
        text: String,
        fatal: bool,
    },
}

/// A real MQTT client subscribed to one topic filter, recording every
/// PUBLISH it receives, from a thread that reconnects after connection
/// errors (every 100 ms), e.g. across a broker restart.
///
/// After a reconnect it subscribes again unless the broker reports the
/// session as present (persistent session): then the broker's own state
/// is what delivers, which persistence tests rely on.
///
/// Dropping it sends DISCONNECT (briefly waiting for it to go out).
pub struct Subscriber {
    options: SubscriberBuilder,
    client_id: String,
    shared: Arc<Shared>,
    session: Option<Session>,
}

impl Subscriber {
    /// Subscribes to `topic` (a filter; wildcards allowed) on the plain
    /// listener of `broker` with MQTT 3.1.1 and QoS 1, and returns once the
    /// SUBACK arrived, so nothing published afterwards is missed.
    #[track_caller]
    pub fn new(broker: &Broker, topic: &str) -> Subscriber {
        Subscriber::builder(broker, topic).connect()
    }

    /// Options for a subscriber to `topic` on `broker`; see
    /// [`SubscriberBuilder`].
    pub fn builder(broker: &Broker, topic: &str) -> SubscriberBuilder {
        SubscriberBuilder {
            host: broker.host().to_owned(),
            plain_port: broker.port(),
            tls_port: broker.has_tls().then(|| broker.tls_port()),
            port: None,
            topic: topic.to_owned(),
            protocol: Protocol::V311,
            qos: QoS::AtLeastOnce,
            client_id: None,
            clean_session: true,
            credentials: None,
            tls: None,
            keep_alive: Duration::from_secs(60),
            connect_timeout: CONNECT_TIMEOUT,
            broker_output: broker.output(),
        }
    }

    /// The MQTT client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The subscribed topic filter.
    pub fn topic(&self) -> &str {
        &self.options.topic
    }

    /// Waits until at least `n` messages arrived in total and returns all
    /// received so far (in arrival order). Panics after `timeout` saying how
    /// many arrived and what they were.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Message> {
        let (state, done) = self.shared.wait(timeout, |state| state.messages.len() >= n);
        if !done {
            panic!(
                "subscriber {:?} on {:?}: expected {n} message(s) within {timeout:?}, \
                 {} arrived{}",
                self.client_id,
                self.options.topic,
                state.messages.len(),
                describe(&state)
            );
        }
        state.messages.clone()
    }

    /// Snapshot of all messages received so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.lock().messages.clone()
    }

    /// Number of messages received so far.
    pub fn count(&self) -> usize {
        self.shared.lock().messages.len()
    }

    /// Waits `settle` (a deliberate wait: it checks that nothing more
    /// comes) and then asserts exactly `expected` messages arrived in total.
    #[track_caller]
    pub fn assert_count_after(&self, expected: usize, settle: Duration) {
        thread::sleep(settle);
        let state = self.shared.lock();
        assert_eq!(
            state.messages.len(),
            expected,
            "subscriber {:?} on {:?}: unexpected number of messages after {settle:?}{}",
            self.client_id,
            self.options.topic,
            describe(&state)
        );
    }

    /// Waits until the subscription has become active on at least `n`
    /// connections (1 after construction; one more per reconnect), e.g.
    /// `wait_subscribed(2, ..)` after a broker restart. Panics on timeout.
    #[track_caller]
    pub fn wait_subscribed(&self, n: usize, timeout: Duration) {
        let (state, done) = self.shared.wait(timeout, |state| state.subscriptions >= n);
        if !done {
            panic!(
                "subscriber {:?}: subscription active on {} connection(s), \
                 expected {n} within {timeout:?}{}",
                self.client_id,
                state.subscriptions,
                describe(&state)
            );
        }
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// The session-present flag of the latest CONNACK.
    pub fn session_present(&self) -> Option<bool> {
        self.shared.lock().session_present
    }

    /// The latest connection error, if any.
    pub fn last_error(&self) -> Option<String> {
        self.shared.lock().last_error.clone()
    }

    /// Disconnects cleanly (DISCONNECT) and stops the client thread; the
    /// received messages are kept. With a persistent session the broker
    /// now queues QoS 1/2 messages for this client id.
    #[track_caller]
    pub fn disconnect(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        session.stop.store(true, Ordering::SeqCst);
        session.control.disconnect();
        let (state, done) = self.shared.wait(DISCONNECT_TIMEOUT, |state| !state.running);
        assert!(
            done,
            "subscriber {:?} did not stop within {DISCONNECT_TIMEOUT:?}{}",
            self.client_id,
            describe(&state)
        );
    }

    /// Connects again after [`Subscriber::disconnect`] with the same client
    /// id and options. If the broker still has the session
    /// ([`Subscriber::session_present`]) it does not subscribe again, so
    /// what arrives is what the broker kept. Panics if not subscribed in
    /// time.
    #[track_caller]
    pub fn reconnect(&mut self) {
        assert!(self.session.is_none(), "subscriber is still connected");
        if let Err(error) = self.open_session(false) {
            panic!("subscriber {:?} reconnect: {error}", self.client_id);
        }
    }

    /// Starts a client thread and waits for the subscription to be active.
    /// With `subscribe_always` it subscribes even if the session is present.
    fn open_session(&mut self, subscribe_always: bool) -> Result<(), String> {
        let options = &self.options;
        let port = options.port.unwrap_or(match options.tls {
            Some(_) => options
                .tls_port
                .ok_or("TLS subscriber, but the broker has no TLS listener")?,
            None => options.plain_port,
        });
        let transport = match &options.tls {
            None => Transport::tcp(),
            Some(tls) => {
                let read = |path: &Path| {
                    fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))
                };
                let client = match &tls.client {
                    Some((cert, key)) => Some((read(cert)?, read(key)?)),
                    None => None,
                };
                Transport::tls(read(&tls.ca)?, client, None)
            }
        };
        let before = {
            let mut state = self.shared.lock();
            state.fatal = None;
            state.running = true;
            state.subscriptions
        };
        let stop = Arc::new(AtomicBool::new(false));
        let driver = Driver {
            shared: Arc::clone(&self.shared),
            stop: Arc::clone(&stop),
            topic: options.topic.clone(),
            qos: options.qos,
            need_subscribe: subscribe_always,
        };
        let control = match options.protocol {
            Protocol::V311 => {
                let mut mqtt = rumqttc::MqttOptions::new(&self.client_id, &options.host, port);
                mqtt.set_clean_session(options.clean_session)
                    .set_keep_alive(options.keep_alive)
                    .set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize)
                    .set_transport(transport);
                if let Some((user, password)) = &options.credentials {
                    mqtt.set_credentials(user, password);
                }
                let (client, connection) = rumqttc::Client::new(mqtt, 10);
                let control = Control::V311(client);
                driver.spawn(control.clone(), connection, step_v311);
                control
            }
            Protocol::V5 => {
                let mut mqtt = v5::MqttOptions::new(&self.client_id, &options.host, port);
                mqtt.set_clean_start(options.clean_session)
                    .set_keep_alive(options.keep_alive)
                    .set_max_packet_size(Some(MAX_PACKET))
                    .set_transport(transport);
                if !options.clean_session {
                    mqtt.set_session_expiry_interval(Some(SESSION_EXPIRY));
                }
                if let Some((user, password)) = &options.credentials {
                    mqtt.set_credentials(user, password);
                }
                let (client, connection) = v5::Client::new(mqtt, 10);
                let control = Control::V5(client);
                driver.spawn(control.clone(), connection, step_v5);
                control
            }
        };
        self.session = Some(Session { control, stop });

        let timeout = self.options.connect_timeout;
        let (state, done) = self.shared.wait(timeout, |state| {
            state.subscriptions > before || state.fatal.is_some() || !state.running
        });
        let failure = if let Some(fatal) = &state.fatal {
            Some(fatal.clone())
        } else if !done {
            Some(format!(
                "not subscribed within {timeout:?} to {}:{port}{}",
                self.options.host,
                describe(&state)
            ))
        } else {
            None
        };
        drop(state);
        match failure {
            Some(failure) => {
                self.disconnect();
                Err(failure)
            }
            None => Ok(()),
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            session.stop.store(true, Ordering::SeqCst);
            session.control.disconnect();
            // Let the DISCONNECT go out if the broker is there; never hang.
            let _ = self
                .shared
                .wait(Duration::from_secs(2), |state| !state.running);
        }
    }
}

/// Connection state and recent messages for failure messages.
fn describe(state: &State) -> String {
    let mut text = format!(
        "\n  connected: {}, session present: {:?}, subscriptions: {}, last error: {}",
        state.connected,
        state.session_present,
        state.subscriptions,
        state.last_error.as_deref().unwrap_or("none")
    );
    let skip = state.messages.len().saturating_sub(10);
    if skip > 0 {
        let _ = write!(text, "\n  ({skip} earlier message(s) not shown)");
    }
    for message in &state.messages[skip..] {
        let _ = write!(text, "\n  - {}", message.summary());
    }
    text
}

/// The client thread's logic, shared by both protocol versions.
struct Driver {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    topic: String,
    qos: QoS,
    /// Subscribe on the next CONNACK even if the session is present.
    need_subscribe: bool,
}

impl Driver {
    /// Runs `connection` on a new thread, translating events with `step`.
    fn spawn<C, E>(
        mut self,
        control: Control,
        mut connection: C,
        step: fn(Result<E, StepError>) -> Step,
    ) where
        C: Receive<Item = E> + Send + 'static,
        E: 'static,
    {
        thread::Builder::new()
            .name("harness-subscriber".into())
            .spawn(move || {
                while let Some(item) = connection.receive() {
                    if !self.handle(step(item), &control) {
                        break;
                    }
                }
                self.shared.update(|state| {
                    state.connected = false;
                    state.running = false;
                });
            })
            .expect("spawn subscriber thread");
    }

    /// Handles one step; returns whether to keep going.
    fn handle(&mut self, step: Step, control: &Control) -> bool {
        let stopping = self.stop.load(Ordering::SeqCst);
        match step {
            Step::ConnAck { session_present } => {
                let subscribe = !stopping && (self.need_subscribe || !session_present);
                let request = subscribe.then(|| control.subscribe(&self.topic, self.qos));
                self.shared.update(|state| {
                    state.connected = true;
                    state.session_present = Some(session_present);
                    match request {
                        // The broker kept the subscription: active already.
                        None if !stopping => state.subscriptions += 1,
                        Some(Err(error)) => state.last_error = Some(error),
                        _ => {}
                    }
                });
            }
            Step::SubAck(Ok(())) => {
                self.need_subscribe = false;
                self.shared.update(|state| state.subscriptions += 1);
            }
            Step::SubAck(Err(error)) => {
                let error = format!("subscription to {:?} refused: {error}", self.topic);
                let first = self.need_subscribe;
                self.shared.update(|state| {
                    if first {
                        state.fatal = Some(error.clone());
                    }
                    state.last_error = Some(error);
                });
                if first {
                    return false;
                }
            }
            Step::Publish(message) => self.shared.update(|state| state.messages.push(*message)),
            Step::DisconnectSent => return !stopping,
            Step::Other => {}
            Step::Error { text, fatal } => {
                let give_up = fatal && self.need_subscribe;
                self.shared.update(|state| {
                    state.connected = false;
                    if give_up {
                        state.fatal = Some(text.clone());
                    }
                    state.last_error = Some(text);
                });
                if stopping || give_up {
                    return false;
                }
                thread::sleep(RETRY_INTERVAL);
            }
        }
        true
    }
}

/// Error of one `recv()`, already formatted and classified.
struct StepError {
    text: String,
    fatal: bool,
}

/// Blocking event source of either protocol version's `Connection`.
trait Receive {
    type Item;
    /// Next event; `None` when the client is gone.
    fn receive(&mut self) -> Option<Result<Self::Item, StepError>>;
}

impl Receive for rumqttc::Connection {
    type Item = Event;

    fn receive(&mut self) -> Option<Result<Event, StepError>> {
        let item = self.recv().ok()?;
        Some(item.map_err(|error| {
            let fatal = match &error {
                ConnectionError::ConnectionRefused(_) | ConnectionError::Tls(_) => true,
                ConnectionError::Io(io) => io_is_fatal(io),
                _ => false,
            };
            StepError {
                text: error.to_string(),
                fatal,
            }
        }))
    }
}

impl Receive for v5::Connection {
    type Item = v5::Event;

    fn receive(&mut self) -> Option<Result<v5::Event, StepError>> {
        let item = self.recv().ok()?;
        Some(item.map_err(|error| {
            let fatal = match &error {
                v5::ConnectionError::ConnectionRefused(_) | v5::ConnectionError::Tls(_) => true,
                v5::ConnectionError::Io(io) => io_is_fatal(io),
                _ => false,
            };
            StepError {
                text: error.to_string(),
                fatal,
            }
        }))
    }
}

/// rustls reports handshake failures (bad certificate, alerts from the
/// broker) as `InvalidData` I/O errors: retrying cannot help.
fn io_is_fatal(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::InvalidData
}

fn step_v311(item: Result<Event, StepError>) -> Step {
    match item {
        Err(StepError { text, fatal }) => Step::Error { text, fatal },
        Ok(Event::Incoming(Incoming::ConnAck(ack))) => Step::ConnAck {
            session_present: ack.session_present,
        },
        Ok(Event::Incoming(Incoming::SubAck(ack))) => Step::SubAck(
            if ack
                .return_codes
                .iter()
                .all(|code| matches!(code, rumqttc::SubscribeReasonCode::Success(_)))
            {
                Ok(())
            } else {
                Err(format!("{:?}", ack.return_codes))
            },
        ),
        Ok(Event::Incoming(Incoming::Publish(publish))) => Step::Publish(Box::new(Message {
            topic: publish.topic,
            payload: publish.payload.to_vec(),
            qos: publish.qos,
            retain: publish.retain,
            dup: publish.dup,
            user_properties: Vec::new(),
            content_type: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            response_topic: None,
            correlation_data: None,
            received_at: Instant::now(),
        })),
        Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::DisconnectSent,
        Ok(_) => Step::Other,
    }
}

fn step_v5(item: Result<v5::Event, StepError>) -> Step {
    use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
    match item {
        Err(StepError { text, fatal }) => Step::Error { text, fatal },
        Ok(v5::Event::Incoming(Packet::ConnAck(ack))) => Step::ConnAck {
            session_present: ack.session_present,
        },
        Ok(v5::Event::Incoming(Packet::SubAck(ack))) => Step::SubAck(
            if ack
                .return_codes
                .iter()
                .all(|code| matches!(code, SubscribeReasonCode::Success(_)))
            {
                Ok(())
            } else {
                Err(format!("{:?}", ack.return_codes))
            },
        ),
        Ok(v5::Event::Incoming(Packet::Publish(publish))) => {
            let properties = publish.properties.unwrap_or_default();
            Step::Publish(Box::new(Message {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                payload: publish.payload.to_vec(),
                qos: qos_from_v5(publish.qos),
                retain: publish.retain,
                dup: publish.dup,
                user_properties: properties.user_properties,
                content_type: properties.content_type,
                payload_format_indicator: properties.payload_format_indicator,
                message_expiry_interval: properties.message_expiry_interval,
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data.map(|data| data.to_vec()),
                received_at: Instant::now(),
            }))
        }
        Ok(v5::Event::Outgoing(Outgoing::Disconnect)) => Step::DisconnectSent,
        Ok(_) => Step::Other,
    }
}

fn qos_to_v5(qos: QoS) -> v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos_from_v5(qos: v5::mqttbytes::QoS) -> QoS {
    match qos {
        v5::mqttbytes::QoS::AtMostOnce => QoS::AtMostOnce,
        v5::mqttbytes::QoS::AtLeastOnce => QoS::AtLeastOnce,
        v5::mqttbytes::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}
