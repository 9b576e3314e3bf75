// SPDX-License-Identifier: MPL-2.0

//! `DIR/lock`: one `Spool` per directory at a time. The lock is `flock(2)` through std's
//! `File::try_lock`: it belongs to the open file, so the kernel drops it when the holder
//! exits however it exits (`kill -9` included); a lock file left behind by a dead process
//! is free again. The holder writes who it is into the file, for the error the next one
//! gets while it runs.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::SpoolError;

pub(super) const LOCK_FILE: &str = "lock";

/// How long a held lock is tried again before it counts as taken. A child process shares
/// the lock from its fork until its exec (any thread of this process starting a program),
/// so a lock just released by a `Spool` of this process can look held for that moment.
const RETRY_FOR: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub(super) struct DirLock {
    /// Held open: closing it releases the lock.
    file: File,
    path: PathBuf,
}

impl DirLock {
    pub fn acquire(dir: &Path, identity: &str) -> Result<DirLock, SpoolError> {
        let path = dir.join(LOCK_FILE);
        // Not truncated on open: until the lock is ours the text is the holder's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SpoolError::at(&path, "opening the lock file"))?;
        let deadline = Instant::now() + RETRY_FOR;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    // The holder writes its text right after taking the lock: an empty text
                    // means it is between the two.
                    let _ = file.read_to_string(&mut holder);
                    let holder = match holder.trim() {
                        "" => "another spool that is starting (no holder written yet)".to_owned(),
                        text => text.to_owned(),
                    };
                    return Err(SpoolError::Locked { path, holder });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(SpoolError::io(&path, "locking", e));
                }
            }
        }
        let text = holder_text(identity);
        file.set_len(0)
            .and_then(|()| file.write_all_at(text.as_bytes(), 0))
            .map_err(SpoolError::at(&path, "writing the holder into"))?;
        Ok(DirLock { file, path })
    }

    /// Whether the lock file is still in the directory (a deleted directory takes it along,
    /// and then the lock no longer keeps anyone out).
    pub fn is_linked(&self) -> io::Result<bool> {
        Ok(self.file.metadata()?.nlink() > 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// "pid 1234 on host cam-7, mqttpublish0 in pipeline0, since 2025-01-02T03:04:05.678+01".
fn holder_text(identity: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "an unknown host".to_owned());
    let since = gst::glib::DateTime::now_local()
        .and_then(|d| d.format("%Y-%m-%dT%H:%M:%S%z"))
        .map(|s| s.to_string())
        .unwrap_or_else(|_| "an unknown time".to_owned());
    let identity = if identity.is_empty() {
        String::new()
    } else {
        format!(", {identity}")
    };
    format!(
        "pid {} on host {host}{identity}, since {since}\n",
        std::process::id()
    )
}
