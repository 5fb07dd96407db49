//! The four record types of the VM Insights Map, as typed values with the real column names,
//! in the order of `research/azure-tables.md` §1 (service-side columns left out). Serialising a
//! record gives one NDJSON line with its `Type`.

mod tables;
pub mod window;

pub use tables::{Ip, Origin, VmBoundPort, VmComputer, VmConnection, VmProcess};

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

/// The four tables, in the order `once` prints them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Computer,
    Process,
    BoundPort,
    Connection,
}

impl Table {
    pub const ALL: [Table; 4] = [
        Table::Computer,
        Table::Process,
        Table::BoundPort,
        Table::Connection,
    ];

    /// Its name (`Type`).
    pub fn name(self) -> &'static str {
        TABLES[self as usize]
    }
}

impl Record {
    pub fn table(&self) -> Table {
        match self {
            Record::Computer(_) => Table::Computer,
            Record::Process(_) => Table::Process,
            Record::BoundPort(_) => Table::BoundPort,
            Record::Connection(_) => Table::Connection,
        }
    }

    /// One JSON object, no newline.
    pub fn to_json(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The four table names, in [`Table::ALL`] order; [`Table::name`] and the `Type` of each
/// record's JSON (the serde renames above, checked by a test) are these.
pub const TABLES: [&str; 4] = ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"];

impl Origin {
    /// The block of a record this agent writes now (`time_generated`: a [`datetime`]).
    pub fn new(id: &crate::identity::Identity, time_generated: String) -> Origin {
        Origin {
            agent_id: id.agent_id.clone(),
            computer: id.computer.clone(),
            machine: id.machine.clone(),
            resource_id: id.resource_id.clone(),
            source_system: SOURCE_SYSTEM,
            time_generated,
        }
    }
}

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
        for ((r, table), name) in all.iter().zip(Table::ALL).zip(TABLES) {
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!(r.table(), table);
            assert_eq!((table.name(), v["Type"].as_str()), (name, Some(name)));
        }
    }

    #[test]
    fn datetimes_have_milliseconds_and_z() {
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(datetime(t), "2026-11-18T11:06:40.123Z");
    }
}
