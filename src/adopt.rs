//! Adopting a running process and its descendants into a new gate: the
//! process first (so what it forks from then on is born inside), then its
//! children, theirs, and so on, until a pass finds no one new. One rule says
//! which processes may go, for the process and each descendant alike.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::cgroup::{self, CgroupError};
use crate::gate::{GateDir, Tags, Tree};
use crate::policy::GateSettings;
use crate::proc;
use crate::protocol::NotApplied;
use crate::spawn;

/// Who asks for an adoption, as the kernel names them.
#[derive(Debug, Clone)]
pub struct Caller {
    pub uid: u32,
    /// The cgroup the caller runs in; None if it is gone.
    pub cgroup: Option<PathBuf>,
}

impl Caller {
    /// Caller `pid` of user `uid`. Its cgroup is read while its `pidfd`
    /// shows the pid still names it: a recycled pid must not lend its cgroup.
    pub fn new(tree: &Tree, uid: u32, pid: u32, pidfd: Option<&OwnedFd>) -> Caller {
        let cgroup = cgroup::cgroup_of(&tree.mount, pid)
            .ok()
            .filter(|_| pidfd.is_some_and(|fd| proc::pidfd_send_signal(fd, 0).is_ok()));
        Caller { uid, cgroup }
    }

    /// Whether a process in cgroup `cg` may be moved into a new gate for
    /// this caller; else why not ("already in gate G: ..."). Never out of
    /// gov's tree: a gate's processes stay in it. Root takes from anywhere
    /// else. A user takes only from the cgroup the caller itself runs in (it
    /// could `gov spawn` out of it just as well) or from one whose
    /// cgroup.procs is theirs to write (delegated to them, as systemd does
    /// with user@UID.service and what lies below it): the kernel lets an
    /// unprivileged user move a process only between cgroups whose
    /// cgroup.procs they may write, and a cgroup the user could not leave by
    /// themselves (an admin's, a service's, another login session's) is not
    /// left through gov.
    pub fn may_take_from(&self, tree: &Tree, cg: &Path) -> Result<(), String> {
        if let Some(part) = tree.part_holding(cg) {
            return Err(format!(
                "already in {part}: a gate's processes cannot leave it"
            ));
        }
        if self.uid == 0 || self.cgroup.as_deref() == Some(cg) {
            return Ok(());
        }
        let delegated = std::fs::metadata(cg.join("cgroup.procs"))
            .is_ok_and(|m| m.uid() == self.uid && m.mode() & 0o200 != 0);
        if delegated {
            return Ok(());
        }
        let shown = cg.strip_prefix(&tree.mount).unwrap_or(cg);
        Err(format!(
            "in cgroup /{}, which you could not leave yourself",
            shown.display()
        ))
    }
}

/// Why a process cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no process {0}")]
    Gone(u32),
    /// Another user's process is as good as absent.
    #[error("no process {0} of yours")]
    NotYours(u32),
    #[error("process {0} cannot be adopted (init, a kernel thread or the daemon)")]
    Untouchable(u32),
    #[error("process {0} is {1}")]
    Held(u32, String),
}

/// Whether `caller` may adopt process `pid`; if so, whose the gate is: the
/// caller's, or for root the process's (real) user's.
pub fn check(tree: &Tree, caller: &Caller, pid: u32) -> Result<u32, Refused> {
    if pid == 1 || pid == std::process::id() || pid == 2 || proc::parent_pid(pid) == Some(2) {
        return Err(Refused::Untouchable(pid));
    }
    let uid = match proc::uids(pid) {
        Some([ruid, ..]) if caller.uid == 0 => ruid,
        Some(_) if wholly(pid, caller.uid) => caller.uid,
        _ => return Err(Refused::NotYours(pid)),
    };
    let from = cgroup::cgroup_of(&tree.mount, pid).map_err(|_| Refused::Gone(pid))?;
    caller
        .may_take_from(tree, &from)
        .map_err(|why| Refused::Held(pid, why))?;
    Ok(uid)
}

/// Is every uid (real, effective, saved, fs) of process `pid` this one?
fn wholly(pid: u32, uid: u32) -> bool {
    proc::uids(pid).is_some_and(|u| u.iter().all(|&x| x == uid))
}

/// A new gate with process `pid` (checked) and its descendants in it.
pub struct Adopted {
    pub dir: GateDir,
    pub not_applied: Vec<NotApplied>,
    /// The process first, then the descendants that went with it.
    pub moved: Vec<u32>,
    /// Descendants the rule kept where they were.
    pub skipped: Vec<u32>,
}

/// Makes the gate (as a spawn does) with `pid` in it, then moves its
/// descendants that `caller` may take, pass after pass (bounded: a fork
/// bomb must not keep us here).
pub fn into_gate(
    tree: &Tree,
    tags: &Tags,
    settings: &GateSettings,
    caller: &Caller,
    pid: u32,
) -> Result<Adopted, CgroupError> {
    let (dir, not_applied) = spawn::create_gate_for(tree, tags, settings, pid)?;
    let uid = tags.owner_uid;
    let (mut moved, mut skipped) = (vec![pid], Vec::new());
    for _ in 0..16 {
        let mut new = false;
        for p in moved.clone() {
            for child in proc::children(p) {
                if moved.contains(&child) || skipped.contains(&child) {
                    continue;
                }
                // Gone meanwhile.
                let Ok(cg) = cgroup::cgroup_of(&tree.mount, child) else {
                    continue;
                };
                // Forked after its parent moved: born inside.
                if cg == dir.cgroup.path() {
                    moved.push(child);
                    new = true;
                    continue;
                }
                // The rule for the process itself holds for each
                // descendant: one in another gate, or in a cgroup the
                // caller could not leave, stays.
                if (uid != 0 && !wholly(child, uid)) || caller.may_take_from(tree, &cg).is_err() {
                    skipped.push(child);
                    continue;
                }
                // ESRCH: it exited meanwhile.
                if dir.cgroup.write_procs(child).is_ok() {
                    moved.push(child);
                    new = true;
                }
            }
        }
        if !new {
            break;
        }
    }
    Ok(Adopted {
        dir,
        not_applied,
        moved,
        skipped,
    })
}
