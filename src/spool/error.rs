// SPDX-License-Identifier: MPL-2.0

//! The spool's one error type. Each message names the file or directory and the cause, so
//! that it can be posted as it is in a GStreamer warning or error.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum SpoolError {
    /// A file operation failed: `op` says what was being done to `path`
    /// ("appending to", "creating", …), `source` why (ENOSPC, EROFS, ENOENT, …).
    Io {
        path: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// Another `Spool` (in this process or another) holds the directory's lock file.
    /// `holder` is what that holder wrote into it: pid, host, identity, start time.
    Locked { path: PathBuf, holder: String },
    /// A segment or the ledger was written by another format version: refused, not read.
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A file that should be a spool segment or ledger is not one this build can use (wrong
    /// magic, damaged header, name not matching its header).
    NotSpoolFile { path: PathBuf, reason: String },
    /// The message does not fit under `max_bytes` with what is held; the caller decides:
    /// wait for deliveries, or `drop_oldest`.
    Full {
        dir: PathBuf,
        held: u64,
        needed: u64,
        max_bytes: u64,
    },
    /// The message can never fit, however much is dropped.
    TooLarge {
        dir: PathBuf,
        needed: u64,
        max_bytes: u64,
    },
}

impl SpoolError {
    pub(super) fn io(path: &Path, op: &'static str, source: io::Error) -> Self {
        SpoolError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }

    /// A closure for `map_err` on an `io::Result`.
    pub(super) fn at<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> Self + 'a {
        move |source| SpoolError::io(path, op, source)
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Io { path, op, source } => {
                write!(f, "spool: {op} {} failed: {source}", path.display())
            }
            SpoolError::Locked { path, holder } => write!(
                f,
                "spool directory {} is in use: {} is locked by {holder}",
                path.parent().unwrap_or(path).display(),
                path.display()
            ),
            SpoolError::Version {
                path,
                found,
                supported,
            } => write!(
                f,
                "spool: {} was written in spool format version {found}, this build reads \
                 version {supported} only; deliver it with the version that wrote it or move \
                 the directory aside",
                path.display()
            ),
            SpoolError::NotSpoolFile { path, reason } => write!(
                f,
                "spool: {} is not a usable spool file: {reason}; move it out of the directory",
                path.display()
            ),
            SpoolError::Full {
                dir,
                held,
                needed,
                max_bytes,
            } => write!(
                f,
                "spool {} is full: {held} bytes held, {needed} more needed, limit {max_bytes} \
                 bytes",
                dir.display()
            ),
            SpoolError::TooLarge {
                dir,
                needed,
                max_bytes,
            } => write!(
                f,
                "spool {}: a message of {needed} bytes (header included) can never fit under \
                 the limit of {max_bytes} bytes",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
