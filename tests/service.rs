//! depmap under a service manager, emulated: a datagram socket as `NOTIFY_SOCKET`, a
//! `WATCHDOG_USEC`, and the signals systemd sends (SIGHUP for `systemctl reload`, SIGTERM for
//! stop). READY must follow the first poll, keep-alives must keep coming from the poll loop,
//! a bad reloaded configuration must be refused with the running one kept, a good one applied.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The next notification, or None after `timeout`.
fn next(sock: &UnixDatagram, timeout: Duration) -> Option<String> {
    sock.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits (bounded) for a notification containing `what`; returns those seen before it.
fn wait_for(
    sock: &UnixDatagram,
    what: &str,
    timeout: Duration,
) -> Result<Vec<String>, Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match next(sock, left) {
            Some(m) if m.lines().any(|l| l == what) => return Ok(seen),
            Some(m) => seen.push(m),
            None => break,
        }
    }
    Err(seen)
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig}");
}

#[test]
fn ready_watchdog_reload_and_stop_speak_to_the_service_manager() {
    let _serial = serial();
    let ns = Netns::new("svc");
    let dir = TempDir::new("svc");
    let notify = dir.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).expect("notify socket");
    let good = "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n[metrics]\nlisten = \"127.0.0.1:9471\"\n[sink]\nkind = \"stdout\"\n";
    let cfg = config_file(&dir, good);
    let log = dir.0.join("depmap.log");
    let log_file = std::fs::File::create(&log).unwrap();
    // stderr as journald's stream, the way systemd connects it (JOURNAL_STREAM=dev:ino).
    let meta = std::fs::metadata(&log).unwrap();
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "1500000")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    let mut dm = Proc::spawn_logging(cmd, Stdio::from(log_file));
    let pid = dm.child.id();

    // READY after the first poll (the first records are already out by then).
    assert!(
        wait_for(&sock, "READY=1", Duration::from_secs(20)).is_ok(),
        "no READY"
    );
    assert!(!dm.seen.is_empty() || dm.until(Duration::from_secs(5), |l| !l.is_empty()));
    // Keep-alives at a third of the 1.5 s watchdog period, from the poll loop.
    let t = Instant::now();
    for _ in 0..4 {
        assert!(
            wait_for(&sock, "WATCHDOG=1", Duration::from_secs(2)).is_ok(),
            "watchdog"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(4));

    // A configuration with a typo: refused, logged, the running one kept.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("window", "windw"),
    )
    .unwrap();
    signal(pid, "-HUP");
    let seen = wait_for(&sock, "RELOADING=1", Duration::from_secs(2)).unwrap_err();
    assert!(seen.iter().all(|m| !m.contains("RELOADING")));
    // The status line says so, with the reason.
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=reload refused") && m.contains("windw")),
        "{seen:?}"
    );
    // The journal line: priority 3 (error), the reason in the text journalctl shows.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("<3>")
            && l.contains("new configuration is invalid")
            && l.contains("windw")),
        "{text}"
    );
    assert!(
        text.lines().all(|l| l.starts_with('<')),
        "every journal line has its priority: {text}"
    );
    assert!(
        wait_for(&sock, "WATCHDOG=1", Duration::from_secs(2)).is_ok(),
        "the loop goes on"
    );

    // A good one switching to the file sink: applied, the records go to files from then on.
    let records = dir.0.join("records");
    std::fs::write(
        &cfg,
        format!(
            "[agent]\nstate_dir = \"{}\"\n{}[sink.file]\ndir = \"{}\"\n",
            dir.0.join("state").display(),
            good.replace("kind = \"stdout\"", "kind = \"file\""),
            records.display()
        ),
    )
    .unwrap();
    signal(pid, "-HUP");
    assert!(
        wait_for(&sock, "RELOADING=1", Duration::from_secs(5)).is_ok(),
        "no RELOADING"
    );
    assert!(
        wait_for(&sock, "READY=1", Duration::from_secs(5)).is_ok(),
        "no READY after reload"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let has_files = || {
        std::fs::read_dir(&records)
            .map(|d| {
                d.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with("VMConnection")
                        || e.file_name().to_string_lossy().starts_with("VMComputer")
                })
            })
            .unwrap_or(false)
    };
    while !has_files() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(has_files(), "records in {}", records.display());
    // Produced records are counted for every sink, not only the remote ones: the start-up
    // inventory (stdout) and the new sink's (file) at least.
    let metrics = metrics_text(&ns, 9471);
    let computers = metric_value(
        &metrics,
        "depmap_records_produced_total{table=\"VMComputer\"}",
    );
    assert!(computers >= 2, "{metrics}");

    // Stop: STOPPING, then exit 0.
    signal(pid, "-TERM");
    assert!(
        wait_for(&sock, "STOPPING=1", Duration::from_secs(5)).is_ok(),
        "no STOPPING"
    );
    let status = dm.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn reloads_never_write_a_window_twice() {
    let _serial = serial();
    let ns = Netns::new("hup");
    let mut dm = Depmap::start(&ns);
    let (_srv, _) = server(&ns, "127.0.0.1", 7090, 0);
    // Five connections held across several 2 s windows, while depmap is reloaded again and
    // again with the same configuration (a SIGHUP storm).
    let client = spawn_peer(
        &ns,
        "client",
        &[
            "--host",
            "127.0.0.1",
            "--port",
            "7090",
            "--conns",
            "5",
            "--concurrent",
            "--hold-ms",
            "5000",
        ]
        .map(String::from),
    );
    let pid = dm.proc.child.id();
    for _ in 0..10 {
        signal(pid, "-HUP");
        // Paced, so that the storm spans window boundaries (not a wait for a condition).
        std::thread::sleep(Duration::from_millis(300));
    }
    let truth = finish(client, Duration::from_secs(30));
    assert!(dm.wait_for(Duration::from_secs(15), |r| {
        conn_sums(r, |r| {
            r["Direction"] == "inbound" && r["DestinationPort"] == 7090
        })
        .get("LinksTerminated")
        .copied()
            == Some(5)
    }));
    let records = dm.stop();
    // One record per logical connection (and bound port) per window, whatever the reloads.
    let mut seen = std::collections::HashSet::new();
    for r in &records {
        let id = r["ConnectionId"].as_str().or(r["PortId"].as_str());
        if let Some(id) = id {
            let key = (id.to_string(), r["TimeGenerated"].to_string());
            assert!(seen.insert(key.clone()), "written twice: {key:?}");
        }
    }
    // And the figures stay exact.
    let inbound = conn_sums(&records, |r| {
        r["Direction"] == "inbound" && r["DestinationPort"] == 7090
    });
    assert_eq!(inbound["LinksEstablished"], 5);
    assert_eq!(inbound["BytesReceived"], truth["sent"].as_i64().unwrap());
    assert_eq!(inbound["BytesSent"], truth["received"].as_i64().unwrap());
}

/// A tmpfs of the test's own, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(at: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount tmpfs");
        SmallDisk(at)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn records_lost_to_a_full_disk_are_counted_and_logged_at_once() {
    let _serial = serial();
    let ns = Netns::new("full");
    let dir = TempDir::new("full");
    let disk = SmallDisk::new(dir.0.join("records"), "256k");
    // The disk is full before depmap writes a byte.
    let filler = disk.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 512 << 10]);
    let cfg = config_file(
        &dir,
        &format!(
            "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n\
             [metrics]\nlisten = \"127.0.0.1:9472\"\n[sink]\nkind = \"file\"\n[sink.file]\ndir = \"{}\"\n",
            disk.0.display()
        ),
    );
    let log = dir.0.join("depmap.log");
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["run", "--config"]).arg(&cfg);
    let mut dm = Proc::spawn_logging(cmd, Stdio::from(std::fs::File::create(&log).unwrap()));
    let fetch = || metrics_text(&ns, 9472);
    // The first loss is logged at once, with the records it lost.
    assert!(
        wait_until(Duration::from_secs(20), || text_of(&log)
            .contains("could not write")),
        "no log of the loss"
    );
    let text = fetch();
    let dropped = metric_value(&text, "depmap_records_dropped_total");
    assert!(dropped >= 1, "{text}");
    assert!(
        metric_value(&text, "depmap_batches_dropped_total{reason=\"unwritable\"}") >= 1,
        "{text}"
    );
    // Room again: writes resume and say so; every record produced is either in a file or
    // counted as dropped (read while the counters stand still).
    std::fs::remove_file(&filler).unwrap();
    let began = Instant::now();
    loop {
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "never consistent"
        );
        let before = fetch();
        let in_files: u64 = std::fs::read_dir(&disk.0)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson"))
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .count() as u64
            })
            .sum();
        let after = fetch();
        let produced = |t: &str| -> u64 {
            ["VMComputer", "VMProcess", "VMBoundPort", "VMConnection"]
                .iter()
                .map(|table| {
                    metric_value(
                        t,
                        &format!("depmap_records_produced_total{{table=\"{table}\"}}"),
                    )
                })
                .sum()
        };
        let dropped = metric_value(&after, "depmap_records_dropped_total");
        if produced(&before) == produced(&after)
            && in_files > 0
            && dropped == metric_value(&before, "depmap_records_dropped_total")
        {
            assert_eq!(produced(&after), in_files + dropped, "{after}");
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("the sink writes again")
    );
    let status = dm.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn the_metrics_endpoint_survives_idle_huge_and_greedy_clients() {
    let _serial = serial();
    let ns = Netns::new("abuse");
    let dm = Depmap::start_with(
        &ns,
        "cpu_budget = \"0%\"\n[metrics]\nlisten = \"127.0.0.1:9473\"\n",
    );
    // 200 clients that never send, 5 that send 10 MB with no line end, one that pipelines
    // 2,000 requests and never reads — then a scrape, which must be answered.
    let script = r#"
import json, socket, time, urllib.request
A = ('127.0.0.1', 9473)
idle = [socket.create_connection(A) for _ in range(200)]
noisy = []
for _ in range(5):
    s = socket.create_connection(A); s.setblocking(False)
    try: s.send(b'G' * (10 << 20))
    except BlockingIOError: pass
    noisy.append(s)
p = socket.create_connection(A); p.setblocking(False)
try: p.send(b'GET /metrics HTTP/1.1\r\n\r\n' * 2000)
except BlockingIOError: pass
body = urllib.request.urlopen('http://127.0.0.1:9473/metrics', timeout=10).read()
print(json.dumps({"scraped": b'depmap_polls_total' in body}), flush=True)
input()
"#;
    let mut cmd = ns.command("python3");
    cmd.args(["-c", script]).stdin(Stdio::piped());
    let mut abuser = Proc::spawn(cmd);
    let answer = abuser.json_line(Duration::from_secs(30));
    assert_eq!(answer["scraped"], true);
    // Threads did not grow with the clients (tiny_http made one per connection).
    let status = std::fs::read_to_string(format!("/proc/{}/status", dm.proc.child.id())).unwrap();
    let threads: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(threads < 20, "{threads} threads");
    drop(abuser);
    // And it goes on answering.
    assert!(metrics_text(&ns, 9473).contains("depmap_polls_total"));
    let _ = dm.stop();
}

/// Whether `pid` has handlers for SIGHUP and SIGTERM (`SigCgt` in /proc/PID/status).
fn handles_hup_and_term(pid: u32) -> bool {
    let status = text_of(std::path::Path::new(&format!("/proc/{pid}/status")));
    let caught = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let bit = |sig: u32| 1u64 << (sig - 1);
    caught & bit(1) != 0 && caught & bit(15) != 0
}

#[test]
fn start_up_never_waits_for_process_events_and_takes_signals_at_once() {
    let _serial = serial();
    let ns = Netns::new("pidns");
    let dir = TempDir::new("pidns");
    let cfg = config_file(
        &dir,
        "[collect]\nwindow = \"2s\"\nsocket_poll = \"200ms\"\ncpu_budget = \"0%\"\n[sink]\nkind = \"stdout\"\n",
    );
    // In a pid namespace of its own (a container) the kernel ignores the proc connector
    // subscription: no acknowledgement, ever. The crate's subscribe waited for one, so depmap
    // never got to its first poll; now it starts, and says why it has no process events. In
    // the initial network namespace (the connector exists only there; depmap only reads it,
    // sends nothing), as systemd-nspawn ran it in the CI failure.
    let log = dir.0.join("pidns.log");
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--kill-child=SIGTERM",
        DEPMAP,
    ])
    .args(["run", "--config"])
    .arg(&cfg);
    let mut boxed = Proc::spawn_logging(cmd, Stdio::from(std::fs::File::create(&log).unwrap()));
    let first = boxed.line(Duration::from_secs(20));
    assert!(first.contains("VMComputer"), "first record: {first}");
    assert!(
        wait_until(Duration::from_secs(10), || text_of(&log)
            .contains("not in the initial pid and user namespaces")),
        "{}",
        text_of(&log)
    );
    // unshare waits for its child; killed, it passes SIGTERM on (--kill-child).
    let _ = boxed.child.kill();
    let _ = boxed.wait_exit(Duration::from_secs(10));

    // Signals from the first moment the handlers exist: a reload storm then a stop, during
    // start-up, end in a clean exit (a signal before the handlers killed depmap outright).
    for round in 0..3 {
        let mut cmd = ns.command(DEPMAP);
        cmd.args(["run", "--config"]).arg(&cfg);
        let mut dm = Proc::spawn_logging(cmd, Stdio::null());
        let pid = dm.child.id();
        assert!(
            wait_until(Duration::from_secs(10), || handles_hup_and_term(pid)),
            "round {round}: no handlers"
        );
        for _ in 0..20 {
            signal(pid, "-HUP");
        }
        signal(pid, "-TERM");
        let status = dm.wait_exit(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: {status:?}"
        );
    }
}
