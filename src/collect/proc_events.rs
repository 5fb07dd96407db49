//! Process fork/exec/exit events from the kernel's proc connector (cn_proc).
//!
//! Used only as hints: a pid that forked or exec'd may hold new sockets (read its fds first);
//! a pid that exited can be dropped from the caches at once. Losing events costs a wider /proc
//! walk, never a wrong attribution. Where the connector is unavailable (other pid namespace,
//! old kernel without the unprivileged filter) depmap runs without it.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use proc_connector::{EventMask, ProcConnector, ProcEvent};

/// Most process events queued for the poll loop; beyond it they are dropped and counted
/// (a stalled loop must not grow the queue without bound: issue 12).
const QUEUE_MAX: usize = 65_536;

/// Longest wait for the subscription's acknowledgement.
const ACK_WAIT: Duration = Duration::from_millis(250);

/// What happened to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcChange {
    /// Forked or exec'd: may hold new sockets or a new identity.
    Started(u32),
    /// The whole process (thread group leader) exited.
    Exited(u32),
}

pub struct ProcEvents {
    pub queue: Receiver<ProcChange>,
    pub errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProcEvents {
    pub fn start() -> io::Result<ProcEvents> {
        let conn = ProcConnector::new().map_err(to_io)?;
        let mask = EventMask(EventMask::FORK.0 | EventMask::EXEC.0 | EventMask::EXIT.0);
        // The crate waits for the kernel's acknowledgement with a blocking recv, and the
        // kernel does not always send one (measured: 10 of 10 starts on an idle machine waited
        // for some other process's event, over a second; issue 12). A receive timeout bounds
        // that wait; without an acknowledgement the self-test below decides.
        super::set_recv_timeout(&conn.as_raw_fd(), ACK_WAIT)?;
        match conn.subscribe_filtered(mask) {
            Ok(()) | Err(proc_connector::Error::WouldBlock) => {}
            Err(e) => return Err(to_io(e)),
        }
        let _ = conn.set_recv_buf_size(4 << 20);
        let (tx, queue) = sync_channel(QUEUE_MAX);
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = stop.clone();
            let errors = errors.clone();
            std::thread::Builder::new()
                .name("proc-events".into())
                .spawn(move || {
                    let mut buf = vec![0u8; 8192];
                    while !stop.load(Ordering::Relaxed) {
                        match conn.recv_timeout(&mut buf, Duration::from_millis(200)) {
                            Ok(Some(ev)) => {
                                let change = match ev {
                                    ProcEvent::Fork {
                                        child_pid,
                                        child_tgid,
                                        ..
                                    } if child_pid == child_tgid => {
                                        Some(ProcChange::Started(child_tgid))
                                    }
                                    ProcEvent::Exec { tgid, .. } => Some(ProcChange::Started(tgid)),
                                    ProcEvent::Exit { pid, tgid, .. } if pid == tgid => {
                                        Some(ProcChange::Exited(tgid))
                                    }
                                    _ => None,
                                };
                                match change.map(|c| tx.try_send(c)) {
                                    Some(Err(TrySendError::Disconnected(_))) => return,
                                    // The poll loop is stalled: the hint is lost, the
                                    // fd-count walk catches up (counted as an error).
                                    Some(Err(TrySendError::Full(_))) => {
                                        errors.fetch_add(1, Ordering::Relaxed);
                                    }
                                    _ => {}
                                }
                            }
                            Ok(None) => {}
                            Err(_) => {
                                // ENOBUFS and friends: events were lost; the fd-count walk
                                // catches up. Back off so a broken socket cannot spin.
                                errors.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                })?
        };
        let events = ProcEvents {
            queue,
            errors,
            stop,
            thread: Some(thread),
        };
        events.self_test()?;
        Ok(events)
    }

    /// The kernel delivers cn_proc events only to listeners in the initial network (and pid)
    /// namespace; elsewhere the subscription succeeds and nothing ever arrives. Start a child
    /// and wait (at most 1 s) for its exit event to know which case this is.
    fn self_test(&self) -> io::Result<()> {
        let mut child = std::process::Command::new("/bin/true")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id();
        let _ = child.wait();
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.queue.recv_timeout(left) {
                Ok(ProcChange::Exited(p)) if p == pid => return Ok(()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Err(io::Error::other(
            "no events arrive here (not the initial network namespace?)",
        ))
    }
}

impl Drop for ProcEvents {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn to_io(e: proc_connector::Error) -> io::Error {
    io::Error::other(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_child_start_and_exit() {
        let Ok(events) = ProcEvents::start() else {
            return; // no proc connector here: nothing to test
        };
        std::thread::sleep(Duration::from_millis(100));
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
