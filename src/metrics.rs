//! Self-metrics: what depmap produced, sent, retried, spooled and dropped, how long sends take,
//! and the agent's own counters (polls, destroy notifications lost, shedding), served in the
//! Prometheus text format on `metrics.listen` (off by default; a local address is the norm).
//!
//! Counters are prometheus-client metrics (handles on shared atomics) updated by the poll loop
//! and the sender thread; its registry encodes them for the server tasks (text format 0.0.4).
//! The agent's own counters, a set the agent names, are encoded by a collector as they were at
//! the last poll. Every loss path has a counter: `depmap_batches_dropped_total{reason}`,
//! `depmap_batches_rejected_total`, `depmap_destroy_overruns_total`, `depmap_shed_*_total`,
//! `depmap_sink_write_failures_total`.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::records::{TABLES, Table};

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

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::Full,
        DropReason::TooOld,
        DropReason::Corrupt,
        DropReason::Unwritable,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::Full => "spool_full",
            DropReason::TooOld => "too_old",
            DropReason::Corrupt => "corrupt",
            DropReason::Unwritable => "unwritable",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Every counter and gauge, and the registry that encodes them (prometheus-client; each
/// metric is a handle on shared atomics, so the registry's copies move with these).
#[derive(Debug)]
pub struct Metrics {
    /// One counter per table, in [`TABLES`] order (handles on the family's series).
    records_produced: [Counter; 4],
    pub batches_spooled: Counter,
    pub batches_sent: Counter,
    pub records_sent: Counter,
    /// Failed attempts that will be retried.
    pub batches_retried: Counter,
    pub batches_rejected: Counter,
    /// One counter per [`DropReason`], in [`DropReason::ALL`] (declaration) order.
    batches_dropped: [Counter; 4],
    records_dropped: Counter,
    spool_batches: Gauge<u64, AtomicU64>,
    spool_bytes: Gauge<u64, AtomicU64>,
    pub sink_write_failures: Counter,
    send_duration: Histogram,
    /// The agent's counters as of its last poll (`Agent::self_counters`).
    agent: Arc<AgentCounters>,
    registry: Registry,
}

/// The agent's own counters, a set that the agent names: encoded as they are at each scrape
/// (counters for names ending in `_total`, gauges for the others).
#[derive(Debug, Default)]
struct AgentCounters(Mutex<Vec<(&'static str, u64)>>);

impl Collector for AgentCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counters = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let help = "Agent self-counter (see README, Self-metrics)";
        for (name, v) in counters {
            // The encoder adds `_total` to a counter's name.
            if let Some(counter) = name.strip_suffix("_total") {
                let c = ConstCounter::new(v);
                c.encode(encoder.encode_descriptor(counter, help, None, c.metric_type())?)?;
            } else {
                let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("depmap");
        // Every label value present from the start, at 0: a rate over a new series works.
        let produced = Family::<TableLabel, Counter>::default();
        let dropped = Family::<ReasonLabel, Counter>::default();
        let m = Metrics {
            records_produced: TABLES
                .map(|table| produced.get_or_create(&TableLabel { table }).clone()),
            batches_spooled: Counter::default(),
            batches_sent: Counter::default(),
            records_sent: Counter::default(),
            batches_retried: Counter::default(),
            batches_rejected: Counter::default(),
            batches_dropped: DropReason::ALL.map(|r| {
                dropped
                    .get_or_create(&ReasonLabel { reason: r.label() })
                    .clone()
            }),
            records_dropped: Counter::default(),
            spool_batches: Gauge::default(),
            spool_bytes: Gauge::default(),
            sink_write_failures: Counter::default(),
            send_duration: Histogram::new(LATENCY_BUCKETS),
            agent: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_produced",
            "Records handed to the sink, by table",
            produced,
        );
        for (name, help, c) in [
            (
                "batches_spooled",
                "Batches written to the spool",
                &m.batches_spooled,
            ),
            (
                "batches_sent",
                "Batches the collector acknowledged",
                &m.batches_sent,
            ),
            (
                "records_sent",
                "Records in acknowledged batches",
                &m.records_sent,
            ),
            (
                "batches_retried",
                "Failed send attempts that will be retried",
                &m.batches_retried,
            ),
            (
                "batches_rejected",
                "Batches the collector refused for good (4xx), not retried",
                &m.batches_rejected,
            ),
            (
                "records_dropped",
                "Records in batches dropped unsent",
                &m.records_dropped,
            ),
            (
                "sink_write_failures",
                "Batches the sink could not take (disk full, spool unwritable)",
                &m.sink_write_failures,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        registry.register(
            "batches_dropped",
            "Batches dropped unsent, by reason",
            dropped,
        );
        registry.register(
            "spool_batches",
            "Batches waiting in the spool",
            m.spool_batches.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of the batches waiting in the spool",
            m.spool_bytes.clone(),
        );
        registry.register(
            "send_duration_seconds",
            "Time of one send attempt",
            m.send_duration.clone(),
        );
        registry.register_collector(Box::new(m.agent.clone()));
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn count_record(&self, table: Table) {
        self.records_produced[table as usize].inc();
    }

    pub fn count_drop(&self, reason: DropReason, records: usize) {
        self.batches_dropped[reason as usize].inc();
        self.records_dropped.inc_by(records as u64);
    }

    pub fn set_spool(&self, batches: u64, bytes: u64) {
        self.spool_batches.set(batches);
        self.spool_bytes.set(bytes);
    }

    pub fn observe_send(&self, d: Duration) {
        self.send_duration.observe(d.as_secs_f64());
    }

    pub fn set_agent(&self, counters: Vec<(&'static str, u64)>) {
        *self.agent.0.lock().unwrap_or_else(|e| e.into_inner()) = counters;
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String fails only on a bug in an encoder: the scrape gets what was
        // written.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "metrics could not all be encoded");
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
        "HTTP/1.1 {status}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
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
        m.count_record(Table::Connection);
        m.count_record(Table::Connection);
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
