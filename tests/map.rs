//! `depmap map`: the graph of a record directory in every format, with exact labels, folding,
//! bad input (torn and foreign files, an empty range, unknown machines, bad arguments), and the
//! picture of a real two-machine test bed as headless Chromium renders it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use serde_json::{Value, json};

const SINCE: &str = "2026-12-02T10:00:00Z";
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/grafana/depmap-map.json"
);
const MAP_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/clickhouse/map.sql");
const UNTIL: &str = "2026-12-02T11:00:00Z";

fn origin(t: &str, machine: &str, computer: &str) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("TimeGenerated".into(), json!(t));
    m.insert("Machine".into(), json!(machine));
    m.insert("Computer".into(), json!(computer));
    m.insert("AgentId".into(), json!("x"));
    m
}

fn with(mut base: serde_json::Map<String, Value>, more: Value) -> Value {
    if let Value::Object(o) = more {
        base.extend(o);
    }
    Value::Object(base)
}

/// An outbound or inbound connection record of one window.
#[allow(clippy::too_many_arguments)]
fn conn(
    t: &str,
    (machine, computer): (&str, &str),
    (process, name): (&str, &str),
    direction: &str,
    (src, dst, port): (&str, &str, i64),
    (established, failed): (i64, i64),
    (sent, received): (i64, i64),
    (responses, rt_sum): (i64, i64),
    extra: Value,
) -> Value {
    let remote = if direction == "outbound" { dst } else { src };
    let r = with(
        origin(t, machine, computer),
        json!({
            "Direction": direction, "Process": process, "ProcessName": name,
            "SourceIp": src, "DestinationIp": dst, "DestinationPort": port, "RemoteIp": remote,
            "Protocol": "tcp", "LinksEstablished": established, "LinksFailed": failed,
            "LinksTerminated": established, "LinksLive": 0, "BytesSent": sent,
            "BytesReceived": received, "Responses": responses, "ResponseTimeSum": rt_sum,
            "MaliciousIp": null, "RemoteDnsQuestions": null,
        }),
    );
    with(r.as_object().unwrap().clone(), extra)
}

fn write_table(dir: &Path, name: &str, records: &[Value], tail: &str) {
    let mut text: String = records.iter().map(|r| format!("{r}\n")).collect();
    text.push_str(tail);
    std::fs::write(dir.join(name), text).unwrap();
}

/// Two machines: vm-a's app calls vm-b's nginx (5 links over two windows), a port of vm-b
/// nobody listens on (4 refused), and a malicious database outside; two unmonitored clients
/// call nginx. Plus what a directory may hold that is not a record.
fn records_dir() -> TempDir {
    let d = TempDir::new("map");
    let (a, b) = (("m-a", "vm-a"), ("m-b", "vm-b"));
    let t0 = "2026-12-02T10:00:00Z";
    let t1 = "2026-12-02T10:01:00Z";
    write_table(
        &d.0,
        "VMComputer-20261202T10-0001.ndjson",
        &[
            with(
                origin(t0, a.0, a.1),
                json!({"Ipv4Addresses": ["10.80.0.1"], "DisplayName": "vm-a"}),
            ),
            with(
                origin(t0, b.0, b.1),
                json!({"Ipv4Addresses": ["10.80.0.2"], "DisplayName": "vm-b"}),
            ),
        ],
        "",
    );
    write_table(
        &d.0,
        "VMProcess-20261202T09-0001.ndjson",
        &[
            with(
                origin("2026-12-02T09:30:00Z", a.0, a.1),
                json!({"Process": "p-app", "ExecutableName": "app", "DisplayName": "app"}),
            ),
            with(
                origin("2026-12-02T09:30:00Z", b.0, b.1),
                json!({"Process": "p-nginx", "ExecutableName": "nginx", "DisplayName": "nginx"}),
            ),
        ],
        "",
    );
    write_table(
        &d.0,
        "VMBoundPort-20261202T10-0001.ndjson",
        &[
            with(
                origin(t0, b.0, b.1),
                json!({"Ip": "0.0.0.0", "Port": 80, "Protocol": "tcp", "Process": "p-nginx", "ProcessName": "nginx", "IsWildcardBind": true}),
            ),
            with(
                origin(t1, b.0, b.1),
                json!({"Ip": "10.80.0.2", "Port": 80, "Protocol": "tcp", "Process": "p-nginx", "ProcessName": "nginx", "IsWildcardBind": true}),
            ),
        ],
        "",
    );
    let app = ("p-app", "app");
    let nginx = ("p-nginx", "nginx");
    let none = json!({});
    write_table(
        &d.0,
        "VMConnection-20261202T10-0001.ndjson",
        &[
            conn(
                t0,
                a,
                app,
                "outbound",
                ("10.80.0.1", "10.80.0.2", 80),
                (3, 0),
                (1000, 9000),
                (3, 30),
                none.clone(),
            ),
            conn(
                t1,
                a,
                app,
                "outbound",
                ("10.80.0.1", "10.80.0.2", 80),
                (2, 0),
                (500, 4500),
                (2, 20),
                none.clone(),
            ),
            conn(
                t0,
                a,
                app,
                "outbound",
                ("10.80.0.1", "10.80.0.2", 81),
                (0, 4),
                (0, 0),
                (0, 0),
                none.clone(),
            ),
            conn(
                t1,
                a,
                app,
                "outbound",
                ("10.80.0.1", "10.99.0.5", 5432),
                (1, 0),
                (10, 20),
                (1, 7),
                json!({"MaliciousIp": "10.99.0.5", "RemoteDnsQuestions": "[\"db.example\"]"}),
            ),
            // vm-b's side of vm-a's calls: drawn once, from vm-a's records.
            conn(
                t0,
                b,
                nginx,
                "inbound",
                ("10.80.0.1", "10.80.0.2", 80),
                (5, 0),
                (13500, 1500),
                (5, 40),
                none.clone(),
            ),
            conn(
                t0,
                b,
                nginx,
                "inbound",
                ("10.98.0.7", "10.80.0.2", 80),
                (2, 0),
                (100, 200),
                (0, 0),
                none.clone(),
            ),
            conn(
                t1,
                b,
                nginx,
                "inbound",
                ("10.98.0.8", "10.80.0.2", 80),
                (1, 0),
                (50, 100),
                (0, 0),
                none.clone(),
            ),
            // After the range.
            conn(
                "2026-12-02T11:00:00Z",
                a,
                app,
                "outbound",
                ("10.80.0.1", "10.80.0.2", 80),
                (100, 0),
                (1, 1),
                (0, 0),
                none.clone(),
            ),
            // A record of another column set: no RemoteIp, no Responses, an unknown column.
            json!({"TimeGenerated": t1, "Machine": "m-a", "Computer": "vm-a", "Direction": "outbound", "Process": "p-app", "SourceIp": "10.80.0.1", "DestinationIp": "10.80.0.2", "DestinationPort": 80, "LinksEstablished": 1, "BytesSent": 7, "BytesReceived": 70, "FutureColumn": {"x": 1}}),
            // Not a VMConnection record: no Direction.
            json!({"TimeGenerated": t1, "Machine": "m-a"}),
        ],
        // Torn by a crash.
        "{\"TimeGenerated\":\"2026-12-02T10:01:00Z\",\"Machine\":\"m-a\",\"Dire",
    );
    std::fs::write(d.0.join("notes.txt"), "not records").unwrap();
    std::fs::write(
        d.0.join("VMConnection-20261202T10-0002.ndjson"),
        [0xff, 0xfe, b'\n'],
    )
    .unwrap();
    d
}

fn map(dir: &Path, args: &[&str]) -> Output {
    Command::new(DEPMAP)
        .args(["map", "--dir"])
        .arg(dir)
        .args(["--since", SINCE, "--until", UNTIL])
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn edge<'a>(frames: &'a Value, source: &str, target: &str) -> &'a Value {
    frames["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == source && e["target"] == target)
        .unwrap_or_else(|| panic!("no edge {source} -> {target}: {frames:#}"))
}

fn node<'a>(frames: &'a Value, id: &str) -> &'a Value {
    frames["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("no node {id}: {frames:#}"))
}

#[test]
fn the_graph_of_two_machines_with_exact_labels() {
    let d = records_dir();
    let out = map(&d.0, &["--format", "json"]);
    let frames: Value = serde_json::from_str(&ok(&out)).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 2 lines not records + the non-UTF-8 line; a foreign file; one record after the range.
    assert!(stderr.contains("3 lines not records"), "{stderr}");
    assert!(
        stderr.contains("1 files that are not record files"),
        "{stderr}"
    );
    assert!(stderr.contains("(1 outside the range)"), "{stderr}");

    // app → nginx: resolved through vm-b's address and bound port: 3 + 2 + 1 links.
    let e = edge(&frames, "p-app", "p-nginx");
    assert_eq!(e["mainstat"], "6 links");
    assert_eq!(e["secondarystat"], "↑1,507 B ↓13,570 B");
    assert_eq!(e["detail__port"], 80);
    assert_eq!(e["detail__mean_response_ms"], 10.0);
    // Refused on a port nobody listens on: vm-b's unknown process, failed only.
    let f = edge(&frames, "p-app", "m-b/unknown");
    assert_eq!(
        (
            f["detail__port"].as_i64(),
            f["detail__links_failed"].as_i64()
        ),
        (Some(81), Some(4))
    );
    // The database outside, by its DNS name, marked malicious.
    edge(&frames, "p-app", "remote:10.99.0.5:5432");
    let db = node(&frames, "remote:10.99.0.5:5432");
    assert_eq!(db["title"], "db.example");
    assert_eq!(db["arc__malicious"], 1.0);
    // Unmonitored clients of nginx as one group with their count; vm-a's calls not twice.
    let c = edge(&frames, "clients:p-nginx:80", "p-nginx");
    assert_eq!(c["mainstat"], "3 links");
    assert_eq!(c["secondarystat"], "↑150 B ↓300 B");
    assert_eq!(node(&frames, "clients:p-nginx:80")["subtitle"], "2 clients");
    assert_eq!(frames["edges"].as_array().unwrap().len(), 4, "{frames:#}");
    assert_eq!(node(&frames, "p-nginx")["subtitle"], "vm-b :80");

    // The same graph in the other formats.
    let dot = ok(&map(&d.0, &["--format", "dot"]));
    assert!(dot.starts_with("digraph depmap {"), "{dot}");
    assert!(dot.contains("subgraph \"cluster_m-a\""), "{dot}");
    assert!(
        dot.contains("\"p-app\" -> \"p-nginx\" [label=\"6 links · ↑1,507 B ↓13,570 B · 10.0 ms\"]"),
        "{dot}"
    );
    assert!(
        dot.contains("\"p-app\" -> \"m-b/unknown\" [label=\"4 failed\", style=dashed"),
        "{dot}"
    );
    let csv = ok(&map(&d.0, &["--format", "csv"]));
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "SourceMachine,SourceProcess,DestinationMachineOrIp,DestinationProcess,DestinationPort,Protocol,LinksEstablished,LinksFailed,BytesSent,BytesReceived,MeanResponseTimeMs,FirstSeen,LastSeen,Malicious"
        )
    );
    assert!(
        csv.contains("vm-a,app,vm-b,nginx,80,tcp,6,0,1507,13570,10.000,2026-12-02T10:00:00Z,2026-12-02T10:01:00Z,false"),
        "{csv}"
    );
    assert!(
        csv.contains("vm-a,app,10.99.0.5,,5432,tcp,1,0,10,20,7.000,"),
        "{csv}"
    );
    let html = ok(&map(&d.0, &[]));
    assert!(html.starts_with("<!doctype html>"));
    for needle in [
        "6 links · ↑1,507 B ↓13,570 B · 10.0 ms",
        "class=\"edge failed\"",
        "⚠ MALICIOUS",
        ">vm-a</text>",
        ">nginx</text>",
        "2 clients",
    ] {
        assert!(html.contains(needle), "{needle} not in the page");
    }
    // Self-contained: the only URL is the SVG namespace.
    assert_eq!(html.matches("://").count(), 1, "no fetches");
}

#[test]
fn a_group_map_shows_the_chosen_machines_dependencies() {
    let d = records_dir();
    let frames: Value =
        serde_json::from_str(&ok(&map(&d.0, &["--machine", "vm-a", "--format", "json"]))).unwrap();
    // vm-b's own inbound clients are not part of vm-a's dependencies.
    let edges = frames["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 3, "{frames:#}");
    assert!(edges.iter().all(|e| e["source"] == "p-app"));
    // By id too.
    let by_id: Value =
        serde_json::from_str(&ok(&map(&d.0, &["--machine", "m-a", "--format", "json"]))).unwrap();
    assert_eq!(by_id["edges"], frames["edges"]);
}

fn one_line_error(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn bad_input_is_one_line_and_an_exit_code_never_a_panic() {
    let d = records_dir();
    let err = one_line_error(
        &Command::new(DEPMAP)
            .args(["map", "--dir"])
            .arg(&d.0)
            .args([
                "--since",
                "2020-01-01T00:00:00Z",
                "--until",
                "2020-01-02T00:00:00Z",
            ])
            .output()
            .unwrap(),
        1,
    );
    assert!(
        err.contains("no records between 2020-01-01T00:00:00Z and 2020-01-02T00:00:00Z"),
        "{err}"
    );
    let err = one_line_error(&map(&d.0.join("missing"), &[]), 1);
    assert!(err.contains("cannot read the record directory"), "{err}");
    let err = one_line_error(&map(&d.0, &["--machine", "vm-z"]), 1);
    assert!(
        err.contains("no machine named \"vm-z\"") && err.contains("vm-a (m-a)"),
        "{err}"
    );
    let err = one_line_error(
        &Command::new(DEPMAP)
            .args(["map", "--dir"])
            .arg(&d.0)
            .args(["--since", UNTIL, "--until", SINCE])
            .output()
            .unwrap(),
        2,
    );
    assert!(err.contains("--since must be before --until"), "{err}");
    let out = Command::new(DEPMAP)
        .args(["map", "--since", "yesterday-ish"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither a duration"));
    // A directory of garbage only.
    let junk = TempDir::new("mapjunk");
    std::fs::write(
        junk.0.join("VMConnection-20261202T10-0001.ndjson"),
        "garbage\n{}\n[1]\n",
    )
    .unwrap();
    let err = one_line_error(&map(&junk.0, &[]), 1);
    assert!(err.contains("skipped: 3 lines not records"), "{err}");
}

#[test]
fn beyond_fifty_processes_idle_ones_fold_per_machine() {
    let d = records_dir();
    let ports: Vec<Value> = (0..60)
        .map(|i| {
            with(
                origin("2026-12-02T10:00:00Z", "m-b", "vm-b"),
                json!({"Ip": "0.0.0.0", "Port": 9000 + i, "Protocol": "tcp", "Process": format!("p-idle{i}"), "ProcessName": format!("idle{i}")}),
            )
        })
        .collect();
    write_table(&d.0, "VMBoundPort-20261202T10-0002.ndjson", &ports, "");
    let frames: Value = serde_json::from_str(&ok(&map(&d.0, &["--format", "json"]))).unwrap();
    let folded = node(&frames, "m-b/idle");
    assert_eq!(folded["title"], "60 idle processes");
    // The connected ones stay.
    node(&frames, "p-nginx");
    node(&frames, "p-app");
    assert!(frames["nodes"].as_array().unwrap().len() < 12, "{frames:#}");
}

/// What the page looks like to a browser: every label's box, the edges and nodes as drawn.
const CHECK_SCRIPT: &str = r#"<pre id="check"></pre><script>
const labels = [...document.querySelectorAll('.label')].map(e => {
  const r = e.getBoundingClientRect();
  return {t: e.textContent, x: r.left, y: r.top, w: r.width, h: r.height};
});
const overlaps = [];
for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
  const a = labels[i], b = labels[j];
  if (a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h) overlaps.push([a.t, b.t]);
}
const edges = [...document.querySelectorAll('g.edge')].map(g => ({source: g.dataset.source,
  target: g.dataset.target, links: +g.dataset.links, sent: +g.dataset.bytesSent,
  received: +g.dataset.bytesReceived, label: g.querySelector('text').textContent}));
const nodes = [...document.querySelectorAll('g.node')].map(g => ({id: g.dataset.id,
  machine: g.dataset.machine, label: g.querySelector('.node-label').textContent}));
const machines = [...document.querySelectorAll('g.machine .machine-label')].map(t => t.textContent);
document.getElementById('check').textContent =
  JSON.stringify({labels: labels.length, overlaps, edges, nodes, machines});
</script>"#;

/// Headless Chromium on `page`: a screenshot to `png`, and the DOM after load.
fn chromium(page: &Path, png: &Path) -> String {
    let bounded = |args: &[String], out: &Path| {
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .args(args)
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().expect("chromium (tests/run.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "chromium {args:?}: {status}");
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromium {args:?} hung"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let url = format!("file://{}", page.display());
    let dir = page.parent().unwrap();
    bounded(
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1600,700".into(),
            url.clone(),
        ],
        &dir.join("screenshot.log"),
    );
    let dom = dir.join("dom.html");
    bounded(&["--dump-dom".into(), url], &dom);
    std::fs::read_to_string(dom).unwrap()
}

/// `html` as Chromium draws it (a screenshot to `png`): what [`CHECK_SCRIPT`] measured.
fn as_drawn(html: &str, dir: &Path, png: &Path) -> Value {
    let checked = dir.join("checked.html");
    std::fs::write(
        &checked,
        html.replace("</body>", &format!("{CHECK_SCRIPT}</body>")),
    )
    .unwrap();
    let dom = chromium(&checked, png);
    let text = dom
        .split("<pre id=\"check\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_else(|| panic!("no check output in the DOM: {dom}"));
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&text).unwrap()
}

/// The map of a real two-machine test bed (a namespace and a depmap each; the records of both
/// in one directory), as headless Chromium renders it: both machines, their processes and the
/// edge with its exact links and bytes are on the page, and no two labels overlap.
#[test]
fn the_test_beds_map_as_chromium_draws_it() {
    let _serial = serial();
    let (a, b) = (Netns::new("mapa"), Netns::new("mapb"));
    let (ip_a, ip_b) = ("10.81.0.1", "10.81.0.2");
    veth(&a, ip_a, &b, ip_b);
    let port = 9501;
    let (_srv, _) = server(&b, ip_b, port, 0);
    let events = "events = \"ebpf\"\n";
    let mut dm_a = Depmap::start_as(&a, "vm-a", "a0000000-0000-4000-8000-00000000000a", events);
    let mut dm_b = Depmap::start_as(&b, "vm-b", "b0000000-0000-4000-8000-00000000000b", events);
    let conns = 5;
    let totals = client(
        &a,
        &[
            "--host", ip_b, "--port", "9501", "--conns", "5", "--req", "300", "--resp", "4000",
        ],
    );
    assert_eq!(totals["conns"], conns);
    assert!(dm_a.wait_terminated("outbound", i64::from(port), conns));
    assert!(dm_b.wait_terminated("inbound", i64::from(port), conns));
    let (ra, rb) = (dm_a.stop(), dm_b.stop());
    let d = TempDir::new("mapbed");
    for (i, records) in [&ra, &rb].iter().enumerate() {
        for table in ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"] {
            let rows: Vec<Value> = of_type(records, table).into_iter().cloned().collect();
            write_table(
                &d.0,
                &format!("{table}-20000101T00-{:04}.ndjson", i + 1),
                &rows,
                "",
            );
        }
    }
    let page = d.0.join("map.html");
    let out = Command::new(DEPMAP)
        .args(["map", "--dir"])
        .arg(&d.0)
        .args(["--since", "1h", "--out"])
        .arg(&page)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The page as shipped is screenshotted; a copy with the test's script is measured.
    let html = std::fs::read_to_string(&page).unwrap();
    let png = match std::env::var_os("DEPMAP_MAP_SCREENSHOT") {
        Some(p) => std::path::PathBuf::from(p),
        None => d.0.join("map.png"),
    };
    let _ = chromium(&page, &png);
    let shot = std::fs::read(&png).unwrap();
    assert!(
        shot.len() > 1000 && shot.starts_with(b"\x89PNG"),
        "a screenshot"
    );
    let seen = as_drawn(&html, &d.0, &d.0.join("checked.png"));
    println!("as drawn: {seen:#}");

    let machines: Vec<&str> = seen["machines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    assert_eq!(machines, ["vm-a", "vm-b"], "{seen:#}");
    let nodes = seen["nodes"].as_array().unwrap();
    let python_on = |m: &str| {
        nodes
            .iter()
            .find(|n| {
                n["machine"] == m
                    && n["label"]
                        .as_str()
                        .is_some_and(|l| l.starts_with("python3"))
            })
            .unwrap_or_else(|| panic!("no python3 process on {m}: {seen:#}"))
    };
    let (client_node, server_node) = (
        python_on("m-a0000000-0000-4000-8000-00000000000a"),
        python_on("m-b0000000-0000-4000-8000-00000000000b"),
    );
    let edges = seen["edges"].as_array().unwrap();
    let e = edges
        .iter()
        .find(|e| e["source"] == client_node["id"] && e["target"] == server_node["id"])
        .unwrap_or_else(|| panic!("no edge vm-a python3 → vm-b python3: {seen:#}"));
    let (sent, received) = (
        totals["sent"].as_i64().unwrap(),
        totals["received"].as_i64().unwrap(),
    );
    assert_eq!(
        (
            e["links"].as_i64(),
            e["sent"].as_i64(),
            e["received"].as_i64()
        ),
        (Some(conns), Some(sent), Some(received)),
        "{e}"
    );
    let label = e["label"].as_str().unwrap();
    let thousands = |n: i64| {
        let s = n.to_string();
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    };
    assert!(
        label.starts_with(&format!(
            "5 links · ↑{} B ↓{} B",
            thousands(sent),
            thousands(received)
        )),
        "{label}"
    );
    // The clients' depmap saw vm-b as the server: no separate remote endpoint for it.
    assert_eq!(edges.len(), 1, "{seen:#}");
    assert!(seen["labels"].as_i64().unwrap() >= 5);
    assert_eq!(seen["overlaps"], json!([]), "labels overlap: {seen:#}");
}

/// The records of a directory, by table: the lines that are JSON objects with the columns the
/// tables cannot do without (what a sink would have inserted).
fn records_of(dir: &Path) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".ndjson"))
        .collect();
    names.sort();
    for name in names {
        let table = name.split('-').next().unwrap_or("").to_string();
        let text = String::from_utf8_lossy(&std::fs::read(dir.join(&name)).unwrap()).into_owned();
        let rows: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v.get("Machine").is_some()
                    && (table != "VMConnection" || v.get("Direction").is_some())
            })
            .collect();
        out.push((table, rows));
    }
    out
}

/// `depmap map` on the test's ClickHouse server as the `depmap` user.
fn map_from_clickhouse(ns: &Netns, password: &Path) -> Command {
    let mut cmd = ns.command(DEPMAP);
    cmd.args([
        "map",
        "--clickhouse",
        &format!("http://127.0.0.1:{}", common::clickhouse::CH_PORT),
        "--clickhouse-user",
        "depmap",
        "--clickhouse-password-file",
    ])
    .arg(password);
    cmd
}

/// The same records in the ClickHouse sink's tables (a real server in the test's namespace)
/// give the same map: `depmap map --clickhouse` equals `depmap map --dir`.
#[test]
fn clickhouse_gives_the_map_the_files_give() {
    use common::clickhouse::*;
    let _serial = serial();
    let ns = Netns::new("mapch");
    let dir = TempDir::new("mapch");
    let _server = Server::start(&ns, &dir);
    let d = records_dir();
    for (table, rows) in records_of(&d.0) {
        if rows.is_empty() {
            continue;
        }
        let body: String = rows
            .iter()
            .map(|r| {
                // As the sink sends them: null columns left out.
                let mut r = r.clone();
                if let Some(o) = r.as_object_mut() {
                    o.retain(|_, v| !v.is_null());
                }
                format!("{r}\n")
            })
            .collect();
        let (status, answer) = sql(
            &ns,
            &format!("INSERT INTO depmap.{table} FORMAT JSONEachRow\n{body}"),
        );
        assert_eq!(status, 200, "{table}: {answer}");
    }
    let password = dir.0.join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let from_clickhouse = map_from_clickhouse(&ns, &password)
        .args(["--since", SINCE, "--until", UNTIL, "--format", "json"])
        .output()
        .unwrap();
    let clickhouse: Value = serde_json::from_str(&ok(&from_clickhouse)).unwrap();
    let files: Value = serde_json::from_str(&ok(&map(&d.0, &["--format", "json"]))).unwrap();
    assert_eq!(clickhouse, files);
    let stderr = String::from_utf8_lossy(&from_clickhouse.stderr);
    assert!(stderr.contains("skipped: nothing"), "{stderr}");

    // The views give the same edges, summed over the range as a Grafana query does.
    run_sql_file(&ns, MAP_SQL);
    let (status, rows) = sql(
        &ns,
        "SELECT source, target, port, protocol, sum(links) AS links, sum(failed) AS failed, \
         sum(sent) AS sent, sum(received) AS received FROM depmap.map_edges_by_window \
         WHERE TimeGenerated >= toDateTime('2026-12-02 10:00:00', 'UTC') \
         AND TimeGenerated < toDateTime('2026-12-02 11:00:00', 'UTC') \
         GROUP BY source, target, port, protocol ORDER BY source, target, port \
         FORMAT TabSeparated",
    );
    assert_eq!(status, 200, "{rows}");
    let number = |s: &str| -> i64 {
        s.chars()
            .filter(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    };
    let mut expected: Vec<String> = files["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let stat = e["secondarystat"].as_str().unwrap();
            let (sent, received) = stat.split_once(" ↓").unwrap();
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e["source"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["detail__port"],
                e["detail__protocol"].as_str().unwrap(),
                number(e["mainstat"].as_str().unwrap()),
                e["detail__links_failed"],
                number(sent),
                number(received)
            )
        })
        .collect();
    expected.sort();
    let mut got: Vec<String> = rows.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, expected);
    let (status, titles) = sql(
        &ns,
        "SELECT id, title, machine FROM depmap.map_node_titles ORDER BY id FORMAT TabSeparated",
    );
    assert_eq!(status, 200, "{titles}");
    assert_eq!(titles, "p-app\tapp\tm-a\np-nginx\tnginx\tm-b\n");

    // The Grafana dashboard's queries (its time macro replaced by the range): every edge of
    // `depmap map` with its id, and a node for every edge end.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let queries: Vec<(String, String)> = dashboard["panels"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let sql = t["rawSql"].as_str().unwrap().replace(
                "$__timeFilter(TimeGenerated)",
                "TimeGenerated >= toDateTime('2026-12-02 10:00:00', 'UTC') \
                 AND TimeGenerated < toDateTime('2026-12-02 11:00:00', 'UTC')",
            );
            (t["refId"].as_str().unwrap().to_string(), sql)
        })
        .collect();
    let frame = |name: &str| -> Vec<Value> {
        let (_, q) = queries.iter().find(|(r, _)| r == name).unwrap();
        let (status, body) = sql(&ns, &format!("{q} FORMAT JSONEachRow"));
        assert_eq!(status, 200, "{name}: {body}");
        body.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (nodes, edges) = (frame("nodes"), frame("edges"));
    let mut ids: Vec<&str> = edges.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want: Vec<&str> = files["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    want.sort();
    assert_eq!(ids, want);
    let app_nginx = edges
        .iter()
        .find(|e| e["id"] == "p-app->p-nginx:80/tcp")
        .unwrap();
    assert_eq!(app_nginx["mainstat"], "6 links");
    assert_eq!(app_nginx["secondarystat"], "↑1507 B ↓13570 B");
    for e in &edges {
        for end in [&e["source"], &e["target"]] {
            assert!(
                nodes.iter().any(|n| n["id"] == *end),
                "no node {end}: {nodes:?}"
            );
        }
    }
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == "p-nginx" && n["title"] == "nginx"),
        "{nodes:?}"
    );
    // Unmeasured bytes (UDP without flow counters: the sink leaves the null columns out)
    // stay null in ClickHouse, not 0, and the map says so.
    let udp = conn(
        "2026-12-02T10:30:00Z",
        ("m-a", "vm-a"),
        ("p-app", "app"),
        "outbound",
        ("10.80.0.1", "10.97.0.53", 53),
        (1, 0),
        (0, 0),
        (0, 0),
        json!({"Protocol": "udp"}),
    );
    let mut udp = udp.as_object().unwrap().clone();
    udp.retain(|k, v| !v.is_null() && k != "BytesSent" && k != "BytesReceived");
    let (status, answer) = sql(
        &ns,
        &format!(
            "INSERT INTO depmap.VMConnection FORMAT JSONEachRow\n{}\n",
            Value::Object(udp)
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        common::clickhouse::number(
            &ns,
            "SELECT count() FROM depmap.VMConnection WHERE Protocol = 'udp' \
             AND BytesSent IS NULL AND BytesReceived IS NULL"
        ),
        1
    );
    let with_udp = map_from_clickhouse(&ns, &password)
        .args(["--since", SINCE, "--until", UNTIL, "--format", "json"])
        .output()
        .unwrap();
    let with_udp: Value = serde_json::from_str(&ok(&with_udp)).unwrap();
    let dns = with_udp["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["detail__protocol"] == "udp")
        .expect("the UDP edge");
    assert_eq!(dns["secondarystat"], "bytes not measured", "{dns}");
    let dashboard_dns: Vec<Value> = frame("edges")
        .into_iter()
        .filter(|e| e["id"].as_str().is_some_and(|id| id.ends_with(":53/udp")))
        .collect();
    assert_eq!(dashboard_dns.len(), 1, "{dashboard_dns:?}");
    assert_eq!(dashboard_dns[0]["secondarystat"], "bytes not measured");
    let app_nginx = frame("edges")
        .into_iter()
        .find(|e| e["id"] == "p-app->p-nginx:80/tcp")
        .unwrap();
    assert_eq!(app_nginx["secondarystat"], "↑1507 B ↓13570 B");

    // A wrong password, and a server that is not there: one line, exit 1.
    std::fs::write(&password, "wrong\n").unwrap();
    let refused = map_from_clickhouse(&ns, &password).output().unwrap();
    let err = one_line_error(&refused, 1);
    assert!(
        err.contains("cannot read VMComputer from ClickHouse") && err.contains("HTTP"),
        "{err}"
    );
    let down = ns
        .command(DEPMAP)
        .args(["map", "--clickhouse", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let err = one_line_error(&down, 1);
    assert!(err.contains("Connection refused"), "{err}");
}

/// Beyond forty remote endpoints, those of a /24 fold into one node per port (a malicious one
/// stays on its own), with their edges' sums.
#[test]
fn beyond_forty_remotes_a_subnet_folds() {
    let d = records_dir();
    let rows: Vec<Value> = (0..45)
        .map(|i| {
            conn(
                "2026-12-02T10:00:00Z",
                ("m-a", "vm-a"),
                ("p-app", "app"),
                "outbound",
                ("10.80.0.1", &format!("10.96.0.{}", i + 1), 443),
                (1, 0),
                (10, 100),
                (0, 0),
                json!({}),
            )
        })
        .collect();
    write_table(&d.0, "VMConnection-20261202T10-0003.ndjson", &rows, "");
    let frames: Value = serde_json::from_str(&ok(&map(&d.0, &["--format", "json"]))).unwrap();
    let subnet = node(&frames, "subnet:10.96.0.0/24:443");
    assert_eq!(subnet["title"], "10.96.0.0/24");
    assert_eq!(subnet["subtitle"], "45 endpoints, port 443");
    let e = edge(&frames, "p-app", "subnet:10.96.0.0/24:443");
    assert_eq!(e["mainstat"], "45 links");
    assert_eq!(e["secondarystat"], "↑450 B ↓4,500 B");
    // The malicious database is not folded.
    assert_eq!(
        node(&frames, "remote:10.99.0.5:5432")["arc__malicious"],
        1.0
    );
}

/// Fifty processes on three machines, every one with edges (labels with big numbers, failed
/// attempts, remote endpoints, client groups): no two labels overlap as Chromium draws them.
#[test]
fn fifty_processes_have_no_overlapping_labels_in_chromium() {
    let d = TempDir::new("map50");
    let t = "2026-12-02T10:00:00Z";
    let machines = [
        ("m-a", "vm-a", "10.80.0.1"),
        ("m-b", "vm-b", "10.80.0.2"),
        ("m-c", "vm-c", "10.80.0.3"),
    ];
    let mut computers = Vec::new();
    let mut ports = Vec::new();
    let mut conns = Vec::new();
    for (id, name, ip) in machines {
        computers.push(with(origin(t, id, name), json!({"Ipv4Addresses": [ip]})));
    }
    // 20 servers on vm-b, 10 on vm-c; 20 clients on vm-a calling three servers each.
    let server = |i: usize| {
        if i < 20 {
            (machines[1], i)
        } else {
            (machines[2], i)
        }
    };
    for i in 0..30 {
        let ((m, name, ip), _) = server(i);
        let p = format!("p-server{i}");
        ports.push(with(origin(t, m, name), json!({"Ip": ip, "Port": 7000 + i, "Protocol": "tcp", "Process": p, "ProcessName": format!("server-{i}")})));
        conns.push(conn(
            t,
            (m, name),
            (&p, &format!("server-{i}")),
            "inbound",
            ("10.97.0.9", ip, 7000 + i as i64),
            (i as i64 + 1, 0),
            (123_456_789, 987_654_321),
            (4, 10),
            json!({}),
        ));
    }
    for c in 0..20 {
        let (m, name, ip) = machines[0];
        let p = format!("p-client{c}");
        let pname = format!("client-{c}");
        for k in 0..3 {
            let s = (c + k * 7) % 30;
            let ((_, _, sip), _) = server(s);
            conns.push(conn(
                t,
                (m, name),
                (&p, &pname),
                "outbound",
                (ip, sip, 7000 + s as i64),
                (1_234_567, 89),
                (98_765_432_101, 12_345_678_901),
                (1000, 123_456),
                json!({}),
            ));
        }
        conns.push(conn(
            t,
            (m, name),
            (&p, &pname),
            "outbound",
            (ip, &format!("10.96.{c}.1"), 443),
            (3, 0),
            (1, 2),
            (0, 0),
            json!({"RemoteDnsQuestions": format!("[\"api{c}.example\"]")}),
        ));
    }
    write_table(&d.0, "VMComputer-20261202T10-0001.ndjson", &computers, "");
    write_table(&d.0, "VMBoundPort-20261202T10-0001.ndjson", &ports, "");
    write_table(&d.0, "VMConnection-20261202T10-0001.ndjson", &conns, "");
    let html = ok(&map(&d.0, &[]));
    let png = std::env::var_os("DEPMAP_MAP50_SCREENSHOT")
        .map_or_else(|| d.0.join("map50.png"), std::path::PathBuf::from);
    let seen = as_drawn(&html, &d.0, &png);
    let nodes = seen["nodes"].as_array().unwrap();
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n["id"].as_str().unwrap().starts_with("p-"))
            .count(),
        50
    );
    assert_eq!(
        seen["edges"].as_array().unwrap().len(),
        20 * 3 + 20 + 30,
        "{seen:#}"
    );
    assert!(seen["labels"].as_i64().unwrap() > 150);
    assert_eq!(seen["overlaps"], json!([]), "labels overlap");
}
