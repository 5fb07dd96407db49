//! The queries users run: every sample query of the VM Insights article (docs/queries.md),
//! executed by a real KQL engine (the PyPI package duckdb-kql on DuckDB) over the records of a
//! live depmap, with each answer checked against the truth of the test bed.
//!
//! The test bed: a servers' host (10.79.0.1) and a clients' host joined by a veth link,
//! depmap on the servers' host with the file sink. A keep-alive client over the link, one-shot
//! clients and refused attempts over loopback, a server whose command line carries
//! "fake-mysqld" (for the "sql" queries), and curl holding a connection (for the curl
//! versions query). `tests/queries/run_queries.py` loads the NDJSON files into DuckDB, runs the
//! queries from docs/queries.md and checks them. The Python environment (duckdb, duckdb-kql,
//! pinned) is created under the target directory on first use.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const SERVER: &str = "10.79.0.1";
const CLIENT: &str = "10.79.0.2";
const PY_PACKAGES: [&str; 2] = ["duckdb==2.0.1", "duckdb-kql==1.1.2"];

fn meminfo_mb() -> i64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kb: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// The executable name the test peers run under (`python3` resolves to e.g. python3.11).
fn python_name() -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.basename(os.path.realpath(sys.executable)))",
        ])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The kernel's boot time (`btime` of /proc/stat), RFC 3339.
fn boot_time() -> String {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let secs: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

fn dpkg_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn the_sample_queries_answer_right_on_depmap_data() {
    let python = python_venv("kql-venv", &PY_PACKAGES);
    let _serial = serial();
    let srv = Netns::new("qsrv");
    let cli = Netns::new("qcli");
    veth(&srv, SERVER, &cli, CLIENT);
    let dir = TempDir::new("queries");
    let cfg = config_file(
        &dir,
        "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\nhot_poll = \"100ms\"\ncpu_budget = \"0%\"\n",
    );
    let records = dir.0.join("state").join("records");
    let mut dm = Proc::spawn({
        let mut c = srv.command(DEPMAP);
        c.args(["run", "--config"]).arg(&cfg);
        c
    });
    assert!(
        wait_until(Duration::from_secs(20), || std::fs::read_dir(&records)
            .map(|d| d.count())
            .unwrap_or(0)
            > 0),
        "depmap wrote no inventory"
    );

    // Servers: one on every address (the link), one on loopback only, one for curl (which
    // logs what each connection brought: curl's request is the truth of that connection).
    let curl_log = dir.0.join("curl-server.log");
    let curl_log_arg = curl_log.to_string_lossy().into_owned();
    let mut servers = Vec::new();
    for (host, port, delay, tag) in [
        ("0.0.0.0", 7300, 30, "app"),
        ("127.0.0.1", 7301, 0, "fake-mysqld"),
        ("127.0.0.1", 7302, 0, "web"),
    ] {
        let delay = delay.to_string();
        let mut extra = vec!["--delay-ms", &delay, "--tag", tag];
        if port == 7302 {
            extra.extend(["--log", &curl_log_arg]);
        }
        let (p, _) = serve(&srv, "python3", host, port, &extra);
        servers.push(p);
    }
    let link = client(
        &cli,
        &[
            "--host",
            SERVER,
            "--port",
            "7300",
            "--exchanges",
            "10",
            "--think-ms",
            "150",
            "--req",
            "400",
            "--resp",
            "5000",
        ],
    );
    let local = client(
        &srv,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "7301",
            "--conns",
            "5",
            "--req",
            "100",
            "--resp",
            "700",
        ],
    );
    let refused = finish(
        spawn_peer(
            &srv,
            "fail",
            &["--host", "127.0.0.1", "--port", "9", "--count", "3"].map(String::from),
        ),
        Duration::from_secs(30),
    );
    assert_eq!(refused["events"].as_array().unwrap().len(), 3);
    // curl holds a connection for a second (the server waits for a request it never gets).
    let curl = run_bounded(
        srv.command("curl")
            .args(["-s", "--max-time", "1", "http://127.0.0.1:7302/"])
            .stderr(Stdio::null()),
        Duration::from_secs(10),
    );
    assert!(!curl, "curl must time out against the test server");
    assert!(
        wait_until(Duration::from_secs(10), || !text_of(&curl_log).is_empty()),
        "the curl server logged no connection"
    );
    let curl_conn: Value =
        serde_json::from_str(text_of(&curl_log).lines().next().unwrap()).unwrap();
    assert!(curl_conn["received"].as_i64().unwrap() > 0, "{curl_conn}");
    // Wait for the window holding the last activity (curl's connection, closed) to be written,
    // then stop depmap (it flushes).
    let curl_written = || {
        std::fs::read_dir(&records)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("VMConnection"))
                    .any(|e| {
                        text_of(&e.path()).lines().any(|l| {
                            serde_json::from_str::<Value>(l).is_ok_and(|r| {
                                r["DestinationPort"] == 7302
                                    && r["LinksTerminated"].as_i64().unwrap_or(0) >= 1
                            })
                        })
                    })
            })
            .unwrap_or(false)
    };
    assert!(
        wait_until(Duration::from_secs(20), curl_written),
        "no window with curl's closed connection"
    );
    let status = dm.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()));

    let first_computer: Value = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("VMComputer"))
        .find_map(|e| {
            std::fs::read_to_string(e.path())
                .ok()?
                .lines()
                .next()
                .map(|l| serde_json::from_str(l).unwrap())
        })
        .expect("a VMComputer record");
    let facts = json!({
        "computer": first_computer["Computer"],
        "machine": first_computer["Machine"],
        "ip": SERVER,
        "sql_marker": "fake-mysqld",
        "physical_memory_mb": meminfo_mb(),
        "curl_version": dpkg_version("curl"),
        "ports": [
            {"port": 7300, "ip": SERVER, "process_name": python_name(),
             "bytes_sent": link["received"], "bytes_received": link["sent"], "links_established": 1},
            {"port": 7301, "ip": "127.0.0.1", "process_name": python_name(),
             "bytes_sent": local["received"], "bytes_received": local["sent"], "links_established": 5},
            {"port": 7302, "ip": "127.0.0.1", "process_name": python_name(),
             "bytes_sent": curl_conn["sent"], "bytes_received": curl_conn["received"], "links_established": 1},
        ],
        "links_failed": 3,
        "boot_time": boot_time(),
    });
    let facts_file = dir.0.join("facts.json");
    std::fs::write(&facts_file, facts.to_string()).unwrap();
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/queries/run_queries.py"
        ))
        .arg(&records)
        .arg(&facts_file)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run_queries.py");
    let report = String::from_utf8_lossy(&out.stdout);
    println!("{report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "some sample queries answered wrong:\n{report}"
    );
    let passed = report.lines().filter(|l| l.starts_with("PASS")).count();
    assert!(passed >= 20, "{passed} queries passed:\n{report}");
}
