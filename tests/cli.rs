//! The command line: configuration errors, check-config, version and `once`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// `depmap <cmd> --config <cfg>`, run to completion.
fn with_config(cmd: &str, cfg: &Path) -> std::process::Output {
    Command::new(DEPMAP)
        .args([cmd, "--config"])
        .arg(cfg)
        .output()
        .unwrap()
}

/// check-config, run and once each refuse `cfg`: exit 2, one line on stderr; those lines.
fn refused_by_every_command(cfg: &Path) -> Vec<String> {
    ["check-config", "run", "once"]
        .iter()
        .map(|cmd| {
            let out = with_config(cmd, cfg);
            assert_eq!(out.status.code(), Some(2), "{cmd}");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: {err}");
            err
        })
        .collect()
}

#[test]
fn a_bad_config_is_one_line_naming_the_key_and_exit_2() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.0.join("depmap.toml");
    std::fs::write(&cfg, "[collect]\nwindow = \"60s\"\nsocket_pol = \"1s\"\n").unwrap();
    for err in refused_by_every_command(&cfg) {
        assert!(
            err.contains("socket_pol") && err.contains("depmap.toml"),
            "{err}"
        );
    }
    std::fs::write(&cfg, "[collect]\nwindow = \"soon\"\n").unwrap();
    let out = with_config("check-config", &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collect.window"));
    // A missing explicit file is an error too.
    let out = Command::new(DEPMAP)
        .args(["check-config", "--config", "/nonexistent/depmap.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A good one prints the effective configuration.
    std::fs::write(&cfg, "[collect]\nwindow = \"30s\"\n").unwrap();
    let out = with_config("check-config", &cfg);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("window = \"30s\"") && text.contains("socket_poll = \"1s\""),
        "{text}"
    );
    let out = Command::new(DEPMAP).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("depmap "));
    let out = Command::new(DEPMAP)
        .args(["once", "--duration", "forever"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn once_reports_capabilities_then_one_window_as_ndjson() {
    let _serial = serial();
    let ns = Netns::new("once");
    // The distribution's Python where there is one, so ProductName can be checked.
    let python = if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let (_srv, _) = server_with(&ns, python, "127.0.0.1", 6060);
    let out = ns
        .command(DEPMAP)
        .args(["once", "--duration", "1s", "--format", "ndjson"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains("capability report") && report.contains("destroy notifications"),
        "{report}"
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let records = parse(&lines);
    assert_eq!(of_type(&records, "VMComputer").len(), 1);
    let port = of_type(&records, "VMBoundPort")
        .into_iter()
        .find(|p| p["Port"] == 6060)
        .expect("bound port");
    assert_eq!(port["Ip"], "127.0.0.1");
    assert!(is_python(&port["ProcessName"]), "{}", port);
    let proc_rec = of_type(&records, "VMProcess")
        .into_iter()
        .find(|p| p["Process"] == port["Process"])
        .expect("process");
    assert!(is_python(&proc_rec["ExecutableName"]), "{}", proc_rec);
    // ProductName/ProductVersion: the package owning the executable, as dpkg says.
    let exe = proc_rec["ExecutablePath"].as_str().unwrap();
    if let Ok(out) = Command::new("dpkg-query").args(["-S", exe]).output()
        && out.status.success()
    {
        let owner = String::from_utf8_lossy(&out.stdout);
        let package = owner.split(':').next().unwrap().trim().to_string();
        let version = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", &package])
            .output()
            .unwrap();
        assert_eq!(proc_rec["ProductName"], package.as_str(), "{proc_rec}");
        assert_eq!(
            proc_rec["ProductVersion"],
            String::from_utf8_lossy(&version.stdout).trim(),
            "{proc_rec}"
        );
        assert_eq!(proc_rec["Group"], package.as_str());
    }
    // Table format for people, filtered to one table.
    let out = ns
        .command(DEPMAP)
        .args(["once", "--duration", "300ms", "--table", "VMBoundPort"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("VMBoundPort (") && !text.contains("VMConnection ("),
        "{text}"
    );
    assert!(text.contains("6060"));
    let _ = Duration::from_secs(0);
}

#[test]
fn check_config_prints_the_values_in_use_and_where_they_came_from() {
    let dir = TempDir::new("check");
    let cfg = config_file(&dir, "[collect]\nwindow = \"30s\"\n");
    let out = with_config("check-config", &cfg);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!("# configuration: {}\n", cfg.display())),
        "{text}"
    );
    // No empty defaults: the computer, the AgentId (there is a machine-id here) and the
    // directory the records go to, as depmap would use them.
    for empty in ["\ncomputer = \"\"", "\nagent_id = \"\"", "\ndir = \"\""] {
        assert!(!text.contains(empty), "{empty}: {text}");
    }
    let records = dir.0.join("state").join("records");
    assert!(
        text.contains(&format!("dir = \"{}\"", records.display())),
        "{text}"
    );
    // What it prints loads back as the same configuration.
    let again = dir.0.join("again.toml");
    std::fs::write(&again, text.as_bytes()).unwrap();
    let out2 = with_config("check-config", &again);
    assert!(out2.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out2.stdout)
            .lines()
            .skip(1)
            .collect::<Vec<_>>(),
        text.lines().skip(1).collect::<Vec<_>>()
    );
    // --quiet: nothing on success.
    let out = Command::new(DEPMAP)
        .args(["check-config", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty());
    // Without --config and no default file: says so.
    if !std::path::Path::new("/etc/depmap/depmap.toml").exists() {
        let out = Command::new(DEPMAP).arg("check-config").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.starts_with("# configuration: the defaults (no file at /etc/depmap/depmap.toml)"),
            "{text}"
        );
    }
}

#[test]
fn paths_must_be_absolute_and_sink_directories_writable() {
    let dir = TempDir::new("paths");
    let cfg = dir.0.join("depmap.toml");
    std::fs::write(&cfg, "[agent]\nstate_dir = \"var/lib/depmap\"\n").unwrap();
    let out = with_config("check-config", &cfg);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("agent.state_dir"));
    // A directory depmap cannot create or write (procfs refuses new files, even to root):
    // refused at once by check-config, run and once, one line naming the key, the path and
    // the fix, exit 2 — not a healthy-looking daemon losing every record.
    let unwritable = "/proc/1/depmap-records";
    let cfg = config_file(&dir, &format!("[sink.file]\ndir = \"{unwritable}\"\n"));
    for err in refused_by_every_command(&cfg) {
        assert!(
            err.contains("sink.file.dir")
                && err.contains(unwritable)
                && err.contains(&format!("ReadWritePaths={unwritable}")),
            "{err}"
        );
    }
    // Outside the unit's state directory check-config notes the drop-in it needs.
    let elsewhere = dir.0.join("records");
    let cfg = config_file(
        &dir,
        &format!("[sink.file]\ndir = \"{}\"\n", elsewhere.display()),
    );
    let out = with_config("check-config", &cfg);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("read-only")
            && err.contains(&format!("ReadWritePaths={}", elsewhere.display())),
        "{err}"
    );
    assert!(!elsewhere.exists(), "check-config creates nothing");
}

#[test]
fn usage_errors_list_the_valid_values_and_help_fits_80_columns() {
    let out = Command::new(DEPMAP)
        .args(["once", "--format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("table") && err.contains("ndjson"), "{err}");
    for args in [&["--help"][..], &["once", "--help"], &["run", "--help"]] {
        let out = Command::new(DEPMAP)
            .args(args)
            .env("COLUMNS", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= 80, "{args:?}: {widest} columns\n{text}");
    }
}

#[test]
fn once_tables_fit_the_terminal_unless_wide_and_ctrl_c_prints_the_window_so_far() {
    let _serial = serial();
    let ns = Netns::new("cols");
    let (_srv, _) = server(&ns, "127.0.0.1", 6070, 0);
    let out = ns
        .command(DEPMAP)
        .args(["once", "--duration", "300ms"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VMBoundPort (1 record)\n"), "{text}");
    let widest = text.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(widest <= 80, "{widest} columns\n{text}");
    assert!(text.contains("--wide shows them"), "{text}");
    let out = ns
        .command(DEPMAP)
        .args(["once", "--duration", "300ms", "--wide"])
        .env("COLUMNS", "80")
        .output()
        .unwrap();
    let wide = String::from_utf8_lossy(&out.stdout);
    assert!(
        wide.contains("IsWildcardBind") && !wide.contains("--wide shows them"),
        "{wide}"
    );

    // Ctrl-C during a long window: the window so far is printed, as SIGTERM does in `run`.
    let dir = TempDir::new("ctrlc");
    let log = dir.0.join("once.log");
    let mut cmd = ns.command(DEPMAP);
    cmd.args(["once", "--duration", "10m", "--format", "ndjson"]);
    let mut once = Proc::spawn_logging(
        cmd,
        std::process::Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    // `ip netns exec` execs depmap: the child's pid is depmap's. The capability report (on
    // stderr with ndjson) is written once the window has begun.
    let pid = once.child.id();
    assert!(
        wait_until(Duration::from_secs(30), || text_of(&log)
            .contains("capability report")),
        "no report"
    );
    let t = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    );
    let status = once.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(20));
    let records = parse(&once.seen);
    assert_eq!(of_type(&records, "VMComputer").len(), 1, "{records:?}");
    assert!(
        of_type(&records, "VMBoundPort")
            .iter()
            .any(|p| p["Port"] == 6070),
        "{records:?}"
    );
}

#[test]
fn a_process_whose_name_is_not_utf8_keeps_its_connections_and_its_record() {
    let _serial = serial();
    let ns = Netns::new("oddname");
    // Any user can do this: prctl(PR_SET_NAME) takes any bytes but NUL.
    let script = "import ctypes, socket, sys, time\n\
                  ctypes.CDLL(None).prctl(15, b'\\xff\\xfeodd', 0, 0, 0)\n\
                  s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                  s.bind(('127.0.0.1', 6071)); s.listen(); print('ready', flush=True)\n\
                  time.sleep(60)\n";
    let mut cmd = ns.command("python3");
    cmd.args(["-c", script]);
    let mut odd = Proc::spawn(cmd);
    assert_eq!(odd.line(Duration::from_secs(20)), "ready");
    let comm = std::fs::read(format!("/proc/{}/comm", odd.child.id())).unwrap_or_default();
    assert!(comm.starts_with(b"\xff\xfeodd"), "{comm:?}");
    let out = ns
        .command(DEPMAP)
        .args(["once", "--duration", "300ms", "--format", "ndjson"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    let records = parse(&lines);
    let port = of_type(&records, "VMBoundPort")
        .into_iter()
        .find(|p| p["Port"] == 6071)
        .expect("bound port");
    assert!(port["Process"].is_string(), "attributed: {port}");
    assert!(
        of_type(&records, "VMProcess")
            .iter()
            .any(|p| p["Process"] == port["Process"]),
        "its VMProcess record"
    );
}

/// One configuration: `[section] key = value` over the test bed's, with the sink it needs.
struct Extreme {
    section: &'static str,
    key: &'static str,
    value: &'static str,
    sink: &'static str,
}

const MAX: &str = "18446744073709551615";

/// Every numeric and duration key at the edges of what it takes, and past them.
fn extremes() -> Vec<Extreme> {
    let mut all = Vec::new();
    let mut add = |section, sink, key, values: &[&'static str]| {
        for value in values {
            all.push(Extreme {
                section,
                key,
                value,
                sink,
            });
        }
    };
    let (c, e) = ("collect", "enrich");
    add(
        c,
        "stdout",
        "window",
        &["\"86400s\"", "\"1ns\"", "\"300000000000y\""],
    );
    add(
        c,
        "stdout",
        "socket_poll",
        &["\"2s\"", "\"1ns\"", "\"300000000000y\""],
    );
    add(
        c,
        "stdout",
        "inventory_interval",
        &["\"604800s\"", "\"1s\"", "\"300000000000y\""],
    );
    add(
        c,
        "stdout",
        "hot_poll",
        &["\"50ms\"", "\"300000000000y\"", "\"1ns\""],
    );
    add(c, "stdout", "hot_sockets", &["0", MAX, "-1"]);
    add(c, "stdout", "max_connections", &["1", MAX, "0"]);
    add(c, "stdout", "max_pools", &["1", MAX]);
    add(
        c,
        "stdout",
        "cpu_budget",
        &[
            "\"100%\"",
            "\"1e308%\"",
            "\"0.0000001%\"",
            "\"-1%\"",
            "\"NaN%\"",
        ],
    );
    add(e, "stdout", "max_indicators", &["0", MAX]);
    add(e, "stdout", "dns_cache_entries", &["0", MAX]);
    add(e, "stdout", "dns_cache_bytes", &["65536", MAX, "0"]);
    add(
        e,
        "stdout",
        "reverse_lookups_per_second",
        &["0", "4294967295", "4294967296"],
    );
    let (d, h) = ("sink.delivery", "http");
    add(d, h, "spool_max_bytes", &["65536", MAX, "0"]);
    add(
        d,
        h,
        "spool_max_age",
        &["\"366d\"", "\"1ns\"", "\"300000000000y\""],
    );
    add(d, h, "batch_max_records", &["0", "1", MAX]);
    add(d, h, "batch_max_bytes", &["0", "1", MAX]);
    add(
        d,
        h,
        "batch_max_age",
        &["\"60m\"", "\"0s\"", "\"300000000000y\""],
    );
    add(
        d,
        h,
        "max_backoff",
        &["\"24h\"", "\"0s\"", "\"100000000000y\""],
    );
    add(
        d,
        h,
        "shutdown_grace",
        &["\"10m\"", "\"0s\"", "\"300000000000y\""],
    );
    add(
        "sink.http",
        h,
        "timeout",
        &["\"10m\"", "\"1ns\"", "\"300000000000y\""],
    );
    add(
        "sink.clickhouse",
        "clickhouse",
        "timeout",
        &["\"10m\"", "\"1ns\"", "\"300000000000y\""],
    );
    add("sink.file", "file", "max_file_bytes", &["0", "1", MAX]);
    add("sink.file", "file", "max_files", &["0", "1", MAX]);
    all
}

/// The configuration text of `x` over the test bed's (2 s windows, 200 ms polls, no budget;
/// the http sink at the test's collector, clickhouse at a closed port of the namespace's
/// loopback).
fn extreme_config(x: &Extreme, state: &Path) -> String {
    let mut sections: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "agent",
            vec![("state_dir".into(), format!("\"{}\"", state.display()))],
        ),
        (
            "collect",
            vec![
                ("window".into(), "\"2s\"".into()),
                ("socket_poll".into(), "\"200ms\"".into()),
                ("cpu_budget".into(), "\"0%\"".into()),
            ],
        ),
        ("enrich", vec![]),
        ("sink", vec![("kind".into(), format!("\"{}\"", x.sink))]),
        ("sink.delivery", vec![]),
        (
            "sink.http",
            vec![("url".into(), "\"http://127.0.0.1:9480/ingest\"".into())],
        ),
        (
            "sink.clickhouse",
            vec![("url".into(), "\"http://127.0.0.1:9\"".into())],
        ),
        ("sink.file", vec![]),
    ];
    let mut text = String::new();
    for (name, keys) in &mut sections {
        if *name == x.section {
            keys.retain(|(k, _)| k != x.key);
            keys.push((x.key.into(), x.value.into()));
        }
        text.push_str(&format!("[{name}]\n"));
        for (k, v) in keys {
            text.push_str(&format!("{k} = {v}\n"));
        }
    }
    text
}

#[test]
fn every_numeric_key_at_its_extremes_is_refused_in_one_line_or_runs_reloads_and_stops() {
    let _serial = serial();
    let ns = Netns::new("extreme");
    let dir = TempDir::new("extreme");
    // A collector that accepts: with one refusing, stop rightly retries for the whole
    // shutdown_grace (up to 10 minutes at its bound).
    let collector = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/collector.py");
    let mut c = ns.command("python3");
    c.arg(collector)
        .args(["--port", "9480", "--log"])
        .arg(dir.0.join("collector.log"));
    let mut collecting = Proc::spawn(c);
    assert_eq!(
        collecting.json_line(Duration::from_secs(10))["listening"],
        9480
    );
    let (mut refused, mut ran) = (0, 0);
    for (i, x) in extremes().iter().enumerate() {
        let name = format!("{}.{} = {}", x.section, x.key, x.value);
        let cfg = dir.0.join(format!("extreme-{i}.toml"));
        std::fs::write(&cfg, extreme_config(x, &dir.0.join(format!("state-{i}")))).unwrap();
        let check = with_config("check-config", &cfg);
        let err = String::from_utf8_lossy(&check.stderr).into_owned();
        assert!(!err.contains("panicked"), "{name}: {err}");
        if check.status.code() == Some(2) {
            assert_eq!(err.trim_end().lines().count(), 1, "{name}: {err}");
            assert!(err.contains(x.key), "{name}: the line names the key: {err}");
            refused += 1;
            continue;
        }
        assert!(check.status.success(), "{name}: {check:?}");
        // Accepted: the daemon starts, takes a reload, stops cleanly, and never panics.
        ran += 1;
        let log = dir.0.join(format!("extreme-{i}.log"));
        let mut cmd = ns.command(DEPMAP);
        cmd.args(["run", "--config"]).arg(&cfg);
        let mut dm = Proc::spawn_logging(
            cmd,
            std::process::Stdio::from(std::fs::File::create(&log).unwrap()),
        );
        let up = wait_until(Duration::from_secs(30), || {
            text_of(&log).contains("depmap running")
        });
        assert!(up, "{name}: {}", text_of(&log));
        let pid = dm.child.id().to_string();
        let kill = |sig: &str| Command::new("kill").args([sig, &pid]).status().unwrap();
        kill("-HUP");
        let reloaded = wait_until(Duration::from_secs(30), || {
            text_of(&log).contains("configuration reloaded")
        });
        assert!(reloaded, "{name}: {}", text_of(&log));
        kill("-TERM");
        let status = dm.wait_exit(Duration::from_secs(60));
        let text = text_of(&log);
        assert!(
            status.is_some_and(|s| s.success()),
            "{name}: {status:?}\n{text}"
        );
        assert!(!text.contains("panicked"), "{name}: {text}");
    }
    eprintln!("extreme values: {refused} refused with one line, {ran} ran, reloaded and stopped");
    assert!(refused > 0 && ran > 0);
}
