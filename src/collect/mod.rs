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
pub mod reader;
pub mod sockdiag;
pub mod sources;

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

/// `SO_RCVTIMEO` on a socket: the longest a blocking receive waits (the proc connector's
/// acknowledgement).
pub(crate) fn set_recv_timeout(socket: &impl AsFd, timeout: Duration) -> io::Result<()> {
    socket2::SockRef::from(socket).set_read_timeout(Some(timeout))
}
