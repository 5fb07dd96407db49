//! UDP flows across reads of the kernel's flow counters, and their window sums.
//!
//! A flow is one socket and one remote endpoint (README "UDP" has the rules):
//! * **established** when first seen (`LinksEstablished` of that window);
//! * **direction**: inbound when its first datagram was received, else outbound (the side
//!   that sent first is the client: a DNS query, an NTP request, a syslog message);
//! * **terminated** once idle — no datagram either way — for [`IDLE_AFTER`] (`LinksTerminated`
//!   of the window that sees it idle; the kernel forgets it then, and a later datagram is a
//!   new flow);
//! * **live** at a window's end when not terminated (`LinksLive`);
//! * bytes: UDP payload each way, the deltas of the kernel's sums;
//! * response times: DNS only (a flow to or from port 53), one per answered query, timed by
//!   the programs from the query's datagram to the answer's, in the window of the read that
//!   sees the flow (an answer's event can arrive before the flow's first read: it waits
//!   for it, [`PENDING_RESPONSES_MAX`] at most, [`PENDING_RESPONSE_MS`] long); other flows
//!   have `Responses` 0 and null times (no request/response pairing to trust).
//!
//! Without the flow counters (no event source, or its UDP programs cannot run), the polling
//! path's dumps still show *connected* UDP sockets, each one flow to its one remote
//! ([`UdpTracker::observe_connected`]): established when a dump first shows it (not in the
//! first dump: older than depmap, like TCP's baseline), terminated when a complete dump no
//! longer does, live while dumps show it; bytes unmeasured (null); inbound when its local
//! port is a server's (outside the ephemeral range) and its remote's is not, else outbound.
//! Unconnected sockets have no remote in a dump: only their bound ports are known.
//!
//! No I/O: the poll loop hands it each read and the owners it knows.

use std::collections::HashMap;

use std::net::SocketAddr;

use super::response::RtStats;
use super::sockets::{ConnKey, ConnStats, Direction, PoolId, Protocol};
use crate::collect::sockdiag::UdpSample;
use crate::collect::udp_flows::{FlowCounts, FlowKey};

/// How long a flow may be idle before it is terminated (conntrack's timeout for a UDP
/// "stream" is 120 s, for a single exchange 30 s; a window is 60 s by default).
pub const IDLE_AFTER_MS: u64 = 60_000;
/// How long a new flow whose socket's owner is not known yet waits for it (its creator's
/// event may wait in the ring for a drain, 200 ms) before it is keyed without a process. The
/// kernel's sums are cumulative: waiting loses no byte.
pub const OWNER_WAIT_MS: u64 = 600;
/// Most DNS response times kept for flows not read yet (the map is read every few seconds;
/// a resolver's answers come in milliseconds), and how long one waits before it is counted
/// unmatched (longer than the owner wait and the read period together).
pub const PENDING_RESPONSES_MAX: usize = 4096;
pub const PENDING_RESPONSE_MS: u64 = 30_000;

struct Flow {
    key: ConnKey,
    last: FlowCounts,
    /// When its counters last moved (sources' clock).
    active_ms: u64,
}

/// Counters of the flows' tracking.
#[derive(Debug, Default, Clone, Copy)]
pub struct UdpStats {
    pub flows_seen: u64,
    /// Flows beyond [`UdpTracker::max_flows`] (not tracked; their bytes are missing).
    pub shed: u64,
    /// DNS response times whose flow was never tracked (or beyond the pending cap).
    pub responses_unmatched: u64,
}

pub struct UdpTracker {
    flows: HashMap<FlowKey, Flow>,
    /// Connected sockets from dumps (no flow counters): by cookie and remote.
    connected: HashMap<(u64, SocketAddr), ConnKey>,
    connected_baseline_done: bool,
    /// New flows waiting for their owner: when first seen.
    pending: HashMap<FlowKey, u64>,
    /// Response times of flows not tracked yet, and when the first arrived.
    pending_rt: HashMap<FlowKey, (RtStats, u64)>,
    window: HashMap<ConnKey, ConnStats>,
    max_flows: usize,
    pub stats: UdpStats,
}

impl UdpTracker {
    pub fn new(max_flows: usize) -> UdpTracker {
        UdpTracker {
            flows: HashMap::new(),
            connected: HashMap::new(),
            connected_baseline_done: false,
            pending: HashMap::new(),
            pending_rt: HashMap::new(),
            window: HashMap::new(),
            max_flows,
            stats: UdpStats::default(),
        }
    }

    /// Applies one read of the kernel's flows at `now_ms`; `owner` names a socket's pool by
    /// its cookie where known. Returns the flows to forget in the kernel (idle).
    pub fn observe(
        &mut self,
        read: &[(FlowKey, FlowCounts)],
        now_ms: u64,
        mut owner: impl FnMut(u64) -> Option<PoolId>,
    ) -> Vec<FlowKey> {
        for (k, c) in read {
            match self.flows.get_mut(k) {
                Some(flow) => {
                    let out = c.bytes_out.saturating_sub(flow.last.bytes_out);
                    let inb = c.bytes_in.saturating_sub(flow.last.bytes_in);
                    let moved = c.datagrams_out != flow.last.datagrams_out
                        || c.datagrams_in != flow.last.datagrams_in;
                    if flow.key.process.is_none()
                        && let Some(pool) = owner(k.cookie)
                    {
                        flow.key.process = Some(pool);
                    }
                    flow.last = *c;
                    if moved {
                        flow.active_ms = now_ms;
                        let w = self.window.entry(flow.key.clone()).or_default();
                        w.bytes_sent += out;
                        w.bytes_received += inb;
                    }
                }
                None => {
                    if self.flows.len() >= self.max_flows {
                        self.stats.shed += 1;
                        continue;
                    }
                    let process = owner(k.cookie);
                    if process.is_none() {
                        let first = *self.pending.entry(*k).or_insert(now_ms);
                        if now_ms.saturating_sub(first) < OWNER_WAIT_MS {
                            continue;
                        }
                    }
                    self.pending.remove(k);
                    self.stats.flows_seen += 1;
                    let key = conn_key(k, c, process);
                    let w = self.window.entry(key.clone()).or_default();
                    w.links_established += 1;
                    w.bytes_sent += c.bytes_out;
                    w.bytes_received += c.bytes_in;
                    if let Some((rt, _)) = self.pending_rt.remove(k) {
                        w.rt.add(&rt);
                    }
                    self.flows.insert(
                        *k,
                        Flow {
                            key,
                            last: *c,
                            active_ms: now_ms,
                        },
                    );
                }
            }
        }
        let before = self.pending_rt.len();
        self.pending_rt
            .retain(|_, (_, at)| now_ms.saturating_sub(*at) < PENDING_RESPONSE_MS);
        self.stats.responses_unmatched += (before - self.pending_rt.len()) as u64;
        let idle: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(_, f)| now_ms.saturating_sub(f.active_ms) >= IDLE_AFTER_MS)
            .map(|(k, _)| *k)
            .collect();
        for k in &idle {
            if let Some(f) = self.flows.remove(k) {
                self.window.entry(f.key).or_default().links_terminated += 1;
            }
        }
        idle
    }

    /// One DNS exchange's time on `flow` (its answer's event, at `now_ms`): in the window of
    /// the flow's key, or kept until the flow's first read.
    pub fn response_measured(&mut self, flow: FlowKey, micros: u64, now_ms: u64) {
        if let Some(f) = self.flows.get(&flow) {
            self.window
                .entry(f.key.clone())
                .or_default()
                .rt
                .record_us(micros, 1);
            return;
        }
        let full = self.pending_rt.len() >= PENDING_RESPONSES_MAX;
        match self.pending_rt.get_mut(&flow) {
            Some((rt, _)) => rt.record_us(micros, 1),
            None if full => self.stats.responses_unmatched += 1,
            None => {
                let mut rt = RtStats::default();
                rt.record_us(micros, 1);
                self.pending_rt.insert(flow, (rt, now_ms));
            }
        }
    }

    /// Applies one UDP dump's connected sockets, each with its direction (see the module
    /// comment); `complete`: no dump failed, so a socket missing from it is gone. Until the
    /// first complete dump the sockets are a baseline (older than depmap: live, not
    /// established). `owner` names a socket's pool where known.
    pub fn observe_connected<'a>(
        &mut self,
        sockets: impl Iterator<Item = (&'a UdpSample, Direction)>,
        complete: bool,
        mut owner: impl FnMut(&UdpSample) -> Option<PoolId>,
    ) {
        let baseline = !self.connected_baseline_done;
        self.connected_baseline_done |= complete;
        let mut seen = std::collections::HashSet::new();
        for (s, direction) in sockets {
            let id = (s.cookie, s.remote);
            seen.insert(id);
            match self.connected.get_mut(&id) {
                Some(key) => {
                    if key.process.is_none() {
                        key.process = owner(s);
                    }
                }
                None => {
                    if self.flows.len() + self.connected.len() >= self.max_flows {
                        self.stats.shed += 1;
                        continue;
                    }
                    self.stats.flows_seen += 1;
                    let key =
                        ConnKey::between(direction, owner(s), s.local, s.remote, Protocol::Udp);
                    let w = self.window.entry(key.clone()).or_default();
                    w.bytes_unmeasured = true;
                    if !baseline {
                        w.links_established += 1;
                    }
                    self.connected.insert(id, key);
                }
            }
        }
        if complete {
            let window = &mut self.window;
            self.connected.retain(|id, key| {
                let present = seen.contains(id);
                if !present {
                    let w = window.entry(key.clone()).or_default();
                    w.links_terminated += 1;
                    w.bytes_unmeasured = true;
                }
                present
            });
        }
    }

    /// Whether connected socket `s` is not tracked yet or has no process yet.
    pub fn connected_needs_owner(&self, s: &UdpSample) -> bool {
        self.connected
            .get(&(s.cookie, s.remote))
            .is_none_or(|k| k.process.is_none())
    }

    /// Whether `k` is not tracked yet.
    pub fn is_new(&self, k: &FlowKey) -> bool {
        !self.flows.contains_key(k)
    }

    /// Whether `k` is new or has no process yet.
    pub fn needs_owner(&self, k: &FlowKey) -> bool {
        self.flows.get(k).is_none_or(|f| f.key.process.is_none())
    }

    /// Whether any flow has no process yet.
    #[cfg(test)]
    fn unattributed(&self) -> bool {
        self.flows.values().any(|f| f.key.process.is_none())
    }

    /// The processes of the flows tracked (their pools are kept).
    pub fn processes(&self) -> impl Iterator<Item = &PoolId> {
        self.flows
            .values()
            .map(|f| &f.key)
            .chain(self.connected.values())
            .filter_map(|k| k.process.as_ref())
    }

    /// The window's sums (flows not terminated count as live), and a fresh window.
    pub fn close_window(&mut self) -> HashMap<ConnKey, ConnStats> {
        let mut out = std::mem::take(&mut self.window);
        for f in self.flows.values() {
            out.entry(f.key.clone()).or_default().links_live += 1;
        }
        for key in self.connected.values() {
            let w = out.entry(key.clone()).or_default();
            w.links_live += 1;
            w.bytes_unmeasured = true;
        }
        out
    }
}

/// A new flow's grouping key (`Protocol = udp`): inbound when its first datagram arrived.
fn conn_key(k: &FlowKey, c: &FlowCounts, process: Option<PoolId>) -> ConnKey {
    let direction = if c.received_first() {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    ConnKey::between(direction, process, k.local(), k.remote(), Protocol::Udp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cookie: u64) -> FlowKey {
        FlowKey::new(
            cookie,
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:53".parse().unwrap(),
        )
    }

    #[test]
    fn flows_are_established_summed_and_terminated_when_idle() {
        let mut t = UdpTracker::new(10);
        let owner = |c: u64| (c == 1).then(|| PoolId::from("p-client"));
        // First sight: established, its bytes so far.
        let idle = t.observe(
            &[(key(1), FlowCounts::new((40, 100), (1, 1), false))],
            0,
            owner,
        );
        assert!(idle.is_empty());
        t.observe(
            &[(key(1), FlowCounts::new((80, 300), (2, 2), false))],
            1_000,
            owner,
        );
        let w = t.close_window();
        let (k, s) = w.iter().next().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (
                k.direction,
                k.protocol,
                k.destination_port,
                k.process.as_deref()
            ),
            (Direction::Outbound, Protocol::Udp, 53, Some("p-client"))
        );
        assert_eq!(
            (k.source_ip.to_string(), k.destination_ip.to_string()),
            ("10.0.0.1".into(), "10.0.0.2".into())
        );
        assert_eq!(
            (
                s.links_established,
                s.links_live,
                s.links_terminated,
                s.bytes_sent,
                s.bytes_received
            ),
            (1, 1, 0, 80, 300)
        );
        // Idle for IDLE_AFTER_MS: terminated, and forgotten in the kernel.
        let same = [(key(1), FlowCounts::new((80, 300), (2, 2), false))];
        assert!(
            t.observe(&same, 1_000 + IDLE_AFTER_MS - 1, owner)
                .is_empty()
        );
        assert_eq!(t.observe(&same, 1_000 + IDLE_AFTER_MS, owner), vec![key(1)]);
        let w = t.close_window();
        let s = w.values().next().unwrap();
        assert_eq!(
            (
                s.links_established,
                s.links_live,
                s.links_terminated,
                s.bytes_sent
            ),
            (0, 0, 1, 0)
        );
    }

    #[test]
    fn a_flow_whose_first_datagram_arrived_is_inbound_and_owners_come_late() {
        let mut t = UdpTracker::new(1);
        let none = |_: u64| None;
        // No owner yet: it waits (its bytes stay in the kernel's sums) ...
        t.observe(&[(key(2), FlowCounts::new((0, 20), (0, 1), true))], 0, none);
        assert!(t.is_new(&key(2)));
        // ... at most OWNER_WAIT_MS, then it is keyed without a process.
        let late = OWNER_WAIT_MS;
        t.observe(
            &[(key(2), FlowCounts::new((0, 30), (0, 1), true))],
            late,
            none,
        );
        assert!(!t.is_new(&key(2)));
        // Past the cap: shed, counted.
        t.observe(
            &[(key(3), FlowCounts::new((5, 0), (1, 0), false))],
            late,
            none,
        );
        assert_eq!(t.stats.shed, 1);
        assert!(t.unattributed());
        t.observe(
            &[(key(2), FlowCounts::new((60, 30), (1, 1), true))],
            late + 10,
            |_| Some(PoolId::from("p-srv")),
        );
        assert!(!t.unattributed());
        let w = t.close_window();
        let inbound: Vec<_> = w
            .iter()
            .filter(|(k, _)| k.direction == Direction::Inbound)
            .collect();
        // Before its owner was known: null; after: the pool (the bytes of each part exact).
        assert_eq!(inbound.len(), 2);
        for (k, s) in inbound {
            assert_eq!(
                (k.source_ip.to_string(), k.destination_port),
                ("10.0.0.2".into(), 40000)
            );
            match k.process.as_deref() {
                None => assert_eq!(
                    (s.links_established, s.bytes_received, s.bytes_sent),
                    (1, 30, 0)
                ),
                Some("p-srv") => assert_eq!((s.links_live, s.bytes_sent), (1, 60)),
                other => panic!("{other:?}"),
            }
        }
    }

    fn connected(cookie: u64, remote: &str) -> UdpSample {
        UdpSample {
            cookie,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            uid: 0,
            inode: 9,
            netns: 0,
        }
    }

    #[test]
    fn connected_sockets_are_flows_without_bytes() {
        let mut t = UdpTracker::new(10);
        let (old, new) = (connected(1, "10.0.0.2:53"), connected(2, "10.0.0.3:123"));
        fn out(s: &UdpSample) -> (&UdpSample, Direction) {
            (s, Direction::Outbound)
        }
        // The first dump is the baseline: live, not established.
        t.observe_connected([&old].into_iter().map(out), true, |_| None);
        let w = t.close_window();
        let s = w.values().next().unwrap();
        assert_eq!((s.links_established, s.links_live), (0, 1));
        assert!(s.bytes_unmeasured);
        // A new one, its owner found later; a failed dump terminates nothing.
        t.observe_connected([&new].into_iter().map(out), false, |_| None);
        assert!(t.connected_needs_owner(&new));
        t.observe_connected([&old, &new].into_iter().map(out), true, |s| {
            (s.cookie == 2).then(|| PoolId::from("p-ntp"))
        });
        assert!(!t.connected_needs_owner(&new));
        // Gone from a complete dump: terminated.
        t.observe_connected([&new].into_iter().map(out), true, |_| None);
        let w = t.close_window();
        let by_port = |port: u16| {
            w.iter()
                .filter(|(k, _)| k.destination_port == port)
                .map(|(k, s)| (k.process.clone(), *s))
                .fold((None, ConnStats::default()), |(p, mut a), (q, s)| {
                    a.add(&s);
                    (p.or(q), a)
                })
        };
        let (p53, s53) = by_port(53);
        assert_eq!(p53, None);
        assert_eq!(
            (s53.links_established, s53.links_terminated, s53.links_live),
            (0, 1, 0)
        );
        let (p123, s123) = by_port(123);
        assert_eq!(p123.as_deref(), Some("p-ntp"));
        // Established without a process (first dump), live with it at the window's end.
        assert_eq!((s123.links_established, s123.links_live), (1, 1));
        assert!(s53.bytes_unmeasured && s123.bytes_unmeasured);
        assert_eq!(t.processes().count(), 1);
    }

    #[test]
    fn dns_response_times_go_to_their_flow_even_before_its_first_read() {
        let mut t = UdpTracker::new(10);
        let owner = |_: u64| Some(PoolId::from("p-resolver"));
        // Two answers before the flow's first read (the map is read every few seconds).
        t.response_measured(key(1), 20_000, 0);
        t.response_measured(key(1), 30_000, 10);
        t.observe(
            &[(key(1), FlowCounts::new((80, 200), (2, 2), false))],
            100,
            owner,
        );
        // One after.
        t.response_measured(key(1), 10_000, 200);
        // A flow never read: counted unmatched once it waited too long.
        t.response_measured(key(2), 5_000, 300);
        t.observe(&[], 300 + PENDING_RESPONSE_MS, owner);
        assert_eq!(t.stats.responses_unmatched, 1);
        let w = t.close_window();
        let s = w.values().next().unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(
            (s.rt.responses, s.rt.sum_us, s.rt.min_us, s.rt.max_us),
            (3, 60_000, 10_000, 30_000)
        );
    }
}
