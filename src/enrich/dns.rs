//! Names of remote addresses from the DNS answers to this host's own queries
//! (`RemoteDnsQuestions`, `RemoteDnsCanonicalNames`): every A/AAAA answer maps its address to
//! the question that was asked and the CNAME chain that led to it.
//!
//! Only answers to queries this host sent are believed (issue 12): the capture reports each
//! query leaving the host ([`DnsCache::asked`]) and each answer arriving
//! ([`DnsCache::answered`]); an answer is learned only when its id, its addresses and ports
//! (the query's, swapped) and its question match a query still pending. Anything else — an
//! answer nobody asked for, from a local process sending from port 53 or a spoofer — is
//! counted as unsolicited and ignored. At most [`MAX_PENDING`] queries wait, each at most
//! [`PENDING_FOR`].
//!
//! Memory is bounded in bytes, not only in addresses: the names of one answer are stored once
//! and shared by all its addresses (one answer of 2,700 addresses and a 1,500-link chain stored
//! a copy of the chain per address: 1.1 GB, issue 12), a chain keeps at most [`MAX_CHAIN`]
//! distinct names and an answer at most [`MAX_QUESTIONS`] questions, and the cache holds at
//! most `max_entries` addresses and `max_bytes` bytes (an estimate: names' bytes plus
//! [`ENTRY_BYTES`] per address). Entries live for the answer's TTL, at least 5 minutes (a
//! connection often starts after a short TTL ran out) and at most a day; when full, expired
//! entries go first (a sweep at most once a second), and beyond that new addresses are not
//! kept, and counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::RData;

use crate::collect::dns_capture::{OnMessage, Seen};
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};

const MIN_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Queries waiting for their answer; a resolver gives up after a few seconds.
pub const MAX_PENDING: usize = 4_096;
pub const PENDING_FOR: Duration = Duration::from_secs(30);
/// Distinct names kept of one CNAME chain (resolvers follow 8 to 16 links).
pub const MAX_CHAIN: usize = 16;
/// Questions kept of one answer (real ones have one).
pub const MAX_QUESTIONS: usize = 4;
/// What one address costs besides its names: the map slot, the shared pointer, the expiry.
pub const ENTRY_BYTES: usize = 96;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsNames {
    pub questions: Vec<String>,
    pub canonical_names: Vec<String>,
}

impl DnsNames {
    /// The bytes these names hold, as the cache charges them.
    fn bytes(&self) -> usize {
        let strings = self.questions.iter().chain(&self.canonical_names);
        64 + strings.map(|s| s.len() + 24).sum::<usize>()
    }
}

/// What the capture counted (the self-metrics `depmap_dns_*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsCounters {
    /// Answers whose addresses were learned.
    pub answers: u64,
    /// Answers that matched no pending query: ignored.
    pub unsolicited: u64,
    /// Addresses not kept: the cache was full (`dns_cache_entries` or `dns_cache_bytes`).
    pub not_kept: u64,
    /// Queries not remembered because [`MAX_PENDING`] were waiting: their answers are lost.
    pub queries_not_tracked: u64,
}

/// A query in flight: who asked whom, with which id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Flight {
    client: SocketAddr,
    server: SocketAddr,
    id: u16,
}

#[derive(Debug)]
struct Pending {
    questions: Vec<(String, u16, u16)>,
    until: Instant,
}

#[derive(Debug)]
struct Entry {
    names: Arc<DnsNames>,
    until: Instant,
}

#[derive(Debug, Default)]
pub struct DnsCache {
    entries: HashMap<IpAddr, Entry>,
    pending: HashMap<Flight, Pending>,
    max_entries: usize,
    max_bytes: usize,
    /// The estimate of what `entries` holds (see the module comment).
    bytes: usize,
    last_sweep: Option<Instant>,
    pub counters: DnsCounters,
}

/// A name as the records show it: no trailing dot, lower case.
fn show(name: &hickory_proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

/// A question as it is compared: names case-insensitively (resolvers randomise the case).
fn question(q: &Query) -> (String, u16, u16) {
    (
        show(q.name()),
        u16::from(q.query_type()),
        u16::from(q.query_class()),
    )
}

impl DnsCache {
    pub fn new(max_entries: usize, max_bytes: usize) -> DnsCache {
        DnsCache {
            max_entries,
            max_bytes,
            ..DnsCache::default()
        }
    }

    /// A query left this host from `client` to `server`.
    pub fn asked(&mut self, client: SocketAddr, server: SocketAddr, msg: &Message, now: Instant) {
        if msg.metadata.message_type != MessageType::Query || msg.queries.is_empty() {
            return;
        }
        let flight = Flight {
            client,
            server,
            id: msg.metadata.id,
        };
        if !self.pending.contains_key(&flight) && self.pending.len() >= MAX_PENDING {
            self.pending.retain(|_, p| p.until > now);
            if self.pending.len() >= MAX_PENDING {
                self.counters.queries_not_tracked += 1;
                return;
            }
        }
        let questions = msg.queries.iter().take(MAX_QUESTIONS).map(question);
        self.pending.insert(
            flight,
            Pending {
                questions: questions.collect(),
                until: now + PENDING_FOR,
            },
        );
    }

    /// An answer arrived at `client` from `server`: learned if it answers a pending query.
    pub fn answered(
        &mut self,
        client: SocketAddr,
        server: SocketAddr,
        msg: &Message,
        now: Instant,
    ) {
        if msg.metadata.message_type != MessageType::Response {
            return;
        }
        let flight = Flight {
            client,
            server,
            id: msg.metadata.id,
        };
        let asked = self.pending.get(&flight).filter(|p| {
            p.until > now
                && msg
                    .queries
                    .iter()
                    .take(MAX_QUESTIONS)
                    .map(question)
                    .eq(p.questions.iter().cloned())
        });
        if asked.is_none() {
            self.counters.unsolicited += 1;
            return;
        }
        self.pending.remove(&flight);
        self.learn(msg, now);
    }

    /// Learns the addresses of one answer already matched to its query.
    fn learn(&mut self, msg: &Message, now: Instant) {
        if msg.answers.is_empty() {
            return;
        }
        self.counters.answers += 1;
        let questions = msg.queries.iter().take(MAX_QUESTIONS);
        // The CNAME chain, in answer order (name → target), each name once.
        let mut chain: Vec<String> = Vec::new();
        for r in &msg.answers {
            if let RData::CNAME(c) = &r.data {
                let name = show(&c.0);
                if chain.len() < MAX_CHAIN && !chain.contains(&name) {
                    chain.push(name);
                }
            }
        }
        let names = Arc::new(DnsNames {
            questions: questions.map(|q| show(q.name())).collect(),
            canonical_names: chain,
        });
        let names_bytes = names.bytes();
        let mut charged = false;
        for r in &msg.answers {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(r.ttl)).clamp(MIN_TTL, MAX_TTL);
            let cost = ENTRY_BYTES + if charged { 0 } else { names_bytes };
            if self.insert(ip, &names, cost, now + ttl, now) {
                charged = true;
            }
        }
    }

    /// Stores one address; false when it did not fit.
    fn insert(
        &mut self,
        ip: IpAddr,
        names: &Arc<DnsNames>,
        cost: usize,
        until: Instant,
        now: Instant,
    ) -> bool {
        if let Some(old) = self.entries.remove(&ip) {
            self.release(&old);
        }
        let fits = |c: &DnsCache| {
            c.entries.len() < c.max_entries && c.bytes.saturating_add(cost) <= c.max_bytes
        };
        if !fits(self)
            && self
                .last_sweep
                .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
        {
            self.last_sweep = Some(now);
            let expired: Vec<IpAddr> = self
                .entries
                .iter()
                .filter(|(_, e)| e.until <= now)
                .map(|(ip, _)| *ip)
                .collect();
            for ip in expired {
                if let Some(old) = self.entries.remove(&ip) {
                    self.release(&old);
                }
            }
        }
        if !fits(self) {
            self.counters.not_kept += 1;
            return false;
        }
        self.bytes += cost;
        self.entries.insert(
            ip,
            Entry {
                names: names.clone(),
                until,
            },
        );
        true
    }

    /// Un-charges a removed entry; its names with the last address that shared them.
    fn release(&mut self, old: &Entry) {
        let mut freed = ENTRY_BYTES;
        if Arc::strong_count(&old.names) == 1 {
            freed += old.names.bytes();
        }
        self.bytes = self.bytes.saturating_sub(freed);
    }

    /// The names an address was last given, if the answer is still fresh at `now`.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<&DnsNames> {
        self.entries
            .get(&ip)
            .filter(|e| e.until > now)
            .map(|e| e.names.as_ref())
    }

    /// The bytes the cache holds, as charged against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The cache the capture fills and the lookups read, with the once-a-minute logs of what it
/// refused.
pub fn shared(max_entries: usize, max_bytes: usize) -> (Arc<Mutex<DnsCache>>, OnMessage) {
    let cache = Arc::new(Mutex::new(DnsCache::new(max_entries, max_bytes)));
    let mut unsolicited_log = Throttle::new(PROBLEM_LOG_INTERVAL);
    let mut full_log = Throttle::new(PROBLEM_LOG_INTERVAL);
    let filled = cache.clone();
    let on_message: OnMessage = Box::new(move |seen, msg| {
        let now = Instant::now();
        let mut cache = filled.lock().unwrap_or_else(|e| e.into_inner());
        let before = cache.counters;
        match seen {
            Seen::Query { client, server } => cache.asked(client, server, msg, now),
            Seen::Answer { client, server } => cache.answered(client, server, msg, now),
        }
        let after = cache.counters;
        drop(cache);
        if after.unsolicited > before.unsolicited
            && let Some(more) = unsolicited_log.ready()
        {
            tracing::warn!(
                unsolicited = after.unsolicited,
                also_since_last_log = more,
                "a DNS answer matched no query this host sent (id, addresses, ports, question); ignored"
            );
        }
        let lost = |c: &DnsCounters| c.not_kept + c.queries_not_tracked;
        if lost(&after) > lost(&before)
            && let Some(more) = full_log.ready()
        {
            tracing::warn!(
                addresses_not_kept = after.not_kept,
                queries_not_tracked = after.queries_not_tracked,
                also_since_last_log = more,
                "the DNS cache is full (enrich.dns_cache_entries or dns_cache_bytes, or too many queries pending); names lost"
            );
        }
    });
    (cache, on_message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::str::FromStr;

    const CLIENT: &str = "10.0.0.5:40000";
    const SERVER: &str = "10.0.0.53:53";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn query(id: u16, name: &str) -> Message {
        let mut m = Message::query();
        m.metadata.id = id;
        m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        m
    }

    fn answer(id: u16) -> Message {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        let q = Name::from_str("API.depmap.test.").unwrap();
        m.add_query(Query::query(q.clone(), RecordType::A));
        let edge = Name::from_str("edge.cdn.depmap.test.").unwrap();
        let node = Name::from_str("node7.cdn.depmap.test.").unwrap();
        m.add_answer(Record::from_rdata(q, 60, RData::CNAME(CNAME(edge.clone()))));
        m.add_answer(Record::from_rdata(
            edge,
            60,
            RData::CNAME(CNAME(node.clone())),
        ));
        m.add_answer(Record::from_rdata(node, 30, RData::A(A::new(10, 0, 0, 21))));
        m
    }

    /// Round-trip through the wire format, as the capture sees it.
    fn wire(m: &Message) -> Message {
        Message::from_vec(&m.to_vec().unwrap()).unwrap()
    }

    #[test]
    fn an_answer_maps_its_address_to_the_question_and_the_cname_chain() {
        let mut c = DnsCache::new(10, 1 << 20);
        let now = Instant::now();
        // 0x20 case randomisation: the query's case differs from the answer's.
        c.asked(
            addr(CLIENT),
            addr(SERVER),
            &wire(&query(7, "api.DEPMAP.test.")),
            now,
        );
        c.answered(addr(CLIENT), addr(SERVER), &wire(&answer(7)), now);
        let names = c.get("10.0.0.21".parse().unwrap(), now).unwrap();
        assert_eq!(names.questions, vec!["api.depmap.test"]);
        assert_eq!(
            names.canonical_names,
            vec!["edge.cdn.depmap.test", "node7.cdn.depmap.test"]
        );
        // A 30 s TTL is kept at least 5 minutes, not forever.
        let later = |s| now + Duration::from_secs(s);
        assert!(c.get("10.0.0.21".parse().unwrap(), later(299)).is_some());
        assert!(c.get("10.0.0.21".parse().unwrap(), later(301)).is_none());
        assert!(c.get("10.0.0.22".parse().unwrap(), now).is_none());
        assert_eq!(c.counters.answers, 1);
        // The query is answered once: the same answer again is not believed.
        c.answered(addr(CLIENT), addr(SERVER), &wire(&answer(7)), now);
        assert_eq!(c.counters.unsolicited, 1);
    }

    #[test]
    fn only_answers_to_this_hosts_queries_are_believed() {
        let now = Instant::now();
        let learned = |asked: Option<(&str, &str, u16, &str)>, to: &str, from: &str, id: u16| {
            let mut c = DnsCache::new(10, 1 << 20);
            if let Some((client, server, qid, name)) = asked {
                c.asked(addr(client), addr(server), &wire(&query(qid, name)), now);
            }
            c.answered(addr(to), addr(from), &wire(&answer(id)), now);
            (
                c.get("10.0.0.21".parse().unwrap(), now).is_some(),
                c.counters,
            )
        };
        let q = Some((CLIENT, SERVER, 7, "api.depmap.test."));
        assert!(learned(q, CLIENT, SERVER, 7).0);
        // Nobody asked; another id; another server, port or client; another question.
        for (asked, to, from, id) in [
            (None, CLIENT, SERVER, 7),
            (q, CLIENT, SERVER, 8),
            (q, CLIENT, "10.0.0.54:53", 7),
            (q, "10.0.0.5:40001", SERVER, 7),
            (q, CLIENT, "10.0.0.53:5353", 7),
            (
                Some((CLIENT, SERVER, 7, "bank.depmap.test.")),
                CLIENT,
                SERVER,
                7,
            ),
        ] {
            let (known, counters) = learned(asked, to, from, id);
            assert!(!known, "{asked:?} {to} {from} {id}");
            assert_eq!((counters.unsolicited, counters.answers), (1, 0));
        }
        // A pending query expires.
        let mut c = DnsCache::new(10, 1 << 20);
        c.asked(
            addr(CLIENT),
            addr(SERVER),
            &wire(&query(7, "api.depmap.test.")),
            now,
        );
        let late = now + PENDING_FOR + Duration::from_secs(1);
        c.answered(addr(CLIENT), addr(SERVER), &wire(&answer(7)), late);
        assert_eq!(c.counters.unsolicited, 1);
    }

    #[test]
    fn pending_queries_are_bounded() {
        let mut c = DnsCache::new(10, 1 << 20);
        let now = Instant::now();
        for port in 0..=MAX_PENDING as u16 {
            let client = SocketAddr::new("10.0.0.5".parse().unwrap(), 1024 + port);
            c.asked(client, addr(SERVER), &query(1, "a.depmap.test."), now);
        }
        assert_eq!(c.pending.len(), MAX_PENDING);
        assert_eq!(c.counters.queries_not_tracked, 1);
        // Expired ones make room.
        let later = now + PENDING_FOR + Duration::from_secs(1);
        c.asked(
            addr(CLIENT),
            addr(SERVER),
            &query(1, "a.depmap.test."),
            later,
        );
        assert_eq!(c.pending.len(), 1);
    }

    /// The issue-12 answer: many links to one long name, thousands of addresses.
    fn amplifying(id: u16, links: usize, addresses: u32) -> Message {
        let mut m = Message::response(id, hickory_proto::op::OpCode::Query);
        let long = format!("{}.depmap.test.", vec!["x".repeat(60); 3].join("."));
        let name = Name::from_str(&long).unwrap();
        m.add_query(Query::query(name.clone(), RecordType::A));
        for _ in 0..links {
            m.add_answer(Record::from_rdata(
                name.clone(),
                60,
                RData::CNAME(CNAME(name.clone())),
            ));
        }
        for i in 0..addresses {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            m.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(ip))));
        }
        m
    }

    #[test]
    fn one_answer_stores_its_names_once_and_the_cache_is_bounded_in_bytes() {
        let now = Instant::now();
        let mut c = DnsCache::new(1 << 20, 1 << 20);
        let m = amplifying(9, 1_500, 2_700);
        let client = addr(CLIENT);
        let mut q = m.clone();
        q.metadata.message_type = MessageType::Query;
        q.answers.clear();
        c.asked(client, addr(SERVER), &q, now);
        c.answered(client, addr(SERVER), &m, now);
        assert_eq!(c.len(), 2_700);
        let names = c.get("10.0.0.1".parse().unwrap(), now).unwrap();
        assert_eq!(names.canonical_names.len(), 1, "the chain's one name, once");
        let one = DnsNames::clone(names).bytes();
        assert_eq!(c.bytes(), 2_700 * ENTRY_BYTES + one);
        // Every address shares the one allocation.
        let first = &c.entries[&"10.0.0.1".parse::<IpAddr>().unwrap()].names;
        assert_eq!(Arc::strong_count(first), 2_700);

        // A byte budget below that keeps what fits and counts the rest.
        let mut small = DnsCache::new(1 << 20, 1_000 * ENTRY_BYTES);
        small.asked(client, addr(SERVER), &q, now);
        small.answered(client, addr(SERVER), &m, now);
        assert!(small.bytes() <= 1_000 * ENTRY_BYTES);
        assert_eq!(small.len() as u64 + small.counters.not_kept, 2_700);
        assert_eq!(small.len(), (1_000 * ENTRY_BYTES - one) / ENTRY_BYTES);
    }

    #[test]
    fn replaced_and_expired_entries_give_their_bytes_back() {
        let now = Instant::now();
        let mut c = DnsCache::new(2, 1 << 20);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let names = Arc::new(DnsNames::default());
        let cost = ENTRY_BYTES + names.bytes();
        assert!(c.insert(ip("10.0.0.1"), &names, cost, now + MIN_TTL, now));
        assert!(c.insert(ip("10.0.0.1"), &names, ENTRY_BYTES, now + MIN_TTL, now));
        assert_eq!(c.bytes(), cost, "the names stay charged while shared");
        drop(names);
        let other = Arc::new(DnsNames::default());
        let cost2 = ENTRY_BYTES + other.bytes();
        assert!(c.insert(ip("10.0.0.1"), &other, cost2, now + MIN_TTL, now));
        assert_eq!(c.bytes(), cost2, "the last holder gave the old names back");
        assert!(c.insert(ip("10.0.0.2"), &other, ENTRY_BYTES, now + MIN_TTL, now));
        // Full: a new address is not kept, until the others expired.
        assert!(!c.insert(ip("10.0.0.3"), &other, ENTRY_BYTES, now + MIN_TTL, now));
        assert_eq!(c.counters.not_kept, 1);
        let later = now + MIN_TTL + Duration::from_secs(1);
        assert!(c.insert(ip("10.0.0.3"), &other, ENTRY_BYTES, later + MIN_TTL, later));
        assert_eq!(c.len(), 1);
    }
}
