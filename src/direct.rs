//! Acting on gates straight through cgroupfs, for root when no daemon runs.
//! The daemon uses the same gate functions; this is only the dispatch.

use anyhow::{bail, Context, Result};

use crate::gate::{self, GateDir, InfoExtra, Tags, Tree};
use crate::protocol::GateInfo;

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

/// A person's freeze, tagged as such so a daemon that finds the gate later
/// knows it.
pub fn freeze(tree: &Tree, id: &str) -> Result<()> {
    let cg = find(tree, id)?.cgroup;
    cg.freeze(gate::FREEZE_TIMEOUT)?;
    gate::Tag::Frozen.set(&cg, Some(&gate::now_ms().to_string()))?;
    gate::Tag::FrozenManual.set(&cg, Some("1"))?;
    Ok(())
}

pub fn thaw(tree: &Tree, id: &str) -> Result<()> {
    let dir = find(tree, id)?;
    dir.cgroup.thaw(gate::FREEZE_TIMEOUT)?;
    gate::Tag::Frozen.set(&dir.cgroup, None)?;
    gate::Tag::FrozenManual.set(&dir.cgroup, None)?;
    Ok(())
}
