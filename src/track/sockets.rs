//! Per-socket state across polls, turned into per-window sums by logical connection.
//!
//! Each physical connection is tracked by its socket cookie. At every poll its `tcp_info`
//! counters are turned into payload bytes and the increase since the last poll is added to the
//! window's [`ConnStats`] of its [`ConnKey`]. A socket's destroy notification supplies the final
//! counters, so the last increase is counted too, exactly once. Sockets present when depmap
//! starts are a baseline: their earlier bytes and their establishment are not in any window.
//!
//! This file does no I/O: the agent feeds it samples, which keeps the arithmetic testable.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::BuildHasherDefault;
use std::net::IpAddr;
use std::sync::Arc;

use crate::collect::sockdiag::{TcpCounters, TcpSample, state};

use super::response::{RtEstimator, RtStats};

/// Sockets by kernel cookie. Cookies are assigned by the kernel from a counter, never by a
/// peer, so the fast non-keyed hash is safe here (SipHash cost more than the lookup itself).
type CookieMap<V> = HashMap<u64, V, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Identity of a process pool (`p-` + 40 hex).
pub type PoolId = Arc<str>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A socket's transport (the `Protocol` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The VMConnection grouping key (Machine and Protocol are the same for every record).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub direction: Direction,
    /// `None` when no readable process holds (or held) the socket.
    pub process: Option<PoolId>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    pub protocol: Protocol,
}

impl ConnKey {
    /// The key of a socket between `local` and `remote` (SPEC: inbound records name the
    /// remote end as source, outbound ones the local end; the destination is the other).
    pub fn between(
        direction: Direction,
        process: Option<PoolId>,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
        protocol: Protocol,
    ) -> ConnKey {
        let (source_ip, destination) = match direction {
            Direction::Inbound => (remote.ip(), local),
            Direction::Outbound => (local.ip(), remote),
        };
        ConnKey {
            direction,
            process,
            source_ip,
            destination_ip: destination.ip(),
            destination_port: destination.port(),
            protocol,
        }
    }
}

/// Sums of one logical connection (or one bound port) over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnStats {
    pub links_established: u64,
    pub links_terminated: u64,
    pub links_live: u64,
    /// Outbound connection attempts that closed without ever being established (refused,
    /// timed out, abandoned).
    pub links_failed: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// The bytes were not measured (UDP without the event source's flow counters: the
    /// records' `BytesSent`/`BytesReceived` are null, not 0).
    pub bytes_unmeasured: bool,
    /// Measured response times.
    pub rt: RtStats,
}

impl ConnStats {
    pub fn add(&mut self, o: &ConnStats) {
        self.links_established += o.links_established;
        self.links_terminated += o.links_terminated;
        self.links_live += o.links_live;
        self.links_failed += o.links_failed;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.bytes_unmeasured |= o.bytes_unmeasured;
        self.rt.add(&o.rt);
    }
}

/// A dumped socket that is missing from this many dumps without a destroy notification is
/// counted as terminated (`closed_without_final`). This happens when notifications are lost
/// (ENOBUFS) and, legitimately, for a socket that TCP has closed while a process still holds
/// its file (it leaves the kernel's tables; its notification comes when the file is closed).
pub const MISSING_DUMPS_BEFORE_CLOSE: u32 = 5;

/// How long (in dumps) a socket terminated without its final counters waits for a late
/// destroy notification, whose bytes are then still counted; and how many such sockets are
/// kept at most.
pub const LATE_FINAL_DUMPS: u64 = 3600;
pub const LATE_FINAL_MAX: usize = 65_536;

/// Payload bytes sent and received, from counters that also count SYN and FIN.
///
/// * sent: `bytes_acked` counts the SYN for the side that connected (`syn_acked = 1`) and the
///   FIN once acked; `bytes_sent − bytes_retrans` counts payload transmitted once, never SYN or
///   FIN. Their minimum is the payload the peer acknowledged.
/// * received: `bytes_received` counts the peer's FIN (measured: 5,000 B + FIN = 5,001).
pub fn payload(c: &TcpCounters, syn_acked: u64, fin_received: bool) -> (u64, u64) {
    let transmitted = c.bytes_sent.saturating_sub(c.bytes_retrans);
    let acked = c.bytes_acked.saturating_sub(syn_acked);
    let sent = transmitted.min(acked);
    let received = c.bytes_received.saturating_sub(u64::from(fin_received));
    (sent, received)
}

/// Whether a dumped socket's counters include its peer's FIN; `None` when its state cannot
/// tell (`CLOSE`: the agent asks the kernel whether a TIME_WAIT minisocket remains). Decided
/// on the state read with the counters (`tcp_info`'s), not the message's: the kernel reads
/// the latter before locking the socket, and a FIN processed in between (measured: 5 of
/// 299,999 connections in the churn bench) would be counted as a payload byte.
pub fn fin_received_in(s: &TcpSample) -> Option<bool> {
    match s.counted_state() {
        state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING | state::TIME_WAIT => Some(true),
        state::CLOSE => None,
        _ => Some(false),
    }
}

fn is_established(s: u8) -> bool {
    !matches!(s, state::SYN_SENT | state::SYN_RECV | state::LISTEN)
}

#[derive(Debug)]
struct Tracked {
    key: ConnKey,
    syn_acked: u64,
    sent: u64,
    received: u64,
    established: bool,
    /// Already counted in `LinksTerminated` (missing from dumps); its destroy must not count
    /// it again.
    terminated: bool,
    last_seen: u64,
    rt: RtEstimator,
    /// Its response times come from kernel events (every exchange measured), not from the
    /// tcp_info estimator.
    timed_by_events: bool,
    /// This window's activity while no process is known for the socket: credited to its
    /// process if one is found before the window closes, else to the unattributed key.
    /// Boxed: most sockets are attributed at once and never need it.
    pending: Option<Box<ConnStats>>,
    /// Where its key's sums are in the current window (see [`WindowSums`]).
    slot: Slot,
}

impl Tracked {
    fn new(key: ConnKey, established: bool, last_seen: u64) -> Tracked {
        Tracked {
            syn_acked: u64::from(key.direction == Direction::Outbound),
            key,
            sent: 0,
            received: 0,
            established,
            terminated: false,
            last_seen,
            rt: RtEstimator::default(),
            timed_by_events: false,
            pending: None,
            slot: Slot::default(),
        }
    }

    fn client(&self) -> bool {
        self.key.direction == Direction::Outbound
    }

    /// Counts an attempt that never became established: only outbound attempts fail (an
    /// accepted socket exists only once its connection is established).
    fn count_failed(&self, stats: &mut ConnStats) {
        if self.client() {
            stats.links_failed += 1;
        }
    }
}

/// A remembered position in [`WindowSums`], valid for one window.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    window: u64,
    index: Option<usize>,
}

/// The current window's sums by key. Each tracked socket remembers its key's slot, so the
/// polls after its first add to the sums without hashing (and cloning) its key again: at
/// 20,000 sockets that was most of the tracker's cost per poll.
#[derive(Debug, Default)]
struct WindowSums {
    /// Counts window closes: slots remembered in an earlier window are stale.
    window: u64,
    index: HashMap<ConnKey, usize>,
    sums: Vec<(ConnKey, ConnStats)>,
}

impl WindowSums {
    fn position(&mut self, key: &ConnKey) -> usize {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        self.sums.push((key.clone(), ConnStats::default()));
        self.index.insert(key.clone(), self.sums.len() - 1);
        self.sums.len() - 1
    }

    /// The sums of a tracked socket's key, found through its remembered slot.
    fn of_socket(&mut self, key: &ConnKey, slot: &mut Slot) -> &mut ConnStats {
        let i = match slot.index {
            Some(i) if slot.window == self.window && i < self.sums.len() => i,
            _ => {
                let i = self.position(key);
                *slot = Slot {
                    window: self.window,
                    index: Some(i),
                };
                i
            }
        };
        &mut self.sums[i].1
    }

    /// The window's sums, leaving an empty window behind.
    fn take(&mut self) -> HashMap<ConnKey, ConnStats> {
        self.window += 1;
        self.index.clear();
        std::mem::take(&mut self.sums).into_iter().collect()
    }
}

/// What the tracker knows of a cookie (one lookup, before a poll's per-socket work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Not tracked: its key must be computed.
    New,
    /// Tracked, with no process found yet.
    Unattributed,
    /// Tracked and credited to a process.
    Attributed,
}

/// Losses and anomalies, for the self-metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerStats {
    /// Sockets that vanished from dumps without a destroy notification.
    pub closed_without_final: u64,
    /// Destroy notifications that arrived after their socket was counted as terminated; their
    /// remaining bytes were still counted.
    pub late_finals: u64,
    /// Sockets reported without `tcp_info` (bytes not counted).
    pub without_counters: u64,
    /// Observations of sockets not tracked because the cap was reached.
    pub shed: u64,
    /// Response times measured by kernel events for sockets never tracked.
    pub responses_unmatched: u64,
}

/// How many dumps a response time measured before its socket was first seen waits for it.
const EARLY_RESPONSE_DUMPS: u64 = 2;
const EARLY_RESPONSES_MAX: usize = 131_072;

#[derive(Debug, Default)]
pub struct SocketTracker {
    sockets: CookieMap<Tracked>,
    /// Sockets counted as terminated without their final counters, awaiting a late destroy
    /// notification, with the dump generation they were terminated in.
    awaiting_final: CookieMap<(Tracked, u64)>,
    generation: u64,
    baseline_done: bool,
    window: WindowSums,
    /// Most sockets tracked at once (0: no limit); beyond it new sockets are shed.
    max_sockets: usize,
    /// How new sockets start: timed by events or not, with the times measured before.
    births: Births,
    pub stats: TrackerStats,
}

/// What a socket seen for the first time starts with.
#[derive(Debug, Default)]
struct Births {
    /// Whether kernel events time the exchanges of sockets opened after depmap started.
    events_timing: bool,
    /// Response times measured before their socket was first seen, with the dump generation.
    early_responses: CookieMap<(RtStats, u64)>,
}

impl Births {
    /// A new socket's state: timed by events unless it is older than depmap (`baseline`),
    /// with the response times measured before it was seen.
    fn born(
        &mut self,
        cookie: u64,
        key: ConnKey,
        established: bool,
        baseline: bool,
        generation: u64,
    ) -> Tracked {
        let mut t = Tracked::new(key, established, generation);
        t.timed_by_events = self.events_timing && !baseline;
        if let Some((rt, _)) = self.early_responses.remove(&cookie) {
            t.pending.get_or_insert_default().rt.add(&rt);
        }
        t
    }
}

impl SocketTracker {
    pub fn new() -> SocketTracker {
        SocketTracker::default()
    }

    /// A tracker that follows at most `max_sockets` sockets at once. Beyond the cap a new
    /// socket is not tracked (counted in `shed`): memory stays bounded and the sockets
    /// already tracked stay exact.
    pub fn with_cap(max_sockets: usize) -> SocketTracker {
        SocketTracker {
            max_sockets,
            ..SocketTracker::default()
        }
    }

    /// Response times of sockets opened from now on come from kernel events.
    pub fn time_by_events(&mut self, on: bool) {
        self.births.events_timing = on;
    }

    /// One exchange's response time measured by a kernel event.
    pub fn response_measured(&mut self, cookie: u64, micros: u64) {
        let tracked = match self.sockets.get_mut(&cookie) {
            Some(t) => Some(t),
            None => self.awaiting_final.get_mut(&cookie).map(|(t, _)| t),
        };
        let Some(t) = tracked else {
            if self.births.early_responses.len() >= EARLY_RESPONSES_MAX {
                self.stats.responses_unmatched += 1;
                return;
            }
            let generation = self.generation;
            self.births
                .early_responses
                .entry(cookie)
                .or_insert_with(|| (RtStats::default(), generation))
                .0
                .record_us(micros, 1);
            return;
        };
        // Opened while the programs were being attached: events time it from now on.
        t.timed_by_events = true;
        let stats = if t.key.process.is_none() {
            t.pending.get_or_insert_default()
        } else {
            self.window.of_socket(&t.key, &mut t.slot)
        };
        stats.rt.record_us(micros, 1);
    }

    fn full(&self) -> bool {
        self.max_sockets > 0 && self.sockets.len() >= self.max_sockets
    }

    /// Whether a cookie is already tracked (its key need not be computed again).
    pub fn knows(&self, cookie: u64) -> bool {
        self.known(cookie) != Known::New
    }

    /// Whether a cookie is tracked, and whether its process is known.
    pub fn known(&self, cookie: u64) -> Known {
        let tracked = match self.sockets.get(&cookie) {
            Some(t) => Some(t),
            None => self.awaiting_final.get(&cookie).map(|(t, _)| t),
        };
        match tracked {
            None => Known::New,
            Some(t) if t.key.process.is_none() => Known::Unattributed,
            Some(_) => Known::Attributed,
        }
    }

    /// Number of tracked connections.
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }

    /// A connected socket seen in the current dump at `at_ms` (the agent's monotonic clock).
    /// `key` is used only for a new cookie.
    pub fn observe(
        &mut self,
        s: &TcpSample,
        fin_received: bool,
        at_ms: u64,
        key: impl FnOnce() -> ConnKey,
    ) {
        let seen = self.seen(fin_received, at_ms);
        let (generation, baseline) = (seen.generation, seen.baseline);
        let established_now = is_established(s.state);
        let full = self.full();
        let tracked = match self.sockets.entry(s.cookie) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => match self.awaiting_final.remove(&s.cookie) {
                // Missing from a few dumps (e.g. a failed dump) but not closed after all.
                Some((t, _)) => e.insert(t),
                None if full => {
                    self.stats.shed += 1;
                    return;
                }
                // Connections older than depmap are not "established during the window".
                None => e.insert(self.births.born(
                    s.cookie,
                    key(),
                    baseline && established_now,
                    baseline,
                    generation,
                )),
            },
        };
        update(tracked, &mut self.window, &mut self.stats, s, seen);
    }

    fn seen(&self, fin_received: bool, at_ms: u64) -> Seen {
        Seen {
            generation: self.generation,
            baseline: !self.baseline_done,
            at_ms,
            fin_received,
        }
    }

    /// [`SocketTracker::observe`] for a socket tracked and credited to a process (the steady
    /// state: one lookup, done before the poll resolves any process); otherwise nothing is
    /// done and what the tracker knows of it is returned, for the caller to resolve and
    /// observe it then.
    pub fn observe_attributed(&mut self, s: &TcpSample, fin_received: bool, at_ms: u64) -> Known {
        let seen = self.seen(fin_received, at_ms);
        match self.sockets.get_mut(&s.cookie) {
            Some(t) if t.key.process.is_some() => {
                update(t, &mut self.window, &mut self.stats, s, seen);
                Known::Attributed
            }
            Some(_) => Known::Unattributed,
            // Back after missing from dumps: observed later, like a socket without a process
            // (observing it moves it back).
            None if self.awaiting_final.contains_key(&s.cookie) => Known::Unattributed,
            None => Known::New,
        }
    }

    /// Moves a socket's pending (unattributed) activity into the window under its key.
    fn flush_pending(window: &mut WindowSums, t: &mut Tracked) {
        if let Some(p) = t.pending.take()
            && *p != ConnStats::default()
        {
            window.of_socket(&t.key, &mut t.slot).add(&p);
        }
    }

    /// Ends a dump: sockets missing for too long are closed with what was last seen. The
    /// first complete dump is the baseline; `complete` is false when part of it failed.
    pub fn end_dump(&mut self, complete: bool) {
        let generation = self.generation;
        let mut lost = Vec::new();
        for (cookie, t) in &self.sockets {
            let missing = generation.saturating_sub(t.last_seen);
            // A connection attempt that left the kernel's table without being established has
            // failed, whenever its memory is freed (a SYN waiting for a neighbour that never
            // answers keeps it for seconds).
            let abandoned_attempt = missing >= 1 && !t.established && t.client();
            if missing >= u64::from(MISSING_DUMPS_BEFORE_CLOSE) || abandoned_attempt {
                lost.push(*cookie);
            }
        }
        for cookie in lost {
            if let Some(mut t) = self.sockets.remove(&cookie) {
                if t.established {
                    self.stats.closed_without_final += 1;
                }
                Self::flush_pending(&mut self.window, &mut t);
                let stats = self.window.of_socket(&t.key, &mut t.slot);
                if t.terminated {
                    // Came back once and vanished again: counted already.
                } else if t.established {
                    stats.links_terminated += 1;
                } else {
                    t.count_failed(stats);
                }
                t.terminated = true;
                self.awaiting_final.insert(cookie, (t, generation));
            }
        }
        self.awaiting_final
            .retain(|_, (_, g)| generation.saturating_sub(*g) < LATE_FINAL_DUMPS);
        let early = &mut self.births.early_responses;
        let before = early.len();
        early.retain(|_, (_, g)| generation.saturating_sub(*g) < EARLY_RESPONSE_DUMPS);
        self.stats.responses_unmatched += (before - early.len()) as u64;
        if self.awaiting_final.len() > LATE_FINAL_MAX {
            let mut by_age: Vec<(u64, u64)> = self
                .awaiting_final
                .iter()
                .map(|(c, (_, g))| (*g, *c))
                .collect();
            by_age.sort_unstable();
            let excess = self.awaiting_final.len() - LATE_FINAL_MAX;
            for (_, cookie) in by_age.into_iter().take(excess) {
                self.awaiting_final.remove(&cookie);
            }
        }
        self.generation += 1;
        self.baseline_done |= complete;
    }

    /// Tracked connections the last dump did not see and no destroy notification has closed
    /// yet: closes whose notifications (sent by a kernel worker after the close) are still on
    /// their way, or were lost.
    pub fn missing_from_last_dump(&self) -> usize {
        let last = self.generation.saturating_sub(1);
        self.sockets.values().filter(|t| t.last_seen < last).count()
    }

    /// Whether the baseline dump is done (before it, destroy notifications are of sockets
    /// older than depmap and are ignored).
    pub fn baseline_done(&self) -> bool {
        self.baseline_done
    }

    /// Pools referred to by tracked sockets (and sockets awaiting a late final).
    pub fn processes(&self) -> std::collections::HashSet<PoolId> {
        self.sockets
            .values()
            .chain(self.awaiting_final.values().map(|(t, _)| t))
            .filter_map(|t| t.key.process.clone())
            .collect()
    }

    /// A hot-set re-read of a tracked socket between full dumps: feeds the response-time
    /// estimator only (bytes and links are counted from dumps and finals).
    pub fn observe_response(&mut self, cookie: u64, at_ms: u64, c: &TcpCounters) {
        if !self.baseline_done {
            return;
        }
        if let Some(t) = self.sockets.get_mut(&cookie)
            && !t.timed_by_events
        {
            let client = t.client();
            let stats = if t.key.process.is_none() {
                t.pending.get_or_insert_default()
            } else {
                self.window.of_socket(&t.key, &mut t.slot)
            };
            t.rt.observe(at_ms, c, client, &mut stats.rt);
        }
    }

    /// Credits a socket first seen without a known process to `process`, including what it did
    /// earlier in this window; what it did in earlier windows stays unattributed.
    pub fn attribute(&mut self, cookie: u64, process: PoolId) {
        if let Some(t) = self.sockets.get_mut(&cookie)
            && t.key.process.is_none()
        {
            t.key.process = Some(process);
            t.slot = Slot::default();
            Self::flush_pending(&mut self.window, t);
        }
    }

    /// The tracked key of a cookie, if any.
    pub fn key_of(&self, cookie: u64) -> Option<&ConnKey> {
        self.sockets.get(&cookie).map(|t| &t.key)
    }

    /// A destroy notification with a socket's final counters, received at `at_ms`. For a
    /// socket never seen in a dump, `key` is computed.
    pub fn closed(
        &mut self,
        s: &TcpSample,
        fin_received: bool,
        at_ms: u64,
        key: impl FnOnce() -> ConnKey,
    ) {
        if let Some((mut t, _)) = self.awaiting_final.remove(&s.cookie) {
            // Already counted as terminated; only its last bytes are new.
            self.stats.late_finals += 1;
            if let Some(c) = &s.counters {
                let (sent, received) = payload(c, t.syn_acked, fin_received);
                let client = t.client();
                let stats = self.window.of_socket(&t.key, &mut t.slot);
                if !t.timed_by_events {
                    t.rt.observe(at_ms, c, client, &mut stats.rt);
                }
                stats.bytes_sent += sent.saturating_sub(t.sent);
                stats.bytes_received += received.saturating_sub(t.received);
            }
            return;
        }
        let mut tracked = match self.sockets.remove(&s.cookie) {
            Some(t) => t,
            None if self.full() => {
                self.stats.shed += 1;
                return;
            }
            None => self
                .births
                .born(s.cookie, key(), false, false, self.generation),
        };
        Self::flush_pending(&mut self.window, &mut tracked);
        let client = tracked.client();
        let stats = self.window.of_socket(&tracked.key, &mut tracked.slot);
        if let Some(c) = &s.counters
            && !tracked.timed_by_events
        {
            tracked.rt.observe(at_ms, c, client, &mut stats.rt);
        }
        let (sent, received) = s
            .counters
            .as_ref()
            .map(|c| payload(c, tracked.syn_acked, fin_received))
            .unwrap_or((tracked.sent, tracked.received));
        // An accepted socket was established by definition; a connecting one once its SYN
        // was acknowledged.
        let was_established = tracked.established
            || tracked.key.direction == Direction::Inbound
            || s.counters.is_some_and(|c| c.bytes_acked > 0);
        if tracked.terminated {
            // Counted when it went missing from the dumps.
        } else if was_established {
            if !tracked.established {
                stats.links_established += 1;
            }
            stats.links_terminated += 1;
        } else {
            tracked.count_failed(stats);
        }
        stats.bytes_sent += sent.saturating_sub(tracked.sent);
        stats.bytes_received += received.saturating_sub(tracked.received);
    }

    /// Closes the window: adds `LinksLive` for every established socket seen in the last dump
    /// and returns the sums, leaving an empty window behind.
    pub fn close_window(&mut self) -> HashMap<ConnKey, ConnStats> {
        let last = self.generation.saturating_sub(1);
        for t in self.sockets.values_mut() {
            Self::flush_pending(&mut self.window, t);
        }
        for t in self.sockets.values_mut() {
            if t.established && t.last_seen == last {
                self.window.of_socket(&t.key, &mut t.slot).links_live += 1;
            }
        }
        self.window.take()
    }
}

/// When and how a dump saw a sample, beside its counters.
#[derive(Clone, Copy)]
struct Seen {
    generation: u64,
    /// The baseline dump: counters are the starting point, not activity.
    baseline: bool,
    at_ms: u64,
    fin_received: bool,
}

/// One dump's sample of a tracked socket: seen now, its link established, its byte and
/// response-time deltas into the window (or its pending sums while no process is known).
fn update(
    tracked: &mut Tracked,
    window: &mut WindowSums,
    tracker_stats: &mut TrackerStats,
    s: &TcpSample,
    seen: Seen,
) {
    let Seen {
        generation,
        baseline,
        at_ms,
        fin_received,
    } = seen;
    let established_now = is_established(s.state);
    tracked.last_seen = generation;
    let client = tracked.client();
    let stats = if tracked.key.process.is_none() {
        tracked.pending.get_or_insert_default()
    } else {
        window.of_socket(&tracked.key, &mut tracked.slot)
    };
    if established_now && !tracked.established {
        tracked.established = true;
        stats.links_established += 1;
    }
    let Some(c) = &s.counters else {
        tracker_stats.without_counters += 1;
        return;
    };
    let (sent, received) = payload(c, tracked.syn_acked, fin_received);
    if baseline {
        tracked.sent = sent;
        tracked.received = received;
        tracked.rt = RtEstimator::baseline(at_ms, c, client);
        return;
    }
    if !tracked.timed_by_events {
        tracked.rt.observe(at_ms, c, client, &mut stats.rt);
    }
    stats.bytes_sent += sent.saturating_sub(tracked.sent);
    stats.bytes_received += received.saturating_sub(tracked.received);
    tracked.sent = tracked.sent.max(sent);
    tracked.received = tracked.received.max(received);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn key(dir: Direction) -> ConnKey {
        ConnKey {
            direction: dir,
            process: Some("p-1".into()),
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn sample(cookie: u64, st: u8, acked: u64, sent: u64, recv: u64) -> TcpSample {
        TcpSample {
            cookie,
            family: crate::collect::sockdiag::Family::V4,
            state: st,
            local: "10.0.0.1:40000".parse::<SocketAddr>().unwrap(),
            remote: "10.0.0.2:80".parse::<SocketAddr>().unwrap(),
            uid: 0,
            inode: 1,
            counters: Some(TcpCounters {
                state: st,
                bytes_acked: acked,
                bytes_sent: sent,
                bytes_received: recv,
                ..Default::default()
            }),
            netns: 0,
        }
    }

    fn poll(t: &mut SocketTracker, samples: &[TcpSample], dir: Direction) {
        for s in samples {
            t.observe(s, fin_received_in(s).unwrap_or(false), 0, || key(dir));
        }
        t.end_dump(true);
    }

    #[test]
    fn the_fin_is_judged_by_the_state_read_with_the_counters() {
        // The message said ESTABLISHED; the FIN arrived before tcp_info was read.
        let mut s = sample(1, state::ESTABLISHED, 101, 100, 101);
        if let Some(c) = s.counters.as_mut() {
            c.state = state::CLOSE_WAIT;
        }
        assert_eq!(fin_received_in(&s), Some(true));
        let mut t = SocketTracker::new();
        t.end_dump(true); // baseline: empty
        poll(&mut t, std::slice::from_ref(&s), Direction::Inbound);
        let w = t.close_window()[&key(Direction::Inbound)];
        assert_eq!(w.bytes_received, 100);
    }

    #[test]
    fn a_connection_the_last_dump_missed_is_missing_until_its_final_comes() {
        let mut t = SocketTracker::new();
        t.end_dump(true); // baseline: empty
        let a = sample(1, state::ESTABLISHED, 101, 100, 50);
        let b = sample(2, state::ESTABLISHED, 101, 100, 50);
        poll(&mut t, &[a.clone(), b.clone()], Direction::Outbound);
        assert_eq!(t.missing_from_last_dump(), 0);
        // Closed just before this dump: its notification is still on its way.
        poll(&mut t, std::slice::from_ref(&a), Direction::Outbound);
        assert_eq!(t.missing_from_last_dump(), 1);
        let last = sample(2, state::CLOSE, 301, 300, 51);
        t.closed(&last, true, 0, || key(Direction::Outbound));
        assert_eq!(t.missing_from_last_dump(), 0);
        let w = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((w.bytes_sent, w.links_terminated), (400, 1));
    }

    #[test]
    fn only_attributed_sockets_are_observed_before_processes_are_resolved() {
        let mut t = SocketTracker::new();
        t.end_dump(true); // baseline: empty
        let a = sample(1, state::ESTABLISHED, 1, 0, 0);
        assert_eq!(t.observe_attributed(&a, false, 0), Known::New);
        assert!(t.is_empty(), "a new socket waits for its key");
        poll(&mut t, std::slice::from_ref(&a), Direction::Outbound);
        let more = sample(1, state::ESTABLISHED, 101, 100, 0);
        assert_eq!(t.observe_attributed(&more, false, 0), Known::Attributed);
        t.end_dump(true);
        let w = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((w.bytes_sent, w.links_established), (100, 1));
        // No process yet: left for after the resolve.
        let mut orphan = sample(2, state::ESTABLISHED, 1, 0, 0);
        t.observe(&orphan, false, 0, || ConnKey {
            process: None,
            ..key(Direction::Outbound)
        });
        orphan.counters = sample(2, state::ESTABLISHED, 51, 50, 0).counters;
        assert_eq!(t.observe_attributed(&orphan, false, 0), Known::Unattributed);
    }

    #[test]
    fn payload_strips_syn_and_fin() {
        let c = TcpCounters {
            bytes_acked: 302,
            bytes_sent: 300,
            bytes_received: 5001,
            ..Default::default()
        };
        assert_eq!(payload(&c, 1, true), (300, 5000));
        // In flight: acked lags sent.
        let c = TcpCounters {
            bytes_acked: 101,
            bytes_sent: 300,
            ..Default::default()
        };
        assert_eq!(payload(&c, 1, false).0, 100);
        // Retransmissions are not payload twice.
        let c = TcpCounters {
            bytes_acked: 5001,
            bytes_sent: 6000,
            bytes_retrans: 1000,
            ..Default::default()
        };
        assert_eq!(payload(&c, 0, false).0, 5000);
    }

    #[test]
    fn baseline_sockets_count_only_later_bytes_and_are_not_established() {
        let mut t = SocketTracker::new();
        poll(
            &mut t,
            &[sample(1, state::ESTABLISHED, 1001, 1000, 500)],
            Direction::Outbound,
        );
        let w = t.close_window();
        let s = w[&key(Direction::Outbound)];
        assert_eq!(
            (
                s.links_established,
                s.links_live,
                s.bytes_sent,
                s.bytes_received
            ),
            (0, 1, 0, 0)
        );
        poll(
            &mut t,
            &[sample(1, state::ESTABLISHED, 1101, 1100, 550)],
            Direction::Outbound,
        );
        let w = t.close_window();
        let s = w[&key(Direction::Outbound)];
        assert_eq!(
            (
                s.links_established,
                s.links_live,
                s.bytes_sent,
                s.bytes_received
            ),
            (0, 1, 100, 50)
        );
    }

    #[test]
    fn deltas_across_polls_windows_and_close_sum_to_the_final_counters() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound); // baseline: nothing
        poll(
            &mut t,
            &[sample(7, state::ESTABLISHED, 11, 10, 20)],
            Direction::Outbound,
        );
        poll(
            &mut t,
            &[sample(7, state::ESTABLISHED, 31, 30, 40)],
            Direction::Outbound,
        );
        let w1 = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (
                w1.links_established,
                w1.links_live,
                w1.bytes_sent,
                w1.bytes_received
            ),
            (1, 1, 30, 40)
        );
        poll(
            &mut t,
            &[sample(7, state::ESTABLISHED, 51, 50, 60)],
            Direction::Outbound,
        );
        // Final: 70 sent (+FIN acked), 80 received (+peer FIN).
        t.closed(
            &sample(7, state::CLOSE, 72, 70, 81),
            true,
            0,
            || unreachable!(),
        );
        poll(&mut t, &[], Direction::Outbound);
        let w2 = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (w2.links_established, w2.links_terminated, w2.links_live),
            (0, 1, 0)
        );
        assert_eq!(w1.bytes_sent + w2.bytes_sent, 70);
        assert_eq!(w1.bytes_received + w2.bytes_received, 80);
        assert!(t.is_empty());
    }

    #[test]
    fn event_timed_sockets_count_every_exchange_once_and_skip_the_estimator() {
        let mut t = SocketTracker::new();
        t.time_by_events(true);
        poll(&mut t, &[], Direction::Outbound); // baseline: nothing older than depmap
        // Two exchanges measured before the socket's first dump, one after.
        t.response_measured(7, 20_400);
        t.response_measured(7, 19_600);
        let mut s = sample(7, state::ESTABLISHED, 101, 100, 1000);
        if let Some(c) = s.counters.as_mut() {
            // Counters an idle-snapshot estimate would turn into a 40 ms sample.
            c.last_data_sent_ms = 60;
            c.last_data_recv_ms = 20;
        }
        poll(&mut t, std::slice::from_ref(&s), Direction::Outbound);
        t.response_measured(7, 21_000);
        t.closed(&sample(7, state::CLOSE, 202, 200, 2000), false, 5, || {
            key(Direction::Outbound)
        });
        let rt = t.close_window()[&key(Direction::Outbound)].rt;
        assert_eq!(
            (rt.responses, rt.sum_us, rt.min_us, rt.max_us),
            (3, 61_000, 19_600, 21_000)
        );
        // Times of a socket never seen wait for the next dump and two more, then are
        // counted as unmatched.
        t.response_measured(99, 5_000);
        for _ in 0..2 {
            poll(&mut t, &[], Direction::Outbound);
        }
        assert_eq!(t.stats.responses_unmatched, 0);
        poll(&mut t, &[], Direction::Outbound);
        assert_eq!(t.stats.responses_unmatched, 1);
        assert!(t.close_window().is_empty());
    }

    #[test]
    fn without_event_timing_and_for_baseline_sockets_the_estimator_runs() {
        let mut t = SocketTracker::new();
        t.time_by_events(true);
        let mut old = sample(3, state::ESTABLISHED, 101, 100, 1000);
        poll(&mut t, std::slice::from_ref(&old), Direction::Outbound); // older than depmap
        if let Some(c) = old.counters.as_mut() {
            c.bytes_acked = 201;
            c.bytes_sent = 200;
            c.bytes_received = 2000;
            c.data_segs_out = 2;
            c.last_data_sent_ms = 60;
            c.last_data_recv_ms = 20;
        }
        poll(&mut t, std::slice::from_ref(&old), Direction::Outbound);
        let rt = t.close_window()[&key(Direction::Outbound)].rt;
        assert_eq!(
            (rt.responses, rt.sum_us),
            (1, 40_000),
            "idle snapshot: 60 − 20 ms"
        );
    }

    #[test]
    fn a_socket_seen_only_at_destroy_is_established_and_terminated() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        t.closed(&sample(9, state::CLOSE, 202, 200, 301), true, 0, || {
            key(Direction::Outbound)
        });
        // A connect that failed (SYN never acked) is not established.
        t.closed(&sample(10, state::CLOSE, 0, 0, 0), false, 0, || {
            key(Direction::Outbound)
        });
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (s.links_established, s.links_terminated, s.links_failed),
            (1, 1, 1)
        );
        assert_eq!((s.bytes_sent, s.bytes_received), (200, 300));
    }

    #[test]
    fn syn_sent_becomes_established_later_and_missing_sockets_close() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        poll(
            &mut t,
            &[sample(3, state::SYN_SENT, 0, 0, 0)],
            Direction::Outbound,
        );
        poll(
            &mut t,
            &[sample(3, state::ESTABLISHED, 1, 0, 0)],
            Direction::Outbound,
        );
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((s.links_established, s.links_live), (1, 1));
        for _ in 0..MISSING_DUMPS_BEFORE_CLOSE {
            poll(&mut t, &[], Direction::Outbound);
        }
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((s.links_terminated, s.links_live), (1, 0));
        assert_eq!(t.stats.closed_without_final, 1);
        // Its destroy notification arrives late (the process held the file): the last bytes
        // still count, the link is not terminated twice.
        assert!(t.knows(3));
        t.closed(
            &sample(3, state::CLOSE, 41, 40, 9),
            true,
            0,
            || unreachable!(),
        );
        poll(&mut t, &[], Direction::Outbound);
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (s.links_terminated, s.bytes_sent, s.bytes_received),
            (0, 40, 8)
        );
        assert_eq!(t.stats.late_finals, 1);
        assert!(!t.knows(3));
    }

    #[test]
    fn a_socket_attributed_later_in_its_window_is_wholly_its_process() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        let unknown = ConnKey {
            process: None,
            ..key(Direction::Outbound)
        };
        t.observe(&sample(5, state::ESTABLISHED, 11, 10, 0), false, 0, || {
            unknown.clone()
        });
        t.end_dump(true);
        t.attribute(5, "p-1".into());
        t.observe(
            &sample(5, state::ESTABLISHED, 31, 30, 0),
            false,
            0,
            || unreachable!(),
        );
        t.end_dump(true);
        let w = t.close_window();
        // Found within the window: all of the window's activity is the process's.
        assert!(!w.contains_key(&unknown));
        assert_eq!(w[&key(Direction::Outbound)].bytes_sent, 30);
        assert_eq!(w[&key(Direction::Outbound)].links_established, 1);
        assert_eq!(w[&key(Direction::Outbound)].links_live, 1);
        // Not found within a window: that window's activity stays unattributed.
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        t.observe(&sample(5, state::ESTABLISHED, 11, 10, 0), false, 0, || {
            unknown.clone()
        });
        t.end_dump(true);
        let w = t.close_window();
        assert_eq!((w[&unknown].bytes_sent, w[&unknown].links_live), (10, 1));
        t.attribute(5, "p-1".into());
        t.observe(
            &sample(5, state::ESTABLISHED, 31, 30, 0),
            false,
            0,
            || unreachable!(),
        );
        t.end_dump(true);
        assert_eq!(t.close_window()[&key(Direction::Outbound)].bytes_sent, 20);
    }

    #[test]
    fn an_attempt_that_leaves_the_table_fails_at_once_and_its_late_final_adds_nothing() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        poll(
            &mut t,
            &[sample(12, state::SYN_SENT, 0, 0, 0)],
            Direction::Outbound,
        );
        poll(&mut t, &[], Direction::Outbound);
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (s.links_failed, s.links_established, s.links_live),
            (1, 0, 0)
        );
        t.closed(
            &sample(12, state::CLOSE, 0, 0, 0),
            false,
            0,
            || unreachable!(),
        );
        poll(&mut t, &[], Direction::Outbound);
        let w = t.close_window();
        assert_eq!(
            w.get(&key(Direction::Outbound))
                .copied()
                .unwrap_or_default()
                .links_failed,
            0
        );
    }

    #[test]
    fn a_socket_back_from_missing_is_not_terminated_twice() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Outbound);
        poll(
            &mut t,
            &[sample(6, state::ESTABLISHED, 11, 10, 0)],
            Direction::Outbound,
        );
        for _ in 0..MISSING_DUMPS_BEFORE_CLOSE {
            poll(&mut t, &[], Direction::Outbound); // e.g. failing dumps
        }
        poll(
            &mut t,
            &[sample(6, state::ESTABLISHED, 21, 20, 0)],
            Direction::Outbound,
        );
        t.closed(
            &sample(6, state::CLOSE, 32, 30, 0),
            false,
            0,
            || unreachable!(),
        );
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((s.links_established, s.links_terminated), (1, 1));
        assert_eq!(s.bytes_sent, 30);
    }

    #[test]
    fn an_incomplete_first_dump_is_not_a_baseline() {
        let mut t = SocketTracker::new();
        t.end_dump(false); // the first dump failed part-way
        assert!(!t.baseline_done());
        // The socket the failed dump missed is still part of the baseline.
        t.observe(
            &sample(8, state::ESTABLISHED, 1001, 1000, 0),
            false,
            0,
            || key(Direction::Outbound),
        );
        t.end_dump(true);
        assert!(t.baseline_done());
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!((s.links_established, s.bytes_sent, s.links_live), (0, 0, 1));
    }

    #[test]
    fn beyond_the_cap_new_sockets_are_shed_and_tracked_ones_stay_exact() {
        let mut t = SocketTracker::with_cap(1);
        poll(&mut t, &[], Direction::Outbound);
        poll(
            &mut t,
            &[
                sample(1, state::ESTABLISHED, 11, 10, 0),
                sample(2, state::ESTABLISHED, 21, 20, 0),
            ],
            Direction::Outbound,
        );
        t.closed(&sample(3, state::CLOSE, 31, 30, 0), false, 0, || {
            key(Direction::Outbound)
        });
        poll(
            &mut t,
            &[
                sample(1, state::ESTABLISHED, 16, 15, 0),
                sample(2, state::ESTABLISHED, 41, 40, 0),
            ],
            Direction::Outbound,
        );
        let s = t.close_window()[&key(Direction::Outbound)];
        assert_eq!(
            (s.links_established, s.bytes_sent, s.links_live),
            (1, 15, 1)
        );
        assert_eq!(t.stats.shed, 3);
        assert!(!t.knows(2) && !t.knows(3));
    }

    #[test]
    fn inbound_sockets_have_no_syn_in_bytes_acked() {
        let mut t = SocketTracker::new();
        poll(&mut t, &[], Direction::Inbound);
        t.closed(&sample(4, state::CLOSE, 5001, 5000, 301), true, 0, || {
            key(Direction::Inbound)
        });
        let s = t.close_window()[&key(Direction::Inbound)];
        assert_eq!(
            (s.bytes_sent, s.bytes_received, s.links_established),
            (5000, 300, 1)
        );
    }
}
