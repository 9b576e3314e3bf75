// SPDX-License-Identifier: MPL-2.0

//! A connection to the broker and the sinks publishing over it: one rumqttc event loop,
//! driven by one task on the shared runtime, with two parts:
//! - the *poller* drives the event loop, tracks connection state and acknowledgements, and
//!   sleeps with exponential backoff after a connection loss;
//! - the *mover* takes messages from the sinks' queues in turn (one message from each sink
//!   that has one, round robin) and hands them to rumqttc, only while connected and never
//!   more than rumqttc's request channel holds, so a hand-over never waits and everything
//!   not yet handed over stays under its sink's queue bounds and policy.
//!
//! Every sink has a connection: its own (a *private* one, the default), or the one of its
//! `shared-connection` name, which every sink of the process with that name joins (the
//! registry keeps weak references, so that a connection lives as long as a sink uses it).
//! The sinks of a shared connection must agree on every connection setting ([`Sharing`]);
//! topic, QoS, retain, queue bounds, leaky policy and message size stay each sink's own.
//! The connection ends (DISCONNECT) when its last sink leaves.
//!
//! Exact acknowledgement tracking across the sinks: rumqttc assigns packet ids and writes
//! publishes in the order of its request channel, which is the order the mover hands them
//! over. So the connection keeps which sink handed over each publish not yet written
//! (`Flight::unwritten`, in hand-over order), attributes each write to the first of them,
//! and keeps which sink each packet id written and not yet acknowledged belongs to
//! (`Flight::unacked`). Each sink's own [`Tracker`] keeps its messages.
//!
//! Every connection event (connected, lost, failover, refusal, QoS downgrade) is reported to
//! every sink on the connection, which posts it on its own bus.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;
use tokio::sync::Notify;

use super::queue::{BACK_TO_BACK, LINGER};
use super::session::{Event, Failure, Publisher, Refusal, Session, REQUEST_CHANNEL};
use super::tracker::Tracker;
use super::worker::{runtime, Notice, Shared, SizeLimit, Taken, CAT, ON_RUNTIME};
use super::{Broker, ConnectionConfig, QoS};
use crate::tls::TlsFiles;

/// This many short-lived connections in a row suggest another client uses our client id.
const SHORT_CONNECTIONS_WARNING: u32 = 3;
/// How long a stop waits for DISCONNECT to go out.
const DISCONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Connections in a row that the broker closed after a QoS 2 publish, never answering one
/// with PUBREC, that mean it does not take QoS 2 (NATS).
const QOS2_CLOSES: u32 = 2;
/// The payload size rumqttc is told to allow on a shared connection, whose sinks may each
/// have another `max-message-size` and topic: the largest `max-message-size` (256 MiB) and
/// the longest topic. Each sink's own limit is checked when it queues a message.
const SHARED_MAX_PAYLOAD: usize = 256 * 1024 * 1024 + 65_535;

/// What a sink asks for when it publishes over a shared connection: the name, and the
/// settings that [`ConnectionConfig`] does not carry in a comparable form.
#[derive(Debug, Clone)]
pub struct Sharing {
    /// The `shared-connection` name.
    pub name: String,
    /// The TLS files, compared by path (the loaded configuration cannot be compared).
    pub tls: Option<TlsFiles>,
    /// Whether the client id was set; an unset one matches another unset one (the first
    /// sink's unique id is the connection's).
    pub fixed_client_id: bool,
}

/// The connection settings of a sink and of the connection it joins differ: names the
/// first one that differs (never a password's value).
fn difference(
    name: &str,
    ours: &ConnectionConfig,
    our_sharing: &Sharing,
    theirs: &ConnectionConfig,
    their_sharing: &Sharing,
) -> Option<String> {
    let list = |brokers: &[Broker]| {
        brokers
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let shown = |setting: &str, ours: String, theirs: String| {
        Some(format!(
            "shared-connection={name:?}: {setting} differs from the sinks already on the \
             connection ({ours} here, {theirs} there); every connection setting must be the \
             same on all its sinks"
        ))
    };
    let path = |p: Option<&str>| p.map_or("unset".to_owned(), |p| format!("{p:?}"));
    let (our_tls, their_tls) = (our_sharing.tls.as_ref(), their_sharing.tls.as_ref());
    if ours.brokers != theirs.brokers {
        return shown("host/port", list(&ours.brokers), list(&theirs.brokers));
    }
    if our_sharing.fixed_client_id != their_sharing.fixed_client_id
        || (our_sharing.fixed_client_id && ours.client_id != theirs.client_id)
    {
        let id = |sharing: &Sharing, config: &ConnectionConfig| {
            if sharing.fixed_client_id {
                format!("{:?}", config.client_id)
            } else {
                "unset".into()
            }
        };
        return shown(
            "client-id",
            id(our_sharing, ours),
            id(their_sharing, theirs),
        );
    }
    if ours.clean_session != theirs.clean_session {
        return shown(
            "clean-session",
            ours.clean_session.to_string(),
            theirs.clean_session.to_string(),
        );
    }
    if ours.protocol != theirs.protocol {
        return shown(
            "protocol",
            ours.protocol.level().to_string(),
            theirs.protocol.level().to_string(),
        );
    }
    if ours.keep_alive != theirs.keep_alive {
        return shown(
            "keep-alive",
            format!("{} s", ours.keep_alive.as_secs()),
            format!("{} s", theirs.keep_alive.as_secs()),
        );
    }
    if ours.max_reconnect_delay != theirs.max_reconnect_delay {
        return shown(
            "max-reconnect-delay",
            format!("{} ms", ours.max_reconnect_delay.as_millis()),
            format!("{} ms", theirs.max_reconnect_delay.as_millis()),
        );
    }
    let user = |config: &ConnectionConfig| config.credentials.as_ref().map(|(u, _)| u.clone());
    if user(ours) != user(theirs) {
        return shown(
            "username",
            path(user(ours).as_deref()),
            path(user(theirs).as_deref()),
        );
    }
    let password = |config: &ConnectionConfig| config.credentials.as_ref().map(|(_, p)| p.clone());
    if password(ours) != password(theirs) {
        return Some(format!(
            "shared-connection={name:?}: password differs from the sinks already on the \
             connection; every connection setting must be the same on all its sinks"
        ));
    }
    let ca = |t: &TlsFiles| Some(t.ca.clone());
    let cert = |t: &TlsFiles| t.cert.clone();
    let key = |t: &TlsFiles| t.key.clone();
    for (setting, a, b) in [
        ("tls-ca-file", our_tls.and_then(ca), their_tls.and_then(ca)),
        (
            "tls-cert-file",
            our_tls.and_then(cert),
            their_tls.and_then(cert),
        ),
        (
            "tls-key-file",
            our_tls.and_then(key),
            their_tls.and_then(key),
        ),
    ] {
        if a != b {
            return shown(setting, path(a.as_deref()), path(b.as_deref()));
        }
    }
    None
}

/// The shared connections of the process by name. Weak: a connection ends when its last
/// sink leaves, which also takes it out of here (under this lock, so that a sink never
/// joins a connection that is ending).
static SHARED: Lazy<Mutex<HashMap<String, Weak<Connection>>>> = Lazy::new(Mutex::default);

/// Why a sink cannot publish.
#[derive(Debug)]
pub enum StartError {
    /// The connection runtime cannot start.
    Runtime(std::io::Error),
    /// A connection setting differs from the shared connection's.
    Differs(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Runtime(e) => write!(f, "cannot start the connection runtime: {e}"),
            StartError::Differs(reason) => f.write_str(reason),
        }
    }
}

/// A connection and the task driving it.
pub(super) struct Connection {
    link: Arc<Link>,
    /// For a shared connection: what a joining sink is compared with.
    sharing: Option<(Sharing, ConnectionConfig)>,
    task: Mutex<Option<Task>>,
}

/// Wakes the mover for one sink: lists it among the sinks with messages (once) and wakes
/// the mover.
pub(super) struct Wake {
    id: u64,
    listed: AtomicBool,
    ready: Arc<Ready>,
}

impl Wake {
    /// The sink may have messages to hand over.
    pub(super) fn notify_one(&self) {
        self.list();
        self.ready.mover.notify_one();
    }

    fn list(&self) {
        if !self.listed.swap(true, Ordering::SeqCst) {
            self.ready.ids.lock().unwrap().push_back(self.id);
        }
    }
}

/// The sinks that may have messages, in the order the mover serves them.
#[derive(Default)]
struct Ready {
    ids: Mutex<VecDeque<u64>>,
    /// Wakes the mover: a first message or a batch was queued, or a queue is flushing.
    mover: Notify,
}

/// What the connection's task and its sinks share.
pub(super) struct Link {
    /// Named in the logs: the sink's name, or `shared-connection=NAME`.
    pub(super) name: gst::glib::GString,
    config: ConnectionConfig,
    /// The broker connected to, or tried next.
    pub(super) broker: Mutex<Broker>,
    flight: Mutex<Flight>,
    ready: Arc<Ready>,
    /// Wakes the mover: room was made in rumqttc's request channel, or the connection
    /// came up.
    room: Notify,
    /// Wakes the poller to stop.
    stop: Notify,
    stopping: AtomicBool,
}

/// The sinks on the connection and which of them each publish under way belongs to. Its
/// lock is taken before a sink's tracker lock, never after.
#[derive(Default)]
struct Flight {
    members: HashMap<u64, Arc<Shared>>,
    connected: bool,
    session_present: bool,
    /// Ever connected: a later connection counts as a reconnect.
    ever_connected: bool,
    broker_max_packet: Option<u32>,
    /// What the broker refused for good since the last connection, for a sink that joins.
    refused: Option<String>,
    /// The sink of each publish handed over and not yet written, in hand-over order.
    unwritten: VecDeque<u64>,
    /// The sink of each packet id written and not yet acknowledged.
    unacked: HashMap<u16, u64>,
}

impl Flight {
    fn update<R>(&self, id: u64, f: impl FnOnce(&mut Tracker) -> R) -> Option<R> {
        self.members.get(&id).map(|member| member.update(f))
    }

    fn written(&mut self, pkid: u16) {
        // A retransmission of a packet id already written is not a new message.
        if pkid != 0 && self.unacked.contains_key(&pkid) {
            return;
        }
        let Some(id) = self.unwritten.pop_front() else {
            return;
        };
        if pkid != 0 {
            self.unacked.insert(pkid, id);
        }
        self.update(id, |t| t.written(pkid));
    }

    fn received(&self, pkid: u16) {
        if let Some(&id) = self.unacked.get(&pkid) {
            self.update(id, |t| t.received(pkid));
        }
    }

    fn completed(&mut self, pkid: u16) -> Option<Arc<Shared>> {
        let id = self.unacked.remove(&pkid)?;
        let member = self.members.get(&id)?;
        member.update(|t| t.completed(pkid));
        Some(member.clone())
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::Written { pkid } => self.written(pkid),
            Event::Received { pkid } => self.received(pkid),
            Event::Completed { pkid, .. } => {
                self.completed(pkid);
            }
            _ => {}
        }
    }

    fn members(&self) -> Vec<Arc<Shared>> {
        let mut members: Vec<_> = self.members.values().cloned().collect();
        members.sort_by_key(|m| m.id);
        members
    }
}

impl Link {
    fn members(&self) -> Vec<Arc<Shared>> {
        self.flight.lock().unwrap().members()
    }

    /// Tells every sink on the connection.
    fn notify_all(&self, notice: Notice) {
        for member in self.members() {
            member.notify(notice.clone());
        }
    }

    pub(super) fn wake(&self, id: u64) -> Wake {
        Wake {
            id,
            listed: AtomicBool::new(false),
            ready: self.ready.clone(),
        }
    }
}

impl Connection {
    /// Makes the sink `make` builds a member of its connection: a new private one, or the
    /// shared one of `sharing`'s name (made by the first sink with that name). `make` gets
    /// the link the sink wakes the mover through.
    pub(super) fn join(
        element: &str,
        config: &ConnectionConfig,
        sharing: Option<Sharing>,
        make: impl FnOnce(&Arc<Link>) -> Arc<Shared>,
    ) -> Result<Arc<Connection>, StartError> {
        let runtime = runtime().map_err(StartError::Runtime)?;
        let mut registry = SHARED.lock().unwrap();
        let existing = sharing
            .as_ref()
            .and_then(|s| registry.get(&s.name))
            .and_then(Weak::upgrade);
        let connection = match existing {
            Some(connection) => {
                let (sharing, (their_sharing, theirs)) = (
                    sharing.as_ref().unwrap(),
                    connection.sharing.as_ref().unwrap(),
                );
                if let Some(reason) =
                    difference(&sharing.name, config, sharing, theirs, their_sharing)
                {
                    return Err(StartError::Differs(reason));
                }
                connection
            }
            None => {
                let mut link_config = config.clone();
                let name = match &sharing {
                    Some(sharing) => {
                        link_config.max_message_size = SHARED_MAX_PAYLOAD;
                        link_config.topic.clear();
                        format!("shared-connection={}", sharing.name).into()
                    }
                    None => element.into(),
                };
                let link = Arc::new(Link {
                    name,
                    broker: Mutex::new(config.brokers[0].clone()),
                    config: link_config,
                    flight: Mutex::default(),
                    ready: Arc::default(),
                    room: Notify::new(),
                    stop: Notify::new(),
                    stopping: AtomicBool::new(false),
                });
                // Its task starts once the sink is on it, so that it reports from the first
                // event on.
                let connection = Arc::new(Connection {
                    link,
                    sharing: sharing.clone().map(|s| (s, config.clone())),
                    task: Mutex::new(None),
                });
                if let Some(sharing) = &sharing {
                    gst::debug!(
                        CAT,
                        id = &connection.link.name,
                        "Made by {element}: {config:?}"
                    );
                    registry.insert(sharing.name.clone(), Arc::downgrade(&connection));
                }
                connection
            }
        };
        let member = make(&connection.link);
        let mut flight = connection.link.flight.lock().unwrap();
        let connected = flight.connected;
        let session_present = flight.session_present;
        let max_packet = flight.broker_max_packet;
        let refused = flight.refused.clone();
        member.update(|t| {
            t.stats.connected = connected;
            t.stats.broker_max_packet = max_packet;
        });
        flight.members.insert(member.id, member.clone());
        drop(flight);
        {
            let mut task = connection.task.lock().unwrap();
            if task.is_none() {
                *task = Some(Task::spawn(runtime, connection.link.clone()));
            }
        }
        drop(registry);
        gst::debug!(
            CAT,
            id = &connection.link.name,
            "{element} joins (connected: {connected})"
        );
        if connected {
            member.notify(Notice::Connected { session_present });
        }
        if let Some(reason) = refused {
            member.notify(Notice::Refused { reason });
        }
        // What a restored spool holds is there to publish from the start.
        member.queued.notify_one();
        Ok(connection)
    }

    /// Takes `member` off the connection; the last one to leave ends it (and waits until
    /// its task has ended). What the member handed over and is not acknowledged yet is no
    /// longer tracked for it.
    pub(super) fn leave(&self, member: &Shared) {
        let last = {
            let mut registry = SHARED.lock().unwrap();
            let mut flight = self.link.flight.lock().unwrap();
            flight.members.remove(&member.id);
            let last = flight.members.is_empty();
            if last {
                self.link.stopping.store(true, Ordering::SeqCst);
                if let Some((sharing, _)) = &self.sharing {
                    let ours = registry
                        .get(&sharing.name)
                        .is_some_and(|weak| std::ptr::eq(weak.as_ptr(), self));
                    if ours {
                        registry.remove(&sharing.name);
                    }
                }
            }
            last
        };
        gst::debug!(
            CAT,
            id = &self.link.name,
            "{} leaves{}",
            member.name,
            if last { ": the connection ends" } else { "" }
        );
        if !last {
            return;
        }
        self.link.stop.notify_one();
        self.link.ready.mover.notify_one();
        self.link.room.notify_one();
        if let Some(task) = self.task.lock().unwrap().take() {
            task.wait(&self.link.name);
        }
    }
}

/// A connection's task: the poller and the mover, and a watch that turns a panic in them
/// into [`Notice::Failed`] for every sink on it and says when both have ended.
struct Task {
    /// The task running [`run`].
    connection: tokio::task::Id,
    /// The task awaiting it.
    watch: tokio::task::Id,
    ended: Arc<Ended>,
}

/// Set when a connection's tasks have ended.
#[derive(Default)]
struct Ended {
    done: Mutex<bool>,
    signal: Condvar,
}

/// Sets [`Ended`] when dropped: when the watch task ends, panics or is dropped.
struct EndGuard(Arc<Ended>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        *self.0.done.lock().unwrap() = true;
        self.0.signal.notify_all();
    }
}

/// The connection task ended with `error` (a panic): [`Notice::Failed`] to every sink.
fn report_failure(link: &Link, error: tokio::task::JoinError) {
    let reason = match error.try_into_panic() {
        Ok(panic) => panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into()),
        Err(error) => error.to_string(),
    };
    gst::error!(CAT, id = &link.name, "Connection task panicked: {reason}");
    for member in link.members() {
        member.update(|t| t.stats.connected = false);
        member.notify(Notice::Failed {
            reason: reason.clone(),
        });
    }
}

impl Task {
    fn spawn(runtime: &tokio::runtime::Runtime, link: Arc<Link>) -> Task {
        let ended = Arc::new(Ended::default());
        let guard = EndGuard(ended.clone());
        let connection = runtime.spawn(run(link.clone()));
        let connection_id = connection.id();
        let watch = runtime.spawn(async move {
            if let Err(error) = connection.await {
                report_failure(&link, error);
            }
            // What the tasks hold of the sinks goes before they say they have ended.
            drop(link);
            drop(guard);
        });
        Task {
            connection: connection_id,
            watch: watch.id(),
            ended,
        }
    }

    /// Waits until the tasks have ended; [`Link::stopping`] is set and they are woken.
    /// Called from the runtime (a notice's handler stopping the element), it lets the
    /// runtime move its other tasks to another thread while it waits; from the
    /// connection's own task, it cannot wait for it: the task ends once the call returns.
    fn wait(self, name: &gst::glib::GString) {
        let wait = || {
            let mut done = self.ended.done.lock().unwrap();
            while !*done {
                done = self.ended.signal.wait(done).unwrap();
            }
        };
        if !ON_RUNTIME.with(|on| on.get()) {
            wait();
        } else if tokio::task::try_id().is_some_and(|id| id == self.connection || id == self.watch)
        {
            gst::debug!(
                CAT,
                id = name,
                "Stopped from its own connection task: it ends after this call"
            );
        } else if tokio::task::try_id().is_some() {
            tokio::task::block_in_place(wait);
        } else {
            // A thread of the runtime's blocking pool.
            wait();
        }
    }
}

async fn run(link: Arc<Link>) {
    let link = &*link;
    let session = Session::new(&link.config, &link.config.brokers[0]);
    let publisher = session.publisher();
    tokio::join!(
        poll_connection(link, session),
        move_messages(link, publisher)
    );
}

/// Why [`hand_over`] stopped.
enum Blocked {
    /// The queues are empty.
    Empty,
    /// Not connected, or rumqttc's request channel is full.
    NoRoom,
}

/// Hands queued messages to rumqttc while connected and its request channel has room.
async fn move_messages(link: &Link, publisher: Publisher) {
    while !link.stopping.load(Ordering::SeqCst) {
        match hand_over(link, &publisher).await {
            Blocked::NoRoom => link.room.notified().await,
            Blocked::Empty => {
                let drained_at = Instant::now();
                link.ready.mover.notified().await;
                if drained_at.elapsed() < BACK_TO_BACK {
                    gst::trace!(
                        CAT,
                        id = &link.name,
                        "Messages arrive back to back: letting a batch gather"
                    );
                    gather_batch(link).await;
                }
            }
        }
    }
}

/// Waits until a batch has gathered in a queue, for at most [`LINGER`] (tokio's timer ticks
/// in milliseconds, so 1 to 2 ms).
async fn gather_batch(link: &Link) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let has_batch = || {
        let flight = link.flight.lock().unwrap();
        flight.members.values().any(|m| m.has_batch())
    };
    while !has_batch() {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return,
            _ = link.ready.mover.notified() => {}
        }
    }
}

/// Hands queued messages to rumqttc, one from each sink that has one in turn, until the
/// queues are empty or there is no room.
async fn hand_over(link: &Link, publisher: &Publisher) -> Blocked {
    let protocol = link.config.protocol;
    loop {
        // Taken and counted (see `Shared::take`) under the connection's lock, under which
        // the hand-over order is recorded: the order rumqttc writes them in.
        let (member, taken) = {
            let mut flight = link.flight.lock().unwrap();
            if !flight.connected || flight.unwritten.len() >= REQUEST_CHANNEL {
                return Blocked::NoRoom;
            }
            let mut found = None;
            loop {
                let Some(id) = link.ready.ids.lock().unwrap().pop_front() else {
                    break;
                };
                let Some(member) = flight.members.get(&id).cloned() else {
                    continue;
                };
                // Unlisted before the look, so that a message queued meanwhile lists it again.
                member.queued.listed.store(false, Ordering::SeqCst);
                if let Some(taken) = member.take(protocol) {
                    // It may have more: back at the end of the line.
                    member.queued.list();
                    found = Some((member, taken));
                    break;
                }
            }
            let Some((member, taken)) = found else {
                return Blocked::Empty;
            };
            if taken.oversize.is_none() {
                flight.unwritten.push_back(member.id);
            }
            (member, taken)
        };
        let Taken {
            seq,
            payload,
            ended,
            oversize,
        } = taken;
        if let Some(episode) = ended {
            gst::debug!(
                CAT,
                id = &member.name,
                "The queue has room again: {} dropped over {:?}",
                episode.dropped,
                episode.duration()
            );
            member.notify(Notice::Dropped {
                episode,
                at_end: false,
            });
        }
        let size = payload.len();
        if let Some((max, first)) = oversize {
            gst::debug!(
                CAT,
                id = &member.name,
                "Dropped a message of {size} bytes: over the broker's limit"
            );
            if first {
                member.notify(Notice::Oversize {
                    size,
                    limit: SizeLimit::Broker(max),
                });
            }
            continue;
        }
        // The channel has room, so this completes without waiting.
        let user_properties = member.user_properties(protocol, seq);
        if publisher
            .publish(
                &member.topic,
                member.qos(),
                member.retain,
                payload,
                user_properties,
            )
            .await
            .is_err()
        {
            let mut flight = link.flight.lock().unwrap();
            flight.unwritten.pop_back();
            flight.update(member.id, Tracker::not_handed);
        }
    }
}

/// Drives the event loop: connection state, acknowledgements, backoff, failover, what the
/// broker refused, clean disconnect. [`super::backoff`] says where each failure leads: on
/// to the next broker at once within a pass over the list, the wait between passes.
async fn poll_connection(link: &Link, mut session: Session) {
    use super::backoff::{self, Backoff, CONNECTION_HELD};
    let config = &link.config;
    let mut backoff = Backoff::new(
        config.brokers.len(),
        config.max_reconnect_delay,
        backoff::seed(&config.client_id),
    );
    let mut short_connections = 0u32;
    let mut connected_since: Option<Instant> = None;
    // The refusal the last failure looked like (a guess needs a repeat), and those reported.
    let mut last_refusal: Option<Refusal> = None;
    let mut reported: Vec<Refusal> = Vec::new();
    // QoS 2 on MQTT 3.1.1: connections closed after a QoS 2 publish with no PUBREC ever.
    let mut qos2_closes = 0u32;
    let mut pubrec_seen = false;

    loop {
        let event = tokio::select! {
            event = session.poll() => event,
            _ = link.stop.notified() => break,
        };
        match event {
            Ok(Event::Connected {
                session_present,
                max_packet_size,
                max_qos,
            }) => {
                backoff.connected();
                last_refusal = None;
                connected_since = Some(Instant::now());
                if let Some(granted) = max_qos.and_then(QoS::from_granted) {
                    for member in link.members() {
                        downgrade(
                            &member,
                            granted,
                            format!(
                                "the broker accepts QoS {} at most (MQTT 5 CONNACK Maximum QoS)",
                                granted.level()
                            ),
                        );
                    }
                }
                let again: Vec<(Arc<Shared>, u64)> = {
                    let mut flight = link.flight.lock().unwrap();
                    flight.connected = true;
                    flight.refused = None;
                    flight.session_present = session_present;
                    flight.broker_max_packet = max_packet_size;
                    let reconnect = std::mem::replace(&mut flight.ever_connected, true);
                    if !session_present {
                        flight.unacked.clear();
                    }
                    flight
                        .members()
                        .into_iter()
                        .map(|member| {
                            let again = member.update(|t| {
                                t.stats.connected = true;
                                t.stats.broker_max_packet = max_packet_size;
                                if reconnect {
                                    t.stats.reconnects += 1;
                                }
                                if session_present {
                                    0
                                } else {
                                    member.requeue(t.take_unacked())
                                }
                            });
                            (member, again)
                        })
                        .collect()
                };
                let broker = link.broker.lock().unwrap().clone();
                gst::debug!(
                    CAT, id = &link.name,
                    "Connected to {broker} (session present: {session_present}, broker packet limit: {max_packet_size:?}); {} unacknowledged to publish again",
                    again.iter().map(|(_, n)| n).sum::<u64>()
                );
                for (member, again) in again {
                    member.notify(Notice::Connected { session_present });
                    if again > 0 {
                        member.notify(Notice::Republished { count: again });
                    }
                }
                link.room.notify_one();
            }
            Ok(Event::Written { pkid }) => {
                let mut flight = link.flight.lock().unwrap();
                // The mover waits for room only once rumqttc's channel is full: a wake-up
                // per write would leave a permit behind and send it round for nothing.
                let was_full = flight.unwritten.len() >= REQUEST_CHANNEL;
                flight.written(pkid);
                drop(flight);
                if was_full {
                    link.room.notify_one();
                }
            }
            Ok(Event::Received { pkid }) => {
                pubrec_seen = true;
                link.flight.lock().unwrap().received(pkid);
            }
            Ok(Event::Completed { pkid, puback }) => {
                let member = link.flight.lock().unwrap().completed(pkid);
                if let Some(member) = member {
                    if puback && member.qos() == QoS::ExactlyOnce {
                        downgrade(
                            &member,
                            QoS::AtLeastOnce,
                            "the broker acknowledged a QoS 2 message with PUBACK, as for QoS 1 \
                             (RabbitMQ does)"
                                .into(),
                        );
                    }
                }
            }
            Ok(Event::DisconnectSent | Event::Other) => {}
            Err(failure) => {
                let Failure {
                    reason,
                    refusal,
                    stale,
                    unsent,
                    was_connected,
                } = failure;
                let (unwritten, unacked, members) = {
                    let mut flight = link.flight.lock().unwrap();
                    flight.connected = false;
                    for event in &stale {
                        flight.apply(event);
                    }
                    flight.unwritten.clear();
                    let members = flight.members();
                    let unwritten: u64 = members
                        .iter()
                        .map(|member| {
                            member.update(|t| {
                                t.stats.connected = false;
                                member.requeue(t.take_unwritten())
                            })
                        })
                        .sum();
                    (unwritten, flight.unacked.len(), members)
                };
                gst::debug!(
                    CAT, id = &link.name,
                    "Lost the connection with {unacked} unacknowledged; took back {unwritten} never written"
                );
                if unwritten != unsent as u64 {
                    gst::warning!(
                        CAT,
                        id = &link.name,
                        "Took back {unsent} unsent publishes from rumqttc, {unwritten} expected"
                    );
                }

                // A broker that closes the connection on QoS 2 publishes (NATS).
                let at_qos2 = members.iter().any(|m| m.qos() == QoS::ExactlyOnce);
                let qos2_closed = was_connected && at_qos2 && !pubrec_seen && unacked > 0;
                qos2_closes = if qos2_closed { qos2_closes + 1 } else { 0 };
                pubrec_seen = false;
                if qos2_closes >= QOS2_CLOSES {
                    for member in &members {
                        downgrade(
                            member,
                            QoS::AtLeastOnce,
                            "the broker closed the connection after each QoS 2 message instead \
                             of acknowledging it (NATS does not take QoS 2)"
                                .into(),
                        );
                    }
                    // What rumqttc would resend at QoS 2 goes again at QoS 1.
                    session.take_resends();
                    let again: Vec<_> = {
                        let mut flight = link.flight.lock().unwrap();
                        flight.unacked.clear();
                        members
                            .iter()
                            .map(|m| m.update(|t| m.requeue(t.take_unacked())))
                            .collect()
                    };
                    for (member, count) in members.iter().zip(again) {
                        if count > 0 {
                            member.notify(Notice::Republished { count });
                        }
                    }
                }

                let mut reason = reason;
                if let Some(refusal) = refusal {
                    reason = refusal.describe(config);
                    let concluded = refusal.definitive() || last_refusal == Some(refusal);
                    if concluded && !reported.contains(&refusal) {
                        reported.push(refusal);
                        link.flight.lock().unwrap().refused = Some(reason.clone());
                        link.notify_all(Notice::Refused {
                            reason: reason.clone(),
                        });
                    }
                }
                last_refusal = refusal;

                let held = connected_since.take().map(|since| since.elapsed());
                if let Some(held) = held {
                    if held >= CONNECTION_HELD {
                        short_connections = 0;
                    } else if !qos2_closed {
                        short_connections += 1;
                    }
                }
                if reason.contains("SessionTakenOver")
                    || short_connections >= SHORT_CONNECTIONS_WARNING
                {
                    short_connections = 0;
                    link.notify_all(Notice::ClientIdConflict {
                        reason: format!(
                            "the broker keeps closing the connection soon after accepting it \
                             ({reason}); another client may be using the client id {:?}",
                            config.client_id
                        ),
                    });
                }
                let retry = match held {
                    Some(held) => backoff.lost(held),
                    None => backoff.failed(),
                };
                let next = (config.brokers.len() > 1).then(|| config.brokers[retry.broker].clone());
                gst::debug!(
                    CAT,
                    id = &link.name,
                    "Connection to {} failed ({reason}), attempt {}, retrying in {:?}{}",
                    link.broker.lock().unwrap(),
                    retry.attempt,
                    retry.wait,
                    next.as_ref()
                        .map(|b| format!(" with {b}"))
                        .unwrap_or_default()
                );
                link.notify_all(Notice::Disconnected {
                    reason,
                    attempt: retry.attempt,
                    retry_in: retry.wait,
                    next: next.clone(),
                });
                if let Some(next) = next {
                    session.set_broker(config, &next);
                    *link.broker.lock().unwrap() = next;
                }
                if !retry.wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(retry.wait) => {}
                        _ = link.stop.notified() => return,
                    }
                }
            }
        }
    }

    gst::debug!(
        CAT,
        id = &link.name,
        "Stopping; connected: {}",
        connected_since.is_some()
    );
    // Stopping: say goodbye if connected, so the broker does not publish a will or keep
    // a half-open connection.
    if connected_since.is_some() && session.request_disconnect() {
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, async {
            while let Ok(event) = session.poll().await {
                if event == Event::DisconnectSent {
                    break;
                }
            }
        })
        .await;
    }
}

/// Publishes `member`'s messages at `granted` from now on, and says so once.
fn downgrade(member: &Shared, granted: QoS, reason: String) {
    let requested = member.qos();
    if granted >= requested {
        return;
    }
    member.set_qos(granted);
    gst::debug!(
        CAT,
        id = &member.name,
        "QoS {} -> {}: {reason}",
        requested.level(),
        granted.level()
    );
    member.notify(Notice::QosDowngraded {
        requested,
        granted,
        reason,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Protocol, Secret};

    fn config() -> ConnectionConfig {
        ConnectionConfig {
            brokers: vec![Broker {
                host: "broker".into(),
                port: 8883,
            }],
            max_reconnect_delay: Duration::from_secs(30),
            client_id: "farm".into(),
            clean_session: false,
            keep_alive: Duration::from_secs(60),
            credentials: Some(("camera".into(), Secret::new("s3cret".into()))),
            tls: None,
            protocol: Protocol::V311,
            topic: "a".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            max_message_size: 1024,
        }
    }

    fn sharing() -> Sharing {
        Sharing {
            name: "farm".into(),
            tls: Some(TlsFiles {
                ca: "/ca.pem".into(),
                cert: Some("/cert.pem".into()),
                key: Some("/key.pem".into()),
            }),
            fixed_client_id: true,
        }
    }

    /// A change of a sink's settings.
    type Change = fn(&mut ConnectionConfig, &mut Sharing);

    /// The setting that differs, or `None`.
    fn differs(change: impl FnOnce(&mut ConnectionConfig, &mut Sharing)) -> Option<String> {
        let (mut ours, mut our_sharing) = (config(), sharing());
        change(&mut ours, &mut our_sharing);
        difference("farm", &ours, &our_sharing, &config(), &sharing())
    }

    #[test]
    fn per_sink_settings_may_differ_and_connection_settings_may_not() {
        assert_eq!(
            differs(|c, _| {
                c.topic = "b".into();
                c.qos = QoS::AtMostOnce;
                c.retain = true;
                c.max_message_size = 1 << 20;
            }),
            None
        );
        let cases: [(&str, Change); 6] = [
            ("tls-ca-file differs", |_, s| {
                s.tls.as_mut().unwrap().ca = "/other-ca.pem".into()
            }),
            ("tls-cert-file differs", |_, s| {
                s.tls.as_mut().unwrap().cert = None
            }),
            ("tls-key-file differs", |_, s| {
                s.tls.as_mut().unwrap().key = Some("/other.key".into())
            }),
            ("tls-ca-file differs", |_, s| s.tls = None),
            ("client-id differs", |_, s| s.fixed_client_id = false),
            ("password differs", |c, _| {
                c.credentials = Some(("camera".into(), Secret::new("other".into())))
            }),
        ];
        for (expected, change) in cases {
            let reason = differs(change).unwrap_or_default();
            assert!(reason.contains(expected), "{expected}: {reason}");
            assert!(
                !reason.contains("s3cret") && !reason.contains("other\""),
                "{reason}"
            );
        }
    }

    #[test]
    fn unset_client_ids_match_whatever_id_each_sink_generated() {
        let unset = |c: &mut ConnectionConfig, s: &mut Sharing| {
            c.client_id = "gstmqtt-1".into();
            s.fixed_client_id = false;
        };
        let (mut theirs, mut their_sharing) = (config(), sharing());
        unset(&mut theirs, &mut their_sharing);
        let (mut ours, mut our_sharing) = (config(), sharing());
        unset(&mut ours, &mut our_sharing);
        ours.client_id = "gstmqtt-2".into();
        assert_eq!(
            difference("farm", &ours, &our_sharing, &theirs, &their_sharing),
            None
        );
    }
}
