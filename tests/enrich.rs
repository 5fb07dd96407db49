//! Enrichment against known sources, in the test's own network namespace: an indicator file
//! that marks one test server's address exactly and another's by a CIDR range; the
//! VMConnection records must carry every threat column of the matching indicator, and none
//! where nothing matches.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn indicators_mark_the_servers_by_address_and_by_range() {
    let _serial = serial();
    let ns = Netns::new("threat");
    let dir = TempDir::new("threat");
    let csv = dir.0.join("indicators.csv");
    std::fs::write(
        &csv,
        "indicator,threat_type,description,tlp_level,confidence,severity,first_reported,last_reported,is_active\n\
         127.0.0.2,C2,Known command and control,Red,90,5,2026-01-02T03:04:05Z,2026-11-01T00:00:00Z,true\n\
         this line is malformed,,,,,,,,\n",
    )
    .unwrap();
    let jsonl = dir.0.join("ranges.jsonl");
    std::fs::write(
        &jsonl,
        "{\"indicator\": \"127.0.0.4/30\", \"threat_type\": \"Botnet\", \"description\": \"A botnet range\", \"tlp_level\": \"Amber\", \"confidence\": \"60\", \"severity\": 3, \"first_reported\": \"2025-05-05T00:00:00Z\", \"last_reported\": \"2026-10-10T00:00:00Z\", \"is_active\": \"false\"}\n",
    )
    .unwrap();
    let mut dm = Depmap::start_with(
        &ns,
        &format!(
            "[enrich]\nindicator_files = [\"{}\", \"{}\"]\n",
            csv.display(),
            jsonl.display()
        ),
    );
    let (_a, _) = server(&ns, "127.0.0.2", 9701, 0);
    let (_b, _) = server(&ns, "127.0.0.5", 9702, 0);
    for host in ["127.0.0.2", "127.0.0.5"] {
        let t = client(
            &ns,
            &[
                "--host",
                host,
                "--port",
                if host.ends_with('2') { "9701" } else { "9702" },
                "--conns",
                "2",
            ],
        );
        assert_eq!(t["conns"], 2);
    }
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        [9701, 9702].iter().all(|p| {
            conn_sums(r, |x| {
                x["Direction"] == "outbound" && x["DestinationPort"] == *p
            })
            .get("LinksTerminated")
            .copied()
                == Some(2)
        })
    }));
    let records = dm.stop();
    let conns: Vec<&Value> = of_type(&records, "VMConnection");
    let outbound = |port: i64| -> Vec<&Value> {
        conns
            .iter()
            .copied()
            .filter(|r| r["Direction"] == "outbound" && r["DestinationPort"] == port)
            .collect()
    };
    for r in outbound(9701) {
        assert_eq!(r["MaliciousIp"], "127.0.0.2", "{r}");
        assert_eq!(r["IndicatorThreatType"], "C2");
        assert_eq!(r["Description"], "Known command and control");
        assert_eq!(r["TLPLevel"], "Red");
        assert_eq!(r["Confidence"], "90");
        assert_eq!(r["Severity"], 5);
        assert_eq!(r["FirstReportedDateTime"], "2026-01-02T03:04:05Z");
        assert_eq!(r["LastReportedDateTime"], "2026-11-01T00:00:00Z");
        assert_eq!(r["IsActive"], "true");
    }
    for r in outbound(9702) {
        assert_eq!(r["MaliciousIp"], "127.0.0.5", "{r}");
        assert_eq!(r["IndicatorThreatType"], "Botnet");
        assert_eq!(r["TLPLevel"], "Amber");
        assert_eq!(r["Severity"], 3);
        assert_eq!(r["IsActive"], "false");
    }
    assert!(!outbound(9701).is_empty() && !outbound(9702).is_empty());
    // The servers' inbound records: the remote end (127.0.0.1) is in no indicator.
    for r in conns.iter().filter(|r| r["Direction"] == "inbound") {
        assert!(
            r["MaliciousIp"].is_null() && r["IndicatorThreatType"].is_null(),
            "{r}"
        );
    }
}

const IMDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/imds.py");
/// research's IMDS sample (../shared/reference/imds-instance-sample.json), kept with the tests.
const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/peers/imds-instance-sample.json"
);

fn imds(ns: &Netns, log: &std::path::Path) -> (Proc, u16) {
    let mut cmd = ns.command("python3");
    cmd.arg(IMDS)
        .arg("--instance")
        .arg(SAMPLE)
        .arg("--log")
        .arg(log);
    let mut p = Proc::spawn(cmd);
    let port = p.json_line(Duration::from_secs(10))["listening"]
        .as_u64()
        .expect("port") as u16;
    (p, port)
}

#[test]
fn azure_metadata_fills_the_computer_exactly_as_the_sample_says() {
    let _serial = serial();
    let ns = Netns::new("imds");
    let dir = TempDir::new("imds");
    let log = dir.0.join("imds.log");
    let (_imds, port) = imds(&ns, &log);
    let dm = Depmap::start_with(
        &ns,
        &format!(
            "[enrich]\nazure_metadata = \"always\"\nimds_endpoint = \"http://127.0.0.1:{port}\"\n"
        ),
    );
    let records = dm.stop();
    let sample: Value = serde_json::from_str(&std::fs::read_to_string(SAMPLE).unwrap()).unwrap();
    let c = &sample["compute"];
    let computers = of_type(&records, "VMComputer");
    assert!(!computers.is_empty());
    for r in computers {
        assert_eq!(r["HostingProvider"], "azure");
        for (column, field) in [
            ("AzureResourceName", "name"),
            ("AzureLocation", "location"),
            ("AzureResourceGroup", "resourceGroupName"),
            ("AzureSubscriptionId", "subscriptionId"),
            ("AzureVmId", "vmId"),
            ("AzureSize", "vmSize"),
            ("AzureImagePublisher", "publisher"),
            ("AzureImageOffering", "offer"),
            ("AzureImageSku", "sku"),
            ("AzureImageVersion", "version"),
            ("AzureFaultDomain", "platformFaultDomain"),
            ("AzureUpdateDomain", "platformUpdateDomain"),
            ("AzureVmScaleSetName", "vmScaleSetName"),
        ] {
            assert_eq!(r[column], c[field], "{column}");
        }
        assert_eq!(
            r["AzureVmScaleSetResourceId"],
            c["virtualMachineScaleSet"]["id"]
        );
        assert_eq!(r["_ResourceId"], c["resourceId"]);
    }
    let requests = std::fs::read_to_string(&log).unwrap();
    let first: Value = serde_json::from_str(requests.lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "/metadata/instance");
    assert_eq!(first["metadata"], "true");
    assert!(first["forwarded"].is_null());
}

#[test]
fn off_azure_depmap_sends_nothing_to_the_metadata_address() {
    let _serial = serial();
    let ns = Netns::new("noimds");
    let dir = TempDir::new("noimds");
    let log = dir.0.join("imds.log");
    let (_imds, port) = imds(&ns, &log);
    // The default (auto) on this machine, which is not an Azure VM, with the endpoint pointed
    // at a server that would answer.
    let dm = Depmap::start_with(
        &ns,
        &format!("[enrich]\nimds_endpoint = \"http://127.0.0.1:{port}\"\n"),
    );
    let records = dm.stop();
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "");
    for r in of_type(&records, "VMComputer") {
        assert!(
            r["HostingProvider"].is_null() && r["AzureVmId"].is_null(),
            "{r}"
        );
        assert!(r["_ResourceId"].as_str().unwrap().starts_with("m-"));
    }
}

#[test]
fn a_geolocation_database_places_the_remote_ends() {
    let _serial = serial();
    let python = python_venv("mmdb-venv", &["mmdb-writer==0.2.5", "netaddr==1.3.0"]);
    let dir = TempDir::new("geo");
    let db = dir.0.join("test.mmdb");
    let made = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/geo/make_mmdb.py"
        ))
        .arg(&db)
        .status()
        .expect("make_mmdb.py");
    assert!(made.success());
    let ns = Netns::new("geo");
    let mut dm = Depmap::start_with(
        &ns,
        &format!("[enrich]\ngeoip_database = \"{}\"\n", db.display()),
    );
    let (_a, _) = server(&ns, "127.0.0.9", 9801, 0);
    let (_b, _) = server(&ns, "127.0.0.13", 9802, 0);
    for (host, port) in [("127.0.0.9", "9801"), ("127.0.0.13", "9802")] {
        assert_eq!(
            client(&ns, &["--host", host, "--port", port, "--conns", "1"])["conns"],
            1
        );
    }
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        [9801, 9802].iter().all(|p| {
            conn_sums(r, |x| {
                x["Direction"] == "outbound" && x["DestinationPort"] == *p
            })
            .get("LinksTerminated")
            .copied()
                == Some(1)
        })
    }));
    let records = dm.stop();
    let conns = of_type(&records, "VMConnection");
    let out = |port: i64| {
        conns
            .iter()
            .copied()
            .filter(move |r| r["Direction"] == "outbound" && r["DestinationPort"] == port)
    };
    assert!(out(9801).count() > 0 && out(9802).count() > 0);
    for r in out(9801) {
        assert_eq!(r["RemoteCountry"], "Norway", "{r}");
        assert_eq!(r["RemoteLatitude"], 59.91);
        assert_eq!(r["RemoteLongitude"], 10.75);
    }
    for r in out(9802) {
        assert_eq!(r["RemoteCountry"], "JP", "{r}");
        assert_eq!(r["RemoteLatitude"], 35.68);
    }
    // 127.0.0.1 (the servers' remote end) is in no network of the database.
    for r in conns.iter().filter(|r| r["Direction"] == "inbound") {
        assert!(
            r["RemoteCountry"].is_null() && r["RemoteLatitude"].is_null(),
            "{r}"
        );
    }
}

const DNS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dns.py");

/// `/etc/netns/<ns>/resolv.conf`, which `ip netns exec` mounts over /etc/resolv.conf: the
/// namespace's programs ask the test's DNS server. Removed on drop.
struct Resolver(std::path::PathBuf);

impl Resolver {
    fn new(ns: &Netns) -> Resolver {
        let dir = std::path::PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("/etc/netns dir");
        std::fs::write(
            dir.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:2\n",
        )
        .expect("resolv.conf");
        Resolver(dir)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn dns_answers_name_the_remote_end_with_its_question_and_cname_chain() {
    let _serial = serial();
    let ns = Netns::new("dns");
    let _resolver = Resolver::new(&ns);
    let mut dns = Proc::spawn({
        let mut c = ns.command("python3");
        c.arg(DNS)
            .arg("api.depmap.test=edge.cdn.depmap.test,node7.cdn.depmap.test,127.0.0.21");
        c
    });
    assert_eq!(dns.json_line(Duration::from_secs(10))["listening"], 53);
    let mut dm = Depmap::start_with(&ns, "[enrich]\ndns_capture = true\n");
    let (_srv, _) = server(&ns, "127.0.0.21", 9901, 0);
    // The client connects by name: the resolver asks the test's DNS server.
    let t = client(
        &ns,
        &[
            "--host",
            "api.depmap.test",
            "--port",
            "9901",
            "--conns",
            "2",
        ],
    );
    assert_eq!(t["conns"], 2);
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        conn_sums(r, |x| {
            x["Direction"] == "outbound" && x["DestinationPort"] == 9901
        })
        .get("LinksTerminated")
        .copied()
            == Some(2)
    }));
    let records = dm.stop();
    let out: Vec<&Value> = of_type(&records, "VMConnection")
        .into_iter()
        .filter(|r| r["Direction"] == "outbound" && r["DestinationPort"] == 9901)
        .collect();
    assert!(!out.is_empty());
    for r in out {
        assert_eq!(r["DestinationIp"], "127.0.0.21");
        assert_eq!(r["RemoteDnsQuestions"], "[\"api.depmap.test\"]", "{r}");
        assert_eq!(
            r["RemoteDnsCanonicalNames"], "[\"edge.cdn.depmap.test\",\"node7.cdn.depmap.test\"]",
            "{r}"
        );
    }
    // No DNS answer named the servers' remote end (127.0.0.1).
    for r in of_type(&records, "VMConnection") {
        if r["Direction"] == "inbound" && r["DestinationPort"] == 9901 {
            assert!(r["RemoteDnsQuestions"].is_null(), "{r}");
        }
    }
}

/// O_NONBLOCK (Linux): opening a FIFO for writing fails at once while nobody reads it.
const O_NONBLOCK: i32 = 0o4000;

const HOSTILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dns_hostile.py");

/// depmap with DNS capture and its metrics endpoint on 127.0.0.1:`port` in `ns`.
fn capturing(ns: &Netns, port: u16) -> Depmap {
    Depmap::start_with(
        ns,
        &format!("[enrich]\ndns_capture = true\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
}

/// Waits until the metric `name` reaches `want`; its last value.
fn metric_reaches(ns: &Netns, port: u16, name: &str, want: u64) -> u64 {
    let mut seen = 0;
    wait_until(Duration::from_secs(20), || {
        seen = metric_value(&metrics_text(ns, port), name);
        seen >= want
    });
    seen
}

#[test]
fn dns_answers_nobody_asked_for_name_nothing() {
    let _serial = serial();
    let ns = Netns::new("dnsforge");
    let mut dm = capturing(&ns, 9471);
    let (_bank, _) = server(&ns, "127.0.0.77", 9903, 0);
    let (_ok, _) = server(&ns, "127.0.0.78", 9903, 0);
    let mut forger = Proc::spawn({
        let mut c = ns.command("python3");
        c.args([HOSTILE, "forge"]);
        c
    });
    let sent = forger.json_line(Duration::from_secs(20));
    assert_eq!(sent["unsolicited"], 4);
    // The capture has read all six answers once the control's is learned.
    assert_eq!(
        metric_reaches(&ns, 9471, "depmap_dns_answers_learned_total", 1),
        1
    );
    let text = metrics_text(&ns, 9471);
    assert_eq!(
        metric_value(&text, "depmap_dns_answers_unsolicited_total"),
        4,
        "{text}"
    );
    for host in ["127.0.0.77", "127.0.0.78"] {
        let t = client(&ns, &["--host", host, "--port", "9903", "--conns", "1"]);
        assert_eq!(t["conns"], 1);
    }
    assert!(dm.wait_terminated("outbound", 9903, 2));
    let records = dm.stop();
    let names = |ip: &str| -> Vec<Value> {
        of_type(&records, "VMConnection")
            .into_iter()
            .filter(|r| r["Direction"] == "outbound" && r["DestinationIp"] == ip)
            .map(|r| r["RemoteDnsQuestions"].clone())
            .collect()
    };
    let bank = names("127.0.0.77");
    assert!(
        !bank.is_empty() && bank.iter().all(Value::is_null),
        "{bank:?}"
    );
    let ok = names("127.0.0.78");
    assert!(
        !ok.is_empty() && ok.iter().all(|q| q == "[\"ok.depmap.test\"]"),
        "{ok:?}"
    );
}

/// VmHWM (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = text_of(std::path::Path::new(&format!("/proc/{pid}/status")));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn an_amplifying_dns_answer_costs_kilobytes_not_gigabytes() {
    let _serial = serial();
    let ns = Netns::new("dnsamp");
    let dm = capturing(&ns, 9472);
    let before = peak_rss_kib(dm.proc.child.id());
    // 8 answers of 64 KB, each 2,700 addresses under a 1,500-link chain to a long name: a
    // copy of the chain per address was 1.1 GB per answer. One at a time, each learned
    // before the next (a burst of them may overflow the capture's buffer: counted, not here).
    for n in 0..8u64 {
        let mut amp = Proc::spawn({
            let mut c = ns.command("python3");
            c.args([HOSTILE, "amplify", &n.to_string()]);
            c
        });
        let sent = amp.json_line(Duration::from_secs(30));
        assert!(sent["bytes"].as_u64().unwrap_or(0) > 60_000, "{sent}");
        assert_eq!(
            metric_reaches(&ns, 9472, "depmap_dns_answers_learned_total", n + 1),
            n + 1
        );
    }
    let text = metrics_text(&ns, 9472);
    let cache = metric_value(&text, "depmap_dns_cache_bytes");
    let peak = peak_rss_kib(dm.proc.child.id());
    eprintln!(
        "dns amplification: cache {cache} bytes; peak RSS {before} KiB before, {peak} KiB after 8 answers"
    );
    // 21,600 addresses: ~96 bytes each plus the names once per answer.
    assert!(
        cache > 21_600 * 96 && cache < 21_600 * 96 + 8 * 4096,
        "{cache}"
    );
    assert_eq!(
        metric_value(&text, "depmap_dns_addresses_not_kept_total"),
        0
    );
    assert_eq!(metric_value(&text, "depmap_dns_dropped_packets_total"), 0);
    assert!(
        peak < before + 64 * 1024,
        "peak RSS {peak} KiB (from {before} KiB)"
    );
    dm.stop();
}

#[test]
fn reverse_lookups_name_addresses_no_answer_was_seen_for() {
    let _serial = serial();
    let ns = Netns::new("rdns");
    let _resolver = Resolver::new(&ns);
    // Not a loopback address: resolvers answer 127.in-addr.arpa themselves (RFC 6761/6303).
    ip(&ns, &["addr", "add", "10.86.0.22/32", "dev", "lo"]);
    let mut dns = Proc::spawn({
        let mut c = ns.command("python3");
        c.arg(DNS).arg("10.86.0.22~rev.depmap.test");
        c
    });
    assert_eq!(dns.json_line(Duration::from_secs(10))["listening"], 53);
    let mut dm = Depmap::start_with(&ns, "[enrich]\nreverse_lookups = true\n");
    let (_srv, _) = server(&ns, "10.86.0.22", 9902, 0);
    // A connection by address, held across windows: the lookup answers after the first.
    let held = spawn_peer(
        &ns,
        "client",
        &[
            "--host",
            "10.86.0.22",
            "--port",
            "9902",
            "--conns",
            "1",
            "--exchanges",
            "20",
            "--think-ms",
            "300",
        ]
        .map(String::from),
    );
    let named = |r: &[Value]| {
        r.iter().any(|x| {
            x["Type"] == "VMConnection"
                && x["Direction"] == "outbound"
                && x["DestinationPort"] == 9902
                && x["RemoteDnsCanonicalNames"] == "[\"rev.depmap.test\"]"
        })
    };
    assert!(
        dm.wait_for(Duration::from_secs(20), named),
        "no PTR name in the records"
    );
    let _ = finish(held, Duration::from_secs(20));
    let records = dm.stop();
    for r in of_type(&records, "VMConnection") {
        if r["DestinationPort"] == 9902 && r["Direction"] == "outbound" {
            // No answer carried a question for it.
            assert!(r["RemoteDnsQuestions"].is_null(), "{r}");
        }
    }
}

/// Writes `text` into the FIFO at `path` once its reader (depmap's loader) has it open
/// (bounded wait), and closes it: the reader sees the end of the file.
fn feed_fifo(path: &std::path::Path, text: &[u8]) {
    let mut writer = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            writer = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(O_NONBLOCK)
                .open(path)
                .ok();
            writer.is_some()
        }),
        "nobody opened {} for reading",
        path.display()
    );
    if let Some(mut w) = writer {
        w.write_all(text).expect("write the FIFO");
    }
}

/// The distinct windows (TimeGenerated) with a VMBoundPort record of `port`.
fn windows_of(records: &[Value], port: i64) -> std::collections::BTreeSet<String> {
    of_type(records, "VMBoundPort")
        .into_iter()
        .filter(|r| r["Port"] == port)
        .map(|r| r["TimeGenerated"].to_string())
        .collect()
}

#[test]
fn a_huge_indicator_file_is_capped_and_its_reload_never_stops_the_poll_loop() {
    let _serial = serial();
    let ns = Netns::new("bigthreat");
    let dir = TempDir::new("bigthreat");
    // 400,000 distinct networks in 36 MB; the cap takes 150,000 of them.
    let csv = dir.0.join("feed.csv");
    let mut text = String::from(
        "indicator,threat_type,description,tlp_level,confidence,severity,first_reported,last_reported,is_active\n",
    );
    for i in 0..400_000u32 {
        let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i);
        text.push_str(&format!(
            "{ip},Botnet,Seen in campaign {},Amber,80,3,2026-01-01T00:00:00Z,2026-11-01T00:00:00Z,true\n",
            i % 100
        ));
    }
    std::fs::write(&csv, &text).unwrap();
    drop(text);
    let log = dir.0.join("depmap.log");
    let mut dm = Depmap::start_logging(
        &ns,
        &format!(
            "[enrich]\nindicator_files = [\"{}\"]\nmax_indicators = 150000\n",
            csv.display()
        ),
        &log,
    );
    let loaded = text_of(&log);
    assert!(
        loaded.contains("indicators=150000") && loaded.contains("over_max_indicators=250000"),
        "{loaded}"
    );
    assert!(loaded.contains("indicators beyond enrich.max_indicators not loaded"));
    let peak = peak_rss_kib(dm.proc.child.id());
    eprintln!("indicators: 150,000 of 400,000 loaded (36 MB file); peak RSS {peak} KiB");
    assert!(peak < 256 * 1024, "peak RSS {peak} KiB");

    // The file becomes a FIFO nobody writes: a reload reading it on the poll loop stopped
    // every poll (as a 7 s load did). The windows go on while the reload waits.
    let (_srv, _) = server(&ns, "127.0.0.9", 9704, 0);
    let fifo = dir.0.join("feed.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::rename(&fifo, &csv).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_dir(format!(
            "/proc/{}/task",
            dm.proc.child.id()
        ))
        .map(|tasks| tasks
            .flatten()
            .any(|t| { text_of(&t.path().join("comm")).trim() == "indicators" }))
        .unwrap_or(false)),
        "the reload runs on its own thread"
    );
    let before = windows_of(&parse(&dm.proc.seen), 9704).len();
    assert!(
        dm.wait_for(Duration::from_secs(20), |r| windows_of(r, 9704).len()
            >= before + 3),
        "windows stopped while the reload waited"
    );
    // The reload lands when the FIFO is written: the new single indicator replaces the cap.
    feed_fifo(&csv, b"indicator,threat_type\n127.0.0.9,C2\n");
    assert!(
        wait_until(Duration::from_secs(20), || text_of(&log)
            .contains("indicators=1 ")),
        "{}",
        text_of(&log)
    );
    let t = client(
        &ns,
        &["--host", "127.0.0.9", "--port", "9704", "--conns", "1"],
    );
    assert_eq!(t["conns"], 1);
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        of_type(r, "VMConnection")
            .iter()
            .any(|x| x["DestinationPort"] == 9704 && x["MaliciousIp"] == "127.0.0.9")
    }));

    // A reload (SIGHUP) naming another feed, a FIFO nobody writes yet: the poll loop goes on
    // while it loads, and the loaded indicator keeps serving until the new ones land.
    let fifo2 = dir.0.join("feed2.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo2)
            .status()
            .unwrap()
            .success()
    );
    let cfg = dm.config_path();
    let text = text_of(&cfg).replace(&csv.display().to_string(), &fifo2.display().to_string());
    std::fs::write(&cfg, text).unwrap();
    let pid = dm.proc.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        wait_until(Duration::from_secs(10), || text_of(&log)
            .contains("configuration reloaded")),
        "{}",
        text_of(&log)
    );
    let before = windows_of(&parse(&dm.proc.seen), 9704).len();
    assert!(
        dm.wait_for(Duration::from_secs(20), |r| windows_of(r, 9704).len()
            >= before + 3),
        "windows stopped while the reloaded feed loaded"
    );
    let loads = || {
        text_of(&log)
            .matches("malicious-IP indicators loaded")
            .count()
    };
    assert_eq!(loads(), 2, "the reload's load has not landed yet");
    feed_fifo(&fifo2, b"indicator,threat_type\n127.0.0.9,Botnet\n");
    assert!(
        wait_until(Duration::from_secs(20), || loads() == 3),
        "{}",
        text_of(&log)
    );
    dm.stop();
}
