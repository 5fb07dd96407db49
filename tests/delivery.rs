//! The http sink against a real collector (tests/peers/collector.py) on loopback inside a
//! network namespace of the test's own: outages, error answers, a slow collector, a rejecting
//! one, `kill -9` mid-send, and a full spool. Truth is what the test's own client sent: after
//! deduplication by batch id, the records that reach the collector must carry exactly those
//! bytes and connections.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const COLLECTOR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/collector.py");
const COLLECTOR_PORT: u16 = 18_081;
const METRICS_PORT: u16 = 19_464;

/// One namespace with a depmap whose http sink points at a collector on loopback.
struct Bed {
    ns: Netns,
    dir: TempDir,
    cfg: PathBuf,
    log: PathBuf,
}

impl Bed {
    fn new(tag: &str, delivery: &str) -> Bed {
        let ns = Netns::new(tag);
        let dir = TempDir::new(tag);
        let cfg = config_file(
            &dir,
            &format!(
                "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n\
                 [sink]\nkind = \"http\"\n\
                 [sink.http]\nurl = \"http://127.0.0.1:{COLLECTOR_PORT}/ingest\"\ntimeout = \"2s\"\n\
                 bearer_token_file = \"{token}\"\n\
                 [sink.delivery]\nbatch_max_age = \"500ms\"\nmax_backoff = \"2s\"\nshutdown_grace = \"5s\"\n{delivery}\
                 [metrics]\nlisten = \"127.0.0.1:{METRICS_PORT}\"\n",
                token = dir.0.join("token").display(),
            ),
        );
        std::fs::write(dir.0.join("token"), "s3cret-token\n").expect("token file");
        let log = dir.0.join("collector.ndjson");
        Bed { ns, dir, cfg, log }
    }

    fn depmap(&self) -> Proc {
        let mut cmd = self.ns.command(DEPMAP);
        cmd.args(["run", "--config"]).arg(&self.cfg);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.0.join("depmap.log"))
            .expect("depmap log");
        let mut p = Proc::spawn_logging(cmd, Stdio::from(log));
        // Traffic is made once its first poll is done (the kernel event source loads before
        // it): connections older than depmap are a baseline, in no window.
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(&self.metrics(), "depmap_polls_total") < 1.0
            && Instant::now() < deadline
            && matches!(p.child.try_wait(), Ok(None))
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            metric(&self.metrics(), "depmap_polls_total") >= 1.0,
            "depmap made no poll in 20 s; its log:\n{}",
            self.depmap_log()
        );
        p
    }

    fn collector(&self, args: &[&str]) -> Proc {
        let mut cmd = self.ns.command("python3");
        cmd.arg(COLLECTOR)
            .args(["--port", &COLLECTOR_PORT.to_string(), "--log"])
            .arg(&self.log)
            .args(args);
        let mut p = Proc::spawn(cmd);
        let ready = p.json_line(Duration::from_secs(10));
        assert_eq!(ready["listening"], COLLECTOR_PORT);
        p
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) until the collector's requests satisfy `done`.
    fn wait_requests(&self, timeout: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.requests()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn spool(&self) -> PathBuf {
        self.dir.0.join("state").join("spool").join("http")
    }

    /// The metrics endpoint's text (fetched from inside the namespace).
    fn metrics(&self) -> String {
        metrics_text(&self.ns, METRICS_PORT)
    }

    fn depmap_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("depmap.log")).unwrap_or_default()
    }
}

/// A sample of the metrics text, 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Segment files in a spool directory, with their batch ids.
fn spooled(dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "seg") {
            let text = std::fs::read(&p).unwrap_or_default();
            let header = text.split(|b| *b == b'\n').next().unwrap_or_default();
            if let Ok(h) = serde_json::from_slice::<Value>(header) {
                ids.push(h["id"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    ids
}

/// Whether any spooled or collected batch holds `needle`.
fn seen_anywhere(bed: &Bed, needle: &str) -> bool {
    let in_spool = std::fs::read_dir(bed.spool())
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle)));
    in_spool || std::fs::read_to_string(&bed.log).is_ok_and(|t| t.contains(needle))
}

/// The records of accepted (2xx) requests, each batch once (deduplicated by batch id), in
/// the order the batches were first accepted; also checks that order is creation order.
fn accepted(requests: &[Value]) -> Vec<Value> {
    let mut seen = BTreeSet::new();
    let mut records = Vec::new();
    let mut last_created = String::new();
    for r in requests.iter().filter(|r| r["status"] == 200) {
        let id = r["batch"].as_str().expect("batch id").to_string();
        if !seen.insert(id) {
            continue;
        }
        let created = r["created"].as_str().expect("created").to_string();
        assert!(
            created >= last_created,
            "batch out of order: {created} after {last_created}"
        );
        last_created = created;
        assert_eq!(
            r["records"],
            r["body"].as_array().map_or(0, Vec::len) as i64
        );
        records.extend(r["body"].as_array().cloned().unwrap_or_default());
    }
    records
}

/// Traffic with known totals: `n` connections to a server in the bed's namespace.
fn traffic(bed: &Bed, port: u16, n: u32) -> (Proc, Value) {
    let srv = server(&bed.ns, "127.0.0.1", port, 0);
    let totals = client(
        &bed.ns,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--conns",
            &n.to_string(),
            "--req",
            "300",
            "--resp",
            "4000",
        ],
    );
    (srv.0, totals)
}

fn assert_exact(records: &[Value], port: u16, totals: &Value, conns: i64) {
    let sums = conn_sums(records, |r| {
        r["Direction"] == "inbound" && r["DestinationPort"] == port
    });
    assert_eq!(sums["LinksEstablished"], conns, "{sums:?}");
    assert_eq!(sums["LinksTerminated"], conns, "{sums:?}");
    assert_eq!(sums["BytesReceived"], totals["sent"].as_i64().unwrap());
    assert_eq!(sums["BytesSent"], totals["received"].as_i64().unwrap());
}

#[test]
fn an_outage_and_error_answers_lose_nothing_and_keep_order() {
    let _serial = serial();
    let bed = Bed::new("outage", "");
    let mut dm = bed.depmap();
    // The collector is down: batches pile up in the spool.
    let (_srv, totals) = traffic(&bed, 9301, 20);
    let deadline = Instant::now() + Duration::from_secs(15);
    while spooled(&bed.spool()).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        spooled(&bed.spool()).len() >= 3,
        "batches spooled during the outage"
    );
    // It comes back answering 503, 500, then 429 with Retry-After: 2, then 200.
    let _collector = bed.collector(&["--script", "503,500,429:2"]);
    let (_srv2, totals2) = traffic(&bed, 9302, 10);
    assert!(bed.wait_requests(Duration::from_secs(30), |r| {
        r.iter().filter(|r| r["status"] == 200).count() >= 3
    }));
    let status = dm.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "depmap exit {status:?}"
    );
    let requests = bed.requests();
    let statuses: Vec<i64> = requests
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(&statuses[..4], &[503, 500, 429, 200], "{statuses:?}");
    // Retry-After was honoured: ≥ 2 s between the 429 and the next attempt.
    let gap = requests[3]["t"].as_f64().unwrap() - requests[2]["t"].as_f64().unwrap();
    assert!(
        gap >= 1.9,
        "retried {gap:.2} s after a 429 with Retry-After: 2"
    );
    // The failed attempts were of the oldest batch, sent again first.
    for r in &requests[..4] {
        assert_eq!(r["batch"], requests[0]["batch"]);
    }
    for r in &requests {
        assert_eq!(r["auth"], "Bearer s3cret-token");
        assert_eq!(r["gzip"], true);
        assert_eq!(r["type"], "application/x-ndjson");
    }
    let records = accepted(&requests);
    assert_exact(&records, 9301, &totals, 20);
    assert_exact(&records, 9302, &totals2, 10);
    // Every record type arrived, and nothing is left in the spool.
    let types: BTreeSet<&str> = records.iter().filter_map(|r| r["Type"].as_str()).collect();
    assert!(
        types.contains("VMComputer") && types.contains("VMConnection"),
        "{types:?}"
    );
    assert!(spooled(&bed.spool()).is_empty());
}

#[test]
fn a_rejected_batch_is_set_aside_not_retried_and_counted() {
    let _serial = serial();
    let bed = Bed::new("reject", "");
    let _collector = bed.collector(&["--script", "400"]);
    let mut dm = bed.depmap();
    let (_srv, _) = traffic(&bed, 9303, 3);
    assert!(bed.wait_requests(Duration::from_secs(20), |r| {
        r.iter().filter(|r| r["status"] == 200).count() >= 2
    }));
    let metrics = bed.metrics();
    assert_eq!(
        metric(&metrics, "depmap_batches_rejected_total"),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "depmap_batches_sent_total") >= 2.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "depmap_records_produced_total{table=\"VMComputer\"}"
        ) >= 1.0
    );
    assert!(dm.terminate(Duration::from_secs(20)).is_some());
    let requests = bed.requests();
    let rejected = requests[0]["batch"].as_str().unwrap().to_string();
    assert_eq!(
        requests
            .iter()
            .filter(|r| r["batch"] == rejected.as_str())
            .count(),
        1,
        "a rejected batch is never sent again"
    );
    assert_eq!(spooled(&bed.spool().join("rejected")), vec![rejected]);
    assert!(bed.depmap_log().contains("rejected a batch"));
}

#[test]
fn a_slow_collector_does_not_hold_up_polling_and_gets_everything() {
    let _serial = serial();
    // Each answer takes 3 s; the sink gives up after 2 s and tries again.
    let bed = Bed::new("slow", "");
    let _collector = bed.collector(&["--delay-ms", "3000"]);
    let mut dm = bed.depmap();
    let (_srv, totals) = traffic(&bed, 9304, 8);
    assert!(bed.wait_requests(Duration::from_secs(15), |r| r.len() >= 2));
    let polls_before = metric(&bed.metrics(), "depmap_polls_total");
    std::thread::sleep(Duration::from_secs(2));
    let polls_after = metric(&bed.metrics(), "depmap_polls_total");
    // 200 ms polls go on while every send times out.
    assert!(
        polls_after >= polls_before + 5.0,
        "{polls_before} → {polls_after}"
    );
    assert!(metric(&bed.metrics(), "depmap_batches_retried_total") >= 1.0);
    // The collector speeds up: everything arrives.
    let control = bed
        .ns
        .command("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:{COLLECTOR_PORT}/_control', data=b'{{\"delay_ms\": 0}}'), timeout=10)"
            ),
        ])
        .status()
        .expect("control");
    assert!(control.success());
    assert!(
        dm.terminate(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let records = accepted(&bed.requests());
    assert_exact(&records, 9304, &totals, 8);
}

#[test]
fn kill_9_mid_send_loses_no_spooled_batch() {
    let _serial = serial();
    let bed = Bed::new("kill", "");
    let text = std::fs::read_to_string(&bed.cfg).unwrap();
    std::fs::write(
        &bed.cfg,
        text.replace("timeout = \"2s\"", "timeout = \"30s\""),
    )
    .unwrap();
    // Each answer takes 5 s: batches queue up in the spool behind the one being sent.
    let collector = bed.collector(&["--delay-ms", "5000"]);
    let mut dm = bed.depmap();
    let (_srv, totals) = traffic(&bed, 9305, 6);
    // Let batches pile up behind the slow collector (the window of the connections among
    // them), then kill depmap while it sends.
    let deadline = Instant::now() + Duration::from_secs(30);
    let piled =
        || seen_anywhere(&bed, "\"DestinationPort\":9305") && spooled(&bed.spool()).len() >= 2;
    while !piled() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Records still pending in memory are lost to kill -9 by design (README "Delivery"): the
    // connections' must be spooled (or sent) before the kill for this test to mean anything.
    assert!(
        piled(),
        "the connections' window never reached the spool in 30 s (spooled: {:?}); depmap's log:\n{}",
        spooled(&bed.spool()),
        bed.depmap_log()
    );
    assert!(bed.wait_requests(Duration::from_secs(10), |r| !r.is_empty()));
    let _ = dm.child.kill();
    let _ = dm.child.wait();
    let at_kill: BTreeSet<String> = spooled(&bed.spool()).into_iter().collect();
    assert!(!at_kill.is_empty());
    drop(collector);
    // Restart both; the collector is fast now.
    let _collector = bed.collector(&[]);
    let mut dm = bed.depmap();
    assert!(bed.wait_requests(Duration::from_secs(30), |r| {
        let ok: BTreeSet<&str> = r
            .iter()
            .filter(|r| r["status"] == 200)
            .filter_map(|r| r["batch"].as_str())
            .collect();
        at_kill.iter().all(|id| ok.contains(id.as_str()))
    }));
    assert!(
        dm.terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    // Every connection of the first run arrived (its windows were spooled or sent).
    let records = accepted(&bed.requests());
    assert_exact(&records, 9305, &totals, 6);
}

#[test]
fn a_full_spool_drops_the_oldest_batches_and_counts_them() {
    let _serial = serial();
    // The collector never comes; inventory every second fills a 64 KiB spool fast.
    let bed = Bed::new("full", "spool_max_bytes = 65536\nbatch_max_bytes = 16384\n");
    let text = std::fs::read_to_string(&bed.cfg).unwrap().replace(
        "cpu_budget = \"0%\"\n",
        "cpu_budget = \"0%\"\ninventory_interval = \"1s\"\nprocesses = \"all\"\n",
    );
    std::fs::write(&bed.cfg, text).unwrap();
    let mut dm = bed.depmap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut dropped = 0.0;
    while Instant::now() < deadline {
        dropped = metric(
            &bed.metrics(),
            "depmap_batches_dropped_total{reason=\"spool_full\"}",
        );
        if dropped > 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dropped > 0.0, "no drop counted");
    let metrics = bed.metrics();
    assert!(metric(&metrics, "depmap_records_dropped_total") > 0.0);
    assert!(
        metric(&metrics, "depmap_spool_bytes") <= 65536.0,
        "{metrics}"
    );
    let size: u64 = std::fs::read_dir(bed.spool())
        .unwrap()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    assert!(size <= 65536, "spool holds {size} bytes");
    assert!(dm.terminate(Duration::from_secs(20)).is_some());
    assert!(bed.depmap_log().contains("spool full"));
}

/// Makes a private CA, a server certificate for 127.0.0.1 and a client certificate with the
/// openssl command-line tool (test fixtures only: depmap itself uses rustls).
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        output_of(
            std::process::Command::new("openssl")
                .args(args)
                .current_dir(dir),
        );
    };
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=depmap test CA",
    ]);
    for name in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=depmap test {name}"),
        ]);
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            &*format!("{name}.csr").leak(),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &*format!("{name}.pem").leak(),
        ];
        let ext = format!("{name}.ext");
        args.extend(["-extfile", &ext]);
        run(&args);
    }
}

#[test]
fn tls_with_a_private_ca_and_a_client_certificate() {
    let _serial = serial();
    let bed = Bed::new("tls", "");
    let certs = bed.dir.0.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let c = |f: &str| certs.join(f).display().to_string();
    let text = std::fs::read_to_string(&bed.cfg).unwrap().replace(
        &format!("url = \"http://127.0.0.1:{COLLECTOR_PORT}/ingest\""),
        &format!(
            "url = \"https://127.0.0.1:{COLLECTOR_PORT}/ingest\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nformat = \"json\"\nsplit = \"table\"",
            c("ca.pem"),
            c("client.pem"),
            c("client.key")
        ),
    );
    std::fs::write(&bed.cfg, text).unwrap();
    let _collector = bed.collector(&[
        "--tls-cert",
        &c("server.pem"),
        "--tls-key",
        &c("server.key"),
        "--tls-client-ca",
        &c("ca.pem"),
    ]);
    let mut dm = bed.depmap();
    let (_srv, totals) = traffic(&bed, 9306, 4);
    let arrived = bed.wait_requests(Duration::from_secs(20), |r| {
        r.iter()
            .any(|r| r["table"] == "VMConnection" && r["status"] == 200)
    });
    assert!(arrived, "depmap log: {}", bed.depmap_log());
    assert!(bed.wait_requests(Duration::from_secs(1), |r| {
        r.iter()
            .any(|r| r["table"] == "VMConnection" && r["status"] == 200)
    }));
    assert!(
        dm.terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let requests = bed.requests();
    for r in &requests {
        // Mutual TLS: the collector saw depmap's client certificate.
        assert_eq!(r["peer"], "depmap test client", "{r}");
        assert_eq!(r["type"], "application/json");
        let table = r["table"].as_str().expect("split by table");
        for rec in r["body"].as_array().unwrap() {
            assert_eq!(rec["Type"], table);
        }
    }
    assert_exact(&accepted(&requests), 9306, &totals, 4);

    // A client certificate rustls refuses (X.509 v1: no extensions) stops depmap at start
    // with one line naming the files, instead of failing at the first send.
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "2",
            "-out",
            "v1.pem",
        ])
        .current_dir(&certs)
        .output()
        .expect("openssl");
    assert!(out.status.success());
    let text = std::fs::read_to_string(&bed.cfg)
        .unwrap()
        .replace(&c("client.pem"), &c("v1.pem"));
    std::fs::write(&bed.cfg, text).unwrap();
    let out = bed
        .ns
        .command(DEPMAP)
        .args(["run", "--config"])
        .arg(&bed.cfg)
        .output()
        .expect("depmap");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("v1.pem") && stderr.contains("client certificate"),
        "{stderr}"
    );
}

#[test]
fn a_redirect_is_never_followed_nor_counted_delivered() {
    let _serial = serial();
    let bed = Bed::new("redirect", "");
    // "Another host": a second collector the first one redirects to.
    let other_port = COLLECTOR_PORT + 1;
    let other_log = bed.dir.0.join("other.ndjson");
    let mut cmd = bed.ns.command("python3");
    cmd.arg(COLLECTOR)
        .args(["--port", &other_port.to_string(), "--log"])
        .arg(&other_log);
    let mut other = Proc::spawn(cmd);
    assert_eq!(
        other.json_line(Duration::from_secs(10))["listening"],
        other_port
    );
    let location = format!("http://127.0.0.1:{other_port}/ingest");
    let _collector = bed.collector(&["--script", "302,307,301", "--location", &location]);
    let mut dm = bed.depmap();
    let (_srv, totals) = traffic(&bed, 9306, 8);
    assert!(bed.wait_requests(Duration::from_secs(30), |r| {
        r.iter().filter(|r| r["status"] == 200).count() >= 3
    }));
    assert!(
        dm.terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    // Nothing, not even the token, went to the other host.
    let leaked = std::fs::read_to_string(&other_log).unwrap_or_default();
    assert!(leaked.is_empty(), "sent to the redirect's target: {leaked}");
    // The redirected batch stayed spooled and was sent again to the configured URL.
    let requests = bed.requests();
    let statuses: Vec<i64> = requests
        .iter()
        .map(|r| r["status"].as_i64().unwrap())
        .collect();
    assert_eq!(&statuses[..4], &[302, 307, 301, 200], "{statuses:?}");
    for r in &requests[..4] {
        assert_eq!(r["batch"], requests[0]["batch"]);
    }
    assert_exact(&accepted(&requests), 9306, &totals, 8);
    assert!(
        bed.depmap_log().contains("not followed"),
        "{}",
        bed.depmap_log()
    );
}

#[test]
fn stop_does_not_wait_for_a_hanging_collector() {
    let _serial = serial();
    let bed = Bed::new("hang", "");
    // A request timeout far longer than the grace time: stop must not wait for it.
    let text = std::fs::read_to_string(&bed.cfg)
        .unwrap()
        .replace("timeout = \"2s\"", "timeout = \"60s\"")
        .replace("shutdown_grace = \"5s\"", "shutdown_grace = \"1s\"");
    std::fs::write(&bed.cfg, text).unwrap();
    // It hangs, and keeps its own log: what it "received" never counts as delivered.
    let mut cmd = bed.ns.command("python3");
    cmd.arg(COLLECTOR)
        .args([
            "--port",
            &COLLECTOR_PORT.to_string(),
            "--delay-ms",
            "60000",
            "--log",
        ])
        .arg(bed.dir.0.join("hanging.ndjson"));
    let mut hanging = Proc::spawn(cmd);
    assert_eq!(
        hanging.json_line(Duration::from_secs(10))["listening"],
        COLLECTOR_PORT
    );
    let hanging_log = bed.dir.0.join("hanging.ndjson");
    let in_flight = || std::fs::read_to_string(&hanging_log).is_ok_and(|t| !t.is_empty());
    let mut dm = bed.depmap();
    let (_srv, totals) = traffic(&bed, 9307, 4);
    // A send is in flight (the collector logs a request before it answers).
    assert!(wait_until(Duration::from_secs(20), in_flight), "no send");
    let stopping = Instant::now();
    let status = dm.terminate(Duration::from_secs(50));
    let took = stopping.elapsed();
    eprintln!("hanging collector: stop took {took:?} (shutdown_grace 1 s, request timeout 60 s)");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    // shutdown_grace (1 s) plus the second of slack, with room for a loaded machine: far
    // below the 60 s request timeout it used to wait for.
    assert!(took < Duration::from_secs(15), "stop took {took:?}");
    drop(hanging);
    // Nothing was lost: the batch in flight stayed spooled and goes after the next start.
    let _collector = bed.collector(&[]);
    let mut again = bed.depmap();
    assert!(bed.wait_requests(Duration::from_secs(30), |r| {
        let records = accepted(r);
        conn_sums(&records, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 9307
        })
        .get("LinksTerminated")
        .copied()
            == Some(4)
    }));
    assert!(again.terminate(Duration::from_secs(20)).is_some());
    assert_exact(&accepted(&bed.requests()), 9307, &totals, 4);
}
