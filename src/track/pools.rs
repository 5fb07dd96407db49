//! Process pools: processes that share executable, command line, user and cgroup are one
//! pool (pre-forked workers are one service), identified by `p-` + SHA-1 so that the id is the
//! same after the service restarts. `FirstPid`/`StartTime` describe the oldest live member.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::collect::procinfo::{ProcessInfo, Stat, user_name};
use crate::identity::process_id;

use super::sockets::PoolId;

/// One pool and what VMProcess reports of it.
#[derive(Debug, Clone)]
pub struct Pool {
    pub id: PoolId,
    pub executable_name: String,
    pub executable_path: Option<String>,
    pub command_line: String,
    pub user_name: String,
    pub working_directory: Option<String>,
    pub cgroup: Option<String>,
    /// Live members as (start ticks, pid): the first is the oldest.
    pub members: BTreeSet<(u64, u32)>,
    /// The latest member to join, kept after it left: a pool whose processes all exited
    /// before its first VMProcess record (a `curl` that lived 20 ms, known from a kernel
    /// event) is still reported once, with that process as FirstPid.
    pub last_member: Option<(u64, u32)>,
    /// Whether the pool has held a TCP or bound UDP socket (VMProcess reports those by
    /// default).
    pub has_sockets: bool,
    /// Whether a VMProcess record was emitted since the pool appeared.
    pub reported: bool,
}

impl Pool {
    pub fn oldest(&self) -> Option<(u64, u32)> {
        self.members.first().copied().or(self.last_member)
    }

    /// Whether a VMProcess record is due for it: it has live members, or it has never been
    /// reported.
    pub fn reportable(&self) -> bool {
        !self.members.is_empty() || (!self.reported && self.last_member.is_some())
    }
}

pub struct PoolRegistry {
    machine: String,
    proc_root: PathBuf,
    /// pid → (start ticks, pool). `collect::ownership` keeps start ticks too, for its fd
    /// cache: each cache checks its own entries against pid reuse (every process holding
    /// sockets is in that one, only pool members here), and the fd walk's `stat` of a pid is
    /// handed here (`verify`), not read again.
    by_pid: HashMap<u32, (u64, PoolId)>,
    pools: HashMap<PoolId, Pool>,
    users: HashMap<u32, String>,
    /// `stat` of pids whose fds were read this poll and whose pool is not known yet: read once
    /// by the fd walk, used when their pool is looked up (cleared at the end of the poll).
    fresh: HashMap<u32, Stat>,
    /// Most pools kept at once (0: no limit).
    max_pools: usize,
    /// Processes left unattributed because the pool cap was reached.
    pub shed: u64,
}

impl PoolRegistry {
    pub fn new(machine: String, proc_root: PathBuf) -> PoolRegistry {
        PoolRegistry {
            machine,
            proc_root,
            by_pid: HashMap::new(),
            pools: HashMap::new(),
            users: HashMap::new(),
            fresh: HashMap::new(),
            max_pools: 0,
            shed: 0,
        }
    }

    /// Keeps at most `max_pools` pools; processes of new pools beyond it are not attributed.
    pub fn with_cap(mut self, max_pools: usize) -> PoolRegistry {
        self.max_pools = max_pools;
        self
    }

    /// The pool of a live pid, reading /proc the first time; `None` if the process is gone.
    pub fn pool_of(&mut self, pid: u32) -> Option<PoolId> {
        if let Some((_, id)) = self.by_pid.get(&pid) {
            return Some(id.clone());
        }
        let info = ProcessInfo::read(&self.proc_root, pid, self.fresh.remove(&pid))?;
        self.admit(info)
    }

    /// The pool of `pid` if it is the process that started at `start_ticks` (known already).
    pub fn member_pool(&self, pid: u32, start_ticks: u64) -> Option<PoolId> {
        self.by_pid
            .get(&pid)
            .filter(|(ticks, _)| *ticks == start_ticks)
            .map(|(_, id)| id.clone())
    }

    /// Adds a process read from /proc to its pool (creating the pool when new); `None` when a
    /// new pool would pass the cap (counted in `shed`).
    pub fn admit(&mut self, info: ProcessInfo) -> Option<PoolId> {
        let user = match info.uid {
            Some(uid) => self
                .users
                .entry(uid)
                .or_insert_with(|| user_name(uid))
                .clone(),
            None => String::new(),
        };
        let exe_key = info.exe.clone().unwrap_or_else(|| info.comm.clone());
        let id: PoolId = process_id(
            &self.machine,
            &exe_key,
            &info.cmdline,
            &user,
            info.cgroup.as_deref().unwrap_or(""),
        )
        .into();
        if self.max_pools > 0 && self.pools.len() >= self.max_pools && !self.pools.contains_key(&id)
        {
            self.shed += 1;
            return None;
        }
        let pool = self.pools.entry(id.clone()).or_insert_with(|| Pool {
            id: id.clone(),
            executable_name: info.executable_name(),
            executable_path: info.exe.clone(),
            command_line: info.cmdline.clone(),
            user_name: user,
            working_directory: info.cwd.clone(),
            cgroup: info.cgroup.clone(),
            members: BTreeSet::new(),
            last_member: None,
            has_sockets: false,
            reported: false,
        });
        // Members that died without an exit event (no proc connector) leave now.
        let proc_root = &self.proc_root;
        pool.members
            .retain(|(ticks, pid)| still_running(proc_root, *pid, *ticks));
        // A pool that comes back to life (a restarted service) is reported again: its
        // FirstPid and StartTime changed.
        if pool.members.is_empty() {
            tracing::trace!(pid = info.pid, pool = %id, "pool (re)appears");
            pool.reported = false;
        }
        pool.members.insert((info.start_ticks, info.pid));
        pool.last_member = Some((info.start_ticks, info.pid));
        self.by_pid.insert(info.pid, (info.start_ticks, id.clone()));
        Some(id)
    }

    /// Drops members that are no longer running (checked against /proc, for hosts without
    /// process events); called before inventory so FirstPid is a live process.
    pub fn refresh_members(&mut self) {
        let proc_root = &self.proc_root;
        let by_pid = &mut self.by_pid;
        for pool in self.pools.values_mut() {
            pool.members.retain(|(ticks, pid)| {
                let alive = still_running(proc_root, *pid, *ticks);
                if !alive {
                    by_pid.remove(pid);
                }
                alive
            });
        }
    }

    /// A process exited: it leaves its pool (the pool stays, for records already counted).
    pub fn exited(&mut self, pid: u32) {
        if let Some((ticks, id)) = self.by_pid.remove(&pid)
            && let Some(p) = self.pools.get_mut(&id)
        {
            p.members.remove(&(ticks, pid));
        }
    }

    /// A process exec'd: its identity may have changed, read it again when next needed.
    pub fn changed(&mut self, pid: u32) {
        self.exited(pid);
    }

    /// A pid whose fds were just read, with its start ticks: if it is not the process we knew
    /// (pid reused) or its executable changed (exec without a process event), it leaves its
    /// pool and is read afresh when next needed.
    pub fn verify(&mut self, pid: u32, stat: Stat) {
        let Some((ticks, id)) = self.by_pid.get(&pid) else {
            self.fresh.insert(pid, stat);
            return;
        };
        let start_ticks = stat.start_ticks;
        let same_exe = || {
            let exe = std::fs::read_link(self.proc_root.join(pid.to_string()).join("exe"))
                .ok()
                .map(|p| {
                    p.to_string_lossy()
                        .trim_end_matches(" (deleted)")
                        .to_string()
                });
            let known = self.pools.get(id).and_then(|p| p.executable_path.clone());
            exe.is_none() || known.is_none() || exe == known
        };
        if *ticks != start_ticks || !same_exe() {
            self.exited(pid);
        }
    }

    pub fn get(&self, id: &str) -> Option<&Pool> {
        self.pools.get(id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Pool> {
        self.pools.get_mut(id)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        self.pools.values()
    }

    /// Drops pools with no live member that nothing refers to any more.
    /// The poll's end: the `stat`s kept for it go.
    pub fn end_poll(&mut self) {
        self.fresh.clear();
    }

    pub fn prune(&mut self, in_use: impl Fn(&PoolId) -> bool) {
        self.pools
            .retain(|id, p| !p.members.is_empty() || in_use(id));
    }
}

/// Whether `pid` is still the process that started at `ticks` (a zombie is not running).
fn still_running(proc_root: &Path, pid: u32, ticks: u64) -> bool {
    Stat::read(proc_root, pid).is_some_and(|s| s.running() && s.start_ticks == ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pid: u32, ticks: u64, cmd: &str) -> ProcessInfo {
        ProcessInfo {
            pid,
            start_ticks: ticks,
            comm: "srv".into(),
            exe: Some("/usr/bin/srv".into()),
            cmdline: cmd.into(),
            cwd: Some("/".into()),
            uid: Some(0),
            cgroup: Some("/system.slice/srv.service".into()),
        }
    }

    /// A fake /proc with a `stat` for each (pid, start ticks).
    fn fake_proc(tag: &str, procs: &[(u32, u64)]) -> PathBuf {
        let root = std::env::temp_dir().join(format!("depmap-pools-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (pid, ticks) in procs {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            let fields = vec!["0"; 18].join(" ");
            std::fs::write(
                dir.join("stat"),
                format!("{pid} (srv) S {fields} {ticks} 0 0"),
            )
            .unwrap();
        }
        root
    }

    #[test]
    fn workers_share_a_pool_and_the_id_survives_a_restart() {
        let root = fake_proc("a", &[(100, 50), (101, 60), (200, 70)]);
        let mut r = PoolRegistry::new("m-x".into(), root.clone());
        let parent = r.admit(info(100, 50, "srv --workers 2")).unwrap();
        let child = r.admit(info(101, 60, "srv --workers 2")).unwrap();
        let other = r.admit(info(200, 70, "srv --other")).unwrap();
        assert_eq!(parent, child);
        assert_ne!(parent, other);
        assert!(parent.starts_with("p-") && parent.len() == 42);
        assert_eq!(r.get(&parent).unwrap().oldest(), Some((50, 100)));
        r.exited(100);
        assert_eq!(r.get(&parent).unwrap().oldest(), Some((60, 101)));
        // Restarted under a new pid: same pool id.
        let mut r2 = PoolRegistry::new("m-x".into(), "/proc".into());
        assert_eq!(r2.admit(info(999, 80, "srv --workers 2")).unwrap(), parent);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn a_pool_whose_members_died_unseen_is_reported_again_when_it_returns() {
        let root = fake_proc("b", &[(100, 50)]);
        let mut r = PoolRegistry::new("m-x".into(), root.clone());
        let id = r.admit(info(100, 50, "srv")).unwrap();
        r.get_mut(&id).unwrap().reported = true;
        // pid 100 exits without an exit event; a new process of the same pool appears.
        std::fs::remove_dir_all(root.join("100")).unwrap();
        std::fs::create_dir_all(root.join("300")).unwrap();
        std::fs::write(
            root.join("300/stat"),
            format!("300 (srv) S {} 90 0 0", vec!["0"; 18].join(" ")),
        )
        .unwrap();
        assert_eq!(r.admit(info(300, 90, "srv")).unwrap(), id);
        let pool = r.get(&id).unwrap();
        assert!(!pool.reported);
        assert_eq!(pool.oldest(), Some((90, 300)));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn beyond_the_pool_cap_new_pools_are_not_created() {
        let root = fake_proc("c", &[(100, 50), (200, 70)]);
        let mut r = PoolRegistry::new("m-x".into(), root.clone()).with_cap(1);
        assert!(r.admit(info(100, 50, "a")).is_some());
        assert!(r.admit(info(200, 70, "b")).is_none());
        assert_eq!(r.shed, 1);
        let _ = std::fs::remove_dir_all(root);
    }
}
