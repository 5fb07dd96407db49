//! `stdout` sink: NDJSON, one record a line, each with its `Type`.

use std::io::{self, Write};

use super::Sink;
use crate::records::Record;

#[derive(Default)]
pub struct StdoutSink;

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink
    }
}

impl Sink for StdoutSink {
    fn write(&mut self, batch: &[Record]) -> io::Result<()> {
        let mut out = io::stdout().lock();
        for r in batch {
            out.write_all(r.to_json().as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}
