//! What `depmap once` prints for people: the capability report and aligned tables.

use std::fmt::Write;

use serde_json::Value;

use crate::agent::Capabilities;
use crate::collect::sources::Availability;
use crate::records::{Record, Table};

/// The capability report: what depmap can see on this host, and what is missing and why.
pub fn capabilities(c: &Capabilities) -> String {
    let mut out = String::from("depmap capability report\n");
    let line = |out: &mut String, name: &str, r: &Availability, cost: &str, fix: &str| {
        let _ = match r {
            Availability::Available(found) if found.is_empty() => writeln!(out, "  [ok]   {name}"),
            Availability::Available(found) => writeln!(out, "  [ok]   {name}: {found}"),
            Availability::Unavailable(e) => writeln!(
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
        "optional: run in the initial network, pid and user namespaces (the kernel sends process events only there)",
    );
    line(
        &mut out,
        "kernel event source (eBPF)",
        &c.kernel_events,
        "the processes of connections that open and close between two dumps (Process and ProcessName null, counted); polling runs instead",
        "Linux 5.8 or later with BTF (/sys/kernel/btf/vmlinux), CAP_BPF and CAP_PERFMON (the packaged unit grants them), collect.events = \"auto\"",
    );
    let _ = match (&c.kernel_events, &c.event_timing) {
        (Availability::Available(_), Availability::Available(_)) => writeln!(
            out,
            "  [ok]   response times: measured by kernel events (every exchange)"
        ),
        (_, Availability::Unavailable(why)) if c.kernel_events.is_available() => writeln!(
            out,
            "  [--]   response times from kernel events: {why}\n         missing: exact response times (tcp_info estimates are used), owners of accepted sockets from events\n         fix: Linux 6.3 or later (tracepoints sock_send_length, sock_recv_length)"
        ),
        _ => writeln!(
            out,
            "  [--]   response times: tcp_info estimates (no kernel event source)"
        ),
    };
    line(
        &mut out,
        "other network namespaces (containers)",
        &c.namespaces,
        "the connections and listening ports of processes in other network namespaces (containers)",
        "collect.namespaces = \"all\" with CAP_SYS_ADMIN and CAP_SYS_PTRACE (README \"Containers\": the drop-in)",
    );
    line(
        &mut out,
        "UDP bound ports (sock_diag)",
        &c.udp_ports,
        "VMBoundPort records with Protocol = udp (servers' UDP ports)",
        "collect.udp = true",
    );
    line(
        &mut out,
        "UDP flows (eBPF cgroup programs)",
        &c.udp_flows,
        "the bytes of UDP traffic (DNS, NTP, syslog, QUIC) and the flows of unconnected sockets (sendto/recvfrom); only connected UDP sockets are VMConnection records, with BytesSent/BytesReceived null (sock_diag has no UDP byte counters), and UDP ports' bytes are null",
        "the kernel event source with CAP_NET_ADMIN besides CAP_BPF and CAP_PERFMON, a cgroup v2 hierarchy, collect.udp = true (README \"UDP\": the drop-in)",
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
    if c.destroy_events.is_available() && c.destroy_rcvbuf < crate::collect::destroy::RCVBUF {
        let _ = writeln!(
            out,
            "  [--]   destroy-notification buffer {} KiB (8 MiB asked; without CAP_NET_ADMIN the kernel caps it at net.core.rmem_max)\n         missing: in a burst of closes beyond the buffer, the notifications the kernel drops (counted as destroy_overruns; those sockets' bytes after their last poll)\n         fix: sysctl -w net.core.rmem_max=8388608 (the packages install /usr/lib/sysctl.d/60-depmap.conf)",
            c.destroy_rcvbuf / 1024
        );
    }
    let _ = match &c.dns_capture {
        Availability::Available(_) => writeln!(out, "  [ok]   passive DNS capture"),
        Availability::Unavailable(why) => writeln!(
            out,
            "  [--]   passive DNS capture: {why}\n         missing: RemoteDnsQuestions, RemoteDnsCanonicalNames\n         fix: enrich.dns_capture = true with CAP_NET_RAW (under systemd: a drop-in adding CAP_NET_RAW to CapabilityBoundingSet and AmbientCapabilities)"
        ),
    };
    let _ = match &c.azure_metadata {
        Availability::Available(found) => {
            writeln!(out, "  [ok]   Azure Instance Metadata: {found}")
        }
        Availability::Unavailable(why) => writeln!(
            out,
            "  [--]   Azure Instance Metadata: {why}\n         missing: HostingProvider, the Azure* columns of VMComputer; _ResourceId is the machine id\n         fix: on an Azure VM, nothing (it is recognised); elsewhere it does not apply (enrich.azure_metadata = \"always\" forces it)"
        ),
    };
    out
}

/// Columns shown per table in `--format table` (all columns are in NDJSON), most important
/// first: when a table is wider than the terminal, the last ones are left out (and named).
fn columns(table: Table) -> &'static [&'static str] {
    match table {
        Table::Computer => &[
            "Computer",
            "OperatingSystemFullName",
            "Cpus",
            "PhysicalMemoryMB",
            "Ipv4Addresses",
            "VirtualizationState",
            "Machine",
        ],
        Table::Process => &[
            "ExecutableName",
            "FirstPid",
            "UserName",
            "Role",
            "ProductName",
            "CommandLine",
            "Process",
        ],
        Table::BoundPort => &[
            "ProcessName",
            "Ip",
            "Port",
            "BytesSent",
            "BytesReceived",
            "LinksEstablished",
            "LinksLive",
            "LinksTerminated",
            "IsWildcardBind",
        ],
        Table::Connection => &[
            "Direction",
            "ProcessName",
            "SourceIp",
            "DestinationIp",
            "DestinationPort",
            "BytesSent",
            "BytesReceived",
            "LinksEstablished",
            "LinksLive",
            "LinksTerminated",
            "LinksFailed",
        ],
    }
}

/// Longest cell of a table that fits the terminal; `--wide` shows whole values.
const CELL_MAX: usize = 48;
/// A column is not narrowed below this (or its header) to make room.
const CELL_MIN: usize = 12;

/// The width tables must fit: the terminal's when stdout is one, else `COLUMNS` when set,
/// else none (a pipe or file gets every column).
pub fn terminal_width() -> Option<usize> {
    use std::io::IsTerminal;
    let stdout = std::io::stdout();
    if stdout.is_terminal()
        && let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size_of(&stdout)
    {
        return Some(usize::from(w));
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|w| *w > 0)
}

/// A value as text for a person: control characters (ESC, BEL, CR, ...), which another user's
/// command line or process name may hold, are shown escaped, never sent to the terminal.
fn cell(v: &Value) -> String {
    let s = match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    };
    if s.chars().any(char::is_control) {
        s.chars().flat_map(char::escape_default).collect()
    } else {
        s
    }
}

/// `s` cut to `width` characters, the cut marked with `…`.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let kept: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// One aligned table of the records of `table`, fitting `width` characters when given:
/// long values are cut, the widest columns narrowed, then the last columns left out.
pub fn table(table: Table, records: &[Record], width: Option<usize>) -> String {
    let all = columns(table);
    let rows: Vec<Vec<String>> = records
        .iter()
        .filter(|r| r.table() == table)
        .filter_map(|r| serde_json::to_value(r).ok())
        .map(|v| all.iter().map(|c| cell(&v[*c])).collect())
        .collect();
    let mut widths: Vec<usize> = all.iter().map(|c| c.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut shown = all.len();
    if let Some(limit) = width {
        for w in widths.iter_mut() {
            *w = (*w).min(CELL_MAX);
        }
        // Two spaces of indent, two between columns.
        let total = |widths: &[usize]| {
            2 + widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)
        };
        while total(&widths[..shown]) > limit {
            let floor = |i: usize| all[i].len().max(CELL_MIN);
            let excess = total(&widths[..shown]) - limit;
            let widest = (0..shown)
                .filter(|i| widths[*i] > floor(*i))
                .max_by_key(|i| widths[*i]);
            match widest {
                Some(i) => widths[i] = widths[i].saturating_sub(excess).max(floor(i)),
                None if shown > 1 => shown -= 1,
                None => break,
            }
        }
    }
    let plural = if rows.len() == 1 { "" } else { "s" };
    let mut out = format!("{} ({} record{plural})\n", table.name(), rows.len());
    let fmt_row = |cells: &[String]| {
        let mut line = String::from("  ");
        for (c, w) in cells.iter().zip(&widths).take(shown) {
            let c = cut(c, *w);
            let _ = write!(line, "{c:<w$}  ");
        }
        line.trim_end().to_string() + "\n"
    };
    let header: Vec<String> = all.iter().map(|c| c.to_string()).collect();
    out.push_str(&fmt_row(&header));
    for r in &rows {
        out.push_str(&fmt_row(r));
    }
    if shown < all.len() {
        let note = format!(
            "(left out to fit {} columns: {}; --wide shows them, --format ndjson has every column)",
            width.unwrap_or_default(),
            all[shown..].join(", ")
        );
        out.push_str(&wrapped(&note, width.unwrap_or(usize::MAX)));
    }
    out
}

/// `text` as lines of at most `width` characters (two of indent), broken between words.
fn wrapped(text: &str, width: usize) -> String {
    fit_lines(&format!("  {text}"), width)
}

/// Each line of `text` broken between words to at most `width` characters; a continuation
/// keeps the line's indent, two more (a word longer than the line stays whole).
pub fn fit_lines(text: &str, width: usize) -> String {
    let mut out = String::new();
    for original in text.lines() {
        if original.chars().count() <= width {
            out.push_str(original);
            out.push('\n');
            continue;
        }
        let indent = original.len() - original.trim_start().len();
        let mut line = original[..indent].to_string();
        let mut filled = false;
        for word in original.split_whitespace() {
            if filled && line.chars().count() + 1 + word.chars().count() > width {
                out.push_str(&line);
                out.push('\n');
                line = " ".repeat(indent + 2);
                filled = false;
            }
            if filled {
                line.push(' ');
            }
            line.push_str(word);
            filled = true;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        let v = Value::String("a\u{1b}[2Jb\u{7}\rc".into());
        assert_eq!(cell(&v), "a\\u{1b}[2Jb\\u{7}\\rc");
        assert!(!cell(&v).chars().any(char::is_control));
        assert_eq!(cell(&Value::String("plain é".into())), "plain é");
    }

    #[test]
    fn long_lines_are_broken_between_words_keeping_the_indent() {
        let text = "  [--]   thing: one two three four five six\nshort\n";
        let out = fit_lines(text, 20);
        assert!(out.lines().all(|l| l.chars().count() <= 20), "{out}");
        assert_eq!(
            out.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert!(
            out.lines().nth(1).is_some_and(|l| l.starts_with("    ")),
            "{out}"
        );
    }

    #[test]
    fn a_table_fits_the_width_and_names_what_it_left_out() {
        let out = table(Table::Connection, &[], Some(60));
        assert!(out.lines().all(|l| l.chars().count() <= 60), "{out}");
        assert!(
            out.contains("--wide") && out.contains("LinksFailed"),
            "{out}"
        );
        let wide = table(Table::Connection, &[], None);
        assert!(
            wide.contains("LinksFailed") && !wide.contains("--wide"),
            "{wide}"
        );
        assert!(table(Table::Connection, &[], Some(1)).contains("Direction"));
    }

    #[test]
    fn cut_marks_the_cut() {
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
