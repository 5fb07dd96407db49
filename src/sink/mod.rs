//! Sinks: where records go. Each sink takes whole batches (one window, or one inventory pass)
//! and has written them out before returning (the file sink to disk with fdatasync), so a
//! batch is never half-written at shutdown.

pub mod file;
pub mod stdout;

use std::io;

use crate::config::{Config, SinkKind};
use crate::records::Record;

pub trait Sink: Send {
    /// Writes a batch; returns once the batch is flushed to the destination.
    fn write(&mut self, batch: &[Record]) -> io::Result<()>;
}

/// Builds the configured sink.
pub fn build(config: &Config) -> io::Result<Box<dyn Sink>> {
    Ok(match config.sink.kind {
        SinkKind::Stdout => Box::new(stdout::StdoutSink::new()),
        SinkKind::File => Box::new(file::FileSink::open(
            config.sink.file.dir(&config.agent.state_dir),
            config.sink.file.max_file_bytes,
            config.sink.file.max_files,
        )?),
    })
}
