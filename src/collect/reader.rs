//! The reader threads of the kernel sources (destroy notifications, process events, DNS
//! capture): one type, so that each starts, stops and is waited for the same way.
//!
//! A reader sleeps in `poll(2)` on its socket and on an eventfd that [`Reader::stop`] writes:
//! it wakes for data or for stop, never on a timer to look at a flag. Stopping waits for the
//! thread at most a bound; a body still inside a blocking call then (the proc connector
//! crate's subscribe, which waits for an acknowledgement the kernel may never send) is left
//! behind holding only its socket and queue, and ends when that call does.
//!
//! The event ring is waited for differently ([`Wake::edges`]): `poll(2)` says "readable"
//! whenever data waits, and the ring's data is meant to wait for a timer; only the programs'
//! explicit wake-ups (`BPF_RB_FORCE_WAKEUP`) should end the sleep. Edge-triggered epoll reports
//! exactly those (measured at 1,000 connections a second: level-triggered poll woke the reader
//! ≈ 190 times a second, once per pause, because events were always waiting).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// How long a drop waits for the reader's thread to end.
pub const STOP_WAIT: Duration = Duration::from_millis(400);

/// What woke a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The socket has data (or an error to read).
    Readable,
    TimedOut,
    /// The reader is asked to stop (or cannot wait any more: the error is logged).
    Stopped,
}

/// A reader's way to wait: for its socket, or for a pause, either cut short by stop.
pub struct Wake {
    stop: Arc<EventFd>,
}

impl Wake {
    /// Waits until `fd` is readable, `timeout` passes (`None`: no timeout), or stop.
    pub fn wait(&self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Woken {
        self.poll(Some(fd), timeout)
    }

    /// Waits for `fd`; false when the reader should end.
    pub fn readable(&self, fd: &impl AsFd) -> bool {
        self.wait(fd.as_fd(), None) == Woken::Readable
    }

    /// Sleeps `pause` (after an error, so that a broken socket cannot spin); false when the
    /// reader should end.
    pub fn pause(&self, pause: Duration) -> bool {
        self.poll(None, Some(pause)) != Woken::Stopped
    }

    /// A wait for the wake-ups of `fd` rather than for its data (module comment).
    pub fn edges(&self, fd: BorrowedFd<'_>) -> io::Result<Edges> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            self.stop.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, STOP),
        )?;
        epoll.add(
            fd,
            EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, DATA),
        )?;
        Ok(Edges { epoll })
    }

    /// Waits until `edges`' file is woken (not merely readable), `timeout` passes, or stop.
    pub fn wait_edge(&self, edges: &Edges, timeout: Duration) -> Woken {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut events = [EpollEvent::empty(); 2];
        loop {
            let waited = edges.epoll.wait(&mut events, timeout);
            let stop = |n: usize| events[..n].iter().any(|e| e.data() == STOP);
            if let Some(woken) = outcome(waited, stop) {
                return woken;
            }
        }
    }

    /// Waits until `a` or `b` is readable (or stop); no timeout.
    pub fn either(&self, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> Woken {
        self.poll_fds(&[a, b], None)
    }

    fn poll(&self, fd: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> Woken {
        match fd {
            Some(fd) => self.poll_fds(&[fd], timeout),
            None => self.poll_fds(&[], timeout),
        }
    }

    fn poll_fds(&self, watched: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Woken {
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
        };
        loop {
            let mut fds: Vec<PollFd> = std::iter::once(self.stop.as_fd())
                .chain(watched.iter().copied())
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            let polled = poll(&mut fds, timeout).map(|n| n as usize);
            if let Some(woken) = outcome(polled, |_| fds[0].any().unwrap_or(false)) {
                return woken;
            }
        }
    }
}

/// What a wait that returned `waited` (ready count) means: `None` after a signal (wait again:
/// a timeout restarts, the waits are short or none); `stopped(n)` says whether stop is among
/// the `n` ready. An error that is not a signal ends the reader, logged.
fn outcome(waited: nix::Result<usize>, stopped: impl FnOnce(usize) -> bool) -> Option<Woken> {
    match waited {
        Ok(0) => Some(Woken::TimedOut),
        Ok(n) if stopped(n) => Some(Woken::Stopped),
        Ok(_) => Some(Woken::Readable),
        Err(Errno::EINTR) => None,
        Err(e) => {
            tracing::error!(error = %e, "a kernel reader cannot wait for its socket; it stops");
            Some(Woken::Stopped)
        }
    }
}

/// Another thread's request that a reader read what is queued now, not after its batch pause
/// or drain timer, and the wait for that read: a kick eventfd the reader also waits on, and the
/// last request a finished read served (the destroy reader at stop; the event reader before a
/// full dump and at stop).
pub struct ReadNow {
    /// (requested, served)
    state: Mutex<(u64, u64)>,
    served: Condvar,
    kick: EventFd,
}

impl ReadNow {
    pub fn new() -> io::Result<ReadNow> {
        Ok(ReadNow {
            state: Mutex::default(),
            served: Condvar::new(),
            kick: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        })
    }

    /// What the reader waits on besides its own file.
    pub fn kick(&self) -> BorrowedFd<'_> {
        self.kick.as_fd()
    }

    /// Asks for a read and waits at most `limit` until one that began after this call has
    /// ended; whether it did.
    pub fn request(&self, limit: Duration) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0 += 1;
        let want = state.0;
        let _ = self.kick.write(1);
        let (state, _) = self
            .served
            .wait_timeout_while(state, limit, |s| s.1 < want)
            .unwrap_or_else(|e| e.into_inner());
        state.1 >= want
    }

    /// The reader, before it reads: the requests this read will serve.
    pub fn begin(&self) -> u64 {
        let _ = self.kick.read();
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The reader, after it read: the requests up to `begun` (from [`ReadNow::begin`]) are served.
    pub fn served(&self, begun: u64) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = begun;
        self.served.notify_all();
    }
}

/// An epoll set of a reader's stop and of one file, edge-triggered ([`Wake::edges`]).
pub struct Edges {
    epoll: Epoll,
}

impl Edges {
    /// Also wakes for `fd`'s data (level-triggered: until it is read), e.g. an eventfd by
    /// which another thread asks for a drain now.
    pub fn also_readable(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.epoll
            .add(fd, EpollEvent::new(EpollFlags::EPOLLIN, DATA))
            .map_err(io::Error::from)
    }
}

/// The epoll data of the stop eventfd and of the watched file.
const STOP: u64 = 0;
const DATA: u64 = 1;

/// A running reader thread.
pub struct Reader {
    stop: Arc<EventFd>,
    /// Disconnected when the body has returned (and dropped what it held).
    finished: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Starts `body` on a thread named `name`.
    pub fn spawn(name: &str, body: impl FnOnce(&Wake) + Send + 'static) -> io::Result<Reader> {
        let stop = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
        )?);
        let (done, finished) = mpsc::sync_channel::<()>(0);
        let wake = Wake { stop: stop.clone() };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Dropped last: after the body and everything it owned.
                let _done = done;
                body(&wake);
            })?;
        Ok(Reader {
            stop,
            finished,
            thread: Some(thread),
        })
    }

    /// Asks the body to end and waits for it at most `limit`; whether it ended.
    pub fn stop(&mut self, limit: Duration) -> bool {
        let _ = self.stop.write(1);
        let Some(thread) = self.thread.take() else {
            return true;
        };
        match self.finished.recv_timeout(limit) {
            Err(RecvTimeoutError::Disconnected) => {
                let _ = thread.join();
                true
            }
            // Left behind (see the module comment).
            Ok(()) | Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop(STOP_WAIT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_reader_wakes_for_data_and_for_stop_not_for_time() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let (woke, wakes) = mpsc::channel::<()>();
        let mut reader = Reader::spawn("test-reader", move |wake| {
            let mut buf = [0u8; 16];
            while wake.readable(&rx) {
                let _ = io::Read::read(&mut &rx, &mut buf);
                let _ = woke.send(());
            }
        })
        .unwrap();
        tx.write_all(b"x").unwrap();
        assert_eq!(wakes.recv_timeout(Duration::from_secs(5)), Ok(()));
        // Idle: no wake-up without data (a 200 ms timer would have woken it by now).
        assert_eq!(
            wakes.recv_timeout(Duration::from_millis(500)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(reader.stop(Duration::from_secs(5)), "ends at once on stop");
        assert_eq!(wakes.try_recv(), Err(mpsc::TryRecvError::Disconnected));
    }

    #[test]
    fn a_body_stuck_in_a_call_is_left_behind_after_the_bound() {
        let (release, stuck) = mpsc::channel::<()>();
        let mut reader = Reader::spawn("test-stuck", move |_| {
            let _ = stuck.recv();
        })
        .unwrap();
        assert!(!reader.stop(Duration::from_millis(50)));
        drop(release);
    }

    #[test]
    fn an_edge_wait_wakes_for_new_data_not_for_data_left_unread() {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let (woke, wakes) = mpsc::channel::<Woken>();
        let mut reader = Reader::spawn("test-edges", move |wake| {
            let edges = wake.edges(rx.as_fd()).unwrap();
            loop {
                // Never reads: the data stays, as events stay in the ring until the timer.
                let w = wake.wait_edge(&edges, Duration::from_millis(300));
                let _ = woke.send(w);
                if w == Woken::Stopped {
                    return;
                }
            }
        })
        .unwrap();
        tx.write_all(b"x").unwrap();
        assert_eq!(
            wakes.recv_timeout(Duration::from_secs(5)),
            Ok(Woken::Readable)
        );
        // The byte is still there: a level-triggered wait would return at once, this one
        // times out.
        assert_eq!(
            wakes.recv_timeout(Duration::from_secs(5)),
            Ok(Woken::TimedOut)
        );
        tx.write_all(b"y").unwrap();
        assert_eq!(
            wakes.recv_timeout(Duration::from_secs(5)),
            Ok(Woken::Readable)
        );
        assert!(reader.stop(Duration::from_secs(5)));
    }

    #[test]
    fn a_read_asked_for_is_waited_for_until_one_begun_after_it_ends() {
        let now = Arc::new(ReadNow::new().unwrap());
        assert!(!now.request(Duration::from_millis(20)), "nobody reads yet");
        let r = now.clone();
        let mut reader = Reader::spawn("test-read-now", move |wake| {
            // Sleeps an hour unless asked.
            while wake.wait(r.kick(), Some(Duration::from_secs(3600))) == Woken::Readable {
                let begun = r.begin();
                r.served(begun);
            }
        })
        .unwrap();
        assert!(now.request(Duration::from_secs(5)));
        assert!(now.request(Duration::from_secs(5)));
        assert!(reader.stop(Duration::from_secs(5)));
    }

    #[test]
    fn a_pause_is_cut_short_by_stop() {
        let (paused, rx) = mpsc::channel::<bool>();
        let mut reader = Reader::spawn("test-pause", move |wake| {
            let _ = paused.send(wake.pause(Duration::from_secs(3600)));
        })
        .unwrap();
        assert!(reader.stop(Duration::from_secs(5)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(false));
    }
}
