// SPDX-License-Identifier: MPL-2.0

//! The reconnection policy across the broker list: after each failure, which broker to try
//! next and how long to wait first. Pure: the worker feeds it failures and sleeps.
//!
//! A *pass* tries each broker of the list once, in list order, starting with the one after
//! the broker that failed. Within a pass a failure moves on to the next broker at once: a
//! dead node refuses in a millisecond and costs nothing, a node that fails slowly (a NATS
//! node waiting for JetStream to elect its leaders answers a CONNECT by closing it after
//! 4 s) has already spent its own time. A lost connection counts as the first failure of
//! a pass, so that the element fails over to the next broker at once. After the last
//! broker of a pass has failed, the element waits before the next pass: [`FIRST_DELAY`]
//! after the first pass, doubling after each pass up to the longest wait
//! ([`ConnectionConfig::max_reconnect_delay`](super::ConnectionConfig)). With one broker a
//! pass is one attempt: 1 s, 2 s, 4 s ... as before the list existed.
//!
//! Jitter: once the doubling has reached the longest wait, each wait is drawn between half
//! of it and all of it, so that a fleet of cameras that lost its broker at the same moment
//! spreads out over a long outage instead of knocking at once every 30 s; the longest wait
//! stays a true maximum (a +-20 % jitter would exceed it). The waits below it stay exact,
//! so that a short outage ends as quickly as it always did and the bus messages announce
//! the wait that follows.
//!
//! The delay starts over once a connection has held for [`CONNECTION_HELD`]: a broker
//! that accepts and then drops every connection is retried with growing waits.

use std::hash::{BuildHasher, Hash, Hasher};
use std::time::Duration;

/// The wait after the first failed pass, when the longest wait allows it.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// A connection that lasted this long starts the delay over.
pub const CONNECTION_HELD: Duration = Duration::from_secs(10);

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The index of the broker to try next.
    pub broker: usize,
    /// How long to wait first: zero within a pass.
    pub wait: Duration,
    /// Failed attempts in a row, 1 for the first failure after a connection.
    pub attempt: u32,
}

/// The policy's state for one connection worker.
#[derive(Debug)]
pub struct Backoff {
    brokers: usize,
    max: Duration,
    /// The broker connected to, or tried now.
    broker: usize,
    /// Brokers that failed in the pass under way.
    failed_in_pass: usize,
    /// The wait after the pass under way.
    delay: Duration,
    attempts: u32,
    random: XorShift,
}

impl Backoff {
    /// The policy for `brokers` brokers (at least one) whose waits grow to `max`; `seed`
    /// draws the jitter (see [`seed`]).
    pub fn new(brokers: usize, max: Duration, seed: u64) -> Self {
        assert!(brokers > 0, "at least one broker");
        Backoff {
            brokers,
            max,
            broker: 0,
            failed_in_pass: 0,
            delay: FIRST_DELAY.min(max),
            attempts: 0,
            random: XorShift::new(seed),
        }
    }

    /// The broker accepted the connection: the next failure starts a pass.
    pub fn connected(&mut self) {
        self.failed_in_pass = 0;
        self.attempts = 0;
    }

    /// The connection, up for `held`, was lost.
    pub fn lost(&mut self, held: Duration) -> Retry {
        if held >= CONNECTION_HELD {
            self.delay = FIRST_DELAY.min(self.max);
        }
        self.failed()
    }

    /// An attempt to connect failed, however quickly.
    pub fn failed(&mut self) -> Retry {
        self.attempts = self.attempts.saturating_add(1);
        self.failed_in_pass += 1;
        self.broker = (self.broker + 1) % self.brokers;
        let wait = if self.failed_in_pass < self.brokers {
            Duration::ZERO
        } else {
            self.failed_in_pass = 0;
            let wait = self.jittered(self.delay);
            self.delay = self.delay.saturating_mul(2).min(self.max);
            wait
        };
        Retry {
            broker: self.broker,
            wait,
            attempt: self.attempts,
        }
    }

    /// `delay`, or at the longest wait a random part of it between half and all.
    fn jittered(&mut self, delay: Duration) -> Duration {
        if delay < self.max {
            return delay;
        }
        let half = delay / 2;
        // A fraction of the other half in 1/1024ths: finer than anyone can tell apart.
        let share = self.random.next() % 1025;
        half + (delay - half).mul_f64(share as f64 / 1024.0)
    }
}

/// A seed for the jitter that differs between processes, elements and starts: the client
/// id, the time, and std's per-process random hash keys.
pub fn seed(client_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    client_id.hash(&mut hasher);
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .hash(&mut hasher);
    std::process::id().hash(&mut hasher);
    hasher.finish()
}

/// Marsaglia's xorshift64*: plenty for spreading waits, and no dependency.
#[derive(Debug)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        // Zero is the one state xorshift never leaves.
        XorShift(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(30);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// (broker, wait in ms, attempt) of each of `n` failed attempts in a row.
    fn failures(backoff: &mut Backoff, n: usize) -> Vec<(usize, u128, u32)> {
        (0..n)
            .map(|_| {
                let r = backoff.failed();
                (r.broker, r.wait.as_millis(), r.attempt)
            })
            .collect()
    }

    #[test]
    fn one_broker_waits_1_2_4_8_16_s_then_the_longest_wait() {
        let mut backoff = Backoff::new(1, MAX, 7);
        let waits: Vec<u128> = failures(&mut backoff, 5).iter().map(|f| f.1).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 16000]);
        for _ in 0..50 {
            let r = backoff.failed();
            assert_eq!(r.broker, 0);
            assert!(r.wait >= MAX / 2 && r.wait <= MAX, "{r:?}");
        }
    }

    #[test]
    fn a_pass_over_the_list_is_one_attempt_of_the_backoff() {
        // The first attempt goes to broker 0.
        let mut backoff = Backoff::new(3, MAX, 7);
        // Brokers 0, 1, 2 fail: on to the next at once, the wait comes after the pass.
        assert_eq!(
            failures(&mut backoff, 9),
            [
                (1, 0, 1),
                (2, 0, 2),
                (0, 1000, 3),
                (1, 0, 4),
                (2, 0, 5),
                (0, 2000, 6),
                (1, 0, 7),
                (2, 0, 8),
                (0, 4000, 9),
            ]
        );
    }

    #[test]
    fn a_lost_connection_fails_over_at_once_and_the_first_wait_is_quick() {
        let mut backoff = Backoff::new(2, MAX, 7);
        // Broker 0 refuses (a pass: 0 then 1), 1 accepts.
        assert_eq!(failures(&mut backoff, 3)[2], (1, 0, 3));
        backoff.connected();
        // The connection to 1 held, then was lost: straight to 0, which refuses, and the
        // wait after that pass is the first one again.
        let r = backoff.lost(CONNECTION_HELD);
        assert_eq!(
            r,
            Retry {
                broker: 0,
                wait: Duration::ZERO,
                attempt: 1
            }
        );
        assert_eq!(
            failures(&mut backoff, 3),
            [(1, 1000, 2), (0, 0, 3), (1, 2000, 4)]
        );
    }

    #[test]
    fn connections_that_do_not_hold_keep_the_waits_growing() {
        let mut backoff = Backoff::new(1, MAX, 7);
        assert_eq!(failures(&mut backoff, 2), [(0, 1000, 1), (0, 2000, 2)]);
        backoff.connected();
        assert_eq!(backoff.lost(CONNECTION_HELD - ms(1)).wait, ms(4000));
        backoff.connected();
        assert_eq!(backoff.lost(CONNECTION_HELD).wait, ms(1000));
        assert_eq!(backoff.failed().wait, ms(2000));
    }

    #[test]
    fn the_longest_wait_bounds_every_wait_even_the_first() {
        let mut backoff = Backoff::new(2, ms(2500), 7);
        let waits: Vec<u128> = failures(&mut backoff, 4).iter().map(|f| f.1).collect();
        assert_eq!(waits, [0, 1000, 0, 2000]);
        for _ in 0..20 {
            backoff.failed();
            let wait = backoff.failed().wait;
            assert!(wait >= ms(1250) && wait <= ms(2500), "{wait:?}");
        }
        // Shorter than the first delay: every wait is at the longest, jittered.
        let mut backoff = Backoff::new(1, ms(100), 7);
        for _ in 0..20 {
            let wait = backoff.failed().wait;
            assert!(wait >= ms(50) && wait <= ms(100), "{wait:?}");
        }
    }

    #[test]
    fn the_jitter_spreads_a_fleet_over_half_the_longest_wait() {
        // 200 cameras that failed together: their waits at the longest wait differ, and
        // cover the lower and the upper half of the range.
        let waits: Vec<Duration> = (0..200u64)
            .map(|camera| {
                let mut backoff = Backoff::new(1, MAX, seed(&format!("camera-{camera}")));
                failures(&mut backoff, 5);
                backoff.failed().wait
            })
            .collect();
        assert!(waits.iter().all(|w| *w >= MAX / 2 && *w <= MAX));
        let mut distinct = waits.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 150, "{} distinct waits", distinct.len());
        let three_quarters = MAX * 3 / 4;
        let low = waits.iter().filter(|w| **w < three_quarters).count();
        assert!((50..150).contains(&low), "{low} of 200 below 22.5 s");
    }

    #[test]
    fn connected_starts_the_attempt_count_and_the_pass_over() {
        let mut backoff = Backoff::new(3, MAX, 7);
        assert_eq!(failures(&mut backoff, 2)[1], (2, 0, 2));
        backoff.connected();
        // A failure on broker 2 right after connecting: a new pass, no wait until all
        // three failed, then still the first wait (no pass had ended before).
        assert_eq!(
            failures(&mut backoff, 3),
            [(0, 0, 1), (1, 0, 2), (2, 1000, 3)]
        );
    }
}
