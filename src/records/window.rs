//! VMConnection and VMBoundPort of one window, from the tracker's sums: the grouping keys
//! and sums become the Map's columns (ids of SPEC §4, response times null when none was
//! measured, LinksFailed only for outbound), sorted by key so a window's output is stable.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use super::{Ip, Origin, Record, VmBoundPort, VmConnection, datetime};
use crate::identity::{Identity, connection_id, port_id};
use crate::track::ports::{PortKey, PortStats};
use crate::track::response::RtStats;
use crate::track::sockets::{ConnKey, ConnStats, Direction, PoolId};

/// The records of the window that began at `start`; `process_name` names a pool (its
/// executable), `enrich` fills a connection's enrichment columns.
pub fn records(
    id: &Identity,
    start: SystemTime,
    conns: &HashMap<ConnKey, ConnStats>,
    ports: &BTreeMap<PortKey, PortStats>,
    process_name: impl Fn(&PoolId) -> Option<String>,
    mut enrich: impl FnMut(&mut VmConnection),
) -> Vec<Record> {
    let time = datetime(start);
    let name_of = |p: &Option<PoolId>| p.as_ref().and_then(&process_name);
    let mut out = Vec::with_capacity(conns.len() + ports.len());
    let mut keys: Vec<&ConnKey> = conns.keys().collect();
    keys.sort();
    for key in keys {
        let st = &conns[key];
        let process = key.process.as_deref().unwrap_or("");
        let (src, dst) = (Ip(key.source_ip), Ip(key.destination_ip));
        let remote = match key.direction {
            Direction::Inbound => src,
            Direction::Outbound => dst,
        };
        let mut record = VmConnection {
            origin: Origin::new(id, time.clone()),
            bytes_received: bytes(st, st.bytes_received),
            bytes_sent: bytes(st, st.bytes_sent),
            connection_id: connection_id(
                key.direction.as_str(),
                &id.machine,
                process,
                &src.to_string(),
                &dst.to_string(),
                key.destination_port,
                key.protocol.as_str(),
            ),
            destination_ip: dst,
            destination_port: i32::from(key.destination_port),
            direction: key.direction.as_str().to_string(),
            links_established: st.links_established as i64,
            // Only connection attempts fail, and only the connecting side sees them.
            links_failed: (key.direction == Direction::Outbound).then_some(st.links_failed as i64),
            links_live: st.links_live as i64,
            links_terminated: st.links_terminated as i64,
            process: key.process.as_ref().map(|p| p.to_string()),
            process_name: name_of(&key.process),
            protocol: key.protocol.as_str().into(),
            remote_ip: remote,
            responses: Some(st.rt.responses as i64),
            response_time_max: rt_value(&st.rt, st.rt.max_us),
            response_time_min: rt_value(&st.rt, st.rt.min_us),
            response_time_sum: rt_value(&st.rt, st.rt.sum_us),
            source_ip: src,
            ..Default::default()
        };
        enrich(&mut record);
        out.push(Record::Connection(Box::new(record)));
    }
    for (key, p) in ports {
        let ip = Ip(key.ip);
        let process = key.process.as_deref().unwrap_or("");
        out.push(Record::BoundPort(Box::new(VmBoundPort {
            origin: Origin::new(id, time.clone()),
            bytes_received: bytes(&p.stats, p.stats.bytes_received),
            bytes_sent: bytes(&p.stats, p.stats.bytes_sent),
            port_id: port_id(
                &id.machine,
                process,
                &ip.to_string(),
                key.port,
                key.protocol.as_str(),
            ),
            ip,
            is_wildcard_bind: p.is_wildcard_bind,
            links_established: p.stats.links_established as i64,
            links_live: p.stats.links_live as i64,
            links_terminated: p.stats.links_terminated as i64,
            port: i32::from(key.port),
            process: key.process.as_ref().map(|p| p.to_string()),
            process_name: name_of(&key.process),
            protocol: key.protocol.as_str().into(),
            responses: Some(p.stats.rt.responses as i64),
            response_time_max: rt_value(&p.stats.rt, p.stats.rt.max_us),
            response_time_min: rt_value(&p.stats.rt, p.stats.rt.min_us),
            response_time_sum: rt_value(&p.stats.rt, p.stats.rt.sum_us),
        })));
    }
    out
}

/// A bytes column: null when the bytes were not measured.
fn bytes(st: &ConnStats, value: u64) -> Option<i64> {
    (!st.bytes_unmeasured).then_some(value as i64)
}

/// A response-time column in milliseconds (rounded), from microseconds.
fn rt_value(rt: &RtStats, us: u64) -> Option<i64> {
    (rt.responses > 0).then_some(us.saturating_add(500) as i64 / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::sockets::Protocol;
    use std::time::{Duration, UNIX_EPOCH};

    fn key(direction: Direction, process: Option<&str>) -> ConnKey {
        ConnKey {
            direction,
            process: process.map(PoolId::from),
            source_ip: "10.0.0.9".parse().unwrap(),
            destination_ip: "10.0.0.1".parse().unwrap(),
            destination_port: 80,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn sums_become_the_maps_columns() {
        let id = Identity::new("0b2c".into(), "host".into());
        let start = UNIX_EPOCH + Duration::from_secs(1_764_633_600);
        let mut conns = HashMap::new();
        let mut answered = ConnStats {
            links_established: 2,
            links_terminated: 1,
            links_live: 1,
            links_failed: 3,
            bytes_sent: 100,
            bytes_received: 2_000,
            ..Default::default()
        };
        answered.rt.record(7, 1);
        answered.rt.record(3, 1);
        conns.insert(key(Direction::Inbound, Some("p-srv")), answered);
        conns.insert(
            key(Direction::Outbound, None),
            ConnStats {
                links_failed: 1,
                ..Default::default()
            },
        );
        let names = |p: &PoolId| (p.as_ref() == "p-srv").then(|| "srv".to_string());
        let mut enriched = 0;
        let out = records(&id, start, &conns, &BTreeMap::new(), names, |_| {
            enriched += 1
        });
        assert_eq!((out.len(), enriched), (2, 2));
        let json: Vec<serde_json::Value> = out
            .iter()
            .map(|r| serde_json::from_str(&r.to_json()).unwrap())
            .collect();
        // Sorted by key: inbound first.
        let inbound = &json[0];
        assert_eq!(inbound["Direction"], "inbound");
        assert_eq!(
            inbound["RemoteIp"], "10.0.0.9",
            "the remote end of an inbound link is its source"
        );
        assert_eq!(inbound["ProcessName"], "srv");
        assert_eq!(
            inbound["LinksFailed"],
            serde_json::Value::Null,
            "only the connecting side sees failures"
        );
        assert_eq!(
            (
                inbound["Responses"].as_i64(),
                inbound["ResponseTimeSum"].as_i64()
            ),
            (Some(2), Some(10))
        );
        assert_eq!(
            (
                inbound["ResponseTimeMin"].as_i64(),
                inbound["ResponseTimeMax"].as_i64()
            ),
            (Some(3), Some(7))
        );
        assert_eq!(inbound["BytesReceived"], 2_000);
        assert_eq!(inbound["TimeGenerated"], "2025-12-02T00:00:00.000Z");
        let outbound = &json[1];
        assert_eq!(outbound["RemoteIp"], "10.0.0.1");
        assert_eq!(outbound["LinksFailed"], 1);
        assert_eq!(outbound["Responses"], 0);
        assert_eq!(
            outbound["ResponseTimeSum"],
            serde_json::Value::Null,
            "none measured"
        );
        assert_eq!(outbound["Process"], serde_json::Value::Null);
        assert_ne!(inbound["ConnectionId"], outbound["ConnectionId"]);
    }
}
