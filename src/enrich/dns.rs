//! Names of remote addresses from the DNS answers this host received (`RemoteDnsQuestions`,
//! `RemoteDnsCanonicalNames`): every A/AAAA answer maps its address to the question that was
//! asked and the CNAME chain that led to it. Entries live for the answer's TTL, at least 5
//! minutes (a connection often starts after a short TTL ran out) and at most a day; the cache
//! holds at most `max_entries` addresses (expired ones go first; beyond that new answers are
//! not kept, and counted).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::RData;

const MIN_TTL: Duration = Duration::from_secs(300);
const MAX_TTL: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsNames {
    pub questions: Vec<String>,
    pub canonical_names: Vec<String>,
}

#[derive(Debug, Default)]
pub struct DnsCache {
    entries: HashMap<IpAddr, (DnsNames, Instant)>,
    max_entries: usize,
    pub answers: u64,
    pub not_kept: u64,
}

/// A name as the records show it: no trailing dot, lower case.
fn show(name: &hickory_proto::rr::Name) -> String {
    name.to_ascii().trim_end_matches('.').to_ascii_lowercase()
}

impl DnsCache {
    pub fn new(max_entries: usize) -> DnsCache {
        DnsCache {
            max_entries,
            ..DnsCache::default()
        }
    }

    /// Learns from one DNS message (answers only).
    pub fn learn(&mut self, msg: &Message, now: Instant) {
        if msg.metadata.message_type != MessageType::Response || msg.answers.is_empty() {
            return;
        }
        self.answers += 1;
        let questions: Vec<String> = msg.queries.iter().map(|q| show(q.name())).collect();
        // The CNAME chain, in answer order (name → target).
        let chain: Vec<String> = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::CNAME(c) => Some(show(&c.0)),
                _ => None,
            })
            .collect();
        for r in &msg.answers {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            let ttl = Duration::from_secs(u64::from(r.ttl)).clamp(MIN_TTL, MAX_TTL);
            self.insert(
                ip,
                DnsNames {
                    questions: questions.clone(),
                    canonical_names: chain.clone(),
                },
                now + ttl,
            );
        }
    }

    fn insert(&mut self, ip: IpAddr, names: DnsNames, until: Instant) {
        if !self.entries.contains_key(&ip) && self.entries.len() >= self.max_entries {
            let now = Instant::now();
            self.entries.retain(|_, (_, t)| *t > now);
            if self.entries.len() >= self.max_entries {
                self.not_kept += 1;
                return;
            }
        }
        self.entries.insert(ip, (names, until));
    }

    /// The names an address was last given, if the answer is still fresh at `now`.
    pub fn get(&self, ip: IpAddr, now: Instant) -> Option<&DnsNames> {
        self.entries
            .get(&ip)
            .filter(|(_, until)| *until > now)
            .map(|(n, _)| n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::{Name, Record, RecordType};
    use std::str::FromStr;

    fn answer() -> Message {
        let mut m = Message::response(7, hickory_proto::op::OpCode::Query);
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

    #[test]
    fn an_answer_maps_its_address_to_the_question_and_the_cname_chain() {
        let mut c = DnsCache::new(10);
        let now = Instant::now();
        // Round-trip through the wire format, as the capture sees it.
        let bytes = answer().to_vec().unwrap();
        c.learn(&Message::from_vec(&bytes).unwrap(), now);
        let names = c.get("10.0.0.21".parse().unwrap(), now).unwrap();
        assert_eq!(names.questions, vec!["api.depmap.test"]);
        assert_eq!(
            names.canonical_names,
            vec!["edge.cdn.depmap.test", "node7.cdn.depmap.test"]
        );
        // A 30 s TTL is kept at least 5 minutes, not forever.
        assert!(
            c.get("10.0.0.21".parse().unwrap(), now + Duration::from_secs(299))
                .is_some()
        );
        assert!(
            c.get("10.0.0.21".parse().unwrap(), now + Duration::from_secs(301))
                .is_none()
        );
        assert!(c.get("10.0.0.22".parse().unwrap(), now).is_none());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut c = DnsCache::new(1);
        let now = Instant::now();
        c.insert(
            "10.0.0.1".parse().unwrap(),
            DnsNames::default(),
            now + MIN_TTL,
        );
        c.insert(
            "10.0.0.2".parse().unwrap(),
            DnsNames::default(),
            now + MIN_TTL,
        );
        assert_eq!((c.entries.len(), c.not_kept), (1, 1));
    }
}
