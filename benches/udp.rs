//! UDP flows benchmark: what 50,000 UDP datagrams a second cost with the flow programs, in
//! all — depmap's CPU plus the kernel time the programs add to the sender and the receiver —
//! against the same load without them, in the same run (target: ≤ 3 % of one core).
//!
//! In a network namespace of its own, a sender sends `DEPMAP_UDP_RATE` (50,000) datagrams of
//! 100 B a second over loopback (in `DEPMAP_UDP_FLOWS` flows, default 1) to a sink that reads them (both this binary, run again with
//! `DEPMAP_UDP_ROLE`), while `depmap run` (default settings, stdout to /dev/null) runs in
//! three modes for `DEPMAP_UDP_SECS` (20) each after a 5 s warm-up: events off (no programs),
//! events on with `collect.udp = false`, events on with `collect.udp = true`. CPU of each
//! process from /proc (user + system).
//!
//! Run with `cargo bench --bench udp` as root.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Netns, cpu_ticks, env_or};

const PORT: u16 = 47_100;
const SIZE: usize = 100;

/// The sender: `rate` datagrams a second, in bursts every millisecond; with `flows` > 1 from
/// one unconnected socket to that many loopback addresses (127.0.x.y) in turn, each a flow.
fn send(rate: u64, flows: u64) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let targets: Vec<std::net::SocketAddr> = (0..flows.max(1))
        .map(|i| {
            let ip = std::net::Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250 + 1) as u8);
            std::net::SocketAddr::from((ip, PORT))
        })
        .collect();
    if flows <= 1 {
        s.connect(targets[0]).expect("connect");
    }
    let payload = [b'u'; SIZE];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
        while sent < due {
            let _ = if flows <= 1 {
                s.send(&payload)
            } else {
                s.send_to(&payload, targets[(sent % flows) as usize])
            };
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sink() {
    // Every loopback address: the sender's many flows all reach it.
    let s = UdpSocket::bind(("0.0.0.0", PORT)).expect("bind");
    let mut buf = [0u8; 2048];
    println!("ready");
    loop {
        let _ = s.recv(&mut buf);
    }
}

fn role(ns: &Netns, which: &str, rate: u64, flows: u64) -> Child {
    let me = std::env::current_exe().expect("the bench binary");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(me)
        .env("DEPMAP_UDP_ROLE", which)
        .env("DEPMAP_UDP_RATE", rate.to_string())
        .env("DEPMAP_UDP_FLOWS", flows.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("load process");
    if which == "sink" {
        use std::io::BufRead;
        let mut line = String::new();
        let out = child.stdout.take().expect("sink stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("sink line");
        assert_eq!(line.trim(), "ready");
    }
    child
}

/// The kernel time (ns) and runs of depmap's cgroup_skb programs (prog_type 8), from the
/// fdinfo of its program fds (counted while `kernel.bpf_stats_enabled` = 1).
fn program_stats(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return total;
    };
    for fd in fds.flatten() {
        let text = std::fs::read_to_string(fd.path()).unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if field("prog_type:") == Some(8) {
            total.0 += field("run_time_ns:").unwrap_or(0);
            total.1 += field("run_cnt:").unwrap_or(0);
        }
    }
    total
}

/// What one mode cost, as shares of one core.
struct Cost {
    depmap: f64,
    load: f64,
    /// The UDP programs' own kernel time (bpf_stats), and their runs a second.
    programs: f64,
    runs_per_s: f64,
}

/// depmap with `collect` keys for `secs` after a warm-up.
fn measure(ns: &Netns, collect: &str, load: &[u32], secs: u64) -> Cost {
    let dir = std::env::temp_dir().join(format!("depmap-udpbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let cfg = dir.join("depmap.toml");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\n[collect]\n{collect}[sink]\nkind = \"stdout\"\n",
            dir.display()
        ),
    )
    .expect("bench config");
    let mut run = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            env!("CARGO_BIN_EXE_depmap"),
            "run",
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("depmap");
    std::thread::sleep(Duration::from_secs(5));
    // `ip netns exec` execs depmap: the child's pid is depmap's.
    let pid = run.id();
    let load_ticks = || load.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let (d0, l0, p0) = (cpu_ticks(pid), load_ticks(), program_stats(pid));
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = start.elapsed().as_secs_f64();
    let (d1, l1, p1) = (cpu_ticks(pid), load_ticks(), program_stats(pid));
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = run.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let share = |t: u64| t as f64 / 100.0 / wall;
    Cost {
        depmap: share(d1 - d0),
        load: share(l1 - l0),
        programs: (p1.0 - p0.0) as f64 / 1e9 / wall,
        runs_per_s: (p1.1 - p0.1) as f64 / wall,
    }
}

fn main() {
    let rate = env_or("DEPMAP_UDP_RATE", 50_000);
    // Distinct flows the sender spreads its datagrams over (default 1).
    let flows = env_or("DEPMAP_UDP_FLOWS", 1);
    match std::env::var("DEPMAP_UDP_ROLE").as_deref() {
        Ok("send") => return send(rate, flows),
        Ok("sink") => return sink(),
        _ => {}
    }
    let secs = env_or("DEPMAP_UDP_SECS", 20);
    let ns = Netns::new("dmudp");
    let mut sink = role(&ns, "sink", rate, flows);
    let mut sender = role(&ns, "send", rate, flows);
    let load = [sink.id(), sender.id()];
    let modes = [
        ("events off (no programs)", "events = \"off\"\n"),
        ("events on, udp = false", "events = \"ebpf\"\nudp = false\n"),
        ("events on, udp = true", "events = \"ebpf\"\nudp = true\n"),
    ];
    // The programs' own time is counted only with bpf_stats on (restored after).
    let stats = "/proc/sys/kernel/bpf_stats_enabled";
    let before = std::fs::read_to_string(stats).unwrap_or_else(|_| "0".into());
    let _ = std::fs::write(stats, "1");
    let mut rows = Vec::new();
    for (name, collect) in modes {
        rows.push((name, measure(&ns, collect, &load, secs)));
    }
    let _ = std::fs::write(stats, before.trim());
    let _ = sender.kill();
    let _ = sink.kill();
    let _ = sender.wait();
    let _ = sink.wait();
    println!("{rate} datagrams/s of {SIZE} B over loopback in {flows} flows, {secs} s per mode");
    println!("| mode | depmap | sender + sink | UDP programs (bpf_stats) | program runs/s |");
    println!("|---|---|---|---|---|");
    for (name, c) in &rows {
        println!(
            "| {name} | {:.2} % | {:.1} % | {:.2} % | {:.0} |",
            c.depmap * 100.0,
            c.load * 100.0,
            c.programs * 100.0,
            c.runs_per_s
        );
    }
    let (off, on) = (&rows[1].1, &rows[2].1);
    let per_run = if on.runs_per_s > 0.0 {
        on.programs * 1e9 / on.runs_per_s
    } else {
        0.0
    };
    println!(
        "UDP flows cost: depmap {:+.2} %, programs {:.2} % ({per_run:.0} ns a run), in all {:.2} % of one core; sender + sink {:+.1} % (noise: compare the first two rows)",
        (on.depmap - off.depmap) * 100.0,
        on.programs * 100.0,
        (on.depmap - off.depmap + on.programs) * 100.0,
        (on.load - off.load) * 100.0
    );
}
