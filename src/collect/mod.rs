//! Collection: readers of the kernel and /proc. Nothing here decides what a reading means
//! for the records; the tracking layer does.
pub mod destroy;
pub mod dns_capture;
pub mod host;
pub mod imds;
pub mod ownership;
pub mod packages;
pub mod proc_events;
pub mod procinfo;
pub mod queue;
pub mod sockdiag;
pub mod sources;

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `SO_RCVTIMEO` on a socket: the reader threads (destroy notifications, DNS capture) wake this
/// often to see whether they should stop.
pub(crate) fn set_recv_timeout(socket: &impl AsRawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid fd and a pointer to a timeval of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
