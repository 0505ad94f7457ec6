//! Acting on gates straight through cgroupfs, for root when no daemon runs.
//! The daemon uses the same gate functions; this is only the dispatch.

use anyhow::{bail, Context, Result};

use crate::gate::{self, GateDir, InfoExtra, Tags, Tree};
use crate::protocol::GateInfo;
use crate::reaper::Phase;
use crate::record::Record;

/// A gate that emptied this long ago is garbage: its command exited and no
/// daemon was there to remove the cgroup. Younger ones may be mid-spawn.
const EMPTY_GATE_GRACE_MS: u64 = 5_000;

pub fn list(tree: &Tree) -> Result<Vec<GateInfo>> {
    let mut out = Vec::new();
    for dir in tree.gates()? {
        let Some(tags) = Tags::read(&dir.cgroup)? else {
            continue;
        };
        match gate::info(&dir, &tags, &InfoExtra::default()) {
            Ok(info) => out.push(info),
            // Removed between listing and reading: not an error.
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    remove_exited(tree, &mut out);
    Ok(out)
}

/// Removes gates whose processes have all exited, so root's direct use
/// leaves no empty cgroups behind.
fn remove_exited(tree: &Tree, gates: &mut Vec<GateInfo>) {
    let now = gate::now_ms();
    gates.retain(|g| {
        let garbage = g.pids.is_empty()
            && g.state == crate::protocol::GateState::Exited
            && now.saturating_sub(g.created_ms) > EMPTY_GATE_GRACE_MS;
        if garbage {
            if let Ok(Some(dir)) = tree.find(&g.id) {
                let _ = dir.remove();
            }
        }
        !garbage
    });
}

pub fn find(tree: &Tree, id: &str) -> Result<GateDir> {
    crate::names::check_gate_id(id)?;
    match tree.find(id)? {
        Some(dir) => Ok(dir),
        None => bail!("no gate {id}"),
    }
}

pub fn show(tree: &Tree, id: &str) -> Result<GateInfo> {
    let dir = find(tree, id)?;
    let tags = Tags::read(&dir.cgroup)?.with_context(|| format!("gate {id} has no tags"))?;
    Ok(gate::info(&dir, &tags, &InfoExtra::default())?)
}

pub fn kill(tree: &Tree, id: &str) -> Result<()> {
    find(tree, id)?.kill_and_remove()?;
    Ok(())
}

/// The record of gate `id`, to act on it.
fn record(tree: &Tree, id: &str) -> Result<(GateDir, Record)> {
    let dir = find(tree, id)?;
    let record = Record::read(&dir.cgroup, gate::now_ms())?
        .with_context(|| format!("gate {id} has no tags"))?;
    Ok((dir, record))
}

/// A person's freeze, entered as such so a daemon that finds the gate later
/// knows it. A gate already frozen or on disk stays as it is.
pub fn freeze(tree: &Tree, id: &str) -> Result<()> {
    let (dir, mut record) = record(tree, id)?;
    let since_ms = match record.phase() {
        Phase::Running | Phase::Woken { .. } => {
            dir.cgroup.freeze(gate::FREEZE_TIMEOUT)?;
            gate::now_ms()
        }
        // Frozen by the reaper: now it is the person's freeze.
        Phase::Suspended { since_ms, .. } | Phase::DumpRefused { since_ms, .. } => *since_ms,
        Phase::Stopping { .. } | Phase::Killing { .. } => bail!("gate {id} is being reaped"),
        // On disk, or on its way there: better than frozen.
        _ => return Ok(()),
    };
    record.enter(Phase::Suspended {
        since_ms,
        manual: true,
    })?;
    Ok(())
}

/// Thaws a frozen gate. A hibernated one needs the daemon (and its CRIU)
/// to come back: refused here, its image and tags left as they are.
pub fn thaw(tree: &Tree, id: &str) -> Result<()> {
    let (dir, mut record) = record(tree, id)?;
    match record.phase() {
        Phase::Hibernated { .. } | Phase::Dumping { .. } | Phase::Restoring { .. } => {
            bail!("gate {id} is hibernated; only the daemon can restore it (start `gov daemon`)")
        }
        Phase::Stopping { .. } | Phase::Killing { .. } => bail!("gate {id} is being reaped"),
        _ => {}
    }
    dir.cgroup.thaw(gate::FREEZE_TIMEOUT)?;
    record.enter(Phase::Running)?;
    Ok(())
}
