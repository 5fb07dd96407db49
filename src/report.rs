//! What `depmap once` prints for people: the capability report and aligned tables.

use std::fmt::Write;

use serde_json::Value;

use crate::agent::Capabilities;
use crate::records::Record;

/// The capability report: what depmap can see on this host, and what is missing and why.
pub fn capabilities(c: &Capabilities) -> String {
    let mut out = String::from("depmap capability report\n");
    let line = |out: &mut String, name: &str, r: &Result<(), String>, cost: &str, fix: &str| {
        let _ = match r {
            Ok(()) => writeln!(out, "  [ok]   {name}"),
            Err(e) => writeln!(
                out,
                "  [--]   {name}: {e}\n         missing: {cost}\n         fix: {fix}"
            ),
        };
    };
    line(
        &mut out,
        "sock_diag IPv4 dump (tcp_info)",
        &c.sock_diag,
        "all connection records",
        "a kernel with inet_diag and tcp_diag (`modprobe tcp_diag`); no seccomp/LSM policy denying NETLINK_SOCK_DIAG",
    );
    line(
        &mut out,
        "sock_diag IPv6 dump",
        &c.sock_diag_v6,
        "IPv6 connections and ports",
        "`modprobe tcp_diag` with IPv6 enabled, or set collect.ipv6 = false to silence this",
    );
    line(
        &mut out,
        "TCP destroy notifications",
        &c.destroy_events,
        "connections shorter than one poll, and the bytes of a socket's last poll interval",
        "Linux 4.9 or later with inet_diag; inside a container, the host's network namespace",
    );
    line(
        &mut out,
        "proc connector (process events)",
        &c.proc_connector,
        "nothing; new sockets are attributed by a wider /proc walk",
        "optional: run in the initial network namespace (the kernel sends process events only there)",
    );
    let (readable, total) = c.proc_fd_readable;
    if readable == total {
        let _ = writeln!(
            out,
            "  [ok]   /proc/PID/fd readable for all {total} processes"
        );
    } else {
        let _ = writeln!(
            out,
            "  [--]   /proc/PID/fd readable for {readable} of {total} processes\n         missing: Process/ProcessName of the sockets the others hold (and their VMProcess records; inbound ones still credited by the listener rule when a readable process listens)\n         fix: run as root, or grant both CAP_DAC_READ_SEARCH (to open /proc/PID/fd) and CAP_SYS_PTRACE (to read its links, exe and cwd) — systemd/depmap.service does"
        );
    }
    if c.destroy_events.is_ok() && c.destroy_rcvbuf < crate::collect::destroy::RCVBUF {
        let _ = writeln!(
            out,
            "  [--]   destroy-notification buffer {} KiB (8 MiB asked; without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max)\n         missing: in a burst of closes beyond the buffer, the notifications the kernel drops (counted as destroy_overruns; those sockets' bytes after their last poll)\n         fix: sysctl -w net.core.rmem_max=8388608 (the packages install /usr/lib/sysctl.d/60-depmap.conf)",
            c.destroy_rcvbuf / 1024
        );
    }
    let _ = match &c.dns_capture {
        Ok(()) => writeln!(out, "  [ok]   passive DNS capture"),
        Err(why) => writeln!(
            out,
            "  [--]   passive DNS capture: {why}\n         missing: RemoteDnsQuestions, RemoteDnsCanonicalNames\n         fix: enrich.dns_capture = true with CAP_NET_RAW (under systemd: a drop-in adding CAP_NET_RAW to CapabilityBoundingSet and AmbientCapabilities)"
        ),
    };
    let _ = match &c.azure_metadata {
        Ok(found) => writeln!(out, "  [ok]   Azure Instance Metadata: {found}"),
        Err(why) => writeln!(
            out,
            "  [--]   Azure Instance Metadata: {why}\n         missing: HostingProvider, the Azure* columns of VMComputer; _ResourceId is the machine id\n         fix: on an Azure VM, nothing (it is recognised); elsewhere it does not apply (enrich.azure_metadata = \"always\" forces it)"
        ),
    };
    out
}

/// Columns shown per table in `--format table` (all columns are in NDJSON).
fn columns(table: &str) -> &'static [&'static str] {
    match table {
        "VMComputer" => &[
            "Computer",
            "OperatingSystemFullName",
            "Cpus",
            "PhysicalMemoryMB",
            "VirtualizationState",
            "Ipv4Addresses",
            "Machine",
        ],
        "VMProcess" => &[
            "Process",
            "ExecutableName",
            "FirstPid",
            "UserName",
            "Role",
            "ProductName",
            "CommandLine",
        ],
        "VMBoundPort" => &[
            "ProcessName",
            "Ip",
            "Port",
            "IsWildcardBind",
            "LinksEstablished",
            "LinksTerminated",
            "LinksLive",
            "BytesSent",
            "BytesReceived",
        ],
        _ => &[
            "Direction",
            "ProcessName",
            "SourceIp",
            "DestinationIp",
            "DestinationPort",
            "LinksEstablished",
            "LinksTerminated",
            "LinksLive",
            "BytesSent",
            "BytesReceived",
        ],
    }
}

fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    };
    if s.chars().count() > 48 {
        let cut: String = s.chars().take(47).collect();
        format!("{cut}…")
    } else {
        s
    }
}

/// One aligned table of the records of `table`.
pub fn table(table: &str, records: &[Record]) -> String {
    let cols = columns(table);
    let rows: Vec<Vec<String>> = records
        .iter()
        .filter(|r| r.table() == table)
        .filter_map(|r| serde_json::to_value(r).ok())
        .map(|v| cols.iter().map(|c| cell(&v[*c])).collect())
        .collect();
    let mut widths: Vec<usize> = cols.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("{table} ({} records)\n", rows.len());
    let fmt_row = |cells: Vec<&str>| {
        let mut line = String::from("  ");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(line, "{c:<w$}  ");
        }
        line.trim_end().to_string() + "\n"
    };
    out.push_str(&fmt_row(cols.to_vec()));
    for r in &rows {
        out.push_str(&fmt_row(r.iter().map(String::as_str).collect()));
    }
    out
}
