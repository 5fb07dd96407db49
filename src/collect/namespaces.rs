//! Other network namespaces (`collect.namespaces = "all"`): finding them, and opening in each
//! the two kernel sockets that read it — a sock_diag socket for dumps and lookups, and a
//! destroy-notification subscription.
//!
//! A netlink socket reads the namespace it was created in, whatever thread uses it later
//! (research bpf-spike-2 Q4b: a socket made by a thread that had `setns()` into a namespace
//! dumps only that namespace's sockets and gets only its destroy notifications). So each
//! namespace's sockets are made on a short-lived helper thread that enters the namespace
//! and ends: the poll loop's thread never leaves depmap's own namespace. `setns` needs
//! CAP_SYS_ADMIN; opening another user's `/proc/PID/ns/net` needs CAP_SYS_PTRACE as well.
//!
//! Namespaces are found in `/proc/*/ns/net` (every namespace a process is in) and in
//! `/run/netns` (those `ip netns` keeps without a process). A socket holds a reference to its
//! namespace, so the readers keep a namespace alive: once a namespace is no longer found
//! (no process in it, no `/run/netns` entry) for [`GONE_AFTER`] scans its readers are closed,
//! after their last destroy notifications are taken.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use super::destroy::DestroyListener;
use super::sockdiag::SockDiag;

/// Most other namespaces followed at once: each costs a reader thread and two sockets. Beyond
/// it new namespaces are not followed (counted, logged).
pub const MAX_NAMESPACES: usize = 512;
/// How often the namespaces are looked for again (one `stat` per process).
pub const SCAN_PERIOD: Duration = Duration::from_secs(2);
/// Scans a namespace may be missing from before its readers are closed (a process between
/// `unshare` and `exec` can hide it from one scan).
pub const GONE_AFTER: u32 = 2;

/// A namespace, by the inode of its nsfs file (what `readlink /proc/PID/ns/net` shows as
/// `net:[N]`, and what BPF reads as `ns.inum`). 0 stands for depmap's own namespace.
pub type NetnsId = u64;

/// Why a namespace could not be followed.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    /// The file found is not (or no longer) that namespace: its process exited and the pid
    /// was reused between the scan and the open.
    #[error("{path} is no longer network namespace {id}")]
    Replaced { path: PathBuf, id: NetnsId },
    #[error("setns into network namespace {id} failed: {source} (needs CAP_SYS_ADMIN)")]
    Setns { id: NetnsId, source: nix::Error },
    #[error("cannot open sock_diag in network namespace {id}: {source}")]
    Sockets { id: NetnsId, source: io::Error },
    #[error("the helper thread for network namespace {id} failed: {source}")]
    Thread { id: NetnsId, source: io::Error },
}

/// What a scan found and missed.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    /// Processes whose namespace could not be read (exited mid-scan, or no ptrace access).
    pub unreadable: u64,
}

/// What entering other namespaces needs and this process lacks: CAP_SYS_ADMIN (`setns`) and
/// CAP_SYS_PTRACE (opening other users' `/proc/PID/ns/net`).
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_PTRACE: u32 = 19;
    const CAP_SYS_ADMIN: u32 = 21;
    let effective = super::procinfo::effective_capabilities();
    [
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
    ]
    .into_iter()
    .filter(|(cap, _)| effective & (1 << cap) == 0)
    .map(|(_, name)| name)
    .collect()
}

/// The inode of depmap's own network namespace.
pub fn own_id(proc_root: &Path) -> io::Result<NetnsId> {
    Ok(std::fs::metadata(proc_root.join("self/ns/net"))?.ino())
}

/// Every network namespace of a process under `proc_root` or with an entry in `run_netns`,
/// with a path that opens it (the first found), except `own`.
pub fn scan(
    proc_root: &Path,
    run_netns: &Path,
    own: NetnsId,
    stats: &mut ScanStats,
) -> BTreeMap<NetnsId, PathBuf> {
    let mut found = BTreeMap::new();
    let mut add = |path: PathBuf, stats: &mut ScanStats| match std::fs::metadata(&path) {
        Ok(m) if m.ino() != own => {
            found.entry(m.ino()).or_insert(path);
        }
        Ok(_) => {}
        Err(_) => stats.unreadable += 1,
    };
    if let Ok(entries) = std::fs::read_dir(run_netns) {
        for e in entries.flatten() {
            add(e.path(), stats);
        }
    }
    if let Ok(entries) = std::fs::read_dir(proc_root) {
        for e in entries.flatten() {
            let name = e.file_name();
            let is_pid = !name.is_empty() && name.as_encoded_bytes().iter().all(u8::is_ascii_digit);
            if is_pid {
                add(e.path().join("ns/net"), stats);
            }
        }
    }
    found
}

/// Runs `f` on a helper thread inside network namespace `id` (opened at `path`), and returns
/// what it returned. The thread ends with `f`: nothing else ever runs in the namespace, except
/// threads `f` starts (they inherit it).
pub fn within<T: Send>(
    id: NetnsId,
    path: &Path,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> Result<T, EnterError> {
    let file = File::open(path).map_err(|source| EnterError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let same = file.metadata().is_ok_and(|m| m.ino() == id);
    if !same {
        return Err(EnterError::Replaced {
            path: path.to_path_buf(),
            id,
        });
    }
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new()
            .name("netns-enter".into())
            .spawn_scoped(scope, move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|source| EnterError::Setns { id, source })?;
                f().map_err(|source| EnterError::Sockets { id, source })
            })
            .map_err(|source| EnterError::Thread { id, source })?;
        helper.join().unwrap_or_else(|_| {
            Err(EnterError::Thread {
                id,
                source: io::Error::other("panicked"),
            })
        })
    })
}

/// The readers of one other namespace.
pub struct Namespace {
    pub diag: SockDiag,
    /// `None` where the destroy groups could not be joined (the namespace is then read by
    /// dumps alone, like the own one without its subscription).
    pub destroys: Option<DestroyListener>,
    /// Its `net.ipv4.ip_local_port_range` (read in it when it was entered).
    pub ephemeral: RangeInclusive<u16>,
    /// Scans it was missing from, in a row.
    missed: u32,
}

/// `net.ipv4.ip_local_port_range` of the calling thread's network namespace (the kernel's
/// default, 32768–60999, when unreadable): `/proc/sys/net` shows the reader's namespace.
pub fn ephemeral_ports() -> RangeInclusive<u16> {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut ports = text
        .split_whitespace()
        .filter_map(|p| p.parse::<u16>().ok());
    match (ports.next(), ports.next()) {
        (Some(lo), Some(hi)) if lo <= hi => lo..=hi,
        _ => 32768..=60999,
    }
}

/// How each namespace's destroy subscription is made (the own one's settings).
#[derive(Debug, Clone, Copy)]
pub struct DestroySettings {
    pub ipv6: bool,
    pub fin_lookups: bool,
    pub batch: Duration,
}

/// Counters of the namespaces followed.
#[derive(Debug, Default, Clone, Copy)]
pub struct NamespaceCounters {
    /// Namespaces whose readers were opened, in all.
    pub entered: u64,
    /// Namespaces found that could not be entered (gone before, or not permitted).
    pub enter_failures: u64,
    /// Namespaces not followed because [`MAX_NAMESPACES`] were.
    pub over_cap: u64,
    /// Namespaces whose readers were closed because they were gone.
    pub left: u64,
    /// Processes whose namespace could not be read during scans.
    pub unreadable: u64,
}

/// The other namespaces followed, by id.
pub struct Namespaces {
    proc_root: PathBuf,
    run_netns: PathBuf,
    own: NetnsId,
    destroy: DestroySettings,
    pub followed: HashMap<NetnsId, Namespace>,
    pub counters: NamespaceCounters,
    /// The last failure to enter one (for the capability report).
    pub last_failure: Option<String>,
}

impl Namespaces {
    pub fn new(proc_root: PathBuf, destroy: DestroySettings) -> io::Result<Namespaces> {
        let own = own_id(&proc_root)?;
        Ok(Namespaces {
            proc_root,
            run_netns: PathBuf::from("/run/netns"),
            own,
            destroy,
            followed: HashMap::new(),
            counters: NamespaceCounters::default(),
            last_failure: None,
        })
    }

    /// Looks for namespaces again: opens the readers of new ones, and returns those gone for
    /// [`GONE_AFTER`] scans (closed by the caller once their last notifications are taken).
    pub fn rescan(&mut self) -> Vec<(NetnsId, Namespace)> {
        let mut stats = ScanStats::default();
        let found = scan(&self.proc_root, &self.run_netns, self.own, &mut stats);
        self.counters.unreadable += stats.unreadable;
        for ns in self.followed.values_mut() {
            ns.missed += 1;
        }
        for (id, path) in found {
            if let Some(ns) = self.followed.get_mut(&id) {
                ns.missed = 0;
                continue;
            }
            if self.followed.len() >= MAX_NAMESPACES {
                self.counters.over_cap += 1;
                tracing::warn!(
                    namespace = id,
                    max = MAX_NAMESPACES,
                    "network namespace not followed: the most namespaces are followed already; its sockets are missing from the records"
                );
                continue;
            }
            match self.open(id, &path) {
                Ok(ns) => {
                    self.counters.entered += 1;
                    tracing::debug!(namespace = id, path = %path.display(), "following network namespace");
                    self.followed.insert(id, ns);
                }
                Err(e) => {
                    self.counters.enter_failures += 1;
                    tracing::warn!(error = %e, namespace = id, "network namespace skipped: cannot read its sockets; they are missing from the records");
                    self.last_failure = Some(e.to_string());
                }
            }
        }
        let gone: Vec<NetnsId> = self
            .followed
            .iter()
            .filter(|(_, ns)| ns.missed >= GONE_AFTER)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in gone {
            if let Some(ns) = self.followed.remove(&id) {
                self.counters.left += 1;
                tracing::debug!(
                    namespace = id,
                    "network namespace gone; its readers are closed"
                );
                out.push((id, ns));
            }
        }
        out
    }

    fn open(&self, id: NetnsId, path: &Path) -> Result<Namespace, EnterError> {
        let settings = self.destroy;
        let (diag, destroys, ephemeral) = within(id, path, move || {
            let diag = SockDiag::open()?;
            // The reader thread starts here, so it is in the namespace too (it never opens
            // another socket).
            let destroys =
                DestroyListener::start(settings.ipv6, settings.fin_lookups, settings.batch);
            Ok((diag, destroys, ephemeral_ports()))
        })?;
        let destroys = match destroys {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, namespace = id, "cannot join the TCP destroy groups of a network namespace; its short connections are counted up to their last dump");
                None
            }
        };
        Ok(Namespace {
            diag,
            destroys,
            ephemeral,
            missed: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scan_finds_process_namespaces_but_not_the_own_one() {
        let dir = std::env::temp_dir().join(format!("depmap-netns-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("12/ns")).unwrap();
        std::fs::create_dir_all(dir.join("13/ns")).unwrap();
        std::fs::create_dir_all(dir.join("self/ns")).unwrap();
        std::fs::create_dir_all(dir.join("run")).unwrap();
        // Files stand in for nsfs files: a scan reads only their inodes.
        std::fs::write(dir.join("12/ns/net"), "").unwrap();
        std::fs::hard_link(dir.join("12/ns/net"), dir.join("run/ctr")).unwrap();
        std::fs::write(dir.join("self/ns/net"), "").unwrap();
        std::fs::hard_link(dir.join("self/ns/net"), dir.join("13/ns/net")).unwrap();
        std::fs::create_dir_all(dir.join("14")).unwrap(); // gone mid-scan: no ns/net
        let own = own_id(&dir).unwrap();
        let mut stats = ScanStats::default();
        let found = scan(&dir, &dir.join("run"), own, &mut stats);
        let ino = std::fs::metadata(dir.join("12/ns/net")).unwrap().ino();
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec![ino]);
        // /run/netns is read first.
        assert_eq!(found[&ino], dir.join("run/ctr"));
        assert_eq!(stats.unreadable, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reused_path_is_not_entered() {
        let dir = std::env::temp_dir().join(format!("depmap-netns-reused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("net");
        std::fs::write(&path, "").unwrap();
        let wrong = std::fs::metadata(&path).unwrap().ino() + 1;
        let got = within(wrong, &path, || Ok(()));
        assert!(matches!(got, Err(EnterError::Replaced { .. })), "{got:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
