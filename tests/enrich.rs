//! Enrichment against known sources, in the test's own network namespace: an indicator file
//! that marks one test server's address exactly and another's by a CIDR range; the
//! VMConnection records must carry every threat column of the matching indicator, and none
//! where nothing matches.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn indicators_mark_the_servers_by_address_and_by_range() {
    let _serial = serial();
    let ns = Netns::new("threat");
    let dir = TempDir::new("threat");
    let csv = dir.0.join("indicators.csv");
    std::fs::write(
        &csv,
        "indicator,threat_type,description,tlp_level,confidence,severity,first_reported,last_reported,is_active\n\
         127.0.0.2,C2,Known command and control,Red,90,5,2026-01-02T03:04:05Z,2026-11-01T00:00:00Z,true\n\
         this line is malformed,,,,,,,,\n",
    )
    .unwrap();
    let jsonl = dir.0.join("ranges.jsonl");
    std::fs::write(
        &jsonl,
        "{\"indicator\": \"127.0.0.4/30\", \"threat_type\": \"Botnet\", \"description\": \"A botnet range\", \"tlp_level\": \"Amber\", \"confidence\": \"60\", \"severity\": 3, \"first_reported\": \"2025-05-05T00:00:00Z\", \"last_reported\": \"2026-10-10T00:00:00Z\", \"is_active\": \"false\"}\n",
    )
    .unwrap();
    let mut dm = Depmap::start_with(
        &ns,
        &format!(
            "[enrich]\nindicator_files = [\"{}\", \"{}\"]\n",
            csv.display(),
            jsonl.display()
        ),
    );
    let (_a, _) = server(&ns, "127.0.0.2", 9701, 0);
    let (_b, _) = server(&ns, "127.0.0.5", 9702, 0);
    for host in ["127.0.0.2", "127.0.0.5"] {
        let t = client(
            &ns,
            &[
                "--host",
                host,
                "--port",
                if host.ends_with('2') { "9701" } else { "9702" },
                "--conns",
                "2",
            ],
        );
        assert_eq!(t["conns"], 2);
    }
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        [9701, 9702].iter().all(|p| {
            conn_sums(r, |x| {
                x["Direction"] == "outbound" && x["DestinationPort"] == *p
            })
            .get("LinksTerminated")
            .copied()
                == Some(2)
        })
    }));
    let records = dm.stop();
    let conns: Vec<&Value> = of_type(&records, "VMConnection");
    let outbound = |port: i64| -> Vec<&Value> {
        conns
            .iter()
            .copied()
            .filter(|r| r["Direction"] == "outbound" && r["DestinationPort"] == port)
            .collect()
    };
    for r in outbound(9701) {
        assert_eq!(r["MaliciousIp"], "127.0.0.2", "{r}");
        assert_eq!(r["IndicatorThreatType"], "C2");
        assert_eq!(r["Description"], "Known command and control");
        assert_eq!(r["TLPLevel"], "Red");
        assert_eq!(r["Confidence"], "90");
        assert_eq!(r["Severity"], 5);
        assert_eq!(r["FirstReportedDateTime"], "2026-01-02T03:04:05Z");
        assert_eq!(r["LastReportedDateTime"], "2026-11-01T00:00:00Z");
        assert_eq!(r["IsActive"], "true");
    }
    for r in outbound(9702) {
        assert_eq!(r["MaliciousIp"], "127.0.0.5", "{r}");
        assert_eq!(r["IndicatorThreatType"], "Botnet");
        assert_eq!(r["TLPLevel"], "Amber");
        assert_eq!(r["Severity"], 3);
        assert_eq!(r["IsActive"], "false");
    }
    assert!(!outbound(9701).is_empty() && !outbound(9702).is_empty());
    // The servers' inbound records: the remote end (127.0.0.1) is in no indicator.
    for r in conns.iter().filter(|r| r["Direction"] == "inbound") {
        assert!(
            r["MaliciousIp"].is_null() && r["IndicatorThreatType"].is_null(),
            "{r}"
        );
    }
}
