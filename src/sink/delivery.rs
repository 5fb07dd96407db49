//! At-least-once delivery for the remote sinks: records are batched, every sealed batch is
//! written to the [`Spool`] before anything is sent, and a sender thread sends the spooled
//! batches oldest first, deleting each only after a success answer.
//!
//! * Batching: records wait in memory (per table with `split = "table"`, else together) until
//!   the batch reaches `batch_max_records` or `batch_max_bytes`, or its first record has
//!   waited `batch_max_age` (checked at every poll), or depmap stops. Only then is it a batch:
//!   an id, on disk, `fsync`ed.
//! * Sending: one batch at a time, in order. A success deletes it. A retryable failure
//!   (connection refused or reset, timeout, 408, 429, 5xx) waits — exponential backoff from
//!   1 s with jitter, capped at `max_backoff`, or the server's `Retry-After` when it gave one —
//!   and tries the same batch again, so order is kept through outages. A rejection (another
//!   4xx) is not retried: the batch is set aside (`<spool>/rejected/`) or dropped per
//!   `on_reject`, counted, and logged (once a minute at most).
//! * Bounds: the spool's size and age limits drop the oldest batches, counted and logged.
//! * Stopping: pending records are sealed and spooled; the sender keeps sending — and
//!   retrying, with its backoff — for `shutdown_grace` (a collector that recovers just then
//!   still gets the last window), and whatever is left is sent after the next start.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::encoding::Encoding;
use super::spool::{Batch, ReadError, Segment, Spool};
use super::{Sink, WriteFailure};
use crate::config::DeliveryConfig;
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};
use crate::metrics::DropReason;
use crate::metrics::Metrics;
use crate::records::Record;

/// What became of one attempt to send a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Try again later; `after` is the server's `Retry-After`, when it gave one.
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// Refused for good (a client error other than 408/429): do not send it again.
    Rejected {
        reason: String,
    },
}

/// A way of sending one batch to a collector.
pub trait Transport: Send {
    /// Sends a batch in [`Transport::encoding`].
    fn send(&mut self, batch: &Batch) -> Outcome;
    /// The form records are written in when they join a batch.
    fn encoding(&self) -> Encoding;
    /// Whether batches hold one table each.
    fn per_table(&self) -> bool;
    /// A name for logs (`http`, `clickhouse`).
    fn name(&self) -> &'static str;
}

/// Exponential backoff with jitter: 1 s, 2 s, 4 s ... capped, each × a random 0.5–1.0.
#[derive(Debug, Clone)]
pub struct Backoff {
    failures: u32,
    max: Duration,
}

impl Backoff {
    pub fn new(max: Duration) -> Backoff {
        Backoff { failures: 0, max }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The wait before the next attempt; the server's `Retry-After` wins when given (capped
    /// at ten times the maximum backoff: a hostile answer must not park the sender for days).
    pub fn next(&mut self, retry_after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        if let Some(after) = retry_after {
            return after.min(self.max * 10);
        }
        let base = Duration::from_secs(1)
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(20))
            .min(self.max);
        base.mul_f64(0.5 + fastrand::f64() * 0.5)
    }
}

struct Shared {
    spool: Mutex<Spool>,
    wake: Condvar,
    state: Mutex<SenderState>,
}

#[derive(Default)]
struct SenderState {
    /// Set at shutdown: send until this instant, then stop.
    stop_by: Option<Instant>,
    /// The sender thread has returned.
    finished: bool,
}

/// Marks the sender finished when its thread returns, however it returns.
struct Finished(Arc<Shared>);

impl Drop for Finished {
    fn drop(&mut self) {
        lock(&self.0.state).finished = true;
        self.0.wake.notify_all();
    }
}

/// How long past its deadline a stopping sender may take to notice (between two requests).
const STOP_SLACK: Duration = Duration::from_secs(1);

/// The remote sink: batcher on the caller's side, sender thread behind the spool.
pub struct Delivery {
    shared: Arc<Shared>,
    config: DeliveryConfig,
    per_table: bool,
    encoding: Encoding,
    pending: HashMap<Option<&'static str>, Pending>,
    metrics: Arc<Metrics>,
    sender: Option<JoinHandle<()>>,
    /// Last time a spool drop was logged.
    drop_log: Throttle,
}

struct Pending {
    since: Instant,
    records: usize,
    body: Vec<u8>,
}

impl Delivery {
    /// Opens the spool (replaying what an earlier run left) and starts the sender thread.
    pub fn start(
        spool: Spool,
        transport: Box<dyn Transport>,
        config: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> io::Result<Delivery> {
        let per_table = transport.per_table();
        let encoding = transport.encoding();
        if !spool.is_empty() {
            tracing::info!(
                batches = spool.len(),
                bytes = spool.bytes(),
                dir = %spool.dir().display(),
                "spooled batches from an earlier run will be sent first"
            );
        }
        metrics.set_spool(spool.len() as u64, spool.bytes());
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            wake: Condvar::new(),
            state: Mutex::new(SenderState::default()),
        });
        let sender = {
            let shared = shared.clone();
            let metrics = metrics.clone();
            let config = config.clone();
            std::thread::Builder::new()
                .name("depmap-send".into())
                .spawn(move || {
                    let _finished = Finished(shared.clone());
                    send_loop(&shared, transport, &config, &metrics)
                })?
        };
        Ok(Delivery {
            shared,
            config,
            per_table,
            encoding,
            pending: HashMap::new(),
            metrics,
            sender: Some(sender),
            drop_log: Throttle::new(PROBLEM_LOG_INTERVAL),
        })
    }

    /// Seals the pending batch of `key` into the spool.
    fn seal(&mut self, key: Option<&'static str>) -> Result<(), WriteFailure> {
        let Some(p) = self.pending.remove(&key) else {
            return Ok(());
        };
        if p.records == 0 {
            return Ok(());
        }
        let batch = Batch {
            id: uuid::Uuid::new_v4().to_string(),
            table: key.map(str::to_string),
            records: p.records,
            created: SystemTime::now(),
            encoding: self.encoding,
            body: p.body,
        };
        let dropped = {
            let mut spool = lock(&self.shared.spool);
            let dropped = spool.push(&batch).map_err(|source| WriteFailure {
                records_lost: batch.records,
                source,
            })?;
            self.metrics.set_spool(spool.len() as u64, spool.bytes());
            dropped
        };
        self.metrics.batches_spooled.inc();
        self.report_drops(&dropped);
        self.shared.wake.notify_all();
        Ok(())
    }

    fn report_drops(&mut self, dropped: &[(DropReason, usize)]) {
        if dropped.is_empty() {
            return;
        }
        for (reason, records) in dropped {
            self.metrics.count_drop(*reason, *records);
        }
        if let Some(more) = self.drop_log.ready() {
            tracing::warn!(
                batches = dropped.len(),
                max_bytes = self.config.spool_max_bytes,
                also_since_last_log = more,
                "spool full: the oldest batches were dropped unsent (counted in depmap_batches_dropped_total)"
            );
        }
    }

    /// Seals every pending batch; those the spool refused are lost (counted together).
    fn seal_all(&mut self) -> Result<(), WriteFailure> {
        let keys: Vec<Option<&'static str>> = self.pending.keys().copied().collect();
        let mut failure: Option<WriteFailure> = None;
        for k in keys {
            if let Err(e) = self.seal(k) {
                WriteFailure::add(&mut failure, e);
            }
        }
        failure.map_or(Ok(()), Err)
    }
}

impl Sink for Delivery {
    fn write(&mut self, batch: &[Record]) -> Result<(), WriteFailure> {
        let mut full = Vec::new();
        let mut failure: Option<WriteFailure> = None;
        for r in batch {
            let key = self.per_table.then(|| r.table().name());
            let p = self.pending.entry(key).or_insert_with(|| Pending {
                since: Instant::now(),
                records: 0,
                body: Vec::new(),
            });
            if !self.encoding.encode(r, &mut p.body) {
                continue;
            }
            p.records += 1;
            if p.records >= self.config.batch_max_records
                || p.body.len() >= self.config.batch_max_bytes
            {
                full.push(key);
            }
            for k in full.drain(..) {
                if let Err(e) = self.seal(k) {
                    WriteFailure::add(&mut failure, e);
                }
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn tick(&mut self) -> Result<(), WriteFailure> {
        let max_age = self.config.batch_max_age;
        let due: Vec<Option<&'static str>> = self
            .pending
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= max_age)
            .map(|(k, _)| *k)
            .collect();
        let mut failure: Option<WriteFailure> = None;
        for k in due {
            if let Err(e) = self.seal(k) {
                WriteFailure::add(&mut failure, e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    fn close(&mut self) -> Result<(), WriteFailure> {
        self.stop(self.config.shutdown_grace)
    }

    fn hand_over(&mut self) -> Result<(), WriteFailure> {
        self.stop(Duration::ZERO)
    }
}

impl Delivery {
    /// Seals what is pending into the spool, lets the sender go on for `grace`, and waits for
    /// it at most `grace` + [`STOP_SLACK`]: a request still in flight then (a hanging
    /// collector, a long `timeout`) is left behind — its batch stays spooled and is sent again
    /// after the next start — so that stop and reload never wait for the network (issue 12:
    /// SIGTERM took the request timeout, 30.9 s, not `shutdown_grace`).
    fn stop(&mut self, grace: Duration) -> Result<(), WriteFailure> {
        let sealed = self.seal_all();
        let deadline = Instant::now() + grace + STOP_SLACK;
        {
            let mut state = lock(&self.shared.state);
            state.stop_by = Some(Instant::now() + grace);
            self.shared.wake.notify_all();
            while !state.finished {
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = match self.shared.wake.wait_timeout(state, left) {
                    Ok((s, _)) => s,
                    Err(e) => e.into_inner().0,
                };
            }
        }
        if let Some(t) = self.sender.take() {
            if lock(&self.shared.state).finished {
                let _ = t.join();
            } else {
                tracing::warn!(
                    grace = ?grace,
                    "a send is still in flight; its batch stays spooled and is sent after the next start"
                );
            }
        }
        let left = lock(&self.shared.spool).len();
        if left > 0 {
            tracing::info!(
                batches = left,
                "unsent batches stay in the spool and are sent after the next start"
            );
        }
        sealed
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.sender.is_some() {
            let _ = self.close();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not stop delivery: the data behind the lock is still whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps up to `d`, returning early when woken for shutdown; true when stopping is due.
fn pause(shared: &Shared, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut state = lock(&shared.state);
    loop {
        if let Some(by) = state.stop_by {
            return Instant::now() >= by || deadline >= by;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        state = match shared.wake.wait_timeout(state, deadline - now) {
            Ok((s, _)) => s,
            Err(e) => e.into_inner().0,
        };
    }
}

fn stopping_now(shared: &Shared) -> bool {
    lock(&shared.state)
        .stop_by
        .is_some_and(|by| Instant::now() >= by)
}

fn send_loop(
    shared: &Shared,
    mut transport: Box<dyn Transport>,
    config: &DeliveryConfig,
    metrics: &Metrics,
) {
    let mut backoff = Backoff::new(config.max_backoff);
    let mut retry_log = Throttle::new(PROBLEM_LOG_INTERVAL);
    let mut reject_log = Throttle::new(PROBLEM_LOG_INTERVAL);
    loop {
        if stopping_now(shared) {
            return;
        }
        let next: Option<Segment> = {
            let mut spool = lock(&shared.spool);
            for (reason, records) in spool.expire(SystemTime::now()) {
                metrics.count_drop(reason, records);
                tracing::warn!(
                    max_age = ?config.spool_max_age,
                    "a spooled batch expired unsent (counted in depmap_batches_dropped_total)"
                );
            }
            metrics.set_spool(spool.len() as u64, spool.bytes());
            spool.oldest()
        };
        let Some(seg) = next else {
            // Nothing to send: wait for a batch, or for shutdown.
            let state = lock(&shared.state);
            if state.stop_by.is_some() {
                return;
            }
            let _ = shared.wake.wait_timeout(state, Duration::from_secs(1));
            continue;
        };
        let read = lock(&shared.spool).read(seg);
        let mut batch = match read {
            Ok(b) => b,
            Err(e @ ReadError::Corrupt(_)) => {
                tracing::error!(error = %e, "a spooled batch failed its checksum; moved to corrupt/");
                metrics.count_drop(DropReason::Corrupt, 0);
                lock(&shared.spool).quarantine(seg);
                continue;
            }
            Err(e) => {
                // Dropped to make room since we looked, or the disk failed: skip it.
                tracing::debug!(error = %e, "spooled batch unreadable");
                lock(&shared.spool).remove(seg);
                continue;
            }
        };
        if batch.encoding != transport.encoding() {
            // An earlier depmap's segment (`records`): converted once, here.
            batch.body = transport.encoding().from_records(&batch.body);
            batch.encoding = transport.encoding();
        }
        let began = Instant::now();
        // A bug in a transport or a library under it must not end delivery: the batch stays
        // spooled and is tried again.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            transport.send(&batch)
        }))
        .unwrap_or_else(|_| {
            tracing::error!(
                sink = transport.name(),
                "internal error while sending (a panic, printed above); the batch stays spooled"
            );
            Outcome::Retry {
                after: None,
                reason: "internal error".into(),
            }
        });
        metrics.observe_send(began.elapsed());
        match outcome {
            Outcome::Delivered => {
                let mut spool = lock(&shared.spool);
                spool.remove(seg);
                metrics.set_spool(spool.len() as u64, spool.bytes());
                metrics.batches_sent.inc();
                metrics.records_sent.inc_by(batch.records as u64);
                if backoff.failures > 0 {
                    tracing::info!(
                        sink = transport.name(),
                        "the collector accepts batches again"
                    );
                }
                backoff.reset();
            }
            Outcome::Retry { after, reason } => {
                metrics.batches_retried.inc();
                let wait = backoff.next(after);
                if let Some(more) = retry_log.ready() {
                    tracing::warn!(
                        sink = transport.name(),
                        %reason,
                        retry_in = ?wait,
                        also_since_last_log = more,
                        "sending failed; batches stay spooled and are retried in order"
                    );
                }
                if pause(shared, wait) {
                    return;
                }
            }
            Outcome::Rejected { reason } => {
                metrics.batches_rejected.inc();
                let aside = config.on_reject == crate::config::OnReject::SetAside;
                {
                    let mut spool = lock(&shared.spool);
                    if aside {
                        spool.set_aside(seg, "rejected");
                    } else {
                        spool.remove(seg);
                    }
                    metrics.set_spool(spool.len() as u64, spool.bytes());
                }
                if let Some(more) = reject_log.ready() {
                    tracing::error!(
                        sink = transport.name(),
                        %reason,
                        batch = %batch.id,
                        records = batch.records,
                        set_aside = aside,
                        also_since_last_log = more,
                        "the collector rejected a batch; it is not retried (counted in depmap_batches_rejected_total)"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_retry_after_wins() {
        let mut b = Backoff::new(Duration::from_secs(8));
        let waits: Vec<Duration> = (0..6).map(|_| b.next(None)).collect();
        for (w, base) in waits.iter().zip([1u64, 2, 4, 8, 8, 8]) {
            let base = Duration::from_secs(base);
            assert!(*w >= base / 2 && *w <= base, "{w:?} vs {base:?}");
        }
        assert_eq!(b.next(Some(Duration::from_secs(3))), Duration::from_secs(3));
        assert_eq!(
            b.next(Some(Duration::from_secs(86_400))),
            Duration::from_secs(80)
        );
        b.reset();
        assert!(b.next(None) <= Duration::from_secs(1));
    }
}
