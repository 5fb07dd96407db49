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

use super::sockets::{ConnKey, ConnStats, Direction, PoolId};

/// One listening socket and the pools holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
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
        if let Some(existing) = at.iter_mut().find(|e| e.addr == l.addr) {
            for o in l.owners {
                if !existing.owners.contains(&o) {
                    existing.owners.push(o);
                }
            }
        } else {
            at.push(l);
        }
    }

    /// The listener that accepts connections for local endpoint `local`: the one bound to that
    /// address, else a wildcard one of a compatible family (`::` accepts IPv4 too).
    pub fn accepting(&self, local: SocketAddr) -> Option<&Listener> {
        let at = self.by_port.get(&local.port())?;
        at.iter().find(|l| l.addr.ip() == local.ip()).or_else(|| {
            at.iter().find(|l| {
                is_wildcard(l.addr.ip())
                    && (l.addr.is_ipv6() || local.is_ipv4() == l.addr.is_ipv4())
            })
        })
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
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    pub is_wildcard_bind: bool,
    pub stats: ConnStats,
}

/// The window's bound-port records from the listeners seen in it and its connection sums.
pub fn bound_ports(
    listeners: &Listeners,
    conns: &HashMap<ConnKey, ConnStats>,
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
            })
            .or_default();
        }
    }
    for (key, stats) in conns
        .iter()
        .filter(|(k, _)| k.direction == Direction::Inbound)
    {
        let local = SocketAddr::new(key.destination_ip, key.destination_port);
        let Some(l) = listeners.accepting(local) else {
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
            })
            .or_default();
        entry.is_wildcard_bind = is_wildcard(l.addr.ip());
        entry.stats.add(stats);
    }
    for l in listeners.iter().filter(|l| is_wildcard(l.addr.ip())) {
        for process in owners_or_none(l) {
            let covered = out.iter().any(|(k, v)| {
                v.is_wildcard_bind && k.process == process && k.port == l.addr.port()
            });
            if !covered {
                out.insert(
                    PortKey {
                        process,
                        ip: l.addr.ip(),
                        port: l.addr.port(),
                    },
                    PortStats {
                        is_wildcard_bind: true,
                        stats: ConnStats::default(),
                    },
                );
            }
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
        }
    }

    #[test]
    fn wildcard_record_only_without_specific_activity() {
        let mut ls = Listeners::default();
        ls.insert(listener("0.0.0.0:80", "p-a"));
        ls.insert(listener("127.0.0.1:5432", "p-b"));
        let mut conns = HashMap::new();
        // Idle window: the wildcard record and the specific one.
        let idle = bound_ports(&ls, &conns);
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
        let busy = bound_ports(&ls, &conns);
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
            ls.accepting("10.0.0.1:8080".parse().unwrap())
                .unwrap()
                .owners[0]
                .as_ref(),
            "p-b"
        );
        assert_eq!(
            ls.accepting("10.0.0.2:8080".parse().unwrap())
                .unwrap()
                .owners[0]
                .as_ref(),
            "p-a"
        );
        assert!(ls.accepting("10.0.0.2:8081".parse().unwrap()).is_none());
        let mut v4 = Listeners::default();
        v4.insert(listener("0.0.0.0:22", "p-c"));
        assert!(v4.accepting("[fd00::1]:22".parse().unwrap()).is_none());
    }
}
