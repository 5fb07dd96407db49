//! Reading records for the map: the file sink's directory (`<Table>-<YYYYMMDDTHH>-<seq>.ndjson`,
//! also gzipped), one line at a time — a day of a busy host is a million lines, so nothing is
//! held but the line being parsed. Only the columns the map needs are decoded (serde skips the
//! rest unparsed: measured ≈ 3× faster than a `serde_json::Value` per line); a line that is not
//! a JSON object of its table, or lacks a column the map needs, is skipped and counted with
//! its reason. Columns that are missing because the record comes from an older or newer column
//! set are null, as in the tables.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// A VMConnection record, the columns the map reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Connection {
    pub time_generated: String,
    pub machine: String,
    #[serde(default)]
    pub computer: Option<String>,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub process_name: Option<String>,
    pub direction: String,
    pub source_ip: String,
    pub destination_ip: String,
    pub destination_port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub links_established: Option<i64>,
    #[serde(default)]
    pub links_terminated: Option<i64>,
    #[serde(default)]
    pub links_failed: Option<i64>,
    #[serde(default)]
    pub links_live: Option<i64>,
    #[serde(default)]
    pub bytes_sent: Option<i64>,
    #[serde(default)]
    pub bytes_received: Option<i64>,
    #[serde(default)]
    pub responses: Option<i64>,
    #[serde(default)]
    pub response_time_sum: Option<i64>,
    #[serde(default)]
    pub malicious_ip: Option<String>,
    #[serde(default)]
    pub remote_dns_canonical_names: Option<serde_json::Value>,
    #[serde(default)]
    pub remote_dns_questions: Option<serde_json::Value>,
}

/// A VMBoundPort record, the columns the map reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BoundPort {
    pub time_generated: String,
    pub machine: String,
    pub ip: String,
    pub port: i64,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub process_name: Option<String>,
}

/// A VMProcess record, the columns the map reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Process {
    pub time_generated: String,
    pub machine: String,
    pub process: String,
    #[serde(default)]
    pub executable_name: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
}

/// A VMComputer record, the columns the map reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Computer {
    pub time_generated: String,
    pub machine: String,
    #[serde(default)]
    pub computer: Option<String>,
    #[serde(default)]
    pub display_name: Option<String>,
    #[serde(default)]
    pub ipv4_addresses: Option<serde_json::Value>,
    #[serde(default)]
    pub ipv6_addresses: Option<serde_json::Value>,
}

/// One record of any of the four tables.
// One record lives at a time and is moved once: boxing the large variant would only add an
// allocation per line.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Record {
    Connection(Connection),
    BoundPort(BoundPort),
    Process(Process),
    Computer(Computer),
}

impl Record {
    pub fn time_generated(&self) -> &str {
        match self {
            Record::Connection(r) => &r.time_generated,
            Record::BoundPort(r) => &r.time_generated,
            Record::Process(r) => &r.time_generated,
            Record::Computer(r) => &r.time_generated,
        }
    }
}

/// The tables, as the file sink names its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Connection,
    BoundPort,
    Process,
    Computer,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Connection => "VMConnection",
            Table::BoundPort => "VMBoundPort",
            Table::Process => "VMProcess",
            Table::Computer => "VMComputer",
        }
    }

    fn from_name(name: &str) -> Option<Table> {
        [
            Table::Connection,
            Table::BoundPort,
            Table::Process,
            Table::Computer,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }

    /// Parses one line of this table; the reason when it is not one.
    pub fn parse(self, line: &[u8]) -> Result<Record, String> {
        fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, String> {
            serde_json::from_slice(line).map_err(|e| e.to_string())
        }
        Ok(match self {
            Table::Connection => Record::Connection(decode(line)?),
            Table::BoundPort => Record::BoundPort(decode(line)?),
            Table::Process => Record::Process(decode(line)?),
            Table::Computer => Record::Computer(decode(line)?),
        })
    }
}

/// What reading skipped, by reason.
#[derive(Debug, Default, Clone)]
pub struct Skipped {
    /// Files in the directory that are not a table's records.
    pub foreign_files: u64,
    /// Lines that are not a record of their table (torn, not JSON, a column missing).
    pub lines: u64,
    /// The first such line's reason, for the summary.
    pub first_reason: Option<String>,
    /// Files that could not be read (vanished, no permission).
    pub unreadable_files: u64,
}

impl Skipped {
    /// Adds what another reader skipped.
    pub fn merge(&mut self, o: Skipped) {
        self.foreign_files += o.foreign_files;
        self.lines += o.lines;
        self.unreadable_files += o.unreadable_files;
        if self.first_reason.is_none() {
            self.first_reason = o.first_reason;
        }
    }

    pub fn line(&mut self, where_: &str, reason: String) {
        self.lines += 1;
        if self.first_reason.is_none() {
            self.first_reason = Some(format!("{where_}: {reason}"));
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read the record directory {dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {table} from ClickHouse at {url}: {reason}")]
    Clickhouse {
        url: String,
        table: &'static str,
        reason: String,
    },
    #[error("cannot build the ClickHouse client: {0}")]
    Client(#[from] crate::http_client::ClientError),
}

/// ClickHouse as the record source: the tables the clickhouse sink fills
/// (packaging/clickhouse/schema.sql), queried over its HTTP interface.
#[derive(Debug, Clone)]
pub struct ClickhouseSource {
    pub url: String,
    /// Checked to be a plain identifier before it goes into SQL.
    pub database: String,
    pub user: String,
    pub password: Option<String>,
    pub ca_file: PathBuf,
}

/// How long one table's query may take, answer included (a day of a busy host is a few
/// hundred MB of JSON).
const CLICKHOUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// `2026-12-02 15:04:05`: a DateTime literal ClickHouse (every version) reads.
fn clickhouse_time(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    text.trim_end_matches('Z').replacen('T', " ", 1)
}

/// Every record of the four tables in [since, until) — inventory tables up to `until` — one
/// streamed query per table, each line parsed as the file sink's lines are.
pub fn read_clickhouse(
    source: &ClickhouseSource,
    since: SystemTime,
    until: SystemTime,
    skipped: &mut Skipped,
    mut each: impl FnMut(Record),
) -> Result<(), ReadError> {
    let agent = crate::http_client::client(CLICKHOUSE_TIMEOUT, &source.ca_file, None)?;
    let base = source.url.trim_end_matches('/');
    // 64-bit integers as JSON numbers (ClickHouse quotes them by default).
    let url = format!("{base}/?output_format_json_quote_64bit_integers=0");
    for table in [
        Table::Computer,
        Table::Process,
        Table::BoundPort,
        Table::Connection,
    ] {
        let from = match table {
            Table::Computer | Table::Process => String::new(),
            _ => format!(
                " AND TimeGenerated >= toDateTime('{}', 'UTC')",
                clickhouse_time(since)
            ),
        };
        let query = format!(
            "SELECT * FROM {}.{} WHERE TimeGenerated < toDateTime('{}', 'UTC'){from} FORMAT JSONEachRow",
            source.database,
            table.name(),
            clickhouse_time(until)
        );
        let failed = |reason: String| ReadError::Clickhouse {
            url: base.to_string(),
            table: table.name(),
            reason,
        };
        let mut req = agent.post(&url).header("X-ClickHouse-User", &source.user);
        if let Some(p) = &source.password {
            req = req.header("X-ClickHouse-Key", p);
        }
        let answer = req
            .send(query.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
        let status = answer.status().as_u16();
        let mut body = answer.into_body().into_reader();
        if status != 200 {
            let mut text = String::new();
            let _ = (&mut body).take(4096).read_to_string(&mut text);
            let first = text.lines().next().unwrap_or("").trim().to_string();
            return Err(failed(format!("HTTP {status}: {first}")));
        }
        let name = PathBuf::from(format!("clickhouse:{}", table.name()));
        read_lines(
            BufReader::with_capacity(256 << 10, body),
            table,
            &name,
            skipped,
            &mut each,
        );
    }
    Ok(())
}

/// A file of the sink's directory: its table and the UTC hour it was opened.
#[derive(Debug)]
pub struct RecordFile {
    path: PathBuf,
    table: Table,
    hour: String,
    /// Bytes, to share the reading out evenly.
    pub size: u64,
}

/// `<Table>-<YYYYMMDDTHH>-<seq>.ndjson[.gz]` → its table and hour.
fn record_file(name: &str) -> Option<(Table, String)> {
    let stem = name
        .strip_suffix(".ndjson")
        .or_else(|| name.strip_suffix(".ndjson.gz"))?;
    let mut parts = stem.splitn(3, '-');
    let table = Table::from_name(parts.next()?)?;
    let hour = parts.next()?;
    let seq = parts.next()?;
    let well_formed = hour.len() == 11
        && hour.as_bytes()[8] == b'T'
        && hour
            .bytes()
            .enumerate()
            .all(|(i, b)| i == 8 || b.is_ascii_digit())
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit());
    well_formed.then(|| (table, hour.to_string()))
}

/// The record files of `dir` that may hold records before `until` (a file opened after it
/// holds only later ones), oldest first per table; what is not a record file is counted.
pub fn record_files(
    dir: &Path,
    until: SystemTime,
    skipped: &mut Skipped,
) -> Result<Vec<RecordFile>, ReadError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ReadError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let until_hour = hour_of(until);
    let mut files = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else {
            skipped.unreadable_files += 1;
            continue;
        };
        let name = entry.file_name();
        match name.to_str().and_then(record_file) {
            Some((_, hour)) if hour > until_hour => {}
            Some((table, hour)) => files.push(RecordFile {
                size: entry.metadata().map_or(0, |m| m.len()),
                path: entry.path(),
                table,
                hour,
            }),
            None => skipped.foreign_files += 1,
        }
    }
    files.sort_by(|a, b| {
        (a.table.name(), &a.hour, &a.path).cmp(&(b.table.name(), &b.hour, &b.path))
    });
    Ok(files)
}

/// Every record of one file, in order; a file that vanished or cannot be opened is counted.
pub fn read_file(f: &RecordFile, skipped: &mut Skipped, mut each: impl FnMut(Record)) {
    let Ok(file) = File::open(&f.path) else {
        skipped.unreadable_files += 1;
        return;
    };
    let reader: Box<dyn Read> = if f.path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    read_lines(
        BufReader::with_capacity(256 << 10, reader),
        f.table,
        &f.path,
        skipped,
        &mut each,
    );
}

/// The records of one file, each line parsed as `table`; unreadable rest of a file counted.
fn read_lines(
    mut reader: impl BufRead,
    table: Table,
    path: &Path,
    skipped: &mut Skipped,
    each: &mut impl FnMut(Record),
) {
    let mut line = Vec::with_capacity(4096);
    let mut number = 0u64;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                skipped.line(&format!("{}", path.display()), format!("read failed: {e}"));
                return;
            }
        }
        number += 1;
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match table.parse(text) {
            Ok(record) => each(record),
            Err(reason) => skipped.line(&format!("{}:{number}", path.display()), reason),
        }
    }
}

/// `YYYYMMDDTHH` of a time, UTC (as the file sink names its files).
fn hour_of(t: SystemTime) -> String {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    // 2026-12-02T15:04:05Z
    let b = text.as_bytes();
    if b.len() < 13 {
        return String::new();
    }
    format!(
        "{}{}{}T{}",
        &text[0..4],
        &text[5..7],
        &text[8..10],
        &text[11..13]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_give_table_and_hour_or_nothing() {
        assert_eq!(
            record_file("VMConnection-20261202T15-0001.ndjson"),
            Some((Table::Connection, "20261202T15".to_string()))
        );
        assert_eq!(
            record_file("VMProcess-20261202T15-0003.ndjson.gz").map(|(t, _)| t),
            Some(Table::Process)
        );
        for foreign in [
            "notes.txt",
            "VMConnection.ndjson",
            "VMThing-20261202T15-0001.ndjson",
            "VMConnection-2026120215-0001.ndjson",
            "VMConnection-20261202T15-.ndjson",
            "VMConnection-20261202T15-0001.ndjson.tmp",
        ] {
            assert_eq!(record_file(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn hours_are_utc_like_the_sink_names_them() {
        let t = humantime::parse_rfc3339("2026-12-02T15:04:05Z").unwrap();
        assert_eq!(hour_of(t), "20261202T15");
    }

    #[test]
    fn lines_that_are_not_records_are_counted_with_their_reason() {
        let text = b"{\"TimeGenerated\":\"2026-12-02T15:00:00Z\",\"Machine\":\"m-1\",\"Ip\":\"10.0.0.1\",\"Port\":80,\"Extra\":[1,2]}\n\
            {\"TimeGenerated\":\"2026-12-02T15:00:00Z\",\"Mach\n\
            not json\n\
            \n\
            {\"TimeGenerated\":\"2026-12-02T15:00:00Z\",\"Machine\":\"m-1\",\"Ip\":\"10.0.0.1\"}\n";
        let mut skipped = Skipped::default();
        let mut got = Vec::new();
        read_lines(
            &text[..],
            Table::BoundPort,
            Path::new("f"),
            &mut skipped,
            &mut |r| got.push(r),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(skipped.lines, 3, "torn, not JSON, a column missing");
        assert!(skipped.first_reason.unwrap().starts_with("f:2: "));
    }
}
