//! The agent: one poll of the kernel and the window it fills (`daemon` runs the loop).
//!
//! A poll is: kernel events (owners, response times) → process events → sock_diag dump
//! (IPv4, IPv6) → map new socket inodes to processes → update the socket tracker → apply
//! destroy notifications. With the kernel event source, the ticks between full dumps are
//! light polls (events, process events, destroy notifications: no dump). At each window
//! boundary the tracker's sums become VMConnection and VMBoundPort records; inventory records
//! are produced at start, every `inventory_interval`, and when a new process pool appears.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::collect::destroy::Final;
use crate::collect::ebpf::KernelEvent;
use crate::collect::host::HostFacts;
use crate::collect::sockdiag::{TcpSample, UdpSample};
use crate::collect::sources::{Availability, Sources};
use crate::collect::udp_flows::{FlowCounts, FlowKey};
use crate::config::{Config, ProcessScope, SinkKind};
use crate::enrich::Enricher;
use crate::identity::{self, Identity};
use crate::inventory::{self, Inventory};
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};
use crate::records::{Record, window};
use crate::schedule::{PollSchedule, Woke, process_cpu, thread_cpu, wait_tick};
use crate::track::attribution::Attribution;
use crate::track::ports::bound_ports;
use crate::track::sockets::{
    ConnKey, Direction, Known, PoolId, Protocol, SocketTracker, fin_received_in,
};
use crate::track::udp::UdpTracker;

mod udp;

/// A socket of this poll waiting for its process: (index in the dump, what the tracker knew,
/// FIN received).
type Waiting = (usize, Known, bool);

/// Longest wait at stop for the destroy notifications of sockets closed just before it.
const LAST_FINALS_WAIT: Duration = Duration::from_millis(500);

/// With the event source, how old a destroy notification must be before it is applied: by
/// then the events of its socket (its owner, its last response times) have been drained
/// (the reader drains at least every `collect::ebpf::DRAIN_PERIOD`, 200 ms), so a close never
/// overtakes its socket's events.
const FINAL_SETTLE_MS: u64 = 2 * crate::collect::ebpf::DRAIN_PERIOD.as_millis() as u64;

/// Longest wait before a full dump for the event reader to drain the ring.
const EVENTS_BEFORE_DUMP_WAIT: Duration = Duration::from_millis(100);
/// Longest wait at stop for the event reader to drain what the kernel queued.
const LAST_EVENTS_WAIT: Duration = Duration::from_secs(1);

/// Most process-event pids kept between full dumps as hints for the next /proc walk.
const HINTS_MAX: usize = 4096;

pub use crate::collect::sources::StartError;

/// What depmap can see on this host, and why not where it cannot.
#[derive(Debug, Clone)]
pub struct Capabilities {
    pub sock_diag: Availability,
    pub sock_diag_v6: Availability,
    pub destroy_events: Availability,
    pub proc_connector: Availability,
    /// The eBPF event source, and its response timing.
    pub kernel_events: Availability,
    pub event_timing: Availability,
    /// Processes whose fd table we could read, of all processes.
    pub proc_fd_readable: (usize, usize),
    /// Receive buffer of the destroy-notification socket (0: no subscription).
    pub destroy_rcvbuf: usize,
    /// Azure Instance Metadata: what was found, or why it was not asked or did not answer.
    pub azure_metadata: Availability,
    /// Passive DNS capture, or why it does not run.
    pub dns_capture: Availability,
    /// Other network namespaces (`collect.namespaces`): how many are followed, or why none.
    pub namespaces: Availability,
    /// UDP bound ports from the dumps (`collect.udp`).
    pub udp_ports: Availability,
    /// UDP flows from the event source's cgroup programs.
    pub udp_flows: Availability,
}

/// Counters of the agent's own work and losses.
#[derive(Debug, Default, Clone, Copy)]
pub struct AgentCounters {
    pub polls: u64,
    pub sockets_last_poll: u64,
    pub last_poll_micros: u64,
    pub hot_lookups: u64,
    /// Current period of full dumps (stretched by `collect.cpu_budget`), milliseconds.
    pub full_poll_period_ms: u64,
    /// Connections (links established or failed) reported without a process.
    pub unattributed_links: u64,
}

pub struct Agent {
    config: Config,
    pub identity: Identity,
    /// The kernel readers: dumps, lookups, closes, process changes.
    sources: Sources,
    /// Whose socket: inode → processes → pools, listeners, acceptors.
    attribution: Attribution,
    tracker: SocketTracker,
    /// Package database, boot clock, Azure metadata: what inventory records are made of.
    inventory: Inventory,
    /// The latest dump's sockets (a buffer reused from poll to poll).
    samples: Vec<TcpSample>,
    /// The last UDP dump's bound ports (reused buffer), and every UDP socket of it by cookie
    /// (inode, uid): the holders of UDP flows.
    udp_ports: Vec<UdpSample>,
    udp_sockets: HashMap<u64, (u32, u32)>,
    /// Without flow counters: the last UDP dump's connected sockets (the polling path's UDP
    /// flows), and whether that dump was complete.
    udp_connected: Vec<UdpSample>,
    udp_dump_complete: bool,
    /// UDP flows (with the event source's UDP programs, else from connected sockets), and
    /// the last read (reused buffer).
    udp: UdpTracker,
    udp_read: Vec<(FlowKey, FlowCounts)>,
    /// When the flow map was last read.
    udp_read_at: Option<Instant>,
    /// This poll's sockets waiting for their process (a buffer reused from poll to poll).
    waiting: Vec<Waiting>,
    /// Sockets re-read between full dumps for response times (active in the last dump).
    hot: Vec<TcpSample>,
    /// When full and hot polls happen, within the CPU budget.
    schedule: PollSchedule,
    /// Threat indicators (and later other sources) for the records.
    enricher: Enricher,
    /// CPU time spent applying destroy notifications since the last full poll was scheduled.
    destroys_cpu: Duration,
    /// Pids that started since the last full dump (read first by its /proc walk).
    hints: Vec<u32>,
    /// Destroy notifications waiting for their socket's events (see [`FINAL_SETTLE_MS`]).
    settling: Vec<(Final, u64)>,
    /// Processes whose fd table could be read at start, of all processes.
    proc_fd_readable: (usize, usize),
    pub counters: AgentCounters,
    /// Recurring problems, logged once per interval.
    period_log: Throttle,
    reported_shed: (u64, u64, u64),
    shed_log: Throttle,
}

impl Agent {
    /// Opens the kernel interfaces. Fails only when sock_diag itself is unusable; everything
    /// else degrades and is reported in [`Capabilities`].
    pub fn start(config: Config) -> Result<Agent, StartError> {
        let sources = Sources::open(
            config.collect.ipv6,
            config.collect.events,
            config.collect.namespaces,
            config.collect.udp,
        )?;
        let facts = HostFacts::read();
        let agent_id = identity::agent_id(
            &config.agent.agent_id,
            std::path::Path::new("/etc/machine-id"),
            &config.agent.state_dir,
        );
        let mut identity = Identity::new(
            agent_id,
            inventory::computer_name(&config.agent.computer, &facts),
        );
        let inventory = Inventory::start(&config.enrich, &facts, &mut identity);
        let proc_root = PathBuf::from("/proc");
        let enricher = Enricher::new(&config.enrich);
        let mut tracker = SocketTracker::with_cap(config.collect.max_connections);
        tracker.time_by_events(sources.events_timing());
        let schedule = schedule(&config.collect, &sources);
        Ok(Agent {
            proc_fd_readable: proc_fd_readable(&proc_root),
            sources,
            attribution: Attribution::new(
                identity.machine.clone(),
                proc_root,
                config.collect.max_pools,
            ),
            identity,
            tracker,
            inventory,
            samples: Vec::new(),
            udp_ports: Vec::new(),
            udp_sockets: HashMap::new(),
            udp_connected: Vec::new(),
            udp_dump_complete: true,
            udp: UdpTracker::new(crate::collect::udp_flows::MAX_UDP_FLOWS as usize),
            udp_read: Vec::new(),
            udp_read_at: None,
            waiting: Vec::new(),
            hot: Vec::new(),
            counters: AgentCounters::default(),
            schedule,
            enricher,
            destroys_cpu: Duration::ZERO,
            hints: Vec::new(),
            settling: Vec::new(),
            period_log: Throttle::new(PROBLEM_LOG_INTERVAL),
            reported_shed: (0, 0, 0),
            shed_log: Throttle::new(PROBLEM_LOG_INTERVAL),
            config,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Records the sink settings now in use (after a reload rebuilt the sink).
    pub fn set_sink_config(&mut self, sink: crate::config::SinkConfig) {
        self.config.sink = sink;
    }

    /// What depmap can see on this host, and why not where it cannot.
    pub fn capabilities(&self) -> Capabilities {
        let s = &self.sources.status;
        Capabilities {
            sock_diag: s.sock_diag.clone(),
            sock_diag_v6: s.sock_diag_v6.clone(),
            destroy_events: s.destroy_events.clone(),
            proc_connector: s.proc_connector.clone(),
            kernel_events: s.kernel_events.clone(),
            event_timing: s.event_timing.clone(),
            proc_fd_readable: self.proc_fd_readable,
            destroy_rcvbuf: s.destroy_rcvbuf,
            azure_metadata: self.inventory.azure_metadata.clone(),
            dns_capture: self.enricher.dns_status.clone(),
            namespaces: s.namespaces.clone(),
            udp_ports: if self.config.collect.udp {
                Availability::YES
            } else {
                Availability::Unavailable("off (collect.udp = false)".into())
            },
            udp_flows: self.sources.udp_flows_status(),
        }
    }

    /// Waits (at most `limit`) for the process-event subscription's outcome (for `once`'s
    /// capability report; the daemon never waits for it).
    pub fn settle_proc_events(&mut self, limit: Duration) {
        self.sources.settle_proc_events(limit);
    }

    /// What finds owners and times exchanges here, in a few words (the start-up line, the
    /// service status).
    pub fn source_in_use(&self) -> &'static str {
        match (self.sources.events_active(), self.sources.events_timing()) {
            (true, true) => "kernel events (owners, response times) and a dump per window",
            (true, false) => {
                "kernel events (owners) and a dump per window; tcp_info response times"
            }
            (false, _) => "polling (sock_diag dumps, /proc, tcp_info response times)",
        }
    }

    /// The loop's tick (hot polls, or full and light polls, happen on its multiples).
    pub fn tick(&self) -> Duration {
        self.schedule.tick()
    }

    /// Applies the kernel events queued since the last poll: an owner goes to its socket if
    /// it is tracked without one, else waits for it (a socket not seen yet); a response time
    /// goes to its socket's window.
    fn apply_kernel_events(&mut self) {
        let now = Instant::now();
        for event in self.sources.kernel_events() {
            match event {
                KernelEvent::Owner {
                    cookie,
                    role,
                    process,
                } => {
                    let pool = self.attribution.event_pool(&process);
                    match self.tracker.known(cookie) {
                        Known::New => self.attribution.remember_owner(cookie, role, pool, now),
                        Known::Unattributed => {
                            if let Some(pool) = pool {
                                self.tracker.attribute(cookie, pool);
                            }
                        }
                        Known::Attributed => {}
                    }
                }
                KernelEvent::Response { cookie, micros } => {
                    self.tracker.response_measured(cookie, micros)
                }
                // Kept by the sources for the socket's destroy notification.
                KernelEvent::Closed { .. } => {}
                KernelEvent::UdpResponse { flow, micros } => {
                    let at = self.sources.clock_ms();
                    self.udp.response_measured(flow, micros, at)
                }
            }
        }
    }

    /// The process changes since the last poll: exits leave the caches, starts are hints.
    fn apply_proc_changes(&mut self) {
        for change in self.sources.proc_changes() {
            self.attribution.process_changed(change, &mut self.hints);
        }
        if self.hints.len() > HINTS_MAX {
            self.hints.drain(..self.hints.len() - HINTS_MAX);
        }
    }

    /// A light poll (with the event source, between full dumps): events, process changes and
    /// destroy notifications, no dump.
    pub fn poll_light(&mut self) {
        self.apply_kernel_events();
        self.apply_proc_changes();
        self.apply_destroys(false, true);
        self.apply_udp_flows(false);
        self.report_shedding();
        self.counters.polls += 1;
    }

    /// One poll; see the module comment for the steps.
    pub fn poll(&mut self) {
        let started = Instant::now();
        // The owners of the sockets this dump may see first wait in the ring for the next
        // drain (up to 200 ms): drained now, a window's last dump never keys a socket without
        // the owner its event named (measured: 1 of 600 short connections without it).
        self.sources.drain_events_now(EVENTS_BEFORE_DUMP_WAIT);
        self.apply_kernel_events();
        self.apply_proc_changes();
        let hints = std::mem::take(&mut self.hints);
        let baseline_poll = !self.tracker.baseline_done();
        let mut samples = std::mem::take(&mut self.samples);
        let dump = self.sources.dump(&mut samples);
        self.dump_udp();
        let waiting = self.observe_attributed(&samples, dump.at_ms);
        self.resolve_processes(&samples, &waiting, hints);
        self.drain_for_unheld(&samples, &waiting);
        self.observe_waiting(&samples, &waiting, dump.at_ms);
        self.apply_udp_flows(true);
        self.waiting = waiting;
        self.counters.sockets_last_poll = samples.len() as u64;
        self.choose_hot_set(&samples);
        self.samples = samples;
        self.tracker.end_dump(dump.complete);
        // Applying queued closes costs what the churn costs, whatever the dump period: it is
        // not counted as the dump's cost (the schedule sees it as the rest of the process).
        let cpu = thread_cpu();
        self.apply_destroys(baseline_poll, true);
        self.destroys_cpu += thread_cpu().saturating_sub(cpu);
        self.attribution.end_poll();
        self.report_shedding();
        self.counters.polls += 1;
        self.counters.last_poll_micros = started.elapsed().as_micros() as u64;
    }

    /// Observes at once the sockets tracked and credited to a process (one lookup each);
    /// returns the others, which wait for their process: new sockets, and those no process was
    /// found for yet.
    fn observe_attributed(&mut self, samples: &[TcpSample], at_ms: u64) -> Vec<Waiting> {
        let mut waiting = std::mem::take(&mut self.waiting);
        waiting.clear();
        for (i, s) in samples.iter().enumerate().filter(|(_, s)| !s.is_listener()) {
            let fin = self.fin_received(s);
            match self.tracker.observe_attributed(s, fin, at_ms) {
                Known::Attributed => {}
                // A kernel event named its owner: no /proc walk for it.
                Known::New if self.attribution.has_event_owner(s.cookie) => {
                    let attribution = &mut self.attribution;
                    self.tracker
                        .observe(s, fin, at_ms, || attribution.key_for(s));
                }
                known => waiting.push((i, known, fin)),
            }
        }
        waiting
    }

    /// Finds the holders of the listeners and of the waiting sockets (with each socket's uid,
    /// to narrow the /proc search), and this dump's listeners with their processes.
    fn resolve_processes(
        &mut self,
        samples: &[TcpSample],
        waiting: &[Waiting],
        mut hints: Vec<u32>,
    ) {
        let udp = self
            .udp_ports
            .iter()
            .chain(
                self.udp_connected
                    .iter()
                    .filter(|s| self.udp.connected_needs_owner(s)),
            )
            .map(|s| (s.inode, s.uid));
        let wanted: HashMap<u32, u32> = samples
            .iter()
            .filter(|s| s.is_listener())
            .chain(waiting.iter().map(|(i, ..)| &samples[*i]))
            .map(|s| (s.inode, s.uid))
            .chain(udp)
            .filter(|(inode, _)| *inode != 0)
            .collect();
        if wanted.is_empty() {
            hints.clear();
        }
        self.attribution.resolve(&wanted, &hints, Instant::now());
        self.attribution
            .set_listeners(samples.iter().filter(|s| s.is_listener()));
        self.attribution.add_udp_ports(self.udp_ports.iter());
    }

    /// With the event source, a new socket that neither an event nor /proc named — its
    /// owner's first send or receive came after the drain before the dump, and it left its
    /// file before the /proc walk — has its owner's event in the ring by now (a socket's
    /// events precede its close): drained once more, the event keys it with its owner, not
    /// `Process = null` (the flake of tests/network.rs' hundred short connections, 1 run in
    /// tens). Costs a reader wake-up only in a dump that has such a socket.
    fn drain_for_unheld(&mut self, samples: &[TcpSample], waiting: &[Waiting]) {
        if !self.sources.events_active() {
            return;
        }
        let attribution = &mut self.attribution;
        let unheld = waiting.iter().any(|&(i, known, _)| {
            known == Known::New && attribution.pool_holding(samples[i].inode).is_none()
        });
        if unheld {
            self.sources.drain_events_now(EVENTS_BEFORE_DUMP_WAIT);
            self.apply_kernel_events();
        }
    }

    /// Observes the waiting sockets now that their processes are known: a new one is keyed
    /// (only if the tracker really starts tracking it: not one missing from a failed dump and
    /// back, not one past the cap), one without a process is credited to its holder if found.
    fn observe_waiting(&mut self, samples: &[TcpSample], waiting: &[Waiting], at_ms: u64) {
        for &(i, known, fin) in waiting {
            let s = &samples[i];
            if known == Known::New {
                let attribution = &mut self.attribution;
                self.tracker
                    .observe(s, fin, at_ms, || attribution.key_for(s));
                continue;
            }
            if let Some(pool) = self.attribution.holder(s) {
                self.tracker.attribute(s.cookie, pool);
            }
            self.tracker.observe(s, fin, at_ms, || unreachable_key(s));
        }
    }

    /// Whether a dumped socket's counters include the peer's FIN: judged by the state read
    /// with them, else by an exact lookup.
    fn fin_received(&mut self, s: &TcpSample) -> bool {
        match fin_received_in(s) {
            Some(f) => f,
            None => self.sources.fin_received(s),
        }
    }

    /// The poll at stop. Sockets closed just before the signal are missing from its dump, and
    /// their destroy notifications come from a kernel worker shortly after the close: they are
    /// waited for — until none is missing, at most [`LAST_FINALS_WAIT`] — so that their last
    /// bytes are in the window flushed at stop.
    pub fn last_poll(&mut self) {
        // The closes of the last batch pause (100 ms with events) are read now.
        self.sources.flush_finals(LAST_FINALS_WAIT);
        self.poll();
        let deadline = Instant::now() + LAST_FINALS_WAIT;
        while self.tracker.missing_from_last_dump() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.sources.wait_for_final(left) {
                break;
            }
            self.apply_destroys(!self.tracker.baseline_done(), false);
        }
        // The events of the sockets closed last, then every close still settling.
        if self.sources.drain_events_now(LAST_EVENTS_WAIT) {
            self.apply_kernel_events();
        }
        self.apply_destroys(!self.tracker.baseline_done(), false);
    }

    /// The hot set: established sockets that moved data during the last poll interval, most
    /// recently active first, at most `collect.hot_sockets`.
    fn choose_hot_set(&mut self, samples: &[TcpSample]) {
        self.hot.clear();
        let limit = self.schedule.hot_limit();
        if limit == 0 {
            return;
        }
        let recent = self.schedule.full_period().as_millis() as u32;
        let mut active: Vec<(u32, &TcpSample)> = samples
            .iter()
            .filter(|s| !s.is_listener() && s.state == crate::collect::sockdiag::state::ESTABLISHED)
            .filter_map(|s| {
                let c = s.counters.as_ref()?;
                let idle = c.last_data_sent_ms.min(c.last_data_recv_ms);
                (idle < recent).then_some((idle, s))
            })
            .collect();
        active.sort_unstable_by_key(|(idle, _)| *idle);
        self.hot
            .extend(active.into_iter().take(limit).map(|(_, s)| s.clone()));
    }

    /// Runs the poll due at `tick`: a full dump at multiples of the full-dump period since
    /// the epoch (`socket_poll`, stretched when the CPU budget requires), else a hot poll.
    /// Returns whether it was a full dump.
    pub fn poll_at(&mut self, tick: SystemTime) -> bool {
        let cpu = thread_cpu();
        if self.schedule.is_full_poll(tick) {
            self.destroys_cpu = Duration::ZERO;
            self.poll();
            let dump_cpu = thread_cpu()
                .saturating_sub(cpu)
                .saturating_sub(std::mem::take(&mut self.destroys_cpu));
            let previous = self.schedule.full_period();
            if let Some(period) = self.schedule.full_poll_done(dump_cpu)
                && let Some(changes_not_logged) = self.period_log.ready()
            {
                // Once a minute at most: the average cost moves with every poll, and the
                // metric depmap_full_poll_period_milliseconds always has the current period.
                tracing::info!(
                    period = %humantime::format_duration(period),
                    previous = %humantime::format_duration(previous),
                    cpu_per_full_poll = ?self.schedule.full_poll_cost().unwrap_or_default(),
                    full_polls_may_use = %format!("{:.2}% of a core", self.schedule.full_share() * 100.0),
                    sockets = self.counters.sockets_last_poll,
                    cpu_budget = %self.config.collect.cpu_budget,
                    changes_not_logged,
                    "full sock_diag dump period changed to stay within collect.cpu_budget \
                     (cpu_per_full_poll: the dump and reading /proc for new sockets' processes)"
                );
            }
            self.schedule.process_usage(process_cpu(), Instant::now());
            self.counters.full_poll_period_ms = self.schedule.full_period().as_millis() as u64;
            true
        } else if self.sources.events_active() {
            self.poll_light();
            false
        } else {
            let lookups = self.hot.len();
            self.poll_hot();
            self.schedule
                .hot_poll_done(lookups, thread_cpu().saturating_sub(cpu));
            false
        }
    }

    /// A hot poll: exact re-reads of the hot set (≈4 µs each), for response times only.
    pub fn poll_hot(&mut self) {
        let hot = std::mem::take(&mut self.hot);
        for s in &hot {
            match self.sources.lookup(s) {
                Ok(Some(now)) => {
                    if let Some(c) = &now.counters {
                        let at = self.sources.clock_ms();
                        self.tracker.observe_response(s.cookie, at, c);
                    }
                }
                Ok(None) => {} // closed since: its destroy notification has the final values
                Err(e) => tracing::debug!(error = %e, "hot lookup failed"),
            }
        }
        self.hot = hot;
        self.counters.hot_lookups += self.hot.len() as u64;
    }

    /// Applies the queued destroy notifications. In the baseline poll, notifications of
    /// sockets the baseline dump did not hold are of sockets older than depmap that closed
    /// while it started: their bytes and their establishment are not in any window. With
    /// the event source and `settle`, those younger than [`FINAL_SETTLE_MS`] wait for the
    /// next poll.
    fn apply_destroys(&mut self, baseline_poll: bool, settle: bool) {
        let mut finals = std::mem::take(&mut self.settling);
        finals.extend(self.sources.finals());
        // Not in the baseline poll: what closes then is older than depmap, and must not
        // settle into a later poll, where it would count as a new connection.
        if settle && !baseline_poll && self.sources.events_active() {
            let settled_before = self.sources.clock_ms().saturating_sub(FINAL_SETTLE_MS);
            let (ready, young): (Vec<_>, Vec<_>) = finals
                .into_iter()
                .partition(|(_, at)| *at <= settled_before);
            self.settling = young;
            finals = ready;
        }
        for (f, at) in finals {
            let fin_received = self.sources.final_fin(&f);
            let s = &f.sample;
            match self.tracker.known(s.cookie) {
                // Before the baseline, a close is of a socket older than depmap.
                Known::New if baseline_poll => {}
                Known::New => {
                    let attribution = &mut self.attribution;
                    self.tracker
                        .closed(s, fin_received, at, || attribution.key_for(s));
                }
                known => {
                    // An accepted socket that closes before its holder was found has left its
                    // file now: the listener rule applies to it too.
                    if known == Known::Unattributed
                        && self
                            .tracker
                            .key_of(s.cookie)
                            .is_some_and(|k| k.direction == Direction::Inbound)
                        && let Some(pool) = self.attribution.closed_inbound(s.netns, s.local)
                    {
                        self.tracker.attribute(s.cookie, pool);
                    }
                    self.tracker
                        .closed(s, fin_received, at, || unreachable_key(s));
                }
            }
        }
    }

    /// Closes the window that started at `start`: VMConnection and VMBoundPort records.
    pub fn close_window(&mut self, start: SystemTime) -> Vec<Record> {
        self.enricher.refresh();
        let mut conns = self.tracker.close_window();
        for (key, stats) in self.udp.close_window() {
            conns.entry(key).or_default().add(&stats);
        }
        self.counters.unattributed_links += conns
            .iter()
            .filter(|(k, _)| k.process.is_none())
            .map(|(_, s)| s.links_established + s.links_failed)
            .sum::<u64>();
        let window_listeners = self.attribution.take_window_listeners();
        let ports = bound_ports(&window_listeners, &conns, self.sources.udp_flows_measured());
        let pools = self.attribution.pools();
        let name_of = |p: &PoolId| pools.get(p).map(|pool| pool.executable_name.clone());
        let enricher = &self.enricher;
        let out = window::records(&self.identity, start, &conns, &ports, name_of, |record| {
            enricher.connection(record)
        });
        let mut in_use = self.tracker.processes();
        in_use.extend(self.udp.processes().cloned());
        self.attribution.prune_pools(&in_use);
        out
    }

    /// VMComputer and VMProcess for every pool in scope (start and every inventory interval).
    pub fn inventory(&mut self, now: SystemTime) -> Vec<Record> {
        if self.config.collect.processes == ProcessScope::All {
            self.admit_all_processes();
        }
        self.attribution.pools_mut().refresh_members();
        let mut out = vec![self.inventory.computer(&mut self.identity, now)];
        out.extend(self.process_records(now, false));
        out
    }

    /// VMProcess for pools that appeared since the last inventory.
    pub fn new_process_records(&mut self, now: SystemTime) -> Vec<Record> {
        self.process_records(now, true)
    }

    fn process_records(&mut self, now: SystemTime, only_new: bool) -> Vec<Record> {
        let all = self.config.collect.processes == ProcessScope::All;
        let mut ports: HashMap<PoolId, Vec<u16>> = HashMap::new();
        for l in self.attribution.listeners().iter() {
            for o in &l.owners {
                ports.entry(o.clone()).or_default().push(l.addr.port());
            }
        }
        let mut ids: Vec<PoolId> = self
            .attribution
            .pools()
            .pools()
            .filter(|p| (all || p.has_sockets) && p.reportable() && !(only_new && p.reported))
            .map(|p| p.id.clone())
            .collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let Some(pool) = self.attribution.pools().get(&id).cloned() else {
                continue;
            };
            let listening = ports.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            out.push(
                self.inventory
                    .process(&self.identity, &pool, listening, now),
            );
            if let Some(p) = self.attribution.pools_mut().get_mut(&id) {
                p.reported = true;
            }
        }
        out
    }

    fn admit_all_processes(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                let _ = self.attribution.pools_mut().pool_of(pid);
            }
        }
    }

    /// Logs (once a minute at most) that the caps on connections or pools shed data.
    fn report_shedding(&mut self) {
        let udp_full = self.sources.counters().kernel_events_udp_full;
        let shed = (
            self.tracker.stats.shed,
            self.attribution.pools().shed,
            self.udp.stats.shed + udp_full,
        );
        if shed == self.reported_shed {
            return;
        }
        let Some(more) = self.shed_log.ready() else {
            return;
        };
        tracing::warn!(
            also_since_last_log = more,
            shed_socket_observations = shed.0,
            shed_processes = shed.1,
            shed_udp_flows = shed.2,
            max_connections = self.config.collect.max_connections,
            max_pools = self.config.collect.max_pools,
            max_udp_flows = crate::collect::udp_flows::MAX_UDP_FLOWS,
            "caps reached: new connections are not tracked / new process pools not attributed / new UDP flows not counted; raise collect.max_connections or collect.max_pools (UDP flows: a fixed map)"
        );
        self.reported_shed = shed;
    }

    /// Self-metrics for logs and `once`.
    /// Applies a reloaded configuration (SIGHUP): the `[collect]` schedule and scopes take
    /// effect now (the daemon rebuilds the sink); returns the keys whose new values need a restart
    /// (they keep their running values).
    pub fn reconfigure(&mut self, new: &Config) -> Vec<&'static str> {
        let old = &self.config;
        let mut restart = Vec::new();
        if old.agent != new.agent {
            restart.push("agent");
        }
        if old.collect.ipv6 != new.collect.ipv6 {
            restart.push("collect.ipv6");
        }
        if old.collect.max_connections != new.collect.max_connections {
            restart.push("collect.max_connections");
        }
        if old.collect.max_pools != new.collect.max_pools {
            restart.push("collect.max_pools");
        }
        if old.metrics != new.metrics {
            restart.push("metrics");
        }
        if old.collect.events != new.collect.events {
            restart.push("collect.events");
        }
        if old.collect.namespaces != new.collect.namespaces {
            restart.push("collect.namespaces");
        }
        let mut collect = new.collect.clone();
        collect.ipv6 = old.collect.ipv6;
        collect.events = old.collect.events;
        collect.namespaces = old.collect.namespaces;
        collect.max_connections = old.collect.max_connections;
        collect.max_pools = old.collect.max_pools;
        self.config.collect = collect;
        if self.config.enrich != new.enrich {
            self.config.enrich = new.enrich.clone();
            self.enricher.reconfigure(&self.config.enrich);
        }
        self.schedule = schedule(&self.config.collect, &self.sources);
        restart
    }

    /// The agent's self-counters: `(name, value)`, names ending in `_total` count events,
    /// the others are current values. Served as `depmap_<name>` by the metrics endpoint and
    /// logged at shutdown.
    pub fn self_counters(&self) -> Vec<(&'static str, u64)> {
        let t = &self.tracker.stats;
        let dns = self.enricher.dns_report();
        let k = self.sources.counters();
        vec![
            ("polls_total", self.counters.polls),
            ("sockets", self.counters.sockets_last_poll),
            ("last_poll_microseconds", self.counters.last_poll_micros),
            (
                "full_poll_period_milliseconds",
                self.counters.full_poll_period_ms,
            ),
            ("destroy_received_total", k.destroy_received),
            ("destroy_overruns_total", k.destroy_overruns),
            ("closed_without_final_total", t.closed_without_final),
            ("late_finals_total", t.late_finals),
            ("shed_sockets_total", t.shed),
            ("shed_pools_total", self.attribution.pools().shed),
            ("hot_lookups_total", self.counters.hot_lookups),
            ("dump_errors_total", k.dump_errors),
            ("unparsable_messages_total", k.unparsable_messages),
            (
                "pids_rescanned_total",
                self.attribution.owners().stats.pids_rescanned,
            ),
            ("proc_walks_total", self.attribution.owners().stats.walks),
            ("proc_event_errors_total", k.proc_event_errors),
            ("fin_lookups_total", k.fin_lookups),
            ("kernel_events_total", k.kernel_events),
            ("kernel_events_ring_full_total", k.kernel_events_ring_full),
            ("kernel_events_map_full_total", k.kernel_events_map_full),
            ("kernel_events_udp_full_total", k.kernel_events_udp_full),
            ("udp_flows_total", self.udp.stats.flows_seen),
            ("udp_flows_shed_total", self.udp.stats.shed),
            ("kernel_events_queue_full_total", k.kernel_events_queue_full),
            ("kernel_events_unparsable_total", k.kernel_events_unparsable),
            (
                "event_owners_from_proc_total",
                self.attribution.event_stats.from_proc,
            ),
            (
                "event_owners_from_event_total",
                self.attribution.event_stats.from_event,
            ),
            (
                "event_owners_unmatched_total",
                self.attribution.event_stats.unmatched,
            ),
            (
                "event_responses_unmatched_total",
                t.responses_unmatched + self.udp.stats.responses_unmatched,
            ),
            (
                "unattributed_connections_total",
                self.counters.unattributed_links,
            ),
            ("dns_answers_learned_total", dns.counters.answers),
            ("dns_answers_unsolicited_total", dns.counters.unsolicited),
            ("dns_addresses_not_kept_total", dns.counters.not_kept),
            (
                "dns_queries_not_tracked_total",
                dns.counters.queries_not_tracked,
            ),
            ("dns_unparsable_packets_total", dns.unparsable),
            ("dns_dropped_packets_total", dns.dropped),
            ("dns_cache_bytes", dns.cache_bytes),
            ("namespaces_followed", k.namespaces_followed),
            ("namespaces_entered_total", k.namespaces.entered),
            ("namespaces_left_total", k.namespaces.left),
            (
                "namespace_enter_failures_total",
                k.namespaces.enter_failures,
            ),
            ("namespaces_over_cap_total", k.namespaces.over_cap),
            (
                "namespace_unreadable_processes_total",
                k.namespaces.unreadable,
            ),
        ]
    }

    /// The self-counters on one line, for the log.
    pub fn loss_summary(&self) -> String {
        self.self_counters()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The poll schedule for these sources (with the event source, fewer dumps).
fn schedule(collect: &crate::config::CollectConfig, sources: &Sources) -> PollSchedule {
    let schedule = PollSchedule::new(collect);
    if sources.events_active() {
        schedule.with_events(sources.events_timing())
    } else {
        schedule
    }
}

/// Keys are computed only for new cookies; a known cookie keeps the key it was given.
fn unreachable_key(s: &TcpSample) -> ConnKey {
    ConnKey {
        direction: Direction::Outbound,
        process: None,
        source_ip: s.local.ip(),
        destination_ip: s.remote.ip(),
        destination_port: s.remote.port(),
        protocol: Protocol::Tcp,
    }
}

fn proc_fd_readable(proc_root: &std::path::Path) -> (usize, usize) {
    let mut total = 0;
    let mut readable = 0;
    if let Ok(dir) = std::fs::read_dir(proc_root) {
        for e in dir.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
            {
                total += 1;
                if std::fs::read_dir(e.path().join("fd")).is_ok() {
                    readable += 1;
                }
            }
        }
    }
    (readable, total)
}

/// Collects for `duration` on the same ticks as the daemon loop (`daemon::run_loop`) (`depmap once`), ending with a
/// full poll, and returns the inventory and the records of that one window.
pub fn collect_once(
    agent: &mut Agent,
    duration: Duration,
    stop: &std::sync::mpsc::Receiver<()>,
) -> Vec<Record> {
    agent.poll();
    tracing::debug!(?duration, "once: baseline poll done; the window is open");
    let start = SystemTime::now();
    let end = Instant::now() + duration;
    let tick_len = agent.tick();
    // Ticks until the window's end, or until told to stop (Ctrl-C: the window ends early).
    while let Woke::Tick(tick) = wait_tick(tick_len, stop, Some(end)) {
        agent.poll_at(tick);
    }
    agent.last_poll();
    let mut records = agent.inventory(SystemTime::now());
    records.extend(agent.close_window(start));
    records
}

/// The configuration with its empty defaults resolved as depmap would use them: the computer
/// name, the AgentId (left empty when a new random one would be made), the sink's directory.
pub fn resolved(config: &Config) -> Config {
    let mut c = config.clone();
    let facts = HostFacts::read();
    c.agent.computer = inventory::computer_name(&config.agent.computer, &facts);
    c.agent.agent_id = identity::known_agent_id(
        &config.agent.agent_id,
        std::path::Path::new("/etc/machine-id"),
        &config.agent.state_dir,
    )
    .unwrap_or_default();
    let state = &config.agent.state_dir;
    match config.sink.kind {
        SinkKind::Stdout => {}
        SinkKind::File => c.sink.file.dir = config.sink.file.dir(state),
        kind => c.sink.delivery.spool_dir = config.sink.delivery.spool_dir(state, kind),
    }
    c
}
