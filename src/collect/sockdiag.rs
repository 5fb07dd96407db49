//! NETLINK_SOCK_DIAG: the kernel's tables of TCP and UDP sockets.
//!
//! Owns the netlink conversation (dump requests, exact single-socket lookups, destroy
//! notifications all speak the same message format) and turns each kernel message into a
//! [`TcpSample`], the only socket type the rest of depmap sees. Raw netlink bytes never leave
//! this file.
//!
//! Measured by `benches/poll.rs` (BENCHMARKS.md): a dump of 40,008 sockets with `tcp_info`
//! costs 43.6 ms in the kernel and 1.6 ms more to parse into samples; an exact lookup
//! ≈3.3 µs.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use netlink_packet_core::{
    ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NlasIterator, Parseable,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, INET_DIAG_INFO, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags, nlas::TcpInfo},
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_SOCK_DIAG};

/// Kernel TCP state numbers (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
}

/// The `tcp_info` counters depmap uses, copied out of the kernel's struct.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpCounters {
    /// `tcpi_state`: the TCP state read together with these counters, under the socket lock.
    /// The message's own state is read before the lock, so a FIN processed in between shows
    /// `ESTABLISHED` next to a `bytes_received` that already counts that FIN.
    pub state: u8,
    /// Sequence space acknowledged by the peer (payload + SYN + FIN once acked).
    pub bytes_acked: u64,
    /// Sequence space received in order (payload + the peer's FIN).
    pub bytes_received: u64,
    /// Payload bytes transmitted, retransmissions included.
    pub bytes_sent: u64,
    /// Payload bytes retransmitted.
    pub bytes_retrans: u64,
    /// Segments carrying data, in and out.
    pub data_segs_in: u32,
    pub data_segs_out: u32,
    /// Milliseconds since the last data segment was sent / received.
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    /// Minimum round-trip time seen, microseconds.
    pub min_rtt_us: u32,
}

/// One TCP socket as the kernel reported it in a dump or a destroy notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSample {
    /// Kernel socket cookie: the identity of a socket for its whole life.
    pub cookie: u64,
    /// The socket's address family (an IPv6 socket may carry IPv4-mapped addresses).
    pub family: Family,
    /// TCP state (see [`state`]); `CLOSE` in destroy notifications.
    pub state: u8,
    /// Local and remote endpoints; IPv4-mapped IPv6 addresses are shown as IPv4.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Owner uid and socket inode (0 once the socket has left its file, e.g. at destroy).
    pub uid: u32,
    pub inode: u32,
    /// `tcp_info`, absent when the kernel sent none or one we could not read.
    pub counters: Option<TcpCounters>,
    /// The network namespace it was read in (`collect::namespaces::NetnsId`; 0: depmap's
    /// own). Set by whoever read it: a kernel message does not say.
    pub netns: u64,
}

impl TcpSample {
    /// The state consistent with the counters: `tcp_info`'s own when there is one.
    pub fn counted_state(&self) -> u8 {
        self.counters.map_or(self.state, |c| c.state)
    }

    /// A listening socket, or any socket with no peer.
    pub fn is_listener(&self) -> bool {
        self.state == state::LISTEN || self.remote.port() == 0
    }
}

/// One UDP socket as a dump reported it: bound (`remote` port 0) or connected. UDP sockets
/// carry no byte counters in sock_diag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpSample {
    pub cookie: u64,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub uid: u32,
    pub inode: u32,
    /// The network namespace it was read in (0: depmap's own), as [`TcpSample::netns`].
    pub netns: u64,
}

impl UdpSample {
    /// Bound to a port and not connected: it receives from anyone (a server's socket, or a
    /// client's that sends with `sendto`).
    pub fn is_unconnected(&self) -> bool {
        self.remote.port() == 0 && self.local.port() != 0
    }
}

/// Which address families a dump covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// Counts of what a dump skipped, for the loss counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct DumpStats {
    pub messages: u64,
    pub unparsable: u64,
}

/// States depmap dumps: every full socket. Left out: TIME_WAIT minisockets (their full socket
/// already produced its destroy notification and final counters) and SYN_RECV, which makes
/// the kernel list half-open connection requests (not sockets: no inode, a cookie of their own;
/// a port scan would look like thousands of connections). An accepted socket is dumped from
/// ESTABLISHED on.
fn dumped_states() -> StateFlags {
    StateFlags::all() & !StateFlags::TIME_WAIT & !StateFlags::SYN_RECV
}

/// `TCPDIAG_GETSOCK`: the original inet_diag request type, still served by the kernel
/// (`inet_diag_rcv_msg_compat`). Its dumps run with family `AF_UNSPEC`: one walk of the TCP
/// hash table gives both families' sockets, where `SOCK_DIAG_BY_FAMILY` needs a walk per
/// family. The walk is most of a dump's cost on a host with few sockets, since the table is
/// sized by memory, not by use: measured here (262,144 buckets; `benches/namespaces.rs`,
/// BENCHMARKS.md), 2.37 ms for one walk against 4.35 ms for the two per-family dumps of the
/// same near-empty namespace, 20.2 ms against 25.9 ms with 20,004 sockets. The answers are
/// `inet_diag_msg`s like those of `SOCK_DIAG_BY_FAMILY`, with this message type.
/// netlink-packet-sock-diag has no type for the request (`struct inet_diag_req`), so
/// [`compat_dump_request`] writes its 60 bytes.
const TCPDIAG_GETSOCK: u16 = 18;
/// `sizeof(struct inet_diag_req)`: family, src_len, dst_len, ext, the 48-byte socket id,
/// states, dbs.
const INET_DIAG_REQ_LEN: usize = 60;

/// A netlink socket used for dump requests.
pub struct SockDiag {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
    /// Whether one-walk dumps ([`TCPDIAG_GETSOCK`]) are answered; false after a kernel
    /// refused one (then a dump per family).
    one_walk: bool,
}

impl SockDiag {
    pub fn open() -> io::Result<SockDiag> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        Ok(SockDiag {
            socket,
            buf: vec![0u8; 256 * 1024],
            seq: 0,
            one_walk: true,
        })
    }

    /// Sends one inet_diag request for TCP (a dump when `dump`, else an exact lookup).
    fn request(&mut self, socket_id: SocketId, states: StateFlags, dump: bool) -> io::Result<()> {
        self.request_of(IPPROTO_TCP, socket_id, states, dump)
    }

    /// Sends one inet_diag request for `protocol`.
    fn request_of(
        &mut self,
        protocol: u8,
        socket_id: SocketId,
        states: StateFlags,
        dump: bool,
    ) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let family = match socket_id.source_address {
            IpAddr::V4(_) => AF_INET,
            IpAddr::V6(_) => AF_INET6,
        };
        let extensions = if protocol == IPPROTO_TCP {
            ExtensionFlags::INFO
        } else {
            ExtensionFlags::empty()
        };
        let request = InetRequest {
            family,
            protocol,
            extensions,
            states,
            socket_id,
        };
        let mut header = NetlinkHeader::default();
        header.flags = if dump {
            NLM_F_REQUEST | NLM_F_DUMP
        } else {
            NLM_F_REQUEST
        };
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
        packet.finalize();
        let mut out = vec![0u8; packet.header.length as usize];
        packet.serialize(&mut out[..]);
        self.socket.send(&out, 0)?;
        Ok(())
    }

    /// Exact lookup of one socket by its endpoints and cookie (no dump; ≈4 µs whatever the
    /// table size). Finds TIME_WAIT minisockets too, which keep their full socket's cookie and
    /// report their sub-state (`FIN_WAIT2` or `TIME_WAIT`) as `state`.
    pub fn lookup(&mut self, of: &TcpSample) -> io::Result<Option<TcpSample>> {
        let (local, remote, cookie) = (of.local, of.remote, of.cookie);
        let mut socket_id = match of.family {
            Family::V4 => SocketId::new_v4(),
            Family::V6 => SocketId::new_v6(),
        };
        socket_id.source_port = local.port();
        socket_id.destination_port = remote.port();
        if of.family == Family::V4 {
            socket_id.source_address = local.ip();
            socket_id.destination_address = remote.ip();
        } else {
            socket_id.source_address = IpAddr::V6(to_v6(local.ip()));
            socket_id.destination_address = IpAddr::V6(to_v6(remote.ip()));
        }
        socket_id.cookie = cookie.to_ne_bytes();
        self.request(socket_id, StateFlags::all(), false)?;
        let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let mut found = None;
        let mut stats = DumpStats::default();
        for_each_message(&self.buf[..size], &mut stats, |m| {
            if let Message::Sample(s) = m {
                found = Some(s);
            }
        });
        Ok(found.filter(|s| s.cookie == cookie))
    }

    /// Dumps every TCP socket of one family with `tcp_info`, calling `each` per socket.
    pub fn dump(
        &mut self,
        family: Family,
        mut each: impl FnMut(TcpSample),
    ) -> io::Result<DumpStats> {
        let socket_id = any_socket(family);
        self.request(socket_id, dumped_states(), true)?;
        self.read_samples(&mut each)
    }

    /// Dumps every TCP socket of both families (`ipv6`) or of IPv4 only, calling `each` per
    /// socket: one walk of the kernel's table where it answers [`TCPDIAG_GETSOCK`], else a
    /// dump per family.
    pub fn dump_all(
        &mut self,
        ipv6: bool,
        mut each: impl FnMut(TcpSample),
    ) -> io::Result<DumpStats> {
        if ipv6 && self.one_walk {
            self.send_compat_dump()?;
            match self.read_samples(&mut each) {
                // Refused before any answer: this kernel has no compat handler.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {
                    self.one_walk = false;
                    tracing::debug!(error = %e, "one-walk sock_diag dumps refused; a dump per family");
                }
                other => return other,
            }
        }
        let mut stats = self.dump(Family::V4, &mut each)?;
        if ipv6 {
            let v6 = self.dump(Family::V6, &mut each)?;
            stats.messages += v6.messages;
            stats.unparsable += v6.unparsable;
        }
        Ok(stats)
    }

    /// Reads a dump's answers until its end, calling `each` per socket.
    fn read_samples(&mut self, each: &mut impl FnMut(TcpSample)) -> io::Result<DumpStats> {
        self.read_dump(|m| {
            if let Message::Sample(s) = m {
                each(s)
            }
        })
    }

    fn send_compat_dump(&mut self) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let request = compat_dump_request(self.seq, dumped_states().bits());
        self.socket.send(&request, 0)?;
        Ok(())
    }

    /// Dumps every UDP socket of one family (bound or connected; UDP has no counters to ask
    /// for), calling `each` per socket.
    pub fn dump_udp(
        &mut self,
        family: Family,
        mut each: impl FnMut(UdpSample),
    ) -> io::Result<DumpStats> {
        let socket_id = any_socket(family);
        self.request_of(IPPROTO_UDP, socket_id, StateFlags::all(), true)?;
        self.read_dump(|m| {
            if let Message::Sample(s) = m {
                each(UdpSample {
                    cookie: s.cookie,
                    local: s.local,
                    remote: s.remote,
                    uid: s.uid,
                    inode: s.inode,
                    netns: 0,
                })
            }
        })
    }

    /// Reads a dump's answers until its end, handing each message to `f`.
    fn read_dump(&mut self, mut f: impl FnMut(Message)) -> io::Result<DumpStats> {
        let mut stats = DumpStats::default();
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            if size == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "sock_diag closed",
                ));
            }
            let mut done = false;
            let mut error = 0;
            for_each_message(&self.buf[..size], &mut stats, |event| match event {
                Message::Done => done = true,
                Message::Error(code) => {
                    done = true;
                    error = code;
                }
                sample => f(sample),
            });
            if error != 0 {
                return Err(io::Error::from_raw_os_error(-error));
            }
            if done {
                return Ok(stats);
            }
        }
    }

    /// The same dump without parsing: walks netlink headers only and returns
    /// (messages, bytes). The kernel's own cost, for benchmarks.
    pub fn dump_unparsed(&mut self, family: Family) -> io::Result<(u64, u64)> {
        let socket_id = any_socket(family);
        self.request(socket_id, dumped_states(), true)?;
        self.read_unparsed()
    }

    /// As [`SockDiag::dump_unparsed`], of both families in one walk (as
    /// [`SockDiag::dump_all`] makes it).
    pub fn dump_all_unparsed(&mut self) -> io::Result<(u64, u64)> {
        self.send_compat_dump()?;
        self.read_unparsed()
    }

    fn read_unparsed(&mut self) -> io::Result<(u64, u64)> {
        let (mut messages, mut bytes) = (0u64, 0u64);
        loop {
            let size = self.socket.recv(&mut &mut self.buf[..], 0)?;
            bytes += size as u64;
            let mut off = 0;
            while off + 16 <= size {
                let b = &self.buf[off..];
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let kind = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || kind == NLMSG_DONE || kind == NLMSG_ERROR {
                    return Ok((messages, bytes));
                }
                messages += 1;
                off += (len + 3) & !3;
            }
            if size == 0 {
                return Ok((messages, bytes));
            }
        }
    }
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `sizeof(struct inet_diag_msg)`: the attributes follow it.
const INET_DIAG_MSG_LEN: usize = 72;

/// A `TCPDIAG_GETSOCK` dump request: netlink header, then `struct inet_diag_req` with
/// family `AF_INET` (the kernel dumps with `AF_UNSPEC` whatever it says), `tcp_info` asked
/// for, a zero socket id (no filter) and `states`.
fn compat_dump_request(seq: u32, states: u32) -> [u8; 16 + INET_DIAG_REQ_LEN] {
    let mut out = [0u8; 16 + INET_DIAG_REQ_LEN];
    out[0..4].copy_from_slice(&((16 + INET_DIAG_REQ_LEN) as u32).to_ne_bytes());
    out[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    out[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    // Port id 0: the kernel fills it in.
    let req = &mut out[16..];
    req[0] = AF_INET;
    req[3] = ExtensionFlags::INFO.bits();
    // req[4..52]: the socket id, all zero.
    req[52..56].copy_from_slice(&states.to_ne_bytes());
    out
}

/// A dump request's socket id: every socket of `family`.
fn any_socket(family: Family) -> SocketId {
    match family {
        Family::V4 => SocketId::new_v4(),
        Family::V6 => SocketId::new_v6(),
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// What one netlink message in a datagram turned out to be.
pub enum Message {
    Sample(TcpSample),
    Done,
    Error(i32),
}

/// Walks the netlink messages in one datagram. A message that cannot be parsed is counted
/// and skipped; the walk stops at a length that would run past the datagram.
///
/// Reads the crate's zero-copy views (netlink header, `inet_diag_msg`, attribute iterator,
/// `tcp_info`) rather than its owned `InetResponse`, which allocates a vector of every
/// attribute per socket: this halved the parse cost per socket (BENCHMARKS.md).
pub fn for_each_message(data: &[u8], stats: &mut DumpStats, mut f: impl FnMut(Message)) {
    let mut off = 0usize;
    while off + 16 <= data.len() {
        let Ok(msg) = NetlinkBuffer::new_checked(&data[off..]) else {
            stats.unparsable += 1;
            return;
        };
        let len = msg.length() as usize;
        stats.messages += 1;
        match msg.message_type() {
            NLMSG_DONE => f(Message::Done),
            NLMSG_ERROR => {
                let code = ErrorBuffer::new_checked(msg.payload())
                    .ok()
                    .and_then(|e| e.code())
                    .map(|c| c.get())
                    .unwrap_or(0);
                f(Message::Error(code))
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match parse_sample(msg.payload()) {
                Some(sample) => f(Message::Sample(sample)),
                None => stats.unparsable += 1,
            },
            _ => {}
        }
        // Netlink messages are 4-byte aligned.
        off += (len + 3) & !3;
    }
}

/// One `inet_diag_msg` and its attributes; `None` when the header is malformed.
fn parse_sample(payload: &[u8]) -> Option<TcpSample> {
    let h = InetResponseHeader::parse(payload).ok()?;
    let attrs = payload.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    let counters = NlasIterator::new(attrs)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == INET_DIAG_INFO)
        .and_then(|nla| TcpInfo::parse(nla.value()).ok())
        .map(|ti| TcpCounters {
            state: ti.state,
            bytes_acked: ti.bytes_acked,
            bytes_received: ti.bytes_received,
            bytes_sent: ti.bytes_sent,
            bytes_retrans: ti.bytes_retrans,
            data_segs_in: ti.data_segs_in,
            data_segs_out: ti.data_segs_out,
            last_data_sent_ms: ti.last_data_sent,
            last_data_recv_ms: ti.last_data_recv,
            min_rtt_us: ti.min_rtt,
        });
    let id = &h.socket_id;
    Some(TcpSample {
        cookie: u64::from_ne_bytes(id.cookie),
        family: if h.family == AF_INET6 {
            Family::V6
        } else {
            Family::V4
        },
        state: h.state,
        local: SocketAddr::new(canonical_ip(id.source_address), id.source_port),
        remote: SocketAddr::new(canonical_ip(id.destination_address), id.destination_port),
        uid: h.uid,
        inode: h.inode,
        counters,
        netns: 0,
    })
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is shown as IPv4, as the records require.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// True for `0.0.0.0` and `::`.
pub fn is_wildcard(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_unspecified(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::UNSPECIFIED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn mapped_ipv6_is_shown_as_ipv4() {
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(canonical_ip(mapped), IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)));
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(canonical_ip(v6), v6);
    }

    #[test]
    fn truncated_datagrams_are_counted_not_fatal() {
        let mut stats = DumpStats::default();
        // A header that claims 200 bytes in a 20-byte buffer.
        let mut data = vec![0u8; 20];
        data[..4].copy_from_slice(&200u32.to_ne_bytes());
        let mut seen = 0;
        for_each_message(&data, &mut stats, |_| seen += 1);
        assert_eq!(seen, 0);
        assert_eq!(stats.unparsable, 1);
        // An inet_diag answer too short for its header is skipped as unparsable too.
        let mut data = vec![0xffu8; 32];
        data[..4].copy_from_slice(&32u32.to_ne_bytes());
        data[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        for_each_message(&data, &mut stats, |_| seen += 1);
        assert_eq!(stats.unparsable, 2);
    }

    #[test]
    fn udp_dump_sees_bound_and_connected_sockets() {
        let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(bound.local_addr().unwrap()).unwrap();
        let mut diag = SockDiag::open().unwrap();
        let mut seen = Vec::new();
        diag.dump_udp(Family::V4, |s| seen.push(s)).unwrap();
        let of = |a: SocketAddr| seen.iter().find(|s| s.local == a).cloned();
        let b = of(bound.local_addr().unwrap()).expect("the bound socket");
        assert!(b.is_unconnected() && b.inode != 0 && b.cookie != 0);
        let c = of(connected.local_addr().unwrap()).expect("the connected socket");
        assert!(!c.is_unconnected());
        assert_eq!(c.remote, bound.local_addr().unwrap());
    }

    #[test]
    fn dump_sees_a_listening_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut diag = SockDiag::open().unwrap();
        let mut found = None;
        diag.dump(Family::V4, |s| {
            if s.local.port() == port && s.state == state::LISTEN {
                found = Some(s);
            }
        })
        .unwrap();
        let s = found.expect("listener in dump");
        assert!(s.is_listener());
        assert_ne!(s.inode, 0);
        assert_ne!(s.cookie, 0);
    }

    #[test]
    fn one_walk_gives_both_families_as_the_per_family_dumps_do() {
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let c4 = std::net::TcpStream::connect(l4.local_addr().unwrap()).unwrap();
        let c6 = std::net::TcpStream::connect(l6.local_addr().unwrap()).unwrap();
        let (_a4, _a6) = (l4.accept().unwrap(), l6.accept().unwrap());
        let ports = [
            l4.local_addr().unwrap().port(),
            l6.local_addr().unwrap().port(),
        ];
        let ours =
            |s: &TcpSample| ports.contains(&s.local.port()) || ports.contains(&s.remote.port());
        let mut diag = SockDiag::open().unwrap();
        let mut one = Vec::new();
        diag.dump_all(true, |s| {
            if ours(&s) {
                one.push((s.cookie, s.local, s.remote, s.state, s.counters.is_some()))
            }
        })
        .unwrap();
        assert!(diag.one_walk, "this kernel answers TCPDIAG_GETSOCK");
        let mut two = Vec::new();
        for family in [Family::V4, Family::V6] {
            diag.dump(family, |s| {
                if ours(&s) {
                    two.push((s.cookie, s.local, s.remote, s.state, s.counters.is_some()))
                }
            })
            .unwrap();
        }
        one.sort();
        two.sort();
        // Two listeners, and both ends of each connection, with their tcp_info.
        assert_eq!(one.len(), 6, "{one:?}");
        assert_eq!(one, two);
        assert!(one.iter().all(|s| s.4));
        for c in [&c4, &c6] {
            let a = c.local_addr().unwrap();
            let local = SocketAddr::new(canonical_ip(a.ip()), a.port());
            assert!(one.iter().any(|s| s.1 == local), "{local} in {one:?}");
        }
    }
}
