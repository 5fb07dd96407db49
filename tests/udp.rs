//! UDP from the dumps: servers' bound UDP ports are VMBoundPort records with
//! `Protocol = "udp"` and their process; a client's socket (bound to an ephemeral port by its
//! first `sendto`) and connected sockets are not ports; a TCP listener on the same port number
//! stays a record of its own; `collect.udp = false` turns them off.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// A Python program in `ns` that prints "ready <port>" once its sockets are set up, then
/// holds them.
fn hold(ns: &Netns, program: &str) -> (Proc, u16) {
    let mut cmd = ns.command("python3");
    cmd.args(["-c", program]);
    let mut p = Proc::spawn(cmd);
    let line = p.line(Duration::from_secs(20));
    let port = line
        .strip_prefix("ready ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("not ready: {line}"));
    (p, port)
}

const SERVERS: &str = r#"
import socket, time
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.bind(("0.0.0.0", 5353))
syslog = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); syslog.bind(("127.0.0.1", 5514))
tcp = socket.socket(); tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", 5353)); tcp.listen()
print("ready 5353", flush=True)
time.sleep(600)
"#;

/// An unconnected client socket that sent once (bound to an ephemeral port), and a
/// connected one.
const CLIENT: &str = r#"
import socket, time
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.sendto(b"q" * 30, ("127.0.0.1", 5353))
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.connect(("127.0.0.1", 5514)); k.send(b"x")
print("ready", c.getsockname()[1], flush=True)
time.sleep(600)
"#;

fn udp_ports(records: &[Value]) -> Vec<&Value> {
    of_type(records, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Protocol"] == "udp")
        .collect()
}

#[test]
fn servers_udp_ports_are_bound_ports_and_clients_are_not() {
    let _serial = serial();
    let ns = Netns::new("udpports");
    let (_servers, _) = hold(&ns, SERVERS);
    let (_client, ephemeral) = hold(&ns, CLIENT);
    let mut depmap = Depmap::start(&ns);
    let seen = depmap.wait_for(Duration::from_secs(20), |r| {
        let udp = udp_ports(r);
        udp.iter().any(|p| p["Port"] == 5353) && udp.iter().any(|p| p["Port"] == 5514)
    });
    assert!(seen, "no UDP bound ports");
    let records = depmap.stop();
    let udp = udp_ports(&records);
    let dns: Vec<&&Value> = udp.iter().filter(|p| p["Port"] == 5353).collect();
    let syslog: Vec<&&Value> = udp.iter().filter(|p| p["Port"] == 5514).collect();
    for p in &dns {
        assert_eq!(
            (&p["Ip"], &p["IsWildcardBind"]),
            (&Value::from("0.0.0.0"), &Value::from(true)),
            "{p}"
        );
    }
    for p in &syslog {
        assert_eq!(
            (&p["Ip"], &p["IsWildcardBind"]),
            (&Value::from("127.0.0.1"), &Value::from(false)),
            "{p}"
        );
    }
    for p in dns.iter().chain(&syslog) {
        assert!(is_python(&p["ProcessName"]), "{p}");
        assert_eq!(
            p["LinksEstablished"], 0,
            "the datagrams predate depmap: {p}"
        );
        assert_ne!(p["Process"], Value::Null, "{p}");
    }
    // The client's ephemeral port, the connected socket's and nothing else.
    let others: Vec<&&Value> = udp
        .iter()
        .filter(|p| p["Port"] != 5353 && p["Port"] != 5514)
        .collect();
    assert!(
        others.is_empty(),
        "client sockets as ports (ephemeral {ephemeral}): {others:?}"
    );
    // The TCP listener on 5353 is a record of its own, with the same process.
    let tcp: Vec<&Value> = of_type(&records, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Protocol"] == "tcp" && r["Port"] == 5353)
        .collect();
    assert!(!tcp.is_empty(), "{records:?}");
    assert_eq!(tcp[0]["Process"], dns[0]["Process"]);
    assert_ne!(
        tcp[0]["PortId"], dns[0]["PortId"],
        "the protocol is part of PortId"
    );
    // Their process is reported (it holds UDP ports, no TCP connection).
    assert!(
        of_type(&records, "VMProcess")
            .iter()
            .any(|r| r["Process"] == dns[0]["Process"]),
        "no VMProcess record for the UDP server"
    );
}

#[test]
fn collect_udp_false_turns_udp_ports_off() {
    let _serial = serial();
    let ns = Netns::new("udpoff");
    let (_servers, _) = hold(&ns, SERVERS);
    let mut depmap = Depmap::start_with(&ns, "udp = false\n");
    // The TCP listener's record says a window with the UDP sockets closed.
    let seen = depmap.wait_for(Duration::from_secs(20), |r| {
        of_type(r, "VMBoundPort").iter().any(|p| p["Port"] == 5353)
    });
    assert!(seen);
    let records = depmap.stop();
    assert!(udp_ports(&records).is_empty(), "{records:?}");
}

/// A DNS-like server (unconnected: `recvfrom`/`sendto`, answers 120 B per query) on 5353 and
/// a syslog-like sink (reads, never answers) on 5514.
const UDP_SERVERS: &str = r#"
import socket, threading, time
dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dns.bind(("127.0.0.1", 5353))
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sink.bind(("127.0.0.1", 5514))
def answer():
    while True:
        q, peer = dns.recvfrom(2048)
        dns.sendto(b"a" * 120, peer)
def drain():
    while True:
        sink.recv(2048)
threading.Thread(target=answer, daemon=True).start()
threading.Thread(target=drain, daemon=True).start()
print("ready 5353", flush=True)
time.sleep(600)
"#;

/// 500 queries of 40 B with `sendto` (each answered), then 500 datagrams of 100 B on a
/// connected socket: 1,000 datagrams of known sizes out, 500 in.
const UDP_CLIENT: &str = r#"
import socket, time
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(5)
for _ in range(500):
    q.sendto(b"q" * 40, ("127.0.0.1", 5353))
    q.recvfrom(2048)
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.connect(("127.0.0.1", 5514))
for _ in range(500):
    k.send(b"x" * 100)
print("ready", q.getsockname()[1], flush=True)
time.sleep(600)
"#;

#[test]
fn udp_flows_are_exact_on_both_ends_with_the_event_source() {
    let _serial = serial();
    let ns = Netns::new("udpflows");
    let (_servers, _) = hold(&ns, UDP_SERVERS);
    let mut depmap = Depmap::start_with(&ns, "events = \"ebpf\"\n");
    let (_client, _) = hold(&ns, UDP_CLIENT);
    let udp = |direction: &'static str, port: i64| {
        move |r: &Value| {
            r["Protocol"] == "udp" && r["Direction"] == direction && r["DestinationPort"] == port
        }
    };
    let done = depmap.wait_for(Duration::from_secs(30), |r| {
        conn_sums(r, udp("outbound", 5353)).get("BytesReceived") == Some(&60_000)
            && conn_sums(r, udp("inbound", 5514)).get("BytesReceived") == Some(&50_000)
    });
    assert!(done, "the UDP flows' bytes never reached their totals");
    let records = depmap.stop();
    let flows = |f: &dyn Fn(&Value) -> bool| -> Vec<Value> {
        of_type(&records, "VMConnection")
            .into_iter()
            .filter(|r| f(r))
            .cloned()
            .collect()
    };
    let check = |f: &dyn Fn(&Value) -> bool, sent: i64, received: i64| {
        let all = flows(f);
        assert!(!all.is_empty());
        let sum = |c: &str| all.iter().map(|r| r[c].as_i64().unwrap_or(0)).sum::<i64>();
        assert_eq!(
            (
                sum("LinksEstablished"),
                sum("BytesSent"),
                sum("BytesReceived")
            ),
            (1, sent, received),
            "{all:?}"
        );
        for r in &all {
            assert!(is_python(&r["ProcessName"]), "{r}");
            assert_eq!(r["SourceIp"], "127.0.0.1");
            assert_eq!(r["DestinationIp"], "127.0.0.1");
            assert_eq!(r["ResponseTimeSum"], Value::Null, "{r}");
        }
        all[0]["Process"].clone()
    };
    // The DNS-like exchange: the client's one socket to one remote, the server's one flow.
    let client = check(&udp("outbound", 5353), 20_000, 60_000);
    let dns = check(&udp("inbound", 5353), 60_000, 20_000);
    // The connected socket's datagrams, never answered.
    let sender = check(&udp("outbound", 5514), 50_000, 0);
    let sink = check(&udp("inbound", 5514), 0, 50_000);
    assert_eq!(client, sender, "one client process");
    assert_eq!(dns, sink, "one server process");
    assert_ne!(client, dns);
    // Nothing else of this namespace's UDP (no flow to another port).
    let others = flows(&|r: &Value| {
        r["Protocol"] == "udp" && r["DestinationPort"] != 5353 && r["DestinationPort"] != 5514
    });
    assert!(others.is_empty(), "{others:?}");
}

/// Three resolver-like sockets, one query each (answered), each closed at once (no dump sees
/// them); the process lives 300 ms more, so that its /proc entry can be read (a process gone
/// even sooner is pooled from the event: name only).
const SHORT_CLIENT: &str = r#"
import socket, time
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5)
    s.sendto(b"q" * 40, ("127.0.0.1", 5353)); s.recvfrom(2048); s.close()
print("ready 0", flush=True)
time.sleep(0.3)
"#;

#[test]
fn short_udp_sockets_are_credited_to_the_process_that_created_them() {
    let _serial = serial();
    let ns = Netns::new("udpshort");
    let (_servers, _) = hold(&ns, UDP_SERVERS);
    let mut depmap = Depmap::start_with(&ns, "events = \"ebpf\"\n");
    let mut cmd = ns.command("python3");
    cmd.args(["-c", SHORT_CLIENT, "resolver-tag"]);
    let mut p = Proc::spawn(cmd);
    assert_eq!(p.line(Duration::from_secs(20)), "ready 0");
    let _ = p.child.wait();
    let out = |r: &Value| {
        r["Protocol"] == "udp" && r["Direction"] == "outbound" && r["DestinationPort"] == 5353
    };
    let done = depmap.wait_for(Duration::from_secs(30), |r| {
        conn_sums(r, out).get("LinksEstablished") == Some(&3)
    });
    assert!(done, "the three flows never appeared");
    let records = depmap.stop();
    let sums = conn_sums(&records, out);
    assert_eq!(
        (
            sums["LinksEstablished"],
            sums["BytesSent"],
            sums["BytesReceived"]
        ),
        (3, 120, 360),
        "{sums:?}"
    );
    for r in of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| out(r))
    {
        let p = of_type(&records, "VMProcess")
            .into_iter()
            .find(|v| v["Process"] == r["Process"])
            .unwrap_or_else(|| panic!("no process for {r}"));
        assert!(is_python(&p["ExecutableName"]), "{p}");
        assert!(
            p["CommandLine"]
                .as_str()
                .is_some_and(|c| c.contains("resolver-tag")),
            "credited to the process that created the sockets: {p}"
        );
    }
}

/// A connected socket that sends 500 datagrams of 100 B to the sink and a `sendto` query to
/// the DNS-like server; the connected one is closed when a line arrives on stdin.
const CONNECTED_CLIENT: &str = r#"
import socket, sys
k = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); k.connect(("127.0.0.1", 5514))
for _ in range(500):
    k.send(b"x" * 100)
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(5)
q.sendto(b"q" * 40, ("127.0.0.1", 5353)); q.recvfrom(2048)
print("ready", k.getsockname()[1], flush=True)
sys.stdin.readline(); k.close()
print("closed", flush=True)
sys.stdin.readline()
"#;

/// Without the event source there are no UDP byte counters: the dumps' connected sockets are
/// the flows (established, live, terminated when gone) with BytesSent/BytesReceived null —
/// not 0 — an unconnected socket's traffic is not a flow (no remote in a dump), the ports'
/// bytes are null too, and `depmap once` says what is missing.
#[test]
fn without_the_event_source_connected_udp_sockets_are_flows_without_bytes() {
    let _serial = serial();
    let ns = Netns::new("udppoll");
    let (_servers, _) = hold(&ns, UDP_SERVERS);
    let mut depmap = Depmap::start_with(&ns, "events = \"off\"\n");
    let mut cmd = ns.command("python3");
    cmd.args(["-c", CONNECTED_CLIENT]).stdin(Stdio::piped());
    let mut client = Proc::spawn(cmd);
    let ready = client.line(Duration::from_secs(20));
    assert!(ready.starts_with("ready "), "{ready}");
    let mut stdin = client.child.stdin.take().expect("stdin");
    let to_sink = |r: &Value| {
        r["Protocol"] == "udp" && r["Direction"] == "outbound" && r["DestinationPort"] == 5514
    };
    assert!(
        depmap.wait_for(Duration::from_secs(20), |r| conn_sums(r, to_sink)
            .get("LinksLive")
            .is_some_and(|n| *n >= 1)),
        "the connected socket never showed as a live flow"
    );
    // Closed: terminated at the next dump.
    writeln!(stdin, "close").expect("signal the client");
    assert_eq!(client.line(Duration::from_secs(10)), "closed");
    assert!(
        depmap.wait_for(Duration::from_secs(20), |r| conn_sums(r, to_sink)
            .get("LinksTerminated")
            == Some(&1)),
        "the closed socket's flow never terminated"
    );
    let records = depmap.stop();
    let flows: Vec<&Value> = of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| to_sink(r))
        .collect();
    let sums = conn_sums(&records, to_sink);
    assert_eq!(
        (sums["LinksEstablished"], sums["LinksTerminated"]),
        (1, 1),
        "{flows:?}"
    );
    for r in &flows {
        assert_eq!(r["BytesSent"], Value::Null, "{r}");
        assert_eq!(r["BytesReceived"], Value::Null, "{r}");
        assert_eq!(r["ResponseTimeSum"], Value::Null, "{r}");
        assert!(is_python(&r["ProcessName"]), "{r}");
        assert_eq!(
            (&r["SourceIp"], &r["DestinationIp"]),
            (&Value::from("127.0.0.1"), &Value::from("127.0.0.1"))
        );
    }
    // The sendto query is no flow; nothing inbound (the servers' sockets are unconnected).
    let others: Vec<&Value> = of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| r["Protocol"] == "udp" && !to_sink(r))
        .collect();
    assert!(others.is_empty(), "{others:?}");
    // The ports are there, their bytes null.
    let ports = udp_ports(&records);
    for port in [5353, 5514] {
        assert!(ports.iter().any(|p| p["Port"] == port), "{ports:?}");
    }
    for p in &ports {
        assert_eq!(
            (&p["BytesSent"], &p["BytesReceived"]),
            (&Value::Null, &Value::Null),
            "{p}"
        );
    }
    drop(stdin);

    // `depmap once` says what is missing.
    let dir = TempDir::new("udpcfg");
    let cfg = config_file(&dir, "[collect]\nevents = \"off\"\n");
    let out = ns
        .command(DEPMAP)
        .args([
            "once",
            "--duration",
            "300ms",
            "--format",
            "ndjson",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .expect("depmap once");
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stderr);
    let line = report
        .lines()
        .skip_while(|l| !l.contains("UDP flows"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        line.contains("[--]") && line.contains("BytesSent/BytesReceived null"),
        "{report}"
    );
}

/// A DNS-like server on port 53 (inside the test's namespace) answering each query after
/// 20 ms, and a client making 100 queries one after the other on one socket.
const DNS_SERVER: &str = r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 53))
print("ready 53", flush=True)
while True:
    q, peer = s.recvfrom(2048)
    time.sleep(0.02)
    s.sendto(b"a" * 100, peer)
"#;

const DNS_CLIENT: &str = r#"
import socket, time
q = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); q.settimeout(5)
waits = []
for _ in range(100):
    t = time.monotonic()
    q.sendto(b"q" * 40, ("127.0.0.1", 53))
    q.recvfrom(2048)
    waits.append(time.monotonic() - t)
print("ready", int(sum(waits) / len(waits) * 1e5), flush=True)  # hundredths of a ms
time.sleep(600)
"#;

/// DNS flows carry response times (one per answered query, query's datagram to answer's)
/// on both ends; other UDP flows do not (tested above).
#[test]
fn dns_flows_have_response_times_on_both_ends() {
    let _serial = serial();
    let ns = Netns::new("udpdns");
    let (_server, _) = hold(&ns, DNS_SERVER);
    let mut depmap = Depmap::start_with(&ns, "events = \"ebpf\"\n");
    let (_client, client_mean_centi_ms) = hold(&ns, DNS_CLIENT);
    let dns = |direction: &'static str| {
        move |r: &Value| {
            r["Protocol"] == "udp" && r["Direction"] == direction && r["DestinationPort"] == 53
        }
    };
    let done = depmap.wait_for(Duration::from_secs(30), |r| {
        response_stats(r, dns("outbound")).0 == 100 && response_stats(r, dns("inbound")).0 == 100
    });
    let records = depmap.stop();
    let (client, server) = (
        response_stats(&records, dns("outbound")),
        response_stats(&records, dns("inbound")),
    );
    assert!(done, "client {client:?}, server {server:?}");
    assert_eq!((client.0, server.0), (100, 100));
    // Means within 5 % or 1 ms of the truth: the client's measured wait, the server's delay.
    let mean = |(n, sum, ..): (i64, i64, i64, i64)| sum as f64 / n as f64;
    let client_truth = f64::from(client_mean_centi_ms) / 100.0;
    let near = |got: f64, truth: f64| (got - truth).abs() <= (truth * 0.05).max(1.0);
    assert!(
        near(mean(client), client_truth),
        "client mean {} ms, measured {client_truth} ms",
        mean(client)
    );
    assert!(near(mean(server), 20.0), "server mean {} ms", mean(server));
    println!(
        "DNS response times: client {} of 100, mean {:.2} ms (measured {client_truth} ms), \
         min {} max {}; server {} of 100, mean {:.2} ms (delay 20 ms), min {} max {}",
        client.0,
        mean(client),
        client.2,
        client.3,
        server.0,
        mean(server),
        server.2,
        server.3
    );
    assert!(server.2 >= 20 && client.2 >= 20, "{client:?} {server:?}");
    // Bytes as ever: 100 queries of 40 B, 100 answers of 100 B.
    let sums = conn_sums(&records, dns("outbound"));
    assert_eq!((sums["BytesSent"], sums["BytesReceived"]), (4_000, 10_000));
}
