// SPDX-License-Identifier: MPL-2.0

//! The bounded queue between the streaming thread and the connection worker.
//!
//! The streaming thread pushes, the worker pops. Bounds are in messages and in bytes; what
//! happens when a push finds the queue full is the [`Leaky`] policy. A push that waits for
//! room ([`Leaky::No`], and [`Leaky::Auto`] while the upstream is not live) gives up when
//! the queue is set flushing (the sink's `unlock()`), so state changes and seeks never hang.
//!
//! Drops come in *episodes*: the first drop of a full queue starts one (the push says so,
//! so that it can be announced), and it ends when the queue has drained to half its
//! bounds with no drop for [`EPISODE_QUIET`] (the pop says so, with the count), or when
//! [`Queue::end_episode`] closes it. The quiet time keeps a source that overflows the
//! queue again and again, milliseconds apart, in one episode rather than hundreds.
//!
//! A push tells the consumer to look only when the queue was empty or a *batch* has
//! gathered (half the bounds, at most [`MAX_BATCH`] messages), so that a consumer that lets
//! messages gather while they arrive back to back is woken once per batch, not per message.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The most messages that make a batch.
pub const MAX_BATCH: usize = 64;

/// Messages queued within this time of the consumer emptying the queue count as arriving
/// back to back: the consumer then lets a batch gather.
pub const BACK_TO_BACK: Duration = Duration::from_millis(1);
/// How long a consumer lets a batch gather when messages arrive back to back; a full
/// batch ends the wait sooner.
pub const LINGER: Duration = Duration::from_millis(1);

/// A drop episode ends only when nothing was dropped for this long.
pub const EPISODE_QUIET: Duration = Duration::from_secs(1);

/// What to do with a new message when the queue is full (the element's `leaky` property
/// maps onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Leaky {
    /// Wait for room, blocking the streaming thread (lossless, for file processing).
    No,
    /// Drop the new message.
    Upstream,
    /// Drop the oldest queued message to make room.
    Downstream,
    /// [`Leaky::No`] when the upstream is not live (a file), [`Leaky::Downstream`] when it
    /// is (a camera), as [`Queue::set_upstream_live`] says.
    #[default]
    Auto,
}

impl Leaky {
    /// The nick, as a user sets it.
    pub fn nick(self) -> &'static str {
        match self {
            Leaky::No => "no",
            Leaky::Upstream => "upstream",
            Leaky::Downstream => "downstream",
            Leaky::Auto => "auto",
        }
    }
}

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    /// When the message was queued, for latency accounting.
    pub queued_at: Instant,
}

/// The bound a full queue reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// `max_messages` messages are queued.
    Messages(usize),
    /// The new message would take the queue over `max_bytes` bytes.
    Bytes(usize),
}

/// The first drop of an episode: the bound that was reached and the policy that dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Overflow {
    pub bound: Bound,
    /// [`Leaky::Upstream`] or [`Leaky::Downstream`].
    pub policy: Leaky,
}

/// Messages dropped for a full queue, from the first drop until the queue had room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropEpisode {
    pub dropped: u64,
    /// When the first and the last message were dropped.
    pub first_drop: Instant,
    pub last_drop: Instant,
    /// [`Leaky::Upstream`] or [`Leaky::Downstream`].
    pub policy: Leaky,
}

impl DropEpisode {
    /// From the first drop to the last.
    pub fn duration(&self) -> Duration {
        self.last_drop - self.first_drop
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped_oldest` older messages were dropped to make room. `wake`: the queue
    /// was empty or now holds a batch, so the consumer should look. `overflow`: these drops
    /// started an episode.
    Queued {
        dropped_oldest: u32,
        wake: bool,
        overflow: Option<Overflow>,
    },
    /// Dropped: the queue was full and the policy drops new messages (`overflow`: this
    /// drop started an episode), or the worker refused the message for its size.
    DroppedNew { overflow: Option<Overflow> },
    /// Not queued: the queue is flushing (the sink is unlocking or stopping).
    Flushing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub leaky: Leaky,
}

#[derive(Debug, Default)]
struct Inner {
    messages: VecDeque<Message>,
    bytes: usize,
    flushing: bool,
    /// Threads waiting on `room` (a push waiting for room). Notifying a condition variable
    /// is a system call even when nobody waits, so `pop` only notifies when one does.
    waiters: usize,
    /// The upstream is live: [`Leaky::Auto`] drops the oldest instead of waiting. Until
    /// told, the queue takes the upstream for not live, as `GstBaseSink` does.
    upstream_live: bool,
    /// The drop episode under way.
    episode: Option<DropEpisode>,
}

#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    /// A batch: this many messages or this many bytes.
    batch_messages: usize,
    batch_bytes: usize,
    inner: Mutex<Inner>,
    /// Signalled when a pop makes room or flushing or the policy changes.
    room: Condvar,
    /// [`EPISODE_QUIET`], shorter in tests.
    quiet: Duration,
}

impl Queue {
    pub fn new(limits: Limits) -> Self {
        Queue {
            limits,
            batch_messages: (limits.max_messages / 2).clamp(1, MAX_BATCH),
            batch_bytes: (limits.max_bytes / 2).max(1),
            inner: Mutex::default(),
            room: Condvar::new(),
            quiet: EPISODE_QUIET,
        }
    }

    /// The policy as configured ([`Leaky::Auto`] included).
    pub fn leaky(&self) -> Leaky {
        self.limits.leaky
    }

    fn holds_batch(&self, inner: &Inner) -> bool {
        inner.messages.len() >= self.batch_messages || inner.bytes >= self.batch_bytes
    }

    fn full(&self, inner: &Inner, incoming: usize) -> Option<Bound> {
        if inner.messages.is_empty() {
            None
        } else if inner.messages.len() >= self.limits.max_messages {
            Some(Bound::Messages(self.limits.max_messages))
        } else if inner.bytes + incoming > self.limits.max_bytes {
            Some(Bound::Bytes(self.limits.max_bytes))
        } else {
            None
        }
    }

    /// At or below half the bounds: a drop episode is over.
    fn drained(&self, inner: &Inner) -> bool {
        inner.messages.len() * 2 <= self.limits.max_messages
            && inner.bytes * 2 <= self.limits.max_bytes
    }

    fn policy(&self, inner: &Inner) -> Leaky {
        match self.limits.leaky {
            Leaky::Auto if inner.upstream_live => Leaky::Downstream,
            Leaky::Auto => Leaky::No,
            leaky => leaky,
        }
    }

    /// The policy in effect now ([`Leaky::Auto`] resolved).
    pub fn current_policy(&self) -> Leaky {
        self.policy(&self.inner.lock().unwrap())
    }

    /// Whether the upstream is live, which decides what [`Leaky::Auto`] does; returns the
    /// policy now in effect. A push waiting for room looks again.
    pub fn set_upstream_live(&self, live: bool) -> Leaky {
        let mut inner = self.inner.lock().unwrap();
        inner.upstream_live = live;
        let policy = self.policy(&inner);
        drop(inner);
        self.room.notify_all();
        policy
    }

    /// Counts a drop in the episode under way, or starts one: then returns the overflow.
    fn count_drop(inner: &mut Inner, bound: Bound, policy: Leaky) -> Option<Overflow> {
        let now = Instant::now();
        match &mut inner.episode {
            Some(episode) => {
                episode.dropped += 1;
                episode.last_drop = now;
                None
            }
            None => {
                inner.episode = Some(DropEpisode {
                    dropped: 1,
                    first_drop: now,
                    last_drop: now,
                    policy,
                });
                Some(Overflow { bound, policy })
            }
        }
    }

    /// Queues `message` following the leaky policy.
    pub fn push(&self, message: Message) -> Pushed {
        let size = message.payload.len();
        let mut inner = self.inner.lock().unwrap();
        let mut dropped_oldest = 0;
        let mut overflow = None;
        loop {
            if inner.flushing {
                return Pushed::Flushing;
            }
            let Some(bound) = self.full(&inner, size) else {
                break;
            };
            match self.policy(&inner) {
                Leaky::Upstream => {
                    let overflow = Self::count_drop(&mut inner, bound, Leaky::Upstream);
                    return Pushed::DroppedNew { overflow };
                }
                Leaky::Downstream => {
                    let old = inner.messages.pop_front().expect("full queue is not empty");
                    inner.bytes -= old.payload.len();
                    dropped_oldest += 1;
                    let started = Self::count_drop(&mut inner, bound, Leaky::Downstream);
                    overflow = overflow.or(started);
                }
                Leaky::No | Leaky::Auto => {
                    inner.waiters += 1;
                    inner = self.room.wait(inner).unwrap();
                    inner.waiters -= 1;
                }
            }
        }
        let had_batch = self.holds_batch(&inner);
        inner.bytes += size;
        inner.messages.push_back(message);
        let wake = inner.messages.len() == 1 || (!had_batch && self.holds_batch(&inner));
        Pushed::Queued {
            dropped_oldest,
            wake,
            overflow,
        }
    }

    /// Takes the oldest message, and the drop episode that ends because the queue has
    /// drained to half its bounds and nothing was dropped for the quiet time.
    pub fn pop(&self) -> Option<(Message, Option<DropEpisode>)> {
        let mut inner = self.inner.lock().unwrap();
        let message = inner.messages.pop_front()?;
        inner.bytes -= message.payload.len();
        Some((message, self.popped(inner)))
    }

    /// Takes up to `max` of the oldest messages at once, as [`Queue::pop`] takes one: a
    /// producer waiting for room is woken once for them all.
    pub fn pop_batch(&self, max: usize) -> (Vec<Message>, Option<DropEpisode>) {
        let mut inner = self.inner.lock().unwrap();
        let count = inner.messages.len().min(max);
        if count == 0 {
            return (Vec::new(), None);
        }
        let batch: Vec<Message> = inner.messages.drain(..count).collect();
        inner.bytes -= batch.iter().map(|m| m.payload.len()).sum::<usize>();
        (batch, self.popped(inner))
    }

    /// After messages were taken: the drop episode that ends, and a producer waiting for
    /// room woken.
    fn popped(&self, mut inner: std::sync::MutexGuard<'_, Inner>) -> Option<DropEpisode> {
        let ended = match inner.episode {
            Some(episode) if self.drained(&inner) && episode.last_drop.elapsed() >= self.quiet => {
                inner.episode.take()
            }
            _ => None,
        };
        let waiting = inner.waiters > 0;
        drop(inner);
        if waiting {
            self.room.notify_all();
        }
        ended
    }

    /// Puts `messages` back at the head of the queue, in their order, whatever the bounds:
    /// they were queued before and taken back from the connection (never written, or
    /// not acknowledged in a session the broker lost).
    pub fn requeue_front(&self, messages: Vec<Message>) {
        let mut inner = self.inner.lock().unwrap();
        for message in messages.into_iter().rev() {
            inner.bytes += message.payload.len();
            inner.messages.push_front(message);
        }
    }

    /// Ends the drop episode under way, if any (end of stream).
    pub fn end_episode(&self) -> Option<DropEpisode> {
        self.inner.lock().unwrap().episode.take()
    }

    /// Whether a batch has gathered (or the queue is flushing: nothing more will come).
    pub fn has_batch(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.flushing || self.holds_batch(&inner)
    }

    /// After a panic in a thread that held the lock: the queue can be locked again.
    pub fn clear_poison(&self) {
        self.inner.clear_poison();
    }

    /// Number of queued messages and their bytes.
    pub fn depth(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.messages.len(), inner.bytes)
    }

    pub fn is_flushing(&self) -> bool {
        self.inner.lock().unwrap().flushing
    }

    /// Makes waiting and future pushes return [`Pushed::Flushing`] until `set_flushing(false)`.
    pub fn set_flushing(&self, flushing: bool) {
        self.inner.lock().unwrap().flushing = flushing;
        self.room.notify_all();
    }

    /// Empties the queue, returning how many messages were in it. A drop episode under way
    /// ends with it, unreported: what stopping discards is counted on its own.
    pub fn clear(&self) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.messages.len();
        inner.messages.clear();
        inner.bytes = 0;
        inner.episode = None;
        drop(inner);
        self.room.notify_all();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn msg(size: usize, tag: u8) -> Message {
        Message {
            payload: vec![tag; size],
            queued_at: Instant::now(),
        }
    }

    /// A queue whose drop episodes end as soon as it has drained to half its bounds.
    fn queue(max_messages: usize, max_bytes: usize, leaky: Leaky) -> Queue {
        Queue {
            quiet: Duration::ZERO,
            ..Queue::new(Limits {
                max_messages,
                max_bytes,
                leaky,
            })
        }
    }

    fn dropped(pushed: Pushed) -> u32 {
        match pushed {
            Pushed::Queued { dropped_oldest, .. } => dropped_oldest,
            other => panic!("not queued: {other:?}"),
        }
    }

    fn wakes(pushed: Pushed) -> bool {
        matches!(pushed, Pushed::Queued { wake: true, .. })
    }

    fn overflow(pushed: Pushed) -> Option<Overflow> {
        match pushed {
            Pushed::Queued { overflow, .. } | Pushed::DroppedNew { overflow } => overflow,
            Pushed::Flushing => None,
        }
    }

    fn payload(q: &Queue) -> Vec<u8> {
        q.pop().expect("a message").0.payload
    }

    /// Pushes from another thread; the handle's result says what the push did.
    fn push_from_thread(q: &Arc<Queue>, tag: u8) -> std::thread::JoinHandle<Pushed> {
        let q = q.clone();
        std::thread::spawn(move || q.push(msg(1, tag)))
    }

    /// Gives a pushing thread time to reach its wait.
    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn the_consumer_is_woken_for_the_first_message_and_once_per_batch() {
        let q = queue(256, 1 << 20, Leaky::Downstream);
        assert!(
            wakes(q.push(msg(10, 0))),
            "first message into an empty queue"
        );
        for i in 2..MAX_BATCH {
            assert!(!wakes(q.push(msg(10, 0))), "message {i} of a batch");
            assert!(!q.has_batch());
        }
        assert!(wakes(q.push(msg(10, 0))), "the message completing a batch");
        assert!(q.has_batch());
        assert!(!wakes(q.push(msg(10, 0))), "a batch is already there");

        // Bytes make a batch too: half of max-queued-bytes.
        let q = queue(256, 100, Leaky::Downstream);
        assert!(wakes(q.push(msg(30, 0))));
        assert!(!wakes(q.push(msg(10, 0))), "40 bytes of 100");
        assert!(wakes(q.push(msg(10, 0))), "50 bytes of 100");

        // A small queue: half of max-queued-messages.
        let q = queue(4, 1 << 20, Leaky::Downstream);
        assert!(wakes(q.push(msg(1, 0))));
        assert!(wakes(q.push(msg(1, 0))), "2 of 4 messages");

        // A flushing queue ends any wait for a batch.
        let q = queue(256, 1 << 20, Leaky::Downstream);
        q.push(msg(1, 0));
        q.set_flushing(true);
        assert!(q.has_batch());
    }

    #[test]
    fn downstream_drops_the_oldest() {
        let q = queue(2, 1000, Leaky::Downstream);
        q.push(msg(1, 1));
        q.push(msg(1, 2));
        assert_eq!(dropped(q.push(msg(1, 3))), 1);
        assert_eq!(payload(&q), [2]);
        assert_eq!(payload(&q), [3]);
        assert!(q.pop().is_none());
    }

    #[test]
    fn upstream_drops_the_new_one() {
        let q = queue(2, 1000, Leaky::Upstream);
        q.push(msg(1, 1));
        q.push(msg(1, 2));
        assert!(matches!(q.push(msg(1, 3)), Pushed::DroppedNew { .. }));
        assert_eq!(payload(&q), [1]);
    }

    #[test]
    fn byte_limit_counts_and_a_lone_big_message_still_fits() {
        let q = queue(100, 10, Leaky::Downstream);
        assert_eq!(dropped(q.push(msg(6, 1))), 0);
        assert_eq!(dropped(q.push(msg(6, 2))), 1);
        assert_eq!(q.depth(), (1, 6));
        // Bigger than the byte limit on its own: queued alone rather than never.
        assert_eq!(dropped(q.push(msg(20, 3))), 1);
        assert_eq!(q.depth(), (1, 20));
    }

    #[test]
    fn blocking_push_waits_for_room_and_gives_up_when_flushing() {
        let q = Arc::new(queue(1, 1000, Leaky::No));
        q.push(msg(1, 1));
        let pusher = push_from_thread(&q, 2);
        assert_eq!(payload(&q), [1]);
        assert_eq!(dropped(pusher.join().unwrap()), 0);

        let pusher = push_from_thread(&q, 3);
        // The queue stays full; only flushing can release the pusher.
        q.set_flushing(true);
        assert_eq!(pusher.join().unwrap(), Pushed::Flushing);
    }

    #[test]
    fn pop_batch_takes_the_oldest_in_order_and_makes_room_for_a_waiting_push() {
        let q = Arc::new(queue(3, 1000, Leaky::No));
        for tag in 1..=3 {
            q.push(msg(usize::from(tag), tag));
        }
        let pusher = push_from_thread(&q, 4);
        let (batch, ended) = q.pop_batch(2);
        let tags: Vec<Vec<u8>> = batch.into_iter().map(|m| m.payload).collect();
        assert_eq!((tags, ended), (vec![vec![1], vec![2, 2]], None));
        assert_eq!(
            dropped(pusher.join().unwrap()),
            0,
            "the waiting push got room"
        );
        assert_eq!(q.depth(), (2, 3 + 1), "messages 3 and 4 and their bytes");
        let (batch, _) = q.pop_batch(10);
        assert_eq!(batch.len(), 2);
        assert_eq!(q.pop_batch(10).0.len(), 0);
        assert_eq!(q.depth(), (0, 0));
    }

    #[test]
    fn auto_waits_for_room_unless_the_upstream_is_live() {
        // Not told otherwise, the upstream is taken for not live: the push waits.
        let q = Arc::new(queue(1, 1000, Leaky::Auto));
        assert_eq!(q.leaky(), Leaky::Auto);
        q.push(msg(1, 1));
        let pusher = push_from_thread(&q, 2);
        settle();
        assert!(!pusher.is_finished(), "waits for room");
        assert_eq!(payload(&q), [1]);
        assert_eq!(dropped(pusher.join().unwrap()), 0, "nothing dropped");

        // A waiting push gives up when flushing, as with leaky=no.
        let pusher = push_from_thread(&q, 3);
        settle();
        q.set_flushing(true);
        assert_eq!(pusher.join().unwrap(), Pushed::Flushing);
        q.set_flushing(false);

        // Live: the oldest goes.
        assert_eq!(q.set_upstream_live(true), Leaky::Downstream);
        let pushed = q.push(msg(1, 4));
        assert_eq!(dropped(pushed), 1);
        assert_eq!(payload(&q), [4]);

        // Not live again: waiting again.
        assert_eq!(q.set_upstream_live(false), Leaky::No);
        q.push(msg(1, 5));
        let pusher = push_from_thread(&q, 6);
        settle();
        assert!(!pusher.is_finished(), "waits for room");
        // Learning that the upstream is live releases a waiting push, dropping the oldest.
        q.set_upstream_live(true);
        assert_eq!(dropped(pusher.join().unwrap()), 1);
        assert_eq!(payload(&q), [6]);
    }

    #[test]
    fn explicit_policies_ignore_liveness() {
        for leaky in [Leaky::No, Leaky::Upstream, Leaky::Downstream] {
            let q = queue(1, 1000, leaky);
            assert_eq!(q.set_upstream_live(true), leaky);
            assert_eq!(q.set_upstream_live(false), leaky);
        }
    }

    #[test]
    fn a_drop_episode_starts_at_the_first_drop_and_ends_at_half_the_bounds() {
        for leaky in [Leaky::Downstream, Leaky::Upstream] {
            let q = queue(4, 1000, leaky);
            for i in 0..4 {
                assert_eq!(overflow(q.push(msg(1, i))), None, "{leaky:?}: room");
            }
            assert_eq!(
                overflow(q.push(msg(1, 4))),
                Some(Overflow {
                    bound: Bound::Messages(4),
                    policy: leaky
                }),
                "{leaky:?}: the first drop starts an episode"
            );
            for i in 5..10 {
                assert_eq!(overflow(q.push(msg(1, i))), None, "{leaky:?}: counted");
            }
            // 4 queued: popping to 3 is not enough, 2 is half.
            assert_eq!(q.pop().unwrap().1, None, "{leaky:?}");
            let ended = q.pop().unwrap().1.expect("the episode ends at half");
            assert_eq!(ended.dropped, 6, "{leaky:?}");
            assert_eq!(q.pop().unwrap().1, None, "{leaky:?}: ended once");

            // The next overflow is a new episode.
            q.push(msg(1, 0));
            q.push(msg(1, 0));
            q.push(msg(1, 0));
            assert!(overflow(q.push(msg(1, 0))).is_some(), "{leaky:?}");
            assert_eq!(q.end_episode().map(|e| e.dropped), Some(1), "{leaky:?}");
            assert_eq!(q.end_episode(), None, "{leaky:?}");
        }
    }

    #[test]
    fn a_drop_episode_lasts_until_nothing_was_dropped_for_the_quiet_time() {
        let q = Queue {
            quiet: Duration::from_millis(200),
            ..queue(2, 1000, Leaky::Downstream)
        };
        q.push(msg(1, 0));
        q.push(msg(1, 0));
        assert!(overflow(q.push(msg(1, 0))).is_some());
        // Drained at once, but the last drop was just now: the episode goes on, and the
        // next overflow is part of it.
        assert_eq!(q.pop().unwrap().1, None);
        assert_eq!(q.pop().unwrap().1, None);
        q.push(msg(1, 0));
        q.push(msg(1, 0));
        assert_eq!(overflow(q.push(msg(1, 0))), None, "the same episode");
        std::thread::sleep(Duration::from_millis(250));
        let ended = q.pop().unwrap().1.expect("quiet for long enough");
        assert_eq!(ended.dropped, 2);
        assert!(
            ended.duration() < Duration::from_millis(200),
            "first to last drop"
        );
    }

    #[test]
    fn a_drop_for_bytes_names_the_byte_bound() {
        let q = queue(100, 10, Leaky::Downstream);
        q.push(msg(6, 1));
        assert_eq!(
            overflow(q.push(msg(6, 2))),
            Some(Overflow {
                bound: Bound::Bytes(10),
                policy: Leaky::Downstream
            })
        );
        // Popping the one message left drains the queue: the episode ends.
        assert_eq!(q.pop().unwrap().1.map(|e| e.dropped), Some(1));
    }

    #[test]
    fn waiting_for_room_is_no_drop() {
        let q = Arc::new(queue(1, 1000, Leaky::No));
        q.push(msg(1, 1));
        let pusher = push_from_thread(&q, 2);
        settle();
        assert_eq!(q.pop().unwrap().1, None);
        assert_eq!(overflow(pusher.join().unwrap()), None);
        assert_eq!(q.end_episode(), None);
    }

    #[test]
    fn clearing_ends_an_episode_silently() {
        let q = queue(1, 1000, Leaky::Downstream);
        q.push(msg(1, 1));
        assert!(overflow(q.push(msg(1, 2))).is_some());
        assert_eq!(q.clear(), 1);
        assert_eq!(q.end_episode(), None);
    }
}
