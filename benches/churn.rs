//! Churn benchmark: `DEPMAP_CHURN_RATE` short connections a second (default 1,000) for
//! `DEPMAP_CHURN_SECS` (default 300) in a namespace of its own, with `depmap run` at default
//! poll settings watching. Reports whether every connection and every byte was accounted for
//! (inbound records against the load generator's own totals), the destroy notifications lost,
//! and depmap's CPU share and memory. Run with `cargo bench --bench churn` as root.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Netns, cpu_ticks, default_config, env_or, status_kb};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");
const CHURN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/churn.py");

fn main() {
    let rate = env_or("DEPMAP_CHURN_RATE", 1000);
    let secs = env_or("DEPMAP_CHURN_SECS", 300);
    // `collect.events`: "auto" (default) or "off" (polling alone).
    let events = std::env::var("DEPMAP_CHURN_EVENTS").unwrap_or_else(|_| "auto".into());
    let netns = Netns::new("dmchurn");
    let ns = netns.0.clone();
    let (dir, cfg) = default_config("churn");
    let text = std::fs::read_to_string(&cfg).expect("bench config")
        + &format!("[collect]\nevents = \"{events}\"\n");
    std::fs::write(&cfg, text).expect("bench config");
    let records = dir.join("records.ndjson");
    let log = dir.join("depmap.log");
    let mut depmap = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_depmap"),
            "run",
            "--config",
        ])
        .arg(&cfg)
        .stdout(std::fs::File::create(&records).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "python3",
            PEER,
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "7400",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3)); // depmap's baseline
    let pid = depmap.id();
    let t0 = cpu_ticks(pid);
    let began = Instant::now();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "python3",
            CHURN,
            "127.0.0.1",
            "7400",
            &rate.to_string(),
            &secs.to_string(),
        ])
        .output()
        .unwrap();
    let elapsed = began.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(pid) - t0) as f64 / 100.0 / elapsed;
    let hwm = status_kb(&pid.to_string(), "VmHWM:");
    std::thread::sleep(Duration::from_secs(2)); // the last notifications
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = depmap.wait();
    let _ = server.kill();
    let _ = server.wait();
    drop(netns);

    let truth: serde_json::Value = serde_json::from_slice(&out.stdout).expect("churn totals");
    let (mut est, mut term, mut sent, mut received) = (0i64, 0i64, 0i64, 0i64);
    // Outbound connections (the load generator's): how many carry their process.
    let (mut outbound, mut attributed) = (0i64, 0i64);
    for l in std::fs::read_to_string(&records).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        if r["Type"] == "VMConnection"
            && r["Direction"] == "inbound"
            && r["DestinationPort"] == 7400
        {
            est += r["LinksEstablished"].as_i64().unwrap();
            term += r["LinksTerminated"].as_i64().unwrap();
            sent += r["BytesSent"].as_i64().unwrap();
            received += r["BytesReceived"].as_i64().unwrap();
        }
        if r["Type"] == "VMConnection"
            && r["Direction"] == "outbound"
            && r["DestinationPort"] == 7400
        {
            let links = r["LinksEstablished"].as_i64().unwrap();
            outbound += links;
            if !r["Process"].is_null() {
                attributed += links;
            }
        }
    }
    let summary = std::fs::read_to_string(&log).unwrap_or_default();
    let summary = summary
        .lines()
        .rev()
        .find(|l| l.contains("summary"))
        .unwrap_or("")
        .to_string();
    let _ = std::fs::remove_dir_all(&dir);
    println!("churn: {rate}/s for {secs} s ({elapsed:.1} s measured), collect.events = {events}");
    println!("| outbound connections with their process | {attributed} of {outbound} |");
    println!(
        "| connections (truth / LinksEstablished / LinksTerminated) | {} / {est} / {term} |",
        truth["conns"]
    );
    println!(
        "| client bytes sent (truth / server BytesReceived) | {} / {received} |",
        truth["sent"]
    );
    println!(
        "| client bytes received (truth / server BytesSent) | {} / {sent} |",
        truth["received"]
    );
    println!(
        "| depmap CPU over the churn | {:.2} % of one core |",
        cpu * 100.0
    );
    println!("| depmap peak RSS | {hwm} kB |");
    println!(
        "depmap's loss summary: {}",
        summary.split("summary").nth(1).unwrap_or("")
    );
}
