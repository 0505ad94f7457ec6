//! The daemon's protocol: one JSON object per line each way, tagged by
//! `"type"` in snake_case, with a version field `"v"`. See docs/protocol.md.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// A request line longer than this is refused before it is buffered whole.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

fn version() -> u32 {
    VERSION
}

/// A request as sent on the wire: `{"v":1,"type":"touch","gate":"g0123456789"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    #[serde(default = "version")]
    pub v: u32,
    #[serde(flatten)]
    pub request: Request,
}

/// Every request, with the replies it can get. Any request may also be
/// answered with `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// Put the calling process itself into a new gate. The daemon takes the
    /// pid from the socket's peer credentials, never from the request.
    /// Reply: `spawned`.
    Spawn {
        #[serde(flatten)]
        gate: GateSpec,
        /// The caller becomes a keeper (`gov keeper`) whose worker runs in
        /// `<gate>/w`, so the gate can be hibernated.
        #[serde(default, skip_serializing_if = "is_false")]
        hibernate: bool,
    },
    /// From a keeper that cannot start its worker itself (an unprivileged
    /// one: a pid namespace takes CAP_SYS_ADMIN): start `cmd` as the
    /// keeper's user, in its gate's worker cgroup. Reply: `done`.
    StartWorker { cmd: Vec<String> },
    /// Move a running process and all its current descendants into a new
    /// gate. A user may adopt only processes that are wholly theirs (every
    /// uid); root any. Reply: `adopted`.
    Adopt {
        pid: u32,
        #[serde(flatten)]
        gate: GateSpec,
    },
    /// Reply: `gates`, the caller's own (all of them for root and admins).
    List,
    /// Reply: `gate`.
    Show { gate: String },
    /// Real activity: a host calls this at each real tool call, never for
    /// health pings. Thaws a suspended gate. By gate id or by session.
    /// Reply: `done` with the gates touched.
    Touch {
        #[serde(default)]
        gate: Option<String>,
        #[serde(default)]
        session: Option<String>,
    },
    /// Reply: `done`.
    Freeze { gate: String },
    /// Reply: `done`.
    Thaw { gate: String },
    /// Kill the whole tree and remove the gate. Reply: `done`.
    Kill { gate: String },
    /// Never reap this gate. Reply: `done`.
    Pin { gate: String },
    /// Reply: `done`.
    Unpin { gate: String },
    /// Set the session of a gate (hosts that learn it late). Reply: `done`.
    Tag { gate: String, session: String },
    /// Recent lifecycle events. Reply: `events`.
    Events {
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Prometheus text exposition. Reply: `metrics`.
    Metrics,
    /// Reply: `hello`.
    Hello,
}

/// What a new gate is to be, as `spawn` and `adopt` both ask it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateSpec {
    /// An absolute path or a plain name.
    pub project: String,
    /// None: from the process's environment (policy session_env), else new.
    #[serde(default)]
    pub session: Option<String>,
    /// The process whose exit orphans the gate; default: the gate's main
    /// process's parent.
    #[serde(default)]
    pub owner_pid: Option<u32>,
    /// No owner: the gate is never orphaned.
    #[serde(default)]
    pub no_owner: bool,
    /// A deadline for this gate, e.g. "30m" (test runners).
    #[serde(default)]
    pub max_runtime: Option<String>,
    #[serde(default)]
    pub pinned: bool,
    /// Stop what is left once the main process exits (an exec is not an
    /// exit); None: the policy's on_main_exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_main_exit: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    #[serde(default = "version")]
    pub v: u32,
    #[serde(flatten)]
    pub response: Response,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Spawned {
        gate: String,
        project: String,
        session: String,
        cgroup: String,
        /// Limits the gate's policy asks for that this host cannot apply.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        not_applied: Vec<NotApplied>,
        /// Its owner is pid 1, which never exits: it is never orphaned.
        #[serde(default, skip_serializing_if = "is_false")]
        never_orphaned: bool,
        /// Asked with `hibernate`, but this daemon cannot hibernate: why.
        /// The gate is suspended when idle, never dumped.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hibernation_off: Option<String>,
    },
    Adopted {
        gate: String,
        project: String,
        session: String,
        /// The processes moved into the gate, the adopted one first.
        moved: Vec<u32>,
        /// Descendants left where they were (another user's).
        skipped: Vec<u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        not_applied: Vec<NotApplied>,
        #[serde(default, skip_serializing_if = "is_false")]
        never_orphaned: bool,
    },
    Gates {
        gates: Vec<GateInfo>,
    },
    Gate {
        gate: Box<GateInfo>,
    },
    Done {
        gates: Vec<String>,
    },
    Events {
        events: Vec<Event>,
    },
    Metrics {
        text: String,
    },
    Hello {
        version: u32,
        pid: u32,
        /// Scans the daemon has made: a test or tool waits for "N more
        /// scans" instead of sleeping.
        #[serde(default)]
        scans: u64,
        /// The CRIU that hibernates gates ("criu 4.2.1 at /usr/sbin/criu").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        criu: Option<String>,
        /// Why this daemon cannot hibernate gates (no CRIU >= 4.2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hibernation_off: Option<String>,
        /// Its memory relief (absent from daemons before it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relief: Option<ReliefStatus>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Response {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Response {
        Response::Error {
            code,
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, an unknown type, a bad field, an unsupported version.
    BadRequest,
    /// The line was longer than MAX_REQUEST_BYTES.
    TooLarge,
    NotFound,
    /// The gate is not the caller's.
    Forbidden,
    /// A cap refused the spawn (max_gates with on_limit = "refuse", ...).
    Limit,
    /// The gate is being reaped; too late to touch or thaw it.
    Reaping,
    /// The daemon is at its connection cap, or the gate is in the middle
    /// of a step it must finish first: try again.
    Busy,
    /// The action was refused for a reason of the gate's own (a restore
    /// whose worker would hold files its owner cannot open); nothing changed.
    Refused,
    Internal,
}

/// Where a gate is in its life. `Frozen` is a freeze asked by a person
/// (`gov freeze`); `Suspended` is the reaper's idle freeze.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    Running,
    Frozen,
    Suspended,
    Stopping,
    Killing,
    /// Dumped to disk (CRIU); a touch or `gov thaw` restores it.
    Hibernated,
    /// Empty: its processes have all exited and it awaits removal.
    Exited,
}

impl GateState {
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Running => "running",
            GateState::Frozen => "frozen",
            GateState::Suspended => "suspended",
            GateState::Stopping => "stopping",
            GateState::Killing => "killing",
            GateState::Hibernated => "hibernated",
            GateState::Exited => "exited",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// A limit a gate's policy asks for that the host cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotApplied {
    /// The policy key (`memory_max`, `pids_max`, ...).
    pub key: String,
    /// Its value as the kernel would have been given it.
    pub value: String,
    pub why: String,
}

/// Why a gate is being reaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Idle,
    Orphan,
    Deadline,
    Evicted,
    MemoryBudget,
    /// The host ran short of memory (relief's last rung, `pressure_stop`).
    MemoryPressure,
    Manual,
    /// The main process exited, with on_main_exit = "stop".
    MainExit,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Idle,
        Reason::Orphan,
        Reason::Deadline,
        Reason::Evicted,
        Reason::MemoryBudget,
        Reason::MemoryPressure,
        Reason::Manual,
        Reason::MainExit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::Orphan => "orphan",
            Reason::Deadline => "deadline",
            Reason::Evicted => "evicted",
            Reason::MemoryBudget => "memory-budget",
            Reason::MemoryPressure => "memory-pressure",
            Reason::Manual => "manual",
            Reason::MainExit => "main-exit",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Why a gate is left alone although a rule would reap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Spared {
    Pinned,
    Traced,
    Busy,
}

impl Spared {
    /// As a person reads it.
    pub fn describe(self) -> &'static str {
        match self {
            Spared::Pinned => "pinned",
            Spared::Traced => "a debugger is attached",
            Spared::Busy => "busy (using CPU)",
        }
    }
}

/// The reaper's next step for a gate, if nothing happens before `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Next {
    pub action: NextAction,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextAction {
    /// Suspend: idle past idle_timeout.
    Suspend,
    /// Stop: idle past idle_timeout, with frozen_hold = 0.
    StopIdle,
    /// Stop: past its deadline (max_runtime).
    StopDeadline,
    /// Stop: orphaned past orphan_grace.
    StopOrphaned,
    /// Stop: the main process exited main_exit_grace ago.
    StopMainExited,
    /// Stop: suspended past frozen_hold.
    StopFrozenTooLong,
    /// Hibernate: suspended past hibernate_after.
    Hibernate,
    /// Stop: hibernated past hibernate_hold (the image is deleted).
    StopHibernatedTooLong,
    /// Kill: stop_grace is over.
    Kill,
}

impl NextAction {
    pub fn describe(self) -> &'static str {
        match self {
            NextAction::Suspend => "suspend: idle",
            NextAction::StopIdle => "stop: idle",
            NextAction::StopDeadline => "stop: deadline",
            NextAction::StopOrphaned => "stop: orphaned",
            NextAction::StopMainExited => "stop: main process exited",
            NextAction::StopFrozenTooLong => "stop: frozen too long",
            NextAction::Hibernate => "hibernate",
            NextAction::StopHibernatedTooLong => "stop: hibernated too long",
            NextAction::Kill => "kill",
        }
    }
}

/// Where a memory figure came from: the kernel's own accounting, or the sum
/// of PSS of member processes where the memory controller is off (hybrid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    MemoryCurrent,
    ProcPss,
    /// Hibernated: the size of its image on disk (it holds no RAM but its
    /// keeper's).
    Image,
}

/// What happened to a gate, as `gov events` and the log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Spawned,
    /// Found on cgroupfs by a (re)started daemon.
    Adopted,
    /// Frozen by the reaper.
    Suspended,
    /// Frozen by a person.
    Frozen,
    Thawed,
    Orphaned,
    /// The gate's main process exited (an exec is not an exit).
    MainExited,
    /// Dumped to disk (CRIU): its RAM is free; `freed_bytes` is the image.
    Hibernated,
    /// Restored from its image.
    Restored,
    /// A dump taken back before the worker was killed: input or a touch
    /// came during it (`reason` says which). The gate is suspended as
    /// before, and that input or touch wakes it.
    DumpUndone,
    /// Input woke it (`reason` names the input: "stdin pipe", ...).
    Woken,
    /// Memory relief took memory from it: `reason` names the rung and the
    /// trigger ("hibernate: memory pressure 23%"), `freed_bytes` what it
    /// gave back.
    Relieved,
    Stopping,
    Killing,
    /// Torn down by gov; `reason` says why and how ("idle (stopped)").
    Removed,
    /// Every process exited by itself.
    Exited,
    /// A limit was hit.
    Limit,
    Pinned,
    Unpinned,
    Tagged,
    /// An action on the gate failed; the gate stays managed.
    Failed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Spawned => "spawned",
            EventKind::Adopted => "adopted",
            EventKind::Suspended => "suspended",
            EventKind::Frozen => "frozen",
            EventKind::Thawed => "thawed",
            EventKind::Orphaned => "orphaned",
            EventKind::MainExited => "main_exited",
            EventKind::Hibernated => "hibernated",
            EventKind::Restored => "restored",
            EventKind::DumpUndone => "dump_undone",
            EventKind::Woken => "woken",
            EventKind::Relieved => "relieved",
            EventKind::Stopping => "stopping",
            EventKind::Killing => "killing",
            EventKind::Removed => "removed",
            EventKind::Exited => "exited",
            EventKind::Limit => "limit",
            EventKind::Pinned => "pinned",
            EventKind::Unpinned => "unpinned",
            EventKind::Tagged => "tagged",
            EventKind::Failed => "failed",
        }
    }
}

/// One gate as `gov ps --json` and `gov show` give it. Field names are
/// stable: tools depend on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateInfo {
    pub id: String,
    pub project: String,
    pub session: String,
    pub uid: u32,
    pub user: String,
    pub pids: Vec<u32>,
    pub memory_bytes: u64,
    pub memory_source: MemorySource,
    pub cpu_usec: u64,
    /// CPU use in percent of one CPU since the daemon's last sample of it
    /// (within the last ten scans), as `top` shows it; absent without a
    /// daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    pub created_ms: u64,
    pub age_s: u64,
    /// Seconds since the last real activity (touch or CPU use).
    pub idle_s: u64,
    pub state: GateState,
    pub pinned: bool,
    /// Why the reaper leaves this gate alone right now, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spared: Option<Spared>,
    /// What the reaper will do next and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runtime_s: Option<u64>,
    /// Limit files in force (absent where the controller is off here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    /// How often the gate hit a limit (pids.events, memory.events).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limit_hits: BTreeMap<String, u64>,
    /// Limits its policy asks for that this host cannot apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<NotApplied>,
    /// Its owner is pid 1: it is never orphaned.
    #[serde(default, skip_serializing_if = "is_false")]
    pub never_orphaned: bool,
    /// Why its last hibernation was refused (it stays suspended instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernate_refused: Option<String>,
    /// Spawned to be hibernated, but this daemon cannot hibernate: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hibernation_off: Option<String>,
    /// The last action on it that failed, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// What input would wake it while it sleeps ("stdin pipe",
    /// "tcp 127.0.0.1:8888 listener", "2 connections").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wakes_on: Vec<String>,
    /// Why some of its inputs are not watched, if any are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_note: Option<String>,
    /// Of its memory, what the kernel holds in swap (memory.swap.current,
    /// or the sum of its processes' VmSwap where the controller is off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_bytes: Option<u64>,
    pub cgroup: String,
}

/// A step of memory relief, lossless ones first (docs/design.md, "Relief
/// under memory pressure").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    /// Dump an idle hibernatable gate to disk.
    Hibernate,
    /// Push a suspended gate's memory to swap (memory.reclaim).
    Reclaim,
    /// Suspend an idle running gate, then reclaim it.
    SuspendReclaim,
    /// Stop an idle gate (only with `pressure_stop`, or for `memory_budget`).
    Stop,
}

impl Rung {
    pub const ALL: [Rung; 4] = [
        Rung::Hibernate,
        Rung::Reclaim,
        Rung::SuspendReclaim,
        Rung::Stop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rung::Hibernate => "hibernate",
            Rung::Reclaim => "reclaim",
            Rung::SuspendReclaim => "suspend_reclaim",
            Rung::Stop => "stop",
        }
    }
}

/// What the daemon's memory relief sees and has done, for `gov status`
/// and `gov metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReliefStatus {
    /// Relief is under way (a trigger fired and has not cleared).
    pub active: bool,
    /// What set it off last ("memory pressure 23%", "MemAvailable 4%",
    /// "memory budget").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// When that trigger fired (unix ms): the time to relief is from here
    /// to the first `relieved` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub triggered_ms: Option<u64>,
    /// The host's memory pressure: share of time some task stalled on
    /// memory, over 10 s (/proc/pressure/memory `some avg10`), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_some_avg10: Option<f64>,
    /// The policy's `memory_pressure`, in percent (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pressure_limit: Option<f64>,
    #[serde(default)]
    pub mem_available_bytes: u64,
    #[serde(default)]
    pub mem_total_bytes: u64,
    /// The policy's `memory_available_min`, in bytes (absent: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_min_bytes: Option<u64>,
    /// Relief steps taken since the daemon started, by rung.
    #[serde(default)]
    pub steps: BTreeMap<Rung, u64>,
    /// Bytes those steps freed, by rung.
    #[serde(default)]
    pub freed_bytes: BTreeMap<Rung, u64>,
}

/// One lifecycle event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub time_ms: u64,
    pub gate: String,
    pub project: String,
    pub session: String,
    pub uid: u32,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed_bytes: Option<u64>,
}

/// Parses one request line. Errors are phrased for the reply.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let frame: RequestFrame =
        serde_json::from_slice(line).map_err(|e| format!("malformed request: {e}"))?;
    if frame.v != VERSION {
        return Err(format!(
            "protocol version {} is not supported (this daemon speaks {VERSION})",
            frame.v
        ));
    }
    Ok(frame.request)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(value).expect("protocol types always serialize");
    line.push(b'\n');
    line
}

pub fn encode_request(request: Request) -> Vec<u8> {
    encode(&RequestFrame {
        v: VERSION,
        request,
    })
}

pub fn encode_response(response: Response) -> Vec<u8> {
    encode(&ResponseFrame {
        v: VERSION,
        response,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Spawn {
                gate: GateSpec {
                    project: "/p".into(),
                    session: Some("s1".into()),
                    owner_pid: None,
                    no_owner: false,
                    max_runtime: Some("30m".into()),
                    pinned: false,
                    stop_on_main_exit: Some(true),
                },
                hibernate: true,
            },
            Request::Adopt {
                pid: 42,
                gate: GateSpec {
                    project: "P".into(),
                    session: None,
                    owner_pid: Some(7),
                    no_owner: false,
                    max_runtime: None,
                    pinned: true,
                    stop_on_main_exit: None,
                },
            },
            Request::List,
            Request::Touch {
                gate: None,
                session: Some("s1".into()),
            },
            Request::Kill {
                gate: "g0123456789".into(),
            },
            Request::Events { limit: Some(5) },
        ];
        for r in reqs {
            let line = encode_request(r.clone());
            assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), r);
        }
    }

    #[test]
    fn the_wire_shape_is_plain() {
        let line = encode_request(Request::Touch {
            gate: Some("g0123456789".into()),
            session: None,
        });
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"type\":\"touch\",\"gate\":\"g0123456789\",\"session\":null}\n"
        );
        // A host may leave out the version and optional fields.
        assert_eq!(
            parse_request(br#"{"type":"touch","session":"abc"}"#).unwrap(),
            Request::Touch {
                gate: None,
                session: Some("abc".into())
            }
        );
    }

    /// Replies from a daemon older than the hibernation fields still parse,
    /// and the fields are left out where there is nothing to say.
    #[test]
    fn hibernation_fields_are_optional_both_ways() {
        let old: ResponseFrame =
            serde_json::from_str(r#"{"v":1,"type":"hello","version":1,"pid":5}"#).unwrap();
        let Response::Hello {
            criu,
            hibernation_off,
            ..
        } = old.response
        else {
            panic!("{old:?}")
        };
        assert_eq!((criu, hibernation_off), (None, None));
        let hello = encode_response(Response::Hello {
            version: VERSION,
            pid: 5,
            scans: 0,
            criu: None,
            hibernation_off: Some("criu not found".into()),
            relief: None,
        });
        let text = String::from_utf8(hello).unwrap();
        assert!(
            text.contains(r#""hibernation_off":"criu not found""#),
            "{text}"
        );
        assert!(!text.contains("criu\":null"), "{text}");
    }

    #[test]
    fn bad_requests_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"[]",
            b"{\"type\":\"reboot\"}",
            b"{\"type\":\"kill\"}",
            b"{\"type\":\"kill\",\"gate\":5}",
            b"{\"v\":2,\"type\":\"list\"}",
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
