// SPDX-License-Identifier: MPL-2.0

//! Opening the disk spool a started `mqttpublish` publishes through (`spool-location`), and
//! what the element says about it: the warnings for what the previous process left behind
//! and the `mqttpublish-spool-opened` message. [`open`] only says what to post; the element
//! posts it.

use std::path::PathBuf;

use super::settings::SpoolSettings;
use crate::mqtt::{SpoolPolicies, SpoolStart};
use crate::spool::{LedgerFound, Opened, Spool, SpoolError, SpoolOptions};

/// A spool opened for a run.
pub struct Opening {
    pub start: SpoolStart,
    pub dir: PathBuf,
    pub opened: Opened,
}

/// What opening the spool came to, when it did not stop the start.
pub enum Outcome {
    Open(Box<Opening>),
    /// The folder cannot be used (a warning's text): the run goes on without a spool.
    Unusable(String),
}

/// Opens the spool of the element named `element` in the pipeline `pipeline`. Another
/// holder, another format version or a foreign file in the folder stop the start (an
/// error); any other trouble leaves the run without a spool.
pub fn open(
    settings: &SpoolSettings,
    element: &str,
    pipeline: &str,
) -> Result<Outcome, gst::ErrorMessage> {
    let dir = settings.dir(element);
    let options = SpoolOptions {
        // Whole segments are deleted once delivered: small enough that the spool's files
        // shrink soon after an outage, at least a few records.
        segment_bytes: (settings.max_bytes / 8).clamp(1024 * 1024, 64 * 1024 * 1024),
        max_bytes: settings.max_bytes,
        sync: settings.sync,
        identity: format!("{element} in {pipeline}"),
    };
    match Spool::open(&dir, options) {
        Ok((spool, opened)) => Ok(Outcome::Open(Box::new(Opening {
            start: SpoolStart {
                spool,
                policies: SpoolPolicies {
                    max_age: settings.max_age,
                },
                replay_share: settings.replay_share,
            },
            dir,
            opened,
        }))),
        Err(
            e @ (SpoolError::Locked { .. }
            | SpoolError::Version { .. }
            | SpoolError::NotSpoolFile { .. }),
        ) => Err(gst::error_msg!(
            gst::ResourceError::Busy,
            ("spool-location: {}", e)
        )),
        Err(e) => Ok(Outcome::Unusable(format!(
            "spool-location: {e}: publishing without a spool (messages wait in memory only)"
        ))),
    }
}

impl Opening {
    /// What the previous process left that the user should know: a torn last record (it
    /// died writing it), a damaged ledger (messages published a second time).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .opened
            .torn
            .iter()
            .map(|torn| {
                format!(
                    "spool: the end of {} ({} bytes) was cut short, as when the process dies \
                     while writing: cut off",
                    torn.path.display(),
                    torn.bytes
                )
            })
            .collect();
        if self.opened.ledger == LedgerFound::Damaged {
            warnings.push(format!(
                "spool: the ledger in {} is damaged: every message the spool holds is \
                 published again, some for a second time",
                self.dir.display()
            ));
        }
        warnings
    }

    /// The `mqttpublish-spool-opened` element message: what the spool held at start.
    pub fn message(&self) -> gst::Structure {
        let opened = &self.opened;
        gst::Structure::builder("mqttpublish-spool-opened")
            .field("location", self.dir.display().to_string())
            .field("messages", opened.messages)
            .field("bytes", opened.bytes)
            .field(
                "oldest-age-ms",
                opened
                    .oldest_age
                    .map_or(0, |age| age.as_millis().try_into().unwrap_or(u64::MAX)),
            )
            .field(
                "torn-bytes",
                opened.torn.iter().map(|t| t.bytes).sum::<u64>(),
            )
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SyncPolicy;

    fn settings(location: &std::path::Path, identity: Option<&str>) -> SpoolSettings {
        SpoolSettings {
            location: location.to_owned(),
            identity: identity.map(str::to_owned),
            max_bytes: 16 * 1024 * 1024,
            max_age: None,
            sync: SyncPolicy::None,
            replay_share: 50,
        }
    }

    fn opening(outcome: Outcome) -> Box<Opening> {
        match outcome {
            Outcome::Open(opening) => opening,
            Outcome::Unusable(why) => panic!("{why}"),
        }
    }

    #[test]
    fn the_folder_is_named_after_the_client_id_else_the_element() {
        gst::init().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let named = opening(open(&settings(tmp.path(), Some("dock/3")), "sink", "p").unwrap());
        assert_eq!(named.dir, tmp.path().join("dock_3"));
        let message = named.message();
        assert_eq!(message.name(), "mqttpublish-spool-opened");
        assert_eq!(message.get::<u64>("messages").unwrap(), 0);
        assert!(named.warnings().is_empty());
        let unnamed = opening(open(&settings(tmp.path(), None), "sink", "p").unwrap());
        assert_eq!(unnamed.dir, tmp.path().join("sink"));
    }

    #[test]
    fn a_held_spool_stops_the_start_and_an_unusable_folder_does_not() {
        gst::init().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let first = opening(open(&settings(tmp.path(), Some("cam")), "a", "p1").unwrap());
        let error = open(&settings(tmp.path(), Some("cam")), "b", "p2")
            .err()
            .expect("the second opener is refused");
        let text = error.to_string();
        assert!(
            text.contains("spool-location") && text.contains("a in p1"),
            "{text}"
        );
        drop(first);
        // A file where the folder should be.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        match open(&settings(&file, Some("cam")), "a", "p").unwrap() {
            Outcome::Unusable(why) => assert!(
                why.starts_with("spool-location: ") && why.contains("in memory only"),
                "{why}"
            ),
            Outcome::Open(_) => panic!("a file is no folder"),
        }
    }
}
