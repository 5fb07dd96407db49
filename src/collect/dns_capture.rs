//! Passive capture of the DNS answers this host receives: an `AF_PACKET` socket (`SOCK_DGRAM`:
//! packets start at the network header on every link type) with a classic BPF filter that
//! passes only IPv4/IPv6 UDP or TCP segments from port 53, so the kernel drops everything
//! else before it is copied. A reader thread parses each answer with hickory-proto into the
//! shared [`DnsCache`]. Only received packets are read (`PACKET_HOST` and the like): on
//! loopback every packet is seen twice, and a DNS server on this host answering others is
//! not this host's resolution. DNS over TCP is read when one segment holds the whole message.
//! Needs CAP_NET_RAW; without it `start` fails and depmap reports the columns as missing.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hickory_proto::op::Message;

use crate::enrich::dns::DnsCache;

const ETH_P_ALL: u16 = 0x0003;
const PACKET_OUTGOING: u8 = 4;

/// IPv4 or IPv6, UDP or TCP, source port 53 (see the module comment); jumps counted from the
/// next instruction. Accept returns up to 64 KiB; drop returns 0.
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
    vec![
        op(LD_B_ABS, 0, 0, 0),     // 0: A = version nibble
        op(AND_K, 0, 0, 0xf0),     // 1
        op(JEQ_K, 0, 8, 0x40),     // 2: IPv4 → 3, else → 11
        op(LD_B_ABS, 0, 0, 9),     // 3: protocol
        op(JEQ_K, 1, 0, 17),       // 4: UDP → 6
        op(JEQ_K, 0, 12, 6),       // 5: TCP → 6, else drop
        op(LD_H_ABS, 0, 0, 6),     // 6: flags + fragment offset
        op(JSET_K, 10, 0, 0x1fff), // 7: a later fragment: drop
        op(LDX_B_MSH, 0, 0, 0),    // 8: X = header length
        op(LD_H_IND, 0, 0, 0),     // 9: source port
        op(JEQ_K, 6, 7, 53),       // 10: 53 → accept, else drop
        op(JEQ_K, 0, 6, 0x60),     // 11: IPv6 → 12, else drop
        op(LD_B_ABS, 0, 0, 6),     // 12: next header
        op(JEQ_K, 1, 0, 17),       // 13: UDP → 15
        op(JEQ_K, 0, 3, 6),        // 14: TCP → 15, else drop
        op(LD_H_ABS, 0, 0, 40),    // 15: source port
        op(JEQ_K, 0, 1, 53),       // 16: 53 → accept, else drop
        op(RET_K, 0, 0, 0x10000),  // 17: accept
        op(RET_K, 0, 0, 0),        // 18: drop
    ]
}

/// Counters of the capture, for the self-metrics.
#[derive(Debug, Default)]
pub struct CaptureStats {
    pub packets: AtomicU64,
    pub unparsable: AtomicU64,
}

pub struct DnsCapture {
    pub cache: Arc<Mutex<DnsCache>>,
    pub stats: Arc<CaptureStats>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsCapture {
    /// Opens the capture socket (needs CAP_NET_RAW) and starts the reader thread.
    pub fn start(max_entries: usize) -> io::Result<DnsCapture> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor we own.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut prog = filter();
        let fprog = libc::sock_fprog {
            len: prog.len() as u16,
            filter: prog.as_mut_ptr(),
        };
        // SAFETY: setsockopt with a valid fd and a sock_fprog pointing at `prog`, alive here.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                &fprog as *const libc::sock_fprog as *const libc::c_void,
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        super::set_recv_timeout(&sock, Duration::from_millis(200))?;
        let cache = Arc::new(Mutex::new(DnsCache::new(max_entries)));
        let stats = Arc::new(CaptureStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (cache, stats, stop) = (cache.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("dns-capture".into())
                .spawn(move || read_loop(sock, &cache, &stats, &stop))?
        };
        Ok(DnsCapture {
            cache,
            stats,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DnsCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(sock: OwnedFd, cache: &Mutex<DnsCache>, stats: &CaptureStats, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: zeroed sockaddr_ll is a valid value to be overwritten by recvfrom.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: recvfrom into our buffer and address of the stated sizes.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            )
        };
        if n <= 0 {
            continue; // timeout (to check `stop`) or EINTR
        }
        if from.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        stats.packets.fetch_add(1, Ordering::Relaxed);
        let Some(payload) = dns_payload(&buf[..n as usize]) else {
            stats.unparsable.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        match Message::from_vec(payload) {
            Ok(msg) => cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .learn(&msg, Instant::now()),
            Err(_) => {
                stats.unparsable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The DNS message in an IPv4/IPv6 UDP datagram or TCP segment (network header first).
pub fn dns_payload(pkt: &[u8]) -> Option<&[u8]> {
    let first = *pkt.first()?;
    let (proto, l4) = match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            (*pkt.get(9)?, pkt.get(ihl..total.min(pkt.len()))?)
        }
        6 => {
            let plen = usize::from(u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]));
            (*pkt.get(6)?, pkt.get(40..(40 + plen).min(pkt.len()))?)
        }
        _ => return None,
    };
    match proto {
        17 => l4.get(8..),
        6 => {
            let off = usize::from(*l4.get(12)? >> 4) * 4;
            let seg = l4.get(off..)?;
            let len = usize::from(u16::from_be_bytes([*seg.first()?, *seg.get(1)?]));
            seg.get(2..2 + len)
        }
        _ => None,
    }
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
        assert_eq!(dns_payload(&v4), Some(&b"DNS!"[..]));
        // IPv6 TCP with the 2-byte length prefix.
        let mut v6 = vec![0x60, 0, 0, 0, 0, 26, 6, 64];
        v6.extend_from_slice(&[0u8; 32]);
        let mut tcp = vec![
            0, 53, 0x9c, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0, 0, 0, 0, 0, 0, 0,
        ];
        tcp.extend_from_slice(&[0, 4]);
        tcp.extend_from_slice(b"DNS?");
        v6.extend_from_slice(&tcp);
        assert_eq!(dns_payload(&v6), Some(&b"DNS?"[..]));
        // A TCP length beyond the segment: not whole, not parsed.
        let mut cut = v6.clone();
        let l = cut.len();
        cut[l - 5] = 9;
        assert_eq!(dns_payload(&cut), None);
        assert_eq!(dns_payload(&[0x45, 0]), None);
        assert_eq!(dns_payload(&[]), None);
        assert_eq!(filter().len(), 19);
    }
}
