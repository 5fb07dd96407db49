//! The kernel event source: eBPF programs on three BTF tracepoints (`bpf/depmap.bpf.c`, what
//! they see and why) and the reader that drains their ring buffer.
//!
//! What it tells the agent, per socket cookie (the same cookie sock_diag reports, so events
//! join dumps and destroy notifications exactly): the process that connected (at SYN_SENT,
//! in the connecting task), the process that first used an accepted socket (its first send
//! or receive), and — where `sock_send_length`/`sock_recv_length` exist (kernel ≥ 6.3) — each
//! exchange's response time. Only sockets of depmap's own network namespace are followed
//! (the programs compare the namespace inode).
//!
//! The loader is aya 0.14 (pure Rust: no libbpf or libelf at run time; aya 0.16 needs Rust
//! 1.98). The object is compiled from C by clang and committed (`bpf/build.sh`), so building
//! depmap needs no clang; it is CO-RE (relocated against `/sys/kernel/btf/vmlinux` at load).
//!
//! A connect by a process the reader has not read lately wakes it at once
//! (`BPF_RB_FORCE_WAKEUP`: it reads the process's /proc entry while the process still lives; a
//! `curl` is gone 20 ms after its connect). The programs keep, per tgid, when they last asked
//! for a read (the event's `fresh` flag; again after 8 s or an exec), so a process that
//! connects again and again wakes the reader once, and its later events reuse what was read
//! ([`PROCESS_CACHE_AGE`]). Everything else — further connects, the owners of accepted
//! sockets (servers outlive their first reply), response times, closes — does not wake it
//! (`BPF_RB_NO_WAKEUP`, measured 0.1 µs per event instead of 2–3 µs) and is drained at the
//! next wake-up or every [`DRAIN_PERIOD`]. After a drain that a connect woke, the reader
//! pauses [`DRAIN_PAUSE`], so a burst of new processes costs at most 200 drains a second.
//! Each wake-up of the reader costs ≈ 25 µs of CPU on this machine (measured: 0.2 % of a core
//! at 20 connections a second with a wake-up per owner event and a 2 ms pause), which is what
//! these choices keep few. A drain reaches the poll loop as one queue item.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::BtfTracePoint;
use aya::{Btf, Ebpf, EbpfLoader};

use super::procinfo::ProcessInfo;
use super::queue::{NotQueued, QueueReceiver, QueueSender, bounded};
use super::reader::{ReadNow, Reader, Wake, Woken};
use super::udp_flows::{FlowKey, MAX_UDP_FLOWS, UdpError, UdpFlows, own_netns_cookie};

/// The compiled programs (bpf/build.sh; tests/bpf_object.rs checks it matches its source).
static OBJECT: &[u8] = aya::include_bytes_aligned!("../../bpf/depmap.bpf.o");

/// Size of the ring buffer: at 100,000 events a second (the most measured here) it holds
/// 330 ms of 32-byte response records (24 bytes and the ring's header), more than a drain
/// period. Its
/// pages are mapped twice into depmap and count twice in its RSS (measured: 4 MiB showed as
/// 8 MB), so it is no bigger than that.
pub const RING_BYTES: u32 = 1 << 20;
/// Most sockets followed at once in the kernel (opened after depmap started and not closed);
/// beyond it new ones are not followed (counted as `map_full`) and polling covers them.
pub const MAX_SOCKETS: u32 = 131_072;
/// Most events queued for the poll loop (a drain's batch counts as its events).
const QUEUE_MAX: usize = 262_144;
/// Longest time events wait in the ring without a connect event to wake the reader.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(200);
/// Pause after a drain a connect woke (bounds the wake-ups under a burst of connections).
const DRAIN_PAUSE: Duration = Duration::from_millis(5);
/// How often the kernel's loss counters are read.
const LOSS_READ_PERIOD: Duration = Duration::from_secs(1);
/// How long a process read from /proc is reused for further events of it: longer than the
/// programs wait before they ask for a read again (`REREAD_NS`, 8 s), so an event that does
/// not ask finds what the last one that did had read.
const PROCESS_CACHE_AGE: Duration = Duration::from_secs(10);
const PROCESS_CACHE_MAX: usize = 4096;

/// Event kinds (the first field of every event; `enum kind` in the C source).
const CONNECT: u32 = 1;
const OWNER: u32 = 2;
const RESPONSE: u32 = 3;
const CLOSED: u32 = 4;
const UDP_OWNER: u32 = 5;
const UDP_RESPONSE: u32 = 6;
/// Sizes of `struct owner_event`, `struct response_event`, `struct closed_event` and
/// `struct udp_response_event`.
const OWNER_EVENT_LEN: usize = 64;
const RESPONSE_EVENT_LEN: usize = 24;
const CLOSED_EVENT_LEN: usize = 16;
const UDP_RESPONSE_EVENT_LEN: usize = 16 + FlowKey::LEN;

/// Why the event source does not run here.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the kernel has no BTF (/sys/kernel/btf/vmlinux: {0}); the programs need it")]
    Btf(#[source] aya::BtfError),
    #[error("cannot load the BPF object: {0}")]
    Object(#[source] aya::EbpfError),
    #[error("the kernel refused program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the BPF object lacks {0}")]
    Missing(&'static str),
    #[error("cannot use map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot read depmap's network namespace (/proc/self/ns/net): {0}")]
    Netns(#[source] std::io::Error),
    #[error("cannot start the event reader thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The capabilities the programs need that this process lacks (CAP_BPF and CAP_PERFMON,
/// kernel ≥ 5.8; CAP_SYS_ADMIN covers both), from /proc/self/status.
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let effective = super::procinfo::effective_capabilities();
    let has = |cap: u32| effective & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has(*cap))
        .map(|(_, name)| name)
        .collect()
}

/// Who opened or first used a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// It connected (outbound).
    Connected,
    /// It first sent or received on an accepted socket (inbound).
    Served,
    /// It created a UDP socket (the direction of its flows is their own).
    Udp,
}

/// The process an owner event names, as the event carried it and, when it could be read
/// while the process lived, as /proc describes it.
#[derive(Debug, Clone)]
pub struct EventProcess {
    pub tgid: u32,
    pub uid: u32,
    /// Start time in clock ticks after boot (as /proc/PID/stat's field 22).
    pub start_ticks: u64,
    pub cgroup_id: u64,
    /// The name of the thread that made the call.
    pub comm: String,
    /// That thread.
    pub tid: u32,
    /// /proc of that very process (same start time), read when the event arrived.
    pub info: Option<Arc<ProcessInfo>>,
}

#[derive(Debug, Clone)]
pub enum KernelEvent {
    Owner {
        cookie: u64,
        role: Role,
        process: EventProcess,
    },
    /// One exchange's response time (request's last byte sent → answer's first byte
    /// received on a connecting socket; the mirror on an accepted one).
    Response { cookie: u64, micros: u64 },
    /// A socket reached CLOSE; whether its peer's FIN had been received (then its final
    /// `bytes_received` counts the FIN).
    Closed { cookie: u64, fin_received: bool },
    /// One DNS exchange's time on a UDP flow (query's datagram → answer's).
    UdpResponse { flow: FlowKey, micros: u64 },
}

/// Counters of the event source's work and losses.
#[derive(Debug, Default)]
pub struct EventCounters {
    pub received: AtomicU64,
    /// Events the programs could not put in the ring (it was full).
    pub ring_full: AtomicU64,
    /// Sockets the programs could not follow (their map was full).
    pub map_full: AtomicU64,
    /// UDP flows not counted: the kernel's flow map was full (`MAX_UDP_FLOWS`).
    pub udp_full: AtomicU64,
    /// Events dropped because the poll loop was behind.
    pub queue_full: AtomicU64,
    pub unparsable: AtomicU64,
}

/// The running source: programs attached, reader draining.
pub struct EventSource {
    /// One item per drain of the ring.
    pub queue: QueueReceiver<Vec<KernelEvent>>,
    pub counters: Arc<EventCounters>,
    /// Whether response times and the owners of accepted sockets come from events (the
    /// send/recv tracepoints exist here), or why not.
    pub timing: Result<(), String>,
    /// The UDP flow counters (cgroup programs), or why they do not run.
    pub udp_flows: Result<UdpFlows, String>,
    drains: Arc<ReadNow>,
    // Dropping it stops the reader, which drops the programs: they are detached.
    _reader: Reader,
}

/// Which programs are attached.
const SET_STATE: &str = "set_state";
const SEND: (&str, &str) = ("send_length", "sock_send_length");
const RECV: (&str, &str) = ("recv_length", "sock_recv_length");
const EXEC: &str = "exec";

impl EventSource {
    /// Loads and attaches the programs and starts the reader. `proc_root` is where owners'
    /// processes are read; `all_namespaces`: the sockets of every network namespace are
    /// followed, not only depmap's (`collect.namespaces = "all"`).
    /// `udp`: the UDP flow programs are attached too (where they can be: `udp_flows`).
    pub fn start(
        proc_root: PathBuf,
        all_namespaces: bool,
        udp: bool,
    ) -> Result<EventSource, LoadError> {
        let netns = std::fs::metadata("/proc/self/ns/net")
            .map_err(LoadError::Netns)?
            .ino() as u32;
        // 0 where unknown: then only with all_namespaces are datagrams summed (udp_flows
        // reports why not).
        let netns_cookie = own_netns_cookie();
        let btf = Btf::from_sys_fs().map_err(LoadError::Btf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("netns_ino", &netns, true)
            .override_global("all_netns", &u32::from(all_namespaces), true)
            .override_global("netns_cookie", netns_cookie.as_ref().unwrap_or(&0), true)
            .map_max_entries("udp_flows", MAX_UDP_FLOWS)
            .map_max_entries("events", RING_BYTES)
            .map_max_entries("conns", MAX_SOCKETS)
            .load(OBJECT)
            .map_err(LoadError::Object)?;
        attach(&mut ebpf, SET_STATE, "inet_sock_set_state", &btf)?;
        attach(&mut ebpf, EXEC, "sched_process_exec", &btf)?;
        // Timing needs the send/recv tracepoints (kernel ≥ 6.3); so does the owner of an
        // accepted socket. Without them only the connecting side is known from events.
        let send_recv = [SEND, RECV]
            .into_iter()
            .try_for_each(|(program, tracepoint)| attach(&mut ebpf, program, tracepoint, &btf));
        let timing = match send_recv {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "sock_send_length/sock_recv_length cannot be traced (kernel < 6.3?): owners of accepted sockets come from /proc and response times from tcp_info");
                Err(e.to_string())
            }
        };
        let udp_flows = match (udp, netns_cookie) {
            (false, _) => Err("off (collect.udp = false)".to_string()),
            (true, Err(e)) if !all_namespaces => Err(UdpError::NetnsCookie(e).to_string()),
            (true, _) => UdpFlows::attach(&mut ebpf).map_err(|e| e.to_string()),
        };
        if let (true, Err(why)) = (udp, &udp_flows) {
            tracing::warn!(error = %why, "UDP flows are not measured: the cgroup programs cannot run (they need CAP_NET_ADMIN besides CAP_BPF and CAP_PERFMON); UDP ports still come from the dumps");
        }
        drop(btf);
        // Parsing the kernel's BTF (≈ 6 MB here) and relocating against it took ≈ 35 MB of
        // heap that glibc kept after it was freed (measured: RSS 32 MB a few seconds after
        // start, against 8 MB without the event source). Give it back.
        // SAFETY: malloc_trim only releases free memory of the allocator's own arenas.
        unsafe {
            libc::malloc_trim(0);
        }
        let ring: RingBuf<MapData> = take_map(&mut ebpf, "events")?;
        let losses: PerCpuArray<MapData, u64> = take_map(&mut ebpf, "losses")?;
        let (tx, queue) = bounded(QUEUE_MAX);
        let counters = Arc::new(EventCounters::default());
        let drains = Arc::new(ReadNow::new().map_err(LoadError::Thread)?);
        let mut drain = Drain {
            drains: drains.clone(),
            ring,
            losses,
            tx,
            counters: counters.clone(),
            processes: ProcessCache::new(proc_root),
            ticks_per_second: ticks_per_second(),
            losses_read: Instant::now(),
            _programs: ebpf,
        };
        let reader = Reader::spawn("kernel-events", move |wake| drain.run(wake))
            .map_err(LoadError::Thread)?;
        Ok(EventSource {
            queue,
            counters,
            timing,
            udp_flows,
            drains,
            _reader: reader,
        })
    }

    /// Asks the reader to drain the ring now and waits (at most `limit`) until a drain that
    /// began after this call has ended: every event the kernel emitted before the call is
    /// then in the queue. Whether it was.
    pub fn drain_now(&self, limit: Duration) -> bool {
        self.drains.request(limit)
    }
}

/// One of the object's maps, as its typed view.
fn take_map<M>(ebpf: &mut Ebpf, map: &'static str) -> Result<M, LoadError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let raw = ebpf.take_map(map).ok_or(LoadError::Missing(map))?;
    M::try_from(raw).map_err(|source| LoadError::Map { map, source })
}

fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoint: &str,
    btf: &Btf,
) -> Result<(), LoadError> {
    let refused = |source| LoadError::Program { program, source };
    let p: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(LoadError::Missing(program))?
        .try_into()
        .map_err(refused)?;
    p.load(tracepoint, btf).map_err(refused)?;
    p.attach().map_err(refused)?;
    Ok(())
}

fn ticks_per_second() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as u64,
        _ => 100,
    }
}

/// The reader thread's side.
struct Drain {
    drains: Arc<ReadNow>,
    ring: RingBuf<MapData>,
    losses: PerCpuArray<MapData, u64>,
    tx: QueueSender<Vec<KernelEvent>>,
    counters: Arc<EventCounters>,
    processes: ProcessCache,
    ticks_per_second: u64,
    losses_read: Instant,
    /// The loaded programs: attached while this lives.
    _programs: Ebpf,
}

impl Drain {
    fn run(&mut self, wake: &Wake) {
        // Woken only by the programs' forced wake-ups, not by events that wait in the ring.
        let edges = match wake.edges(self.ring.as_fd()).and_then(|e| {
            e.also_readable(self.drains.kick())?;
            Ok(e)
        }) {
            Ok(edges) => edges,
            Err(e) => {
                tracing::error!(error = %e, "the kernel event reader cannot wait for the ring buffer; it stops");
                return;
            }
        };
        loop {
            let woken = wake.wait_edge(&edges, DRAIN_PERIOD);
            if woken == Woken::Stopped {
                return;
            }
            // The requests made before this drain begins are served by it.
            let requested = self.drains.begin();
            self.drain();
            self.drains.served(requested);
            if self.losses_read.elapsed() >= LOSS_READ_PERIOD {
                self.read_losses();
            }
            if woken == Woken::Readable && !wake.pause(DRAIN_PAUSE) {
                return;
            }
        }
    }

    fn drain(&mut self) {
        let room = self.tx.room();
        let mut batch = Vec::new();
        while let Some(item) = self.ring.next() {
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let Some((event, fresh)) = decode(&item, self.ticks_per_second) else {
                self.counters.unparsable.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            drop(item);
            if batch.len() >= room {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            batch.push(match event {
                KernelEvent::Owner {
                    cookie,
                    role,
                    mut process,
                } => {
                    // None: gone before /proc was read (the poll loop counts those
                    // owners as `event_owners_from_event`).
                    process.info = self.processes.get(&process, fresh);
                    KernelEvent::Owner {
                        cookie,
                        role,
                        process,
                    }
                }
                other => other,
            });
        }
        let n = batch.len();
        if n > 0 && self.tx.try_send_weighted(batch, n) == Err(NotQueued::Full) {
            self.counters
                .queue_full
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn read_losses(&mut self) {
        self.losses_read = Instant::now();
        let sum = |i: u32| {
            self.losses
                .get(&i, 0)
                .map(|per_cpu| per_cpu.iter().sum::<u64>())
                .unwrap_or(0)
        };
        self.counters.ring_full.store(sum(0), Ordering::Relaxed);
        self.counters.map_full.store(sum(1), Ordering::Relaxed);
        self.counters.udp_full.store(sum(2), Ordering::Relaxed);
    }
}

/// One event from the ring, and whether the programs ask for its process's /proc entry to be
/// read now (`fresh`); `None` when it is not one of ours (or truncated).
fn decode(b: &[u8], ticks_per_second: u64) -> Option<(KernelEvent, bool)> {
    let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
    match u32_at(0)? {
        kind @ (CONNECT | OWNER | UDP_OWNER) if b.len() >= OWNER_EVENT_LEN => {
            let comm = &b[40..56];
            let end = comm.iter().position(|&c| c == 0).unwrap_or(comm.len());
            let start_ns = u64_at(24)?;
            let owner = KernelEvent::Owner {
                cookie: u64_at(16)?,
                role: match kind {
                    CONNECT => Role::Connected,
                    UDP_OWNER => Role::Udp,
                    _ => Role::Served,
                },
                process: EventProcess {
                    tgid: u32_at(4)?,
                    uid: u32_at(8)?,
                    // As the kernel computes /proc's start time (nsec_to_clock_t).
                    start_ticks: start_ns / (1_000_000_000 / ticks_per_second.max(1)),
                    cgroup_id: u64_at(32)?,
                    comm: String::from_utf8_lossy(&comm[..end]).into_owned(),
                    tid: u32_at(56)?,
                    info: None,
                },
            };
            Some((owner, u32_at(12)? != 0))
        }
        RESPONSE if b.len() >= RESPONSE_EVENT_LEN => Some((
            KernelEvent::Response {
                cookie: u64_at(8)?,
                micros: u64_at(16)? / 1000,
            },
            false,
        )),
        UDP_RESPONSE if b.len() >= UDP_RESPONSE_EVENT_LEN => Some((
            KernelEvent::UdpResponse {
                flow: FlowKey::from_ne_bytes(&b[16..])?,
                micros: u64_at(8)? / 1000,
            },
            false,
        )),
        CLOSED if b.len() >= CLOSED_EVENT_LEN => Some((
            KernelEvent::Closed {
                cookie: u64_at(8)?,
                fin_received: u32_at(4)? != 0,
            },
            false,
        )),
        _ => None,
    }
}

/// Processes read from /proc for owner events, reused for a while (a client making many
/// connections is read once). A read is used only if the calling thread still has the name
/// the event carried: a process that exec'd between its connect and the read (measured: a
/// python3 that connected and exec'd curl within a millisecond, read after the exec) would
/// otherwise lend the new executable to the old connection.
struct ProcessCache {
    proc_root: PathBuf,
    read: HashMap<(u32, u64), (Instant, Arc<ProcessInfo>)>,
}

impl ProcessCache {
    fn new(proc_root: PathBuf) -> ProcessCache {
        ProcessCache {
            proc_root,
            read: HashMap::new(),
        }
    }

    /// Whether the process read is the one the event saw: its thread still has the event's
    /// name (/proc/TGID/task/TID/comm). A thread that has exited since (a server's worker)
    /// cannot be asked; then the process's own name must be the event's (an exec renames
    /// it: python3 → curl), else the read is not used.
    fn unchanged_since(&self, p: &EventProcess, info: &ProcessInfo) -> bool {
        let path = self
            .proc_root
            .join(p.tgid.to_string())
            .join("task")
            .join(p.tid.to_string())
            .join("comm");
        match std::fs::read(path) {
            Ok(name) => name.trim_ascii_end() == p.comm.as_bytes(),
            Err(_) => info.comm == p.comm,
        }
    }

    /// The /proc facts of the event's process — only if the pid is still that process (same
    /// start time): never another process that reused the pid. Read anew when `fresh` (the
    /// programs ask: first event of it in a while, or it exec'd since).
    fn get(&mut self, p: &EventProcess, fresh: bool) -> Option<Arc<ProcessInfo>> {
        let key = (p.tgid, p.start_ticks);
        if !fresh
            && let Some((at, info)) = self.read.get(&key)
            && at.elapsed() < PROCESS_CACHE_AGE
        {
            return Some(info.clone());
        }
        let Some(info) = ProcessInfo::read(&self.proc_root, p.tgid, None)
            .filter(|info| info.start_ticks == p.start_ticks)
            .filter(|info| self.unchanged_since(p, info))
            .map(Arc::new)
        else {
            // What was read before may describe the executable before an exec.
            self.read.remove(&key);
            return None;
        };
        if self.read.len() >= PROCESS_CACHE_MAX {
            self.read
                .retain(|_, (at, _)| at.elapsed() < PROCESS_CACHE_AGE);
            if self.read.len() >= PROCESS_CACHE_MAX {
                self.read.clear();
            }
        }
        self.read.insert(key, (Instant::now(), info.clone()));
        Some(info)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner_bytes(kind: u32, tgid: u32, cookie: u64, start_ns: u64, comm: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(kind.to_ne_bytes());
        b.extend(tgid.to_ne_bytes());
        b.extend(1000u32.to_ne_bytes());
        b.extend(u32::from(kind == CONNECT).to_ne_bytes());
        b.extend(cookie.to_ne_bytes());
        b.extend(start_ns.to_ne_bytes());
        b.extend(77u64.to_ne_bytes());
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        b.extend(c);
        b.extend((tgid + 1).to_ne_bytes());
        b.extend(0u32.to_ne_bytes());
        b
    }

    #[test]
    fn events_decode_from_the_programs_layout() {
        let b = owner_bytes(CONNECT, 42, 9, 12_345_678_901, b"curl");
        assert_eq!(b.len(), OWNER_EVENT_LEN);
        let Some((
            KernelEvent::Owner {
                cookie,
                role,
                process,
            },
            true,
        )) = decode(&b, 100)
        else {
            panic!("not an owner event");
        };
        assert_eq!((cookie, role), (9, Role::Connected));
        assert_eq!(
            (process.tgid, process.uid, process.cgroup_id),
            (42, 1000, 77)
        );
        // 12.345678901 s after boot is tick 1234 at 100 Hz, as /proc/PID/stat says.
        assert_eq!(process.start_ticks, 1234);
        assert_eq!((process.comm.as_str(), process.tid), ("curl", 43));

        let b = owner_bytes(OWNER, 7, 3, 0, b"0123456789abcdef");
        let Some((KernelEvent::Owner { role, process, .. }, false)) = decode(&b, 100) else {
            panic!("not an owner event");
        };
        assert_eq!(
            (role, process.comm.as_str()),
            (Role::Served, "0123456789abcdef")
        );

        let mut r = Vec::new();
        r.extend(RESPONSE.to_ne_bytes());
        r.extend(0u32.to_ne_bytes());
        r.extend(5u64.to_ne_bytes());
        r.extend(20_000_999u64.to_ne_bytes());
        assert!(matches!(
            decode(&r, 100),
            Some((
                KernelEvent::Response {
                    cookie: 5,
                    micros: 20_000
                },
                false
            ))
        ));

        let c = [CLOSED.to_ne_bytes(), 1u32.to_ne_bytes()].concat();
        let c = [c.as_slice(), &8u64.to_ne_bytes()].concat();
        assert!(matches!(
            decode(&c, 100),
            Some((
                KernelEvent::Closed {
                    cookie: 8,
                    fin_received: true
                },
                false
            ))
        ));
        assert!(decode(&c[..15], 100).is_none());

        let flow = FlowKey::new(
            11,
            "[fd00::1]:40000".parse().unwrap(),
            "[fd00::53]:53".parse().unwrap(),
        );
        let u = [
            UDP_RESPONSE.to_ne_bytes().as_slice(),
            &0u32.to_ne_bytes(),
            &3_000_500u64.to_ne_bytes(),
            &flow.to_ne_bytes(),
        ]
        .concat();
        assert_eq!(u.len(), UDP_RESPONSE_EVENT_LEN);
        let Some((KernelEvent::UdpResponse { flow: got, micros }, false)) = decode(&u, 100) else {
            panic!("not a UDP response");
        };
        assert_eq!((got, micros), (flow, 3_000));
        assert_eq!(got.remote(), "[fd00::53]:53".parse().unwrap());
        assert!(decode(&u[..UDP_RESPONSE_EVENT_LEN - 1], 100).is_none());
    }

    #[test]
    fn truncated_or_foreign_events_are_refused() {
        let b = owner_bytes(CONNECT, 42, 9, 0, b"x");
        assert!(decode(&b[..OWNER_EVENT_LEN - 1], 100).is_none());
        assert!(decode(&b[..3], 100).is_none());
        assert!(decode(&[], 100).is_none());
        let mut other = b.clone();
        other[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert!(decode(&other, 100).is_none());
        let r = [RESPONSE.to_ne_bytes().as_slice(), &[0u8; 8]].concat();
        assert!(decode(&r, 100).is_none());
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    /// Loads the programs into this kernel (the suite runs as root on kernels with BTF) and
    /// sees this process connect, serve and answer on loopback.
    #[test]
    fn the_programs_load_and_see_this_process_connect_and_answer() {
        let source = EventSource::start(PathBuf::from("/proc"), false, false)
            .unwrap_or_else(|e| panic!("the event source cannot load here: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            std::thread::sleep(Duration::from_millis(30));
            s.write_all(b"pong").unwrap();
        });
        let mut c = TcpStream::connect(addr).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).unwrap();
        server.join().unwrap();
        let me = std::process::id();
        let (mut connected, mut served, mut responses) = (false, false, Vec::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !(connected && served && responses.len() >= 2) {
            for e in source
                .queue
                .recv_timeout(Duration::from_millis(100))
                .unwrap_or_default()
            {
                match e {
                    KernelEvent::Owner { role, process, .. } if process.tgid == me => {
                        assert!(process.info.is_some(), "this process's /proc was read");
                        match role {
                            Role::Connected => connected = true,
                            Role::Served => served = true,
                            Role::Udp => {}
                        }
                    }
                    KernelEvent::Response { micros, .. } => responses.push(micros),
                    _ => {}
                }
            }
        }
        assert!(connected && served, "connect and serve seen");
        // Other tests' sockets may answer too; ours took 30 ms on both ends.
        assert!(
            responses
                .iter()
                .filter(|&&us| (30_000..60_000).contains(&us))
                .count()
                >= 2,
            "{responses:?}"
        );
    }
}
