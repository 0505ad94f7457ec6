//! The gov.toml policy (docs/configuration.md): global settings, `[defaults]` for
//! every gate, and `[[project]]` rules matched by glob against a gate's project.
//! Layers, lowest first: [`EMBEDDED`], the file's top level and `[defaults]`, then
//! each matching `[[project]]` in file order, key by key.
//!
//! Each key is declared once, in a `keys!` list below (name, type, reader); the
//! readers are in `values`, durations and sizes in `units`. `walk` reads a file
//! through `toml::de::DeTable`, not serde derive, because its spans give every
//! error a line and a key, and one pass finds every problem.
//! A new key also needs its default in [`EMBEDDED`] (unless `optional`) and a line
//! in packaging/gov.toml and docs/configuration.md (a test holds you to both).

mod check;
mod manual;
mod values;
mod walk;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use glob::{MatchOptions, Pattern};
use nix::sys::signal::Signal;
use serde::{Serialize, Serializer};
use toml::de::DeValue;

use crate::cgroup::{CpuMax, Limit};
pub use check::check_config;
pub use manual::manual_page;
use values::*;
use walk::*;
// The tests (the spec) name the value grammars as the policy's.
#[cfg(test)]
use crate::cgroup::parse_cpu_max;
#[cfg(test)]
use crate::units::{format_duration, parse_duration, parse_size, MAX_DURATION};

/// Where the daemon and `gov check-config` look when no path is given.
pub const DEFAULT_PATH: &str = "/etc/gov.toml";

/// The daemon socket when the policy does not name one.
pub const DEFAULT_SOCKET: &str = "/run/gov/gov.sock";

/// The built-in policy, parsed by the same code as a user's file. It sets every
/// required key (a test holds it to that); optional keys it leaves out are off.
pub const EMBEDDED: &str = include_str!("embedded.toml");
/// Origin named in errors about [`EMBEDDED`] (only a broken build could show it).
const EMBEDDED_ORIGIN: &str = "<embedded>";

/// A key's name and how to read its value into a layer `L`.
type Key<L> = (
    &'static str,
    fn(&mut L, &DeValue<'_>, Host) -> Result<(), String>,
);

/// From one list of `key: Type = reader` lines: the settings, their layer (each key
/// an `Option`, as one table sets them), the merge, the check that a bottom layer is
/// complete, the key table the walker reads through, and the spelling back to TOML.
/// An `optional` key may be absent from the bottom layer: its type's empty value.
/// Each key's doc comment, `Form: what it does`, is its line in gov.toml(5).
macro_rules! keys {
    (@bottom $v:expr) => { $v };
    (@bottom $v:expr, optional) => { Some($v.unwrap_or_default()) };
    (
        $(#[$meta:meta])* pub struct $Settings:ident; layer $Layer:ident; table $TABLE:ident;
        $( $(#[doc = $doc:literal])* $key:ident: $T:ty = $read:expr $(, $optional:ident)?; )*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $Settings { $( $(#[doc = $doc])* pub $key: $T, )* }

        #[derive(Clone, Debug, Default, PartialEq)]
        struct $Layer { $( $key: Option<$T>, )* }

        const $TABLE: &[Key<$Layer>] = &[$(
            (stringify!($key), |layer, v, host| Ok(layer.$key = Some(($read)(v, host)?))),
        )*];

        impl $Layer {
            /// Each key and its doc comment, for gov.toml(5).
            const DOCS: &[(&'static str, &'static str)] =
                &[$( (stringify!($key), concat!($($doc, "\n",)*)), )*];

            fn apply_to(&self, s: &mut $Settings) {
                $( if let Some(v) = &self.$key { s.$key = v.clone(); } )*
            }

            /// The settings of a bottom layer, or the required keys it lacks.
            fn complete(&self) -> Result<$Settings, Vec<&'static str>> {
                $( let $key = keys!(@bottom self.$key.clone() $(, $optional)?); )*
                match ($($key,)*) {
                    ($(Some($key),)*) => Ok($Settings { $($key,)* }),
                    ($($key,)*) => Err([$((stringify!($key), $key.is_none()),)*]
                        .into_iter().filter_map(|(k, missing)| missing.then_some(k)).collect()),
                }
            }

            /// The keys this layer sets, spelled as gov.toml does.
            fn spelled(&self) -> Vec<(&'static str, Option<toml::Value>)> {
                let mut out = Vec::new();
                $( if let Some(v) = &self.$key { out.push((stringify!($key), v.spell())); } )*
                out
            }
        }

        impl From<&$Settings> for $Layer {
            fn from(s: &$Settings) -> $Layer { $Layer { $( $key: Some(s.$key.clone()), )* } }
        }

        /// In gov.toml's own words ("30m", "never", "SIGTERM", "max"), so what
        /// `gov show --json` prints can be pasted back into a `[[project]]`.
        impl Serialize for $Settings {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let spelled = $Layer::from(self).spelled().into_iter();
                s.collect_map(spelled.filter_map(|(key, value)| Some((key, value?))))
            }
        }
    };
}

keys! {
    /// Daemon-wide settings (the top level of gov.toml).
    pub struct Global; layer GlobalLayer; table GLOBAL_KEYS;
    /// Path: the daemon's Unix socket, at most 107 bytes; clients use GOV_SOCKET if set.
    socket: PathBuf = |v, _| socket(v);
    /// Mode: the socket's permission bits, an octal string ("0660") or TOML octal (0o660).
    socket_mode: u32 = |v, _| mode(v);
    /// Group: a name or gid the socket is chowned to; unset, root's group.
    socket_group: Option<String> = |v, _| group(v), optional;
    /// Group: members see and act on every user's gates, as root does; unset, none.
    admin_group: Option<String> = |v, _| group(v), optional;
    /// Cgroup path: gov's tree, relative to the cgroup2 mount, absolute under it,
    /// or "delegated" for the daemon's own systemd-delegated cgroup.
    cgroup_root: String = |v, _| cgroup_root(v);
    // It divides CPU time into a rate, so it cannot be zero.
    /// Duration: how often the daemon samples CPU use and applies timeouts; above zero.
    scan_interval: Duration = |v, _| duration(v, false);
    /// Size: memory all gates may use together; past it, users over their equal
    /// share lose their idlest gate, one a scan. Unset or "max", none.
    memory_budget: Option<u64> = |v, _| budget(v), optional;
    /// Count: gates one user may have at once; 0 or unset, unlimited.
    max_gates_per_user: Option<u32> = |v, _| cap(v), optional;
    /// Count: lifecycle events kept for gov events, 1 to 1000000.
    event_history: usize = |v, _| history(v);
    /// Address: IP:PORT serving Prometheus text at /metrics; unset, off.
    metrics_listen: Option<std::net::SocketAddr> = |v, _| listen(v), optional;
    /// List: environment variables gov spawn takes the session from, first set wins.
    session_env: Vec<String> = |v, _| env_names(v), optional;
    /// Path: where CRIU images of hibernated gates are kept (mode 0700).
    hibernate_dir: PathBuf = |v, _| abs_path(v), optional;
    /// Size: disk all hibernation images may take together; unset or "max", none.
    hibernate_max_bytes: Option<u64> = |v, _| budget(v), optional;
    /// Program: the CRIU binary, a bare name looked up on PATH or an absolute path.
    criu_path: PathBuf = |v, _| program(v), optional;
    /// Percent: memory relief starts when some task stalled on memory this
    /// share of the last 10 s (PSI some avg10); above 0% and at most 100%, or "off".
    memory_pressure: Option<Percent> = |v, _| pressure(v);
    /// Percent or Size: memory relief starts when MemAvailable falls under
    /// this, a share of MemTotal ("5%") or a size ("2G"), or "off".
    memory_available_min: Option<MemoryFloor> = |v, _| floor(v);
    /// Boolean: relief's last rung may stop idle gates; else it only
    /// hibernates, suspends and reclaims, and nothing is lost.
    pressure_stop: bool = |v, _| flag(v);
}

/// A percent as written in gov.toml ("10%", "12.5%"): above 0 and at most
/// 100. Kept as written, so it spells back exactly; [`Percent::share`] is
/// the fraction the daemon compares with.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// None unless above 0 and at most 100.
    pub fn new(percent: f64) -> Option<Percent> {
        (percent > 0.0 && percent <= 100.0).then_some(Percent(percent))
    }

    pub fn percent(self) -> f64 {
        self.0
    }

    /// The fraction, 0..=1.
    pub fn share(self) -> f64 {
        self.0 / 100.0
    }
}

/// "10%", "12.5%": as gov.toml spells it.
impl std::fmt::Display for Percent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}%", self.0)
    }
}

/// `memory_available_min`: a floor under MemAvailable, as a share of
/// MemTotal (the host's size is known only where the daemon runs) or bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MemoryFloor {
    OfTotal(Percent),
    Bytes(u64),
}

impl MemoryFloor {
    /// The floor in bytes on a host with `mem_total` bytes (MemTotal).
    pub fn bytes(self, mem_total: u64) -> u64 {
        match self {
            MemoryFloor::OfTotal(p) => (mem_total as f64 * p.share()) as u64,
            MemoryFloor::Bytes(n) => n,
        }
    }
}

keys! {
    /// Everything that governs one gate, after layering.
    pub struct GateSettings; layer GateLayer; table GATE_KEYS;
    // time(v, never, zero): "never" allowed, zero allowed.
    /// Timeout: a gate with no touch and no CPU activity this long is suspended
    /// (frozen, resumable); above zero or "never".
    idle_timeout: Option<Duration> = |v, _| time(v, true, false);
    /// Timeout: a gate whose owner (the editor, the agent) died is stopped this
    /// long later; "0s" at once, "never" lets orphans live.
    orphan_grace: Option<Duration> = |v, _| time(v, true, true);
    /// Timeout: a hard deadline from the gate's start, busy or not; above zero or "never".
    max_runtime: Option<Duration> = |v, _| time(v, true, false);
    /// Signal: sent to the main process to stop a gate (thawed first).
    stop_signal: Signal = |v, _| signal(v);
    /// Duration: how long a stopping gate may take to exit before all of it is killed.
    stop_grace: Duration = |v, _| duration(v, true);
    /// Duration: how long a suspended idle gate stays resumable before it is
    /// stopped; "0s" stops idle gates instead of suspending them.
    frozen_hold: Duration = |v, _| duration(v, true);
    /// Number: CPU use above this, in percent of one CPU over a scan, is activity.
    busy_cpu_percent: f64 = busy;
    /// Limit: the gate's memory.max, a size or "max".
    memory_max: Limit = |v, _| limit(v, true);
    /// Limit: the gate's memory.high (throttled and reclaimed, not killed), a size or "max".
    memory_high: Limit = |v, _| limit(v, true);
    /// Limit: the gate's pids.max (processes and threads), a number or "max".
    pids_max: Limit = |v, _| limit(v, false);
    /// CPU: the gate's cpu.max, "max", a percent of one CPU ("150%") or "QUOTA PERIOD" in µs.
    cpu_max: CpuMax = |v, _| cpu_max(v);
    /// Count: gates one user may have of one project at once; 0, unlimited.
    max_gates: Option<u32> = |v, _| cap(v);
    /// Choice: at max_gates a spawn is refused ("refuse") or stops the user's
    /// idlest gate of the project ("evict-idlest").
    on_limit: OnLimit = |v, _| choice(v, OnLimit::ALL);
    /// Boolean: never reap the gate, whatever the timeouts say; limits still apply.
    pinned: bool = |v, _| flag(v);
    /// Boolean: push a suspended gate's memory out through memory.reclaim.
    reclaim_when_frozen: bool = |v, _| flag(v);
    /// Boolean: set memory.oom.group, so an OOM kill takes the whole gate.
    oom_group: bool = |v, _| flag(v);
    /// Limit: memory.max over one user's gates of a project, a size or "max".
    project_memory_max: Limit = |v, _| limit(v, true);
    /// Limit: pids.max over one user's gates of a project, a number or "max".
    project_pids_max: Limit = |v, _| limit(v, false);
    /// Choice: when the main process exits, "keep" the rest of the gate or
    /// "stop" it main_exit_grace later.
    on_main_exit: OnMainExit = |v, _| choice(v, OnMainExit::ALL);
    /// Duration: with on_main_exit = "stop", how long the rest may run on.
    main_exit_grace: Duration = |v, _| duration(v, true);
    /// Timeout: a gate suspended this long is dumped to disk with CRIU and its
    /// memory freed (gates spawned with --hibernate); "never", no hibernation.
    hibernate_after: Option<Duration> = |v, _| time(v, true, true);
    /// Timeout: how long a hibernated gate stays restorable; above zero or "never".
    hibernate_hold: Option<Duration> = |v, _| time(v, true, false);
    /// Boolean: a suspended or hibernated gate comes back when its host writes
    /// to its stdin or to a socket it holds, or connects to one it listens on.
    wake_on_input: bool = |v, _| flag(v);
    /// Duration: a gate that input woke, with no activity since, is suspended
    /// again this long after the wake; above zero.
    wake_quiet: Duration = |v, _| duration(v, false);
    /// List: what counts as activity and restarts the idle clock, of "touch",
    /// "cpu" (use above busy_cpu_percent) and "input" (a wake on input).
    activity: Activity = |v, _| activity(v);
}

/// What counts as a gate's activity (`activity`): which events restart its
/// idle clock. A touch and CPU use by default; input too where a host never
/// pings and its real calls cost little CPU (an agent's MCP server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    pub touch: bool,
    pub cpu: bool,
    pub input: bool,
}

impl Activity {
    pub const NAMES: [&'static str; 3] = ["touch", "cpu", "input"];

    /// The names set, in gov.toml's order.
    pub fn names(self) -> Vec<&'static str> {
        let on = [self.touch, self.cpu, self.input];
        Activity::NAMES
            .into_iter()
            .zip(on)
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }
}

/// CRIU for the daemon over `criu_path`, as GOV_SOCKET names its socket.
pub const CRIU_ENV: &str = "GOV_CRIU";

impl Global {
    /// `memory_available_min` in bytes on a host with `mem_total` bytes
    /// (MemTotal); None when off.
    pub fn available_min_bytes(&self, mem_total: u64) -> Option<u64> {
        self.memory_available_min.map(|f| f.bytes(mem_total))
    }

    /// `criu_path` as GOV_CRIU in this environment sets it; whether it did.
    pub fn apply_criu_env(&mut self) -> bool {
        let criu = std::env::var_os(CRIU_ENV).filter(|v| !v.is_empty());
        criu.map(|c| self.criu_path = PathBuf::from(c)).is_some()
    }

    /// The CRIU program named by a path, or None for a bare name, which is
    /// looked up on PATH ([`crate::criu::Criu::find`]).
    pub fn criu_program(&self) -> Option<&Path> {
        let path = self.criu_path.as_path();
        (path.components().count() > 1).then_some(path)
    }
}

/// Keys only a `[[project]]` has, besides the gate keys.
const RULE_KEYS: &[&str] = &["path", "name"];

/// The two tables of the top level.
const TABLE_KEYS: &[&str] = &["defaults", "project"];

/// An enum spelled in gov.toml as the strings given.
macro_rules! choices {
    ($(#[$meta:meta])* $Enum:ident { $( $(#[$doc:meta])* $Variant:ident = $name:literal, )* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum $Enum { $( $(#[$doc])* $Variant, )* }

        impl $Enum {
            const ALL: &[(&str, $Enum)] = &[$( ($name, $Enum::$Variant), )*];

            /// The spelling used in gov.toml.
            pub fn as_str(self) -> &'static str {
                match self { $( $Enum::$Variant => $name, )* }
            }
        }
    };
}

choices! {
    /// What `gov spawn` does when its user already has `max_gates` gates of
    /// the project.
    OnLimit {
        Refuse = "refuse",
        /// Reap that user's least recently active idle gate of the project;
        /// refuse if none is idle.
        EvictIdlest = "evict-idlest",
    }
}

choices! {
    /// What happens to the rest of a gate when its main process exits.
    OnMainExit {
        /// The rest keeps running, reaped by the timeouts as before.
        Keep = "keep",
        /// The rest is stopped after `main_exit_grace`.
        Stop = "stop",
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

/// A policy problem: `/etc/gov.toml:3: key `idle_timout`: unknown key in ...`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {}{message}", .path.display(),
    .line.map(|l| format!(":{l}")).unwrap_or_default(),
    .key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The file (or `<embedded>`).
    pub path: PathBuf,
    /// 1-based line, when the problem is in the text.
    pub line: Option<usize>,
    /// The key at fault, without its table (`idle_timeout`, not `defaults.idle_timeout`).
    pub key: Option<String>,
    pub message: String,
}

impl PolicyError {
    fn at(path: &Path, line: Option<usize>, key: Option<String>, message: String) -> Self {
        let path = path.to_path_buf();
        PolicyError {
            path,
            line,
            key,
            message,
        }
    }
}

/// A loaded policy: global settings, the defaults every gate starts from, and the
/// project rules layered on top by [`Policy::for_project`].
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub global: Global,
    defaults: GateSettings,
    rules: Vec<Rule>,
}

impl Policy {
    /// The built-in defaults, used when no file exists.
    pub fn embedded() -> Policy {
        // An empty file on top of EMBEDDED is EMBEDDED; the tests prove it parses.
        Policy::parse("", Path::new(EMBEDDED_ORIGIN)).expect("EMBEDDED policy is valid")
    }

    /// Parses `text` on top of the embedded defaults; the first problem in file
    /// order. `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Policy, PolicyError> {
        Policy::parse_all(text, origin).map_err(|mut errs| errs.swap_remove(0))
    }

    /// Like [`Policy::parse`], but every problem in file order (never empty).
    pub fn parse_all(text: &str, origin: &Path) -> Result<Policy, Vec<PolicyError>> {
        parse_with(text, origin, Host::current())
    }

    /// Reads and parses `path`; a read error is a [`PolicyError`] naming the path.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::at(path, None, None, format!("cannot read: {e}")))?;
        Policy::parse(&text, path)
    }

    /// [`Policy::load`], but a missing file yields the embedded policy; the bool
    /// says whether the file was there. A file that cannot be read or parsed is an
    /// error: silently running on defaults would hide it.
    pub fn load_or_embedded(path: &Path) -> Result<(Policy, bool), PolicyError> {
        match read_if_present(path)? {
            Some(text) => Ok((Policy::parse(&text, path)?, true)),
            None => Ok((Policy::embedded(), false)),
        }
    }

    /// The daemon's policy: the file given, which must exist, else
    /// [`DEFAULT_PATH`] or, where that is absent, the embedded defaults. The path
    /// read, or `None` for the defaults.
    pub fn load_given(given: Option<&Path>) -> Result<(Policy, Option<PathBuf>), PolicyError> {
        match read_policy_file(given)? {
            (path, Some(text)) => Ok((Policy::parse(&text, &path)?, Some(path))),
            (_, None) => Ok((Policy::embedded(), None)),
        }
    }

    /// The settings for a gate of `project`: `[defaults]`, then every matching
    /// `[[project]]` in file order, later ones winning key by key.
    pub fn for_project(&self, project: &str) -> GateSettings {
        let mut settings = self.defaults.clone();
        for rule in self.matching(project) {
            rule.overrides.apply_to(&mut settings);
        }
        settings
    }

    /// Does `uses` hold for `[defaults]` or any one rule on top of them? The daemon
    /// enables only the controllers some limit needs.
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

    /// Labels (`name`, else `path`) of the rules that apply to `project`, in the order
    /// applied: "why does this gate have an 8h timeout?".
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

    /// The whole policy as gov.toml text that parses back to it: every global key,
    /// `[defaults]` in full, and each `[[project]]` with the keys it sets.
    pub fn to_toml(&self) -> String {
        let mut out = keys_text(GlobalLayer::from(&self.global).spelled());
        out += "\n[defaults]\n";
        out += &keys_text(GateLayer::from(&self.defaults).spelled());
        for rule in &self.rules {
            let mut keys = vec![("path", Some(rule.pattern.as_str().into()))];
            keys.extend(rule.name.as_deref().map(|n| ("name", Some(n.into()))));
            keys.extend(rule.overrides.spelled());
            out += "\n[[project]]\n";
            out += &keys_text(keys);
        }
        out
    }
}

/// The embedded policy with `text` on top, bounded by `host`.
fn parse_with(text: &str, origin: &Path, host: Host) -> Result<Policy, Vec<PolicyError>> {
    let embedded = Path::new(EMBEDDED_ORIGIN);
    let (base, user) = (read(EMBEDDED, embedded, host)?, read(text, origin, host)?);
    let missing = |keys: Vec<&str>| -> Vec<PolicyError> {
        let error = |k: &str| PolicyError::at(embedded, None, Some(k.into()), "missing key".into());
        keys.into_iter().map(error).collect()
    };
    let mut global = base.global.complete().map_err(missing)?;
    user.global.apply_to(&mut global);
    let mut defaults = base.defaults.complete().map_err(missing)?;
    user.defaults.apply_to(&mut defaults);
    let rules = user.rules;
    Ok(Policy {
        global,
        defaults,
        rules,
    })
}

fn keys_text(keys: Vec<(&str, Option<toml::Value>)>) -> String {
    let line = |(key, value): (&str, Option<toml::Value>)| match value {
        Some(v) => format!("{key} = {v}\n"),
        None => format!("# {key} is not set\n"),
    };
    keys.into_iter().map(line).collect()
}

/// The policy file a person gave (`--config`, GOV_CONFIG, check-config's FILE),
/// which must exist, else [`DEFAULT_PATH`], which may be absent (`None`): a
/// mistyped path must not quietly run the embedded defaults.
fn read_policy_file(given: Option<&Path>) -> Result<(PathBuf, Option<String>), PolicyError> {
    let Some(path) = given else {
        let path = Path::new(DEFAULT_PATH);
        return Ok((path.to_path_buf(), read_if_present(path)?));
    };
    match read_if_present(path)? {
        Some(text) => Ok((path.to_path_buf(), Some(text))),
        None => Err(PolicyError::at(
            path,
            None,
            None,
            format!("no such file (only the default {DEFAULT_PATH} may be absent)"),
        )),
    }
}

/// The text of `path`, or `None` when there is no file. A dangling symlink also
/// reads as NotFound; it is a broken config, not an absent one.
fn read_if_present(path: &Path) -> Result<Option<String>, PolicyError> {
    let error = |message: String| Err(PolicyError::at(path, None, None, message));
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => error(format!("cannot read: {e}")),
        Err(_) if path.symlink_metadata().is_ok() => error("is a symlink to a missing file".into()),
        Err(_) => Ok(None),
    }
}

/// A trailing slash must not make a rule miss: `/home/a/src/X/` is `/home/a/src/X`.
fn normalize_project(project: &str) -> &str {
    match project.trim_end_matches('/') {
        "" if !project.is_empty() => "/",
        trimmed => trimmed,
    }
}

/// One `[[project]]` entry.
#[derive(Clone, Debug, PartialEq)]
struct Rule {
    pattern: Pattern,
    name: Option<String>,
    overrides: GateLayer,
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
