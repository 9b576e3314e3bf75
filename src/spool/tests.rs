// SPDX-License-Identifier: MPL-2.0

//! The spool against real files in a temporary directory; the tests of a full disk and of
//! a read-only file system mount a small tmpfs (they need root, and fail saying so
//! without it).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use tempfile::TempDir;

use super::format::{RecordHeader, FORMAT_VERSION, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use super::*;

const REC: u64 = RECORD_HEADER_LEN;

fn options(segment_bytes: u64) -> SpoolOptions {
    SpoolOptions {
        segment_bytes,
        max_bytes: 1 << 30,
        sync: SyncPolicy::None,
        identity: "spool test".into(),
    }
}

/// A segment of exactly `n` records of `len` bytes.
fn fits(n: u64, len: usize) -> u64 {
    SEGMENT_HEADER_LEN + n * (REC + len as u64)
}

/// A payload that tells its sequence and length apart from any other.
fn payload(sequence: u64, len: usize) -> Vec<u8> {
    let tag = format!("<{sequence}:{len}>");
    tag.bytes().cycle().take(len).collect()
}

fn open(dir: &Path, options: SpoolOptions) -> (Spool, Opened) {
    Spool::open(dir, options).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

fn append_all(spool: &mut Spool, lens: &[usize]) -> Vec<u64> {
    lens.iter()
        .map(|&len| {
            let sequence = spool.next_sequence;
            assert_eq!(spool.append(&payload(sequence, len)).unwrap(), sequence);
            sequence
        })
        .collect()
}

/// Everything `read_next` gives until `None`.
fn read_all(spool: &mut Spool) -> (Vec<Record>, Vec<Corruption>) {
    let (mut records, mut damage) = (Vec::new(), Vec::new());
    while let Some(event) = spool.read_next().unwrap() {
        match event {
            ReadEvent::Record(r) => records.push(r),
            ReadEvent::Corrupt(c) => damage.push(c),
        }
    }
    (records, damage)
}

/// Checks that `records` are exactly `sequences`, each with the payload it was given.
fn assert_records(records: &[Record], sequences: &[u64], len_of: impl Fn(u64) -> usize) {
    let got: Vec<u64> = records.iter().map(|r| r.sequence).collect();
    assert_eq!(got, sequences);
    for r in records {
        assert_eq!(
            r.payload,
            payload(r.sequence, len_of(r.sequence)),
            "payload of {}",
            r.sequence
        );
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

/// Where record `sequence` is, found by walking the files' headers (before any damage).
fn locate(dir: &Path, sequence: u64) -> (PathBuf, u64) {
    for path in segment_files(dir) {
        let bytes = fs::read(&path).unwrap();
        let mut at = SEGMENT_HEADER_LEN as usize;
        while at + REC as usize <= bytes.len() {
            let h = RecordHeader::decode(&bytes[at..at + REC as usize]);
            if h.sequence == sequence {
                return (path, at as u64);
            }
            at += h.record_len() as usize;
        }
    }
    panic!("record {sequence} not found in {}", dir.display());
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    file.read_exact_at(&mut b, offset).unwrap();
    file.write_all_at(&[b[0] ^ mask], offset).unwrap();
}

fn shorten(path: &Path, by: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - by).unwrap();
}

fn held_bytes_of(lens: impl IntoIterator<Item = usize>) -> u64 {
    lens.into_iter().map(|l| REC + l as u64).sum()
}

#[test]
fn round_trip_across_segments_and_reopenings() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("spool");
    let len_of = |s: u64| 50 + (s as usize * 37) % 200;
    let lens: Vec<usize> = (0..30).map(len_of).collect();

    let (mut spool, opened) = open(&dir, options(1000));
    assert_eq!(
        (opened.messages, opened.next_sequence, opened.files),
        (0, 0, 0)
    );
    assert_eq!(opened.ledger, LedgerFound::Missing);
    let sequences = append_all(&mut spool, &lens);
    assert_eq!(sequences, (0..30).collect::<Vec<_>>());
    let files = segment_files(&dir);
    assert!(files.len() >= 5, "{} segments", files.len());
    for f in &files {
        assert!(fs::metadata(f).unwrap().len() <= 1000, "{}", f.display());
    }
    let stats = spool.stats();
    assert_eq!(stats.messages, 30);
    assert_eq!(stats.bytes, held_bytes_of(lens.iter().copied()));
    assert_eq!(stats.files, files.len());
    assert_eq!(
        stats.disk_bytes,
        files
            .iter()
            .map(|f| fs::metadata(f).unwrap().len())
            .sum::<u64>()
    );
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty());
    assert_records(&records, &sequences, len_of);
    spool.release(10).unwrap();
    drop(spool);

    let (mut spool, opened) = open(&dir, options(1000));
    assert_eq!(opened.messages, 20);
    assert_eq!(opened.next_sequence, 30);
    assert_eq!(opened.bytes, held_bytes_of(lens[10..].iter().copied()));
    assert_eq!(opened.ledger, LedgerFound::Watermark(10));
    assert!(opened.torn.is_empty());
    let (records, _) = read_all(&mut spool);
    assert_records(&records, &(10..30).collect::<Vec<_>>(), len_of);
    assert_eq!(spool.append(&payload(30, len_of(30))).unwrap(), 30);
    spool.release(31).unwrap();
    assert_eq!(spool.stats().messages, 0);
    drop(spool);

    // Everything released: the segments go at open, the ledger keeps the sequence.
    let (spool, opened) = open(&dir, options(1000));
    assert_eq!((opened.messages, opened.next_sequence), (0, 31));
    assert!(segment_files(&dir).is_empty());
    drop(spool);
    let (mut spool, opened) = open(&dir, options(1000));
    assert_eq!(
        (opened.messages, opened.next_sequence, opened.files),
        (0, 31, 0)
    );
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.append(b"again").unwrap(), 31);
    assert_eq!(segment_files(&dir), [dir.join("00000000000000000031.seg")]);
    drop(spool);
    let (mut spool, opened) = open(&dir, options(1000));
    assert_eq!((opened.messages, opened.next_sequence), (1, 32));
    match spool.read_next().unwrap() {
        Some(ReadEvent::Record(r)) => assert_eq!((r.sequence, &r.payload[..]), (31, &b"again"[..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_batch_takes_one_write_per_segment_and_stops_at_what_cannot_go() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("spool");
    let record = REC + 100;
    let (mut spool, _) = open(
        &dir,
        SpoolOptions {
            max_bytes: 12 * record,
            ..options(fits(4, 100))
        },
    );
    let payloads: Vec<Vec<u8>> = (0..10).map(|s| payload(s, 100)).collect();
    let appended = spool.append_batch(&payloads);
    assert_eq!(appended.count, 10);
    assert!(appended.error.is_none(), "{:?}", appended.error);
    assert_eq!(segment_files(&dir).len(), 3, "4 + 4 + 2 records");
    assert_eq!(spool.stats().writes, 3, "one write per segment");
    assert_eq!(spool.stats().bytes_written, 10 * record);
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty());
    assert_records(&records, &(0..10).collect::<Vec<_>>(), |_| 100);

    // Two more fit under max_bytes: the batch stops at the third, which takes no sequence.
    let more: Vec<Vec<u8>> = (10..14).map(|s| payload(s, 100)).collect();
    let appended = spool.append_batch(&more);
    assert_eq!(appended.count, 2);
    assert!(
        matches!(appended.error, Some(SpoolError::Full { .. })),
        "{:?}",
        appended.error
    );
    assert_eq!(spool.next_sequence(), 12);
    assert_eq!(
        spool.stats().writes,
        4,
        "the two in the last segment's room"
    );

    // A payload too large for the spool stops the batch where it is.
    spool.release(12).unwrap();
    let mixed = [payload(12, 100), vec![0u8; 13 * 124], payload(13, 100)];
    let appended = spool.append_batch(&mixed);
    assert_eq!(appended.count, 1);
    assert!(
        matches!(appended.error, Some(SpoolError::TooLarge { .. })),
        "{:?}",
        appended.error
    );
    drop(spool);

    let (mut spool, opened) = open(&dir, options(fits(4, 100)));
    assert!(opened.torn.is_empty());
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty());
    assert_records(&records, &[12], |_| 100);
}

#[test]
fn a_record_larger_than_a_segment_goes_in_whole() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(1000));
    let big = 3 * 1024 * 1024;
    let len_of = |s: u64| if s == 1 { big } else { 100 };
    append_all(&mut spool, &[100, big, 100]);
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 3);
    assert_eq!(
        fs::metadata(&files[1]).unwrap().len(),
        SEGMENT_HEADER_LEN + REC + big as u64
    );
    let (records, _) = read_all(&mut spool);
    assert_records(&records, &[0, 1, 2], len_of);
    drop(spool);
    let (mut spool, opened) = open(tmp.path(), options(1000));
    assert_eq!(opened.bytes, held_bytes_of([100, big, 100]));
    let (records, _) = read_all(&mut spool);
    assert_records(&records, &[0, 1, 2], len_of);
}

#[test]
fn a_torn_end_is_cut_at_open_and_reported() {
    // By 1 byte, by a header less one, by half a payload (short payloads), and down to
    // 10 bytes of the last record (a short header).
    for cut in [1, REC - 1, 50, REC + 100 - 10] {
        let tmp = TempDir::new().unwrap();
        let (mut spool, _) = open(tmp.path(), options(fits(4, 100)));
        append_all(&mut spool, &[100; 10]);
        drop(spool);
        let last = segment_files(tmp.path()).pop().unwrap();
        let before = fs::metadata(&last).unwrap().len();
        shorten(&last, cut);

        let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
        let torn = Torn {
            path: last.clone(),
            bytes: REC + 100 - cut,
        };
        assert_eq!(opened.torn, [torn], "cut {cut}");
        assert_eq!(spool.stats().torn_bytes, REC + 100 - cut);
        assert_eq!((opened.messages, opened.next_sequence), (9, 9), "cut {cut}");
        assert_eq!(fs::metadata(&last).unwrap().len(), before - REC - 100);
        let (records, damage) = read_all(&mut spool);
        assert!(damage.is_empty(), "cut {cut}: {damage:?}");
        assert_records(&records, &(0..9).collect::<Vec<_>>(), |_| 100);

        // Appends go on right after the last sound record.
        assert_eq!(spool.append(&payload(9, 100)).unwrap(), 9);
        drop(spool);
        let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
        assert!(opened.torn.is_empty());
        let (records, _) = read_all(&mut spool);
        assert_records(&records, &(0..10).collect::<Vec<_>>(), |_| 100);
    }
}

#[test]
fn a_segment_whose_header_was_cut_short_is_written_again() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(fits(4, 100)));
    append_all(&mut spool, &[100; 4]);
    drop(spool);
    // The process died while creating the next segment.
    let short = tmp.path().join("00000000000000000004.seg");
    fs::write(&short, &format::encode_segment_header(4)[..10]).unwrap();

    let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
    assert_eq!(
        opened.torn,
        [Torn {
            path: short.clone(),
            bytes: 10
        }]
    );
    assert_eq!((opened.messages, opened.next_sequence), (4, 4));
    assert_eq!(spool.append(&payload(4, 100)).unwrap(), 4);
    assert_eq!(
        fs::metadata(&short).unwrap().len(),
        SEGMENT_HEADER_LEN + REC + 100
    );
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty());
    assert_records(&records, &[0, 1, 2, 3, 4], |_| 100);
}

/// Twelve records of 100 bytes, four per segment: the damaged ones are picked in the
/// middle of the middle segment and of the last one (which the open scans).
fn twelve_records(dir: &Path) {
    let (mut spool, _) = open(dir, options(fits(4, 100)));
    append_all(&mut spool, &[100; 12]);
    assert_eq!(segment_files(dir).len(), 3);
}

#[test]
fn a_damaged_payload_is_skipped_counted_and_reported_once() {
    let tmp = TempDir::new().unwrap();
    twelve_records(tmp.path());
    let (seg5, at5) = locate(tmp.path(), 5);
    let (seg10, at10) = locate(tmp.path(), 10);
    flip(&seg5, at5 + REC + 40, 0x01);
    flip(&seg10, at10 + REC + 99, 0x80);

    let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
    assert!(opened.torn.is_empty(), "{:?}", opened.torn);
    assert_eq!((opened.messages, opened.next_sequence), (12, 12));
    let (records, damage) = read_all(&mut spool);
    let sound: Vec<u64> = (0..12).filter(|s| ![5, 10].contains(s)).collect();
    assert_records(&records, &sound, |_| 100);
    assert_eq!(
        damage,
        [
            Corruption {
                path: seg5,
                offset: at5,
                sequences: 5..6,
                missing: false
            },
            Corruption {
                path: seg10.clone(),
                offset: at10,
                sequences: 10..11,
                missing: false
            }
        ]
    );
    let text = damage[1].to_string();
    assert!(
        text.contains(&seg10.display().to_string()) && text.contains("damaged"),
        "{text}"
    );
    assert_eq!(spool.stats().corrupt_records, 2);

    // Read again from the watermark: the same records, the damage not reported again.
    spool.rewind();
    let (records, damage) = read_all(&mut spool);
    assert_records(&records, &sound, |_| 100);
    assert!(damage.is_empty());
    assert_eq!(spool.stats().corrupt_records, 2);

    // Releasing past the damage accounts exactly.
    spool.release(7).unwrap();
    assert_eq!(spool.stats().messages, 5);
    assert_eq!(spool.stats().bytes, 5 * (REC + 100));
    spool.release(12).unwrap();
    assert_eq!((spool.stats().messages, spool.stats().bytes), (0, 0));
}

#[test]
fn damaged_header_fields_are_skipped() {
    // (byte in the record header, mask): the length made larger, smaller and huge, the
    // CRC, the sequence (to a lower and to a higher one), the write time.
    let flips = [
        (0, 0x01),
        (0, 0x40),
        (3, 0x80),
        (4, 0xff),
        (8, 0x01),
        (8, 0x02),
        (16, 0x01),
    ];
    for (field, mask) in flips {
        for victim in [5u64, 10] {
            let what = format!("byte {field} ^ {mask:#x} of record {victim}");
            let tmp = TempDir::new().unwrap();
            twelve_records(tmp.path());
            let (path, at) = locate(tmp.path(), victim);
            flip(&path, at + field, mask);

            let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
            assert!(opened.torn.is_empty(), "{what}: {:?}", opened.torn);
            assert_eq!(opened.next_sequence, 12, "{what}");
            let (records, damage) = read_all(&mut spool);
            let sound: Vec<u64> = (0..12).filter(|&s| s != victim).collect();
            assert_records(&records, &sound, |_| 100);
            assert_eq!(damage.len(), 1, "{what}: {damage:?}");
            assert_eq!(damage[0].sequences, victim..victim + 1, "{what}");
            assert_eq!(
                (damage[0].path.clone(), damage[0].offset),
                (path, at),
                "{what}"
            );
            assert_eq!(spool.stats().corrupt_records, 1, "{what}");

            // The watermark walks the headers without reading payloads: it must find the
            // records after the damage all the same (not trust a damaged length), and
            // count their bytes exactly.
            spool.release(victim + 1).unwrap();
            let left = 12 - (victim + 1);
            assert_eq!(spool.stats().messages, left, "{what}");
            assert_eq!(spool.stats().bytes, left * (REC + 100), "{what}");
            spool.release(victim + 2).unwrap();
            let left = 12 - (victim + 2);
            assert_eq!(spool.stats().messages, left, "{what}");
            assert_eq!(spool.stats().bytes, left * (REC + 100), "{what}");
            spool.rewind();
            let (records, _) = read_all(&mut spool);
            assert_records(&records, &(victim + 2..12).collect::<Vec<_>>(), |_| 100);
        }
    }
}

#[test]
fn a_damaged_last_record_with_nothing_after_it_is_cut_at_open() {
    let tmp = TempDir::new().unwrap();
    twelve_records(tmp.path());
    let (path, at) = locate(tmp.path(), 11);
    flip(&path, at + REC + 10, 0x04);
    let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
    assert_eq!(
        opened.torn,
        [Torn {
            path,
            bytes: REC + 100
        }]
    );
    assert_eq!(opened.next_sequence, 11);
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty());
    assert_records(&records, &(0..11).collect::<Vec<_>>(), |_| 100);
}

#[test]
fn a_missing_segment_is_reported_as_missing_records() {
    let tmp = TempDir::new().unwrap();
    twelve_records(tmp.path());
    let middle = segment_files(tmp.path()).remove(1);
    fs::remove_file(&middle).unwrap();
    let (mut spool, opened) = open(tmp.path(), options(fits(4, 100)));
    assert_eq!(opened.messages, 12);
    let (records, damage) = read_all(&mut spool);
    assert_records(&records, &[0, 1, 2, 3, 8, 9, 10, 11], |_| 100);
    assert_eq!(damage.len(), 1);
    assert_eq!(damage[0].sequences, 4..8);
    assert!(damage[0].missing);
    assert_eq!(spool.stats().corrupt_records, 4);
}

/// Rewrites a header's version field, with a CRC that matches: a well-formed file of
/// another version, not damage.
fn set_version(path: &Path, at: u64, crc_over: usize, version: u32) {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut h = vec![0u8; crc_over + 4];
    file.read_exact_at(&mut h, at).unwrap();
    h[8..12].copy_from_slice(&version.to_le_bytes());
    let crc = crc32c::crc32c(&h[..crc_over]);
    h[crc_over..].copy_from_slice(&crc.to_le_bytes());
    file.write_all_at(&h, at).unwrap();
}

#[test]
fn another_format_version_is_refused_untouched() {
    let tmp = TempDir::new().unwrap();
    twelve_records(tmp.path());
    let files = segment_files(tmp.path());
    // A torn end too: a refused open must not cut it.
    shorten(&files[2], 1);
    let lens: Vec<u64> = files
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();
    set_version(&files[1], 0, 20, 2);

    match Spool::open(tmp.path(), options(fits(4, 100))) {
        Err(SpoolError::Version {
            path,
            found,
            supported,
        }) => {
            assert_eq!(
                (path, found, supported),
                (files[1].clone(), 2, FORMAT_VERSION)
            );
        }
        other => panic!("{other:?}"),
    }
    let text = Spool::open(tmp.path(), options(fits(4, 100)))
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(&files[1].display().to_string())
            && text.contains("version 2")
            && text.contains("version 1"),
        "{text}"
    );
    let after: Vec<u64> = files
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .collect();
    assert_eq!(after, lens);

    // Not a segment at all.
    set_version(&files[1], 0, 20, FORMAT_VERSION);
    flip(&files[0], 0, 0xff);
    match Spool::open(tmp.path(), options(fits(4, 100))) {
        Err(SpoolError::NotSpoolFile { path, reason }) => {
            assert_eq!(path, files[0]);
            assert!(reason.contains("magic"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    flip(&files[0], 0, 0xff);

    // A ledger of another version.
    let ledger = tmp.path().join("ledger");
    let (spool, _) = open(tmp.path(), options(fits(4, 100)));
    let slot = spool.ledger.latest_slot_offset();
    drop(spool);
    set_version(&ledger, slot, 28, 3);
    match Spool::open(tmp.path(), options(fits(4, 100))) {
        Err(SpoolError::Version { path, found, .. }) => assert_eq!((path, found), (ledger, 3)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_lock_names_its_holder_and_is_free_once_dropped() {
    let tmp = TempDir::new().unwrap();
    let first = SpoolOptions {
        identity: "mqttpublish0 in pipeline0".into(),
        ..options(1 << 20)
    };
    let (spool, _) = open(tmp.path(), first);
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    match Spool::open(tmp.path(), options(1 << 20)) {
        Err(e @ SpoolError::Locked { .. }) => {
            let SpoolError::Locked { path, holder } = &e else {
                unreachable!()
            };
            assert_eq!(path, &tmp.path().join("lock"));
            assert!(
                holder.contains(&format!("pid {}", std::process::id())),
                "{holder}"
            );
            assert!(holder.contains(host.trim()), "{holder}");
            assert!(holder.contains("mqttpublish0 in pipeline0"), "{holder}");
            assert!(holder.contains("since 2"), "{holder}");
            assert!(
                e.to_string().contains(&tmp.path().display().to_string()),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    drop(spool);
    let second = SpoolOptions {
        identity: "mqttpublish1".into(),
        ..options(1 << 20)
    };
    let (_spool, _) = open(tmp.path(), second);
    let text = fs::read_to_string(tmp.path().join("lock")).unwrap();
    assert!(
        text.contains("mqttpublish1") && !text.contains("pipeline0"),
        "{text}"
    );
}

const HOLD_DIR: &str = "SPOOL_TEST_HOLD_DIR";

/// Not a test: the child process of `a_lock_held_by_a_killed_process_is_free`.
#[test]
#[ignore = "run by a_lock_held_by_a_killed_process_is_free in a child process"]
fn hold_lock_in_child() {
    let Some(dir) = std::env::var_os(HOLD_DIR) else {
        return;
    };
    let holder = SpoolOptions {
        identity: "child holder".into(),
        ..options(1 << 20)
    };
    let (_spool, _) = open(Path::new(&dir), holder);
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn a_lock_held_by_a_killed_process_is_free() {
    let tmp = TempDir::new().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "spool::tests::hold_lock_in_child", "--ignored"])
        .env(HOLD_DIR, tmp.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = tmp.path().join("lock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&lock).is_ok_and(|t| t.contains("child holder")) {
        assert!(Instant::now() < deadline, "the child never took the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    match Spool::open(tmp.path(), options(1 << 20)) {
        Err(SpoolError::Locked { holder, .. }) => {
            assert!(holder.contains(&format!("pid {}", child.id())), "{holder}");
        }
        other => panic!("{other:?}"),
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (_spool, _) = open(tmp.path(), options(1 << 20));
    let text = fs::read_to_string(&lock).unwrap();
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(!text.contains("child holder"), "{text}");
}

#[test]
fn max_bytes_and_drop_oldest_count_exactly() {
    let tmp = TempDir::new().unwrap();
    let record = REC + 100;
    let limited = SpoolOptions {
        max_bytes: 3 * record,
        ..options(fits(2, 100))
    };
    let (mut spool, _) = open(tmp.path(), limited);
    append_all(&mut spool, &[100; 3]);
    match spool.append(&payload(3, 100)) {
        Err(SpoolError::Full {
            held,
            needed,
            max_bytes,
            ..
        }) => assert_eq!((held, needed, max_bytes), (3 * record, record, 3 * record)),
        other => panic!("{other:?}"),
    }
    assert_eq!(spool.next_sequence, 3, "a refused append takes no sequence");
    match spool.read_next().unwrap() {
        Some(ReadEvent::Record(r)) => assert_eq!(r.sequence, 0),
        other => panic!("{other:?}"),
    }

    assert_eq!(
        spool.drop_oldest(100).unwrap(),
        Dropped {
            messages: 1,
            bytes: record
        }
    );
    // Record 0 went; its segment (records 0 and 1) stays until record 1 goes too.
    assert_eq!(segment_files(tmp.path()).len(), 2);
    assert_eq!(spool.append(&payload(3, 100)).unwrap(), 3);
    assert!(matches!(
        spool.append(&payload(4, 100)),
        Err(SpoolError::Full { .. })
    ));

    // Room for 250 bytes (274 with the header) under 372: all three go.
    assert_eq!(
        spool.drop_oldest(250).unwrap(),
        Dropped {
            messages: 3,
            bytes: 3 * record
        }
    );
    let stats = spool.stats();
    assert_eq!(
        stats.dropped_full,
        Dropped {
            messages: 4,
            bytes: 4 * record
        }
    );
    assert_eq!((stats.messages, stats.bytes), (0, 0));
    assert_eq!(stats.dropped_age, Dropped::default());
    // The reader goes on after what was dropped.
    assert_eq!(spool.read_next().unwrap(), None);
    assert_eq!(spool.append(&payload(4, 250)).unwrap(), 4);
    assert_records(&read_all(&mut spool).0, &[4], |_| 250);

    match spool.append(&[0u8; 400]) {
        Err(e @ SpoolError::TooLarge { .. }) => {
            assert!(
                e.to_string().contains(&tmp.path().display().to_string()),
                "{e}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn drop_older_than_counts_exactly() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(fits(2, 100)));
    let now = SystemTime::now();
    for (sequence, ago) in [10u64, 9, 8, 7, 6].into_iter().enumerate() {
        let at = now - Duration::from_secs(ago);
        spool.append_at(&payload(sequence as u64, 100), at).unwrap();
    }
    let oldest = spool.stats().oldest_age.unwrap();
    assert!(
        oldest >= Duration::from_secs(10) && oldest < Duration::from_secs(11),
        "{oldest:?}"
    );

    let dropped = spool
        .drop_older_than_at(Duration::from_millis(7500), now)
        .unwrap();
    assert_eq!(
        dropped,
        Dropped {
            messages: 3,
            bytes: 3 * (REC + 100)
        }
    );
    let stats = spool.stats();
    assert_eq!(stats.dropped_age, dropped);
    assert_eq!(stats.dropped_full, Dropped::default());
    assert_eq!(stats.messages, 2);
    let oldest = stats.oldest_age.unwrap();
    assert!(
        oldest >= Duration::from_secs(7) && oldest < Duration::from_secs(8),
        "{oldest:?}"
    );
    assert_eq!(
        spool
            .drop_older_than_at(Duration::from_secs(8), now)
            .unwrap(),
        Dropped::default()
    );
    assert_records(&read_all(&mut spool).0, &[3, 4], |_| 100);
    // Record 2 went, record 3 did not: their segment stays.
    assert_eq!(segment_files(tmp.path()).len(), 2);

    let (_, opened) = {
        drop(spool);
        open(tmp.path(), options(fits(2, 100)))
    };
    assert_eq!(opened.messages, 2);
    let oldest = opened.oldest_age.unwrap();
    assert!(
        oldest >= Duration::from_secs(7) && oldest < Duration::from_secs(8),
        "{oldest:?}"
    );
}

#[test]
fn segments_are_deleted_only_when_wholly_released() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(fits(3, 100)));
    append_all(&mut spool, &[100; 9]);
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 3);
    spool.release(2).unwrap();
    assert_eq!(segment_files(tmp.path()), files);
    assert_eq!(spool.stats().disk_bytes, 3 * fits(3, 100));
    spool.release(3).unwrap();
    assert_eq!(segment_files(tmp.path()), files[1..]);
    spool.release(8).unwrap();
    assert_eq!(segment_files(tmp.path()), files[2..]);
    // The segment appended to stays, released or not.
    spool.release(9).unwrap();
    assert_eq!(segment_files(tmp.path()), files[2..]);
    assert_eq!(spool.stats().messages, 0);
    assert_eq!(spool.append(&payload(9, 100)).unwrap(), 9);
    assert_eq!(segment_files(tmp.path()).len(), 2);
}

#[test]
fn reading_goes_on_while_appending_and_rewinds_to_the_watermark() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(fits(2, 100)));
    let next = |spool: &mut Spool| match spool.read_next().unwrap() {
        Some(ReadEvent::Record(r)) => Some(r.sequence),
        None => None,
        other => panic!("{other:?}"),
    };
    append_all(&mut spool, &[100; 3]);
    assert_eq!((next(&mut spool), next(&mut spool)), (Some(0), Some(1)));
    append_all(&mut spool, &[100; 2]);
    let rest: Vec<_> = std::iter::from_fn(|| next(&mut spool)).collect();
    assert_eq!(rest, [2, 3, 4]);
    spool.release(2).unwrap();
    spool.rewind();
    let again: Vec<_> = std::iter::from_fn(|| next(&mut spool)).collect();
    assert_eq!(again, [2, 3, 4]);
    // Released records are not read, even by a reader that was behind.
    spool.rewind();
    assert_eq!(next(&mut spool), Some(2));
    spool.release(4).unwrap();
    assert_eq!(next(&mut spool), Some(4));
    assert_eq!(next(&mut spool), None);
    append_all(&mut spool, &[100]);
    assert_eq!(next(&mut spool), Some(5));
}

#[test]
fn release_is_monotonic_and_stops_at_the_next_sequence() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(fits(3, 100)));
    append_all(&mut spool, &[100; 10]);
    spool.release(5).unwrap();
    spool.release(3).unwrap();
    assert_eq!(spool.stats().messages, 5);
    spool.release(100).unwrap();
    assert_eq!(spool.stats().messages, 0);
    assert_eq!(spool.append(b"x").unwrap(), 10);
    drop(spool);
    let (_, opened) = open(tmp.path(), options(fits(3, 100)));
    assert_eq!((opened.messages, opened.next_sequence), (1, 11));
}

#[test]
fn the_ledger_survives_a_damaged_slot() {
    let tmp = TempDir::new().unwrap();
    let (mut spool, _) = open(tmp.path(), options(1 << 20));
    append_all(&mut spool, &[100; 10]);
    spool.release(3).unwrap();
    spool.release(5).unwrap();
    let latest = spool.ledger.latest_slot_offset();
    drop(spool);
    let ledger = tmp.path().join("ledger");

    // The latest slot torn (a power loss in the middle of its write): the one before it
    // holds the previous watermark. Messages published again, none lost.
    flip(&ledger, latest + 20, 0x01);
    let (spool, opened) = open(tmp.path(), options(1 << 20));
    assert_eq!(opened.ledger, LedgerFound::Watermark(3));
    assert_eq!(opened.messages, 7);
    drop(spool);

    // Both slots damaged: everything held is published again.
    let file = OpenOptions::new().write(true).open(&ledger).unwrap();
    file.write_all_at(&[0xAA; 32], 0).unwrap();
    file.write_all_at(&[0xAA; 32], 4096).unwrap();
    let (_, opened) = open(tmp.path(), options(1 << 20));
    assert_eq!(opened.ledger, LedgerFound::Damaged);
    assert_eq!(opened.messages, 10);
}

#[test]
fn interval_sync_runs_when_due_and_something_was_written() {
    let tmp = TempDir::new().unwrap();
    let interval = SpoolOptions {
        sync: SyncPolicy::Interval(Duration::from_millis(500)),
        ..options(1 << 20)
    };
    let (mut spool, _) = open(tmp.path(), interval);
    let t0 = Instant::now();
    assert!(
        spool.sync_if_due(t0 + Duration::from_secs(1)).unwrap(),
        "open wrote the ledger"
    );
    let t = t0 + Duration::from_secs(1);
    assert!(
        !spool.sync_if_due(t + Duration::from_secs(1)).unwrap(),
        "nothing written"
    );
    spool.append(b"one").unwrap();
    assert!(
        !spool.sync_if_due(t + Duration::from_millis(400)).unwrap(),
        "not due"
    );
    assert!(spool.sync_if_due(t + Duration::from_millis(500)).unwrap());
    assert!(
        !spool.sync_if_due(t + Duration::from_millis(1500)).unwrap(),
        "nothing new"
    );
    spool.release(1).unwrap();
    assert!(
        spool.sync_if_due(t + Duration::from_millis(1500)).unwrap(),
        "the ledger"
    );

    let (mut always, _) = open(
        &tmp.path().join("always"),
        SpoolOptions {
            sync: SyncPolicy::Always,
            ..options(1 << 20)
        },
    );
    always.append(b"one").unwrap();
    assert!(!always.dirty.data && !always.dirty.dir && !always.dirty.ledger);
    assert!(!always
        .sync_if_due(Instant::now() + Duration::from_secs(9))
        .unwrap());
}

#[test]
fn a_deleted_directory_is_reported_and_appends_resume_once_it_is_back() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("spool");
    let (mut spool, _) = open(&dir, options(1 << 20));
    append_all(&mut spool, &[100; 3]);
    fs::remove_dir_all(&dir).unwrap();

    match spool.append(b"lost?") {
        Err(e @ SpoolError::Io { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&dir.join("00000000000000000000.seg").display().to_string())
                    && text.contains("appending to")
                    && text.contains("removed")
                    && text.contains("3 unreleased"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((spool.stats().lost, spool.stats().messages), (3, 0));
    match spool.append(b"lost?") {
        Err(SpoolError::Io { path, source, .. }) => {
            assert!(path.starts_with(&dir), "{}", path.display());
            assert_eq!(source.kind(), io::ErrorKind::NotFound);
        }
        other => panic!("{other:?}"),
    }
    fs::create_dir(&dir).unwrap();
    assert_eq!(spool.append(b"kept").unwrap(), 3);
    assert!(matches!(
        Spool::open(&dir, options(1 << 20)),
        Err(SpoolError::Locked { .. })
    ));
    drop(spool);
    let (mut spool, opened) = open(&dir, options(1 << 20));
    assert_eq!((opened.messages, opened.next_sequence), (1, 4));
    match spool.read_next().unwrap() {
        Some(ReadEvent::Record(r)) => assert_eq!((r.sequence, &r.payload[..]), (3, &b"kept"[..])),
        other => panic!("{other:?}"),
    }
}

/// A tmpfs of `size` mounted on a temporary directory, unmounted on drop.
struct Tmpfs {
    mount: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let uid = fs::metadata("/proc/self").unwrap().uid();
        assert_eq!(
            uid, 0,
            "this test mounts a tmpfs and needs root (CI runs as root); it cannot run as uid {uid}"
        );
        let dir = TempDir::new().unwrap();
        let mount = dir.path().join("mnt");
        fs::create_dir(&mount).unwrap();
        let opts = format!("size={size}");
        run_mount(&["-t", "tmpfs", "-o", &opts, "tmpfs"], &mount);
        Tmpfs { mount, _dir: dir }
    }

    fn remount(&self, how: &str) {
        run_mount(&["-o", &format!("remount,{how}")], &self.mount);
    }
}

fn run_mount(args: &[&str], on: &Path) {
    let out = Command::new("mount").args(args).arg(on).output().unwrap();
    assert!(
        out.status.success(),
        "mount {args:?} {} failed (this test needs root and a kernel that lets it mount \
         tmpfs): {}",
        on.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

#[test]
fn a_full_disk_fails_the_append_and_the_spool_goes_on_once_there_is_room() {
    let tmpfs = Tmpfs::mount("64k");
    let dir = tmpfs.mount.join("spool");
    let opts = || options(fits(4, 1000));
    let (mut spool, _) = open(&dir, opts());
    let mut appended = 0u64;
    let err = loop {
        match spool.append(&payload(appended, 1000)) {
            Ok(sequence) => {
                assert_eq!(sequence, appended);
                appended += 1;
                assert!(appended < 100, "64 KiB never filled up");
            }
            Err(e) => break e,
        }
    };
    let text = err.to_string();
    match &err {
        SpoolError::Io { path, source, .. } => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{text}");
            assert!(path.starts_with(&dir), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        other => panic!("{other:?}"),
    }
    assert!(appended >= 8, "only {appended} appends fitted");
    // Still full: still refused, nothing half-written.
    assert!(spool.append(&payload(appended, 1000)).is_err());
    assert_eq!(spool.next_sequence, appended);

    // Deliveries free whole segments: appends work again.
    spool.release(8).unwrap();
    assert_eq!(spool.append(&payload(appended, 1000)).unwrap(), appended);
    drop(spool);

    let (mut spool, opened) = open(&dir, opts());
    assert!(opened.torn.is_empty(), "{:?}", opened.torn);
    assert_eq!(opened.messages, appended + 1 - 8);
    // Not a byte more than the records: the failed writes left nothing behind.
    let files = segment_files(&dir);
    let on_disk: u64 = files.iter().map(|f| fs::metadata(f).unwrap().len()).sum();
    assert_eq!(
        on_disk,
        files.len() as u64 * SEGMENT_HEADER_LEN + opened.messages * (REC + 1000)
    );
    let (records, damage) = read_all(&mut spool);
    assert!(damage.is_empty(), "{damage:?}");
    assert_records(&records, &(8..=appended).collect::<Vec<_>>(), |_| 1000);
}

#[test]
fn a_read_only_file_system_is_named_in_the_error() {
    let tmpfs = Tmpfs::mount("1m");
    let dir = tmpfs.mount.join("spool");
    let (mut spool, _) = open(&dir, options(1 << 20));
    append_all(&mut spool, &[100; 3]);
    drop(spool);
    tmpfs.remount("ro");
    match Spool::open(&dir, options(1 << 20)) {
        Err(e @ SpoolError::Io { .. }) => {
            let SpoolError::Io { path, source, .. } = &e else {
                unreachable!()
            };
            assert_eq!(source.raw_os_error(), Some(libc::EROFS), "{e}");
            assert!(path.starts_with(&dir), "{e}");
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    // A new spool directory on it.
    assert!(matches!(
        Spool::open(tmpfs.mount.join("other"), options(1 << 20)),
        Err(SpoolError::Io { ref source, .. }) if source.raw_os_error() == Some(libc::EROFS)
    ));
    tmpfs.remount("rw");
    let (mut spool, opened) = open(&dir, options(1 << 20));
    assert_eq!(opened.messages, 3);
    assert_records(&read_all(&mut spool).0, &[0, 1, 2], |_| 100);
}
