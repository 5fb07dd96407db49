//! Shared by the bench binaries: a network-namespace guard and /proc readings of a process.
#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A network namespace made for a benchmark; dropping it kills everything in it (but the
/// bench itself, which may have entered it) and deletes it, also when the bench panics.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let ns = Netns(format!("{tag}-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", &self.0]).output() {
            let me = std::process::id().to_string();
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter(|p| *p != me)
            {
                let _ = Command::new("kill")
                    .args(["-9", pid])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let ok = Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ip {args:?} failed");
}

/// A `kB` field of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:`); `pid` may be "self".
pub fn status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, in clock ticks (USER_HZ = 100).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map(|i| i + 2).unwrap_or(0)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (indices 11 and 12 after the state field).
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// A scratch directory `depmap-<tag>-<pid>` holding a `depmap.toml` for a default-settings
/// `depmap run` with the stdout sink; returns (directory, config file).
pub fn default_config(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("depmap-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench directory");
    let cfg = dir.join("depmap.toml");
    let text = format!(
        "[agent]\nstate_dir = \"{}\"\n[sink]\nkind = \"stdout\"\n",
        dir.display()
    );
    std::fs::write(&cfg, text).expect("bench config");
    (dir, cfg)
}

/// An unsigned setting from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs per timed measurement (the median is reported).
pub const ROUNDS: usize = 21;

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The median of [`ROUNDS`] runs of `f`.
pub fn time<F: FnMut()>(mut f: F) -> Duration {
    let mut runs = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        f();
        runs.push(t.elapsed());
    }
    median(runs)
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}
