//! `stdout` sink: NDJSON, one record a line, each with its `Type`.

use std::io::{self, Write};

use super::{Sink, WriteFailure};
use crate::records::Record;

#[derive(Default)]
pub struct StdoutSink;

impl StdoutSink {
    pub fn new() -> StdoutSink {
        StdoutSink
    }
}

impl Sink for StdoutSink {
    fn write(&mut self, batch: &[Record]) -> Result<(), WriteFailure> {
        let mut out = io::stdout().lock();
        for (i, r) in batch.iter().enumerate() {
            let written = out
                .write_all(r.to_json().as_bytes())
                .and_then(|()| out.write_all(b"\n"));
            if let Err(source) = written {
                return Err(WriteFailure {
                    records_lost: batch.len() - i,
                    source,
                });
            }
        }
        out.flush().map_err(|source| WriteFailure {
            records_lost: 0,
            source,
        })
    }
}
