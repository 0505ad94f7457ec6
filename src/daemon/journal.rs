//! What happened: the lifecycle events `gov events` shows (also one log line
//! each), the counters behind `gov metrics`, and the metrics text itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::gate::{now_ms, Tags};
use crate::protocol::{Event, EventKind, GateState, Reason, ReliefStatus, Rung};

use super::lock;

/// One user's counts (the gates they own, the requests they made).
#[derive(Default, Clone)]
struct Counters {
    spawns: u64,
    touches: u64,
    refused: u64,
    reaps: BTreeMap<&'static str, u64>,
    limit_hits: BTreeMap<String, u64>,
    /// Wakes on input, by the kind of input (`wake::Kind`).
    wakes: BTreeMap<&'static str, u64>,
    /// Memory relief's steps, and the bytes they freed, by rung.
    relief_steps: BTreeMap<Rung, u64>,
    relief_freed: BTreeMap<Rung, u64>,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.spawns += other.spawns;
        self.touches += other.touches;
        self.refused += other.refused;
        for (r, n) in &other.reaps {
            *self.reaps.entry(r).or_default() += n;
        }
        for (k, n) in &other.limit_hits {
            *self.limit_hits.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &other.wakes {
            *self.wakes.entry(k).or_default() += n;
        }
        for (r, n) in &other.relief_steps {
            *self.relief_steps.entry(*r).or_default() += n;
        }
        for (r, n) in &other.relief_freed {
            *self.relief_freed.entry(*r).or_default() += n;
        }
    }
}

/// The event history: a ring per user (the gate's owner), `cap` events in
/// all. When it is full, the user who holds the most events loses their
/// oldest, so a user's flood (a thousand pins and unpins) pushes out that
/// user's own history, never another's: a user with fewer events than the
/// flooder keeps every one. Admins see the rings merged in the order the
/// events happened (`seq`).
#[derive(Default)]
struct History {
    rings: HashMap<u32, VecDeque<(u64, Event)>>,
    len: usize,
    seq: u64,
}

impl History {
    fn push(&mut self, event: Event, cap: usize) {
        while self.len >= cap && self.evict_one() {}
        self.seq += 1;
        self.rings
            .entry(event.uid)
            .or_default()
            .push_back((self.seq, event));
        self.len += 1;
    }

    /// The oldest event of the user holding the most (of two such users,
    /// the one whose oldest event is older). False when empty.
    fn evict_one(&mut self) -> bool {
        let Some(uid) = self
            .rings
            .iter()
            .max_by_key(|(_, r)| (r.len(), std::cmp::Reverse(r.front().map(|e| e.0))))
            .map(|(&uid, _)| uid)
        else {
            return false;
        };
        let ring = self.rings.get_mut(&uid).expect("just found");
        ring.pop_front();
        if ring.is_empty() {
            self.rings.remove(&uid);
        }
        self.len -= 1;
        true
    }
}

/// Every state `gov_gates` counts, each on a line of its own even at 0 (a
/// series that vanishes at 0 reads as "no data" in a graph).
const STATES: [GateState; 7] = [
    GateState::Running,
    GateState::Frozen,
    GateState::Suspended,
    GateState::Hibernated,
    GateState::Stopping,
    GateState::Killing,
    GateState::Exited,
];

/// Where `state` is in `STATES`: a state added to the enum and not to the
/// list fails to compile here.
#[cfg(test)]
fn listed(state: GateState) -> usize {
    match state {
        GateState::Running => 0,
        GateState::Frozen => 1,
        GateState::Suspended => 2,
        GateState::Hibernated => 3,
        GateState::Stopping => 4,
        GateState::Killing => 5,
        GateState::Exited => 6,
    }
}

/// What the metrics text shows besides the counters, of the gates the
/// caller may see.
#[derive(Default)]
pub struct Gauges {
    pub by_state: BTreeMap<GateState, u64>,
    pub mem_by_project: BTreeMap<(String, u32), u64>,
    /// How old the oldest memory figure in `mem_by_project` is.
    pub memory_age_ms: Option<u64>,
    /// The daemon's memory reads so far (admins and the scrape only).
    pub memory_reads: Option<u64>,
    /// What memory relief sees of the host.
    pub relief: Option<ReliefStatus>,
}

pub struct Journal {
    events: Mutex<History>,
    /// Per user; only admins and the scrape endpoint see the sum.
    counters: Mutex<HashMap<u32, Counters>>,
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
        let event = Event {
            time_ms: now_ms(),
            gate: gate.to_string(),
            project: tags.project.clone(),
            session: tags.session.clone(),
            uid: tags.owner_uid,
            kind,
            reason,
            freed_bytes: freed,
        };
        lock(&self.events).push(event, self.cap.load(Ordering::Relaxed));
    }

    fn count(&self, uid: u32, f: impl FnOnce(&mut Counters)) {
        f(lock(&self.counters).entry(uid).or_default());
    }

    /// A gate torn down by gov: one event, one reap counted.
    pub fn removed(&self, tags: &Tags, gate: &str, reason: Reason, how: &str, freed: u64) {
        self.count(tags.owner_uid, |c| {
            *c.reaps.entry(reason.as_str()).or_default() += 1
        });
        let why = format!("{} ({how})", reason.as_str());
        self.record(tags, gate, EventKind::Removed, Some(why), Some(freed));
    }

    pub fn limit_hit(&self, tags: &Tags, gate: &str, kind: &str, n: u64) {
        self.count(tags.owner_uid, |c| {
            *c.limit_hits.entry(kind.to_string()).or_default() += n
        });
        let why = format!("{kind} hit {n} more time(s)");
        self.record(tags, gate, EventKind::Limit, Some(why), None);
    }

    /// A gate spawned or adopted for user `uid`.
    pub fn count_spawn(&self, uid: u32) {
        self.count(uid, |c| c.spawns += 1);
    }

    /// Touches asked by user `uid`.
    pub fn count_touches(&self, uid: u32, n: u64) {
        self.count(uid, |c| c.touches += n);
    }

    /// A gate of user `uid` woken by input of this kind.
    pub fn count_wake(&self, uid: u32, kind: &'static str) {
        self.count(uid, |c| *c.wakes.entry(kind).or_default() += 1);
    }

    /// Memory relief took `freed` bytes from a gate on this rung; `why`
    /// is what set it off.
    pub fn relieved(&self, tags: &Tags, gate: &str, rung: Rung, why: &str, freed: u64) {
        self.count(tags.owner_uid, |c| {
            *c.relief_steps.entry(rung).or_default() += 1;
            *c.relief_freed.entry(rung).or_default() += freed;
        });
        let reason = format!("{}: {why}", rung.as_str());
        self.record(tags, gate, EventKind::Relieved, Some(reason), Some(freed));
    }

    /// Relief's steps and the bytes they freed, by rung, of every user.
    pub fn relief_totals(&self) -> (BTreeMap<Rung, u64>, BTreeMap<Rung, u64>) {
        let all = lock(&self.counters);
        let mut sum = Counters::default();
        for c in all.values() {
            sum.add(c);
        }
        (sum.relief_steps, sum.relief_freed)
    }

    /// A spawn of user `uid` refused by a cap.
    pub fn count_refused(&self, uid: u32) {
        self.count(uid, |c| c.refused += 1);
    }

    /// The last `limit` events of the users `visible` lets through, oldest
    /// first.
    pub fn recent(&self, visible: impl Fn(u32) -> bool, limit: Option<usize>) -> Vec<Event> {
        let history = lock(&self.events);
        let limit = limit.unwrap_or(usize::MAX);
        // At most `limit` of each ring can be among the last `limit`.
        let mut mine: Vec<&(u64, Event)> = history
            .rings
            .iter()
            .filter(|(&uid, _)| visible(uid))
            .flat_map(|(_, ring)| ring.iter().skip(ring.len().saturating_sub(limit)))
            .collect();
        mine.sort_unstable_by_key(|e| e.0);
        let skip = mine.len().saturating_sub(limit);
        mine.into_iter().skip(skip).map(|e| e.1.clone()).collect()
    }

    /// Prometheus text: the gauges (of the gates the caller may see), then
    /// the counters of user `uid`, or everyone's (None: an admin, the
    /// scrape endpoint). A user learns nothing of other users' activity.
    pub fn metrics(&self, uid: Option<u32>, gauges: &Gauges) -> String {
        let c = {
            let all = lock(&self.counters);
            match uid {
                Some(uid) => all.get(&uid).cloned().unwrap_or_default(),
                None => all.values().fold(Counters::default(), |mut sum, c| {
                    sum.add(c);
                    sum
                }),
            }
        };
        let (by_state, mem_by_project) = (&gauges.by_state, &gauges.mem_by_project);
        let mut out = String::new();
        out += "# HELP gov_gates Gates by state.\n# TYPE gov_gates gauge\n";
        for state in STATES {
            out += &format!(
                "gov_gates{{state=\"{}\"}} {}\n",
                state.as_str(),
                by_state.get(&state).unwrap_or(&0)
            );
        }
        out += "# HELP gov_project_memory_bytes Memory of one user's gates of a project as the scan last measured it (memory.current; where the memory controller is off, the sum of PSS).\n# TYPE gov_project_memory_bytes gauge\n";
        for ((p, uid), m) in mem_by_project {
            out += &format!(
                "gov_project_memory_bytes{{project=\"{}\",uid=\"{uid}\"}} {m}\n",
                prom_escape(p)
            );
        }
        if let Some(age) = gauges.memory_age_ms {
            out += &format!("# HELP gov_memory_age_seconds Age of the oldest memory figure above.\n# TYPE gov_memory_age_seconds gauge\ngov_memory_age_seconds {:.3}\n", age as f64 / 1000.0);
        }
        if let Some(n) = gauges.memory_reads {
            out += &format!("# HELP gov_memory_reads_total Memory figures read from cgroupfs or procfs (a memory.current, or one process's smaps_rollup).\n# TYPE gov_memory_reads_total counter\ngov_memory_reads_total {n}\n");
        }
        out += "# HELP gov_reaps_total Gates reaped, by reason.\n# TYPE gov_reaps_total counter\n";
        for (r, n) in &c.reaps {
            out += &format!("gov_reaps_total{{reason=\"{r}\"}} {n}\n");
        }
        out += "# HELP gov_limit_hits_total Times gates hit a limit (pids.max, memory.max, oom_kill, ...).\n# TYPE gov_limit_hits_total counter\n";
        for (k, n) in &c.limit_hits {
            out += &format!("gov_limit_hits_total{{limit=\"{k}\"}} {n}\n");
        }
        out += "# HELP gov_wakes_total Gates woken by input, by the kind of input (stdin, listener, connection).\n# TYPE gov_wakes_total counter\n";
        for kind in ["stdin", "listener", "connection"] {
            let n = c.wakes.get(kind).unwrap_or(&0);
            out += &format!("gov_wakes_total{{kind=\"{kind}\"}} {n}\n");
        }
        out += "# HELP gov_relief_steps_total Memory relief's steps, by rung (hibernate, reclaim, suspend_reclaim, stop).\n# TYPE gov_relief_steps_total counter\n";
        for rung in Rung::ALL {
            let n = c.relief_steps.get(&rung).unwrap_or(&0);
            out += &format!("gov_relief_steps_total{{rung=\"{}\"}} {n}\n", rung.as_str());
        }
        out += "# HELP gov_relief_freed_bytes_total Memory relief freed, by rung: RAM a gate held before it was hibernated or stopped, or what memory.reclaim pushed out.\n# TYPE gov_relief_freed_bytes_total counter\n";
        for rung in Rung::ALL {
            let n = c.relief_freed.get(&rung).unwrap_or(&0);
            out += &format!(
                "gov_relief_freed_bytes_total{{rung=\"{}\"}} {n}\n",
                rung.as_str()
            );
        }
        if let Some(r) = &gauges.relief {
            out += &format!("# HELP gov_relief_active Memory relief is under way (a trigger fired and has not cleared).\n# TYPE gov_relief_active gauge\ngov_relief_active {}\n", u8::from(r.active));
            if let Some(p) = r.pressure_some_avg10 {
                out += &format!("# HELP gov_memory_pressure_percent The host's memory pressure: share of time some task stalled on memory over 10 s (PSI some avg10).\n# TYPE gov_memory_pressure_percent gauge\ngov_memory_pressure_percent {p}\n");
            }
            out += &format!("# HELP gov_memory_available_bytes The host's MemAvailable.\n# TYPE gov_memory_available_bytes gauge\ngov_memory_available_bytes {}\n", r.mem_available_bytes);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(uid: u32) -> Tags {
        Tags {
            project: format!("/p{uid}"),
            owner_uid: uid,
            ..Tags::default()
        }
    }

    #[test]
    fn one_users_flood_does_not_push_out_anothers_events() {
        let j = Journal::new(1000);
        j.record(&tags(1000), "ga", EventKind::Spawned, None, None);
        for i in 0..1500 {
            let kind = if i % 2 == 0 {
                EventKind::Pinned
            } else {
                EventKind::Unpinned
            };
            j.record(&tags(2000), "gb", kind, None, None);
        }
        let a = j.recent(|uid| uid == 1000, None);
        assert_eq!(a.len(), 1, "A's spawn survives B's flood");
        assert_eq!(a[0].gate, "ga");
        // B keeps the rest of the history, its newest events.
        let b = j.recent(|uid| uid == 2000, None);
        assert_eq!(b.len(), 999);
        assert_eq!(b.last().unwrap().kind, EventKind::Unpinned);
        // An admin sees both, in the order they happened.
        let all = j.recent(|_| true, None);
        assert_eq!(all.len(), 1000);
        assert_eq!(all[0].gate, "ga");
        let last = j.recent(|_| true, Some(3));
        assert_eq!(last.len(), 3);
        assert!(last.iter().all(|e| e.gate == "gb"), "the newest: B's");
    }

    #[test]
    fn the_merge_is_in_time_order_and_the_cap_holds() {
        let j = Journal::new(4);
        for (uid, gate) in [(1, "a1"), (2, "b1"), (1, "a2"), (3, "c1"), (2, "b2")] {
            j.record(&tags(uid), gate, EventKind::Spawned, None, None);
        }
        // Full at 4: the fifth pushed out the oldest of a user with most
        // (users 1 and 2 held two each; 1's oldest was older).
        let gates: Vec<String> = j
            .recent(|_| true, None)
            .into_iter()
            .map(|e| e.gate)
            .collect();
        assert_eq!(gates, ["b1", "a2", "c1", "b2"]);
        j.set_cap(2);
        j.record(&tags(3), "c2", EventKind::Spawned, None, None);
        assert_eq!(j.recent(|_| true, None).len(), 2);
    }

    /// Each state's gates are counted on its own line, a hibernated gate's
    /// too, and every state has a line.
    #[test]
    fn gov_gates_counts_every_state() {
        let mut gauges = Gauges::default();
        for (i, state) in STATES.into_iter().enumerate() {
            assert_eq!(listed(state), i);
            gauges.by_state.insert(state, i as u64 + 1);
        }
        let text = Journal::new(10).metrics(None, &gauges);
        for (i, state) in STATES.into_iter().enumerate() {
            let line = format!("gov_gates{{state=\"{}\"}} {}", state.as_str(), i + 1);
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn a_user_sees_only_their_own_counts() {
        let j = Journal::new(10);
        j.count_spawn(1000);
        j.count_touches(1000, 3);
        j.removed(&tags(1000), "ga", Reason::Idle, "stopped", 0);
        j.count_refused(2000);
        let count = |text: &str, name: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        let nobody = j.metrics(Some(65534), &Gauges::default());
        for name in [
            "gov_spawns_total",
            "gov_touches_total",
            "gov_reaps_total",
            "gov_spawns_refused_total",
        ] {
            assert_eq!(count(&nobody, name), 0, "{name}: {nobody}");
        }
        let a = j.metrics(Some(1000), &Gauges::default());
        assert_eq!(count(&a, "gov_touches_total"), 3);
        assert_eq!(count(&a, "gov_reaps_total"), 1);
        assert_eq!(count(&a, "gov_spawns_refused_total"), 0);
        let all = j.metrics(None, &Gauges::default());
        assert_eq!(count(&all, "gov_spawns_refused_total"), 1);
        assert_eq!(count(&all, "gov_spawns_total"), 1);
    }
}
