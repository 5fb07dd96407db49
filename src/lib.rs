//! depmap: a Linux host agent that maps network dependencies into the four tables of the
//! VM Insights Map (VMComputer, VMProcess, VMBoundPort, VMConnection).
//!
//! The data's journey: `collect` (kernel and /proc readers) → `track` (socket state across
//! polls, windows, sums) → `records` (the four tables) → `sink` (delivery). `agent` runs the
//! poll loop that ties them together, at the times `schedule` picks; `cli` is the command line.
pub mod agent;
pub mod cli;
pub mod collect;
pub mod config;
pub mod inventory;
pub mod metrics;
pub mod records;
pub mod report;
pub mod schedule;
pub mod sink;
pub mod track;
