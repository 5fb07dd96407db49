//! Process fork/exec/exit events from the kernel's proc connector (cn_proc).
//!
//! Used only as hints: a pid that forked or exec'd may hold new sockets (read its fds first);
//! a pid that exited can be dropped from the caches at once. Losing events costs a wider /proc
//! walk, never a wrong attribution. Where the connector is unavailable depmap runs without it.
//!
//! Start-up never waits for it (issue 12). The kernel ignores subscriptions from outside the
//! initial pid and user namespaces — no acknowledgement, no events: a container (systemd-nspawn,
//! a pod without the host's pid namespace) — so those are recognised first, by the fixed inode
//! numbers of the initial namespaces. Elsewhere the crate's constructor waits for the
//! acknowledgement with a blocking receive that the kernel does not always answer promptly
//! (measured: 10 of 10 starts on an idle machine waited for some other process's event, over a
//! second), so subscribing, and the self-test that proves events arrive, run on the reader
//! thread; until then, and if they fail, the hints are simply absent.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proc_connector::{EventMask, ProcConnector, ProcEvent};

use super::queue::{NotQueued, QueueReceiver, QueueSender, bounded};
use super::reader::{Reader, Wake, Woken};

/// Most process events queued for the poll loop; beyond it they are dropped and counted
/// (a stalled loop must not grow the queue without bound: issue 12).
const QUEUE_MAX: usize = 65_536;

/// Longest wait for the filtered subscription's acknowledgement.
const ACK_WAIT: Duration = Duration::from_millis(250);

/// Longest wait for the self-test's own child to be reported.
const SELF_TEST_WAIT: Duration = Duration::from_secs(1);

/// `/proc/self/ns/pid` and `/proc/self/ns/user` of the initial namespaces: the kernel's fixed
/// `PROC_PID_INIT_INO` and `PROC_USER_INIT_INO` (include/linux/proc_ns.h).
const INIT_PID_NS: &str = "pid:[4026531836]";
const INIT_USER_NS: &str = "user:[4026531837]";

/// What happened to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcChange {
    /// Forked or exec'd: may hold new sockets or a new identity.
    Started(u32),
    /// The whole process (thread group leader) exited.
    Exited(u32),
}

/// Where the subscription stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Status {
    /// Subscribing, or proving that events arrive.
    #[default]
    Starting,
    /// Events arrive.
    Live,
    /// No events here, and why.
    Unavailable(String),
}

pub struct ProcEvents {
    pub queue: QueueReceiver<ProcChange>,
    pub errors: Arc<AtomicU64>,
    status: Arc<Shared>,
    // Stopped on drop so that the socket is closed with an unsubscribe: the kernel counts
    // listeners and, while any is counted, builds an event for every fork, exec and exit on
    // the machine. A reader still parked in the crate's subscribe is left behind.
    _reader: Reader,
}

/// The subscription's status, and a wake-up for those waiting for it to settle.
#[derive(Default)]
struct Shared {
    status: Mutex<Status>,
    changed: Condvar,
}

impl ProcEvents {
    /// Starts the reader thread, which subscribes; returns at once. Fails only where the
    /// kernel is known to ignore the subscription, or when no thread can be started.
    pub fn start() -> io::Result<ProcEvents> {
        let ns = |link: &str| {
            std::fs::read_link(link)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        if ns("/proc/self/ns/pid") != INIT_PID_NS || ns("/proc/self/ns/user") != INIT_USER_NS {
            return Err(io::Error::other(
                "not in the initial pid and user namespaces (a container?): the kernel ignores \
                 proc connector subscriptions from there",
            ));
        }
        let (tx, queue) = bounded(QUEUE_MAX);
        let status = Arc::new(Shared::default());
        let errors = Arc::new(AtomicU64::new(0));
        let subscriber = Subscriber {
            tx,
            status: status.clone(),
            errors: errors.clone(),
        };
        let reader = Reader::spawn("proc-events", move |wake| subscriber.run(wake))?;
        Ok(ProcEvents {
            queue,
            errors,
            status,
            _reader: reader,
        })
    }

    pub fn status(&self) -> Status {
        lock(&self.status.status).clone()
    }

    /// Waits (at most `limit`) until the subscription is live or has failed; its status.
    pub fn settle(&self, limit: Duration) -> Status {
        let guard = lock(&self.status.status);
        let (guard, _) = self
            .status
            .changed
            .wait_timeout_while(guard, limit, |s| *s == Status::Starting)
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reader thread's side: subscribes, proves events arrive, forwards them.
struct Subscriber {
    tx: QueueSender<ProcChange>,
    status: Arc<Shared>,
    errors: Arc<AtomicU64>,
}

impl Subscriber {
    fn set(&self, status: Status) {
        *lock(&self.status.status) = status;
        self.status.changed.notify_all();
    }

    fn run(self, wake: &Wake) {
        let conn = match subscribe() {
            Ok(c) => c,
            Err(e) => return self.set(Status::Unavailable(e.to_string())),
        };
        if let Err(e) = self.self_test(wake, &conn) {
            return self.set(Status::Unavailable(e.to_string()));
        }
        self.set(Status::Live);
        let mut buf = vec![0u8; 8192];
        while wake.readable(&conn) {
            // Non-blocking (subscribe): Ok(None) for a control message or nothing left.
            match conn.recv_timeout(&mut buf, Duration::ZERO) {
                Ok(Some(ev)) => {
                    if !self.forward(&ev) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(_) => {
                    // ENOBUFS and friends: events were lost; the fd-count walk catches up.
                    // A pause so that a broken socket cannot spin.
                    self.errors.fetch_add(1, Ordering::Relaxed);
                    if !wake.pause(Duration::from_millis(50)) {
                        return;
                    }
                }
            }
        }
    }

    /// Queues the change an event means; false when the poll loop is gone.
    fn forward(&self, ev: &ProcEvent) -> bool {
        let change = match *ev {
            ProcEvent::Fork {
                child_pid,
                child_tgid,
                ..
            } if child_pid == child_tgid => ProcChange::Started(child_tgid),
            ProcEvent::Exec { tgid, .. } => ProcChange::Started(tgid),
            ProcEvent::Exit { pid, tgid, .. } if pid == tgid => ProcChange::Exited(tgid),
            _ => return true,
        };
        match self.tx.try_send(change) {
            Err(NotQueued::Closed) => false,
            // The poll loop is stalled: the hint is lost, the fd-count walk catches up
            // (counted as an error).
            Err(NotQueued::Full) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(()) => true,
        }
    }

    /// Starts a child and waits (at most [`SELF_TEST_WAIT`]) for its exit event: where the
    /// subscription is accepted but events never come, or come with pids of another
    /// namespace, this fails.
    fn self_test(&self, wake: &Wake, conn: &ProcConnector) -> io::Result<()> {
        let mut child = std::process::Command::new("/bin/true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        let _ = child.wait();
        let deadline = Instant::now() + SELF_TEST_WAIT;
        let mut buf = vec![0u8; 8192];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match wake.wait(conn.as_fd(), Some(left)) {
                Woken::Stopped => return Err(io::Error::other("stopped")),
                Woken::TimedOut => break,
                Woken::Readable => {}
            }
            if let Ok(Some(ev)) = conn.recv_timeout(&mut buf, Duration::ZERO) {
                let mine =
                    matches!(ev, ProcEvent::Exit { pid: p, tgid, .. } if p == pid && tgid == pid);
                if !self.forward(&ev) || mine {
                    return Ok(());
                }
            }
        }
        Err(io::Error::other(
            "no events arrive here (not the initial network namespace?)",
        ))
    }
}

/// Subscribes to fork, exec and exit events. The crate's constructor subscribes to all
/// events and waits for the acknowledgement without a timeout (the reason this runs on the
/// reader thread); the filtered subscription after it waits at most [`ACK_WAIT`].
fn subscribe() -> io::Result<ProcConnector> {
    let conn = ProcConnector::new().map_err(|e| match e {
        // The kernel's connector exists in the initial network namespace only.
        proc_connector::Error::Os(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            io::Error::other(
                "not the initial network namespace: the kernel's connector is not here",
            )
        }
        e => to_io(e),
    })?;
    // SO_RCVTIMEO: the longest the subscription's blocking receive waits for its ack.
    socket2::SockRef::from(&conn).set_read_timeout(Some(ACK_WAIT))?;
    let mask = EventMask(EventMask::FORK.0 | EventMask::EXEC.0 | EventMask::EXIT.0);
    match conn.subscribe_filtered(mask) {
        Ok(()) | Err(proc_connector::Error::WouldBlock) => {}
        Err(e) => return Err(to_io(e)),
    }
    let _ = conn.set_recv_buf_size(4 << 20);
    // From here the reader receives only when poll says so (collect::reader).
    conn.set_nonblocking().map_err(to_io)?;
    Ok(conn)
}

fn to_io(e: proc_connector::Error) -> io::Error {
    io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_child_start_and_exit() {
        // The suite runs as root in the initial namespaces: the connector works there.
        let events = ProcEvents::start().expect("proc connector");
        assert_eq!(events.settle(Duration::from_secs(5)), Status::Live);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let _ = child.wait();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(c) = events.queue.recv_timeout(Duration::from_millis(100)) {
                seen.push(c);
                if c == ProcChange::Exited(pid) {
                    break;
                }
            }
        }
        assert!(seen.contains(&ProcChange::Started(pid)), "{seen:?}");
        assert!(seen.contains(&ProcChange::Exited(pid)), "{seen:?}");
    }
}
