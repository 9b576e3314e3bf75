// SPDX-License-Identifier: MPL-2.0

//! What the application hears of the connection: each worker [`Notice`] becomes an element
//! message on the bus (`mqttpublish-connected`, `-disconnected`, ...), and trouble the user
//! has to act on a warning or an error too. [`describe`] only says what to post; the element
//! posts it.

use crate::mqtt::{Bound, Leaky, Notice, SizeLimit};

/// What to post for one notice, in this order: the log line, the alert, the message.
#[derive(Debug)]
pub struct Posting {
    /// For the debug log (INFO).
    pub log: Option<String>,
    pub alert: Option<Alert>,
    /// The element message.
    pub message: gst::Structure,
}

/// A warning or error message on the bus, in GStreamer's resource error domain.
#[derive(Debug, PartialEq)]
pub enum Alert {
    Warning(gst::ResourceError, String),
    Error(gst::ResourceError, String),
}

/// The posting for `notice` from the connection to `broker`.
pub fn describe(broker: &str, notice: &Notice) -> Posting {
    let mut log = None;
    let mut alert = None;
    let message = match notice {
        Notice::Connected { session_present } => {
            log = Some(format!("Connected to {broker}"));
            gst::Structure::builder("mqttpublish-connected")
                .field("broker", broker)
                .field("session-present", *session_present)
                .build()
        }
        Notice::Disconnected {
            reason,
            attempt,
            retry_in,
            next,
        } => {
            let next_text = next
                .as_ref()
                .map(|next| format!(" with the next broker, {next}"))
                .unwrap_or_default();
            log = Some(format!(
                "Not connected to {broker} ({reason}), attempt {attempt}, retrying in \
                 {retry_in:?}{next_text}"
            ));
            if *attempt == 1 {
                alert = Some(Alert::Warning(
                    gst::ResourceError::OpenWrite,
                    format!(
                        "Not connected to the MQTT broker at {broker}: {reason}. Retrying with \
                         backoff{next_text}; messages wait in the queue."
                    ),
                ));
            }
            let mut builder = gst::Structure::builder("mqttpublish-disconnected")
                .field("broker", broker)
                .field("reason", reason.as_str())
                .field("attempt", *attempt)
                .field("retry-in-ms", retry_in.as_millis() as u64);
            if let Some(next) = next {
                builder = builder.field("next-broker", next.to_string());
            }
            builder.build()
        }
        // What a refusal means for the run (an error for a file job) is the element's call.
        Notice::Refused { reason } => {
            log = Some(format!("{broker} refused: {reason}"));
            gst::Structure::builder("mqttpublish-refused")
                .field("broker", broker)
                .field("reason", reason.as_str())
                .build()
        }
        Notice::QosDowngraded {
            requested,
            granted,
            reason,
        } => {
            let duplicates = if granted.level() == 1 {
                " (at least once: a message can arrive twice)"
            } else {
                ""
            };
            alert = Some(Alert::Warning(
                gst::ResourceError::Settings,
                format!(
                    "MQTT broker at {broker}: {reason}. Publishing at QoS {} instead of \
                     {}{duplicates}.",
                    granted.level(),
                    requested.level(),
                ),
            ));
            gst::Structure::builder("mqttpublish-qos-downgraded")
                .field("broker", broker)
                .field("requested", requested.level())
                .field("granted", granted.level())
                .field("reason", reason.as_str())
                .build()
        }
        Notice::Republished { count } => {
            log = Some(format!(
                "{broker} started a new session: publishing {count} unacknowledged messages \
                 again"
            ));
            gst::Structure::builder("mqttpublish-republished")
                .field("broker", broker)
                .field("count", *count)
                .build()
        }
        Notice::ClientIdConflict { reason } => {
            alert = Some(Alert::Warning(
                gst::ResourceError::Busy,
                format!("MQTT broker at {broker}: {reason}"),
            ));
            gst::Structure::builder("mqttpublish-client-id-conflict")
                .field("broker", broker)
                .field("reason", reason.as_str())
                .build()
        }
        Notice::Failed { reason } => {
            alert = Some(Alert::Error(
                gst::ResourceError::Failed,
                format!("MQTT publishing stopped: {reason}"),
            ));
            gst::Structure::builder("mqttpublish-failed")
                .field("broker", broker)
                .field("reason", reason.as_str())
                .build()
        }
        Notice::Oversize { size, limit } => {
            let (limit_name, limit) = match *limit {
                SizeLimit::Configured(max) => ("max-message-size", max as u64),
                SizeLimit::Broker(max) => ("the broker's maximum packet size", u64::from(max)),
            };
            alert = Some(Alert::Warning(
                gst::ResourceError::Write,
                format!(
                    "A message of {size} bytes is larger than {limit_name} ({limit} bytes) and \
                     was dropped; further drops are counted in stats"
                ),
            ));
            gst::Structure::builder("mqttpublish-oversize")
                .field("broker", broker)
                .field("size", *size as u64)
                .field("limit", limit)
                .build()
        }
        Notice::Dropping {
            overflow,
            leaky,
            connected,
        } => {
            let (limit_name, limit) = match overflow.bound {
                Bound::Messages(max) => ("max-queued-messages", max as u64),
                Bound::Bytes(max) => ("max-queued-bytes", max as u64),
            };
            let why = if *connected {
                format!("the connection to {broker} does not keep up with the stream")
            } else {
                format!("the broker at {broker} is not connected")
            };
            let policy = if *leaky == Leaky::Auto {
                "leaky=auto (the upstream is live)".to_string()
            } else {
                format!("leaky={}", leaky.nick())
            };
            let which = if overflow.policy == Leaky::Upstream {
                "the new message"
            } else {
                "the oldest message"
            };
            alert = Some(Alert::Warning(
                gst::ResourceError::Write,
                format!(
                    "Dropping messages: the queue is full ({limit_name}={limit}) because {why}, \
                     and {policy} drops {which} to make room. The count follows when the queue \
                     has room again."
                ),
            ));
            gst::Structure::builder("mqttpublish-dropping")
                .field("broker", broker)
                .field("reason", "queue-full")
                .field("limit-name", limit_name)
                .field("limit", limit)
                .field("connected", *connected)
                .field("leaky", leaky.nick())
                .field("policy", overflow.policy.nick())
                .build()
        }
        Notice::Dropped { episode, at_end } => {
            let duration = episode.duration();
            let until = if *at_end {
                "the end of the stream came first"
            } else {
                "the queue has room again"
            };
            let which = if episode.policy == Leaky::Upstream {
                "the new ones"
            } else {
                "the oldest"
            };
            alert = Some(Alert::Warning(
                gst::ResourceError::Write,
                format!(
                    "{} messages dropped ({which}) over {:.1} s while the queue was full; \
                     {until}.",
                    episode.dropped,
                    duration.as_secs_f64(),
                ),
            ));
            gst::Structure::builder("mqttpublish-dropped")
                .field("broker", broker)
                .field("reason", "queue-full")
                .field("count", episode.dropped)
                .field("policy", episode.policy.nick())
                .field("duration-ms", duration.as_millis() as u64)
                .field("at-end", *at_end)
                .build()
        }
        Notice::SpoolTrouble { problem } => {
            match problem {
                Some(problem) => {
                    alert = Some(Alert::Warning(gst::ResourceError::Write, problem.clone()))
                }
                None => log = Some("The spool works again".into()),
            }
            gst::Structure::builder("mqttpublish-spool")
                .field("working", problem.is_none())
                .field("problem", problem.as_deref().unwrap_or_default())
                .build()
        }
        Notice::SpoolDropping { reason } => {
            let why = spool_drop_reason(reason);
            alert = Some(Alert::Warning(
                gst::ResourceError::Write,
                format!(
                    "Dropping the oldest spooled messages: {why}. The count follows once a \
                     second passes without a drop."
                ),
            ));
            gst::Structure::builder("mqttpublish-spool-dropping")
                .field("reason", *reason)
                .build()
        }
        Notice::SpoolDropped { reason, count } => {
            alert = Some(Alert::Warning(
                gst::ResourceError::Write,
                format!(
                    "{count} spooled messages dropped: {}.",
                    spool_drop_reason(reason)
                ),
            ));
            gst::Structure::builder("mqttpublish-spool-dropped")
                .field("reason", *reason)
                .field("count", *count)
                .build()
        }
    };
    Posting {
        log,
        alert,
        message,
    }
}

fn spool_drop_reason(reason: &str) -> &'static str {
    if reason == "age" {
        "they were older than spool-max-age"
    } else {
        "the spool was full (spool-max-bytes) and the upstream is live or leaky drops"
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::mqtt::{Broker, DropEpisode, Overflow, QoS};

    fn init() {
        gst::init().unwrap();
    }

    #[test]
    fn the_first_failed_attempt_warns_and_every_one_is_a_message() {
        init();
        let notice = |attempt| Notice::Disconnected {
            reason: "connection refused".into(),
            attempt,
            retry_in: Duration::from_millis(2000),
            next: Some(Broker {
                host: "n2".into(),
                port: 1884,
            }),
        };
        let first = describe("n1:1883", &notice(1));
        assert_eq!(
            first.alert,
            Some(Alert::Warning(
                gst::ResourceError::OpenWrite,
                "Not connected to the MQTT broker at n1:1883: connection refused. Retrying \
                 with backoff with the next broker, n2:1884; messages wait in the queue."
                    .into()
            ))
        );
        let s = &first.message;
        assert_eq!(s.name(), "mqttpublish-disconnected");
        assert_eq!(s.get::<u32>("attempt").unwrap(), 1);
        assert_eq!(s.get::<u64>("retry-in-ms").unwrap(), 2000);
        assert_eq!(s.get::<String>("next-broker").unwrap(), "n2:1884");

        let second = describe("n1:1883", &notice(2));
        assert_eq!(second.alert, None);
        assert_eq!(second.message.get::<u32>("attempt").unwrap(), 2);
    }

    #[test]
    fn a_refusal_is_a_message_and_left_to_the_element() {
        init();
        let posting = describe(
            "b:1883",
            &Notice::Refused {
                reason: "bad user name or password".into(),
            },
        );
        assert_eq!(posting.alert, None);
        assert_eq!(posting.message.name(), "mqttpublish-refused");
        assert_eq!(
            posting.message.get::<String>("reason").unwrap(),
            "bad user name or password"
        );
    }

    #[test]
    fn a_qos_downgrade_to_1_says_messages_can_arrive_twice() {
        init();
        let posting = describe(
            "b:1883",
            &Notice::QosDowngraded {
                requested: QoS::ExactlyOnce,
                granted: QoS::AtLeastOnce,
                reason: "the broker takes QoS 1 at most".into(),
            },
        );
        let Some(Alert::Warning(gst::ResourceError::Settings, text)) = posting.alert else {
            panic!("{:?}", posting.alert);
        };
        assert_eq!(
            text,
            "MQTT broker at b:1883: the broker takes QoS 1 at most. Publishing at QoS 1 \
             instead of 2 (at least once: a message can arrive twice)."
        );
        assert_eq!(posting.message.get::<u32>("granted").unwrap(), 1);
    }

    #[test]
    fn an_oversize_drop_names_the_limit_it_broke() {
        init();
        for (limit, name, value) in [
            (SizeLimit::Configured(4096), "max-message-size", 4096u64),
            (
                SizeLimit::Broker(2048),
                "the broker's maximum packet size",
                2048,
            ),
        ] {
            let posting = describe("b:1883", &Notice::Oversize { size: 5000, limit });
            let Some(Alert::Warning(_, text)) = posting.alert else {
                panic!("{:?}", posting.alert);
            };
            assert_eq!(
                text,
                format!(
                    "A message of 5000 bytes is larger than {name} ({value} bytes) and was \
                     dropped; further drops are counted in stats"
                )
            );
            assert_eq!(posting.message.get::<u64>("limit").unwrap(), value);
        }
    }

    #[test]
    fn a_failed_thread_is_an_error() {
        init();
        let posting = describe(
            "b:1883",
            &Notice::Failed {
                reason: "panic".into(),
            },
        );
        assert_eq!(
            posting.alert,
            Some(Alert::Error(
                gst::ResourceError::Failed,
                "MQTT publishing stopped: panic".into()
            ))
        );
        assert_eq!(posting.message.name(), "mqttpublish-failed");
    }

    #[test]
    fn a_drop_episode_names_its_bound_cause_policy_and_count() {
        init();
        let dropping = describe(
            "b:1883",
            &Notice::Dropping {
                overflow: Overflow {
                    bound: Bound::Messages(256),
                    policy: Leaky::Downstream,
                },
                leaky: Leaky::Auto,
                connected: false,
            },
        );
        let Some(Alert::Warning(gst::ResourceError::Write, text)) = dropping.alert else {
            panic!("{:?}", dropping.alert);
        };
        assert_eq!(
            text,
            "Dropping messages: the queue is full (max-queued-messages=256) because the \
             broker at b:1883 is not connected, and leaky=auto (the upstream is live) drops \
             the oldest message to make room. The count follows when the queue has room again."
        );
        let s = &dropping.message;
        assert_eq!(s.get::<String>("leaky").unwrap(), "auto");
        assert_eq!(s.get::<String>("policy").unwrap(), "downstream");
        assert_eq!(s.get::<u64>("limit").unwrap(), 256);

        let first_drop = std::time::Instant::now();
        let dropped = describe(
            "b:1883",
            &Notice::Dropped {
                episode: DropEpisode {
                    dropped: 37,
                    first_drop,
                    last_drop: first_drop + Duration::from_millis(1500),
                    policy: Leaky::Upstream,
                },
                at_end: true,
            },
        );
        let Some(Alert::Warning(_, text)) = dropped.alert else {
            panic!("{:?}", dropped.alert);
        };
        assert_eq!(
            text,
            "37 messages dropped (the new ones) over 1.5 s while the queue was full; the end \
             of the stream came first."
        );
        let s = &dropped.message;
        assert_eq!(s.get::<u64>("count").unwrap(), 37);
        assert_eq!(s.get::<u64>("duration-ms").unwrap(), 1500);
        assert!(s.get::<bool>("at-end").unwrap());
    }
}
