//! UDP flows benchmark: what 50,000 UDP datagrams a second cost with the flow programs, in
//! all — depmap's CPU plus the kernel time the programs add to the sender and the receiver —
//! against the same load without them, in the same run (target: ≤ 3 % of one core).
//!
//! In a network namespace of its own, a sender sends `DEPMAP_UDP_RATE` (50,000) datagrams of
//! 100 B a second over loopback to a sink that reads them (both this binary, run again with
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

/// The sender: `rate` datagrams a second, in bursts every millisecond.
fn send(rate: u64) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.connect(("127.0.0.1", PORT)).expect("connect");
    let payload = [b'u'; SIZE];
    let start = Instant::now();
    let mut sent = 0u64;
    loop {
        let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
        while sent < due {
            let _ = s.send(&payload);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn sink() {
    let s = UdpSocket::bind(("127.0.0.1", PORT)).expect("bind");
    let mut buf = [0u8; 2048];
    println!("ready");
    loop {
        let _ = s.recv(&mut buf);
    }
}

fn role(ns: &Netns, which: &str, rate: u64) -> Child {
    let me = std::env::current_exe().expect("the bench binary");
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(me)
        .env("DEPMAP_UDP_ROLE", which)
        .env("DEPMAP_UDP_RATE", rate.to_string())
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

/// depmap with `collect` keys for `secs` after a warm-up: (depmap, sender + sink) CPU as a
/// share of one core.
fn measure(ns: &Netns, collect: &str, load: &[u32], secs: u64) -> (f64, f64) {
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
    let (d0, l0) = (cpu_ticks(pid), load_ticks());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = start.elapsed().as_secs_f64();
    let (d1, l1) = (cpu_ticks(pid), load_ticks());
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = run.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let share = |t: u64| t as f64 / 100.0 / wall;
    (share(d1 - d0), share(l1 - l0))
}

fn main() {
    let rate = env_or("DEPMAP_UDP_RATE", 50_000);
    match std::env::var("DEPMAP_UDP_ROLE").as_deref() {
        Ok("send") => return send(rate),
        Ok("sink") => return sink(),
        _ => {}
    }
    let secs = env_or("DEPMAP_UDP_SECS", 20);
    let ns = Netns::new("dmudp");
    let mut sink = role(&ns, "sink", rate);
    let mut sender = role(&ns, "send", rate);
    let load = [sink.id(), sender.id()];
    let modes = [
        ("events off (no programs)", "events = \"off\"\n"),
        ("events on, udp = false", "events = \"ebpf\"\nudp = false\n"),
        ("events on, udp = true", "events = \"ebpf\"\nudp = true\n"),
    ];
    let mut rows = Vec::new();
    for (name, collect) in modes {
        let (depmap, load_cpu) = measure(&ns, collect, &load, secs);
        rows.push((name, depmap, load_cpu));
    }
    let _ = sender.kill();
    let _ = sink.kill();
    let _ = sender.wait();
    let _ = sink.wait();
    println!("{rate} datagrams/s of {SIZE} B, {secs} s per mode");
    println!("| mode | depmap | sender + sink | in all |");
    println!("|---|---|---|---|");
    for (name, d, l) in &rows {
        println!(
            "| {name} | {:.2} % | {:.1} % | {:.1} % |",
            d * 100.0,
            l * 100.0,
            (d + l) * 100.0
        );
    }
    let (_, d_off, l_off) = rows[1];
    let (_, d_on, l_on) = rows[2];
    println!(
        "UDP flows cost in all: {:.2} % of one core (depmap {:+.2} %, sender + sink {:+.2} %)",
        (d_on + l_on - d_off - l_off) * 100.0,
        (d_on - d_off) * 100.0,
        (l_on - l_off) * 100.0
    );
}
