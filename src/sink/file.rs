//! `file` sink (the default): NDJSON per table under a directory, ready for DuckDB, ClickHouse
//! or pandas.
//!
//! Files are named `<Table>-<YYYYMMDDTHH>-<seq>.ndjson` (UTC hour of opening). A file is closed
//! and the next one opened when the hour changes or it would pass `max_file_bytes`; rotation
//! happens between batches and every batch is written whole and flushed before `write`
//! returns (`fdatasync`), so neither rotation nor shutdown loses or splits a record. A write
//! that fails part-way (disk full) is cut back to the last whole line, so a file never holds a
//! torn record. A process killed mid-write (SIGKILL, power loss) can leave one: at open, the
//! newest file of each table is cut back to its last whole line, logged and counted. At most
//! `max_files` files are kept per table; the oldest are deleted first.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::encoding::Encoding;
use super::{Sink, WriteFailure};
use crate::records::Record;

const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
const DEFAULT_MAX_FILES: usize = 168;

struct OpenFile {
    hour: String,
    seq: u32,
    file: File,
    size: u64,
}

pub struct FileSink {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
    open: HashMap<&'static str, OpenFile>,
}

impl FileSink {
    /// Opens the sink on `dir` (created if missing), cutting torn last lines (see the module
    /// comment); the sink and how many torn lines were cut.
    pub fn open(
        dir: PathBuf,
        max_file_bytes: u64,
        max_files: usize,
    ) -> io::Result<(FileSink, usize)> {
        fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        let sink = FileSink {
            dir,
            max_file_bytes: if max_file_bytes == 0 {
                DEFAULT_MAX_FILE_BYTES
            } else {
                max_file_bytes
            },
            max_files: if max_files == 0 {
                DEFAULT_MAX_FILES
            } else {
                max_files
            },
            open: HashMap::new(),
        };
        let mut torn = 0;
        for table in crate::records::TABLES {
            let Some(newest) = sink.files_of(table).pop() else {
                continue;
            };
            let path = sink.dir.join(&newest);
            match cut_torn_tail(&path) {
                Ok(0) => {}
                Ok(cut) => {
                    torn += 1;
                    tracing::warn!(
                        file = %path.display(),
                        bytes = cut,
                        "a torn last record (depmap was killed mid-write) was cut from the file; that record is lost"
                    );
                }
                Err(e) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "cannot check the last line of the newest file"
                ),
            }
        }
        Ok((sink, torn))
    }

    fn path(&self, table: &str, hour: &str, seq: u32) -> PathBuf {
        self.dir.join(format!("{table}-{hour}-{seq:04}.ndjson"))
    }

    /// The file to append `len` bytes of `table` to, rotating when the hour changed or the
    /// size limit would be passed.
    fn file_for(&mut self, table: &'static str, len: u64) -> io::Result<&mut OpenFile> {
        let hour = hour_stamp(SystemTime::now());
        let rotate = match self.open.get(&table) {
            None => true,
            Some(f) => f.hour != hour || (f.size > 0 && f.size + len > self.max_file_bytes),
        };
        if rotate {
            let seq = match self.open.get(&table) {
                Some(f) if f.hour == hour => f.seq + 1,
                _ => self.next_seq(table, &hour),
            };
            let path = self.path(table, &hour, seq);
            let file = OpenOptions::new().create(true).append(true).open(&path)?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.open.insert(
                table,
                OpenFile {
                    hour,
                    seq,
                    file,
                    size,
                },
            );
            self.prune(table);
        }
        self.open
            .get_mut(&table)
            .ok_or_else(|| io::Error::other("file sink lost its open file"))
    }

    /// After a restart, continue after the highest sequence already on disk for this hour.
    fn next_seq(&self, table: &str, hour: &str) -> u32 {
        let prefix = format!("{table}-{hour}-");
        self.files_of(table)
            .iter()
            .filter_map(|n| {
                n.strip_prefix(&prefix)?
                    .strip_suffix(".ndjson")?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .map(|s| s + 1)
            .unwrap_or(0)
    }

    /// This table's files, oldest first: ordered by (hour, sequence) as numbers, so that
    /// `-10000` comes after `-9999` (as text it sorts first and was pruned at once: issue 12).
    /// Names not of the sink's form are left alone.
    fn files_of(&self, table: &str) -> Vec<String> {
        let prefix = format!("{table}-");
        let mut names: Vec<((String, u32), String)> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter_map(|n| {
                        let (hour, seq) = n
                            .strip_prefix(&prefix)?
                            .strip_suffix(".ndjson")?
                            .rsplit_once('-')?;
                        let order = (hour.to_string(), seq.parse::<u32>().ok()?);
                        Some((order, n))
                    })
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names.into_iter().map(|(_, n)| n).collect()
    }

    fn prune(&self, table: &str) {
        let names = self.files_of(table);
        if names.len() > self.max_files {
            for n in &names[..names.len() - self.max_files] {
                let _ = fs::remove_file(self.dir.join(n));
            }
        }
    }
}

impl Sink for FileSink {
    fn write(&mut self, batch: &[Record]) -> Result<(), WriteFailure> {
        let mut by_table: HashMap<&'static str, (usize, Vec<u8>)> = HashMap::new();
        for r in batch {
            let (records, buf) = by_table.entry(r.table().name()).or_default();
            if Encoding::Records.encode(r, buf) {
                *records += 1;
            }
        }
        // Every table is tried; the records of those that could not be written are lost.
        let mut failure: Option<WriteFailure> = None;
        for (table, (records, bytes)) in by_table {
            let written = self.file_for(table, bytes.len() as u64).and_then(|f| {
                match f.file.write_all(&bytes).and_then(|()| f.file.sync_data()) {
                    Ok(()) => {
                        f.size += bytes.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        // Cut the torn tail so the next batch starts on a line of its own.
                        let _ = f.file.set_len(f.size);
                        Err(e)
                    }
                }
            });
            if let Err(source) = written {
                let lost = WriteFailure {
                    records_lost: records,
                    source,
                };
                WriteFailure::add(&mut failure, lost);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

/// `YYYYMMDDTHH` in UTC.
/// Cuts `path` back to its last newline (to nothing when it has none); the bytes cut. Reads
/// only the tail, backwards in 64 KiB steps.
fn cut_torn_tail(path: &Path) -> io::Result<u64> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let len = f.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
                f.sync_data()?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    if len > 0 {
        f.set_len(0)?;
        f.sync_data()?;
    }
    Ok(len)
}

fn hour_stamp(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-25T13:02:04Z
    let digits: String = s
        .chars()
        .take(13)
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{VmBoundPort, VmConnection};

    #[test]
    fn rotates_by_size_without_splitting_or_losing_records() {
        let dir = std::env::temp_dir().join(format!("depmap-file-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut sink = FileSink::open(dir.clone(), 1000, 3).unwrap().0;
        let rec = |i: i64| {
            Record::Connection(Box::new(VmConnection {
                bytes_sent: Some(i),
                ..Default::default()
            }))
        };
        let mut written = 0;
        for round in 0..10 {
            let batch: Vec<Record> = (0..3).map(|i| rec(round * 3 + i)).collect();
            sink.write(&batch).unwrap();
            sink.write(&[Record::BoundPort(Box::new(VmBoundPort {
                ..Default::default()
            }))])
            .unwrap();
            written += 3;
        }
        let conn_files = sink.files_of("VMConnection");
        assert_eq!(conn_files.len(), 3, "{conn_files:?}");
        let mut lines = 0;
        for f in &conn_files {
            let text = fs::read_to_string(dir.join(f)).unwrap();
            assert!(text.len() <= 1000 || text.lines().count() == 3);
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(v["Type"], "VMConnection");
                lines += 1;
            }
        }
        // Only the newest files are kept; every kept file holds whole records.
        assert!(lines < written && lines > 0);
        assert_eq!(hour_stamp(SystemTime::UNIX_EPOCH), "19700101T00");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_record_is_cut_at_open() {
        let dir = std::env::temp_dir().join(format!("depmap-file-torn-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let hour = hour_stamp(SystemTime::now());
        let file = |table: &str, seq: u32| dir.join(format!("{table}-{hour}-{seq:04}.ndjson"));
        // A whole older file, and the newest cut mid-record (a 200 KB record: the search
        // crosses several 64 KiB steps).
        fs::write(file("VMConnection", 0), "{\"a\":1}\n{\"a\":2").unwrap();
        let big = format!("{{\"a\":3}}\n{{\"b\":\"{}", "x".repeat(200_000));
        fs::write(file("VMConnection", 1), &big).unwrap();
        fs::write(file("VMProcess", 0), "no newline at all").unwrap();
        fs::write(file("VMBoundPort", 0), "{\"p\":1}\n").unwrap();
        let (mut sink, torn) = FileSink::open(dir.clone(), 1 << 20, 10).unwrap();
        assert_eq!(torn, 2);
        assert_eq!(
            fs::read_to_string(file("VMConnection", 1)).unwrap(),
            "{\"a\":3}\n"
        );
        assert_eq!(fs::read_to_string(file("VMProcess", 0)).unwrap(), "");
        assert_eq!(
            fs::read_to_string(file("VMBoundPort", 0)).unwrap(),
            "{\"p\":1}\n"
        );
        // Only the newest file of a table can be torn by a kill; older ones are not touched.
        assert!(
            fs::read_to_string(file("VMConnection", 0))
                .unwrap()
                .ends_with('2')
        );
        // The next record starts on a line of its own, in a new file.
        let record = Record::Connection(Box::new(VmConnection {
            ..Default::default()
        }));
        sink.write(std::slice::from_ref(&record)).unwrap();
        assert_eq!(
            fs::read_to_string(file("VMConnection", 2))
                .unwrap()
                .lines()
                .count(),
            1
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn sequence_10000_is_newer_than_9999_and_is_kept() {
        let dir = std::env::temp_dir().join(format!("depmap-file-seq-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let hour = hour_stamp(SystemTime::now());
        for seq in [9997, 9998, 9999] {
            fs::write(dir.join(format!("VMConnection-{hour}-{seq:04}.ndjson")), "").unwrap();
        }
        fs::write(dir.join("VMConnection-notes.ndjson"), "").unwrap();
        let mut sink = FileSink::open(dir.clone(), 1000, 3).unwrap().0;
        let record = Record::Connection(Box::new(VmConnection {
            ..Default::default()
        }));
        sink.write(std::slice::from_ref(&record)).unwrap();
        let newest = dir.join(format!("VMConnection-{hour}-10000.ndjson"));
        let text = fs::read_to_string(&newest).expect("the new file is kept");
        assert_eq!(text.lines().count(), 1);
        // The oldest of ours went; the file not of the sink's form stays.
        assert!(
            !dir.join(format!("VMConnection-{hour}-9997.ndjson"))
                .exists()
        );
        assert!(
            dir.join(format!("VMConnection-{hour}-9998.ndjson"))
                .exists()
        );
        assert!(dir.join("VMConnection-notes.ndjson").exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
