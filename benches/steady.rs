//! Steady-state benchmark: `depmap run` at default settings on a host with many processes and
//! connections, its CPU and memory over minutes, against the kernel's own dump cost.
//!
//! Builds its own network namespace holding `DEPMAP_STEADY_PROCS` processes (default 1,000;
//! benches/fleet.py) with `DEPMAP_STEADY_CONNS` connections each (default 10: 10,000
//! connections, 20,000 sockets), each process sending a 100-byte request every
//! `DEPMAP_STEADY_INTERVAL_MS` (default 1,000) on one of its connections, echoed by its peer.
//! Then, in the same run:
//! * the bare kernel dump of those sockets (median of 21), i.e. what a dump each second costs;
//! * `DEPMAP_STEADY_SHORT_PER_S` short connections a second besides (default 0; one exchange
//!   each, benches/churn.py against a peer.py server in the namespace);
//! * `depmap run` at default settings for `DEPMAP_STEADY_SECS` (default 300) after a 10 s
//!   warm-up, by polling alone (`collect.events = "off"`) and with the kernel event source
//!   (`"ebpf"`), one after the other: CPU share of one core and RSS every 30 s and over the
//!   whole run, and the full-dump period the CPU budget chose (from depmap's log);
//! * the same with `cpu_budget = "0%"` (a full dump every second) for
//!   `DEPMAP_STEADY_UNBUDGETED_SECS` (default 60; 0 skips it), as the reference.
//!
//! Run with `cargo bench --bench steady` as root.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use depmap::collect::sockdiag::{Family, SockDiag};

mod common;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");
const CHURN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/churn.py");

use common::{Netns, cpu_ticks, default_config, env_or, status_kb};

struct Run {
    secs: f64,
    cpu: f64,
    rss_kb: u64,
    peak_kb: u64,
    /// (seconds since the start, CPU share over the interval, RSS kB) every 30 s.
    samples: Vec<(u64, f64, u64)>,
    periods: Vec<String>,
}

fn main() {
    let procs = env_or("DEPMAP_STEADY_PROCS", 1_000);
    let per_proc = env_or("DEPMAP_STEADY_CONNS", 10);
    let interval_ms = env_or("DEPMAP_STEADY_INTERVAL_MS", 1_000);
    let secs = env_or("DEPMAP_STEADY_SECS", 300);
    let reference_secs = env_or("DEPMAP_STEADY_UNBUDGETED_SECS", 60);
    let short_per_s = env_or("DEPMAP_STEADY_SHORT_PER_S", 0);

    let ns = Netns::new("dmsteady");
    let fleet = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/fleet.py");
    let t = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", fleet, "20000"])
        .arg(procs.to_string())
        .arg(per_proc.to_string())
        .arg(format!("{}", interval_ms as f64 / 1000.0))
        .stdout(Stdio::piped())
        .spawn()
        .expect("fleet");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("fleet stdout"))
        .read_line(&mut line)
        .expect("fleet ready line");
    assert!(line.starts_with("ready"), "fleet: {line}");
    eprintln!("fleet of {procs} processes ready in {:?}", t.elapsed());

    // Enter the namespace: the dumps below and the depmap children live there.
    let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).expect("netns file");
    // SAFETY: setns on a valid namespace fd for the calling (main) thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);

    let mut diag = SockDiag::open().expect("sock_diag");
    let mut sockets = 0usize;
    diag.dump(Family::V4, |_| sockets += 1).expect("dump");
    let mut runs: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            diag.dump_all_unparsed().expect("dump");
            t.elapsed()
        })
        .collect();
    runs.sort();
    let kernel = runs[runs.len() / 2];

    // Short connections besides, for the whole of the runs below.
    let mut short = (short_per_s > 0).then(|| {
        let mut server = Command::new("python3")
            .args([PEER, "serve", "--host", "127.0.0.1", "--port", "7401"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("peer server");
        let mut line = String::new();
        BufReader::new(server.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("server ready line");
        let total = 2 * (secs + 15) + reference_secs + 15;
        let load = Command::new("python3")
            .args([
                CHURN,
                "127.0.0.1",
                "7401",
                &short_per_s.to_string(),
                &total.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("churn load");
        (server, load)
    });
    let polling = run_depmap("[collect]\nevents = \"off\"\n", secs);
    let events = run_depmap("[collect]\nevents = \"ebpf\"\n", secs);
    let reference = (reference_secs > 0).then(|| {
        run_depmap(
            "[collect]\ncpu_budget = \"0%\"\nevents = \"off\"\n",
            reference_secs,
        )
    });
    if let Some((mut server, mut load)) = short.take() {
        let _ = load.kill();
        let _ = server.kill();
        let _ = load.wait();
        let _ = server.wait();
    }
    let _ = child.kill();
    let _ = child.wait();

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{procs} processes, {} connections, {sockets} sockets in the IPv4 dump; a request every {interval_ms} ms per process; {short_per_s} short connections a second",
        procs * per_proc
    );
    let _ = writeln!(
        out,
        "kernel dump (IPv4+IPv6, tcp_info), median of 21: {:.2} ms = {:.2} % of one core at one dump a second",
        kernel.as_secs_f64() * 1e3,
        kernel.as_secs_f64() * 100.0
    );
    report(
        &mut out,
        "depmap run, default settings, polling alone",
        &polling,
    );
    report(
        &mut out,
        "depmap run, default settings, with the kernel event source",
        &events,
    );
    if let Some(r) = &reference {
        report(
            &mut out,
            "depmap run, polling alone, cpu_budget = \"0%\" (a full dump every second)",
            r,
        );
    }
}

fn report(out: &mut impl Write, name: &str, r: &Run) {
    let _ = writeln!(
        out,
        "{name}: over {:.0} s CPU {:.2} % of one core, RSS {} kB (peak {} kB); full-dump period changes: {}",
        r.secs,
        r.cpu * 100.0,
        r.rss_kb,
        r.peak_kb,
        if r.periods.is_empty() {
            "none".to_string()
        } else {
            r.periods.join(", ")
        }
    );
    let _ = writeln!(out, "| seconds | CPU over the interval | RSS |");
    let _ = writeln!(out, "|---|---|---|");
    for (at, cpu, rss) in &r.samples {
        let _ = writeln!(
            out,
            "| {at} | {:.2} % | {:.1} MB |",
            cpu * 100.0,
            *rss as f64 / 1024.0
        );
    }
}

/// Runs `depmap run` with the default configuration plus `extra` for `secs` after a 10 s
/// warm-up (start-up inventory, the cold /proc walk, the budget's first estimates).
fn run_depmap(extra: &str, secs: u64) -> Run {
    let (dir, cfg) = default_config("steady");
    let text = std::fs::read_to_string(&cfg).expect("bench config") + extra;
    std::fs::write(&cfg, text).expect("bench config");
    let log = dir.join("depmap.log");
    let mut run = Command::new(env!("CARGO_BIN_EXE_depmap"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("DEPMAP_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("depmap run");
    let pid = run.id();
    let spid = pid.to_string();
    std::thread::sleep(Duration::from_secs(10));
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut last = (t0, Instant::now());
    let mut at = 0;
    while at < secs {
        let step = 30.min(secs - at);
        std::thread::sleep(Duration::from_secs(step));
        at += step;
        let ticks = cpu_ticks(pid);
        let share = (ticks - last.0) as f64 / 100.0 / last.1.elapsed().as_secs_f64();
        samples.push((at, share, status_kb(&spid, "VmRSS:")));
        last = (ticks, Instant::now());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - t0) as f64 / 100.0 / elapsed;
    let rss_kb = status_kb(&spid, "VmRSS:");
    let peak_kb = status_kb(&spid, "VmHWM:");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = run.wait();
    let periods = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("dump period changed"))
        .filter_map(|l| {
            let p = l.split("period=").nth(1)?.split_whitespace().next()?;
            Some(p.to_string())
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    Run {
        secs: elapsed,
        cpu,
        rss_kb,
        peak_kb,
        samples,
        periods,
    }
}
