//! Logging: structured events (`tracing`), one line per event on stderr with every field
//! (`error=...`, `period=...`) in the line's text. When stderr is journald's stream
//! (`JOURNAL_STREAM`, set by systemd for `StandardError=journal`, the default) each line starts
//! with its syslog priority (`<3>` error ... `<7>` debug, which journald reads as the entry's
//! priority) and carries no timestamp (the journal adds one); elsewhere a timestamp and the
//! level start the line (colours only at a terminal). `DEPMAP_LOG` sets the filter (default
//! `info`).
//!
//! Why not the journal's native protocol (tracing-journald, tried first): it puts fields in
//! journal fields of their own, which `journalctl -u depmap` and `systemctl status` do not
//! show, so a refused reload or a sink failure showed no reason there (issue 11, measured
//! under systemd 252). A reason must be in the text an operator reads first.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DEPMAP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    if stderr_is_journal() {
        let lines = Format::default()
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false);
        builder.event_format(JournalLine(lines)).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// A line for journald's stream: `<priority>` then the event as plain text.
struct JournalLine(Format<Full, ()>);

impl<S, N> FormatEvent<S, N> for JournalLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// syslog(3) priorities, as journald reads them from a stream line's `<N>` prefix.
fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
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
    fn journal_priorities_follow_syslog() {
        assert_eq!(syslog_priority(Level::ERROR), 3);
        assert_eq!(syslog_priority(Level::WARN), 4);
        assert_eq!(syslog_priority(Level::INFO), 6);
        assert_eq!(syslog_priority(Level::DEBUG), 7);
    }

    #[test]
    fn the_journal_stream_is_recognised_only_when_it_is_stderr() {
        assert!(matches_stream("8:12345", 8, 12345));
        assert!(!matches_stream("8:12345", 8, 12346));
        assert!(!matches_stream("garbage", 8, 12345));
        assert!(!matches_stream("", 0, 0));
    }
}
