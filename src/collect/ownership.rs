//! Which processes hold which sockets: socket inode → pids, from `/proc/<pid>/fd`.
//!
//! sock_diag never reports pids, only inodes. Walking every `/proc/*/fd` each poll costs ≈3 µs
//! per fd in the kernel (180 ms for 57k fds, research §2.1; depmap's cold first poll of 20,004
//! sockets takes 165 ms in benches/poll.rs), so the map is a cache that is
//! refreshed only for what may have changed:
//! 1. nothing, when every inode in the dump is already known (the steady state);
//! 2. the pids the proc connector reported (fork/exec) since the last poll;
//! 3. pids that are new or whose fd count changed (`stat(/proc/<pid>/fd).st_size` is the number
//!    of open fds on Linux ≥ 6.2; 2.4 ms for 1,000 processes, research §2.1);
//! 4. for inodes still unknown, every process of the socket's uid (sock_diag reports it): a
//!    process that closed one socket and opened another between two walks keeps its fd count;
//! 5. inodes still unknown after that are tried once more at the next poll (a socket returned
//!    by accept() is in the kernel's table a moment before its fd is in the process's table),
//!    then left alone for [`RETRY_UNRESOLVED`], so that an inode we cannot see (another user
//!    namespace, hidepid) does not trigger a walk each poll.
//!
//! An inode is only ever mapped to a pid whose fd table held it when last read, so a socket is
//! never attributed to a process that does not hold it. Each pid is kept with its start time;
//! a reused pid is reported as exited and read afresh.
//!
//! Not the procfs crate: its fd listing makes three system calls per fd (`openat(O_PATH)`,
//! `readlinkat`, `statat`) where this walk makes one `readlink`: 318–324 ms against
//! 228–312 ms for the same 57,344 fds (research/linux-and-crates.md §2.1).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::procinfo::Stat;

/// How long an inode that no readable process holds is left alone before another walk.
pub const RETRY_UNRESOLVED: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct ProcFds {
    /// `st_size` of `/proc/<pid>/fd` when last read (0 where the kernel does not report it).
    fd_count: u64,
    /// Owner of `/proc/<pid>/fd`: the process's uid.
    uid: u32,
    /// Start time (clock ticks after boot) of the process read.
    start_ticks: u64,
    inodes: Vec<u32>,
}

/// Counters of the ownership cache's work, for self-metrics and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct OwnershipStats {
    pub pids_rescanned: u64,
    pub walks: u64,
    pub unreadable_pids: u64,
}

pub struct SocketOwners {
    proc_root: PathBuf,
    by_inode: HashMap<u32, Vec<u32>>,
    procs: HashMap<u32, ProcFds>,
    /// Inodes no readable process was found holding: when first missed, and how many walks
    /// missed them.
    unresolved: HashMap<u32, (Instant, u32)>,
    /// Pids found gone (or reused) since last taken, for the process pools.
    exited: Vec<u32>,
    /// Pids whose fd tables were read since last taken, with their start ticks: their
    /// identity may have changed (exec without process events).
    rescanned: Vec<(u32, Stat)>,
    pub stats: OwnershipStats,
}

impl SocketOwners {
    pub fn new(proc_root: PathBuf) -> SocketOwners {
        SocketOwners {
            proc_root,
            by_inode: HashMap::new(),
            procs: HashMap::new(),
            unresolved: HashMap::new(),
            exited: Vec::new(),
            rescanned: Vec::new(),
            stats: OwnershipStats::default(),
        }
    }

    /// Pids holding `inode`, lowest first; empty when unknown.
    pub fn owners(&self, inode: u32) -> &[u32] {
        self.by_inode.get(&inode).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Pids found gone or reused since the last call.
    pub fn take_exited(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.exited)
    }

    /// Pids (with start ticks) whose fds were read since the last call.
    pub fn take_rescanned(&mut self) -> Vec<(u32, Stat)> {
        std::mem::take(&mut self.rescanned)
    }

    /// Forgets a pid that exited.
    pub fn forget(&mut self, pid: u32) {
        if let Some(p) = self.procs.remove(&pid) {
            for ino in p.inodes {
                self.unlink(ino, pid);
            }
        }
    }

    /// Makes sure every inode of `wanted` (inode → the socket's uid) that some readable process
    /// holds is mapped. `hinted` are pids to read first (from process events).
    pub fn resolve(&mut self, wanted: &HashMap<u32, u32>, hinted: &[u32], now: Instant) {
        for &pid in hinted {
            self.rescan(pid);
        }
        self.unresolved
            .retain(|_, (since, _)| now.duration_since(*since) < RETRY_UNRESOLVED);
        let missing = |s: &Self| -> HashSet<u32> {
            wanted
                .iter()
                .filter(|(i, _)| {
                    **i != 0
                        && !s.by_inode.contains_key(i)
                        && s.unresolved.get(i).is_none_or(|(_, misses)| *misses < 2)
                })
                .map(|(_, uid)| *uid)
                .collect()
        };
        if missing(self).is_empty() {
            return;
        }
        let read = self.walk_changed();
        let uids = missing(self);
        if !uids.is_empty() {
            let same_uid: Vec<u32> = self
                .procs
                .iter()
                .filter(|(pid, p)| uids.contains(&p.uid) && !read.contains(pid))
                .map(|(pid, _)| *pid)
                .collect();
            for pid in same_uid {
                self.rescan(pid);
            }
        }
        for &ino in wanted.keys() {
            if ino != 0 && !self.by_inode.contains_key(&ino) {
                self.unresolved.entry(ino).or_insert((now, 0)).1 += 1;
            }
        }
    }

    /// Reads the fd tables of pids that are new or whose fd count changed; drops pids gone.
    /// Returns the pids read.
    fn walk_changed(&mut self) -> HashSet<u32> {
        self.stats.walks += 1;
        let mut read = HashSet::new();
        let Ok(dir) = fs::read_dir(&self.proc_root) else {
            return read;
        };
        let mut alive = HashSet::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            alive.insert(pid);
            let fd_dir = self.proc_root.join(pid.to_string()).join("fd");
            let size = match fs::metadata(&fd_dir) {
                Ok(m) => m.size(),
                Err(_) => {
                    self.stats.unreadable_pids += 1;
                    continue;
                }
            };
            let changed = match self.procs.get(&pid) {
                Some(p) => size == 0 || p.fd_count != size,
                None => true,
            };
            if changed {
                self.rescan(pid);
                read.insert(pid);
            }
        }
        let gone: Vec<u32> = self
            .procs
            .keys()
            .filter(|p| !alive.contains(p))
            .copied()
            .collect();
        for pid in gone {
            self.forget(pid);
            self.exited.push(pid);
        }
        read
    }

    /// Re-reads one pid's fd table.
    pub fn rescan(&mut self, pid: u32) {
        self.stats.pids_rescanned += 1;
        let dir = self.proc_root.join(pid.to_string());
        let fd_dir = dir.join("fd");
        let meta = fs::metadata(&fd_dir).ok();
        let stat = Stat::read(&self.proc_root, pid);
        let (Some(meta), Some(stat), Ok(entries)) = (meta, stat, fs::read_dir(&fd_dir)) else {
            if self.procs.contains_key(&pid) {
                self.exited.push(pid);
            }
            self.forget(pid);
            return;
        };
        if self
            .procs
            .get(&pid)
            .is_some_and(|p| p.start_ticks != stat.start_ticks)
        {
            // The pid was reused: the process we knew is gone.
            self.exited.push(pid);
        }
        let mut inodes = Vec::new();
        for e in entries.flatten() {
            if let Ok(target) = fs::read_link(e.path())
                && let Some(ino) = socket_inode(target.as_os_str().as_encoded_bytes())
            {
                inodes.push(ino);
            }
        }
        inodes.sort_unstable();
        inodes.dedup();
        self.forget(pid);
        for &ino in &inodes {
            let holders = self.by_inode.entry(ino).or_default();
            if let Err(at) = holders.binary_search(&pid) {
                holders.insert(at, pid);
            }
            self.unresolved.remove(&ino);
        }
        self.procs.insert(
            pid,
            ProcFds {
                fd_count: meta.size(),
                uid: meta.uid(),
                start_ticks: stat.start_ticks,
                inodes,
            },
        );
        self.rescanned.push((pid, stat));
    }

    fn unlink(&mut self, ino: u32, pid: u32) {
        if let Some(h) = self.by_inode.get_mut(&ino) {
            h.retain(|p| *p != pid);
            if h.is_empty() {
                self.by_inode.remove(&ino);
            }
        }
    }
}

/// `socket:[12345]` → 12345 (truncated to the 32 bits sock_diag reports).
pub fn socket_inode(link: &[u8]) -> Option<u32> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    let text = std::str::from_utf8(digits).ok()?;
    text.parse::<u64>().ok().map(|v| v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn parses_socket_links_only() {
        assert_eq!(socket_inode(b"socket:[4242]"), Some(4242));
        assert_eq!(socket_inode(b"pipe:[4242]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"socket:[x]"), None);
    }

    #[test]
    fn finds_our_own_socket_and_forgets_closed_fds() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = fs::read_link(format!("/proc/self/fd/{}", listener.as_raw_fd())).unwrap();
        let ino = socket_inode(link.as_os_str().as_encoded_bytes()).unwrap();
        let mut owners = SocketOwners::new("/proc".into());
        let wanted: HashMap<u32, u32> = [(ino, 0)].into();
        owners.resolve(&wanted, &[], Instant::now());
        assert_eq!(owners.owners(ino), &[std::process::id()]);
        drop(listener);
        owners.rescan(std::process::id());
        assert!(owners.owners(ino).is_empty());
    }

    #[test]
    fn a_socket_replacing_another_is_found_through_its_uid() {
        let mut owners = SocketOwners::new("/proc".into());
        let me = std::process::id();
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ino_of = |l: &std::net::TcpListener| {
            let link = fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
            socket_inode(link.as_os_str().as_encoded_bytes()).unwrap()
        };
        let a = ino_of(&first);
        let uid = fs::metadata("/proc/self/fd").unwrap().uid();
        owners.resolve(&[(a, uid)].into(), &[], Instant::now());
        assert_eq!(owners.owners(a), &[me]);
        // Close one socket, open another: the fd count is unchanged.
        drop(first);
        let second = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = ino_of(&second);
        owners.resolve(&[(b, uid)].into(), &[], Instant::now());
        assert_eq!(owners.owners(b), &[me]);
        assert!(owners.owners(a).is_empty());
    }
}
