//! The kernel event source on a test bed of two network namespaces joined by a veth link:
//! clients' host (10.79.0.1) and servers' host (10.79.0.2), each depmap watching its own
//! namespace (the programs see every namespace's sockets and keep only depmap's). Asserted
//! with exact figures where the truth is known: who connected, who served, bytes, links,
//! failed attempts, and every exchange's response time. No attribution may be wrong; an
//! unattributed connection is `null`.
//!
//! `DEPMAP_FIDELITY_MD=FIDELITY.md cargo test --locked --test events -- --nocapture` writes
//! the response-time rows of this run into FIDELITY.md (section "event timing").

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use serde_json::Value;

const CLIENTS: &str = "10.79.0.1";
const SERVERS: &str = "10.79.0.2";

/// The two hosts of the bed.
struct Bed {
    clients: Netns,
    servers: Netns,
}

impl Bed {
    fn new(tag: &str) -> Bed {
        let clients = Netns::new(&format!("{tag}c"));
        let servers = Netns::new(&format!("{tag}s"));
        veth(&clients, CLIENTS, &servers, SERVERS);
        Bed { clients, servers }
    }
}

/// depmap with the kernel event source required (it fails to start without it) at the test
/// bed's schedule (2 s windows, 200 ms ticks).
fn depmap(ns: &Netns) -> Depmap {
    Depmap::start_with(ns, "events = \"ebpf\"\n")
}

/// The VMProcess records by Process id.
fn processes(records: &[Value]) -> HashMap<String, Value> {
    of_type(records, "VMProcess")
        .into_iter()
        .map(|r| (r["Process"].as_str().unwrap_or("").to_string(), r.clone()))
        .collect()
}

/// Sums of a column over VMConnection records matching `filter`, by Process (null: "").
fn by_process(
    records: &[Value],
    column: &str,
    filter: impl Fn(&Value) -> bool,
) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
    {
        *out.entry(r["Process"].as_str().unwrap_or("").to_string())
            .or_insert(0) += r[column].as_i64().unwrap_or(0);
    }
    out
}

/// LinksEstablished of the outbound connections to `port`, by ProcessName ("null": none).
fn links_by_name(records: &[Value], port: u16) -> BTreeMap<String, i64> {
    let mut by_name = BTreeMap::new();
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| outbound_to(port)(r))
    {
        let name = r["ProcessName"].as_str().unwrap_or("null").to_string();
        *by_name.entry(name).or_insert(0) += r["LinksEstablished"].as_i64().unwrap();
    }
    by_name
}

fn outbound_to(port: u16) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["Direction"] == "outbound" && r["DestinationPort"] == port
}

fn inbound_to(port: u16) -> impl Fn(&Value) -> bool {
    move |r: &Value| r["Direction"] == "inbound" && r["DestinationPort"] == port
}

/// Three long-lived client processes, 200 connections each of 1 to 50 ms: every outbound
/// connection is credited to the process that made it, with its bytes.
#[test]
fn every_short_connection_of_three_clients_is_credited_to_its_process() {
    let _serial = serial();
    let bed = Bed::new("ev3");
    let port = 9401;
    let (_srv, _) = server(&bed.servers, SERVERS, port, 0);
    let mut dm = depmap(&bed.clients);
    let holds = ["1", "20", "45"];
    let clients: Vec<Proc> = holds
        .iter()
        .map(|hold| {
            let args: Vec<String> = [
                "--host",
                SERVERS,
                "--port",
                &port.to_string(),
                "--conns",
                "200",
                "--hold-ms",
                hold,
                "--req",
                "120",
                "--resp",
                "900",
                "--tag",
                &format!("client-{hold}"),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            spawn_peer(&bed.clients, "client", &args)
        })
        .collect();
    let totals: Vec<Value> = clients
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(120)))
        .collect();
    for t in &totals {
        assert_eq!(t["conns"], 200);
        assert!(t["max_ms"].as_f64().unwrap() < 100.0, "{}", t["max_ms"]);
    }
    assert!(dm.wait_terminated("outbound", i64::from(port), 600));
    let records = dm.stop();
    let links = by_process(&records, "LinksEstablished", outbound_to(port));
    let sent = by_process(&records, "BytesSent", outbound_to(port));
    let received = by_process(&records, "BytesReceived", outbound_to(port));
    let procs = processes(&records);
    assert!(
        !links.contains_key(""),
        "unattributed outbound connections: {links:?}"
    );
    assert_eq!(links.len(), 3, "one pool per client: {links:?}");
    for (hold, t) in holds.iter().zip(&totals) {
        // The pool whose command line carries this client's tag.
        let tag = format!("client-{hold}");
        let (id, _) = procs
            .iter()
            .find(|(id, p)| {
                links.contains_key(*id)
                    && p["CommandLine"].as_str().is_some_and(|c| c.contains(&tag))
            })
            .unwrap_or_else(|| panic!("no VMProcess for {tag}: {links:?}"));
        assert_eq!(links[id], 200, "{tag}");
        assert_eq!(sent[id], t["sent"].as_i64().unwrap(), "{tag} bytes sent");
        assert_eq!(
            received[id],
            t["received"].as_i64().unwrap(),
            "{tag} bytes received"
        );
    }
}

/// 100 runs of curl, each a process living a few milliseconds: credited to curl (or null and
/// counted), never to anything else.
#[test]
fn short_lived_curl_processes_are_credited_to_curl() {
    let _serial = serial();
    let bed = Bed::new("evcurl");
    let port = 9402;
    let (_srv, _) = serve(&bed.servers, "python3", SERVERS, port, &["--http", "2000"]);
    let mut dm = depmap(&bed.clients);
    let url = format!("http://{SERVERS}:{port}/");
    for _ in 0..100 {
        let mut curl = bed.clients.command("curl");
        curl.args(["-s", "-o", "/dev/null", "--max-time", "10", &url]);
        assert!(
            run_bounded(&mut curl, Duration::from_secs(15)),
            "curl failed"
        );
    }
    assert!(dm.wait_terminated("outbound", i64::from(port), 100));
    let records = dm.stop();
    let by_name = links_by_name(&records, port);
    println!("100 curl runs credited: {by_name:?}");
    let curl = by_name.get("curl").copied().unwrap_or(0);
    let null = by_name.get("null").copied().unwrap_or(0);
    assert_eq!(curl + null, 100, "no other process credited: {by_name:?}");
    assert!(
        curl >= 95,
        "at least 95 of 100 credited to curl: {by_name:?}"
    );
    // Their pool is reported (the processes are gone by the inventory).
    let procs = processes(&records);
    assert!(
        procs.values().any(|p| p["ExecutableName"] == "curl"),
        "a VMProcess for curl"
    );
}

/// A process that connects, then execs another program that connects too (same pid, same
/// start time, within seconds): each connection is credited to the executable that made it,
/// not the second to what /proc said before the exec.
#[test]
fn a_connection_after_an_exec_is_credited_to_the_new_executable() {
    let _serial = serial();
    let bed = Bed::new("evexec");
    let port = 9405;
    let (_srv, _) = serve(&bed.servers, "python3", SERVERS, port, &["--http", "2000"]);
    let mut dm = depmap(&bed.clients);
    let url = format!("http://{SERVERS}:{port}/");
    let script = format!(
        "import os, socket\n\
         s = socket.create_connection(('{SERVERS}', {port}), timeout=10)\n\
         s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')\n\
         while s.recv(65536): pass\n\
         s.close()\n\
         os.execvp('curl', ['curl', '-s', '-o', '/dev/null', '--max-time', '10', '{url}'])\n"
    );
    let mut both = bed.clients.command("python3");
    both.args(["-c", &script]);
    assert!(
        run_bounded(&mut both, Duration::from_secs(30)),
        "python3 then curl failed"
    );
    assert!(dm.wait_terminated("outbound", i64::from(port), 2));
    let records = dm.stop();
    let by_name = links_by_name(&records, port);
    println!("before and after the exec: {by_name:?}");
    assert_eq!(by_name.get("curl"), Some(&1), "{by_name:?}");
    let python: i64 = by_name
        .iter()
        .filter(|(name, _)| name.starts_with("python3"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(python, 1, "{by_name:?}");
    assert_eq!(by_name.values().sum::<i64>(), 2, "{by_name:?}");
}

/// Two different executables share a port with SO_REUSEPORT: each inbound connection is
/// credited to the one the kernel handed it to, with that server's bytes.
#[test]
fn reuseport_servers_each_get_the_connections_they_served() {
    let _serial = serial();
    let bed = Bed::new("evreuse");
    let port = 9403;
    let dir = TempDir::new("reuse");
    // A second executable: a copy of the interpreter under another name.
    let python = std::fs::canonicalize("/usr/bin/python3").expect("python3");
    let other = dir.0.join("python3-second");
    std::fs::copy(&python, &other).expect("copy python3");
    let logs = [dir.0.join("first.ndjson"), dir.0.join("second.ndjson")];
    let mut dm = depmap(&bed.servers);
    let (_first, _) = serve(
        &bed.servers,
        "python3",
        SERVERS,
        port,
        &["--reuseport", "--log", logs[0].to_str().unwrap()],
    );
    let (_second, _) = serve(
        &bed.servers,
        other.to_str().unwrap(),
        SERVERS,
        port,
        &["--reuseport", "--log", logs[1].to_str().unwrap()],
    );
    let totals = client(
        &bed.clients,
        &[
            "--host",
            SERVERS,
            "--port",
            &port.to_string(),
            "--conns",
            "60",
            "--req",
            "150",
            "--resp",
            "1500",
        ],
    );
    assert_eq!(totals["conns"], 60);
    assert!(dm.wait_terminated("inbound", i64::from(port), 60));
    let records = dm.stop();
    let served = |log: &std::path::Path| -> (i64, i64, i64) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let sum = |k: &str| lines.iter().map(|v| v[k].as_i64().unwrap()).sum::<i64>();
        (lines.len() as i64, sum("received"), sum("sent"))
    };
    let links = by_process(&records, "LinksEstablished", inbound_to(port));
    let received = by_process(&records, "BytesReceived", inbound_to(port));
    let sent = by_process(&records, "BytesSent", inbound_to(port));
    let procs = processes(&records);
    assert!(!links.contains_key(""), "unattributed inbound: {links:?}");
    for (log, name) in logs.iter().zip(["python3", "python3-second"]) {
        let (n, got, gave) = served(log);
        let id = links
            .keys()
            .find(|id| {
                procs.get(*id).is_some_and(|p| {
                    let exe = p["ExecutableName"].as_str().unwrap_or("");
                    if name == "python3" {
                        exe.starts_with("python3.")
                    } else {
                        exe == name
                    }
                })
            })
            .unwrap_or_else(|| panic!("no pool for {name}: {links:?}"));
        println!("{name} served {n} connections");
        assert_eq!(links[id], n, "{name}: connections");
        assert_eq!(received[id], got, "{name}: bytes received");
        assert_eq!(sent[id], gave, "{name}: bytes sent");
    }
    assert_eq!(links.values().sum::<i64>(), 60);
}

/// Refused attempts (nothing listens on the servers' host) count as LinksFailed, credited to
/// the process that tried.
#[test]
fn refused_attempts_are_credited_to_the_process_that_tried() {
    let _serial = serial();
    let bed = Bed::new("evfail");
    let mut dm = depmap(&bed.clients);
    let tried = spawn_peer(
        &bed.clients,
        "fail",
        &["--host", SERVERS, "--port", "9404", "--count", "20"].map(String::from),
    );
    let result = finish(tried, Duration::from_secs(60));
    let refused = result["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "refused")
        .count() as i64;
    assert_eq!(refused, 20, "{result}");
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        by_process(r, "LinksFailed", outbound_to(9404))
            .values()
            .sum::<i64>()
            == 20
    }));
    let records = dm.stop();
    let failed = by_process(&records, "LinksFailed", outbound_to(9404));
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (id, n) = failed.iter().next().unwrap();
    assert_eq!(*n, 20);
    let procs = processes(&records);
    assert!(is_python(&procs[id]["ExecutableName"]), "{}", procs[id]);
}

/// 50 exchanges at 20, 100 and 500 ms of injected delay: every exchange measured on both
/// ends, the mean within 1 ms of the truth (the server's delay inbound, the client's own
/// wait outbound).
#[test]
fn every_exchange_is_timed_on_both_ends() {
    let _serial = serial();
    let bed = Bed::new("evrt");
    let logs = TempDir::new("evrt-logs");
    let (client_log, server_log) = (logs.0.join("clients.log"), logs.0.join("servers.log"));
    let mut client_side = Depmap::start_logging(&bed.clients, "events = \"ebpf\"\n", &client_log);
    let mut server_side = Depmap::start_logging(&bed.servers, "events = \"ebpf\"\n", &server_log);
    let delays = [(9411u16, 20u64), (9412, 100), (9413, 500)];
    let _servers: Vec<Proc> = delays
        .iter()
        .map(|&(port, delay)| server_delay(&bed.servers, SERVERS, port, delay).0)
        .collect();
    let clients: Vec<Proc> = delays
        .iter()
        .map(|&(port, _)| {
            let args = [
                "--host",
                SERVERS,
                "--port",
                &port.to_string(),
                "--exchanges",
                "50",
                "--req",
                "200",
                "--resp",
                "3000",
            ]
            .map(String::from);
            spawn_peer(&bed.clients, "client", &args)
        })
        .collect();
    let totals: Vec<Value> = clients
        .into_iter()
        .map(|c| finish(c, Duration::from_secs(120)))
        .collect();
    for &(port, _) in &delays {
        assert!(client_side.wait_terminated("outbound", i64::from(port), 1));
        assert!(server_side.wait_terminated("inbound", i64::from(port), 1));
    }
    let outbound = client_side.stop();
    let inbound = server_side.stop();
    let mut rows = String::new();
    for (&(port, delay), t) in delays.iter().zip(&totals) {
        // The client's own wait per exchange (send to last byte received).
        let waits: Vec<f64> = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "exchange")
            .map(|e| (e["end"].as_f64().unwrap() - e["t"].as_f64().unwrap()) * 1000.0)
            .collect();
        assert_eq!(waits.len(), 50);
        let client_truth = waits.iter().sum::<f64>() / 50.0;
        let (out_n, out_mean) = responses(&outbound, outbound_to(port));
        let (in_n, in_mean) = responses(&inbound, inbound_to(port));
        println!(
            "delay {delay} ms: outbound {out_n} responses, mean {out_mean:.3} ms (client waited {client_truth:.3}); inbound {in_n}, mean {in_mean:.3} ms"
        );
        assert_eq!(out_n, 50, "outbound responses at {delay} ms");
        assert_eq!(in_n, 50, "inbound responses at {delay} ms");
        assert!(
            (out_mean - client_truth).abs() < 1.0,
            "outbound mean {out_mean} vs the client's {client_truth}"
        );
        assert!(
            (in_mean - delay as f64).abs() < 1.0,
            "inbound mean {in_mean} vs the delay {delay}"
        );
        rows.push_str(&format!(
            "| {delay} ms | 50 | {out_n} | {out_mean:.2} ms | {client_truth:.2} ms | {in_n} | {in_mean:.2} ms | {delay} ms |\n"
        ));
    }
    // Each depmap followed its own namespace only: the other end's owners and response times
    // (3 connects, 150 exchanges) never reached it; bytes were exact without FIN lookups.
    for log in [&client_log, &server_log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains("summary="))
            .unwrap_or("");
        for counter in [
            "event_owners_unmatched_total=0 ",
            "event_responses_unmatched_total=0 ",
            "kernel_events_ring_full_total=0 ",
            "kernel_events_map_full_total=0 ",
            // Every close's FIN came from its CLOSED event: no lookup by the poll loop.
            "fin_lookups_total=0 ",
        ] {
            assert!(summary.contains(counter), "{counter} in {summary}");
        }
    }
    if let Ok(path) = std::env::var("DEPMAP_FIDELITY_MD") {
        let header = "| injected delay | exchanges | outbound Responses | outbound mean | client's own wait | inbound Responses | inbound mean | truth |\n|---|---|---|---|---|---|---|---|\n";
        replace_section(&path, "event timing", &format!("{header}{rows}"));
    }
}

/// Responses and their mean (ResponseTimeSum / Responses, ms) over matching records.
fn responses(records: &[Value], filter: impl Fn(&Value) -> bool) -> (i64, f64) {
    let (mut n, mut sum) = (0, 0);
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
    {
        n += r["Responses"].as_i64().unwrap_or(0);
        sum += r["ResponseTimeSum"].as_i64().unwrap_or(0);
    }
    (n, if n > 0 { sum as f64 / n as f64 } else { 0.0 })
}
