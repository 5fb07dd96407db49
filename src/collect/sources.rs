//! The kernel readers behind one seam: what the agent needs from the kernel each poll — the
//! process changes since the last one, a dump of every TCP socket (with when it was read),
//! the final state of sockets that closed, and exact re-reads of single sockets — whichever
//! reader provides it. Today that is sock_diag (dumps and lookups), the TCP destroy
//! notifications and the proc connector, and — where the kernel and the privileges allow —
//! the eBPF event source (`collect::ebpf`): the owners of sockets by cookie and the response
//! times of their exchanges.
//!
//! What each reader can do on this host is kept as [`SourceStatus`] (the capability report).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::destroy::{self, DestroyListener, Final, fin_received};
use super::ebpf::{EventSource, KernelEvent, LoadError};
use super::namespaces::{
    DestroySettings, NamespaceCounters, Namespaces, NetnsId, SCAN_PERIOD, ephemeral_ports,
};
use super::proc_events::{ProcChange, ProcEvents, Status as ProcStatus};
use super::sockdiag::{Family, SockDiag, TcpSample, UdpSample};
use super::udp_flows::{FlowCounts, FlowKey};
use crate::config::{EventsMode, NamespacesMode};
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};

/// The capability line while the proc connector subscription is still on its way.
const PROC_EVENTS_STARTING: &str = "proc connector: subscribing (no acknowledgement from the kernel yet); /proc is walked by fd count until then";

/// Why depmap cannot run here at all: without the kernel's TCP sockets there is nothing to map.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open NETLINK_SOCK_DIAG: {0}")]
    Open(std::io::Error),
    #[error("cannot read the kernel's TCP sockets: IPv4 dump failed: {0}")]
    Dump(std::io::Error),
    #[error("collect.events = \"ebpf\" but the kernel event source cannot run: {0}")]
    Events(String),
}

/// Whether a source works here: what it found, or why it does not (a line of the capability
/// report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It works; what it found, where there is something to say (else empty).
    Available(String),
    /// It does not work here, and why.
    Unavailable(String),
}

impl Availability {
    pub const YES: Availability = Availability::Available(String::new());

    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available(_))
    }
}

/// What each reader can do here, and why not where it cannot.
#[derive(Debug, Clone)]
pub struct SourceStatus {
    pub sock_diag: Availability,
    pub sock_diag_v6: Availability,
    pub destroy_events: Availability,
    pub proc_connector: Availability,
    /// The eBPF event source (owners of connections).
    pub kernel_events: Availability,
    /// Response times and owners of accepted sockets from events (send/recv tracepoints).
    pub event_timing: Availability,
    /// Receive buffer of the destroy-notification socket (0: no subscription).
    pub destroy_rcvbuf: usize,
    /// Other network namespaces (`collect.namespaces`): how many are followed, or why none.
    pub namespaces: Availability,
}

/// Counters of the readers' work and losses.
#[derive(Debug, Default, Clone, Copy)]
pub struct SourceCounters {
    pub dump_errors: u64,
    pub unparsable_messages: u64,
    pub destroy_received: u64,
    pub destroy_overruns: u64,
    pub proc_event_errors: u64,
    /// Closes whose FIN was looked up by the poll loop (no CLOSED event for them).
    pub fin_lookups: u64,
    pub kernel_events: u64,
    pub kernel_events_ring_full: u64,
    pub kernel_events_map_full: u64,
    pub kernel_events_udp_full: u64,
    pub kernel_events_queue_full: u64,
    pub kernel_events_unparsable: u64,
    pub namespaces: NamespaceCounters,
    /// Other namespaces followed now.
    pub namespaces_followed: u64,
}

/// One dump (its sockets went to the caller's buffer).
#[derive(Debug, Clone, Copy)]
pub struct Dump {
    /// False when part of it failed (a family's dump errored).
    pub complete: bool,
    /// When its sockets were read (the middle of the dump), in [`Sources::clock_ms`].
    pub at_ms: u64,
}

/// Logs that process events are not available here, and why; the capability line.
fn proc_connector_unavailable(why: &str) -> String {
    tracing::warn!(error = %why, "proc connector unavailable; /proc is walked by fd count instead");
    format!("proc connector unavailable ({why}); /proc is walked by fd count instead")
}

/// Whether a connection is kept: with `collect.ipv6 = false`, those with a real IPv6 remote
/// address are left out (IPv4 over a dual-stack socket shows IPv4 addresses, and stays).
fn kept(ipv6: bool, s: &TcpSample) -> bool {
    ipv6 || !s.remote.is_ipv6()
}

/// Most CLOSED events kept for their destroy notification, and for how long.
const CLOSED_FINS_MAX: usize = 262_144;
const CLOSED_FIN_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a missing event source costs (the log line).
const EVENTS_COST: &str = "the processes of connections that open and close between two dumps are null, \
     and response times are tcp_info estimates";

/// Starts the event source as `collect.events` says: `Ok(None)` with the reason where it is
/// off or cannot run under `auto`.
fn start_events(
    mode: EventsMode,
    all_namespaces: bool,
    udp: bool,
) -> Result<(Option<EventSource>, Availability, Availability), StartError> {
    if mode == EventsMode::Off {
        let why = "off (collect.events = \"off\")".to_string();
        return Ok((
            None,
            Availability::Unavailable(why.clone()),
            Availability::Unavailable(why),
        ));
    }
    match EventSource::start("/proc".into(), all_namespaces, udp) {
        Ok(source) => {
            let timing = match &source.timing {
                Ok(()) => Availability::YES,
                Err(why) => Availability::Unavailable(format!(
                    "{why}; response times are tcp_info estimates and accepted sockets' owners come from /proc"
                )),
            };
            Ok((Some(source), Availability::YES, timing))
        }
        Err(e) if mode == EventsMode::Ebpf => Err(StartError::Events(events_unavailable(&e))),
        Err(e) => {
            let why = events_unavailable(&e);
            tracing::warn!(error = %why, cost = EVENTS_COST, "kernel event source unavailable; polling alone (fix: CAP_BPF and CAP_PERFMON, Linux 5.8 or later with BTF)");
            Ok((
                None,
                Availability::Unavailable(why.clone()),
                Availability::Unavailable(why),
            ))
        }
    }
}

/// Why the event source does not run (with the capabilities this process lacks).
fn events_unavailable(e: &LoadError) -> String {
    // The kernel's answer (the errno) is at the end of the chain of sources.
    let mut why = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !why.contains(&text) {
            why = format!("{why}: {text}");
        }
        source = inner.source();
    }
    let missing = super::ebpf::missing_capabilities();
    if missing.is_empty() {
        why
    } else {
        format!("{why} (this process lacks {})", missing.join(" and "))
    }
}

pub struct Sources {
    diag: SockDiag,
    destroys: Option<DestroyListener>,
    /// The other network namespaces' readers, with `collect.namespaces = "all"`.
    namespaces: Option<Namespaces>,
    /// When they were last looked for.
    namespaces_scanned: Option<Instant>,
    proc_events: Option<ProcEvents>,
    events: Option<EventSource>,
    /// What CLOSED events said of sockets whose destroy notification is still to come.
    closed_fins: HashMap<u64, (bool, std::time::Duration)>,
    /// Keep connections with IPv6 remote addresses (`collect.ipv6`).
    ipv6: bool,
    /// The ephemeral port range (`net.ipv4.ip_local_port_range` of depmap's namespace; each
    /// other namespace has its own, `Namespace::ephemeral`): an unconnected UDP socket bound
    /// in it is a client's, not a bound port.
    ephemeral: std::ops::RangeInclusive<u16>,
    /// The monotonic clock origin; sample times are milliseconds since it.
    epoch: Instant,
    pub status: SourceStatus,
    counters: SourceCounters,
    /// Finals taken from the queues by [`Sources::wait_for_final`] and of namespaces gone,
    /// handed out first.
    waited: Vec<Final>,
    /// Destroy notifications received and dropped by the readers of namespaces gone.
    gone_destroy_counts: (u64, u64),
    reported_overruns: u64,
    reported_event_losses: u64,
    event_loss_log: Throttle,
    dump_failures: Throttle,
    overrun_log: Throttle,
}

impl Sources {
    /// Opens the readers. Fails only when sock_diag itself is unusable; everything else
    /// degrades and is reported in [`SourceStatus`].
    pub fn open(
        ipv6: bool,
        events: EventsMode,
        namespaces: NamespacesMode,
        udp: bool,
    ) -> Result<Sources, StartError> {
        let mut diag = SockDiag::open().map_err(StartError::Open)?;
        diag.dump(Family::V4, |_| {}).map_err(StartError::Dump)?;
        // IPv6 sockets are dumped even with `ipv6 = false`: a dual-stack (`::`) socket carries
        // IPv4 traffic too. The setting only drops connections with real IPv6 addresses.
        let sock_diag_v6 = match diag.dump(Family::V6, |_| {}) {
            Ok(_) => Availability::YES,
            Err(e) => Availability::Unavailable(format!("IPv6 dump failed: {e}")),
        };
        // Attached before the first (baseline) dump: every socket it does not hold was opened
        // under the programs' eyes.
        let (events, kernel_events, event_timing) =
            start_events(events, namespaces == NamespacesMode::All, udp)?;
        // With events, whether a closed socket had its peer's FIN comes from its CLOSED event.
        let fin_lookups = events.is_none();
        let batch = if events.is_some() {
            destroy::BATCH_PAUSE_WITH_EVENTS
        } else {
            destroy::BATCH_PAUSE
        };
        let settings = DestroySettings {
            ipv6: sock_diag_v6.is_available(),
            fin_lookups,
            batch,
        };
        let (namespaces, namespaces_status) = follow_namespaces(namespaces, settings);
        let (destroys, destroy_events) =
            match DestroyListener::start(settings.ipv6, fin_lookups, batch) {
                Ok(d) => (Some(d), Availability::YES),
                Err(e) => (
                    None,
                    Availability::Unavailable(format!("cannot join the TCP destroy groups: {e}")),
                ),
            };
        // Subscribing goes on on its own thread (see proc_events); `proc_changes` takes its
        // outcome into the status.
        let (proc_events, proc_connector) = match ProcEvents::start() {
            Ok(p) => (
                Some(p),
                Availability::Unavailable(PROC_EVENTS_STARTING.to_string()),
            ),
            Err(e) => (
                None,
                Availability::Unavailable(proc_connector_unavailable(&e.to_string())),
            ),
        };
        let mut sources = Sources {
            status: SourceStatus {
                sock_diag: Availability::YES,
                sock_diag_v6,
                destroy_events,
                proc_connector,
                kernel_events,
                event_timing,
                destroy_rcvbuf: destroys.as_ref().map_or(0, |d| d.rcvbuf),
                namespaces: namespaces_status,
            },
            diag,
            destroys,
            namespaces,
            namespaces_scanned: None,
            proc_events,
            events,
            closed_fins: HashMap::new(),
            ipv6,
            ephemeral: ephemeral_ports(),
            epoch: Instant::now(),
            counters: SourceCounters::default(),
            waited: Vec::new(),
            gone_destroy_counts: (0, 0),
            reported_overruns: 0,
            reported_event_losses: 0,
            event_loss_log: Throttle::new(PROBLEM_LOG_INTERVAL),
            dump_failures: Throttle::new(PROBLEM_LOG_INTERVAL),
            overrun_log: Throttle::new(PROBLEM_LOG_INTERVAL),
        };
        // The first scan now: the capability report says what is followed from the start.
        sources.rescan_namespaces();
        Ok(sources)
    }

    /// Milliseconds on the sources' monotonic clock.
    pub fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The process changes since the last call (none while the subscription is not live).
    pub fn proc_changes(&mut self) -> Vec<ProcChange> {
        self.proc_events_outcome();
        self.proc_events
            .as_ref()
            .map(|e| e.queue.try_iter().collect())
            .unwrap_or_default()
    }

    /// The kernel events since the last call (none without the event source); logs (once a
    /// minute at most) the events lost since the last log.
    pub fn kernel_events(&mut self) -> Vec<KernelEvent> {
        let Some(events) = &self.events else {
            return Vec::new();
        };
        let c = &events.counters;
        let lost = [&c.ring_full, &c.map_full, &c.queue_full].map(|n| n.load(Ordering::Relaxed));
        if lost.iter().sum::<u64>() > self.reported_event_losses
            && let Some(more) = self.event_loss_log.ready()
        {
            tracing::warn!(
                ring_full = lost[0],
                map_full = lost[1],
                queue_full = lost[2],
                also_since_last_log = more,
                "kernel events were lost (ring buffer full, socket map full, or the poll loop behind); the connections they named are attributed by polling instead"
            );
            self.reported_event_losses = lost.iter().sum();
        }
        let mut out = Vec::new();
        for event in events.queue.try_iter().flatten() {
            match event {
                KernelEvent::Closed {
                    cookie,
                    fin_received,
                } => {
                    if self.closed_fins.len() < CLOSED_FINS_MAX {
                        self.closed_fins
                            .insert(cookie, (fin_received, self.epoch.elapsed()));
                    }
                }
                other => out.push(other),
            }
        }
        // Closes whose destroy notification never came (not kept, or lost).
        if let Some(oldest) = self.epoch.elapsed().checked_sub(CLOSED_FIN_WAIT) {
            self.closed_fins.retain(|_, (_, at)| *at >= oldest);
        }
        out
    }

    /// Whether a closed socket's final counters include its peer's FIN: as the destroy reader
    /// looked it up, else as its CLOSED event said, else by an exact lookup now.
    pub fn final_fin(&mut self, f: &Final) -> bool {
        if let Some(fin) = f.fin_received {
            return fin;
        }
        match self.closed_fins.remove(&f.sample.cookie) {
            Some((fin, _)) => fin,
            None => {
                self.counters.fin_lookups += 1;
                self.fin_received(&f.sample)
            }
        }
    }

    /// Whether the event source runs (owners of connections from events).
    pub fn events_active(&self) -> bool {
        self.events.is_some()
    }

    /// Waits (at most `limit`) until the event reader has drained what the kernel queued
    /// before this call; false without the event source or when it did not in time.
    pub fn drain_events_now(&self, limit: std::time::Duration) -> bool {
        self.events.as_ref().is_some_and(|e| e.drain_now(limit))
    }

    /// Whether response times come from events.
    pub fn events_timing(&self) -> bool {
        self.events.as_ref().is_some_and(|e| e.timing.is_ok())
    }

    /// Waits (at most `limit`) for the process-event subscription's outcome (for `once`'s
    /// capability report; the daemon never waits for it).
    pub fn settle_proc_events(&mut self, limit: std::time::Duration) {
        if let Some(events) = &self.proc_events {
            events.settle(limit);
        }
        self.proc_events_outcome();
    }

    /// Takes the subscription's outcome, once known, into the status (and drops a
    /// subscription that delivers nothing).
    fn proc_events_outcome(&mut self) {
        let Some(events) = &self.proc_events else {
            return;
        };
        match events.status() {
            ProcStatus::Starting => {}
            ProcStatus::Live => {
                if !self.status.proc_connector.is_available() {
                    tracing::debug!("process events from the proc connector arrive");
                    self.status.proc_connector = Availability::YES;
                }
            }
            ProcStatus::Unavailable(why) => {
                self.status.proc_connector =
                    Availability::Unavailable(proc_connector_unavailable(&why));
                self.proc_events = None;
            }
        }
    }

    /// Dumps every TCP socket of both families into `samples` (cleared first: the caller's
    /// buffer is reused from poll to poll), of depmap's namespace and, with
    /// `collect.namespaces = "all"`, of every other one (looked for again every
    /// [`SCAN_PERIOD`]).
    pub fn dump(&mut self, samples: &mut Vec<TcpSample>) -> Dump {
        self.rescan_namespaces();
        let begin = self.clock_ms();
        let mut complete = true;
        samples.clear();
        let both = self.families().contains(&Family::V6);
        let ipv6 = self.ipv6;
        for (netns, diag) in readers(&mut self.diag, &mut self.namespaces) {
            match diag.dump_all(both, |mut s| {
                if s.is_listener() || kept(ipv6, &s) {
                    s.netns = netns;
                    samples.push(s)
                }
            }) {
                Ok(stats) => self.counters.unparsable_messages += stats.unparsable,
                Err(e) => {
                    complete = false;
                    self.counters.dump_errors += 1;
                    if let Some(more) = self.dump_failures.ready() {
                        tracing::warn!(error = %e, netns, also_since_last_log = more, "sock_diag dump failed; this poll is partial");
                    }
                }
            }
        }
        Dump {
            complete,
            at_ms: (begin + self.clock_ms()) / 2,
        }
    }

    /// Every UDP socket of every namespace read, into `out` (cleared first): the bound ports
    /// among them ([`Sources::is_udp_port`]) and the holders of UDP flows. False when a dump
    /// failed (`out` is partial).
    pub fn dump_udp(&mut self, out: &mut Vec<UdpSample>) -> bool {
        out.clear();
        let mut complete = true;
        let families = self.families();
        for (netns, diag) in readers(&mut self.diag, &mut self.namespaces) {
            for &family in &families {
                let dumped = diag.dump_udp(family, |mut s| {
                    s.netns = netns;
                    out.push(s)
                });
                match dumped {
                    Ok(stats) => self.counters.unparsable_messages += stats.unparsable,
                    Err(e) => {
                        complete = false;
                        self.counters.dump_errors += 1;
                        if let Some(more) = self.dump_failures.ready() {
                            tracing::warn!(error = %e, ?family, netns, also_since_last_log = more, "sock_diag UDP dump failed; this poll's UDP ports are partial");
                        }
                    }
                }
            }
        }
        complete
    }

    /// Whether `port` is in namespace `netns`'s ephemeral range (the ports the kernel picks
    /// for clients there; the sysctl is per namespace).
    pub fn is_ephemeral(&self, netns: NetnsId, port: u16) -> bool {
        let range = match &self.namespaces {
            Some(n) if netns != 0 => n.followed.get(&netns).map(|ns| &ns.ephemeral),
            _ => None,
        };
        range.unwrap_or(&self.ephemeral).contains(&port)
    }

    /// Whether a UDP socket is a bound port: unconnected, on a port outside its namespace's
    /// ephemeral range — a server's; a client's socket that sends with `sendto` is bound to
    /// an ephemeral port, and a connected socket is a flow's end, not a port.
    pub fn is_udp_port(&self, s: &UdpSample) -> bool {
        s.is_unconnected() && !self.is_ephemeral(s.netns, s.local.port())
    }

    /// The UDP flows' counters now, into `out`; false where they are not measured (no event
    /// source, or its UDP programs cannot run).
    pub fn read_udp_flows(&mut self, out: &mut Vec<(FlowKey, FlowCounts)>) -> bool {
        match self.events.as_ref().map(|e| &e.udp_flows) {
            Some(Ok(flows)) => {
                flows.read(out);
                true
            }
            _ => false,
        }
    }

    /// Forgets idle flows in the kernel.
    pub fn forget_udp_flows(&mut self, idle: &[FlowKey]) {
        if let Some(Ok(flows)) = self.events.as_mut().map(|e| &mut e.udp_flows) {
            for k in idle {
                flows.remove(k);
            }
        }
    }

    /// Whether UDP flows are measured here, or why not (the capability report).
    /// Whether UDP flows are measured (the event source's UDP programs run).
    pub fn udp_flows_measured(&self) -> bool {
        matches!(self.events.as_ref().map(|e| &e.udp_flows), Some(Ok(_)))
    }

    pub fn udp_flows_status(&self) -> Availability {
        match self.events.as_ref().map(|e| &e.udp_flows) {
            Some(Ok(_)) => Availability::YES,
            Some(Err(why)) => Availability::Unavailable(why.clone()),
            None => Availability::Unavailable("no kernel event source".into()),
        }
    }

    /// With `collect.namespaces = "all"`, once every [`SCAN_PERIOD`]: follows the namespaces
    /// that appeared, and closes the readers of those gone (their last destroy notifications
    /// are kept for [`Sources::finals`]).
    fn rescan_namespaces(&mut self) {
        let Some(namespaces) = &mut self.namespaces else {
            return;
        };
        if self
            .namespaces_scanned
            .is_some_and(|at| at.elapsed() < SCAN_PERIOD)
        {
            return;
        }
        self.namespaces_scanned = Some(Instant::now());
        for (id, ns) in namespaces.rescan() {
            if let Some(d) = &ns.destroys {
                d.flush(GONE_FLUSH_WAIT);
                self.waited
                    .extend(d.queue.try_iter().map(|f| in_netns(f, id)));
                self.gone_destroy_counts.0 += d.counters.received.load(Ordering::Relaxed);
                self.gone_destroy_counts.1 += d.counters.overruns.load(Ordering::Relaxed);
            }
        }
        self.status.namespaces = namespaces_line(namespaces);
    }

    /// The sock_diag socket reading namespace `netns`; `None` once it is no longer followed.
    fn diag_of(&mut self, netns: NetnsId) -> Option<&mut SockDiag> {
        if netns == 0 {
            return Some(&mut self.diag);
        }
        let ns = self.namespaces.as_mut()?.followed.get_mut(&netns)?;
        Some(&mut ns.diag)
    }

    /// Whether the peer's FIN is in a socket's counters, when its state does not say (an
    /// exact re-read, in the socket's namespace).
    pub fn fin_received(&mut self, s: &TcpSample) -> bool {
        match self.diag_of(s.netns) {
            Some(diag) => fin_received(diag, s),
            // Its namespace is gone: taken as the usual close (see `destroy`).
            None => true,
        }
    }

    /// An exact re-read of one socket; `None` once it closed (or its namespace is gone).
    pub fn lookup(&mut self, s: &TcpSample) -> std::io::Result<Option<TcpSample>> {
        let netns = s.netns;
        let Some(diag) = self.diag_of(netns) else {
            return Ok(None);
        };
        let found = diag.lookup(s).map(|f| {
            f.map(|mut f| {
                f.netns = netns;
                f
            })
        });
        if found.is_err() {
            self.counters.dump_errors += 1;
        }
        found
    }

    /// The address families dumped (IPv6 where its dump works).
    fn families(&self) -> Vec<Family> {
        let mut families = vec![Family::V4];
        if self.status.sock_diag_v6.is_available() {
            families.push(Family::V6);
        }
        families
    }

    /// Every destroy subscription: the own one and those of the other namespaces followed.
    fn destroy_listeners(&self) -> impl Iterator<Item = (NetnsId, &DestroyListener)> {
        let others = self.namespaces.iter().flat_map(|n| {
            n.followed
                .iter()
                .filter_map(|(id, ns)| Some((*id, ns.destroys.as_ref()?)))
        });
        self.destroys.iter().map(|d| (0, d)).chain(others)
    }

    /// Has the destroy readers read what the kernel queued before this call (not after their
    /// batch pause), waiting at most `limit` for each; whether all did.
    pub fn flush_finals(&self, limit: std::time::Duration) -> bool {
        let mut all = self.destroys.is_some();
        for (_, d) in self.destroy_listeners() {
            all &= d.flush(limit);
        }
        all
    }

    /// Waits at most `limit` for a destroy notification to arrive; whether one did (it is
    /// returned by the next [`Sources::finals`]).
    pub fn wait_for_final(&mut self, limit: std::time::Duration) -> bool {
        let deadline = Instant::now() + limit;
        let followed = self
            .namespaces
            .as_ref()
            .is_some_and(|n| !n.followed.is_empty());
        loop {
            let mut got = Vec::new();
            for (netns, d) in self.destroy_listeners() {
                got.extend(d.queue.try_iter().map(|f| in_netns(f, netns)));
            }
            if !got.is_empty() {
                self.waited.extend(got);
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(own) = &self.destroys else {
                return false;
            };
            if left.is_zero() {
                return false;
            }
            // Several queues: looked at in slices; one: waited on.
            let slice = if followed { left.min(WAIT_SLICE) } else { left };
            if let Ok(f) = own.queue.recv_timeout(slice) {
                self.waited.push(f);
                return true;
            }
        }
    }

    /// The final states of the sockets that closed since the last call (listeners and, with
    /// `ipv6 = false`, IPv6 connections left out), with their close time on the sources'
    /// clock.
    pub fn finals(&mut self) -> Vec<(Final, u64)> {
        let mut finals = std::mem::take(&mut self.waited);
        for (netns, d) in self.destroy_listeners() {
            finals.extend(d.queue.try_iter().map(|f| in_netns(f, netns)));
        }
        let overruns = self.counters().destroy_overruns;
        if overruns > self.reported_overruns && self.overrun_log.ready().is_some() {
            tracing::warn!(
                overruns,
                "destroy notifications were dropped by the kernel (ENOBUFS); bytes of sockets that closed then are counted up to their last poll (raise net.core.rmem_max)"
            );
            self.reported_overruns = overruns;
        }
        let ipv6 = self.ipv6;
        finals
            .into_iter()
            .filter(|f| !f.sample.is_listener() && kept(ipv6, &f.sample))
            .map(|f| {
                let at = f.at.saturating_duration_since(self.epoch).as_millis() as u64;
                (f, at)
            })
            .collect()
    }

    pub fn counters(&self) -> SourceCounters {
        let (mut destroy_received, mut destroy_overruns) = self.gone_destroy_counts;
        for (_, d) in self.destroy_listeners() {
            destroy_received += d.counters.received.load(Ordering::Relaxed);
            destroy_overruns += d.counters.overruns.load(Ordering::Relaxed);
        }
        let events = |f: fn(&super::ebpf::EventCounters) -> &std::sync::atomic::AtomicU64| {
            self.events
                .as_ref()
                .map_or(0, |e| f(&e.counters).load(Ordering::Relaxed))
        };
        SourceCounters {
            destroy_received,
            destroy_overruns,
            kernel_events: events(|c| &c.received),
            kernel_events_ring_full: events(|c| &c.ring_full),
            kernel_events_map_full: events(|c| &c.map_full),
            kernel_events_udp_full: events(|c| &c.udp_full),
            kernel_events_queue_full: events(|c| &c.queue_full),
            kernel_events_unparsable: events(|c| &c.unparsable),
            proc_event_errors: self
                .proc_events
                .as_ref()
                .map_or(0, |p| p.errors.load(Ordering::Relaxed)),
            namespaces: self
                .namespaces
                .as_ref()
                .map_or_else(NamespaceCounters::default, |n| n.counters),
            namespaces_followed: self
                .namespaces
                .as_ref()
                .map_or(0, |n| n.followed.len() as u64),
            ..self.counters
        }
    }
}

/// Every sock_diag socket that dumps: depmap's namespace's (0) and each other one followed.
fn readers<'a>(
    own: &'a mut SockDiag,
    namespaces: &'a mut Option<Namespaces>,
) -> impl Iterator<Item = (NetnsId, &'a mut SockDiag)> {
    let others = namespaces
        .iter_mut()
        .flat_map(|n| n.followed.iter_mut().map(|(id, ns)| (*id, &mut ns.diag)));
    std::iter::once((0, own)).chain(others)
}

/// A final read in namespace `netns` (the kernel message does not say which).
fn in_netns(mut f: Final, netns: NetnsId) -> Final {
    f.sample.netns = netns;
    f
}

/// How long a gone namespace's destroy reader is given to read its last notifications.
const GONE_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);
/// With several destroy queues, how often [`Sources::wait_for_final`] looks at them all.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(10);

/// Sets up the following of other namespaces as `collect.namespaces` says (the first scan is
/// the first dump's), with the capability line.
fn follow_namespaces(
    mode: NamespacesMode,
    settings: DestroySettings,
) -> (Option<Namespaces>, Availability) {
    if mode == NamespacesMode::Own {
        let why = "not followed (collect.namespaces = \"own\")".to_string();
        return (None, Availability::Unavailable(why));
    }
    match Namespaces::new("/proc".into(), settings) {
        Ok(n) => {
            let line = namespaces_line(&n);
            (Some(n), line)
        }
        Err(e) => {
            let why = format!("cannot read /proc/self/ns/net: {e}");
            tracing::warn!(error = %why, "other network namespaces are not followed");
            (None, Availability::Unavailable(why))
        }
    }
}

/// The capability line of the namespaces followed: how many, or why none could be.
fn namespaces_line(n: &Namespaces) -> Availability {
    match (&n.last_failure, n.followed.len()) {
        (Some(why), 0) => {
            let missing = super::namespaces::missing_capabilities();
            let lacks = if missing.is_empty() {
                String::new()
            } else {
                format!(" (this process lacks {})", missing.join(" and "))
            };
            Availability::Unavailable(format!("none could be entered: {why}{lacks}"))
        }
        (_, followed) => {
            Availability::Available(format!("{followed} other network namespaces followed"))
        }
    }
}
