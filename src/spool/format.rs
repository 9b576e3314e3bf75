// SPDX-License-Identifier: MPL-2.0

//! The bytes on disk: the segment header, the record header and the ledger slot. All
//! integers are little-endian whatever the host, so that a spool can be moved between
//! machines. Every checksum is CRC32C (the `crc32c` crate, hardware accelerated).

use std::path::Path;

/// The format version written into every segment header and ledger slot. A file with
/// another version is refused, never read.
pub const FORMAT_VERSION: u32 = 1;

/// Segment header: magic (8), format version (u32), first sequence (u64), CRC32C of the
/// 20 bytes before it (u32).
pub const SEGMENT_HEADER_LEN: u64 = 24;
const SEGMENT_MAGIC: [u8; 8] = *b"GSTMQSEG";

/// Record header: payload length (u32), CRC32C (u32) of the length, the rest of the header
/// and the payload, sequence (u64), write time (u64, UNIX nanoseconds).
pub const RECORD_HEADER_LEN: u64 = 24;

/// Ledger slot: magic (8), format version (u32), generation (u64), watermark (u64),
/// CRC32C of the 28 bytes before it (u32).
pub const LEDGER_SLOT_LEN: usize = 32;
const LEDGER_MAGIC: [u8; 8] = *b"GSTMQLDG";

/// The largest payload a record can hold: its length is a u32.
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;

/// `DIR/<first sequence, 20 digits>.seg`: the names sort in sequence order.
pub fn segment_file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.seg")
}

/// The first sequence a segment file name stands for, if it is one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

pub fn encode_segment_header(first_sequence: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub enum SegmentHeaderError {
    /// Not a spool segment at all.
    Magic,
    /// A spool segment of another format version (checked before the CRC: a future format
    /// may lay the rest of its header out differently).
    Version(u32),
    /// Our magic and version, but the header's CRC does not match.
    Checksum,
    /// A sound header whose first sequence is not the one in the file name.
    Name { in_header: u64 },
}

impl SegmentHeaderError {
    /// The reason, for an error message about `path`.
    pub fn reason(&self, path: &Path, named: u64) -> String {
        match self {
            SegmentHeaderError::Magic => "it does not start with the spool segment magic".into(),
            SegmentHeaderError::Version(v) => format!("format version {v}"),
            SegmentHeaderError::Checksum => "its header fails its checksum".into(),
            SegmentHeaderError::Name { in_header } => format!(
                "its header says it starts at sequence {in_header} but it is named {} \
                 (renamed?)",
                path.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| named.to_string())
            ),
        }
    }
}

pub fn decode_segment_header(
    h: &[u8; SEGMENT_HEADER_LEN as usize],
    named: u64,
) -> Result<(), SegmentHeaderError> {
    if h[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Magic);
    }
    let version = u32_at(h, 8);
    if version != FORMAT_VERSION {
        return Err(SegmentHeaderError::Version(version));
    }
    if crc32c::crc32c(&h[0..20]) != u32_at(h, 20) {
        return Err(SegmentHeaderError::Checksum);
    }
    let in_header = u64_at(h, 12);
    if in_header != named {
        return Err(SegmentHeaderError::Name { in_header });
    }
    Ok(())
}

/// A record's header as read, not yet checked.
#[derive(Debug, Clone, Copy)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub sequence: u64,
    pub written_at: u64,
}

impl RecordHeader {
    pub fn decode(h: &[u8]) -> Self {
        RecordHeader {
            len: u32_at(h, 0),
            crc: u32_at(h, 4),
            sequence: u64_at(h, 8),
            written_at: u64_at(h, 16),
        }
    }

    /// The record's bytes on disk, header included.
    pub fn record_len(&self) -> u64 {
        RECORD_HEADER_LEN + u64::from(self.len)
    }

    /// The CRC this header and `payload` should carry.
    pub fn checksum(&self, payload: &[u8]) -> u32 {
        let mut rest = [0u8; 16];
        rest[0..8].copy_from_slice(&self.sequence.to_le_bytes());
        rest[8..16].copy_from_slice(&self.written_at.to_le_bytes());
        let crc = crc32c::crc32c(&self.len.to_le_bytes());
        let crc = crc32c::crc32c_append(crc, &rest);
        crc32c::crc32c_append(crc, payload)
    }

    /// The header of a new record holding `payload`, its CRC computed.
    pub fn encode(
        sequence: u64,
        written_at: u64,
        payload: &[u8],
    ) -> [u8; RECORD_HEADER_LEN as usize] {
        let len = u32::try_from(payload.len()).expect("payload length checked against MAX_PAYLOAD");
        let mut header = RecordHeader {
            len,
            crc: 0,
            sequence,
            written_at,
        };
        header.crc = header.checksum(payload);
        let mut h = [0u8; RECORD_HEADER_LEN as usize];
        h[0..4].copy_from_slice(&header.len.to_le_bytes());
        h[4..8].copy_from_slice(&header.crc.to_le_bytes());
        h[8..16].copy_from_slice(&header.sequence.to_le_bytes());
        h[16..24].copy_from_slice(&header.written_at.to_le_bytes());
        h
    }
}

/// One ledger slot's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSlot {
    pub generation: u64,
    pub watermark: u64,
}

/// What a ledger slot holds.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotContent {
    Valid(LedgerSlot),
    /// Another format version (with a matching CRC: a damaged version field reads as
    /// `Damaged`, since a slot is rewritten often and either slot may be torn).
    Version(u32),
    /// Zeros (never written) or bytes that fail their checks.
    Damaged,
}

impl LedgerSlot {
    pub fn encode(&self) -> [u8; LEDGER_SLOT_LEN] {
        let mut s = [0u8; LEDGER_SLOT_LEN];
        s[0..8].copy_from_slice(&LEDGER_MAGIC);
        s[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        s[12..20].copy_from_slice(&self.generation.to_le_bytes());
        s[20..28].copy_from_slice(&self.watermark.to_le_bytes());
        let crc = crc32c::crc32c(&s[0..28]);
        s[28..32].copy_from_slice(&crc.to_le_bytes());
        s
    }

    pub fn decode(s: &[u8]) -> SlotContent {
        if s.len() < LEDGER_SLOT_LEN
            || s[0..8] != LEDGER_MAGIC
            || crc32c::crc32c(&s[0..28]) != u32_at(s, 28)
        {
            return SlotContent::Damaged;
        }
        let version = u32_at(s, 8);
        if version != FORMAT_VERSION {
            return SlotContent::Version(version);
        }
        SlotContent::Valid(LedgerSlot {
            generation: u64_at(s, 12),
            watermark: u64_at(s, 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
        assert!(segment_file_name(9) < segment_file_name(10));
    }

    #[test]
    fn record_checksum_covers_every_header_field_and_the_payload() {
        let h = RecordHeader::encode(7, 1_000, b"payload");
        let good = RecordHeader::decode(&h);
        assert_eq!(good.checksum(b"payload"), good.crc);
        for field in [0usize, 8, 16] {
            let mut bad = h;
            bad[field] ^= 1;
            let bad = RecordHeader::decode(&bad);
            assert_ne!(bad.checksum(b"payload"), bad.crc, "field at {field}");
        }
        assert_ne!(good.checksum(b"paylaod"), good.crc);
    }

    #[test]
    fn a_known_crc32c_value() {
        // The standard CRC-32C check value: the format's checksum stays CRC-32C if the
        // crate is ever swapped for another one.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn segment_header_checks() {
        let h = encode_segment_header(5);
        assert_eq!(decode_segment_header(&h, 5), Ok(()));
        assert_eq!(
            decode_segment_header(&h, 6),
            Err(SegmentHeaderError::Name { in_header: 5 })
        );
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(
            decode_segment_header(&bad, 5),
            Err(SegmentHeaderError::Magic)
        );
        let mut bad = h;
        bad[15] ^= 0x40;
        assert_eq!(
            decode_segment_header(&bad, 5),
            Err(SegmentHeaderError::Checksum)
        );
        let mut other = h;
        other[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            decode_segment_header(&other, 5),
            Err(SegmentHeaderError::Version(2))
        );
    }

    #[test]
    fn ledger_slot_checks() {
        let slot = LedgerSlot {
            generation: 3,
            watermark: 99,
        };
        let s = slot.encode();
        assert_eq!(LedgerSlot::decode(&s), SlotContent::Valid(slot));
        assert_eq!(
            LedgerSlot::decode(&[0u8; LEDGER_SLOT_LEN]),
            SlotContent::Damaged
        );
        for i in 0..LEDGER_SLOT_LEN {
            let mut bad = s;
            bad[i] ^= 0x10;
            assert_eq!(LedgerSlot::decode(&bad), SlotContent::Damaged, "byte {i}");
        }
    }
}
