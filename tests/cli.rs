//! The command line: configuration errors, check-config, version and `once`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_bad_config_is_one_line_naming_the_key_and_exit_2() {
    let dir = TempDir::new("badcfg");
    let cfg = dir.0.join("depmap.toml");
    std::fs::write(&cfg, "[collect]\nwindow = \"60s\"\nsocket_pol = \"1s\"\n").unwrap();
    for cmd in ["check-config", "run", "once"] {
        let out = Command::new(DEPMAP)
            .args([cmd, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(
            err.contains("socket_pol") && err.contains("depmap.toml"),
            "{err}"
        );
    }
    std::fs::write(&cfg, "[collect]\nwindow = \"soon\"\n").unwrap();
    let out = Command::new(DEPMAP)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
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
    let out = Command::new(DEPMAP)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
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
