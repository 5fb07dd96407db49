//! A private ClickHouse server for a test, in the test's namespace (tests/clickhouse/server.sh),
//! with depmap's schema, and SQL over its HTTP interface.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::{Netns, TempDir};

pub const SERVER_SH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clickhouse/server.sh");
pub const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/packaging/clickhouse/schema.sql"
);
pub const CH_PORT: u16 = 18_123;
pub const PASSWORD: &str = "depmap-test";

/// Runs one SQL statement (and its data) over ClickHouse's HTTP interface from inside the
/// namespace; returns (HTTP status, body).
pub fn sql(ns: &Netns, statement: &str) -> (u16, String) {
    let script = format!(
        "import sys, urllib.request, urllib.error\n\
         req = urllib.request.Request('http://127.0.0.1:{CH_PORT}/?input_format_skip_unknown_fields=1&date_time_input_format=best_effort', data=sys.stdin.buffer.read())\n\
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
pub fn number(ns: &Netns, query: &str) -> i64 {
    let (status, body) = sql(ns, &format!("{query} FORMAT TabSeparated"));
    assert_eq!(status, 200, "{query}: {body}");
    body.trim().parse().unwrap_or(0)
}

/// Runs every statement of an SQL file, one per request (the HTTP interface takes one at a
/// time); comment lines are dropped.
pub fn run_sql_file(ns: &Netns, path: &str) {
    let text = std::fs::read_to_string(path).expect("SQL file");
    for statement in text.split(';') {
        let code: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if code.trim().is_empty() {
            continue;
        }
        let (status, body) = sql(ns, &code);
        assert_eq!(status, 200, "{code}: {body}");
    }
}

/// The running server with depmap's schema; stopped (and its files removed) on drop.
pub struct Server<'a> {
    ns: &'a Netns,
    data: PathBuf,
}

impl Server<'_> {
    pub fn start<'a>(ns: &'a Netns, dir: &TempDir) -> Server<'a> {
        let data = dir.0.join("clickhouse");
        let started = ns
            .command(SERVER_SH)
            .arg("start")
            .arg(&data)
            .arg(CH_PORT.to_string())
            .env("CH_DEPMAP_PASSWORD", PASSWORD)
            .stdout(Stdio::null())
            .status()
            .expect("server.sh (is clickhouse-server installed? tests/run.sh installs it)");
        let server = Server { ns, data };
        assert!(
            started.success(),
            "ClickHouse did not start: install the distribution's clickhouse-server package (tests/run.sh does)"
        );
        run_sql_file(ns, SCHEMA);
        server
    }

    pub fn data(&self) -> &Path {
        &self.data
    }
}

impl Drop for Server<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command(SERVER_SH)
            .arg("stop")
            .arg(&self.data)
            .status();
    }
}
