// SPDX-License-Identifier: MPL-2.0

//! Finding records in a segment: the one place that decides what is a record, what is
//! damage and where the next record starts.
//!
//! Within a segment the sequences are consecutive (the writer gives each record the next
//! one), and the next segment's name is the sequence after the last. That lets a reader
//! tell a missing or damaged stretch from a sound one without trusting any single field:
//! after damage it looks, byte by byte, for the next position that holds a record with a
//! plausible sequence and a matching CRC (a damaged length field would otherwise lose the
//! rest of the segment).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;

use super::format::{RecordHeader, RECORD_HEADER_LEN};

/// Bytes read at once when scanning: many small records per read.
const READ_AHEAD: u64 = 64 * 1024;

/// A place in a segment: the record expected at `offset` has sequence `sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// The segment's first sequence (its name).
    pub segment: u64,
    pub sequence: u64,
    pub offset: u64,
}

/// What is known of a segment's extent.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The end of its valid bytes: nothing at or past it is read.
    pub limit: u64,
    /// The sequence after its last record (the next segment's first, or the spool's next
    /// sequence for the last one); `u64::MAX` while unknown (the scan at open).
    pub end_sequence: u64,
}

/// How much to trust and check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check the CRC and return the payload (reading for publishing).
    Read,
    /// Check the CRC, no payload (the scan at open).
    Check,
    /// Trust a header whose sequence is the expected one and whose length lands on the
    /// next record's header (or on the end); fall back to `Check` otherwise. For moving the
    /// watermark without reading every payload back.
    Walk,
}

#[derive(Debug)]
pub enum Step {
    /// The record at `pos` (its sequence is `pos.sequence`).
    Record {
        written_at: u64,
        payload: Option<Bytes>,
        next: Pos,
    },
    /// The records from `pos.sequence` up to `next.sequence` cannot be read: the bytes from
    /// `pos.offset` to `next.offset` fail their checks, or are missing (then both offsets
    /// are equal). A sound record is at `next`.
    Skip { next: Pos },
    /// No sound record between `pos` and the segment's limit.
    Unreadable,
    /// `pos` is at the segment's end: its limit, or its end sequence.
    End,
}

/// A read handle on one segment, with a buffer for sequential reading. Reads with `pread`,
/// so it has no file position of its own and never disturbs the writer.
#[derive(Debug)]
pub struct SegmentReader {
    pub segment: u64,
    file: File,
    buf: Vec<u8>,
    buf_start: u64,
}

impl SegmentReader {
    pub fn open(path: &Path, segment: u64) -> io::Result<Self> {
        Ok(SegmentReader {
            segment,
            file: File::open(path)?,
            buf: Vec::new(),
            buf_start: 0,
        })
    }

    /// The bytes `offset..offset + len`, which the caller has checked lie below `limit`.
    fn bytes(&mut self, offset: u64, len: u64, limit: u64) -> io::Result<&[u8]> {
        debug_assert!(offset + len <= limit);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if offset < self.buf_start || offset + len > buf_end {
            let want = len.max(READ_AHEAD).min(limit - offset) as usize;
            if want as u64 <= READ_AHEAD && self.buf.capacity() as u64 > 16 * READ_AHEAD {
                // Let go of the room a large record took.
                self.buf = Vec::new();
            }
            self.buf.clear();
            self.buf.resize(want, 0);
            if let Err(e) = self.file.read_exact_at(&mut self.buf, offset) {
                self.buf.clear();
                return Err(e);
            }
            self.buf_start = offset;
        }
        let at = (offset - self.buf_start) as usize;
        Ok(&self.buf[at..at + len as usize])
    }

    fn header(&mut self, offset: u64, limit: u64) -> io::Result<RecordHeader> {
        Ok(RecordHeader::decode(self.bytes(
            offset,
            RECORD_HEADER_LEN,
            limit,
        )?))
    }

    /// The payload of the record at `offset`, owned, read straight into its own buffer
    /// when it is larger than what the read-ahead buffer holds.
    fn payload(&mut self, offset: u64, header: &RecordHeader, limit: u64) -> io::Result<Bytes> {
        let start = offset + RECORD_HEADER_LEN;
        let len = u64::from(header.len);
        let buf_end = self.buf_start + self.buf.len() as u64;
        if len > READ_AHEAD && !(start >= self.buf_start && start + len <= buf_end) {
            let mut payload = vec![0u8; len as usize];
            self.file.read_exact_at(&mut payload, start)?;
            return Ok(Bytes::from(payload));
        }
        Ok(Bytes::copy_from_slice(self.bytes(start, len, limit)?))
    }

    /// Whether the record at `offset` with this header passes its CRC; `None` when its
    /// length runs past `limit`.
    fn check(
        &mut self,
        offset: u64,
        header: &RecordHeader,
        limit: u64,
        mode: Mode,
    ) -> io::Result<Option<Option<Bytes>>> {
        if header.record_len() > limit - offset {
            return Ok(None);
        }
        if mode == Mode::Read {
            let payload = self.payload(offset, header, limit)?;
            let ok = header.checksum(&payload) == header.crc;
            return Ok(ok.then_some(Some(payload)));
        }
        let payload = self.bytes(offset + RECORD_HEADER_LEN, u64::from(header.len), limit)?;
        Ok((header.checksum(payload) == header.crc).then_some(None))
    }

    /// The record at `pos`, or what stands in its place.
    pub fn step(&mut self, pos: Pos, bounds: Bounds, mode: Mode) -> io::Result<Step> {
        if pos.sequence >= bounds.end_sequence || pos.offset >= bounds.limit {
            return Ok(Step::End);
        }
        if bounds.limit - pos.offset >= RECORD_HEADER_LEN {
            let header = self.header(pos.offset, bounds.limit)?;
            if mode == Mode::Walk && header.sequence == pos.sequence {
                if let Some(next) = self.lands(pos, &header, bounds)? {
                    return Ok(Step::Record {
                        written_at: header.written_at,
                        payload: None,
                        next,
                    });
                }
            }
            let in_range = header.sequence >= pos.sequence && header.sequence < bounds.end_sequence;
            if in_range {
                let check_mode = if mode == Mode::Walk {
                    Mode::Check
                } else {
                    mode
                };
                if let Some(payload) = self.check(pos.offset, &header, bounds.limit, check_mode)? {
                    if header.sequence > pos.sequence {
                        // A sound record, but not the one expected: the ones before it are
                        // missing.
                        return Ok(Step::Skip {
                            next: Pos {
                                sequence: header.sequence,
                                ..pos
                            },
                        });
                    }
                    return Ok(Step::Record {
                        written_at: header.written_at,
                        payload,
                        next: Pos {
                            sequence: pos.sequence + 1,
                            offset: pos.offset + header.record_len(),
                            ..pos
                        },
                    });
                }
            }
        }
        Ok(match self.resync(pos, bounds)? {
            Some(next) => Step::Skip { next },
            None => Step::Unreadable,
        })
    }

    /// For `Mode::Walk`: the position after the record at `pos` if its length lands on the
    /// segment's limit or on the header of the next sequence.
    fn lands(
        &mut self,
        pos: Pos,
        header: &RecordHeader,
        bounds: Bounds,
    ) -> io::Result<Option<Pos>> {
        if header.record_len() > bounds.limit - pos.offset {
            return Ok(None);
        }
        let next = Pos {
            sequence: pos.sequence + 1,
            offset: pos.offset + header.record_len(),
            ..pos
        };
        if next.offset == bounds.limit {
            return Ok(Some(next));
        }
        if bounds.limit - next.offset < RECORD_HEADER_LEN {
            return Ok(None);
        }
        let following = self.header(next.offset, bounds.limit)?;
        Ok((following.sequence == next.sequence).then_some(next))
    }

    /// After damage at `pos`: the first position past it holding a sound record whose
    /// sequence is at least `pos.sequence` and below the segment's end.
    fn resync(&mut self, pos: Pos, bounds: Bounds) -> io::Result<Option<Pos>> {
        // Each record takes at least a header: a sequence beyond this cannot be in the rest
        // of the segment. Keeps random bytes from passing the sequence test when the end
        // sequence is not known.
        let most = pos.sequence + (bounds.limit - pos.offset) / RECORD_HEADER_LEN;
        let end_sequence = bounds.end_sequence.min(most + 1);
        let mut at = pos.offset + 1;
        while bounds.limit - at >= RECORD_HEADER_LEN {
            let header = self.header(at, bounds.limit)?;
            if header.sequence >= pos.sequence
                && header.sequence < end_sequence
                && self
                    .check(at, &header, bounds.limit, Mode::Check)?
                    .is_some()
            {
                return Ok(Some(Pos {
                    sequence: header.sequence,
                    offset: at,
                    ..pos
                }));
            }
            at += 1;
        }
        Ok(None)
    }
}
