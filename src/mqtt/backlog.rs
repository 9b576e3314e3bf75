// SPDX-License-Identifier: MPL-2.0

//! What a spooling worker still has to deliver, in the order it hands it over.
//!
//! With a spool, every message is on disk (a sequence number) before the connection sees
//! it, and leaves the spool once delivered. The worker hands over from four places, all
//! kept here in sequence order:
//! - `retry`: taken back from the connection (never written, or not acknowledged in a
//!   session the broker lost): first, before anything else;
//! - `replay`: read back from the spool (the previous run's undelivered messages, or what
//!   did not fit in memory during an outage), a few at a time;
//! - `disk`: the sequence numbers still only on disk, after `replay`;
//! - `ready`: written to the spool in this run and still in memory, newest last.
//!
//! When `ready` outgrows its memory bounds, its oldest message becomes disk-only. A live
//! message `ready` hands over while a backlog waits leaves a gap there, so `disk` holds
//! ranges, read back in order.
//!
//! Live messages never wait behind hours of backlog: while both the backlog (`replay`,
//! `disk`) and `ready` have messages, they take turns by the replay share (out of 100
//! hand-overs, how many go to the backlog). When live messages are idle, the backlog gets
//! every hand-over.
//!
//! The *watermark* is the lowest sequence number not yet delivered, here or in flight:
//! everything below it can leave the spool.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;

/// One message to hand over; `seq` is its place in the spool, `None` when it could not be
/// written there (the spool failed) and lives in memory only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub seq: Option<u64>,
    pub payload: Bytes,
    pub queued_at: Instant,
}

/// Where a handed-over message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Retry,
    /// Read back from the spool.
    Replay,
    Ready,
}

#[derive(Debug)]
pub struct Backlog {
    retry: VecDeque<Pending>,
    replay: VecDeque<Pending>,
    disk: Disk,
    ready: VecDeque<Pending>,
    ready_bytes: usize,
    max_ready_messages: usize,
    max_ready_bytes: usize,
    /// Read back from the spool ahead of the connection: at most this many.
    max_replay: usize,
    /// Out of 100 hand-overs while both wait, how many go to the backlog.
    replay_share: u32,
    /// Credit for the share: the backlog's turn while it is >= 100.
    credit: u32,
}

impl Backlog {
    /// `disk`: what the spool held at open (the previous run's undelivered messages).
    pub fn new(
        disk: Range<u64>,
        max_ready_messages: usize,
        max_ready_bytes: usize,
        replay_share: u32,
    ) -> Self {
        Backlog {
            retry: VecDeque::new(),
            replay: VecDeque::new(),
            disk: Disk::from(disk),
            ready: VecDeque::new(),
            ready_bytes: 0,
            max_ready_messages: max_ready_messages.max(1),
            max_ready_bytes: max_ready_bytes.max(1),
            max_replay: max_ready_messages.clamp(1, 64),
            replay_share: replay_share.clamp(1, 100),
            credit: 0,
        }
    }

    /// Messages waiting: in memory, and disk-only.
    pub fn depth(&self) -> (usize, u64) {
        (
            self.retry.len() + self.replay.len() + self.ready.len(),
            self.disk.len(),
        )
    }

    /// Messages waiting that are not in the spool (it failed when they came).
    pub fn memory_only(&self) -> usize {
        self.retry
            .iter()
            .chain(&self.ready)
            .filter(|p| p.seq.is_none())
            .count()
    }

    /// Takes the messages that are not in the spool out (at stop: they are lost); returns
    /// how many.
    pub fn take_memory_only(&mut self) -> usize {
        let before = self.retry.len() + self.ready.len();
        self.retry.retain(|p| p.seq.is_some());
        self.ready.retain(|p| p.seq.is_some());
        self.ready_bytes = self.ready.iter().map(|p| p.payload.len()).sum();
        before - self.retry.len() - self.ready.len()
    }

    /// Bytes waiting in memory.
    pub fn memory_bytes(&self) -> usize {
        self.ready_bytes
            + self.retry.iter().map(|p| p.payload.len()).sum::<usize>()
            + self.replay.iter().map(|p| p.payload.len()).sum::<usize>()
    }

    /// Whether `ready` can take a message that is not on disk (the spool failed): it then
    /// stays in memory, under the same bounds.
    pub fn has_room(&self) -> bool {
        self.ready.len() < self.max_ready_messages && self.ready_bytes < self.max_ready_bytes
    }

    /// A message just written to the spool (or, with `seq` `None`, that could not be).
    /// Beyond the memory bounds, the oldest spooled messages of `ready` become disk-only.
    pub fn push_ready(&mut self, pending: Pending) {
        self.ready_bytes += pending.payload.len();
        self.ready.push_back(pending);
        while self.ready.len() > self.max_ready_messages || self.ready_bytes > self.max_ready_bytes
        {
            let Some(seq) = self.ready.front().and_then(|p| p.seq) else {
                break;
            };
            let evicted = self.ready.pop_front().expect("front exists");
            self.ready_bytes -= evicted.payload.len();
            self.disk.push(seq);
        }
    }

    /// The next disk-only sequence number to read back, when `replay` wants more.
    pub fn wants_replay(&self) -> Option<u64> {
        (self.replay.len() < self.max_replay)
            .then(|| self.disk.first())
            .flatten()
    }

    /// Whether `replay` is down to half of what it holds and more waits on disk: time for
    /// the spooler to read back (waking it for every message would cost a wake-up each).
    pub fn replay_low(&self) -> bool {
        self.replay.len() * 2 <= self.max_replay && !self.disk.is_empty()
    }

    /// Whether `seq` is disk-only (to read back).
    pub fn disk_holds(&self, seq: u64) -> bool {
        self.disk.contains(seq)
    }

    /// Whether `seq` is still in memory in `ready` (it becomes disk-only, or goes, later).
    pub fn ready_holds(&self, seq: u64) -> bool {
        self.ready
            .iter()
            .find_map(|p| p.seq)
            .is_some_and(|first| first <= seq)
    }

    /// A message read back from the spool, disk-only until now (see [`Backlog::disk_holds`]).
    /// Disk-only messages before it that the spool did not return (damaged) are no longer
    /// pending: returns how many.
    pub fn push_replay(&mut self, pending: Pending) -> u64 {
        let seq = pending.seq.expect("read back from the spool");
        debug_assert!(self.disk.contains(seq));
        let skipped = self.disk.remove_below(seq + 1) - 1;
        self.replay.push_back(pending);
        skipped
    }

    /// The disk-only messages the spool has no record of (it returned everything it holds):
    /// no longer pending. Returns how many.
    pub fn skip_disk(&mut self) -> u64 {
        self.disk.remove_below(u64::MAX)
    }

    /// Messages taken back from the connection, to hand over first, in their order.
    pub fn requeue_front(&mut self, pendings: Vec<Pending>) {
        for pending in pendings.into_iter().rev() {
            self.retry.push_front(pending);
        }
    }

    /// The next message to hand over: `retry` first; then, while both wait, the backlog
    /// and `ready` by the replay share. `None` when nothing can go now (what is left is on
    /// disk and not read back yet).
    pub fn pop(&mut self) -> Option<(Pending, Origin)> {
        if let Some(pending) = self.retry.pop_front() {
            return Some((pending, Origin::Retry));
        }
        let backlog_waits = !self.replay.is_empty() || !self.disk.is_empty();
        let backlog_turn = if self.ready.is_empty() {
            true
        } else if !backlog_waits {
            false
        } else {
            self.credit += self.replay_share;
            if self.credit >= 100 {
                self.credit -= 100;
                true
            } else {
                false
            }
        };
        if backlog_turn {
            if let Some(pending) = self.replay.pop_front() {
                return Some((pending, Origin::Replay));
            }
            // The backlog's turn, but nothing read back yet: live goes meanwhile.
        }
        let pending = self.ready.pop_front()?;
        self.ready_bytes -= pending.payload.len();
        Some((pending, Origin::Ready))
    }

    /// The lowest sequence number still pending here, or in flight (`in_flight`).
    pub fn watermark(&self, in_flight: Option<u64>) -> Option<u64> {
        let seqs = self.retry.iter().chain(&self.replay).filter_map(|p| p.seq);
        let disk = self.disk.first();
        let ready = self.ready.iter().find_map(|p| p.seq);
        seqs.chain(disk).chain(ready).chain(in_flight).min()
    }

    /// The spool dropped everything below `next` (its full or age policy): what is pending
    /// here below it is dropped too; returns how many. Messages in flight stay in flight
    /// (in memory only).
    pub fn drop_below(&mut self, next: u64) -> u64 {
        let mut dropped = 0;
        let below = |p: &Pending| p.seq.is_some_and(|seq| seq < next);
        for queue in [&mut self.retry, &mut self.replay] {
            let before = queue.len();
            queue.retain(|p| !below(p));
            dropped += (before - queue.len()) as u64;
        }
        dropped += self.disk.remove_below(next);
        while self.ready.front().is_some_and(below) {
            let gone = self.ready.pop_front().expect("front exists");
            self.ready_bytes -= gone.payload.len();
            dropped += 1;
        }
        dropped
    }
}

/// Sequence numbers only on disk, oldest first, as ranges.
#[derive(Debug, Default)]
struct Disk(VecDeque<Range<u64>>);

impl Disk {
    fn from(range: Range<u64>) -> Self {
        let mut disk = Disk::default();
        if !range.is_empty() {
            disk.0.push_back(range);
        }
        disk
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn len(&self) -> u64 {
        self.0.iter().map(|r| r.end - r.start).sum()
    }

    fn first(&self) -> Option<u64> {
        self.0.front().map(|r| r.start)
    }

    fn contains(&self, seq: u64) -> bool {
        self.0.iter().any(|r| r.contains(&seq))
    }

    /// Adds `seq`, above every sequence held.
    fn push(&mut self, seq: u64) {
        match self.0.back_mut() {
            Some(last) if last.end == seq => last.end = seq + 1,
            last => {
                debug_assert!(last.is_none_or(|r| r.end < seq), "pushed in order");
                self.0.push_back(seq..seq + 1);
            }
        }
    }

    /// Removes every sequence below `next`; returns how many.
    fn remove_below(&mut self, next: u64) -> u64 {
        let mut removed = 0;
        while let Some(first) = self.0.front_mut() {
            if first.end <= next {
                removed += first.end - first.start;
                self.0.pop_front();
            } else {
                if first.start < next {
                    removed += next - first.start;
                    first.start = next;
                }
                break;
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(seq: u64) -> Pending {
        Pending {
            seq: Some(seq),
            payload: Bytes::from(vec![0u8; 10]),
            queued_at: Instant::now(),
        }
    }

    fn seqs(backlog: &mut Backlog) -> Vec<(u64, Origin)> {
        std::iter::from_fn(|| backlog.pop())
            .map(|(p, origin)| (p.seq.unwrap(), origin))
            .collect()
    }

    #[test]
    fn beyond_its_bounds_ready_spills_to_one_contiguous_disk_range() {
        let mut b = Backlog::new(0..0, 3, 1000, 50);
        for seq in 0..5 {
            b.push_ready(pending(seq));
        }
        assert_eq!(b.depth(), (3, 2));
        assert_eq!(b.wants_replay(), Some(0));
        assert_eq!(b.watermark(None), Some(0));
        // The bytes bound too.
        let mut b = Backlog::new(0..0, 100, 25, 50);
        for seq in 0..4 {
            b.push_ready(pending(seq));
        }
        assert_eq!(b.depth(), (2, 2));
    }

    #[test]
    fn live_and_backlog_take_turns_by_the_share_and_retry_goes_first() {
        // A previous run left 10..20 on disk; this run spools 20..30.
        let mut b = Backlog::new(10..20, 100, 1 << 20, 50);
        for seq in 20..30 {
            b.push_ready(pending(seq));
        }
        for seq in 10..14 {
            assert_eq!(b.wants_replay(), Some(seq));
            assert_eq!(b.push_replay(pending(seq)), 0);
        }
        b.requeue_front(vec![pending(5), pending(6)]);
        let order = seqs(&mut b);
        assert_eq!(
            &order[..8],
            [
                (5, Origin::Retry),
                (6, Origin::Retry),
                (20, Origin::Ready),
                (10, Origin::Replay),
                (21, Origin::Ready),
                (11, Origin::Replay),
                (22, Origin::Ready),
                (12, Origin::Replay),
            ]
        );
        // Once nothing is read back, live goes on alone; the backlog's order is kept.
        let replayed: Vec<u64> = order
            .iter()
            .filter(|(_, o)| *o == Origin::Replay)
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(replayed, [10, 11, 12, 13]);
        assert_eq!(order.len(), 2 + 10 + 4);
        // 14..20 still on disk.
        assert_eq!(b.depth(), (0, 6));
        assert_eq!(b.watermark(Some(30)), Some(14));
    }

    #[test]
    fn a_share_of_100_drains_the_backlog_first_and_an_idle_live_side_leaves_it_all() {
        let mut b = Backlog::new(0..3, 100, 1 << 20, 100);
        for seq in 0..3 {
            assert_eq!(b.push_replay(pending(seq)), 0);
        }
        b.push_ready(pending(3));
        let order: Vec<u64> = seqs(&mut b).into_iter().map(|(s, _)| s).collect();
        assert_eq!(order, [0, 1, 2, 3]);

        let mut b = Backlog::new(0..3, 100, 1 << 20, 10);
        for seq in 0..3 {
            assert_eq!(b.push_replay(pending(seq)), 0);
        }
        // Nothing live: the backlog gets every hand-over whatever the share.
        let order: Vec<u64> = seqs(&mut b).into_iter().map(|(s, _)| s).collect();
        assert_eq!(order, [0, 1, 2]);
    }

    #[test]
    fn the_watermark_is_the_lowest_pending_anywhere() {
        let mut b = Backlog::new(0..0, 100, 1 << 20, 50);
        assert_eq!(b.watermark(None), None);
        for seq in 0..3 {
            b.push_ready(pending(seq));
        }
        let (first, _) = b.pop().unwrap();
        assert_eq!(b.watermark(None), Some(1));
        // In flight, it holds the watermark.
        assert_eq!(b.watermark(first.seq), Some(0));
        b.requeue_front(vec![first]);
        assert_eq!(b.watermark(None), Some(0));
    }

    #[test]
    fn dropping_below_a_sequence_counts_each_pending_message_once() {
        let mut b = Backlog::new(0..10, 3, 1 << 20, 50);
        b.push_replay(pending(0));
        b.push_replay(pending(1));
        for seq in 10..15 {
            b.push_ready(pending(seq));
        }
        // ready holds 12..15, disk 2..12.
        assert_eq!(b.depth(), (5, 10));
        b.requeue_front(vec![pending(9)]);
        // retry 9, replay 0 and 1, disk 2..12 (10), ready 12.
        assert_eq!(b.drop_below(13), 1 + 2 + 10 + 1);
        assert_eq!(b.depth(), (2, 0));
        assert_eq!(b.watermark(None), Some(13));
        // A record read back after the drop is no longer wanted.
        assert!(!b.disk_holds(5));
    }

    #[test]
    fn corrupt_records_skipped_leave_the_disk_range() {
        let mut b = Backlog::new(0..10, 100, 1 << 20, 50);
        // The spool skipped 0..3 and returned 3.
        assert_eq!(b.push_replay(pending(3)), 3);
        assert_eq!(b.depth(), (1, 6));
        assert_eq!(b.wants_replay(), Some(4));
        // It has nothing more: the rest has no record.
        assert_eq!(b.skip_disk(), 6);
        assert_eq!(b.depth(), (1, 0));
        assert_eq!(b.wants_replay(), None);
    }

    /// A live message handed over from `ready` while a backlog waits on disk leaves a gap
    /// in `disk`: every message goes out once, none twice.
    #[test]
    fn live_messages_taken_while_a_backlog_waits_go_out_once() {
        let mut b = Backlog::new(0..0, 2, 1 << 20, 50);
        let mut out = Vec::new();
        for seq in 0..3 {
            b.push_ready(pending(seq));
        }
        // 0 is disk-only; the backlog's turn finds nothing read back: 1 goes live.
        assert_eq!(b.depth(), (2, 1));
        out.push(b.pop().unwrap().0.seq.unwrap());
        assert_eq!(out, [1]);
        for seq in 3..6 {
            b.push_ready(pending(seq));
        }
        // 2 and 3 became disk-only after the gap 1 left.
        assert!(b.disk_holds(0) && !b.disk_holds(1) && b.disk_holds(2) && b.disk_holds(3));
        assert!(b.ready_holds(4) && !b.ready_holds(1));
        // The spooler reads back whenever there is room in `replay`; the mover pops.
        loop {
            while let Some(wanted) = b.wants_replay() {
                assert_eq!(b.push_replay(pending(wanted)), 0);
            }
            let Some((p, _)) = b.pop() else { break };
            out.push(p.seq.unwrap());
        }
        out.sort_unstable();
        assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn memory_only_messages_are_never_evicted() {
        let mut b = Backlog::new(0..0, 2, 1 << 20, 50);
        for _ in 0..3 {
            b.push_ready(Pending {
                seq: None,
                payload: Bytes::from_static(b"x"),
                queued_at: Instant::now(),
            });
        }
        assert_eq!(b.depth(), (3, 0));
        assert!(!b.has_room());
        assert_eq!(b.watermark(None), None);
    }
}
