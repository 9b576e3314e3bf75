// SPDX-License-Identifier: MPL-2.0

//! `DIR/ledger`: the watermark, the lowest sequence not yet released.
//!
//! It is moved on every release, that is on every acknowledgement, so its update must be
//! cheap: two fixed-size slots with their own CRC, overwritten in place by one `pwrite`
//! each, alternately (the generation's parity picks the slot). A temporary file and a
//! rename would cost a create, a write, a rename and a directory update per release. The
//! slots sit 4 KiB apart, in different pages and disk sectors, so a write torn by a power
//! loss damages at most the slot being written, and the other still holds the previous
//! watermark. A watermark that is too low only means messages published again, never
//! messages lost.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::format::{LedgerSlot, SlotContent, FORMAT_VERSION, LEDGER_SLOT_LEN};
use super::SpoolError;

pub(super) const LEDGER_FILE: &str = "ledger";
const SLOT_OFFSETS: [u64; 2] = [0, 4096];
const LEDGER_LEN: u64 = 4096 + LEDGER_SLOT_LEN as u64;

/// What the ledger held at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFound {
    /// No ledger (a new spool, or the file was deleted).
    Missing,
    Watermark(u64),
    /// Neither slot passes its checks: everything on disk is published again.
    Damaged,
}

#[derive(Debug)]
pub(super) struct Ledger {
    file: File,
    path: PathBuf,
    generation: u64,
}

impl Ledger {
    pub fn open(dir: &Path) -> Result<(Ledger, LedgerFound), SpoolError> {
        let path = dir.join(LEDGER_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SpoolError::at(&path, "opening the ledger"))?;
        let len = file
            .metadata()
            .map_err(SpoolError::at(&path, "reading the ledger"))?
            .len();
        let mut best: Option<LedgerSlot> = None;
        for offset in SLOT_OFFSETS {
            if len < offset + LEDGER_SLOT_LEN as u64 {
                continue;
            }
            let mut slot = [0u8; LEDGER_SLOT_LEN];
            file.read_exact_at(&mut slot, offset)
                .map_err(SpoolError::at(&path, "reading the ledger"))?;
            match LedgerSlot::decode(&slot) {
                SlotContent::Valid(s) => {
                    if best.is_none_or(|b| s.generation > b.generation) {
                        best = Some(s);
                    }
                }
                SlotContent::Version(found) => {
                    return Err(SpoolError::Version {
                        path,
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                SlotContent::Damaged => {}
            }
        }
        if len < LEDGER_LEN {
            // Both slots get their blocks now: a later update overwrites allocated bytes
            // and needs no free space, so releasing (which frees space) works on a full
            // disk.
            let zeros = vec![0u8; (LEDGER_LEN - len) as usize];
            file.write_all_at(&zeros, len)
                .map_err(SpoolError::at(&path, "writing the ledger"))?;
        }
        let found = match best {
            Some(s) => LedgerFound::Watermark(s.watermark),
            None if len == 0 => LedgerFound::Missing,
            None => LedgerFound::Damaged,
        };
        let ledger = Ledger {
            file,
            path,
            generation: best.map_or(0, |s| s.generation),
        };
        Ok((ledger, found))
    }

    /// Writes `watermark` into the slot not holding the latest one. In the page cache when
    /// this returns (a `kill -9` keeps it); `sync` makes it durable.
    pub fn store(&mut self, watermark: u64) -> Result<(), SpoolError> {
        let slot = LedgerSlot {
            generation: self.generation + 1,
            watermark,
        };
        let offset = SLOT_OFFSETS[(slot.generation % 2) as usize];
        self.file
            .write_all_at(&slot.encode(), offset)
            .map_err(SpoolError::at(&self.path, "writing the ledger"))?;
        self.generation = slot.generation;
        Ok(())
    }

    pub fn sync(&self) -> Result<(), SpoolError> {
        self.file
            .sync_data()
            .map_err(SpoolError::at(&self.path, "syncing the ledger"))
    }

    pub fn is_linked(&self) -> io::Result<bool> {
        Ok(self.file.metadata()?.nlink() > 0)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the slot of the latest generation is, for tests that damage it.
    #[cfg(test)]
    pub fn latest_slot_offset(&self) -> u64 {
        SLOT_OFFSETS[(self.generation % 2) as usize]
    }
}
