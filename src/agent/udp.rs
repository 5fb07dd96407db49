//! The agent's UDP steps (README "UDP"): each full poll's UDP dump (bound ports, the holders
//! of flows, and — without flow counters — the connected sockets that are the flows), and the
//! reads of the event source's flow map.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Agent;
use crate::collect::sockdiag::UdpSample;
use crate::collect::udp_flows::FlowKey;
use crate::track::sockets::Direction;

/// Longest time between two reads of the UDP flow map (besides the full polls): a read costs
/// two `bpf(2)` calls a flow (measured: depmap +3.5 % of a core with 5,000 flows read every
/// second, BENCHMARKS.md); the creators of new sockets wait 30 s for their flows
/// (`Attribution::udp_owner`), so reading less often loses no owner.
const UDP_READ_PERIOD: Duration = Duration::from_secs(5);

impl Agent {
    /// The UDP sockets now: the bound ports, and the holders of flows (none with
    /// `collect.udp = false`).
    pub(super) fn dump_udp(&mut self) {
        self.udp_ports.clear();
        self.udp_sockets.clear();
        self.udp_connected.clear();
        if !self.config.collect.udp {
            return;
        }
        let mut all = Vec::new();
        self.udp_dump_complete = self.sources.dump_udp(&mut all);
        let measured = self.sources.udp_flows_measured();
        for s in all {
            self.udp_sockets.insert(s.cookie, (s.inode, s.uid));
            if self.sources.is_udp_port(&s) {
                self.udp_ports.push(s);
            } else if !measured && s.remote.port() != 0 {
                self.udp_connected.push(s);
            }
        }
    }

    /// Without flow counters, the UDP flows of the connected sockets the last full poll's
    /// dump showed (`track::udp`: no bytes; inbound when the local port is a server's and
    /// the remote's is ephemeral).
    fn observe_connected_udp(&mut self) {
        let sources = &self.sources;
        let direction = |s: &UdpSample| {
            let server = |port: u16| !sources.is_ephemeral(s.netns, port);
            if server(s.local.port()) && !server(s.remote.port()) {
                Direction::Inbound
            } else {
                Direction::Outbound
            }
        };
        let attribution = &mut self.attribution;
        self.udp.observe_connected(
            self.udp_connected.iter().map(|s| (s, direction(s))),
            self.udp_dump_complete,
            |s| {
                attribution
                    .udp_owner(s.cookie)
                    .or_else(|| attribution.pool_holding(s.inode))
            },
        );
    }

    /// The UDP flows' counters since the last read (with the event source's UDP programs),
    /// at every full poll and at most every [`UDP_READ_PERIOD`] between them (`full`: a full
    /// poll's read). Flows of sockets the last UDP dump did not have make a dump now, and
    /// their holders are read from /proc.
    pub(super) fn apply_udp_flows(&mut self, full: bool) {
        let due = full
            || self
                .udp_read_at
                .is_none_or(|at| at.elapsed() >= UDP_READ_PERIOD);
        if !self.config.collect.udp || !due {
            return;
        }
        self.udp_read_at = Some(Instant::now());
        let mut read = std::mem::take(&mut self.udp_read);
        if !self.sources.read_udp_flows(&mut read) {
            if full {
                self.observe_connected_udp();
            }
            return;
        }
        // A full poll's UDP dump was just made; between them, one now for new sockets.
        let unknown = |k: &FlowKey| !self.udp_sockets.contains_key(&k.cookie);
        if !full && read.iter().any(|(k, _)| unknown(k) && self.udp.is_new(k)) {
            self.dump_udp();
        }
        let wanted: HashMap<u32, u32> = read
            .iter()
            .filter(|(k, _)| self.udp.needs_owner(k))
            .filter_map(|(k, _)| self.udp_sockets.get(&k.cookie).copied())
            .filter(|(inode, _)| *inode != 0)
            .collect();
        if !wanted.is_empty() {
            self.attribution.resolve(&wanted, &[], Instant::now());
        }
        let at = self.sources.clock_ms();
        let (sockets, attribution) = (&self.udp_sockets, &mut self.attribution);
        // The creator an event named, else the holder /proc shows.
        let idle = self.udp.observe(&read, at, |cookie| {
            attribution
                .udp_owner(cookie)
                .or_else(|| attribution.pool_holding(sockets.get(&cookie)?.0))
        });
        self.sources.forget_udp_flows(&idle);
        self.udp_read = read;
    }
}
