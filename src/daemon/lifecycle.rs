//! A gate's single owner. Every action on a gate (a scan's decision, touch,
//! thaw, freeze, kill, pin, tag, eviction, removal once it emptied) is a
//! command on the gate's channel, and the owner task performs them one at
//! a time, each to its end, as kubelet's pod workers do. So two actions on
//! one gate never interleave: a touch that arrives while a freeze is in
//! flight waits for it and then thaws; a kill that arrives during a stop
//! grace escalates the teardown already under way instead of starting a
//! second one.
//!
//! The owner holds its `Gate` by value, and its phase and tags are written
//! only through the gate's `Record`. After each command the owner publishes
//! a copy (`Handle::view`): `ps`, `show`, metrics, the scan and completion
//! read that, never the gate itself. A reply is sent once its action has
//! taken effect. A panic in an action is caught, logged with the gate, and
//! the gate stays managed.
//!
//! The owner reaches the rest of the daemon only through its `Ctx`: the
//! policy, the journal, CRIU, the kernel, and a weak way back to the
//! registry (`leave`). So when the daemon lets go of the registry, every owner's
//! channel closes and the owner ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::gate::{self, now_ms, GateDir, InfoExtra, Measured, Tags};
use crate::policy::{GateSettings, OnMainExit, Policy};
use crate::proc;
use crate::protocol::{EventKind, Next, NextAction, Reason, Rung, Spared};
use crate::reaper::{self, Decision, Phase, View};
use crate::record::Record;
use crate::relief;

use super::failure::Failure;
use super::inputs::{self, Watch, Woke};
use super::journal::Journal;
use super::kernel::Kernel;
use super::lock;
use super::mailbox::{self, Receiver, Sender};

/// How soon a failed kill or removal is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How many quiet times a gate woken by a line waits for its answer (it
/// writes something) before it is suspended anyway: a slow request (a
/// server waiting on a timer, with little CPU) is answered, and a reader
/// that never answers (a sink) sleeps again a minute later by default.
const ANSWER_WAIT: u64 = 6;

/// Wakes on input a gate may have in WAKE_WINDOW before it is kept awake
/// until the window has passed (systemd's TriggerLimitBurst and
/// TriggerLimitIntervalSec): an input that wakes it again and again (a
/// reader that never reads what waits) costs a freeze and thaw every half
/// second at most (~0.5 ms each), and a busy host's gate simply stays
/// awake while it is busy.
const WAKE_BURST: usize = 120;
const WAKE_WINDOW_MS: u64 = 60_000;

/// What an owner may use of the daemon, and nothing more.
pub struct Ctx {
    pub policy: watch::Receiver<Arc<Policy>>,
    pub journal: Arc<Journal>,
    /// CRIU, found and checked at start; None: hibernation is off.
    pub criu: Option<crate::criu::Criu>,
    pub kernel: Arc<dyn Kernel>,
    /// Takes a gate out of the registry as its owner ends. It holds the
    /// registry weakly: the registry holds the owners' channels, and an
    /// owner must see its channel close when the daemon lets go.
    pub leave: Box<dyn Fn(&str) + Send + Sync>,
}

impl Ctx {
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.borrow().clone()
    }
}

/// What the owner knows of its gate.
#[derive(Debug, Clone)]
pub struct Gate {
    pub dir: GateDir,
    /// Its tags and phase: written together, only through this.
    record: Record,
    pub populated: bool,
    /// Last real activity: a touch, or CPU use above busy_cpu_percent.
    pub last_active_ms: u64,
    /// Used CPU above busy_cpu_percent over the last interval measured.
    pub busy: bool,
    pub spared: Option<Spared>,
    pub next: Option<Next>,
    /// The last action that failed, and why (shown until one succeeds).
    pub failure: Option<String>,
    /// The last cpu.stat usage and when it was read.
    cpu_sample: Option<(u64, u64)>,
    /// Limit hits seen so far, to report new ones once.
    limit_hits: BTreeMap<String, u64>,
    /// What the gate held when its teardown began.
    freed: Option<u64>,
    /// Policy for this gate, cached with the policy it came from.
    policy: Arc<Policy>,
    settings: GateSettings,
    /// What input would wake it, while it sleeps (`wake::summary`).
    pub wakes_on: Vec<String>,
    /// Inputs not watched, and why.
    pub wake_note: Option<String>,
    /// Its wakes on input in the last WAKE_WINDOW_MS.
    wakes: Vec<u64>,
    /// What it had written when stdin woke it, and until when it is kept
    /// awake for its answer: until it writes more (its answer), it is not
    /// suspended again, for up to ANSWER_WAIT quiet times.
    written_at_wake: Option<(u64, u64)>,
    /// The inputs that woke it at their end (its host closed them).
    ended_inputs: Vec<u64>,
    /// A wake on input failed (a restore, a thaw): its inputs are not
    /// watched again before this time, so a failing wake is retried once a
    /// minute, not in a loop.
    wake_paused_until: Option<u64>,
    /// Its memory was pushed to swap during the sleep that began then
    /// (memory.reclaim): not worth pushing again until it ran.
    reclaimed_since: Option<u64>,
}

impl Gate {
    /// A gate as a daemon finds it (spawned now, or left by another daemon):
    /// its phase from the tags and the kernel's frozen flag.
    pub fn found(dir: GateDir, tags: Tags, kernel: &dyn Kernel, policy: Arc<Policy>) -> Gate {
        let frozen = kernel.events(&dir.cgroup).unwrap_or_default().frozen;
        let last_active_ms = tags
            .last_active_ms
            .unwrap_or(tags.created_ms)
            .max(tags.created_ms);
        let settings = policy.for_project(&tags.project);
        let record = Record::found(kernel.tag_store(&dir.cgroup), tags, frozen, now_ms());
        Gate {
            dir,
            record,
            populated: true,
            last_active_ms,
            busy: false,
            spared: None,
            next: None,
            failure: None,
            cpu_sample: None,
            limit_hits: BTreeMap::new(),
            freed: None,
            policy,
            settings,
            wakes_on: Vec::new(),
            wake_note: None,
            wakes: Vec::new(),
            written_at_wake: None,
            ended_inputs: Vec::new(),
            wake_paused_until: None,
            reclaimed_since: None,
        }
    }

    pub fn tags(&self) -> &Tags {
        self.record.tags()
    }

    pub fn phase(&self) -> &Phase {
        self.record.phase()
    }

    /// The gate's keeper (its main process, as tagged at spawn). A gate
    /// with no main pid or start time gets one that matches no process, so
    /// every step on it fails instead of signalling whoever has pid 0.
    pub fn keeper(&self) -> crate::keeper::Keeper {
        crate::keeper::Keeper {
            pid: self.tags().main_pid.unwrap_or(0),
            start: self.tags().main_start.unwrap_or(u64::MAX),
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
        self.tags().pinned || self.settings.pinned
    }

    /// Whether it may be made to give way to a cap or the memory budget.
    pub fn may_yield(&self) -> bool {
        reaper::may_yield(self.phase(), self.busy, self.pinned(), self.spared)
    }

    /// The gate as a cap or the memory budget weighs it.
    pub fn candidate(&self, memory_bytes: u64) -> reaper::Candidate {
        reaper::Candidate {
            id: self.id().to_string(),
            uid: self.tags().owner_uid,
            last_active_ms: self.last_active_ms,
            memory_bytes,
            evictable: self.may_yield(),
        }
    }

    /// The gate as memory relief weighs it, holding `resident_bytes` in
    /// RAM; `criu`: this daemon can hibernate.
    pub fn relief_candidate(&self, resident_bytes: u64, now: u64, criu: bool) -> relief::Candidate {
        let phase = self.phase();
        let held = match phase {
            Phase::Running | Phase::Woken { .. } => relief::Held::Running,
            Phase::Suspended { since_ms, .. } | Phase::DumpRefused { since_ms, .. } => {
                relief::Held::Suspended {
                    reclaimed: self.reclaimed_since == Some(*since_ms),
                }
            }
            _ => relief::Held::Elsewhere,
        };
        let idle_ms = now.saturating_sub(self.last_active_ms);
        relief::Candidate {
            id: self.id().to_string(),
            uid: self.tags().owner_uid,
            held,
            last_active_ms: self.last_active_ms,
            resident_bytes,
            may_yield: self.may_yield(),
            hibernatable: criu && self.tags().keeper && !matches!(phase, Phase::DumpRefused { .. }),
            idle_past_timeout: self
                .settings
                .idle_timeout
                .is_some_and(|t| u128::from(idle_ms) >= t.as_millis()),
        }
    }

    /// What a daemon adds to `gate::info`.
    pub fn extra(&self) -> InfoExtra {
        InfoExtra {
            phase: Some(self.phase().clone()),
            last_active_ms: Some(self.last_active_ms),
            spared: self.spared,
            next: self.next,
            cpu_sample: self.cpu_sample,
            wanted: crate::limits::for_gate(&self.settings),
            hibernate_refused: match self.phase() {
                Phase::DumpRefused { reason, .. } => Some(reason.clone()),
                _ => None,
            },
            failure: self.failure.clone(),
            wakes_on: self.wakes_on.clone(),
            wake_note: self.wake_note.clone(),
        }
    }

    /// Asleep in a way input ends: suspended by the reaper, or on disk. A
    /// person's freeze is theirs to end.
    fn wakes_on_input(&self) -> bool {
        self.settings.wake_on_input
            && matches!(
                self.phase(),
                Phase::Suspended { manual: false, .. }
                    | Phase::DumpRefused { .. }
                    | Phase::Hibernated { .. }
            )
    }

    /// Its main process, if it is still the one tagged at spawn, and
    /// whether that is a keeper.
    fn main_process(&self) -> Option<(u32, bool)> {
        let t = self.tags();
        let pid = t.main_pid?;
        (t.main_start.is_some() && proc::start_time(pid) == t.main_start).then_some((pid, t.keeper))
    }

    fn follow(&mut self, policy: &Arc<Policy>) {
        if !Arc::ptr_eq(&self.policy, policy) {
            self.policy = policy.clone();
            self.settings = policy.for_project(&self.tags().project);
        }
    }

    fn view(&self, traced: bool, criu: bool) -> View {
        let t = self.tags();
        View {
            phase: self.phase().clone(),
            populated: self.populated,
            created_ms: t.created_ms,
            last_active_ms: self.last_active_ms,
            orphaned_ms: t.orphaned_ms,
            main_exit_stop_ms: t.main_exited_ms.filter(|_| {
                t.stop_on_main_exit
                    .unwrap_or(self.settings.on_main_exit == OnMainExit::Stop)
            }),
            max_runtime_ms: t.max_runtime_ms.or(self
                .settings
                .max_runtime
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))),
            pinned: self.pinned(),
            busy: self.busy,
            traced,
            hibernatable: criu && t.keeper,
            last_input_ms: t.last_input_ms,
        }
    }
}

type Answer = oneshot::Sender<Result<(), Failure>>;

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
    Touch,
    Thaw,
    Freeze,
    Kill,
    /// Make room (a project's gate cap, the memory budget), if it may still
    /// yield when the owner gets to it.
    Evict(Reason),
    Pin(bool),
    Tag(String),
    /// Start an unprivileged keeper's worker.
    StartWorker(Vec<std::ffi::OsString>),
    /// Input came while it slept.
    Input(Woke),
    /// Give memory back on this rung of relief, if it may still yield when
    /// the owner gets to it: the reason a stop is for, and words for what
    /// set relief off.
    Relieve(Rung, Reason, String),
    /// A lazy restore's fill ended (the owner's own letter): every page
    /// back, or the worker killed for want of them.
    Filled(FillResult),
}

/// How a lazy restore's fill ended ([`crate::lazy::LazyPages::finish`]).
pub type FillResult = Result<crate::lazy::LazyDone, crate::criu::CriuError>;

/// A command, and where its answer goes (a request waits for it).
type Letter = (Cmd, Option<Answer>);

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Observe(_) => "observe",
            Cmd::Changed => "changed",
            Cmd::Orphaned => "orphaned",
            Cmd::MainExited => "main exited",
            Cmd::Touch => "touch",
            Cmd::Thaw => "thaw",
            Cmd::Freeze => "freeze",
            Cmd::Kill => "kill",
            Cmd::Evict(_) => "evict",
            Cmd::Pin(_) => "pin",
            Cmd::Tag(_) => "tag",
            Cmd::StartWorker(_) => "start worker",
            Cmd::Relieve(..) => "relieve",
            Cmd::Input(_) => "input",
            Cmd::Filled(_) => "filled",
        }
    }

    /// Needs the gate at rest, so a lazy restore's fill ends first (bounded
    /// by the restore's deadline). What may run beside it: the worker runs,
    /// so a touch, a thaw or input is answered at once; the rule book keeps
    /// a restoring gate as it is (`reaper::step`, `may_yield`, which an
    /// eviction and relief ask first); pin and tag write tags only. Anything else (freeze, kill, a worker start, a
    /// command added later) waits.
    fn waits_for_fill(&self) -> bool {
        !matches!(
            self,
            Cmd::Observe(_)
                | Cmd::Changed
                | Cmd::Orphaned
                | Cmd::MainExited
                | Cmd::Touch
                | Cmd::Thaw
                | Cmd::Input(_)
                | Cmd::Evict(_)
                | Cmd::Relieve(..)
                | Cmd::Pin(_)
                | Cmd::Tag(_)
                | Cmd::Filled(_)
        )
    }

    /// What the rule book acts on, not a person: it waits while CRIU still
    /// works on a step a previous daemon began.
    fn is_rule_book(&self) -> bool {
        matches!(
            self,
            Cmd::Observe(_)
                | Cmd::Changed
                | Cmd::Orphaned
                | Cmd::MainExited
                | Cmd::Evict(_)
                | Cmd::Input(_)
                | Cmd::Relieve(..)
        )
    }

    /// The answer of a command that found its gate gone: a kill has what it
    /// asked for, anything else did not happen.
    fn gone(self, id: &str) -> Result<(), Failure> {
        match self {
            Cmd::Kill => Ok(()),
            _ => Err(Failure::not_found(id)),
        }
    }
}

/// A gate's memory as the scan last measured it (off the runtime thread),
/// with when: what metrics and the budget read, never procfs. A figure the
/// owner's decisions never read, so it lives beside the gate, not in it.
pub type MemoryCell = Arc<Mutex<Option<Measured>>>;

/// The registry's way to a gate: its channel and what its owner published.
#[derive(Clone)]
pub struct Handle {
    tx: Sender<Letter>,
    view: watch::Receiver<Arc<Gate>>,
    memory: MemoryCell,
    /// An observation waits in the channel: later scans' are coalesced
    /// into it rather than queued behind a slow action.
    observing: Arc<AtomicBool>,
}

impl Handle {
    /// The gate as its owner last published it.
    pub fn view(&self) -> Arc<Gate> {
        self.view.borrow().clone()
    }

    pub fn memory(&self) -> Option<Measured> {
        *lock(&self.memory)
    }

    /// Publishes a measurement of the gate's memory (the scan's, made on
    /// the blocking pool).
    pub fn set_memory(&self, m: Measured) {
        *lock(&self.memory) = Some(m);
    }

    /// Hands a command to the owner; false when the gate is gone.
    pub fn send(&self, cmd: Cmd) -> bool {
        self.tx.send((cmd, None)).is_ok()
    }

    /// Hands a scan's observation to the owner, unless one already waits.
    pub fn observe(&self, o: Observation) {
        if !self.observing.swap(true, Ordering::AcqRel) && !self.send(Cmd::Observe(o)) {
            self.observing.store(false, Ordering::Release);
        }
    }

    /// Sends a command to be answered once it took effect and the gate as
    /// it left it is published; `Pending::wait` gets the answer.
    pub fn begin(&self, id: &str, cmd: Cmd) -> Pending {
        let (tx, rx) = oneshot::channel();
        Pending {
            id: id.to_string(),
            rx: self.tx.send((cmd, Some(tx))).is_ok().then_some(rx),
        }
    }

    /// Sends a command, and waits for its answer.
    pub async fn ask(&self, id: &str, cmd: Cmd) -> Result<(), Failure> {
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
            return Err(Failure::not_found(&id));
        };
        match rx.await {
            Ok(result) => result,
            // The owner ended without an answer (the runtime is stopping).
            Err(_) => Err(Failure::not_found(&id)),
        }
    }
}

/// Starts the owner of a gate and returns the handle to register.
pub fn start(cx: &Arc<Ctx>, gate: Gate) -> Handle {
    let (tx, rx) = mailbox::mailbox();
    let id = gate.id().to_string();
    let t = gate.tags();
    let exits = [
        Exit::watch(&id, t.orphaned_ms, t.owner_pid, t.owner_start),
        Exit::watch(&id, t.main_exited_ms, t.main_pid, t.main_start),
    ];
    let gate = Arc::new(gate);
    let (publish, view) = watch::channel(gate.clone());
    let observing = Arc::new(AtomicBool::new(false));
    let memory = MemoryCell::default();
    let handle = Handle {
        tx,
        view,
        memory: memory.clone(),
        observing: observing.clone(),
    };
    let owner = Owner {
        cx: cx.clone(),
        id,
        gate,
        publish,
        memory,
        rx,
        observing,
        exits,
        watch: None,
        fill: None,
    };
    tokio::spawn(owner.run());
    handle
}

/// Whether the owner goes on after an action.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// The gate's cgroup is gone: the owner ends.
    Gone,
}

struct Owner {
    cx: Arc<Ctx>,
    id: String,
    /// Shared with what it published last, copied on its next change
    /// (`Arc::make_mut`): a resting gate is held once, not twice.
    gate: Arc<Gate>,
    publish: watch::Sender<Arc<Gate>>,
    memory: MemoryCell,
    rx: Receiver<Letter>,
    observing: Arc<AtomicBool>,
    /// The owner process's and the main process's exits, watched here rather
    /// than by tasks of their own (two tasks a gate were 5 MB at 5,000 gates).
    exits: [Option<Exit>; 2],
    /// Its inputs, while it sleeps.
    watch: Option<Watch>,
    /// A lazy restore's fill, while its worker runs and its memory streams
    /// in: the owner's select takes its end as a `Cmd::Filled`.
    fill: Option<Fill>,
}

/// The background part of a lazy restore: a blocking task that holds only
/// the lazy-pages daemon and waits for it, and what finishing needs.
struct Fill {
    task: tokio::task::JoinHandle<FillResult>,
    filling: crate::hibernate::Filling,
    /// Input woke it (not a touch): `woken`, not running, once filled.
    woken: bool,
}

/// The end of a fill; never while there is none.
async fn fill_ended(fill: &mut Option<Fill>) -> FillResult {
    match fill {
        Some(f) => joined(&mut f.task).await,
        None => std::future::pending().await,
    }
}

/// A fill's result; a panic in its task is a failed fill (the panic
/// dropped the daemon's handle, which killed the worker first).
async fn joined(task: &mut tokio::task::JoinHandle<FillResult>) -> FillResult {
    task.await.unwrap_or_else(|e| {
        Err(crate::criu::CriuError::Io {
            op: "wait for lazy-pages",
            path: std::path::PathBuf::from("lazy-pages"),
            error: std::io::Error::other(e.to_string()),
        })
    })
}

impl Owner {
    async fn run(mut self) {
        // A gate found asleep (a restart) is watched from the start.
        let mut now_due = self.sync_watch().await;
        loop {
            // A deadline of the gate's own (the end of a stop grace, a kill
            // to try again, a stop due at a known time) wakes the owner
            // without a command.
            // A fill's end wakes it (its select branch): no retry meanwhile.
            let wake = match self.fill {
                Some(_) => None,
                None => wake_at(&self.gate),
            };
            let woken = matches!(self.gate.phase(), Phase::Woken { .. });
            let (cmd, answer) = if let Some(woke) = now_due.take() {
                (Cmd::Input(woke), None)
            } else {
                tokio::select! {
                letter = self.rx.recv() => match letter {
                    Some(letter) => letter,
                    // The registry let go: the daemon is stopping.
                    None => return,
                },
                _ = sleep_until_ms(wake) => (Cmd::Observe(Observation {
                    now: now_ms(),
                    full: true,
                    // A woken gate's quiet time ends: was it busy meanwhile?
                    measure_cpu: woken,
                    policy: self.cx.policy(),
                }), None),
                i = first_exit(&self.exits, self.cx.policy().global.scan_interval) => {
                    self.exits[i] = None;
                    (if i == 0 { Cmd::Orphaned } else { Cmd::MainExited }, None)
                }
                woke = inputs::first(&self.watch) => (Cmd::Input(woke), None),
                filled = fill_ended(&mut self.fill) => (Cmd::Filled(filled), None),
                }
            };
            if matches!(cmd, Cmd::Observe(_)) {
                self.observing.store(false, Ordering::Release);
            }
            let name = cmd.name();
            let action = Action {
                cx: &self.cx,
                g: Arc::make_mut(&mut self.gate),
                memory: &self.memory,
                watch: &mut self.watch,
                fill: &mut self.fill,
                mail: &self.rx,
            };
            let done = CatchUnwind(Box::pin(action.act(cmd))).await;
            let (flow, result) = done.unwrap_or_else(|e| {
                let why = format!("{name}: {}", panic_text(e));
                tracing::error!(gate = %self.id, "{why}; the gate stays managed");
                let g = Arc::make_mut(&mut self.gate);
                g.failure = Some(why.clone());
                let tags = g.tags();
                self.cx
                    .journal
                    .record(tags, &self.id, EventKind::Failed, Some(why), None);
                let failed = Failure::internal(format!(
                    "the action on gate {} failed; the daemon's log says why",
                    self.id
                ));
                (Flow::Go, Err(failed))
            });
            if flow == Flow::Go {
                now_due = self.sync_watch().await;
            }
            // What the answer says is what readers see from then on.
            self.publish.send_replace(self.gate.clone());
            if let Some(tx) = answer {
                let _ = tx.send(result);
            }
            if flow == Flow::Gone {
                break;
            }
        }
        // Gone: out of the registry first, so nothing new arrives, then
        // answer what came meanwhile.
        (self.cx.leave)(&self.id);
        self.rx.close();
        while let Some((cmd, answer)) = self.rx.try_recv() {
            let result = cmd.gone(&self.id);
            if let Some(tx) = answer {
                let _ = tx.send(result);
            }
        }
    }
}

impl Owner {
    /// Watches a sleeping gate's inputs, and only a sleeping gate's: armed
    /// when it has fallen asleep, dropped as soon as it runs or ends.
    /// Returns an input that is readable already (it came before or during
    /// the freeze): the gate wakes at once.
    async fn sync_watch(&mut self) -> Option<Woke> {
        let paused = self.gate.wake_paused_until.is_some_and(|t| t > now_ms());
        if !self.gate.wakes_on_input() || paused {
            self.watch = None;
            if !self.gate.wakes_on.is_empty() {
                Arc::make_mut(&mut self.gate).wakes_on.clear();
            }
            return None;
        }
        if self.watch.is_some() {
            return None;
        }
        let (k, dir, main, stdin) = (
            self.cx.kernel.clone(),
            self.gate.dir.clone(),
            self.gate.main_process(),
            self.gate.tags().stdin_ino,
        );
        let found = blocking(move || k.inputs(&dir, main, stdin)).await;
        let armed = inputs::arm(found, &self.gate.ended_inputs);
        if armed.note != self.gate.wake_note {
            if let Some(note) = &armed.note {
                tracing::warn!(gate = %self.id, "{note}");
            }
        }
        let g = Arc::make_mut(&mut self.gate);
        g.wake_note = armed.note;
        g.wakes_on = armed.wakes_on;
        self.watch = Some(armed.watch);
        armed.ready
    }
}

/// When the owner must act without a command.
fn wake_at(g: &Gate) -> Option<u64> {
    if let Some(t) = g.wake_paused_until.filter(|&t| t > now_ms()) {
        // Its inputs are watched again then.
        return Some(t.min(wake_at_phase(g).unwrap_or(t)));
    }
    wake_at_phase(g)
}

fn wake_at_phase(g: &Gate) -> Option<u64> {
    let retry = || now_ms() + RETRY.as_millis() as u64;
    match g.phase() {
        Phase::Stopping { .. } => g.next.map(|n| n.at_ms),
        Phase::Woken { until_ms } => Some(*until_ms),
        Phase::Killing { .. } => Some(retry()),
        p if p.in_hibernation_step() => Some(retry()),
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
        // AssertUnwindSafe: after a panic the action is dropped; the gate it
        // changed keeps every field it wrote whole (a tag and its value are
        // written in one call), and the owner records the failure.
        match std::panic::catch_unwind(AssertUnwindSafe(|| action.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(flow)) => Poll::Ready(Ok(flow)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// One action on the owner's gate.
struct Action<'a> {
    cx: &'a Ctx,
    g: &'a mut Gate,
    memory: &'a MemoryCell,
    watch: &'a mut Option<Watch>,
    fill: &'a mut Option<Fill>,
    /// The commands waiting behind this one (a dump looks for a touch).
    mail: &'a Receiver<Letter>,
}

impl Action<'_> {
    /// One action, to its end: whether the owner goes on, and the answer
    /// for whoever asked.
    async fn act(mut self, cmd: Cmd) -> (Flow, Result<(), Failure>) {
        let go = |r| (Flow::Go, r);
        if cmd.waits_for_fill() {
            if let Some(f) = self.fill.as_mut() {
                let filled = joined(&mut f.task).await;
                self.finish_fill(filled).await;
            }
        }
        // A dump or restore a previous daemon left: finished or undone before
        // anything else is done to the gate.
        if self.fill.is_none() && self.g.phase().in_hibernation_step() {
            self.recover().await;
            // CRIU still at work: the rule book waits with it.
            if self.g.phase().in_hibernation_step() && cmd.is_rule_book() {
                return go(Ok(()));
            }
        }
        match cmd {
            Cmd::Observe(o) => (self.observe(o).await, Ok(())),
            Cmd::Changed => {
                if !self.read_events() {
                    return (Flow::Gone, Ok(()));
                }
                (self.review(now_ms()).await, Ok(()))
            }
            Cmd::Orphaned | Cmd::MainExited => {
                self.exited(matches!(cmd, Cmd::Orphaned));
                (self.review(now_ms()).await, Ok(()))
            }
            Cmd::Touch => go(self.touch().await),
            Cmd::Thaw => go(self.resume("thaw").await),
            Cmd::Freeze => go(self.freeze_by_person().await),
            Cmd::Kill => match self.kill(Reason::Manual).await {
                Ok(()) => (Flow::Gone, Ok(())),
                Err(e) => go(Err(e)),
            },
            Cmd::Evict(reason) => {
                if !self.g.may_yield() {
                    return go(Ok(()));
                }
                (self.stop(reason).await, Ok(()))
            }
            Cmd::Pin(pinned) => match self.pin(pinned) {
                Ok(()) => (self.review(now_ms()).await, Ok(())),
                Err(e) => go(Err(e)),
            },
            Cmd::Tag(session) => go(self.tag(&session)),
            Cmd::StartWorker(cmd) => go(self.start_worker(cmd).await),
            Cmd::Input(woke) => (self.input(woke).await, Ok(())),
            Cmd::Relieve(rung, reason, why) => self.relieve(rung, reason, why).await,
            Cmd::Filled(filled) => {
                self.finish_fill(filled).await;
                (self.review(now_ms()).await, Ok(()))
            }
        }
    }

    /// One rung of memory relief. Nothing is done to a gate that became
    /// busy, pinned or traced since relief chose it, or that is no longer
    /// in the state the rung needs; what was freed is counted and said
    /// (`relieved`).
    async fn relieve(
        &mut self,
        rung: Rung,
        reason: Reason,
        why: String,
    ) -> (Flow, Result<(), Failure>) {
        if !self.g.may_yield() {
            return (Flow::Go, Ok(()));
        }
        let running = matches!(self.g.phase(), Phase::Running | Phase::Woken { .. });
        let freed = match rung {
            Rung::Stop => {
                let before = self.measure_memory().await;
                let flow = self.stop(reason).await;
                self.cx
                    .journal
                    .relieved(self.g.tags(), &self.g.dir.id, rung, &why, before);
                return (flow, Ok(()));
            }
            Rung::Hibernate => {
                let before = self.measure_memory().await;
                if running {
                    if let Err(e) = self.suspend(reason, false).await {
                        return (Flow::Go, Err(e));
                    }
                }
                if !matches!(self.g.phase(), Phase::Suspended { manual: false, .. }) {
                    return (Flow::Go, Ok(()));
                }
                self.hibernate().await;
                match self.g.phase() {
                    Phase::Hibernated { .. } => before,
                    _ => return (Flow::Go, Ok(())),
                }
            }
            Rung::Reclaim | Rung::SuspendReclaim => {
                if rung == Rung::SuspendReclaim && running {
                    if let Err(e) = self.suspend(reason, false).await {
                        return (Flow::Go, Err(e));
                    }
                }
                let Some(since) = self.g.phase().asleep_since().filter(|_| {
                    matches!(
                        self.g.phase(),
                        Phase::Suspended { .. } | Phase::DumpRefused { .. }
                    )
                }) else {
                    return (Flow::Go, Ok(()));
                };
                self.g.reclaimed_since = Some(since);
                self.kernel(|k, cg| k.reclaim(cg)).await.unwrap_or(0)
            }
        };
        self.cx
            .journal
            .relieved(self.g.tags(), &self.g.dir.id, rung, &why, freed);
        // Relief weighs the gates by their last figures: this one's is new.
        self.measure_memory().await;
        (self.review(now_ms()).await, Ok(()))
    }

    fn cgroup(&self) -> crate::cgroup::Cgroup {
        self.g.dir.cgroup.clone()
    }

    fn event(&self, kind: EventKind, reason: Option<String>, freed: Option<u64>) {
        self.cx
            .journal
            .record(self.g.tags(), &self.g.dir.id, kind, reason, freed);
    }

    fn failed(&mut self, what: &str, e: impl std::fmt::Display) {
        let why = format!("{what}: {e}");
        tracing::warn!(gate = %self.g.dir.id, "{why}");
        self.g.failure = Some(why.clone());
        self.event(EventKind::Failed, Some(why), None);
    }

    /// Runs kernel work off the async thread.
    async fn kernel<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Kernel, &crate::cgroup::Cgroup) -> T + Send + 'static,
    ) -> T {
        let (k, cg) = (self.cx.kernel.clone(), self.cgroup());
        blocking(move || f(&*k, &cg)).await
    }

    /// Re-reads cgroup.events and the limit counters. False when the
    /// cgroup is gone.
    fn read_events(&mut self) -> bool {
        let k = &self.cx.kernel;
        let cg = &self.g.dir.cgroup;
        let events = match k.events(cg) {
            Ok(e) => e,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => return false,
            Err(_) => return true,
        };
        let hits = k.limit_hits(cg);
        self.g.populated = events.populated;
        for (kind, &n) in &hits {
            let before = self.g.limit_hits.get(kind).copied().unwrap_or(0);
            if n > before {
                self.cx
                    .journal
                    .limit_hit(self.g.tags(), &self.g.dir.id, kind, n - before);
            }
        }
        self.g.limit_hits = hits;
        true
    }

    async fn observe(&mut self, o: Observation) -> Flow {
        self.g.follow(&o.policy);
        if o.full && !self.read_events() {
            return Flow::Gone;
        }
        if o.measure_cpu {
            self.measure_cpu(o.now);
        } else {
            self.g.busy = false;
        }
        self.review(o.now).await
    }

    /// CPU use above busy_cpu_percent since the last sample is activity.
    fn measure_cpu(&mut self, now: u64) {
        let Ok(usage) = self.cx.kernel.cpu_usage_usec(&self.g.dir.cgroup) else {
            return;
        };
        if let Some(percent) = crate::cgroup::cpu_percent(self.g.cpu_sample, usage, now) {
            self.g.busy = percent >= self.g.settings.busy_cpu_percent;
        }
        self.g.cpu_sample = Some((usage, now));
        let running = matches!(self.g.phase(), Phase::Running | Phase::Woken { .. });
        if self.g.busy && running && self.g.settings.activity.cpu {
            self.mark_active(now);
        }
    }

    fn mark_active(&mut self, now: u64) {
        self.g.last_active_ms = now;
        // Persisted so a restarted daemon does not reset the idle clock;
        // the clock in memory moves on either way.
        if let Err(e) = self.g.record.set_last_active(now) {
            tracing::debug!(gate = %self.g.dir.id, "last_active not tagged: {e}");
        }
        // Woken by input and now active: it runs on as any running gate.
        if let Phase::Woken { .. } = self.g.phase() {
            if let Err(e) = self.g.record.enter(Phase::Running) {
                self.failed("active after a wake", e);
            }
        }
    }

    /// Input came while the gate slept: it runs again before a byte of the
    /// input is read (the watch only polled), through the same thaw or
    /// restore as a touch. Input is not activity unless the policy says so
    /// (`activity`): a gate with nothing else to do is suspended again
    /// `wake_quiet` later, on its old idle clock (`reaper::idle_bound`).
    async fn input(&mut self, woke: Woke) -> Flow {
        if !self.g.wakes_on_input() {
            return Flow::Go;
        }
        let now = now_ms();
        tracing::debug!(gate = %self.g.dir.id, ?woke, "input");
        // Given back before the gate runs: a borrowed copy keeps files alive.
        *self.watch = None;
        // A line to answer (not an end of file): it sleeps again once it
        // answered, so what it wrote is counted now, while it cannot write.
        // (Not across a restore: a restored worker's counts start anew.)
        let to_answer = woke.kind == crate::wake::Kind::Stdin
            && woke.pending.is_some_and(|n| n > 0)
            && !matches!(self.g.phase(), Phase::Hibernated { .. });
        let written = match to_answer {
            true => {
                let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
                Some(blocking(move || k.written_bytes(&dir)).await)
            }
            false => None,
        };
        let back = match self.g.phase() {
            Phase::Hibernated { .. } => self.wake().await,
            _ => match self.kernel(|k, cg| k.thaw(cg)).await {
                Ok(()) => self.g.record.enter(Phase::Running).map_err(Failure::from),
                Err(e) => Err(e.into()),
            },
        };
        if let Err(e) = back {
            self.g.wake_paused_until = Some(now + WAKE_WINDOW_MS);
            self.failed("wake on input (tried again in a minute)", &e.message);
            return Flow::Go;
        }
        self.g
            .wakes
            .retain(|&t| now.saturating_sub(t) < WAKE_WINDOW_MS);
        self.g.wakes.push(now);
        if let Err(e) = self.g.record.set_last_input(now) {
            tracing::debug!(gate = %self.g.dir.id, "last_input not tagged: {e}");
        }
        self.cx
            .journal
            .count_wake(self.g.tags().owner_uid, woke.kind.as_str());
        self.event(EventKind::Woken, Some(woke.label.clone()), None);
        if woke.pending == Some(0) && !self.g.ended_inputs.contains(&woke.ino) {
            self.g.ended_inputs.push(woke.ino);
        }
        let quiet = u64::try_from(self.g.settings.wake_quiet.as_millis()).unwrap_or(u64::MAX);
        self.g.written_at_wake = written.map(|w| {
            (
                w,
                now_ms().saturating_add(quiet.saturating_mul(ANSWER_WAIT)),
            )
        });
        self.g.failure = None;
        // What its CPU use over the quiet time is measured against.
        if let Ok(usage) = self.cx.kernel.cpu_usage_usec(&self.g.dir.cgroup) {
            self.g.cpu_sample = Some((usage, now));
        }
        if self.g.settings.activity.input {
            self.mark_active(now);
            return self.review(now).await;
        }
        if let Some(fill) = self.fill.as_mut() {
            // Its memory still streams in: `woken` once it is all back,
            // its quiet time counted from then (`finish_fill`).
            fill.woken = true;
            return self.review(now).await;
        }
        self.enter_woken();
        self.review(now).await
    }

    /// Woken by input: suspended again a quiet time from now unless it is
    /// active meanwhile.
    fn enter_woken(&mut self) {
        // The quiet time counts from when it runs again (a restore takes a
        // while).
        let quiet = u64::try_from(self.g.settings.wake_quiet.as_millis()).unwrap_or(u64::MAX);
        let mut until_ms = now_ms().saturating_add(quiet);
        if self.g.wakes.len() > WAKE_BURST {
            let window_end = self.g.wakes[0] + WAKE_WINDOW_MS;
            if window_end > until_ms {
                tracing::warn!(
                    gate = %self.g.dir.id,
                    "woken {} times within a minute: kept awake until the minute has passed",
                    self.g.wakes.len()
                );
                until_ms = window_end;
            }
        }
        if let Err(e) = self.g.record.enter(Phase::Woken { until_ms }) {
            self.failed("wake on input", e);
        }
    }

    /// Asks the reaper's rule book and performs its decision.
    async fn review(&mut self, now: u64) -> Flow {
        let criu = self.cx.criu.is_some();
        let view = self.g.view(false, criu);
        let mut decision = reaper::step(&view, &self.g.settings, now);
        // Woken by a line on stdin and not yet answered (it wrote nothing
        // since): its host waits for the answer, which a slow request with
        // little CPU (a server waiting on a timer) has not given yet. It is
        // not frozen mid-request: another quiet time.
        if let (Decision::Suspend(_), Phase::Woken { .. }, Some((before, wait_until))) =
            (decision, self.g.phase(), self.g.written_at_wake)
        {
            let wait_until = Some(wait_until).filter(|&t| now < t);
            let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
            let silent = blocking(move || k.written_bytes(&dir)).await == before;
            if let (true, Some(_)) = (silent, wait_until) {
                let quiet =
                    u64::try_from(self.g.settings.wake_quiet.as_millis()).unwrap_or(u64::MAX);
                let until_ms = now.saturating_add(quiet);
                if let Err(e) = self.g.record.enter(Phase::Woken { until_ms }) {
                    self.failed("wake on input", e);
                }
                decision = Decision::Keep {
                    spared: None,
                    next: Some(Next {
                        action: NextAction::Suspend,
                        at_ms: until_ms,
                    }),
                };
            }
        }
        // Only a gate about to be reaped pays for the debugger check.
        if decision.is_reap()
            && !view.phase.is_reaping()
            && self.cx.kernel.traced(&self.g.dir.cgroup)
        {
            let traced = View {
                traced: true,
                ..view
            };
            decision = reaper::step(&traced, &self.g.settings, now);
        }
        if decision.is_reap() {
            tracing::debug!(gate = %self.g.dir.id, phase = ?self.g.phase(), ?decision, "decided");
        }
        self.perform(decision).await
    }

    async fn perform(&mut self, decision: Decision) -> Flow {
        match decision {
            Decision::Keep { spared, next } => {
                self.g.spared = spared;
                self.g.next = next;
                Flow::Go
            }
            Decision::Suspend(reason) => {
                self.g.spared = None;
                if let Err(e) = self.suspend(reason, false).await {
                    self.failed("suspend", e);
                }
                Flow::Go
            }
            Decision::Hibernate => {
                self.hibernate().await;
                Flow::Go
            }
            Decision::Stop(reason) => self.stop(reason).await,
            Decision::Kill(reason) => match self.kill(reason).await {
                Ok(()) => Flow::Gone,
                Err(e) => {
                    self.failed("kill", &e.message);
                    Flow::Go
                }
            },
            Decision::Remove => self.remove_empty().await,
        }
    }

    /// Freezes the gate; it keeps all its state and costs no CPU. If the
    /// freeze does not complete, it is undone: never a gate half frozen
    /// while it is shown running.
    async fn suspend(&mut self, reason: Reason, manual: bool) -> Result<(), Failure> {
        // Input that came while the freeze was in flight may have been read
        // by a process not yet frozen: no longer waiting in the pipe for the
        // watch to see, but in the frozen process, its host waiting for the
        // answer. If the processes that hold its host's stdin read anything
        // during the freeze, it is thawed at once: left running, never
        // frozen with input taken. (Other reads, a loader's or a log's, are
        // not input.)
        let stdin = self
            .g
            .tags()
            .stdin_ino
            .filter(|_| !manual && self.g.settings.wake_on_input);
        let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
        let before = match stdin {
            Some(ino) => blocking(move || k.read_bytes(&dir, ino)).await,
            None => 0,
        };
        self.kernel(|k, cg| k.freeze(cg)).await?;
        if let Some(ino) = stdin {
            let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
            if blocking(move || k.read_bytes(&dir, ino)).await != before {
                self.kernel(|k, cg| k.thaw(cg)).await?;
                tracing::debug!(gate = %self.g.dir.id, "it read during its freeze: left running");
                return Ok(());
            }
        }
        let now = now_ms();
        self.g.record.enter(Phase::Suspended {
            since_ms: now,
            manual,
        })?;
        self.g.failure = None;
        // A new sleep: what ran since the last reclaim is in RAM again.
        self.g.reclaimed_since = None;
        let reclaimed = if self.g.settings.reclaim_when_frozen {
            self.g.reclaimed_since = Some(now);
            self.kernel(|k, cg| k.reclaim(cg)).await
        } else {
            None
        };
        let kind = if manual {
            EventKind::Frozen
        } else {
            EventKind::Suspended
        };
        self.event(kind, Some(reason.as_str().to_string()), reclaimed);
        Ok(())
    }

    /// Refuses what a person asks of a gate in a step it must finish first,
    /// or being torn down.
    fn may_act(&self) -> Result<(), Failure> {
        let (phase, id) = (self.g.phase(), &self.g.dir.id);
        // CRIU still works on a step a previous daemon began: answered
        // `busy` (nothing was done), which the client tries again, rather
        // than a success before the gate runs. (A fill of this owner's own
        // restore is no such step: its worker runs.)
        if phase.in_hibernation_step() && self.fill.is_none() {
            return Err(Failure::new(
                crate::protocol::ErrorCode::Busy,
                format!("gate {id} is finishing a hibernation step; try again"),
            ));
        }
        if phase.is_reaping() {
            return Err(Failure::reaping(id));
        }
        Ok(())
    }

    async fn touch(&mut self) -> Result<(), Failure> {
        self.may_act()?;
        if self.g.settings.activity.touch {
            self.mark_active(now_ms());
        }
        if self.g.phase().is_asleep() {
            self.resume("touch").await?;
        }
        Ok(())
    }

    /// Thaws a suspended or frozen gate, or restores a hibernated one: it
    /// runs when this returns Ok.
    async fn resume(&mut self, why: &str) -> Result<(), Failure> {
        self.may_act()?;
        if self.fill.is_some() {
            // Its worker runs already; its memory streams in.
            return Ok(());
        }
        *self.watch = None;
        self.g.wake_paused_until = None;
        let was = self.g.phase().clone();
        if let Phase::Hibernated { .. } = was {
            // Back from disk; the thaw is part of the restore.
            self.wake().await?;
        } else {
            self.kernel(|k, cg| k.thaw(cg)).await?;
            self.g.record.enter(Phase::Running)?;
            if was.is_asleep() {
                self.event(EventKind::Thawed, Some(why.to_string()), None);
            }
        }
        self.g.last_active_ms = now_ms();
        self.g.failure = None;
        self.review(now_ms()).await;
        Ok(())
    }

    async fn freeze_by_person(&mut self) -> Result<(), Failure> {
        self.may_act()?;
        match self.g.phase().clone() {
            Phase::Running | Phase::Woken { .. } => self.suspend(Reason::Manual, true).await,
            // Already frozen by the reaper: now it is the person's freeze.
            Phase::Suspended {
                since_ms,
                manual: false,
            }
            | Phase::DumpRefused { since_ms, .. } => {
                self.g.record.enter(Phase::Suspended {
                    since_ms,
                    manual: true,
                })?;
                self.event(
                    EventKind::Frozen,
                    Some(Reason::Manual.as_str().into()),
                    None,
                );
                Ok(())
            }
            // Frozen already, or better: on disk.
            _ => Ok(()),
        }
    }

    /// The polite part of a teardown: thaw (a frozen process cannot handle
    /// a signal), stop_signal to the main process, then up to stop_grace
    /// for the tree to exit by itself. The owner keeps serving meanwhile; the
    /// grace's end wakes it to kill.
    async fn stop(&mut self, reason: Reason) -> Flow {
        let freed = self.measure_memory().await;
        let now = now_ms();
        if let Err(e) = self.g.record.enter(Phase::Stopping {
            since_ms: now,
            reason,
        }) {
            self.failed("stop", e);
            return Flow::Go;
        }
        self.g.freed = Some(freed);
        self.g.spared = None;
        let grace = u64::try_from(self.g.settings.stop_grace.as_millis()).unwrap_or(u64::MAX);
        self.g.next = Some(Next {
            action: NextAction::Kill,
            at_ms: now.saturating_add(grace),
        });
        self.event(EventKind::Stopping, Some(reason.as_str().into()), None);
        if let Err(e) = self.kernel(|k, cg| k.thaw(cg)).await {
            // The kill at the grace's end does not need the thaw.
            self.failed("thaw before stop_signal", e);
        }
        let (tags, signal) = (self.g.tags().clone(), self.g.settings.stop_signal);
        self.kernel(move |k, cg| k.stop_signal(cg, &tags, signal))
            .await;
        Flow::Go
    }

    /// The end of every teardown: freeze and cgroup.kill the whole tree,
    /// then remove it. During a stop grace it keeps the stop's reason: one
    /// teardown, one `removed` event, one reap counted.
    async fn kill(&mut self, reason: Reason) -> Result<(), Failure> {
        let reason = match self.g.phase() {
            Phase::Stopping { reason, .. } | Phase::Killing { reason } => *reason,
            _ => reason,
        };
        let freed = match self.g.freed {
            Some(f) => f,
            None => self.measure_memory().await,
        };
        self.g.record.enter(Phase::Killing { reason })?;
        self.g.freed = Some(freed);
        // Frozen and killed as one: nothing can fork or react.
        self.kernel(|k, cg| k.kill_all(cg)).await?;
        self.finish(reason, "killed", freed).await
    }

    /// What the gate holds now, read once off the runtime thread (PSS of a
    /// big tree takes a while), bounded by `gate::MEMORY_READ_BOUND`.
    async fn measure_memory(&self) -> u64 {
        let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
        let deadline = std::time::Instant::now() + gate::MEMORY_READ_BOUND;
        let m = blocking(move || k.measure(&dir, deadline)).await;
        *lock(self.memory) = Some(m);
        m.bytes
    }

    async fn finish(&mut self, reason: Reason, how: &str, freed: u64) -> Result<(), Failure> {
        self.remove_cgroup().await?;
        self.cx
            .journal
            .removed(self.g.tags(), &self.g.dir.id, reason, how, freed);
        Ok(())
    }

    /// Removes the emptied gate's cgroup; a keeper gate's image goes with
    /// it, however the gate ended: no image nobody owns.
    async fn remove_cgroup(&self) -> Result<(), Failure> {
        if self.g.tags().keeper {
            crate::criu::remove_image(&self.image_dir()).map_err(Failure::internal)?;
        }
        let (k, dir) = (self.cx.kernel.clone(), self.g.dir.clone());
        blocking(move || k.remove(&dir)).await?;
        Ok(())
    }

    /// Every process exited: by itself, or during a stop grace.
    async fn remove_empty(&mut self) -> Flow {
        let freed = self.g.freed.unwrap_or(0);
        if let Phase::Stopping { reason, .. } | Phase::Killing { reason } = *self.g.phase() {
            return match self.finish(reason, "stopped", freed).await {
                Ok(()) => Flow::Gone,
                Err(e) => {
                    self.failed("remove", &e.message);
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
                tracing::debug!("gate not removed yet: {}", e.message);
                Flow::Go
            }
        }
    }

    async fn start_worker(&self, cmd: Vec<std::ffi::OsString>) -> Result<(), Failure> {
        let (keeper, owner) = (self.g.keeper(), self.g.tags().owner_uid);
        let w = self.g.dir.cgroup.child(crate::keeper::WORKER_CGROUP);
        if w.read_cgroup_events()?.populated {
            return Err(Failure::bad_request("its worker runs already"));
        }
        let gov = std::env::current_exe().map_err(Failure::internal)?;
        blocking(move || {
            let spec = crate::keeper::WorkerSpec::of_keeper(keeper, owner, cmd)?;
            crate::keeper::start_worker(&gov, keeper, w.path(), &spec, Duration::from_secs(10))?;
            // Started: from now on an empty worker cgroup is a real exit.
            crate::keeper::release(keeper).map_err(|e| e.to_string())?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .await
        .map_err(Failure::internal)
    }

    fn image_dir(&self) -> std::path::PathBuf {
        self.cx.policy().global.hibernate_dir.join(&self.g.dir.id)
    }

    fn hibernate_options(&self) -> crate::hibernate::Options {
        crate::hibernate::Options {
            max_image_bytes: self.cx.policy().global.hibernate_max_bytes,
            ..Default::default()
        }
    }

    /// Runs a hibernation step on the blocking pool with the gate's record,
    /// which the step writes as it goes.
    async fn hibernation_step<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&crate::cgroup::Cgroup, &mut Record) -> T + Send + 'static,
    ) -> T {
        let (cg, mut record) = (self.cgroup(), self.g.record.clone());
        let (record, out) = blocking(move || {
            let out = f(&cg, &mut record);
            (record, out)
        })
        .await;
        self.g.record = record;
        out
    }

    /// Dumps a suspended keeper gate's worker to disk: its RAM is freed,
    /// its keeper holds the host's pid and pipes. A refused dump leaves the
    /// gate suspended as it was, says why, and is not tried again until the
    /// gate ran.
    async fn hibernate(&mut self) {
        let Some(criu) = self.cx.criu.clone() else {
            return;
        };
        let (keeper, dir, opts) = (self.g.keeper(), self.image_dir(), self.hibernate_options());
        // Root's alone (0700), below directories only root controls; made
        // if missing, never chmod'ed through a symlink.
        if let Err(e) = crate::criu::ensure_private_dir(dir.parent().unwrap_or(&dir)) {
            self.refuse_dump(e.to_string());
            return;
        }
        // Its host must reach it while it is on disk. The keeper holds its
        // stdio; a socket it listens on or is connected by would be gone
        // (CRIU re-creates sockets, and cannot hand them back as it hands
        // back pipes), so such a gate stays suspended and wakes on input.
        if self.g.settings.wake_on_input {
            let sockets = match self.watch.as_ref() {
                Some(w) => w.sockets(),
                None => {
                    let (k, d, main, stdin) = (
                        self.cx.kernel.clone(),
                        self.g.dir.clone(),
                        self.g.main_process(),
                        self.g.tags().stdin_ino,
                    );
                    let found = blocking(move || k.inputs(&d, main, stdin)).await;
                    let labels: Vec<_> = found
                        .inputs
                        .iter()
                        .filter(|i| i.kind != crate::wake::Kind::Stdin)
                        .map(|i| (i.kind, i.label.clone()))
                        .collect();
                    crate::wake::summary(&labels)
                }
            };
            if !sockets.is_empty() {
                self.refuse_dump(format!(
                    "its host reaches it through sockets ({}), which CRIU cannot hand back to a restored worker: it stays suspended and wakes on input",
                    sockets.join(", ")
                ));
                return;
            }
        }
        // Given back before the dump: a borrowed copy keeps files alive.
        *self.watch = None;
        let images = dir.clone();
        let r = self
            .hibernation_step(move |cg, record| {
                let dumped = crate::hibernate::dump(&criu, cg, record, keeper, &dir, &opts);
                super::kernel::fault_at("dumped");
                dumped
            })
            .await;
        let dumped = match r {
            Ok(dumped) => dumped,
            // criu goes on by itself (the gate stays Dumping); the next look
            // finishes the step.
            Err(crate::hibernate::HibernateError::Criu(crate::criu::CriuError::StillRunning {
                ..
            })) => return,
            // Suspended as before (DumpRefused), the reason shown.
            Err(e) => return self.failed("hibernate refused", e.reason()),
        };
        // The worker is still there, frozen: input or a touch that came
        // during the dump takes it back instead of restoring it right after.
        let why = match dumped.undoable() {
            true => self.woken_during_dump().await,
            false => None,
        };
        if let Some((why, touched)) = why {
            let r = self
                .hibernation_step(move |cg, record| {
                    crate::hibernate::undo_dump(cg, record, keeper, &images, dumped)
                })
                .await;
            match r {
                Ok(()) => self.event(EventKind::DumpUndone, Some(why), None),
                Err(e) => return self.failed("undoing a dump", e.reason()),
            }
            // Input wakes it next (the watch armed after this action finds
            // it ready, ahead of any letter). A touch waits behind letters
            // that came first (a scan's, which could dump it again): the
            // gate runs now, and the touch finds it running.
            if touched {
                match self.kernel(|k, cg| k.thaw(cg)).await {
                    Ok(()) => {
                        if let Err(e) = self.g.record.enter(Phase::Running) {
                            self.failed("thaw after an undone dump", e);
                        }
                    }
                    Err(e) => self.failed("thaw after an undone dump", e),
                }
            }
            return;
        }
        let elapsed = dumped.report.elapsed;
        let r = self
            .hibernation_step(move |cg, record| crate::hibernate::finish_dump(cg, record, dumped))
            .await;
        match r {
            Ok(report) => {
                let why = format!("dumped in {} ms", elapsed.as_millis());
                self.event(EventKind::Hibernated, Some(why), Some(report.image_bytes));
            }
            // Still Dumping: the next look (`recover`) sees what is left.
            Err(e) => self.failed("hibernate", e.reason()),
        }
    }

    /// Why a dump just written is taken back rather than finished: a touch
    /// or thaw waits behind it, or input came for the gate while it was
    /// dumped (what its host wrote waits in the worker's stdin pipe, which
    /// the keeper kept serving; a connection waits on a socket). Input that
    /// comes after this look stays where it is and restores the gate as it
    /// would any hibernated gate.
    /// Returns why, and whether it was a touch.
    async fn woken_during_dump(&mut self) -> Option<(String, bool)> {
        let touched = self
            .mail
            .any(|(cmd, _)| matches!(cmd, Cmd::Touch | Cmd::Thaw));
        if touched {
            return Some(("touched during the dump".into(), true));
        }
        if !self.g.settings.wake_on_input {
            return None;
        }
        let (k, dir, main, stdin) = (
            self.cx.kernel.clone(),
            self.g.dir.clone(),
            self.g.main_process(),
            self.g.tags().stdin_ino,
        );
        let found = blocking(move || k.inputs(&dir, main, stdin)).await;
        // The same look as a watch armed on a sleeping gate; its borrowed
        // copies close as it drops, before the worker is killed.
        let woke = inputs::arm(found, &self.g.ended_inputs).ready?;
        Some((
            format!("input came during the dump ({})", woke.label),
            false,
        ))
    }

    /// Leaves the suspended gate as it is, with the reason a dump was
    /// refused; no dump is tried again until it ran.
    fn refuse_dump(&mut self, reason: String) {
        let since_ms = self.g.phase().asleep_since().unwrap_or_else(now_ms);
        match self.g.record.enter(Phase::DumpRefused {
            since_ms,
            reason: reason.clone(),
        }) {
            Ok(()) => self.failed("hibernate refused", reason),
            Err(e) => self.failed("hibernate", e),
        }
    }

    /// Restores a hibernated gate: Ok once its worker runs. An eager
    /// restore has all its memory back by then; a lazy one goes on filling
    /// in the background (`Fill`), the gate `Restoring` (shown running)
    /// until `finish_fill`. On failure the image is kept and the gate stays
    /// hibernated, so `gov thaw` can try again.
    async fn wake(&mut self) -> Result<(), Failure> {
        let Some(criu) = self.cx.criu.clone() else {
            return Err(Failure::internal(
                "the gate is hibernated but this daemon found no criu to restore it",
            ));
        };
        let (keeper, dir, opts) = (self.g.keeper(), self.image_dir(), self.hibernate_options());
        let timeout = opts.restore_timeout;
        let r = self
            .hibernation_step(move |cg, record| {
                let started = crate::hibernate::wake_start(&criu, cg, record, keeper, &dir, &opts)?;
                match started.lazy {
                    Some(lazy) => {
                        if let Some(pid) = lazy.pid() {
                            super::kernel::fault_at_process("lazy_fill", pid);
                        }
                        Ok(Back::Filling(lazy, started.filling))
                    }
                    None => crate::hibernate::wake_finish(
                        record,
                        keeper,
                        &dir,
                        started.filling,
                        Ok(None),
                    )
                    .map(Back::Whole),
                }
            })
            .await;
        match r {
            Ok(Back::Whole(report)) => {
                let why = format!("restored in {} ms", report.elapsed.as_millis());
                self.event(EventKind::Restored, Some(why), None);
                Ok(())
            }
            Ok(Back::Filling(lazy, filling)) => {
                let why = format!(
                    "restored in {} ms, its memory following",
                    filling.report.elapsed.as_millis()
                );
                let task = tokio::task::spawn_blocking(move || lazy.finish(timeout));
                *self.fill = Some(Fill {
                    task,
                    filling,
                    woken: false,
                });
                self.event(EventKind::Restored, Some(why), None);
                Ok(())
            }
            Err(e) => Err(self.restore_failed(e)),
        }
    }

    /// A lazy restore's fill ended: every page back (`Running`, the image
    /// deleted), or the worker killed for want of them and the gate
    /// hibernated again from its image, its wakes on input paused as after
    /// any failed wake.
    async fn finish_fill(&mut self, filled: FillResult) {
        let Some(fill) = self.fill.take() else {
            return;
        };
        let (keeper, dir, filling) = (self.g.keeper(), self.image_dir(), fill.filling);
        let woken = fill.woken;
        let r = self
            .hibernation_step(move |_, record| {
                crate::hibernate::wake_finish(record, keeper, &dir, filling, filled.map(Some))
            })
            .await;
        match r {
            Ok(report) => {
                tracing::info!(gate = %self.g.dir.id, memory_back = ?report.memory_back, "restore filled");
                if woken {
                    self.enter_woken();
                }
            }
            Err(e) => {
                self.g.wake_paused_until = Some(now_ms() + WAKE_WINDOW_MS);
                self.restore_failed(e);
            }
        }
    }

    /// Says why a restore failed; the answer for whoever waits on it.
    fn restore_failed(&mut self, e: crate::hibernate::HibernateError) -> Failure {
        let why = format!("restore: {}", e.reason());
        self.g.failure = Some(why.clone());
        self.event(EventKind::Failed, Some(why), None);
        let mut f = Failure::from(e);
        f.message = format!(
            "restore failed, the image is kept (`gov thaw` tries again): {}",
            f.message
        );
        f
    }

    /// A daemon died during this gate's dump or restore: finish or undo it.
    async fn recover(&mut self) {
        use crate::hibernate::{self as h, Recovery};
        let (keeper, dir, criu) = (self.g.keeper(), self.image_dir(), self.cx.criu.clone());
        let r = self
            .hibernation_step(move |cg, record| {
                let seen = h::observe(cg, keeper, &dir, criu.as_ref())?;
                let recovery = h::recover(record.phase(), seen);
                h::apply(recovery, cg, record, keeper, &dir)?;
                Ok::<_, h::HibernateError>(recovery)
            })
            .await;
        tracing::debug!(gate = %self.g.dir.id, ?r, "hibernation recovery");
        match r {
            Ok(Recovery::Wait) => {}
            Ok(recovery) => self.event(
                EventKind::Adopted,
                Some(format!(
                    "hibernation step finished after a restart: {recovery:?}"
                )),
                None,
            ),
            Err(e) => self.failed("hibernation recovery", e.reason()),
        }
    }

    /// Records, once, that a watched process exited: the owner process
    /// (orphaned) or the main process.
    fn exited(&mut self, owner: bool) {
        let now = now_ms();
        let t = self.g.tags();
        let already = if owner {
            t.orphaned_ms.is_some()
        } else {
            t.main_exited_ms.is_some()
        };
        if already {
            return;
        }
        let written = if owner {
            self.g.record.set_orphaned(now)
        } else {
            self.g.record.set_main_exited(now)
        };
        if let Err(e) = written {
            // Known here all the same; a restarted daemon sees the exit anew.
            tracing::warn!(gate = %self.g.dir.id, "exit not tagged: {e}");
        }
        let (kind, reason) = if owner {
            (EventKind::Orphaned, Some("owner exited".to_string()))
        } else {
            (EventKind::MainExited, None)
        };
        self.event(kind, reason, None);
    }

    fn pin(&mut self, pinned: bool) -> Result<(), Failure> {
        self.g.record.set_pinned(pinned)?;
        let kind = if pinned {
            EventKind::Pinned
        } else {
            EventKind::Unpinned
        };
        self.event(kind, None, None);
        Ok(())
    }

    fn tag(&mut self, session: &str) -> Result<(), Failure> {
        self.g.record.set_session(session)?;
        self.event(EventKind::Tagged, Some(format!("session {session}")), None);
        Ok(())
    }
}

/// A restore's first half, as the owner's wake takes it.
enum Back {
    /// Every page is back (an eager restore): finished.
    Whole(crate::criu::RestoreReport),
    /// The worker runs; the lazy-pages daemon fills the rest.
    Filling(crate::lazy::LazyPages, crate::hibernate::Filling),
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

/// Runs blocking work off the async thread; a panic there reaches the
/// action, which the owner catches.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// The owner's decisions against a kernel in memory: no root, no cgroupfs,
/// milliseconds each. tests/lifecycle.rs proves the same against the kernel.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::Cgroup;
    use crate::daemon::kernel::fake::Fake;
    use crate::gate::Tag;

    /// The gates whose owners still run, as the daemon's registry has them.
    type Managed = Arc<Mutex<std::collections::HashSet<String>>>;

    struct Kit {
        fake: Arc<Fake>,
        cx: Arc<Ctx>,
        managed: Managed,
        cg: Cgroup,
    }

    /// One gate under `policy` (gov.toml text), created now with these
    /// tags changed, its owner started.
    fn start_gate(policy: &str, tags: impl FnOnce(&mut Tags)) -> (Kit, Handle) {
        let policy = Arc::new(Policy::parse(policy, std::path::Path::new("test")).unwrap());
        let fake = Arc::new(Fake::default());
        let managed = Managed::default();
        let left = managed.clone();
        let cx = Arc::new(Ctx {
            policy: watch::channel(policy.clone()).1,
            journal: Arc::new(Journal::new(100)),
            criu: None,
            kernel: fake.clone(),
            leave: Box::new(move |id| {
                lock(&left).remove(id);
            }),
        });
        let cg = Cgroup::new("/fake/gov/p/g1");
        let store = fake.add(&cg);
        // As spawn tags a gate.
        for (tag, v) in [
            (Tag::Project, "/p"),
            (Tag::OwnerUid, "0"),
            (Tag::Created, "1"),
        ] {
            crate::record::TagStore::write(&*store, tag, Some(v)).unwrap();
        }
        let mut t = Tags {
            project: "/p".into(),
            created_ms: now_ms(),
            ..Tags::default()
        };
        tags(&mut t);
        let dir = GateDir {
            id: "g1".into(),
            project_key: "p".into(),
            cgroup: cg.clone(),
        };
        let gate = Gate::found(dir, t, &*fake, policy);
        let handle = start(&cx, gate);
        lock(&managed).insert("g1".into());
        let kit = Kit {
            fake,
            cx,
            managed,
            cg,
        };
        (kit, handle)
    }

    fn observe(h: &Handle, cx: &Ctx, now: u64) {
        h.observe(Observation {
            now,
            full: true,
            measure_cpu: false,
            policy: cx.policy(),
        });
    }

    fn events(cx: &Ctx, kind: EventKind) -> Vec<crate::protocol::Event> {
        let mut all = cx.journal.recent(|_| true, None);
        all.retain(|e| e.kind == kind);
        all
    }

    /// Lets the owner's task run until it waits again.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The reaper's freeze of the idle gate begins, and is held open.
    async fn idle_freeze_held(kit: &Kit, h: &Handle) {
        kit.fake.hold_freezes(true);
        observe(h, &kit.cx, now_ms() + 5_000);
        let fake = kit.fake.clone();
        tokio::task::spawn_blocking(move || fake.wait_held())
            .await
            .unwrap();
    }

    const IDLE: &str = "[defaults]\nidle_timeout = \"1s\"\nbusy_cpu_percent = 100.0\n";

    /// A touch that arrives while the reaper's freeze is in flight waits
    /// for it, then thaws: once answered, the gate runs.
    #[tokio::test]
    async fn a_touch_during_a_freeze_waits_for_it_and_thaws() {
        let (kit, h) = start_gate(IDLE, |_| {});
        idle_freeze_held(&kit, &h).await;
        let (tx, mut answer) = oneshot::channel();
        assert!(h.tx.send((Cmd::Touch, Some(tx))).is_ok());
        settle().await;
        assert!(answer.try_recv().is_err(), "answered during the freeze");
        kit.fake.hold_freezes(false);
        answer.await.unwrap().unwrap();
        assert!(
            !kit.fake.frozen(&kit.cg),
            "the touch's answer came: it runs"
        );
        assert_eq!(kit.fake.calls("thaw"), 1);
        assert_eq!(*h.view().phase(), Phase::Running);
        assert_eq!(events(&kit.cx, EventKind::Suspended).len(), 1);
        assert_eq!(events(&kit.cx, EventKind::Thawed).len(), 1);
    }

    /// A kill during a stop grace ends the teardown under way: one kill,
    /// one `removed` event with the stop's reason, and the owner ends.
    #[tokio::test]
    async fn a_kill_during_a_stop_grace_escalates_the_one_teardown() {
        let (kit, h) = start_gate("[defaults]\nstop_grace = \"1h\"\n", |t| {
            t.max_runtime_ms = Some(10)
        });
        observe(&h, &kit.cx, now_ms() + 1_000);
        let pending = h.begin("g1", Cmd::Kill);
        pending.wait().await.unwrap();
        assert_eq!(kit.fake.calls("stop_signal"), 1);
        assert_eq!(kit.fake.calls("kill_all"), 1);
        let removed = events(&kit.cx, EventKind::Removed);
        assert_eq!(removed.len(), 1, "{removed:?}");
        assert_eq!(removed[0].reason.as_deref(), Some("deadline (killed)"));
        assert_eq!(events(&kit.cx, EventKind::Stopping).len(), 1);
        let mut view = h.view.clone();
        while view.changed().await.is_ok() {}
        assert!(!lock(&kit.managed).contains("g1"), "the owner took it out");
        // A command that comes later finds no gate.
        assert_eq!(
            h.ask("g1", Cmd::Touch).await.unwrap_err().code,
            crate::protocol::ErrorCode::NotFound
        );
    }

    /// Scans that come while an action runs are coalesced into one
    /// observation, not queued one each behind it.
    #[tokio::test]
    async fn scans_coalesce_while_an_action_runs() {
        let (kit, h) = start_gate(IDLE, |_| {});
        let reads = kit.fake.calls("events");
        idle_freeze_held(&kit, &h).await;
        for i in 0..100 {
            observe(&h, &kit.cx, now_ms() + 5_000 + i);
        }
        kit.fake.hold_freezes(false);
        // Behind the one coalesced observation.
        h.ask("g1", Cmd::Pin(true)).await.unwrap();
        assert_eq!(
            kit.fake.calls("events") - reads,
            2,
            "the first and one more"
        );
    }

    /// A panic in an action is caught: its answer says so, the gate shows
    /// and logs the failure, and stays managed.
    #[tokio::test]
    async fn a_panicking_action_leaves_the_gate_managed() {
        let (kit, h) = start_gate("", |_| {});
        kit.fake.lock().panics.push("freeze");
        let e = h.ask("g1", Cmd::Freeze).await.unwrap_err();
        assert_eq!(e.code, crate::protocol::ErrorCode::Internal);
        assert!(e.message.contains("failed"), "{}", e.message);
        let failed = events(&kit.cx, EventKind::Failed);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].reason.as_deref().unwrap().starts_with("freeze"));
        assert!(h
            .view()
            .failure
            .as_deref()
            .unwrap()
            .contains("fake freeze panics"));
        assert_eq!(*h.view().phase(), Phase::Running);
        // Still managed: the next action works, and is written.
        kit.fake.lock().panics.clear();
        h.ask("g1", Cmd::Pin(true)).await.unwrap();
        let tags = kit.fake.lock().gates[kit.cg.path()].tags.clone();
        assert!(tags.read().unwrap().pinned);
        assert!(h.view().tags().pinned);
    }

    /// Owners hold the daemon's registry weakly: when it lets go of their
    /// handles, their channels close and they end.
    #[tokio::test]
    async fn the_owner_ends_when_the_registry_lets_go() {
        let (_kit, h) = start_gate("", |_| {});
        let mut view = h.view.clone();
        drop(h);
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while view.changed().await.is_ok() {}
        })
        .await;
        assert!(ended.is_ok(), "the owner still runs");
    }

    /// A freeze a person asked for is the person's: written so, held, and
    /// a second freeze changes nothing.
    #[tokio::test]
    async fn a_persons_freeze_is_entered_and_tagged_as_theirs() {
        let (kit, h) = start_gate("", |_| {});
        h.ask("g1", Cmd::Freeze).await.unwrap();
        h.ask("g1", Cmd::Freeze).await.unwrap();
        assert_eq!(kit.fake.calls("freeze"), 1);
        assert!(matches!(
            h.view().phase(),
            Phase::Suspended { manual: true, .. }
        ));
        let tags = kit.fake.lock().gates[kit.cg.path()].tags.clone();
        let on_disk = tags.read().unwrap();
        assert!(on_disk.frozen_manual && on_disk.frozen_ms.is_some());
        h.ask("g1", Cmd::Thaw).await.unwrap();
        let on_disk = tags.read().unwrap();
        assert!(!on_disk.frozen_manual && on_disk.frozen_ms.is_none());
        assert!(!kit.fake.frozen(&kit.cg));
    }

    /// A pipe the fake kernel lends as the gate's stdin; the test writes
    /// to the other end, as a host would.
    fn stdin_of(kit: &Kit) -> (std::fs::File, std::fs::File) {
        let (r, w) = nix::unistd::pipe().unwrap();
        kit.fake.lock().inputs.push(r.try_clone().unwrap());
        (std::fs::File::from(r), std::fs::File::from(w))
    }

    /// Waits for the owner to publish a gate that `done` accepts.
    async fn until(h: &Handle, what: &str, done: impl Fn(&Gate) -> bool) -> Arc<Gate> {
        let mut view = h.view.clone();
        let wait = async {
            loop {
                let g = view.borrow_and_update().clone();
                if done(&g) {
                    return g;
                }
                view.changed().await.expect("the owner ended");
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), wait).await {
            Ok(g) => g,
            Err(_) => panic!(
                "{what}: not within 10 s; the gate is {:?}",
                h.view().phase()
            ),
        }
    }

    const WAKE: &str =
        "[defaults]\nidle_timeout = \"1s\"\nbusy_cpu_percent = 100.0\nwake_quiet = \"100ms\"\n";

    /// Input that comes while the reaper's freeze is in flight is not left
    /// waiting: once frozen, the gate finds it and wakes at once.
    #[tokio::test]
    async fn input_during_a_freeze_wakes_the_gate_at_once() {
        use std::io::Write;
        let (kit, h) = start_gate(WAKE, |_| {});
        let (_r, mut w) = stdin_of(&kit);
        idle_freeze_held(&kit, &h).await;
        w.write_all(b"ping\n").unwrap();
        kit.fake.hold_freezes(false);
        let g = until(&h, "woken", |g| matches!(g.phase(), Phase::Woken { .. })).await;
        assert!(!kit.fake.frozen(&kit.cg));
        let woken = events(&kit.cx, EventKind::Woken);
        assert_eq!(woken.len(), 1);
        assert_eq!(woken[0].reason.as_deref(), Some("stdin pipe"));
        assert!(g.tags().last_input_ms.is_some());
        assert_eq!(
            g.last_active_ms,
            g.tags().created_ms,
            "input is not activity"
        );
    }

    /// Woken by input and read, a gate with nothing else to do sleeps again
    /// wake_quiet later, watched again; a second input wakes it again.
    #[tokio::test]
    async fn a_woken_gate_sleeps_again_after_the_quiet_time_and_wakes_again() {
        use std::io::{Read, Write};
        let (kit, h) = start_gate(WAKE, |_| {});
        let (mut r, mut w) = stdin_of(&kit);
        observe(&h, &kit.cx, now_ms() + 5_000);
        until(&h, "suspended", |g| g.wakes_on == ["stdin pipe"]).await;
        for round in 1..=2 {
            w.write_all(b"line\n").unwrap();
            until(&h, "woken", |g| matches!(g.phase(), Phase::Woken { .. })).await;
            // The gate reads its input, and answers.
            let mut buf = [0u8; 5];
            r.read_exact(&mut buf).unwrap();
            kit.fake.lock().written += 5;
            let g = until(&h, "asleep again", |g| {
                matches!(g.phase(), Phase::Suspended { manual: false, .. })
                    && !g.wakes_on.is_empty()
            })
            .await;
            assert!(kit.fake.frozen(&kit.cg), "round {round}");
            assert_eq!(g.wake_note, None);
            assert_eq!(events(&kit.cx, EventKind::Woken).len(), round);
        }
    }

    /// A host that closed its end leaves stdin readable for good (end of
    /// file): that wakes the gate once, so it sees it, and is not watched
    /// again (it would wake the gate at once, forever).
    #[tokio::test]
    async fn an_end_of_file_wakes_once_then_is_not_watched() {
        let (kit, h) = start_gate(WAKE, |_| {});
        let (_r, w) = stdin_of(&kit);
        observe(&h, &kit.cx, now_ms() + 5_000);
        until(&h, "suspended", |g| !g.wakes_on.is_empty()).await;
        drop(w);
        until(&h, "woken", |g| matches!(g.phase(), Phase::Woken { .. })).await;
        let g = until(&h, "asleep, unwatched", |g| {
            matches!(g.phase(), Phase::Suspended { .. }) && g.wakes_on.is_empty()
        })
        .await;
        assert!(kit.fake.frozen(&kit.cg));
        assert_eq!(g.wake_note, None);
        assert_eq!(events(&kit.cx, EventKind::Woken).len(), 1);
    }

    /// Woken by a line, a gate that has not answered yet (written nothing
    /// since) is not suspended at the end of the quiet time: its host waits
    /// for that answer. Once it answered, it sleeps again.
    #[tokio::test]
    async fn a_woken_gate_is_not_suspended_before_it_answered() {
        use std::io::Read;
        use std::io::Write;
        let (kit, h) = start_gate(WAKE, |_| {});
        let (mut r, mut w) = stdin_of(&kit);
        observe(&h, &kit.cx, now_ms() + 5_000);
        until(&h, "suspended", |g| !g.wakes_on.is_empty()).await;
        w.write_all(b"slow request\n").unwrap();
        let first = until(&h, "woken", |g| matches!(g.phase(), Phase::Woken { .. })).await;
        // The worker reads the request (left in the pipe, it would wake
        // the gate again as soon as it slept: a test of luck, which CI's
        // run as nobody once lost).
        let mut request = [0u8; 64];
        let n = r.read(&mut request).unwrap();
        kit.fake.lock().read += n as u64;
        let Phase::Woken { until_ms } = *first.phase() else {
            unreachable!()
        };
        // Past two quiet times, still awake: no answer yet.
        until(
            &h,
            "woken again, later",
            |g| matches!(g.phase(), Phase::Woken { until_ms: u } if *u > until_ms + 100),
        )
        .await;
        assert!(!kit.fake.frozen(&kit.cg));
        kit.fake.lock().written += 20;
        until(&h, "asleep after its answer", |g| {
            matches!(g.phase(), Phase::Suspended { .. })
        })
        .await;
    }

    /// A person's freeze is theirs to end: input does not end it.
    #[tokio::test]
    async fn input_does_not_end_a_persons_freeze() {
        use std::io::Write;
        let (kit, h) = start_gate(WAKE, |_| {});
        let (_r, mut w) = stdin_of(&kit);
        h.ask("g1", Cmd::Freeze).await.unwrap();
        w.write_all(b"x").unwrap();
        // A pin goes through the owner after anything the input could do.
        h.ask("g1", Cmd::Pin(false)).await.unwrap();
        assert!(h.view().wakes_on.is_empty());
        assert!(kit.fake.frozen(&kit.cg));
        assert_eq!(kit.fake.calls("inputs"), 0);
    }

    /// Where input counts as activity, a wake restarts the idle clock and
    /// the gate simply runs.
    #[tokio::test]
    async fn where_input_is_activity_a_wake_is_a_touch() {
        use std::io::Write;
        let policy = format!("{WAKE}activity = [\"touch\", \"cpu\", \"input\"]\n");
        let (kit, h) = start_gate(&policy, |_| {});
        let (_r, mut w) = stdin_of(&kit);
        observe(&h, &kit.cx, now_ms() + 5_000);
        until(&h, "suspended", |g| !g.wakes_on.is_empty()).await;
        w.write_all(b"x").unwrap();
        let g = until(&h, "running", |g| *g.phase() == Phase::Running).await;
        // Marked active at the very time of the input.
        assert!(g.tags().last_input_ms.is_some());
        assert_eq!(g.tags().last_active_ms, g.tags().last_input_ms);
        assert!(!kit.fake.frozen(&kit.cg));
    }

    /// What the gate read while its freeze was in flight (a line its host
    /// wrote then, taken by a process not yet frozen) is nowhere the watch
    /// could see it: the gate is thawed at once, never left frozen.
    #[tokio::test]
    async fn a_read_during_the_freeze_leaves_the_gate_running() {
        let (kit, h) = start_gate(WAKE, |t| t.stdin_ino = Some(7));
        kit.fake.lock().read_during_freeze = 6;
        idle_freeze_held(&kit, &h).await;
        kit.fake.hold_freezes(false);
        h.ask("g1", Cmd::Pin(false)).await.unwrap();
        assert!(!kit.fake.frozen(&kit.cg));
        assert_eq!(*h.view().phase(), Phase::Running);
        assert_eq!(kit.fake.calls("thaw"), 1);
        assert!(events(&kit.cx, EventKind::Suspended).is_empty());
    }

    /// A person's freeze of a gate that input woke is a freeze like any.
    #[tokio::test]
    async fn a_person_freezes_a_woken_gate() {
        use std::io::Write;
        let (kit, h) = start_gate(WAKE, |_| {});
        let (_r, mut w) = stdin_of(&kit);
        observe(&h, &kit.cx, now_ms() + 5_000);
        until(&h, "suspended", |g| !g.wakes_on.is_empty()).await;
        w.write_all(b"x\n").unwrap();
        until(&h, "woken", |g| matches!(g.phase(), Phase::Woken { .. })).await;
        h.ask("g1", Cmd::Freeze).await.unwrap();
        assert!(matches!(
            h.view().phase(),
            Phase::Suspended { manual: true, .. }
        ));
        assert!(kit.fake.frozen(&kit.cg));
    }

    /// Relief's rungs on an idle gate: a running one is suspended and
    /// reclaimed, a reclaimed one is not reclaimed again, and each step
    /// says what it freed.
    #[tokio::test]
    async fn relief_suspends_and_reclaims_an_idle_gate_and_says_so() {
        let (kit, h) = start_gate(IDLE, |_| {});
        let why = "memory pressure 30%".to_string();
        h.ask(
            "g1",
            Cmd::Relieve(Rung::SuspendReclaim, Reason::MemoryPressure, why.clone()),
        )
        .await
        .unwrap();
        assert!(matches!(
            h.view().phase(),
            Phase::Suspended { manual: false, .. }
        ));
        assert!(kit.fake.frozen(&kit.cg));
        assert_eq!(kit.fake.calls("reclaim"), 1);
        let relieved = events(&kit.cx, EventKind::Relieved);
        assert_eq!(relieved.len(), 1);
        assert_eq!(relieved[0].freed_bytes, Some(1 << 20));
        assert_eq!(
            relieved[0].reason.as_deref(),
            Some("suspend_reclaim: memory pressure 30%")
        );
        let c = h.view().relief_candidate(1 << 20, now_ms(), false);
        assert_eq!(c.held, relief::Held::Suspended { reclaimed: true });
        // Nothing has run since: the ladder does not choose it again.
        assert_eq!(
            relief::next(
                &[c],
                relief::Trigger::Pressure(0.5).means(true, false),
                now_ms(),
                &Default::default()
            ),
            None
        );
        // Once it ran, its memory is weighed again.
        h.ask("g1", Cmd::Touch).await.unwrap();
        h.ask("g1", Cmd::Freeze).await.unwrap();
        let c = h.view().relief_candidate(1 << 20, now_ms(), false);
        assert_eq!(c.held, relief::Held::Suspended { reclaimed: false });
        let (steps, freed) = kit.cx.journal.relief_totals();
        assert_eq!(
            (steps[&Rung::SuspendReclaim], freed[&Rung::SuspendReclaim]),
            (1, 1 << 20)
        );
    }

    /// A gate pinned (or busy, or traced) after relief chose it is left as
    /// it is when its owner gets to the step.
    #[tokio::test]
    async fn relief_leaves_a_gate_pinned_since_it_was_chosen() {
        let (kit, h) = start_gate(IDLE, |_| {});
        h.ask("g1", Cmd::Pin(true)).await.unwrap();
        for rung in Rung::ALL {
            h.ask(
                "g1",
                Cmd::Relieve(rung, Reason::MemoryPressure, "test".into()),
            )
            .await
            .unwrap();
        }
        assert_eq!(*h.view().phase(), Phase::Running);
        assert!(!kit.fake.frozen(&kit.cg));
        assert_eq!(kit.fake.calls("reclaim"), 0);
        assert!(events(&kit.cx, EventKind::Relieved).is_empty());
        assert!(lock(&kit.managed).contains("g1"));
    }

    /// The last rung stops the gate (as memory_budget did), its reason
    /// memory pressure, what it held counted as freed.
    #[tokio::test]
    async fn relief_stop_stops_the_gate_and_counts_it() {
        let (kit, h) = start_gate(IDLE, |_| {});
        h.ask(
            "g1",
            Cmd::Relieve(Rung::Stop, Reason::MemoryPressure, "MemAvailable 3%".into()),
        )
        .await
        .unwrap();
        assert!(matches!(
            h.view().phase(),
            Phase::Stopping {
                reason: Reason::MemoryPressure,
                ..
            }
        ));
        let relieved = events(&kit.cx, EventKind::Relieved);
        assert_eq!(relieved[0].reason.as_deref(), Some("stop: MemAvailable 3%"));
        assert_eq!(relieved[0].freed_bytes, Some(1 << 20));
    }
}
