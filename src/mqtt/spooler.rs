// SPDX-License-Identifier: MPL-2.0

//! The spooler: with `spool-location`, a thread of its own between the queue the streaming
//! thread fills and the connection. It does all the disk work, so that neither the
//! streaming thread nor the connection ever waits for the disk:
//! - takes what the streaming thread queued, appends it to the [`Spool`] and hands it to
//!   the [`Backlog`] the connection publishes from: everything waiting at once, in one
//!   write, with one wake-up of the connection's mover. Messages that come one by one (a
//!   camera) are written as they come; while they arrive back to back (a file job) it
//!   lets a batch gather first, for at most [`LINGER`] (until written, a message would die
//!   with the process), as the mover does. The streaming thread wakes the spooler only
//!   when it waits, for the first message and for a completed batch;
//! - reads back what is only on disk (a previous run's messages, or what did not fit in
//!   memory during an outage) ahead of the connection;
//! - releases what was delivered (the watermark), applies the full and age policies, and
//!   flushes to disk by the sync policy.
//!
//! When the disk fails (full, read-only, gone), messages go on in memory, under the queue's
//! bounds and policy, and the spooler tries the disk again with each new message; the
//! trouble is reported once, and its end too.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::backlog::{Backlog, Pending};
use super::queue::{Message, BACK_TO_BACK, LINGER};
use super::worker::Shared;
use super::{relock, Leaky, Notice};
use crate::spool::{ReadEvent, Record, Spool, SpoolError};

/// How often the spooler looks when nothing wakes it: releases, age limit, sync.
const TICK: Duration = Duration::from_millis(50);
/// Messages taken from the queue at a time.
const BATCH: usize = 64;
/// How often what was delivered is released (a ledger write each time).
const RELEASE_EVERY: Duration = Duration::from_millis(100);

/// The spooler's side of [`Shared`].
pub struct SpoolSide {
    pub backlog: Mutex<Backlog>,
    /// The full and age policies' drops under way; ended at end of stream too.
    pub drops: Mutex<Drops>,
    /// Wakes the spooler: messages queued, room needed in `replay`, stopping.
    pub wake: Condvar,
    /// Set by the spooler, under the `backlog` lock, before it checks the queue and waits;
    /// cleared once it runs again.
    idle: AtomicBool,
}

impl SpoolSide {
    pub fn new(backlog: Backlog) -> Self {
        SpoolSide {
            backlog: Mutex::new(backlog),
            drops: Mutex::default(),
            wake: Condvar::new(),
            idle: AtomicBool::new(false),
        }
    }

    /// Wakes the spooler; call with `backlog` locked, under which the spooler checks
    /// what it waits for before it waits.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Messages were queued for the spooler: wakes it if it waits. While it runs it takes
    /// them anyway, and a wake-up costs a system call even when nobody waits.
    pub fn queued(&self) {
        // Set before the spooler checks the queue: either it sees these messages then, or
        // this sees it idle and waits for the lock, which its wait gives up. Notified once
        // the lock is free again: woken under it, the spooler would wake only to wait for
        // the lock (a second sleep and wake-up).
        if self.idle.load(Ordering::SeqCst) {
            drop(relock(&self.backlog));
            self.wake.notify_one();
        }
    }
}

/// The spool policies beside the storage's own options.
#[derive(Debug, Clone, Copy)]
pub struct Policies {
    /// Messages older than this are dropped (counted, reported).
    pub max_age: Option<Duration>,
}

struct Spooler<'a> {
    shared: &'a Shared,
    side: &'a SpoolSide,
    spool: Spool,
    policies: Policies,
    /// A record read ahead of the disk-only range (it was still in memory).
    lookahead: Option<Record>,
    /// The disk trouble under way, reported once.
    failing: Option<String>,
    /// Corrupt records were reported.
    corrupt_reported: bool,
    last_release: Instant,
}

/// Messages the spool's full or age policy dropped, announced as the queue's drops are: a
/// warning at the first, the count once a second passed without one.
#[derive(Default)]
pub struct Drops {
    under_way: Option<(&'static str, u64, Instant)>,
    started: Option<&'static str>,
}

impl Drops {
    fn count(&mut self, reason: &'static str, count: u64) {
        match &mut self.under_way {
            Some((_, total, last)) => {
                *total += count;
                *last = Instant::now();
            }
            None => {
                self.under_way = Some((reason, count, Instant::now()));
                self.started = Some(reason);
            }
        }
    }

    /// The notices due: the start of an episode, and its end once quiet (or `now`).
    pub fn due(&mut self, end_now: bool) -> Vec<Notice> {
        let mut notices = Vec::new();
        if let Some(reason) = self.started.take() {
            notices.push(Notice::SpoolDropping { reason });
        }
        if let Some((reason, count, last)) = self.under_way {
            if end_now || last.elapsed() >= super::queue::EPISODE_QUIET {
                self.under_way = None;
                notices.push(Notice::SpoolDropped { reason, count });
            }
        }
        notices
    }
}

/// Runs the spooler until the worker stops; then spools what is left in the queue.
///
/// A panic ends the spooler with [`Notice::Failed`] naming the spool (the element posts an
/// error), as a panic in the connection task does, instead of ending it silently: the
/// streaming thread would fill the queue and wait for room that never comes. The locks it
/// may have held are freed of their poison, so that the streaming thread, the connection
/// and a stop go on; the spool is let go (its lock too), and what it holds stays there for
/// the next run.
pub fn run(shared: &Shared, spool: Spool, policies: Policies) {
    let dir = spool.dir().to_owned();
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        spool_until_stopped(shared, spool, policies)
    }));
    let Err(panic) = ran else {
        return;
    };
    let side = shared.spool.as_ref().expect("a spooling worker");
    side.drops.clear_poison();
    shared.clear_poison();
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    // What it had taken from the queue went with it (what it had written stays on disk).
    let lost = shared.update(|t| {
        let lost = std::mem::take(&mut t.spooling) as u64;
        t.stats.dropped_stopped += lost;
        lost
    });
    gst::error!(
        super::worker::CAT,
        id = &shared.name,
        "The spooler panicked: {message}"
    );
    shared.notify(Notice::Failed {
        reason: format!(
            "the thread writing the spool {} panicked: {message}; no new message is spooled \
             or published ({lost} being written went with it), what the spool holds stays \
             there for the next run",
            dir.display()
        ),
    });
}

fn spool_until_stopped(shared: &Shared, spool: Spool, policies: Policies) {
    let side = shared.spool.as_ref().expect("a spooling worker");
    let mut spooler = Spooler {
        shared,
        side,
        spool,
        policies,
        lookahead: None,
        failing: None,
        corrupt_reported: false,
        last_release: Instant::now(),
    };
    loop {
        // Stopping sets the queue flushing after this flag: once both are seen, nothing more
        // can be queued, and what is there is spooled before the spooler ends.
        let stopping = shared.is_stopping() && shared.queue.is_flushing();
        let blocked = spooler.take_queued();
        if stopping {
            break;
        }
        spooler.read_back();
        spooler.apply_age_limit();
        if spooler.last_release.elapsed() >= RELEASE_EVERY {
            spooler.release();
        }
        spooler.sync(false);
        spooler.publish_stats();
        spooler.announce_drops(false);
        let mut backlog = relock(&side.backlog);
        side.idle.store(true, Ordering::SeqCst);
        if (blocked || shared.queue.depth().0 == 0) && !shared.is_stopping() {
            let drained_at = Instant::now();
            backlog = side
                .wake
                .wait_timeout(backlog, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            // Woken for a message right after the queue was emptied: messages arrive back
            // to back (a file job). Written as they come, they would cost a write, and a
            // wake-up of this thread, every message or two.
            if !blocked && drained_at.elapsed() < BACK_TO_BACK && shared.queue.depth().0 > 0 {
                backlog = gather_batch(shared, side, backlog);
            }
        }
        side.idle.store(false, Ordering::SeqCst);
        drop(backlog);
    }
    spooler.release();
    spooler.sync(true);
    spooler.publish_stats();
    spooler.announce_drops(true);
}

/// Lets a batch gather in the queue, for at most [`LINGER`]: the streaming thread wakes
/// the spooler when it completes one (see [`SpoolSide::queued`]). Called, and returns,
/// with the backlog locked and the spooler marked idle.
fn gather_batch<'a>(
    shared: &Shared,
    side: &'a SpoolSide,
    mut backlog: MutexGuard<'a, Backlog>,
) -> MutexGuard<'a, Backlog> {
    let deadline = Instant::now() + LINGER;
    // A flushing queue (stopping, unlocking) has a batch: nothing more comes.
    while !shared.queue.has_batch() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        backlog = side
            .wake
            .wait_timeout(backlog, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    backlog
}

impl Spooler<'_> {
    /// Takes what the streaming thread queued into the spool and the backlog. Stops early
    /// when the spool is full and the policy waits for room: returns whether it did.
    fn take_queued(&mut self) -> bool {
        loop {
            // Taken and counted in one step under the tracker lock, as the mover does: a
            // message is always queued, being spooled, or in the backlog. What waits is
            // taken at once (never waiting for more: until it is written, a message would
            // die with the process), and written with as few writes as the spool can.
            let (batch, ended) = self.shared.update(|t| {
                let (batch, ended) = self.shared.queue.pop_batch(BATCH);
                t.spooling += batch.len();
                (batch, ended)
            });
            if let Some(episode) = ended {
                self.shared.notify(Notice::Dropped {
                    episode,
                    at_end: false,
                });
            }
            if batch.is_empty() {
                return false;
            }
            let fates = self.append(&batch);
            let mut pendings = Vec::with_capacity(batch.len());
            let mut waiting = Vec::new();
            let mut dropped_new = 0;
            for (message, fate) in batch.into_iter().zip(fates) {
                match fate {
                    Fate::Spooled(seq) => pendings.push(pending(Some(seq), message)),
                    Fate::MemoryOnly => pendings.push(pending(None, message)),
                    Fate::Wait => waiting.push(message),
                    Fate::DropNew => dropped_new += 1,
                }
            }
            let blocked = !waiting.is_empty();
            let count = pendings.len() + waiting.len() + dropped_new;
            let handed = !pendings.is_empty();
            let was_empty = self.shared.update(|t| {
                let mut backlog = relock(&self.side.backlog);
                #[cfg(test)]
                tests::injected_panic(&pendings);
                let was_empty = backlog.depth().0 == 0;
                for p in pendings {
                    backlog.push_ready(p);
                }
                drop(backlog);
                if blocked {
                    self.shared.queue.requeue_front(waiting);
                }
                t.stats.dropped_spool_full += dropped_new as u64;
                t.spooling -= count;
                was_empty
            });
            // The mover hands over until nothing is left in memory, then waits: it needs
            // waking only when it has nothing (once for the batch), not for what it finds
            // anyway.
            if handed && was_empty {
                self.shared.queued.notify_one();
            }
            if blocked {
                return true;
            }
        }
    }

    /// Appends the messages' payloads, in their order and with as few writes as the
    /// spool can, following the full policy when the spool is full; says what became of
    /// each. Once one waits for room, those after it wait too (the order is kept).
    fn append(&mut self, batch: &[Message]) -> Vec<Fate> {
        let payloads: Vec<&[u8]> = batch.iter().map(|m| m.payload.as_slice()).collect();
        let mut fates = Vec::with_capacity(batch.len());
        while fates.len() < payloads.len() {
            let first = self.spool.next_sequence();
            let appended = self.spool.append_batch(&payloads[fates.len()..]);
            if appended.count > 0 {
                self.recovered();
            }
            fates.extend((first..).take(appended.count).map(Fate::Spooled));
            let Some(error) = appended.error else {
                break;
            };
            let next = fates.len();
            let fate = match error {
                SpoolError::Full { .. } => match self.shared.queue.current_policy() {
                    Leaky::Upstream => {
                        self.side.drops.lock().unwrap().count("full", 1);
                        Fate::DropNew
                    }
                    Leaky::Downstream if self.drop_oldest(payloads[next].len()) => continue,
                    Leaky::Downstream | Leaky::No | Leaky::Auto => Fate::Wait,
                },
                error => {
                    self.failed(&error);
                    if relock(&self.side.backlog).has_room() {
                        Fate::MemoryOnly
                    } else {
                        Fate::Wait
                    }
                }
            };
            if fate == Fate::Wait {
                fates.resize(payloads.len(), Fate::Wait);
            } else {
                fates.push(fate);
            }
        }
        fates
    }

    /// Makes room by dropping the oldest spooled messages; false when nothing could go.
    fn drop_oldest(&mut self, needed: usize) -> bool {
        match self.spool.drop_oldest(needed) {
            Ok(dropped) if dropped.messages > 0 => {
                self.spool_dropped("full");
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.failed(&e);
                false
            }
        }
    }

    /// The spool dropped its oldest records (`reason`: its full or age policy): what was
    /// pending of them is dropped, counted and announced. Messages in flight stay in
    /// flight (in memory only), neither dropped nor counted.
    /// Counted in the episode under the tracker lock, with the stats: a flush at end of
    /// stream that sees the backlog emptied by the drop finds them in the episode it ends.
    fn spool_dropped(&mut self, reason: &'static str) {
        let next = self.spool.watermark();
        self.shared.update(|t| {
            let dropped = relock(&self.side.backlog).drop_below(next);
            match reason {
                "age" => t.stats.dropped_spool_age += dropped,
                _ => t.stats.dropped_spool_full += dropped,
            }
            if dropped > 0 {
                self.side.drops.lock().unwrap().count(reason, dropped);
            }
        });
    }

    /// Reads disk-only messages back while the backlog wants more.
    fn read_back(&mut self) {
        // The mover is woken once for what this call read back, not once a message.
        let mut read = 0;
        self.read_back_into(&mut read);
        if read > 0 {
            self.shared.queued.notify_one();
        }
    }

    /// [`Spooler::read_back`]'s loop; counts in `read` the messages it put in `replay`.
    fn read_back_into(&mut self, read: &mut usize) {
        loop {
            let wanted = relock(&self.side.backlog).wants_replay();
            let Some(wanted) = wanted else {
                return;
            };
            let record = match self.lookahead.take() {
                Some(record) => record,
                None => match self.spool.read_next() {
                    Ok(Some(ReadEvent::Record(record))) => record,
                    Ok(Some(ReadEvent::Corrupt(corruption))) => {
                        if !std::mem::replace(&mut self.corrupt_reported, true) {
                            self.shared.notify(Notice::SpoolTrouble {
                                problem: Some(format!(
                                    "{corruption}; further damaged records are counted in \
                                     stats (spool-corrupt)"
                                )),
                            });
                        }
                        continue;
                    }
                    Ok(None) => {
                        // Everything written was read, and disk-only messages are left:
                        // their records are gone (damaged at the end, or removed).
                        let mut backlog = relock(&self.side.backlog);
                        if backlog.wants_replay() == Some(wanted) {
                            let lost = backlog.skip_disk();
                            drop(backlog);
                            self.shared.update(|t| t.stats.dropped_corrupt += lost);
                        }
                        return;
                    }
                    Err(e) => {
                        self.failed(&e);
                        return;
                    }
                },
            };
            if record.sequence < wanted {
                // Released or dropped meanwhile.
                continue;
            }
            let mut backlog = relock(&self.side.backlog);
            if !backlog.disk_holds(record.sequence) {
                if backlog.ready_holds(record.sequence) {
                    // Still in memory: read again once it is disk-only.
                    self.lookahead = Some(record);
                    return;
                }
                // Handed over from memory already (or dropped): not wanted.
                continue;
            }
            // Records the spool skipped before it (damaged) are no longer pending.
            let skipped = backlog.push_replay(Pending {
                seq: Some(record.sequence),
                payload: record.payload,
                queued_at: Instant::now(),
            });
            drop(backlog);
            if skipped > 0 {
                self.shared.update(|t| t.stats.dropped_corrupt += skipped);
            }
            *read += 1;
        }
    }

    fn apply_age_limit(&mut self) {
        let Some(max_age) = self.policies.max_age else {
            return;
        };
        match self.spool.drop_older_than(max_age) {
            Ok(dropped) if dropped.messages > 0 => self.spool_dropped("age"),
            Ok(_) => {}
            Err(e) => self.failed(&e),
        }
    }

    /// Releases what was delivered: everything below the lowest sequence still pending.
    fn release(&mut self) {
        self.last_release = Instant::now();
        let watermark = self.shared.update(|t| {
            let backlog = relock(&self.side.backlog);
            backlog.watermark(t.lowest_in_flight()).unwrap_or(u64::MAX)
        });
        let up_to = watermark.min(self.spool.next_sequence());
        if up_to > self.spool.watermark() {
            if let Err(e) = self.spool.release(up_to) {
                self.failed(&e);
            }
        }
    }

    fn sync(&mut self, now: bool) {
        let synced = if now {
            self.spool.sync()
        } else {
            self.spool.sync_if_due(Instant::now()).map(|_| ())
        };
        if let Err(e) = synced {
            self.failed(&e);
        }
    }

    fn announce_drops(&mut self, end_now: bool) {
        let due = self.side.drops.lock().unwrap().due(end_now);
        for notice in due {
            self.shared.notify(notice);
        }
    }

    fn publish_stats(&self) {
        let stats = self.spool.stats();
        self.shared.update(|t| {
            t.stats.spool_messages = stats.messages;
            t.stats.spool_bytes = stats.bytes;
            t.stats.spool_bytes_written = stats.bytes_written;
            t.stats.spool_oldest_age_ms = stats
                .oldest_age
                .map_or(0, |age| age.as_millis().try_into().unwrap_or(u64::MAX));
        });
    }

    fn failed(&mut self, error: &SpoolError) {
        let problem = error.to_string();
        if self.failing.as_deref() != Some(problem.as_str()) {
            gst::debug!(
                super::worker::CAT,
                id = &self.shared.name,
                "Spool: {problem}"
            );
            self.shared.notify(Notice::SpoolTrouble {
                problem: Some(format!(
                    "{problem}: messages go on in memory, under the queue's limits, until \
                     the spool works again"
                )),
            });
            self.failing = Some(problem);
        }
    }

    fn recovered(&mut self) {
        if self.failing.take().is_some() {
            self.shared.notify(Notice::SpoolTrouble { problem: None });
        }
    }
}

/// What became of a message taken from the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Spooled(u64),
    /// The spool failed: in memory only.
    MemoryOnly,
    /// The spool is full and the policy waits for room (or, the spool failing, the
    /// memory bounds are reached): back to the queue.
    Wait,
    /// The spool is full and the policy drops the new message.
    DropNew,
}

fn pending(seq: Option<u64>, message: Message) -> Pending {
    Pending {
        seq,
        payload: Bytes::from(message.payload),
        queued_at: message.queued_at,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        Broker, ConnectionConfig, Limits, Protocol, Pushed, QoS, SpoolStart, Worker,
    };
    use super::*;
    use crate::spool::SpoolOptions;

    /// A payload the spooler panics on, with the backlog and the tracker locked: the worst
    /// place, where both are poisoned.
    const PANIC: &[u8] = b"the spooler panics on this";

    pub(super) fn injected_panic(pendings: &[Pending]) {
        if pendings.iter().any(|p| p.payload == PANIC) {
            panic!("injected for the test");
        }
    }

    fn open_spool(dir: &std::path::Path) -> (Spool, crate::spool::Opened) {
        let options = SpoolOptions {
            identity: "spooler test".into(),
            ..SpoolOptions::default()
        };
        Spool::open(dir, options).unwrap()
    }

    #[test]
    fn a_panic_in_the_spooler_is_reported_as_failed_naming_the_spool() {
        let tmp = tempfile::TempDir::new().unwrap();
        let (spool, _) = open_spool(tmp.path());
        let config = ConnectionConfig {
            // Nothing listens there: everything stays in the backlog.
            brokers: vec![Broker {
                host: "127.0.0.1".into(),
                port: 9,
            }],
            max_reconnect_delay: Duration::from_secs(30),
            client_id: "spooler-test".into(),
            clean_session: true,
            keep_alive: Duration::from_secs(60),
            credentials: None,
            tls: None,
            protocol: Protocol::V311,
            topic: "t".into(),
            qos: QoS::AtLeastOnce,
            retain: false,
            max_message_size: 1024,
        };
        let limits = Limits {
            max_messages: 8,
            max_bytes: 1024,
            leaky: Leaky::No,
        };
        let start = SpoolStart {
            spool,
            policies: Policies { max_age: None },
            replay_share: 50,
        };
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = failures.clone();
        let worker = Worker::start("spooler-test".into(), config, limits, Some(start), None, {
            move |_, notice| {
                if let Notice::Failed { reason } = notice {
                    seen.lock().unwrap().push(reason);
                }
            }
        })
        .unwrap();

        worker.push(b"before".to_vec());
        worker.push(PANIC.to_vec());
        let deadline = Instant::now() + Duration::from_secs(10);
        while failures.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let failures = failures.lock().unwrap().clone();
        assert_eq!(failures.len(), 1, "{failures:?}");
        let dir = tmp.path().display().to_string();
        assert!(
            failures[0].contains(&dir) && failures[0].contains("injected for the test"),
            "{}",
            failures[0]
        );

        // The locks it held work for the others: the streaming thread queues, stats and a
        // stop return.
        assert!(
            matches!(worker.push(b"after".to_vec()), Pushed::Queued { .. }),
            "the queue takes messages"
        );
        let stats = worker.stop();
        assert_eq!(stats.queued, 3, "{stats:?}");
        // "after", never taken, and what the spooler had taken when it panicked.
        assert!(stats.dropped_stopped >= 2, "{stats:?}");

        // The spool was let go, and keeps what was written before the panic.
        let (_spool, opened) = open_spool(tmp.path());
        assert!(opened.messages >= 1, "{opened:?}");
    }
}
