//! UDP flows from the event source's cgroup programs (`bpf/depmap.bpf.c`, `udp_egress` and
//! `udp_ingress` on the cgroup v2 root): the payload bytes and datagrams of every
//! (socket, local endpoint, remote endpoint), which sock_diag cannot give (UDP sockets have no
//! byte counters there); and `udp_create` (cgroup/sock_create), whose owner events name the
//! process that created each UDP socket. The poll loop reads the whole map each poll and removes flows idle
//! for long (the tracking layer says which). DNS exchanges (port 53) are timed by the
//! programs: each answer's time is an event (`KernelEvent::UdpResponse`) naming its flow.
//!
//! Privileges: CAP_BPF + CAP_NET_ADMIN (attaching to a cgroup) + CAP_PERFMON (research
//! bpf-spike-2, "Privileges"). Cost measured there: ≈ 0.1 µs per datagram per direction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock};

use super::sockdiag::canonical_ip;

/// Most UDP flows the kernel map holds; beyond it new flows are not counted (`udp_full`).
pub const MAX_UDP_FLOWS: u32 = 16_384;

/// `struct udp_flow_key` of the C source.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub cookie: u64,
    local: [u32; 4],
    remote: [u32; 4],
    lport: u16,
    rport: u16,
    family: u16,
    _pad: u16,
}

/// `struct udp_flow` of the C source.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub datagrams_in: u64,
    first_in: u32,
    _pad: u32,
    /// A DNS query waiting for its answer (the programs' own; the answer's time comes as an
    /// event).
    query_ns: u64,
}

// SAFETY: both are plain `repr(C)` integers with explicit padding fields, as the kernel
// map's key and value (every bit pattern is valid).
unsafe impl aya::Pod for FlowKey {}
unsafe impl aya::Pod for FlowCounts {}

const AF_INET: u16 = 2;

fn address(family: u16, words: &[u32; 4]) -> IpAddr {
    if family == AF_INET {
        // Network order in memory: the first word's bytes as they lie.
        IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
    } else {
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        canonical_ip(IpAddr::V6(Ipv6Addr::from(bytes)))
    }
}

impl FlowKey {
    /// A flow of socket `cookie` between two endpoints of one family (tests, benches).
    pub fn new(cookie: u64, local: SocketAddr, remote: SocketAddr) -> FlowKey {
        let words = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [0, 1, 2, 3].map(|i| {
                    u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]])
                })
            }
        };
        FlowKey {
            cookie,
            local: words(local.ip()),
            remote: words(remote.ip()),
            lport: local.port(),
            rport: remote.port(),
            family: if local.is_ipv4() { AF_INET } else { 10 },
            _pad: 0,
        }
    }

    /// `sizeof(struct udp_flow_key)`.
    pub const LEN: usize = 48;

    /// The key as the programs wrote it (native byte order), from an event.
    pub fn from_ne_bytes(b: &[u8]) -> Option<FlowKey> {
        let u16_at = |o: usize| Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let words = |o: usize| -> Option<[u32; 4]> {
            Some([u32_at(o)?, u32_at(o + 4)?, u32_at(o + 8)?, u32_at(o + 12)?])
        };
        Some(FlowKey {
            cookie: u64::from_ne_bytes(b.get(0..8)?.try_into().ok()?),
            local: words(8)?,
            remote: words(24)?,
            lport: u16_at(40)?,
            rport: u16_at(42)?,
            family: u16_at(44)?,
            _pad: 0,
        })
    }

    /// The inverse of [`FlowKey::from_ne_bytes`] (tests).
    #[cfg(test)]
    pub fn to_ne_bytes(&self) -> Vec<u8> {
        let mut b = self.cookie.to_ne_bytes().to_vec();
        for w in self.local.iter().chain(&self.remote) {
            b.extend(w.to_ne_bytes());
        }
        for v in [self.lport, self.rport, self.family, 0] {
            b.extend(v.to_ne_bytes());
        }
        b
    }

    pub fn local(&self) -> SocketAddr {
        SocketAddr::new(address(self.family, &self.local), self.lport)
    }

    pub fn remote(&self) -> SocketAddr {
        SocketAddr::new(address(self.family, &self.remote), self.rport)
    }
}

impl FlowCounts {
    /// Sums as the kernel keeps them (tests, benches).
    pub fn new(bytes: (u64, u64), datagrams: (u64, u64), received_first: bool) -> FlowCounts {
        FlowCounts {
            bytes_out: bytes.0,
            bytes_in: bytes.1,
            datagrams_out: datagrams.0,
            datagrams_in: datagrams.1,
            first_in: u32::from(received_first),
            _pad: 0,
            query_ns: 0,
        }
    }

    /// Whether the flow's first datagram was received (an inbound flow).
    pub fn received_first(&self) -> bool {
        self.first_in != 0
    }
}

/// Why the UDP programs are not attached.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("no cgroup v2 hierarchy is mounted (/proc/self/mountinfo, /proc/1/mountinfo)")]
    NoCgroup2,
    #[error("cannot open the cgroup v2 root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel refused program {program}: {source}: {cause} (needs CAP_NET_ADMIN)")]
    Program {
        program: &'static str,
        source: aya::programs::ProgramError,
        /// The kernel's answer (the error's own source).
        cause: String,
    },
    #[error("the BPF object lacks {0}")]
    Missing(&'static str),
    #[error("cannot use map udp_flows: {0}")]
    Map(#[source] aya::maps::MapError),
    #[error("cannot read depmap's network namespace cookie (SO_NETNS_COOKIE, Linux 5.14): {0}")]
    NetnsCookie(#[source] std::io::Error),
}

/// The cgroup v2 mount point (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // "... mount-point options - fstype source super-options"
        let (before, after) = l.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The attached programs' flow map, read by the poll loop.
pub struct UdpFlows {
    map: BpfHashMap<MapData, FlowKey, FlowCounts>,
}

impl UdpFlows {
    /// Attaches `udp_egress` and `udp_ingress` to the cgroup v2 root (they stay attached while
    /// `ebpf` lives) and takes the flow map.
    pub fn attach(ebpf: &mut Ebpf) -> Result<UdpFlows, UdpError> {
        let cgroup = open_dir(&find_cgroup2()?)?;
        for (program, kind) in [
            ("udp_egress", CgroupSkbAttachType::Egress),
            ("udp_ingress", CgroupSkbAttachType::Ingress),
        ] {
            let p: &mut CgroupSkb = loaded(ebpf, program)?;
            // A bpf_link (Linux ≥ 5.7) runs beside whatever else is attached there (systemd's,
            // a container runtime's); the kernel refuses any mode flag on one (EINVAL,
            // measured with AllowMultiple), so the default mode.
            p.attach(cgroup.as_fd(), kind, CgroupAttachMode::Single)
                .map_err(refused(program))?;
        }
        // The owners of UDP sockets (events of kind UDP_OWNER, read like TCP owners).
        let p: &mut CgroupSock = loaded(ebpf, "udp_create")?;
        p.attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(refused("udp_create"))?;
        let raw = ebpf
            .take_map("udp_flows")
            .ok_or(UdpError::Missing("udp_flows"))?;
        let map = BpfHashMap::try_from(raw).map_err(UdpError::Map)?;
        Ok(UdpFlows { map })
    }

    /// Every flow the map holds now (entries that vanish mid-read are skipped).
    pub fn read(&self, out: &mut Vec<(FlowKey, FlowCounts)>) {
        out.clear();
        out.extend(self.map.iter().filter_map(Result::ok));
    }

    /// Forgets a flow (idle: its next datagram starts a new one).
    pub fn remove(&mut self, key: &FlowKey) {
        let _ = self.map.remove(key);
    }
}

/// The cookie of depmap's own network namespace (what `bpf_get_netns_cookie` gives the
/// programs for its datagrams), from `SO_NETNS_COOKIE` (Linux ≥ 5.14) on a UDP socket.
pub fn own_netns_cookie() -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // Hand-written: neither nix 0.31 nor socket2 0.6 wraps SO_NETNS_COOKIE.
    // SAFETY: getsockopt writes at most `len` (8) bytes into `cookie`, a live u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Program `program` of the object as its type `P`, loaded into the kernel.
fn loaded<'a, P>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut P, UdpError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: CgroupProgram,
{
    let p: &mut P = ebpf
        .program_mut(program)
        .ok_or(UdpError::Missing(program))?
        .try_into()
        .map_err(refused(program))?;
    p.load_program().map_err(refused(program))?;
    Ok(p)
}

/// The kernel's refusal of `program`, with its answer.
fn refused(program: &'static str) -> impl Fn(aya::programs::ProgramError) -> UdpError {
    move |source| UdpError::Program {
        program,
        cause: std::error::Error::source(&source)
            .map(|e| e.to_string())
            .unwrap_or_default(),
        source,
    }
}

/// The two program types attached here, loaded the same way.
trait CgroupProgram {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError>;
}

impl CgroupProgram for CgroupSkb {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

impl CgroupProgram for CgroupSock {
    fn load_program(&mut self) -> Result<(), aya::programs::ProgramError> {
        self.load()
    }
}

/// The cgroup v2 root: as mounted here, else as PID 1 or the parent process sees it
/// (through `/proc/PID/root`): a process started by `ip netns exec` has a fresh /sys without
/// the cgroup mounts (and in a sandbox PID 1 may not be readable).
fn find_cgroup2() -> Result<PathBuf, UdpError> {
    let mounted = |pid: &str| {
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        cgroup2_root(&mountinfo)
    };
    if let Some(here) = mounted("self") {
        return Ok(here);
    }
    let parent = std::os::unix::process::parent_id().to_string();
    for pid in ["1", parent.as_str()] {
        if let Some(there) = mounted(pid) {
            let inside = there.strip_prefix("/").unwrap_or(&there);
            let path = Path::new("/proc").join(pid).join("root").join(inside);
            if path.is_dir() {
                return Ok(path);
            }
        }
    }
    Err(UdpError::NoCgroup2)
}

fn open_dir(path: &Path) -> Result<std::fs::File, UdpError> {
    std::fs::File::open(path).map_err(|source| UdpError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let hybrid = "33 25 0:28 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      35 33 0:30 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("garbage\n\n - \n"), None);
    }

    #[test]
    fn flow_addresses_read_as_the_kernel_wrote_them() {
        let key = FlowKey {
            cookie: 7,
            local: [u32::from_ne_bytes([10, 0, 0, 1]), 0, 0, 0],
            remote: [u32::from_ne_bytes([10, 0, 0, 2]), 0, 0, 0],
            lport: 40000,
            rport: 53,
            family: AF_INET,
            _pad: 0,
        };
        assert_eq!(key.local(), "10.0.0.1:40000".parse().unwrap());
        assert_eq!(key.remote(), "10.0.0.2:53".parse().unwrap());
        assert_eq!(
            FlowKey::new(7, key.local(), key.remote()),
            key,
            "the constructor lays addresses out as the kernel does"
        );
        let v6 = FlowKey::new(
            8,
            "[fd00::1]:5353".parse().unwrap(),
            "[fd00::2]:53".parse().unwrap(),
        );
        assert_eq!(v6.remote(), "[fd00::2]:53".parse().unwrap());
        assert_eq!(v6.local(), "[fd00::1]:5353".parse().unwrap());
    }
}
