//! depmap's package under a real systemd: systemd as PID 1 in a `systemd-nspawn` container
//! booted from a Debian root (debootstrap from the mirror this machine's apt sources name,
//! cached under target/), the .deb built from this test's binary installed with dpkg, and the
//! service driven with systemctl as an administrator would:
//!
//! install (no warnings, sysctl applied, active with READY, running as `depmap` with exactly
//! the unit's capabilities) → records of root processes' connection, exact → a good reload
//! applies, a bad one fails `systemctl reload` with its reason in `journalctl -u depmap` →
//! a sink directory the sandbox makes read-only is refused with the fix named, and the fix
//! works → the watchdog restarts a stopped process → a bad configuration at start is not
//! restarted in a loop → stop is clean and quick → nothing killed by seccomp → remove and
//! purge as the README says.
//!
//! The container shares this machine's network namespace: the package's sysctl
//! (`net.core.rmem_max` to 8 MiB) can be raised only there — a child namespace may not go
//! above the initial one's value — so the test puts the old value back when it ends. Its
//! traffic is on loopback. Skipped, with the reason, only where nspawn cannot run (not root,
//! no systemd-nspawn/debootstrap, or the container does not boot).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The packages the container needs beyond debootstrap's minimal base: systemd as init, the
/// user tool the package depends on, and what the test runs inside (peers, sysctl, ip).
const INCLUDE: &str = "systemd-sysv,dbus,procps,iproute2,python3,adduser";
const PORT: u16 = 7781;
/// CAP_DAC_READ_SEARCH (2), CAP_SYS_PTRACE (19), CAP_PERFMON (38) and CAP_BPF (39): the
/// unit's capabilities.
const UNIT_CAPS: u64 = (1 << 2) | (1 << 19) | (1 << 38) | (1 << 39);

/// Why the test cannot run here, if it cannot.
fn cannot_run() -> Option<String> {
    let root = output_of(Command::new("id").arg("-u"));
    if root.trim() != "0" {
        return Some("not root".into());
    }
    for (tool, package) in [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "no {tool} (Debian package {package}; tests/run.sh installs it)"
            ));
        }
    }
    None
}

/// This machine's Debian codename and the mirror its apt sources name for it.
fn distribution() -> (String, String) {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "bookworm".into());
    let mut sources = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for e in dir.flatten() {
            sources.push(std::fs::read_to_string(e.path()).unwrap_or_default());
        }
    }
    let mirror = sources
        .iter()
        .find_map(|text| mirror_in(text, &codename))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into());
    (codename, mirror)
}

/// The URI of the `main` suite `codename` in a sources.list or deb822 .sources text.
fn mirror_in(text: &str, codename: &str) -> Option<String> {
    // One-line format: deb [options] URI suite components...
    for line in text.lines() {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        if words.len() >= 3 && words[0] == "deb" && words[2] == codename {
            return Some(words[1].to_string());
        }
    }
    // deb822: stanzas separated by blank lines.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let suites = field("Suites:").unwrap_or_default();
        if suites.split_whitespace().any(|s| s == codename)
            && let Some(uris) = field("URIs:")
        {
            return uris.split_whitespace().next().map(str::to_string);
        }
    }
    None
}

/// The Debian root, made once with debootstrap and cached under target/ (≈300 MB, ≈2 min).
fn debian_root() -> PathBuf {
    let (codename, mirror) = distribution();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("nspawn");
    let tag: String = INCLUDE
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let root = cache.join(format!("{codename}-{}", &tag[..tag.len().min(24)]));
    if root.join(".depmap-complete").exists() {
        return root;
    }
    let partial = cache.join(format!("{codename}.partial"));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&cache).expect("cache dir");
    eprintln!(
        "systemd test: debootstrap {codename} from {mirror} into {}",
        root.display()
    );
    assert!(
        run_bounded(
            Command::new("debootstrap")
                .args([
                    "--variant=minbase",
                    &format!("--include={INCLUDE}"),
                    &codename
                ])
                .arg(&partial)
                .arg(&mirror),
            Duration::from_secs(1200)
        ),
        "debootstrap {codename} {mirror} failed"
    );
    std::fs::write(partial.join(".depmap-complete"), "").expect("marker");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&partial, &root).expect("root in place");
    root
}

/// A booted container; shut down (bounded), or killed, when dropped.
struct Container {
    nspawn: Child,
    /// The container's PID 1, as this machine sees it.
    leader: u32,
    log: PathBuf,
}

impl Container {
    /// Boots `root` with a throw-away overlay (nothing is written to the cached root) and
    /// `binds` (host path, container path) read-only. `None` when nspawn cannot boot it.
    fn boot(root: &Path, binds: &[(&Path, &str)], log: PathBuf) -> Option<Container> {
        let mut cmd = Command::new("systemd-nspawn");
        // No host systemd runs here: --keep-unit and --register=no (no machined, no scope).
        cmd.args([
            "--boot",
            "--keep-unit",
            "--register=no",
            "--volatile=overlay",
            // nspawn's default capabilities lack the event source's two, and its seccomp
            // filter refuses bpf(2) with EPERM (measured): a host's systemd has neither limit.
            "--capability=CAP_BPF,CAP_PERFMON",
            "--system-call-filter=bpf",
        ])
        .args(["--console=pipe", "--machine"])
        .arg(format!("dmt-{}", std::process::id()))
        .arg("-D")
        .arg(root);
        for (host, inside) in binds {
            cmd.arg(format!("--bind-ro={}:{inside}", host.display()));
        }
        // /proc/sys writable: the package's sysctl is part of what is tested.
        let out = std::fs::File::create(&log).ok()?;
        cmd.env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "1")
            .stdin(Stdio::null())
            .stderr(out.try_clone().ok()?)
            .stdout(out);
        let mut nspawn = cmd.spawn().ok()?;
        let pid = nspawn.id();
        let began = Instant::now();
        let leader = loop {
            if let Ok(Some(_)) = nspawn.try_wait() {
                return None;
            }
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default();
            // nspawn's first child sets the container up and execs init: wait for systemd.
            if let Some(l) = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                && std::fs::read_to_string(format!("/proc/{l}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            {
                break l;
            }
            if began.elapsed() > Duration::from_secs(30) {
                let _ = nspawn.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let c = Container {
            nspawn,
            leader,
            log,
        };
        // Signalled: systemd itself says when the boot is over ("offline" until its bus is
        // up, "starting" while units start).
        let began = Instant::now();
        loop {
            let (_, state) = c.run("timeout 120 systemctl is-system-running --wait");
            match state.trim() {
                "running" | "degraded" => return Some(c),
                _ if began.elapsed() < Duration::from_secs(120) => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                other => {
                    eprintln!("systemd test: the boot ended in `{other}`");
                    return None;
                }
            }
        }
    }

    /// Runs `script` with sh in every namespace of the container (bounded by `timeout`
    /// inside the script where it can wait); its status and stdout+stderr.
    fn run(&self, script: &str) -> (bool, String) {
        let out: Output = Command::new("timeout")
            .args(["180", "nsenter", "-t", &self.leader.to_string(), "-a"])
            .args(["sh", "-c", script])
            .output()
            .expect("nsenter");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// As [`Container::run`], asserting success; its output. A failure shows the unit's
    /// status and journal (CI keeps only the test's output).
    fn ok(&self, script: &str) -> String {
        let (ok, text) = self.run(script);
        if !ok {
            let (_, status) = self.run("systemctl status depmap --no-pager; journalctl -u depmap --no-pager -n 60 -o short-monotonic");
            panic!("`{script}` failed:\n{text}\n--- depmap's status and journal:\n{status}");
        }
        text
    }

    /// A property of depmap.service (`systemctl show`).
    fn show(&self, property: &str) -> String {
        self.ok(&format!("systemctl show -p {property} --value depmap"))
            .trim()
            .to_string()
    }

    /// Writes a file in the container (root's, as the administrator would).
    fn write(&self, inside: &str, text: &str) {
        let path = self.path(inside);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("directory in the container");
        }
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{inside}: {e}"));
    }

    /// The container's file system, as this machine sees it.
    fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.leader))
    }

    /// depmap's journal in journalctl's default output.
    fn journal(&self) -> String {
        self.ok("journalctl -u depmap --no-pager -o short")
    }

    /// Starts a program in the container (its namespaces) as a child of the test.
    fn spawn(&self, args: &[&str]) -> Proc {
        let mut cmd = Command::new("nsenter");
        // The program is nsenter's child in the container's pid namespace: it ends with the
        // container at the latest (util-linux 2.38's nsenter has no --kill-child).
        cmd.args(["-t", &self.leader.to_string(), "-a"]).args(args);
        Proc::spawn(cmd)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SIGTERM asks nspawn for an orderly shutdown; the leader's death ends the rest.
        let pid = self.nspawn.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let began = Instant::now();
        while began.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill")
            .args(["-KILL", &self.leader.to_string()])
            .status();
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        if let Ok(text) = std::fs::read_to_string(&self.log) {
            eprintln!("systemd test: nspawn did not stop in time; its log:\n{text}");
        }
    }
}

/// Puts this machine's `net.core.rmem_max` back as it was.
struct RestoreRmemMax(String);

impl Drop for RestoreRmemMax {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/core/rmem_max", &self.0);
    }
}

/// Every record of `table` the file sink wrote under `dir` (in the container).
fn records(c: &Container, dir: &str, table: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(c.path(dir)) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{table}-")) && name.ends_with(".ndjson") {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                out.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
            }
        }
    }
    out
}

/// Waits (bounded) until the records of `table` under `dir` satisfy `done`.
fn wait_records(
    c: &Container,
    dir: &str,
    table: &str,
    timeout: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    wait_until(timeout, || done(&records(c, dir, table)));
    records(c, dir, table)
}

fn sum(records: &[Value], filter: impl Fn(&Value) -> bool, column: &str) -> i64 {
    records
        .iter()
        .filter(|r| filter(r))
        .filter_map(|r| r[column].as_i64())
        .sum()
}

/// A capability set from /proc/PID/status (`CapEff:` etc.).
fn caps(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

const CONFIG: &str = "/etc/depmap/depmap.toml";
const BAD_CONFIG: &str = "[collect]\nwindw = \"1s\"\n";
const TEST_CONFIG: &str =
    "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n";

#[test]
fn the_package_under_a_real_systemd() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        eprintln!(
            "SKIPPED the_package_under_a_real_systemd: systemd-nspawn cannot run here: {why}"
        );
        return;
    }
    let root = debian_root();
    let work = TempDir::new("nspawn");
    // The .deb of this test build's binary.
    let pkg = work.0.join("pkg");
    output_of(
        Command::new(format!("{ROOT}/packaging/build.sh"))
            .args([
                "--no-build",
                "--profile",
                "dev",
                "--fast",
                "--deb-only",
                "--out",
            ])
            .arg(&pkg),
    );
    let peers = PathBuf::from(format!("{ROOT}/tests/peers"));
    let rmem_before = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap_or_default();
    let _restore = RestoreRmemMax(rmem_before.clone());
    // Below the package's value, so that the install has something to raise.
    let _ = std::fs::write("/proc/sys/net/core/rmem_max", "212992");
    let Some(c) = Container::boot(
        &root,
        &[(&pkg, "/mnt/pkg"), (&peers, "/mnt/peers")],
        work.0.join("nspawn.log"),
    ) else {
        let log = std::fs::read_to_string(work.0.join("nspawn.log")).unwrap_or_default();
        eprintln!("SKIPPED the_package_under_a_real_systemd: the container did not boot:\n{log}");
        return;
    };
    let systemd = c.ok("systemctl --version | head -1");
    eprintln!("systemd test: booted {}", systemd.trim());

    // Install: no warnings, the sysctl applied, the service active and ready.
    let install = c.ok("dpkg -i /mnt/pkg/depmap_*.deb 2>&1");
    assert!(
        !install.to_lowercase().contains("warning") && !install.contains("not raised"),
        "{install}"
    );
    assert_eq!(
        c.ok("sysctl -n net.core.rmem_max").trim(),
        "8388608",
        "the package raises net.core.rmem_max at install"
    );
    // The package starts it without waiting for READY: wait for systemd to say it is up.
    c.ok("timeout 60 sh -c 'while [ \"$(systemctl show -p ActiveState --value depmap)\" = activating ]; do sleep 0.2; done'");
    assert_eq!(c.show("ActiveState"), "active", "{}", c.journal());
    assert!(
        c.show("StatusText").starts_with("first poll done"),
        "READY with its status: {}",
        c.show("StatusText")
    );
    // The kernel event source runs under the unit's capabilities and system-call filter.
    assert!(
        c.show("StatusText")
            .contains("kernel events (owners, response times)"),
        "{}\n{}",
        c.show("StatusText"),
        c.journal()
    );
    // As `depmap`, with exactly the unit's two capabilities.
    let pid = c.show("MainPID");
    let status = c.ok(&format!("cat /proc/{pid}/status"));
    let uid = c.ok("id -u depmap").trim().to_string();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid)),
        "{status}"
    );
    for field in ["CapEff:", "CapPrm:", "CapAmb:", "CapBnd:"] {
        assert_eq!(caps(&status, field), UNIT_CAPS, "{field} of\n{status}");
    }
    let exposure = c.ok("systemd-analyze security --no-pager depmap | tail -1");
    eprintln!("systemd test: live {}", exposure.trim());
    let level: f64 = exposure
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or(10.0);
    assert!(level <= 2.5, "{exposure}");

    // A good reload applies: 2 s windows; the status line says so.
    c.write(CONFIG, TEST_CONFIG);
    c.ok("systemctl reload depmap");
    assert!(
        c.show("StatusText").starts_with("configuration reloaded"),
        "{}",
        c.show("StatusText")
    );
    assert!(c.journal().contains("configuration reloaded"));

    // Root processes' connection: attributed on both ends, bytes exact.
    let mut server = c.spawn(&[
        "python3",
        "/mnt/peers/peer.py",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        &PORT.to_string(),
    ]);
    server.json_line(Duration::from_secs(20));
    let mut client = c.spawn(&[
        "python3",
        "/mnt/peers/peer.py",
        "client",
        "--host",
        "127.0.0.1",
        "--port",
        &PORT.to_string(),
        "--exchanges",
        "3",
        "--req",
        "300",
        "--resp",
        "5000",
        "--hold-ms",
        "1500",
    ]);
    let truth = client.json_line(Duration::from_secs(60));
    let to_port = |r: &Value| r["DestinationPort"] == PORT;
    let conns = wait_records(
        &c,
        "/var/lib/depmap/records",
        "VMConnection",
        Duration::from_secs(30),
        |r| {
            sum(
                r,
                |r| to_port(r) && r["Direction"] == "inbound",
                "LinksTerminated",
            ) >= 1
                && sum(
                    r,
                    |r| to_port(r) && r["Direction"] == "outbound",
                    "LinksTerminated",
                ) >= 1
        },
    );
    let inbound = |r: &Value| to_port(r) && r["Direction"] == "inbound";
    let outbound = |r: &Value| to_port(r) && r["Direction"] == "outbound";
    assert_eq!(
        sum(&conns, inbound, "BytesReceived"),
        truth["sent"].as_i64().unwrap()
    );
    assert_eq!(
        sum(&conns, inbound, "BytesSent"),
        truth["received"].as_i64().unwrap()
    );
    assert_eq!(
        sum(&conns, outbound, "BytesSent"),
        truth["sent"].as_i64().unwrap()
    );
    assert_eq!(sum(&conns, outbound, "LinksEstablished"), 1);
    for r in conns.iter().filter(|r| to_port(r)) {
        assert!(
            is_python(&r["ProcessName"]),
            "a root process, attributed: {r}"
        );
    }
    drop(server);
    c.ok("pkill -f 'peer.py serv[e]' || true"); // [e]: not this shell's own command line

    // A bad file: `systemctl reload` fails, the reason is in the default journal output, the
    // running configuration stays; the daemon refuses it too when signalled directly.
    c.write(CONFIG, BAD_CONFIG);
    let (reloaded, said) = c.run("systemctl reload depmap");
    assert!(
        !reloaded,
        "a bad configuration fails systemctl reload: {said}"
    );
    assert!(c.journal().contains("windw"), "{}", c.journal());
    c.ok("systemctl kill -s HUP depmap");
    let refused = || {
        c.ok("journalctl -u depmap -p err --no-pager -o cat")
            .contains("keeping the running one")
    };
    assert!(
        wait_until(Duration::from_secs(20), refused),
        "{}",
        c.journal()
    );
    let errors = c.ok("journalctl -u depmap -p err --no-pager -o cat");
    assert!(
        errors
            .lines()
            .any(|l| l.contains("keeping the running one") && l.contains("windw")),
        "the reason in the message: {errors}"
    );
    assert!(c.show("StatusText").starts_with("reload refused"));
    assert_eq!(c.show("ActiveState"), "active");

    // A sink directory outside the state directory is read-only under the sandbox: refused
    // with the path and the fix; the README's fix (a ReadWritePaths= drop-in) works.
    let elsewhere = "/srv/depmap-records";
    c.ok(&format!(
        "mkdir -p {elsewhere} && chown depmap:depmap {elsewhere}"
    ));
    c.write(
        CONFIG,
        &format!("{TEST_CONFIG}[sink.file]\ndir = \"{elsewhere}\"\n"),
    );
    let (reloaded, said) = c.run("systemctl reload depmap");
    assert!(!reloaded, "{said}");
    let journal = c.journal();
    assert!(
        journal.contains(&format!("ReadWritePaths={elsewhere}")),
        "{journal}"
    );
    c.write(
        "/etc/systemd/system/depmap.service.d/records.conf",
        &format!("[Service]\nReadWritePaths={elsewhere}\n"),
    );
    c.ok("systemctl daemon-reload && systemctl restart depmap");
    let moved = wait_records(&c, elsewhere, "VMComputer", Duration::from_secs(30), |r| {
        !r.is_empty()
    });
    assert!(!moved.is_empty(), "records in {elsewhere}");

    // The watchdog restarts a stopped process (shortened for the test by a drop-in).
    c.write(
        "/etc/systemd/system/depmap.service.d/watchdog.conf",
        "[Service]\nWatchdogSec=3s\nTimeoutAbortSec=2s\n",
    );
    c.ok("systemctl daemon-reload && systemctl restart depmap");
    let stopped = c.show("MainPID");
    c.ok(&format!("kill -STOP {stopped}"));
    let restarted = || {
        let pid = c.show("MainPID");
        pid != stopped && pid != "0" && c.show("ActiveState") == "active"
    };
    assert!(
        wait_until(Duration::from_secs(60), restarted),
        "{}",
        c.journal()
    );
    assert!(c.journal().contains("Watchdog timeout"), "{}", c.journal());
    c.ok("rm /etc/systemd/system/depmap.service.d/watchdog.conf && systemctl daemon-reload");

    // Other network namespaces: without the README's drop-in depmap says why it cannot enter
    // them (and runs on); with it, a listener in another namespace is in the records.
    c.ok("(unshare -n python3 /mnt/peers/peer.py serve --host 0.0.0.0 --port 9877 >/dev/null 2>&1 &)");
    c.write(CONFIG, &format!("{TEST_CONFIG}namespaces = \"all\"\n"));
    c.ok("systemctl restart depmap");
    let refused = || c.journal().contains("needs CAP_SYS_ADMIN");
    assert!(
        wait_until(Duration::from_secs(30), refused),
        "{}",
        c.journal()
    );
    assert_eq!(c.show("ActiveState"), "active");
    c.write(
        "/etc/systemd/system/depmap.service.d/namespaces.conf",
        &format!("[Service]\n{}", readme_drop_in("CAP_SYS_ADMIN")),
    );
    c.ok("systemctl daemon-reload && systemctl restart depmap");
    let other = wait_records(
        &c,
        "/var/lib/depmap/records",
        "VMBoundPort",
        Duration::from_secs(30),
        |r| r.iter().any(|p| p["Port"] == 9877),
    );
    assert!(other.iter().any(|p| p["Port"] == 9877), "{}", c.journal());
    c.ok("rm /etc/systemd/system/depmap.service.d/namespaces.conf && systemctl daemon-reload");
    let _ = c.run("pkill -f 'peer.py serve --host 0.0.0.0 --port 9877'");

    // A bad configuration at start: failed, not restarted every RestartSec.
    c.write(CONFIG, BAD_CONFIG);
    let (started, _) = c.run("systemctl restart depmap");
    assert!(!started);
    assert_eq!(c.show("SubState"), "failed", "RestartPreventExitStatus=2");
    assert_eq!(c.show("ExecMainStatus"), "2");

    // Stop: clean, within TimeoutStopSec, the window flushed.
    c.write(CONFIG, TEST_CONFIG);
    c.ok("systemctl start depmap");
    let began = Instant::now();
    c.ok("systemctl stop depmap");
    let took = began.elapsed();
    eprintln!("systemd test: systemctl stop took {took:?}");
    assert!(took < Duration::from_secs(30));
    assert_eq!(c.show("Result"), "success");
    assert_eq!(c.show("ExecMainStatus"), "0");
    let journal = c.journal();
    assert!(journal.contains("current window flushed"), "{journal}");
    // Nothing killed by the system-call filter, in any of the runs.
    assert!(
        !journal.contains("status=31/SYS") && !journal.contains("SIGSYS"),
        "{journal}"
    );

    // Remove keeps the configuration and the state; purge takes both; the user stays.
    c.ok("systemctl start depmap && dpkg -r depmap");
    assert!(!c.path("/usr/bin/depmap").exists());
    assert!(c.path("/etc/depmap/depmap.toml").exists());
    assert!(c.path("/var/lib/depmap").exists());
    let (active, _) = c.run("systemctl is-active depmap");
    assert!(!active, "stopped by remove");
    c.ok("dpkg -P depmap");
    assert!(!c.path("/etc/depmap").exists());
    assert!(!c.path("/var/lib/depmap").exists());
    c.ok("getent passwd depmap");
}

#[test]
fn the_mirror_comes_from_either_sources_format() {
    assert_eq!(
        mirror_in(
            "deb [arch=amd64] http://m.example/debian bookworm main\n",
            "bookworm"
        ),
        Some("http://m.example/debian".into())
    );
    let deb822 = "Types: deb\nURIs: http://other.example/x\nSuites: trixie\n\nTypes: deb\nURIs: http://m.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n";
    assert_eq!(
        mirror_in(deb822, "bookworm"),
        Some("http://m.example/debian".into())
    );
    assert_eq!(mirror_in(deb822, "sid"), None);
}

/// The `[Service]` lines of the README's drop-in whose capability line names `cap` (without
/// their `# ` prefix): the test runs what the README tells people to write.
fn readme_drop_in(cap: &str) -> String {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).expect("README.md");
    let lines: Vec<&str> = readme.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("# CapabilityBoundingSet=") && l.ends_with(cap))
        .unwrap_or_else(|| panic!("no drop-in for {cap} in README.md"));
    lines[at..]
        .iter()
        .take_while(|l| l.starts_with("# ") && !l.starts_with("# ["))
        .map(|l| format!("{}\n", &l[2..]))
        .collect()
}
