//! The azure_logs sink against `tests/azure/fake_ingestion.py`, a loopback server that checks
//! the Logs Ingestion API and Entra ID / IMDS token protocols as the service documents them
//! (columns against `packaging/azure/dcr.json`, 1 MB limit, tokens, api-version, gzip), in the
//! test's own network namespace. Short token lifetimes, a small request limit and an injected
//! 429 exercise renewal, 413 splitting and Retry-After.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const FAKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/azure/fake_ingestion.py");
const DCR_ID: &str = "dcr-00000000000000000000000000000000";
const TENANT: &str = "00000000-0000-0000-0000-000000000000";
const CLIENT: &str = "11111111-1111-1111-1111-111111111111";

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Starts the fake in `ns`; returns it and its port.
fn fake(ns: &Netns, outdir: &Path, args: &[&str]) -> (Proc, u16) {
    let mut cmd = ns.command("python3");
    cmd.arg(FAKE).arg("--outdir").arg(outdir).args(args);
    let mut p = Proc::spawn(cmd);
    let first = p.line(Duration::from_secs(10));
    let port = first
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("fake_ingestion: {first}"));
    (p, port)
}

fn depmap(ns: &Netns, dir: &TempDir, sink: &str) -> Proc {
    let cfg = config_file(
        dir,
        &format!(
            "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\nprocesses = \"all\"\n\
             [sink]\nkind = \"azure_logs\"\n{sink}\
             [sink.delivery]\nbatch_max_age = \"500ms\"\nmax_backoff = \"2s\"\n"
        ),
    );
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["run", "--config"]).arg(&cfg);
    Proc::spawn(cmd)
}

fn inbound_sums(records: &[Value], port: u16) -> (i64, i64, i64, i64) {
    records
        .iter()
        .filter(|r| r["Direction"] == "inbound" && r["DestinationPort"] == port)
        .fold((0, 0, 0, 0), |(e, t, s, r), x| {
            (
                e + x["LinksEstablished"].as_i64().unwrap_or(0),
                t + x["LinksTerminated"].as_i64().unwrap_or(0),
                s + x["BytesSent"].as_i64().unwrap_or(0),
                r + x["BytesReceived"].as_i64().unwrap_or(0),
            )
        })
}

#[test]
fn client_credentials_with_renewal_413_splits_and_a_429_deliver_every_record() {
    let _serial = serial();
    let ns = Netns::new("azure");
    let dir = TempDir::new("azure");
    let out = dir.0.join("fake");
    std::fs::create_dir_all(&out).unwrap();
    // Tokens live 6 s; requests over 20 kB are refused with 413; the first ingestion gets a
    // 429 with Retry-After: 1.
    let (_fake, port) = fake(
        &ns,
        &out,
        &[
            "--token-lifetime",
            "6",
            "--max-body-bytes",
            "20000",
            "--fail-next",
            "1",
            "--fail-status",
            "429",
            "--retry-after",
            "1",
        ],
    );
    std::fs::write(dir.0.join("secret"), "fake-client-secret\n").unwrap();
    let mut dm = depmap(
        &ns,
        &dir,
        &format!(
            "[sink.azure_logs]\nendpoint = \"http://127.0.0.1:{port}\"\ndcr_immutable_id = \"{DCR_ID}\"\n\
             tenant_id = \"{TENANT}\"\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"{}\"\n\
             authority = \"http://127.0.0.1:{port}\"\nmax_request_bytes = 60000\n",
            dir.0.join("secret").display()
        ),
    );
    // The connections start once depmap's baseline poll is done (its first inventory is
    // delivered after it): a connection that closes while depmap starts is older than depmap
    // and not counted (README "Attribution rules"); without this wait the test lost one of
    // its ten connections about one run in seven.
    let computers = out.join("Custom-VMComputer.ndjson");
    assert!(wait_until(Duration::from_secs(30), || !lines(&computers).is_empty()));
    let (_srv, _) = server(&ns, "127.0.0.1", 9501, 0);
    let totals = client(
        &ns,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9501",
            "--conns",
            "10",
            "--req",
            "200",
            "--resp",
            "2500",
        ],
    );
    let conns = out.join("Custom-VMConnection.ndjson");
    assert!(wait_until(Duration::from_secs(30), || inbound_sums(
        &lines(&conns),
        9501
    )
    .1 >= 10));
    // Outlive a token lifetime, so that renewal happens while sending: a second token, and
    // an ingest request after it.
    let requests_log = out.join("requests.ndjson");
    let renewed_and_used = || {
        let requests = lines(&requests_log);
        let second_token = requests
            .iter()
            .enumerate()
            .filter(|(_, r)| r["kind"] == "aad" && r["status"] == 200)
            .nth(1)
            .map(|(i, _)| i);
        second_token.is_some_and(|i| requests[i..].iter().any(|r| r["kind"] == "ingest"))
    };
    assert!(
        wait_until(Duration::from_secs(30), renewed_and_used),
        "no token renewal while sending"
    );
    let status = dm.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "depmap exit {status:?}"
    );

    let (est, term, sent, received) = inbound_sums(&lines(&conns), 9501);
    assert_eq!((est, term), (10, 10));
    assert_eq!(received, totals["sent"].as_i64().unwrap());
    assert_eq!(sent, totals["received"].as_i64().unwrap());
    // Records as the custom tables declare them: no Type, ResourceId instead of _ResourceId.
    for stream in ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"] {
        let records = lines(&out.join(format!("Custom-{stream}.ndjson")));
        assert!(!records.is_empty(), "{stream}");
        for r in &records {
            assert!(
                r.get("Type").is_none() && r.get("_ResourceId").is_none(),
                "{r}"
            );
            assert!(r["ResourceId"].is_string(), "{r}");
        }
    }
    let requests = lines(&out.join("requests.ndjson"));
    let ingest: Vec<&Value> = requests.iter().filter(|r| r["kind"] == "ingest").collect();
    assert_eq!(ingest[0]["status"], 429, "{:?}", ingest[0]);
    assert!(
        ingest.iter().any(|r| r["status"] == 413),
        "the 413 split was exercised"
    );
    assert!(
        ingest.iter().all(|r| r["status"] != 401),
        "tokens renewed before expiry"
    );
    assert!(
        ingest
            .iter()
            .all(|r| r["status"] == 204 || r["status"] == 413 || r["status"] == 429)
    );
    for r in &ingest {
        assert_eq!(r["content_encoding"], "gzip");
        assert!(
            r["client_request_id"]
                .as_str()
                .is_some_and(|id| id.len() == 36),
            "{r}"
        );
    }
    // The 429's chunk went again, first, with the same request id (accepted, or split if it
    // was over the 20 kB limit).
    assert_eq!(
        ingest[1]["client_request_id"],
        ingest[0]["client_request_id"]
    );
    assert!(ingest[1]["status"] == 204 || ingest[1]["status"] == 413);
    let tokens = requests
        .iter()
        .filter(|r| r["kind"] == "aad" && r["status"] == 200)
        .count();
    // Renewed (the fake's tokens expire within the run), and cached in between: a sink that
    // fetched a token per request would ask at least once per ingest request.
    assert!(
        tokens >= 2 && tokens < ingest.len(),
        "token renewed and cached: {tokens} token requests for {} ingest requests",
        ingest.len()
    );
    // The VMProcess inventory (every process) was larger than a request may be: split.
    let procs: BTreeSet<String> = lines(&out.join("Custom-VMProcess.ndjson"))
        .iter()
        .filter_map(|r| r["Process"].as_str().map(str::to_string))
        .collect();
    assert!(procs.len() > 20, "{} processes", procs.len());
}

#[test]
fn a_managed_identity_token_comes_from_imds_with_the_metadata_header() {
    let _serial = serial();
    let ns = Netns::new("azmi");
    let dir = TempDir::new("azmi");
    let out = dir.0.join("fake");
    std::fs::create_dir_all(&out).unwrap();
    let (_fake, port) = fake(&ns, &out, &[]);
    let mut dm = depmap(
        &ns,
        &dir,
        &format!(
            "[sink.azure_logs]\nendpoint = \"http://127.0.0.1:{port}\"\ndcr_immutable_id = \"{DCR_ID}\"\n\
             auth = \"managed_identity\"\nimds_endpoint = \"http://127.0.0.1:{port}\"\n"
        ),
    );
    let computers = out.join("Custom-VMComputer.ndjson");
    assert!(wait_until(Duration::from_secs(20), || !lines(&computers).is_empty()));
    assert!(
        dm.terminate(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
    let requests = lines(&out.join("requests.ndjson"));
    assert!(
        requests
            .iter()
            .any(|r| r["kind"] == "imds" && r["status"] == 200)
    );
    assert!(requests.iter().all(|r| r["kind"] != "aad"));
    assert!(
        requests
            .iter()
            .all(|r| r["kind"] != "imds" || r["status"] == 200),
        "{requests:?}"
    );
}

/// The packaging's self-test (`tests/azure/selftest.py`): the DCR and table definitions agree
/// column by column, the fake ingestion service behaves as the real one on every path the sink
/// meets, and real `depmap once` records pass it — run here so it cannot rot.
#[test]
fn the_azure_packaging_self_test_passes() {
    let _serial = serial();
    let ns = Netns::new("azself");
    let selftest = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/azure/selftest.py");
    let mut cmd = ns.command("python3");
    cmd.args([selftest, "--depmap", DEPMAP]);
    assert!(
        run_bounded(&mut cmd, Duration::from_secs(120)),
        "tests/azure/selftest.py failed (run it by hand for its report)"
    );
}
