//! Listening sockets and the VMBoundPort sums.
//!
//! Rules (SPEC §4): a port bound to a specific address is one record with that address and
//! `IsWildcardBind = false`. A port bound to `0.0.0.0`/`::` gives one record per local address
//! that accepted connections in the window (`IsWildcardBind = true`, that address as `Ip`), and
//! the wildcard record itself (no activity) only when there is no such record for the same
//! process, port and protocol. Metrics are the sums of the inbound connections accepted on it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use crate::collect::sockdiag::is_wildcard;

use super::sockets::{ConnKey, ConnStats, Direction, PoolId, Protocol};

/// One listening socket and the pools holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// The network namespace it listens in (0: depmap's own): a listener accepts only the
    /// connections of its own namespace.
    pub netns: u64,
    /// A TCP listener, or a UDP socket bound to a (non-ephemeral) port.
    pub protocol: Protocol,
    /// Holders' pools, deduplicated; empty when no readable process holds it.
    pub owners: Vec<PoolId>,
}

/// The listeners of the latest dump, indexed by port.
#[derive(Debug, Default, Clone)]
pub struct Listeners {
    by_port: HashMap<u16, Vec<Listener>>,
}

impl Listeners {
    pub fn insert(&mut self, l: Listener) {
        let at = self.by_port.entry(l.addr.port()).or_default();
        if let Some(existing) = at
            .iter_mut()
            .find(|e| e.addr == l.addr && e.netns == l.netns && e.protocol == l.protocol)
        {
            for o in l.owners {
                if !existing.owners.contains(&o) {
                    existing.owners.push(o);
                }
            }
        } else {
            at.push(l);
        }
    }

    /// The listener (TCP) or bound port (UDP) of `protocol` that takes the traffic for local
    /// endpoint `local` in namespace `netns`: the one bound to that address, else a wildcard
    /// one of a compatible family (`::` accepts IPv4 too).
    pub fn accepting(
        &self,
        netns: u64,
        local: SocketAddr,
        protocol: Protocol,
    ) -> Option<&Listener> {
        let at = self.by_port.get(&local.port())?;
        let here = || {
            at.iter()
                .filter(|l| l.netns == netns && l.protocol == protocol)
        };
        here().find(|l| l.addr.ip() == local.ip()).or_else(|| {
            here().find(|l| {
                is_wildcard(l.addr.ip())
                    && (l.addr.is_ipv6() || local.is_ipv4() == l.addr.is_ipv4())
            })
        })
    }

    /// For a record (which names no namespace): the listener accepting on `local` in the
    /// namespace of `process`'s listener, else in any namespace, own first.
    fn accepting_for(&self, key: &ConnKey) -> Option<&Listener> {
        let local = SocketAddr::new(key.destination_ip, key.destination_port);
        let process = key.process.as_ref();
        let at = self.by_port.get(&local.port())?;
        let mut namespaces: Vec<u64> = at.iter().map(|l| l.netns).collect();
        namespaces.sort_unstable();
        namespaces.dedup();
        let mut candidates = namespaces
            .iter()
            .filter_map(|&ns| self.accepting(ns, local, key.protocol));
        match process {
            Some(p) => {
                let all: Vec<&Listener> = candidates.collect();
                all.iter()
                    .find(|l| l.owners.contains(p))
                    .or(all.first())
                    .copied()
            }
            None => candidates.next(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.by_port.values().flatten()
    }

    /// Adds every listener of `other` (the window keeps those seen at any poll).
    pub fn merge(&mut self, other: &Listeners) {
        for l in other.iter() {
            self.insert(l.clone());
        }
    }
}

/// VMBoundPort identity within a machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortKey {
    pub process: Option<PoolId>,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub is_wildcard_bind: bool,
    pub stats: ConnStats,
}

/// The window's bound-port records from the listeners seen in it and its connection sums
/// (inbound TCP connections to a listener, inbound UDP flows to a bound UDP port).
/// `udp_bytes_measured`: whether UDP flows' bytes are measured (the event source's flow
/// counters); without them a UDP port's bytes are null, not 0.
pub fn bound_ports(
    listeners: &Listeners,
    conns: &HashMap<ConnKey, ConnStats>,
    udp_bytes_measured: bool,
) -> BTreeMap<PortKey, PortStats> {
    let mut out: BTreeMap<PortKey, PortStats> = BTreeMap::new();
    let owners_or_none = |l: &Listener| -> Vec<Option<PoolId>> {
        if l.owners.is_empty() {
            vec![None]
        } else {
            l.owners.iter().cloned().map(Some).collect()
        }
    };
    for l in listeners.iter().filter(|l| !is_wildcard(l.addr.ip())) {
        for process in owners_or_none(l) {
            out.entry(PortKey {
                process,
                ip: l.addr.ip(),
                port: l.addr.port(),
                protocol: l.protocol,
            })
            .or_default();
        }
    }
    for (key, stats) in conns
        .iter()
        .filter(|(k, _)| k.direction == Direction::Inbound)
    {
        let Some(l) = listeners.accepting_for(key) else {
            continue;
        };
        let process = match &key.process {
            Some(p) if l.owners.contains(p) => Some(p.clone()),
            _ => l.owners.first().cloned(),
        };
        let entry = out
            .entry(PortKey {
                process,
                ip: key.destination_ip,
                port: key.destination_port,
                protocol: l.protocol,
            })
            .or_default();
        entry.is_wildcard_bind = is_wildcard(l.addr.ip());
        entry.stats.add(stats);
    }
    for l in listeners.iter().filter(|l| is_wildcard(l.addr.ip())) {
        for process in owners_or_none(l) {
            let covered = out.iter().any(|(k, v)| {
                v.is_wildcard_bind
                    && k.process == process
                    && k.port == l.addr.port()
                    && k.protocol == l.protocol
            });
            if !covered {
                out.insert(
                    PortKey {
                        process,
                        ip: l.addr.ip(),
                        port: l.addr.port(),
                        protocol: l.protocol,
                    },
                    PortStats {
                        is_wildcard_bind: true,
                        stats: ConnStats::default(),
                    },
                );
            }
        }
    }
    if !udp_bytes_measured {
        for (_, p) in out.iter_mut().filter(|(k, _)| k.protocol == Protocol::Udp) {
            p.stats.bytes_unmeasured = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(addr: &str, owner: &str) -> Listener {
        Listener {
            addr: addr.parse().unwrap(),
            netns: 0,
            protocol: Protocol::Tcp,
            owners: vec![owner.into()],
        }
    }

    fn inbound(dst: &str, port: u16, p: &str) -> ConnKey {
        ConnKey {
            direction: Direction::Inbound,
            process: Some(p.into()),
            source_ip: "10.9.9.9".parse().unwrap(),
            destination_ip: dst.parse().unwrap(),
            destination_port: port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn wildcard_record_only_without_specific_activity() {
        let mut ls = Listeners::default();
        ls.insert(listener("0.0.0.0:80", "p-a"));
        ls.insert(listener("127.0.0.1:5432", "p-b"));
        let mut conns = HashMap::new();
        // Idle window: the wildcard record and the specific one.
        let idle = bound_ports(&ls, &conns, true);
        let keys: Vec<_> = idle
            .iter()
            .map(|(k, v)| (k.ip.to_string(), k.port, v.is_wildcard_bind))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("0.0.0.0".into(), 80, true),
                ("127.0.0.1".into(), 5432, false)
            ]
        );
        // Two local addresses accept on port 80: two records, no wildcard record.
        let stats = ConnStats {
            links_established: 2,
            bytes_received: 10,
            ..Default::default()
        };
        conns.insert(inbound("10.0.0.1", 80, "p-a"), stats);
        conns.insert(inbound("10.0.1.1", 80, "p-a"), stats);
        let busy = bound_ports(&ls, &conns, true);
        let keys: Vec<_> = busy
            .iter()
            .map(|(k, v)| {
                (
                    k.ip.to_string(),
                    k.port,
                    v.is_wildcard_bind,
                    v.stats.bytes_received,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                ("10.0.0.1".into(), 80, true, 10),
                ("10.0.1.1".into(), 80, true, 10),
                ("127.0.0.1".into(), 5432, false, 0)
            ]
        );
    }

    #[test]
    fn dual_stack_wildcard_accepts_ipv4_and_specific_wins() {
        let mut ls = Listeners::default();
        ls.insert(listener("[::]:8080", "p-a"));
        ls.insert(listener("10.0.0.1:8080", "p-b"));
        assert_eq!(
            ls.accepting(0, "10.0.0.1:8080".parse().unwrap(), Protocol::Tcp)
                .unwrap()
                .owners[0]
                .as_ref(),
            "p-b"
        );
        assert_eq!(
            ls.accepting(0, "10.0.0.2:8080".parse().unwrap(), Protocol::Tcp)
                .unwrap()
                .owners[0]
                .as_ref(),
            "p-a"
        );
        assert!(
            ls.accepting(0, "10.0.0.2:8081".parse().unwrap(), Protocol::Tcp)
                .is_none()
        );
        let mut v4 = Listeners::default();
        v4.insert(listener("0.0.0.0:22", "p-c"));
        assert!(
            v4.accepting(0, "[fd00::1]:22".parse().unwrap(), Protocol::Tcp)
                .is_none()
        );
    }

    #[test]
    fn udp_ports_are_bound_ports_of_their_own() {
        let mut ls = Listeners::default();
        ls.insert(Listener {
            protocol: Protocol::Udp,
            ..listener("0.0.0.0:53", "p-dns")
        });
        ls.insert(listener("0.0.0.0:53", "p-dns"));
        // A TCP connection to 53 is accepted by the TCP listener only.
        assert_eq!(
            ls.accepting(0, "10.0.0.1:53".parse().unwrap(), Protocol::Tcp)
                .unwrap()
                .protocol,
            Protocol::Tcp
        );
        let mut conns = HashMap::new();
        conns.insert(
            inbound("10.0.0.1", 53, "p-dns"),
            ConnStats {
                links_established: 1,
                ..Default::default()
            },
        );
        let ports = bound_ports(&ls, &conns, true);
        let keys: Vec<_> = ports
            .iter()
            .map(|(k, v)| (k.ip.to_string(), k.protocol, v.stats.links_established))
            .collect();
        // TCP: the address that accepted; UDP: its wildcard record, idle.
        assert_eq!(
            keys,
            vec![
                ("0.0.0.0".into(), Protocol::Udp, 0),
                ("10.0.0.1".into(), Protocol::Tcp, 1)
            ]
        );
        // An inbound UDP flow to 53 is the UDP port's, on the address it arrived at.
        conns.insert(
            ConnKey {
                protocol: Protocol::Udp,
                ..inbound("10.0.0.1", 53, "p-dns")
            },
            ConnStats {
                links_established: 2,
                bytes_received: 80,
                ..Default::default()
            },
        );
        let ports = bound_ports(&ls, &conns, true);
        let udp: Vec<_> = ports
            .iter()
            .filter(|(k, _)| k.protocol == Protocol::Udp)
            .map(|(k, v)| (k.ip.to_string(), v.is_wildcard_bind, v.stats))
            .collect();
        assert_eq!(udp.len(), 1);
        assert_eq!((udp[0].0.as_str(), udp[0].1), ("10.0.0.1", true));
        assert_eq!(
            (udp[0].2.links_established, udp[0].2.bytes_received),
            (2, 80)
        );
        assert!(!udp[0].2.bytes_unmeasured);
        // Without flow counters a UDP port's bytes are unmeasured (null), a TCP one's not.
        let ports = bound_ports(&ls, &conns, false);
        for (k, v) in &ports {
            assert_eq!(v.stats.bytes_unmeasured, k.protocol == Protocol::Udp);
        }
    }

    #[test]
    fn listeners_accept_only_in_their_namespace() {
        let mut ls = Listeners::default();
        ls.insert(listener("0.0.0.0:80", "p-a"));
        ls.insert(Listener {
            netns: 7,
            ..listener("0.0.0.0:80", "p-b")
        });
        let local = "172.17.0.2:80".parse().unwrap();
        assert_eq!(
            ls.accepting(0, local, Protocol::Tcp).unwrap().owners[0].as_ref(),
            "p-a"
        );
        assert_eq!(
            ls.accepting(7, local, Protocol::Tcp).unwrap().owners[0].as_ref(),
            "p-b"
        );
        assert!(ls.accepting(8, local, Protocol::Tcp).is_none());
        // The bound-port sums of an inbound connection of p-b go to p-b's listener.
        let mut conns = HashMap::new();
        let stats = ConnStats {
            links_established: 1,
            bytes_received: 3,
            ..Default::default()
        };
        conns.insert(inbound("172.17.0.2", 80, "p-b"), stats);
        let ports = bound_ports(&ls, &conns, true);
        let b = ports
            .iter()
            .find(|(k, _)| k.process.as_deref() == Some("p-b") && k.ip == local.ip())
            .expect("p-b's record");
        assert_eq!(b.1.stats.bytes_received, 3);
        assert!(
            !ports
                .iter()
                .any(|(k, v)| k.process.as_deref() == Some("p-a") && v.stats.bytes_received > 0)
        );
    }
}
