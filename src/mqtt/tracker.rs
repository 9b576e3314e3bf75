// SPDX-License-Identifier: MPL-2.0

//! What happened to every message: the counters a sink reports ([`Stats`]) and the
//! per-message bookkeeping between the mover and the poller ([`Tracker`]), which keeps each
//! message in exactly one bucket: queued, in flight, published or dropped.

use std::collections::VecDeque;

use bytes::Bytes;

/// Message counters; see the sink's `stats` property for their meaning.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub queued: u64,
    pub published: u64,
    pub acknowledged: u64,
    pub dropped_queue_full: u64,
    pub dropped_oversize: u64,
    pub dropped_disconnected: u64,
    pub dropped_stopped: u64,
    /// QoS 1/2 messages published again because the broker lost the session before
    /// acknowledging them (each also counts once in `published` when acknowledged).
    pub republished: u64,
    pub reconnects: u64,
    pub bytes_sent: u64,
    pub connected: bool,
    /// Handed to rumqttc and not yet written (QoS 0) or acknowledged (QoS 1/2).
    pub in_flight: u64,
    /// Largest packet the broker accepts (MQTT 5 CONNACK), when it said.
    pub broker_max_packet: Option<u32>,
    pub queue_depth: u64,
    pub queue_bytes: u64,
    /// With a spool: messages dropped by its full and age policies, and damaged records
    /// skipped when reading back.
    pub dropped_spool_full: u64,
    pub dropped_spool_age: u64,
    pub dropped_corrupt: u64,
    /// Messages the previous run left in the spool, taken over at start (counted queued).
    pub restored: u64,
    /// Messages read back from the spool and handed over.
    pub replayed: u64,
    /// What the spool holds: messages, bytes (record headers included), the oldest's age.
    pub spool_messages: u64,
    pub spool_bytes: u64,
    pub spool_oldest_age_ms: u64,
    /// Bytes written to the spool's files (record headers included).
    pub spool_bytes_written: u64,
    /// Of the messages not delivered yet (queued or in flight), those safe in the spool.
    pub kept: u64,
}

impl Stats {
    /// Every message dropped, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_queue_full
            + self.dropped_oversize
            + self.dropped_disconnected
            + self.dropped_stopped
            + self.dropped_spool_full
            + self.dropped_spool_age
            + self.dropped_corrupt
    }

    /// Messages not delivered yet: still queued or in flight.
    pub fn undelivered(&self) -> u64 {
        self.queue_depth + self.in_flight
    }

    /// Messages that did not make it (at the end of a run): dropped or never delivered,
    /// and not kept in the spool for the next run.
    pub fn lost(&self) -> u64 {
        self.dropped() + self.undelivered() - self.kept.min(self.undelivered())
    }
}

/// Per-message bookkeeping between the mover and the poller. Every message handed to
/// rumqttc is `in_flight` until it is complete: written to the socket for QoS 0,
/// acknowledged for QoS 1/2; then it counts as `published`. A message taken back (never
/// written, or not acknowledged in a session the broker lost) goes back to the queue. So
/// each message is in exactly one bucket.
#[derive(Debug, Default)]
pub(super) struct Tracker {
    pub(super) stats: Stats,
    /// Messages handed over and not yet written, in hand-over order, with their place in
    /// the spool.
    pub(super) unwritten: VecDeque<(Option<u64>, Bytes)>,
    /// Messages written and not yet acknowledged (QoS 1/2), in write order: packet id,
    /// place in the spool, payload, and whether the broker received it (PUBREC: it owns a
    /// QoS 2 message).
    pub(super) unacked: VecDeque<(u16, Option<u64>, Bytes, bool)>,
    /// Messages the spooler took from the queue and has not put in the backlog yet.
    pub(super) spooling: usize,
    /// Threads waiting on `Shared::progress` (in `flush`). Notifying a condition variable
    /// is a system call even when nobody waits, so updates only notify when one does.
    pub(super) waiters: usize,
    /// A message was dropped for its size before (only the first one is reported).
    oversize_seen: bool,
}

impl Tracker {
    /// A message that never reached the queue: counted as queued and dropped at once.
    /// Returns whether it is the first one.
    pub(super) fn drop_oversize_new(&mut self) -> bool {
        self.stats.queued += 1;
        self.drop_oversize()
    }

    /// A queued message dropped for its size. Returns whether it is the first one.
    pub(super) fn drop_oversize(&mut self) -> bool {
        self.stats.dropped_oversize += 1;
        !std::mem::replace(&mut self.oversize_seen, true)
    }

    pub(super) fn handed(&mut self, seq: Option<u64>, payload: Bytes) {
        self.unwritten.push_back((seq, payload));
        self.stats.in_flight += 1;
    }

    /// The lowest spool place in flight.
    pub(super) fn lowest_in_flight(&self) -> Option<u64> {
        self.in_flight_seqs().min()
    }

    /// The spool places of the messages in flight.
    pub(super) fn in_flight_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        let unwritten = self.unwritten.iter().filter_map(|(seq, _)| *seq);
        unwritten.chain(self.unacked.iter().filter_map(|(_, seq, ..)| *seq))
    }

    /// rumqttc refused the last hand-over (it is stopping).
    pub(super) fn not_handed(&mut self) {
        self.unwritten.pop_back();
        self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
        self.stats.dropped_stopped += 1;
    }

    pub(super) fn written(&mut self, pkid: u16) {
        // A retransmission of a packet id already written is not a new message.
        if pkid != 0 && self.unacked.iter().any(|(id, ..)| *id == pkid) {
            return;
        }
        let Some((seq, payload)) = self.unwritten.pop_front() else {
            return;
        };
        self.stats.bytes_sent += payload.len() as u64;
        if pkid == 0 {
            self.stats.published += 1;
            self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
        } else {
            self.unacked.push_back((pkid, seq, payload, false));
        }
    }

    pub(super) fn received(&mut self, pkid: u16) {
        if let Some(entry) = self.unacked.iter_mut().find(|(id, ..)| *id == pkid) {
            entry.3 = true;
        }
    }

    pub(super) fn completed(&mut self, pkid: u16) {
        if let Some(at) = self.unacked.iter().position(|(id, ..)| *id == pkid) {
            self.unacked.remove(at);
            self.stats.acknowledged += 1;
            self.stats.published += 1;
            self.stats.in_flight = self.stats.in_flight.saturating_sub(1);
        }
    }

    /// Takes back the messages handed over and never written, to queue again.
    pub(super) fn take_unwritten(&mut self) -> Vec<(Option<u64>, Bytes)> {
        let taken: Vec<_> = self.unwritten.drain(..).collect();
        self.stats.in_flight -= taken.len() as u64;
        taken
    }

    /// The broker lost the session: takes back the messages it had not acknowledged, to
    /// publish again. A QoS 2 message the broker had received (PUBREC) is its own now: it
    /// counts as published.
    pub(super) fn take_unacked(&mut self) -> Vec<(Option<u64>, Bytes)> {
        let mut taken = Vec::new();
        for (_, seq, payload, received) in self.unacked.drain(..) {
            self.stats.in_flight -= 1;
            if received {
                self.stats.acknowledged += 1;
                self.stats.published += 1;
            } else {
                taken.push((seq, payload));
            }
        }
        self.stats.republished += taken.len() as u64;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message in exactly one bucket: published, dropped, or in flight.
    fn assert_accounted(t: &Tracker) {
        let s = &t.stats;
        assert_eq!(s.queued, s.published + s.dropped() + s.in_flight, "{s:?}");
    }

    fn queued(t: &mut Tracker, n: u64) {
        for _ in 0..n {
            t.stats.queued += 1;
            t.handed(None, Bytes::from(vec![0u8; 100]));
        }
    }

    #[test]
    fn qos0_messages_are_published_when_written() {
        let mut t = Tracker::default();
        queued(&mut t, 3);
        assert_eq!(t.stats.in_flight, 3);
        t.written(0);
        t.written(0);
        assert_eq!((t.stats.published, t.stats.in_flight), (2, 1));
        assert_eq!(t.stats.bytes_sent, 200);
        assert_accounted(&t);
    }

    #[test]
    fn qos1_messages_are_published_when_acknowledged_once() {
        let mut t = Tracker::default();
        queued(&mut t, 2);
        t.written(7);
        t.written(8);
        // Written but not acknowledged: still in flight.
        assert_eq!((t.stats.published, t.stats.in_flight), (0, 2));
        // A retransmission of packet 7 is not a new message.
        t.written(7);
        assert_eq!(t.unwritten.len(), 0);
        t.completed(7);
        t.completed(7);
        assert_eq!((t.stats.published, t.stats.acknowledged), (1, 1));
        assert_eq!(t.stats.in_flight, 1);
        assert_accounted(&t);
    }

    #[test]
    fn a_lost_connection_takes_back_what_was_never_written() {
        let mut t = Tracker::default();
        queued(&mut t, 3);
        t.written(1);
        let unwritten = t.take_unwritten();
        assert_eq!(unwritten.len(), 2);
        // Queued again: neither in flight nor counted twice.
        assert_eq!(t.stats.in_flight, 1);
        assert_eq!(t.stats.republished, 0);
        t.stats.queued -= 2; // as if still queued
        assert_accounted(&t);
    }

    #[test]
    fn a_new_session_publishes_again_what_was_not_acknowledged() {
        let mut t = Tracker::default();
        queued(&mut t, 4);
        t.written(1);
        t.written(2);
        t.written(3);
        t.completed(1);
        // QoS 2: the broker has message 3 (PUBREC), so it is not sent again.
        t.received(3);
        let again = t.take_unacked();
        assert_eq!(again.len(), 1, "message 2");
        assert_eq!(t.stats.republished, 1);
        assert_eq!((t.stats.published, t.stats.acknowledged), (2, 2));
        // Message 4 was never written; it stays in flight until taken back or written.
        assert_eq!(t.stats.in_flight, 1);
        // A late acknowledgement of the old packet id changes nothing.
        t.completed(2);
        assert_eq!(t.stats.published, 2);
        t.stats.queued -= 1; // message 2 is queued again
        assert_accounted(&t);
    }

    #[test]
    fn only_the_first_oversize_drop_is_reported() {
        let mut t = Tracker::default();
        assert!(t.drop_oversize_new());
        assert!(!t.drop_oversize_new());
        queued(&mut t, 1);
        // Handed-over messages the broker cannot take are counted the same way.
        t.take_unwritten();
        assert!(!t.drop_oversize());
        assert_eq!((t.stats.queued, t.stats.dropped_oversize), (3, 3));
        assert_eq!(t.stats.dropped(), 3);
        assert_accounted(&t);
    }
}
