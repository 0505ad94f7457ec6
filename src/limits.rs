//! A gate's limits, all of them: what policy asks for (the gate's and its
//! project's), writing it, and what the kernel says is in force and was hit.
//! Knows cgroups and policy, not gates: both gate and spawn build on it.

use std::collections::BTreeMap;

use crate::cgroup::{Cgroup, CpuMax, Limit};
use crate::policy::GateSettings;
use crate::protocol::NotApplied;

/// One limit that policy asks for: its key, its file, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub key: &'static str,
    pub file: &'static str,
    pub value: String,
}

/// The per-gate limits that policy asks for.
pub fn for_gate(s: &GateSettings) -> Vec<Wanted> {
    wanted([
        ("memory_max", "memory.max", text(s.memory_max)),
        ("memory_high", "memory.high", text(s.memory_high)),
        ("pids_max", "pids.max", text(s.pids_max)),
        (
            "cpu_max",
            "cpu.max",
            (s.cpu_max != CpuMax::Max).then(|| s.cpu_max.to_kernel()),
        ),
        (
            "oom_group",
            "memory.oom.group",
            s.oom_group.then(|| "1".into()),
        ),
    ])
}

/// The limits of a project directory (the sum of one user's gates of a
/// project), written again by every spawn into it, so the latest policy holds.
pub fn for_project(s: &GateSettings) -> Vec<Wanted> {
    wanted([
        (
            "project_memory_max",
            "memory.max",
            text(s.project_memory_max),
        ),
        ("project_pids_max", "pids.max", text(s.project_pids_max)),
    ])
}

/// Those of `limits` that have a value.
fn wanted<const N: usize>(
    limits: [(&'static str, &'static str, Option<String>); N],
) -> Vec<Wanted> {
    limits
        .into_iter()
        .filter_map(|(key, file, value)| {
            Some(Wanted {
                key,
                file,
                value: value?,
            })
        })
        .collect()
}

/// A limit's text if it is not "max" (nothing to write then).
fn text(limit: Limit) -> Option<String> {
    (limit != Limit::Max).then(|| limit.to_kernel())
}

/// Writes the wanted limits whose files exist; those whose controller is off
/// here are [`not_applied`].
pub fn apply(cg: &Cgroup, wanted: &[Wanted]) {
    for w in wanted.iter().filter(|w| cg.has_file(w.file)) {
        if let Err(e) = cg.write_file(w.file, &w.value) {
            tracing::warn!("cannot set {}: {e}", w.file);
        }
    }
}

/// The wanted limits whose files this cgroup lacks, because their
/// controller is not enabled for it, each with why.
pub fn not_applied(cg: &Cgroup, wanted: &[Wanted]) -> Vec<NotApplied> {
    wanted
        .iter()
        .filter(|w| !cg.has_file(w.file))
        .map(|w| {
            let controller = w.file.split('.').next().unwrap_or(w.file);
            NotApplied {
                key: w.key.to_string(),
                value: w.value.clone(),
                why: format!(
                    "no {controller} controller in cgroup2 for this gate (this host's cgroup2 has none, or gov's root is not given it)"
                ),
            }
        })
        .collect()
}

/// The limits in force on a gate, as the kernel reports them (files absent
/// where the controller is off).
pub fn in_force(cg: &Cgroup) -> BTreeMap<String, String> {
    [
        "memory.max",
        "memory.high",
        "pids.max",
        "cpu.max",
        "memory.oom.group",
    ]
    .into_iter()
    .filter_map(|f| Some((f.to_string(), cg.read_file(f).ok()?.trim().to_string())))
    .collect()
}

/// How often a gate ran into its limits, from pids.events and memory.events
/// (only where those controllers are on). Keys: "pids.max", "memory.high",
/// "memory.max", "oom", "oom_kill", "oom_group_kill"; zero counts left out.
pub fn hits(cg: &Cgroup) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(kv) = cg.read_flat_keyed("pids.events") {
        if let Some(&n) = kv.get("max").filter(|&&n| n > 0) {
            out.insert("pids.max".to_string(), n);
        }
    }
    if let Ok(kv) = cg.read_flat_keyed("memory.events") {
        for (key, name) in [
            ("high", "memory.high"),
            ("max", "memory.max"),
            ("oom", "oom"),
            ("oom_kill", "oom_kill"),
            ("oom_group_kill", "oom_group_kill"),
        ] {
            if let Some(&n) = kv.get(key).filter(|&&n| n > 0) {
                out.insert(name.to_string(), n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn settings(toml: &str) -> GateSettings {
        Policy::parse(toml, std::path::Path::new("test.toml"))
            .unwrap()
            .for_project("/p")
    }

    #[test]
    fn only_limits_below_max_are_wanted() {
        let s = settings(
            "[defaults]\nmemory_max = \"32M\"\npids_max = 10\noom_group = true\nproject_pids_max = 50\n",
        );
        let keys = |w: Vec<Wanted>| -> Vec<(&str, &str, String)> {
            w.into_iter().map(|w| (w.key, w.file, w.value)).collect()
        };
        assert_eq!(
            keys(for_gate(&s)),
            [
                ("memory_max", "memory.max", "33554432".to_string()),
                ("pids_max", "pids.max", "10".to_string()),
                ("oom_group", "memory.oom.group", "1".to_string()),
            ]
        );
        assert_eq!(
            keys(for_project(&s)),
            [("project_pids_max", "pids.max", "50".to_string())]
        );
        assert!(for_gate(&settings("")).is_empty());
    }

    #[test]
    fn a_limit_without_its_file_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        // Empty: writes open without truncating (cgroupfs files need none).
        std::fs::write(dir.path().join("pids.max"), "").unwrap();
        let cg = Cgroup::new(dir.path());
        let s = settings("[defaults]\nmemory_max = \"32M\"\npids_max = 10\n");
        apply(&cg, &for_gate(&s));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("pids.max")).unwrap(),
            "10"
        );
        let missing: Vec<String> = not_applied(&cg, &for_gate(&s))
            .into_iter()
            .map(|n| n.key)
            .collect();
        assert_eq!(missing, ["memory_max"]);
    }
}
