//! What a gate's owner asks of the kernel, as a trait: cgroupfs and procfs
//! in the daemon ([`Cgroupfs`]), a fake in the owner's unit tests, which
//! then run in milliseconds and without root. Hibernation and a keeper's
//! worker start stay concrete: they need CRIU and real processes, and the
//! root tests in tests/ prove them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;

use crate::cgroup::{Cgroup, CgroupError, Events};
use crate::gate::{self, GateDir, Measured, Tags};
use crate::proc;
use crate::record::TagStore;
use crate::wake;

pub trait Kernel: Send + Sync + 'static {
    /// Where the gate at `cg` keeps its tags.
    fn tag_store(&self, cg: &Cgroup) -> Arc<dyn TagStore>;
    fn events(&self, cg: &Cgroup) -> Result<Events, CgroupError>;
    /// Limit hits so far (`limits::hits`).
    fn limit_hits(&self, cg: &Cgroup) -> BTreeMap<String, u64>;
    fn cpu_usage_usec(&self, cg: &Cgroup) -> Result<u64, CgroupError>;
    /// Freezes the tree and waits until the kernel says it is frozen (or it
    /// emptied); a freeze that does not complete is undone.
    fn freeze(&self, cg: &Cgroup) -> Result<(), CgroupError>;
    fn thaw(&self, cg: &Cgroup) -> Result<(), CgroupError>;
    /// memory.reclaim of what a frozen tree holds, where the kernel has it;
    /// the bytes freed.
    fn reclaim(&self, cg: &Cgroup) -> Option<u64>;
    /// Freezes and kills the whole tree, and waits until it is empty.
    fn kill_all(&self, cg: &Cgroup) -> Result<(), CgroupError>;
    /// Removes an emptied gate's cgroups.
    fn remove(&self, dir: &GateDir) -> Result<(), CgroupError>;
    fn measure(&self, dir: &GateDir, deadline: Instant) -> Measured;
    /// A debugger is attached to one of its processes.
    fn traced(&self, cg: &Cgroup) -> bool;
    /// stop_signal to the gate's main process, else to every member.
    fn stop_signal(&self, cg: &Cgroup, tags: &Tags, sig: Signal);
    /// The inputs its host reaches a sleeping gate by, borrowed
    /// (`wake::find`); `main` is its main process, if still the one tagged,
    /// and whether that is a keeper.
    fn inputs(&self, dir: &GateDir, main: Option<(u32, bool)>, stdin: Option<u64>) -> wake::Found;
    /// Bytes read so far, together, by those of its processes that hold
    /// the file `stdin_ino` (/proc/PID/io rchar).
    fn read_bytes(&self, dir: &GateDir, stdin_ino: u64) -> u64;
    /// Bytes its processes have written so far with write(2), together
    /// (/proc/PID/io wchar).
    fn written_bytes(&self, dir: &GateDir) -> u64;
}

/// The real kernel.
pub struct Cgroupfs;

impl Kernel for Cgroupfs {
    fn tag_store(&self, cg: &Cgroup) -> Arc<dyn TagStore> {
        faults::store(cg.clone())
    }

    fn events(&self, cg: &Cgroup) -> Result<Events, CgroupError> {
        cg.read_cgroup_events()
    }

    fn limit_hits(&self, cg: &Cgroup) -> BTreeMap<String, u64> {
        crate::limits::hits(cg)
    }

    fn cpu_usage_usec(&self, cg: &Cgroup) -> Result<u64, CgroupError> {
        cg.read_cpu_usage_usec()
    }

    fn freeze(&self, cg: &Cgroup) -> Result<(), CgroupError> {
        let frozen = cg.write_freeze(true).and_then(|()| {
            faults::at("freeze");
            cg.wait_events("frozen", gate::FREEZE_TIMEOUT, |e| e.frozen || !e.populated)
        });
        if let Err(e) = frozen {
            let _ = cg.write_freeze(false);
            return Err(e);
        }
        Ok(())
    }

    fn thaw(&self, cg: &Cgroup) -> Result<(), CgroupError> {
        cg.thaw(gate::FREEZE_TIMEOUT)
    }

    fn reclaim(&self, cg: &Cgroup) -> Option<u64> {
        if !cg.has_file("memory.reclaim") {
            return None;
        }
        let before = cg.read_memory_current().ok()??;
        // Ask for what is left, a few rounds: the kernel may reclaim less
        // than asked (and say EAGAIN), and swapped pages leave the charge in
        // batches.
        let mut last = before;
        for _ in 0..8 {
            let _ = cg.write_file("memory.reclaim", &last.to_string());
            let now = cg.read_memory_current().ok()?.unwrap_or(0);
            let done = now + (1 << 20) > last;
            last = now;
            if done {
                break;
            }
        }
        Some(before.saturating_sub(last))
    }

    fn kill_all(&self, cg: &Cgroup) -> Result<(), CgroupError> {
        cg.kill_all(gate::KILL_TIMEOUT)
    }

    fn remove(&self, dir: &GateDir) -> Result<(), CgroupError> {
        dir.remove()
    }

    fn measure(&self, dir: &GateDir, deadline: Instant) -> Measured {
        Measured::now(dir, deadline)
    }

    fn traced(&self, cg: &Cgroup) -> bool {
        cg.read_procs()
            .unwrap_or_default()
            .into_iter()
            .any(|p| proc::tracer_pid(p).is_some())
    }

    /// To the main process, if it is still the process we started (start
    /// time) and in the gate; else to every member, so they can still clean
    /// up. Each through a pidfd checked after it was opened.
    fn stop_signal(&self, cg: &Cgroup, tags: &Tags, sig: Signal) {
        let member = |p: u32| cg.read_procs().unwrap_or_default().contains(&p);
        let main = tags.main_pid.filter(|&p| {
            let mut sent = false;
            let _ = proc::signal_checked(p, sig as i32, |p| {
                sent = tags.main_start.is_some()
                    && proc::start_time(p) == tags.main_start
                    && member(p);
                sent
            });
            sent
        });
        if main.is_none() {
            for p in cg.read_procs().unwrap_or_default() {
                let _ = proc::signal_checked(p, sig as i32, member);
            }
        }
    }

    fn inputs(&self, dir: &GateDir, main: Option<(u32, bool)>, stdin: Option<u64>) -> wake::Found {
        wake::find(&dir.pids().unwrap_or_default(), main, stdin)
    }

    fn read_bytes(&self, dir: &GateDir, stdin_ino: u64) -> u64 {
        dir.pids()
            .unwrap_or_default()
            .into_iter()
            .filter(|&p| wake::holds(p, stdin_ino))
            .filter_map(|p| proc::io_bytes(p, "rchar"))
            .fold(0, u64::wrapping_add)
    }

    fn written_bytes(&self, dir: &GateDir) -> u64 {
        dir.pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| proc::io_bytes(p, "wchar"))
            .fold(0, u64::wrapping_add)
    }
}

/// A fault point given a process, for the root tests (GOV_TEST_FAULT
/// "lazy_fill=sigstop" stops a lazy restore's lazy-pages daemon as the
/// worker runs); nothing in builds without `test-faults`.
pub fn fault_at_process(point: &str, pid: u32) {
    faults::at_process(point, pid)
}

/// A fault point of an action off the runtime thread ("dumped=sleep:3000"
/// pauses between a dump and the look for input that came meanwhile).
pub fn fault_at(point: &str) {
    faults::at(point)
}

/// Faults for the root tests in tests/, set through GOV_TEST_FAULT
/// ("pin=panic,freeze=sleep:300"): a panic in an action, or a pause inside
/// one to hold a race window open. Only in builds with the `test-faults`
/// feature, which `cargo test` turns on (Cargo.toml) and a release build
/// does not: nothing of it is in the production path.
#[cfg(feature = "test-faults")]
mod faults {
    use super::*;
    use crate::gate::Tag;

    fn faults() -> &'static [(String, String)] {
        static FAULTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        FAULTS.get_or_init(|| {
            std::env::var("GOV_TEST_FAULT")
                .unwrap_or_default()
                .split(',')
                .filter_map(|f| f.split_once('='))
                .map(|(p, a)| (p.to_string(), a.to_string()))
                .collect()
        })
    }

    pub fn at(point: &str) {
        for (p, what) in faults() {
            if p != point {
                continue;
            }
            if what == "panic" {
                panic!("fault injected at {point}");
            }
            if let Some(ms) = what.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
        }
    }

    /// A fault point that hands over a process: "sigstop" stops it (a
    /// test then finds it stopped, and continues or kills it).
    pub fn at_process(point: &str, pid: u32) {
        for (p, what) in faults() {
            if p == point && what == "sigstop" {
                // SAFETY: kill(2) with a pid and a signal number.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                // Stopped once it takes the signal, which a busy process
                // does a little later: the test must find it stopped.
                let stopped = || {
                    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                        s.rsplit_once(')')
                            .is_some_and(|(_, r)| r.trim_start().starts_with('T'))
                    })
                };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                while !stopped() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// A cgroup's tags whose writes pass the fault points named after them.
    struct Store(Cgroup);

    impl TagStore for Store {
        fn write(&self, tag: Tag, value: Option<&str>) -> Result<(), CgroupError> {
            if tag == Tag::Pinned {
                at("pin");
            }
            self.0.write(tag, value)
        }
    }

    pub fn store(cg: Cgroup) -> Arc<dyn TagStore> {
        Arc::new(Store(cg))
    }
}

#[cfg(not(feature = "test-faults"))]
mod faults {
    use super::*;

    pub fn at(_point: &str) {}

    pub fn at_process(_point: &str, _pid: u32) {}

    pub fn store(cg: Cgroup) -> Arc<dyn TagStore> {
        Arc::new(cg)
    }
}

/// A kernel in memory, for the owner's unit tests: gates are paths with a
/// frozen and a populated flag and a tag map; a freeze can be held open
/// until the test lets it finish, and every call is counted.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::os::fd::OwnedFd;
    use std::path::PathBuf;
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::record::MemoryTags;

    #[derive(Default)]
    pub struct Gate {
        pub frozen: bool,
        pub populated: bool,
        pub cpu_usec: u64,
        pub tags: Arc<MemoryTags>,
    }

    #[derive(Default)]
    pub struct State {
        pub gates: HashMap<PathBuf, Gate>,
        /// How often each call was made.
        pub calls: BTreeMap<&'static str, u64>,
        /// A freeze waits while this is set (`hold_freezes`).
        pub hold: bool,
        /// A freeze is waiting on the hold now.
        pub held: bool,
        /// Calls that panic instead ("freeze", "kill_all").
        pub panics: Vec<&'static str>,
        /// What `inputs` lends: the read ends of the test's pipes.
        pub inputs: Vec<OwnedFd>,
        /// What the gate has read; a freeze held open may have it read more
        /// (`read_during_freeze`).
        pub read: u64,
        pub read_during_freeze: u64,
        /// What the gate has written (its answers).
        pub written: u64,
    }

    #[derive(Default)]
    pub struct Fake {
        pub state: Mutex<State>,
        changed: Condvar,
    }

    impl Fake {
        pub fn add(&self, cg: &Cgroup) -> Arc<MemoryTags> {
            let tags = Arc::new(MemoryTags::default());
            self.lock().gates.insert(
                cg.path().to_path_buf(),
                Gate {
                    populated: true,
                    tags: tags.clone(),
                    ..Gate::default()
                },
            );
            tags
        }

        pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        pub fn calls(&self, what: &str) -> u64 {
            self.lock().calls.get(what).copied().unwrap_or(0)
        }

        pub fn frozen(&self, cg: &Cgroup) -> bool {
            self.lock().gates[cg.path()].frozen
        }

        pub fn hold_freezes(&self, hold: bool) {
            self.lock().hold = hold;
            self.changed.notify_all();
        }

        /// Blocks until a freeze waits on the hold.
        pub fn wait_held(&self) {
            let mut s = self.lock();
            while !s.held {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        }

        fn call(&self, what: &'static str) {
            let mut s = self.lock();
            *s.calls.entry(what).or_default() += 1;
            if s.panics.contains(&what) {
                drop(s);
                panic!("fake {what} panics");
            }
        }

        fn with<T>(&self, cg: &Cgroup, f: impl FnOnce(&mut Gate) -> T) -> Result<T, CgroupError> {
            match self.lock().gates.get_mut(cg.path()) {
                Some(g) => Ok(f(g)),
                None => Err(CgroupError::Io {
                    op: "open",
                    path: cg.path().to_path_buf(),
                    error: std::io::Error::from_raw_os_error(libc::ENOENT),
                }),
            }
        }
    }

    impl Kernel for Fake {
        fn tag_store(&self, cg: &Cgroup) -> Arc<dyn TagStore> {
            match self.with(cg, |g| g.tags.clone()) {
                Ok(tags) => tags,
                Err(_) => Arc::new(MemoryTags::default()),
            }
        }

        fn events(&self, cg: &Cgroup) -> Result<Events, CgroupError> {
            self.call("events");
            self.with(cg, |g| Events {
                populated: g.populated,
                frozen: g.frozen,
            })
        }

        fn limit_hits(&self, _: &Cgroup) -> BTreeMap<String, u64> {
            BTreeMap::new()
        }

        fn cpu_usage_usec(&self, cg: &Cgroup) -> Result<u64, CgroupError> {
            self.with(cg, |g| g.cpu_usec)
        }

        fn freeze(&self, cg: &Cgroup) -> Result<(), CgroupError> {
            self.call("freeze");
            let mut s = self.lock();
            s.held = true;
            self.changed.notify_all();
            while s.hold {
                s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.held = false;
            s.read += s.read_during_freeze;
            drop(s);
            self.with(cg, |g| g.frozen = true)
        }

        fn thaw(&self, cg: &Cgroup) -> Result<(), CgroupError> {
            self.call("thaw");
            self.with(cg, |g| g.frozen = false)
        }

        /// Pushes out what the fake's measure says a gate holds.
        fn reclaim(&self, _: &Cgroup) -> Option<u64> {
            self.call("reclaim");
            Some(1 << 20)
        }

        fn kill_all(&self, cg: &Cgroup) -> Result<(), CgroupError> {
            self.call("kill_all");
            self.with(cg, |g| g.populated = false)
        }

        fn remove(&self, dir: &GateDir) -> Result<(), CgroupError> {
            self.call("remove");
            self.lock().gates.remove(dir.cgroup.path());
            Ok(())
        }

        fn measure(&self, _: &GateDir, _: Instant) -> Measured {
            Measured {
                bytes: 1 << 20,
                source: gate::MemorySource::MemoryCurrent,
                at_ms: gate::now_ms(),
            }
        }

        fn traced(&self, _: &Cgroup) -> bool {
            false
        }

        fn stop_signal(&self, _: &Cgroup, _: &Tags, _: Signal) {
            self.call("stop_signal");
        }

        fn inputs(&self, _: &GateDir, _: Option<(u32, bool)>, _: Option<u64>) -> wake::Found {
            self.call("inputs");
            let state = self.lock();
            let inputs = state.inputs.iter().map(|fd| {
                use std::os::unix::fs::MetadataExt;
                let file = std::fs::File::from(fd.try_clone().expect("dup"));
                let ino = file.metadata().map(|m| m.ino()).unwrap_or(0);
                wake::Input {
                    label: "stdin pipe".into(),
                    kind: wake::Kind::Stdin,
                    ino,
                    is_tcp_listener: false,
                    fd: file.into(),
                }
            });
            wake::Found {
                inputs: inputs.collect(),
                missed: None,
            }
        }

        fn read_bytes(&self, _: &GateDir, _: u64) -> u64 {
            self.lock().read
        }

        fn written_bytes(&self, _: &GateDir) -> u64 {
            self.lock().written
        }
    }
}
