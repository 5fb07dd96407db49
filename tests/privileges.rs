//! depmap without root: as `nobody` with exactly the capabilities of systemd/depmap.service
//! (CAP_DAC_READ_SEARCH + CAP_SYS_PTRACE for /proc, CAP_BPF + CAP_PERFMON for the kernel event
//! source; ambient, nothing else in the bounding set) it still attributes root's sockets and
//! times every exchange from events; with no capability at all, or with the event source off,
//! it says what is missing, what that costs and how to fix it, and keeps reporting what it
//! can.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// `depmap once` as nobody with `caps` (e.g. "+dac_read_search,+sys_ptrace", or "" for none),
/// while a root client talks to a root server; returns (capability report, records).
fn once_as_nobody(tag: &str, caps: &str, collect: &str) -> (String, Vec<Value>) {
    let ns = Netns::new(tag);
    let dir = TempDir::new(tag);
    let state = dir.0.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    // DNS capture asked for: without CAP_NET_RAW (the unit does not grant it) it must say so.
    let cfg = config_file(
        &dir,
        &format!("[collect]\n{collect}[enrich]\ndns_capture = true\n"),
    );
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (_srv, _) = server(&ns, "127.0.0.1", 9601, 0);
    let set = format!("-all{}{caps}", if caps.is_empty() { "" } else { "," });
    let mut cmd = ns.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
        "--",
        DEPMAP,
        "once",
        "--duration",
        "4s",
        "--format",
        "ndjson",
        "--config",
    ])
    .arg(&cfg)
    .env("DEPMAP_LOG", "depmap=debug");
    let log = dir.0.join("stderr");
    let mut once = Proc::spawn_logging(
        cmd,
        std::process::Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    // A root client holding one connection for ≈2 s inside the window, once it is open.
    let open = || text_of(&log).contains("the window is open");
    assert!(
        wait_until(Duration::from_secs(20), open),
        "{}",
        text_of(&log)
    );
    let totals = client(
        &ns,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "9601",
            "--conns",
            "1",
            "--exchanges",
            "8",
            "--req",
            "100",
            "--resp",
            "1000",
            "--think-ms",
            "250",
        ],
    );
    assert_eq!(totals["conns"], 1);
    let status = once.wait_exit(Duration::from_secs(30));
    let report = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "depmap once as nobody: {status:?} {report}"
    );
    let records = parse(&once.seen);
    (report, records)
}

fn inbound(records: &[Value]) -> Vec<&Value> {
    of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| r["Direction"] == "inbound" && r["DestinationPort"] == 9601)
        .collect()
}

/// The unit's four capabilities, nothing else.
const UNIT_CAPS: &str = "+dac_read_search,+sys_ptrace,+bpf,+perfmon";

#[test]
fn as_nobody_with_the_units_capabilities_roots_sockets_are_attributed() {
    let _serial = serial();
    let (report, records) = once_as_nobody("caps", UNIT_CAPS, "");
    assert!(
        report.contains("[ok]   /proc/PID/fd readable for all"),
        "{report}"
    );
    // CAP_BPF and CAP_PERFMON are all the event source needs.
    assert!(
        report.contains("[ok]   kernel event source (eBPF)"),
        "{report}"
    );
    assert!(
        report.contains("[ok]   response times: measured by kernel events"),
        "{report}"
    );
    let conns = inbound(&records);
    assert!(!conns.is_empty(), "{records:?}");
    let mut responses = 0;
    for r in conns {
        assert!(is_python(&r["ProcessName"]), "{r}");
        responses += r["Responses"].as_i64().unwrap_or(0);
    }
    // Every one of the client's 8 exchanges, timed by events.
    assert_eq!(responses, 8, "{records:?}");
}

#[test]
fn with_the_event_source_off_depmap_polls_and_says_so() {
    let _serial = serial();
    let (report, records) = once_as_nobody("evoff", UNIT_CAPS, "events = \"off\"\n");
    assert!(
        report.contains("kernel event source (eBPF): off (collect.events = \"off\")")
            && report.contains(
                "missing: the processes of connections that open and close between two dumps"
            )
            && report.contains("response times: tcp_info estimates"),
        "{report}"
    );
    let conns = inbound(&records);
    assert!(!conns.is_empty(), "{records:?}");
    for r in conns {
        assert!(is_python(&r["ProcessName"]), "{r}");
    }
}

#[test]
fn as_nobody_without_capabilities_depmap_says_what_is_missing_and_keeps_reporting() {
    let _serial = serial();
    let (report, records) = once_as_nobody("nocaps", "", "");
    assert!(report.contains("/proc/PID/fd readable for"), "{report}");
    assert!(
        report.contains("CAP_DAC_READ_SEARCH") && report.contains("CAP_SYS_PTRACE"),
        "{report}"
    );
    assert!(report.contains("missing: Process/ProcessName"), "{report}");
    // The event source: what is missing, what it costs, the fix.
    assert!(
        report.contains("kernel event source (eBPF): ")
            && report.contains("this process lacks CAP_BPF and CAP_PERFMON")
            && report.contains("fix: Linux 5.8 or later with BTF")
            && report.contains("response times: tcp_info estimates"),
        "{report}"
    );
    assert!(
        report.contains("passive DNS capture: needs CAP_NET_RAW")
            && report.contains("missing: RemoteDnsQuestions"),
        "{report}"
    );
    // The connection is still reported, without a process.
    let conns = inbound(&records);
    assert!(!conns.is_empty(), "{records:?}");
    for r in conns {
        assert!(r["Process"].is_null(), "{r}");
        assert!(r["BytesSent"].as_i64().unwrap_or(0) > 0, "{r}");
    }
}

#[test]
fn other_namespaces_need_cap_sys_admin_and_say_so() {
    let _serial = serial();
    // The unit's capabilities: the namespaces are found (CAP_SYS_PTRACE) but not entered.
    let (report, records) = once_as_nobody("nsdeny", UNIT_CAPS, "namespaces = \"all\"\n");
    assert!(
        report.contains("[--]   other network namespaces (containers): none could be entered")
            && report.contains("this process lacks CAP_SYS_ADMIN")
            && report.contains("missing: the connections and listening ports of processes in other network namespaces"),
        "{report}"
    );
    // Its own namespace is still read.
    assert!(!inbound(&records).is_empty(), "{records:?}");
    // With the README drop-in's capability added: followed.
    let (report, records) = once_as_nobody(
        "nsallow",
        &format!("{UNIT_CAPS},+sys_admin"),
        "namespaces = \"all\"\n",
    );
    assert!(
        report.contains("[ok]   other network namespaces (containers): ")
            && report.contains("other network namespaces followed")
            && !report.contains("none could be entered"),
        "{report}"
    );
    assert!(!inbound(&records).is_empty(), "{records:?}");
}

#[test]
fn udp_flows_need_cap_net_admin_and_say_so() {
    let _serial = serial();
    let (report, _) = once_as_nobody("udpdeny", UNIT_CAPS, "");
    assert!(
        report.contains("[ok]   UDP bound ports (sock_diag)")
            && report.contains("[--]   UDP flows (eBPF cgroup programs): ")
            && report.contains("CAP_NET_ADMIN"),
        "{report}"
    );
    let (report, _) = once_as_nobody("udpallow", &format!("{UNIT_CAPS},+net_admin"), "");
    assert!(
        report.contains("[ok]   UDP flows (eBPF cgroup programs)"),
        "{report}"
    );
}
