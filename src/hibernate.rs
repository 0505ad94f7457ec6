//! Hibernating a gate: the steps the gate's owner performs, in the order
//! CRIU and the keeper need, and the crash-recovery rule for each step.
//!
//! A hibernatable gate is a keeper (the gate's main process, in `<gate>`)
//! and a worker tree in `<gate>/w` (see [`crate::keeper`]). [`hibernate`]
//! dumps the worker and frees its memory; [`wake`] restores it. Both are
//! blocking (they wait for criu, up to their timeouts): the daemon runs
//! them on a blocking thread, one at a time per gate.
//!
//! Each step is a phase of the gate, entered through its [`Record`] (which
//! tags it on the gate's cgroup) before the step, so a daemon killed at any
//! point finds the gate on restart and [`recover`] says what to do: never a
//! gate with neither processes nor image, never an image nobody owns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup::{Cgroup, CgroupError};
use crate::criu::{self, Criu, CriuError, DumpRequest, ImageState, RestoreRequest};
use crate::keeper::{self, Keeper, KeeperError, WORKER_CGROUP};
use crate::lazy::LazyPages;
use crate::reaper::Phase;
use crate::record::Record;

/// The most processes a dumped worker may have by default: 100 restored
/// to a first reply in 1.0-1.5 s here, 2,000 in 35-56 s
/// (docs/BENCHMARKS.md, "Hibernation by size").
pub const DEFAULT_MAX_PROCESSES: usize = 100;

/// How long the worker cgroup may take to report frozen.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a dumped worker may take to empty once killed.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HibernateError {
    #[error(transparent)]
    Criu(#[from] CriuError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Keeper(#[from] KeeperError),
    #[error("{path}: no pid-namespace init among the worker's processes {pids:?}; only a worker started by a keeper can be hibernated")]
    NoInit { path: PathBuf, pids: Vec<u32> },
    #[error(
        "the image would take ~{estimate} bytes, over the {budget} bytes left for hibernation"
    )]
    OverBudget { estimate: u64, budget: u64 },
    /// Restoring a tree takes ~10-25 ms per process here whatever its
    /// memory (a lazy restore does not shorten it): a tree too large to be
    /// back within ~2 s is not dumped.
    #[error("the worker has {count} processes, over the {max} a restore brings back within ~2 s (~10-25 ms each here)")]
    TooManyProcesses { count: usize, max: usize },
    #[error("signalling keeper {pid}: {error}")]
    Signal { pid: u32, error: std::io::Error },
    /// The tree holds (or a restore would have handed it) files its owner
    /// cannot open by their paths (see [`crate::held`]).
    #[error("the worker would hold files its owner (uid {uid}) cannot open by their paths: {}", list(.violations))]
    Unsafe {
        uid: u32,
        violations: Vec<crate::held::Violation>,
    },
    #[error("checking the files of the worker of keeper {pid}: {error}")]
    Held { pid: u32, error: std::io::Error },
}

/// The first few violations, for a one-line reason.
fn list(v: &[crate::held::Violation]) -> String {
    let mut s = v
        .iter()
        .take(3)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if v.len() > 3 {
        s.push_str(&format!("; and {} more", v.len() - 3));
    }
    s
}

impl HibernateError {
    /// The reason to show in `gov show` and events.
    pub fn reason(&self) -> String {
        match self {
            HibernateError::Criu(e) => e.reason(),
            other => other.to_string(),
        }
    }
}

/// About what a dump of `w` writes: its processes' private resident memory
/// (RssAnon + RssShmem), which is what CRIU copies; measured here, images
/// came within 0.1% of it (109 MB for 104 MiB, 1,078 MB for 1,028 MiB).
pub fn estimate_image_bytes(w: &Cgroup) -> Result<u64, HibernateError> {
    let mut kb = 0;
    for pid in w.read_procs()? {
        // Gone between listing and reading: nothing to dump of it.
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        kb += status
            .lines()
            .filter_map(|l| l.strip_prefix("RssAnon:").or(l.strip_prefix("RssShmem:")))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(kb * 1024)
}

/// The worker cgroup of a gate.
pub fn worker_cgroup(gate: &Cgroup) -> Cgroup {
    gate.child(WORKER_CGROUP)
}

/// The worker tree's root: the member of `w` that is pid 1 of its own pid
/// namespace (the last NSpid field of /proc/PID/status is 1).
pub fn worker_init(w: &Cgroup) -> Result<u32, HibernateError> {
    let pids = w.read_procs()?;
    for &pid in &pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let last = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last());
        if last == Some("1") {
            return Ok(pid);
        }
    }
    Err(HibernateError::NoInit {
        path: w.path().to_path_buf(),
        pids,
    })
}

#[derive(Debug, Clone)]
pub struct Options {
    pub tcp_established: bool,
    pub network_lock: criu::NetworkLock,
    pub dump_timeout: Duration,
    pub restore_timeout: Duration,
    /// Disk for all the images beside this gate's (`hibernate_max_bytes`):
    /// the other images' blocks on disk are subtracted
    /// ([`criu::images_beside_bytes`]), and a dump estimated beyond what is
    /// left is refused before it starts.
    pub max_image_bytes: Option<u64>,
    /// A worker with more processes is not dumped (it stays suspended, the
    /// reason shown): restoring it would take seconds before its first
    /// reply. None: no limit.
    pub max_processes: Option<usize>,
    /// Restore lazily where criu and the kernel can
    /// ([`Criu::lazy_pages_supported`]): the worker runs once its tasks
    /// and files are back, its memory follows (see [`wake`]). Eager
    /// otherwise.
    pub lazy: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            tcp_established: true,
            network_lock: criu::NetworkLock::detect(),
            dump_timeout: Duration::from_secs(120),
            restore_timeout: Duration::from_secs(120),
            max_image_bytes: None,
            max_processes: Some(DEFAULT_MAX_PROCESSES),
            lazy: true,
        }
    }
}

/// Dumps a gate's worker into `dir` and frees its memory: [`dump`], then
/// [`finish_dump`] at once (no second look for input: the daemon's owner
/// makes that look between the two).
pub fn hibernate(
    criu: &Criu,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<criu::DumpReport, HibernateError> {
    let dumped = dump(criu, gate, record, keeper, dir, opts)?;
    finish_dump(gate, record, dumped)
}

/// A dump written whole while its tree is still there, frozen: either
/// [`finish_dump`] (the tree is killed: hibernated) or [`undo_dump`] (the
/// image goes: suspended as before). The gate is `Dumping` meanwhile, so a
/// daemon that dies between the two finds it and [`recover`] undoes it.
#[derive(Debug)]
#[must_use = "a dump is finished or undone"]
pub struct Dumped {
    pub report: criu::DumpReport,
    since_ms: u64,
    /// The worker is still there (frozen): the dump can be undone. Not
    /// for a tree with a TCP socket ([`holds_tcp`]), which criu killed.
    whole: bool,
}

impl Dumped {
    /// Whether [`undo_dump`] can take it back (its worker is still there).
    pub fn undoable(&self) -> bool {
        self.whole
    }
}

/// The first half of a dump: the image is written, the worker is left
/// whole and frozen (`criu dump --leave-running` of a frozen cgroup),
/// unless it holds a TCP socket: criu then kills it as before, inside its
/// network lock (see [`holds_tcp`]), and the dump cannot be undone.
///
/// Before: the gate is suspended (frozen), its keeper is `keeper`,
/// `<gate>/w` holds the worker, `dir` has no image. The steps: enter
/// `Dumping`; freeze `w` by its own cgroup.freeze; tell the keeper to hold;
/// thaw the gate (only the keeper runs: it keeps the host's pipes served);
/// dump `w`, leaving it frozen.
///
/// After Ok: still `Dumping`, the image complete in `dir`, `w` frozen with
/// every process, the keeper holding. After an error: the worker is
/// intact, the gate frozen again (suspended as before: nothing lost), the
/// keeper released, `DumpRefused` with the reason, no image left. A dump
/// still running at its deadline ([`CriuError::StillRunning`]) is the
/// exception: it is left to finish, the gate stays `Dumping`, and
/// [`recover`] decides later.
pub fn dump(
    criu: &Criu,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<Dumped, HibernateError> {
    let since_ms = record
        .phase()
        .asleep_since()
        .unwrap_or_else(crate::gate::now_ms);
    let refused = |record: &mut Record, e: &HibernateError| {
        record.enter(Phase::DumpRefused {
            since_ms,
            reason: e.reason(),
        })
    };
    let w = worker_cgroup(gate);
    let init = worker_init(&w)?;
    if let Some(max) = opts.max_processes {
        let count = w.read_procs()?.len();
        if count > max {
            let e = HibernateError::TooManyProcesses { count, max };
            refused(record, &e)?;
            return Err(e);
        }
    }
    if let Some(max) = opts.max_image_bytes {
        let estimate = estimate_image_bytes(&w)?;
        let budget = max.saturating_sub(criu::images_beside_bytes(dir)?);
        if estimate > budget {
            let e = HibernateError::OverBudget { estimate, budget };
            refused(record, &e)?;
            return Err(e);
        }
    }
    record.enter(Phase::Dumping { since_ms })?;
    match dump_steps(criu, gate, &w, init, keeper, dir, opts) {
        Ok((report, whole)) => Ok(Dumped {
            report,
            since_ms,
            whole,
        }),
        Err(e @ HibernateError::Criu(CriuError::StillRunning { .. })) => Err(e),
        Err(e) => {
            // Suspended as before, and say why.
            back_to_suspended(gate, keeper, dir);
            refused(record, &e)?;
            Err(e)
        }
    }
}

/// The second half of a dump: the worker is killed (cgroup.kill of `w`,
/// until it is empty) and the gate is `Hibernated` with its image. An
/// error (the kill timed out) leaves it `Dumping`: [`recover`] then sees
/// what is left.
pub fn finish_dump(
    gate: &Cgroup,
    record: &mut Record,
    dumped: Dumped,
) -> Result<criu::DumpReport, HibernateError> {
    if dumped.whole {
        worker_cgroup(gate).kill_all(KILL_TIMEOUT)?;
    }
    record.enter(Phase::Hibernated {
        since_ms: dumped.since_ms,
        image_bytes: dumped.report.image_bytes,
    })?;
    Ok(dumped.report)
}

/// Takes a dump back: the image is deleted, the gate frozen again with
/// its worker, the keeper released: `Suspended` as before the dump
/// (nothing of the worker ever ran meanwhile). The input or touch that
/// made the caller undo it then wakes it as it would any suspended gate.
pub fn undo_dump(
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    dumped: Dumped,
) -> Result<(), HibernateError> {
    assert!(dumped.whole, "undo_dump of a dump whose tree criu killed");
    gate.freeze(FREEZE_TIMEOUT)?;
    back_to_suspended(gate, keeper, dir);
    criu::remove_image(dir)?;
    record.enter(Phase::Suspended {
        since_ms: dumped.since_ms,
        manual: false,
    })?;
    Ok(())
}

/// A worker whose dump did not happen or was taken back: frozen with its
/// gate (the gate first: `w` stays frozen while its parent is), `w`'s own
/// freeze let go so that a thaw of the gate thaws it, the keeper released,
/// no image.
fn back_to_suspended(gate: &Cgroup, keeper: Keeper, dir: &Path) {
    let _ = gate.freeze(FREEZE_TIMEOUT);
    let _ = worker_cgroup(gate).write_freeze(false);
    let _ = keeper::release(keeper);
    let _ = criu::remove_image(dir);
}

fn dump_steps(
    criu: &Criu,
    gate: &Cgroup,
    w: &Cgroup,
    init: u32,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<(criu::DumpReport, bool), HibernateError> {
    w.freeze(FREEZE_TIMEOUT)?;
    // A tree that already holds a file its owner could not open by path
    // would be killed for it at restore: it is not dumped (it stays
    // suspended, the reason shown).
    if let Some(creds) = owner_creds(keeper)? {
        tree_is_safe(w, keeper.pid, &creds)?;
    }
    keeper::hold(keeper).map_err(|error| HibernateError::Signal {
        pid: keeper.pid,
        error,
    })?;
    let leave_running = !holds_tcp(w)?;
    gate.write_freeze(false)?;
    let report = criu.dump(&DumpRequest {
        pid: init,
        cgroup: w,
        dir,
        tcp_established: opts.tcp_established,
        network_lock: opts.network_lock,
        timeout: opts.dump_timeout,
        leave_running,
    })?;
    if leave_running {
        // criu froze `w` again before it let go of the tasks; they reach
        // the frozen state as they leave ptrace.
        w.freeze(FREEZE_TIMEOUT)?;
    }
    Ok((report, leave_running))
}

/// Whether a process of `w` holds a TCP socket (or one this cannot look
/// at). Such a tree is killed by criu itself at the end of its dump, as
/// before, not left alive: a tree left alive has its TCP sockets out of
/// repair mode and the network lock lifted, so killing it afterwards sends
/// the peer a FIN or RST and leaves the port held (tried: the restore then
/// failed, "Can't bind inet socket: Address already in use"), while criu's
/// own kill closes them in repair mode, silently, inside the lock.
fn holds_tcp(w: &Cgroup) -> Result<bool, HibernateError> {
    for pid in w.read_procs()? {
        let Ok(pidfd) = crate::proc::pidfd_open(pid) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in fds.flatten() {
            let socket = std::fs::read_link(entry.path())
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:["));
            let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if !socket {
                continue;
            }
            let Ok(sock) = crate::wake::borrow(&pidfd, fd) else {
                return Ok(true);
            };
            let domain = crate::wake::sockopt(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN);
            let proto = crate::wake::sockopt(&sock, libc::SOL_SOCKET, libc::SO_PROTOCOL);
            if matches!(domain, Some(libc::AF_INET | libc::AF_INET6) | None)
                && matches!(proto, Some(libc::IPPROTO_TCP) | None)
            {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Restores a hibernated gate's worker from `dir`, running, with all its
/// memory back: [`wake_start`], then the fill, then [`wake_finish`].
///
/// After Ok: the worker runs in `w` (same pids inside its namespace, same
/// pipes to the keeper), `Running`, image deleted. After an error:
/// `Hibernated` again, the image kept, `w` empty, the keeper holding: try
/// again (`gov thaw`).
pub fn wake(
    criu: &Criu,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<criu::RestoreReport, HibernateError> {
    wake_then(criu, gate, record, keeper, dir, opts, |_, _| {})
}

/// [`wake`], calling `running` once the worker runs (for a lazy restore,
/// before its memory is all back, with the lazy-pages daemon): the moment
/// a waiting touch can be answered.
pub fn wake_then(
    criu: &Criu,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
    running: impl FnOnce(&criu::RestoreReport, Option<&LazyPages>),
) -> Result<criu::RestoreReport, HibernateError> {
    let started = wake_start(criu, gate, record, keeper, dir, opts)?;
    running(&started.filling.report, started.lazy.as_ref());
    let filled = started
        .lazy
        .map(|lazy| lazy.finish(opts.restore_timeout))
        .transpose();
    wake_finish(record, keeper, dir, started.filling, filled)
}

/// A restore whose worker runs: its memory may still be coming
/// (`lazy`). Hand `filling` and what became of `lazy` to [`wake_finish`].
#[derive(Debug)]
#[must_use = "a restore is finished with wake_finish"]
pub struct Started {
    /// The lazy-pages daemon still filling the worker's memory; None: all
    /// of it is back (an eager restore). [`LazyPages::finish`] waits for it.
    pub lazy: Option<LazyPages>,
    pub filling: Filling,
}

/// What [`wake_finish`] needs of a started restore.
#[derive(Debug)]
pub struct Filling {
    pub report: criu::RestoreReport,
    /// The phase a failed fill goes back to.
    back: Phase,
}

/// The first half of a restore: the worker runs.
///
/// Before: `Hibernated`, the keeper alive, `w` empty, a complete image.
/// The steps: enter `Restoring`; tell the keeper to hold (a failed restore
/// empties `w` again); thaw `w` and the gate (a frozen target hangs
/// criu); take the keeper's pipe ends; restore into `w`; continue it
/// (after the held check for a user's gate).
///
/// After Ok: the worker runs, the gate is still `Restoring`, the keeper
/// holding, the image there. A lazy restore ([`Options::lazy`]) lets the
/// worker run before its memory is all back: it answers its host
/// meanwhile (pages it touches come first) while the lazy-pages daemon
/// copies the rest. After an error: `Hibernated` again, the image kept,
/// `w` empty, the keeper holding.
pub fn wake_start(
    criu: &Criu,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<Started, HibernateError> {
    let w = worker_cgroup(gate);
    let hibernated = record.phase().clone();
    let since_ms = hibernated
        .asleep_since()
        .unwrap_or_else(crate::gate::now_ms);
    let back = match hibernated {
        Phase::Hibernated { .. } => hibernated,
        _ => Phase::Hibernated {
            since_ms,
            image_bytes: criu::image_bytes(dir).unwrap_or(0),
        },
    };
    record.enter(Phase::Restoring { since_ms })?;
    match restore_steps(criu, gate, &w, keeper, dir, opts) {
        Ok((report, lazy)) => Ok(Started {
            lazy,
            filling: Filling { report, back },
        }),
        Err(e) => {
            record.enter(back)?;
            Err(e)
        }
    }
}

/// The second half of a restore, once the fill ended (`filled`: what
/// [`LazyPages::finish`] said, or None for an eager restore).
///
/// Every page back: the keeper is released, the image deleted, `Running`.
/// The fill failed (the lazy-pages daemon failed, was killed or ran past
/// the deadline; `finish` has killed the worker, which must not run on
/// pages that never came back): `Hibernated` again from its image, which
/// is the only whole copy. What the worker did since the restore is lost
/// (input it read, state it changed; what it wrote to the host was sent).
pub fn wake_finish(
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
    filling: Filling,
    filled: Result<Option<crate::lazy::LazyDone>, CriuError>,
) -> Result<criu::RestoreReport, HibernateError> {
    match filled {
        Ok(done) => {
            let _ = keeper::release(keeper);
            criu::remove_image(dir)?;
            record.enter(Phase::Running)?;
            let mut report = filling.report;
            report.memory_back = done.map(|d| d.elapsed);
            Ok(report)
        }
        Err(e) => {
            record.enter(filling.back)?;
            Err(e.into())
        }
    }
}

fn restore_steps(
    criu: &Criu,
    gate: &Cgroup,
    w: &Cgroup,
    keeper: Keeper,
    dir: &Path,
    opts: &Options,
) -> Result<(criu::RestoreReport, Option<LazyPages>), HibernateError> {
    keeper::hold(keeper).map_err(|error| HibernateError::Signal {
        pid: keeper.pid,
        error,
    })?;
    gate.thaw(FREEZE_TIMEOUT)?;
    w.thaw(FREEZE_TIMEOUT)?;
    let inherit = keeper::inherit_fds(keeper)?;
    let creds = owner_creds(keeper)?;
    let restored = criu.restore(RestoreRequest {
        dir,
        cgroup: w,
        inherit,
        tcp_established: opts.tcp_established,
        network_lock: opts.network_lock,
        timeout: opts.restore_timeout,
        leave_stopped: creds.is_some(),
        lazy: opts.lazy && criu.lazy_pages_supported(),
    })?;
    // On an error below, `restored.lazy` is dropped, which kills the
    // daemon and the tree (the tree first).
    if let Some(creds) = creds {
        continue_if_safe(w, keeper.pid, &creds)?;
    }
    Ok((restored.report, restored.lazy))
}

/// The credentials a user's worker runs with (its keeper's), or None for
/// root's own gates: root could open every file anyway, so nothing needs
/// checking.
pub fn owner_creds(keeper: Keeper) -> Result<Option<keeper::Creds>, HibernateError> {
    let err = |error| HibernateError::Held {
        pid: keeper.pid,
        error,
    };
    // Read through a pidfd on this very keeper, alive after the read: the
    // credentials are its, not a recycled pid's.
    let pidfd = keeper.pidfd().map_err(err)?;
    let creds = crate::held::creds_of(keeper.pid).map_err(err)?;
    crate::proc::pidfd_send_signal(&pidfd, 0).map_err(err)?;
    Ok((creds.uid != 0).then_some(creds))
}

/// Ok when every process in `w` holds only what `creds` could open by
/// its path now ([`crate::held::violations`]).
pub fn tree_is_safe(
    w: &Cgroup,
    keeper_pid: u32,
    creds: &keeper::Creds,
) -> Result<(), HibernateError> {
    let violations =
        crate::held::violations(&w.read_procs()?, creds).map_err(|error| HibernateError::Held {
            pid: keeper_pid,
            error,
        })?;
    if violations.is_empty() {
        return Ok(());
    }
    Err(HibernateError::Unsafe {
        uid: creds.uid,
        violations,
    })
}

/// After a restore with `--leave-stopped`: the tree goes on (SIGCONT) only
/// if it holds nothing its owner could not open by path; otherwise it is
/// killed before any of it ran, and the image is kept.
fn continue_if_safe(
    w: &Cgroup,
    keeper_pid: u32,
    creds: &keeper::Creds,
) -> Result<(), HibernateError> {
    if let Err(e) = tree_is_safe(w, keeper_pid, creds) {
        w.kill_all(Duration::from_secs(10))?;
        return Err(e);
    }
    Ok(criu::continue_stopped(w)?)
}

/// What a restarted daemon sees of a gate with a hibernation tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub image: ImageState,
    /// `w` has processes.
    pub worker_populated: bool,
    /// A criu process is still working on this gate's images.
    pub criu_running: bool,
    pub keeper_alive: bool,
}

/// What to do with it ([`recover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Leave it and look again later (criu is still at work).
    Wait,
    /// The dump finished (criu's stats-dump is there): rename `<dir>.partial` into place
    /// ([`criu::promote_partial`]), tag `hibernated`.
    PromoteImage,
    /// Hibernated with a complete image: tag `hibernated`, nothing to do.
    Hibernated,
    /// The dump did not happen: the worker is intact; delete any partial
    /// image, release the keeper, freeze the gate (suspended), drop the tag.
    BackToSuspended,
    /// The restore worked (the worker runs): release the keeper, delete the
    /// image, drop the tag.
    RestoreDone,
    /// Nothing runs and no image exists (the keeper died, or the worker
    /// died outside any dump): the gate is over; kill and remove it.
    Remove,
}

/// The recovery rule, a pure function of what is on disk and in cgroupfs:
/// whatever the step that was cut short, the image is kept while it is
/// the only copy of the worker, and an image is deleted only once the
/// worker runs or the gate is gone.
pub fn recover(phase: &Phase, seen: Seen) -> Recovery {
    if seen.criu_running {
        return Recovery::Wait;
    }
    if !seen.keeper_alive {
        // The host's process is gone: nobody to restore into.
        return Recovery::Remove;
    }
    match (phase, seen.image, seen.worker_populated) {
        // The worker runs: any image is a stale or unfinished copy.
        (Phase::Restoring { .. }, _, true) => Recovery::RestoreDone,
        (_, _, true) => Recovery::BackToSuspended,
        (_, ImageState::Complete, false) => Recovery::Hibernated,
        (_, ImageState::PartialFinished, false) => Recovery::PromoteImage,
        (_, ImageState::None | ImageState::PartialUnfinished, false) => Recovery::Remove,
    }
}

/// Carries out a [`Recovery`] for the gate whose keeper is `keeper`
/// and whose images live in `dir`, entering the phase it leaves the gate
/// in. `Remove` deletes the image and kills the gate's tree; removing the
/// cgroups and the registry entry is the daemon's part.
pub fn apply(
    recovery: Recovery,
    gate: &Cgroup,
    record: &mut Record,
    keeper: Keeper,
    dir: &Path,
) -> Result<(), HibernateError> {
    let since_ms = record
        .phase()
        .asleep_since()
        .unwrap_or_else(crate::gate::now_ms);
    match recovery {
        Recovery::Wait => {}
        Recovery::PromoteImage | Recovery::Hibernated => {
            if recovery == Recovery::PromoteImage {
                criu::promote_partial(dir)?;
            }
            record.enter(Phase::Hibernated {
                since_ms,
                image_bytes: criu::image_bytes(dir)?,
            })?;
        }
        Recovery::BackToSuspended => {
            criu::remove_image(dir)?;
            let _ = keeper::release(keeper);
            gate.freeze(FREEZE_TIMEOUT)?;
            // A dump left `w` frozen by its own cgroup.freeze: the gate's
            // freeze holds it now, and a thaw of the gate thaws it.
            worker_cgroup(gate).write_freeze(false)?;
            record.enter(Phase::Suspended {
                since_ms,
                manual: false,
            })?;
        }
        Recovery::RestoreDone => {
            // A restore with --leave-stopped (a user's gate, or a lazy
            // one) whose daemon died left the tree stopped: it goes on
            // only as `wake` would have let it, the image kept until then.
            let w = worker_cgroup(gate);
            let go_on = match owner_creds(keeper)? {
                Some(creds) => continue_if_safe(&w, keeper.pid, &creds),
                None => criu::continue_stopped(&w).map_err(HibernateError::from),
            };
            if let Err(e) = go_on {
                record.enter(Phase::Hibernated {
                    since_ms,
                    image_bytes: criu::image_bytes(dir)?,
                })?;
                return Err(e);
            }
            let _ = keeper::release(keeper);
            criu::remove_image(dir)?;
            record.enter(Phase::Running)?;
        }
        Recovery::Remove => {
            // Its keeper (the main process) is gone.
            record.enter(Phase::Killing {
                reason: crate::protocol::Reason::MainExit,
            })?;
            criu::remove_image(dir)?;
            gate.kill_all(Duration::from_secs(10))?;
        }
    }
    Ok(())
}

/// What a restarted daemon sees of a gate now (for [`recover`]); `criu`
/// is the daemon's (with none, no criu of ours can be at work). A
/// lazy-pages daemon left waiting for a restore that never started is
/// ended here.
pub fn observe(
    gate: &Cgroup,
    keeper: Keeper,
    dir: &Path,
    criu: Option<&Criu>,
) -> Result<Seen, HibernateError> {
    let worker_populated = worker_cgroup(gate).read_cgroup_events()?.populated;
    let mut at_work = criu.map_or(Vec::new(), |c| criu_at_work(dir, c.path()));
    if end_orphaned_lazy_pages(dir, &at_work, worker_populated) {
        at_work.clear();
    }
    Ok(Seen {
        image: criu::image_state(dir),
        worker_populated,
        criu_running: !at_work.is_empty(),
        keeper_alive: keeper
            .pidfd()
            .is_ok_and(|_| crate::proc::is_alive(keeper.pid)),
    })
}

/// Is a criu process of ours working on `dir` (its command line names
/// `dir` or `<dir>.partial` after -D)? For [`Seen::criu_running`]. Ours
/// means run by root from the daemon's `criu` binary (the same file); a
/// user's process merely named criu, with the same arguments, would
/// otherwise make the daemon wait on a dump that is not happening.
pub fn criu_running_for(dir: &Path, criu: &Path) -> bool {
    !criu_at_work(dir, criu).is_empty()
}

/// The criu processes of ours at work on `dir` (see [`criu_running_for`]):
/// each one's pid and operation ("dump", "restore", "lazy-pages").
pub fn criu_at_work(dir: &Path, criu: &Path) -> Vec<(u32, String)> {
    use std::os::unix::fs::MetadataExt;
    let Ok(exe) = std::fs::metadata(criu) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let ours = works_on(&cmdline, dir)
                && crate::proc::uids(pid).is_some_and(|u| u[0] == 0 && u[1] == 0)
                && std::fs::metadata(e.path().join("exe"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == (exe.dev(), exe.ino()));
            let op = cmdline.split(|&b| b == 0).nth(1).unwrap_or_default();
            ours.then(|| (pid, String::from_utf8_lossy(op).into_owned()))
        })
        .collect()
}

/// A lazy-pages daemon whose daemon died before the restore it was
/// started for: no restore runs and nothing was restored, so it would
/// wait for a connection forever. Killed (through a pidfd, while it is
/// still that process), so the recovery can go on.
fn end_orphaned_lazy_pages(dir: &Path, at_work: &[(u32, String)], worker_populated: bool) -> bool {
    if worker_populated || at_work.iter().any(|(_, op)| op != "lazy-pages") {
        return false;
    }
    for (pid, _) in at_work {
        let _ = crate::proc::signal_checked(*pid, libc::SIGKILL, |p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| works_on(&c, dir))
        });
    }
    !at_work.is_empty()
}

/// Does a command line (NUL-separated, as /proc/PID/cmdline) name `dir` or
/// `<dir>.partial` after -D? Pure.
pub fn works_on(cmdline: &[u8], dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let mut partial = dir.as_os_str().to_owned();
    partial.push(".partial");
    let wanted = [dir.as_os_str().as_bytes(), partial.as_bytes()];
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    args.windows(2)
        .any(|p| p[0] == b"-D" && wanted.contains(&p[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_criu_at_work_names_the_images_after_d() {
        let dir = Path::new("/var/lib/gov/hibernate/g1");
        assert!(works_on(
            b"/usr/sbin/criu\0dump\0-D\0/var/lib/gov/hibernate/g1.partial\0-o\0dump.log\0",
            dir
        ));
        assert!(works_on(
            b"criu\0restore\0-D\0/var/lib/gov/hibernate/g1\0",
            dir
        ));
        assert!(!works_on(
            b"criu\0restore\0-D\0/var/lib/gov/hibernate/g10\0",
            dir
        ));
        assert!(!works_on(
            b"criu\0restore\0/var/lib/gov/hibernate/g1\0",
            dir
        ));
    }

    #[test]
    fn recovery_never_loses_the_only_copy() {
        let states = [
            ImageState::None,
            ImageState::Complete,
            ImageState::PartialFinished,
            ImageState::PartialUnfinished,
        ];
        let phases = [
            Phase::Dumping { since_ms: 1 },
            Phase::Hibernated {
                since_ms: 1,
                image_bytes: 1,
            },
            Phase::Restoring { since_ms: 1 },
            Phase::DumpRefused {
                since_ms: 1,
                reason: "x".into(),
            },
        ];
        for phase in &phases {
            for image in states {
                for worker_populated in [false, true] {
                    for criu_running in [false, true] {
                        for keeper_alive in [false, true] {
                            let seen = Seen {
                                image,
                                worker_populated,
                                criu_running,
                                keeper_alive,
                            };
                            let r = recover(phase, seen);
                            // criu at work: never touch anything.
                            if criu_running {
                                assert_eq!(r, Recovery::Wait);
                                continue;
                            }
                            // A finished image with no worker running is
                            // never thrown away while someone waits for it.
                            let only_copy = !worker_populated
                                && matches!(
                                    image,
                                    ImageState::Complete | ImageState::PartialFinished
                                );
                            if only_copy && keeper_alive {
                                assert!(
                                    matches!(r, Recovery::Hibernated | Recovery::PromoteImage),
                                    "{phase:?} {seen:?} -> {r:?}"
                                );
                            }
                            // A running worker is never removed.
                            if worker_populated && keeper_alive {
                                assert!(
                                    matches!(r, Recovery::BackToSuspended | Recovery::RestoreDone),
                                    "{phase:?} {seen:?} -> {r:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
        let seen = Seen {
            image: ImageState::Complete,
            worker_populated: true,
            criu_running: false,
            keeper_alive: true,
        };
        assert_eq!(
            recover(&Phase::Restoring { since_ms: 1 }, seen),
            Recovery::RestoreDone
        );
        assert_eq!(
            recover(&Phase::Dumping { since_ms: 1 }, seen),
            Recovery::BackToSuspended
        );
    }
}
