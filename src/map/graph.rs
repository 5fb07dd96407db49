//! The map's graph: machines holding their processes, remote endpoints and client groups, and
//! the edges between them, from the summed records ([`Model`]).
//!
//! How a connection's far end is found (as the VM Insights query "outbound connections from a
//! group of machines" does): an outbound connection's remote address is looked up among the
//! monitored machines' addresses (loopback: the same machine); on that machine, the bound
//! port with that address (or the wildcard) and port names the server process, and the edge
//! goes process → process. Otherwise it goes to a remote endpoint (its DNS name when the
//! records carry one, else its address, with the port). Inbound connections from addresses of
//! no machine on the map become a client group per server process and port, with the number
//! of distinct clients; inbound connections from a machine on the map are that machine's
//! outbound ones, drawn once.
//!
//! Readability: beyond [`MAX_PROCESSES`] process nodes, each machine's idle processes (no
//! edge) fold into one node with their count, and beyond [`MAX_REMOTES`] remote endpoints,
//! those of a subnet (/24, /64) fold into one per subnet and port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::model::{ConnKey, Model, RemoteFacts, Traffic, is_loopback, is_unspecified};

/// Process nodes drawn one by one; beyond, idle processes fold.
pub const MAX_PROCESSES: usize = 50;
/// Remote endpoints drawn one by one; beyond, they fold by subnet.
pub const MAX_REMOTES: usize = 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeKind {
    Process,
    /// Processes of a machine folded into one (idle ones, or a connection whose process
    /// is not known).
    Folded,
    Remote,
    Clients,
}

impl NodeKind {
    pub fn name(self) -> &'static str {
        match self {
            NodeKind::Process => "process",
            NodeKind::Folded => "folded",
            NodeKind::Remote => "remote",
            NodeKind::Clients => "clients",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// The machine group holding it (processes); `None` for remotes and client groups.
    pub machine: Option<String>,
    pub title: String,
    /// Ports it listens on (processes), the endpoint's port, or the client count.
    pub subtitle: String,
    pub malicious: bool,
}

#[derive(Debug, Clone)]
pub struct Edge {
    pub id: String,
    pub source: String,
    pub target: String,
    pub port: i64,
    pub protocol: String,
    pub traffic: Traffic,
}

impl Edge {
    /// Only failed attempts: drawn dashed red.
    pub fn failed_only(&self) -> bool {
        self.traffic.established == 0 && self.traffic.live == 0 && self.traffic.failed > 0
    }
}

#[derive(Debug, Clone)]
pub struct MachineGroup {
    pub id: String,
    pub name: String,
    /// Its records are read (in the --machine set, or no set given); else it appears only as
    /// the server side of another machine's connections.
    pub selected: bool,
}

#[derive(Debug, Default)]
pub struct Graph {
    pub machines: Vec<MachineGroup>,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

impl Graph {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// A machine's name (its id when it has none).
    pub fn machine_name(&self, id: &str) -> String {
        self.machines
            .iter()
            .find(|m| m.id == id)
            .map_or(id.to_string(), |m| m.name.clone())
    }
}

/// Which machines the map is of: ids (`m-…`) or names, as given to `--machine`; empty: all.
pub fn selected(model: &Model, wanted: &[String]) -> BTreeSet<String> {
    model
        .machines
        .iter()
        .filter(|(id, m)| {
            wanted.is_empty()
                || wanted
                    .iter()
                    .any(|w| w == *id || w.eq_ignore_ascii_case(&m.name))
        })
        .map(|(id, _)| id.clone())
        .collect()
}

/// Builds the graph of the `chosen` machines' dependencies.
pub fn build(model: &Model, chosen: &BTreeSet<String>) -> Graph {
    let ip_owner = model.machine_of_ip();
    let mut b = Builder {
        model,
        nodes: BTreeMap::new(),
        edges: BTreeMap::new(),
        machines: BTreeSet::new(),
        clients: HashMap::new(),
    };
    let mut keys: Vec<&ConnKey> = model.connections.keys().collect();
    keys.sort();
    for key in keys {
        if !chosen.contains(&key.machine) {
            continue;
        }
        let (traffic, facts) = &model.connections[key];
        let source = b.process_node(&key.machine, key.process.as_deref());
        if key.outbound {
            let far_machine = if is_loopback(&key.remote_ip) {
                Some(key.machine.clone())
            } else {
                ip_owner.get(&key.remote_ip).cloned()
            };
            let target = match far_machine {
                Some(m) => {
                    let server = b.server_of(&m, &key.remote_ip, key.port, &key.protocol);
                    b.process_node(&m, server.as_deref())
                }
                None => b.remote_node(&key.remote_ip, key.port, facts),
            };
            b.edge(&source, &target, key, traffic);
        } else {
            let from_a_chosen_machine = is_loopback(&key.remote_ip)
                || ip_owner
                    .get(&key.remote_ip)
                    .is_some_and(|m| chosen.contains(m));
            if from_a_chosen_machine {
                continue;
            }
            let group = b.client_group(&source, key);
            b.edge(&group, &source, key, traffic);
        }
    }
    // Listening processes of the chosen machines appear even when idle.
    for ((machine, _, _, _), (process, _)) in &model.ports {
        if chosen.contains(machine) {
            b.process_node(machine, process.as_deref());
        }
    }
    for (group, clients) in &b.clients {
        if let Some(n) = b.nodes.get_mut(group) {
            n.subtitle = match clients.len() {
                1 => "1 client".to_string(),
                n => format!("{n} clients"),
            };
        }
    }
    let mut graph = Graph {
        machines: b
            .machines
            .iter()
            .map(|id| MachineGroup {
                id: id.clone(),
                name: model
                    .machines
                    .get(id)
                    .map(|m| m.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| id.clone()),
                selected: chosen.contains(id),
            })
            .collect(),
        nodes: b.nodes.into_values().collect(),
        edges: b.edges.into_values().collect(),
    };
    fold_idle_processes(&mut graph);
    fold_remotes(&mut graph);
    graph
}

struct Builder<'a> {
    model: &'a Model,
    nodes: BTreeMap<String, Node>,
    /// By (source, target, port, protocol).
    edges: BTreeMap<(String, String, i64, String), Edge>,
    machines: BTreeSet<String>,
    /// Client group → the distinct client addresses in it.
    clients: HashMap<String, BTreeSet<String>>,
}

impl Builder<'_> {
    /// The node of a process of `machine` (`None`: connections no process was credited with).
    fn process_node(&mut self, machine: &str, process: Option<&str>) -> String {
        self.machines.insert(machine.to_string());
        let (id, kind, title) = match process {
            Some(p) => (
                p.to_string(),
                NodeKind::Process,
                self.model
                    .processes
                    .get(p)
                    .map(|f| f.name.clone())
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| p.to_string()),
            ),
            None => (
                format!("{machine}/unknown"),
                NodeKind::Folded,
                "unknown process".to_string(),
            ),
        };
        if !self.nodes.contains_key(&id) {
            let subtitle = match process {
                Some(p) => listening(self.model, machine, p),
                None => String::new(),
            };
            self.nodes.insert(
                id.clone(),
                Node {
                    id: id.clone(),
                    kind,
                    machine: Some(machine.to_string()),
                    title,
                    subtitle,
                    malicious: false,
                },
            );
        }
        id
    }

    /// The process of `machine` listening on `ip`:`port` (or the wildcard).
    fn server_of(&self, machine: &str, ip: &str, port: i64, protocol: &str) -> Option<String> {
        let exact = (
            machine.to_string(),
            ip.to_string(),
            port,
            protocol.to_string(),
        );
        if let Some((p, _)) = self.model.ports.get(&exact) {
            return p.clone();
        }
        self.model
            .ports
            .iter()
            .filter(|((m, a, p, proto), _)| {
                m == machine && *p == port && proto == protocol && (is_unspecified(a) || a == ip)
            })
            .find_map(|(_, (process, _))| process.clone())
            .or_else(|| {
                // Loopback connections to a port bound to one of the machine's addresses.
                self.model
                    .ports
                    .iter()
                    .filter(|((m, _, p, proto), _)| m == machine && *p == port && proto == protocol)
                    .find_map(|(_, (process, _))| process.clone())
            })
    }

    fn remote_node(&mut self, ip: &str, port: i64, facts: &RemoteFacts) -> String {
        let id = format!("remote:{ip}:{port}");
        let node = self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: NodeKind::Remote,
            machine: None,
            title: facts.dns.clone().unwrap_or_else(|| ip.to_string()),
            subtitle: endpoint(ip, port),
            malicious: false,
        });
        node.malicious |= facts.malicious;
        id
    }

    fn client_group(&mut self, server: &str, key: &ConnKey) -> String {
        let id = format!("clients:{server}:{}", key.port);
        self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: NodeKind::Clients,
            machine: None,
            title: format!("clients of :{}", key.port),
            subtitle: String::new(),
            malicious: false,
        });
        self.clients
            .entry(id.clone())
            .or_default()
            .insert(key.remote_ip.clone());
        id
    }

    fn edge(&mut self, source: &str, target: &str, key: &ConnKey, traffic: &Traffic) {
        let k = (
            source.to_string(),
            target.to_string(),
            key.port,
            key.protocol.clone(),
        );
        let edge = self.edges.entry(k).or_insert_with(|| Edge {
            id: String::new(),
            source: source.to_string(),
            target: target.to_string(),
            port: key.port,
            protocol: key.protocol.clone(),
            traffic: Traffic::default(),
        });
        edge.traffic.add(traffic);
        edge.id = format!("{source}->{target}:{}/{}", key.port, key.protocol);
    }
}

/// `:80, :443` — the ports a process listens on.
fn listening(model: &Model, machine: &str, process: &str) -> String {
    let ports: BTreeSet<i64> = model
        .ports
        .iter()
        .filter(|((m, _, _, _), (p, _))| m == machine && p.as_deref() == Some(process))
        .map(|((_, _, port, _), _)| *port)
        .collect();
    ports
        .iter()
        .map(|p| format!(":{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn endpoint(ip: &str, port: i64) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Beyond [`MAX_PROCESSES`], each machine's processes without an edge become one node.
fn fold_idle_processes(g: &mut Graph) {
    let processes = g
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Process)
        .count();
    if processes <= MAX_PROCESSES {
        return;
    }
    let connected: BTreeSet<&str> = g
        .edges
        .iter()
        .flat_map(|e| [e.source.as_str(), e.target.as_str()])
        .collect();
    let mut idle: BTreeMap<String, usize> = BTreeMap::new();
    let mut kept = Vec::new();
    for n in std::mem::take(&mut g.nodes) {
        match &n.machine {
            Some(m) if n.kind == NodeKind::Process && !connected.contains(n.id.as_str()) => {
                *idle.entry(m.clone()).or_default() += 1;
            }
            _ => kept.push(n),
        }
    }
    for (machine, count) in idle {
        kept.push(Node {
            id: format!("{machine}/idle"),
            kind: NodeKind::Folded,
            machine: Some(machine),
            title: format!("{count} idle processes"),
            subtitle: "no connection in the range".to_string(),
            malicious: false,
        });
    }
    g.nodes = kept;
}

/// Beyond [`MAX_REMOTES`], remote endpoints fold into one per subnet and port.
fn fold_remotes(g: &mut Graph) {
    let remotes = g
        .nodes
        .iter()
        .filter(|n| n.kind == NodeKind::Remote)
        .count();
    if remotes <= MAX_REMOTES {
        return;
    }
    // Remote node id → its subnet node id; malicious endpoints stay on their own.
    let mut to: HashMap<String, String> = HashMap::new();
    let mut subnets: BTreeMap<String, (Node, usize)> = BTreeMap::new();
    let mut kept = Vec::new();
    for n in std::mem::take(&mut g.nodes) {
        let parsed = (n.kind == NodeKind::Remote && !n.malicious)
            .then(|| {
                let rest = n.id.strip_prefix("remote:")?;
                let (ip, port) = rest.rsplit_once(':')?;
                Some((ip.parse::<IpAddr>().ok()?, port.to_string()))
            })
            .flatten();
        let Some((ip, port)) = parsed else {
            kept.push(n);
            continue;
        };
        let subnet = match ip {
            IpAddr::V4(a) => {
                let o = a.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        };
        let id = format!("subnet:{subnet}:{port}");
        to.insert(n.id.clone(), id.clone());
        let entry = subnets.entry(id.clone()).or_insert_with(|| {
            (
                Node {
                    id,
                    kind: NodeKind::Remote,
                    machine: None,
                    title: subnet.clone(),
                    subtitle: String::new(),
                    malicious: false,
                },
                0,
            )
        });
        entry.1 += 1;
    }
    for (_, (mut node, count)) in subnets {
        let port = node.id.rsplit(':').next().unwrap_or("").to_string();
        node.subtitle = format!("{count} endpoints, port {port}");
        kept.push(node);
    }
    g.nodes = kept;
    let mut merged: BTreeMap<(String, String, i64, String), Edge> = BTreeMap::new();
    for mut e in std::mem::take(&mut g.edges) {
        if let Some(t) = to.get(&e.target) {
            e.target = t.clone();
            e.id = format!("{}->{}:{}/{}", e.source, e.target, e.port, e.protocol);
        }
        let k = (
            e.source.clone(),
            e.target.clone(),
            e.port,
            e.protocol.clone(),
        );
        match merged.get_mut(&k) {
            Some(m) => m.traffic.add(&e.traffic),
            None => {
                merged.insert(k, e);
            }
        }
    }
    g.edges = merged.into_values().collect();
}
