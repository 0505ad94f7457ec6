//! Readers taking a TOML value to a key's type (the `= reader` of the key lists),
//! the grammars only gov.toml has, and [`Spell`], the way back to TOML.
//! Durations and sizes are in `units`, cpu.max in `cgroup`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use glob::Pattern;
use nix::sys::signal::Signal;
use toml::de::DeValue;

use super::{Host, MemoryFloor, OnLimit, OnMainExit, Percent, RootSpec};
use crate::cgroup::{CpuMax, Limit, CPU_FORM};
use crate::units::{format_duration, parse_duration, parse_size};

/// A bound on the daemon's memory for events.
const MAX_EVENT_HISTORY: u64 = 1_000_000;

/// `sun_path` is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// Signals a stop may use. Numbers are refused: they differ across architectures.
const SIGNALS: [Signal; 7] = {
    use Signal::*;
    [SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGKILL]
};

/// `"SIGTERM"`, `"TERM"`, `"sigterm"` -> SIGTERM; one of [`SIGNALS`].
fn find_signal(s: &str) -> Result<Signal, String> {
    let upper = s.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    let found = SIGNALS.into_iter().find(|sig| sig.as_str()[3..] == *bare);
    let names = || SIGNALS.map(|s| s.as_str()).join(", ");
    found.ok_or_else(|| format!("unknown signal {s:?} (expected one of: {})", names()))
}

/// [`find_signal`] as a libc number (the tests' view of the grammar).
#[cfg(test)]
pub(super) fn parse_signal(s: &str) -> Result<i32, String> {
    find_signal(s).map(|sig| sig as i32)
}

/// `libc::SIGTERM` -> `"SIGTERM"`, for the signals [`parse_signal`] accepts.
#[cfg(test)]
pub(super) fn signal_name(sig: i32) -> Option<String> {
    let found = SIGNALS.into_iter().find(|s| *s as i32 == sig);
    found.map(|s| s.as_str().to_string())
}

/// `"delegated"`, a path relative to the cgroup2 mount (`"gov/test-42"`) or an
/// absolute one. No empty, `.` or `..` parts and no control characters: this
/// string becomes a directory path written as root.
pub(super) fn parse_cgroup_root(s: &str) -> Result<RootSpec, String> {
    let rel = s.strip_prefix('/').unwrap_or(s);
    let bad_part = |c: &str| c.is_empty() || c == "." || c == "..";
    let bad = rel.is_empty() || s.chars().any(char::is_control) || rel.split('/').any(bad_part);
    Ok(match s {
        "delegated" => RootSpec::Delegated,
        _ if bad => return Err(format!("expected \"delegated\" or a cgroup path like \"gov\" (no empty, . or .. parts), found {s:?}")),
        _ if s.starts_with('/') => RootSpec::Absolute(s.into()),
        _ => RootSpec::UnderMount(s.into()),
    })
}

/// A `[[project]]` path glob: absolute, as project paths are; `~` is refused since
/// the daemon serves every user and has no one home to expand it to.
pub(super) fn parse_project_glob(s: &str) -> Result<Pattern, String> {
    let refused = match s {
        _ if s.starts_with('~') => {
            "~ is not expanded (the daemon serves every user): write e.g. \"/home/*/src/...\""
        }
        _ if !s.starts_with('/') => {
            "must be an absolute path glob (use \"/**/NAME\" for any depth)"
        }
        _ => {
            return Pattern::new(s)
                .map_err(|e| format!("invalid glob {s:?}: {} at character {}", e.msg, e.pos))
        }
    };
    Err(format!("{refused}, found {s:?}"))
}

// --- readers -----------------------------------------------------------------------

/// `expected {expected}, found {v}`: the message of a value of the wrong kind.
pub(super) fn wrong(expected: &str, v: &DeValue<'_>) -> String {
    let found = match v {
        DeValue::String(s) => format!("string {:?}", s.as_ref()),
        DeValue::Integer(i) => format!("integer {i}"),
        DeValue::Float(f) => format!("float {f}"),
        DeValue::Boolean(b) => format!("boolean {b}"),
        DeValue::Datetime(d) => format!("datetime {d}"),
        DeValue::Array(_) => "an array".to_string(),
        DeValue::Table(_) => "a table".to_string(),
    };
    format!("expected {expected}, found {found}")
}

fn text<'v>(v: &'v DeValue<'_>, expected: &str) -> Result<&'v str, String> {
    match v {
        DeValue::String(s) => Ok(s.as_ref()),
        other => Err(wrong(expected, other)),
    }
}

/// A TOML integer that must not be negative.
fn whole(v: &DeValue<'_>, expected: &str) -> Result<u64, String> {
    match v {
        DeValue::Integer(i) if i.as_str().starts_with('-') => {
            Err(format!("must not be negative, found {i}"))
        }
        DeValue::Integer(i) => u64::from_str_radix(i.as_str().trim_start_matches('+'), i.radix())
            .map_err(|_| format!("{i} is too large")),
        other => Err(wrong(expected, other)),
    }
}

/// A string out of `options`, for the enum keys.
pub(super) fn choice<T: Copy>(v: &DeValue<'_>, options: &[(&str, T)]) -> Result<T, String> {
    let expected = options
        .iter()
        .map(|(n, _)| format!("{n:?}"))
        .collect::<Vec<_>>();
    let expected = expected.join(" or ");
    let s = text(v, &expected)?;
    let found = options.iter().find(|(n, _)| *n == s).map(|(_, t)| *t);
    found.ok_or_else(|| format!("expected {expected}, found {s:?}"))
}

/// A duration; `never` allows "never" (`None`), `zero` allows "0s". Timeouts are
/// never zero: they would act at the first scan after spawn.
pub(super) fn time(v: &DeValue<'_>, never: bool, zero: bool) -> Result<Option<Duration>, String> {
    let s = match never {
        true => text(v, "a duration like \"30m\" or \"never\"")?,
        false => text(v, "a duration like \"10s\"")?,
    };
    if never && s == "never" {
        return Ok(None);
    }
    let d = parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    match (d.is_zero() && !zero, never) {
        (true, true) => Err("must be longer than zero; write \"never\" to turn it off".into()),
        (true, false) => Err("must be longer than zero".into()),
        _ => Ok(Some(d)),
    }
}

pub(super) fn duration(v: &DeValue<'_>, zero: bool) -> Result<Duration, String> {
    time(v, false, zero).map(Option::unwrap_or_default)
}

pub(super) fn signal(v: &DeValue<'_>) -> Result<Signal, String> {
    find_signal(text(v, "a signal name like \"SIGTERM\"")?)
}

pub(super) fn flag(v: &DeValue<'_>) -> Result<bool, String> {
    match v {
        DeValue::Boolean(b) => Ok(*b),
        other => Err(wrong("true or false", other)),
    }
}

pub(super) fn busy(v: &DeValue<'_>, host: Host) -> Result<f64, String> {
    let x = match v {
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map_err(|_| format!("{i} is out of range"))? as f64,
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse()
            .map_err(|_| format!("invalid number {f}"))?,
        other => return Err(wrong("a number like 5.0", other)),
    };
    check_busy_cpu_percent(x, host.ncpu)
}

/// A gate cannot use more than `100 * ncpu` percent, so a threshold above it would
/// make every gate look idle, and a computing gate could be reaped.
pub(super) fn check_busy_cpu_percent(x: f64, ncpu: u32) -> Result<f64, String> {
    let max = 100.0 * f64::from(ncpu);
    match x > 0.0 && x <= max {
        true => Ok(x),
        false => Err(format!(
            "must be above 0 and at most {max} (100 per CPU, {ncpu} CPUs online), found {x}"
        )),
    }
}

/// `"max"`, a size (`bytes`) or count, or a TOML integer. Zero is refused: a zero
/// memory or pids limit leaves a gate unable to run, and is always a slip for "max".
pub(super) fn limit(v: &DeValue<'_>, bytes: bool) -> Result<Limit, String> {
    let expected = match bytes {
        true => "a size like \"4G\" or \"max\"",
        false => "a whole number or \"max\"",
    };
    let n = match v {
        DeValue::String(s) if s.as_ref() == "max" => return Ok(Limit::Max),
        DeValue::String(s) if bytes => {
            parse_size(s).map_err(|e| format!("invalid size {:?}: {e}", s.as_ref()))?
        }
        DeValue::String(s) => s.parse().map_err(|_| wrong(expected, v))?,
        _ => whole(v, expected)?,
    };
    match n {
        0 => Err("a limit of 0 leaves a gate unable to run; write \"max\" for no limit".into()),
        n => Ok(Limit::Value(n)),
    }
}

/// A host-wide budget in bytes: `"max"` means none.
pub(super) fn budget(v: &DeValue<'_>) -> Result<Option<u64>, String> {
    limit(v, true).map(|l| match l {
        Limit::Max => None,
        Limit::Value(n) => Some(n),
    })
}

/// A count where 0 means unlimited (`max_gates`, `max_gates_per_user`).
pub(super) fn cap(v: &DeValue<'_>) -> Result<Option<u32>, String> {
    let n = whole(v, "a whole number (0 = unlimited)")?;
    let n = u32::try_from(n).map_err(|_| format!("{n} is too large"))?;
    Ok((n > 0).then_some(n))
}

/// `"10%"`: above 0% and at most 100%.
fn percent(s: &str) -> Result<Percent, String> {
    let expected = || format!("expected a percent like \"10%\", found {s:?}");
    let number = s.strip_suffix('%').ok_or_else(expected)?;
    let p: f64 = number.trim().parse().map_err(|_| expected())?;
    Percent::new(p).ok_or_else(|| format!("must be above 0% and at most 100%, found {s:?}"))
}

/// `memory_pressure`: a percent of time stalled, or "off" (None).
pub(super) fn pressure(v: &DeValue<'_>) -> Result<Option<Percent>, String> {
    match text(v, "a percent like \"10%\" or \"off\"")? {
        "off" => Ok(None),
        s => percent(s).map(Some),
    }
}

/// `memory_available_min`: a percent of MemTotal, a size, or "off" (None).
pub(super) fn floor(v: &DeValue<'_>) -> Result<Option<MemoryFloor>, String> {
    let expected = "a percent like \"5%\", a size like \"2G\" or \"off\"";
    let bytes = match v {
        DeValue::String(s) if s.as_ref() == "off" => return Ok(None),
        DeValue::String(s) if s.ends_with('%') => {
            return percent(s).map(|p| Some(MemoryFloor::OfTotal(p)))
        }
        DeValue::String(s) => parse_size(s)
            .map_err(|e| format!("expected {expected}, found {:?} ({e})", s.as_ref()))?,
        _ => whole(v, expected)?,
    };
    match bytes {
        0 => Err("must be above zero; write \"off\" to turn it off".into()),
        n => Ok(Some(MemoryFloor::Bytes(n))),
    }
}

pub(super) fn history(v: &DeValue<'_>) -> Result<usize, String> {
    match whole(v, "a whole number")? {
        n @ 1..=MAX_EVENT_HISTORY => Ok(n as usize),
        n => Err(format!("must be 1 to {MAX_EVENT_HISTORY}, found {n}")),
    }
}

pub(super) fn cpu_max(v: &DeValue<'_>) -> Result<CpuMax, String> {
    let s = text(v, &format!("{CPU_FORM} like \"50000 100000\""))?;
    s.parse().map_err(|e| format!("invalid cpu_max {s:?}: {e}"))
}

/// An absolute path without NUL (`hibernate_dir`).
pub(super) fn abs_path(v: &DeValue<'_>) -> Result<PathBuf, String> {
    match text(v, "an absolute path")? {
        s if s.starts_with('/') && !s.contains('\0') => Ok(PathBuf::from(s)),
        s => Err(format!("must be an absolute path, found {s:?}")),
    }
}

/// Absolute (the daemon's cwd is not the user's) and short enough for `sun_path`,
/// or bind fails later with a far less helpful error.
pub(super) fn socket(v: &DeValue<'_>) -> Result<PathBuf, String> {
    match abs_path(v)? {
        p if p.as_os_str().len() > MAX_SOCKET_PATH => Err(format!(
            "a Unix socket path holds at most {MAX_SOCKET_PATH} bytes, found {}",
            p.as_os_str().len()
        )),
        p => Ok(p),
    }
}

/// A program: a bare name looked up on the daemon's PATH, or an absolute path.
pub(super) fn program(v: &DeValue<'_>) -> Result<PathBuf, String> {
    match text(v, "a program name like \"criu\" or an absolute path")? {
        s if s.is_empty() || s.contains('\0') || (s.contains('/') && !s.starts_with('/')) => Err(
            format!("expected a program name or an absolute path, found {s:?}"),
        ),
        s => Ok(PathBuf::from(s)),
    }
}

/// An octal string (`"0660"`) or a TOML octal integer (`0o660`). A decimal integer
/// is refused: `socket_mode = 660` would silently mean 0o1224.
pub(super) fn mode(v: &DeValue<'_>) -> Result<u32, String> {
    let mode = match v {
        DeValue::String(s) => {
            let digits = s.strip_prefix("0o").unwrap_or(s);
            let octal =
                (1..=4).contains(&digits.len()) && digits.bytes().all(|b| b"01234567".contains(&b));
            if !octal {
                return Err(wrong("an octal mode like \"0660\"", v));
            }
            u32::from_str_radix(digits, 8).expect("1 to 4 octal digits")
        }
        DeValue::Integer(i) if i.radix() == 8 => {
            u32::from_str_radix(i.as_str(), 8).map_err(|_| format!("{i} is too large"))?
        }
        DeValue::Integer(i) => {
            let why = format!("integer {i} would be read as decimal");
            return Err(format!(
                "write the mode as an octal string like \"0660\" ({why})"
            ));
        }
        other => return Err(wrong("an octal string like \"0660\"", other)),
    };
    match mode {
        0..=0o777 => Ok(mode),
        _ => Err(format!(
            "at most 0777 (permission bits only), found {mode:#o}"
        )),
    }
}

/// A group name as `getgrnam` takes it, or a gid. The daemon checks it exists, since
/// `gov check-config` may run on another host.
pub(super) fn group(v: &DeValue<'_>) -> Result<Option<String>, String> {
    let s = text(v, "a group name")?;
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    let name = s.strip_suffix('$').unwrap_or(s);
    match s.is_empty() || s.starts_with('-') || !name.chars().all(ok_char) {
        true => Err(format!("invalid group name {s:?}")),
        false => Ok(Some(s.to_string())),
    }
}

pub(super) fn cgroup_root(v: &DeValue<'_>) -> Result<String, String> {
    let s = text(v, "\"delegated\" or a cgroup path like \"gov\"")?;
    parse_cgroup_root(s).map(|_| s.to_string())
}

pub(super) fn listen(v: &DeValue<'_>) -> Result<Option<SocketAddr>, String> {
    let s = text(v, "an address like \"127.0.0.1:9477\"")?;
    let form = "expected IP:PORT like \"127.0.0.1:9477\" or \"[::1]:9477\"";
    s.parse()
        .map(Some)
        .map_err(|_| format!("{form}, found {s:?}"))
}

/// Environment variable names: letters, digits and `_`, not starting with a digit.
pub(super) fn env_names(v: &DeValue<'_>) -> Result<Vec<String>, String> {
    let expected = "a list of environment variable names like [\"GOV_SESSION\"]";
    let DeValue::Array(items) = v else {
        return Err(wrong(expected, v));
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let name = |s: &str| {
        !s.is_empty() && !s.starts_with(|c: char| c.is_ascii_digit()) && s.chars().all(ok)
    };
    let read = |item: &toml::Spanned<DeValue<'_>>| match text(item.get_ref(), expected)? {
        s if name(s) => Ok(s.to_string()),
        s => Err(format!("{s:?} is not an environment variable name")),
    };
    items.iter().map(read).collect()
}

/// What counts as activity: a list of "touch", "cpu", "input", each at most
/// once. An empty list is allowed: then nothing restarts a gate's idle
/// clock, and it is suspended idle_timeout after its start, whatever it does.
pub(super) fn activity(v: &DeValue<'_>) -> Result<super::Activity, String> {
    let expected = "a list of \"touch\", \"cpu\", \"input\"";
    let DeValue::Array(items) = v else {
        return Err(wrong(expected, v));
    };
    let mut a = super::Activity {
        touch: false,
        cpu: false,
        input: false,
    };
    for item in items.iter() {
        let slot = match text(item.get_ref(), expected)? {
            "touch" => &mut a.touch,
            "cpu" => &mut a.cpu,
            "input" => &mut a.input,
            other => return Err(format!("expected {expected}, found {other:?}")),
        };
        if std::mem::replace(slot, true) {
            return Err(format!(
                "{:?} is listed twice",
                text(item.get_ref(), expected)?
            ));
        }
    }
    Ok(a)
}

/// A `[[project]]` rule's label for logs and tags: short, printable, one line.
pub(super) fn rule_name(v: &DeValue<'_>) -> Result<String, String> {
    match text(v, "a name")? {
        s if s.is_empty() || s.len() > 100 || s.chars().any(char::is_control) => Err(format!(
            "a name must be 1 to 100 printable characters, found {s:?}"
        )),
        s => Ok(s.to_string()),
    }
}

pub(super) fn rule_glob(v: &DeValue<'_>) -> Result<Pattern, String> {
    parse_project_glob(text(v, "a path glob like \"/home/*/src/MyPkg*\"")?)
}

// --- spelling: a key's value back to TOML ---------------------------------------

/// A value as gov.toml spells it, which its reader reads back to the same value.
/// `None`: an optional key that is not set (TOML has no null).
pub(super) trait Spell {
    fn spell(&self) -> Option<toml::Value>;
}

/// Integers past i64 (sizes up to 15E) are digit strings, which the readers take.
fn int(n: u64) -> toml::Value {
    i64::try_from(n).map_or_else(|_| n.to_string().into(), Into::into)
}

macro_rules! spell {
    ($($T:ty => |$v:ident| $e:expr;)*) => {
        $(impl Spell for $T {
            fn spell(&self) -> Option<toml::Value> {
                let $v = self;
                Some($e)
            }
        })*
    };
}

spell! {
    bool => |b| (*b).into();
    f64 => |x| (*x).into();
    usize => |n| int(*n as u64);
    // The one u32 key is socket_mode, an octal string.
    u32 => |m| format!("{m:04o}").into();
    String => |s| s.as_str().into();
    PathBuf => |p| p.to_string_lossy().as_ref().into();
    Vec<String> => |v| v.clone().into();
    Option<String> => |s| s.as_deref()?.into();
    Option<SocketAddr> => |a| a.as_ref()?.to_string().into();
    Duration => |d| format_duration(*d).into();
    Option<Duration> => |d| d.map_or("never".to_string(), format_duration).into();
    Limit => |l| match l { Limit::Max => "max".into(), Limit::Value(n) => int(*n) };
    // Budgets: none is "max".
    Option<u64> => |b| b.map_or("max".into(), int);
    // Caps: unlimited is 0, as the docs say.
    Option<u32> => |c| int(c.unwrap_or(0).into());
    Signal => |s| s.as_str().into();
    CpuMax => |c| c.to_string().into();
    OnLimit => |o| o.as_str().into();
    OnMainExit => |o| o.as_str().into();
    super::Activity => |a| a.names().into();
    // Relief: off is "off"; a percent as written.
    Option<Percent> => |p| p.map_or("off".into(), |p| p.to_string()).into();
    Option<MemoryFloor> => |f| match f {
        None => "off".into(),
        Some(MemoryFloor::OfTotal(p)) => p.to_string().into(),
        Some(MemoryFloor::Bytes(n)) => int(*n),
    };
}
