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
    // One record per logical connection per window.
    let mut per_window: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &inbound {
        *per_window
            .entry(r["TimeGenerated"].as_str().unwrap())
            .or_default() += 1;
    }
    assert!(per_window.values().all(|n| *n == 1), "{per_window:?}");
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
        // Inbound records have no LinksFailed; ResponseTime* are null exactly when no response
        // was measured.
        assert!(r["LinksFailed"].is_null());
        let responses = r["Responses"].as_i64().unwrap();
        assert_eq!(r["ResponseTimeSum"].is_null(), responses == 0, "{r}");
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
    let longest = totals["max_ms"].as_f64().unwrap();
    assert!(
        longest < 50.0,
        "each connection must live < 50 ms; the longest lived {longest} ms"
    );
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

/// With a CPU budget too small for the configured schedule, full dumps are stretched to one a
/// window (2 s here instead of 200 ms): bytes and links must still be exact, for a connection
/// that lives across several windows and for short ones that live between two dumps.
#[test]
fn a_stretched_dump_period_keeps_bytes_and_links_exact() {
    let _serial = serial();
    let a = Netns::new("budget");
    let log_dir = TempDir::new("budget-log");
    let log = log_dir.0.join("depmap.log");
    let mut dm = Depmap::start_logging(&a, "cpu_budget = \"0.0001%\"\nevents = \"off\"\n", &log);
    let (_srv, _) = server(&a, "127.0.0.1", 9191, 0);
    let long = spawn_peer(
        &a,
        "client",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9191",
            "--conns",
            "1",
            "--exchanges",
            "25",
            "--req",
            "300",
            "--resp",
            "3000",
            "--think-ms",
            "200",
        ]
        .map(String::from),
    );
    let short = client(
        &a,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9191",
            "--conns",
            "50",
            "--req",
            "100",
            "--resp",
            "1000",
        ],
    );
    let long = finish(long, Duration::from_secs(30));
    let sent = long["sent"].as_i64().unwrap() + short["sent"].as_i64().unwrap();
    let received = long["received"].as_i64().unwrap() + short["received"].as_i64().unwrap();
    let want = |r: &[Value]| {
        conn_sums(r, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 9191
        })
        .get("LinksTerminated")
        .copied()
            == Some(51)
    };
    assert!(dm.wait_for(Duration::from_secs(20), want));
    let records = dm.stop();
    for dir in ["inbound", "outbound"] {
        let sums = conn_sums(&records, |r| {
            r["Direction"] == dir && r["DestinationPort"] == 9191
        });
        assert_eq!(sums["LinksEstablished"], 51, "{dir}");
        assert_eq!(sums["LinksTerminated"], 51, "{dir}");
        let (out, inn) = if dir == "inbound" {
            (received, sent)
        } else {
            (sent, received)
        };
        assert_eq!(sums["BytesSent"], out, "{dir}");
        assert_eq!(sums["BytesReceived"], inn, "{dir}");
    }
    // The long connection (≈5 s) was live at the end of at least one window.
    let live: i64 = of_type(&records, "VMConnection")
        .iter()
        .filter(|r| r["Direction"] == "outbound" && r["DestinationPort"] == 9191)
        .map(|r| r["LinksLive"].as_i64().unwrap_or(0))
        .sum();
    assert!(live >= 1, "LinksLive sum {live}");
    // And the dumps were stretched: to one a window.
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let period_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dump period changed"))
        .collect();
    assert!(
        period_lines.iter().any(|l| l.contains("period=2s")),
        "{log}"
    );
    // Once a minute at most (issue 11: five lines in a minute), and this run is shorter.
    assert_eq!(period_lines.len(), 1, "{log}");
    // Its fields explain themselves: what a full poll costs and what polls may use.
    assert!(
        period_lines[0].contains("cpu_per_full_poll=")
            && period_lines[0].contains("full_polls_may_use=")
            && period_lines[0].contains("previous="),
        "{log}"
    );
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

#[test]
fn ipv6_and_ipv4_mapped_connections_on_a_dual_stack_listener() {
    let _serial = serial();
    let a = Netns::new("six");
    let mut dm = Depmap::start(&a);
    let (_srv, _) = server(&a, "::", 8443, 0);
    let v6 = client(
        &a,
        &[
            "--host",
            "::1",
            "--port",
            "8443",
            "--exchanges",
            "3",
            "--req",
            "50",
            "--resp",
            "700",
        ],
    );
    let v4 = client(
        &a,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "8443",
            "--exchanges",
            "2",
            "--req",
            "40",
            "--resp",
            "900",
        ],
    );
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        terminated(r, "inbound", "::1", "::1", 8443) == 1
            && terminated(r, "inbound", "127.0.0.1", "127.0.0.1", 8443) == 1
    }));
    let records = dm.stop();
    for (src, totals) in [("::1", &v6), ("127.0.0.1", &v4)] {
        let s = conn_sums(&records, |r| is(r, "inbound", src, src, 8443));
        assert_eq!(
            s["BytesReceived"],
            totals["sent"].as_i64().unwrap(),
            "{src}"
        );
        assert_eq!(
            s["BytesSent"],
            totals["received"].as_i64().unwrap(),
            "{src}"
        );
        let o = conn_sums(&records, |r| is(r, "outbound", src, src, 8443));
        assert_eq!(o["BytesSent"], totals["sent"].as_i64().unwrap(), "{src}");
        assert_eq!(o["LinksEstablished"], 1, "{src}");
    }
    // No record shows an IPv4-mapped IPv6 address.
    for r in of_type(&records, "VMConnection") {
        assert!(
            !r["SourceIp"].as_str().unwrap().starts_with("::ffff:"),
            "{r}"
        );
    }
    // The :: listener accepted on ::1 and on 127.0.0.1: one wildcard-bind record each.
    let ips: BTreeSet<&str> = of_type(&records, "VMBoundPort")
        .into_iter()
        .filter(|p| p["Port"] == 8443 && p["LinksEstablished"].as_i64().unwrap() > 0)
        .map(|p| {
            assert_eq!(p["IsWildcardBind"], true);
            p["Ip"].as_str().unwrap()
        })
        .collect();
    assert_eq!(ips, BTreeSet::from(["127.0.0.1", "::1"]));
}

#[test]
fn ipv6_off_still_reports_ipv4_on_dual_stack_sockets() {
    let _serial = serial();
    let a = Netns::new("nosix");
    let mut dm = Depmap::start_with(&a, "ipv6 = false\n");
    let (_srv, _) = server(&a, "::", 8444, 0);
    client(&a, &["--host", "::1", "--port", "8444"]);
    let v4 = client(&a, &["--host", "127.0.0.1", "--port", "8444"]);
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        terminated(r, "inbound", "127.0.0.1", "127.0.0.1", 8444) == 1
    }));
    let records = dm.stop();
    let s = conn_sums(&records, |r| {
        is(r, "inbound", "127.0.0.1", "127.0.0.1", 8444)
    });
    assert_eq!(s["BytesReceived"], v4["sent"].as_i64().unwrap());
    for r in of_type(&records, "VMConnection") {
        assert!(
            r["SourceIp"].as_str().unwrap().contains('.'),
            "IPv6 reported with ipv6 = false: {r}"
        );
    }
}

#[test]
fn file_sink_writes_every_table_and_flushes_the_last_window_on_sigterm() {
    let _serial = serial();
    let a = Netns::new("file");
    let dir = TempDir::new("files");
    let cfg = config_file(
        &dir,
        "[collect]\nwindow = \"60s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n",
    );
    let records_dir = dir.0.join("state").join("records");
    let mut cmd = a.command(DEPMAP);
    cmd.args(["run", "--config"]).arg(&cfg);
    let mut dm = Proc::spawn(cmd);
    // The start-up inventory reaches the files after depmap's baseline poll: wait for it
    // (bounded), so everything below happens while depmap watches.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(&records_dir)
        .map(|d| d.count())
        .unwrap_or(0)
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "no inventory file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_srv, _) = server(&a, "127.0.0.1", 5050, 0);
    let totals = client(
        &a,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "5050",
            "--exchanges",
            "2",
            "--hold-ms",
            "500",
        ],
    );
    // The window is 60 s: the connection records reach the files only through the SIGTERM flush.
    let status = dm.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut by_table: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in std::fs::read_dir(&records_dir).unwrap().flatten() {
        let name = e.file_name().into_string().unwrap();
        let table = name.split('-').next().unwrap().to_string();
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["Type"], table.as_str());
            by_table.entry(table.clone()).or_default().push(v);
        }
    }
    for t in ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"] {
        assert!(
            by_table.contains_key(t),
            "{t} missing: {:?}",
            by_table.keys()
        );
    }
    let conns: Vec<Value> = by_table["VMConnection"].clone();
    let s = conn_sums(&conns, |r| {
        is(r, "outbound", "127.0.0.1", "127.0.0.1", 5050)
    });
    assert_eq!(s["LinksEstablished"], 1);
    assert_eq!(s["LinksTerminated"], 1);
    assert_eq!(s["BytesSent"], totals["sent"].as_i64().unwrap());
    assert_eq!(s["BytesReceived"], totals["received"].as_i64().unwrap());
    // Windows are aligned to multiples of 60 s since the epoch.
    for r in &conns {
        let t = r["TimeGenerated"].as_str().unwrap();
        assert!(t.ends_with(":00.000Z"), "{t}");
    }
}
