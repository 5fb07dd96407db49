//! Passive capture of this host's DNS traffic: an `AF_PACKET` socket (`SOCK_DGRAM`: packets
//! start at the network header on every link type) with a classic BPF filter that passes
//! only IPv4/IPv6 UDP or TCP segments from or to port 53, so the kernel drops everything
//! else before it is copied. A reader thread parses each message with hickory-proto and
//! hands the queries this host sends (`PACKET_OUTGOING`, to port 53) and the answers it
//! receives (any other packet type, from port 53) to its caller (the enrichment's DNS
//! cache, which believes an answer only when it matches a query). On loopback every packet is seen twice, once each way; a DNS
//! server on this host answering others is not this host's resolution. DNS over TCP is read
//! when one segment holds the whole message. Needs CAP_NET_RAW; without it `start` fails and
//! depmap reports the columns as missing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::Message;

use super::reader::{Reader, Wake, Woken};
use crate::logging::{PROBLEM_LOG_INTERVAL, Throttle};

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// The kernel's packet type, loaded as a classic-BPF ancillary word (`SKF_AD_PKTTYPE`).
const PKTTYPE: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32;

/// IPv4 or IPv6 (no extension headers), UDP or TCP, not a later fragment; then a query this
/// host sends (`PACKET_OUTGOING`, to port 53) or an answer it receives (any other packet type,
/// from port 53). The kernel drops everything else before it is copied, including the
/// outgoing copy of a loopback answer. Jumps count from the next instruction. Accept returns
/// up to 64 KiB; drop returns 0. Checked instruction by instruction in the unit test, which
/// runs it.
fn filter() -> Vec<libc::sock_filter> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    const LD_B_ABS: u16 = 0x30;
    const LD_H_ABS: u16 = 0x28;
    const LD_H_IND: u16 = 0x48;
    const LDX_B_MSH: u16 = 0xb1;
    const AND_K: u16 = 0x54;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    let outgoing = u32::from(PACKET_OUTGOING);
    vec![
        op(LD_B_ABS, 0, 0, 0),       // 0: A = version nibble
        op(AND_K, 0, 0, 0xf0),       // 1
        op(JEQ_K, 0, 12, 0x40),      // 2: IPv4 → 3, else → 15
        op(LD_B_ABS, 0, 0, 9),       // 3: protocol
        op(JEQ_K, 1, 0, 17),         // 4: UDP → 6
        op(JEQ_K, 0, 22, 6),         // 5: TCP → 6, else drop
        op(LD_H_ABS, 0, 0, 6),       // 6: flags + fragment offset
        op(JSET_K, 20, 0, 0x1fff),   // 7: a later fragment: drop
        op(LDX_B_MSH, 0, 0, 0),      // 8: X = header length
        op(LD_H_IND, 0, 0, 0),       // 9: source port
        op(JEQ_K, 0, 2, 53),         // 10: 53 → 11, else → 13
        op(LD_B_ABS, 0, 0, PKTTYPE), // 11
        op(JEQ_K, 0, 14, outgoing),  // 12: received: accept (an answer); sent → 13
        op(LD_H_IND, 0, 0, 2),       // 13: destination port
        op(JEQ_K, 10, 13, 53),       // 14: 53 → 25, else drop
        op(JEQ_K, 0, 12, 0x60),      // 15: IPv6 → 16, else drop
        op(LD_B_ABS, 0, 0, 6),       // 16: next header
        op(JEQ_K, 1, 0, 17),         // 17: UDP → 19
        op(JEQ_K, 0, 9, 6),          // 18: TCP → 19, else drop
        op(LD_H_ABS, 0, 0, 40),      // 19: source port
        op(JEQ_K, 0, 2, 53),         // 20: 53 → 21, else → 23
        op(LD_B_ABS, 0, 0, PKTTYPE), // 21
        op(JEQ_K, 0, 4, outgoing),   // 22: received: accept (an answer); sent → 23
        op(LD_H_ABS, 0, 0, 42),      // 23: destination port
        op(JEQ_K, 0, 3, 53),         // 24: 53 → 25, else drop
        op(LD_B_ABS, 0, 0, PKTTYPE), // 25: to port 53:
        op(JEQ_K, 0, 1, outgoing),   // 26: sent: accept (a query), else drop
        op(RET_K, 0, 0, 0x10000),    // 27: accept
        op(RET_K, 0, 0, 0),          // 28: drop
    ]
}

/// Counters of the capture, for the self-metrics.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub unparsable: AtomicU64,
    /// Packets the kernel dropped because the reader fell behind (`PACKET_STATISTICS`).
    pub dropped: AtomicU64,
}

/// A DNS message the capture saw, by direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// This host asked `server`, from `client`.
    Query {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// `server` answered this host at `client`.
    Answer {
        client: SocketAddr,
        server: SocketAddr,
    },
}

/// What the reader thread does with each message.
pub type OnMessage = Box<dyn FnMut(Seen, &Message) + Send>;

pub struct DnsCapture {
    pub stats: Arc<CaptureStats>,
    _reader: Reader,
}

impl DnsCapture {
    /// Opens the capture socket (needs CAP_NET_RAW) and starts the reader thread, which
    /// hands every query sent and answer received to `on_message`.
    pub fn start(on_message: OnMessage) -> io::Result<DnsCapture> {
        use socket2::{Domain, Protocol, SockFilter, Socket, Type};
        let sock = Socket::new(
            Domain::PACKET,
            Type::DGRAM.cloexec(),
            Some(Protocol::from(i32::from(ETH_P_ALL.to_be()))),
        )?;
        let prog: Vec<SockFilter> = filter()
            .iter()
            .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        sock.attach_filter(&prog)?;
        // Received only when poll says so (collect::reader): never blocking.
        sock.set_nonblocking(true)?;
        // Room for bursts of large answers (clamped by the kernel to net.core.rmem_max, which
        // the package raises); what still overflows is counted from PACKET_STATISTICS.
        let _ = sock.set_recv_buffer_size(4 << 20);
        let sock = OwnedFd::from(sock);
        let stats = Arc::new(CaptureStats::default());
        let reader = {
            let stats = stats.clone();
            Reader::spawn("dns-capture", move |wake| {
                read_loop(wake, sock, on_message, &stats)
            })?
        };
        Ok(DnsCapture {
            stats,
            _reader: reader,
        })
    }
}

/// How often the kernel's drop count is read while packets come.
const DROPS_EVERY: Duration = Duration::from_secs(1);

fn read_loop(wake: &Wake, sock: OwnedFd, mut on_message: OnMessage, stats: &CaptureStats) {
    let mut buf = vec![0u8; 65_536];
    let mut last_drops = Instant::now();
    let mut drops_log = Throttle::new(PROBLEM_LOG_INTERVAL);
    // Woken by a packet, by stop, or once a second to read the drop count (drops come only
    // with packets, so an idle capture sleeps).
    loop {
        match wake.wait(sock.as_fd(), Some(DROPS_EVERY)) {
            Woken::Stopped => return,
            Woken::Readable | Woken::TimedOut => {}
        }
        // The link-layer address says which way the packet went (`sll_pkttype`).
        let received =
            nix::sys::socket::recvfrom::<nix::sys::socket::LinkAddr>(sock.as_raw_fd(), &mut buf);
        if last_drops.elapsed() >= Duration::from_secs(1) {
            last_drops = Instant::now();
            let dropped = drops(&sock);
            if dropped > 0 {
                stats.dropped.fetch_add(dropped, Ordering::Relaxed);
                if let Some(more) = drops_log.ready() {
                    tracing::warn!(
                        dropped,
                        total = stats.dropped.load(Ordering::Relaxed),
                        also_since_last_log = more,
                        "the DNS capture fell behind; the kernel dropped packets (their names are lost)"
                    );
                }
            }
        }
        let (n, from) = match received {
            Ok((n, from)) if n > 0 => (n, from),
            _ => continue, // nothing left (EAGAIN), or EINTR
        };
        let Some(seg) = dns_segment(&buf[..n]) else {
            stats.unparsable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // A query this host sends, or an answer it receives; not the other copy of a
        // loopback packet, nor a local server's traffic with others.
        let outgoing = from.is_some_and(|f| f.pkttype() == PACKET_OUTGOING);
        let query = outgoing && seg.dst.port() == 53;
        if !query && (outgoing || seg.src.port() != 53) {
            continue;
        }
        let Ok(msg) = Message::from_vec(seg.payload) else {
            stats.unparsable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let seen = if query {
            Seen::Query {
                client: seg.src,
                server: seg.dst,
            }
        } else {
            Seen::Answer {
                client: seg.dst,
                server: seg.src,
            }
        };
        on_message(seen, &msg);
    }
}

/// The packets the kernel dropped since the last call (reading the statistics resets them).
/// Hand-written getsockopt: neither nix nor socket2 offers `PACKET_STATISTICS`.
fn drops(sock: &OwnedFd) -> u64 {
    let mut st = libc::tpacket_stats {
        tp_packets: 0,
        tp_drops: 0,
    };
    let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into a tpacket_stats of the stated size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            &mut st as *mut libc::tpacket_stats as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 { u64::from(st.tp_drops) } else { 0 }
}

/// A DNS message with the addresses it travelled between.
#[derive(Debug, PartialEq, Eq)]
pub struct DnsSegment<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

/// The DNS message in an IPv4/IPv6 UDP datagram or TCP segment (network header first):
/// the headers are taken apart by etherparse (lengths checked, IPv6 extension headers
/// walked, a fragment's payload not taken for a message); a TCP segment's message is whole
/// only when its 2-byte length prefix fits in the segment.
pub fn dns_segment(pkt: &[u8]) -> Option<DnsSegment<'_>> {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let sliced = SlicedPacket::from_ip(pkt).ok()?;
    let (src, dst) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            IpAddr::from(ip.header().source_addr()),
            IpAddr::from(ip.header().destination_addr()),
        ),
        NetSlice::Ipv6(ip) => (
            IpAddr::from(ip.header().source_addr()),
            IpAddr::from(ip.header().destination_addr()),
        ),
        NetSlice::Arp(_) => return None,
    };
    let (sport, dport, payload) = match sliced.transport? {
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port(), u.payload()),
        TransportSlice::Tcp(t) => {
            let seg = t.payload();
            let len = usize::from(u16::from_be_bytes([*seg.first()?, *seg.get(1)?]));
            (t.source_port(), t.destination_port(), seg.get(2..2 + len)?)
        }
        _ => return None,
    };
    Some(DnsSegment {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_found_in_udp_and_tcp_and_garbage_is_refused() {
        // IPv4 UDP from port 53 with a 4-byte payload.
        let mut v4 = vec![
            0x45, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        v4.extend_from_slice(&[0, 53, 0x9c, 0x40, 0, 12, 0, 0]);
        v4.extend_from_slice(b"DNS!");
        let seg = dns_segment(&v4).unwrap();
        assert_eq!(seg.payload, b"DNS!");
        assert_eq!(seg.src, "127.0.0.1:53".parse().unwrap());
        assert_eq!(seg.dst, "127.0.0.1:40000".parse().unwrap());
        // IPv6 TCP with the 2-byte length prefix.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 26, 6, 64];
        v6.extend_from_slice(&[0u8; 32]);
        let mut tcp = vec![
            0, 53, 0x9c, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0,
        ];
        tcp.extend_from_slice(&[0, 4]);
        tcp.extend_from_slice(b"DNS?");
        v6.extend_from_slice(&tcp);
        let seg = dns_segment(&v6).unwrap();
        assert_eq!(seg.payload, b"DNS?");
        assert_eq!(seg.src, "[::]:53".parse().unwrap());
        // A TCP length beyond the segment: not whole, not parsed.
        let mut cut = v6.clone();
        let l = cut.len();
        cut[l - 5] = 9;
        assert_eq!(dns_segment(&cut), None);
        assert_eq!(dns_segment(&[0x45, 0]), None);
        // A fragment's payload is not a whole message.
        let mut frag = v4.clone();
        frag[6] = 0x20; // more fragments
        assert_eq!(dns_segment(&frag), None);
        // An IPv4 total length past the packet: refused, not read beyond.
        let mut long = v4.clone();
        long[3] = 200;
        assert_eq!(dns_segment(&long), None);
        assert_eq!(dns_segment(&[]), None);
    }

    /// Classic BPF, the instructions [`filter`] uses.
    fn run(pkt: &[u8], pkttype: u8) -> u32 {
        let prog = filter();
        let (mut a, mut x, mut pc) = (0u32, 0usize, 0usize);
        let byte = |i: usize| pkt.get(i).copied().map(u32::from);
        let half = |i: usize| Some(byte(i)? << 8 | byte(i + 1)?);
        loop {
            let i = &prog[pc];
            pc += 1;
            let k = i.k as usize;
            let jump = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
            match i.code {
                0x30 if i.k == PKTTYPE => a = u32::from(pkttype),
                0x30 => match byte(k) {
                    Some(v) => a = v,
                    None => return 0,
                },
                0x28 => match half(k) {
                    Some(v) => a = v,
                    None => return 0,
                },
                0x48 => match half(x + k) {
                    Some(v) => a = v,
                    None => return 0,
                },
                0xb1 => match byte(k) {
                    Some(v) => x = (v as usize & 0xf) * 4,
                    None => return 0,
                },
                0x54 => a &= i.k,
                0x15 => pc += jump(a == i.k),
                0x45 => pc += jump(a & i.k != 0),
                0x06 => return i.k,
                c => panic!("unexpected instruction {c:#x}"),
            }
        }
    }

    fn v4(proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    fn v6(proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, proto, 64];
        p.extend_from_slice(&[0; 32]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0; 16]);
        p
    }

    #[test]
    fn the_filter_passes_sent_queries_and_received_answers_only() {
        const HOST: u8 = 0;
        const OUT: u8 = PACKET_OUTGOING;
        let accept = |pkt: &[u8], t: u8| run(pkt, t) == 0x10000;
        for (udp_or_tcp, name) in [(17, "udp"), (6, "tcp")] {
            for pkt in [v4(udp_or_tcp, 53, 40000, 0), v6(udp_or_tcp, 53, 40000)] {
                assert!(accept(&pkt, HOST), "{name}: a received answer");
                assert!(!accept(&pkt, OUT), "{name}: an answer this host sends");
            }
            for pkt in [v4(udp_or_tcp, 40000, 53, 0), v6(udp_or_tcp, 40000, 53)] {
                assert!(accept(&pkt, OUT), "{name}: a query this host sends");
                assert!(!accept(&pkt, HOST), "{name}: a query to a server here");
            }
            for pkt in [v4(udp_or_tcp, 53, 53, 0), v6(udp_or_tcp, 53, 53)] {
                assert!(accept(&pkt, OUT) && accept(&pkt, HOST), "{name}: 53 to 53");
            }
            for pkt in [v4(udp_or_tcp, 443, 40000, 0), v6(udp_or_tcp, 5353, 5353)] {
                assert!(!accept(&pkt, OUT) && !accept(&pkt, HOST), "{name}: not DNS");
            }
        }
        // A later fragment has no ports; the first fragment (offset 0, more-fragments) does.
        assert!(!accept(&v4(17, 53, 40000, 0x00b9), HOST));
        assert!(accept(&v4(17, 53, 40000, 0x2000), HOST));
        // ICMP, other versions, short packets.
        assert!(!accept(&v4(1, 53, 53, 0), HOST));
        assert!(!accept(&[0x50; 40], HOST));
        assert!(!accept(&[0x45, 0], HOST));
    }
}
