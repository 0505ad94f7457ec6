//! The gov.toml policy: global daemon settings, `[defaults]` for every gate, and
//! `[[project]]` rules matched by glob against a gate's project path.
//!
//! Layering, lowest first: [`EMBEDDED`] (always complete), the file's top-level keys
//! and `[defaults]`, then every matching `[[project]]` in file order, key by key.
//!
//! Why a hand walk over `toml::de::DeTable` instead of `#[derive(Deserialize)]`: every
//! key and value in a `DeTable` carries its byte span, so each error names the exact
//! key and line, also for dotted keys (`defaults.idle_timeout = 5`) and inline tables,
//! where guessing the key from the text of the error's line would name the wrong one.
//! It also lets one pass collect every problem (for `gov check-config`) instead of
//! stopping at serde's first. Only a TOML syntax error, which has no tree yet, falls
//! back to reading the key off its line ([`key_on_line`]).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use glob::{MatchOptions, Pattern};
use serde::{Serialize, Serializer};
use toml::de::{DeInteger, DeTable, DeValue};

use crate::cgroup::Limit;

/// Where the daemon and `gov check-config` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/gov.toml";

/// The daemon socket when the policy does not name one (the `socket` default below).
pub const DEFAULT_SOCKET: &str = "/run/gov/gov.sock";

/// The kernel's default CFS period; `cpu_max = "150%"` is a quota over this period.
pub const CPU_PERIOD_USEC: u64 = 100_000;

/// The built-in policy, parsed by the same code as a user's file so there is one
/// source of truth. It must set every required key (a test holds it to that); the
/// optional global keys (`socket_group`, `admin_group`, `memory_budget`,
/// `max_gates_per_user`, `metrics_listen`) are absent on purpose: absent means off.
pub const EMBEDDED: &str = r#"
socket = "/run/gov/gov.sock"
socket_mode = "0666"
cgroup_root = "gov"
scan_interval = "5s"
event_history = 1000

[defaults]
idle_timeout = "30m"
orphan_grace = "5m"
max_runtime = "never"
stop_signal = "SIGTERM"
stop_grace = "10s"
frozen_hold = "4h"
busy_cpu_percent = 5.0
memory_max = "max"
memory_high = "max"
pids_max = "max"
cpu_max = "max"
max_gates = 0
on_limit = "refuse"
pinned = false
reclaim_when_frozen = false
oom_group = false
project_memory_max = "max"
project_pids_max = "max"
"#;

/// Origin named in errors about [`EMBEDDED`] (only a broken build could show it).
const EMBEDDED_ORIGIN: &str = "<embedded>";

/// The largest `event_history`, a bound on the daemon's memory for events.
const MAX_EVENT_HISTORY: u64 = 1_000_000;

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// A loaded policy: global settings, the defaults every gate starts from, and the
/// project rules layered on top by [`Policy::for_project`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub global: Global,
    defaults: GateSettings,
    rules: Vec<Rule>,
}

/// Daemon-wide settings (the top level of gov.toml).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Global {
    /// Path of the daemon's Unix socket.
    pub socket: PathBuf,
    /// Permission bits of the socket (at most 0o777).
    pub socket_mode: u32,
    /// Group to chown the socket to; `None` leaves root's group.
    pub socket_group: Option<String>,
    /// Members of this group act on every gate, as root does.
    pub admin_group: Option<String>,
    /// Where gov's cgroup tree lives; see [`parse_cgroup_root`] for its forms.
    pub cgroup_root: String,
    /// How often the daemon samples activity and applies timeouts.
    pub scan_interval: Duration,
    /// Bytes all gates on the host may use together; `None` = no budget.
    pub memory_budget: Option<u64>,
    /// Gates one user may have at once; `None` = unlimited.
    pub max_gates_per_user: Option<u32>,
    /// Lifecycle events kept for `gov events`.
    pub event_history: usize,
    /// TCP address serving Prometheus metrics; `None` = off.
    pub metrics_listen: Option<SocketAddr>,
}

/// Everything that governs one gate, after layering. Serializes in gov.toml's own
/// vocabulary ("30m", "never", "SIGTERM", "max"), so what `gov show --json` prints
/// can be pasted back into a `[[project]]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GateSettings {
    /// Idle this long (no touch, not busy) and the gate is suspended; `None` = never.
    #[serde(serialize_with = "ser_timeout")]
    pub idle_timeout: Option<Duration>,
    /// After the owner dies, the gate is stopped this long later; `None` = never.
    #[serde(serialize_with = "ser_timeout")]
    pub orphan_grace: Option<Duration>,
    /// Hard deadline from creation (test runners); `None` = never.
    #[serde(serialize_with = "ser_timeout")]
    pub max_runtime: Option<Duration>,
    /// Signal sent to the gate's main process when stopping (libc number).
    #[serde(serialize_with = "ser_signal")]
    pub stop_signal: i32,
    /// How long a stopping gate may take to exit by itself before it is killed.
    #[serde(serialize_with = "ser_duration")]
    pub stop_grace: Duration,
    /// How long a suspended (frozen) gate stays resumable before teardown.
    #[serde(serialize_with = "ser_duration")]
    pub frozen_hold: Duration,
    /// CPU use above this (percent of one CPU, over a scan interval) is activity.
    pub busy_cpu_percent: f64,
    /// memory.max of the gate cgroup.
    #[serde(serialize_with = "ser_limit")]
    pub memory_max: Limit,
    /// memory.high of the gate cgroup.
    #[serde(serialize_with = "ser_limit")]
    pub memory_high: Limit,
    /// pids.max of the gate cgroup.
    #[serde(serialize_with = "ser_limit")]
    pub pids_max: Limit,
    /// cpu.max of the gate cgroup.
    pub cpu_max: CpuMax,
    /// Gates one project may have at once; `None` = unlimited.
    pub max_gates: Option<u32>,
    /// What a spawn does when `max_gates` is reached.
    pub on_limit: OnLimit,
    /// Never reap this gate (limits still apply).
    pub pinned: bool,
    /// Push a frozen gate's memory out through memory.reclaim.
    pub reclaim_when_frozen: bool,
    /// memory.oom.group: an OOM kill takes the whole gate, not one process.
    pub oom_group: bool,
    /// memory.max of the project cgroup (the sum of its gates).
    #[serde(serialize_with = "ser_limit")]
    pub project_memory_max: Limit,
    /// pids.max of the project cgroup.
    #[serde(serialize_with = "ser_limit")]
    pub project_pids_max: Limit,
}

/// What `gov spawn` does when a project already has `max_gates` gates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnLimit {
    /// Refuse the new gate.
    Refuse,
    /// Reap the project's least recently active idle gate to make room; refuse if
    /// none is idle.
    EvictIdlest,
}

impl OnLimit {
    /// The spelling used in gov.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Refuse => "refuse",
            OnLimit::EvictIdlest => "evict-idlest",
        }
    }
}

/// A cgroup cpu.max value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMax {
    Max,
    Quota { quota_usec: u64, period_usec: u64 },
}

impl CpuMax {
    /// The text for cpu.max. "max" alone would keep whatever period the cgroup had;
    /// naming the default period makes the write idempotent.
    pub fn to_kernel(&self) -> String {
        match self {
            CpuMax::Max => format!("max {CPU_PERIOD_USEC}"),
            CpuMax::Quota {
                quota_usec,
                period_usec,
            } => format!("{quota_usec} {period_usec}"),
        }
    }
}

/// The gov.toml spelling: "max", "150%" when exact over the default period, else
/// "QUOTA PERIOD". [`parse_cpu_max`] reads every form back to the same value.
impl fmt::Display for CpuMax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            CpuMax::Max => f.write_str("max"),
            CpuMax::Quota {
                quota_usec,
                period_usec,
            } if period_usec == CPU_PERIOD_USEC && quota_usec % 1000 == 0 => {
                write!(f, "{}%", quota_usec / 1000)
            }
            CpuMax::Quota {
                quota_usec,
                period_usec,
            } => write!(f, "{quota_usec} {period_usec}"),
        }
    }
}

impl Serialize for CpuMax {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How the cgroup_root setting places gov's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootSpec {
    /// The daemon's own systemd-delegated cgroup (`Delegate=yes`).
    Delegated,
    /// A path relative to the cgroup2 mount, e.g. `gov`.
    UnderMount(PathBuf),
    /// An absolute path; the daemon checks it lies under the cgroup2 mount.
    Absolute(PathBuf),
}

/// A policy problem, located as precisely as the input allows.
///
/// Displays as `/etc/gov.toml:3: key `idle_timout`: unknown key in [defaults]; ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", .path.display(), fmt_line(.line), fmt_key(.key))]
pub struct PolicyError {
    /// The file (or `<embedded>`).
    pub path: PathBuf,
    /// 1-based line, when the problem is in the text.
    pub line: Option<usize>,
    /// The key at fault, without its table (`idle_timeout`, not `defaults.idle_timeout`).
    pub key: Option<String>,
    pub message: String,
}

fn fmt_line(line: &Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

fn fmt_key(key: &Option<String>) -> String {
    key.as_ref()
        .map(|k| format!("key `{k}`: "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

impl Policy {
    /// The built-in defaults, used when no file exists.
    pub fn embedded() -> Policy {
        // An empty file on top of EMBEDDED is EMBEDDED; the tests prove it parses.
        Policy::parse("", Path::new(EMBEDDED_ORIGIN)).expect("EMBEDDED policy is valid")
    }

    /// Parses `text` on top of the embedded defaults. `origin` only names the file in
    /// errors. Returns the first problem in file order.
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        Policy::parse_all(text, origin).map_err(|mut errs| errs.swap_remove(0))
    }

    /// Like [`Policy::parse`] but returns every problem, in file order (never an empty
    /// Vec), for `gov check-config` to list them all at once.
    pub fn parse_all(text: &str, origin: &Path) -> Result<Policy, Vec<PolicyError>> {
        parse_with(text, origin, Host::current())
    }

    /// Reads and parses `path`; a read error is a [`PolicyError`] naming the path.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| io_error(path, &e))?;
        Policy::parse(&text, path)
    }

    /// [`Policy::load`], except that a missing file yields the embedded policy. The
    /// bool says whether the policy came from the file. A file that exists but cannot
    /// be read or parsed is an error: silently running on defaults would hide it.
    pub fn load_or_embedded(path: &Path) -> Result<(Policy, bool), PolicyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok((Policy::parse(&text, path)?, true)),
            // A dangling symlink also reads as NotFound; it is a broken config, not
            // an absent one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(path).is_ok() {
                    Err(PolicyError {
                        path: path.to_path_buf(),
                        line: None,
                        key: None,
                        message: "is a symlink to a missing file".to_string(),
                    })
                } else {
                    Ok((Policy::embedded(), false))
                }
            }
            Err(e) => Err(io_error(path, &e)),
        }
    }

    /// The settings for a gate of `project` (an absolute path): `[defaults]`, then
    /// every matching `[[project]]` in file order, later ones winning key by key.
    pub fn for_project(&self, project: &str) -> GateSettings {
        let mut settings = self.defaults.clone();
        for rule in self.matching(project) {
            rule.overrides.apply_to(&mut settings);
        }
        settings
    }

    /// Does any gate (under `[defaults]` or any one `[[project]]` rule on top
    /// of them) get settings for which `uses` holds? The daemon asks this to
    /// enable only the controllers some limit needs.
    pub fn any_settings(&self, uses: impl Fn(&GateSettings) -> bool) -> bool {
        uses(&self.defaults)
            || self.rules.iter().any(|rule| {
                let mut settings = self.defaults.clone();
                rule.overrides.apply_to(&mut settings);
                uses(&settings)
            })
    }

    /// The settings before any `[[project]]` rule.
    pub fn defaults(&self) -> &GateSettings {
        &self.defaults
    }

    /// Labels of the `[[project]]` rules that apply to `project`, in the order they
    /// are applied: each rule's `name`, or its `path` glob when unnamed. For tags,
    /// `gov show` and logs ("why does this gate have an 8h timeout?").
    pub fn matching_rules(&self, project: &str) -> Vec<&str> {
        self.matching(project)
            .into_iter()
            .map(Rule::label)
            .collect()
    }

    fn matching(&self, project: &str) -> Vec<&Rule> {
        let project = normalize_project(project);
        self.rules.iter().filter(|r| r.matches(project)).collect()
    }
}

fn io_error(path: &Path, e: &std::io::Error) -> PolicyError {
    PolicyError {
        path: path.to_path_buf(),
        line: None,
        key: None,
        message: format!("cannot read: {e}"),
    }
}

/// A trailing slash must not make a rule miss: `/home/a/src/X/` is `/home/a/src/X`.
fn normalize_project(project: &str) -> &str {
    let trimmed = project.trim_end_matches('/');
    if trimmed.is_empty() && !project.is_empty() {
        "/"
    } else {
        trimmed
    }
}

/// One `[[project]]` entry.
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    pattern: Pattern,
    name: Option<String>,
    overrides: GateOverrides,
}

impl Rule {
    /// `*` stays inside one path component (so `/home/*/src` does not reach
    /// `/home/a/b/src`); `**` spans any depth.
    fn matches(&self, project: &str) -> bool {
        let opts = MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        self.pattern.matches_with(project, opts)
    }

    fn label(&self) -> &str {
        self.name.as_deref().unwrap_or(self.pattern.as_str())
    }
}

// ---------------------------------------------------------------------------
// Raw layers: every field optional, so layers merge key by key
// ---------------------------------------------------------------------------

/// Top-level keys as written in one file; each field's type is `Option` of the
/// [`Global`] field's type.
#[derive(Clone, Debug, Default, PartialEq)]
struct RawGlobal {
    socket: Option<PathBuf>,
    socket_mode: Option<u32>,
    socket_group: Option<Option<String>>,
    admin_group: Option<Option<String>>,
    cgroup_root: Option<String>,
    scan_interval: Option<Duration>,
    memory_budget: Option<Option<u64>>,
    max_gates_per_user: Option<Option<u32>>,
    event_history: Option<usize>,
    metrics_listen: Option<Option<SocketAddr>>,
}

impl RawGlobal {
    fn apply_to(&self, g: &mut Global) {
        set(&mut g.socket, &self.socket);
        set(&mut g.socket_mode, &self.socket_mode);
        set(&mut g.socket_group, &self.socket_group);
        set(&mut g.admin_group, &self.admin_group);
        set(&mut g.cgroup_root, &self.cgroup_root);
        set(&mut g.scan_interval, &self.scan_interval);
        set(&mut g.memory_budget, &self.memory_budget);
        set(&mut g.max_gates_per_user, &self.max_gates_per_user);
        set(&mut g.event_history, &self.event_history);
        set(&mut g.metrics_listen, &self.metrics_listen);
    }

    /// The bottom layer must set every required key; optional ones default to off.
    fn complete(&self) -> Result<Global, Vec<&'static str>> {
        let mut missing = Vec::new();
        let g = Global {
            socket: need(&self.socket, "socket", &mut missing),
            socket_mode: need(&self.socket_mode, "socket_mode", &mut missing),
            socket_group: self.socket_group.clone().flatten(),
            admin_group: self.admin_group.clone().flatten(),
            cgroup_root: need(&self.cgroup_root, "cgroup_root", &mut missing),
            scan_interval: need(&self.scan_interval, "scan_interval", &mut missing),
            memory_budget: self.memory_budget.flatten(),
            max_gates_per_user: self.max_gates_per_user.flatten(),
            event_history: need(&self.event_history, "event_history", &mut missing),
            metrics_listen: self.metrics_listen.flatten(),
        };
        if missing.is_empty() {
            Ok(g)
        } else {
            Err(missing)
        }
    }
}

/// Gate keys as written in one table (`[defaults]` or one `[[project]]`).
#[derive(Clone, Debug, Default, PartialEq)]
struct GateOverrides {
    idle_timeout: Option<Option<Duration>>,
    orphan_grace: Option<Option<Duration>>,
    max_runtime: Option<Option<Duration>>,
    stop_signal: Option<i32>,
    stop_grace: Option<Duration>,
    frozen_hold: Option<Duration>,
    busy_cpu_percent: Option<f64>,
    memory_max: Option<Limit>,
    memory_high: Option<Limit>,
    pids_max: Option<Limit>,
    cpu_max: Option<CpuMax>,
    max_gates: Option<Option<u32>>,
    on_limit: Option<OnLimit>,
    pinned: Option<bool>,
    reclaim_when_frozen: Option<bool>,
    oom_group: Option<bool>,
    project_memory_max: Option<Limit>,
    project_pids_max: Option<Limit>,
}

impl GateOverrides {
    fn apply_to(&self, s: &mut GateSettings) {
        set(&mut s.idle_timeout, &self.idle_timeout);
        set(&mut s.orphan_grace, &self.orphan_grace);
        set(&mut s.max_runtime, &self.max_runtime);
        set(&mut s.stop_signal, &self.stop_signal);
        set(&mut s.stop_grace, &self.stop_grace);
        set(&mut s.frozen_hold, &self.frozen_hold);
        set(&mut s.busy_cpu_percent, &self.busy_cpu_percent);
        set(&mut s.memory_max, &self.memory_max);
        set(&mut s.memory_high, &self.memory_high);
        set(&mut s.pids_max, &self.pids_max);
        set(&mut s.cpu_max, &self.cpu_max);
        set(&mut s.max_gates, &self.max_gates);
        set(&mut s.on_limit, &self.on_limit);
        set(&mut s.pinned, &self.pinned);
        set(&mut s.reclaim_when_frozen, &self.reclaim_when_frozen);
        set(&mut s.oom_group, &self.oom_group);
        set(&mut s.project_memory_max, &self.project_memory_max);
        set(&mut s.project_pids_max, &self.project_pids_max);
    }

    fn complete(&self) -> Result<GateSettings, Vec<&'static str>> {
        let mut m = Vec::new();
        let s = GateSettings {
            idle_timeout: need(&self.idle_timeout, "idle_timeout", &mut m),
            orphan_grace: need(&self.orphan_grace, "orphan_grace", &mut m),
            max_runtime: need(&self.max_runtime, "max_runtime", &mut m),
            stop_signal: need(&self.stop_signal, "stop_signal", &mut m),
            stop_grace: need(&self.stop_grace, "stop_grace", &mut m),
            frozen_hold: need(&self.frozen_hold, "frozen_hold", &mut m),
            busy_cpu_percent: need(&self.busy_cpu_percent, "busy_cpu_percent", &mut m),
            memory_max: need_or(&self.memory_max, Limit::Max, "memory_max", &mut m),
            memory_high: need_or(&self.memory_high, Limit::Max, "memory_high", &mut m),
            pids_max: need_or(&self.pids_max, Limit::Max, "pids_max", &mut m),
            cpu_max: need_or(&self.cpu_max, CpuMax::Max, "cpu_max", &mut m),
            max_gates: need(&self.max_gates, "max_gates", &mut m),
            on_limit: need_or(&self.on_limit, OnLimit::Refuse, "on_limit", &mut m),
            pinned: need(&self.pinned, "pinned", &mut m),
            reclaim_when_frozen: need(&self.reclaim_when_frozen, "reclaim_when_frozen", &mut m),
            oom_group: need(&self.oom_group, "oom_group", &mut m),
            project_memory_max: need_or(
                &self.project_memory_max,
                Limit::Max,
                "project_memory_max",
                &mut m,
            ),
            project_pids_max: need_or(
                &self.project_pids_max,
                Limit::Max,
                "project_pids_max",
                &mut m,
            ),
        };
        if m.is_empty() {
            Ok(s)
        } else {
            Err(m)
        }
    }
}

/// Overwrites `slot` when the layer set the key.
fn set<T: Clone>(slot: &mut T, layer: &Option<T>) {
    if let Some(v) = layer {
        *slot = v.clone();
    }
}

/// The value of a required key, noting it as missing otherwise (the placeholder is
/// never used: a missing key makes `complete` fail).
fn need<T: Clone + Default>(
    v: &Option<T>,
    key: &'static str,
    missing: &mut Vec<&'static str>,
) -> T {
    v.clone().unwrap_or_else(|| {
        missing.push(key);
        T::default()
    })
}

/// [`need`] for types without a `Default`: `placeholder` stands in when missing.
fn need_or<T: Clone>(
    v: &Option<T>,
    placeholder: T,
    key: &'static str,
    missing: &mut Vec<&'static str>,
) -> T {
    v.clone().unwrap_or_else(|| {
        missing.push(key);
        placeholder
    })
}

/// What one file says, before layering.
#[derive(Debug, Default)]
struct Document {
    global: RawGlobal,
    defaults: GateOverrides,
    rules: Vec<Rule>,
}

// ---------------------------------------------------------------------------
// Key tables: the one list of valid keys, each with the parser for its value
// ---------------------------------------------------------------------------

/// Facts about the host that bound valid values.
#[derive(Clone, Copy, Debug)]
struct Host {
    /// Online CPUs: a gate cannot use more than 100% of each.
    ncpu: u32,
}

impl Host {
    fn current() -> Host {
        // SAFETY: sysconf only reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
        Host {
            ncpu: u32::try_from(n).unwrap_or(1).max(1),
        }
    }
}

/// A valid key and how to read its value into a layer of type `T`.
type Key<T> = (
    &'static str,
    fn(&mut T, &DeValue<'_>, Host) -> Result<(), String>,
);

/// Stores a parsed value in its layer slot: one line per key in the tables below.
fn put<T>(slot: &mut Option<T>, parsed: Result<T, String>) -> Result<(), String> {
    *slot = Some(parsed?);
    Ok(())
}

/// Top-level keys (besides the `[defaults]` and `[[project]]` tables).
const GLOBAL_KEYS: &[Key<RawGlobal>] = &[
    ("socket", |g, v, _| put(&mut g.socket, socket_value(v))),
    ("socket_mode", |g, v, _| {
        put(&mut g.socket_mode, socket_mode_value(v))
    }),
    ("socket_group", |g, v, _| {
        put(&mut g.socket_group, group_value(v).map(Some))
    }),
    ("admin_group", |g, v, _| {
        put(&mut g.admin_group, group_value(v).map(Some))
    }),
    ("cgroup_root", |g, v, _| {
        put(&mut g.cgroup_root, cgroup_root_value(v))
    }),
    ("scan_interval", |g, v, _| {
        put(&mut g.scan_interval, interval_value(v))
    }),
    ("memory_budget", |g, v, _| {
        put(&mut g.memory_budget, budget_value(v))
    }),
    ("max_gates_per_user", |g, v, _| {
        put(&mut g.max_gates_per_user, cap_value(v))
    }),
    ("event_history", |g, v, _| {
        put(&mut g.event_history, history_value(v))
    }),
    ("metrics_listen", |g, v, _| {
        put(&mut g.metrics_listen, listen_value(v).map(Some))
    }),
];

/// Keys of `[defaults]`, also valid in every `[[project]]`.
const GATE_KEYS: &[Key<GateOverrides>] = &[
    ("idle_timeout", |o, v, _| {
        put(&mut o.idle_timeout, timeout_value(v, false))
    }),
    ("orphan_grace", |o, v, _| {
        put(&mut o.orphan_grace, timeout_value(v, true))
    }),
    ("max_runtime", |o, v, _| {
        put(&mut o.max_runtime, timeout_value(v, false))
    }),
    ("stop_signal", |o, v, _| {
        put(&mut o.stop_signal, signal_value(v))
    }),
    ("stop_grace", |o, v, _| {
        put(&mut o.stop_grace, duration_value(v))
    }),
    ("frozen_hold", |o, v, _| {
        put(&mut o.frozen_hold, duration_value(v))
    }),
    ("busy_cpu_percent", |o, v, h| {
        put(&mut o.busy_cpu_percent, busy_value(v, h))
    }),
    ("memory_max", |o, v, _| {
        put(&mut o.memory_max, limit_value(v, Unit::Bytes))
    }),
    ("memory_high", |o, v, _| {
        put(&mut o.memory_high, limit_value(v, Unit::Bytes))
    }),
    ("pids_max", |o, v, _| {
        put(&mut o.pids_max, limit_value(v, Unit::Count))
    }),
    ("cpu_max", |o, v, _| put(&mut o.cpu_max, cpu_max_value(v))),
    ("max_gates", |o, v, _| put(&mut o.max_gates, cap_value(v))),
    ("on_limit", |o, v, _| {
        put(&mut o.on_limit, on_limit_value(v))
    }),
    ("pinned", |o, v, _| put(&mut o.pinned, bool_value(v))),
    ("reclaim_when_frozen", |o, v, _| {
        put(&mut o.reclaim_when_frozen, bool_value(v))
    }),
    ("oom_group", |o, v, _| put(&mut o.oom_group, bool_value(v))),
    ("project_memory_max", |o, v, _| {
        put(&mut o.project_memory_max, limit_value(v, Unit::Bytes))
    }),
    ("project_pids_max", |o, v, _| {
        put(&mut o.project_pids_max, limit_value(v, Unit::Count))
    }),
];

/// Keys only a `[[project]]` has, besides the gate keys.
const RULE_KEYS: &[&str] = &["path", "name"];

/// The two tables of the top level.
const TABLE_KEYS: &[&str] = &["defaults", "project"];

/// The table a key was found in, for messages and for the list of valid keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    Top,
    Defaults,
    /// 1-based index of the `[[project]]` entry.
    Project(usize),
}

impl Section {
    fn title(self) -> String {
        match self {
            Section::Top => "the top level".to_string(),
            Section::Defaults => "[defaults]".to_string(),
            Section::Project(n) => format!("[[project]] #{n}"),
        }
    }

    fn valid_keys(self) -> Vec<&'static str> {
        match self {
            Section::Top => GLOBAL_KEYS
                .iter()
                .map(|(n, _)| *n)
                .chain(TABLE_KEYS.iter().copied())
                .collect(),
            Section::Defaults => GATE_KEYS.iter().map(|(n, _)| *n).collect(),
            Section::Project(_) => RULE_KEYS
                .iter()
                .copied()
                .chain(GATE_KEYS.iter().map(|(n, _)| *n))
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------
// Walking the document
// ---------------------------------------------------------------------------

/// A problem found while walking a document; located by byte offset, turned into a
/// [`PolicyError`] (with a line) once all are collected.
#[derive(Debug)]
struct Issue {
    offset: Option<usize>,
    key: Option<String>,
    message: String,
}

impl Issue {
    fn at(offset: usize, key: &str, message: String) -> Issue {
        Issue {
            offset: Some(offset),
            key: Some(key.to_string()),
            message,
        }
    }
}

type Entry<'a, 'i> = (
    &'a toml::Spanned<toml::de::DeString<'i>>,
    &'a toml::Spanned<DeValue<'i>>,
);

fn parse_with(text: &str, origin: &Path, host: Host) -> Result<Policy, Vec<PolicyError>> {
    let embedded_origin = Path::new(EMBEDDED_ORIGIN);
    let base =
        read_document(EMBEDDED, host).map_err(|i| to_errors(EMBEDDED, embedded_origin, i))?;
    let user = read_document(text, host).map_err(|i| to_errors(text, origin, i))?;

    let mut global = base
        .global
        .complete()
        .map_err(|m| missing_errors(embedded_origin, m))?;
    user.global.apply_to(&mut global);
    let mut defaults = base
        .defaults
        .complete()
        .map_err(|m| missing_errors(embedded_origin, m))?;
    user.defaults.apply_to(&mut defaults);
    let rules = base.rules.into_iter().chain(user.rules).collect();
    Ok(Policy {
        global,
        defaults,
        rules,
    })
}

/// Orders problems as they appear in the file and gives each its line.
fn to_errors(text: &str, origin: &Path, mut issues: Vec<Issue>) -> Vec<PolicyError> {
    issues.sort_by_key(|i| i.offset);
    issues
        .into_iter()
        .map(|i| PolicyError {
            path: origin.to_path_buf(),
            line: i.offset.map(|o| line_of(text, o)),
            key: i.key,
            message: i.message,
        })
        .collect()
}

fn missing_errors(origin: &Path, missing: Vec<&'static str>) -> Vec<PolicyError> {
    missing
        .into_iter()
        .map(|k| PolicyError {
            path: origin.to_path_buf(),
            line: None,
            key: Some(k.to_string()),
            message: "missing key".to_string(),
        })
        .collect()
}

/// One file's keys, validated; every problem found, not just the first.
fn read_document(text: &str, host: Host) -> Result<Document, Vec<Issue>> {
    let doc = DeTable::parse(text).map_err(|e| vec![syntax_issue(text, &e)])?;
    let mut out = Document::default();
    let mut issues = Vec::new();
    for (k, v) in doc.get_ref().iter() {
        let key = k.get_ref().as_ref();
        match key {
            "defaults" => match v.get_ref() {
                DeValue::Table(t) => {
                    read_gate_table(t, &mut out.defaults, Section::Defaults, host, &mut issues)
                }
                other => issues.push(Issue::at(
                    v.span().start,
                    key,
                    format!("expected the [defaults] table, found {}", describe(other)),
                )),
            },
            "project" => read_rules(k.span().start, v, host, &mut out.rules, &mut issues),
            _ => read_key(
                GLOBAL_KEYS,
                (k, v),
                &mut out.global,
                Section::Top,
                host,
                &mut issues,
            ),
        }
    }
    if issues.is_empty() {
        Ok(out)
    } else {
        Err(issues)
    }
}

/// Reads one key of a table through `keys`, or reports it as unknown.
fn read_key<T>(
    keys: &[Key<T>],
    (k, v): Entry<'_, '_>,
    target: &mut T,
    section: Section,
    host: Host,
    issues: &mut Vec<Issue>,
) {
    let name = k.get_ref().as_ref();
    match keys.iter().find(|(n, _)| *n == name) {
        Some((_, set)) => {
            if let Err(message) = set(target, v.get_ref(), host) {
                issues.push(Issue::at(v.span().start, name, message));
            }
        }
        None => issues.push(Issue::at(
            k.span().start,
            name,
            unknown_key_message(name, section),
        )),
    }
}

fn read_gate_table(
    table: &DeTable<'_>,
    target: &mut GateOverrides,
    section: Section,
    host: Host,
    issues: &mut Vec<Issue>,
) {
    for entry in table.iter() {
        read_key(GATE_KEYS, entry, target, section, host, issues);
    }
}

/// `[[project]]` must be an array of tables; `[project]` (one table) is a common
/// slip and gets its own message.
fn read_rules(
    key_offset: usize,
    v: &toml::Spanned<DeValue<'_>>,
    host: Host,
    rules: &mut Vec<Rule>,
    issues: &mut Vec<Issue>,
) {
    let entries = match v.get_ref() {
        DeValue::Array(a) => a,
        DeValue::Table(_) => {
            issues.push(Issue::at(
                key_offset,
                "project",
                "write [[project]] with double brackets: each project rule is one entry of an array of tables".to_string(),
            ));
            return;
        }
        other => {
            issues.push(Issue::at(
                v.span().start,
                "project",
                format!("expected [[project]] tables, found {}", describe(other)),
            ));
            return;
        }
    };
    for (i, entry) in entries.iter().enumerate() {
        match entry.get_ref() {
            DeValue::Table(t) => {
                if let Some(rule) =
                    read_rule(t, entry.span().start, Section::Project(i + 1), host, issues)
                {
                    rules.push(rule);
                }
            }
            other => issues.push(Issue::at(
                entry.span().start,
                "project",
                format!("expected a [[project]] table, found {}", describe(other)),
            )),
        }
    }
}

/// One `[[project]]`; `None` when it has no usable `path` (already reported).
fn read_rule(
    table: &DeTable<'_>,
    header: usize,
    section: Section,
    host: Host,
    issues: &mut Vec<Issue>,
) -> Option<Rule> {
    let mut pattern = None;
    let mut name = None;
    let mut path_seen = false;
    let mut overrides = GateOverrides::default();
    for (k, v) in table.iter() {
        let key = k.get_ref().as_ref();
        let parsed = match key {
            "path" => {
                path_seen = true;
                glob_value(v.get_ref()).map(|p| pattern = Some(p))
            }
            "name" => name_value(v.get_ref()).map(|n| name = Some(n)),
            _ => {
                read_key(GATE_KEYS, (k, v), &mut overrides, section, host, issues);
                Ok(())
            }
        };
        if let Err(message) = parsed {
            issues.push(Issue::at(v.span().start, key, message));
        }
    }
    if !path_seen {
        issues.push(Issue::at(
            header,
            "path",
            format!(
                "missing key in {}: every [[project]] needs a path glob",
                section.title()
            ),
        ));
    }
    Some(Rule {
        pattern: pattern?,
        name,
        overrides,
    })
}

/// The message for a key no table knows, with the likeliest fix first: a key in the
/// wrong table (TOML puts every key after `[defaults]` into `[defaults]`), then a
/// near spelling, then the full list.
fn unknown_key_message(key: &str, section: Section) -> String {
    let is_global = GLOBAL_KEYS.iter().any(|(n, _)| *n == key);
    let is_gate = GATE_KEYS.iter().any(|(n, _)| *n == key);
    let valid = section.valid_keys();
    let hint = if section != Section::Top && is_global {
        format!(
            "; `{key}` is a global key: move it to the top of the file, above the first [table] header"
        )
    } else if section == Section::Top && is_gate {
        format!("; `{key}` is a gate key: put it under [defaults] or a [[project]]")
    } else if section == Section::Defaults && RULE_KEYS.contains(&key) {
        format!("; `{key}` belongs in a [[project]] entry")
    } else if let Some(near) = closest(key, &valid) {
        format!("; did you mean `{near}`?")
    } else {
        String::new()
    };
    format!(
        "unknown key in {}{hint} (expected one of: {})",
        section.title(),
        valid.join(", ")
    )
}

/// A TOML syntax error has no tree to take the key from, so the key is read off the
/// line the error points at, when that line is a `key = ...` or a `[header]`.
fn syntax_issue(text: &str, e: &toml::de::Error) -> Issue {
    let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Issue {
        offset: Some(offset),
        key: key_on_line(line_text(text, offset)),
        message: format!("invalid TOML: {message}"),
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The whole line holding a byte offset.
fn line_text(text: &str, offset: usize) -> &str {
    let bytes = text.as_bytes();
    let end = offset.min(bytes.len());
    let start = bytes[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |p| p + 1);
    let stop = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |p| end + p);
    &text[start..stop]
}

/// The key a line assigns or the table it opens: `a.b = 1` gives `b`, `[defaults`
/// gives `defaults`. `None` for anything else (array items, comments, garbage).
fn key_on_line(line: &str) -> Option<String> {
    let t = line.trim();
    let raw = if let Some(header) = t.strip_prefix('[') {
        header.trim_start_matches('[').split(']').next()?
    } else {
        t.split_once('=')?.0
    };
    let last = raw
        .rsplit('.')
        .next()?
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    let plausible = !last.is_empty()
        && last
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    plausible.then(|| last.to_string())
}

/// The valid key nearest to a typo, if it is near enough to be a typo.
fn closest<'a>(key: &str, valid: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, v)| v)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---------------------------------------------------------------------------
// Values: TOML value -> typed value, with a message that says what was expected
// ---------------------------------------------------------------------------

/// A value as a message shows it: `integer 5`, `string "5m"`, `a table`.
fn describe(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    }
}

fn want_str<'v>(v: &'v DeValue<'_>, expected: &str) -> Result<&'v str, String> {
    match v {
        DeValue::String(s) => Ok(s.as_ref()),
        other => Err(format!("expected {expected}, found {}", describe(other))),
    }
}

/// A TOML integer that must not be negative.
fn uint(i: &DeInteger<'_>) -> Result<u64, String> {
    if i.as_str().starts_with('-') {
        return Err(format!("must not be negative, found {i}"));
    }
    u64::from_str_radix(i.as_str().trim_start_matches('+'), i.radix())
        .map_err(|_| format!("{i} is too large"))
}

fn bool_value(v: &DeValue<'_>) -> Result<bool, String> {
    match v {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(format!("expected true or false, found {}", describe(other))),
    }
}

/// A duration that may be `"never"` (`None`). Zero is refused unless `allow_zero`:
/// an idle timeout of zero would suspend a gate at the first scan after spawn.
fn timeout_value(v: &DeValue<'_>, allow_zero: bool) -> Result<Option<Duration>, String> {
    let s = want_str(v, "a duration like \"30m\" or \"never\"")?;
    if s == "never" {
        return Ok(None);
    }
    let d = parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    if d.is_zero() && !allow_zero {
        return Err("must be longer than zero; write \"never\" to turn it off".to_string());
    }
    Ok(Some(d))
}

fn duration_value(v: &DeValue<'_>) -> Result<Duration, String> {
    let s = want_str(v, "a duration like \"10s\"")?;
    parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The scan interval divides CPU time into a rate, so it cannot be zero.
fn interval_value(v: &DeValue<'_>) -> Result<Duration, String> {
    let d = duration_value(v)?;
    if d.is_zero() {
        return Err("must be longer than zero".to_string());
    }
    Ok(d)
}

fn signal_value(v: &DeValue<'_>) -> Result<i32, String> {
    parse_signal(want_str(v, "a signal name like \"SIGTERM\"")?)
}

fn busy_value(v: &DeValue<'_>, host: Host) -> Result<f64, String> {
    let x = match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("{i} is out of range"))? as f64,
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .map_err(|_| format!("invalid number {f}"))?,
        other => {
            return Err(format!(
                "expected a number like 5.0, found {}",
                describe(other)
            ))
        }
    };
    check_busy_cpu_percent(x, host.ncpu)
}

/// A gate using more than `100 * ncpu` percent is impossible, so a threshold above
/// it would make every gate look idle, and a computing gate could be reaped.
fn check_busy_cpu_percent(x: f64, ncpu: u32) -> Result<f64, String> {
    let max = 100.0 * f64::from(ncpu);
    if x > 0.0 && x <= max {
        Ok(x)
    } else {
        Err(format!(
            "must be above 0 and at most {max} (100 per CPU, {ncpu} CPUs online), found {x}"
        ))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unit {
    Bytes,
    Count,
}

/// `"max"`, a size (bytes) or count, or a TOML integer. Zero is refused: a zero
/// memory or pids limit leaves a gate unable to run, and is always a slip for "max".
fn limit_value(v: &DeValue<'_>, unit: Unit) -> Result<Limit, String> {
    let expected = match unit {
        Unit::Bytes => "a size like \"4G\" or \"max\"",
        Unit::Count => "a whole number or \"max\"",
    };
    let n = match v {
        DeValue::String(s) if s.as_ref() == "max" => return Ok(Limit::Max),
        DeValue::String(s) => match unit {
            Unit::Bytes => {
                parse_size(s).map_err(|e| format!("invalid size {:?}: {e}", s.as_ref()))?
            }
            Unit::Count => s
                .parse::<u64>()
                .map_err(|_| format!("expected {expected}, found string {:?}", s.as_ref()))?,
        },
        DeValue::Integer(i) => uint(i)?,
        other => return Err(format!("expected {expected}, found {}", describe(other))),
    };
    if n == 0 {
        return Err(
            "a limit of 0 leaves a gate unable to run; write \"max\" for no limit".to_string(),
        );
    }
    Ok(Limit::Value(n))
}

/// The host budget: `"max"` means none; zero is refused like any zero limit.
fn budget_value(v: &DeValue<'_>) -> Result<Option<u64>, String> {
    Ok(match limit_value(v, Unit::Bytes)? {
        Limit::Max => None,
        Limit::Value(n) => Some(n),
    })
}

/// A count where 0 means unlimited (`max_gates`, `max_gates_per_user`).
fn cap_value(v: &DeValue<'_>) -> Result<Option<u32>, String> {
    match v {
        DeValue::Integer(i) => {
            let n = uint(i)?;
            let n = u32::try_from(n).map_err(|_| format!("{n} is too large"))?;
            Ok((n > 0).then_some(n))
        }
        other => Err(format!(
            "expected a whole number (0 = unlimited), found {}",
            describe(other)
        )),
    }
}

fn history_value(v: &DeValue<'_>) -> Result<usize, String> {
    match v {
        DeValue::Integer(i) => {
            let n = uint(i)?;
            if !(1..=MAX_EVENT_HISTORY).contains(&n) {
                return Err(format!("must be 1 to {MAX_EVENT_HISTORY}, found {n}"));
            }
            usize::try_from(n).map_err(|_| format!("{n} is too large"))
        }
        other => Err(format!(
            "expected a whole number, found {}",
            describe(other)
        )),
    }
}

fn cpu_max_value(v: &DeValue<'_>) -> Result<CpuMax, String> {
    let s = want_str(
        v,
        "\"max\", a percent of one CPU like \"150%\", or \"QUOTA PERIOD\" like \"50000 100000\"",
    )?;
    parse_cpu_max(s).map_err(|e| format!("invalid cpu_max {s:?}: {e}"))
}

fn on_limit_value(v: &DeValue<'_>) -> Result<OnLimit, String> {
    let expected = "\"refuse\" or \"evict-idlest\"";
    match want_str(v, expected)? {
        "refuse" => Ok(OnLimit::Refuse),
        "evict-idlest" => Ok(OnLimit::EvictIdlest),
        other => Err(format!("expected {expected}, found {other:?}")),
    }
}

/// The socket must be absolute (the daemon's cwd is not the user's) and fit in
/// `sun_path`, or bind fails later with a far less helpful error.
fn socket_value(v: &DeValue<'_>) -> Result<PathBuf, String> {
    let s = want_str(v, "an absolute path")?;
    if !s.starts_with('/') {
        return Err(format!("must be an absolute path, found {s:?}"));
    }
    if s.len() > MAX_SOCKET_PATH || s.contains('\0') {
        return Err(format!(
            "a Unix socket path holds at most {MAX_SOCKET_PATH} bytes, found {}",
            s.len()
        ));
    }
    Ok(PathBuf::from(s))
}

/// An octal string (`"0660"`), or a TOML octal integer (`0o660`). A decimal integer
/// is refused: `socket_mode = 660` would silently mean 0o1224.
fn socket_mode_value(v: &DeValue<'_>) -> Result<u32, String> {
    let mode = match v {
        DeValue::String(s) => parse_octal_mode(s)?,
        DeValue::Integer(i) if i.radix() == 8 => u32::from_str_radix(i.as_str(), 8).map_err(|_| format!("{i} is too large"))?,
        DeValue::Integer(i) => {
            return Err(format!(
                "write the mode as an octal string like \"0660\" (integer {i} would be read as decimal)"
            ))
        }
        other => return Err(format!("expected an octal string like \"0660\", found {}", describe(other))),
    };
    if mode > 0o777 {
        return Err(format!(
            "at most 0777 (permission bits only), found {mode:#o}"
        ));
    }
    Ok(mode)
}

fn parse_octal_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(format!("expected an octal mode like \"0660\", found {s:?}"));
    }
    u32::from_str_radix(digits, 8).map_err(|e| e.to_string())
}

/// A group name as `getgrnam` would take it, or a numeric gid. Existence is checked
/// by the daemon, since `gov check-config` may run on another host.
fn group_value(v: &DeValue<'_>) -> Result<String, String> {
    let s = want_str(v, "a group name")?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let name_part = s.strip_suffix('$').unwrap_or(s);
    if s.is_empty() || s.starts_with('-') || !name_part.chars().all(ok_char) {
        return Err(format!("invalid group name {s:?}"));
    }
    Ok(s.to_string())
}

fn cgroup_root_value(v: &DeValue<'_>) -> Result<String, String> {
    let s = want_str(v, "\"delegated\" or a cgroup path like \"gov\"")?;
    parse_cgroup_root(s)?;
    Ok(s.to_string())
}

fn listen_value(v: &DeValue<'_>) -> Result<SocketAddr, String> {
    let s = want_str(v, "an address like \"127.0.0.1:9477\"")?;
    s.parse::<SocketAddr>().map_err(|_| {
        format!("expected IP:PORT like \"127.0.0.1:9477\" or \"[::1]:9477\", found {s:?}")
    })
}

fn glob_value(v: &DeValue<'_>) -> Result<Pattern, String> {
    parse_project_glob(want_str(v, "a path glob like \"/home/*/src/MyPkg*\"")?)
}

/// A rule's label for logs and tags: short, printable, one line.
fn name_value(v: &DeValue<'_>) -> Result<String, String> {
    let s = want_str(v, "a name")?;
    if s.is_empty() || s.len() > 100 || s.chars().any(char::is_control) {
        return Err(format!(
            "a name must be 1 to 100 printable characters, found {s:?}"
        ));
    }
    Ok(s.to_string())
}

// ---------------------------------------------------------------------------
// Pure parsers of gov.toml's value languages (public: the CLI and daemon reuse them)
// ---------------------------------------------------------------------------

/// Duration units, in nanoseconds. Our own grammar rather than humantime's: there
/// `M` is a month, a trap beside sizes where `M` is a mebibyte.
const DURATION_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
    ("w", 604_800_000_000_000),
];

/// Parses `"30m"`, `"1h30m"`, `"1h 30m"`, `"90s"`, `"250ms"`, `"1.5h"`, `"0"`.
/// Units: ns, us, ms, s, m, h, d, w. Negative values, bare numbers (other than 0),
/// unknown units and spaces inside a number-unit pair are refused.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "units: ms, s, m, h, d, w";
    let t = s.trim();
    if t.is_empty() {
        return Err("empty; write e.g. \"30m\"".to_string());
    }
    if t.starts_with('-') {
        return Err("negative durations are not allowed".to_string());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = t;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        if num.is_empty() {
            return Err(format!("expected a number at {rest:?} ({UNITS})"));
        }
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("missing unit after {num:?} ({UNITS})"));
        }
        let scale = DURATION_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, n)| *n)
            .ok_or_else(|| format!("unknown unit {unit:?} ({UNITS})"))?;
        let nanos = scaled_decimal(num, scale).ok_or_else(|| format!("invalid number {num:?}"))?;
        total = total.checked_add(nanos).ok_or("too large")?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "too large".to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// The shortest spelling [`parse_duration`] reads back exactly: `"1h30m"`, `"250ms"`,
/// `"0s"`. Days are the largest unit (weeks read worse in `gov ps`).
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let mut rest = d.as_nanos();
    let mut out = String::new();
    for (unit, scale) in DURATION_UNITS.iter().rev().skip(1) {
        let n = rest / scale;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            rest %= scale;
        }
    }
    out
}

/// Size units: 1024-based like the kernel's memparse and systemd's MemoryMax.
const SIZE_UNITS: &[(char, u32)] = &[
    ('K', 10),
    ('M', 20),
    ('G', 30),
    ('T', 40),
    ('P', 50),
    ('E', 60),
];

/// Parses a byte size: `"4G"`, `"512M"`, `"1.5G"`, `"4096"`, `"4KiB"`, `"100B"`.
/// Units K, M, G, T, P, E (either case, optionally followed by `iB`) are powers of
/// 1024; fractions round down to a byte. `"4GB"` is refused as ambiguous (10^9 or
/// 2^30?), `"4 gigs"` as garbage; `"max"` is not a size (see the limit keys).
pub fn parse_size(s: &str) -> Result<u64, String> {
    const FORM: &str = "write sizes like \"4G\", \"512M\", \"1.5G\" or \"4096\" (bytes)";
    let num_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(num_len);
    if num.is_empty() {
        return Err(format!("expected a number; {FORM}"));
    }
    let shift = match unit {
        "" | "B" => {
            if num.contains('.') {
                return Err(format!("fractional bytes; {FORM}"));
            }
            0
        }
        _ if unit.starts_with(char::is_whitespace) => {
            return Err(format!("unexpected space; {FORM}"));
        }
        _ => size_unit_shift(unit)?,
    };
    let bytes = scaled_decimal(num, 1u128 << shift)
        .ok_or_else(|| format!("invalid number {num:?}; {FORM}"))?;
    u64::try_from(bytes).map_err(|_| "too large".to_string())
}

fn size_unit_shift(unit: &str) -> Result<u32, String> {
    let mut chars = unit.chars();
    let letter = chars.next().map(|c| c.to_ascii_uppercase());
    let suffix = chars.as_str();
    let shift = SIZE_UNITS
        .iter()
        .find(|(c, _)| Some(*c) == letter)
        .map(|(_, s)| *s);
    match (shift, suffix) {
        (Some(shift), "" | "iB") => Ok(shift),
        (Some(_), "B" | "b") => Err(format!(
            "{unit:?} is ambiguous (powers of 1000 or 1024?): write \"{l}\" or \"{l}iB\", both 1024-based",
            l = letter.unwrap_or('G')
        )),
        _ => Err(format!(
            "unknown unit {unit:?} (units: K, M, G, T, P, E or KiB..EiB, 1024-based; none = bytes)"
        )),
    }
}

/// `digits[.digits]` times `scale`, rounded down; `None` if malformed or too large.
fn scaled_decimal(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (num, None),
    };
    let digits_ok = |d: &str| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit());
    if !digits_ok(int) || frac.is_some_and(|f| !digits_ok(f)) {
        return None;
    }
    let whole = int.parse::<u128>().ok()?.checked_mul(scale)?;
    // Digits past the 18th cannot change the result by a whole unit of `scale` for
    // any scale used here; dropping them keeps the arithmetic in range.
    let frac = frac.unwrap_or("");
    let frac = &frac[..frac.len().min(18)];
    let part = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().ok()? * scale / 10u128.pow(frac.len() as u32)
    };
    whole.checked_add(part)
}

/// Parses `cpu_max`: `"max"`, a percent of one CPU (`"150%"`, `"2.5%"`) over the
/// default 100 ms period, or the kernel's own `"QUOTA PERIOD"` in microseconds.
/// The kernel refuses a quota under 1 ms and a period outside 1 ms..1 s.
pub fn parse_cpu_max(s: &str) -> Result<CpuMax, String> {
    if s == "max" {
        return Ok(CpuMax::Max);
    }
    let (quota, period) = if let Some(pct) = s.strip_suffix('%') {
        // 1% of a 100_000 us period is 1000 us.
        let quota = scaled_decimal(pct, 1000).ok_or_else(|| format!("invalid percent {pct:?}"))?;
        (
            u64::try_from(quota).map_err(|_| "too large".to_string())?,
            CPU_PERIOD_USEC,
        )
    } else {
        let mut parts = s.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("max"), Some(p), None) if p.parse::<u64>().is_ok() => return Ok(CpuMax::Max),
            (Some(q), Some(p), None) => match (q.parse::<u64>(), p.parse::<u64>()) {
                (Ok(q), Ok(p)) => (q, p),
                _ => return Err("QUOTA and PERIOD must be whole microseconds".to_string()),
            },
            _ => return Err(
                "expected \"max\", a percent like \"150%\", or \"QUOTA PERIOD\" in microseconds"
                    .to_string(),
            ),
        }
    };
    if !(1_000..=1_000_000).contains(&period) {
        return Err(format!("period must be 1000..=1000000 us, found {period}"));
    }
    if quota < 1_000 {
        return Err(format!(
            "quota must be at least 1000 us (1% of the default period), found {quota}"
        ));
    }
    Ok(CpuMax::Quota {
        quota_usec: quota,
        period_usec: period,
    })
}

/// Signals a stop may use. Numbers are not accepted: they differ across
/// architectures, names do not.
const SIGNALS: &[(&str, i32)] = &[
    ("TERM", libc::SIGTERM),
    ("INT", libc::SIGINT),
    ("HUP", libc::SIGHUP),
    ("QUIT", libc::SIGQUIT),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("KILL", libc::SIGKILL),
];

/// `"SIGTERM"`, `"TERM"`, `"sigterm"` -> `libc::SIGTERM`; one of [`SIGNALS`].
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS
        .iter()
        .find(|(n, _)| *n == bare)
        .map(|(_, sig)| *sig)
        .ok_or_else(|| {
            let names: Vec<String> = SIGNALS.iter().map(|(n, _)| format!("SIG{n}")).collect();
            format!(
                "unknown signal {s:?} (expected one of: {})",
                names.join(", ")
            )
        })
}

/// `libc::SIGTERM` -> `"SIGTERM"`, for the signals [`parse_signal`] accepts.
pub fn signal_name(sig: i32) -> Option<String> {
    SIGNALS
        .iter()
        .find(|(_, n)| *n == sig)
        .map(|(n, _)| format!("SIG{n}"))
}

/// Reads `cgroup_root`: `"delegated"`, a path relative to the cgroup2 mount (`"gov"`,
/// `"gov/test-42"`), or an absolute path (which the daemon checks lies under the
/// mount). No empty, `.` or `..` components and no control characters: this string
/// becomes a directory path written as root.
pub fn parse_cgroup_root(s: &str) -> Result<RootSpec, String> {
    if s == "delegated" {
        return Ok(RootSpec::Delegated);
    }
    let (absolute, rel) = match s.strip_prefix('/') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let bad = rel.is_empty()
        || s.chars().any(char::is_control)
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(format!(
            "expected \"delegated\" or a cgroup path like \"gov\" (no empty, . or .. parts), found {s:?}"
        ));
    }
    Ok(if absolute {
        RootSpec::Absolute(PathBuf::from(s))
    } else {
        RootSpec::UnderMount(PathBuf::from(s))
    })
}

/// A `[[project]]` path glob. It must be absolute since project paths are; `~` is
/// refused because the daemon serves every user and has no one home to expand to.
pub fn parse_project_glob(s: &str) -> Result<Pattern, String> {
    if s.starts_with('~') {
        return Err(format!(
            "~ is not expanded (the daemon serves every user): write e.g. \"/home/*/src/...\", found {s:?}"
        ));
    }
    if !s.starts_with('/') {
        return Err(format!(
            "must be an absolute path glob (use \"/**/NAME\" for any depth), found {s:?}"
        ));
    }
    Pattern::new(s).map_err(|e| format!("invalid glob {s:?}: {} at character {}", e.msg, e.pos))
}

// ---------------------------------------------------------------------------
// Serialization in gov.toml's vocabulary
// ---------------------------------------------------------------------------

fn ser_timeout<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_str("never"),
    }
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

fn ser_signal<S: Serializer>(sig: &i32, s: S) -> Result<S::Ok, S::Error> {
    match signal_name(*sig) {
        Some(name) => s.serialize_str(&name),
        None => s.serialize_i32(*sig),
    }
}

fn ser_limit<S: Serializer>(l: &Limit, s: S) -> Result<S::Ok, S::Error> {
    match l {
        Limit::Max => s.serialize_str("max"),
        Limit::Value(n) => s.serialize_u64(*n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed host, so range checks do not depend on the machine running the tests.
    const HOST: Host = Host { ncpu: 4 };
    const ORIGIN: &str = "/etc/gov.toml";
    const PACKAGED: &str = include_str!("../packaging/gov.toml");
    const DOCS: &str = include_str!("../docs/configuration.md");

    fn parse(text: &str) -> Policy {
        parse_with(text, Path::new(ORIGIN), HOST).unwrap_or_else(|e| panic!("refused: {e:#?}"))
    }

    fn errors(text: &str) -> Vec<PolicyError> {
        match parse_with(text, Path::new(ORIGIN), HOST) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e,
        }
    }

    /// The first error must sit on `line`, name `key`, and say `needle`.
    #[track_caller]
    fn refused(text: &str, line: usize, key: Option<&str>, needle: &str) -> PolicyError {
        let e = errors(text).remove(0);
        assert_eq!(e.line, Some(line), "wrong line: {e}");
        assert_eq!(e.key.as_deref(), key, "wrong key: {e}");
        assert!(e.message.contains(needle), "message lacks {needle:?}: {e}");
        assert_eq!(e.path, Path::new(ORIGIN));
        e
    }

    fn defaults_with(line: &str) -> GateSettings {
        parse(&format!("[defaults]\n{line}\n")).defaults().clone()
    }

    fn all_key_names() -> Vec<&'static str> {
        GLOBAL_KEYS
            .iter()
            .map(|(n, _)| *n)
            .chain(GATE_KEYS.iter().map(|(n, _)| *n))
            .chain(RULE_KEYS.iter().copied())
            .collect()
    }

    // --- embedded defaults -------------------------------------------------

    #[test]
    fn embedded_defaults_are_as_documented() {
        let p = Policy::embedded();
        assert_eq!(
            p.global,
            Global {
                socket: PathBuf::from(DEFAULT_SOCKET),
                socket_mode: 0o666,
                socket_group: None,
                admin_group: None,
                cgroup_root: "gov".into(),
                scan_interval: Duration::from_secs(5),
                memory_budget: None,
                max_gates_per_user: None,
                event_history: 1000,
                metrics_listen: None,
            }
        );
        assert_eq!(
            p.defaults(),
            &GateSettings {
                idle_timeout: Some(Duration::from_secs(30 * 60)),
                orphan_grace: Some(Duration::from_secs(5 * 60)),
                max_runtime: None,
                stop_signal: libc::SIGTERM,
                stop_grace: Duration::from_secs(10),
                frozen_hold: Duration::from_secs(4 * 3600),
                busy_cpu_percent: 5.0,
                memory_max: Limit::Max,
                memory_high: Limit::Max,
                pids_max: Limit::Max,
                cpu_max: CpuMax::Max,
                max_gates: None,
                on_limit: OnLimit::Refuse,
                pinned: false,
                reclaim_when_frozen: false,
                oom_group: false,
                project_memory_max: Limit::Max,
                project_pids_max: Limit::Max,
            }
        );
        assert!(p.rules.is_empty());
        assert_eq!(p.for_project("/anything"), *p.defaults());
    }

    #[test]
    fn embedded_text_alone_sets_every_required_key() {
        let doc =
            read_document(EMBEDDED, Host { ncpu: 1 }).expect("EMBEDDED parses on a 1-CPU host");
        assert!(doc.global.complete().is_ok());
        assert!(doc.defaults.complete().is_ok());
        assert!(doc.rules.is_empty());
        // Parsing EMBEDDED as a user file changes nothing.
        assert_eq!(parse(EMBEDDED), Policy::embedded());
    }

    #[test]
    fn an_incomplete_bottom_layer_names_every_missing_key() {
        let doc = read_document("[defaults]\nidle_timeout = \"1m\"\n", HOST).unwrap();
        let missing = doc.defaults.complete().unwrap_err();
        assert_eq!(missing.len(), GATE_KEYS.len() - 1);
        assert!(!missing.contains(&"idle_timeout"));
        assert_eq!(
            doc.global.complete().unwrap_err(),
            vec![
                "socket",
                "socket_mode",
                "cgroup_root",
                "scan_interval",
                "event_history"
            ]
        );
    }

    // --- errors: line and key ----------------------------------------------

    #[test]
    fn error_display_names_path_line_and_key() {
        let e = refused(
            "socket = \"/run/x.sock\"\n\n[defaults]\nidle_timout = \"5m\"\n",
            4,
            Some("idle_timout"),
            "unknown key",
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with("/etc/gov.toml:4: key `idle_timout`: unknown key in [defaults]; did you mean `idle_timeout`? (expected one of: idle_timeout, orphan_grace, "),
            "{shown}"
        );
        let bare = PolicyError {
            path: "/x".into(),
            line: None,
            key: None,
            message: "cannot read: denied".into(),
        };
        assert_eq!(bare.to_string(), "/x: cannot read: denied");
    }

    #[test]
    fn typo_keys_are_refused_in_every_table() {
        refused(
            "socket_mdoe = \"0600\"\n",
            1,
            Some("socket_mdoe"),
            "did you mean `socket_mode`?",
        );
        refused(
            "# c\n[defaults]\npinnned = true\n",
            3,
            Some("pinnned"),
            "did you mean `pinned`?",
        );
        let e = refused(
            "[[project]]\npath = \"/a\"\n\n[[project]]\npath = \"/b\"\nmax_gate = 2\n",
            6,
            Some("max_gate"),
            "unknown key in [[project]] #2; did you mean `max_gates`?",
        );
        assert!(
            e.message
                .contains("expected one of: path, name, idle_timeout"),
            "{e}"
        );
        // Nothing near: no guess, just the list.
        let e = refused(
            "[defaults]\nzzzzzzzz = 1\n",
            2,
            Some("zzzzzzzz"),
            "unknown key in [defaults] (expected one of:",
        );
        assert!(!e.message.contains("did you mean"));
        // A misspelt table is an unknown top-level key.
        refused(
            "[default]\nidle_timeout = \"1m\"\n",
            1,
            Some("default"),
            "did you mean `defaults`?",
        );
        refused(
            "[[projects]]\npath = \"/a\"\n",
            1,
            Some("projects"),
            "did you mean `project`?",
        );
    }

    #[test]
    fn keys_in_the_wrong_table_say_where_they_belong() {
        refused(
            "[defaults]\nidle_timeout = \"1m\"\nmemory_budget = \"8G\"\n",
            3,
            Some("memory_budget"),
            "is a global key: move it to the top",
        );
        refused(
            "[[project]]\npath = \"/a\"\nsocket = \"/x\"\n",
            3,
            Some("socket"),
            "is a global key",
        );
        refused(
            "idle_timeout = \"1h\"\n",
            1,
            Some("idle_timeout"),
            "is a gate key: put it under [defaults] or a [[project]]",
        );
        refused(
            "[defaults]\npath = \"/a\"\n",
            2,
            Some("path"),
            "belongs in a [[project]] entry",
        );
    }

    #[test]
    fn bad_durations_are_refused_with_line_and_key() {
        refused(
            "[defaults]\norphan_grace = \"-5m\"\n",
            2,
            Some("orphan_grace"),
            "negative durations are not allowed",
        );
        refused(
            "[defaults]\n\nidle_timeout = 5\n",
            3,
            Some("idle_timeout"),
            "expected a duration like \"30m\" or \"never\", found integer 5",
        );
        refused(
            "[defaults]\nstop_grace = \"10\"\n",
            2,
            Some("stop_grace"),
            "missing unit",
        );
        refused(
            "[defaults]\nfrozen_hold = \"4 hours\"\n",
            2,
            Some("frozen_hold"),
            "missing unit",
        );
        refused(
            "[defaults]\nidle_timeout = \"1M\"\n",
            2,
            Some("idle_timeout"),
            "unknown unit \"M\"",
        );
        refused(
            "[defaults]\nidle_timeout = \"0s\"\n",
            2,
            Some("idle_timeout"),
            "write \"never\"",
        );
        refused(
            "[defaults]\nmax_runtime = \"0\"\n",
            2,
            Some("max_runtime"),
            "longer than zero",
        );
        refused(
            "scan_interval = \"0s\"\n",
            1,
            Some("scan_interval"),
            "longer than zero",
        );
        refused(
            "[defaults]\nstop_grace = \"never\"\n",
            2,
            Some("stop_grace"),
            "invalid duration \"never\"",
        );
        // Zero is meaningful for these.
        let s = defaults_with("orphan_grace = \"0s\"\nstop_grace = \"0s\"\nfrozen_hold = \"0s\"");
        assert_eq!(
            (s.orphan_grace, s.stop_grace, s.frozen_hold),
            (Some(Duration::ZERO), Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn bad_sizes_and_limits_are_refused_with_line_and_key() {
        refused(
            "[defaults]\nmemory_max = \"4 gigs\"\n",
            2,
            Some("memory_max"),
            "invalid size \"4 gigs\": unexpected space",
        );
        refused(
            "[defaults]\nmemory_high = \"4GB\"\n",
            2,
            Some("memory_high"),
            "ambiguous",
        );
        refused(
            "[defaults]\nmemory_max = 0\n",
            2,
            Some("memory_max"),
            "write \"max\" for no limit",
        );
        refused(
            "[defaults]\npids_max = -1\n",
            2,
            Some("pids_max"),
            "must not be negative",
        );
        refused(
            "[defaults]\npids_max = \"lots\"\n",
            2,
            Some("pids_max"),
            "expected a whole number or \"max\"",
        );
        refused(
            "[defaults]\nproject_memory_max = true\n",
            2,
            Some("project_memory_max"),
            "found boolean true",
        );
        refused(
            "memory_budget = \"0\"\n",
            1,
            Some("memory_budget"),
            "a limit of 0",
        );
        refused(
            "[defaults]\nproject_pids_max = 1.5\n",
            2,
            Some("project_pids_max"),
            "found float 1.5",
        );
    }

    #[test]
    fn bad_enums_signals_and_globs_are_refused_with_line_and_key() {
        refused(
            "[defaults]\non_limit = \"bogus\"\n",
            2,
            Some("on_limit"),
            "expected \"refuse\" or \"evict-idlest\", found \"bogus\"",
        );
        refused(
            "[defaults]\nstop_signal = \"SIGFOO\"\n",
            2,
            Some("stop_signal"),
            "unknown signal \"SIGFOO\" (expected one of: SIGTERM,",
        );
        refused(
            "[defaults]\nstop_signal = 15\n",
            2,
            Some("stop_signal"),
            "expected a signal name",
        );
        refused(
            "[[project]]\npath = \"/home/[a\"\n",
            2,
            Some("path"),
            "invalid glob \"/home/[a\": invalid range pattern",
        );
        refused(
            "[[project]]\npath = \"/a/***\"\n",
            2,
            Some("path"),
            "invalid glob",
        );
        refused(
            "[[project]]\npath = \"src/*\"\n",
            2,
            Some("path"),
            "must be an absolute path glob",
        );
        refused(
            "[[project]]\npath = \"~/src/*\"\n",
            2,
            Some("path"),
            "~ is not expanded",
        );
        refused(
            "[[project]]\npath = \"/a\"\nname = \"\"\n",
            3,
            Some("name"),
            "1 to 100 printable",
        );
        refused(
            "[defaults]\npinned = \"yes\"\n",
            2,
            Some("pinned"),
            "expected true or false",
        );
        refused(
            "[defaults]\ncpu_max = 150\n",
            2,
            Some("cpu_max"),
            "like \"150%\"",
        );
        refused(
            "[defaults]\ncpu_max = \"0.5%\"\n",
            2,
            Some("cpu_max"),
            "at least 1000 us",
        );
        refused(
            "[defaults]\nmax_gates = -2\n",
            2,
            Some("max_gates"),
            "must not be negative",
        );
        refused(
            "[defaults]\nmax_gates = \"2\"\n",
            2,
            Some("max_gates"),
            "expected a whole number (0 = unlimited)",
        );
    }

    #[test]
    fn busy_cpu_percent_must_be_within_what_the_cpus_can_do() {
        for bad in ["0", "0.0", "-1", "400.5", "1e9", "nan", "inf"] {
            let e = refused(
                &format!("[defaults]\nbusy_cpu_percent = {bad}\n"),
                2,
                Some("busy_cpu_percent"),
                "must be above 0 and at most 400",
            );
            assert!(e.message.contains("4 CPUs"), "{e}");
        }
        refused(
            "[defaults]\nbusy_cpu_percent = \"5\"\n",
            2,
            Some("busy_cpu_percent"),
            "expected a number",
        );
        assert_eq!(
            defaults_with("busy_cpu_percent = 400").busy_cpu_percent,
            400.0
        );
        assert_eq!(
            defaults_with("busy_cpu_percent = 0.5").busy_cpu_percent,
            0.5
        );
        assert_eq!(
            defaults_with("busy_cpu_percent = 1_0").busy_cpu_percent,
            10.0
        );
        assert!(check_busy_cpu_percent(150.0, 1).is_err());
        assert!(check_busy_cpu_percent(150.0, 2).is_ok());
    }

    #[test]
    fn malformed_toml_names_line_and_key_where_the_line_has_one() {
        refused(
            "socket_mode = \"0600\"\n[defaults]\nidle_timeout = 5m\n",
            3,
            Some("idle_timeout"),
            "invalid TOML: string values must be quoted",
        );
        refused(
            "event_history = 10\n[defaults\npinned = true\n",
            2,
            Some("defaults"),
            "invalid TOML: unclosed table",
        );
        refused(
            "[defaults]\npinned = true\npinned = false\n",
            3,
            Some("pinned"),
            "invalid TOML: duplicate key",
        );
        refused(
            "[defaults]\nidle_timeout = \"5m\n",
            2,
            Some("idle_timeout"),
            "invalid TOML",
        );
        refused(
            "[[project]]\npath = \"/a\"\n[project]\n",
            3,
            Some("project"),
            "invalid TOML: duplicate key",
        );
        // Inside a multi-line array the line has no key; the line is still right.
        refused("a = [\n  1,\n  2 3,\n]\n", 3, None, "invalid TOML");
    }

    #[test]
    fn table_shape_mistakes_are_refused_with_line_and_key() {
        refused("x_ = 1\n", 1, Some("x_"), "unknown key in the top level");
        refused(
            "defaults = 5\n",
            1,
            Some("defaults"),
            "expected the [defaults] table, found integer 5",
        );
        refused(
            "socket_mode = \"0600\"\n[project]\npath = \"/a\"\n",
            2,
            Some("project"),
            "write [[project]] with double brackets",
        );
        refused(
            "project = [1]\n",
            1,
            Some("project"),
            "expected a [[project]] table, found integer 1",
        );
        refused(
            "project = \"/a\"\n",
            1,
            Some("project"),
            "expected [[project]] tables",
        );
        refused(
            "[[project]]\nname = \"x\"\nidle_timeout = \"1h\"\n",
            1,
            Some("path"),
            "missing key in [[project]] #1",
        );
    }

    #[test]
    fn dotted_keys_and_inline_tables_name_the_inner_key() {
        refused(
            "scan_interval = \"1s\"\ndefaults.idle_timout = \"5m\"\n",
            2,
            Some("idle_timout"),
            "unknown key in [defaults]",
        );
        refused(
            "defaults = { pinned = true, idle_timeout = 5 }\n",
            1,
            Some("idle_timeout"),
            "found integer 5",
        );
        refused(
            "project = [ { path = \"/a\" }, { path = \"/b\", on_limit = \"x\" } ]\n",
            1,
            Some("on_limit"),
            "found \"x\"",
        );
        refused(
            "[defaults]\nidle_timeout.x = \"5m\"\n",
            2,
            Some("idle_timeout"),
            "found a table",
        );
        // The accepted forms mean the same as the plain ones.
        let p =
            parse("defaults.idle_timeout = \"1h\"\nproject = [{ path = \"/a\", pinned = true }]\n");
        assert_eq!(p.defaults().idle_timeout, Some(Duration::from_secs(3600)));
        assert!(p.for_project("/a").pinned);
    }

    #[test]
    fn parse_all_reports_every_problem_in_file_order() {
        let text = "\
zzz = 1
socket_mode = 660
[defaults]
stop_signal = \"SIGNOPE\"
busy_cpu_percent = 0
[[project]]
on_limit = \"refuse\"
[[project]]
path = \"/ok\"
pinned = 1
";
        let errs = errors(text);
        let got: Vec<(Option<usize>, Option<&str>)> =
            errs.iter().map(|e| (e.line, e.key.as_deref())).collect();
        assert_eq!(
            got,
            vec![
                (Some(1), Some("zzz")),
                (Some(2), Some("socket_mode")),
                (Some(4), Some("stop_signal")),
                (Some(5), Some("busy_cpu_percent")),
                (Some(6), Some("path")),
                (Some(10), Some("pinned")),
            ]
        );
        // parse() returns the first of them.
        let first = parse_with(text, Path::new(ORIGIN), HOST)
            .map_err(|mut v| v.swap_remove(0))
            .unwrap_err();
        assert_eq!(first, errs[0]);
        assert_eq!(Policy::parse(text, Path::new(ORIGIN)).unwrap_err(), errs[0]);
    }

    // --- layering and matching ---------------------------------------------

    #[test]
    fn later_projects_win_key_by_key_over_earlier_ones_and_defaults() {
        let p = parse(
            r#"
[defaults]
idle_timeout = "1h"
memory_max = "4G"
pinned = false

[[project]]
name = "all-src"
path = "/home/*/src/**"
idle_timeout = "2h"
max_gates = 5
on_limit = "evict-idlest"

[[project]]
path = "/home/*/src/BigModel*"
idle_timeout = "8h"
max_gates = 2

[[project]]
path = "/srv/*"
pinned = true
"#,
        );
        let big = p.for_project("/home/ann/src/BigModelX");
        assert_eq!(
            big.idle_timeout,
            Some(Duration::from_secs(8 * 3600)),
            "later rule wins"
        );
        assert_eq!(big.max_gates, Some(2), "later rule wins");
        assert_eq!(
            big.on_limit,
            OnLimit::EvictIdlest,
            "kept from the earlier rule"
        );
        assert_eq!(
            big.memory_max,
            Limit::Value(4 << 30),
            "kept from [defaults]"
        );
        assert!(!big.pinned, "a non-matching rule does not apply");
        assert_eq!(
            big.stop_grace,
            Duration::from_secs(10),
            "kept from the embedded defaults"
        );
        assert_eq!(
            p.matching_rules("/home/ann/src/BigModelX"),
            vec!["all-src", "/home/*/src/BigModel*"]
        );

        let other = p.for_project("/home/ann/src/Other");
        assert_eq!(other.idle_timeout, Some(Duration::from_secs(2 * 3600)));
        assert_eq!(other.max_gates, Some(5));

        let none = p.for_project("/tmp/x");
        assert_eq!(none, *p.defaults());
        assert!(p.matching_rules("/tmp/x").is_empty());
        assert!(p.for_project("/srv/api").pinned);
    }

    #[test]
    fn a_later_rule_can_switch_a_cap_or_timeout_back_off() {
        let p = parse(
            "[defaults]\nmax_gates = 3\nidle_timeout = \"1h\"\n[[project]]\npath = \"/x\"\nmax_gates = 0\nidle_timeout = \"never\"\n",
        );
        assert_eq!(p.defaults().max_gates, Some(3));
        let s = p.for_project("/x");
        assert_eq!((s.max_gates, s.idle_timeout), (None, None));
    }

    #[test]
    fn globs_keep_star_within_a_component_and_ignore_trailing_slashes() {
        let p = parse("[[project]]\npath = \"/home/*/src/Big*\"\npinned = true\n[[project]]\npath = \"/work/**/gate\"\nmax_gates = 1\n");
        assert!(p.for_project("/home/ann/src/BigModel").pinned);
        assert!(p.for_project("/home/ann/src/BigModel/").pinned);
        assert!(
            !p.for_project("/home/ann/x/src/BigModel").pinned,
            "* does not cross /"
        );
        assert!(
            !p.for_project("/home/ann/src/BigModel/sub").pinned,
            "* does not cross /"
        );
        assert!(
            !p.for_project("/home/ann/src/bigmodel").pinned,
            "case-sensitive"
        );
        assert_eq!(
            p.for_project("/work/gate").max_gates,
            Some(1),
            "** matches zero components"
        );
        assert_eq!(
            p.for_project("/work/a/b/gate").max_gates,
            Some(1),
            "** matches many"
        );
        assert_eq!(normalize_project("/"), "/");
        assert_eq!(normalize_project("//"), "/");
        assert_eq!(normalize_project("/a/b//"), "/a/b");
    }

    #[test]
    fn global_keys_layer_over_the_embedded_ones() {
        let p = parse(
            r#"
socket = "/tmp/gov-test-1/gov.sock"
socket_mode = "0660"
socket_group = "gov"
admin_group = "wheel"
cgroup_root = "gov-test-1"
scan_interval = "250ms"
memory_budget = "16G"
max_gates_per_user = 20
event_history = 50
metrics_listen = "127.0.0.1:9477"
"#,
        );
        assert_eq!(
            p.global,
            Global {
                socket: "/tmp/gov-test-1/gov.sock".into(),
                socket_mode: 0o660,
                socket_group: Some("gov".into()),
                admin_group: Some("wheel".into()),
                cgroup_root: "gov-test-1".into(),
                scan_interval: Duration::from_millis(250),
                memory_budget: Some(16 << 30),
                max_gates_per_user: Some(20),
                event_history: 50,
                metrics_listen: Some("127.0.0.1:9477".parse().unwrap()),
            }
        );
        let p = parse("memory_budget = \"max\"\nmax_gates_per_user = 0\n");
        assert_eq!(
            (p.global.memory_budget, p.global.max_gates_per_user),
            (None, None)
        );
        assert_eq!(
            parse("memory_budget = 1073741824\n").global.memory_budget,
            Some(1 << 30)
        );
    }

    #[test]
    fn global_values_are_validated() {
        refused(
            "socket = \"gov.sock\"\n",
            1,
            Some("socket"),
            "must be an absolute path",
        );
        refused(
            &format!("socket = \"/{}\"\n", "a".repeat(107)),
            1,
            Some("socket"),
            "at most 107 bytes",
        );
        refused(
            "socket_mode = 666\n",
            1,
            Some("socket_mode"),
            "octal string",
        );
        refused(
            "socket_mode = \"0999\"\n",
            1,
            Some("socket_mode"),
            "expected an octal mode",
        );
        refused(
            "socket_mode = \"4777\"\n",
            1,
            Some("socket_mode"),
            "at most 0777",
        );
        assert_eq!(parse("socket_mode = 0o640\n").global.socket_mode, 0o640);
        assert_eq!(parse("socket_mode = \"600\"\n").global.socket_mode, 0o600);
        refused(
            "socket_group = \"bad group\"\n",
            1,
            Some("socket_group"),
            "invalid group name",
        );
        refused(
            "admin_group = \"-x\"\n",
            1,
            Some("admin_group"),
            "invalid group name",
        );
        assert_eq!(
            parse("admin_group = \"1000\"\n")
                .global
                .admin_group
                .as_deref(),
            Some("1000")
        );
        refused(
            "cgroup_root = \"../escape\"\n",
            1,
            Some("cgroup_root"),
            "no empty, . or .. parts",
        );
        refused(
            "cgroup_root = \"\"\n",
            1,
            Some("cgroup_root"),
            "expected \"delegated\"",
        );
        refused(
            "metrics_listen = \"localhost:9477\"\n",
            1,
            Some("metrics_listen"),
            "expected IP:PORT",
        );
        for bad in ["0", "2000000"] {
            let text = format!("event_history = {bad}\n");
            refused(&text, 1, Some("event_history"), "must be 1 to 1000000");
        }
        refused(
            "event_history = \"10\"\n",
            1,
            Some("event_history"),
            "expected a whole number",
        );
        refused(
            "max_gates_per_user = 5000000000\n",
            1,
            Some("max_gates_per_user"),
            "too large",
        );
        assert_eq!(
            parse("metrics_listen = \"[::1]:9477\"\n")
                .global
                .metrics_listen,
            Some("[::1]:9477".parse().unwrap())
        );
    }

    // --- value languages ---------------------------------------------------

    #[test]
    fn durations_parse_and_refuse_as_documented() {
        let ok = [
            ("30m", 1_800_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("90s", 90_000),
            ("250ms", 250),
            ("1.5h", 5_400_000),
            ("0.25s", 250),
            ("2d", 172_800_000),
            ("1w", 604_800_000),
            ("0", 0),
            ("0s", 0),
            (" 5m ", 300_000),
            ("30m1h", 5_400_000),
        ];
        for (s, ms) in ok {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert_eq!(parse_duration("1500us"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("7ns"), Ok(Duration::from_nanos(7)));
        for bad in [
            "",
            "-5m",
            "5",
            "5 m",
            "1h30",
            "m",
            "1.h",
            ".5h",
            "1..5s",
            "1M",
            "1y",
            "5min",
            "never",
            "1h-5m",
            "+5m",
            "99999999999999999999999999999w",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse_duration("-5m").unwrap_err(),
            "negative durations are not allowed"
        );
    }

    #[test]
    fn durations_format_to_what_parses_back() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_secs(90), "1m30s"),
            (Duration::from_secs(30 * 60), "30m"),
            (Duration::from_secs(4 * 3600), "4h"),
            (Duration::from_secs(36 * 3600 + 1), "1d12h1s"),
            (Duration::new(1, 1), "1s1ns"),
        ];
        for (d, s) in cases {
            assert_eq!(format_duration(d), s);
        }
        for nanos in [
            1u64,
            999,
            1_000,
            1_500_000,
            59_999_999_999,
            3_600_000_000_001,
            1 << 62,
        ] {
            let d = Duration::from_nanos(nanos);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{nanos}");
        }
    }

    #[test]
    fn sizes_parse_and_refuse_as_documented() {
        let ok = [
            ("4096", 4096u64),
            ("4096B", 4096),
            ("4K", 4096),
            ("4k", 4096),
            ("4KiB", 4096),
            ("512M", 512 << 20),
            ("4G", 4 << 30),
            ("4g", 4 << 30),
            ("4GiB", 4 << 30),
            ("1.5G", 3 << 29),
            ("0.5K", 512),
            ("0.1K", 102),
            ("2T", 2 << 40),
            ("1P", 1 << 50),
            ("15E", 15 << 60),
            ("0", 0),
        ];
        for (s, n) in ok {
            assert_eq!(parse_size(s), Ok(n), "{s}");
        }
        for bad in [
            "", "4 gigs", "4 G", "4GB", "4gb", "4Mb", "4X", "G", "1.5", "1.5B", "-1G", ".5G",
            "1.G", "16E", "max", "4G ", "4Gi", "0x10",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_size("4GB")
            .unwrap_err()
            .contains("write \"G\" or \"GiB\""));
        assert!(parse_size("4 gigs")
            .unwrap_err()
            .contains("unexpected space"));
    }

    #[test]
    fn limits_accept_sizes_counts_integers_and_max() {
        let s = defaults_with(
            "memory_max = 4096\nmemory_high = \"3.5G\"\npids_max = \"100\"\nproject_memory_max = \"max\"\nproject_pids_max = 0x100",
        );
        assert_eq!(s.memory_max, Limit::Value(4096));
        assert_eq!(s.memory_high, Limit::Value(7 << 29));
        assert_eq!(s.pids_max, Limit::Value(100));
        assert_eq!(s.project_memory_max, Limit::Max);
        assert_eq!(s.project_pids_max, Limit::Value(256));
        assert_eq!(s.memory_high.to_kernel(), (7u64 << 29).to_string());
        refused(
            "[defaults]\npids_max = \"4K\"\n",
            2,
            Some("pids_max"),
            "expected a whole number or \"max\"",
        );
    }

    #[test]
    fn cpu_max_parses_percent_and_kernel_forms() {
        let q = |quota_usec, period_usec| CpuMax::Quota {
            quota_usec,
            period_usec,
        };
        assert_eq!(parse_cpu_max("max"), Ok(CpuMax::Max));
        assert_eq!(parse_cpu_max("max 50000"), Ok(CpuMax::Max));
        assert_eq!(parse_cpu_max("150%"), Ok(q(150_000, 100_000)));
        assert_eq!(parse_cpu_max("2.5%"), Ok(q(2_500, 100_000)));
        assert_eq!(parse_cpu_max("1%"), Ok(q(1_000, 100_000)));
        assert_eq!(parse_cpu_max("50000 100000"), Ok(q(50_000, 100_000)));
        assert_eq!(parse_cpu_max("  2000   10000 "), Ok(q(2_000, 10_000)));
        for bad in [
            "",
            "150",
            "%",
            "0%",
            "0.9%",
            "-5%",
            "50000",
            "50000 100000 1",
            "500 100000",
            "5000 999",
            "5000 1000001",
            "x y",
            "max x",
            "1.5 100000",
        ] {
            assert!(parse_cpu_max(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(CpuMax::Max.to_kernel(), "max 100000");
        assert_eq!(q(50_000, 100_000).to_kernel(), "50000 100000");
        assert_eq!(q(150_000, 100_000).to_string(), "150%");
        assert_eq!(q(2_500, 100_000).to_string(), "2500 100000");
        assert_eq!(q(5_000, 10_000).to_string(), "5000 10000");
        for c in [
            CpuMax::Max,
            q(150_000, 100_000),
            q(2_500, 100_000),
            q(5_000, 10_000),
        ] {
            assert_eq!(parse_cpu_max(&c.to_string()), Ok(c));
        }
        assert_eq!(
            defaults_with("cpu_max = \"150%\"").cpu_max,
            q(150_000, 100_000)
        );
    }

    #[test]
    fn signals_by_name_with_or_without_sig_in_any_case() {
        for (s, n) in [
            ("SIGTERM", libc::SIGTERM),
            ("TERM", libc::SIGTERM),
            ("sigint", libc::SIGINT),
            ("HUP", libc::SIGHUP),
            ("SIGQUIT", libc::SIGQUIT),
            ("USR1", libc::SIGUSR1),
            ("SIGUSR2", libc::SIGUSR2),
            ("KILL", libc::SIGKILL),
        ] {
            assert_eq!(parse_signal(s), Ok(n), "{s}");
            assert_eq!(parse_signal(&signal_name(n).unwrap()), Ok(n));
        }
        for bad in ["", "SIG", "SIGSTOP", "15", "SIG TERM", "SIGTERM "] {
            assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(signal_name(libc::SIGSTOP), None);
    }

    #[test]
    fn cgroup_root_forms() {
        assert_eq!(parse_cgroup_root("delegated"), Ok(RootSpec::Delegated));
        assert_eq!(
            parse_cgroup_root("gov"),
            Ok(RootSpec::UnderMount("gov".into()))
        );
        assert_eq!(
            parse_cgroup_root("gov/test-7"),
            Ok(RootSpec::UnderMount("gov/test-7".into()))
        );
        assert_eq!(
            parse_cgroup_root("/sys/fs/cgroup/gov"),
            Ok(RootSpec::Absolute("/sys/fs/cgroup/gov".into()))
        );
        for bad in [
            "", "/", "gov/", "a//b", "./gov", "gov/..", "..", "/a/../b", "a\nb",
        ] {
            assert!(parse_cgroup_root(bad).is_err(), "{bad:?} accepted");
        }
    }

    // --- error plumbing ----------------------------------------------------

    #[test]
    fn key_on_line_reads_assignments_and_headers() {
        assert_eq!(
            key_on_line("idle_timeout = 5m").as_deref(),
            Some("idle_timeout")
        );
        assert_eq!(
            key_on_line("  defaults.idle_timeout=5m").as_deref(),
            Some("idle_timeout")
        );
        assert_eq!(
            key_on_line("\"quoted-key\" = x").as_deref(),
            Some("quoted-key")
        );
        assert_eq!(key_on_line("[defaults").as_deref(), Some("defaults"));
        assert_eq!(key_on_line("[[project]]").as_deref(), Some("project"));
        assert_eq!(key_on_line("  2 3,"), None);
        assert_eq!(key_on_line(""), None);
        assert_eq!(key_on_line("# a = b"), None);
        assert_eq!(key_on_line("= 5"), None);
    }

    #[test]
    fn lines_are_counted_from_one_including_at_the_end() {
        let t = "a\nbc\n\nd";
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 1), 1, "the newline belongs to its line");
        assert_eq!(line_of(t, 2), 2);
        assert_eq!(line_of(t, 6), 4);
        assert_eq!(line_of(t, 99), 4);
        assert_eq!(line_text(t, 3), "bc");
        assert_eq!(line_text(t, 5), "");
        assert_eq!(line_text(t, 7), "d");
    }

    #[test]
    fn typos_get_the_nearest_key_only_when_near() {
        let keys = Section::Defaults.valid_keys();
        assert_eq!(closest("idle_timout", &keys), Some("idle_timeout"));
        assert_eq!(closest("memory_mx", &keys), Some("memory_max"));
        assert_eq!(closest("pids", &keys), None);
        assert_eq!(closest("x", &keys), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn key_tables_are_unique_and_disjoint() {
        let mut names = all_key_names();
        names.extend(TABLE_KEYS);
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "a key name appears twice");
        // The expected-keys lists are exactly the tables.
        assert_eq!(Section::Top.valid_keys().len(), GLOBAL_KEYS.len() + 2);
        assert_eq!(Section::Project(1).valid_keys().len(), GATE_KEYS.len() + 2);
    }

    // --- loading -----------------------------------------------------------

    #[test]
    fn load_and_load_or_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("absent.toml");
        assert_eq!(
            Policy::load_or_embedded(&missing).unwrap(),
            (Policy::embedded(), false)
        );
        let e = Policy::load(&missing).unwrap_err();
        assert_eq!(
            (e.path.as_path(), e.line, e.key.as_deref()),
            (missing.as_path(), None, None)
        );
        assert!(e.message.starts_with("cannot read: "), "{e}");

        let good = dir.path().join("gov.toml");
        std::fs::write(&good, "[defaults]\npinned = true\n").unwrap();
        let (p, from_file) = Policy::load_or_embedded(&good).unwrap();
        assert!(from_file && p.defaults().pinned);
        assert_eq!(Policy::load(&good).unwrap(), p);

        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "\n[defaults]\npinned = 1\n").unwrap();
        let e = Policy::load_or_embedded(&bad).unwrap_err();
        assert_eq!(
            (e.path.as_path(), e.line, e.key.as_deref()),
            (bad.as_path(), Some(3), Some("pinned"))
        );
        assert!(e
            .to_string()
            .starts_with(&format!("{}:3: key `pinned`: ", bad.display())));

        // A directory or a dangling symlink is a broken config, not an absent one.
        assert!(Policy::load_or_embedded(dir.path())
            .unwrap_err()
            .message
            .starts_with("cannot read"));
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        assert!(Policy::load_or_embedded(&link)
            .unwrap_err()
            .message
            .contains("symlink"));

        std::fs::write(&bad, b"a = \"\xff\"\n").unwrap();
        assert!(Policy::load(&bad)
            .unwrap_err()
            .message
            .starts_with("cannot read"));
    }

    // --- the packaged file and the docs ------------------------------------

    /// The packaged file with every commented-out setting (`#key = ...`,
    /// `#[[project]]`) switched on; prose comments start with "# " and stay.
    fn packaged_uncommented() -> String {
        PACKAGED
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn packaged_file_as_shipped_is_the_embedded_policy() {
        let p = Policy::parse(PACKAGED, Path::new("packaging/gov.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p, Policy::embedded());
    }

    #[test]
    fn packaged_file_documents_the_real_defaults_and_valid_examples() {
        let text = packaged_uncommented();
        let p = parse_with(&text, Path::new("packaging/gov.toml (uncommented)"), HOST)
            .unwrap_or_else(|e| panic!("{e:#?}"));
        let e = Policy::embedded();
        // Every [defaults] line shows the embedded default.
        assert_eq!(p.defaults(), e.defaults());
        // Required globals show their defaults; optional ones show examples.
        let g = Global {
            socket_group: Some("gov".into()),
            admin_group: Some("wheel".into()),
            memory_budget: Some(16 << 30),
            max_gates_per_user: Some(20),
            metrics_listen: Some("127.0.0.1:9477".parse().unwrap()),
            ..e.global.clone()
        };
        assert_eq!(p.global, g);
        // The examples do what their comments say.
        let big = p.for_project("/home/ann/src/BigModelX");
        assert_eq!(
            (big.idle_timeout, big.max_gates, big.on_limit),
            (
                Some(Duration::from_secs(8 * 3600)),
                Some(2),
                OnLimit::EvictIdlest
            )
        );
        assert_eq!(
            p.matching_rules("/home/ann/src/BigModelX"),
            vec!["big-models"]
        );
        let ci = p.for_project("/srv/ci/repo/x");
        assert_eq!(
            (ci.max_runtime, ci.frozen_hold, ci.stop_signal),
            (
                Some(Duration::from_secs(7200)),
                Duration::ZERO,
                libc::SIGINT
            )
        );
    }

    #[test]
    fn packaged_file_and_docs_cover_every_key() {
        let text = packaged_uncommented();
        for key in all_key_names() {
            let prefix = format!("{key} = ");
            assert!(
                text.lines().any(|l| l.starts_with(&prefix)),
                "packaging/gov.toml lacks `{key}`"
            );
            assert!(
                DOCS.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
        }
        for doc_fact in ["SIGHUP", "check-config", "[[project]]", "[defaults]"] {
            assert!(DOCS.contains(doc_fact), "docs lack {doc_fact}");
        }
    }

    // --- serialization -----------------------------------------------------

    #[test]
    fn settings_serialize_in_gov_toml_vocabulary() {
        let s = defaults_with(
            "cpu_max = \"150%\"\nmemory_max = \"1G\"\nmax_gates = 2\nstop_signal = \"INT\"",
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["idle_timeout"], "30m");
        assert_eq!(json["max_runtime"], "never");
        assert_eq!(json["stop_signal"], "SIGINT");
        assert_eq!(json["memory_max"], 1u64 << 30);
        assert_eq!(json["memory_high"], "max");
        assert_eq!(json["cpu_max"], "150%");
        assert_eq!(json["on_limit"], "refuse");
        assert_eq!(json["max_gates"], 2);
        assert_eq!(json["busy_cpu_percent"], 5.0);
    }

    #[test]
    fn serialized_settings_parse_back_to_the_same_settings() {
        let mut s = Policy::embedded().defaults().clone();
        s.max_gates = Some(3);
        s.idle_timeout = Some(Duration::from_millis(5_400_250));
        s.cpu_max = CpuMax::Quota {
            quota_usec: 2_500,
            period_usec: 50_000,
        };
        s.pids_max = Limit::Value(512);
        s.on_limit = OnLimit::EvictIdlest;
        // max_gates = None serializes as nothing (TOML has no null): 0 means the same.
        #[derive(Serialize)]
        struct Doc<'a> {
            defaults: &'a GateSettings,
        }
        let text = toml::to_string(&Doc { defaults: &s }).unwrap();
        assert_eq!(parse(&text).defaults(), &s, "{text}");
    }
}
