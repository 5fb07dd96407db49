//! The clickhouse sink against a real ClickHouse server (the distribution's package, which
//! `.ci/run` installs) started on loopback inside the test's own network namespace: a live
//! `depmap run` inserts its records, and SQL over them returns the test's connections with
//! the bytes its client really sent.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

const SERVER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clickhouse/server.sh");
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/clickhouse/schema.sql"
);
const CH_PORT: u16 = 18_123;
const PASSWORD: &str = "depmap-test";

/// Runs one SQL statement over ClickHouse's HTTP interface from inside the namespace;
/// returns (HTTP status, body).
fn sql(ns: &Netns, statement: &str) -> (u16, String) {
    let script = format!(
        "import sys, urllib.request, urllib.error\n\
         req = urllib.request.Request('http://127.0.0.1:{CH_PORT}/', data=sys.stdin.buffer.read())\n\
         try:\n    r = urllib.request.urlopen(req, timeout=30); print(r.status); sys.stdout.write(r.read().decode())\n\
         except urllib.error.HTTPError as e:\n    print(e.code); sys.stdout.write(e.read().decode())\n"
    );
    let mut child = ns
        .command("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(statement.as_bytes());
    let out = child.wait_with_output().expect("sql output");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, body) = text.split_once('\n').unwrap_or((&text, ""));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// A number from a one-value TabSeparated answer.
fn number(ns: &Netns, query: &str) -> i64 {
    let (status, body) = sql(ns, &format!("{query} FORMAT TabSeparated"));
    assert_eq!(status, 200, "{query}: {body}");
    body.trim().parse().unwrap_or(0)
}

struct Server<'a> {
    ns: &'a Netns,
    dir: &'a Path,
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command(SERVER_SH)
            .arg("stop")
            .arg(self.dir)
            .status();
    }
}

#[test]
fn a_live_depmap_run_fills_clickhouse_and_sql_finds_the_connections() {
    let _serial = serial();
    let ns = Netns::new("ch");
    let dir = TempDir::new("ch");
    let data = dir.0.join("clickhouse");
    let started = ns
        .command(SERVER_SH)
        .arg("start")
        .arg(&data)
        .arg(CH_PORT.to_string())
        .env("CH_DEPMAP_PASSWORD", PASSWORD)
        .stdout(Stdio::null())
        .status()
        .expect("server.sh (is clickhouse-server installed? .ci/run installs it)");
    let _server = Server {
        ns: &ns,
        dir: &data,
    };
    assert!(
        started.success(),
        "ClickHouse did not start: install the distribution's clickhouse-server package (.ci/run does)"
    );
    // The schema, one statement per request (the HTTP interface takes one at a time).
    let schema = std::fs::read_to_string(SCHEMA).expect("schema.sql");
    for statement in schema.split(';') {
        let code: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if code.trim().is_empty() {
            continue;
        }
        let (status, body) = sql(&ns, &code);
        assert_eq!(status, 200, "{code}: {body}");
    }

    std::fs::write(dir.0.join("password"), format!("{PASSWORD}\n")).expect("password file");
    let cfg = config_file(
        &dir,
        &format!(
            "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n\
             [sink]\nkind = \"clickhouse\"\n\
             [sink.clickhouse]\nurl = \"http://127.0.0.1:{CH_PORT}\"\nuser = \"depmap\"\npassword_file = \"{}\"\n\
             [sink.delivery]\nbatch_max_age = \"500ms\"\nmax_backoff = \"2s\"\n",
            dir.0.join("password").display()
        ),
    );
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["run", "--config"]).arg(&cfg);
    let mut dm = Proc::spawn(cmd);

    let (_srv, _) = server(&ns, "127.0.0.1", 9401, 0);
    let totals = client(
        &ns,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9401",
            "--conns",
            "12",
            "--req",
            "250",
            "--resp",
            "3500",
        ],
    );
    let inbound = "FROM depmap.VMConnection WHERE Direction = 'inbound' AND DestinationPort = 9401";
    let deadline = Instant::now() + Duration::from_secs(30);
    while number(&ns, &format!("SELECT sum(LinksTerminated) {inbound}")) < 12
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let status = dm.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "depmap exit {status:?}"
    );

    assert_eq!(
        number(&ns, &format!("SELECT sum(LinksEstablished) {inbound}")),
        12
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(LinksTerminated) {inbound}")),
        12
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(BytesReceived) {inbound}")),
        totals["sent"].as_i64().unwrap()
    );
    assert_eq!(
        number(&ns, &format!("SELECT sum(BytesSent) {inbound}")),
        totals["received"].as_i64().unwrap()
    );
    // The other tables arrived too, and the server's process is named.
    assert!(number(&ns, "SELECT count() FROM depmap.VMComputer") >= 1);
    assert!(
        number(
            &ns,
            "SELECT count() FROM depmap.VMBoundPort WHERE Port = 9401"
        ) >= 1
    );
    let (status, names) = sql(
        &ns,
        "SELECT DISTINCT ProcessName FROM depmap.VMConnection WHERE Direction = 'inbound' AND DestinationPort = 9401 FORMAT TabSeparated",
    );
    assert_eq!(status, 200, "{names}");
    assert!(names.contains("python"), "{names}");
}
