//! End-to-end: depmap in its own network namespaces, real servers and clients, records
//! compared with what the peers actually wrote.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn is(r: &Value, dir: &str, src: &str, dst: &str, port: u16) -> bool {
    r["Direction"] == dir
        && r["SourceIp"] == src
        && r["DestinationIp"] == dst
        && r["DestinationPort"] == port
}

fn terminated(records: &[Value], dir: &str, src: &str, dst: &str, port: u16) -> i64 {
    conn_sums(records, |r| is(r, dir, src, dst, port))
        .get("LinksTerminated")
        .copied()
        .unwrap_or(0)
}

#[test]
fn loopback_and_veth_connections_on_both_ends_exact_bytes_across_windows() {
    let _serial = serial();
    let a = Netns::new("srv");
    let b = Netns::new("cli");
    veth(&a, "10.77.0.1", &b, "10.77.0.2");
    let mut dm_a = Depmap::start(&a);
    let mut dm_b = Depmap::start(&b);
    let (_srv, info) = server(&a, "0.0.0.0", 8080, 0);
    assert_eq!(info["listening"], 8080);

    // Over the veth link: one connection, six exchanges 700 ms apart (crosses 2 s windows).
    let remote = client(
        &b,
        &[
            "--host",
            "10.77.0.1",
            "--port",
            "8080",
            "--exchanges",
            "6",
            "--req",
            "1000",
            "--resp",
            "20000",
            "--think-ms",
            "700",
        ],
    );
    // Over loopback inside the server's namespace.
    let local = client(
        &a,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "8080",
            "--exchanges",
            "4",
            "--req",
            "300",
            "--resp",
            "5000",
            "--think-ms",
            "600",
        ],
    );
    assert!(dm_a.wait_for(Duration::from_secs(15), |r| {
        terminated(r, "inbound", "10.77.0.2", "10.77.0.1", 8080) == 1
            && terminated(r, "inbound", "127.0.0.1", "127.0.0.1", 8080) == 1
            && terminated(r, "outbound", "127.0.0.1", "127.0.0.1", 8080) == 1
    }));
    assert!(dm_b.wait_for(Duration::from_secs(15), |r| {
        terminated(r, "outbound", "10.77.0.2", "10.77.0.1", 8080) == 1
    }));
    let ra = dm_a.stop();
    let rb = dm_b.stop();

    let exact =
        |records: &[Value], dir: &str, src: &str, dst: &str, sent: &Value, received: &Value| {
            let s = conn_sums(records, |r| is(r, dir, src, dst, 8080));
            assert_eq!(s["LinksEstablished"], 1, "{dir} {src}->{dst}");
            assert_eq!(s["LinksTerminated"], 1, "{dir} {src}->{dst}");
            assert_eq!(
                s["BytesSent"],
                sent.as_i64().unwrap(),
                "{dir} {src}->{dst} BytesSent"
            );
            assert_eq!(
                s["BytesReceived"],
                received.as_i64().unwrap(),
                "{dir} {src}->{dst} BytesReceived"
            );
        };
    // Server side: inbound; what the client sent is what the server received.
    exact(
        &ra,
        "inbound",
        "10.77.0.2",
        "10.77.0.1",
        &remote["received"],
        &remote["sent"],
    );
    exact(
        &ra,
        "inbound",
        "127.0.0.1",
        "127.0.0.1",
        &local["received"],
        &local["sent"],
    );
    // Loopback gives the outbound record too, and the veth client's host sees its side.
    exact(
        &ra,
        "outbound",
        "127.0.0.1",
        "127.0.0.1",
        &local["sent"],
        &local["received"],
    );
    exact(
        &rb,
        "outbound",
        "10.77.0.2",
        "10.77.0.1",
        &remote["sent"],
        &remote["received"],
    );
    assert_eq!(remote["sent"], 6 * (8 + 1000));
    assert_eq!(remote["received"], 6 * 20000);

    // Every record of the veth connection: right RemoteIp, process, ids; live in ≥ 2 windows.
    let inbound: Vec<&Value> = of_type(&ra, "VMConnection")
        .into_iter()
        .filter(|r| is(r, "inbound", "10.77.0.2", "10.77.0.1", 8080))
        .collect();
    let live_windows: BTreeSet<&str> = inbound
        .iter()
        .filter(|r| r["LinksLive"] == 1)
        .map(|r| r["TimeGenerated"].as_str().unwrap())
        .collect();
    assert!(
        !live_windows.is_empty(),
        "no window ends with the connection live"
    );
    let windows: BTreeSet<&str> = inbound
        .iter()
        .map(|r| r["TimeGenerated"].as_str().unwrap())
        .collect();
    assert!(
        windows.len() >= 2,
        "the connection's records span windows: {windows:?}"
    );
    for r in &inbound {
        assert_eq!(r["RemoteIp"], "10.77.0.2");
        assert_eq!(r["Protocol"], "tcp");
        assert!(is_python(&r["ProcessName"]), "{}", r);
        assert!(r["Process"].as_str().unwrap().starts_with("p-"));
        assert!(r["ConnectionId"].as_str().unwrap().starts_with("c-"));
        assert_eq!(
            r["ConnectionId"], inbound[0]["ConnectionId"],
            "stable across windows"
        );
        assert!(
            r["Responses"].is_null()
                && r["ResponseTimeSum"].is_null()
                && r["LinksFailed"].is_null()
        );
        assert!(r["TimeGenerated"].as_str().unwrap().ends_with(".000Z"));
    }
    let out_b = of_type(&rb, "VMConnection")
        .into_iter()
        .find(|r| is(r, "outbound", "10.77.0.2", "10.77.0.1", 8080))
        .unwrap();
    assert_eq!(out_b["RemoteIp"], "10.77.0.1");
    assert!(is_python(&out_b["ProcessName"]), "{}", out_b);

    // VMBoundPort: the wildcard listener yields one record per accepting address with
    // IsWildcardBind = true; the 0.0.0.0 record only in windows without such a record.
    let ports: Vec<&Value> = of_type(&ra, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Port"] == 8080)
        .collect();
    let mut by_window: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for p in &ports {
        assert_eq!(p["IsWildcardBind"], true, "{p}");
        by_window
            .entry(p["TimeGenerated"].as_str().unwrap())
            .or_default()
            .push(p);
    }
    let mut saw_idle = false;
    for (w, recs) in &by_window {
        let ips: BTreeSet<&str> = recs.iter().map(|r| r["Ip"].as_str().unwrap()).collect();
        if ips.contains("0.0.0.0") {
            assert_eq!(
                ips.len(),
                1,
                "wildcard record next to specific ones in {w}: {ips:?}"
            );
            saw_idle = true;
        }
    }
    assert!(saw_idle, "an idle window shows the wildcard record");
    let port_sum = |ip: &str, col: &str| -> i64 {
        ports
            .iter()
            .filter(|p| p["Ip"] == ip)
            .map(|p| p[col].as_i64().unwrap())
            .sum()
    };
    assert_eq!(port_sum("10.77.0.1", "LinksEstablished"), 1);
    assert_eq!(
        port_sum("10.77.0.1", "BytesReceived"),
        remote["sent"].as_i64().unwrap()
    );
    assert_eq!(
        port_sum("127.0.0.1", "BytesSent"),
        local["received"].as_i64().unwrap()
    );
}

#[test]
fn hundred_short_connections_and_a_specific_bind() {
    let _serial = serial();
    let a = Netns::new("short");
    let mut dm = Depmap::start(&a);
    let (_srv, _) = server(&a, "127.0.0.2", 9090, 0);
    let totals = client(
        &a,
        &[
            "--host",
            "127.0.0.2",
            "--port",
            "9090",
            "--conns",
            "100",
            "--req",
            "200",
            "--resp",
            "2000",
        ],
    );
    assert_eq!(totals["conns"], 100);
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        conn_sums(r, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 9090
        })
        .get("LinksTerminated")
        .copied()
            == Some(100)
            && conn_sums(r, |r| {
                r["Direction"] == "outbound" && r["DestinationPort"] == 9090
            })
            .get("LinksTerminated")
            .copied()
                == Some(100)
    }));
    let records = dm.stop();
    let inbound = conn_sums(&records, |r| {
        r["Direction"] == "inbound" && r["DestinationPort"] == 9090
    });
    assert_eq!(inbound["LinksEstablished"], 100);
    assert_eq!(inbound["LinksTerminated"], 100);
    assert_eq!(inbound["BytesReceived"], totals["sent"].as_i64().unwrap());
    assert_eq!(inbound["BytesSent"], totals["received"].as_i64().unwrap());
    let outbound = conn_sums(&records, |r| {
        r["Direction"] == "outbound" && r["DestinationPort"] == 9090
    });
    assert_eq!(outbound["LinksEstablished"], 100);
    assert_eq!(outbound["LinksTerminated"], 100);
    assert_eq!(outbound["BytesSent"], totals["sent"].as_i64().unwrap());
    assert_eq!(
        outbound["BytesReceived"],
        totals["received"].as_i64().unwrap()
    );
    // Inbound sockets are the server's (they can only come from its listening socket).
    for r in of_type(&records, "VMConnection") {
        if r["Direction"] == "inbound" && r["DestinationPort"] == 9090 {
            assert!(is_python(&r["ProcessName"]), "{}", r);
            assert_eq!(r["SourceIp"], "127.0.0.1");
            assert_eq!(r["DestinationIp"], "127.0.0.2");
        }
        // An outbound socket is credited to a process only if one was seen holding it.
        if r["Direction"] == "outbound" && !r["Process"].is_null() {
            assert!(is_python(&r["ProcessName"]), "{}", r);
        }
    }
    // A port bound to one address: IsWildcardBind false, its sums, never a wildcard record.
    let ports: Vec<&Value> = of_type(&records, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Port"] == 9090)
        .collect();
    assert!(!ports.is_empty());
    for p in &ports {
        assert_eq!(p["Ip"], "127.0.0.2");
        assert_eq!(p["IsWildcardBind"], false);
        assert!(p["PortId"].as_str().unwrap().starts_with("b-"));
        assert_eq!(p["PortId"], ports[0]["PortId"]);
    }
    let est: i64 = ports
        .iter()
        .map(|p| p["LinksEstablished"].as_i64().unwrap())
        .sum();
    assert_eq!(est, 100);
}

#[test]
fn preforked_server_is_one_pool_with_a_stable_id() {
    let _serial = serial();
    let a = Netns::new("fork");
    let mut dm = Depmap::start(&a);
    let (mut srv, info) = server(&a, "0.0.0.0", 7070, 3);
    let parent = info["pid"].as_i64().unwrap();
    // Three concurrent connections held 1.5 s: the children hold the accepted sockets.
    let totals = client(
        &a,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "7070",
            "--conns",
            "3",
            "--concurrent",
            "--hold-ms",
            "1500",
        ],
    );
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        conn_sums(r, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 7070
        })
        .get("LinksTerminated")
        .copied()
            == Some(3)
    }));
    srv.terminate(Duration::from_secs(10));
    // The same server again: a new parent pid, the same pool id.
    let (_srv2, info2) = server(&a, "0.0.0.0", 7070, 3);
    let parent2 = info2["pid"].as_i64().unwrap();
    assert_ne!(parent, parent2);
    client(
        &a,
        &["--host", "127.0.0.1", "--port", "7070", "--hold-ms", "600"],
    );
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        conn_sums(r, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 7070
        })
        .get("LinksTerminated")
        .copied()
            == Some(4)
    }));
    let records = dm.stop();
    let inbound: Vec<&Value> = of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| r["Direction"] == "inbound" && r["DestinationPort"] == 7070)
        .collect();
    let pools: BTreeSet<&str> = inbound
        .iter()
        .map(|r| r["Process"].as_str().unwrap())
        .collect();
    assert_eq!(
        pools.len(),
        1,
        "one pool for parent, children and the restarted server: {pools:?}"
    );
    let pool = *pools.iter().next().unwrap();
    let s = conn_sums(&records, |r| {
        r["Direction"] == "inbound" && r["DestinationPort"] == 7070
    });
    assert_eq!(s["LinksEstablished"], 4);
    assert_eq!(s["BytesReceived"], totals["sent"].as_i64().unwrap() + 108);
    // VMProcess: the pool's FirstPid is the oldest live member, the listening parent.
    let procs: Vec<&Value> = of_type(&records, "VMProcess")
        .into_iter()
        .filter(|p| p["Process"] == pool)
        .collect();
    let first_pids: BTreeSet<i64> = procs
        .iter()
        .map(|p| p["FirstPid"].as_i64().unwrap())
        .collect();
    assert!(
        first_pids.contains(&parent),
        "{first_pids:?} vs parent {parent}"
    );
    assert!(
        first_pids.contains(&parent2),
        "{first_pids:?} vs restarted parent {parent2}: {procs:?}"
    );
    for p in &procs {
        assert!(is_python(&p["ExecutableName"]), "{}", p);
        assert!(p["CommandLine"].as_str().unwrap().contains("--prefork 3"));
        assert_eq!(
            p["_ResourceId"],
            format!("{}/processes/{pool}", p["Machine"].as_str().unwrap())
        );
        assert!(p["StartTime"].as_str().unwrap().ends_with('Z'));
    }
}
