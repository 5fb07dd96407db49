//! The dependencies in a set of records, aggregated as they stream by: machines and their
//! addresses, process names, bound ports, and connections summed per (machine, process,
//! direction, remote address, port, protocol) over the time range. Memory follows the
//! distinct connections, not the records (a day of one-minute windows is 1,440 records per
//! connection and one entry here).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::SystemTime;

use super::input::{BoundPort, Computer, Connection, Process, Record};

/// The sums of one logical connection over the range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    pub established: i64,
    pub terminated: i64,
    pub failed: i64,
    /// `LinksLive` of its latest window.
    pub live: i64,
    pub bytes_sent: i64,
    pub bytes_received: i64,
    /// Some of its records had no bytes (null: UDP without the event source's flow
    /// counters): the sums are a lower bound, or unknown when 0.
    pub bytes_unmeasured: bool,
    pub responses: i64,
    /// Milliseconds.
    pub response_time_sum: i64,
    /// `TimeGenerated` of its first and last window.
    pub first: Option<SystemTime>,
    pub last: Option<SystemTime>,
}

impl Traffic {
    pub fn add(&mut self, o: &Traffic) {
        self.established += o.established;
        self.terminated += o.terminated;
        self.failed += o.failed;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.bytes_unmeasured |= o.bytes_unmeasured;
        self.responses += o.responses;
        self.response_time_sum += o.response_time_sum;
        if self.first.is_none() || (o.first.is_some() && o.first < self.first) {
            self.first = o.first;
        }
        if o.last > self.last {
            self.last = o.last;
            self.live = o.live;
        } else if o.last == self.last {
            // The same window twice (a record delivered twice): live once.
            self.live = self.live.max(o.live);
        }
    }

    /// Whether no byte of it was measured (every record's bytes null).
    pub fn bytes_unknown(&self) -> bool {
        self.bytes_unmeasured && self.bytes_sent == 0 && self.bytes_received == 0
    }

    /// Mean response time in milliseconds, when any exchange was timed.
    pub fn mean_response_ms(&self) -> Option<f64> {
        (self.responses > 0).then(|| self.response_time_sum as f64 / self.responses as f64)
    }
}

/// A logical connection as the records group it (the client's port is never part of it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey {
    pub machine: String,
    pub process: Option<String>,
    pub outbound: bool,
    /// The local address (outbound: SourceIp; inbound: DestinationIp).
    pub local_ip: String,
    /// The other end (outbound: DestinationIp; inbound: SourceIp).
    pub remote_ip: String,
    /// Outbound: the remote port; inbound: the local (server) port.
    pub port: i64,
    pub protocol: String,
}

/// What is known of a connection's remote end besides its address.
#[derive(Debug, Clone, Default)]
pub struct RemoteFacts {
    pub dns: Option<String>,
    pub malicious: bool,
}

#[derive(Debug, Clone, Default)]
pub struct MachineFacts {
    pub name: String,
    /// The inventory's time of these facts (the latest VMComputer record read).
    pub at: Option<SystemTime>,
    pub addresses: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    pub machine: String,
    pub name: String,
    pub at: Option<SystemTime>,
}

/// A listening port: (machine, address, port, protocol).
pub type PortKey = (String, String, i64, String);

/// Everything read, summed.
#[derive(Debug, Default)]
pub struct Model {
    pub machines: BTreeMap<String, MachineFacts>,
    pub processes: HashMap<String, ProcessFacts>,
    /// Bound ports → the process listening (the latest record's).
    pub ports: BTreeMap<PortKey, (Option<String>, Option<SystemTime>)>,
    pub connections: HashMap<ConnKey, (Traffic, RemoteFacts)>,
    /// Records used / outside the range.
    pub records: u64,
    pub out_of_range: u64,
    /// Records whose TimeGenerated could not be read.
    pub bad_times: u64,
}

impl Model {
    /// Adds one record when it falls in [since, until) — inventory records (VMComputer,
    /// VMProcess) also when older: they name what the range's connections refer to.
    pub fn add(&mut self, record: Record, since: SystemTime, until: SystemTime) {
        let Ok(t) = humantime::parse_rfc3339_weak(record.time_generated().trim_end_matches('Z'))
        else {
            self.bad_times += 1;
            return;
        };
        let inventory = matches!(record, Record::Computer(_) | Record::Process(_));
        if t >= until || (t < since && !inventory) {
            self.out_of_range += 1;
            return;
        }
        self.records += 1;
        let t = Some(t);
        match record {
            Record::Connection(c) => self.connection(c, t),
            Record::BoundPort(p) => self.port(p, t),
            Record::Process(p) => self.process(p, t),
            Record::Computer(c) => self.computer(c, t),
        }
    }

    /// Adds what another reader summed (of other files of the same range).
    pub fn merge(&mut self, o: Model) {
        for (id, m) in o.machines {
            let mine = self.machines.entry(id).or_default();
            if m.at > mine.at || mine.name.is_empty() {
                if !m.name.is_empty() {
                    mine.name = m.name;
                }
                mine.at = mine.at.max(m.at);
            }
            mine.addresses.extend(m.addresses);
        }
        for (id, p) in o.processes {
            match self.processes.get(&id) {
                Some(mine) if mine.at >= p.at => {}
                _ => {
                    self.processes.insert(id, p);
                }
            }
        }
        for (key, (process, at)) in o.ports {
            match self.ports.get(&key) {
                Some((_, mine)) if *mine >= at => {}
                _ => {
                    self.ports.insert(key, (process, at));
                }
            }
        }
        for (key, (traffic, facts)) in o.connections {
            let (sum, mine) = self.connections.entry(key).or_default();
            sum.add(&traffic);
            mine.malicious |= facts.malicious;
            if mine.dns.is_none() {
                mine.dns = facts.dns;
            }
        }
        self.records += o.records;
        self.out_of_range += o.out_of_range;
        self.bad_times += o.bad_times;
    }

    fn machine(&mut self, id: &str) -> &mut MachineFacts {
        self.machines.entry(id.to_string()).or_default()
    }

    fn computer(&mut self, c: Computer, t: Option<SystemTime>) {
        let m = self.machine(&c.machine);
        if t < m.at {
            return;
        }
        m.at = t;
        if let Some(name) = c.computer.filter(|n| !n.is_empty()).or(c.display_name) {
            m.name = name;
        }
        for list in [c.ipv4_addresses, c.ipv6_addresses].into_iter().flatten() {
            m.addresses.extend(strings(&list));
        }
    }

    fn process(&mut self, p: Process, t: Option<SystemTime>) {
        let facts = self.processes.entry(p.process).or_default();
        if t < facts.at {
            return;
        }
        facts.machine = p.machine;
        facts.at = t;
        if let Some(name) = p
            .display_name
            .filter(|n| !n.is_empty())
            .or(p.executable_name)
        {
            facts.name = name;
        }
    }

    fn port(&mut self, p: BoundPort, t: Option<SystemTime>) {
        self.machine(&p.machine);
        if let Some(process) = &p.process
            && let Some(name) = &p.process_name
        {
            self.name_process(&p.machine, process, name);
        }
        let key = (
            p.machine,
            p.ip,
            p.port,
            p.protocol
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "tcp".into()),
        );
        let entry = self.ports.entry(key).or_insert((None, None));
        if t >= entry.1 {
            *entry = (p.process, t);
        }
    }

    /// A name from a connection or port record, for a process no VMProcess record named.
    fn name_process(&mut self, machine: &str, process: &str, name: &str) {
        if !self.processes.contains_key(process) {
            self.processes.insert(
                process.to_string(),
                ProcessFacts {
                    machine: machine.to_string(),
                    name: name.to_string(),
                    at: None,
                },
            );
        }
    }

    fn connection(&mut self, c: Connection, t: Option<SystemTime>) {
        let machine_name = c.computer.clone().unwrap_or_default();
        let m = self.machine(&c.machine);
        if m.name.is_empty() {
            m.name = machine_name;
        }
        let outbound = c.direction != "inbound";
        let (local_ip, remote_ip) = if outbound {
            (c.source_ip, c.destination_ip)
        } else {
            (c.destination_ip, c.source_ip)
        };
        // The machine's own addresses, as its records show them.
        m.addresses.insert(local_ip.clone());
        if let Some(process) = &c.process
            && let Some(name) = &c.process_name
        {
            self.name_process(&c.machine, process, name);
        }
        let traffic = Traffic {
            established: c.links_established.unwrap_or(0),
            terminated: c.links_terminated.unwrap_or(0),
            failed: c.links_failed.unwrap_or(0),
            live: c.links_live.unwrap_or(0),
            bytes_sent: c.bytes_sent.unwrap_or(0),
            bytes_received: c.bytes_received.unwrap_or(0),
            bytes_unmeasured: c.bytes_sent.is_none() || c.bytes_received.is_none(),
            responses: c.responses.unwrap_or(0),
            response_time_sum: c.response_time_sum.unwrap_or(0),
            first: t,
            last: t,
        };
        let key = ConnKey {
            machine: c.machine,
            process: c.process,
            outbound,
            local_ip,
            remote_ip,
            port: c.destination_port,
            protocol: c
                .protocol
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "tcp".into()),
        };
        let (sum, facts) = self.connections.entry(key).or_default();
        sum.add(&traffic);
        if c.malicious_ip.is_some() {
            facts.malicious = true;
        }
        if facts.dns.is_none() {
            facts.dns = [c.remote_dns_canonical_names, c.remote_dns_questions]
                .into_iter()
                .flatten()
                .flat_map(|v| strings(&v))
                .find(|n| !n.is_empty());
        }
    }

    /// The monitored machine an address belongs to (an address of its own records or its
    /// inventory).
    pub fn machine_of_ip(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for (id, m) in &self.machines {
            for a in &m.addresses {
                if !is_loopback(a) && !is_unspecified(a) {
                    out.entry(a.clone()).or_insert_with(|| id.clone());
                }
            }
        }
        out
    }
}

/// The strings of a column that holds a list (JSON array) or a single string (some sinks
/// store lists as text: `["a","b"]` or `a b`).
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect(),
        serde_json::Value::String(s) => {
            if let Ok(serde_json::Value::Array(items)) = serde_json::from_str(s) {
                return items
                    .iter()
                    .filter_map(|i| i.as_str().map(str::to_string))
                    .collect();
            }
            s.split([' ', ','])
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect()
        }
        _ => Vec::new(),
    }
}

pub fn is_loopback(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

pub fn is_unspecified(ip: &str) -> bool {
    ip.parse::<IpAddr>().is_ok_and(|a| a.is_unspecified())
}
