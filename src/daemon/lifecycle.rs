//! A gate's single owner. Every action on a gate (a scan's decision, touch,
//! thaw, freeze, kill, pin, tag, eviction, removal once it emptied) is a
//! command on the gate's channel, and the owner task performs them one at
//! a time, each to its end, as kubelet's pod workers do. So two actions on
//! one gate never interleave: a touch that arrives while a freeze is in
//! flight waits for it and then thaws; a kill that arrives during a stop
//! grace escalates the teardown already under way instead of starting a
//! second one.
//!
//! A reply is sent once its action has taken effect. Each action runs as a
//! task of its own that the owner awaits: a panic in it is caught there,
//! logged with the gate, and the gate stays managed.
//!
//! The owner's `Gate` is the one state of a gate: `ps`, `show`, `metrics`
//! and the scan read clones of it; only the owner changes it.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::cgroup::{Cgroup, CgroupError};
use crate::gate::{self, now_ms, GateDir, InfoExtra, Tag, Tags};
use crate::policy::{GateSettings, OnMainExit, Policy};
use crate::proc;
use crate::protocol::{ErrorCode, EventKind, Next, NextAction, Reason, Spared};
use crate::reaper::{self, Decision, Phase, View};

use super::mailbox::{self, Receiver, Sender};
use super::{lock, Daemon};

/// How soon a failed kill or removal is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// What the owner knows of its gate.
#[derive(Debug, Clone)]
pub struct Gate {
    pub dir: GateDir,
    pub tags: Tags,
    pub phase: Phase,
    pub populated: bool,
    /// Last real activity: a touch, or CPU use above busy_cpu_percent.
    pub last_active_ms: u64,
    /// Used CPU above busy_cpu_percent over the last interval measured.
    pub busy: bool,
    pub spared: Option<Spared>,
    pub next: Option<Next>,
    /// The last action that failed, and why (shown until one succeeds).
    pub failure: Option<String>,
    /// Why its last dump was refused; no dump is tried again until it ran.
    pub refused: Option<String>,
    /// A daemon died during its dump or restore: finish or undo that first.
    recovering: bool,
    /// The last cpu.stat usage and when it was read.
    cpu_sample: Option<(u64, u64)>,
    /// Limit hits seen so far, to report new ones once.
    limit_hits: BTreeMap<String, u64>,
    /// What the gate held when its teardown began.
    freed: Option<u64>,
    /// Its memory as last measured (by the scan, off the runtime thread),
    /// with when: what metrics and the budget read, never procfs.
    pub memory: Option<gate::Measured>,
    /// Policy for this gate, cached with the policy it came from.
    policy: Arc<Policy>,
    settings: GateSettings,
}

impl Gate {
    /// A gate as a daemon finds it (spawned now, or left by another daemon):
    /// its phase from the tags and the kernel's frozen flag.
    pub fn new(dir: GateDir, tags: Tags, policy: Arc<Policy>) -> Gate {
        let events = dir.cgroup.read_cgroup_events().unwrap_or_default();
        let phase = tags.phase(events.frozen, now_ms());
        let last_active_ms = tags
            .last_active_ms
            .unwrap_or(tags.created_ms)
            .max(tags.created_ms);
        let settings = policy.for_project(&tags.project);
        use crate::hibernate::Phase as H;
        let hibernation = tags.hibernation();
        let refused = match &hibernation {
            Some(H::Refused { reason }) => Some(reason.clone()),
            _ => None,
        };
        let recovering = matches!(hibernation, Some(H::Dumping | H::Restoring));
        Gate {
            refused,
            recovering,
            dir,
            tags,
            phase,
            populated: true,
            last_active_ms,
            busy: false,
            spared: None,
            next: None,
            failure: None,
            cpu_sample: None,
            limit_hits: BTreeMap::new(),
            freed: None,
            memory: None,
            policy,
            settings,
        }
    }

    /// The gate's keeper (its main process, as tagged at spawn). A gate
    /// with no main pid or start time gets one that matches no process, so
    /// every step on it fails instead of signalling whoever has pid 0.
    pub fn keeper(&self) -> crate::keeper::Keeper {
        crate::keeper::Keeper {
            pid: self.tags.main_pid.unwrap_or(0),
            start: self.tags.main_start.unwrap_or(u64::MAX),
        }
    }

    pub fn id(&self) -> &str {
        &self.dir.id
    }

    pub fn settings(&self) -> &GateSettings {
        &self.settings
    }

    /// Pinned by a person or by policy.
    pub fn pinned(&self) -> bool {
        self.tags.pinned || self.settings.pinned
    }

    /// What a daemon adds to `gate::info`.
    pub fn extra(&self) -> InfoExtra {
        InfoExtra {
            phase: Some(self.phase),
            last_active_ms: Some(self.last_active_ms),
            spared: self.spared,
            next: self.next,
            cpu_sample: self.cpu_sample,
            wanted: crate::limits::for_gate(&self.settings),
            hibernate_refused: self.refused.clone(),
            failure: self.failure.clone(),
        }
    }

    fn follow(&mut self, policy: &Arc<Policy>) {
        if !Arc::ptr_eq(&self.policy, policy) {
            self.policy = policy.clone();
            self.settings = policy.for_project(&self.tags.project);
        }
    }

    fn view(&self, traced: bool, criu: bool) -> View {
        View {
            phase: self.phase,
            populated: self.populated,
            created_ms: self.tags.created_ms,
            last_active_ms: self.last_active_ms,
            orphaned_ms: self.tags.orphaned_ms,
            main_exit_stop_ms: self.tags.main_exited_ms.filter(|_| {
                self.tags
                    .stop_on_main_exit
                    .unwrap_or(self.settings.on_main_exit == OnMainExit::Stop)
            }),
            max_runtime_ms: self.tags.max_runtime_ms.or(self
                .settings
                .max_runtime
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            pinned: self.pinned(),
            busy: self.busy,
            traced,
            hibernatable: criu && self.tags.keeper && self.refused.is_none() && !self.recovering,
        }
    }
}

/// A failed request, as its reply says it.
#[derive(Debug)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    fn internal(e: impl std::fmt::Display) -> Failure {
        Failure::new(ErrorCode::Internal, e.to_string())
    }
}

pub type Answer = oneshot::Sender<Result<(), Failure>>;

/// What a scan saw and asks the owner to judge.
pub struct Observation {
    pub now: u64,
    /// Read the gate's event files again (a full pass).
    pub full: bool,
    /// Read its CPU use; otherwise the scan knows it cannot be busy.
    pub measure_cpu: bool,
    pub policy: Arc<Policy>,
}

pub enum Cmd {
    Observe(Observation),
    /// Its event files changed (inotify): it may have emptied or hit a limit.
    Changed,
    /// Its owner process exited.
    Orphaned,
    /// Its main process exited.
    MainExited,
    Touch(Answer),
    Thaw(Answer),
    Freeze(Answer),
    Kill(Answer),
    /// Make room (a project's gate cap, the memory budget), if it is still
    /// a fair victim when the owner gets to it.
    Evict(Reason),
    Pin(bool, Answer),
    Tag(String, Answer),
    /// Start an unprivileged keeper's worker.
    StartWorker(Vec<std::ffi::OsString>, Answer),
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Observe(_) => "observe",
            Cmd::Changed => "changed",
            Cmd::Orphaned => "orphaned",
            Cmd::MainExited => "main exited",
            Cmd::Touch(_) => "touch",
            Cmd::Thaw(_) => "thaw",
            Cmd::Freeze(_) => "freeze",
            Cmd::Kill(_) => "kill",
            Cmd::Evict(_) => "evict",
            Cmd::Pin(..) => "pin",
            Cmd::Tag(..) => "tag",
            Cmd::StartWorker(..) => "start worker",
        }
    }

    /// The answer of a command that found its gate gone: a kill has what it
    /// asked for, anything else did not happen.
    fn gone(self, id: &str) {
        let not_found = || Err(Failure::new(ErrorCode::NotFound, format!("no gate {id}")));
        match self {
            Cmd::Kill(tx) => {
                let _ = tx.send(Ok(()));
            }
            Cmd::Touch(tx)
            | Cmd::Thaw(tx)
            | Cmd::Freeze(tx)
            | Cmd::Pin(_, tx)
            | Cmd::Tag(_, tx)
            | Cmd::StartWorker(_, tx) => {
                let _ = tx.send(not_found());
            }
            Cmd::Observe(_) | Cmd::Changed | Cmd::Orphaned | Cmd::MainExited | Cmd::Evict(_) => {}
        }
    }
}

/// The registry's way to a gate: its channel and a view of its state.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Cmd>,
    gate: Arc<Mutex<Gate>>,
    /// An observation waits in the channel: later scans' are coalesced
    /// into it rather than queued behind a slow action.
    observing: Arc<AtomicBool>,
}

impl Handle {
    /// A copy of the gate's state now.
    pub fn snapshot(&self) -> Gate {
        lock(&self.gate).clone()
    }

    /// Looks at the gate's state in place.
    pub fn peek<T>(&self, f: impl FnOnce(&Gate) -> T) -> T {
        f(&lock(&self.gate))
    }

    /// Publishes a measurement of the gate's memory (the scan's, made on
    /// the blocking pool): the one field of the gate its owner does not
    /// write itself, and a figure only, which no decision of the owner reads.
    pub fn set_memory(&self, m: gate::Measured) {
        lock(&self.gate).memory = Some(m);
    }

    /// Hands a command to the owner; false when the gate is gone.
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Hands a scan's observation to the owner, unless one already waits.
    pub fn observe(&self, o: Observation) {
        if !self.observing.swap(true, Ordering::AcqRel) && !self.send(Cmd::Observe(o)) {
            self.observing.store(false, Ordering::Release);
        }
    }

    /// Sends a command that answers; `Pending::wait` gets the answer.
    pub fn begin(&self, id: &str, cmd: impl FnOnce(Answer) -> Cmd) -> Pending {
        let (tx, rx) = oneshot::channel();
        Pending {
            id: id.to_string(),
            rx: self.send(cmd(tx)).then_some(rx),
        }
    }

    /// Sends a command that answers, and waits for the answer.
    pub async fn ask(&self, id: &str, cmd: impl FnOnce(Answer) -> Cmd) -> Result<(), Failure> {
        self.begin(id, cmd).wait().await
    }
}

/// An answer to come.
pub struct Pending {
    id: String,
    rx: Option<oneshot::Receiver<Result<(), Failure>>>,
}

impl Pending {
    pub async fn wait(self) -> Result<(), Failure> {
        let id = self.id;
        let Some(rx) = self.rx else {
            return Err(Failure::new(ErrorCode::NotFound, format!("no gate {id}")));
        };
        match rx.await {
            Ok(result) => result,
            // The action dropped its answer: it panicked (logged there).
            Err(_) => Err(Failure::new(
                ErrorCode::Internal,
                format!("the action on gate {id} failed; the daemon's log says why"),
            )),
        }
    }
}

/// Starts the owner of a gate and returns the handle to register.
pub fn start(d: &Arc<Daemon>, gate: Gate) -> Handle {
    let (tx, rx) = mailbox::mailbox();
    let id = gate.id().to_string();
    let t = &gate.tags;
    let exits = [
        Exit::watch(&id, t.orphaned_ms, t.owner_pid, t.owner_start),
        Exit::watch(&id, t.main_exited_ms, t.main_pid, t.main_start),
    ];
    let shared = Arc::new(Mutex::new(gate));
    let observing = Arc::new(AtomicBool::new(false));
    let handle = Handle {
        tx,
        gate: shared.clone(),
        observing: observing.clone(),
    };
    let owner = Owner {
        d: d.clone(),
        id,
        gate: shared,
        rx,
        observing,
        exits,
    };
    tokio::spawn(owner.run());
    handle
}

/// Whether the owner goes on after an action.
#[derive(PartialEq, Eq)]
enum Flow {
    Go,
    /// The gate's cgroup is gone: the owner ends.
    Gone,
}

struct Owner {
    d: Arc<Daemon>,
    id: String,
    gate: Arc<Mutex<Gate>>,
    rx: Receiver<Cmd>,
    observing: Arc<AtomicBool>,
    /// The owner process's and the main process's exits, watched here rather
    /// than by tasks of their own (two tasks a gate were 5 MB at 5,000 gates).
    exits: [Option<Exit>; 2],
}

impl Owner {
    async fn run(mut self) {
        loop {
            // A deadline of the gate's own (the end of a stop grace, a kill
            // to try again, a stop due at a known time) wakes the owner
            // without a command.
            let wake = self.wake_at();
            let cmd = tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    // The registry let go: the daemon is stopping.
                    None => return,
                },
                _ = sleep_until_ms(wake) => Cmd::Observe(Observation {
                    now: now_ms(),
                    full: true,
                    measure_cpu: false,
                    policy: self.d.policy(),
                }),
                i = first_exit(&self.exits, self.d.policy().global.scan_interval) => {
                    self.exits[i] = None;
                    if i == 0 { Cmd::Orphaned } else { Cmd::MainExited }
                }
            };
            if matches!(cmd, Cmd::Observe(_)) {
                self.observing.store(false, Ordering::Release);
            }
            let name = cmd.name();
            let action = CatchUnwind(Box::pin(act(self.d.clone(), self.gate.clone(), cmd)));
            match action.await {
                Ok(Flow::Go) => {}
                Ok(Flow::Gone) => break,
                Err(e) => {
                    let why = panic_text(e);
                    tracing::error!(gate = %self.id, "{name} panicked: {why}; the gate stays managed");
                    let tags = {
                        let mut g = lock(&self.gate);
                        g.failure = Some(format!("{name}: {why}"));
                        g.tags.clone()
                    };
                    self.d.journal.record(
                        &tags,
                        &self.id,
                        EventKind::Failed,
                        Some(format!("{name}: {why}")),
                        None,
                    );
                }
            }
        }
        // Gone: out of the registry first, so nothing new arrives, then
        // answer what came meanwhile.
        self.d.gates.remove(&self.id);
        self.rx.close();
        while let Some(cmd) = self.rx.try_recv() {
            cmd.gone(&self.id);
        }
    }

    fn wake_at(&self) -> Option<u64> {
        let g = lock(&self.gate);
        let retry = || now_ms() + RETRY.as_millis() as u64;
        match g.phase {
            Phase::Stopping { .. } => g.next.map(|n| n.at_ms),
            Phase::Killing { .. } => Some(retry()),
            _ if g.recovering => Some(retry()),
            _ if !g.populated => Some(retry()),
            // A stop that no activity can hold off is due at a time known
            // now, so it is done then, not at the next scan (up to a scan
            // interval late). The idle rules wait for the scan: only it
            // measures the CPU use that would spare a busy gate. A due stop
            // that failed is tried again a RETRY later, not in a spin.
            _ => g
                .next
                .filter(|n| {
                    matches!(
                        n.action,
                        NextAction::StopMainExited
                            | NextAction::StopDeadline
                            | NextAction::StopOrphaned
                    )
                })
                .map(|n| if n.at_ms > now_ms() { n.at_ms } else { retry() }),
        }
    }
}

async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(at) => tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// An action run in the owner's own task, its panic caught as a task of its
/// own would catch it, without a task per action: when a full scan pass
/// observed 5,000 idle gates, their 5,000 action tasks were all alive at once
/// (7 MB), although each finishes at its first poll. Boxed, so the owner's
/// future stays small while it waits.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let action = self.0.as_mut();
        // AssertUnwindSafe: after a panic the action is dropped, and the gate
        // it changed is shared through a Mutex whose poison `lock` ignores, as
        // it did when actions were tasks.
        match std::panic::catch_unwind(AssertUnwindSafe(|| action.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(flow)) => Poll::Ready(Ok(flow)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// One action, to its end.
async fn act(d: Arc<Daemon>, gate: Arc<Mutex<Gate>>, cmd: Cmd) -> Flow {
    let mut a = Action { d, gate };
    // A dump or restore a previous daemon left: finished or undone before
    // anything else is done to the gate.
    if a.with(|g| g.recovering) {
        a.recover().await;
        // CRIU still at work: the rule book waits with it.
        if a.with(|g| g.recovering)
            && matches!(
                cmd,
                Cmd::Observe(_) | Cmd::Changed | Cmd::Orphaned | Cmd::MainExited | Cmd::Evict(_)
            )
        {
            return Flow::Go;
        }
    }
    match cmd {
        Cmd::Observe(o) => a.observe(o).await,
        Cmd::Changed => {
            a.read_events();
            a.review(now_ms()).await
        }
        Cmd::Orphaned | Cmd::MainExited => {
            a.exited(cmd);
            a.review(now_ms()).await
        }
        Cmd::Touch(tx) => {
            let r = a.touch().await;
            let _ = tx.send(r);
            Flow::Go
        }
        Cmd::Thaw(tx) => {
            let r = a.resume("thaw").await;
            let _ = tx.send(r);
            Flow::Go
        }
        Cmd::Freeze(tx) => {
            let r = a.freeze_by_person().await;
            let _ = tx.send(r);
            Flow::Go
        }
        Cmd::Kill(tx) => {
            let r = a.kill(Reason::Manual).await;
            let gone = r.is_ok();
            let _ = tx.send(r.map_err(Failure::internal));
            if gone {
                Flow::Gone
            } else {
                Flow::Go
            }
        }
        Cmd::Evict(reason) => a.evict(reason).await,
        Cmd::Pin(pinned, tx) => {
            let r = a.pin(pinned);
            let ok = r.is_ok();
            let _ = tx.send(r);
            if ok {
                a.review(now_ms()).await
            } else {
                Flow::Go
            }
        }
        Cmd::Tag(session, tx) => {
            let _ = tx.send(a.tag(&session));
            Flow::Go
        }
        Cmd::StartWorker(cmd, tx) => {
            let _ = tx.send(a.start_worker(cmd).await);
            Flow::Go
        }
    }
}

/// Test hooks, set through GOV_TEST_FAULT ("pin=panic,freeze=sleep:300"):
/// a panic in an action, or a pause inside one to hold a race window open.
fn fault(point: &str) {
    static FAULTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    let faults = FAULTS.get_or_init(|| {
        std::env::var("GOV_TEST_FAULT")
            .unwrap_or_default()
            .split(',')
            .filter_map(|f| f.split_once('='))
            .map(|(p, a)| (p.to_string(), a.to_string()))
            .collect()
    });
    for (p, what) in faults {
        if p != point {
            continue;
        }
        if what == "panic" {
            panic!("fault injected at {point}");
        }
        if let Some(ms) = what.strip_prefix("sleep:").and_then(|m| m.parse().ok()) {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

struct Action {
    d: Arc<Daemon>,
    gate: Arc<Mutex<Gate>>,
}

impl Action {
    fn with<T>(&self, f: impl FnOnce(&mut Gate) -> T) -> T {
        f(&mut lock(&self.gate))
    }

    fn cgroup(&self) -> Cgroup {
        self.with(|g| g.dir.cgroup.clone())
    }

    fn event(&self, kind: EventKind, reason: Option<String>, freed: Option<u64>) {
        let (tags, id) = self.with(|g| (g.tags.clone(), g.dir.id.clone()));
        self.d.journal.record(&tags, &id, kind, reason, freed);
    }

    fn failed(&self, what: &str, e: impl std::fmt::Display) {
        let why = format!("{what}: {e}");
        tracing::warn!(gate = %self.with(|g| g.dir.id.clone()), "{why}");
        self.with(|g| g.failure = Some(why.clone()));
        self.event(EventKind::Failed, Some(why), None);
    }

    /// Re-reads cgroup.events and the limit counters. False when the
    /// cgroup is gone.
    fn read_events(&self) -> bool {
        let cg = self.cgroup();
        let events = match cg.read_cgroup_events() {
            Ok(e) => e,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => return false,
            Err(_) => return true,
        };
        let hits = crate::limits::hits(&cg);
        let new: Vec<(String, u64)> = self.with(|g| {
            g.populated = events.populated;
            let new = hits
                .iter()
                .filter_map(|(kind, &n)| {
                    let before = g.limit_hits.get(kind).copied().unwrap_or(0);
                    (n > before).then(|| (kind.clone(), n - before))
                })
                .collect();
            g.limit_hits = hits;
            new
        });
        let (tags, id) = self.with(|g| (g.tags.clone(), g.dir.id.clone()));
        for (kind, n) in new {
            self.d.journal.limit_hit(&tags, &id, &kind, n);
        }
        true
    }

    async fn observe(&mut self, o: Observation) -> Flow {
        self.with(|g| g.follow(&o.policy));
        if o.full && !self.read_events() {
            return Flow::Gone;
        }
        if o.measure_cpu {
            self.measure_cpu(o.now);
        } else {
            self.with(|g| g.busy = false);
        }
        self.review(o.now).await
    }

    /// CPU use above busy_cpu_percent since the last sample is activity.
    fn measure_cpu(&self, now: u64) {
        let Ok(usage) = self.cgroup().read_cpu_usage_usec() else {
            return;
        };
        let active = self.with(|g| {
            if let Some((prev_usage, prev_at)) = g.cpu_sample {
                let wall_usec = now.saturating_sub(prev_at).saturating_mul(1000);
                if wall_usec > 0 {
                    let percent =
                        usage.saturating_sub(prev_usage) as f64 * 100.0 / wall_usec as f64;
                    g.busy = percent >= g.settings.busy_cpu_percent;
                }
            }
            g.cpu_sample = Some((usage, now));
            g.busy && g.phase == Phase::Running
        });
        if active {
            self.mark_active(now);
        }
    }

    fn mark_active(&self, now: u64) {
        let cg = self.with(|g| {
            g.last_active_ms = now;
            g.tags.last_active_ms = Some(now);
            g.dir.cgroup.clone()
        });
        // Persisted so a restarted daemon does not reset the idle clock.
        let _ = Tag::LastActive.set(&cg, Some(&now.to_string()));
    }

    /// Asks the reaper's rule book and performs its decision.
    async fn review(&mut self, now: u64) -> Flow {
        let criu = self.d.criu.is_some();
        let (view, settings) = self.with(|g| (g.view(false, criu), g.settings.clone()));
        let mut decision = reaper::step(&view, &settings, now);
        // Only a gate about to be reaped pays for the debugger check.
        if decision.is_reap() && !view.phase.is_reaping() && is_traced(&self.cgroup()) {
            decision = reaper::step(
                &View {
                    traced: true,
                    ..view
                },
                &settings,
                now,
            );
        }
        self.perform(decision).await
    }

    async fn perform(&mut self, decision: Decision) -> Flow {
        match decision {
            Decision::Keep { spared, next } => {
                self.with(|g| {
                    g.spared = spared;
                    g.next = next;
                });
                Flow::Go
            }
            Decision::Suspend(reason) => {
                self.with(|g| g.spared = None);
                if let Err(e) = self.suspend(reason, false).await {
                    self.failed("suspend", e);
                }
                Flow::Go
            }
            Decision::Hibernate => {
                self.hibernate().await;
                Flow::Go
            }
            Decision::Stop(reason) => {
                self.with(|g| g.spared = None);
                self.stop(reason).await
            }
            Decision::Kill(reason) => match self.kill(reason).await {
                Ok(()) => Flow::Gone,
                Err(e) => {
                    self.failed("kill", e);
                    Flow::Go
                }
            },
            Decision::Remove => self.remove_empty().await,
        }
    }

    /// Freezes the gate; it keeps all its state and costs no CPU. If the
    /// freeze does not complete, it is undone: never a gate half frozen
    /// while it is shown running.
    async fn suspend(&mut self, reason: Reason, manual: bool) -> Result<(), CgroupError> {
        let cg = self.cgroup();
        let c = cg.clone();
        let frozen = blocking(move || {
            c.write_freeze(true)?;
            fault("freeze");
            c.wait_events("frozen", gate::FREEZE_TIMEOUT, |e| e.frozen || !e.populated)
        })
        .await;
        if let Err(e) = frozen {
            let _ = cg.write_freeze(false);
            return Err(e);
        }
        let now = now_ms();
        Tag::Frozen.set(&cg, Some(&now.to_string()))?;
        Tag::FrozenManual.set(&cg, manual.then_some("1"))?;
        let reclaim = self.with(|g| {
            g.phase = Phase::Suspended {
                since_ms: now,
                manual,
            };
            g.tags.frozen_ms = Some(now);
            g.tags.frozen_manual = manual;
            g.failure = None;
            g.settings.reclaim_when_frozen
        });
        let mut reclaimed = None;
        if reclaim && cg.has_file("memory.reclaim") {
            let c = cg.clone();
            reclaimed = blocking(move || reclaim_memory(&c)).await.ok();
        }
        let kind = if manual {
            EventKind::Frozen
        } else {
            EventKind::Suspended
        };
        self.event(kind, Some(reason.as_str().to_string()), reclaimed);
        Ok(())
    }

    async fn touch(&mut self) -> Result<(), Failure> {
        let (phase, id) = self.with(|g| (g.phase, g.dir.id.clone()));
        self.not_recovering(&id)?;
        if phase.is_reaping() {
            return Err(Failure::new(
                ErrorCode::Reaping,
                format!("gate {id} is being reaped"),
            ));
        }
        self.mark_active(now_ms());
        if matches!(phase, Phase::Suspended { .. } | Phase::Hibernated { .. }) {
            self.resume("touch").await?;
        }
        Ok(())
    }

    /// Thaws a suspended or frozen gate: it runs when this returns Ok.
    async fn resume(&mut self, why: &str) -> Result<(), Failure> {
        let (phase, id, cg) = self.with(|g| (g.phase, g.dir.id.clone(), g.dir.cgroup.clone()));
        self.not_recovering(&id)?;
        if phase.is_reaping() {
            return Err(Failure::new(
                ErrorCode::Reaping,
                format!("gate {id} is being reaped"),
            ));
        }
        if matches!(phase, Phase::Hibernated { .. }) {
            // Back from disk; the thaw is part of the restore.
            self.wake().await?;
        } else {
            let c = cg.clone();
            blocking(move || c.thaw(gate::FREEZE_TIMEOUT))
                .await
                .map_err(Failure::internal)?;
        }
        let _ = Tag::Frozen.set(&cg, None);
        let _ = Tag::FrozenManual.set(&cg, None);
        let now = now_ms();
        self.with(|g| {
            g.phase = Phase::Running;
            g.tags.frozen_ms = None;
            g.tags.frozen_manual = false;
            g.last_active_ms = now;
            g.failure = None;
            // It ran again: a refused dump may be tried anew.
            g.refused = None;
        });
        if matches!(phase, Phase::Suspended { .. }) {
            self.event(EventKind::Thawed, Some(why.to_string()), None);
        }
        self.review(now).await;
        Ok(())
    }

    async fn freeze_by_person(&mut self) -> Result<(), Failure> {
        let (phase, id, cg) = self.with(|g| (g.phase, g.dir.id.clone(), g.dir.cgroup.clone()));
        match phase {
            Phase::Stopping { .. } | Phase::Killing { .. } => Err(Failure::new(
                ErrorCode::Reaping,
                format!("gate {id} is being reaped"),
            )),
            // Frozen already, or better: on disk.
            Phase::Suspended { manual: true, .. } | Phase::Hibernated { .. } => Ok(()),
            // Already frozen by the reaper: now it is the person's freeze.
            Phase::Suspended { since_ms, .. } => {
                Tag::FrozenManual
                    .set(&cg, Some("1"))
                    .map_err(Failure::internal)?;
                self.with(|g| {
                    g.phase = Phase::Suspended {
                        since_ms,
                        manual: true,
                    };
                    g.tags.frozen_manual = true;
                });
                self.event(
                    EventKind::Frozen,
                    Some(Reason::Manual.as_str().into()),
                    None,
                );
                Ok(())
            }
            Phase::Running => self
                .suspend(Reason::Manual, true)
                .await
                .map_err(Failure::internal),
        }
    }

    async fn evict(&mut self, reason: Reason) -> Flow {
        let fair =
            self.with(|g| !g.phase.is_reaping() && !g.busy && !g.pinned() && g.spared.is_none());
        if !fair {
            return Flow::Go;
        }
        self.stop(reason).await
    }

    /// The polite part of a teardown: thaw (a frozen process cannot handle
    /// a signal), stop_signal to the main process, then up to stop_grace
    /// for the tree to exit by itself. The owner keeps serving meanwhile; the
    /// grace's end wakes it to kill.
    async fn stop(&mut self, reason: Reason) -> Flow {
        let cg = self.cgroup();
        let freed = self.measure_memory().await;
        let now = now_ms();
        let stopping = Phase::Stopping {
            since_ms: now,
            reason,
        };
        if let Err(e) = Tag::Reaping.set(&cg, stopping.intent_tag().as_deref()) {
            self.failed("stop", e);
            return Flow::Go;
        }
        let (tags, grace) = self.with(|g| {
            g.phase = stopping;
            g.tags.reaping = stopping.intent_tag();
            g.freed = Some(freed);
            g.spared = None;
            (g.tags.clone(), g.settings.stop_grace)
        });
        self.with(|g| {
            g.next = Some(Next {
                action: NextAction::Kill,
                at_ms: now.saturating_add(u64::try_from(grace.as_millis()).unwrap_or(u64::MAX)),
            })
        });
        self.event(EventKind::Stopping, Some(reason.as_str().into()), None);
        let c = cg.clone();
        if let Err(e) = blocking(move || c.thaw(gate::FREEZE_TIMEOUT)).await {
            // The kill at the grace's end does not need the thaw.
            self.failed("thaw before stop_signal", e);
        }
        let signal = self.with(|g| g.settings.stop_signal);
        send_stop_signal(&cg, &tags, signal);
        Flow::Go
    }

    /// The end of every teardown: freeze and cgroup.kill the whole tree,
    /// then remove it. During a stop grace it keeps the stop's reason: one
    /// teardown, one `removed` event, one reap counted.
    async fn kill(&mut self, reason: Reason) -> anyhow::Result<()> {
        let (phase, cg) = self.with(|g| (g.phase, g.dir.cgroup.clone()));
        let reason = match phase {
            Phase::Stopping { reason, .. } | Phase::Killing { reason } => reason,
            _ => reason,
        };
        let freed = match self.with(|g| g.freed) {
            Some(f) => f,
            None => self.measure_memory().await,
        };
        let killing = Phase::Killing { reason };
        Tag::Reaping.set(&cg, killing.intent_tag().as_deref())?;
        self.with(|g| {
            g.phase = killing;
            g.tags.reaping = killing.intent_tag();
            g.freed = Some(freed);
        });
        let c = cg.clone();
        // Frozen and killed as one: nothing can fork or react.
        blocking(move || c.kill_all(gate::KILL_TIMEOUT)).await?;
        self.finish(reason, "killed", freed).await
    }

    /// What the gate holds now, read once off the runtime thread (PSS of a
    /// big tree takes a while), bounded by `gate::MEMORY_READ_BOUND`.
    async fn measure_memory(&self) -> u64 {
        let dir = self.with(|g| g.dir.clone());
        let deadline = std::time::Instant::now() + gate::MEMORY_READ_BOUND;
        let m = match tokio::task::spawn_blocking(move || gate::Measured::now(&dir, deadline)).await
        {
            Ok(m) => m,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        self.with(|g| g.memory = Some(m));
        m.bytes
    }

    async fn finish(&mut self, reason: Reason, how: &str, freed: u64) -> anyhow::Result<()> {
        let dir = self.with(|g| g.dir.clone());
        self.remove_cgroup().await?;
        let tags = self.with(|g| g.tags.clone());
        self.d.journal.removed(&tags, &dir.id, reason, how, freed);
        Ok(())
    }

    /// Removes the emptied gate's cgroup; a keeper gate's image goes with
    /// it, however the gate ended: no image nobody owns.
    async fn remove_cgroup(&self) -> anyhow::Result<()> {
        if self.with(|g| g.tags.keeper) {
            crate::criu::remove_image(&self.image_dir())?;
        }
        let d = self.with(|g| g.dir.clone());
        blocking(move || d.remove()).await?;
        Ok(())
    }

    /// Every process exited: by itself, or during a stop grace.
    async fn remove_empty(&mut self) -> Flow {
        let (phase, freed) = self.with(|g| (g.phase, g.freed.unwrap_or(0)));
        if let Phase::Stopping { reason, .. } | Phase::Killing { reason } = phase {
            return match self.finish(reason, "stopped", freed).await {
                Ok(()) => Flow::Gone,
                Err(e) => {
                    self.failed("remove", e);
                    Flow::Go
                }
            };
        }
        match self.remove_cgroup().await {
            Ok(()) => {
                self.event(EventKind::Exited, None, None);
                Flow::Gone
            }
            // EBUSY: a process entered it between our read and the rmdir.
            Err(e) => {
                tracing::debug!("gate not removed yet: {e}");
                Flow::Go
            }
        }
    }

    async fn start_worker(&self, cmd: Vec<std::ffi::OsString>) -> Result<(), Failure> {
        let (cg, keeper, owner) =
            self.with(|g| (g.dir.cgroup.clone(), g.keeper(), g.tags.owner_uid));
        let w = cg.child(crate::keeper::WORKER_CGROUP);
        if w.read_cgroup_events().map_err(Failure::internal)?.populated {
            return Err(Failure::new(
                ErrorCode::BadRequest,
                "its worker runs already",
            ));
        }
        let gov = std::env::current_exe().map_err(Failure::internal)?;
        blocking_any(move || {
            let spec = crate::keeper::WorkerSpec::of_keeper(keeper, owner, cmd)?;
            crate::keeper::start_worker(&gov, keeper, w.path(), &spec, Duration::from_secs(10))?;
            // Started: from now on an empty worker cgroup is a real exit.
            crate::keeper::release(keeper).map_err(|e| e.to_string())?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await
        .map_err(Failure::internal)
    }

    /// CRIU still works on a step a previous daemon began: answered `busy`
    /// (nothing was done), which the client tries again, rather than a
    /// success before the gate runs.
    fn not_recovering(&self, id: &str) -> Result<(), Failure> {
        if self.with(|g| g.recovering) {
            return Err(Failure::new(
                ErrorCode::Busy,
                format!("gate {id} is finishing a hibernation step; try again"),
            ));
        }
        Ok(())
    }

    fn image_dir(&self) -> std::path::PathBuf {
        let id = self.with(|g| g.dir.id.clone());
        self.d.policy().global.hibernate_dir.join(id)
    }

    fn hibernate_options(&self) -> crate::hibernate::Options {
        crate::hibernate::Options {
            max_image_bytes: self.d.policy().global.hibernate_max_bytes,
            ..Default::default()
        }
    }

    /// Dumps a suspended keeper gate's worker to disk: its RAM is freed,
    /// its keeper holds the host's pid and pipes. A refused dump leaves the
    /// gate suspended as it was, says why, and is not tried again until the
    /// gate ran.
    async fn hibernate(&mut self) {
        let Some(criu) = self.d.criu.clone() else {
            return;
        };
        let (cg, keeper) = self.with(|g| (g.dir.cgroup.clone(), g.keeper()));
        let dir = self.image_dir();
        // Root's alone (0700), below directories only root controls; made
        // if missing, never chmod'ed through a symlink.
        if let Err(e) = crate::criu::ensure_private_dir(dir.parent().unwrap_or(&dir)) {
            self.refuse(e.to_string());
            return;
        }
        let opts = self.hibernate_options();
        let c = cg.clone();
        let d = dir.clone();
        let r =
            blocking_any(move || crate::hibernate::hibernate(&criu, &c, keeper, &d, &opts)).await;
        match r {
            Ok(report) => {
                let now = now_ms();
                self.with(|g| {
                    g.phase = Phase::Hibernated {
                        since_ms: now,
                        image_bytes: report.image_bytes,
                    };
                    g.tags.hibernate = crate::hibernate::Phase::Hibernated {
                        image_bytes: report.image_bytes,
                    }
                    .to_tag()
                    .into();
                });
                let why = format!("dumped in {} ms", report.elapsed.as_millis());
                self.event(EventKind::Hibernated, Some(why), Some(report.image_bytes));
            }
            // criu goes on by itself; the next look finishes the step.
            Err(crate::hibernate::HibernateError::Criu(crate::criu::CriuError::StillRunning {
                ..
            })) => self.with(|g| g.recovering = true),
            Err(e) => self.refuse(e.reason()),
        }
    }

    fn refuse(&self, reason: String) {
        let cg = self.cgroup();
        let tag = crate::hibernate::Phase::Refused {
            reason: reason.clone(),
        }
        .to_tag();
        let _ = Tag::Hibernate.set(&cg, Some(&tag));
        self.with(|g| {
            g.refused = Some(reason.clone());
            g.tags.hibernate = Some(tag);
        });
        self.failed("hibernate refused", reason);
    }

    /// Restores a hibernated gate; on failure the image is kept and the
    /// gate stays hibernated, so `gov thaw` can try again.
    async fn wake(&mut self) -> Result<(), Failure> {
        let Some(criu) = self.d.criu.clone() else {
            return Err(Failure::new(
                ErrorCode::Internal,
                "the gate is hibernated but this daemon found no criu to restore it",
            ));
        };
        let (cg, keeper) = self.with(|g| (g.dir.cgroup.clone(), g.keeper()));
        let (dir, opts) = (self.image_dir(), self.hibernate_options());
        let c = cg.clone();
        let r = blocking_any(move || crate::hibernate::wake(&criu, &c, keeper, &dir, &opts)).await;
        match r {
            Ok(report) => {
                self.with(|g| g.tags.hibernate = None);
                let why = format!("restored in {} ms", report.elapsed.as_millis());
                self.event(EventKind::Restored, Some(why), None);
                Ok(())
            }
            Err(e) => {
                let why = e.reason();
                self.with(|g| g.failure = Some(format!("restore: {why}")));
                self.event(EventKind::Failed, Some(format!("restore: {why}")), None);
                Err(Failure::new(
                    ErrorCode::Internal,
                    format!("restore failed, the image is kept (`gov thaw` tries again): {why}"),
                ))
            }
        }
    }

    /// A daemon died during this gate's dump or restore: finish or undo it.
    async fn recover(&mut self) {
        use crate::hibernate::{self as h, Recovery};
        let (cg, keeper, tags) = self.with(|g| (g.dir.cgroup.clone(), g.keeper(), g.tags.clone()));
        let Some(phase) = tags.hibernation() else {
            self.with(|g| g.recovering = false);
            return;
        };
        let dir = self.image_dir();
        let c = cg.clone();
        let criu = self.d.criu.clone();
        let r = blocking_any(move || {
            let recovery = h::recover(&phase, h::observe(&c, keeper, &dir, criu.as_ref())?);
            h::apply(recovery, &c, keeper, &dir)?;
            Ok::<_, h::HibernateError>(recovery)
        })
        .await;
        tracing::debug!(gate = %self.with(|g| g.dir.id.clone()), ?r, "hibernation recovery");
        match r {
            Ok(Recovery::Wait) => {}
            Ok(recovery) => {
                let fresh = crate::gate::Tags::read(&cg).ok().flatten();
                let now = now_ms();
                self.with(|g| {
                    g.recovering = false;
                    if let Some(t) = fresh {
                        g.tags.hibernate = t.hibernate;
                    }
                    g.phase = match recovery {
                        Recovery::PromoteImage | Recovery::Hibernated => match g.tags.hibernation()
                        {
                            Some(h::Phase::Hibernated { image_bytes }) => Phase::Hibernated {
                                since_ms: g.tags.frozen_ms.unwrap_or(now),
                                image_bytes,
                            },
                            _ => g.phase,
                        },
                        Recovery::BackToSuspended => Phase::Suspended {
                            since_ms: g.tags.frozen_ms.unwrap_or(now),
                            manual: false,
                        },
                        Recovery::RestoreDone => Phase::Running,
                        _ => g.phase,
                    };
                });
                self.event(
                    EventKind::Adopted,
                    Some(format!(
                        "hibernation step finished after a restart: {recovery:?}"
                    )),
                    None,
                );
            }
            Err(e) => self.failed("hibernation recovery", e.reason()),
        }
    }

    /// Records, once, that a watched process exited: the owner process
    /// (orphaned) or the main process.
    fn exited(&self, which: Cmd) {
        let now = now_ms();
        let (tag, kind, reason) = match which {
            Cmd::Orphaned => (Tag::Orphaned, EventKind::Orphaned, Some("owner exited")),
            _ => (Tag::MainExited, EventKind::MainExited, None),
        };
        let (cg, already) = self.with(|g| {
            let slot = match tag {
                Tag::Orphaned => &mut g.tags.orphaned_ms,
                _ => &mut g.tags.main_exited_ms,
            };
            let already = slot.is_some();
            slot.get_or_insert(now);
            (g.dir.cgroup.clone(), already)
        });
        if already {
            return;
        }
        let _ = tag.set(&cg, Some(&now.to_string()));
        self.event(kind, reason.map(str::to_string), None);
    }

    fn pin(&self, pinned: bool) -> Result<(), Failure> {
        let cg = self.cgroup();
        Tag::Pinned
            .set(&cg, pinned.then_some("1"))
            .map_err(Failure::internal)?;
        fault("pin");
        self.with(|g| g.tags.pinned = pinned);
        let kind = if pinned {
            EventKind::Pinned
        } else {
            EventKind::Unpinned
        };
        self.event(kind, None, None);
        Ok(())
    }

    fn tag(&self, session: &str) -> Result<(), Failure> {
        let cg = self.cgroup();
        Tag::Session
            .set(&cg, Some(session))
            .map_err(Failure::internal)?;
        self.with(|g| g.tags.session = session.to_string());
        self.event(EventKind::Tagged, Some(format!("session {session}")), None);
        Ok(())
    }
}

/// A watched process (the gate's owner, or its main process): a pidfd,
/// readable once it has exited (an exec is not an exit).
enum Exit {
    /// It had exited before the watch began, or its pid now names another
    /// process (the start time differs).
    Gone,
    Pidfd(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>),
    /// No pidfd could be had (EMFILE with thousands of gates): the pid and
    /// its start time are checked at every scan interval instead, so a gate
    /// whose owner lives is never taken for orphaned.
    Poll {
        pid: u32,
        start: Option<u64>,
    },
}

impl Exit {
    /// A watch of `pid`, unless there is none to watch or its exit is already
    /// recorded (`seen_ms`).
    fn watch(id: &str, seen_ms: Option<u64>, pid: Option<u32>, start: Option<u64>) -> Option<Exit> {
        let pid = pid.filter(|_| seen_ms.is_none())?;
        let same = || start.is_none() || proc::start_time(pid) == start;
        Some(match proc::pidfd_open(pid) {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and
            // unchanged until the AsyncFd drops it.
            Ok(fd) if same() => match unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            } {
                Ok(afd) => Exit::Pidfd(afd),
                Err(e) => {
                    tracing::debug!(gate = %id, "cannot watch the pidfd of {pid} ({e}); polling it");
                    Exit::Poll { pid, start }
                }
            },
            Ok(_) => Exit::Gone,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Exit::Gone,
            Err(e) => {
                tracing::debug!(gate = %id, "no pidfd for {pid} ({e}); polling it");
                Exit::Poll { pid, start }
            }
        })
    }

    /// Returns once the process has exited. Cancel-safe: a poll checks first,
    /// so an owner woken more often than `interval` still checks each time.
    async fn wait(&self, interval: Duration) {
        match self {
            Exit::Gone => {}
            Exit::Pidfd(afd) => {
                let _ = afd.readable().await;
            }
            Exit::Poll { pid, start } => {
                let same = || start.is_none() || proc::start_time(*pid) == *start;
                while proc::is_alive(*pid) && same() {
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }
}

/// Which of a gate's watched processes exits first: 0 the owner, 1 the main
/// process. Never returns while neither is watched.
async fn first_exit(exits: &[Option<Exit>; 2], interval: Duration) -> usize {
    let wait = |i: usize| async move {
        match &exits[i] {
            Some(exit) => exit.wait(interval).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = wait(0) => 0,
        _ = wait(1) => 1,
    }
}

fn is_traced(cg: &Cgroup) -> bool {
    cg.read_procs()
        .unwrap_or_default()
        .into_iter()
        .any(|p| proc::tracer_pid(p).is_some())
}

/// stop_signal to the gate's main process, if it is still the process we
/// started (start time) and in the gate; else to every member, so they can
/// still clean up. Each through a pidfd checked after it was opened.
fn send_stop_signal(cg: &Cgroup, tags: &Tags, sig: nix::sys::signal::Signal) {
    let member = |p: u32| cg.read_procs().unwrap_or_default().contains(&p);
    let main = tags.main_pid.filter(|&p| {
        let mut sent = false;
        let _ = proc::signal_checked(p, sig as i32, |p| {
            sent = tags.main_start.is_some() && proc::start_time(p) == tags.main_start && member(p);
            sent
        });
        sent
    });
    if main.is_none() {
        for p in cg.read_procs().unwrap_or_default() {
            let _ = proc::signal_checked(p, sig as i32, member);
        }
    }
}

/// memory.reclaim of everything a frozen gate holds; returns bytes freed.
fn reclaim_memory(cg: &Cgroup) -> Result<u64, CgroupError> {
    let before = cg.read_memory_current()?.unwrap_or(0);
    // Ask for what is left, a few rounds: the kernel may reclaim less than
    // asked (and say EAGAIN), and swapped pages leave the charge in batches.
    let mut last = before;
    for _ in 0..8 {
        let _ = cg.write_file("memory.reclaim", &last.to_string());
        let now = cg.read_memory_current()?.unwrap_or(0);
        if now + (1 << 20) > last {
            last = now;
            break;
        }
        last = now;
    }
    Ok(before.saturating_sub(last))
}

/// Runs blocking work off the async thread; a panic there reaches the
/// action, which the owner catches.
async fn blocking_any<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Runs blocking cgroupfs work (waits, kills) off the async thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CgroupError> + Send + 'static,
) -> Result<T, CgroupError> {
    blocking_any(f).await
}
