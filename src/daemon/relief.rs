//! Memory relief, performed: one task that waits, at no cost while calm,
//! for the host's PSI trigger or for a scan that found MemAvailable under
//! its floor or the gates over `memory_budget`; then asks gates' owners for
//! one step of the ladder (`crate::relief`) at a time, and samples the host
//! again after each, until every trigger cleared.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::gate::{self, now_ms};
use crate::policy::Policy;
use crate::pressure::{self, MemInfo, Psi};
use crate::protocol::{ReliefStatus, Rung};
use crate::relief::{self, Limits, Sample, Trigger};

use super::lifecycle::Cmd;
use super::{lock, Daemon};

/// PSI's window for `memory_pressure` ("share of time over 10 s").
const WINDOW: Duration = Duration::from_secs(10);

/// After a step, the host's pressure is sampled over this long before the
/// next: long enough to see whether the step helped, short enough that a
/// few steps fit in the goal of relief within 2 s.
const SAMPLE: Duration = Duration::from_millis(500);

/// When relief found nothing left to take while the host is still short,
/// it waits this long, or for a new policy, before it looks again (a scan
/// would otherwise start it again at every pass, for nothing).
const NOTHING_LEFT_PAUSE: Duration = Duration::from_secs(30);

/// What relief shares with the rest of the daemon.
#[derive(Default)]
pub struct Relief {
    /// A scan asks relief to look (MemAvailable, the budget).
    poke: Notify,
    state: std::sync::Mutex<State>,
}

#[derive(Default, Clone)]
struct State {
    active: bool,
    trigger: Option<String>,
    triggered_ms: Option<u64>,
    /// What relief's last look read of the host (at every scan): status
    /// and metrics requests show it and read no file.
    mem: MemInfo,
    pressure_avg10: Option<f64>,
}

impl Relief {
    /// Asks the relief task to sample the host now.
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}

impl Daemon {
    /// The relief task: runs as long as the daemon.
    pub(super) async fn relief_task(self: Arc<Self>) {
        // The stall the trigger was armed for, and the trigger (None where
        // it could not be armed: not tried again, and not said again, until
        // the policy asks for another stall).
        let mut armed: Option<(Duration, Option<pressure::Trigger>)> = None;
        let mut paused_until: Option<Instant> = None;
        // The host's stall counter when relief last looked: the pressure of
        // the next look is measured from here.
        let mut last = psi_now();
        let mut reloads = self.policy.subscribe();
        loop {
            let stall = self
                .policy()
                .global
                .memory_pressure
                .map(|p| WINDOW.mul_f64(p.share()));
            if armed.as_ref().map(|a| a.0) != stall {
                armed = stall.map(|stall| (stall, arm(stall)));
            }
            tokio::select! {
                r = fired(armed.as_ref().and_then(|a| a.1.as_ref())) => if let Err(e) = r {
                    tracing::warn!("PSI trigger lost ({e}): memory pressure is sampled at scans");
                    if let Some(a) = armed.as_mut() {
                        a.1 = None;
                    }
                },
                _ = self.relief.poke.notified() => {}
                // A new policy may allow what was not (pressure_stop).
                Ok(()) = reloads.changed() => paused_until = None,
            }
            if paused_until.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            paused_until = None;
            if !self.relieve(last.take()).await {
                paused_until = Some(Instant::now() + NOTHING_LEFT_PAUSE);
            }
            last = psi_now();
        }
    }

    /// Steps of the ladder until no trigger holds (true), or until no gate
    /// has more to give (false). The host's pressure is measured from
    /// `window` (its stall counter then) to now, over at least SAMPLE: a
    /// PSI trigger only wakes relief, it does not prove pressure (one
    /// without CAP_SYS_RESOURCE fired on a calm host here).
    async fn relieve(&self, mut window: Option<(Psi, Instant)>) -> bool {
        // A step that changed nothing (the gate read during its freeze, its
        // dump was refused) is not asked again, though a later rung may be.
        let mut tried: HashSet<(String, Rung)> = HashSet::new();
        loop {
            if let Some((_, at)) = &window {
                tokio::time::sleep(SAMPLE.saturating_sub(at.elapsed())).await;
            }
            let policy = self.policy();
            let mem = pressure::read_meminfo().unwrap_or_default();
            let psi = pressure::read_psi(pressure::HOST_PSI).ok();
            self.observed(mem, psi.map(|p| p.some_avg10));
            let limits = limits_of(&policy, &mem);
            let pressure = match (&window, &psi) {
                (Some((before, at)), Some(now)) => {
                    Some(pressure::stall_share(before, now, at.elapsed()))
                }
                _ => None,
            };
            let sample = Sample {
                pressure,
                available_bytes: mem.available,
                // As last measured: a calm host's look reads no gate.
                gates_bytes: self.measured_bytes(),
            };
            let Some(trigger) = relief::needed(&sample, &limits) else {
                self.set_relief(false, None);
                return true;
            };
            let words = trigger.describe(mem.total);
            self.set_relief(true, Some(words.clone()));
            if tried.is_empty() {
                tracing::info!("memory relief starts: {words}");
            }
            let candidates = self.relief_candidates().await;
            let pool = match (trigger, limits.budget) {
                (Trigger::Budget(_), Some(budget)) => relief::over_their_share(&candidates, budget),
                _ => candidates,
            };
            let means = trigger.means(self.can_reclaim(), policy.global.pressure_stop);
            let Some((id, rung)) = relief::next(&pool, means, now_ms(), &tried) else {
                tracing::warn!("memory relief ({words}): no idle gate has more to give");
                self.set_relief(false, Some(words));
                return false;
            };
            tried.insert((id.clone(), rung));
            tracing::info!(gate = %id, rung = rung.as_str(), "memory relief ({words})");
            if let Some(h) = self.gates.get(&id) {
                if let Err(e) = h
                    .ask(&id, Cmd::Relieve(rung, trigger.reason(), words))
                    .await
                {
                    tracing::warn!(gate = %id, "memory relief: {}", e.message);
                }
            }
            // What the step itself stalled is not the host's shortage: the
            // next sample is of a fresh window.
            window = psi_now();
        }
    }

    /// Every gate as relief weighs it, its memory measured now (bounded).
    async fn relief_candidates(&self) -> Vec<relief::Candidate> {
        let handles = self.gates.handles();
        let dirs: Vec<_> = handles
            .iter()
            .map(|(_, h)| (h.clone(), h.view().dir.clone()))
            .collect();
        self.measure_now(dirs).await;
        let (now, criu) = (now_ms(), self.criu.is_some());
        handles
            .iter()
            .map(|(_, h)| {
                let bytes = h.memory().map_or(0, |m| m.bytes);
                h.view().relief_candidate(bytes, now, criu)
            })
            .collect()
    }

    /// What the gates hold together, as last measured.
    fn measured_bytes(&self) -> u64 {
        let mut sum = 0u64;
        self.gates
            .each(|h, _| sum = sum.saturating_add(h.memory().map_or(0, |m| m.bytes)));
        sum
    }

    /// memory.reclaim is here and there is swap to push memory to.
    fn can_reclaim(&self) -> bool {
        self.tree.root.has_file("memory.reclaim") && gate::host_has_swap()
    }

    /// Says whether relief is under way, and why; an episode's start is
    /// kept from when it began.
    fn set_relief(&self, active: bool, trigger: Option<String>) {
        let mut state = lock(&self.relief.state);
        let triggered_ms = match (state.active, active) {
            (false, true) => Some(now_ms()),
            _ => state.triggered_ms,
        };
        state.trigger = trigger.or(state.trigger.take());
        state.active = active;
        state.triggered_ms = triggered_ms;
    }

    fn observed(&self, mem: MemInfo, pressure_avg10: Option<f64>) {
        let mut state = lock(&self.relief.state);
        state.mem = mem;
        state.pressure_avg10 = pressure_avg10;
    }

    /// What relief sees (as of its last look) and did, for `gov status`
    /// and metrics.
    pub(super) fn relief_status(&self) -> ReliefStatus {
        let policy = self.policy();
        let state = lock(&self.relief.state).clone();
        // Before relief's first look (a request at the daemon's start).
        let mem = match state.mem.total {
            0 => pressure::read_meminfo().unwrap_or_default(),
            _ => state.mem,
        };
        let limits = limits_of(&policy, &mem);
        let (steps, freed_bytes) = self.journal.relief_totals();
        ReliefStatus {
            active: state.active,
            trigger: state.trigger,
            triggered_ms: state.triggered_ms,
            pressure_some_avg10: state.pressure_avg10,
            pressure_limit: policy.global.memory_pressure.map(|p| p.percent()),
            mem_available_bytes: mem.available,
            mem_total_bytes: mem.total,
            available_min_bytes: limits.available_min,
            steps,
            freed_bytes,
        }
    }
}

/// The policy's limits, in numbers for this host.
fn limits_of(policy: &Policy, mem: &MemInfo) -> Limits {
    let g = &policy.global;
    Limits {
        pressure: g.memory_pressure.map(|p| p.share()),
        available_min: g.available_min_bytes(mem.total),
        budget: g.memory_budget,
    }
}

/// The host's stall counter now, and when it was read.
fn psi_now() -> Option<(Psi, Instant)> {
    pressure::read_psi(pressure::HOST_PSI)
        .ok()
        .map(|p| (p, Instant::now()))
}

fn arm(stall: Duration) -> Option<pressure::Trigger> {
    match pressure::Trigger::arm(pressure::HOST_PSI, stall, WINDOW) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("no PSI trigger ({e}): memory pressure is sampled at scans");
            None
        }
    }
}

async fn fired(trigger: Option<&pressure::Trigger>) -> std::io::Result<()> {
    match trigger {
        Some(t) => t.fired().await,
        None => std::future::pending().await,
    }
}
