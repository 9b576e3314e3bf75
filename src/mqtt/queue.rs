// SPDX-License-Identifier: MPL-2.0

//! The bounded queue between the streaming thread and the connection worker.
//!
//! The streaming thread pushes, the worker pops. Bounds are in messages and in bytes; what
//! happens when a push finds the queue full is the [`Leaky`] policy. With
//! [`Leaky::No`], the push waits for room but gives up when the queue is set flushing
//! (the sink's `unlock()`), so state changes and seeks never hang.
//!
//! A push tells the consumer to look only when the queue was empty or a *batch* has
//! gathered (half the bounds, at most [`MAX_BATCH`] messages), so that a consumer that lets
//! messages gather while they arrive back to back is woken once per batch, not per message.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use gst::glib;

/// The most messages that make a batch.
pub const MAX_BATCH: usize = 32;

/// What to do with a new message when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstMqttPublishLeaky")]
pub enum Leaky {
    /// Wait for room, blocking the streaming thread (lossless, for file processing).
    #[enum_value(
        name = "None: wait for room, blocking the pipeline (lossless)",
        nick = "none"
    )]
    No,
    /// Drop the new message.
    #[enum_value(name = "Upstream: drop the new message", nick = "upstream")]
    Upstream,
    /// Drop the oldest queued message to make room.
    #[default]
    #[enum_value(
        name = "Downstream: drop the oldest queued message",
        nick = "downstream"
    )]
    Downstream,
}

/// One message ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub payload: Vec<u8>,
    /// When the message was queued, for latency accounting.
    pub queued_at: Instant,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped_oldest` older messages were dropped to make room. `wake`: the queue
    /// was empty or now holds a batch, so the consumer should look.
    Queued { dropped_oldest: u32, wake: bool },
    /// Dropped: the queue was full and the policy drops new messages.
    DroppedNew,
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
    /// Threads waiting on `room` (a `leaky=none` push). Notifying a condition variable is
    /// a system call even when nobody waits, so `pop` only notifies when one does.
    waiters: usize,
}

#[derive(Debug)]
pub struct Queue {
    limits: Limits,
    /// A batch: this many messages or this many bytes.
    batch_messages: usize,
    batch_bytes: usize,
    inner: Mutex<Inner>,
    /// Signalled when a pop makes room or flushing changes.
    room: Condvar,
}

impl Queue {
    pub fn new(limits: Limits) -> Self {
        Queue {
            limits,
            batch_messages: (limits.max_messages / 2).clamp(1, MAX_BATCH),
            batch_bytes: (limits.max_bytes / 2).max(1),
            inner: Mutex::default(),
            room: Condvar::new(),
        }
    }

    fn holds_batch(&self, inner: &Inner) -> bool {
        inner.messages.len() >= self.batch_messages || inner.bytes >= self.batch_bytes
    }

    fn is_full(&self, inner: &Inner, incoming: usize) -> bool {
        !inner.messages.is_empty()
            && (inner.messages.len() >= self.limits.max_messages
                || inner.bytes + incoming > self.limits.max_bytes)
    }

    /// Queues `message` following the leaky policy.
    pub fn push(&self, message: Message) -> Pushed {
        let size = message.payload.len();
        let mut inner = self.inner.lock().unwrap();
        let mut dropped_oldest = 0;
        loop {
            if inner.flushing {
                return Pushed::Flushing;
            }
            if !self.is_full(&inner, size) {
                break;
            }
            match self.limits.leaky {
                Leaky::Upstream => return Pushed::DroppedNew,
                Leaky::Downstream => {
                    let old = inner.messages.pop_front().expect("full queue is not empty");
                    inner.bytes -= old.payload.len();
                    dropped_oldest += 1;
                }
                Leaky::No => {
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
        }
    }

    /// Takes the oldest message.
    pub fn pop(&self) -> Option<Message> {
        let mut inner = self.inner.lock().unwrap();
        let message = inner.messages.pop_front()?;
        inner.bytes -= message.payload.len();
        let waiting = inner.waiters > 0;
        drop(inner);
        if waiting {
            self.room.notify_all();
        }
        Some(message)
    }

    /// Whether a batch has gathered (or the queue is flushing: nothing more will come).
    pub fn has_batch(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.flushing || self.holds_batch(&inner)
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

    /// Empties the queue, returning how many messages were in it.
    pub fn clear(&self) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.messages.len();
        inner.messages.clear();
        inner.bytes = 0;
        drop(inner);
        self.room.notify_all();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn msg(size: usize, tag: u8) -> Message {
        Message {
            payload: vec![tag; size],
            queued_at: Instant::now(),
        }
    }

    fn queue(max_messages: usize, max_bytes: usize, leaky: Leaky) -> Queue {
        Queue::new(Limits {
            max_messages,
            max_bytes,
            leaky,
        })
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
        assert!(matches!(
            q.push(msg(1, 3)),
            Pushed::Queued {
                dropped_oldest: 1,
                ..
            }
        ));
        assert_eq!(q.pop().unwrap().payload, [2]);
        assert_eq!(q.pop().unwrap().payload, [3]);
        assert!(q.pop().is_none());
    }

    #[test]
    fn upstream_drops_the_new_one() {
        let q = queue(2, 1000, Leaky::Upstream);
        q.push(msg(1, 1));
        q.push(msg(1, 2));
        assert_eq!(q.push(msg(1, 3)), Pushed::DroppedNew);
        assert_eq!(q.pop().unwrap().payload, [1]);
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
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push(msg(1, 2)))
        };
        assert_eq!(q.pop().unwrap().payload, [1]);
        assert_eq!(dropped(pusher.join().unwrap()), 0);

        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push(msg(1, 3)))
        };
        // The queue stays full; only flushing can release the pusher.
        q.set_flushing(true);
        assert_eq!(pusher.join().unwrap(), Pushed::Flushing);
    }
}
