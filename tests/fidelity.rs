//! Fidelity test bed: every measured column against what really happened.
//!
//! Two network namespaces joined by a veth link: the servers' host (10.78.0.1) and the
//! clients' host (10.78.0.2), each watched by its own depmap at default poll settings
//! (`socket_poll = 1s`, `hot_poll = 250ms`; `cpu_budget` off so that a debug build's costs
//! cannot stretch them — a release build never does at this size) with a 10 s window (the window length does not
//! change what a poll sees; 60 s would only make the test slower). Servers inject a known
//! response delay; clients log the wall-clock time of every connect, exchange, close and failed
//! attempt, and start nothing within 300 ms of a window boundary, so the window of every event
//! is known. Asserted per window: bytes, LinksEstablished/Terminated/Live/Failed, exactly, on
//! both ends. Asserted per scenario: the mean response time within 5 % (or 5 ms, whichever is
//! larger) of the truth — the injected delay for the server's inbound records, the client's
//! measured wait for its outbound records — and the process on each end. Coverage (measured ÷
//! real exchanges) is reported.
//!
//! `DEPMAP_FIDELITY_MD=FIDELITY.md cargo test --locked --test fidelity -- --nocapture`
//! rewrites FIDELITY.md with the table of this run.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const WINDOW_S: u64 = 10;
const SERVER: &str = "10.78.0.1";
const CLIENT: &str = "10.78.0.2";
/// A second address of the clients' host whose replies the servers' host blackholes:
/// connection attempts from it time out (the SYN arrives, the SYN-ACK or RST never returns).
const UNANSWERED: &str = "10.78.0.3";

struct Scenario {
    name: &'static str,
    port: u16,
    delay_ms: u64,
    client_args: Vec<String>,
}

fn scenario(name: &'static str, port: u16, delay_ms: u64, args: &str) -> Scenario {
    Scenario {
        name,
        port,
        delay_ms,
        client_args: args.split_whitespace().map(str::to_string).collect(),
    }
}

fn window_of(t: f64) -> u64 {
    (t as u64) / WINDOW_S * WINDOW_S
}

fn record_window(r: &Value) -> u64 {
    let t = humantime::parse_rfc3339(r["TimeGenerated"].as_str().unwrap()).unwrap();
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Per-window truth of one direction of one scenario, from the client's event log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Truth {
    established: i64,
    terminated: i64,
    live: i64,
    failed: i64,
    bytes_out: i64,
    bytes_in: i64,
}

fn truth_by_window(events: &[Value]) -> BTreeMap<u64, Truth> {
    let mut out: BTreeMap<u64, Truth> = BTreeMap::new();
    let mut opened: Vec<f64> = Vec::new();
    let mut closed: Vec<f64> = Vec::new();
    for e in events {
        let t = e["t"].as_f64().unwrap();
        match e["kind"].as_str().unwrap() {
            "connect" => {
                out.entry(window_of(t)).or_default().established += 1;
                opened.push(t);
            }
            "close" => {
                out.entry(window_of(t)).or_default().terminated += 1;
                closed.push(t);
            }
            "exchange" => {
                let w = out
                    .entry(window_of(e["end"].as_f64().unwrap()))
                    .or_default();
                w.bytes_out += e["sent"].as_i64().unwrap();
                w.bytes_in += e["received"].as_i64().unwrap();
            }
            "refused" | "timeout" | "unreachable" => {
                out.entry(window_of(e["end"].as_f64().unwrap()))
                    .or_default()
                    .failed += 1;
            }
            other => panic!("unexpected event {other}"),
        }
    }
    // Live at a window's end: opened before it, not closed before it.
    let windows: Vec<u64> = out.keys().copied().collect();
    let (first, last) = (windows[0], windows[windows.len() - 1]);
    let mut w = first;
    while w <= last {
        let end = (w + WINDOW_S) as f64;
        let live = opened.iter().filter(|t| **t < end).count() as i64
            - closed.iter().filter(|t| **t < end).count() as i64;
        if live > 0 {
            out.entry(w).or_default().live = live;
        }
        w += WINDOW_S;
    }
    out
}

/// What depmap reported per window for records matching `filter`, summed over processes.
fn reported_by_window(
    records: &[Value],
    filter: impl Fn(&Value) -> bool,
    inbound: bool,
) -> BTreeMap<u64, Truth> {
    let mut out: BTreeMap<u64, Truth> = BTreeMap::new();
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
    {
        let w = out.entry(record_window(r)).or_default();
        w.established += r["LinksEstablished"].as_i64().unwrap();
        w.terminated += r["LinksTerminated"].as_i64().unwrap();
        w.live += r["LinksLive"].as_i64().unwrap();
        w.failed += r["LinksFailed"].as_i64().unwrap_or(0);
        // Seen from the client: out = sent; from the server: out = received.
        let (o, i) = if inbound {
            ("BytesReceived", "BytesSent")
        } else {
            ("BytesSent", "BytesReceived")
        };
        w.bytes_out += r[o].as_i64().unwrap();
        w.bytes_in += r[i].as_i64().unwrap();
    }
    out.retain(|_, t| *t != Truth::default());
    out
}

/// The polling path (tcp_info estimators; `collect.events = "off"`).
#[test]
fn every_column_against_the_truth_by_polling() {
    let table = every_column_against_the_truth("off");
    if let Ok(path) = std::env::var("DEPMAP_FIDELITY_MD") {
        replace_section(&path, "polling", &table);
    }
}

/// With the kernel event source (owners and response times from events).
#[test]
fn every_column_against_the_truth_with_kernel_events() {
    let table = every_column_against_the_truth("ebpf");
    if let Ok(path) = std::env::var("DEPMAP_FIDELITY_MD") {
        replace_section(&path, "events", &table);
    }
}

/// The bed with `collect.events` set to `events`; the table of its results.
fn every_column_against_the_truth(events: &str) -> String {
    let _serial = serial();
    let srv = Netns::new("fsrv");
    let cli = Netns::new("fcli");
    let (_, cli_dev) = veth(&srv, SERVER, &cli, CLIENT);
    ip(
        &cli,
        &["addr", "add", &format!("{UNANSWERED}/24"), "dev", &cli_dev],
    );
    ip(
        &srv,
        &["route", "add", "blackhole", &format!("{UNANSWERED}/32")],
    );
    let window = format!("window = \"{WINDOW_S}s\"\nevents = \"{events}\"\n");
    let mut dm_srv = Depmap::start_defaults(&srv, &window);
    let mut dm_cli = Depmap::start_defaults(&cli, &window);

    let w = format!("--window-ms {}", WINDOW_S * 1000);
    let scenarios = vec![
        scenario(
            "keep-alive, 20 ms",
            7020,
            20,
            &format!("--exchanges 50 --req 200 --resp 2000 --think-ms 350 --expect-ms 20 {w}"),
        ),
        scenario(
            "keep-alive, 100 ms",
            7100,
            100,
            &format!("--exchanges 36 --req 500 --resp 8000 --think-ms 450 --expect-ms 100 {w}"),
        ),
        scenario(
            "keep-alive, 500 ms",
            7500,
            500,
            &format!("--exchanges 20 --req 300 --resp 30000 --think-ms 600 --expect-ms 500 {w}"),
        ),
        scenario(
            "keep-alive, 1 s",
            7999,
            1000,
            &format!("--exchanges 12 --req 300 --resp 4000 --think-ms 800 --expect-ms 1000 {w}"),
        ),
        scenario(
            "back-to-back, 100 ms",
            7101,
            100,
            &format!("--exchanges 120 --req 100 --resp 1000 --expect-ms 100 {w}"),
        ),
        scenario(
            "one-shot, 50 ms",
            7050,
            50,
            &format!("--conns 60 --exchanges 1 --req 150 --resp 3000 --expect-ms 50 {w}"),
        ),
    ];
    let mut servers = Vec::new();
    for s in &scenarios {
        let (p, info) = server_delay(&srv, "0.0.0.0", s.port, s.delay_ms);
        assert_eq!(info["listening"], s.port);
        servers.push(p);
    }
    // Clients and failing attempts, all at once.
    let mut clients = Vec::new();
    for s in &scenarios {
        let mut args = vec![
            "--host".to_string(),
            SERVER.into(),
            "--port".into(),
            s.port.to_string(),
        ];
        args.extend(s.client_args.iter().cloned());
        clients.push(spawn_peer(&cli, "client", &args));
    }
    let refused = spawn_peer(
        &cli,
        "fail",
        &[
            "--host",
            SERVER,
            "--port",
            "9",
            "--count",
            "6",
            "--think-ms",
            "700",
            "--window-ms",
            &(WINDOW_S * 1000).to_string(),
        ]
        .map(String::from),
    );
    let timed_out = spawn_peer(
        &cli,
        "fail",
        &[
            "--host",
            SERVER,
            "--source",
            UNANSWERED,
            "--port",
            "80",
            "--count",
            "4",
            "--timeout-ms",
            "500",
            "--think-ms",
            "900",
            "--window-ms",
            &(WINDOW_S * 1000).to_string(),
        ]
        .map(String::from),
    );
    let results: Vec<Value> = clients
        .into_iter()
        .map(|p| finish(p, Duration::from_secs(120)))
        .collect();
    let refused = finish(refused, Duration::from_secs(60));
    let timed_out = finish(timed_out, Duration::from_secs(60));

    // Wait (bounded) until both depmaps have seen every close and failure.
    let closes: i64 = results.iter().map(|r| r["conns"].as_i64().unwrap()).sum();
    let failures = (refused["events"].as_array().unwrap().len()
        + timed_out["events"].as_array().unwrap().len()) as i64;
    assert!(dm_cli.wait_for(Duration::from_secs(30), |r| {
        let t = reported_by_window(r, |r| r["Direction"] == "outbound", false);
        t.values().map(|t| t.terminated).sum::<i64>() >= closes
            && t.values().map(|t| t.failed).sum::<i64>() >= failures
    }));
    assert!(dm_srv.wait_for(Duration::from_secs(30), |r| {
        let t = reported_by_window(r, |r| r["Direction"] == "inbound", true);
        t.values().map(|t| t.terminated).sum::<i64>() >= closes
    }));
    let rec_srv = dm_srv.stop();
    let rec_cli = dm_cli.stop();
    let procs = |records: &[Value]| -> BTreeMap<String, String> {
        of_type(records, "VMProcess")
            .into_iter()
            .map(|p| {
                (
                    p["Process"].as_str().unwrap().to_string(),
                    p["CommandLine"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (srv_procs, cli_procs) = (procs(&rec_srv), procs(&rec_cli));

    let mut table = String::from(
        "| scenario | exchanges | windows | bytes & links per window (both ends) | truth: server / client RT | reported: server (inbound) / client (outbound) RT mean [min–max] | error | coverage server / client |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (s, result) in scenarios.iter().zip(&results) {
        let events = result["events"].as_array().unwrap();
        let truth = truth_by_window(events);
        let port = s.port;
        let outbound = |r: &Value| {
            r["Direction"] == "outbound"
                && r["DestinationIp"] == SERVER
                && r["DestinationPort"] == port
        };
        let inbound = |r: &Value| {
            r["Direction"] == "inbound" && r["SourceIp"] == CLIENT && r["DestinationPort"] == port
        };
        let seen_cli = reported_by_window(&rec_cli, outbound, false);
        let seen_srv = reported_by_window(&rec_srv, inbound, true);
        assert_eq!(seen_cli, truth, "{}: client side per window", s.name);
        assert_eq!(seen_srv, truth, "{}: server side per window", s.name);

        // The process on each end: the server pool (its command line names its port) and,
        // where the socket was seen held, the client's.
        let tag = format!("--port {port}");
        for r in of_type(&rec_srv, "VMConnection")
            .into_iter()
            .filter(|r| inbound(r))
        {
            let cmd = &srv_procs[r["Process"].as_str().expect("inbound attributed")];
            assert!(
                cmd.contains("serve") && cmd.contains(&tag),
                "{}: inbound credited to {cmd}",
                s.name
            );
        }
        let mut attributed = 0;
        for r in of_type(&rec_cli, "VMConnection")
            .into_iter()
            .filter(|r| outbound(r))
        {
            if let Some(p) = r["Process"].as_str() {
                let cmd = &cli_procs[p];
                assert!(
                    cmd.contains("client") && cmd.contains(&tag),
                    "{}: outbound credited to {cmd}",
                    s.name
                );
                attributed += 1;
            }
        }
        let one_shot = s.name.starts_with("one-shot");
        if !one_shot {
            assert!(
                attributed > 0,
                "{}: keep-alive client never attributed",
                s.name
            );
        }

        // Response times.
        let exchanges: Vec<f64> = events
            .iter()
            .filter(|e| e["kind"] == "exchange")
            .map(|e| (e["end"].as_f64().unwrap() - e["t"].as_f64().unwrap()) * 1000.0)
            .collect();
        let real = exchanges.len() as i64;
        let client_truth = exchanges.iter().sum::<f64>() / real as f64;
        let server_truth = s.delay_ms as f64;
        let (ns, ss, smin, smax) = response_stats(&rec_srv, inbound);
        let (nc, sc, cmin, cmax) = response_stats(&rec_cli, outbound);
        assert!(
            ns > 0 && nc > 0,
            "{}: no response measured (server {ns}, client {nc})",
            s.name
        );
        assert!(
            ns <= real && nc <= real,
            "{}: more responses than exchanges",
            s.name
        );
        let (ms, mc) = (ss as f64 / ns as f64, sc as f64 / nc as f64);
        let tol = |t: f64| (t * 0.05).max(5.0);
        let (es, ec) = (ms - server_truth, mc - client_truth);
        assert!(
            es.abs() <= tol(server_truth),
            "{}: server mean {ms:.1} ms vs {server_truth} ms",
            s.name
        );
        assert!(
            ec.abs() <= tol(client_truth),
            "{}: client mean {mc:.1} ms vs {client_truth:.1} ms",
            s.name
        );
        let _ = writeln!(
            table,
            "| {} | {real} | {} | exact | {server_truth:.0} / {client_truth:.1} ms | {ms:.1} [{smin}–{smax}] / {mc:.1} [{cmin}–{cmax}] ms | {es:+.1} / {ec:+.1} ms | {:.0} % / {:.0} % |",
            s.name,
            truth.len(),
            100.0 * ns as f64 / real as f64,
            100.0 * nc as f64 / real as f64,
        );
    }

    // Failed attempts: refused and timed out, per window, on the client's host only.
    for (what, result, port) in [("refused", &refused, 9), ("timed out", &timed_out, 80)] {
        let events = result["events"].as_array().unwrap();
        let expected = if what == "refused" {
            "refused"
        } else {
            "timeout"
        };
        assert!(
            events.iter().all(|e| e["kind"] == expected),
            "{what}: {events:?}"
        );
        let truth = truth_by_window(events);
        let source = if port == 9 { CLIENT } else { UNANSWERED };
        let to = |r: &Value| {
            r["Direction"] == "outbound"
                && r["DestinationPort"] == port
                && r["DestinationIp"] == SERVER
                && r["SourceIp"] == source
        };
        let seen = reported_by_window(&rec_cli, to, false);
        assert_eq!(seen, truth, "{what} attempts per window");
        for r in of_type(&rec_cli, "VMConnection")
            .into_iter()
            .filter(|r| to(r))
        {
            if let Some(p) = r["Process"].as_str() {
                assert!(
                    cli_procs[p].contains("fail"),
                    "{what} credited to {}",
                    cli_procs[p]
                );
            }
        }
        let _ = writeln!(
            table,
            "| connection attempts {what} | {} | {} | LinksFailed exact | – | – | – | – |",
            events.len(),
            truth.len()
        );
    }
    // VMBoundPort per window against the client's truth: bytes and links exact, responses
    // no more than the exchanges made and their mean within the tolerance of the injected
    // delay (the server's answer time).
    for (s, result) in scenarios.iter().zip(&results) {
        let events = result["events"].as_array().unwrap();
        let truth = truth_by_window(events);
        let mut seen: BTreeMap<u64, Truth> = BTreeMap::new();
        let (mut responses, mut response_sum) = (0, 0);
        for p in of_type(&rec_srv, "VMBoundPort")
            .into_iter()
            .filter(|p| p["Port"] == s.port && p["Ip"] == SERVER)
        {
            let w = seen.entry(record_window(p)).or_default();
            w.established += p["LinksEstablished"].as_i64().unwrap();
            w.terminated += p["LinksTerminated"].as_i64().unwrap();
            w.live += p["LinksLive"].as_i64().unwrap();
            // The server's received bytes are what the client sent.
            w.bytes_out += p["BytesReceived"].as_i64().unwrap();
            w.bytes_in += p["BytesSent"].as_i64().unwrap();
            responses += p["Responses"].as_i64().unwrap_or(0);
            response_sum += p["ResponseTimeSum"].as_i64().unwrap_or(0);
        }
        seen.retain(|_, t| *t != Truth::default());
        // The port has no failed attempts: the truth's `failed` is the client's alone.
        let truth: BTreeMap<u64, Truth> = truth
            .into_iter()
            .map(|(w, t)| (w, Truth { failed: 0, ..t }))
            .filter(|(_, t)| *t != Truth::default())
            .collect();
        assert_eq!(seen, truth, "{}: VMBoundPort per window", s.name);
        let exchanges = events.iter().filter(|e| e["kind"] == "exchange").count() as i64;
        assert!(
            responses > 0 && responses <= exchanges,
            "{}: VMBoundPort Responses {responses} of {exchanges} exchanges",
            s.name
        );
        let mean = response_sum as f64 / responses as f64;
        let delay = s.delay_ms as f64;
        assert!(
            (mean - delay).abs() <= (delay * 0.05).max(5.0),
            "{}: VMBoundPort response time mean {mean:.1} ms vs {delay} ms",
            s.name
        );
    }
    println!("\n{table}");
    table
}
