//! Tracking: socket state across polls, process pools, windows, and the per-window sums that
//! become VMConnection and VMBoundPort records. No I/O happens here.
pub mod attribution;
pub mod pools;
pub mod ports;
pub mod response;
pub mod sockets;
pub mod udp;
pub mod window;
