//! Memory relief's decisions: whether the host needs memory back, and which
//! idle gate gives what next, lossless rungs first. Pure functions of what
//! the daemon sampled and of its gates' views; `daemon::relief` performs
//! them, one step at a time, and samples again after each.
//!
//! The ladder (docs/design.md, "Relief under memory pressure"):
//! 1. hibernate an idle gate that can be (its memory goes to disk, whole:
//!    better than swap, which is small and still RAM where it is zram);
//! 2. push a suspended gate's memory to swap (`memory.reclaim`);
//! 3. suspend an idle running gate and push its memory to swap;
//! 4. stop an idle gate, only where the policy allows it.
//!
//! Within a rung the least recently active gate goes first. Busy, pinned
//! and traced gates, and gates being torn down, are never chosen.

use std::collections::{BTreeMap, HashSet};

pub use crate::protocol::Rung;

/// A running gate counts as idle for relief once this long without
/// activity: a gate that ran a moment ago is likely to run again, and
/// freezing it only to thaw it would be thrashing.
pub const MIN_IDLE_MS: u64 = 30_000;

/// Less than this left in RAM is not worth a step.
pub const MIN_BYTES: u64 = 1 << 20;

/// Why relief is needed now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Trigger {
    /// Share of time (0..=1) some task stalled on memory, over the last
    /// sample, at or above the policy's `memory_pressure`.
    Pressure(f64),
    /// MemAvailable (bytes) under the policy's `memory_available_min`.
    Available(u64),
    /// All gates together hold this many bytes over `memory_budget`.
    Budget(u64),
}

impl Trigger {
    /// Words for events and `gov status`.
    pub fn describe(&self, total_bytes: u64) -> String {
        match *self {
            Trigger::Pressure(share) => format!("memory pressure {:.0}%", share * 100.0),
            Trigger::Available(bytes) => format!(
                "MemAvailable {}%",
                (bytes as f64 * 100.0 / total_bytes.max(1) as f64).round()
            ),
            Trigger::Budget(over) => format!("memory budget exceeded by {over} bytes"),
        }
    }

    /// What relief may do for this trigger. The budget's relief stops
    /// gates as the budget always did (last now, not first), and weighs
    /// every gate that is not busy, whatever it holds, as it did: the
    /// budget is a line an admin drew. The host's relief stops only where
    /// `pressure_stop` allows it, and leaves a gate that ran in the last
    /// MIN_IDLE_MS, or holds under MIN_BYTES, alone.
    pub fn means(&self, reclaim: bool, pressure_stop: bool) -> Means {
        let budget = matches!(self, Trigger::Budget(_));
        Means {
            reclaim,
            stop: budget || pressure_stop,
            min_idle_ms: if budget { 0 } else { MIN_IDLE_MS },
            min_bytes: if budget { 1 } else { MIN_BYTES },
        }
    }

    /// The reason a gate stopped on the last rung is reaped for.
    pub fn reason(&self) -> crate::protocol::Reason {
        match self {
            Trigger::Budget(_) => crate::protocol::Reason::MemoryBudget,
            _ => crate::protocol::Reason::MemoryPressure,
        }
    }
}

/// What the daemon read of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Share of time some task stalled on memory since the last sample
    /// (None: no PSI here, or no earlier sample).
    pub pressure: Option<f64>,
    pub available_bytes: u64,
    /// What the gates hold together, and the policy's budget.
    pub gates_bytes: u64,
}

/// The policy's limits, resolved to numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    /// `memory_pressure` as a share (0..=1); None: off.
    pub pressure: Option<f64>,
    /// `memory_available_min` in bytes; None: off.
    pub available_min: Option<u64>,
    pub budget: Option<u64>,
}

/// Whether relief is needed, and why; None once every trigger cleared.
/// The host's own shortage comes first: it is what an OOM kill follows.
pub fn needed(s: &Sample, l: &Limits) -> Option<Trigger> {
    if let (Some(min), avail) = (l.available_min, s.available_bytes) {
        if avail < min {
            return Some(Trigger::Available(avail));
        }
    }
    if let (Some(limit), Some(share)) = (l.pressure, s.pressure) {
        if share >= limit {
            return Some(Trigger::Pressure(share));
        }
    }
    match l.budget {
        Some(budget) if s.gates_bytes > budget => Some(Trigger::Budget(s.gates_bytes - budget)),
        _ => None,
    }
}

/// How a gate holds its memory, as relief weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// Running (or running because input woke it).
    Running,
    /// Frozen (by the reaper or a person); `reclaimed`: its memory was
    /// pushed out since it was frozen, and nothing has run since.
    Suspended { reclaimed: bool },
    /// On disk, in a hibernation step, or being torn down: nothing to give.
    Elsewhere,
}

/// One gate as relief sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub uid: u32,
    pub held: Held,
    pub last_active_ms: u64,
    /// Resident memory as last measured (not what is in swap).
    pub resident_bytes: u64,
    /// Neither busy, pinned, traced, nor being torn down
    /// (`reaper::may_yield`).
    pub may_yield: bool,
    /// Spawned with `--hibernate`, CRIU is here, and no dump of it was
    /// refused since it last ran.
    pub hibernatable: bool,
    /// Idle past its `idle_timeout` (the reaper would suspend it now).
    pub idle_past_timeout: bool,
}

/// What this host lets relief do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Means {
    /// memory.reclaim exists and there is swap to push memory to.
    pub reclaim: bool,
    /// The last rung is allowed.
    pub stop: bool,
    /// A running gate is idle once this long without activity.
    pub min_idle_ms: u64,
    /// Less than this in RAM is not worth a step.
    pub min_bytes: u64,
}

/// The next step: which gate, and on which rung. Lower rungs first; in a
/// rung the least recently active gate first (ties by id, so the order is
/// total). `tried`: steps taken already in this episode, not taken again
/// (one that changed nothing would be chosen forever). None: nothing left
/// that relief may take.
pub fn next(
    gates: &[Candidate],
    means: Means,
    now_ms: u64,
    tried: &HashSet<(String, Rung)>,
) -> Option<(String, Rung)> {
    Rung::ALL.into_iter().find_map(|rung| {
        gates
            .iter()
            .filter(|c| c.may_yield && c.resident_bytes >= means.min_bytes)
            .filter(|c| fits(c, rung, means, now_ms))
            .filter(|c| !tried.contains(&(c.id.clone(), rung)))
            .min_by_key(|c| (c.last_active_ms, c.id.as_str()))
            .map(|c| (c.id.clone(), rung))
    })
}

fn fits(c: &Candidate, rung: Rung, means: Means, now_ms: u64) -> bool {
    let idle = now_ms.saturating_sub(c.last_active_ms) >= means.min_idle_ms;
    match (rung, c.held) {
        (Rung::Hibernate, Held::Suspended { .. }) => c.hibernatable,
        // Idle enough to be suspended (rung 3) is idle enough to be dumped:
        // better on disk whole than in swap, and then dumped from there.
        (Rung::Hibernate, Held::Running) => c.hibernatable && (c.idle_past_timeout || idle),
        (Rung::Reclaim, Held::Suspended { reclaimed }) => means.reclaim && !reclaimed,
        (Rung::SuspendReclaim, Held::Running) => means.reclaim && idle,
        (Rung::Stop, Held::Suspended { .. }) => means.stop,
        (Rung::Stop, Held::Running) => means.stop && idle,
        _ => false,
    }
}

/// The budget's relief takes only from users over their fair share of it
/// (`reaper::fair_share`): what one user pins never costs another user a
/// gate. The candidates of those users, or all of them when the budget is
/// not exceeded.
pub fn over_their_share(gates: &[Candidate], budget: u64) -> Vec<Candidate> {
    let mut by_user: BTreeMap<u32, u64> = BTreeMap::new();
    for c in gates {
        *by_user.entry(c.uid).or_default() += c.resident_bytes;
    }
    let usage: Vec<u64> = by_user.values().copied().collect();
    let Some(share) = crate::reaper::fair_share(&usage, budget) else {
        return gates.to_vec();
    };
    gates
        .iter()
        .filter(|c| by_user.get(&c.uid).is_some_and(|&u| u > share))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 100 * HOUR;
    const MB: u64 = 1 << 20;
    const ALL_MEANS: Means = Means {
        reclaim: true,
        stop: true,
        min_idle_ms: MIN_IDLE_MS,
        min_bytes: MIN_BYTES,
    };

    fn gate(id: &str, held: Held, idle_ms: u64) -> Candidate {
        Candidate {
            id: id.into(),
            uid: 1000,
            held,
            last_active_ms: NOW - idle_ms,
            resident_bytes: 100 * MB,
            may_yield: true,
            hibernatable: false,
            idle_past_timeout: false,
        }
    }

    const SUSPENDED: Held = Held::Suspended { reclaimed: false };
    const RECLAIMED: Held = Held::Suspended { reclaimed: true };
    const HOUR: u64 = 3_600_000;

    /// Carries out the ladder as the daemon would (each step changes the
    /// gate as the kernel would), and gives the order of the steps.
    fn run_ladder(mut gates: Vec<Candidate>, means: Means) -> Vec<(String, Rung)> {
        let mut steps = Vec::new();
        while let Some((id, rung)) = next(&gates, means, NOW, &HashSet::new()) {
            let c = gates.iter_mut().find(|c| c.id == id).unwrap();
            match rung {
                Rung::Hibernate | Rung::Stop => c.held = Held::Elsewhere,
                Rung::Reclaim | Rung::SuspendReclaim => {
                    c.held = RECLAIMED;
                    c.resident_bytes = 0;
                }
            }
            steps.push((id, rung));
            assert!(steps.len() <= 20, "the ladder does not end: {steps:?}");
        }
        steps
    }

    #[test]
    fn lossless_rungs_come_first_and_the_idlest_gate_first_within_a_rung() {
        let hib = |id, held, idle| Candidate {
            hibernatable: true,
            idle_past_timeout: idle >= HOUR,
            ..gate(id, held, idle)
        };
        let gates = vec![
            gate("run-fresh", Held::Running, 5_000),
            gate("run-idle", Held::Running, 10 * 60_000),
            gate("susp-new", SUSPENDED, 2 * HOUR),
            gate("susp-old", SUSPENDED, 5 * HOUR),
            hib("hib-susp", SUSPENDED, 3 * HOUR),
            hib("hib-run", Held::Running, 2 * HOUR),
            // Idle past relief's floor, not past its idle_timeout.
            hib("hib-lately", Held::Running, 2 * MIN_IDLE_MS),
            hib("hib-fresh", Held::Running, MIN_IDLE_MS / 2),
            gate("on-disk", Held::Elsewhere, 9 * HOUR),
        ];
        let order: Vec<(&str, Rung)> = vec![
            ("hib-susp", Rung::Hibernate),
            ("hib-run", Rung::Hibernate),
            ("hib-lately", Rung::Hibernate),
            ("susp-old", Rung::Reclaim),
            ("susp-new", Rung::Reclaim),
            ("run-idle", Rung::SuspendReclaim),
        ];
        let want: Vec<(String, Rung)> = order.iter().map(|(i, r)| (i.to_string(), *r)).collect();
        let means = Means {
            stop: false,
            ..ALL_MEANS
        };
        assert_eq!(run_ladder(gates.clone(), means), want);
        // With stopping allowed, nothing changes: what was reclaimed holds
        // less than MIN_BYTES, and a gate that ran a moment ago is spared.
        assert_eq!(run_ladder(gates, ALL_MEANS), want);
    }

    #[test]
    fn busy_pinned_and_traced_gates_are_never_chosen() {
        // may_yield is false for each of them (reaper::may_yield).
        let held_back = |id, held| Candidate {
            may_yield: false,
            hibernatable: true,
            idle_past_timeout: true,
            ..gate(id, held, 9 * HOUR)
        };
        let gates = vec![
            held_back("busy", Held::Running),
            held_back("pinned", SUSPENDED),
            held_back("traced", Held::Running),
        ];
        assert_eq!(next(&gates, ALL_MEANS, NOW, &HashSet::new()), None);
        let mut with_one = gates.clone();
        with_one.push(gate("idle", SUSPENDED, 60_000));
        assert_eq!(
            run_ladder(with_one, ALL_MEANS),
            [("idle".to_string(), Rung::Reclaim)]
        );
    }

    #[test]
    fn without_swap_or_criu_only_what_is_there_is_used() {
        let gates = vec![
            gate("susp", SUSPENDED, HOUR),
            gate("run", Held::Running, HOUR),
        ];
        let none = Means {
            reclaim: false,
            stop: false,
            ..ALL_MEANS
        };
        assert_eq!(
            next(&gates, none, NOW, &HashSet::new()),
            None,
            "nothing lossless here"
        );
        let stop_only = Means {
            reclaim: false,
            ..ALL_MEANS
        };
        assert_eq!(
            run_ladder(gates, stop_only),
            vec![
                ("run".to_string(), Rung::Stop),
                ("susp".to_string(), Rung::Stop)
            ]
        );
    }

    #[test]
    fn a_step_that_changed_nothing_is_not_taken_again() {
        // It read during its freeze, so it still runs: the next rung is
        // tried, then nothing.
        let gates = vec![gate("run", Held::Running, HOUR)];
        let mut tried = HashSet::new();
        let step = |tried: &HashSet<_>| next(&gates, ALL_MEANS, NOW, tried);
        assert_eq!(step(&tried), Some(("run".into(), Rung::SuspendReclaim)));
        tried.insert(("run".to_string(), Rung::SuspendReclaim));
        assert_eq!(step(&tried), Some(("run".into(), Rung::Stop)));
        tried.insert(("run".to_string(), Rung::Stop));
        assert_eq!(step(&tried), None);
    }

    #[test]
    fn a_gate_with_little_in_ram_is_left_alone() {
        let mut small = gate("small", SUSPENDED, HOUR);
        small.resident_bytes = MIN_BYTES - 1;
        assert_eq!(next(&[small], ALL_MEANS, NOW, &HashSet::new()), None);
    }

    #[test]
    fn relief_stops_when_the_trigger_clears() {
        let limits = Limits {
            pressure: Some(0.10),
            available_min: Some(500 * MB),
            budget: None,
        };
        let calm = Sample {
            pressure: Some(0.02),
            available_bytes: 4000 * MB,
            gates_bytes: 0,
        };
        assert_eq!(needed(&calm, &limits), None);
        let stalled = Sample {
            pressure: Some(0.25),
            ..calm
        };
        assert_eq!(needed(&stalled, &limits), Some(Trigger::Pressure(0.25)));
        let short = Sample {
            available_bytes: 100 * MB,
            ..stalled
        };
        assert_eq!(needed(&short, &limits), Some(Trigger::Available(100 * MB)));
        // Exactly at the floor is not under it; no PSI reading is no
        // pressure; off is off.
        let at_floor = Sample {
            pressure: None,
            available_bytes: 500 * MB,
            gates_bytes: 0,
        };
        assert_eq!(needed(&at_floor, &limits), None);
        assert_eq!(needed(&short, &Limits::default()), None);
        // The budget, on what the gates hold.
        let budget = Limits {
            budget: Some(300 * MB),
            ..Limits::default()
        };
        let over = Sample {
            gates_bytes: 400 * MB,
            ..calm
        };
        assert_eq!(needed(&over, &budget), Some(Trigger::Budget(100 * MB)));
        // The budget stops last, as it always stopped, and counts any gate
        // that is not busy as idle; the host's pressure only where allowed.
        let budget_means = Trigger::Budget(1).means(false, false);
        assert!(budget_means.stop);
        assert_eq!((budget_means.min_idle_ms, budget_means.min_bytes), (0, 1));
        assert!(!Trigger::Pressure(0.5).means(false, false).stop);
        assert!(Trigger::Available(1).means(false, true).stop);
        assert_eq!(
            Trigger::Pressure(0.5).means(true, true).min_idle_ms,
            MIN_IDLE_MS
        );
    }

    #[test]
    fn the_budget_takes_only_from_users_over_their_share() {
        // (id, uid, last active, MiB, may yield); suspended, no swap here:
        // the budget's ladder is its last rung.
        let c = |id: &str, uid: u32, t: u64, mb: u64, may_yield: bool| Candidate {
            uid,
            last_active_ms: t,
            resident_bytes: mb * MB,
            may_yield,
            ..gate(id, SUSPENDED, 0)
        };
        let budget = |gates: &[Candidate], mb: u64| {
            let means = Trigger::Budget(1).means(false, false);
            next(
                &over_their_share(gates, mb * MB),
                means,
                NOW,
                &HashSet::new(),
            )
            .map(|(id, _)| id)
        };
        let (a, b) = (1000, 1001);
        // B's pinned gate is over the budget on its own; A's idle gate is
        // within A's share and stays.
        let pinned_b = [
            c("a-idle", a, 5, 100, true),
            c("b-pinned", b, 0, 200, false),
        ];
        assert_eq!(budget(&pinned_b, 250), None);
        // One user alone: their least recently active gate that may yield.
        let one = [
            c("busy", a, 0, 400, false),
            c("old", a, 1, 10, true),
            c("new", a, 2, 10, true),
        ];
        assert_eq!(budget(&one, 100).as_deref(), Some("old"));
        // The heaviest user can give nothing up: the next one over their
        // share does, never one within it.
        let stuck = [
            c("b-pinned", b, 0, 300, false),
            c("a-1", a, 1, 100, true),
            c("a-2", a, 2, 100, true),
            c("small", 1002, 0, 10, true),
        ];
        assert_eq!(budget(&stuck, 250).as_deref(), Some("a-1"));
        let stuck = [
            c("b-pinned", b, 0, 300, false),
            c("a-1", a, 1, 100, true),
            c("small", 1002, 0, 10, true),
        ];
        assert_eq!(budget(&stuck, 250), None);
        // Within the budget, every gate is weighed as the host's relief
        // weighs it.
        assert_eq!(over_their_share(&one, 1000 * MB).len(), 3);
    }
}
