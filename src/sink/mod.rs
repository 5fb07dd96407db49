//! Sinks: where records go. Each sink takes whole batches (one window, or one inventory pass).
//! The local sinks (`file`, `stdout`) have written a batch out before returning (the file sink
//! to disk with fdatasync). The remote sinks (`http`, `clickhouse`, `azure_logs`) batch records, write each
//! sealed batch to a durable spool and send from a thread of their own (`delivery`), so a slow
//! or absent collector never holds up the poll loop and nothing spooled is lost.

pub mod azure;
pub mod clickhouse;
pub mod delivery;
pub mod file;
pub mod http;
pub mod spool;
pub mod stdout;

use std::io;
use std::sync::Arc;

use crate::config::{Config, SinkKind};
use crate::metrics::Metrics;
use crate::records::Record;

pub trait Sink: Send {
    /// Takes a batch: written out (local sinks) or batched for the spool (remote sinks).
    fn write(&mut self, batch: &[Record]) -> io::Result<()>;
    /// Called at every poll: a remote sink seals batches that have waited long enough.
    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Called once at shutdown: seal and spool what is pending, send what can be sent in the
    /// grace time.
    fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Builds the configured sink. An error is one line naming what is wrong.
pub fn build(config: &Config, metrics: Arc<Metrics>) -> Result<Box<dyn Sink>, String> {
    let kind = config.sink.kind;
    let transport: Box<dyn delivery::Transport> = match kind {
        SinkKind::Stdout => return Ok(Box::new(stdout::StdoutSink::new())),
        SinkKind::File => {
            return file::FileSink::open(
                config.sink.file.dir(&config.agent.state_dir),
                config.sink.file.max_file_bytes,
                config.sink.file.max_files,
            )
            .map(|s| Box::new(s) as Box<dyn Sink>)
            .map_err(|e| e.to_string());
        }
        SinkKind::Http => Box::new(http::HttpTransport::new(&config.sink.http)?),
        SinkKind::Clickhouse => Box::new(clickhouse::ClickhouseTransport::new(
            &config.sink.clickhouse,
        )?),
        SinkKind::AzureLogs => Box::new(azure::AzureLogsTransport::new(&config.sink.azure_logs)?),
    };
    let d = &config.sink.delivery;
    let dir = d.spool_dir(&config.agent.state_dir, kind);
    let spool = spool::Spool::open(dir, d.spool_max_bytes, d.spool_max_age)
        .map_err(|e| format!("spool: {e}"))?;
    let sink = delivery::Delivery::start(spool, transport, d.clone(), metrics)
        .map_err(|e| format!("cannot start the sender: {e}"))?;
    Ok(Box::new(sink))
}
