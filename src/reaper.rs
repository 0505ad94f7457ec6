//! The reaper's decisions, as a pure function of what a gate looks like now.
//! The daemon observes, calls `step`, and performs what it returns; nothing
//! here touches the kernel, so every path is tested without one.
//!
//! States: running -> suspended (frozen) -> stopping -> killing -> removed,
//! and suspended -> running on touch or thaw. Idle gates are suspended first
//! because a freeze loses nothing; orphans past their grace, deadlines and
//! evictions go straight to stopping, since they need the memory now.

use crate::policy::GateSettings;

/// Why a gate is being reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Idle,
    Orphan,
    Deadline,
    Evicted,
    MemoryBudget,
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::Orphan => "orphan",
            Reason::Deadline => "deadline",
            Reason::Evicted => "evicted",
            Reason::MemoryBudget => "memory-budget",
            Reason::Manual => "manual",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        [
            Reason::Idle,
            Reason::Orphan,
            Reason::Deadline,
            Reason::Evicted,
            Reason::MemoryBudget,
            Reason::Manual,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Where a gate is in its life, as the reaper sees it. Every phase can be
/// read back from cgroupfs after a daemon restart (see `Phase::recover`).
/// Room is left for a `Hibernated` phase (CRIU dump of a frozen gate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Frozen by the reaper (or a person) since this time.
    Suspended {
        since_ms: u64,
    },
    /// stop_signal sent at this time; the tree may exit by itself.
    Stopping {
        since_ms: u64,
        reason: Reason,
    },
    /// Being killed as a whole cgroup.
    Killing {
        reason: Reason,
    },
}

impl Phase {
    /// The reap-intent tag for this phase ("stop:idle:1700000000000").
    pub fn intent_tag(self) -> Option<String> {
        match self {
            Phase::Stopping { since_ms, reason } => {
                Some(format!("stop:{}:{since_ms}", reason.as_str()))
            }
            Phase::Killing { reason } => Some(format!("kill:{}", reason.as_str())),
            _ => None,
        }
    }

    /// The phase a restarted daemon resumes from: the reap-intent tag, else
    /// the kernel's frozen flag (with the time it was frozen, if tagged).
    pub fn recover(
        intent: Option<&str>,
        frozen: bool,
        frozen_ms: Option<u64>,
        now_ms: u64,
    ) -> Phase {
        if let Some(intent) = intent {
            let mut parts = intent.split(':');
            let kind = parts.next();
            let reason = parts.next().and_then(Reason::parse).unwrap_or(Reason::Idle);
            match kind {
                Some("kill") => return Phase::Killing { reason },
                Some("stop") => {
                    let since_ms = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now_ms);
                    return Phase::Stopping { since_ms, reason };
                }
                _ => {}
            }
        }
        if frozen {
            // A freeze we did not record starts its hold now: no cgroup stays
            // frozen forever by accident.
            Phase::Suspended {
                since_ms: frozen_ms.unwrap_or(now_ms),
            }
        } else {
            Phase::Running
        }
    }
}

/// What the reaper needs to know about one gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub populated: bool,
    pub created_ms: u64,
    /// Last real activity: a touch, or CPU use above busy_cpu_percent.
    pub last_active_ms: u64,
    pub orphaned_ms: Option<u64>,
    /// The gate's own deadline (set at spawn), else policy's.
    pub max_runtime_ms: Option<u64>,
    pub pinned: bool,
    /// Using CPU above busy_cpu_percent over the last interval.
    pub busy: bool,
    /// A debugger is attached to one of its processes.
    pub traced: bool,
}

/// Why a gate is left alone although a rule would reap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spared {
    Pinned,
    Traced,
    Busy,
}

impl Spared {
    pub fn as_str(self) -> &'static str {
        match self {
            Spared::Pinned => "pinned",
            Spared::Traced => "a debugger is attached",
            Spared::Busy => "busy (using CPU)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do now. `next` is the earliest time a rule could fire.
    Keep {
        spared: Option<Spared>,
        next: Option<(u64, &'static str)>,
    },
    Suspend(Reason),
    Stop(Reason),
    Kill(Reason),
    /// Empty: every process exited. Remove the cgroup.
    Remove,
}

impl Decision {
    pub fn is_reap(self) -> bool {
        matches!(
            self,
            Decision::Suspend(_) | Decision::Stop(_) | Decision::Kill(_)
        )
    }
}

fn ms(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| d.as_millis() as u64)
}

/// The reaper's rule book.
pub fn step(v: &View, s: &GateSettings, now: u64) -> Decision {
    if !v.populated {
        return Decision::Remove;
    }
    match v.phase {
        // A kill that a restart interrupted is simply done again.
        Phase::Killing { reason } => return Decision::Kill(reason),
        Phase::Stopping { since_ms, reason } => {
            let at = since_ms + s.stop_grace.as_millis() as u64;
            return if now >= at {
                Decision::Kill(reason)
            } else {
                Decision::Keep {
                    spared: None,
                    next: Some((at, "kill")),
                }
            };
        }
        Phase::Running | Phase::Suspended { .. } => {}
    }
    if v.pinned {
        return keep_spared(Spared::Pinned);
    }
    if v.traced {
        return keep_spared(Spared::Traced);
    }
    let deadline = v.max_runtime_ms.map(|m| v.created_ms + m);
    let orphan_at = v.orphaned_ms.zip(ms(s.orphan_grace)).map(|(o, g)| o + g);
    if deadline.is_some_and(|d| now >= d) {
        return Decision::Stop(Reason::Deadline);
    }
    if orphan_at.is_some_and(|o| now >= o) {
        return Decision::Stop(Reason::Orphan);
    }
    let mut next: Vec<(u64, &'static str)> = Vec::new();
    next.extend(deadline.map(|d| (d, "stop: deadline")));
    next.extend(orphan_at.map(|o| (o, "stop: orphaned")));
    let mut spared = None;
    match v.phase {
        Phase::Suspended { since_ms } => {
            let at = since_ms + s.frozen_hold.as_millis() as u64;
            if now >= at {
                return Decision::Stop(Reason::Idle);
            }
            next.push((at, "stop: frozen too long"));
        }
        _ if v.busy => spared = Some(Spared::Busy),
        _ => {
            if let Some(idle) = ms(s.idle_timeout) {
                let at = v.last_active_ms + idle;
                if now >= at {
                    return Decision::Suspend(Reason::Idle);
                }
                next.push((at, "suspend: idle"));
            }
        }
    }
    Decision::Keep {
        spared,
        next: next.into_iter().min_by_key(|(t, _)| *t),
    }
}

fn keep_spared(s: Spared) -> Decision {
    Decision::Keep {
        spared: Some(s),
        next: None,
    }
}

/// A gate that an eviction (a project's gate cap, the memory budget) could
/// take: neither busy, traced, pinned, nor already being torn down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub last_active_ms: u64,
    pub memory_bytes: u64,
    pub evictable: bool,
}

/// The least recently active evictable gates whose memory together covers
/// `need_bytes` (at least one gate when `need_bytes` is 0, for a gate cap).
pub fn pick_victims(candidates: &[Candidate], need_bytes: u64) -> Vec<String> {
    let mut pool: Vec<&Candidate> = candidates.iter().filter(|c| c.evictable).collect();
    pool.sort_by_key(|c| (c.last_active_ms, c.id.clone()));
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in pool {
        if !out.is_empty() && freed >= need_bytes {
            break;
        }
        freed += c.memory_bytes;
        out.push(c.id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    const S: u64 = 1000;
    const MIN: u64 = 60 * S;

    fn settings() -> GateSettings {
        let mut s = Policy::embedded().for_project("/p");
        s.idle_timeout = Some(std::time::Duration::from_secs(30 * 60));
        s.orphan_grace = Some(std::time::Duration::from_secs(5 * 60));
        s.frozen_hold = std::time::Duration::from_secs(60 * 60);
        s.stop_grace = std::time::Duration::from_secs(10);
        s.max_runtime = None;
        s
    }

    fn view() -> View {
        View {
            phase: Phase::Running,
            populated: true,
            created_ms: 0,
            last_active_ms: 0,
            orphaned_ms: None,
            max_runtime_ms: None,
            pinned: false,
            busy: false,
            traced: false,
        }
    }

    #[test]
    fn an_idle_gate_is_suspended_then_stopped_then_killed() {
        let s = settings();
        let v = view();
        assert!(
            matches!(step(&v, &s, 29 * MIN), Decision::Keep { next: Some((t, _)), .. } if t == 30 * MIN)
        );
        assert_eq!(step(&v, &s, 30 * MIN), Decision::Suspend(Reason::Idle));
        let v = View {
            phase: Phase::Suspended { since_ms: 30 * MIN },
            ..v
        };
        assert!(matches!(step(&v, &s, 89 * MIN), Decision::Keep { .. }));
        assert_eq!(step(&v, &s, 90 * MIN), Decision::Stop(Reason::Idle));
        let v = View {
            phase: Phase::Stopping {
                since_ms: 90 * MIN,
                reason: Reason::Idle,
            },
            ..v
        };
        assert!(matches!(
            step(&v, &s, 90 * MIN + 9 * S),
            Decision::Keep { .. }
        ));
        assert_eq!(
            step(&v, &s, 90 * MIN + 10 * S),
            Decision::Kill(Reason::Idle)
        );
        let v = View {
            populated: false,
            ..v
        };
        assert_eq!(step(&v, &s, 90 * MIN + 10 * S), Decision::Remove);
    }

    #[test]
    fn activity_resets_the_idle_clock() {
        let s = settings();
        let v = View {
            last_active_ms: 20 * MIN,
            ..view()
        };
        assert!(matches!(step(&v, &s, 40 * MIN), Decision::Keep { .. }));
        assert_eq!(step(&v, &s, 50 * MIN), Decision::Suspend(Reason::Idle));
    }

    #[test]
    fn busy_pinned_and_traced_gates_are_spared() {
        let s = settings();
        let late = 1000 * MIN;
        let busy = View {
            busy: true,
            ..view()
        };
        assert_eq!(
            step(&busy, &s, late),
            Decision::Keep {
                spared: Some(Spared::Busy),
                next: None
            }
        );
        let pinned = View {
            pinned: true,
            orphaned_ms: Some(0),
            max_runtime_ms: Some(1),
            ..view()
        };
        assert_eq!(step(&pinned, &s, late), keep_spared(Spared::Pinned));
        let traced = View {
            traced: true,
            orphaned_ms: Some(0),
            ..view()
        };
        assert_eq!(step(&traced, &s, late), keep_spared(Spared::Traced));
        // A pinned frozen gate stays frozen, never torn down.
        let frozen = View {
            phase: Phase::Suspended { since_ms: 0 },
            pinned: true,
            ..view()
        };
        assert_eq!(step(&frozen, &s, late), keep_spared(Spared::Pinned));
    }

    #[test]
    fn orphans_and_deadlines_skip_the_freeze_even_when_busy() {
        let s = settings();
        let orphan = View {
            busy: true,
            orphaned_ms: Some(10 * MIN),
            last_active_ms: 14 * MIN,
            ..view()
        };
        assert!(
            matches!(step(&orphan, &s, 14 * MIN), Decision::Keep { next: Some((t, _)), .. } if t == 15 * MIN)
        );
        assert_eq!(step(&orphan, &s, 15 * MIN), Decision::Stop(Reason::Orphan));
        let runner = View {
            busy: true,
            max_runtime_ms: Some(5 * MIN),
            ..view()
        };
        assert_eq!(step(&runner, &s, 5 * MIN), Decision::Stop(Reason::Deadline));
        let frozen_orphan = View {
            phase: Phase::Suspended { since_ms: 0 },
            orphaned_ms: Some(0),
            ..view()
        };
        assert_eq!(
            step(&frozen_orphan, &s, 5 * MIN),
            Decision::Stop(Reason::Orphan)
        );
    }

    #[test]
    fn never_means_never() {
        let mut s = settings();
        s.idle_timeout = None;
        s.orphan_grace = None;
        let v = View {
            orphaned_ms: Some(0),
            ..view()
        };
        assert_eq!(
            step(&v, &s, u64::MAX / 2),
            Decision::Keep {
                spared: None,
                next: None
            }
        );
    }

    #[test]
    fn a_restart_resumes_from_tags_and_the_frozen_flag() {
        assert_eq!(Phase::recover(None, false, None, 5), Phase::Running);
        assert_eq!(
            Phase::recover(None, true, Some(3), 5),
            Phase::Suspended { since_ms: 3 }
        );
        assert_eq!(
            Phase::recover(None, true, None, 5),
            Phase::Suspended { since_ms: 5 }
        );
        let stop = Phase::Stopping {
            since_ms: 4,
            reason: Reason::Orphan,
        };
        assert_eq!(
            Phase::recover(stop.intent_tag().as_deref(), true, None, 9),
            stop
        );
        let kill = Phase::Killing {
            reason: Reason::Deadline,
        };
        assert_eq!(
            Phase::recover(kill.intent_tag().as_deref(), false, None, 9),
            kill
        );
        // A killing gate that a restart finds is killed again, whatever else holds.
        let v = View {
            phase: kill,
            pinned: true,
            ..view()
        };
        assert_eq!(step(&v, &settings(), 0), Decision::Kill(Reason::Deadline));
    }

    #[test]
    fn victims_are_the_least_recently_active_evictable_gates() {
        let c = |id: &str, t: u64, m: u64, e: bool| Candidate {
            id: id.into(),
            last_active_ms: t,
            memory_bytes: m,
            evictable: e,
        };
        let gates = [
            c("busy", 0, 100, false),
            c("old", 1, 10, true),
            c("mid", 2, 50, true),
            c("new", 3, 70, true),
        ];
        assert_eq!(pick_victims(&gates, 0), ["old"]);
        assert_eq!(pick_victims(&gates, 55), ["old", "mid"]);
        assert_eq!(pick_victims(&gates, 1000), ["old", "mid", "new"]);
        assert!(pick_victims(&[c("pinned", 0, 1, false)], 0).is_empty());
    }
}
