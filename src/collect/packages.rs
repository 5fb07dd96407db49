//! Maps an executable path to the distribution package that owns it, for the `VMProcess`
//! `ProductName` / `ProductVersion` / `Group` columns (SPEC §4).
//!
//! Sources, in order of preference:
//! * dpkg (when `var/lib/dpkg/status` exists and is not empty): the owning package is found by
//!   streaming `var/lib/dpkg/info/*.list` line by line, once per batch of uncached paths, stopping
//!   as soon as every wanted path is found. The version is the `Version:` field (with epoch, e.g.
//!   `1:2.3-4`) of the installed stanza in `var/lib/dpkg/status`. Multi-arch list names
//!   (`libc6:amd64.list`) give the package name without the architecture. Diversions are ignored.
//! * rpm, only if `usr/bin/rpm` or `bin/rpm` exists: one `rpm -qf` for every uncached path
//!   of a batch (it was one per path, each up to 5 s, on the poll loop: issue 12), listing the
//!   files of the owning packages, so each line names the file it answers for; at most
//!   [`RPM_PATHS`] paths and [`RPM_WAIT`] per invocation. Version `VERSION-RELEASE` (no epoch).
//!
//! Each path is tried as given (a trailing ` (deleted)` from `/proc/PID/exe` removed), through
//! its canonical form (symlinks resolved), and through the merged-/usr alias of both
//! (`/usr/bin/x` ↔ `/bin/x`, same for `sbin`, `lib`, `lib32`, `lib64`, `libx32`), because the
//! database may name only one of two paths that are the same file.
//!
//! Results, including "not packaged", are cached per path; the whole cache is dropped when the
//! dpkg status file changes (package installed or upgraded). A package that owns the file but
//! has no installed stanza gets an empty version. Unreadable databases give `None`, never a panic.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
}

/// Looks executables up in the dpkg database (/var/lib/dpkg/info/*.list + /var/lib/dpkg/status)
/// or, where there is no dpkg, rpm (`rpm -qf --queryformat ...`, only if /usr/bin/rpm or /bin/rpm exists).
/// Results (including "not packaged") are cached per path.
pub struct PackageDb {
    root: PathBuf,
    cache: HashMap<String, Option<PackageInfo>>,
    /// Installed versions keyed by `name` and by `name:arch`; loaded on first need.
    versions: Option<HashMap<String, String>>,
    /// Modification time of the dpkg status file when the cache was filled.
    status_mtime: Option<SystemTime>,
}

impl Default for PackageDb {
    fn default() -> Self {
        Self::new()
    }
}

impl PackageDb {
    pub fn new() -> PackageDb {
        Self::with_root(PathBuf::from("/"))
    }

    /// For tests: a fake root with var/lib/dpkg/...
    pub fn with_root(root: PathBuf) -> PackageDb {
        PackageDb {
            root: std::fs::canonicalize(&root).unwrap_or(root),
            cache: HashMap::new(),
            versions: None,
            status_mtime: None,
        }
    }

    /// Looks up several paths at once (one pass over the *.list files for all uncached paths).
    pub fn lookup_many(&mut self, paths: &[&str]) -> Vec<Option<PackageInfo>> {
        self.invalidate_if_changed();
        let mut missing: Vec<&str> = Vec::new();
        for p in paths {
            if !self.cache.contains_key(*p) && !missing.contains(p) {
                missing.push(p);
            }
        }
        if !missing.is_empty() {
            let found = if self.has_dpkg() {
                self.dpkg_lookup(&missing)
            } else if let Some(rpm) = self.rpm_binary() {
                self.rpm_lookup_many(&rpm, &missing)
            } else {
                vec![None; missing.len()]
            };
            for (p, info) in missing.iter().zip(found) {
                self.cache.insert((*p).to_string(), info);
            }
        }
        paths
            .iter()
            .map(|p| self.cache.get(*p).cloned().flatten())
            .collect()
    }

    pub fn lookup(&mut self, path: &str) -> Option<PackageInfo> {
        self.lookup_many(&[path]).pop().flatten()
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    fn status_path(&self) -> PathBuf {
        self.at("var/lib/dpkg/status")
    }

    fn has_dpkg(&self) -> bool {
        std::fs::metadata(self.status_path()).is_ok_and(|m| m.is_file() && m.len() > 0)
    }

    fn invalidate_if_changed(&mut self) {
        let mtime = std::fs::metadata(self.status_path())
            .and_then(|m| m.modified())
            .ok();
        if mtime != self.status_mtime {
            self.cache.clear();
            self.versions = None;
            self.status_mtime = mtime;
        }
    }

    /// The paths under which the database may record `path` (first is the path as given).
    fn candidates(&self, path: &str) -> Vec<String> {
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        let mut out = vec![path.to_string()];
        if let Ok(canon) = std::fs::canonicalize(self.at(path))
            && let Ok(rel) = canon.strip_prefix(&self.root)
            && let Some(rel) = rel.to_str()
        {
            out.push(format!("/{rel}"));
        }
        for p in out.clone() {
            out.push(usr_alias(&p));
        }
        let mut uniq: Vec<String> = Vec::new();
        for p in out {
            if !uniq.contains(&p) {
                uniq.push(p);
            }
        }
        uniq
    }

    fn dpkg_lookup(&mut self, paths: &[&str]) -> Vec<Option<PackageInfo>> {
        let mut result: Vec<Option<PackageInfo>> = vec![None; paths.len()];
        // Candidate path bytes -> indexes of the wanted paths it stands for.
        let mut wanted: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            if !plausibly_packaged(p) {
                continue;
            }
            for c in self.candidates(p) {
                wanted.entry(c.into_bytes()).or_default().push(i);
            }
        }
        let mut remaining = wanted.values().flatten().collect::<HashSet<_>>().len();
        if remaining == 0 {
            return result;
        }
        let Ok(dir) = std::fs::read_dir(self.at("var/lib/dpkg/info")) else {
            return result;
        };
        let mut lists: Vec<String> = dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".list"))
            .collect();
        lists.sort();
        let mut owners: Vec<Option<String>> = vec![None; paths.len()];
        let mut line = Vec::new();
        'files: for list in &lists {
            let Ok(f) = std::fs::File::open(self.at("var/lib/dpkg/info").join(list)) else {
                continue;
            };
            let mut r = BufReader::new(f);
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                let Some(idxs) = wanted.get(line.as_slice()) else {
                    continue;
                };
                for &i in idxs {
                    if owners[i].is_none() {
                        owners[i] = Some(list.trim_end_matches(".list").to_string());
                        remaining -= 1;
                    }
                }
                if remaining == 0 {
                    break 'files;
                }
            }
        }
        for (i, owner) in owners.into_iter().enumerate() {
            if let Some(owner) = owner {
                let name = owner.split(':').next().unwrap_or(&owner).to_string();
                let versions = self.versions();
                let version = versions
                    .get(&owner)
                    .or_else(|| versions.get(&name))
                    .cloned()
                    .unwrap_or_default();
                result[i] = Some(PackageInfo { name, version });
            }
        }
        result
    }

    fn versions(&mut self) -> &HashMap<String, String> {
        let path = self.status_path();
        self.versions.get_or_insert_with(|| {
            std::fs::File::open(path)
                .map(|f| parse_dpkg_status(BufReader::new(f)))
                .unwrap_or_default()
        })
    }

    fn rpm_binary(&self) -> Option<PathBuf> {
        ["usr/bin/rpm", "bin/rpm"]
            .iter()
            .map(|p| self.at(p))
            .find(|p| p.is_file())
    }

    /// The owners of `paths` (each through its candidates), from one `rpm -qf` per
    /// [`RPM_PATHS`] candidates.
    fn rpm_lookup_many(&self, rpm: &Path, paths: &[&str]) -> Vec<Option<PackageInfo>> {
        let wanted: Vec<Vec<String>> = paths
            .iter()
            .map(|p| {
                if plausibly_packaged(p) {
                    self.candidates(p)
                } else {
                    Vec::new()
                }
            })
            .collect();
        let mut all: Vec<&str> = Vec::new();
        for c in wanted.iter().flatten() {
            if !all.contains(&c.as_str()) {
                all.push(c);
            }
        }
        let mut owners = HashMap::new();
        for chunk in all.chunks(RPM_PATHS) {
            owners.extend(run_rpm_qf(rpm, &self.root, chunk));
        }
        wanted
            .iter()
            .map(|cands| cands.iter().find_map(|c| owners.get(c).cloned()))
            .collect()
    }
}

/// Swaps a path between its /usr and root forms under merged /usr (`/usr/bin/x` ↔ `/bin/x`).
fn usr_alias(path: &str) -> String {
    const DIRS: [&str; 6] = ["bin/", "sbin/", "lib/", "lib32/", "lib64/", "libx32/"];
    if let Some(rest) = path.strip_prefix("/usr/")
        && DIRS.iter().any(|d| rest.starts_with(d))
    {
        return format!("/{rest}");
    }
    if let Some(rest) = path.strip_prefix('/')
        && DIRS.iter().any(|d| rest.starts_with(d))
    {
        return format!("/usr/{rest}");
    }
    path.to_string()
}

/// False for paths no package manager installs (memfd, temp and home dirs), saving a scan.
fn plausibly_packaged(path: &str) -> bool {
    const NEVER: [&str; 7] = [
        "/tmp/",
        "/var/tmp/",
        "/dev/",
        "/proc/",
        "/home/",
        "/root/",
        "/run/",
    ];
    path.starts_with('/')
        && !path.starts_with("/memfd:")
        && !NEVER.iter().any(|n| path.starts_with(n))
}

/// Versions of installed packages from dpkg's status file, keyed by `name` and `name:arch`.
fn parse_dpkg_status(r: impl BufRead) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let (mut pkg, mut ver, mut arch, mut installed) = (None, None, None, false);
    let mut finish = |pkg: &mut Option<String>,
                      ver: &mut Option<String>,
                      arch: &mut Option<String>,
                      inst: &mut bool| {
        if let (Some(p), Some(v), true) = (pkg.take(), ver.take(), *inst) {
            if let Some(a) = arch.as_deref() {
                out.insert(format!("{p}:{a}"), v.clone());
            }
            out.entry(p).or_insert(v);
        }
        *arch = None;
        *inst = false;
    };
    for line in r.split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end();
        if line.is_empty() {
            finish(&mut pkg, &mut ver, &mut arch, &mut installed);
        } else if let Some(v) = line.strip_prefix("Package:") {
            pkg = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Version:") {
            ver = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Architecture:") {
            arch = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Status:") {
            installed = v.split_whitespace().last() == Some("installed");
        }
    }
    finish(&mut pkg, &mut ver, &mut arch, &mut installed);
    out
}

/// Most paths one `rpm -qf` is asked about.
const RPM_PATHS: usize = 256;
/// Longest wait for one `rpm -qf`; past it the paths count as not packaged.
const RPM_WAIT: Duration = Duration::from_secs(5);

/// One `rpm -qf` for `paths`: the owner of each that has one. The query format lists every
/// file of each owning package with the package (`[%{FILENAMES}…]`), so the answer for a path
/// is the line naming it, whatever the order, and a file of two packages is not ambiguous.
/// Unowned paths print a sentence instead, and rpm then exits non-zero: the status is not
/// used. The output is read as it comes (it can pass a pipe's buffer), bytes that are not
/// UTF-8 skipped line by line, and the process killed after [`RPM_WAIT`].
fn run_rpm_qf(rpm: &Path, root: &Path, paths: &[&str]) -> HashMap<String, PackageInfo> {
    let mut cmd = std::process::Command::new(rpm);
    if root != Path::new("/") {
        cmd.arg("--root").arg(root);
    }
    let spawned = cmd
        .args([
            "-qf",
            "--queryformat",
            "[%{FILENAMES}\\t%{NAME}\\t%{VERSION}-%{RELEASE}\\n]",
            "--",
        ])
        .args(paths)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = spawned else {
        return HashMap::new();
    };
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return HashMap::new();
    };
    let wanted: HashSet<String> = paths.iter().map(|p| (*p).to_string()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::Builder::new()
        .name("rpm-qf".into())
        .spawn(move || {
            let mut found = HashMap::new();
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                let Ok(line) = std::str::from_utf8(&line) else {
                    continue;
                };
                let mut fields = line.splitn(3, '\t');
                if let (Some(file), Some(name), Some(version)) =
                    (fields.next(), fields.next(), fields.next())
                    && !name.is_empty()
                    && wanted.contains(file)
                {
                    found.entry(file.to_string()).or_insert(PackageInfo {
                        name: name.to_string(),
                        version: version.to_string(),
                    });
                }
            }
            let _ = tx.send(found);
        });
    let found = match reader {
        Ok(_) => rx.recv_timeout(RPM_WAIT).unwrap_or_default(),
        Err(_) => HashMap::new(),
    };
    // Done or out of time: either way the child goes (kill is harmless after its exit), and
    // a killed child's closed pipe ends the reader.
    let _ = child.kill();
    let _ = child.wait();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempRoot(PathBuf);
    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_root() -> TempRoot {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let root = std::env::temp_dir().join(format!("depmap-pkg-{}-{nanos}", std::process::id()));
        let info = root.join("var/lib/dpkg/info");
        std::fs::create_dir_all(&info).unwrap();
        std::fs::write(
            info.join("foo:amd64.list"),
            "/.\n/usr\n/usr/bin\n/usr/bin/foo\n/usr/lib/foo/helper\n",
        )
        .unwrap();
        std::fs::write(info.join("bar.list"), "/.\n/bin\n/bin/bar\n/sbin/bard\n").unwrap();
        std::fs::write(info.join("bar.md5sums"), "0 /usr/bin/ghost\n").unwrap();
        std::fs::write(
            root.join("var/lib/dpkg/status"),
            "Package: foo\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1:2.3-4\n\
             Description: foo\n does things\n\n\
             Package: bar\nStatus: deinstall ok config-files\nVersion: 0.1\n\n\
             Package: bar\nStatus: install ok installed\nArchitecture: all\nVersion: 5.2.15-2+b2\n",
        )
        .unwrap();
        TempRoot(root)
    }

    #[test]
    fn dpkg_fake_root() {
        let root = fake_root();
        let mut db = PackageDb::with_root(root.0.clone());
        let foo = Some(PackageInfo {
            name: "foo".into(),
            version: "1:2.3-4".into(),
        });
        let bar = Some(PackageInfo {
            name: "bar".into(),
            version: "5.2.15-2+b2".into(),
        });
        let got = db.lookup_many(&["/usr/bin/foo", "/usr/bin/bar", "/bin/foo", "/usr/bin/ghost"]);
        assert_eq!(got, vec![foo.clone(), bar.clone(), foo.clone(), None]);
        assert_eq!(db.lookup("/lib/foo/helper"), foo);
        assert_eq!(db.lookup("/usr/sbin/bard (deleted)"), bar);
        assert_eq!(db.lookup("/tmp/foo"), None);
        assert_eq!(db.lookup("/opt/none"), None);
        assert_eq!(db.cache.len(), 8);
        assert_eq!(db.lookup("/usr/bin/foo"), foo);
    }

    #[test]
    fn dpkg_symlink_is_resolved() {
        let root = fake_root();
        std::fs::create_dir_all(root.0.join("usr/bin")).unwrap();
        std::fs::write(root.0.join("usr/bin/foo"), "").unwrap();
        std::os::unix::fs::symlink("foo", root.0.join("usr/bin/foo-link")).unwrap();
        let mut db = PackageDb::with_root(root.0.clone());
        assert_eq!(
            db.lookup("/usr/bin/foo-link").map(|p| p.name).as_deref(),
            Some("foo")
        );
    }

    #[test]
    fn rpm_answers_every_path_of_a_batch_from_one_invocation() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("depmap-pkg-rpm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let _clean = TempRoot(root.clone());
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        // A stand-in rpm: logs each call; for each path after `--` prints the owning package's
        // files (several lines, as the query format asks) or the sentence for unowned ones.
        let rpm = root.join("usr/bin/rpm");
        std::fs::write(
            &rpm,
            "#!/bin/sh\necho call >> \"$0.calls\"\nwhile [ \"$1\" != -- ]; do shift; done; shift\n\
             for p in \"$@\"; do case \"$p\" in\n\
             /usr/bin/foo) printf '/usr/share/doc/foo\\tfoo\\t1.0-1\\n/usr/bin/foo\\tfoo\\t1.0-1\\n' ;;\n\
             /usr/sbin/bar) printf '/usr/sbin/bar\\tbar\\t2.0-3\\n/usr/bin/foo\\tother\\t9-9\\n' ;;\n\
             *) echo \"file $p is not owned by any package\" ;;\n\
             esac; done\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&rpm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut db = PackageDb::with_root(root.clone());
        let found = db.lookup_many(&["/usr/bin/foo", "/usr/sbin/bar", "/usr/bin/nobody", "/tmp/x"]);
        let names: Vec<Option<(String, String)>> = found
            .into_iter()
            .map(|f| f.map(|i| (i.name, i.version)))
            .collect();
        assert_eq!(
            names,
            vec![
                Some(("foo".into(), "1.0-1".into())),
                Some(("bar".into(), "2.0-3".into())),
                None,
                None
            ]
        );
        let calls = std::fs::read_to_string(root.join("usr/bin/rpm.calls")).unwrap();
        assert_eq!(calls.lines().count(), 1, "one rpm for the whole batch");
        // Cached: asked again, rpm is not run again.
        db.lookup("/usr/bin/foo");
        let calls = std::fs::read_to_string(root.join("usr/bin/rpm.calls")).unwrap();
        assert_eq!(calls.lines().count(), 1);
    }

    #[test]
    fn no_database() {
        let root = std::env::temp_dir().join(format!("depmap-pkg-empty-{}", std::process::id()));
        let mut db = PackageDb::with_root(root);
        assert_eq!(
            db.lookup_many(&["/usr/bin/foo", "/bin/sh"]),
            vec![None, None]
        );
    }

    #[test]
    fn usr_aliases() {
        assert_eq!(usr_alias("/usr/bin/x"), "/bin/x");
        assert_eq!(usr_alias("/sbin/x"), "/usr/sbin/x");
        assert_eq!(usr_alias("/lib64/ld"), "/usr/lib64/ld");
        assert_eq!(usr_alias("/usr/share/x"), "/usr/share/x");
        assert_eq!(usr_alias("/opt/x"), "/opt/x");
    }

    #[test]
    fn real_bash_on_debian() {
        // The suite's machine is Debian (tests/run.sh installs with apt): no silent pass.
        assert!(
            Path::new("/var/lib/dpkg/status").exists(),
            "this test needs the dpkg database of a Debian machine"
        );
        let mut db = PackageDb::new();
        let got = db.lookup_many(&["/usr/bin/bash", "/bin/bash"]);
        for info in got {
            let info = info.expect("bash is packaged on a dpkg system");
            assert_eq!(info.name, "bash");
            assert!(!info.version.is_empty());
            eprintln!("bash: {info:?}");
        }
    }
}
