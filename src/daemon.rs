//! `depmap run`: the daemon loop. Sleep to the next tick, poll (full dump or hot poll),
//! close the window at its end, re-emit the inventory when due, hand every batch to the sink;
//! tell the service manager it is ready (after the first poll) and alive (after each poll);
//! apply a reloaded configuration (SIGHUP) or stop (SIGTERM), flushing the current window.

use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, SystemTime};

use crate::agent::Agent;
use crate::config::Config;
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};
use crate::metrics::DropReason;
use crate::metrics::Metrics;
use crate::records::Record;
use crate::schedule::{Woke, wait_tick};
use crate::service::ServiceManager;
use crate::sink::{self, Sink, WriteFailure};
use crate::track::window::window_start;

/// What the signal handlers ask of the loop.
pub enum Control {
    /// SIGTERM/SIGINT: flush the current window and the sink, then return.
    Stop,
    /// SIGHUP with a configuration that parsed and validated.
    Reload(Box<Config>),
}

/// Hands batches to the sink. A failed write is counted (batches, and the records lost:
/// `depmap_records_dropped_total`, `depmap_batches_dropped_total{reason="unwritable"}`) and
/// logged — the first failure of an episode at once, then once a minute at most, and the
/// recovery when writes succeed again — and the agent keeps collecting: a full disk or a
/// dead collector must not stop the agent.
struct Output {
    sink: Box<dyn Sink>,
    metrics: Arc<Metrics>,
    failed_batches: u64,
    failed_records: u64,
    /// Failed writes since the last success (the current episode).
    failing: u64,
    failures_log: Throttle,
}

impl Output {
    fn new(sink: Box<dyn Sink>, metrics: Arc<Metrics>) -> Output {
        Output {
            sink,
            metrics,
            failed_batches: 0,
            failed_records: 0,
            failing: 0,
            failures_log: Throttle::new(PROBLEM_LOG_INTERVAL),
        }
    }

    fn send(&mut self, batch: Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        // Produced = handed to the sink, whatever its kind (delivery is counted apart).
        for r in &batch {
            self.metrics.count_record(r.table());
        }
        let written = self.sink.write(&batch);
        self.outcome(written);
    }

    /// Every poll: lets a remote sink seal batches that have waited long enough.
    fn tick(&mut self) {
        let sealed = self.sink.tick();
        self.outcome(sealed);
    }

    fn close(&mut self) {
        let closed = self.sink.close();
        self.outcome(closed);
    }

    /// A reload replaces the sink: the old one hands over without waiting for the network.
    fn replace(&mut self, fresh: Box<dyn Sink>) {
        let handed = self.sink.hand_over();
        self.outcome(handed);
        self.sink = fresh;
    }

    fn outcome(&mut self, result: Result<(), WriteFailure>) {
        let e = match result {
            Ok(()) => {
                if self.failing > 0 {
                    tracing::info!(
                        failed_writes = std::mem::take(&mut self.failing),
                        "the sink writes again"
                    );
                    self.failures_log = Throttle::new(PROBLEM_LOG_INTERVAL);
                }
                return;
            }
            Err(e) => e,
        };
        self.failing += 1;
        self.failed_batches += 1;
        self.failed_records += e.records_lost as u64;
        self.metrics.sink_write_failures.inc();
        self.metrics
            .count_drop(DropReason::Unwritable, e.records_lost);
        if let Some(more) = self.failures_log.ready() {
            tracing::error!(
                error = %e,
                failed_batches = self.failed_batches,
                failed_records = self.failed_records,
                also_since_last_log = more,
                "the sink could not write a batch; its records are lost"
            );
        }
    }
}

/// Runs windows until `control` says stop (or its sender is dropped), then flushes the
/// current window and the sink.
pub fn run_loop(
    agent: &mut Agent,
    sink: Box<dyn Sink>,
    control: &Receiver<Control>,
    metrics: Arc<Metrics>,
) {
    let mut service = ServiceManager::from_env();
    let mut out = Output::new(sink, metrics.clone());
    agent.poll();
    // Scrapes between READY and the first tick see the baseline poll, not an empty registry.
    metrics.set_agent(agent.self_counters());
    let now = SystemTime::now();
    out.send(agent.inventory(now));
    // The running [collect] settings; replaced only by a reload.
    let mut collect = agent.config().collect.clone();
    let mut window = window_start(now, collect.window);
    let mut next_inventory = now + collect.inventory_interval;
    let source = agent.source_in_use();
    tracing::info!(window = ?collect.window, poll = ?collect.socket_poll, source, "depmap running");
    service.ready(&format!(
        "first poll done: {} sockets; {source}",
        agent.counters.sockets_last_poll
    ));
    loop {
        // Sleep to the next tick (multiples of the tick since the epoch), or act on a signal.
        // A tick is a full dump at multiples of the full-dump period, else a hot poll.
        let (stopping, tick) = match wait_tick(agent.tick(), control, None) {
            Woke::Tick(tick) => (false, tick),
            Woke::Message(Control::Reload(config)) => {
                service.reloading();
                let outcome = reload(agent, &mut out, &config, &mut window);
                let now = SystemTime::now();
                collect = agent.config().collect.clone();
                next_inventory = now + collect.inventory_interval;
                service.reloaded(&format!(
                    "{outcome} at {}",
                    humantime::format_rfc3339_seconds(now)
                ));
                continue;
            }
            // (No deadline is given here: `Deadline` cannot come.)
            Woke::Message(Control::Stop) | Woke::Disconnected | Woke::Deadline => {
                (true, SystemTime::now())
            }
        };
        if stopping {
            service.stopping();
            agent.last_poll();
        } else if !agent.poll_at(tick) {
            service.alive();
            metrics.set_agent(agent.self_counters());
            out.tick();
            continue;
        }
        service.alive();
        let now = SystemTime::now();
        metrics.set_agent(agent.self_counters());
        out.send(agent.new_process_records(now));
        // A window closes at its end, at shutdown, and when the clock stepped backwards.
        if stopping || now >= window_end(window, collect.window) || now < window {
            out.send(agent.close_window(window));
            window = window_start(now, collect.window);
        }
        if stopping {
            out.close();
            tracing::info!(summary = %agent.loss_summary(), "stopped; current window flushed");
            return;
        }
        if now >= next_inventory || now + collect.inventory_interval < next_inventory {
            out.send(agent.inventory(now));
            next_inventory = now + collect.inventory_interval;
        }
        out.tick();
    }
}

/// Applies a reloaded configuration: the sink is rebuilt when its settings changed (a new
/// sink that cannot be built leaves the old one in place; a new one gets the inventory at
/// once), and the agent takes the new schedule. The current window goes on (its records go
/// to the sink in use at its end): closing it here and opening one at the same aligned start
/// wrote a second record per connection with the same TimeGenerated at every reload (issue
/// 12). Only a new `collect.window` closes it, and the next window then starts now (one
/// partial window), realigned from the one after. Returns the outcome for the status line.
fn reload(agent: &mut Agent, out: &mut Output, new: &Config, window: &mut SystemTime) -> String {
    let mut outcome = String::from("configuration reloaded");
    agent.poll();
    out.send(agent.new_process_records(SystemTime::now()));
    if new.collect.window != agent.config().collect.window {
        out.send(agent.close_window(*window));
        *window = SystemTime::now();
    }
    if new.sink != agent.config().sink {
        match sink::build(new, out.metrics.clone()) {
            Ok(fresh) => {
                out.replace(fresh);
                agent.set_sink_config(new.sink.clone());
                tracing::info!(kind = ?new.sink.kind, "sink rebuilt from the reloaded configuration");
                // A new destination gets the inventory now, not at the next interval.
                out.send(agent.inventory(SystemTime::now()));
            }
            Err(e) => {
                tracing::error!(error = %e, "the reloaded sink settings do not work; keeping the running sink");
                outcome = format!("configuration reloaded, but not the sink ({e})");
            }
        }
    }
    let restart = agent.reconfigure(new);
    if restart.is_empty() {
        tracing::info!("configuration reloaded");
    } else {
        tracing::warn!(
            keys = ?restart,
            "configuration reloaded; these changes take effect at the next restart"
        );
        outcome = format!("{outcome}; restart to apply {}", restart.join(", "));
    }
    outcome
}

/// The end of the window that began at `start`: the next aligned boundary (a partial window,
/// begun at a reload that changed the window's length, ends where the aligned ones do).
fn window_end(start: SystemTime, len: Duration) -> SystemTime {
    window_start(start, len) + len
}
