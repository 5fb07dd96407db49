//! Logging: structured events (`tracing`), written natively to the journal when stderr is
//! journald's stream (`JOURNAL_STREAM`, set by systemd for `StandardError=journal`, the
//! default), so every field (`error`, `period`, `batches`, ...) is a journal field and
//! `journalctl -u depmap -o verbose` shows them; otherwise one plain line per event on stderr
//! (colours only at a terminal). `DEPMAP_LOG` sets the filter (default `info`).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init() {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("DEPMAP_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    if stderr_is_journal()
        && let Ok(journal) = tracing_journald::layer()
    {
        tracing_subscriber::registry()
            .with(filter())
            .with(journal.with_syslog_identifier("depmap".into()))
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter())
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Whether stderr is the journal stream systemd connected (`JOURNAL_STREAM=<dev>:<ino>`).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    matches_stream(&value.to_string_lossy(), meta.dev(), meta.ino())
}

fn matches_stream(value: &str, dev: u64, ino: u64) -> bool {
    let mut parts = value.trim().splitn(2, ':');
    let d = parts.next().and_then(|d| d.parse::<u64>().ok());
    let i = parts.next().and_then(|i| i.parse::<u64>().ok());
    d == Some(dev) && i == Some(ino)
}

/// Once-per-interval logging of a recurring problem: the first occurrence is logged at once,
/// the next ones at most every `every`, with how many happened in between.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(occurrences not logged since the last log)` when this one should be logged.
    pub fn ready(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The interval of [`Throttle`]s for recurring problems.
pub const PROBLEM_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_the_first_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(t.ready(), Some(2));
    }

    #[test]
    fn the_journal_stream_is_recognised_only_when_it_is_stderr() {
        assert!(matches_stream("8:12345", 8, 12345));
        assert!(!matches_stream("8:12345", 8, 12346));
        assert!(!matches_stream("garbage", 8, 12345));
        assert!(!matches_stream("", 0, 0));
    }
}
