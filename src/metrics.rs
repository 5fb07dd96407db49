//! Self-metrics: what depmap produced, sent, retried, spooled and dropped, how long sends take,
//! and the agent's own counters (polls, destroy notifications lost, shedding), served in the
//! Prometheus text format on `metrics.listen` (off by default; a local address is the norm).
//!
//! Counters are atomics shared by the poll loop and the sender thread; the server tasks only
//! read them. Every loss path has a counter: `depmap_batches_dropped_total{reason}`,
//! `depmap_batches_rejected_total`, `depmap_destroy_overruns_total`, `depmap_shed_*_total`,
//! `depmap_sink_write_failures_total`.

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::records::TABLES;

/// Upper bounds (seconds) of the send-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

/// Why a batch was dropped unsent (the `reason` label of `depmap_batches_dropped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The spool was full: the oldest batch made room for a new one.
    Full,
    /// Older than `max_age`.
    TooOld,
    /// Failed its checksum or header.
    Corrupt,
    /// Never written: the spool or the file sink's directory refused the write (disk full,
    /// read-only). Counted by the caller that lost the records.
    Unwritable,
}

#[derive(Debug, Default)]
pub struct Metrics {
    records_produced: [AtomicU64; 4],
    pub batches_spooled: AtomicU64,
    pub batches_sent: AtomicU64,
    pub records_sent: AtomicU64,
    /// Failed attempts that will be retried.
    pub batches_retried: AtomicU64,
    pub batches_rejected: AtomicU64,
    dropped_full: AtomicU64,
    dropped_old: AtomicU64,
    dropped_corrupt: AtomicU64,
    dropped_unwritable: AtomicU64,
    records_dropped: AtomicU64,
    spool_batches: AtomicU64,
    spool_bytes: AtomicU64,
    pub sink_write_failures: AtomicU64,
    send_count: AtomicU64,
    send_micros: AtomicU64,
    send_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// The agent's counters as of its last poll (`Agent::self_counters`).
    agent: Mutex<Vec<(&'static str, u64)>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn count_record(&self, table: &str) {
        if let Some(i) = TABLES.iter().position(|t| *t == table) {
            self.records_produced[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_drop(&self, reason: DropReason, records: usize) {
        let c = match reason {
            DropReason::Full => &self.dropped_full,
            DropReason::TooOld => &self.dropped_old,
            DropReason::Corrupt => &self.dropped_corrupt,
            DropReason::Unwritable => &self.dropped_unwritable,
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.records_dropped
            .fetch_add(records as u64, Ordering::Relaxed);
    }

    pub fn set_spool(&self, batches: u64, bytes: u64) {
        self.spool_batches.store(batches, Ordering::Relaxed);
        self.spool_bytes.store(bytes, Ordering::Relaxed);
    }

    pub fn observe_send(&self, d: Duration) {
        self.send_count.fetch_add(1, Ordering::Relaxed);
        self.send_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        let secs = d.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.send_buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn set_agent(&self, counters: Vec<(&'static str, u64)>) {
        *self.agent.lock().unwrap_or_else(|e| e.into_inner()) = counters;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP depmap_{name} {help}");
            let _ = writeln!(out, "# TYPE depmap_{name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "depmap_{name}{labels} {v}");
            }
        };
        let produced: Vec<(String, u64)> = TABLES
            .iter()
            .zip(&self.records_produced)
            .map(|(t, c)| (format!("{{table=\"{t}\"}}"), get(c)))
            .collect();
        family(
            "records_produced_total",
            "counter",
            "Records handed to the sink, by table.",
            &produced,
        );
        for (name, help, c) in [
            (
                "batches_spooled_total",
                "Batches written to the spool.",
                &self.batches_spooled,
            ),
            (
                "batches_sent_total",
                "Batches the collector acknowledged.",
                &self.batches_sent,
            ),
            (
                "records_sent_total",
                "Records in acknowledged batches.",
                &self.records_sent,
            ),
            (
                "batches_retried_total",
                "Failed send attempts that will be retried.",
                &self.batches_retried,
            ),
            (
                "batches_rejected_total",
                "Batches the collector refused for good (4xx), not retried.",
                &self.batches_rejected,
            ),
            (
                "records_dropped_total",
                "Records in batches dropped unsent.",
                &self.records_dropped,
            ),
            (
                "sink_write_failures_total",
                "Batches the sink could not take (disk full, spool unwritable).",
                &self.sink_write_failures,
            ),
        ] {
            family(name, "counter", help, &[(String::new(), get(c))]);
        }
        family(
            "batches_dropped_total",
            "counter",
            "Batches dropped unsent, by reason.",
            &[
                ("{reason=\"spool_full\"}".into(), get(&self.dropped_full)),
                ("{reason=\"too_old\"}".into(), get(&self.dropped_old)),
                ("{reason=\"corrupt\"}".into(), get(&self.dropped_corrupt)),
                (
                    "{reason=\"unwritable\"}".into(),
                    get(&self.dropped_unwritable),
                ),
            ],
        );
        family(
            "spool_batches",
            "gauge",
            "Batches waiting in the spool.",
            &[(String::new(), get(&self.spool_batches))],
        );
        family(
            "spool_bytes",
            "gauge",
            "Bytes of the batches waiting in the spool.",
            &[(String::new(), get(&self.spool_bytes))],
        );
        let _ = writeln!(
            out,
            "# HELP depmap_send_duration_seconds Time of one send attempt.\n# TYPE depmap_send_duration_seconds histogram"
        );
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.send_buckets) {
            let _ = writeln!(
                out,
                "depmap_send_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.send_count);
        let _ = writeln!(
            out,
            "depmap_send_duration_seconds_bucket{{le=\"+Inf\"}} {count}\ndepmap_send_duration_seconds_sum {}\ndepmap_send_duration_seconds_count {count}",
            get(&self.send_micros) as f64 / 1e6
        );
        let agent = self.agent.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (name, v) in agent {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP depmap_{name} Agent self-counter (see README, Self-metrics).\n# TYPE depmap_{name} {kind}\ndepmap_{name} {v}"
            );
        }
        out
    }
}

/// Connections served at once; more are closed at once (counted in the log at debug level).
const MAX_CONNECTIONS: usize = 256;
/// A client has this long to send its request and read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read (request line and headers).
const MAX_REQUEST: usize = 8 << 10;

/// Serves `GET /metrics` on `listener`, on the caller's tokio runtime: one task per
/// connection, at most [`MAX_CONNECTIONS`] at once, each bounded in time ([`IO_TIMEOUT`] for
/// the whole exchange) and size ([`MAX_REQUEST`]), one request per connection.
///
/// Hand-written on tokio instead of tiny_http (used first): tiny_http runs a thread per
/// connection with no timeouts and unbounded request lines — measured (issue 12): 2,000 idle
/// clients made 2,007 threads, 10 × 10 MB request lines 119 MB, one client that pipelined and
/// never read blocked `/metrics` for everyone, and at the task limit its accept thread
/// panicked for good. One fixed endpoint needs only the request line; a full HTTP server
/// crate (hyper and its companions) would be three more dependencies for it.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, never give up.
                tracing::debug!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: too many connections; one closed");
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, answer(conn, &metrics)).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it, then closes.
async fn answer(mut conn: tokio::net::TcpStream, metrics: &Metrics) -> io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_REQUEST {
            return respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "too large\n",
            )
            .await;
        }
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ');
    let (method, target) = (words.next(), words.next());
    let path = target.map(|t| t.split(|b| *b == b'?').next().unwrap_or_default());
    if method == Some(b"GET".as_slice()) && path == Some(b"/metrics".as_slice()) {
        respond(&mut conn, "200 OK", &metrics.render()).await
    } else {
        respond(&mut conn, "404 Not Found", "not found\n").await
    }?;
    conn.shutdown().await
}

async fn respond(conn: &mut tokio::net::TcpStream, status: &str, body: &str) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(body.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_the_text_format() {
        let m = Metrics::new();
        m.count_record("VMConnection");
        m.count_record("VMConnection");
        m.count_drop(DropReason::Full, 10);
        m.observe_send(Duration::from_millis(20));
        m.set_agent(vec![("polls_total", 3), ("sockets", 7)]);
        let text = m.render();
        assert!(text.contains("depmap_records_produced_total{table=\"VMConnection\"} 2\n"));
        assert!(text.contains("depmap_batches_dropped_total{reason=\"spool_full\"} 1\n"));
        assert!(text.contains("depmap_records_dropped_total 10\n"));
        assert!(text.contains("depmap_send_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(text.contains("depmap_send_duration_seconds_bucket{le=\"0.01\"} 0\n"));
        assert!(text.contains("# TYPE depmap_polls_total counter\ndepmap_polls_total 3\n"));
        assert!(text.contains("# TYPE depmap_sockets gauge\ndepmap_sockets 7\n"));
        // Every sample line is `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = l.rsplit_once(' ').unwrap();
            assert!(name.starts_with("depmap_"), "{l}");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
