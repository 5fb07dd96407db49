//! The four record types of the VM Insights Map, as typed values with the real column names,
//! in the order of `research/azure-tables.md` §1 (service-side columns left out). Serialising a
//! record gives one NDJSON line with its `Type`.

mod tables;
pub mod window;

pub use tables::{VmBoundPort, VmComputer, VmConnection, VmProcess};

use std::time::SystemTime;

use serde::Serialize;

/// `SourceSystem` of every record.
pub const SOURCE_SYSTEM: &str = "depmap";

/// A record of any of the four tables; serialised with its table's name as `Type`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "Type")]
pub enum Record {
    #[serde(rename = "VMComputer")]
    Computer(Box<VmComputer>),
    #[serde(rename = "VMProcess")]
    Process(Box<VmProcess>),
    #[serde(rename = "VMConnection")]
    Connection(Box<VmConnection>),
    #[serde(rename = "VMBoundPort")]
    BoundPort(Box<VmBoundPort>),
}

impl Record {
    /// The table name (`Type`).
    pub fn table(&self) -> &'static str {
        match self {
            Record::Computer(_) => TABLES[0],
            Record::Process(_) => TABLES[1],
            Record::BoundPort(_) => TABLES[2],
            Record::Connection(_) => TABLES[3],
        }
    }

    /// One JSON object, no newline.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The four table names, in the order `once` prints them; `Record::table` and the `Type`
/// of each record's JSON (the serde renames above, checked by a test) are these.
pub const TABLES: [&str; 4] = ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"];

/// `datetime` columns: RFC 3339 UTC with milliseconds.
pub fn datetime(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn each_record_names_its_table_once() {
        let all = [
            Record::Computer(Box::default()),
            Record::Process(Box::default()),
            Record::BoundPort(Box::default()),
            Record::Connection(Box::default()),
        ];
        for (r, name) in all.iter().zip(TABLES) {
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!((r.table(), v["Type"].as_str()), (name, Some(name)));
        }
    }

    #[test]
    fn datetimes_have_milliseconds_and_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(datetime(t), "2026-11-18T11:06:40.123Z");
    }
}
