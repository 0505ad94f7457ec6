//! gov: a cgroup-v2 governor for long-lived worker processes ("gates").
//!
//! The library holds every idea in its own module; `main.rs` is a thin CLI.

pub mod cgroup;
pub mod names;
pub mod policy;
