//! Sinks: where records go. Each sink takes whole batches (one window, or one inventory pass).
//! The local sinks (`file`, `stdout`) have written a batch out before returning (the file sink
//! to disk with fdatasync). The remote sinks (`http`, `clickhouse`, `azure_logs`) batch records, write each
//! sealed batch to a durable spool and send from a thread of their own (`delivery`), so a slow
//! or absent collector never holds up the poll loop and nothing spooled is lost.

pub mod azure;
pub mod clickhouse;
pub mod delivery;
pub mod encoding;
pub mod file;
pub mod http;
pub mod spool;
pub mod stdout;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, SinkKind};
use crate::metrics::DropReason;
use crate::metrics::Metrics;
use crate::records::Record;

/// A write the sink could not make, and how many records it lost with it (a full disk, a
/// read-only directory, a closed stdout): the loss is counted as records, not just failures.
#[derive(Debug, thiserror::Error)]
#[error("{source} ({records_lost} records lost)")]
pub struct WriteFailure {
    pub records_lost: usize,
    #[source]
    pub source: io::Error,
}

impl WriteFailure {
    /// Adds `more` to the failures so far (the first one's error is the one told).
    pub fn add(so_far: &mut Option<WriteFailure>, more: WriteFailure) {
        match so_far {
            Some(f) => f.records_lost += more.records_lost,
            None => *so_far = Some(more),
        }
    }
}

pub trait Sink: Send {
    /// Takes a batch: written out (local sinks) or batched for the spool (remote sinks).
    fn write(&mut self, batch: &[Record]) -> Result<(), WriteFailure>;
    /// Called at every poll: a remote sink seals batches that have waited long enough.
    fn tick(&mut self) -> Result<(), WriteFailure> {
        Ok(())
    }
    /// Called once at shutdown: seal and spool what is pending, send what can be sent in the
    /// grace time.
    fn close(&mut self) -> Result<(), WriteFailure> {
        Ok(())
    }
    /// Called when a reload replaces the sink: as [`Sink::close`], without the grace time
    /// (what is spooled is the next sink's to send, and the poll loop must not wait).
    fn hand_over(&mut self) -> Result<(), WriteFailure> {
        self.close()
    }
}

/// The directory the unit makes writable (`StateDirectory=depmap` under `ProtectSystem=strict`).
pub const UNIT_WRITABLE_DIR: &str = "/var/lib/depmap";

/// A sink or spool directory depmap cannot write: every record would be lost while the
/// service looks healthy, so start and reload refuse it (issue 11, seen under systemd).
#[derive(Debug, thiserror::Error)]
#[error(
    "key `{key}`: {} is not writable ({source}); depmap needs to write there. Under \
     systemd/depmap.service only {UNIT_WRITABLE_DIR} is writable (ProtectSystem=strict): add \
     `ReadWritePaths={}` with `systemctl edit depmap`, or choose a directory under \
     {UNIT_WRITABLE_DIR}; elsewhere give the user depmap runs as write access",
    dir.display(),
    dir.display()
)]
pub struct UnwritableDir {
    pub key: &'static str,
    pub dir: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Checks that the configured sink can write its directory, without creating it: a probe file
/// is created and removed in the directory, or, when it does not exist yet, in the nearest
/// ancestor that does (where depmap would create it).
pub fn check_writable(config: &Config) -> Result<(), UnwritableDir> {
    let Some((key, dir)) = config.sink_dir() else {
        return Ok(());
    };
    let existing = dir
        .ancestors()
        .find(|d| d.is_dir())
        .unwrap_or_else(|| Path::new("/"));
    let probe = existing.join(format!(".depmap-write-probe-{}", std::process::id()));
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    match made {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(source) => Err(UnwritableDir { key, dir, source }),
    }
}

/// Why the configured sink could not be built, as one line naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The HTTP client: a CA file, a client certificate or key.
    #[error(transparent)]
    Client(#[from] crate::http_client::ClientError),
    /// A credential file named by `key` (token, password, client secret) cannot be read.
    #[error("{key} {}: {source}", path.display())]
    Credential {
        key: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The file sink's directory.
    #[error("{0}")]
    Files(io::Error),
    #[error("spool: {0}")]
    Spool(io::Error),
    #[error("cannot start the sender: {0}")]
    Sender(io::Error),
}

/// Builds the configured sink.
pub fn build(config: &Config, metrics: Arc<Metrics>) -> Result<Box<dyn Sink>, BuildError> {
    let kind = config.sink.kind;
    let transport: Box<dyn delivery::Transport> = match kind {
        SinkKind::Stdout => return Ok(Box::new(stdout::StdoutSink::new())),
        SinkKind::File => {
            let (sink, torn) = file::FileSink::open(
                config.sink.file.dir(&config.agent.state_dir),
                config.sink.file.max_file_bytes,
                config.sink.file.max_files,
            )
            .map_err(BuildError::Files)?;
            // A torn line is one record a killed process never finished writing.
            for _ in 0..torn {
                metrics.count_drop(DropReason::Corrupt, 1);
            }
            return Ok(Box::new(sink));
        }
        SinkKind::Http => Box::new(http::HttpTransport::new(&config.sink.http)?),
        SinkKind::Clickhouse => Box::new(clickhouse::ClickhouseTransport::new(
            &config.sink.clickhouse,
        )?),
        SinkKind::AzureLogs => Box::new(azure::AzureLogsTransport::new(&config.sink.azure_logs)?),
    };
    let d = &config.sink.delivery;
    let dir = d.spool_dir(&config.agent.state_dir, kind);
    let spool =
        spool::Spool::open(dir, d.spool_max_bytes, d.spool_max_age).map_err(BuildError::Spool)?;
    let sink = delivery::Delivery::start(spool, transport, d.clone(), metrics)
        .map_err(BuildError::Sender)?;
    Ok(Box::new(sink))
}
