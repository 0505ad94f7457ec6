//! The reaper's decisions, as a pure function of what a gate looks like now.
//! The daemon observes, calls `step`, and performs what it returns; nothing
//! here touches the kernel, so every path is tested without one.
//!
//! States: running -> suspended (frozen) -> stopping -> killing -> removed,
//! and suspended -> running on touch or thaw. A person's freeze is held
//! until thawed: the idle rules never end it. Idle gates are suspended first
//! because a freeze loses nothing; orphans past their grace, deadlines and
//! evictions go straight to stopping, since they need the memory now.

use crate::policy::{GateSettings, OnLimit};
pub use crate::protocol::{GateState, Next, NextAction, Reason, Spared};

/// Where a gate is in its life: the one state of a gate, kept by its owner
/// and written with the tags that say it (`record::Record::enter`), so a
/// restarted daemon reads it back (`record::phase_of`). Hibernation's steps,
/// a refused dump and a step a dead daemon left are phases too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Frozen since this time: by the reaper, or by a person (`manual`).
    Suspended {
        since_ms: u64,
        manual: bool,
    },
    /// Suspended by the reaper, and its last dump was refused (why): not
    /// dumped again until it ran.
    DumpRefused {
        since_ms: u64,
        reason: String,
    },
    /// Being dumped to disk (frozen since `since_ms`). Found so at rest, a
    /// daemon died during the dump: it is finished or undone first.
    Dumping {
        since_ms: u64,
    },
    /// Dumped to disk with CRIU since this time: no worker processes, no
    /// RAM; its keeper holds the host's pid and stdio. A touch restores it.
    Hibernated {
        since_ms: u64,
        image_bytes: u64,
    },
    /// Being restored; found so at rest, finished or undone first.
    Restoring {
        since_ms: u64,
    },
    /// Running because input woke it, not because it was active: suspended
    /// again at `until_ms` unless it was active meanwhile. Its idle clock
    /// (`last_active_ms`) goes on meanwhile (`idle_bound`).
    Woken {
        until_ms: u64,
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
    pub fn intent_tag(&self) -> Option<String> {
        match self {
            Phase::Stopping { since_ms, reason } => {
                Some(format!("stop:{}:{since_ms}", reason.as_str()))
            }
            Phase::Killing { reason } => Some(format!("kill:{}", reason.as_str())),
            _ => None,
        }
    }

    /// The phase a reap-intent tag says, if it says one.
    pub fn from_intent(intent: &str, now_ms: u64) -> Option<Phase> {
        let mut parts = intent.split(':');
        let kind = parts.next();
        let reason = parts.next().and_then(Reason::parse).unwrap_or(Reason::Idle);
        match kind {
            Some("kill") => Some(Phase::Killing { reason }),
            Some("stop") => {
                let since_ms = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now_ms);
                Some(Phase::Stopping { since_ms, reason })
            }
            _ => None,
        }
    }

    /// What `ps`, `show`, `events` and `metrics` call this phase: the one
    /// place it is derived. `Restoring` is `running`: its worker runs (a
    /// lazy restore's memory still streams in), and a touch is answered.
    pub fn state(&self, populated: bool) -> GateState {
        match self {
            Phase::Stopping { .. } => GateState::Stopping,
            Phase::Killing { .. } => GateState::Killing,
            _ if !populated => GateState::Exited,
            Phase::Suspended { manual: true, .. } => GateState::Frozen,
            Phase::Suspended { manual: false, .. }
            | Phase::DumpRefused { .. }
            | Phase::Dumping { .. } => GateState::Suspended,
            Phase::Hibernated { .. } => GateState::Hibernated,
            Phase::Running | Phase::Woken { .. } | Phase::Restoring { .. } => GateState::Running,
        }
    }

    /// Being torn down: too late for a touch or a thaw.
    pub fn is_reaping(&self) -> bool {
        matches!(self, Phase::Stopping { .. } | Phase::Killing { .. })
    }

    /// A hibernation step: at rest, one a dead daemon left.
    pub fn in_hibernation_step(&self) -> bool {
        matches!(self, Phase::Dumping { .. } | Phase::Restoring { .. })
    }

    /// Frozen (by the reaper or a person) or on disk: a touch brings it back.
    pub fn is_asleep(&self) -> bool {
        matches!(
            self,
            Phase::Suspended { .. } | Phase::DumpRefused { .. } | Phase::Hibernated { .. }
        )
    }

    /// Since when it has been frozen or on disk.
    pub fn asleep_since(&self) -> Option<u64> {
        match self {
            Phase::Suspended { since_ms, .. }
            | Phase::DumpRefused { since_ms, .. }
            | Phase::Dumping { since_ms }
            | Phase::Hibernated { since_ms, .. }
            | Phase::Restoring { since_ms } => Some(*since_ms),
            _ => None,
        }
    }
}

/// Whether a gate may be made to give way (evicted for a project's cap,
/// stopped for the memory budget): not torn down already, not in a
/// hibernation step (a restore whose memory still streams in was just
/// woken for use), not busy, not pinned, and spared by no rule (a
/// debugger, ...). The one rule of it.
pub fn may_yield(phase: &Phase, busy: bool, pinned: bool, spared: Option<Spared>) -> bool {
    !phase.is_reaping() && !phase.in_hibernation_step() && !busy && !pinned && spared.is_none()
}

/// What the reaper needs to know about one gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub populated: bool,
    pub created_ms: u64,
    /// Last real activity: a touch, or CPU use above busy_cpu_percent.
    pub last_active_ms: u64,
    pub orphaned_ms: Option<u64>,
    /// When the main process exited, if on_main_exit is "stop" for it.
    pub main_exit_stop_ms: Option<u64>,
    /// The gate's own deadline (set at spawn), else policy's.
    pub max_runtime_ms: Option<u64>,
    pub pinned: bool,
    /// Using CPU above busy_cpu_percent over the last interval.
    pub busy: bool,
    /// A debugger is attached to one of its processes.
    pub traced: bool,
    /// It can be hibernated: it runs under a keeper and CRIU is here.
    pub hibernatable: bool,
    /// When input last woke it: a dump waits hibernate_after past that.
    pub last_input_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do now. `next` is the earliest time a rule could fire.
    Keep {
        spared: Option<Spared>,
        next: Option<Next>,
    },
    Suspend(Reason),
    /// Dump the suspended gate to disk (it stays restorable).
    Hibernate,
    Stop(Reason),
    Kill(Reason),
    /// Empty: every process exited. Remove the cgroup.
    Remove,
}

impl Decision {
    pub fn is_reap(self) -> bool {
        matches!(
            self,
            Decision::Suspend(_) | Decision::Hibernate | Decision::Stop(_) | Decision::Kill(_)
        )
    }
}

fn ms(d: Option<std::time::Duration>) -> Option<u64> {
    d.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn next(action: NextAction, at_ms: u64) -> Next {
    Next { action, at_ms }
}

/// The reaper's rule book. Times add saturating: a deadline past the end of
/// time is never, not a wrap into the past.
pub fn step(v: &View, s: &GateSettings, now: u64) -> Decision {
    if !v.populated {
        return Decision::Remove;
    }
    match v.phase {
        // A kill that a restart interrupted is simply done again.
        Phase::Killing { reason } => return Decision::Kill(reason),
        // Its owner finishes the step before it asks.
        Phase::Dumping { .. } | Phase::Restoring { .. } => {
            return Decision::Keep {
                spared: None,
                next: None,
            }
        }
        Phase::Stopping { since_ms, reason } => {
            let at = since_ms.saturating_add(ms(Some(s.stop_grace)).unwrap_or(0));
            return if now >= at {
                Decision::Kill(reason)
            } else {
                Decision::Keep {
                    spared: None,
                    next: Some(next(NextAction::Kill, at)),
                }
            };
        }
        Phase::Running
        | Phase::Suspended { .. }
        | Phase::DumpRefused { .. }
        | Phase::Woken { .. }
        | Phase::Hibernated { .. } => {}
    }
    // A pin is the owner's own word (only they, an admin or root may pin a
    // gate), so it spares the gate from every rule.
    if v.pinned {
        return keep_spared(Spared::Pinned);
    }
    let deadline = v.max_runtime_ms.map(|m| v.created_ms.saturating_add(m));
    let orphan_at = v
        .orphaned_ms
        .zip(ms(s.orphan_grace))
        .map(|(o, g)| o.saturating_add(g));
    if deadline.is_some_and(|d| now >= d) {
        return Decision::Stop(Reason::Deadline);
    }
    if orphan_at.is_some_and(|o| now >= o) {
        return Decision::Stop(Reason::Orphan);
    }
    let main_exit_at = v
        .main_exit_stop_ms
        .map(|t| t.saturating_add(ms(Some(s.main_exit_grace)).unwrap_or(0)));
    if main_exit_at.is_some_and(|t| now >= t) {
        return Decision::Stop(Reason::MainExit);
    }
    let mut soonest: Vec<Next> = Vec::new();
    soonest.extend(deadline.map(|d| next(NextAction::StopDeadline, d)));
    soonest.extend(orphan_at.map(|o| next(NextAction::StopOrphaned, o)));
    soonest.extend(main_exit_at.map(|t| next(NextAction::StopMainExited, t)));
    // A debugger holds off the idle rules only. Anyone who may ptrace one
    // process of a gate (a user's own process inside root's gate) could
    // otherwise keep the whole gate past its deadline or its owner's exit.
    if v.traced {
        return Decision::Keep {
            spared: Some(Spared::Traced),
            next: soonest.into_iter().min_by_key(|n| n.at_ms),
        };
    }
    // A gate that input woke since it was last active is on the idle clock
    // it had when it fell asleep: each wake restarts its suspension, so
    // without this bound a host that pings an abandoned gate would keep it
    // forever. Past the time the idle rules would have stopped it had it
    // slept on undisturbed, it is stopped.
    let woken = v.last_input_ms.is_some_and(|i| i > v.last_active_ms);
    let idle_end = idle_bound(v, s).filter(|_| woken && !v.busy);
    if let (Some(end), false) = (
        idle_end,
        matches!(v.phase, Phase::Suspended { manual: true, .. }),
    ) {
        if now >= end {
            return Decision::Stop(Reason::Idle);
        }
        soonest.push(next(NextAction::StopIdle, end));
    }
    let mut spared = None;
    match &v.phase {
        // A person's freeze is a person's word, as a pin is, but of the
        // frozen state only: no idle rule (hold, hibernation) turns it into
        // a stop or a dump. It was asked for, not inferred from idleness,
        // and a project with no idle rules at all would otherwise lose the
        // gate to them. Deadlines, orphans, on_main_exit (above) and the
        // evictions still apply, so a forgotten freeze is not forever.
        Phase::Suspended { manual: true, .. } => {}
        Phase::Suspended {
            since_ms,
            manual: false,
        }
        | Phase::DumpRefused { since_ms, .. } => {
            let at = since_ms.saturating_add(ms(Some(s.frozen_hold)).unwrap_or(0));
            // Hibernation comes before the stop when it is due first: the
            // gate then costs no RAM and loses nothing. A refused dump is
            // not tried again until the gate ran.
            let refused = matches!(v.phase, Phase::DumpRefused { .. });
            // A gate that input woke is not dumped again until
            // hibernate_after passed without input: a host that pings every
            // few seconds cannot make gov dump and restore in a loop.
            let quiet_since = v.last_input_ms.map_or(*since_ms, |i| i.max(*since_ms));
            let hibernate_at = ms(s.hibernate_after)
                .filter(|_| v.hibernatable && !refused)
                .map(|h| quiet_since.saturating_add(h))
                .filter(|&h| h < at);
            if let Some(h) = hibernate_at {
                if now >= h {
                    return Decision::Hibernate;
                }
                soonest.push(next(NextAction::Hibernate, h));
            } else if now >= at {
                return Decision::Stop(Reason::Idle);
            } else {
                soonest.push(next(NextAction::StopFrozenTooLong, at));
            }
        }
        Phase::Hibernated { since_ms, .. } => {
            if let Some(hold) = ms(s.hibernate_hold) {
                let at = since_ms.saturating_add(hold);
                if now >= at {
                    return Decision::Stop(Reason::Idle);
                }
                soonest.push(next(NextAction::StopHibernatedTooLong, at));
            }
        }
        _ if v.busy => spared = Some(Spared::Busy),
        Phase::Woken { until_ms } => {
            if now >= *until_ms {
                return Decision::Suspend(Reason::Idle);
            }
            soonest.push(next(NextAction::Suspend, *until_ms));
        }
        _ => {
            if let Some(idle) = ms(s.idle_timeout) {
                let at = v.last_active_ms.saturating_add(idle);
                // No hold: an idle gate is stopped, not frozen for nothing.
                let no_hold = s.frozen_hold.is_zero();
                if now >= at {
                    return if no_hold {
                        Decision::Stop(Reason::Idle)
                    } else {
                        Decision::Suspend(Reason::Idle)
                    };
                }
                let action = if no_hold {
                    NextAction::StopIdle
                } else {
                    NextAction::Suspend
                };
                soonest.push(next(action, at));
            }
        }
    }
    Decision::Keep {
        spared,
        next: soonest.into_iter().min_by_key(|n| n.at_ms),
    }
}

/// When an idle gate, left asleep, would have been stopped: idle_timeout
/// after its last activity, then frozen_hold, or hibernate_after and
/// hibernate_hold where it would have been hibernated first. None where no
/// idle rule ends it.
fn idle_bound(v: &View, s: &GateSettings) -> Option<u64> {
    let idle = ms(s.idle_timeout)?;
    let frozen_hold = ms(Some(s.frozen_hold)).unwrap_or(0);
    let asleep = match ms(s.hibernate_after).filter(|_| v.hibernatable) {
        Some(after) if after < frozen_hold => after.saturating_add(ms(s.hibernate_hold)?),
        _ => frozen_hold,
    };
    Some(v.last_active_ms.saturating_add(idle).saturating_add(asleep))
}

fn keep_spared(s: Spared) -> Decision {
    Decision::Keep {
        spared: Some(s),
        next: None,
    }
}

/// A gate that an eviction (a project's gate cap, the memory budget) weighs:
/// whose it is, and whether it may be taken (`evictable`: neither busy,
/// traced, pinned, nor already being torn down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub uid: u32,
    pub last_active_ms: u64,
    pub memory_bytes: u64,
    pub evictable: bool,
}

/// The least recently active evictable gates whose memory together covers
/// `need_bytes` (at least one gate when `need_bytes` is 0, for a gate cap).
pub fn pick_victims(candidates: &[Candidate], need_bytes: u64) -> Vec<String> {
    let mut freed = 0u64;
    let mut out = Vec::new();
    for c in evictable_idlest_first(candidates) {
        if !out.is_empty() && freed >= need_bytes {
            break;
        }
        freed += c.memory_bytes;
        out.push(c.id.clone());
    }
    out
}

fn evictable_idlest_first(candidates: &[Candidate]) -> Vec<&Candidate> {
    let mut pool: Vec<&Candidate> = candidates.iter().filter(|c| c.evictable).collect();
    pool.sort_by_key(|c| (c.last_active_ms, c.id.clone()));
    pool
}

/// What a spawn by user `uid` does about a project's `max_gates`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CapVerdict {
    /// There is room once these gates are stopped (none: room already).
    Room(Vec<String>),
    /// No room: the user has this many gates of the project and cannot
    /// (or may not) evict enough of them.
    Full { gates: usize },
}

/// The cap of a project at `max` gates, for a spawn by user `uid`, given
/// the project's gates of every user. A project string is anyone's to
/// name, so the cap counts the spawning user's gates only, and evicts only
/// theirs, least recently active first: another user's gates of the same
/// project neither fill nor free this user's room.
pub fn cap_verdict(candidates: &[Candidate], uid: u32, max: u32, on_limit: OnLimit) -> CapVerdict {
    let mine: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.uid == uid)
        .cloned()
        .collect();
    let Some(excess) = (mine.len() + 1)
        .checked_sub(max as usize)
        .filter(|&e| e > 0)
    else {
        return CapVerdict::Room(Vec::new());
    };
    let victims: Vec<String> = match on_limit {
        OnLimit::Refuse => Vec::new(),
        OnLimit::EvictIdlest => evictable_idlest_first(&mine)
            .into_iter()
            .take(excess)
            .map(|c| c.id.clone())
            .collect(),
    };
    if victims.len() < excess {
        CapVerdict::Full { gates: mine.len() }
    } else {
        CapVerdict::Room(victims)
    }
}

/// Each user's fair share of `budget`, given what each user's gates use
/// (one entry a user), when together they use more (None when they fit).
/// Max-min fair, as a water level: a user below the level keeps all they
/// use, and what they leave is shared equally by the rest.
pub fn fair_share(usage: &[u64], budget: u64) -> Option<u64> {
    let total = usage.iter().fold(0u64, |a, &u| a.saturating_add(u));
    if total <= budget {
        return None;
    }
    let mut sorted = usage.to_vec();
    sorted.sort_unstable();
    let mut left = budget;
    for (i, &u) in sorted.iter().enumerate() {
        let level = left / (sorted.len() - i) as u64;
        if u > level {
            return Some(level);
        }
        left -= u;
    }
    // Not reached: had every user fit under the level, the total would fit.
    Some(left)
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
            main_exit_stop_ms: None,
            max_runtime_ms: None,
            pinned: false,
            busy: false,
            traced: false,
            hibernatable: false,
            last_input_ms: None,
        }
    }

    /// Input woke it: it runs until the quiet time ends, then sleeps again,
    /// unless it is busy.
    #[test]
    fn a_gate_woken_by_input_sleeps_again_after_the_quiet_time() {
        let s = settings();
        let woken = View {
            phase: Phase::Woken { until_ms: 100 * S },
            last_active_ms: 0,
            last_input_ms: Some(90 * S),
            ..view()
        };
        assert_eq!(
            step(&woken, &s, 95 * S),
            Decision::Keep {
                spared: None,
                next: Some(next(NextAction::Suspend, 100 * S))
            }
        );
        assert_eq!(step(&woken, &s, 100 * S), Decision::Suspend(Reason::Idle));
        let busy = View {
            busy: true,
            ..woken.clone()
        };
        assert!(!step(&busy, &s, 100 * S).is_reap());
    }

    /// A host that pings an abandoned gate wakes it each time, and each
    /// wake starts a new suspension; the gate is still stopped when its
    /// idle time, had it slept undisturbed, ran out.
    #[test]
    fn pings_cannot_keep_an_idle_gate_from_being_reaped() {
        let s = settings(); // idle 30m, frozen_hold 1h
        let end = 90 * MIN;
        for phase in [
            Phase::Woken {
                until_ms: end + MIN,
            },
            Phase::Suspended {
                since_ms: end - MIN,
                manual: false,
            },
        ] {
            let pinged = View {
                phase: phase.clone(),
                last_active_ms: 0,
                last_input_ms: Some(end - 2 * MIN),
                ..view()
            };
            assert!(!step(&pinged, &s, end - 1).is_reap(), "{phase:?}");
            assert_eq!(
                step(&pinged, &s, end),
                Decision::Stop(Reason::Idle),
                "{phase:?}"
            );
            // Real activity after the last wake: the bound moves with it.
            let used = View {
                last_active_ms: end - MIN,
                ..pinged
            };
            assert_eq!(
                step(&used, &s, end),
                step(
                    &View {
                        last_input_ms: None,
                        ..used.clone()
                    },
                    &s,
                    end
                )
            );
        }
        // A hibernatable gate would have slept on disk: hibernate_after,
        // then hibernate_hold.
        let mut h = settings();
        h.hibernate_after = Some(std::time::Duration::from_secs(10 * 60));
        h.hibernate_hold = Some(std::time::Duration::from_secs(24 * 3600));
        let pinged = View {
            phase: Phase::Woken { until_ms: 0 },
            hibernatable: true,
            last_active_ms: 0,
            last_input_ms: Some(S),
            ..view()
        };
        let end = 30 * MIN + 10 * MIN + 24 * 60 * MIN;
        assert!(!matches!(step(&pinged, &h, end - 1), Decision::Stop(_)));
        assert_eq!(step(&pinged, &h, end), Decision::Stop(Reason::Idle));
    }

    /// A gate that input woke is dumped again only once hibernate_after
    /// passed without input.
    #[test]
    fn a_woken_gate_is_dumped_again_only_after_hibernate_after_without_input() {
        let mut s = settings();
        s.hibernate_after = Some(std::time::Duration::from_secs(10 * 60));
        let suspended = View {
            phase: Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            hibernatable: true,
            last_active_ms: 0,
            last_input_ms: Some(20 * MIN),
            ..view()
        };
        assert_eq!(
            step(&suspended, &s, 25 * MIN),
            Decision::Keep {
                spared: None,
                next: Some(next(NextAction::Hibernate, 30 * MIN))
            }
        );
        assert_eq!(step(&suspended, &s, 30 * MIN), Decision::Hibernate);
    }

    #[test]
    fn an_idle_gate_is_suspended_then_stopped_then_killed() {
        let s = settings();
        let v = view();
        assert!(
            matches!(step(&v, &s, 29 * MIN), Decision::Keep { next: Some(n), .. } if n.at_ms == 30 * MIN)
        );
        assert_eq!(step(&v, &s, 30 * MIN), Decision::Suspend(Reason::Idle));
        let v = View {
            phase: Phase::Suspended {
                since_ms: 30 * MIN,
                manual: false,
            },
            ..v.clone()
        };
        assert!(matches!(step(&v, &s, 89 * MIN), Decision::Keep { .. }));
        assert_eq!(step(&v, &s, 90 * MIN), Decision::Stop(Reason::Idle));
        let v = View {
            phase: Phase::Stopping {
                since_ms: 90 * MIN,
                reason: Reason::Idle,
            },
            ..v.clone()
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
            ..v.clone()
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
            ..view()
        };
        assert_eq!(step(&traced, &s, late), keep_spared(Spared::Traced));
        // A pinned frozen gate stays frozen, never torn down.
        let frozen = View {
            phase: Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            pinned: true,
            ..view()
        };
        assert_eq!(step(&frozen, &s, late), keep_spared(Spared::Pinned));
    }

    /// Every phase the rules apply in, against every rule: a debugger
    /// spares a gate from the idle rules only; a pin from all of them.
    #[test]
    fn tracing_spares_only_from_the_idle_rules_and_a_pin_from_all() {
        let mut s = settings();
        s.main_exit_grace = std::time::Duration::ZERO;
        s.hibernate_after = Some(std::time::Duration::from_secs(60));
        s.hibernate_hold = Some(std::time::Duration::from_secs(60));
        let late = 1000 * MIN;
        let phases = [
            Phase::Running,
            Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            Phase::Suspended {
                since_ms: 0,
                manual: true,
            },
            Phase::Hibernated {
                since_ms: 0,
                image_bytes: 1,
            },
        ];
        for phase in phases {
            let base = View {
                phase: phase.clone(),
                traced: true,
                hibernatable: true,
                ..view()
            };
            // Idle for ages: the idle, frozen-hold and hibernation rules wait.
            assert_eq!(
                step(&base, &s, late),
                keep_spared(Spared::Traced),
                "{phase:?}"
            );
            let rules = [
                (
                    View {
                        max_runtime_ms: Some(5 * MIN),
                        ..base.clone()
                    },
                    Reason::Deadline,
                    NextAction::StopDeadline,
                ),
                (
                    View {
                        orphaned_ms: Some(0),
                        ..base.clone()
                    },
                    Reason::Orphan,
                    NextAction::StopOrphaned,
                ),
                (
                    View {
                        main_exit_stop_ms: Some(5 * MIN),
                        ..base.clone()
                    },
                    Reason::MainExit,
                    NextAction::StopMainExited,
                ),
            ];
            for (v, reason, action) in rules {
                // Each rule is due at 5 min (orphan_grace is 5 min).
                let at = 5 * MIN;
                assert_eq!(
                    step(&v, &s, at - 1),
                    Decision::Keep {
                        spared: Some(Spared::Traced),
                        next: Some(next(action, at)),
                    },
                    "{phase:?} {reason:?}"
                );
                assert_eq!(step(&v, &s, at), Decision::Stop(reason), "{phase:?}");
                assert_eq!(step(&v, &s, late), Decision::Stop(reason), "{phase:?}");
                let untraced = View {
                    traced: false,
                    ..v.clone()
                };
                assert_eq!(step(&untraced, &s, late), Decision::Stop(reason));
                let pinned = View {
                    pinned: true,
                    ..v.clone()
                };
                assert_eq!(
                    step(&pinned, &s, late),
                    keep_spared(Spared::Pinned),
                    "{phase:?} {reason:?}"
                );
            }
        }
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
            matches!(step(&orphan, &s, 14 * MIN), Decision::Keep { next: Some(n), .. } if n.at_ms == 15 * MIN)
        );
        assert_eq!(step(&orphan, &s, 15 * MIN), Decision::Stop(Reason::Orphan));
        let runner = View {
            busy: true,
            max_runtime_ms: Some(5 * MIN),
            ..view()
        };
        assert_eq!(step(&runner, &s, 5 * MIN), Decision::Stop(Reason::Deadline));
        let frozen_orphan = View {
            phase: Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            orphaned_ms: Some(0),
            ..view()
        };
        assert_eq!(
            step(&frozen_orphan, &s, 5 * MIN),
            Decision::Stop(Reason::Orphan)
        );
    }

    #[test]
    fn leftovers_of_an_exited_main_process_are_stopped_after_the_grace() {
        let mut s = settings();
        s.main_exit_grace = std::time::Duration::from_secs(5);
        // Busy leftovers too: a server the launcher left is not wanted.
        let v = View {
            main_exit_stop_ms: Some(10 * S),
            busy: true,
            ..view()
        };
        assert!(matches!(
            step(&v, &s, 14 * S),
            Decision::Keep { next: Some(Next { action: NextAction::StopMainExited, at_ms }), .. } if at_ms == 15 * S
        ));
        assert_eq!(step(&v, &s, 15 * S), Decision::Stop(Reason::MainExit));
        // A suspended gate whose main exited goes the same way.
        let frozen = View {
            phase: Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            ..v.clone()
        };
        assert_eq!(step(&frozen, &s, 15 * S), Decision::Stop(Reason::MainExit));
        // Pinned and traced gates are spared; "keep" (None here) never stops.
        let pinned = View {
            pinned: true,
            ..v.clone()
        };
        assert_eq!(step(&pinned, &s, 60 * S), keep_spared(Spared::Pinned));
        let keep = View {
            main_exit_stop_ms: None,
            ..v.clone()
        };
        assert!(matches!(step(&keep, &s, 60 * MIN), Decision::Keep { .. }));
    }

    #[test]
    fn a_suspended_gate_is_hibernated_then_stopped_after_the_hold() {
        let mut s = settings();
        s.hibernate_after = Some(std::time::Duration::from_secs(10 * 60));
        s.hibernate_hold = Some(std::time::Duration::from_secs(24 * 3600));
        let suspended = View {
            phase: Phase::Suspended {
                since_ms: 0,
                manual: false,
            },
            hibernatable: true,
            ..view()
        };
        assert!(matches!(
            step(&suspended, &s, 9 * MIN),
            Decision::Keep { next: Some(Next { action: NextAction::Hibernate, at_ms }), .. } if at_ms == 10 * MIN
        ));
        assert_eq!(step(&suspended, &s, 10 * MIN), Decision::Hibernate);
        // Not hibernatable (no keeper, no CRIU, a refused dump): as before.
        let plain = View {
            hibernatable: false,
            ..suspended.clone()
        };
        assert!(matches!(step(&plain, &s, 10 * MIN), Decision::Keep { .. }));
        assert_eq!(step(&plain, &s, 60 * MIN), Decision::Stop(Reason::Idle));
        // "never" (the default) never hibernates.
        let mut never = s.clone();
        never.hibernate_after = None;
        assert!(matches!(
            step(&suspended, &never, 10 * MIN),
            Decision::Keep { .. }
        ));
        let hibernated = View {
            phase: Phase::Hibernated {
                since_ms: 10 * MIN,
                image_bytes: 1,
            },
            ..suspended.clone()
        };
        assert!(matches!(
            step(&hibernated, &s, 100 * MIN),
            Decision::Keep { .. }
        ));
        assert_eq!(
            step(&hibernated, &s, 10 * MIN + 24 * 60 * MIN),
            Decision::Stop(Reason::Idle)
        );
        // Orphans and deadlines still apply; a pinned one stays on disk.
        let orphan = View {
            orphaned_ms: Some(0),
            ..hibernated.clone()
        };
        assert_eq!(step(&orphan, &s, 11 * MIN), Decision::Stop(Reason::Orphan));
        let pinned = View {
            pinned: true,
            ..hibernated.clone()
        };
        assert_eq!(
            step(&pinned, &s, 1000 * 60 * MIN),
            keep_spared(Spared::Pinned)
        );
        assert_eq!(hibernated.phase.state(true), GateState::Hibernated);
    }

    /// A person's freeze against every idle setting that could end it:
    /// idle_timeout on or "never", frozen_hold 0, short or long, hibernation
    /// on or off. It is held until thawed; only the rules that apply to any
    /// gate (deadline, orphan, main exit) stop it, and as what they are.
    #[test]
    fn a_persons_freeze_is_held_until_thawed_whatever_the_idle_rules_say() {
        let durations = |d: &[u64]| -> Vec<Option<std::time::Duration>> {
            d.iter()
                .map(|&s| Some(std::time::Duration::from_secs(s)))
                .collect()
        };
        let late = 1000 * 24 * 60 * MIN;
        let frozen = View {
            phase: Phase::Suspended {
                since_ms: MIN,
                manual: true,
            },
            hibernatable: true,
            ..view()
        };
        let mut idle_timeouts = durations(&[1, 30 * 60]);
        idle_timeouts.push(None);
        let mut hibernate_afters = durations(&[0, 60]);
        hibernate_afters.push(None);
        for idle_timeout in &idle_timeouts {
            for frozen_hold in [0, 3, 60 * 60] {
                for hibernate_after in &hibernate_afters {
                    let mut s = settings();
                    s.idle_timeout = *idle_timeout;
                    s.frozen_hold = std::time::Duration::from_secs(frozen_hold);
                    s.hibernate_after = *hibernate_after;
                    s.hibernate_hold = Some(std::time::Duration::from_secs(1));
                    s.main_exit_grace = std::time::Duration::ZERO;
                    let case = format!("{idle_timeout:?} {frozen_hold} {hibernate_after:?}");
                    let held = Decision::Keep {
                        spared: None,
                        next: None,
                    };
                    for now in [MIN, MIN + 1, MIN + 3 * S, late] {
                        assert_eq!(step(&frozen, &s, now), held, "{case} at {now}");
                    }
                    // The reaper's own freeze of the same gate is not held.
                    let suspended = View {
                        phase: Phase::Suspended {
                            since_ms: MIN,
                            manual: false,
                        },
                        ..frozen.clone()
                    };
                    assert!(step(&suspended, &s, late).is_reap(), "{case}");
                    let rules = [
                        (
                            View {
                                max_runtime_ms: Some(5 * MIN),
                                ..frozen.clone()
                            },
                            Reason::Deadline,
                        ),
                        (
                            View {
                                orphaned_ms: Some(0),
                                ..frozen.clone()
                            },
                            Reason::Orphan,
                        ),
                        (
                            View {
                                main_exit_stop_ms: Some(5 * MIN),
                                ..frozen.clone()
                            },
                            Reason::MainExit,
                        ),
                    ];
                    for (v, reason) in rules {
                        assert_eq!(step(&v, &s, late), Decision::Stop(reason), "{case}");
                        let pinned = View {
                            pinned: true,
                            ..v.clone()
                        };
                        assert_eq!(
                            step(&pinned, &s, late),
                            keep_spared(Spared::Pinned),
                            "{case}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_frozen_hold_stops_an_idle_gate_without_suspending_it() {
        let mut s = settings();
        s.frozen_hold = std::time::Duration::ZERO;
        let v = view();
        assert!(matches!(
            step(&v, &s, 29 * MIN),
            Decision::Keep { next: Some(Next { action: NextAction::StopIdle, at_ms }), .. } if at_ms == 30 * MIN
        ));
        assert_eq!(step(&v, &s, 30 * MIN), Decision::Stop(Reason::Idle));
    }

    #[test]
    fn deadlines_past_the_end_of_time_never_fire() {
        let mut s = settings();
        s.idle_timeout = Some(std::time::Duration::from_secs(u64::MAX));
        s.orphan_grace = Some(std::time::Duration::from_secs(u64::MAX));
        s.stop_grace = std::time::Duration::from_secs(u64::MAX);
        let v = View {
            created_ms: 5,
            last_active_ms: 5,
            orphaned_ms: Some(5),
            max_runtime_ms: Some(u64::MAX),
            ..view()
        };
        assert!(matches!(step(&v, &s, u64::MAX - 1), Decision::Keep { .. }));
        let stopping = View {
            phase: Phase::Stopping {
                since_ms: 5,
                reason: Reason::Idle,
            },
            ..v.clone()
        };
        assert!(matches!(
            step(&stopping, &s, u64::MAX - 1),
            Decision::Keep { .. }
        ));
    }

    #[test]
    fn the_state_people_see_comes_from_the_phase() {
        let frozen = |manual| Phase::Suspended {
            since_ms: 0,
            manual,
        };
        assert_eq!(Phase::Running.state(true), GateState::Running);
        assert_eq!(Phase::Running.state(false), GateState::Exited);
        assert_eq!(frozen(false).state(true), GateState::Suspended);
        assert_eq!(frozen(true).state(true), GateState::Frozen);
        let stopping = Phase::Stopping {
            since_ms: 0,
            reason: Reason::Idle,
        };
        assert_eq!(stopping.state(true), GateState::Stopping);
        // Emptied during its stop grace: still stopping until removed.
        assert_eq!(stopping.state(false), GateState::Stopping);
        let killing = Phase::Killing {
            reason: Reason::Manual,
        };
        assert_eq!(killing.state(true), GateState::Killing);
        // A restore whose worker runs while its memory streams in: running,
        // and never made to give way before its memory is back.
        let restoring = Phase::Restoring { since_ms: 0 };
        assert_eq!(restoring.state(true), GateState::Running);
        assert!(!may_yield(&restoring, false, false, None));
        assert!(!may_yield(
            &Phase::Dumping { since_ms: 0 },
            false,
            false,
            None
        ));
        assert!(may_yield(&Phase::Running, false, false, None));
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
    fn victims_are_the_least_recently_active_evictable_gates() {
        let c = |id: &str, t: u64, m: u64, e: bool| Candidate {
            id: id.into(),
            uid: 1000,
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

    #[test]
    fn a_cap_counts_and_evicts_the_spawning_users_gates_only() {
        let c = |id: &str, uid: u32, t: u64, e: bool| Candidate {
            id: id.into(),
            uid,
            last_active_ms: t,
            memory_bytes: 0,
            evictable: e,
        };
        let (a, b) = (1000, 1001);
        let evict = OnLimit::EvictIdlest;
        // The case: B's two pinned gates of A's project.
        let gates = [
            c("a-idle", a, 0, true),
            c("b-pin-1", b, 1, false),
            c("b-pin-2", b, 2, false),
        ];
        assert_eq!(cap_verdict(&gates, a, 2, evict), CapVerdict::Room(vec![]));
        assert_eq!(
            cap_verdict(&gates[..2], b, 2, evict),
            CapVerdict::Room(vec![])
        );
        assert_eq!(
            cap_verdict(&gates, b, 2, evict),
            CapVerdict::Full { gates: 2 }
        );
        // Full: A's own idlest goes, never B's, older or not.
        let gates = [
            c("b-old", b, 0, true),
            c("a-busy", a, 1, false),
            c("a-old", a, 2, true),
            c("a-new", a, 3, true),
        ];
        assert_eq!(
            cap_verdict(&gates, a, 3, evict),
            CapVerdict::Room(vec!["a-old".into()])
        );
        assert_eq!(
            cap_verdict(&gates, a, 2, evict),
            CapVerdict::Room(vec!["a-old".into(), "a-new".into()])
        );
        assert_eq!(
            cap_verdict(&gates, a, 1, evict),
            CapVerdict::Full { gates: 3 }
        );
        assert_eq!(
            cap_verdict(&gates, a, 3, OnLimit::Refuse),
            CapVerdict::Full { gates: 3 }
        );
        assert_eq!(
            cap_verdict(&gates, a, 4, OnLimit::Refuse),
            CapVerdict::Room(vec![])
        );
    }

    #[test]
    fn the_fair_share_is_a_water_level() {
        assert_eq!(fair_share(&[100, 100], 250), None);
        assert_eq!(fair_share(&[], 0), None);
        assert_eq!(fair_share(&[200, 100], 250), Some(150));
        assert_eq!(fair_share(&[300, 200], 250), Some(125));
        // The small user keeps all 50; the others share the other 300.
        assert_eq!(fair_share(&[300, 50, 300], 350), Some(150));
        assert_eq!(fair_share(&[u64::MAX, u64::MAX], 10), Some(5));
        assert_eq!(fair_share(&[7], 5), Some(5));
    }
}
