//! depmap: a Linux host agent that maps network dependencies into the four tables of the
//! VM Insights Map (VMComputer, VMProcess, VMBoundPort, VMConnection).
//!
//! The data's journey: `collect` (kernel and /proc readers) → `track` (socket state across
//! polls, windows, sums) → `records` (the four tables) → `sink` (delivery). `agent` ties them
//! together in one poll, at the times `schedule` picks; `daemon` is `depmap run`'s loop
//! (signals, reload, `service` notifications); `cli` is the command line.
pub mod agent;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod enrich;
pub mod http_client;
pub mod identity;
pub mod inventory;
pub mod logging;
pub mod map;
pub mod metrics;
pub mod records;
pub mod report;
pub mod schedule;
pub mod service;
pub mod sink;
pub mod track;
