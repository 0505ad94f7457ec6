//! What happened: the lifecycle events `gov events` shows (also one log line
//! each), the counters behind `gov metrics`, and the metrics text itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::gate::{now_ms, Tags};
use crate::protocol::{Event, EventKind, GateState, Reason};

use super::lock;

#[derive(Default)]
struct Counters {
    spawns: u64,
    touches: u64,
    refused: u64,
    reaps: BTreeMap<&'static str, u64>,
    limit_hits: BTreeMap<String, u64>,
}

pub struct Journal {
    events: Mutex<VecDeque<Event>>,
    counters: Mutex<Counters>,
    /// event_history from the policy in force.
    cap: AtomicUsize,
}

impl Journal {
    pub fn new(cap: usize) -> Journal {
        Journal {
            events: Mutex::default(),
            counters: Mutex::default(),
            cap: AtomicUsize::new(cap.max(1)),
        }
    }

    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap.max(1), Ordering::Relaxed);
    }

    /// Records one event and logs it.
    pub fn record(
        &self,
        tags: &Tags,
        gate: &str,
        kind: EventKind,
        reason: Option<String>,
        freed: Option<u64>,
    ) {
        tracing::info!(
            gate,
            project = %tags.project,
            session = %tags.session,
            uid = tags.owner_uid,
            reason = reason.as_deref().unwrap_or(""),
            freed_bytes = freed.unwrap_or(0),
            "{}",
            kind.as_str()
        );
        let cap = self.cap.load(Ordering::Relaxed);
        let mut events = lock(&self.events);
        while events.len() >= cap {
            events.pop_front();
        }
        events.push_back(Event {
            time_ms: now_ms(),
            gate: gate.to_string(),
            project: tags.project.clone(),
            session: tags.session.clone(),
            uid: tags.owner_uid,
            kind,
            reason,
            freed_bytes: freed,
        });
    }

    /// A gate torn down by gov: one event, one reap counted.
    pub fn removed(&self, tags: &Tags, gate: &str, reason: Reason, how: &str, freed: u64) {
        *lock(&self.counters)
            .reaps
            .entry(reason.as_str())
            .or_default() += 1;
        let why = format!("{} ({how})", reason.as_str());
        self.record(tags, gate, EventKind::Removed, Some(why), Some(freed));
    }

    pub fn limit_hit(&self, tags: &Tags, gate: &str, kind: &str, n: u64) {
        *lock(&self.counters)
            .limit_hits
            .entry(kind.to_string())
            .or_default() += n;
        let why = format!("{kind} hit {n} more time(s)");
        self.record(tags, gate, EventKind::Limit, Some(why), None);
    }

    pub fn count_spawn(&self) {
        lock(&self.counters).spawns += 1;
    }

    pub fn count_touches(&self, n: u64) {
        lock(&self.counters).touches += n;
    }

    pub fn count_refused(&self) {
        lock(&self.counters).refused += 1;
    }

    /// The last `limit` events that `visible` lets through, oldest first.
    pub fn recent(&self, visible: impl Fn(&Event) -> bool, limit: Option<usize>) -> Vec<Event> {
        let events = lock(&self.events);
        let mine: Vec<&Event> = events.iter().filter(|e| visible(e)).collect();
        let skip = mine.len().saturating_sub(limit.unwrap_or(usize::MAX));
        mine.into_iter().skip(skip).cloned().collect()
    }

    /// Prometheus text: gates by state and memory by project and user (of
    /// the gates the caller may see), then the counters.
    pub fn metrics(
        &self,
        by_state: &BTreeMap<GateState, u64>,
        mem_by_project: &BTreeMap<(String, u32), u64>,
    ) -> String {
        let c = lock(&self.counters);
        let mut out = String::new();
        out += "# HELP gov_gates Gates by state.\n# TYPE gov_gates gauge\n";
        for state in [
            GateState::Running,
            GateState::Frozen,
            GateState::Suspended,
            GateState::Stopping,
            GateState::Killing,
        ] {
            out += &format!(
                "gov_gates{{state=\"{}\"}} {}\n",
                state.as_str(),
                by_state.get(&state).unwrap_or(&0)
            );
        }
        out += "# HELP gov_project_memory_bytes Memory of one user's gates of a project (memory.current; where the memory controller is off, the sum of PSS, as gov ps shows it).\n# TYPE gov_project_memory_bytes gauge\n";
        for ((p, uid), m) in mem_by_project {
            out += &format!(
                "gov_project_memory_bytes{{project=\"{}\",uid=\"{uid}\"}} {m}\n",
                prom_escape(p)
            );
        }
        out += "# HELP gov_reaps_total Gates reaped, by reason.\n# TYPE gov_reaps_total counter\n";
        for (r, n) in &c.reaps {
            out += &format!("gov_reaps_total{{reason=\"{r}\"}} {n}\n");
        }
        out += "# HELP gov_limit_hits_total Times gates hit a limit (pids.max, memory.max, oom_kill, ...).\n# TYPE gov_limit_hits_total counter\n";
        for (k, n) in &c.limit_hits {
            out += &format!("gov_limit_hits_total{{limit=\"{k}\"}} {n}\n");
        }
        out += &format!("# HELP gov_spawns_total Gates spawned.\n# TYPE gov_spawns_total counter\ngov_spawns_total {}\n", c.spawns);
        out += &format!("# HELP gov_touches_total Touches received.\n# TYPE gov_touches_total counter\ngov_touches_total {}\n", c.touches);
        out += &format!("# HELP gov_spawns_refused_total Spawns refused by a cap.\n# TYPE gov_spawns_refused_total counter\ngov_spawns_refused_total {}\n", c.refused);
        out
    }
}

fn prom_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
