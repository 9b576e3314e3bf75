// SPDX-License-Identifier: MPL-2.0

//! The connection worker: a sink's side of publishing, its [`Queue`], accounting and
//! notices, on a connection ([`super::connection`]) whose task runs on one tokio runtime
//! that all the sinks of the process share ([`runtime`]). A connection is the sink's own,
//! or shared with the other sinks of the process with the same `shared-connection` name
//! ([`Sharing`]).
//!
//! The runtime is made on first use, with a fixed number of worker threads named
//! [`THREAD_NAME`], whatever the number of sinks: 2, or as many as the environment variable
//! [`THREADS_ENV`] (`GST_MQTTPUBLISH_THREADS`) says, 1 to 64. Its threads block SIGPIPE.
//! Each sink keeps its own queue, policy and accounting; stopping the last sink of a
//! connection waits until its task has ended, and a panic in the task becomes
//! [`Notice::Failed`] for every sink on it.
//!
//! Messages that arrive one by one (a camera's frame rate) are handed over as soon as they
//! are queued. Messages that arrive back to back are handed over in batches: the mover
//! lets up to a batch gather (at most 1 to 2 ms), so the task wakes once per batch and
//! rumqttc (patched: third_party/rumqttc) writes it with a system call per 8 KiB.
//!
//! Every message is accounted for: `queued = published + dropped + still queued + in flight`,
//! and every drop is reported: drops of a full queue as episodes ([`Notice::Dropping`] at
//! the first, [`Notice::Dropped`] with the count at the end), the others as they happen
//! ([`Notice::Oversize`]).
//!
//! At least once, whatever the broker keeps: a QoS 1/2 message stays in the worker's hands
//! (shared with rumqttc's copy, not duplicated) until it is acknowledged. When a broker
//! answers a reconnection with a new session (it kept none, or `clean-session`), what it
//! had not acknowledged is queued again, first, and counted in `republished`; what rumqttc
//! held but never wrote is always taken back and queued again (see
//! [`Session::take_unsent`] for why).
//!
//! With several brokers ([`ConnectionConfig::brokers`]), each failure moves to the next
//! one at once; the backoff waits between passes over the list (see [`super::backoff`]).
//!
//! With a spool ([`SpoolStart`]), a spooler thread stands between the queue and the
//! connection (see [`super::spooler`]): the mover hands over from its backlog, and each
//! message keeps its place in the spool until it is delivered.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use once_cell::sync::Lazy;

use super::backlog::{Backlog, Origin, Pending};
use super::connection::{Connection, Link, Sharing, StartError, Wake};
use super::spooler::{self, Policies, SpoolSide};
use super::tracker::{Stats, Tracker};
use super::{
    relock, Broker, ConnectionConfig, DropEpisode, Leaky, Limits, Message, Overflow, Protocol,
    Pushed, QoS, Queue,
};
use crate::spool::Spool;

/// Connection, backoff and hand-over decisions: `GST_DEBUG=mqttpublish-connection:6`.
pub(super) static CAT: Lazy<gst::DebugCategory> = Lazy::new(|| {
    gst::DebugCategory::new(
        "mqttpublish-connection",
        gst::DebugColorFlags::empty(),
        Some("MQTT connection worker: connection state, backoff, queue hand-over"),
    )
});

/// The environment variable setting the number of the runtime's worker threads.
pub const THREADS_ENV: &str = "GST_MQTTPUBLISH_THREADS";
/// The runtime's worker threads when [`THREADS_ENV`] does not say.
pub const DEFAULT_THREADS: usize = 2;
/// The most worker threads [`THREADS_ENV`] can ask for.
const MAX_THREADS: usize = 64;
/// The name of the runtime's threads (15 bytes at most: Linux cuts thread names there).
pub const THREAD_NAME: &str = "mqttpublish-rt";
/// Threads the runtime may add, for a while, to resolve broker host names (tokio resolves
/// names with the blocking `getaddrinfo` on threads of their own).
const MAX_BLOCKING_THREADS: usize = 4;

static RUNTIME: once_cell::sync::OnceCell<tokio::runtime::Runtime> =
    once_cell::sync::OnceCell::new();

thread_local! {
    /// Set on the runtime's own threads.
    pub(super) static ON_RUNTIME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The worker threads [`THREADS_ENV`] asks for, or the default (with a warning when its
/// value is not a number from 1 to [`MAX_THREADS`]).
fn worker_threads() -> usize {
    let Ok(value) = std::env::var(THREADS_ENV) else {
        return DEFAULT_THREADS;
    };
    match value.trim().parse::<usize>() {
        Ok(threads @ 1..=MAX_THREADS) => threads,
        _ => {
            gst::warning!(
                CAT,
                "{THREADS_ENV}={value:?} is not a number of threads from 1 to {MAX_THREADS}: \
                 using {DEFAULT_THREADS}"
            );
            DEFAULT_THREADS
        }
    }
}

/// The runtime all the sinks of the process run their connection on, made on first use.
pub(super) fn runtime() -> std::io::Result<&'static tokio::runtime::Runtime> {
    RUNTIME.get_or_try_init(|| {
        let threads = worker_threads();
        gst::debug!(
            CAT,
            "Starting the connection runtime with {threads} threads"
        );
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(MAX_BLOCKING_THREADS)
            .thread_name(THREAD_NAME)
            .on_thread_start(|| {
                ON_RUNTIME.with(|on| on.set(true));
                ignore_sigpipe_on_this_thread();
            })
            .enable_all()
            .build()
    })
}

/// The tasks alive on the runtime (two per connection: per running sink, unless sinks share
/// one), or `None` before it is made.
pub fn runtime_tasks() -> Option<usize> {
    RUNTIME
        .get()
        .map(|runtime| runtime.metrics().num_alive_tasks())
}

/// Connection events for the element to post on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Connected {
        /// The broker still had our session (and redelivers what was in flight).
        session_present: bool,
    },
    Disconnected {
        /// What happened, and for a refusal what to change.
        reason: String,
        /// Failed attempts in a row, 1 for the first failure after a connection.
        attempt: u32,
        retry_in: Duration,
        /// The broker the next attempt goes to, when it is another one (failover).
        next: Option<Broker>,
    },
    /// The broker refused something a retry will not change (protocol version, user name
    /// or password, authorization, client id); the worker keeps retrying.
    Refused { reason: String },
    /// The broker does not take the configured QoS: messages go at `granted` from now on.
    QosDowngraded {
        requested: QoS,
        granted: QoS,
        reason: String,
    },
    /// The broker keeps dropping the connection soon after accepting it, or said another
    /// client took the session over.
    ClientIdConflict { reason: String },
    /// The broker answered a reconnection with a new session: the messages it had not
    /// acknowledged are published again.
    Republished { count: u64 },
    /// The first message dropped for its size; later ones are only counted.
    Oversize { size: usize, limit: SizeLimit },
    /// The queue was full and its policy dropped a message: the first drop of an episode.
    Dropping {
        overflow: Overflow,
        /// The policy as configured ([`Leaky::Auto`] when it chose).
        leaky: Leaky,
        /// Whether the broker was connected: if not, the queue filled during an outage.
        connected: bool,
    },
    /// A drop episode ended: the queue has drained to half its bounds and nothing was
    /// dropped for a while, or (`at_end`) the stream ended first.
    Dropped { episode: DropEpisode, at_end: bool },
    /// The connection task stopped unexpectedly; nothing will be published.
    Failed { reason: String },
    /// The spool cannot be written or read (`Some`: why; messages go on in memory), or works
    /// again (`None`).
    SpoolTrouble { problem: Option<String> },
    /// The spool's policy (`reason`: "full" or "age") started dropping the oldest messages.
    SpoolDropping { reason: &'static str },
    /// ... and dropped `count` before a second passed without a drop (or the run ended).
    SpoolDropped { reason: &'static str, count: u64 },
}

/// The limit an oversize message broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeLimit {
    /// [`ConnectionConfig::max_message_size`], a payload size.
    Configured(usize),
    /// The largest packet the broker accepts (MQTT 5 CONNACK).
    Broker(u32),
}

/// How a [`Worker::flush`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was published and, for QoS 1/2, acknowledged.
    Delivered,
    /// The timeout passed, or nothing completed for the stall time.
    TimedOut,
    /// The queue was set flushing (the sink is unlocking or stopping).
    Interrupted,
}

/// Posts a [`Notice`] about a broker.
type NotifyFn = dyn Fn(&Broker, Notice) + Send + Sync;

/// Numbers the sinks, which a connection tells apart by it.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A sink's side, shared by its streaming thread, its connection and its spooler.
pub(super) struct Shared {
    /// Tells the sink apart on its connection.
    pub(super) id: u64,
    /// The element the worker publishes for, named in its logs.
    pub(super) name: gst::glib::GString,
    /// The connection's side the sink needs: the broker, for its notices.
    link: Arc<Link>,
    /// The queue the streaming thread fills; with a spool, the spooler empties it into
    /// `spool`'s backlog, which the connection publishes from.
    pub(super) queue: Queue,
    pub(super) spool: Option<SpoolSide>,
    /// With a spool, what MQTT 5 messages carry besides their sequence number, so that a
    /// consumer can drop what a restart published twice: `<host>:<spool folder>`.
    spool_id: Option<String>,
    /// Largest payload accepted by [`Worker::push`].
    max_message_size: usize,
    /// The topic published to.
    pub(super) topic: String,
    pub(super) retain: bool,
    /// Posts connection events with the broker they concern; called from the worker and
    /// the streaming thread.
    notify: Box<NotifyFn>,
    /// The QoS messages are published at: the configured one, or what the broker grants.
    qos: AtomicU32,
    tracker: Mutex<Tracker>,
    /// Signalled whenever messages complete or the connection state changes.
    progress: Condvar,
    /// Wakes the connection's mover for this sink: a first message or a batch was
    /// queued, or the queue is flushing.
    pub(super) queued: Wake,
    stopping: AtomicBool,
}

impl Shared {
    pub(super) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    pub(super) fn notify(&self, notice: Notice) {
        let broker = self.link.broker.lock().unwrap().clone();
        (self.notify)(&broker, notice);
    }

    pub(super) fn set_qos(&self, qos: QoS) {
        self.qos.store(qos.level(), Ordering::Relaxed);
    }

    pub(super) fn qos(&self) -> QoS {
        match self.qos.load(Ordering::Relaxed) {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// Queues `payloads` again, ahead of everything queued; returns how many. Called with
    /// the tracker locked, so that a [`Worker::flush`] never sees them neither in flight
    /// nor queued.
    pub(super) fn requeue(&self, payloads: Vec<(Option<u64>, Bytes)>) -> u64 {
        let count = payloads.len() as u64;
        if payloads.is_empty() {
            return 0;
        }
        let now = Instant::now();
        match &self.spool {
            Some(side) => relock(&side.backlog).requeue_front(
                payloads
                    .into_iter()
                    .map(|(seq, payload)| Pending {
                        seq,
                        payload,
                        queued_at: now,
                    })
                    .collect(),
            ),
            None => self.queue.requeue_front(
                payloads
                    .into_iter()
                    .map(|(_, payload)| Message {
                        // Shared with nobody any more (rumqttc let go), so this does not copy.
                        payload: Vec::from(payload),
                        queued_at: now,
                    })
                    .collect(),
            ),
        }
        self.queued.notify_one();
        count
    }

    /// Messages waiting (queued, being spooled, in the backlog) and their bytes in memory;
    /// read under the tracker lock, under which messages move between these places.
    fn depth(&self, tracker: &Tracker) -> (u64, u64) {
        let (messages, bytes) = self.queue.depth();
        let (mut messages, mut bytes) = (messages as u64, bytes as u64);
        messages += tracker.spooling as u64;
        if let Some(side) = &self.spool {
            let backlog = relock(&side.backlog);
            let (memory, disk) = backlog.depth();
            messages += memory as u64 + disk;
            bytes += backlog.memory_bytes() as u64;
        }
        (messages, bytes)
    }

    /// Takes the next message to publish from the queue (or with a spool, the backlog)
    /// and counts it: in flight, or dropped for its size. In one step under the tracker
    /// lock, under which `flush` and `stats` read the queue depth: a message is always
    /// queued or counted, never between the two, where a flush at end of stream would
    /// find nothing left and stop waiting. Counted before it is handed over, so that the
    /// poller never sees it written first. `None`: nothing to publish.
    pub(super) fn take(&self, protocol: Protocol) -> Option<Taken> {
        // The spool's user properties (MQTT 5): names, the id and a sequence number's digits.
        let properties_size = self
            .spool_id
            .as_ref()
            .filter(|_| protocol == Protocol::V5)
            .map_or(0, |id| id.len() + 48);
        self.update(|t| {
            let (seq, payload, ended) = match &self.spool {
                Some(side) => {
                    let mut backlog = relock(&side.backlog);
                    let (pending, origin) = backlog.pop()?;
                    if origin == Origin::Replay {
                        t.stats.replayed += 1;
                        if backlog.replay_low() {
                            side.wake();
                        }
                    }
                    (pending.seq, pending.payload, None)
                }
                None => {
                    let (message, ended) = self.queue.pop()?;
                    (None, Bytes::from(message.payload), ended)
                }
            };
            let size = payload.len();
            // A packet over the broker's limit would cost the connection (and, in a
            // persistent session, be retried after every reconnect): drop it here.
            let oversize = t
                .stats
                .broker_max_packet
                .filter(|max| packet_size(&self.topic, size) + properties_size > *max as usize)
                .map(|max| (max, t.drop_oversize()));
            if oversize.is_none() {
                t.handed(seq, payload.clone());
            }
            Some(Taken {
                seq,
                payload,
                ended,
                oversize,
            })
        })
    }

    /// What a message with the spool place `seq` carries besides its payload (MQTT 5).
    pub(super) fn user_properties(
        &self,
        protocol: Protocol,
        seq: Option<u64>,
    ) -> Vec<(String, String)> {
        match (&self.spool_id, seq) {
            (Some(id), Some(seq)) if protocol == Protocol::V5 => vec![
                ("spool-id".to_owned(), id.clone()),
                ("spool-seq".to_owned(), seq.to_string()),
            ],
            _ => Vec::new(),
        }
    }

    /// After a panic in a thread that may have held it (the spooler): the queue can be
    /// locked again. (The tracker and the backlog are locked with [`relock`].)
    pub(super) fn clear_poison(&self) {
        self.queue.clear_poison();
    }

    /// Whether a batch waits to be handed over (or the queue is flushing). With a spool,
    /// the spooler empties the queue as it writes: the batch gathers in the backlog.
    pub(super) fn has_batch(&self) -> bool {
        self.queue.has_batch()
            || self
                .spool
                .as_ref()
                .is_some_and(|side| relock(&side.backlog).depth().0 >= super::queue::MAX_BATCH)
    }

    pub(super) fn update<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> R {
        let mut tracker = relock(&self.tracker);
        let r = f(&mut tracker);
        let waiting = tracker.waiters > 0;
        drop(tracker);
        if waiting {
            self.progress.notify_all();
        }
        r
    }
}

/// A message [`Shared::take`] took.
pub(super) struct Taken {
    /// Its place in the spool.
    pub(super) seq: Option<u64>,
    pub(super) payload: Bytes,
    /// The drop episode its taking ended (the queue drained).
    pub(super) ended: Option<DropEpisode>,
    /// Dropped for its size: the broker's limit, and whether it is the first such drop.
    pub(super) oversize: Option<(u32, bool)>,
}

/// A sink's handle on its connection, used by its streaming thread.
pub struct Worker {
    shared: Arc<Shared>,
    /// The connection, until the sink leaves it.
    connection: Mutex<Option<Arc<Connection>>>,
    /// With a spool, the spooler's thread.
    spooler: Mutex<Option<JoinHandle<()>>>,
}

/// A spool the worker publishes through (see [`super::spooler`]).
pub struct SpoolStart {
    pub spool: Spool,
    pub policies: Policies,
    /// Out of 100 hand-overs while live messages and the backlog both wait, how many go to
    /// the backlog.
    pub replay_share: u32,
}

impl Worker {
    /// Starts publishing for the element `name` (named in the logs) over a connection of
    /// its own, or with `sharing` over the shared connection of that name (made by the
    /// first sink with it; a sink whose connection settings differ from it is refused,
    /// naming the setting). It connects in the background. `notify` is called from the
    /// runtime's threads and from a thread calling [`Worker::push`]. A spool needs a
    /// connection of its own.
    pub fn start(
        name: gst::glib::GString,
        config: ConnectionConfig,
        limits: Limits,
        spool: Option<SpoolStart>,
        sharing: Option<Sharing>,
        notify: impl Fn(&Broker, Notice) + Send + Sync + 'static,
    ) -> Result<Worker, StartError> {
        assert!(!config.brokers.is_empty(), "at least one broker");
        // What the previous run left in the spool: on disk, read back first.
        let mut restored = 0;
        let spool_id = spool.as_ref().map(|start| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default();
            format!("{host}:{}", start.spool.dir().display())
        });
        let side = spool.as_ref().map(|start| {
            let held = start.spool.watermark()..start.spool.next_sequence();
            restored = held.end - held.start;
            SpoolSide::new(Backlog::new(
                held,
                limits.max_messages,
                limits.max_bytes,
                start.replay_share,
            ))
        });
        let mut tracker = Tracker::default();
        tracker.stats.queued = restored;
        tracker.stats.restored = restored;
        assert!(
            spool.is_none() || sharing.is_none(),
            "a spool needs a connection of its own"
        );
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let make = |link: &Arc<Link>| {
            Arc::new(Shared {
                id,
                name: name.clone(),
                link: link.clone(),
                queue: Queue::new(limits),
                spool: side,
                spool_id,
                max_message_size: config.max_message_size,
                topic: config.topic.clone(),
                retain: config.retain,
                notify: Box::new(notify),
                qos: AtomicU32::new(config.qos.level()),
                tracker: Mutex::new(tracker),
                progress: Condvar::new(),
                queued: link.wake(id),
                stopping: AtomicBool::new(false),
            })
        };
        let mut made = None;
        let connection = Connection::join(&name, &config, sharing, |link| {
            made.insert(make(link)).clone()
        })?;
        let shared = made.expect("made when joining");
        let worker = Worker {
            shared,
            connection: Mutex::new(Some(connection)),
            spooler: Mutex::new(None),
        };
        if let Some(SpoolStart {
            spool, policies, ..
        }) = spool
        {
            let shared = worker.shared.clone();
            let spooler = std::thread::Builder::new()
                .name("mqttpublish-spool".into())
                .spawn(move || spooler::run(&shared, spool, policies))
                .map_err(StartError::Runtime)?;
            *worker.spooler.lock().unwrap() = Some(spooler);
        }
        Ok(worker)
    }

    /// Queues a payload for publishing, following the queue's leaky policy. A payload
    /// larger than [`ConnectionConfig::max_message_size`] is dropped and counted
    /// (`Pushed::DroppedNew`); the first such drop is reported with [`Notice::Oversize`].
    pub fn push(&self, payload: Vec<u8>) -> Pushed {
        let size = payload.len();
        if size > self.shared.max_message_size {
            let first = relock(&self.shared.tracker).drop_oversize_new();
            gst::debug!(
                CAT,
                id = &self.shared.name,
                "Dropped a message of {size} bytes: over the size limit"
            );
            if first {
                self.shared.notify(Notice::Oversize {
                    size,
                    limit: SizeLimit::Configured(self.shared.max_message_size),
                });
            }
            return Pushed::DroppedNew { overflow: None };
        }
        let pushed = self.shared.queue.push(Message {
            payload,
            queued_at: Instant::now(),
        });
        let mut tracker = relock(&self.shared.tracker);
        let (overflow, wake) = match pushed {
            Pushed::Queued {
                dropped_oldest,
                wake,
                overflow,
            } => {
                tracker.stats.queued += 1;
                tracker.stats.dropped_queue_full += u64::from(dropped_oldest);
                if dropped_oldest > 0 {
                    gst::trace!(
                        CAT,
                        id = &self.shared.name,
                        "Queue full: dropped the {dropped_oldest} oldest"
                    );
                }
                (overflow, wake)
            }
            Pushed::DroppedNew { overflow } => {
                tracker.stats.queued += 1;
                tracker.stats.dropped_queue_full += 1;
                gst::trace!(
                    CAT,
                    id = &self.shared.name,
                    "Queue full: dropped the new message"
                );
                (overflow, false)
            }
            Pushed::Flushing => (None, false),
        };
        let connected = tracker.stats.connected;
        drop(tracker);
        if wake {
            match &self.shared.spool {
                Some(side) => side.queued(),
                None => self.shared.queued.notify_one(),
            }
        }
        if let Some(overflow) = overflow {
            gst::debug!(
                CAT,
                id = &self.shared.name,
                "Queue full ({:?}, connected: {connected}): dropping with {:?}",
                overflow.bound,
                overflow.policy
            );
            self.shared.notify(Notice::Dropping {
                overflow,
                leaky: self.shared.queue.leaky(),
                connected,
            });
        }
        pushed
    }

    /// The largest payload that can be published now: `max_message_size`, or less when
    /// the broker announced a smaller maximum packet size (MQTT 5).
    pub fn max_payload(&self) -> usize {
        let broker_max = relock(&self.shared.tracker).stats.broker_max_packet;
        let configured = self.shared.max_message_size;
        broker_max.map_or(configured, |max| {
            configured.min((max as usize).saturating_sub(packet_size(&self.shared.topic, 0)))
        })
    }

    /// The leaky policy as configured ([`Leaky::Auto`] included).
    pub fn leaky(&self) -> Leaky {
        self.shared.queue.leaky()
    }

    /// Whether the upstream is live, which decides what [`Leaky::Auto`] does; returns the
    /// policy now in effect.
    pub fn set_upstream_live(&self, live: bool) -> Leaky {
        self.shared.queue.set_upstream_live(live)
    }

    /// Ends the drop episode under way (end of stream), reporting it with
    /// [`Notice::Dropped`].
    pub fn end_drop_episode(&self) {
        if let Some(episode) = self.shared.queue.end_episode() {
            self.shared.notify(Notice::Dropped {
                episode,
                at_end: true,
            });
        }
        if let Some(side) = &self.shared.spool {
            let due = side.drops.lock().unwrap().due(true);
            for notice in due {
                self.shared.notify(notice);
            }
        }
    }

    pub fn stats(&self) -> Stats {
        // The depth read under the tracker lock, as in `flush`: a message being handed
        // over counts once.
        let tracker = relock(&self.shared.tracker);
        let (depth, bytes) = self.shared.depth(&tracker);
        let mut stats = tracker.stats;
        stats.queue_depth = depth;
        stats.queue_bytes = bytes;
        if let Some(side) = &self.shared.spool {
            let memory_only = relock(&side.backlog).memory_only()
                + tracker
                    .unwritten
                    .iter()
                    .filter(|(seq, _)| seq.is_none())
                    .count()
                + tracker
                    .unacked
                    .iter()
                    .filter(|(_, seq, ..)| seq.is_none())
                    .count();
            // Being spooled counts as kept: it is written before the spooler lets go.
            stats.kept = stats.undelivered() - memory_only as u64;
        }
        stats
    }

    /// Unblocks (`true`) or re-enables (`false`) a streaming thread waiting for room or
    /// for a flush.
    pub fn set_flushing(&self, flushing: bool) {
        self.shared.queue.set_flushing(flushing);
        if flushing {
            // A gathering batch is handed over now.
            self.shared.queued.notify_one();
        }
        let _guard = relock(&self.shared.tracker);
        self.shared.progress.notify_all();
    }

    /// Waits until everything queued has been published and, for QoS 1/2, acknowledged.
    /// Gives up at `timeout`, when nothing has completed for `stall` (when set), or when
    /// the queue is set flushing.
    pub fn flush(&self, timeout: Duration, stall: Option<Duration>) -> Flushed {
        let deadline = Instant::now() + timeout;
        let mut last_progress = Instant::now();
        let mut tracker = relock(&self.shared.tracker);
        let mut done = tracker.stats.published;
        loop {
            let (depth, _) = self.shared.depth(&tracker);
            if depth == 0 && tracker.stats.in_flight == 0 {
                return Flushed::Delivered;
            }
            if self.shared.queue.is_flushing() {
                return Flushed::Interrupted;
            }
            let now = Instant::now();
            let now_done = tracker.stats.published;
            if now_done != done {
                done = now_done;
                last_progress = now;
            }
            if now >= deadline || stall.is_some_and(|s| now - last_progress >= s) {
                return Flushed::TimedOut;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            tracker.waiters += 1;
            tracker = self
                .shared
                .progress
                .wait_timeout(tracker, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            tracker.waiters -= 1;
        }
    }

    /// Disconnects, ends the connection task and counts what was still queued as dropped.
    pub fn stop(&self) -> Stats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&self) {
        let Some(connection) = self.connection.lock().unwrap().take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.queue.set_flushing(true);
        // From here on the connection no longer touches the sink's accounting.
        connection.leave(&self.shared);
        if let Some(side) = &self.shared.spool {
            // What is in flight stays in the spool, for the next run.
            self.shared.update(|t| {
                let mut in_flight = t.take_unwritten();
                in_flight.extend(
                    t.unacked
                        .drain(..)
                        .map(|(_, seq, payload, _)| (seq, payload)),
                );
                t.stats.in_flight = 0;
                self.shared.requeue(in_flight);
            });
            {
                let _backlog = relock(&side.backlog);
                side.wake();
            }
            if let Some(spooler) = self.spooler.lock().unwrap().take() {
                let _ = spooler.join();
            }
        }
        let left = self.shared.queue.clear() as u64;
        self.shared.update(|t| {
            let memory_only = self
                .shared
                .spool
                .as_ref()
                .map_or(0, |side| relock(&side.backlog).take_memory_only() as u64);
            t.stats.dropped_stopped += left + t.stats.in_flight + memory_only;
            t.stats.in_flight = 0;
            t.stats.connected = false;
        });
    }
}

/// Blocks SIGPIPE for the calling thread and the threads it starts. The socket writes
/// happen on the runtime's threads: a peer that closes the connection while one is under way
/// then makes it fail with EPIPE (a disconnection the worker handles) instead of raising
/// SIGPIPE, which kills a process that keeps the default action, as `gst-launch-1.0` and
/// most C applications do. The application's own signal handling stays as it is.
fn ignore_sigpipe_on_this_thread() {
    // SAFETY: plain calls on a signal set owned by this function.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            gst::warning!(
                CAT,
                "Cannot block SIGPIPE on a connection thread: error {rc}"
            );
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An upper bound of the size of the PUBLISH packet carrying `payload_size` bytes.
fn packet_size(topic: &str, payload_size: usize) -> usize {
    // Fixed header (5), topic length (2), packet id (2), MQTT 5 properties (a few).
    payload_size + topic.len() + 16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker for a port where nothing listens: it keeps retrying in the background, so
    /// nothing leaves the queue. Records the notices `keep` selects.
    fn unconnected_worker(
        max_message_size: usize,
        limits: Limits,
        keep: fn(&Notice) -> bool,
    ) -> (Worker, Arc<Mutex<Vec<Notice>>>) {
        worker_for(9, max_message_size, limits, keep)
    }

    /// A worker publishing to `port` on 127.0.0.1 with QoS 0.
    fn worker_for(
        port: u16,
        max_message_size: usize,
        limits: Limits,
        keep: fn(&Notice) -> bool,
    ) -> (Worker, Arc<Mutex<Vec<Notice>>>) {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = notices.clone();
        let worker = start_worker(port, max_message_size, limits, move |notice| {
            if keep(&notice) {
                seen.lock().unwrap().push(notice);
            }
        });
        (worker, notices)
    }

    /// A worker publishing to `port` on 127.0.0.1 with QoS 0, its notices handed to `notify`.
    fn start_worker(
        port: u16,
        max_message_size: usize,
        limits: Limits,
        notify: impl Fn(Notice) + Send + Sync + 'static,
    ) -> Worker {
        let config = ConnectionConfig {
            brokers: vec![Broker {
                host: "127.0.0.1".into(),
                port,
            }],
            max_reconnect_delay: Duration::from_secs(30),
            client_id: "worker-test".into(),
            clean_session: true,
            keep_alive: Duration::from_secs(60),
            credentials: None,
            tls: None,
            protocol: super::super::Protocol::V311,
            topic: "t".into(),
            qos: super::super::QoS::AtMostOnce,
            retain: false,
            max_message_size,
        };
        Worker::start(
            "worker-test".into(),
            config,
            limits,
            None,
            None,
            move |_, notice| notify(notice),
        )
        .unwrap()
    }

    const SMALL: Limits = Limits {
        max_messages: 8,
        max_bytes: 1024,
        leaky: Leaky::Downstream,
    };

    /// Waits until `notices` holds one `matching`, for at most 10 s.
    fn wait_notice(notices: &Mutex<Vec<Notice>>, matching: impl Fn(&Notice) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if notices.lock().unwrap().iter().any(&matching) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A panic in a sink's task (here in the handler of its first notice, called from
    /// the task) becomes `Notice::Failed` with the panic's message, and a stop still
    /// returns.
    #[test]
    fn a_panic_in_the_connection_task_is_reported_as_failed() {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let seen = notices.clone();
        let worker = start_worker(9, 1024, SMALL, move |notice| match notice {
            Notice::Disconnected { .. } => panic!("the handler gave up"),
            other => seen.lock().unwrap().push(other),
        });
        assert!(
            wait_notice(&notices, |n| matches!(n, Notice::Failed { .. })),
            "{:?}",
            notices.lock().unwrap()
        );
        assert_eq!(
            *notices.lock().unwrap(),
            [Notice::Failed {
                reason: "the handler gave up".into()
            }]
        );
        assert!(!worker.stats().connected);
        worker.push(vec![0; 10]);
        assert_eq!(worker.stop().dropped_stopped, 1);
        assert_eq!(Arc::strong_count(&worker.shared), 1, "the tasks have ended");
    }

    /// A notice's handler may stop a worker, from the runtime: another sink's (it waits,
    /// letting the runtime move its other tasks to another thread), or its own (it cannot
    /// wait for the task it runs in, which ends once the handler returns).
    #[test]
    fn a_handler_on_the_runtime_can_stop_a_worker() {
        let other = Arc::new(start_worker(9, 1024, SMALL, |_| {}));
        let own: Arc<std::sync::OnceLock<std::sync::Weak<Worker>>> = Arc::default();
        let stopped = Arc::new(Mutex::new(Vec::new()));
        let worker = {
            let (other, own, stopped) = (other.clone(), own.clone(), stopped.clone());
            Arc::new(start_worker(9, 1024, SMALL, move |notice| {
                // A failure reported before the test has the worker to hand is let pass:
                // the next comes after the backoff's first wait.
                let Some(own) = own.get().and_then(std::sync::Weak::upgrade) else {
                    return;
                };
                if let Notice::Disconnected { .. } = notice {
                    other.stop();
                    // Its stop waited until its tasks had ended: they hold nothing of it.
                    assert_eq!(Arc::strong_count(&other.shared), 1);
                    stopped.lock().unwrap().push("other");
                    own.stop();
                    stopped.lock().unwrap().push("own");
                }
            }))
        };
        own.set(Arc::downgrade(&worker)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stopped.lock().unwrap().len() < 2 {
            assert!(
                Instant::now() < deadline,
                "stops done: {:?}",
                stopped.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*stopped.lock().unwrap(), ["other", "own"]);
        // The worker's own task ends after its handler returned.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&worker.shared) > 1 {
            assert!(
                Instant::now() < deadline,
                "the worker's own task did not end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn push_drops_oversize_messages_before_the_queue() {
        let limits = Limits {
            max_messages: 8,
            max_bytes: 1024,
            leaky: Leaky::Downstream,
        };
        let (worker, notices) =
            unconnected_worker(10, limits, |n| matches!(n, Notice::Oversize { .. }));
        assert_eq!(
            worker.push(vec![0; 11]),
            Pushed::DroppedNew { overflow: None }
        );
        assert_eq!(
            worker.push(vec![0; 12]),
            Pushed::DroppedNew { overflow: None }
        );
        assert!(matches!(worker.push(vec![0; 10]), Pushed::Queued { .. }));
        let stats = worker.stats();
        assert_eq!(
            (stats.queued, stats.dropped_oversize, stats.queue_depth),
            (3, 2, 1)
        );
        assert_eq!(
            *notices.lock().unwrap(),
            [Notice::Oversize {
                size: 11,
                limit: SizeLimit::Configured(10)
            }]
        );
        let stats = worker.stop();
        assert_eq!(stats.dropped_stopped, 1);
    }

    #[test]
    fn a_drop_episode_is_reported_once_and_counted_like_stats() {
        for leaky in [Leaky::Downstream, Leaky::Upstream, Leaky::Auto] {
            let limits = Limits {
                max_messages: 2,
                max_bytes: 1024,
                leaky,
            };
            let (worker, notices) = unconnected_worker(1024, limits, |n| {
                matches!(n, Notice::Dropping { .. } | Notice::Dropped { .. })
            });
            // Auto drops (the oldest) only for a live upstream.
            assert_eq!(
                worker.set_upstream_live(true),
                if leaky == Leaky::Auto {
                    Leaky::Downstream
                } else {
                    leaky
                }
            );
            for _ in 0..5 {
                worker.push(vec![0; 10]);
            }
            worker.end_drop_episode();
            let stats = worker.stats();
            assert_eq!(stats.dropped_queue_full, 3, "{leaky:?}: {stats:?}");
            let notices = notices.lock().unwrap().clone();
            assert_eq!(notices.len(), 2, "{leaky:?}: {notices:?}");
            assert!(
                matches!(
                    notices[0],
                    Notice::Dropping {
                        leaky: l,
                        connected: false,
                        ..
                    } if l == leaky
                ),
                "{leaky:?}: {notices:?}"
            );
            match notices[1] {
                Notice::Dropped {
                    episode, at_end, ..
                } => {
                    assert_eq!(episode.dropped, stats.dropped_queue_full, "{leaky:?}");
                    assert!(at_end);
                }
                ref other => panic!("{leaky:?}: {other:?}"),
            }
            // No second report of the same episode.
            worker.end_drop_episode();
            assert_eq!(worker.stop().dropped(), 5, "{leaky:?}: 3 full, 2 stopped");
        }
    }

    #[test]
    fn auto_without_a_live_upstream_waits_and_unlocks() {
        let limits = Limits {
            max_messages: 2,
            max_bytes: 1024,
            leaky: Leaky::Auto,
        };
        let (worker, notices) = unconnected_worker(1024, limits, |n| {
            matches!(n, Notice::Dropping { .. } | Notice::Dropped { .. })
        });
        let worker = Arc::new(worker);
        assert_eq!(worker.set_upstream_live(false), Leaky::No);
        worker.push(vec![0; 10]);
        worker.push(vec![0; 10]);
        let pusher = {
            let worker = worker.clone();
            std::thread::spawn(move || worker.push(vec![0; 10]))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!pusher.is_finished(), "waits for room");
        worker.set_flushing(true);
        assert_eq!(pusher.join().unwrap(), Pushed::Flushing);
        assert_eq!(
            worker.flush(Duration::from_secs(5), None),
            Flushed::Interrupted
        );
        let stats = worker.stats();
        assert_eq!((stats.queued, stats.dropped()), (2, 0), "{stats:?}");
        assert!(notices.lock().unwrap().is_empty());
    }

    /// A real mosquitto on a free loopback port, killed on drop.
    struct Mosquitto {
        child: std::process::Child,
        port: u16,
    }

    impl Mosquitto {
        fn start() -> Mosquitto {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let child = std::process::Command::new("/usr/sbin/mosquitto")
                .args(["-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("mosquitto in /usr/sbin");
            let broker = Mosquitto { child, port };
            let deadline = Instant::now() + Duration::from_secs(15);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "mosquitto did not start");
                std::thread::sleep(Duration::from_millis(10));
            }
            broker
        }
    }

    impl Drop for Mosquitto {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// End of stream pushes a last message and flushes at once, while the worker thread
    /// may be handing that message over: a flush that says `Delivered` must have nothing
    /// in flight. The delay before each flush varies, so that its check falls at every
    /// point of the hand-over.
    #[test]
    fn a_flush_does_not_miss_a_message_being_handed_over() {
        let broker = Mosquitto::start();
        let limits = Limits {
            max_messages: 8,
            max_bytes: 1 << 20,
            leaky: Leaky::No,
        };
        let (worker, _) = worker_for(broker.port, 1024, limits, |_| false);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !worker.stats().connected {
            assert!(Instant::now() < deadline, "not connected");
            std::thread::sleep(Duration::from_millis(5));
        }
        for round in 0..1000u64 {
            worker.push(vec![0; 100]);
            let spin = Instant::now() + Duration::from_micros(round % 80);
            while Instant::now() < spin {
                std::hint::spin_loop();
            }
            let flushed = worker.flush(Duration::from_secs(5), None);
            let stats = worker.stats();
            assert_eq!(flushed, Flushed::Delivered, "round {round}: {stats:?}");
            assert_eq!(
                (stats.published, stats.in_flight, stats.queue_depth),
                (round + 1, 0, 0),
                "round {round}: flushed with a message on its way: {stats:?}"
            );
        }
        let stats = worker.stop();
        assert_eq!(stats.queued, stats.published + stats.dropped(), "{stats:?}");
    }
}
