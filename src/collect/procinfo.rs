//! What /proc says about one process: identity for its pool and the VMProcess columns.
//!
//! Every read may fail: the process can exit between two reads, or belong to a user whose
//! files we may not read. A process that vanished yields `None`; an unreadable field is `None`.
//!
//! Hand-written rather than with procfs: depmap reads three fields of `stat`, the `Uid:` line
//! of `status`, `cgroup` and the NUL-separated `cmdline`, all as bytes (names and paths are not
//! UTF-8 by promise) — a few dozen unit-tested lines; procfs is already ruled out for the fd
//! walk (`ownership`), and would be a second way of reading the same directory.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The /proc facts of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    /// Start time in clock ticks after boot (field 22 of `stat`): with the pid, the identity of
    /// a process that survives pid reuse.
    pub start_ticks: u64,
    /// `comm` (the kernel's short name), used when the executable is unreadable.
    pub comm: String,
    pub exe: Option<String>,
    /// Arguments joined by spaces; arguments are NUL-separated in /proc and may be huge, so the
    /// line is capped at [`MAX_CMDLINE`] bytes.
    pub cmdline: String,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    /// The cgroup (v2 unified path, else the first line) identifying the container or unit.
    pub cgroup: Option<String>,
}

/// Longest command line kept, in bytes.
pub const MAX_CMDLINE: usize = 4096;

impl ProcessInfo {
    /// Reads `/proc/<pid>`; `None` if the process is gone or its `stat` is unreadable.
    /// `stat`: what was just read of it, if anything (not read again).
    pub fn read(proc_root: &Path, pid: u32, stat: Option<Stat>) -> Option<ProcessInfo> {
        let dir = proc_root.join(pid.to_string());
        let Stat {
            comm, start_ticks, ..
        } = stat.or_else(|| Stat::read(proc_root, pid))?;
        let exe = fs::read_link(dir.join("exe")).ok().map(path_string);
        let cmdline = fs::read(dir.join("cmdline"))
            .map(|b| join_cmdline(&b))
            .unwrap_or_default();
        let cwd = fs::read_link(dir.join("cwd")).ok().map(path_string);
        let uid = read_lossy(&dir.join("status")).and_then(|s| parse_status_uid(&s));
        let cgroup = read_lossy(&dir.join("cgroup")).and_then(|s| parse_cgroup(&s));
        Some(ProcessInfo {
            pid,
            start_ticks,
            comm,
            exe,
            cmdline,
            cwd,
            uid,
            cgroup,
        })
    }

    /// The executable's file name, else `comm`.
    pub fn executable_name(&self) -> String {
        self.exe
            .as_deref()
            .and_then(|e| e.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| self.comm.clone())
    }
}

fn path_string(p: PathBuf) -> String {
    let s = String::from_utf8_lossy(p.as_os_str().as_bytes()).into_owned();
    // A replaced binary reads as "/usr/bin/x (deleted)"; the pool is the same program.
    s.strip_suffix(" (deleted)")
        .map(str::to_string)
        .unwrap_or(s)
}

/// What depmap takes from `/proc/<pid>/stat`, parsed once per read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Whatever the process set (`prctl(PR_SET_NAME)`, any bytes but NUL), rendered as UTF-8
    /// where valid, each invalid byte as U+FFFD (README "The records in brief").
    pub comm: String,
    /// The state letter (field 3): `R`, `S`, `Z`, ...
    pub state: u8,
    /// Start time since boot in clock ticks (field 22): with the pid, the process's identity.
    pub start_ticks: u64,
}

impl Stat {
    /// `comm` may contain spaces and parentheses, so the fields after it are found from the
    /// last `)`.
    pub fn parse(stat: &[u8]) -> Option<Stat> {
        let (comm, rest) = split_stat(stat)?;
        let mut fields = std::str::from_utf8(rest).ok()?.split_whitespace();
        let state = *fields.next()?.as_bytes().first()?;
        // Fields 4.. follow; start time is field 22, i.e. index 18 from field 4.
        let start_ticks = fields.nth(18)?.parse().ok()?;
        Some(Stat {
            comm: String::from_utf8_lossy(comm).into_owned(),
            state,
            start_ticks,
        })
    }

    /// Reads and parses `<proc_root>/<pid>/stat`; `None` when the process is gone.
    pub fn read(proc_root: &Path, pid: u32) -> Option<Stat> {
        fs::read(proc_root.join(pid.to_string()).join("stat"))
            .ok()
            .and_then(|s| Stat::parse(&s))
    }

    /// Running: not a zombie, not dead.
    pub fn running(&self) -> bool {
        !matches!(self.state, b'Z' | b'X')
    }
}

/// `comm` (between the first `(` and the last `)`) and the fields after it.
fn split_stat(stat: &[u8]) -> Option<(&[u8], &[u8])> {
    let open = stat.iter().position(|b| *b == b'(')?;
    let close = stat.iter().rposition(|b| *b == b')')?;
    Some((stat.get(open + 1..close)?, stat.get(close + 1..)?))
}

/// A /proc text file whose lines may hold bytes that are not UTF-8 (`status` has the
/// process's name, `cgroup` paths any bytes): read whole, invalid bytes as U+FFFD.
fn read_lossy(path: &Path) -> Option<String> {
    fs::read(path)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Real uid from the `Uid:` line of `/proc/<pid>/status`.
pub fn parse_status_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// depmap's own effective capabilities (the `CapEff:` mask of /proc/self/status; 0 when
/// unreadable).
pub fn effective_capabilities() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// The cgroup v2 path (`0::/path`), else the first hierarchy's path.
pub fn parse_cgroup(text: &str) -> Option<String> {
    let mut first = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            return Some(path.to_string());
        }
        first.get_or_insert_with(|| path.to_string());
    }
    first
}

/// NUL-separated arguments to one space-separated line, lossy UTF-8, capped.
pub fn join_cmdline(raw: &[u8]) -> String {
    let raw = &raw[..raw.len().min(MAX_CMDLINE)];
    let trimmed = raw.strip_suffix(&[0]).unwrap_or(raw);
    let text = String::from_utf8_lossy(trimmed);
    text.replace('\0', " ")
}

/// The user name of a uid, else the number as text. Through the C library's name service
/// (`getpwuid_r` via nix), so directory users (LDAP, SSSD, systemd's dynamic users) get their
/// names, not only /etc/passwd's (reading that file by hand missed them). Callers cache it:
/// a directory lookup may take a while.
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => uid.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_comm() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200";
        let parsed = Stat::parse(stat.as_bytes()).unwrap();
        assert_eq!(
            parsed,
            Stat {
                comm: "my (odd) prog".into(),
                state: b'S',
                start_ticks: 98765
            }
        );
        assert!(parsed.running());
        assert_eq!(Stat::parse(b"garbage"), None);
        // Not UTF-8 (prctl(PR_SET_NAME) takes any bytes): still parsed, shown lossily.
        let odd =
            b"77 (\xff\xfeevil) Z 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 4242 1000 200";
        let odd = Stat::parse(odd).unwrap();
        assert_eq!(
            (odd.comm.as_str(), odd.start_ticks),
            ("\u{fffd}\u{fffd}evil", 4242)
        );
        assert!(!odd.running());
    }

    #[test]
    fn cmdline_is_joined_lossy_and_capped() {
        assert_eq!(
            join_cmdline(b"nginx: worker\0-c\0/etc/x\0"),
            "nginx: worker -c /etc/x"
        );
        assert_eq!(join_cmdline(b"a\xffb\0"), "a\u{fffd}b");
        let huge = vec![b'x'; MAX_CMDLINE * 3];
        assert_eq!(join_cmdline(&huge).len(), MAX_CMDLINE);
    }

    #[test]
    fn status_and_cgroup_and_passwd() {
        assert_eq!(
            parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"),
            Some(1000)
        );
        assert_eq!(
            parse_cgroup("0::/system.slice/nginx.service\n"),
            Some("/system.slice/nginx.service".into())
        );
        assert_eq!(parse_cgroup("12:cpu:/a\n11:mem:/b\n"), Some("/a".into()));
        // Through the name service: root is root everywhere; a uid nobody has is its number.
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(3_999_999_999), "3999999999");
    }

    #[test]
    fn reads_itself_and_not_a_missing_pid() {
        let me = ProcessInfo::read(Path::new("/proc"), std::process::id(), None).unwrap();
        assert!(me.exe.is_some());
        assert!(me.start_ticks > 0);
        assert!(ProcessInfo::read(Path::new("/proc"), u32::MAX - 1, None).is_none());
    }
}
