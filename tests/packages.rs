//! Packaging: `packaging/build.sh` packages the binary these tests were built with into a
//! .deb and an .rpm; their control data, maintainer scripts and files are checked, the .deb is
//! unpacked into a clean root whose depmap runs, and the shipped default configuration is
//! checked against the code (commented out it is the defaults; uncommented, every key parses).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

use common::output_of as run;

fn find(dir: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap_or_else(|| panic!("no .{ext} in {}", dir.display()))
}

#[test]
fn the_deb_and_the_rpm_carry_the_binary_unit_config_docs_and_scripts() {
    let out = TempDir::new("pkg");
    // The binary of this test build (target/debug/depmap), not a rebuild.
    let built = Command::new(format!("{ROOT}/packaging/build.sh"))
        .args(["--no-build", "--profile", "dev", "--fast", "--out"])
        .arg(&out.0)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&built.stderr);
    assert!(built.status.success(), "{said}");
    // Metadata complete: no tool complains of a missing field (the license, say).
    assert!(!said.contains("missing"), "{said}");
    let deb = find(&out.0, "deb");
    let rpm = find(&out.0, "rpm");

    // Control data: the conffile and the maintainer scripts.
    let ctrl = out.0.join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctrl));
    let control = std::fs::read_to_string(ctrl.join("control")).unwrap();
    assert!(control.contains("Package: depmap"), "{control}");
    // The summary is one short line (dpkg and apt show it in 80 columns), the rest below it.
    let summary = control
        .lines()
        .find_map(|l| l.strip_prefix("Description: "))
        .expect("Description");
    assert!(summary.len() <= 60, "{summary}");
    assert!(control.contains("\n depmap maps a Linux host"), "{control}");
    assert!(control.contains("adduser"), "{control}");
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/depmap/depmap.toml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper") && postinst.contains("enable"),
        "{postinst}"
    );
    assert!(
        std::fs::read_to_string(ctrl.join("prerm"))
            .unwrap()
            .contains("deb-systemd-invoke")
    );
    assert!(
        std::fs::read_to_string(ctrl.join("postrm"))
            .unwrap()
            .contains("rm -rf /var/lib/depmap")
    );

    // Unpacked into a clean root: the files are there, and the binary runs.
    let root = out.0.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let unit = [
        "lib/systemd/system/depmap.service",
        "usr/lib/systemd/system/depmap.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .expect("the unit in the .deb");
    assert_eq!(
        std::fs::read_to_string(unit).unwrap(),
        std::fs::read_to_string(format!("{ROOT}/systemd/depmap.service")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/depmap/depmap.toml")).unwrap(),
        std::fs::read_to_string(format!("{ROOT}/packaging/depmap.toml")).unwrap()
    );
    for f in [
        "usr/lib/sysctl.d/60-depmap.conf",
        "usr/share/doc/depmap/README.md",
        "usr/share/depmap/clickhouse/schema.sql",
        "usr/share/depmap/clickhouse/map.sql",
        "usr/share/depmap/grafana/depmap-map.json",
    ] {
        assert!(root.join(f).is_file(), "{f}");
    }
    let version = run(Command::new(root.join("usr/bin/depmap")).arg("version"));
    assert_eq!(
        version.trim(),
        format!("depmap {}", env!("CARGO_PKG_VERSION"))
    );
    let checked = run(Command::new(root.join("usr/bin/depmap"))
        .args(["check-config", "--config"])
        .arg(root.join("etc/depmap/depmap.toml")));
    assert!(
        checked.contains("state_dir = \"/var/lib/depmap\""),
        "{checked}"
    );

    // The .rpm: files, the config marked noreplace, the scripts.
    let files = run(Command::new("rpm").arg("-qlp").arg(&rpm));
    for f in [
        "/usr/bin/depmap",
        "/usr/lib/systemd/system/depmap.service",
        "/etc/depmap/depmap.toml",
        "/usr/lib/sysctl.d/60-depmap.conf",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} in {files}");
    }
    let config = run(Command::new("rpm").arg("-qcp").arg(&rpm));
    assert!(
        config.lines().any(|l| l == "/etc/depmap/depmap.toml"),
        "{config}"
    );
    let scripts = run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm));
    assert!(
        scripts.contains("useradd -r") && scripts.contains("systemctl preset"),
        "{scripts}"
    );
    // The sysctl is applied by a path that exists on RHEL (systemd-sysctl is not on PATH).
    assert!(
        scripts.contains("/usr/lib/systemd/systemd-sysctl") && scripts.contains("sysctl -q -p"),
        "{scripts}"
    );
    let tags = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{SUMMARY}|%{LICENSE}"])
        .arg(&rpm));
    assert_eq!(
        tags,
        "Host network dependency agent (VM Insights Map tables)|Proprietary"
    );
}

#[test]
fn the_shipped_default_config_is_the_defaults_and_every_key_in_it_is_valid() {
    let text = std::fs::read_to_string(format!("{ROOT}/packaging/depmap.toml")).unwrap();
    let dir = TempDir::new("defcfg");
    let check = |text: &str| {
        let path = dir.0.join("depmap.toml");
        std::fs::write(&path, text).unwrap();
        values(&run(Command::new(DEPMAP)
            .args(["check-config", "--config"])
            .arg(&path)))
    };
    // The values, without the first line (which names the file they came from).
    fn values(checked: &str) -> String {
        checked.lines().skip(1).collect::<Vec<_>>().join("\n")
    }
    let defaults = values(&run(Command::new(DEPMAP).args([
        "check-config",
        "--config",
        "/dev/null",
    ])));
    assert_eq!(check(&text), defaults);
    // Uncommented: each `# key = value` and `#[section]` becomes live; still the defaults.
    let live: String = text
        .lines()
        .map(|l| {
            if let Some(section) = l.strip_prefix("#[") {
                format!("[{section}")
            } else if let Some(kv) = l.strip_prefix("# ")
                && kv
                    .split_once(" = ")
                    .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            {
                kv.to_string()
            } else {
                String::new()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(check(&live), defaults, "{live}");
}
