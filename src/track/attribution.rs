//! Whose socket is this: socket inode → processes (`SocketOwners`, from /proc/PID/fd) →
//! process pools (`PoolRegistry`), the listeners of the latest dump and of the window, and the
//! pool last seen accepting on each listener. It answers the attribution rules of README
//! "Attribution rules" for the tracker:
//!
//! * a socket is inbound when a listener accepts on its local address, else outbound;
//! * a socket held by a process belongs to that process's pool (lowest pid first);
//! * an accepted socket that left its file before a holder was found (inode 0: it closed
//!   between two polls) is credited to the pool last seen holding sockets accepted on its
//!   listener, else to the listener's holder when only one pool holds it — accept() hands
//!   sockets only to holders of the listening socket; otherwise, and always for outbound
//!   sockets, it stays unattributed.
//!
//! With the kernel event source, a socket's owner is known by its cookie before any of
//! that: the process that connected (outbound), or the first to send or receive on an
//! accepted socket (inbound). Those owners come first; the rules above cover the sockets no
//! event named (older than depmap, or events lost).
//!
//! Everything is read through a proc root, so the rules are unit-tested on a fake /proc.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Instant;

use super::pools::PoolRegistry;
use super::ports::{Listener, Listeners};
use super::sockets::{ConnKey, Direction, PoolId, Protocol};
use crate::collect::ebpf::{EventProcess, Role};
use crate::collect::ownership::SocketOwners;
use crate::collect::proc_events::ProcChange;
use crate::collect::procinfo::ProcessInfo;
use crate::collect::sockdiag::{TcpSample, UdpSample};

pub struct Attribution {
    owners: SocketOwners,
    pools: PoolRegistry,
    /// Listeners of the latest dump, and of every dump of the current window.
    listeners: Listeners,
    window_listeners: Listeners,
    /// Per listening address, the pool last seen holding a socket accepted on it.
    acceptors: HashMap<(u64, SocketAddr), PoolId>,
    /// Owners named by kernel events for sockets not keyed yet, by cookie.
    event_owners: HashMap<u64, EventOwner>,
    /// The processes that created UDP sockets (events), by cookie, for their flows.
    udp_owners: HashMap<u64, (PoolId, Instant)>,
    pub event_stats: EventOwnerStats,
}

/// A socket's owner from a kernel event.
#[derive(Debug, Clone)]
struct EventOwner {
    direction: Direction,
    pool: Option<PoolId>,
    at: Instant,
}

/// Most owners kept for sockets not seen yet; how long one waits for its socket.
const EVENT_OWNERS_MAX: usize = 131_072;
const EVENT_OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long a UDP socket's creator is kept for its flows (they are read every poll; a socket
/// quiet for longer is found in the dumps).
const UDP_OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What became of the owners that kernel events named.
#[derive(Debug, Default, Clone, Copy)]
pub struct EventOwnerStats {
    /// Owners whose process was read from /proc while it lived.
    pub from_proc: u64,
    /// Owners whose process was gone before /proc could be read: pooled from what the event
    /// carried (README "Kernel events" says which columns are then missing).
    pub from_event: u64,
    /// Owners whose socket never showed up (not kept: an IPv6 connection with `ipv6 = false`,
    /// a socket past the caps), or dropped at the cap.
    pub unmatched: u64,
}

impl Attribution {
    pub fn new(machine: String, proc_root: PathBuf, max_pools: usize) -> Attribution {
        Attribution {
            owners: SocketOwners::new(proc_root.clone()),
            pools: PoolRegistry::new(machine, proc_root).with_cap(max_pools),
            listeners: Listeners::default(),
            window_listeners: Listeners::default(),
            acceptors: HashMap::new(),
            event_owners: HashMap::new(),
            udp_owners: HashMap::new(),
            event_stats: EventOwnerStats::default(),
        }
    }

    /// The pool of the process a kernel event named: the known member with that pid and start
    /// time, else the process as the reader found it in /proc, else one built from what the
    /// event carried (name, user; no path, command line or cgroup). `None` past the pool cap.
    pub fn event_pool(&mut self, p: &EventProcess) -> Option<PoolId> {
        // A member whose /proc facts the event brings anew (it exec'd since it joined: same
        // pid and start time, another executable or command line) leaves for its new pool.
        let member = self.pools.member_pool(p.tgid, p.start_ticks).filter(|id| {
            let Some(info) = &p.info else { return true };
            let same = self.pools.get(id).is_some_and(|pool| {
                pool.executable_path == info.exe && pool.command_line == info.cmdline
            });
            if !same {
                self.pools.exited(p.tgid);
            }
            same
        });
        let id = match member {
            Some(id) => Some(id),
            None => match &p.info {
                Some(info) => {
                    self.event_stats.from_proc += 1;
                    self.pools.admit(ProcessInfo::clone(info))
                }
                None => {
                    self.event_stats.from_event += 1;
                    self.pools.admit(ProcessInfo {
                        pid: p.tgid,
                        start_ticks: p.start_ticks,
                        comm: p.comm.clone(),
                        exe: None,
                        cmdline: String::new(),
                        cwd: None,
                        uid: Some(p.uid),
                        cgroup: None,
                    })
                }
            },
        };
        if let Some(pool) = id.as_ref().and_then(|id| self.pools.get_mut(id)) {
            pool.has_sockets = true;
        }
        id
    }

    /// Drops the pools without live members that no tracked socket (`in_use`) and no socket
    /// still to come (an event owner: a `curl` that exited before its close was applied) uses.
    pub fn prune_pools(&mut self, in_use: &std::collections::HashSet<PoolId>) {
        let awaited: std::collections::HashSet<&PoolId> = self
            .event_owners
            .values()
            .filter_map(|o| o.pool.as_ref())
            .chain(self.udp_owners.values().map(|(p, _)| p))
            .collect();
        self.pools
            .prune(|pool| in_use.contains(pool) || awaited.contains(pool));
    }

    /// Remembers the owner an event named for a socket not keyed yet.
    pub fn remember_owner(&mut self, cookie: u64, role: Role, pool: Option<PoolId>, now: Instant) {
        if self.event_owners.len() + self.udp_owners.len() >= EVENT_OWNERS_MAX {
            self.event_stats.unmatched += 1;
            return;
        }
        let direction = match role {
            Role::Connected => Direction::Outbound,
            Role::Served => Direction::Inbound,
            Role::Udp => {
                if let Some(pool) = pool {
                    self.udp_owners.insert(cookie, (pool, now));
                }
                return;
            }
        };
        self.event_owners.insert(
            cookie,
            EventOwner {
                direction,
                pool,
                at: now,
            },
        );
    }

    /// The process that created UDP socket `cookie`, as its event named it.
    pub fn udp_owner(&self, cookie: u64) -> Option<PoolId> {
        self.udp_owners.get(&cookie).map(|(p, _)| p.clone())
    }

    /// Whether an event named the owner of this socket (not keyed yet).
    pub fn has_event_owner(&self, cookie: u64) -> bool {
        self.event_owners.contains_key(&cookie)
    }

    /// Forgets the owners that waited too long for their socket.
    fn prune_event_owners(&mut self, now: Instant) {
        let before = self.event_owners.len();
        self.event_owners
            .retain(|_, o| now.saturating_duration_since(o.at) < EVENT_OWNER_WAIT);
        self.udp_owners
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < UDP_OWNER_WAIT);
        self.event_stats.unmatched += (before - self.event_owners.len()) as u64;
    }

    /// A process event: a started process is a pid to read first (pushed to `hints`), an
    /// exited one is forgotten at once.
    pub fn process_changed(&mut self, change: ProcChange, hints: &mut Vec<u32>) {
        match change {
            ProcChange::Started(pid) => {
                self.pools.changed(pid);
                hints.push(pid);
            }
            ProcChange::Exited(pid) => {
                tracing::trace!(pid, "process exited");
                self.owners.forget(pid);
                self.pools.exited(pid);
            }
        }
    }

    /// Finds the holders of `wanted` (inode → the socket's uid), reading `hints` first, and
    /// keeps the pools in step with what the walk saw exit or start again.
    pub fn resolve(&mut self, wanted: &HashMap<u32, u32>, hints: &[u32], now: Instant) {
        self.owners.resolve(wanted, hints, now);
        for pid in self.owners.take_exited() {
            self.pools.exited(pid);
        }
        for (pid, stat) in self.owners.take_rescanned() {
            self.pools.verify(pid, stat);
        }
    }

    /// The listeners of this dump (its listening sockets, with their holders' pools).
    pub fn set_listeners<'a>(&mut self, listening: impl Iterator<Item = &'a TcpSample>) {
        self.listeners = Listeners::default();
        for s in listening {
            self.add_listener(s.local, s.netns, s.inode, Protocol::Tcp);
        }
    }

    /// This dump's bound UDP ports (which sockets are: `Sources::is_udp_port`), with their
    /// holders' pools; after [`Attribution::set_listeners`], which starts the dump's set.
    pub fn add_udp_ports<'a>(&mut self, bound: impl Iterator<Item = &'a UdpSample>) {
        for s in bound {
            self.add_listener(s.local, s.netns, s.inode, Protocol::Udp);
        }
    }

    fn add_listener(&mut self, addr: SocketAddr, netns: u64, inode: u32, protocol: Protocol) {
        let owners = self.pools_holding(inode);
        self.listeners.insert(Listener {
            addr,
            netns,
            protocol,
            owners,
        });
    }

    /// The end of a poll: this dump's listeners join the window's.
    pub fn end_poll(&mut self) {
        self.prune_event_owners(Instant::now());
        self.pools.end_poll();
        self.window_listeners.merge(&self.listeners);
    }

    /// The window's listeners (for VMBoundPort); the next window starts with the latest.
    pub fn take_window_listeners(&mut self) -> Listeners {
        std::mem::replace(&mut self.window_listeners, self.listeners.clone())
    }

    /// The listener accepting on `local` in namespace `netns`, in this dump or earlier in the
    /// window.
    fn accepting(&self, netns: u64, local: SocketAddr) -> Option<&Listener> {
        self.listeners
            .accepting(netns, local, Protocol::Tcp)
            .or_else(|| self.window_listeners.accepting(netns, local, Protocol::Tcp))
    }

    /// The grouping key of a socket seen for the first time (see the module comment).
    pub fn key_for(&mut self, s: &TcpSample) -> ConnKey {
        let (direction, process) = match self.event_owners.remove(&s.cookie) {
            Some(EventOwner {
                direction,
                pool: Some(pool),
                ..
            }) => (direction, Some(pool)),
            _ => self.polled_owner(s),
        };
        ConnKey::between(direction, process, s.local, s.remote, Protocol::Tcp)
    }

    /// A socket's direction and owner by the polling rules (no event named it).
    fn polled_owner(&mut self, s: &TcpSample) -> (Direction, Option<PoolId>) {
        let listener = self.accepting(s.netns, s.local).cloned();
        let direction = if listener.is_some() {
            Direction::Inbound
        } else {
            Direction::Outbound
        };
        let held_by = self.holder(s);
        let process = held_by.or_else(|| {
            let l = listener.filter(|_| s.inode == 0)?;
            self.acceptor_of(&l)
        });
        (direction, process)
    }

    /// The pool holding a socket (lowest pid first), remembered as its listener's acceptor;
    /// `None` when it left its file or no readable process holds it.
    pub fn holder(&mut self, s: &TcpSample) -> Option<PoolId> {
        if s.inode == 0 {
            return None;
        }
        let pool = self.pools_holding(s.inode).into_iter().next()?;
        if let Some(l) = self.listeners.accepting(s.netns, s.local, Protocol::Tcp)
            && l.owners.contains(&pool)
        {
            self.acceptors.insert((l.netns, l.addr), pool.clone());
        }
        Some(pool)
    }

    /// For an inbound socket closing unattributed (it left its file before its holder was
    /// found): the pool its listener's rule credits.
    pub fn closed_inbound(&self, netns: u64, local: SocketAddr) -> Option<PoolId> {
        self.accepting(netns, local)
            .and_then(|l| self.acceptor_of(l))
    }

    /// The pool credited with a socket accepted on `l` that left its file before a holder was
    /// found: the pool last seen holding sockets accepted on it, else its only holder.
    fn acceptor_of(&self, l: &Listener) -> Option<PoolId> {
        self.acceptors
            .get(&(l.netns, l.addr))
            .filter(|p| l.owners.contains(p))
            .cloned()
            .or_else(|| (l.owners.len() == 1).then(|| l.owners[0].clone()))
    }

    /// The pool holding a socket inode (lowest pid first), if a readable process holds it.
    pub fn pool_holding(&mut self, inode: u32) -> Option<PoolId> {
        if inode == 0 {
            return None;
        }
        self.pools_holding(inode).into_iter().next()
    }

    /// Pools of the processes holding a socket inode, lowest pid first, deduplicated.
    fn pools_holding(&mut self, inode: u32) -> Vec<PoolId> {
        let pids: Vec<u32> = self.owners.owners(inode).to_vec();
        let mut out: Vec<PoolId> = Vec::new();
        for pid in pids {
            if let Some(id) = self.pools.pool_of(pid) {
                if let Some(p) = self.pools.get_mut(&id) {
                    p.has_sockets = true;
                }
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    pub fn listeners(&self) -> &Listeners {
        &self.listeners
    }

    pub fn pools(&self) -> &PoolRegistry {
        &self.pools
    }

    pub fn pools_mut(&mut self) -> &mut PoolRegistry {
        &mut self.pools
    }

    pub fn owners(&self) -> &SocketOwners {
        &self.owners
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::sockdiag::{Family, state};
    use std::collections::HashSet;
    use std::path::Path;

    /// A fake /proc: processes with a name, a start time and socket fds.
    struct FakeProc(PathBuf);

    impl FakeProc {
        fn new(tag: &str) -> FakeProc {
            let root = std::env::temp_dir()
                .join(format!("depmap-attribution-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            FakeProc(root)
        }

        /// Process `pid` running `exe` holding the socket `inodes`.
        fn process(&self, pid: u32, exe: &str, inodes: &[u32]) {
            let dir = self.0.join(pid.to_string());
            std::fs::create_dir_all(dir.join("fd")).unwrap();
            let fields = vec!["0"; 18].join(" ");
            std::fs::write(dir.join("stat"), format!("{pid} ({exe}) S {fields} 90 0 0")).unwrap();
            std::fs::write(dir.join("cmdline"), format!("/usr/bin/{exe}\0")).unwrap();
            std::fs::write(dir.join("status"), "Uid:\t0\t0\t0\t0\n").unwrap();
            std::fs::write(dir.join("cgroup"), "0::/test\n").unwrap();
            let _ = std::os::unix::fs::symlink(format!("/usr/bin/{exe}"), dir.join("exe"));
            for (fd, ino) in inodes.iter().enumerate() {
                let link = dir.join("fd").join((fd + 3).to_string());
                let _ = std::os::unix::fs::symlink(format!("socket:[{ino}]"), link);
            }
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample(local: &str, remote: &str, inode: u32) -> TcpSample {
        let remote: SocketAddr = remote.parse().unwrap();
        TcpSample {
            cookie: u64::from(inode) + 1,
            family: Family::V4,
            state: if remote.port() == 0 {
                state::LISTEN
            } else {
                state::ESTABLISHED
            },
            local: local.parse().unwrap(),
            remote,
            uid: 0,
            inode,
            counters: None,
            netns: 0,
        }
    }

    const LISTENER: u32 = 1000;

    /// Attribution over `proc`, after one dump holding the listener `listening` and `more`.
    fn after_dump(proc: &FakeProc, listening: &[TcpSample], more: &[&TcpSample]) -> Attribution {
        let mut a = Attribution::new("m".into(), proc.path().to_path_buf(), 100);
        let wanted: HashMap<u32, u32> = listening
            .iter()
            .chain(more.iter().copied())
            .filter(|s| s.inode != 0)
            .map(|s| (s.inode, 0))
            .collect();
        a.resolve(&wanted, &[], Instant::now());
        a.set_listeners(listening.iter());
        a
    }

    #[test]
    fn a_held_socket_is_its_holders_and_inbound_on_a_listener() {
        let proc = FakeProc::new("held");
        proc.process(100, "server", &[LISTENER, 1001]);
        proc.process(200, "client", &[2001]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let accepted = sample("10.0.0.1:80", "10.0.0.9:5000", 1001);
        let outgoing = sample("10.0.0.1:6000", "10.0.0.7:443", 2001);
        let mut a = after_dump(&proc, &listen, &[&accepted, &outgoing]);
        let k = a.key_for(&accepted);
        assert_eq!(k.direction, Direction::Inbound);
        let server = k.process.clone().expect("the holder's pool");
        assert_eq!(a.pools().get(&server).unwrap().executable_name, "server");
        assert_eq!(
            (k.source_ip.to_string(), k.destination_port),
            ("10.0.0.9".into(), 80)
        );
        let k = a.key_for(&outgoing);
        assert_eq!(k.direction, Direction::Outbound);
        let client = k.process.expect("the holder's pool");
        assert_eq!(a.pools().get(&client).unwrap().executable_name, "client");
        assert_eq!(k.destination_port, 443);
    }

    #[test]
    fn a_socket_that_left_its_file_goes_to_the_listeners_only_holder() {
        let proc = FakeProc::new("only");
        proc.process(100, "server", &[LISTENER]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let mut a = after_dump(&proc, &listen, &[]);
        let gone = sample("10.0.0.1:80", "10.0.0.9:5000", 0);
        let k = a.key_for(&gone);
        assert_eq!(k.direction, Direction::Inbound);
        assert!(k.process.is_some(), "credited to the only holder");
        assert_eq!(a.closed_inbound(0, gone.local), k.process);
        // Outbound sockets that left their file are never guessed.
        let out = sample("10.0.0.1:6000", "10.0.0.7:443", 0);
        assert_eq!(a.key_for(&out).process, None);
    }

    #[test]
    fn with_two_holders_the_last_seen_acceptor_is_credited_or_nobody() {
        let proc = FakeProc::new("two");
        // A supervisor and a worker of another pool both hold the listener.
        proc.process(100, "supervisor", &[LISTENER]);
        proc.process(101, "worker", &[LISTENER, 1101]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let gone = sample("10.0.0.1:80", "10.0.0.9:5001", 0);
        let accepted = sample("10.0.0.1:80", "10.0.0.9:5000", 1101);
        let mut a = after_dump(&proc, &listen, &[&accepted]);
        assert_eq!(a.listeners().iter().next().unwrap().owners.len(), 2);
        // No acceptor seen yet: two candidates, no guess.
        assert_eq!(a.key_for(&gone).process, None);
        // The worker is seen holding an accepted socket: it is the acceptor from now on.
        let worker = a.key_for(&accepted).process.expect("held");
        assert_eq!(a.pools().get(&worker).unwrap().executable_name, "worker");
        assert_eq!(a.key_for(&gone).process, Some(worker.clone()));
        assert_eq!(a.closed_inbound(0, gone.local), Some(worker));
    }

    fn event_process(
        pid: u32,
        start_ticks: u64,
        comm: &str,
        info: Option<ProcessInfo>,
    ) -> EventProcess {
        EventProcess {
            tgid: pid,
            uid: 0,
            start_ticks,
            cgroup_id: 1,
            comm: comm.into(),
            tid: pid,
            info: info.map(std::sync::Arc::new),
        }
    }

    #[test]
    fn an_event_names_the_owner_before_the_proc_rules_and_a_gone_process_is_pooled_from_it() {
        let proc = FakeProc::new("events");
        proc.process(100, "server", &[LISTENER]);
        proc.process(300, "curl", &[]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let mut a = after_dump(&proc, &listen, &[]);
        // A connecting process read from /proc while it lived (start tick 90, as FakeProc's
        // stat says): its pool is the one /proc describes.
        let info = ProcessInfo::read(proc.path(), 300, None).expect("fake process");
        let curl = a.event_pool(&event_process(300, 90, "curl", Some(info)));
        let curl = curl.expect("a pool");
        assert_eq!(a.pools().get(&curl).unwrap().executable_name, "curl");
        // A later event of the same process (same pid and start time) is the same pool, not
        // read again; a pid reused by another process (other start time) is not.
        assert_eq!(
            a.event_pool(&event_process(300, 90, "curl", None)),
            Some(curl.clone())
        );
        let other = a
            .event_pool(&event_process(300, 95, "wget", None))
            .expect("a pool");
        assert_ne!(other, curl);
        let pool = a.pools().get(&other).unwrap();
        assert_eq!(
            (pool.executable_name.as_str(), pool.executable_path.as_ref()),
            ("wget", None)
        );
        assert_eq!(a.event_stats.from_event, 1);
        // Its socket, seen only at its destroy (inode 0) on a local port a listener also
        // accepts on: the event's owner and direction, not the listener rule's.
        let gone = sample("10.0.0.1:80", "10.0.0.7:443", 0);
        a.remember_owner(
            gone.cookie,
            Role::Connected,
            Some(curl.clone()),
            Instant::now(),
        );
        assert!(a.has_event_owner(gone.cookie));
        let k = a.key_for(&gone);
        assert_eq!((k.direction, k.process), (Direction::Outbound, Some(curl)));
        assert!(!a.has_event_owner(gone.cookie), "used once");
        // An owner whose socket never comes is forgotten and counted.
        a.remember_owner(12345, Role::Served, None, Instant::now() - EVENT_OWNER_WAIT);
        a.end_poll();
        assert!(!a.has_event_owner(12345));
        assert_eq!(a.event_stats.unmatched, 1);
    }

    #[test]
    fn an_execd_process_changes_pool_and_a_pool_awaited_by_an_event_owner_is_kept() {
        let proc = FakeProc::new("exec");
        proc.process(300, "python3", &[]);
        let mut a = Attribution::new("m".into(), proc.path().to_path_buf(), 100);
        let before = ProcessInfo::read(proc.path(), 300, None).expect("fake process");
        let python = a
            .event_pool(&event_process(300, 90, "python3", Some(before)))
            .expect("a pool");
        // It execs curl: same pid and start time, another executable, read anew.
        std::fs::remove_file(proc.path().join("300/exe")).unwrap();
        proc.process(300, "curl", &[]);
        let after = ProcessInfo::read(proc.path(), 300, None).expect("fake process");
        let curl = a
            .event_pool(&event_process(300, 90, "curl", Some(after)))
            .expect("a pool");
        assert_ne!(curl, python);
        assert_eq!(a.pools().get(&curl).unwrap().executable_name, "curl");
        assert!(a.pools().get(&python).unwrap().members.is_empty());
        // The python pool has no member left, and its connection's close is still to come.
        let socket = sample("10.0.0.1:40000", "10.0.0.7:80", 6);
        a.remember_owner(
            socket.cookie,
            Role::Connected,
            Some(python.clone()),
            Instant::now(),
        );
        a.prune_pools(&HashSet::new());
        assert!(a.pools().get(&python).is_some(), "kept for its socket");
        assert_eq!(a.key_for(&socket).process, Some(python.clone()));
        a.prune_pools(&HashSet::new());
        assert!(a.pools().get(&python).is_none(), "then pruned");
        assert!(a.pools().get(&curl).is_some(), "a live member's pool stays");
    }

    #[test]
    fn listeners_of_the_window_outlive_the_dump_and_reset_at_its_close() {
        let proc = FakeProc::new("window");
        proc.process(100, "server", &[LISTENER]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let mut a = after_dump(&proc, &listen, &[]);
        a.end_poll();
        // The listener closed: the next dump has none, the window still knows it.
        a.set_listeners(std::iter::empty());
        a.end_poll();
        let gone = sample("10.0.0.1:80", "10.0.0.9:5000", 0);
        assert_eq!(a.key_for(&gone).direction, Direction::Inbound);
        assert_eq!(a.take_window_listeners().iter().count(), 1);
        assert_eq!(a.take_window_listeners().iter().count(), 0);
        assert_eq!(a.key_for(&gone).direction, Direction::Outbound);
    }

    #[test]
    fn an_exited_process_is_forgotten() {
        let proc = FakeProc::new("exit");
        proc.process(100, "server", &[LISTENER]);
        let listen = [sample("10.0.0.1:80", "0.0.0.0:0", LISTENER)];
        let mut a = after_dump(&proc, &listen, &[]);
        assert_eq!(a.owners().owners(LISTENER), &[100]);
        let mut hints = Vec::new();
        a.process_changed(ProcChange::Exited(100), &mut hints);
        assert!(a.owners().owners(LISTENER).is_empty());
        a.process_changed(ProcChange::Started(300), &mut hints);
        assert_eq!(hints, vec![300]);
    }
}
