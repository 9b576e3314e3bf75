// SPDX-License-Identifier: MPL-2.0

//! What a run counted ([`stats_structure`], the `stats` property) and what it did not
//! deliver, at end of stream or at a stop before it ([`loss`]): an `mqttpublish-undelivered`
//! element message, then an error (a job that was to deliver everything) or a warning. These
//! only say what to post; the element posts it.

use std::time::Duration;

use super::message::FrameCounters;
use crate::mqtt::{Leaky, Stats};

/// The `stats` property's value.
pub fn stats_structure(stats: &Stats, frames: FrameCounters) -> gst::Structure {
    gst::Structure::builder("mqttpublish-stats")
        .field("messages-queued", stats.queued)
        .field("messages-published", stats.published)
        .field("messages-acknowledged", stats.acknowledged)
        .field("messages-dropped", stats.dropped())
        .field("dropped-queue-full", stats.dropped_queue_full)
        .field("dropped-oversize", stats.dropped_oversize)
        .field("dropped-disconnected", stats.dropped_disconnected)
        .field("dropped-stopped", stats.dropped_stopped)
        .field("republished", stats.republished)
        .field("frames-skipped", frames.skipped)
        .field("json-invalid", frames.json_invalid)
        .field("tensor-data-invalid", frames.tensor_data_invalid)
        .field("frames-unencoded", frames.unencoded())
        .field("unencoded-memory", frames.no_image_memory)
        .field("unencoded-format", frames.no_image_format)
        .field("unencoded-oversize", frames.no_image_oversize)
        .field("unencoded-failed", frames.no_image_failed)
        .field("reconnects", stats.reconnects)
        .field("bytes-sent", stats.bytes_sent)
        .field("in-flight", stats.in_flight)
        .field("queue-depth", stats.queue_depth)
        .field("queue-bytes", stats.queue_bytes)
        .field("connected", stats.connected)
        .field("dropped-spool-full", stats.dropped_spool_full)
        .field("dropped-spool-age", stats.dropped_spool_age)
        .field("spool-corrupt", stats.dropped_corrupt)
        .field("spool-restored", stats.restored)
        .field("spool-replayed", stats.replayed)
        .field("spool-messages", stats.spool_messages)
        .field("spool-bytes", stats.spool_bytes)
        .field("spool-oldest-age-ms", stats.spool_oldest_age_ms)
        .field("spool-bytes-written", stats.spool_bytes_written)
        .build()
}

/// What to post when messages were lost.
#[derive(Debug)]
pub struct LossReport {
    pub message: gst::Structure,
    /// E.g. "End of stream: 37 of 300 messages were not delivered (...)".
    pub text: String,
    /// The policy that was to deliver everything, when the loss is an error; the debug
    /// text of the error.
    pub error: Option<String>,
}

/// Whether losing messages at end of stream is an error: when the upstream is not live and
/// the policy waits for room (a file job that was to deliver everything). Returns the
/// policy to name in the error.
pub fn loss_is_fatal(upstream_live: bool, leaky: Leaky) -> Option<Leaky> {
    (!upstream_live && matches!(leaky, Leaky::Auto | Leaky::No)).then_some(leaky)
}

/// The report of the messages of this run that were not delivered; `None` when every one
/// was. `flush_timeout`: at end of stream (what is still queued or in flight was not
/// delivered within it); `None`: at stop. `fatal`: see [`loss_is_fatal`].
pub fn loss(
    stats: &Stats,
    flush_timeout: Option<Duration>,
    fatal: Option<Leaky>,
) -> Option<LossReport> {
    let summary = summary(stats, flush_timeout);
    // Not delivery failures: records the disk damaged (warned about when found), and
    // messages the user's spool-max-age dropped.
    let fatal = fatal.filter(|_| stats.lost() > stats.dropped_corrupt + stats.dropped_spool_age);
    let kept = (stats.kept > 0).then(|| {
        format!(
            "{} messages not delivered yet are kept in the spool and published by the next \
             run on it",
            stats.kept
        )
    });
    let text = match (summary, kept) {
        (None, None) => return None,
        (Some(summary), None) => summary,
        (None, Some(kept)) => kept,
        (Some(summary), Some(kept)) => format!("{summary}; {kept}"),
    };
    let message = gst::Structure::builder("mqttpublish-undelivered")
        .field("messages", stats.queued)
        .field("undelivered", stats.lost())
        .field("dropped", stats.dropped())
        .field("dropped-queue-full", stats.dropped_queue_full)
        .field("dropped-oversize", stats.dropped_oversize)
        .field("dropped-disconnected", stats.dropped_disconnected)
        .field("dropped-stopped", stats.dropped_stopped)
        .field("pending", stats.undelivered())
        .field("kept-in-spool", stats.kept)
        .field("dropped-spool-full", stats.dropped_spool_full)
        .field("dropped-spool-age", stats.dropped_spool_age)
        .field("spool-corrupt", stats.dropped_corrupt)
        .field("end-of-stream", flush_timeout.is_some())
        .field("error", fatal.is_some())
        .build();
    let when = if flush_timeout.is_some() {
        "End of stream"
    } else {
        "Stopped before the end of the stream"
    };
    Some(LossReport {
        message,
        text: format!("{when}: {text}"),
        error: fatal.map(|leaky| {
            format!(
                "The upstream is not live and leaky={} waits for room, so every message was \
                 to be delivered. Check the broker connection; a larger flush-timeout waits \
                 longer at the end.",
                leaky.nick()
            )
        }),
    })
}

/// What a run lost, in words, e.g. "37 of 300 messages were not delivered (12 dropped: queue
/// full; 25 not delivered within flush-timeout 5000 ms: 20 queued, 5 in flight)"; `None`
/// when nothing was lost.
fn summary(stats: &Stats, flush_timeout: Option<Duration>) -> Option<String> {
    let lost = stats.lost();
    if lost == 0 {
        return None;
    }
    let mut parts = Vec::new();
    for (count, reason) in [
        (stats.dropped_queue_full, "queue full"),
        (
            stats.dropped_oversize,
            "larger than max-message-size or the broker's limit",
        ),
        (
            stats.dropped_disconnected,
            "in flight when the broker started a new session",
        ),
        (stats.dropped_stopped, "still queued or in flight at stop"),
        (stats.dropped_spool_full, "the spool was full"),
        (stats.dropped_spool_age, "older than spool-max-age"),
        (stats.dropped_corrupt, "damaged in the spool"),
    ] {
        if count > 0 {
            parts.push(format!("{count} dropped: {reason}"));
        }
    }
    let unsafe_undelivered = stats.undelivered() - stats.kept.min(stats.undelivered());
    if unsafe_undelivered > 0 {
        let within = flush_timeout
            .map(|t| format!(" within flush-timeout {} ms", t.as_millis()))
            .unwrap_or_default();
        if stats.kept > 0 {
            parts.push(format!(
                "{unsafe_undelivered} not delivered{within} and not in the spool"
            ));
        } else {
            parts.push(format!(
                "{} not delivered{within}: {} queued, {} in flight",
                stats.undelivered(),
                stats.queue_depth,
                stats.in_flight
            ));
        }
    }
    Some(format!(
        "{lost} of {} messages were not delivered ({})",
        stats.queued,
        parts.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loss_summary_names_every_reason_and_adds_up() {
        let nothing_lost = Stats {
            queued: 300,
            published: 300,
            ..Stats::default()
        };
        assert_eq!(summary(&nothing_lost, None), None);

        let stats = Stats {
            queued: 300,
            published: 263,
            dropped_queue_full: 10,
            dropped_oversize: 2,
            queue_depth: 20,
            in_flight: 5,
            ..Stats::default()
        };
        assert_eq!(
            summary(&stats, Some(Duration::from_millis(5000))).unwrap(),
            "37 of 300 messages were not delivered (10 dropped: queue full; 2 dropped: larger \
             than max-message-size or the broker's limit; 25 not delivered within \
             flush-timeout 5000 ms: 20 queued, 5 in flight)"
        );

        // After stop, what was left is counted as dropped at stop.
        let stats = Stats {
            queued: 5,
            dropped_disconnected: 1,
            dropped_stopped: 4,
            ..Stats::default()
        };
        assert_eq!(
            summary(&stats, None).unwrap(),
            "5 of 5 messages were not delivered (1 dropped: in flight when the broker started \
             a new session; 4 dropped: still queued or in flight at stop)"
        );
    }

    #[test]
    fn only_a_job_that_was_to_deliver_everything_fails() {
        assert_eq!(loss_is_fatal(false, Leaky::Auto), Some(Leaky::Auto));
        assert_eq!(loss_is_fatal(false, Leaky::No), Some(Leaky::No));
        assert_eq!(loss_is_fatal(true, Leaky::Auto), None);
        assert_eq!(loss_is_fatal(true, Leaky::No), None);
        assert_eq!(loss_is_fatal(false, Leaky::Downstream), None);
        assert_eq!(loss_is_fatal(false, Leaky::Upstream), None);
    }

    #[test]
    fn the_report_counts_by_reason_and_says_when() {
        gst::init().unwrap();
        let stats = Stats {
            queued: 300,
            published: 290,
            dropped_queue_full: 4,
            queue_depth: 6,
            ..Stats::default()
        };
        assert!(loss(
            &Stats {
                queued: 3,
                published: 3,
                ..Stats::default()
            },
            None,
            None
        )
        .is_none());

        let at_end = loss(&stats, Some(Duration::from_secs(5)), Some(Leaky::No)).unwrap();
        assert!(
            at_end.text.starts_with("End of stream: 10 of 300 messages"),
            "{}",
            at_end.text
        );
        assert!(at_end.error.unwrap().contains("leaky=no waits for room"));
        let m = &at_end.message;
        assert_eq!(m.name(), "mqttpublish-undelivered");
        assert_eq!(m.get::<u64>("undelivered").unwrap(), 10);
        assert_eq!(m.get::<u64>("dropped").unwrap(), 4);
        assert_eq!(m.get::<u64>("pending").unwrap(), 6);
        assert!(m.get::<bool>("end-of-stream").unwrap() && m.get::<bool>("error").unwrap());

        let at_stop = loss(&stats, None, None).unwrap();
        assert!(at_stop
            .text
            .starts_with("Stopped before the end of the stream: "));
        assert_eq!(at_stop.error, None);
        assert!(!at_stop.message.get::<bool>("error").unwrap());
    }
}
