//! Containers: two "containers" — each a child cgroup named like a Docker scope with a network
//! namespace of its own — serve TCP and UDP (DNS-like) to each other over a veth, while depmap runs in the
//! initial namespace with `collect.namespaces = "all"`. Every connection and bound port of both
//! must appear with exact bytes, as the containers' own addresses, and their processes must
//! say which container they are in (Group: the name Docker's config.v2.json gives, else the
//! short id; Services: `docker://<id>`). The second container appears after depmap started
//! and is deleted before it stops: depmap follows it in, and lets it go.
//!
//! depmap in the initial namespace sees the host's sockets too: everything is filtered on the
//! test's own addresses (10.231.0.0/24).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ID_A: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const ID_B: &str = "b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1";
const IP_A: &str = "10.231.0.1";
const IP_B: &str = "10.231.0.2";
const PORT_A: u16 = 8181;
const PORT_B: u16 = 8282;
const PORT_UDP: u16 = 5353;
/// In the host's ephemeral range (32768–60999), not in container A's.
const PORT_UDP_HOST_EPHEMERAL: u16 = 33053;

/// The cgroup v2 mount (`/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a
/// hybrid one like this kind of machine).
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup made by the test; its processes are killed and it is removed on drop.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(path: PathBuf) -> Cgroup {
        std::fs::create_dir_all(&path).expect("create cgroup");
        Cgroup(path)
    }

    fn pids(&self) -> Vec<String> {
        text_of(&self.0.join("cgroup.procs"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        wait_until(Duration::from_secs(5), || self.pids().is_empty());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A "container": a network namespace and a cgroup its processes start in.
struct Container {
    ns: Netns,
    cgroup: Cgroup,
}

impl Container {
    fn new(tag: &str, parent: &Path, id: &str) -> Container {
        Container {
            ns: Netns::new(tag),
            cgroup: Cgroup::new(parent.join(format!("docker-{id}.scope"))),
        }
    }

    /// `args` run in the container: in its cgroup before exec, then in its namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec \"$@\"",
                self.cgroup.0.display()
            ))
            .args(["sh", "ip", "netns", "exec", &self.ns.name])
            .args(args);
        cmd
    }

    fn serve(&self, port: u16) -> Proc {
        let mut p = Proc::spawn(self.command(&[
            "python3",
            PEER,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            &port.to_string(),
        ]));
        p.json_line(Duration::from_secs(20));
        p
    }

    /// A DNS-like UDP server on 0.0.0.0:`port`: answers each datagram with 200 B.
    fn serve_udp(&self, port: u16) -> Proc {
        let program = format!(
            "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0', {port}))\nprint('ready', flush=True)\n\
             while True:\n    q, peer = s.recvfrom(2048)\n    s.sendto(b'a' * 200, peer)\n"
        );
        let mut p = Proc::spawn(self.command(&["python3", "-c", &program]));
        assert_eq!(p.line(Duration::from_secs(20)), "ready");
        p
    }

    /// `n` queries of `size` B to host:port, each answered; the socket is held 1.5 s after
    /// (its holder is read from /proc while it lives).
    fn udp_client(&self, host: &str, port: u16, n: u32, size: u32) {
        let program = format!(
            "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.settimeout(5)\nfor _ in range({n}):\n    s.sendto(b'q' * {size}, ('{host}', {port}))\n\
             \x20   s.recvfrom(2048)\nprint('done', flush=True)\ntime.sleep(1.5)\n"
        );
        let mut p = Proc::spawn(self.command(&["python3", "-c", &program]));
        assert_eq!(p.line(Duration::from_secs(20)), "done");
        let _ = p.child.wait();
    }

    fn client(&self, host: &str, port: u16, conns: u32, req: u32, resp: u32) -> Value {
        let args = [
            "--host".to_string(),
            host.to_string(),
            "--port".into(),
            port.to_string(),
            "--conns".into(),
            conns.to_string(),
            "--req".into(),
            req.to_string(),
            "--resp".into(),
            resp.to_string(),
            // Held across polls: polling alone names the owners of connections it sees.
            "--hold-ms".into(),
            "500".into(),
        ];
        let mut all = vec!["python3", PEER, "client"];
        all.extend(args.iter().map(String::as_str));
        let mut p = Proc::spawn(self.command(&all));
        let v = p.json_line(Duration::from_secs(60));
        let _ = p.child.wait();
        v
    }
}

/// depmap's metrics on 127.0.0.1:port of the initial namespace (empty when it does not
/// answer).
fn metrics(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text
}

/// The VMProcess record of process id `p` (the latest).
fn process<'a>(records: &'a [Value], p: &Value) -> &'a Value {
    of_type(records, "VMProcess")
        .into_iter()
        .rev()
        .find(|r| &r["Process"] == p)
        .unwrap_or_else(|| panic!("no VMProcess record for {p}"))
}

/// The one process of the records matching `filter`, with their sums.
fn sums_and_process(
    records: &[Value],
    filter: impl Fn(&Value) -> bool,
) -> (std::collections::HashMap<&'static str, i64>, Value) {
    let matching: Vec<&Value> = of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
        .collect();
    assert!(!matching.is_empty(), "no such connection records");
    let process = matching[0]["Process"].clone();
    for r in &matching {
        assert_eq!(r["Process"], process, "one process for all: {r}");
    }
    (conn_sums(records, filter), process)
}

fn containers_with(events: &str, metrics_port: u16) {
    let _serial = serial();
    let parent =
        Cgroup::new(cgroup2_root().join(format!("dmt-{}-ctr-{events}", std::process::id())));
    let docker = TempDir::new("docker");
    let config_dir = docker.0.join("containers").join(ID_A);
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("config.v2.json"),
        r#"{"ID":"a1","Name":"/web-a","Config":{"Env":["SECRET=not-read"]}}"#,
    )
    .unwrap();

    let a = Container::new("ctra", &parent.0, ID_A);
    // A's ephemeral range is its own (the sysctl is per namespace): a server on a port of the
    // host's range but outside A's is a bound port of A, not a client's socket.
    let set =
        a.ns.command("sysctl")
            .args(["-qw", "net.ipv4.ip_local_port_range=40000 40999"])
            .status()
            .expect("sysctl");
    assert!(set.success());
    let _server_a = a.serve(PORT_A);
    let _udp_a = a.serve_udp(PORT_UDP);
    let _udp_a_high = a.serve_udp(PORT_UDP_HOST_EPHEMERAL);
    let mut depmap = Depmap::start_in_initial_namespace(&format!(
        "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n\
         namespaces = \"all\"\nevents = \"{events}\"\n\
         [enrich]\ndocker_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        docker.0.display()
    ));
    // B appears after depmap started; its listener in the records says it is followed.
    let b = Container::new("ctrb", &parent.0, ID_B);
    veth(&a.ns, IP_A, &b.ns, IP_B);
    let _server_b = b.serve(PORT_B);
    let udp_b = b.serve_udp(PORT_UDP);
    let followed = depmap.wait_for(Duration::from_secs(20), |r| {
        of_type(r, "VMBoundPort")
            .iter()
            .any(|p| p["Port"] == PORT_B)
    });
    assert!(followed, "container B's listener never appeared");

    let b_to_a = b.client(IP_A, PORT_A, 5, 100, 1000);
    let a_to_b = a.client(IP_B, PORT_B, 3, 50, 2000);
    b.udp_client(IP_A, PORT_UDP, 10, 40);
    a.udp_client(IP_B, PORT_UDP, 7, 30);
    let flows = events != "off";
    assert_eq!(
        (b_to_a["conns"].as_i64(), a_to_b["conns"].as_i64()),
        (Some(5), Some(3))
    );
    let to = |ip: &'static str, port: u16, direction: &'static str| {
        move |r: &Value| {
            r["Direction"] == direction
                && r["DestinationIp"] == ip
                && r["DestinationPort"] == port
                && r["Protocol"] == "tcp"
        }
    };
    let udp = |ip: &'static str, direction: &'static str| {
        move |r: &Value| {
            r["Direction"] == direction
                && r["DestinationIp"] == ip
                && r["DestinationPort"] == PORT_UDP
                && r["Protocol"] == "udp"
        }
    };
    let done = depmap.wait_for(Duration::from_secs(20), |r| {
        [
            (to(IP_A, PORT_A, "outbound"), 5),
            (to(IP_A, PORT_A, "inbound"), 5),
        ]
        .iter()
        .all(|(f, n)| conn_sums(r, f).get("LinksTerminated") == Some(n))
            && [
                (to(IP_B, PORT_B, "outbound"), 3),
                (to(IP_B, PORT_B, "inbound"), 3),
            ]
            .iter()
            .all(|(f, n)| conn_sums(r, f).get("LinksTerminated") == Some(n))
            && (!flows
                || [(udp(IP_A, "inbound"), 400), (udp(IP_B, "inbound"), 210)]
                    .iter()
                    .all(|(f, n)| conn_sums(r, f).get("BytesReceived") == Some(n)))
    });
    assert!(done, "not every connection was terminated in the records");

    // B goes away: its namespace's readers are closed.
    let left_before = metric_value(&metrics(metrics_port), "depmap_namespaces_left_total");
    drop(_server_b);
    drop(udp_b);
    drop(b);
    let left = wait_until(Duration::from_secs(20), || {
        metric_value(&metrics(metrics_port), "depmap_namespaces_left_total") > left_before
    });
    assert!(left, "depmap still follows the deleted namespace");
    let records = depmap.stop();

    // Each side of each connection, exact, as seen inside its container.
    let check = |dest: &'static str, port: u16, client: &Value, client_ip: &str| {
        let (out, out_process) = sums_and_process(&records, to(dest, port, "outbound"));
        let (inb, in_process) = sums_and_process(&records, to(dest, port, "inbound"));
        let n = client["conns"].as_i64().unwrap();
        let (sent, received) = (client["sent"].as_i64(), client["received"].as_i64());
        assert_eq!(
            out["LinksEstablished"], n,
            "outbound to {dest}:{port}: {out:?}"
        );
        assert_eq!(out["LinksTerminated"], n);
        assert_eq!(
            Some(out["BytesSent"]),
            sent,
            "outbound to {dest}:{port}: {out:?}"
        );
        assert_eq!(Some(out["BytesReceived"]), received);
        assert_eq!(
            inb["LinksEstablished"], n,
            "inbound to {dest}:{port}: {inb:?}"
        );
        assert_eq!(
            Some(inb["BytesSent"]),
            received,
            "inbound to {dest}:{port}: {inb:?}"
        );
        assert_eq!(Some(inb["BytesReceived"]), sent);
        for r in of_type(&records, "VMConnection") {
            if to(dest, port, "outbound")(r) || to(dest, port, "inbound")(r) {
                assert_eq!(r["SourceIp"], client_ip, "{r}");
            }
        }
        (out_process, in_process)
    };
    let (b_client, a_server) = check(IP_A, PORT_A, &b_to_a, IP_B);
    let (a_client, b_server) = check(IP_B, PORT_B, &a_to_b, IP_A);
    for (p, group, id) in [
        (&a_server, "web-a", ID_A),
        (&a_client, "web-a", ID_A),
        (&b_server, &ID_B[..12], ID_B),
        (&b_client, &ID_B[..12], ID_B),
    ] {
        let r = process(&records, p);
        assert!(is_python(&r["ExecutableName"]), "{r}");
        assert_eq!(r["Group"], group, "{r}");
        assert_eq!(r["Services"], json!([format!("docker://{id}")]), "{r}");
        // Not from the host's package database: the executable is the container's.
        assert_eq!(r["ProductName"], Value::Null, "{r}");
    }
    // A's server on a port of the host's ephemeral range: a bound port by A's own range.
    let high: Vec<&Value> = of_type(&records, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Protocol"] == "udp" && r["Port"] == PORT_UDP_HOST_EPHEMERAL)
        .collect();
    assert!(
        !high.is_empty(),
        "A's UDP port {PORT_UDP_HOST_EPHEMERAL} is missing"
    );
    assert!(
        high.iter()
            .all(|r| process(&records, &r["Process"])["Group"] == "web-a"),
        "{high:?}"
    );
    // UDP: each container's server is a bound port of its own namespace (the same port
    // number in both), and with the event source each flow is exact on both ends.
    for (group, id) in [("web-a", ID_A), (&ID_B[..12], ID_B)] {
        let servers: Vec<&Value> = of_type(&records, "VMBoundPort")
            .into_iter()
            .filter(|r| r["Protocol"] == "udp" && r["Port"] == PORT_UDP)
            .filter(|r| process(&records, &r["Process"])["Group"] == group)
            .collect();
        assert!(!servers.is_empty(), "no UDP port of {group}");
        let r = process(&records, &servers[0]["Process"]);
        assert_eq!(r["Services"], json!([format!("docker://{id}")]), "{r}");
    }
    let udp_flows = of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| r["Protocol"] == "udp" && r["DestinationPort"] == PORT_UDP)
        .count();
    if flows {
        // (server ip, client ip, queries × size, answers × 200, server's group, client's)
        for (server, client, sent, answered, server_group, client_group) in [
            (IP_A, IP_B, 400, 2_000, "web-a", &ID_B[..12]),
            (IP_B, IP_A, 210, 1_400, &ID_B[..12], "web-a"),
        ] {
            let (out, out_process) = sums_and_process(&records, udp(server, "outbound"));
            let (inb, in_process) = sums_and_process(&records, udp(server, "inbound"));
            assert_eq!(
                (
                    out["LinksEstablished"],
                    out["BytesSent"],
                    out["BytesReceived"]
                ),
                (1, sent, answered),
                "UDP to {server}: {out:?}"
            );
            assert_eq!(
                (
                    inb["LinksEstablished"],
                    inb["BytesSent"],
                    inb["BytesReceived"]
                ),
                (1, answered, sent),
                "UDP at {server}: {inb:?}"
            );
            assert_eq!(process(&records, &out_process)["Group"], client_group);
            assert_eq!(process(&records, &in_process)["Group"], server_group);
            for r in of_type(&records, "VMConnection") {
                if udp(server, "outbound")(r) || udp(server, "inbound")(r) {
                    assert_eq!(r["SourceIp"], client, "{r}");
                }
            }
        }
    } else {
        assert_eq!(udp_flows, 0, "UDP flows need the event source");
    }
    // The bound ports, with the addresses that accepted and their sums.
    for (port, ip, server, n) in [(PORT_A, IP_A, &a_server, 5), (PORT_B, IP_B, &b_server, 3)] {
        let ports: Vec<&Value> = of_type(&records, "VMBoundPort")
            .into_iter()
            .filter(|r| r["Port"] == port && r["Ip"] == ip && r["Protocol"] == "tcp")
            .collect();
        assert!(!ports.is_empty(), "no VMBoundPort {ip}:{port}");
        let links: i64 = ports
            .iter()
            .map(|r| r["LinksEstablished"].as_i64().unwrap_or(0))
            .sum();
        assert_eq!(links, n, "{ports:?}");
        for r in ports {
            assert_eq!(&r["Process"], server, "{r}");
            assert_eq!(r["IsWildcardBind"], true, "{r}");
        }
    }
}

#[test]
fn containers_are_followed_with_kernel_events() {
    containers_with("auto", 19471);
}

#[test]
fn containers_are_followed_by_polling_alone() {
    containers_with("off", 19472);
}
