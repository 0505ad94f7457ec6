//! The periodic pass: adopt gates made elsewhere, notice vanished ones, say
//! to each gate's owner what the pass saw, and measure memory where relief
//! (the memory budget) or metrics need it.
//! The scan decides nothing about one gate: its owner does.
//!
//! With inotify, a pass asks no gate to read its files unless they changed
//! (the owner hears of that at once), and asks for per-gate CPU only when
//! gov's whole tree, or the gate's project, used enough CPU that some gate
//! could be busy; a gate whose next deadline lies ahead is skipped. So an
//! idle host's scans cost almost nothing per gate. Every tenth pass (and
//! every pass without inotify) is full: every gate reads everything, in case
//! a notification was lost.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::gate::{self, now_ms, GateDir, Tags};
use crate::policy::Policy;
use crate::protocol::EventKind;

use super::host::DAEMON_LEAF;
use super::lifecycle::{Cmd, Gate, Handle, Observation};
use super::{lock, Daemon};

/// How long one pass may spend measuring memory (on the blocking pool);
/// gates it did not reach keep their older figure and come first next time.
const MEASURE_PASS_BOUND: Duration = Duration::from_secs(2);

/// A metrics request keeps the scans measuring memory for this long.
pub const METRICS_INTEREST_MS: u64 = 60_000;

/// Previous cpu.stat usage samples: (usage_usec, at_ms).
#[derive(Default)]
pub struct CpuSamples {
    root: Option<(u64, u64)>,
    projects: HashMap<String, (u64, u64)>,
}

impl Daemon {
    pub(super) async fn scan(self: &Arc<Self>) {
        let pass = self.scans.fetch_add(1, Ordering::Relaxed);
        let full = pass % 10 == 0
            || self.watcher.is_none()
            || self.full_scan_asked.swap(false, Ordering::Relaxed);
        if full {
            self.walk();
        }
        let policy = self.policy();
        let now = now_ms();
        let tree_cpu = self.tree_cpu_percent(now);
        // Only when the tree as a whole is using CPU: which projects are.
        let project_cpu = if tree_cpu.is_some_and(|p| p < 0.5) {
            HashMap::new()
        } else {
            self.project_cpu_percents(now)
        };
        self.gates.each(|handle, g| {
            let threshold = g.settings().busy_cpu_percent;
            // The tree's and the project's totals bound every gate's share:
            // below the threshold, no gate in them can be busy.
            let below = |p: Option<f64>| p.is_some_and(|p| p < threshold);
            let project = project_cpu.get(&g.dir.project_key).copied().flatten();
            let measure_cpu = full || !(below(tree_cpu) || below(project));
            let nothing_due = g.next.is_some_and(|n| n.at_ms > now) && !g.busy;
            if full || measure_cpu || !nothing_due {
                handle.observe(Observation {
                    now,
                    full,
                    measure_cpu,
                    policy: policy.clone(),
                });
            }
        });
        self.measure_memory(policy, now);
        // MemAvailable is one file: relief reads it at every pass (PSI
        // wakes it by itself).
        self.relief.poke();
    }

    /// Measures the gates' memory on the blocking pool, oldest figure first,
    /// for at most MEASURE_PASS_BOUND, and publishes each figure to its
    /// gate; then asks relief to weigh them against the budget. Only when someone
    /// reads the figures (a budget, a scrape endpoint, a metrics request in
    /// the last minute), so an idle host's scans stay free, and one
    /// measurement at a time: a pass that finds one still running leaves it.
    fn measure_memory(self: &Arc<Self>, policy: Arc<Policy>, now: u64) {
        let g = &policy.global;
        let asked = self.metrics_asked_ms.load(Ordering::Relaxed);
        let wanted = g.memory_budget.is_some()
            || g.metrics_listen.is_some()
            || (asked > 0 && now.saturating_sub(asked) < METRICS_INTEREST_MS);
        if !wanted || self.measuring.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut gates: Vec<(Handle, GateDir, u64)> = Vec::new();
        self.gates.each(|h, g| {
            gates.push((h.clone(), g.dir.clone(), h.memory().map_or(0, |m| m.at_ms)));
        });
        gates.sort_unstable_by_key(|g| g.2);
        let d = self.clone();
        tokio::spawn(async move {
            d.measure_now(gates.into_iter().map(|(h, dir, _)| (h, dir)).collect())
                .await;
            d.measuring.store(false, Ordering::Release);
            // Over the budget, relief frees memory from idle gates.
            d.relief.poke();
        });
    }

    /// Measures these gates' memory now on the blocking pool, in this order,
    /// for at most MEASURE_PASS_BOUND, and publishes each figure to its gate.
    pub(super) async fn measure_now(&self, gates: Vec<(Handle, GateDir)>) {
        let measured = tokio::task::spawn_blocking(move || {
            let end = Instant::now() + MEASURE_PASS_BOUND;
            for (handle, dir) in gates {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                let deadline = end.min(now + gate::MEMORY_READ_BOUND);
                handle.set_memory(gate::Measured::now(&dir, deadline));
            }
        })
        .await;
        if let Err(e) = measured {
            tracing::error!("memory measurement failed: {e}");
        }
    }

    /// Starts managing a gate: its owner, its event-file watch, its entry.
    pub(super) fn manage(self: &Arc<Self>, gate: Gate) {
        let id = gate.id().to_string();
        if let Some(w) = &self.watcher {
            w.add(&gate.dir);
        }
        let handle = super::lifecycle::start(&self.owners, gate);
        self.gates.insert(id, handle);
    }

    /// Walks gov's tree: adopts gates made elsewhere (root's direct spawns,
    /// a previous daemon); a gate whose cgroup is gone hears of it from its
    /// owner's next read.
    fn walk(self: &Arc<Self>) {
        let dirs = match self.tree.gates() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("cannot list gates: {e}");
                return;
            }
        };
        let present: HashSet<&str> = dirs.iter().map(|d| d.id.as_str()).collect();
        for dir in &dirs {
            if self.gates.contains(&dir.id) {
                continue;
            }
            // No tags yet: caught between mkdir and tagging; next pass.
            let Ok(Some(tags)) = Tags::read(&dir.cgroup) else {
                continue;
            };
            self.journal
                .record(&tags, &dir.id, EventKind::Adopted, None, None);
            self.manage(Gate::found(
                dir.clone(),
                tags,
                &*self.owners.kernel,
                self.policy(),
            ));
        }
        for (id, _) in self.gates.handles() {
            if !present.contains(id.as_str()) {
                self.gates.send(&id, Cmd::Changed);
            }
        }
    }

    /// CPU use of gov's whole tree since the last pass, in percent of one
    /// CPU; None on the first pass.
    fn tree_cpu_percent(&self, now: u64) -> Option<f64> {
        // Less the daemon's own leaf: its scans are not gate activity.
        let own = self
            .tree
            .root
            .child(DAEMON_LEAF)
            .read_cpu_usage_usec()
            .unwrap_or(0);
        let usage = self
            .tree
            .root
            .read_cpu_usage_usec()
            .ok()?
            .saturating_sub(own);
        let mut samples = lock(&self.cpu);
        let previous = samples.root.replace((usage, now));
        crate::cgroup::cpu_percent(previous, usage, now)
    }

    /// CPU use of each project with gates since the last pass, in percent
    /// of one CPU (None for a project seen the first time).
    fn project_cpu_percents(&self, now: u64) -> HashMap<String, Option<f64>> {
        let mut keys: HashSet<String> = HashSet::new();
        self.gates.each(|_, g| {
            if !keys.contains(&g.dir.project_key) {
                keys.insert(g.dir.project_key.clone());
            }
        });
        let mut samples = lock(&self.cpu);
        samples.projects.retain(|k, _| keys.contains(k));
        keys.into_iter()
            .filter_map(|key| {
                let usage = self.tree.root.child(&key).read_cpu_usage_usec().ok()?;
                let previous = samples.projects.insert(key.clone(), (usage, now));
                Some((key, crate::cgroup::cpu_percent(previous, usage, now)))
            })
            .collect()
    }
}
