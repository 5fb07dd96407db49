//! Each sink's wire form of a record, written once: when the record joins a batch (the file
//! sink writes `records`).
//! The spool holds batches in that form, so a send — and every retry of it — only frames the
//! lines (an HTTP body, a JSON array, Azure's chunks); no sink parses JSON it wrote itself.
//!
//! * `records` (the http sink): the record as depmap writes it everywhere, with its `Type`.
//! * `clickhouse`: top-level `null` members left out — ClickHouse 18.16 (Debian 12's package)
//!   refuses `null` for an `Array` column, and a missing key stores the same NULL or `[]` on
//!   every version (packaging/clickhouse/README.md).
//! * `azure_logs`: the custom tables of `packaging/azure/`: `Type` dropped (reserved; the table
//!   says it) and `_ResourceId` renamed `ResourceId` (a leading `_` is reserved).
//!
//! A spool segment names its encoding in its header. Segments from before the header said it
//! hold `records`; a sink of another encoding converts such a body once, when it reads it.

use serde_json::{Map, Value};

use crate::records::Record;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Records,
    Clickhouse,
    AzureLogs,
}

impl Encoding {
    /// The name in a spool segment's header.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Records => "records",
            Encoding::Clickhouse => "clickhouse",
            Encoding::AzureLogs => "azure_logs",
        }
    }

    pub fn from_name(name: &str) -> Option<Encoding> {
        [Encoding::Records, Encoding::Clickhouse, Encoding::AzureLogs]
            .into_iter()
            .find(|e| e.name() == name)
    }

    /// Appends `record` as one line (ending in `\n`); false, with nothing appended, if it
    /// could not be serialised (plain structs of strings and numbers: it cannot happen).
    pub fn encode(self, record: &Record, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        let written = match self {
            Encoding::Records => serde_json::to_writer(&mut *out, record).is_ok(),
            _ => match serde_json::to_value(record) {
                Ok(Value::Object(mut columns)) => {
                    self.shape(&mut columns);
                    serde_json::to_writer(&mut *out, &columns).is_ok()
                }
                _ => false,
            },
        };
        if !written {
            out.truncate(start);
            return false;
        }
        out.push(b'\n');
        true
    }

    /// A body of `records` lines in this encoding. A line that is not a JSON object (not
    /// depmap's) is kept as it is: the collector judges it, as it would have before.
    pub fn from_records(self, body: &[u8]) -> Vec<u8> {
        if self == Encoding::Records {
            return body.to_vec();
        }
        let mut out = Vec::with_capacity(body.len());
        for line in lines(body) {
            match serde_json::from_slice::<Map<String, Value>>(line) {
                Ok(mut columns) => {
                    self.shape(&mut columns);
                    if serde_json::to_writer(&mut out, &columns).is_err() {
                        out.extend_from_slice(line);
                    }
                }
                Err(_) => out.extend_from_slice(line),
            }
            out.push(b'\n');
        }
        out
    }

    fn shape(self, columns: &mut Map<String, Value>) {
        match self {
            Encoding::Records => {}
            Encoding::Clickhouse => columns.retain(|_, v| !v.is_null()),
            Encoding::AzureLogs => {
                columns.remove("Type");
                if let Some(v) = columns.remove("_ResourceId") {
                    columns.insert("ResourceId".into(), v);
                }
            }
        }
    }
}

/// The lines of a body (each without its `\n`).
pub fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|b| *b == b'\n').filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{Origin, VmConnection};

    fn records() -> Vec<Record> {
        let conn = VmConnection {
            origin: Origin {
                resource_id: "/subscriptions/s/vm-1".into(),
                ..Default::default()
            },
            bytes_sent: Some(7),
            ..Default::default()
        };
        vec![
            Record::Connection(Box::new(conn)),
            Record::Computer(Box::default()),
        ]
    }

    fn objects(body: &[u8]) -> Vec<Map<String, Value>> {
        lines(body)
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn each_sink_gets_its_own_columns() {
        for encoding in [Encoding::Records, Encoding::Clickhouse, Encoding::AzureLogs] {
            let mut body = Vec::new();
            for r in records() {
                assert!(encoding.encode(&r, &mut body));
            }
            assert!(body.ends_with(b"\n"));
            let rows = objects(&body);
            assert_eq!(rows.len(), 2);
            let conn = &rows[0];
            assert_eq!(conn["BytesSent"], 7);
            match encoding {
                Encoding::Records => {
                    assert_eq!(conn["Type"], "VMConnection");
                    assert_eq!(conn["_ResourceId"], "/subscriptions/s/vm-1");
                    assert!(conn.values().any(Value::is_null));
                }
                Encoding::Clickhouse => {
                    assert_eq!(conn["Type"], "VMConnection");
                    assert!(!rows.iter().flat_map(|r| r.values()).any(Value::is_null));
                }
                Encoding::AzureLogs => {
                    assert!(!conn.contains_key("Type") && !conn.contains_key("_ResourceId"));
                    assert_eq!(conn["ResourceId"], "/subscriptions/s/vm-1");
                    assert!(conn.values().any(Value::is_null), "nulls stay for Azure");
                }
            }
        }
    }

    #[test]
    fn a_records_body_converts_to_what_encoding_would_have_written() {
        let mut spooled = Vec::new();
        for r in records() {
            Encoding::Records.encode(&r, &mut spooled);
        }
        spooled.extend_from_slice(b"not json\n");
        for encoding in [Encoding::Records, Encoding::Clickhouse, Encoding::AzureLogs] {
            let mut direct = Vec::new();
            for r in records() {
                encoding.encode(&r, &mut direct);
            }
            let converted = encoding.from_records(&spooled);
            let (head, tail) = converted.split_at(direct.len());
            assert_eq!(objects(head), objects(&direct), "{encoding:?}");
            assert_eq!(tail, b"not json\n");
        }
    }

    #[test]
    fn names_round_trip() {
        for e in [Encoding::Records, Encoding::Clickhouse, Encoding::AzureLogs] {
            assert_eq!(Encoding::from_name(e.name()), Some(e));
        }
        assert_eq!(Encoding::from_name("xml"), None);
    }
}
