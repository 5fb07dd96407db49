//! Poll-cost benchmark: depmap's poll against the bare kernel dump and `ss -tni`, on the same
//! sockets, in the same run.
//!
//! Builds its own network namespace, fills it with `DEPMAP_BENCH_CONNS` loopback connections
//! (default 10,000, i.e. twice as many established sockets) spread over farm processes (the
//! machine caps open files at 20,000 per process), then measures, each as the median of
//! `ROUNDS` runs:
//! * kernel: the sock_diag dump (IPv4 + IPv6, tcp_info) read and walked without parsing;
//! * parse: the same dump parsed into samples;
//! * poll: `Agent::poll` (dump + parse + attribution + tracker update), warm cache;
//! * `ss -tni` writing to /dev/null;
//!
//! and finally runs `depmap run` at default settings for 30 s and reports its CPU and resident memory.
//! Run with `cargo bench --bench poll` as root.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use depmap::agent::Agent;
use depmap::collect::sockdiag::{Family, SockDiag};
use depmap::config::Config;

mod common;

use common::{Netns, ROUNDS, cpu_ticks, default_config, env_or, ms, status_kb, time};

const PER_FARM: usize = 2_500;

fn main() {
    let conns = env_or("DEPMAP_BENCH_CONNS", 10_000) as usize;
    let ns = Netns::new("dmbench");
    // Farms: each holds PER_FARM connections (2 × PER_FARM sockets) to itself.
    let farm = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/farm.py");
    let mut farms: Vec<Child> = Vec::new();
    let mut left = conns;
    let mut port = 20_000;
    while left > 0 {
        let n = left.min(PER_FARM);
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.0,
                "python3",
                farm,
                &port.to_string(),
                &n.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("farm");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "farm: {line}");
        farms.push(child);
        left -= n;
        port += 1;
    }

    // Enter the namespace: every netlink socket opened from now on lives there.
    let f = std::fs::File::open(format!("/run/netns/{}", ns.0)).unwrap();
    // SAFETY: setns on a valid namespace fd for the calling (main) thread.
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);

    let mut diag = SockDiag::open().unwrap();
    let mut sockets = 0usize;
    diag.dump(Family::V4, |_| sockets += 1).unwrap();
    // What depmap asks for: both families in one walk of the kernel's table.
    let kernel = time(|| {
        diag.dump_all_unparsed().unwrap();
    });
    // The same as two per-family dumps (a walk each), as depmap dumped before.
    let kernel_per_family = time(|| {
        diag.dump_unparsed(Family::V4).unwrap();
        diag.dump_unparsed(Family::V6).unwrap();
    });
    let (_, bytes) = diag.dump_unparsed(Family::V4).unwrap();
    let parse = time(|| {
        let mut n = 0;
        diag.dump_all(true, |_| n += 1).unwrap();
    });
    // Exact lookups (the hot polls' unit of work) of 512 established sockets.
    let mut some = Vec::new();
    diag.dump(Family::V4, |s| {
        if some.len() < 512 && !s.is_listener() {
            some.push(s)
        }
    })
    .unwrap();
    let lookups = time(|| {
        for s in &some {
            let _ = diag.lookup(s).unwrap();
        }
    });
    let rss_before = status_kb("self", "VmRSS:");
    let mut agent = Agent::start(Config::default()).expect("agent");
    let t = Instant::now();
    agent.poll();
    let cold = t.elapsed();
    let poll = time(|| agent.poll());
    let rss_after = status_kb("self", "VmRSS:");
    let ss = time(|| {
        let s = Command::new("ss")
            .arg("-tni")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    });
    drop(agent);

    // depmap run at default settings, stdout sink to /dev/null, for
    // DEPMAP_BENCH_RUN_SECS (default 30; 0 skips it).
    let run_secs = env_or("DEPMAP_BENCH_RUN_SECS", 30);
    let run_figures = (run_secs > 0).then(|| run_depmap(run_secs));
    for mut f in farms {
        drop(f.stdin.take());
        let _ = f.wait();
    }

    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "connections: {conns}; sockets in the IPv4 dump: {sockets}; dump size: {bytes} bytes"
    );
    let _ = writeln!(
        out,
        "| measure (median of {ROUNDS}) | time | per socket | vs kernel | vs ss -tni |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for (name, d) in [
        ("kernel dump, unparsed (IPv4+IPv6, one walk)", kernel),
        (
            "kernel dumps, unparsed, one per family (two walks)",
            kernel_per_family,
        ),
        ("dump + parse", parse),
        (
            "depmap poll (dump + parse + attribution + tracker), warm",
            poll,
        ),
        ("`ss -tni > /dev/null`", ss),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} µs | {:.2}× | {:.2}× |",
            ms(d),
            d.as_secs_f64() * 1e6 / sockets.max(1) as f64,
            d.as_secs_f64() / kernel.as_secs_f64(),
            d.as_secs_f64() / ss.as_secs_f64()
        );
    }
    let _ = writeln!(
        out,
        "| depmap first poll (cold: full /proc fd walk) | {} | | | |",
        ms(cold)
    );
    let _ = writeln!(
        out,
        "| hot poll: {} exact lookups | {} | {:.2} µs per lookup | | |",
        some.len(),
        ms(lookups),
        lookups.as_secs_f64() * 1e6 / some.len().max(1) as f64
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "bench process RSS grew {} kB over the agent's start and polls",
        rss_after.saturating_sub(rss_before)
    );
    match run_figures {
        Some((cpu, rss, hwm)) => {
            let _ = writeln!(
                out,
                "`depmap run` (default settings) over {run_secs} s: CPU {:.2} % of one core, RSS {rss} kB (peak {hwm} kB)",
                cpu * 100.0
            );
        }
        None => {
            let _ = writeln!(out, "`depmap run` phase skipped (DEPMAP_BENCH_RUN_SECS=0)");
        }
    }
}

/// Runs `depmap run` at default settings for `secs` after a 5 s warm-up; returns its CPU share
/// of one core and its RSS and peak RSS in kB.
fn run_depmap(secs: u64) -> (f64, u64, u64) {
    let (dir, cfg) = default_config("bench");
    let mut run = Command::new(env!("CARGO_BIN_EXE_depmap"))
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = run.id();
    std::thread::sleep(Duration::from_secs(5)); // start-up inventory and cold walk
    let t0 = cpu_ticks(pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu = (cpu_ticks(pid) - t0) as f64 / 100.0 / start.elapsed().as_secs_f64();
    let rss_run = status_kb(&pid.to_string(), "VmRSS:");
    let hwm_run = status_kb(&pid.to_string(), "VmHWM:");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = run.wait();
    let _ = std::fs::remove_dir_all(&dir);
    (cpu, rss_run, hwm_run)
}
