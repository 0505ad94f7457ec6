//! What a gate is on cgroupfs: a leaf cgroup `<root>/<project-key>/<gate-id>`
//! whose tags (trusted.gov.* xattrs) say whose it is. cgroupfs is the
//! durable truth: everything here can be rebuilt by walking the tree.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cgroup::{self, Cgroup, CgroupError};
use crate::limits::{self, Wanted};
use crate::names;
pub use crate::protocol::MemorySource;
use crate::protocol::{GateInfo, Next, Spared};
use crate::reaper::Phase;
pub use crate::record::{Tag, Tags};

/// How long a whole-tree kill may take before we call it stuck. 1,000
/// processes die in ~150 ms here; this leaves room for a loaded machine.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(10);
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// Environment override of gov's cgroup root, for tests and unusual hosts.
pub const ROOT_ENV: &str = "GOV_CGROUP_ROOT";

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The mode of gov's root and project directories: others may pass
/// through (a user's keeper reads its own gate's `w/cgroup.events`), but
/// not list them: which projects and gates exist, and whose, is nobody
/// else's business. Gate directories keep 0755: a gate's path is in the
/// world-readable /proc/PID/cgroup of its processes anyway, and its files
/// (pids, CPU and memory use) say no more than /proc/PID does; its tags are
/// trusted.* xattrs, which only CAP_SYS_ADMIN reads.
pub const PASS_THROUGH: u32 = 0o711;

/// gov's own subtree of the cgroup2 hierarchy.
#[derive(Debug, Clone)]
pub struct Tree {
    pub mount: PathBuf,
    pub root: Cgroup,
}

impl Tree {
    /// Resolves gov's root: `GOV_CGROUP_ROOT` if set, else `setting` (a
    /// path relative to the cgroup2 mount, or an absolute one inside it).
    pub fn resolve(setting: &str) -> Result<Tree, CgroupError> {
        let mount = cgroup::cgroup2_mount()?;
        let setting = std::env::var(ROOT_ENV).unwrap_or_else(|_| setting.to_string());
        Tree::at(mount, &setting)
    }

    pub fn at(mount: PathBuf, setting: &str) -> Result<Tree, CgroupError> {
        let root = if Path::new(setting).is_absolute() {
            PathBuf::from(setting)
        } else {
            mount.join(setting)
        };
        let inside = root.starts_with(&mount)
            && root != mount
            && !root
                .components()
                .any(|c| c == std::path::Component::ParentDir);
        if !inside {
            return Err(CgroupError::Io {
                op: "use as gov's cgroup root",
                path: root,
                error: std::io::Error::other(format!(
                    "must be a directory below the cgroup2 mount {}",
                    mount.display()
                )),
            });
        }
        Ok(Tree {
            mount,
            root: Cgroup::new(root),
        })
    }

    /// Creates gov's root if missing; others may pass through it, not list it.
    pub fn ensure(&self) -> Result<(), CgroupError> {
        self.root.create_if_missing_with_mode(PASS_THROUGH)
    }

    /// Makes the root and every project directory pass-through only
    /// ([`PASS_THROUGH`]), also those an earlier gov made listable.
    pub fn close_listings(&self) -> Result<(), CgroupError> {
        self.root.set_mode(PASS_THROUGH)?;
        for project in self.root.children()? {
            if names::is_project_key(&project) {
                // A project removed under us (its last gate reaped) is normal.
                let _ = self.root.child(&project).set_mode(PASS_THROUGH);
            }
        }
        Ok(())
    }

    /// Every gate under the root, found by walking `<root>/<project>/<gate>`.
    /// Directories that are not ours by name are left alone.
    pub fn gates(&self) -> Result<Vec<GateDir>, CgroupError> {
        let mut out = Vec::new();
        let projects = match self.root.children() {
            Ok(p) => p,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        };
        for project_key in projects.into_iter().filter(|p| names::is_project_key(p)) {
            let project = self.root.child(&project_key);
            // A project removed under us (its last gate reaped) is normal.
            let Ok(ids) = project.children() else {
                continue;
            };
            for id in ids.into_iter().filter(|g| names::check_gate_id(g).is_ok()) {
                out.push(GateDir {
                    cgroup: project.child(&id),
                    id,
                    project_key: project_key.clone(),
                });
            }
        }
        Ok(out)
    }

    /// The gate with this id, if it exists. The id is checked before it
    /// reaches a path.
    pub fn find(&self, id: &str) -> Result<Option<GateDir>, CgroupError> {
        if names::check_gate_id(id).is_err() {
            return Ok(None);
        }
        Ok(self.gates()?.into_iter().find(|g| g.id == id))
    }

    /// What part of gov's tree cgroup `cg` lies in, for a refusal: "gate G"
    /// (its worker cgroup too), else "gov's own cgroup" (the daemon's leaf,
    /// a project directory). None outside the tree.
    pub fn part_holding(&self, cg: &Path) -> Option<String> {
        let rel = cg.strip_prefix(self.root.path()).ok()?;
        Some(match rel.iter().nth(1).and_then(|c| c.to_str()) {
            Some(id) if names::check_gate_id(id).is_ok() => format!("gate {id}"),
            _ => "gov's own cgroup".to_string(),
        })
    }

    /// The project cgroup of user `uid`'s gates of `project`.
    pub fn project(&self, uid: u32, project: &str) -> Cgroup {
        self.root.child(&names::project_key(uid, project))
    }

    /// Creates a new, empty, tagged gate cgroup. Tags are written before any
    /// process enters, so a gate is never seen without its owner.
    pub fn create_gate(&self, tags: &Tags) -> Result<GateDir, CgroupError> {
        let project_key = names::project_key(tags.owner_uid, &tags.project);
        let id = names::new_gate_id();
        // The project directory may be removed by a reap of its last gate
        // between our two mkdirs; try again in that case.
        let mut attempt = 0;
        let cgroup = loop {
            self.ensure()?;
            let project = self.root.child(&project_key);
            if !project.exists() {
                project.create_if_missing_with_mode(PASS_THROUGH)?;
                // Gates get the controllers gov's root hands down, so their
                // limits and memory.current work (pure cgroup2 only).
                let enabled = self.root.read_subtree_control().unwrap_or_default();
                if !enabled.is_empty() {
                    let names: Vec<&str> = enabled.iter().map(String::as_str).collect();
                    let _ = project.write_subtree_control(&names);
                }
            }
            let gate = project.child(&id);
            match gate.create() {
                Ok(()) => break gate,
                Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) && attempt < 3 => {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let dir = GateDir {
            id,
            project_key,
            cgroup,
        };
        if let Err(e) = tags.write(&dir.cgroup) {
            let _ = dir.cgroup.remove();
            return Err(e);
        }
        Ok(dir)
    }
}

/// A gate's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateDir {
    pub id: String,
    pub project_key: String,
    pub cgroup: Cgroup,
}

impl GateDir {
    /// Kills the whole tree (frozen first so nothing forks or reacts while
    /// the kill lands), waits for it to empty, and removes the cgroup and,
    /// if it was the last gate, the project directory.
    pub fn kill_and_remove(&self) -> Result<(), CgroupError> {
        self.cgroup.kill_all(KILL_TIMEOUT)?;
        self.remove()
    }

    /// The gate's processes: its own, and a keeper gate's worker's.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        let mut pids = self.cgroup.read_procs()?;
        let w = self.cgroup.child(crate::keeper::WORKER_CGROUP);
        if w.exists() {
            pids.extend(w.read_procs().unwrap_or_default());
        }
        Ok(pids)
    }

    /// Removes the empty gate cgroup (a keeper gate's worker cgroup first),
    /// and its project directory if that was the last gate (EBUSY
    /// otherwise: another gate lives there).
    pub fn remove(&self) -> Result<(), CgroupError> {
        match self.cgroup.child(crate::keeper::WORKER_CGROUP).remove() {
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => {}
            r => r?,
        }
        match self.cgroup.remove() {
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => {}
            r => r?,
        }
        if let Some(project) = self.cgroup.path().parent() {
            let _ = std::fs::remove_dir(project);
        }
        Ok(())
    }
}

/// How long one gate's PSS may take to read. smaps_rollup walks a
/// process's page tables: ~9 ms for a process mapping 512 MB here, so a gate
/// of a thousand such processes would take seconds.
pub const MEMORY_READ_BOUND: Duration = Duration::from_millis(250);

static MEMORY_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// memory.current and smaps_rollup reads made so far by this process (the
/// daemon's metrics show it, so a test can tell where figures came from).
pub fn memory_reads() -> u64 {
    MEMORY_READS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Memory of a gate in bytes, and where the number came from: the one
/// figure `ps`, `show`, the memory budget, metrics and the `freed` of
/// events all use, so what a gate freed is what it was shown holding.
/// Bounded by [`MEMORY_READ_BOUND`]: the processes not read by then count
/// as the mean of those that were.
pub fn memory_of(cg: &Cgroup, pids: &[u32]) -> (u64, MemorySource) {
    memory_until(cg, pids, std::time::Instant::now() + MEMORY_READ_BOUND)
}

/// [`memory_of`], reading PSS until `deadline` at the latest.
pub fn memory_until(
    cg: &Cgroup,
    pids: &[u32],
    deadline: std::time::Instant,
) -> (u64, MemorySource) {
    use std::sync::atomic::Ordering::Relaxed;
    MEMORY_READS.fetch_add(1, Relaxed);
    if let Ok(Some(bytes)) = cg.read_memory_current() {
        return (bytes, MemorySource::MemoryCurrent);
    }
    let (mut sum, mut read) = (0u64, 0u64);
    for &p in pids {
        if std::time::Instant::now() >= deadline {
            break;
        }
        MEMORY_READS.fetch_add(1, Relaxed);
        sum += crate::proc::pss_bytes(p).unwrap_or(0);
        read += 1;
    }
    (
        estimate(sum, read, pids.len() as u64),
        MemorySource::ProcPss,
    )
}

/// What of a gate's memory the kernel holds in swap: memory.swap.current,
/// or where the memory controller is off, the processes' SwapPss (read
/// only where the host has swap at all). None: nothing in swap.
pub fn swap_of(cg: &Cgroup, pids: &[u32]) -> Option<u64> {
    let bytes = if cg.has_file("memory.swap.current") {
        cg.read_file("memory.swap.current")
            .ok()?
            .trim()
            .parse()
            .ok()?
    } else if host_has_swap() {
        let deadline = std::time::Instant::now() + MEMORY_READ_BOUND;
        pids.iter()
            .take_while(|_| std::time::Instant::now() < deadline)
            .filter_map(|&p| crate::proc::swap_pss_bytes(p))
            .sum()
    } else {
        0
    };
    (bytes > 0).then_some(bytes)
}

/// Whether any swap device is on (/proc/swaps lists more than its header).
pub fn host_has_swap() -> bool {
    std::fs::read_to_string("/proc/swaps").is_ok_and(|s| s.lines().count() > 1)
}

/// The PSS of `total` processes when `read` of them came to `sum`: the
/// rest count as the mean of those read.
fn estimate(sum: u64, read: u64, total: u64) -> u64 {
    match read {
        0 => 0,
        n => sum.saturating_add(sum / n * total.saturating_sub(n)),
    }
}

/// A gate's memory as measured at one moment, kept so that metrics, the
/// budget and a teardown's `freed` need not read it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub bytes: u64,
    pub source: MemorySource,
    pub at_ms: u64,
}

impl Measured {
    /// Reads a gate's memory now (bounded by `deadline`).
    pub fn now(dir: &GateDir, deadline: std::time::Instant) -> Measured {
        let pids = dir.pids().unwrap_or_default();
        let (bytes, source) = memory_until(&dir.cgroup, &pids, deadline);
        Measured {
            bytes,
            source,
            at_ms: now_ms(),
        }
    }
}

/// A gate as people and tools see it, read from cgroupfs now. `extra`
/// carries what only a daemon knows (activity seen since, reaper verdicts).
pub fn info(dir: &GateDir, tags: &Tags, extra: &InfoExtra) -> Result<GateInfo, CgroupError> {
    let events = dir.cgroup.read_cgroup_events()?;
    let pids = dir.pids()?;
    let (memory_bytes, memory_source) = match extra.phase {
        Some(Phase::Hibernated { image_bytes, .. }) => (image_bytes, MemorySource::Image),
        _ => memory_of(&dir.cgroup, &pids),
    };
    let cpu_usec = dir.cgroup.read_cpu_usage_usec()?;
    let swap_bytes = swap_of(&dir.cgroup, &pids);
    let now = now_ms();
    let last_active = extra
        .last_active_ms
        .or(tags.last_active_ms)
        .unwrap_or(tags.created_ms)
        .max(tags.created_ms);
    let phase = extra
        .phase
        .clone()
        .unwrap_or_else(|| crate::record::phase_of(tags, events.frozen, now));
    let state = phase.state(events.populated);
    Ok(GateInfo {
        id: dir.id.clone(),
        project: tags.project.clone(),
        session: tags.session.clone(),
        uid: tags.owner_uid,
        user: crate::proc::user_name(tags.owner_uid),
        pids,
        memory_bytes,
        memory_source,
        cpu_usec,
        cpu_percent: cgroup::cpu_percent(extra.cpu_sample, cpu_usec, now),
        created_ms: tags.created_ms,
        age_s: now.saturating_sub(tags.created_ms) / 1000,
        idle_s: now.saturating_sub(last_active) / 1000,
        state,
        pinned: tags.pinned,
        spared: extra.spared,
        next: extra.next,
        owner_pid: tags.owner_pid,
        orphaned_ms: tags.orphaned_ms,
        main_pid: tags.main_pid,
        max_runtime_s: tags.max_runtime_ms.map(|ms| ms / 1000),
        limits: limits::in_force(&dir.cgroup),
        limit_hits: limits::hits(&dir.cgroup),
        not_applied: limits::not_applied(&dir.cgroup, &extra.wanted),
        never_orphaned: tags.owner_pid == Some(1),
        hibernate_refused: extra.hibernate_refused.clone(),
        // A daemon knows whether it has CRIU; the gate's files do not.
        hibernation_off: None,
        failure: extra.failure.clone(),
        wakes_on: extra.wakes_on.clone(),
        wake_note: extra.wake_note.clone(),
        swap_bytes,
        cgroup: dir.cgroup.path().display().to_string(),
    })
}

/// What a daemon adds to a gate's picture: its lifecycle's phase (without
/// a daemon, the phase is read back from tags and the frozen flag).
#[derive(Debug, Clone, Default)]
pub struct InfoExtra {
    pub phase: Option<Phase>,
    pub last_active_ms: Option<u64>,
    pub spared: Option<Spared>,
    pub next: Option<Next>,
    /// The last cpu.stat usage the daemon read, and when (for a rate).
    pub cpu_sample: Option<(u64, u64)>,
    /// The limits the gate's policy asks for.
    pub wanted: Vec<Wanted>,
    pub hibernate_refused: Option<String>,
    pub failure: Option<String>,
    /// What input would wake it (`wake::summary`), while it sleeps.
    pub wakes_on: Vec<String>,
    pub wake_note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_stop_at_their_deadline() {
        // No memory.current here: PSS of the processes.
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path());
        let me = std::process::id();
        let later = std::time::Instant::now() + Duration::from_secs(10);
        let (mine, source) = memory_until(&cg, &[me], later);
        assert_eq!(source, MemorySource::ProcPss);
        assert!(mine > 0);
        let past = std::time::Instant::now();
        assert_eq!(memory_until(&cg, &[me, me], past).0, 0);
        // Past the deadline, the processes not read count as the mean.
        assert_eq!(estimate(300, 3, 10), 1000);
        assert_eq!(estimate(300, 3, 3), 300);
        assert_eq!(estimate(0, 0, 10), 0);
    }

    #[test]
    fn the_root_must_lie_below_the_mount() {
        let mount = PathBuf::from("/sys/fs/cgroup/unified");
        assert_eq!(
            Tree::at(mount.clone(), "gov").unwrap().root.path(),
            Path::new("/sys/fs/cgroup/unified/gov")
        );
        assert!(Tree::at(mount.clone(), "/sys/fs/cgroup/unified/a/b").is_ok());
        for bad in ["/", "/tmp/x", "../x", "/sys/fs/cgroup/unified", "a/../../x"] {
            assert!(Tree::at(mount.clone(), bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_cgroup_is_placed_in_a_gate_gov_or_outside() {
        let tree = Tree::at(PathBuf::from("/cg"), "gov").unwrap();
        let part = |p: &str| tree.part_holding(Path::new(p));
        assert_eq!(
            part("/cg/gov/p-1/g0123456789").as_deref(),
            Some("gate g0123456789")
        );
        assert_eq!(
            part("/cg/gov/p-1/g0123456789/w").as_deref(),
            Some("gate g0123456789")
        );
        assert_eq!(part("/cg/gov/daemon").as_deref(), Some("gov's own cgroup"));
        assert_eq!(part("/cg/gov").as_deref(), Some("gov's own cgroup"));
        assert_eq!(part("/cg/gov2/p-1/g0123456789"), None);
        assert_eq!(part("/cg/user.slice"), None);
    }
}
