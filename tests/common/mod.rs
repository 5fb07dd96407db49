//! Test harness: network namespaces, veth links, test peers and a depmap under test.
//!
//! Every namespace is created by the test and deleted (with every process in it) when its
//! guard drops, also when the test fails. Traffic stays on loopback and the veth links
//! between the test's own namespaces. Every wait is bounded and ends on a signal: a line
//! printed by the peer, or a record printed by depmap.
#![allow(dead_code)]

pub mod clickhouse;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const DEPMAP: &str = env!("CARGO_BIN_EXE_depmap");
pub const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/peer.py");

static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Network tests run one at a time: the machine has two cores and depmap polls every 200 ms.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace owned by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!(
            "dmt-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Links two namespaces with a veth pair and gives each end an address (/24); returns the
/// two device names.
pub fn veth(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let (va, vb) = (format!("dma{n}"), format!("dmb{n}"));
    sh(&[
        "ip", "link", "add", &va, "netns", &a.name, "type", "veth", "peer", "name", &vb, "netns",
        &b.name,
    ]);
    sh(&[
        "ip",
        "-n",
        &a.name,
        "addr",
        "add",
        &format!("{a_ip}/24"),
        "dev",
        &va,
    ]);
    sh(&[
        "ip",
        "-n",
        &b.name,
        "addr",
        "add",
        &format!("{b_ip}/24"),
        "dev",
        &vb,
    ]);
    sh(&["ip", "-n", &a.name, "link", "set", &va, "up"]);
    sh(&["ip", "-n", &b.name, "link", "set", &vb, "up"]);
    (va, vb)
}

/// Runs `ip -n NS <args>`.
pub fn ip(ns: &Netns, args: &[&str]) {
    let mut all = vec!["ip", "-n", &ns.name];
    all.extend_from_slice(args);
    sh(&all);
}

/// A child process whose stdout lines are collected by a reader thread.
pub struct Proc {
    pub child: Child,
    lines: Receiver<String>,
    pub seen: Vec<String>,
}

impl Proc {
    pub fn spawn(cmd: Command) -> Proc {
        Proc::spawn_logging(cmd, Stdio::inherit())
    }

    /// As [`Proc::spawn`], with stderr sent to `stderr` (e.g. a log file to assert on).
    pub fn spawn_logging(mut cmd: Command, stderr: Stdio) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd.spawn().expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next stdout line, waiting at most `timeout`.
    pub fn line(&mut self, timeout: Duration) -> String {
        let l = self
            .lines
            .recv_timeout(timeout)
            .unwrap_or_else(|_| panic!("no output within {timeout:?}; so far: {:?}", self.seen));
        self.seen.push(l.clone());
        l
    }

    pub fn json_line(&mut self, timeout: Duration) -> Value {
        serde_json::from_str(&self.line(timeout)).expect("peer JSON")
    }

    /// Collects lines until `done(lines so far)` holds or `timeout` passes; returns whether it held.
    pub fn until(&mut self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.seen) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if let Ok(l) = self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                self.seen.push(l);
            }
        }
    }

    /// Waits (bounded) for the process to exit by itself, collecting its stdout; kills it
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(l) = self.lines.try_recv() {
                self.seen.push(l);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(300)) {
                    self.seen.push(l);
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the rest of stdout until the process exits (bounded), then its status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc_kill(self.child.id() as i32, 15);
        }
        self.wait_exit(timeout)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A depmap `run` inside a namespace, writing NDJSON to stdout.
pub struct Depmap {
    pub proc: Proc,
    dir: TempDir,
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "depmap-test-{}-{}-{tag}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `<dir>/depmap.toml` with `state_dir = <dir>/state` followed by `rest`.
pub fn config_file(dir: &TempDir, rest: &str) -> PathBuf {
    let cfg = dir.0.join("depmap.toml");
    let text = format!(
        "[agent]\nstate_dir = \"{}\"\n{rest}",
        dir.0.join("state").display()
    );
    std::fs::write(&cfg, text).expect("write config");
    cfg
}

impl Depmap {
    /// Starts depmap with a 2 s window and 200 ms polls; returns once its first records
    /// (the start-up inventory) are out, i.e. its baseline poll is done.
    pub fn start(ns: &Netns) -> Depmap {
        Depmap::start_with(ns, "")
    }

    /// depmap at default poll settings, with these `[collect]` keys (e.g. the window). The
    /// CPU budget is off: it never stretches a release build's polls of a few sockets, but a
    /// debug build's cold /proc walks on a busy 2-core machine could.
    pub fn start_defaults(ns: &Netns, collect: &str) -> Depmap {
        let dir = TempDir::new("cfg");
        let cfg = config_file(
            &dir,
            &format!("[collect]\ncpu_budget = \"0%\"\n{collect}[sink]\nkind = \"stdout\"\n"),
        );
        Depmap::spawn(ns, dir, &cfg)
    }

    fn spawn(ns: &Netns, dir: TempDir, cfg: &std::path::Path) -> Depmap {
        Depmap::spawn_logging(ns, dir, cfg, Stdio::inherit())
    }

    fn spawn_logging(ns: &Netns, dir: TempDir, cfg: &std::path::Path, log: Stdio) -> Depmap {
        let mut cmd = ns.command(DEPMAP);
        cmd.args(["run", "--config"]).arg(cfg);
        Depmap::spawn_command(cmd, dir, log)
    }

    /// depmap in the test's own network namespace (the initial one: it sees the host's
    /// sockets too, so tests filter on their own addresses), its configuration `rest` after
    /// `[agent] state_dir`, records to stdout.
    pub fn start_in_initial_namespace(rest: &str) -> Depmap {
        let dir = TempDir::new("cfg");
        let cfg = config_file(&dir, &format!("{rest}[sink]\nkind = \"stdout\"\n"));
        let mut cmd = Command::new(DEPMAP);
        cmd.args(["run", "--config"]).arg(&cfg);
        Depmap::spawn_command(cmd, dir, Stdio::inherit())
    }

    fn spawn_command(cmd: Command, dir: TempDir, log: Stdio) -> Depmap {
        let mut proc = Proc::spawn_logging(cmd, log);
        let first = proc.line(Duration::from_secs(20));
        assert!(first.contains("VMComputer"), "first record: {first}");
        Depmap { proc, dir }
    }

    /// As [`Depmap::start`], with more `[collect]` keys.
    pub fn start_with(ns: &Netns, collect: &str) -> Depmap {
        let (dir, cfg) = Depmap::test_config(collect);
        Depmap::spawn(ns, dir, &cfg)
    }

    /// As [`Depmap::start_with`], as a machine of its own: its `Computer` and `AgentId` (so
    /// its `Machine`) are given.
    pub fn start_as(ns: &Netns, computer: &str, agent_id: &str, collect: &str) -> Depmap {
        let dir = TempDir::new("cfg");
        let cfg = dir.0.join("depmap.toml");
        let text = format!(
            "[agent]\nstate_dir = \"{}\"\ncomputer = \"{computer}\"\nagent_id = \"{agent_id}\"\n\
             [collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n{collect}\
             [sink]\nkind = \"stdout\"\n",
            dir.0.join("state").display()
        );
        std::fs::write(&cfg, text).expect("write config");
        Depmap::spawn(ns, dir, &cfg)
    }

    /// As [`Depmap::start_with`], with depmap's log written to `log`.
    pub fn start_logging(ns: &Netns, collect: &str, log: &std::path::Path) -> Depmap {
        let (dir, cfg) = Depmap::test_config(collect);
        let file = std::fs::File::create(log).expect("log file");
        Depmap::spawn_logging(ns, dir, &cfg, Stdio::from(file))
    }

    /// The test bed's schedule: 2 s windows, 200 ms polls, fixed (no CPU budget: a debug build
    /// on a busy 2-core machine must not stretch it; the budget has its own test), plus
    /// `collect` keys.
    fn test_config(collect: &str) -> (TempDir, PathBuf) {
        let dir = TempDir::new("cfg");
        let budget = if collect.contains("cpu_budget") {
            ""
        } else {
            "cpu_budget = \"0%\"\n"
        };
        let cfg = config_file(
            &dir,
            &format!(
                "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\n{budget}{collect}[sink]\nkind = \"stdout\"\n"
            ),
        );
        (dir, cfg)
    }

    /// Waits (bounded) until the records so far satisfy `done`.
    pub fn wait_for(&mut self, timeout: Duration, mut done: impl FnMut(&[Value]) -> bool) -> bool {
        self.proc.until(timeout, |lines| done(&parse(lines)))
    }

    /// Waits (bounded) until the records so far count `n` terminated links of `direction`
    /// ("inbound"/"outbound") to `port`.
    pub fn wait_terminated(&mut self, direction: &str, port: i64, n: i64) -> bool {
        self.wait_for(Duration::from_secs(15), |r| {
            conn_sums(r, |x| {
                x["Direction"] == direction && x["DestinationPort"] == port
            })
            .get("LinksTerminated")
            .copied()
                == Some(n)
        })
    }

    /// The configuration file it runs with (rewrite it, then SIGHUP, to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("depmap.toml")
    }

    /// Stops depmap with SIGTERM and returns every record it wrote.
    pub fn stop(mut self) -> Vec<Value> {
        let status = self.proc.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "depmap exit: {status:?}"
        );
        parse(&self.proc.seen)
    }
}

pub fn parse(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

pub fn of_type<'a>(records: &'a [Value], table: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["Type"] == table).collect()
}

/// Sums of VMConnection columns over all windows for the records matching `filter`.
pub fn conn_sums(records: &[Value], filter: impl Fn(&Value) -> bool) -> HashMap<&'static str, i64> {
    let mut sums = HashMap::new();
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
    {
        for col in [
            "LinksEstablished",
            "LinksTerminated",
            "LinksLive",
            "BytesSent",
            "BytesReceived",
        ] {
            *sums.entry(col).or_insert(0) += r[col].as_i64().unwrap_or(0);
        }
        *sums.entry("records").or_insert(0) += 1;
    }
    sums
}

/// A test server in a namespace, run by `python` with extra `serve` options; returns once
/// it listens, with its JSON greeting.
pub fn serve(ns: &Netns, python: &str, host: &str, port: u16, extra: &[&str]) -> (Proc, Value) {
    let mut cmd = ns.command(python);
    cmd.args([PEER, "serve", "--host", host, "--port", &port.to_string()]);
    cmd.args(extra);
    let mut p = Proc::spawn(cmd);
    let v = p.json_line(Duration::from_secs(20));
    (p, v)
}

/// A test server (pre-forked when `prefork` > 0).
pub fn server(ns: &Netns, host: &str, port: u16, prefork: u32) -> (Proc, Value) {
    serve(
        ns,
        "python3",
        host,
        port,
        &["--prefork", &prefork.to_string()],
    )
}

/// A test server run by a given Python interpreter.
pub fn server_with(ns: &Netns, python: &str, host: &str, port: u16) -> (Proc, Value) {
    serve(ns, python, host, port, &[])
}

/// A test server whose responses wait `delay_ms`.
pub fn server_delay(ns: &Netns, host: &str, port: u16, delay_ms: u64) -> (Proc, Value) {
    serve(
        ns,
        "python3",
        host,
        port,
        &["--delay-ms", &delay_ms.to_string()],
    )
}

/// Starts a peer subcommand (`client`, `fail`) without waiting for it.
pub fn spawn_peer(ns: &Netns, sub: &str, args: &[String]) -> Proc {
    let mut cmd = ns.command("python3");
    cmd.arg(PEER).arg(sub).args(args);
    Proc::spawn(cmd)
}

/// Waits (bounded) for a peer's JSON summary line and its exit.
pub fn finish(mut p: Proc, timeout: Duration) -> Value {
    let v = p.json_line(timeout);
    let _ = p.child.wait();
    v
}

/// Runs a test client to completion (bounded) and returns its totals.
pub fn client(ns: &Netns, args: &[&str]) -> Value {
    let mut cmd = ns.command("python3");
    cmd.arg(PEER).arg("client").args(args);
    let mut p = Proc::spawn(cmd);
    let v = p.json_line(Duration::from_secs(60));
    let _ = p.child.wait();
    v
}

pub type Shared<T> = Arc<Mutex<T>>;

/// The test peers run under the machine's Python (`python3.11` here): the executable name.
pub fn is_python(v: &Value) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("python3"))
}

/// A Python venv under the target directory with `packages` from PyPI (pinned versions), made
/// once per package set; returns its interpreter. Installs are bounded in time.
pub fn python_venv(name: &str, packages: &[&str]) -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let python = venv.join("bin/python");
    let marker = venv.join(format!("installed-{}", packages.join("-")));
    if marker.exists() {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    assert!(
        run_bounded(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            Duration::from_secs(120)
        ),
        "python3 -m venv failed"
    );
    assert!(
        run_bounded(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .args(packages),
            Duration::from_secs(600)
        ),
        "pip install {packages:?} failed"
    );
    std::fs::write(&marker, "").expect("marker");
    python
}

/// Runs a command to completion within `limit` (stdout discarded), killing it past that;
/// whether it succeeded.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> bool {
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs a command to completion and returns its stdout; panics with its output when it fails.
pub fn output_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of depmap's `/metrics` on `127.0.0.1:port` inside `ns` (empty when it does not
/// answer within 10 s).
pub fn metrics_text(ns: &Netns, port: u16) -> String {
    let fetch = format!(
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
    );
    ns.command("python3")
        .args(["-c", &fetch])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A sample's value in metrics text, 0 when absent.
pub fn metric_value(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until `done` holds, checking every 100 ms for at most `timeout`; whether it held.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The text of a file, empty when it cannot be read (yet).
pub fn text_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Replaces what lies between `<!-- NAME begin -->` and `<!-- NAME end -->` in a document
/// (FIDELITY.md's tables, regenerated by the tests that measure them).
pub fn replace_section(path: &str, name: &str, content: &str) {
    let begin = format!("<!-- {name} begin -->\n");
    let end = format!("<!-- {name} end -->");
    let text = std::fs::read_to_string(path).expect("read the document");
    let (Some(a), Some(b)) = (text.find(&begin), text.find(&end)) else {
        panic!("{path} has no {begin:?} … {end:?} section");
    };
    let new = format!("{}{begin}{content}{}", &text[..a], &text[b..]);
    std::fs::write(path, new).expect("write the document");
}

/// Responses, and the sum, min and max of their times (ms), of the VMConnection records
/// matching `filter` (0s when none); a record without responses must have null times.
pub fn response_stats(records: &[Value], filter: impl Fn(&Value) -> bool) -> (i64, i64, i64, i64) {
    let mut n = 0;
    let mut sum = 0;
    let mut min = i64::MAX;
    let mut max = 0;
    for r in of_type(records, "VMConnection")
        .into_iter()
        .filter(|r| filter(r))
    {
        let k = r["Responses"].as_i64().unwrap();
        if k > 0 {
            n += k;
            sum += r["ResponseTimeSum"].as_i64().unwrap();
            min = min.min(r["ResponseTimeMin"].as_i64().unwrap());
            max = max.max(r["ResponseTimeMax"].as_i64().unwrap());
        } else {
            assert!(
                r["ResponseTimeSum"].is_null() && r["ResponseTimeMin"].is_null(),
                "{r}"
            );
        }
    }
    (n, sum, if n > 0 { min } else { 0 }, max)
}
