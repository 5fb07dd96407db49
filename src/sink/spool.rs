//! The durable spool of the remote sinks: every sealed batch is a file on disk until the
//! collector has acknowledged it.
//!
//! A batch is one segment file, `<seq>-<created ms>.seg` (`seq` 16 hex digits, increasing), in
//! the spool directory. Writing one: the header line and the body go to `<name>.tmp`, which is
//! `fsync`ed, renamed to its final name, and the directory `fsync`ed — so a crash at any moment
//! leaves either no segment or a whole one, never a torn one, and a segment that exists has
//! been on disk since [`Spool::push`] returned. Leftover `.tmp` files (a crash mid-write) are
//! deleted at start. A segment is deleted after a success answer (the deletion is not
//! `fsync`ed: after a crash at that moment the batch is sent again — delivery is
//! at-least-once, and every batch carries an id for the collector to deduplicate).
//!
//! The header is one JSON line: format version, batch id, table (or none for mixed batches),
//! record count, body length, CRC-32 and the body's encoding (`encoding`: the sink's wire
//! form; segments written before the header named it hold `records`). A segment whose header or checksum does not verify
//! (a disk that lied) is moved to `corrupt/`, counted, and skipped; the spool stays readable.
//!
//! Bounds: at most `max_bytes` of segments (the oldest are dropped first when a new batch
//! would pass it) and nothing older than `max_age`; every drop is counted.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::encoding::Encoding;
use crate::metrics::DropReason;

const FORMAT_VERSION: u32 = 1;
/// Rejected batches kept for a person to look at; the oldest go first.
const REJECTED_KEPT: usize = 100;

/// A batch of records, as sent: lines in the sink's encoding (each ending in `\n`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Unique id (UUID v4), the same on every attempt: collectors deduplicate on it.
    pub id: String,
    /// The table of every record, or `None` for a batch of mixed tables.
    pub table: Option<String>,
    pub records: usize,
    pub created: SystemTime,
    pub encoding: Encoding,
    pub body: Vec<u8>,
}

/// Why a segment could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Its header or checksum does not verify: the disk lied (quarantine it).
    #[error("corrupt segment: {0}")]
    Corrupt(String),
    /// Gone (dropped to make room since it was listed) or the disk failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Serialize, Deserialize)]
struct Header {
    v: u32,
    id: String,
    table: Option<String>,
    records: usize,
    len: usize,
    crc32: u32,
    /// [`Encoding::name`]; absent in segments of earlier versions, which hold `records`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    encoding: Option<String>,
}

/// A segment on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub created: SystemTime,
    pub bytes: u64,
}

/// Counters of the spool's work.
#[derive(Debug, Default, Clone, Copy)]
pub struct SpoolStats {
    pub spooled: u64,
    pub dropped_full: u64,
    pub dropped_old: u64,
    pub corrupt: u64,
    pub dropped_records: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    next_seq: u64,
    segments: VecDeque<Segment>,
    bytes: u64,
    pub stats: SpoolStats,
}

impl Spool {
    /// Opens (creating) the spool in `dir`: deletes torn `.tmp` files and lists the segments.
    pub fn open(dir: PathBuf, max_bytes: u64, max_age: Duration) -> io::Result<Spool> {
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        let mut segments = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some((seq, created)) = parse_name(name) else {
                continue;
            };
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            segments.push(Segment {
                seq,
                created,
                bytes,
            });
        }
        segments.sort_by_key(|s| s.seq);
        let next_seq = segments.last().map_or(1, |s| s.seq + 1);
        let bytes = segments.iter().map(|s| s.bytes).sum();
        Ok(Spool {
            dir,
            max_bytes,
            max_age,
            next_seq,
            segments: segments.into(),
            bytes,
            stats: SpoolStats::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Segments waiting, and their total size.
    pub fn len(&self) -> usize {
        self.segments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes a batch durably (see the module comment); returns the reasons of any batches
    /// dropped to make room, with their record counts.
    pub fn push(&mut self, batch: &Batch) -> io::Result<Vec<(DropReason, usize)>> {
        let seq = self.next_seq;
        let created_ms = batch
            .created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let name = format!("{seq:016x}-{created_ms}.seg");
        let header = Header {
            v: FORMAT_VERSION,
            id: batch.id.clone(),
            table: batch.table.clone(),
            records: batch.records,
            len: batch.body.len(),
            crc32: crc32fast::hash(&batch.body),
            encoding: Some(batch.encoding.name().to_string()),
        };
        let mut data = serde_json::to_vec(&header).map_err(io::Error::other)?;
        data.push(b'\n');
        data.extend_from_slice(&batch.body);
        let size = data.len() as u64;
        let mut dropped = Vec::new();
        if size > self.max_bytes {
            // Larger than the whole spool: it cannot be kept without passing the bound.
            self.stats.dropped_full += 1;
            self.stats.dropped_records += batch.records as u64;
            dropped.push((DropReason::Full, batch.records));
            return Ok(dropped);
        }
        // Room first: a spool at its bound drops its oldest batches.
        while self.bytes + size > self.max_bytes {
            let Some(old) = self.segments.front().copied() else {
                break;
            };
            dropped.push((DropReason::Full, self.drop_segment(old, DropReason::Full)));
        }
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        let written = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.next_seq += 1;
        self.segments.push_back(Segment {
            seq,
            created: batch.created,
            bytes: size,
        });
        self.bytes += size;
        self.stats.spooled += 1;
        Ok(dropped)
    }

    /// The oldest segment waiting.
    pub fn oldest(&self) -> Option<Segment> {
        self.segments.front().copied()
    }

    /// Drops segments older than `max_age` at `now`; returns how many records went with them.
    pub fn expire(&mut self, now: SystemTime) -> Vec<(DropReason, usize)> {
        let mut dropped = Vec::new();
        while let Some(old) = self.segments.front().copied() {
            let age = now.duration_since(old.created).unwrap_or_default();
            if age <= self.max_age {
                break;
            }
            dropped.push((
                DropReason::TooOld,
                self.drop_segment(old, DropReason::TooOld),
            ));
        }
        dropped
    }

    /// Reads a segment back.
    pub fn read(&self, seg: Segment) -> Result<Batch, ReadError> {
        let data = fs::read(self.path_of(seg))?;
        let bad = |why: &str| ReadError::Corrupt(why.to_string());
        let nl = data
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| bad("no header line"))?;
        let header: Header =
            serde_json::from_slice(&data[..nl]).map_err(|e| bad(&format!("header: {e}")))?;
        let body = &data[nl + 1..];
        if header.v != FORMAT_VERSION {
            return Err(bad(&format!("format version {}", header.v)));
        }
        if body.len() != header.len || crc32fast::hash(body) != header.crc32 {
            return Err(bad("body length or checksum mismatch"));
        }
        let encoding = match header.encoding.as_deref() {
            None => Encoding::Records,
            Some(name) => Encoding::from_name(name)
                .ok_or_else(|| bad(&format!("unknown encoding {name:?}")))?,
        };
        Ok(Batch {
            id: header.id,
            table: header.table,
            records: header.records,
            created: seg.created,
            encoding,
            body: body.to_vec(),
        })
    }

    /// Deletes a delivered segment.
    pub fn remove(&mut self, seg: Segment) {
        if self.forget(seg) {
            let _ = fs::remove_file(self.path_of(seg));
        }
    }

    /// Moves a segment out of the queue into `<dir>/<aside>/` (`rejected`, `corrupt`), keeping
    /// the newest [`REJECTED_KEPT`] there.
    pub fn set_aside(&mut self, seg: Segment, aside: &str) {
        if !self.forget(seg) {
            return;
        }
        let to = self.dir.join(aside);
        let from = self.path_of(seg);
        let moved = fs::create_dir_all(&to)
            .and_then(|_| fs::rename(&from, to.join(from.file_name().unwrap_or_default())));
        if moved.is_err() {
            let _ = fs::remove_file(&from);
        }
        if let Ok(entries) = fs::read_dir(&to) {
            let mut names: Vec<PathBuf> =
                entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            if names.len() > REJECTED_KEPT {
                names.sort();
                for old in &names[..names.len() - REJECTED_KEPT] {
                    let _ = fs::remove_file(old);
                }
            }
        }
    }

    /// A segment that failed to verify: set aside as corrupt and counted.
    pub fn quarantine(&mut self, seg: Segment) {
        self.stats.corrupt += 1;
        self.set_aside(seg, "corrupt");
    }

    fn drop_segment(&mut self, seg: Segment, reason: DropReason) -> usize {
        // The record count is in the header; a segment that cannot be read counts none.
        let records = self.read(seg).map(|b| b.records).unwrap_or(0);
        self.remove(seg);
        match reason {
            DropReason::Full => self.stats.dropped_full += 1,
            DropReason::TooOld => self.stats.dropped_old += 1,
            DropReason::Corrupt => self.stats.corrupt += 1,
            // Never a segment: what could not be written is counted by the writer.
            DropReason::Unwritable => {}
        }
        self.stats.dropped_records += records as u64;
        records
    }

    fn forget(&mut self, seg: Segment) -> bool {
        match self.segments.iter().position(|s| s.seq == seg.seq) {
            Some(i) => {
                self.segments.remove(i);
                self.bytes = self.bytes.saturating_sub(seg.bytes);
                true
            }
            None => false,
        }
    }

    fn path_of(&self, seg: Segment) -> PathBuf {
        let created_ms = seg
            .created
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        self.dir.join(format!("{:016x}-{created_ms}.seg", seg.seq))
    }
}

fn parse_name(name: &str) -> Option<(u64, SystemTime)> {
    let stem = name.strip_suffix(".seg")?;
    let (seq, created) = stem.split_once('-')?;
    let seq = u64::from_str_radix(seq, 16).ok()?;
    let ms: u64 = created.parse().ok()?;
    Some((seq, UNIX_EPOCH + Duration::from_millis(ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("depmap-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn batch(n: usize, created: SystemTime) -> Batch {
        let body: Vec<u8> = (0..n)
            .flat_map(|i| format!("{{\"Type\":\"VMProcess\",\"i\":{i}}}\n").into_bytes())
            .collect();
        Batch {
            id: format!("batch-{n}"),
            table: Some("VMProcess".into()),
            records: n,
            created,
            encoding: Encoding::Records,
            body,
        }
    }

    fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn a_segment_keeps_its_encoding_and_one_of_an_earlier_version_holds_records() {
        let d = dir("encoding");
        let now = SystemTime::now();
        let mut s = Spool::open(d.clone(), 1 << 20, Duration::from_secs(3600)).unwrap();
        let mut b = batch(2, now);
        b.encoding = Encoding::AzureLogs;
        s.push(&b).unwrap();
        let seg = s.oldest().unwrap();
        assert_eq!(s.read(seg).unwrap().encoding, Encoding::AzureLogs);
        // The header as depmap wrote it before it named the encoding.
        let body = b"{\"Type\":\"VMProcess\"}\n";
        let old = format!(
            "{{\"v\":1,\"id\":\"old\",\"table\":\"VMProcess\",\"records\":1,\"len\":{},\"crc32\":{}}}\n",
            body.len(),
            crc32fast::hash(body)
        );
        let created = UNIX_EPOCH + Duration::from_millis(now_ms());
        let name = format!("00000000000000ff-{}.seg", now_ms());
        fs::write(d.join(name), [old.as_bytes(), body].concat()).unwrap();
        drop(s);
        let s = Spool::open(d.clone(), 1 << 20, Duration::from_secs(3600)).unwrap();
        assert_eq!(s.len(), 2);
        let old = s
            .read(Segment {
                seq: 0xff,
                created,
                bytes: 0,
            })
            .unwrap();
        assert_eq!(
            (old.encoding, &old.body[..]),
            (Encoding::Records, &body[..])
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn batches_survive_a_reopen_in_order_and_torn_files_are_ignored() {
        let d = dir("reopen");
        let now = SystemTime::now();
        let mut s = Spool::open(d.clone(), 1 << 20, Duration::from_secs(3600)).unwrap();
        s.push(&batch(3, now)).unwrap();
        s.push(&batch(5, now)).unwrap();
        // A crash mid-write leaves a .tmp file behind.
        fs::write(d.join("0000000000000003-1.seg.tmp"), b"{\"v\":1,\"id\":").unwrap();
        drop(s);
        let mut s = Spool::open(d.clone(), 1 << 20, Duration::from_secs(3600)).unwrap();
        assert_eq!(s.len(), 2);
        assert!(!d.join("0000000000000003-1.seg.tmp").exists());
        let first = s.oldest().unwrap();
        assert_eq!(s.read(first).unwrap(), batch(3, first.created));
        s.remove(first);
        let second = s.oldest().unwrap();
        assert_eq!(s.read(second).unwrap().records, 5);
        // New batches continue the sequence.
        s.push(&batch(1, now)).unwrap();
        assert!(s.segments.back().unwrap().seq > second.seq);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let d = dir("full");
        let now = SystemTime::now();
        let one = batch(100, now);
        let mut s =
            Spool::open(d.clone(), 3 * (one.body.len() as u64 + 200), Duration::MAX).unwrap();
        for _ in 0..3 {
            assert!(s.push(&one).unwrap().is_empty());
        }
        let dropped = s.push(&one).unwrap();
        assert_eq!(dropped, vec![(DropReason::Full, 100)]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.stats.dropped_full, 1);
        assert_eq!(s.stats.dropped_records, 100);
        assert!(s.bytes() <= 3 * (one.body.len() as u64 + 200));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn old_batches_expire_and_corrupt_ones_are_quarantined() {
        let d = dir("old");
        let now = SystemTime::now();
        let mut s = Spool::open(d.clone(), 1 << 20, Duration::from_secs(60)).unwrap();
        s.push(&batch(2, now - Duration::from_secs(120))).unwrap();
        s.push(&batch(4, now)).unwrap();
        assert_eq!(s.expire(now), vec![(DropReason::TooOld, 2)]);
        assert_eq!(s.len(), 1);
        // Flip a byte of the body: the checksum catches it.
        let seg = s.oldest().unwrap();
        let path = s.path_of(seg);
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0x20;
        fs::write(&path, data).unwrap();
        let e = s.read(seg).unwrap_err();
        assert!(matches!(e, ReadError::Corrupt(_)), "{e}");
        s.quarantine(seg);
        assert!(s.is_empty());
        assert_eq!(s.stats.corrupt, 1);
        assert!(d.join("corrupt").read_dir().unwrap().count() == 1);
        let _ = fs::remove_dir_all(&d);
    }
}
