// SPDX-License-Identifier: MPL-2.0

//! A crash-safe store-and-forward spool: the storage under `mqttpublish`'s
//! `spool-location`. Every message is appended before it counts as queued and released
//! once delivered; a process started again on the same directory publishes, oldest first,
//! what the previous one had not delivered.
//!
//! # Layout of `DIR`
//!
//! - `lock`: held with `flock` by the open `Spool` (see [`lock`]), holding the text of its
//!   holder (pid, host, identity, start time).
//! - `ledger`: the watermark, the lowest sequence not yet released (see [`ledger`]).
//! - `<first sequence, 20 digits>.seg`: segments, appended in sequence order. A new one is
//!   started when the next record would take the current one past `segment_bytes`, but a
//!   segment always takes at least one record, whatever its size.
//!
//! ```text
//! segment header (24 bytes)         record (24 bytes + payload)
//!   0  magic "GSTMQSEG"     [8]       0  payload length    u32
//!   8  format version       u32       4  CRC32C            u32  of bytes 0..4, 8..24, payload
//!  12  first sequence       u64       8  sequence          u64
//!  20  CRC32C of 0..20      u32      16  written at        u64  UNIX nanoseconds
//!                                    24  payload           [length]
//! ```
//!
//! Integers are little-endian. Sequences are consecutive within a segment and across
//! segments, increase across restarts, and are not given twice, also after everything was
//! released (the ledger keeps the watermark when no segment is left). The one exception:
//! records lost at the end of the spool by a power loss (or a death in the middle of
//! `append`) had their sequences given already, and those are given again.
//!
//! Files shrink only by whole segments: a segment is deleted once every record in it is
//! below the watermark and it is not the one being appended to. So the files take up to
//! about `max_bytes + segment_bytes`: `max_bytes` limits what is held, the records not yet
//! released.
//!
//! # What survives what
//!
//! `append` makes one `write` of header and payload, straight to the file (no user-space
//! buffer), and `append_batch` one `write` for the records of several payloads: when they
//! return, the records are in the kernel's page cache. So under every [`SyncPolicy`] the
//! death of the process (`kill -9`, a crash, the OOM killer) loses nothing that an append
//! returned for; a death in the middle of an append leaves its last record torn (the ones
//! before it whole, or not there), and the next `open` cuts it. What a power loss or a
//! kernel crash keeps depends on the policy:
//!
//! - [`SyncPolicy::Always`]: `fdatasync` after every append (one for a batch; and after every ledger update
//!   and new segment): everything `append` returned for survives. One disk flush per
//!   message.
//! - [`SyncPolicy::Interval`]: the caller calls [`Spool::sync_if_due`] regularly; it
//!   flushes data, ledger and directory once the interval has passed and something was
//!   written. A power loss loses at most what was appended since the last flush.
//! - [`SyncPolicy::None`]: the kernel writes back when it chooses (on Linux within about
//!   30 s by default); a power loss can lose any of that.
//!
//! A ledger update lost to a power loss only means messages published again, never lost.
//! After a failed `fdatasync` the kernel may have dropped the data it could not write: the
//! error is returned, and what was written before it is not known to be durable.

mod error;
mod format;
mod ledger;
mod lock;
mod scan;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use error::SpoolError;
pub use ledger::LedgerFound;

use format::{
    decode_segment_header, encode_segment_header, parse_segment_file_name, segment_file_name,
    RecordHeader, SegmentHeaderError, FORMAT_VERSION, MAX_PAYLOAD, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use ledger::Ledger;
use lock::DirLock;
use scan::{Bounds, Mode, Pos, SegmentReader, Step};

/// When appended data is flushed to stable storage (see the module documentation for what
/// each one survives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` after every append and ledger update.
    Always,
    /// `fdatasync` from [`Spool::sync_if_due`] when this much time has passed since the
    /// last one and something was written.
    Interval(Duration),
    /// Never: the kernel writes back in its own time.
    None,
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// A new segment is started when the next record would take the current one past
    /// this (a segment takes at least one record, whatever its size).
    pub segment_bytes: u64,
    /// The most held (not yet released) bytes, record headers included; `append` beyond
    /// it returns [`SpoolError::Full`].
    pub max_bytes: u64,
    pub sync: SyncPolicy,
    /// Who holds the lock, for the error another opener gets (e.g. the element's and
    /// pipeline's names).
    pub identity: String,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            sync: SyncPolicy::Interval(Duration::from_secs(1)),
            identity: String::new(),
        }
    }
}

/// The most records one `writev` takes: two slices each, under the kernel's `IOV_MAX`
/// (1024).
const MAX_RUN: usize = 256;

/// What [`Spool::append_batch`] did.
#[derive(Debug)]
pub struct Appended {
    /// The payloads appended, from the first on.
    pub count: usize,
    /// Why it stopped short (see [`Spool::append_batch`]).
    pub error: Option<SpoolError>,
}

/// Records passed over by a drop policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    pub messages: u64,
    /// Their bytes on disk, headers included.
    pub bytes: u64,
}

impl std::ops::AddAssign for Dropped {
    fn add_assign(&mut self, other: Dropped) {
        self.messages += other.messages;
        self.bytes += other.bytes;
    }
}

/// The end of a segment cut at open: a record (or segment header) whose writing was cut
/// short, with no sound record after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    pub path: PathBuf,
    pub bytes: u64,
}

/// What `open` found.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Messages held: not released by the previous holder, to be published.
    pub messages: u64,
    /// Their bytes on disk, headers included.
    pub bytes: u64,
    /// The sequence the next `append` gets.
    pub next_sequence: u64,
    /// The age of the oldest message held.
    pub oldest_age: Option<Duration>,
    /// Ends cut because their writing was cut short (at most one in practice).
    pub torn: Vec<Torn>,
    /// Segment files found.
    pub files: usize,
    pub ledger: LedgerFound,
}

/// A message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub sequence: u64,
    pub written_at: SystemTime,
    pub payload: Bytes,
}

/// Records that cannot be read back: skipped, counted, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub path: PathBuf,
    /// Where the damage starts in `path`.
    pub offset: u64,
    /// The sequences lost. Nothing else needs to be done about them: the next `release`
    /// past them releases them as well.
    pub sequences: Range<u64>,
    /// No bytes at all for them (a file removed or cut by hand), rather than damaged ones.
    pub missing: bool,
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.sequences.end - self.sequences.start;
        let what = if self.missing {
            "missing"
        } else {
            "damaged (checksum mismatch)"
        };
        write!(
            f,
            "spool: {n} message(s) {what} at byte {} of {}, sequences {} to {}: skipped",
            self.offset,
            self.path.display(),
            self.sequences.start,
            self.sequences.end - 1
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEvent {
    Record(Record),
    /// Returned once, when the reading first reaches the damage; the caller warns.
    Corrupt(Corruption),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Messages held (appended, not released).
    pub messages: u64,
    /// Their bytes, headers included: what `max_bytes` limits.
    pub bytes: u64,
    pub oldest_age: Option<Duration>,
    /// Records skipped by reading because they failed their checks or were missing.
    pub corrupt_records: u64,
    /// Bytes cut at open (torn ends).
    pub torn_bytes: u64,
    pub dropped_full: Dropped,
    pub dropped_age: Dropped,
    /// Messages held in files removed by someone else while in use.
    pub lost: u64,
    /// Bytes appended since open, headers included.
    pub bytes_written: u64,
    /// `write` calls that appended them (a batch takes one per segment it goes to).
    pub writes: u64,
    /// Segment files.
    pub files: usize,
    /// Their total size: held bytes plus released records waiting for the rest of their
    /// segment, plus segment headers.
    pub disk_bytes: u64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    /// The end of its sound bytes; in the last segment, where the next record goes.
    len: u64,
}

impl Segment {
    fn start(&self) -> Pos {
        Pos {
            segment: self.first,
            sequence: self.first,
            offset: SEGMENT_HEADER_LEN,
        }
    }
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// A failed write may have left part of a record after the segment's `len`, and
    /// cutting it failed too: cut before the next write.
    cut_before_write: bool,
}

/// What the watermark would pass over next.
enum Walk {
    Record { written_at: u64, next: Pos },
    Skip { next: Pos },
    AtEnd,
}

#[derive(Debug)]
struct Dirty {
    data: bool,
    ledger: bool,
    dir: bool,
    last_sync: Instant,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    options: SpoolOptions,
    lock: DirLock,
    ledger: Ledger,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    writer: Option<Writer>,
    next_sequence: u64,
    watermark: u64,
    /// Where the record at the watermark is (or the first sound one after it); `None`
    /// when no segment is left.
    release: Option<Pos>,
    walker: Option<SegmentReader>,
    /// Where `read_next` goes on; behind the watermark means at the watermark.
    cursor: Option<Pos>,
    reader: Option<SegmentReader>,
    /// Damage before this sequence was reported already.
    reported_until: u64,
    oldest_written_at: Option<u64>,
    stats: SpoolStats,
    dirty: Dirty,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn age(written_at: Option<u64>, now: SystemTime) -> Option<Duration> {
    written_at.map(|w| Duration::from_nanos(unix_nanos(now).saturating_sub(w)))
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(SpoolError::at(dir, "syncing the directory"))
}

/// The read handle in `slot` on `segment`, opened if it is on another one.
fn handle<'a>(
    slot: &'a mut Option<SegmentReader>,
    segment: &Segment,
) -> Result<&'a mut SegmentReader, SpoolError> {
    if slot.as_ref().is_none_or(|r| r.segment != segment.first) {
        let reader = SegmentReader::open(&segment.path, segment.first)
            .map_err(SpoolError::at(&segment.path, "opening"))?;
        *slot = Some(reader);
    }
    Ok(slot.as_mut().expect("set above"))
}

/// Writes all of `slices` (records' headers and payloads: no copy of the payloads), with as
/// few `writev` calls as the kernel allows.
/// `writes` counts the calls.
fn write_all_vectored(
    file: &mut File,
    mut slices: &mut [IoSlice<'_>],
    writes: &mut u64,
) -> io::Result<()> {
    while !slices.is_empty() {
        *writes += 1;
        match file.write_vectored(slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The segment files in `dir`, in sequence order.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut found = Vec::new();
    let entries = fs::read_dir(dir).map_err(SpoolError::at(dir, "listing"))?;
    for entry in entries {
        let entry = entry.map_err(SpoolError::at(dir, "listing"))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            found.push((first, entry.path()));
        }
    }
    found.sort_unstable_by_key(|(first, _)| *first);
    Ok(found)
}

/// Checks a segment file's header, unless the file is shorter than one.
fn check_segment(first: u64, path: PathBuf) -> Result<Segment, SpoolError> {
    let file = File::open(&path).map_err(SpoolError::at(&path, "opening"))?;
    let len = file
        .metadata()
        .map_err(SpoolError::at(&path, "reading"))?
        .len();
    if len < SEGMENT_HEADER_LEN {
        return Ok(Segment { first, path, len });
    }
    let mut header = [0u8; SEGMENT_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0)
        .map_err(SpoolError::at(&path, "reading"))?;
    match decode_segment_header(&header, first) {
        Ok(()) => Ok(Segment { first, path, len }),
        Err(SegmentHeaderError::Version(found)) => Err(SpoolError::Version {
            path,
            found,
            supported: FORMAT_VERSION,
        }),
        Err(e) => Err(SpoolError::NotSpoolFile {
            reason: e.reason(&path, first),
            path,
        }),
    }
}

/// The segments with their headers checked; the last one apart when it is shorter than a
/// header (its creation was cut short).
fn check_segments(
    found: Vec<(u64, PathBuf)>,
) -> Result<(VecDeque<Segment>, Option<Segment>), SpoolError> {
    let count = found.len();
    let mut segments = VecDeque::new();
    for (i, (first, path)) in found.into_iter().enumerate() {
        let segment = check_segment(first, path)?;
        if segment.len >= SEGMENT_HEADER_LEN {
            segments.push_back(segment);
        } else if i + 1 == count {
            return Ok((segments, Some(segment)));
        } else {
            return Err(SpoolError::NotSpoolFile {
                path: segment.path,
                reason: "it is shorter than a segment header".into(),
            });
        }
    }
    Ok((segments, None))
}

/// Reads the last segment through to its last sound record and cuts what follows: a
/// torn end, with no sound record after it. Returns the sequence after its last record
/// and the file, opened for appending there.
fn scan_last_segment(last: &mut Segment) -> Result<(u64, File, Option<Torn>), SpoolError> {
    let mut reader = SegmentReader::open(&last.path, last.first)
        .map_err(SpoolError::at(&last.path, "opening"))?;
    let bounds = Bounds {
        limit: last.len,
        end_sequence: u64::MAX,
    };
    let mut pos = last.start();
    loop {
        let step = reader
            .step(pos, bounds, Mode::Check)
            .map_err(SpoolError::at(&last.path, "reading"))?;
        match step {
            Step::Record { next, .. } | Step::Skip { next } => pos = next,
            Step::End | Step::Unreadable => break,
        }
    }
    let mut file = OpenOptions::new()
        .write(true)
        .open(&last.path)
        .map_err(SpoolError::at(&last.path, "opening"))?;
    let mut torn = None;
    if pos.offset < last.len {
        file.set_len(pos.offset)
            .map_err(SpoolError::at(&last.path, "cutting the torn end of"))?;
        torn = Some(Torn {
            path: last.path.clone(),
            bytes: last.len - pos.offset,
        });
        last.len = pos.offset;
    }
    file.seek(SeekFrom::Start(last.len))
        .map_err(SpoolError::at(&last.path, "opening"))?;
    Ok((pos.sequence, file, torn))
}

/// At open: deletes the segments wholly below the watermark, the last one too (nothing
/// appends to it yet).
fn delete_released(
    segments: &mut VecDeque<Segment>,
    next_sequence: u64,
    watermark: u64,
) -> Result<(), SpoolError> {
    while let Some(segment) = segments.front() {
        let end = segments.get(1).map_or(next_sequence, |n| n.first);
        if end > watermark {
            break;
        }
        remove_segment_file(segment)?;
        segments.pop_front();
    }
    Ok(())
}

fn remove_segment_file(segment: &Segment) -> Result<(), SpoolError> {
    match fs::remove_file(&segment.path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SpoolError::io(&segment.path, "deleting", e)),
    }
}

/// Writes a fresh segment header into `path` (created or emptied), opened for appending.
fn new_segment_file(path: &Path, first: u64) -> Result<File, SpoolError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(SpoolError::at(path, "creating"))?;
    if let Err(e) = file.write_all(&encode_segment_header(first)) {
        let _ = fs::remove_file(path);
        return Err(SpoolError::io(path, "writing the header of", e));
    }
    Ok(file)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`: takes its lock, checks every segment's
    /// header, cuts a torn end off the last segment (which it reads through, checking
    /// every record), and finds the watermark.
    pub fn open(
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<(Spool, Opened), SpoolError> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(SpoolError::at(&dir, "creating the directory"))?;
        let lock = DirLock::acquire(&dir, &options.identity)?;
        // Every file is checked before anything is changed: a directory of another format
        // version is refused untouched.
        let found = list_segments(&dir)?;
        let files = found.len();
        let (mut segments, short_last) = check_segments(found)?;
        let (ledger, ledger_found) = Ledger::open(&dir)?;

        let mut torn = Vec::new();
        let mut next_sequence = 0;
        let mut writer = None;
        if let Some(mut short) = short_last {
            // Its creation was cut short: it holds no record. Its header is written again
            // (its name says that the sequences before it were given).
            writer = Some(new_segment_file(&short.path, short.first)?);
            torn.push(Torn {
                path: short.path.clone(),
                bytes: short.len,
            });
            short.len = SEGMENT_HEADER_LEN;
            next_sequence = short.first;
            segments.push_back(short);
        } else if let Some(last) = segments.back_mut() {
            let (next, file, cut) = scan_last_segment(last)?;
            next_sequence = next;
            writer = Some(file);
            torn.extend(cut);
        }

        let first_held = segments.front().map(|s| s.first);
        let mut watermark = match ledger_found {
            LedgerFound::Watermark(w) => w,
            LedgerFound::Missing | LedgerFound::Damaged => first_held.unwrap_or(0),
        };
        if let Some(first) = first_held {
            watermark = watermark.max(first);
        }
        // A watermark past the data (records lost to a power loss after their release was
        // recorded, or everything released and deleted): those sequences are not given
        // again.
        next_sequence = next_sequence.max(watermark);
        delete_released(&mut segments, next_sequence, watermark)?;
        if segments.is_empty() {
            writer = None;
        }

        let release = segments.front().map(Segment::start);
        let mut spool = Spool {
            dir,
            options,
            lock,
            ledger,
            segments,
            writer: writer.map(|file| Writer {
                file,
                cut_before_write: false,
            }),
            next_sequence,
            watermark,
            release,
            walker: None,
            cursor: None,
            reader: None,
            reported_until: 0,
            oldest_written_at: None,
            stats: SpoolStats {
                torn_bytes: torn.iter().map(|t| t.bytes).sum(),
                ..SpoolStats::default()
            },
            dirty: Dirty {
                data: false,
                ledger: false,
                dir: ledger_found == LedgerFound::Missing,
                last_sync: Instant::now(),
            },
        };
        spool.walk_release_to(watermark)?;
        spool.ledger.store(watermark)?;
        spool.ledger_written()?;
        spool.oldest_written_at = spool.find_oldest()?;

        let opened = Opened {
            messages: spool.next_sequence - spool.watermark,
            bytes: spool.held_bytes(),
            next_sequence: spool.next_sequence,
            oldest_age: age(spool.oldest_written_at, SystemTime::now()),
            torn,
            files,
            ledger: ledger_found,
        };
        Ok((spool, opened))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lowest sequence not yet released.
    pub fn watermark(&self) -> u64 {
        self.watermark
    }

    /// The sequence the next `append` gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Appends a message; returns its sequence. When this returns the record is in the
    /// page cache (and on disk under `SyncPolicy::Always`). An error from writing leaves
    /// the spool as it was (no partial record), and later appends work once the cause is
    /// gone; an error from syncing comes after the record was written, and it stays.
    /// (The element appends in batches; the tests one at a time.)
    #[cfg(test)]
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, SpoolError> {
        self.append_at(payload, SystemTime::now())
    }

    #[cfg(test)]
    fn append_at(&mut self, payload: &[u8], now: SystemTime) -> Result<u64, SpoolError> {
        let sequence = self.next_sequence;
        let appended = self.append_batch_at(&[payload], now);
        match appended.error {
            Some(e) => Err(e),
            None => Ok(sequence),
        }
    }

    /// Appends the payloads in their order, as [`Spool::append`] does each, but with one
    /// `write` for as many records as go to the same segment (and, under
    /// `SyncPolicy::Always`, one `fdatasync` for them): the records of the first
    /// [`Appended::count`] payloads, with consecutive sequences from the
    /// [`Spool::next_sequence`] of before the call. It stops at the first error, which
    /// concerns the payload at `count` (not appended), or after a failed `fdatasync` the
    /// records written before it (appended, not known to be durable).
    pub fn append_batch<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Appended {
        self.append_batch_at(payloads, SystemTime::now())
    }

    fn append_batch_at<P: AsRef<[u8]>>(&mut self, payloads: &[P], now: SystemTime) -> Appended {
        let mut count = 0;
        let mut checked = false;
        while count < payloads.len() {
            match self.append_run(&payloads[count..], now, &mut checked) {
                Ok(n) => count += n,
                Err((n, error)) => {
                    return Appended {
                        count: count + n,
                        error: Some(error),
                    }
                }
            }
        }
        Appended { count, error: None }
    }

    /// Appends the longest run of `payloads` that starts with the first one and fits
    /// under `max_bytes` and in one segment, in one write; returns how many (at least
    /// one), or the error and how many were appended before it (only a failed sync comes
    /// after records were appended). `checked`: whether the file was checked in this
    /// batch already (a file removed meanwhile is found by the next batch).
    fn append_run<P: AsRef<[u8]>>(
        &mut self,
        payloads: &[P],
        now: SystemTime,
        checked: &mut bool,
    ) -> Result<usize, (usize, SpoolError)> {
        let record_len = |payload: &[u8]| RECORD_HEADER_LEN + payload.len() as u64;
        let first = payloads[0].as_ref();
        let needed = record_len(first);
        if first.len() as u64 > MAX_PAYLOAD || needed > self.options.max_bytes {
            return Err((
                0,
                SpoolError::TooLarge {
                    dir: self.dir.clone(),
                    needed,
                    max_bytes: self.options.max_bytes,
                },
            ));
        }
        let held = self.held_bytes();
        if held + needed > self.options.max_bytes {
            return Err((
                0,
                SpoolError::Full {
                    dir: self.dir.clone(),
                    held,
                    needed,
                    max_bytes: self.options.max_bytes,
                },
            ));
        }
        if !std::mem::replace(checked, true) {
            self.check_still_linked().map_err(|e| (0, e))?;
        }
        self.make_room_in_segment(needed).map_err(|e| (0, e))?;

        // The run: what fits after the first record, in the segment and under max_bytes.
        let segment_len = self.segments.back().expect("a segment to append to").len;
        let mut total = needed;
        let mut count = 1;
        for payload in &payloads[1..payloads.len().min(MAX_RUN)] {
            let needed = record_len(payload.as_ref());
            if payload.as_ref().len() as u64 > MAX_PAYLOAD
                || held + total + needed > self.options.max_bytes
                || segment_len + total + needed > self.options.segment_bytes
            {
                break;
            }
            total += needed;
            count += 1;
        }
        let first_sequence = self.next_sequence;
        let written_at = unix_nanos(now);
        let headers: Vec<_> = payloads[..count]
            .iter()
            .zip(first_sequence..)
            .map(|(payload, sequence)| RecordHeader::encode(sequence, written_at, payload.as_ref()))
            .collect();
        let mut slices: Vec<IoSlice> = headers
            .iter()
            .zip(&payloads[..count])
            .flat_map(|(header, payload)| [IoSlice::new(header), IoSlice::new(payload.as_ref())])
            .collect();

        let segment = self.segments.back_mut().expect("a segment to append to");
        let writer = self.writer.as_mut().expect("a writer on the last segment");
        if writer.cut_before_write {
            writer
                .file
                .set_len(segment.len)
                .and_then(|()| writer.file.seek(SeekFrom::Start(segment.len)))
                .map_err(|e| {
                    (
                        0,
                        SpoolError::io(&segment.path, "cutting a failed write from", e),
                    )
                })?;
            writer.cut_before_write = false;
        }
        if let Err(e) = write_all_vectored(&mut writer.file, &mut slices, &mut self.stats.writes) {
            // No partial record stays behind (ENOSPC mid-record is the usual case).
            let cut = writer
                .file
                .set_len(segment.len)
                .and_then(|()| writer.file.seek(SeekFrom::Start(segment.len)));
            writer.cut_before_write = cut.is_err();
            return Err((0, SpoolError::io(&segment.path, "appending to", e)));
        }
        segment.len += total;
        self.next_sequence += count as u64;
        self.stats.bytes_written += total;
        self.dirty.data = true;
        if self.watermark == first_sequence {
            self.oldest_written_at = Some(written_at);
        }
        if self.options.sync == SyncPolicy::Always {
            self.sync().map_err(|e| (count, e))?;
        }
        Ok(count)
    }

    /// A file removed under our feet (the directory deleted, or a segment by hand) must not
    /// take appends: they would go to a file nobody can open again.
    fn check_still_linked(&mut self) -> Result<(), SpoolError> {
        let (Some(writer), Some(segment)) = (&self.writer, self.segments.back()) else {
            return Ok(());
        };
        let linked = writer
            .file
            .metadata()
            .map_err(SpoolError::at(&segment.path, "checking"))?
            .nlink()
            > 0;
        if linked {
            return Ok(());
        }
        let path = segment.path.clone();
        let lost = self.forget_removed_segments()?;
        Err(SpoolError::io(
            &path,
            "appending to",
            io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the file was removed while in use (spool directory deleted?); {lost} \
                     unreleased message(s) went with it"
                ),
            ),
        ))
    }

    /// Drops removed segment files from the index; returns the unreleased messages they
    /// held. Appends go to a new segment next.
    fn forget_removed_segments(&mut self) -> Result<u64, SpoolError> {
        let old: Vec<Segment> = self.segments.drain(..).collect();
        let ends: Vec<u64> = (0..old.len())
            .map(|i| old.get(i + 1).map_or(self.next_sequence, |n| n.first))
            .collect();
        let count = old.len();
        let mut lost = 0;
        for (i, segment) in old.into_iter().enumerate() {
            // The one appended to is known to be gone (a file of that name now would be
            // another one).
            let removed = i + 1 == count || fs::symlink_metadata(&segment.path).is_err();
            if removed {
                lost += ends[i].saturating_sub(segment.first.max(self.watermark));
            } else {
                self.segments.push_back(segment);
            }
        }
        self.stats.lost += lost;
        self.writer = None;
        self.reader = None;
        self.walker = None;
        self.cursor = None;
        let watermark = match self.segments.front() {
            Some(first) => self.watermark.max(first.first),
            None => self.next_sequence,
        };
        self.release = self.segments.front().map(Segment::start);
        self.walk_release_to(watermark)?;
        self.watermark = watermark;
        self.oldest_written_at = self.find_oldest()?;
        Ok(lost)
    }

    /// Starts a new segment if the record does not fit in the current one (which takes it
    /// anyway when it holds no record yet).
    fn make_room_in_segment(&mut self, needed: u64) -> Result<(), SpoolError> {
        if let (Some(segment), Some(_)) = (self.segments.back(), &self.writer) {
            let empty = self.next_sequence == segment.first;
            if empty || segment.len + needed <= self.options.segment_bytes {
                return Ok(());
            }
            if self.options.sync != SyncPolicy::None && self.dirty.data {
                // Its last records are covered by no later sync of the new segment.
                let writer = self.writer.as_ref().expect("checked above");
                writer
                    .file
                    .sync_data()
                    .map_err(SpoolError::at(&segment.path, "syncing"))?;
                self.dirty.data = false;
            }
        }
        self.writer = None;
        self.reattach_if_moved()?;
        let first = self.next_sequence;
        let path = self.dir.join(segment_file_name(first));
        let file = new_segment_file(&path, first)?;
        self.writer = Some(Writer {
            file,
            cut_before_write: false,
        });
        let segment = Segment {
            first,
            path,
            len: SEGMENT_HEADER_LEN,
        };
        if self.release.is_none() {
            self.release = Some(segment.start());
        }
        self.segments.push_back(segment);
        self.dirty.data = true;
        self.dirty.dir = true;
        Ok(())
    }

    /// After the directory was deleted and made again: take the lock and write the ledger
    /// in the new one.
    fn reattach_if_moved(&mut self) -> Result<(), SpoolError> {
        let lock_path = self.lock.path().to_owned();
        if !self
            .lock
            .is_linked()
            .map_err(SpoolError::at(&lock_path, "checking"))?
        {
            self.lock = DirLock::acquire(&self.dir, &self.options.identity)?;
        }
        let ledger_path = self.ledger.path().to_owned();
        if !self
            .ledger
            .is_linked()
            .map_err(SpoolError::at(&ledger_path, "checking"))?
        {
            let (ledger, _) = Ledger::open(&self.dir)?;
            self.ledger = ledger;
            self.ledger.store(self.watermark)?;
            self.dirty.ledger = true;
            self.dirty.dir = true;
        }
        Ok(())
    }

    fn segment_index(&self, first: u64) -> Option<usize> {
        self.segments.binary_search_by_key(&first, |s| s.first).ok()
    }

    fn bounds(&self, i: usize) -> Bounds {
        Bounds {
            limit: self.segments[i].len,
            end_sequence: self
                .segments
                .get(i + 1)
                .map_or(self.next_sequence, |n| n.first),
        }
    }

    /// What the watermark passes over next from `pos`, trusting headers that fit.
    fn walk_step(&mut self, pos: Pos) -> Result<Walk, SpoolError> {
        let i = self
            .segment_index(pos.segment)
            .expect("the release position is in a held segment");
        let bounds = self.bounds(i);
        let segment = &self.segments[i];
        let step = handle(&mut self.walker, segment)?
            .step(pos, bounds, Mode::Walk)
            .map_err(SpoolError::at(&segment.path, "reading"))?;
        Ok(match step {
            Step::Record {
                written_at, next, ..
            } => Walk::Record { written_at, next },
            Step::Skip { next } => Walk::Skip { next },
            Step::Unreadable => Walk::Skip {
                next: Pos {
                    sequence: bounds.end_sequence,
                    offset: bounds.limit,
                    ..pos
                },
            },
            Step::End => match self.segments.get(i + 1) {
                Some(next) => Walk::Skip { next: next.start() },
                None => Walk::AtEnd,
            },
        })
    }

    /// Moves the release position to the first record at or after `target`.
    fn walk_release_to(&mut self, target: u64) -> Result<(), SpoolError> {
        while let Some(pos) = self.release.filter(|p| p.sequence < target) {
            match self.walk_step(pos)? {
                Walk::Record { next, .. } | Walk::Skip { next } => self.release = Some(next),
                Walk::AtEnd => {
                    // Records missing at the end of the last segment: passed over.
                    self.release = Some(Pos {
                        sequence: target,
                        ..pos
                    });
                    break;
                }
            }
        }
        Ok(())
    }

    /// The write time of the first sound record from the release position on.
    fn find_oldest(&mut self) -> Result<Option<u64>, SpoolError> {
        let mut pos = self.release;
        while let Some(p) = pos {
            match self.walk_step(p)? {
                Walk::Record { written_at, .. } => return Ok(Some(written_at)),
                Walk::Skip { next } => pos = Some(next),
                Walk::AtEnd => break,
            }
        }
        Ok(None)
    }

    fn held_bytes(&self) -> u64 {
        let Some(release) = self.release else {
            return 0;
        };
        self.segments
            .iter()
            .map(|s| match s.first.cmp(&release.segment) {
                std::cmp::Ordering::Less => 0,
                std::cmp::Ordering::Equal => s.len.saturating_sub(release.offset),
                std::cmp::Ordering::Greater => s.len - SEGMENT_HEADER_LEN,
            })
            .sum()
    }

    /// Everything with a sequence below `up_to` is delivered. The watermark only moves
    /// forward (a lower `up_to` does nothing) and stops at the next sequence. Segments
    /// wholly below it, except the one appended to, are deleted.
    pub fn release(&mut self, up_to: u64) -> Result<(), SpoolError> {
        let target = up_to.min(self.next_sequence);
        if target <= self.watermark {
            return Ok(());
        }
        self.walk_release_to(target)?;
        self.watermark_moved(target)
    }

    /// Makes room for a payload of `payload_len` bytes under `max_bytes` by releasing the
    /// oldest records, counted as dropped by the full policy.
    pub fn drop_oldest(&mut self, payload_len: usize) -> Result<Dropped, SpoolError> {
        let needed = RECORD_HEADER_LEN + payload_len as u64;
        self.drop_while(|spool, _| spool.held_bytes() + needed > spool.options.max_bytes)
            .inspect(|d| self.stats.dropped_full += *d)
    }

    /// Releases the records written longer than `max_age` ago, from the oldest on up to
    /// the first younger one, counted as dropped by the age policy.
    pub fn drop_older_than(&mut self, max_age: Duration) -> Result<Dropped, SpoolError> {
        self.drop_older_than_at(max_age, SystemTime::now())
    }

    fn drop_older_than_at(
        &mut self,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<Dropped, SpoolError> {
        let cutoff =
            unix_nanos(now).saturating_sub(u64::try_from(max_age.as_nanos()).unwrap_or(u64::MAX));
        self.drop_while(|_, written_at| written_at.is_none_or(|w| w < cutoff))
            .inspect(|d| self.stats.dropped_age += *d)
    }

    /// Moves the watermark over records while `more(spool, written_at)` says so
    /// (`written_at` is `None` for a damaged stretch, which goes with its neighbours).
    fn drop_while(
        &mut self,
        mut more: impl FnMut(&Spool, Option<u64>) -> bool,
    ) -> Result<Dropped, SpoolError> {
        let (watermark, held) = (self.watermark, self.held_bytes());
        let mut moved = false;
        while let Some(pos) = self.release {
            let (written_at, next) = match self.walk_step(pos)? {
                Walk::Record { written_at, next } => (Some(written_at), next),
                Walk::Skip { next } => (None, next),
                Walk::AtEnd => break,
            };
            if !more(self, written_at) {
                break;
            }
            self.release = Some(next);
            moved = true;
        }
        if !moved {
            return Ok(Dropped::default());
        }
        let new = self.release.map_or(self.next_sequence, |p| p.sequence);
        let dropped = Dropped {
            messages: new - watermark,
            bytes: held - self.held_bytes(),
        };
        self.watermark_moved(new)?;
        Ok(dropped)
    }

    fn watermark_moved(&mut self, watermark: u64) -> Result<(), SpoolError> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        // The ledger first: a crash before the deletions leaves released segments, which
        // the next open deletes.
        self.ledger.store(watermark)?;
        self.ledger_written()?;
        while self.segments.len() > 1 && self.segments[1].first <= watermark {
            remove_segment_file(&self.segments[0])?;
            let gone = self.segments.pop_front().expect("checked above").first;
            if self.release.is_some_and(|p| p.segment == gone) {
                self.release = Some(self.segments[0].start());
            }
        }
        self.oldest_written_at = self.find_oldest()?;
        Ok(())
    }

    fn ledger_written(&mut self) -> Result<(), SpoolError> {
        self.dirty.ledger = true;
        if self.options.sync == SyncPolicy::Always {
            self.sync()?;
        }
        Ok(())
    }

    /// The next record after the last one read, oldest first; damaged or missing records
    /// are skipped and reported once as [`ReadEvent::Corrupt`]. Reads through its own
    /// handle: appends go on meanwhile, and are read in turn. `None` when everything
    /// appended has been read.
    pub fn read_next(&mut self) -> Result<Option<ReadEvent>, SpoolError> {
        loop {
            let Some(release) = self.release else {
                return Ok(None);
            };
            let cursor = match self.cursor {
                Some(c)
                    if c.sequence >= self.watermark && self.segment_index(c.segment).is_some() =>
                {
                    c
                }
                _ => release,
            };
            self.cursor = Some(cursor);
            if cursor.sequence >= self.next_sequence {
                return Ok(None);
            }
            let i = self.segment_index(cursor.segment).expect("checked above");
            let bounds = self.bounds(i);
            let segment = &self.segments[i];
            let step = handle(&mut self.reader, segment)?
                .step(cursor, bounds, Mode::Read)
                .map_err(SpoolError::at(&segment.path, "reading"))?;
            let next = match step {
                Step::Record {
                    written_at,
                    payload,
                    next,
                } => {
                    self.cursor = Some(next);
                    return Ok(Some(ReadEvent::Record(Record {
                        sequence: cursor.sequence,
                        written_at: UNIX_EPOCH + Duration::from_nanos(written_at),
                        payload: payload.expect("Mode::Read returns the payload"),
                    })));
                }
                Step::Skip { next } => next,
                Step::Unreadable => Pos {
                    sequence: bounds.end_sequence,
                    offset: bounds.limit,
                    ..cursor
                },
                Step::End => match self.segments.get(i + 1) {
                    Some(n) => n.start(),
                    None => Pos {
                        sequence: bounds.end_sequence,
                        ..cursor
                    },
                },
            };
            self.cursor = Some(next);
            if next.sequence > cursor.sequence && next.sequence > self.reported_until {
                let from = cursor.sequence.max(self.reported_until);
                self.stats.corrupt_records += next.sequence - from;
                self.reported_until = next.sequence;
                return Ok(Some(ReadEvent::Corrupt(Corruption {
                    path: self.segments[i].path.clone(),
                    offset: cursor.offset,
                    sequences: cursor.sequence..next.sequence,
                    missing: next.offset == cursor.offset
                        || (next.segment != cursor.segment && cursor.offset >= bounds.limit),
                })));
            }
        }
    }

    /// Reading starts again at the watermark. Damage is not reported a second time. (The
    /// element never reads a record twice: what it takes back from the connection stays in
    /// memory; the tests read again.)
    #[cfg(test)]
    pub fn rewind(&mut self) {
        self.cursor = self.release;
    }

    /// Flushes to stable storage what was written since the last flush, if the policy is
    /// `Interval` and its time has come; returns whether it did.
    pub fn sync_if_due(&mut self, now: Instant) -> Result<bool, SpoolError> {
        let SyncPolicy::Interval(every) = self.options.sync else {
            return Ok(false);
        };
        let written = self.dirty.data || self.dirty.ledger || self.dirty.dir;
        if !written || now.saturating_duration_since(self.dirty.last_sync) < every {
            return Ok(false);
        }
        self.sync()?;
        self.dirty.last_sync = now;
        Ok(true)
    }

    /// Flushes to stable storage what was written and not flushed yet, whatever the
    /// policy (e.g. when the element stops): the segment being appended to, the ledger and
    /// the directory. (Under `Interval` and `Always` a segment is flushed when the next one
    /// is started; under `None` it is not.)
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.dirty.data {
            if let (Some(writer), Some(segment)) = (&self.writer, self.segments.back()) {
                writer
                    .file
                    .sync_data()
                    .map_err(SpoolError::at(&segment.path, "syncing"))?;
            }
            self.dirty.data = false;
        }
        if self.dirty.dir {
            sync_dir(&self.dir)?;
            self.dirty.dir = false;
        }
        if self.dirty.ledger {
            self.ledger.sync()?;
            self.dirty.ledger = false;
        }
        Ok(())
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            messages: self.next_sequence - self.watermark,
            bytes: self.held_bytes(),
            oldest_age: age(self.oldest_written_at, SystemTime::now()),
            files: self.segments.len(),
            disk_bytes: self.segments.iter().map(|s| s.len).sum(),
            ..self.stats.clone()
        }
    }
}
