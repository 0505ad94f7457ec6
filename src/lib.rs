//! gov: a cgroup-v2 governor for long-lived worker processes ("gates").
//!
//! The library holds every idea in its own module; `main.rs` is a thin CLI.

pub mod adopt;
pub mod cgroup;
pub mod cli;
pub mod client;
pub mod criu;
pub mod daemon;
pub mod direct;
pub mod gate;
pub mod held;
pub mod hibernate;
pub mod keeper;
pub mod lazy;
pub mod limits;
pub mod names;
pub mod policy;
pub mod pressure;
pub mod proc;
pub mod protocol;
pub mod reaper;
pub mod record;
pub mod relief;
pub mod spawn;
pub mod target;
pub mod units;
pub mod wake;
pub mod watch;
