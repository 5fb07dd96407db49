//! Map benchmark: `depmap map` over 24 hours of records of a host of 300 processes and 900
//! connections in one-minute windows (1,296,000 VMConnection records, 432,000 VMBoundPort,
//! hourly inventory), written with depmap's own record types into a file-sink directory.
//! Reports the time and peak RSS of `depmap map` for each format. Run with
//! `cargo bench --bench map`; `DEPMAP_MAP_HOURS` (default 24) scales it.

use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use depmap::records::{Ip, Origin, VmBoundPort, VmComputer, VmConnection, VmProcess};

mod common;

use common::env_or;

const PROCESSES: usize = 300;
const CONNECTIONS: usize = 900;
const PORTS: usize = 300;

fn main() {
    let hours = env_or("DEPMAP_MAP_HOURS", 24) as usize;
    let dir = std::env::temp_dir().join(format!("depmap-map-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    let start = SystemTime::now() - Duration::from_secs(hours as u64 * 3600);
    let t = Instant::now();
    let (lines, bytes) = write_records(&dir, start, hours);
    eprintln!(
        "{lines} records, {:.0} MB written in {:.1} s",
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{hours} h of one-minute windows, {PROCESSES} processes, {CONNECTIONS} connections: {lines} records, {:.0} MB",
        bytes as f64 / 1e6
    );
    for format in ["html", "json", "csv", "dot"] {
        // Once to warm the page cache, then measured.
        let _ = run(&dir, format, hours);
        let (secs, rss_kb) = run(&dir, format, hours);
        let _ = writeln!(
            out,
            "depmap map --format {format}: {secs:.2} s, peak RSS {:.1} MB",
            rss_kb as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wall time and peak RSS (kB) of one `depmap map`.
// Reaped by wait4, which also gives its peak RSS (std's wait does not).
#[allow(clippy::zombie_processes)]
fn run(dir: &std::path::Path, format: &str, hours: usize) -> (f64, i64) {
    let t = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_depmap"))
        .args(["map", "--dir"])
        .arg(dir)
        .args([
            "--since",
            &format!("{}h", hours + 1),
            "--format",
            format,
            "--out",
            "/dev/null",
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("depmap map");
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter for wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "depmap map failed"
    );
    (t.elapsed().as_secs_f64(), usage.ru_maxrss)
}

fn origin(t: SystemTime, table_time: &str) -> Origin {
    let _ = t;
    Origin {
        agent_id: "a0000000-0000-4000-8000-000000000001".into(),
        computer: "bench-host".into(),
        machine: "m-a0000000-0000-4000-8000-000000000001".into(),
        resource_id: "m-a0000000-0000-4000-8000-000000000001".into(),
        source_system: "depmap",
        time_generated: table_time.into(),
    }
}

fn file(dir: &std::path::Path, table: &str, hour: usize) -> BufWriter<std::fs::File> {
    BufWriter::with_capacity(
        1 << 20,
        std::fs::File::create(dir.join(format!(
            "{table}-20000101T{:02}-{:04}.ndjson",
            hour % 24,
            hour + 1
        )))
        .expect("record file"),
    )
}

fn write_records(dir: &std::path::Path, start: SystemTime, hours: usize) -> (u64, u64) {
    let (mut lines, mut bytes) = (0u64, 0u64);
    let mut put = |w: &mut BufWriter<std::fs::File>, v: &dyn erased::Ser| {
        let line = v.line();
        bytes += line.len() as u64 + 1;
        lines += 1;
        w.write_all(line.as_bytes()).expect("write");
        w.write_all(b"\n").expect("write");
    };
    for hour in 0..hours {
        let at = start + Duration::from_secs(hour as u64 * 3600);
        let text = humantime::format_rfc3339_seconds(at).to_string();
        let mut computers = file(dir, "VMComputer", hour);
        let computer = VmComputer {
            origin: origin(at, &text),
            ipv4_addresses: vec!["10.0.0.1".into()],
            display_name: "bench-host".into(),
            ..Default::default()
        };
        put(&mut computers, &computer);
        let mut processes = file(dir, "VMProcess", hour);
        for p in 0..PROCESSES {
            let record = VmProcess {
                origin: origin(at, &text),
                process: format!("p-{p:040}"),
                executable_name: format!("service{p}"),
                display_name: format!("service{p}"),
                command_line: format!("/usr/bin/service{p} --serve"),
                ..Default::default()
            };
            put(&mut processes, &record);
        }
        let mut ports = file(dir, "VMBoundPort", hour);
        let mut conns = file(dir, "VMConnection", hour);
        for minute in 0..60 {
            let at = at + Duration::from_secs(minute * 60);
            let text = humantime::format_rfc3339_seconds(at).to_string();
            for p in 0..PORTS {
                let record = VmBoundPort {
                    origin: origin(at, &text),
                    ip: Ip("10.0.0.1".parse().expect("ip")),
                    port: 8000 + p as i32,
                    protocol: "tcp".into(),
                    process: Some(format!("p-{p:040}")),
                    process_name: Some(format!("service{p}")),
                    port_id: format!("b-{p:040}"),
                    links_live: 1,
                    ..Default::default()
                };
                put(&mut ports, &record);
            }
            for c in 0..CONNECTIONS {
                // A third to services on this host, the rest to 600 remote endpoints.
                let local = c % 3 == 0;
                let remote: std::net::IpAddr = if local {
                    "10.0.0.1".parse().expect("ip")
                } else {
                    format!("10.{}.{}.{}", 1 + c / 250, (c / 10) % 25, c % 250)
                        .parse()
                        .expect("ip")
                };
                let record = VmConnection {
                    origin: origin(at, &text),
                    connection_id: format!("c-{c:040}"),
                    direction: "outbound".into(),
                    process: Some(format!("p-{:040}", c % PROCESSES)),
                    process_name: Some(format!("service{}", c % PROCESSES)),
                    source_ip: Ip("10.0.0.1".parse().expect("ip")),
                    destination_ip: Ip(remote),
                    remote_ip: Ip(remote),
                    destination_port: if local {
                        8000 + (c % PORTS) as i32
                    } else {
                        443
                    },
                    protocol: "tcp".into(),
                    links_established: 1,
                    links_terminated: 1,
                    links_live: 1,
                    links_failed: Some(0),
                    bytes_sent: Some(1_000 + c as i64),
                    bytes_received: Some(20_000 + c as i64),
                    responses: Some(10),
                    response_time_sum: Some(50),
                    response_time_min: Some(2),
                    response_time_max: Some(9),
                    ..Default::default()
                };
                put(&mut conns, &record);
            }
        }
        for w in [&mut computers, &mut processes, &mut ports, &mut conns] {
            w.flush().expect("flush");
        }
    }
    (lines, bytes)
}

/// Serialising any of the record types through one closure.
mod erased {
    pub trait Ser {
        fn line(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn line(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
