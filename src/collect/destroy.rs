//! TCP destroy notifications: the final counters of every socket that closes.
//!
//! A second NETLINK_SOCK_DIAG socket joins the multicast groups `SKNLGRP_INET_TCP_DESTROY`
//! (1) and `SKNLGRP_INET6_TCP_DESTROY` (3). The kernel sends one message per freed TCP socket
//! with its final `tcp_info`, keyed by the same cookie as the dumps, so connections that open
//! and close between two polls are still counted and no byte of a closing socket is lost.
//! No capability is needed (`NL_CFG_F_NONROOT_RECV`). A reader thread parses the messages into
//! [`Final`]s and queues them for the poll loop; receive-buffer overruns (`ENOBUFS`) are
//! counted, because each one means notifications were dropped by the kernel.
//!
//! The final `bytes_received` counts the peer's FIN when it had arrived before the socket was
//! freed, and the kernel does not say whether it had. The reader thread therefore asks at once
//! (an exact sock_diag lookup, ≈4 µs) whether a TIME_WAIT minisocket with the same cookie
//! exists: in sub-state FIN_WAIT2 this side closed first and was freed when its own FIN was
//! acknowledged, before the peer's FIN (measured: 5,000 B received, not 5,001); in TIME_WAIT it
//! received the peer's FIN (often piggy-backed on that acknowledgement); with no minisocket it
//! closed through LAST_ACK, after the peer's FIN. The residual error is one byte on a
//! connection whose peer's FIN arrives in the microseconds between the free and the lookup, or
//! that was reset after data but before any FIN. The lookup carries the cookie, and a
//! minisocket copies its socket's cookie when created; cookies are assigned lazily, so the
//! minisocket of a socket no dump ever saw has another cookie and is not found (taken as "FIN
//! received": right for the usual close where the peer's FIN rides on the acknowledgement).
//! A 4-tuple-only lookup was tried and measured no better (BENCHMARKS.md, churn).

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::queue::{NotQueued, QueueReceiver, QueueSender, bounded};
use super::reader::{ReadNow, Reader, Wake, Woken};
use super::sockdiag::{DumpStats, Message, SockDiag, TcpSample, for_each_message, state};

const SKNLGRP_INET_TCP_DESTROY: u32 = 1;
const SKNLGRP_INET6_TCP_DESTROY: u32 = 3;
/// Requested receive buffer; the kernel caps it at `net.core.rmem_max` unless we may force it.
/// 8 MiB held 40,011 notifications of a mass close without loss (research §1.3); the churn
/// bench lost none of 599,998 at 1,000 connections a second (BENCHMARKS.md).
pub const RCVBUF: usize = 8 << 20;

/// How long the reader lets notifications gather after it was woken (see `read_loop`).
pub const BATCH_PAUSE: Duration = Duration::from_millis(5);
/// The same with the kernel event source: closes then wait `FINAL_SETTLE_MS` (400 ms) in the
/// poll loop for their socket's events anyway, so reading them 100 ms late changes nothing
/// and a close costs one wake-up of this thread in ten a second at most.
pub const BATCH_PAUSE_WITH_EVENTS: Duration = Duration::from_millis(100);

/// Counters shared with the poll loop.
#[derive(Debug, Default)]
pub struct DestroyCounters {
    /// Notifications received.
    pub received: AtomicU64,
    /// `ENOBUFS` errors: the kernel dropped notifications because we fell behind.
    pub overruns: AtomicU64,
    /// Messages that could not be parsed.
    pub unparsable: AtomicU64,
}

/// A closed socket's final counters.
#[derive(Debug, Clone)]
pub struct Final {
    pub sample: TcpSample,
    /// Whether `bytes_received` includes the peer's FIN (see the module comment); `None`
    /// when not looked up here (the kernel event source says it: `Sources::final_fin`).
    pub fin_received: Option<bool>,
    /// When the notification was read (its `tcp_info` times are relative to about then).
    pub at: std::time::Instant,
}

/// The running subscription: a thread and the queue it fills.
/// Most notifications queued for the poll loop (≈ 2 minutes of 1,000 closes a second, a few
/// tens of MB at most): a stalled loop must not grow the queue without bound (issue 12);
/// beyond it notifications are dropped and counted as overruns, like the kernel's ENOBUFS.
const QUEUE_MAX: usize = 131_072;

pub struct DestroyListener {
    pub queue: QueueReceiver<Final>,
    pub counters: Arc<DestroyCounters>,
    flushes: Arc<ReadNow>,
    /// The receive buffer the kernel granted (bytes of its accounting; asked: [`RCVBUF`]).
    pub rcvbuf: usize,
    _reader: Reader,
}

impl DestroyListener {
    /// Subscribes (IPv6 group too when `ipv6`) and starts the reader thread, which looks
    /// up whether each closed socket received its peer's FIN when `fin_lookups` (an exact
    /// lookup per close, ≈ 10 µs: most of this thread's cost under churn) and reads a batch
    /// of notifications `batch` after the first of them arrived.
    pub fn start(ipv6: bool, fin_lookups: bool, batch: Duration) -> io::Result<DestroyListener> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.add_membership(SKNLGRP_INET_TCP_DESTROY)?;
        if ipv6 {
            socket.add_membership(SKNLGRP_INET6_TCP_DESTROY)?;
        }
        set_rcvbuf(&socket, RCVBUF);
        let rcvbuf = socket.get_rx_buf_sz().unwrap_or(0);
        // The reader receives only after poll says so; never blocking, it cannot miss a stop.
        socket.set_non_blocking(true)?;
        let lookups = Some(SockDiag::open()?);
        let (tx, queue) = bounded(QUEUE_MAX);
        let counters = Arc::new(DestroyCounters::default());
        let flushes = Arc::new(ReadNow::new()?);
        let reader = {
            let counters = counters.clone();
            let flushes = flushes.clone();
            Reader::spawn("destroy-events", move |wake| {
                let lookups = lookups.filter(|_| fin_lookups);
                let out = Out {
                    tx,
                    counters: &counters,
                    flushes: &flushes,
                };
                read_loop(wake, socket, lookups, batch, out)
            })?
        };
        Ok(DestroyListener {
            queue,
            counters,
            flushes,
            rcvbuf,
            _reader: reader,
        })
    }
}

impl DestroyListener {
    /// Has the reader read everything the kernel queued before this call, not after its batch
    /// pause (at stop: the closes of the last 100 ms must make the last window), waiting at
    /// most `limit`; whether it did.
    pub fn flush(&self, limit: Duration) -> bool {
        self.flushes.request(limit)
    }
}

/// Where the reader's notifications go.
struct Out<'a> {
    tx: QueueSender<Final>,
    counters: &'a DestroyCounters,
    flushes: &'a ReadNow,
}

fn read_loop(
    wake: &Wake,
    socket: Socket,
    mut lookups: Option<SockDiag>,
    batch: Duration,
    out: Out<'_>,
) {
    let Out {
        tx,
        counters,
        flushes,
    } = out;
    let mut buf = vec![0u8; 64 * 1024];
    let mut samples = Vec::new();
    // Once woken the reader pauses `batch` before it reads, so that a burst of closes is read
    // a batch at a time: woken per notification, the thread cost 8.5 µs of CPU per close at
    // 2,000 closes a second (measured, 1.7 % of a core); the socket's buffer holds far more
    // than a pause's worth (8 MiB: ≈ 40,000 notifications).
    // A flush (the kick eventfd) cuts the pause short.
    loop {
        if wake.either(socket.as_fd(), flushes.kick()) == Woken::Stopped
            || wake.wait(flushes.kick(), Some(batch)) == Woken::Stopped
        {
            return;
        }
        let requested = flushes.begin();
        // Everything queued, then poll again.
        loop {
            let n = match socket.recv(&mut &mut buf[..], 0) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        counters.overruns.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) => break,
                    _ => {
                        tracing::error!(error = %e, "destroy notifications stopped");
                        return;
                    }
                },
            };
            let mut stats = DumpStats::default();
            for_each_message(&buf[..n], &mut stats, |m| {
                if let Message::Sample(s) = m {
                    samples.push(s);
                }
            });
            let at = std::time::Instant::now();
            for sample in samples.drain(..) {
                counters.received.fetch_add(1, Ordering::Relaxed);
                let fin_received = lookups.as_mut().map(|l| fin_received(l, &sample));
                let queued = tx.try_send(Final {
                    sample,
                    fin_received,
                    at,
                });
                if let Err(NotQueued::Full) = queued {
                    // The poll loop is stalled this long: drop as the kernel would.
                    counters.overruns.fetch_add(1, Ordering::Relaxed);
                }
            }
            counters
                .unparsable
                .fetch_add(stats.unparsable, Ordering::Relaxed);
        }
        flushes.served(requested);
    }
}

/// Whether a closed socket's final `bytes_received` includes the peer's FIN (module comment).
/// Also used for dumped sockets whose TCP state is already CLOSE.
pub fn fin_received(lookups: &mut SockDiag, s: &TcpSample) -> bool {
    if s.is_listener() || s.counters.is_none_or(|c| c.bytes_received == 0) {
        return false;
    }
    match lookups.lookup(s) {
        Ok(Some(tw)) => tw.state != state::FIN_WAIT2,
        _ => true,
    }
}

/// Asks for a large receive buffer, forcing past `rmem_max` where we hold CAP_NET_ADMIN.
fn set_rcvbuf(socket: &Socket, bytes: usize) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
    if setsockopt(socket, RcvBufForce, &bytes).is_err() {
        let _ = socket.set_rx_buf_sz(bytes);
    }
}
