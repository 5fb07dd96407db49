//! Collection: readers of the kernel and /proc. Nothing here decides what a reading means
//! for the records; the tracking layer does.
pub mod containers;
pub mod destroy;
pub mod dns_capture;
pub mod ebpf;
pub mod host;
pub mod imds;
pub mod namespaces;
pub mod ownership;
pub mod packages;
pub mod proc_events;
pub mod procinfo;
pub mod queue;
pub mod reader;
pub mod sockdiag;
pub mod sources;
pub mod udp_flows;
