//! cgroup2 access over plain files: finding the mount, one handle per cgroup
//! directory, and small pure parsers for each file shape.
//!
//! Plain synchronous I/O on purpose: every operation is a few microseconds of
//! kernfs work. The daemon runs the waits (which can take milliseconds) on a
//! blocking thread.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Tags are extended attributes in the `trusted.` namespace: only
/// CAP_SYS_ADMIN may write them, so a gate cannot forge its own.
pub const TAG_PREFIX: &str = "trusted.gov.";

/// How often a wait re-reads cgroup.events even without a notification: the
/// kernel rate-limits cgroup.events notifications (about 100/s per file), so
/// a pure poll(2) can lag by 10-20 ms.
const WAIT_REREAD: Duration = Duration::from_millis(10);

/// A cgroup limit: "max" is a value of its own, never a magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Limit {
    Max,
    Value(u64),
}

impl Limit {
    /// The text the kernel expects in memory.max, pids.max, ...
    pub fn to_kernel(self) -> String {
        match self {
            Limit::Max => "max".to_string(),
            Limit::Value(v) => v.to_string(),
        }
    }
}

/// The kernel's default CFS period; `cpu_max = "150%"` is a quota over this period.
pub const CPU_PERIOD_USEC: u64 = 100_000;

/// A cpu.max value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMax {
    Max,
    Quota { quota_usec: u64, period_usec: u64 },
}

impl CpuMax {
    /// The text for cpu.max. "max" alone would keep whatever period the cgroup had;
    /// naming the default period makes the write idempotent.
    pub fn to_kernel(&self) -> String {
        match *self {
            CpuMax::Max => format!("max {CPU_PERIOD_USEC}"),
            CpuMax::Quota {
                quota_usec,
                period_usec,
            } => format!("{quota_usec} {period_usec}"),
        }
    }
}

/// "max", "150%" when exact over the default period, else "QUOTA PERIOD".
impl std::fmt::Display for CpuMax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            CpuMax::Max => f.write_str("max"),
            CpuMax::Quota {
                quota_usec: q,
                period_usec: CPU_PERIOD_USEC,
            } if q % 1000 == 0 => {
                write!(f, "{}%", q / 1000)
            }
            CpuMax::Quota {
                quota_usec: q,
                period_usec: p,
            } => write!(f, "{q} {p}"),
        }
    }
}

pub(crate) const CPU_FORM: &str =
    "\"max\", a percent of one CPU like \"150%\", or \"QUOTA PERIOD\"";

impl std::str::FromStr for CpuMax {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<CpuMax, String> {
        parse_cpu_max(s)
    }
}

/// `"max"`, a percent of one CPU (`"150%"`) over the default period, or the kernel's
/// `"QUOTA PERIOD"` in microseconds. The kernel refuses a quota under 1 ms and a
/// period outside 1 ms..1 s.
pub fn parse_cpu_max(s: &str) -> std::result::Result<CpuMax, String> {
    let words: Vec<&str> = s.split_whitespace().collect();
    let (quota, period) = match words[..] {
        ["max"] => return Ok(CpuMax::Max),
        ["max", p] if p.parse::<u64>().is_ok() => return Ok(CpuMax::Max),
        // 1% of a 100_000 us period is 1000 us.
        [pct] if pct.ends_with('%') => {
            match crate::units::scaled_decimal(&pct[..pct.len() - 1], 1000) {
                Some(q) => (u64::try_from(q).map_err(|_| "too large")?, CPU_PERIOD_USEC),
                None => return Err(format!("invalid percent {pct:?}")),
            }
        }
        [q, p] => match (q.parse(), p.parse()) {
            (Ok(q), Ok(p)) => (q, p),
            _ => return Err("QUOTA and PERIOD must be whole microseconds".into()),
        },
        _ => return Err(format!("expected {CPU_FORM} in microseconds")),
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

/// CPU use in percent of one CPU between a cpu.stat sample `previous`
/// (usage_usec, at unix ms) and `usage` read at `now_ms`; None without a
/// previous sample or time between them. The one place it is computed.
pub fn cpu_percent(previous: Option<(u64, u64)>, usage: u64, now_ms: u64) -> Option<f64> {
    let (prev_usage, prev_at) = previous?;
    let wall_usec = now_ms.saturating_sub(prev_at).saturating_mul(1000);
    (wall_usec > 0).then(|| usage.saturating_sub(prev_usage) as f64 * 100.0 / wall_usec as f64)
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 file system is mounted (looked in /proc/self/mountinfo); gov needs cgroup v2"
    )]
    NoCgroup2,
    /// The io::Error is part of the message, not a chained source, so it is
    /// printed once whether the caller prints the chain or not.
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{path}: cannot parse {what}: {data:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        data: String,
    },
    #[error("{path}: {what} did not happen within {waited:?}")]
    Timeout {
        path: PathBuf,
        what: &'static str,
        waited: Duration,
    },
}

impl CgroupError {
    /// The errno behind an I/O error, for callers that treat ENOENT or EBUSY
    /// as a normal outcome.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            CgroupError::Io { error, .. } => error.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, CgroupError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |error| CgroupError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

// ---------------------------------------------------------------------------
// Finding the cgroup2 mount

/// The cgroup2 mount point from the text of /proc/self/mountinfo.
///
/// Pure v2 hosts mount it at /sys/fs/cgroup, hybrid hosts at
/// /sys/fs/cgroup/unified; anything else mounted as cgroup2 is accepted too,
/// preferring the shortest path (the host's main mount over a bind mount).
pub fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            // "36 35 98:0 /root /mnt rw,noatime master:1 - cgroup2 cgroup2 rw"
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let root = left.split_whitespace().nth(3)?;
            let mount_point = left.split_whitespace().nth(4)?;
            // A mount of a sub-tree (root != "/") would hide gov's base.
            (fstype == "cgroup2" && root == "/").then(|| unescape_mountinfo(mount_point))
        })
        .min_by_key(|p| p.as_os_str().len())
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The cgroup2 mount of this host.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    find_cgroup2_mount(&text).ok_or(CgroupError::NoCgroup2)
}

/// The cgroup2 path of a process, from /proc/PID/cgroup ("0::/a/b").
pub fn parse_proc_cgroup(text: &str) -> Option<&str> {
    text.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The cgroup directory a process lives in.
pub fn cgroup_of(mount: &Path, pid: u32) -> Result<PathBuf> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = fs::read_to_string(&path).map_err(io_err("read", &path))?;
    let rel = parse_proc_cgroup(&text).ok_or_else(|| CgroupError::Parse {
        path: path.clone(),
        what: "a cgroup2 entry",
        data: text.clone(),
    })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

// ---------------------------------------------------------------------------
// Parsers, one per file shape

/// cgroup.events: "populated 1\nfrozen 0\n".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Events {
    pub populated: bool,
    pub frozen: bool,
}

/// Flat keyed files (cpu.stat, memory.events, pids.events, cgroup.events):
/// "key value" per line.
pub fn parse_flat_keyed(text: &str) -> std::result::Result<BTreeMap<String, u64>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            let key = it.next().ok_or_else(|| format!("empty line {l:?}"))?;
            let value = it
                .next()
                .ok_or_else(|| format!("no value in {l:?}"))?
                .parse::<u64>()
                .map_err(|e| format!("{l:?}: {e}"))?;
            Ok((key.to_string(), value))
        })
        .collect()
}

pub fn parse_events(text: &str) -> std::result::Result<Events, String> {
    let kv = parse_flat_keyed(text)?;
    let flag = |k: &str| {
        kv.get(k)
            .copied()
            .ok_or_else(|| format!("no `{k}` in {text:?}"))
    };
    Ok(Events {
        populated: flag("populated")? != 0,
        // cgroup.events of the root cgroup has no "frozen" line.
        frozen: kv.get("frozen").copied().unwrap_or(0) != 0,
    })
}

/// cgroup.procs: one pid per line.
pub fn parse_procs(text: &str) -> std::result::Result<Vec<u32>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.trim().parse::<u32>().map_err(|e| format!("{l:?}: {e}")))
        .collect()
}

/// A single value file that may hold "max" (memory.max, pids.max).
pub fn parse_limit(text: &str) -> std::result::Result<Limit, String> {
    match text.trim() {
        "max" => Ok(Limit::Max),
        v => v
            .parse()
            .map(Limit::Value)
            .map_err(|e| format!("{v:?}: {e}")),
    }
}

/// A single number (memory.current, pids.current).
pub fn parse_u64(text: &str) -> std::result::Result<u64, String> {
    text.trim()
        .parse()
        .map_err(|e| format!("{:?}: {e}", text.trim()))
}

// ---------------------------------------------------------------------------
// The handle

/// One cgroup directory. The path is absolute and given by the caller, so
/// tests can point it anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child(&self, name: &str) -> Cgroup {
        debug_assert!(!name.contains('/') && name != ".." && name != ".");
        Cgroup::new(self.path.join(name))
    }

    pub fn exists(&self) -> bool {
        self.path.join("cgroup.procs").exists()
    }

    pub fn has_file(&self, file: &str) -> bool {
        self.path.join(file).exists()
    }

    /// mkdir; fails if it already exists, so two creators can never share one.
    pub fn create(&self) -> Result<()> {
        fs::create_dir(&self.path).map_err(io_err("mkdir", &self.path))
    }

    /// mkdir unless it exists (for the shared base and project directories).
    pub fn create_if_missing(&self) -> Result<()> {
        self.create_if_missing_with_mode(0o755)
    }

    /// mkdir with `mode` (less the umask) unless it exists: the mode holds
    /// from the first moment, with no window before a chmod.
    pub fn create_if_missing_with_mode(&self, mode: u32) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match fs::DirBuilder::new().mode(mode).create(&self.path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            r => r.map_err(io_err("mkdir", &self.path)),
        }
    }

    /// chmod of the cgroup's directory (kernfs keeps the mode it is given).
    pub fn set_mode(&self, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&self.path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &self.path))
    }

    /// rmdir. The kernel refuses (EBUSY) while processes or children remain.
    pub fn remove(&self) -> Result<()> {
        fs::remove_dir(&self.path).map_err(io_err("rmdir", &self.path))
    }

    /// The names of the child cgroups.
    pub fn children(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(io_err("list", &self.path))? {
            let entry = entry.map_err(io_err("list", &self.path))?;
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn read_file(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        fs::read_to_string(&path).map_err(io_err("read", &path))
    }

    /// One write(2) of the whole value to an existing file: kernfs applies
    /// each write as one command, and we never create files in cgroupfs.
    pub fn write_file(&self, name: &str, value: &str) -> Result<()> {
        let path = self.file(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        f.write_all(value.as_bytes()).map_err(|e| CgroupError::Io {
            op: "write",
            path: path.clone(),
            error: io::Error::new(e.kind(), format!("{value:?}: {e}")),
        })
    }

    fn parsed<T>(
        &self,
        name: &str,
        what: &'static str,
        parse: impl Fn(&str) -> std::result::Result<T, String>,
    ) -> Result<T> {
        let text = self.read_file(name)?;
        parse(&text).map_err(|data| CgroupError::Parse {
            path: self.file(name),
            what,
            data,
        })
    }

    pub fn read_cgroup_events(&self) -> Result<Events> {
        self.parsed("cgroup.events", "cgroup.events", parse_events)
    }

    /// Member pids. Zombies are not listed: the kernel unlinks a task from
    /// its cgroup when it exits, before its parent reaps it.
    pub fn read_procs(&self) -> Result<Vec<u32>> {
        self.parsed("cgroup.procs", "cgroup.procs", parse_procs)
    }

    /// Total CPU time of the cgroup in microseconds. cpu.stat exists in every
    /// cgroup2 directory, with or without the cpu controller.
    pub fn read_cpu_usage_usec(&self) -> Result<u64> {
        let kv = self.parsed("cpu.stat", "cpu.stat", parse_flat_keyed)?;
        kv.get("usage_usec")
            .copied()
            .ok_or_else(|| CgroupError::Parse {
                path: self.file("cpu.stat"),
                what: "usage_usec",
                data: format!("{kv:?}"),
            })
    }

    pub fn read_flat_keyed(&self, name: &str) -> Result<BTreeMap<String, u64>> {
        self.parsed(name, "a flat keyed file", parse_flat_keyed)
    }

    /// memory.current, or None where the memory controller is off here.
    pub fn read_memory_current(&self) -> Result<Option<u64>> {
        if !self.has_file("memory.current") {
            return Ok(None);
        }
        self.parsed("memory.current", "memory.current", parse_u64)
            .map(Some)
    }

    pub fn read_controllers(&self) -> Result<Vec<String>> {
        Ok(self
            .read_file("cgroup.controllers")?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    pub fn read_subtree_control(&self) -> Result<Vec<String>> {
        Ok(self
            .read_file("cgroup.subtree_control")?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Enables controllers for this cgroup's children ("+memory +pids").
    pub fn write_subtree_control(&self, controllers: &[&str]) -> Result<()> {
        let value: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
        self.write_file("cgroup.subtree_control", &value.join(" "))
    }

    pub fn write_limit(&self, file: &str, limit: Limit) -> Result<()> {
        self.write_file(file, &limit.to_kernel())
    }

    /// Moves a whole process (all its threads) into this cgroup.
    pub fn write_procs(&self, pid: u32) -> Result<()> {
        self.write_file("cgroup.procs", &pid.to_string())
    }

    pub fn write_freeze(&self, frozen: bool) -> Result<()> {
        self.write_file("cgroup.freeze", if frozen { "1" } else { "0" })
    }

    pub fn write_kill(&self) -> Result<()> {
        self.write_file("cgroup.kill", "1")
    }

    // -- tags ---------------------------------------------------------------

    pub fn write_tag(&self, name: &str, value: &str) -> Result<()> {
        xattr::set(&self.path, format!("{TAG_PREFIX}{name}"), value.as_bytes())
            .map_err(io_err("setxattr", &self.path))
    }

    pub fn remove_tag(&self, name: &str) -> Result<()> {
        match xattr::remove(&self.path, format!("{TAG_PREFIX}{name}")) {
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
            r => r.map_err(io_err("removexattr", &self.path)),
        }
    }

    pub fn read_tag(&self, name: &str) -> Result<Option<String>> {
        let value = xattr::get(&self.path, format!("{TAG_PREFIX}{name}"))
            .map_err(io_err("getxattr", &self.path))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Every gov tag, without the prefix.
    pub fn read_tags(&self) -> Result<BTreeMap<String, String>> {
        let mut tags = BTreeMap::new();
        for name in xattr::list(&self.path).map_err(io_err("listxattr", &self.path))? {
            let Some(short) = name.to_str().and_then(|n| n.strip_prefix(TAG_PREFIX)) else {
                continue;
            };
            if let Some(v) = self.read_tag(short)? {
                tags.insert(short.to_string(), v);
            }
        }
        Ok(tags)
    }

    // -- waits and whole-tree actions ----------------------------------------

    /// Blocks until cgroup.events satisfies `done`, or the deadline passes.
    ///
    /// Waits in poll(2) for the kernel's change notification (POLLPRI), and
    /// re-reads at least every 10 ms because notifications are rate-limited.
    pub fn wait_events(
        &self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(Events) -> bool,
    ) -> Result<Events> {
        let path = self.file("cgroup.events");
        let mut f = fs::File::open(&path).map_err(io_err("open", &path))?;
        let start = Instant::now();
        let mut buf = String::new();
        loop {
            buf.clear();
            f.seek(SeekFrom::Start(0)).map_err(io_err("seek", &path))?;
            f.read_to_string(&mut buf).map_err(io_err("read", &path))?;
            let events = parse_events(&buf).map_err(|data| CgroupError::Parse {
                path: path.clone(),
                what: "cgroup.events",
                data,
            })?;
            if done(events) {
                return Ok(events);
            }
            let elapsed = start.elapsed();
            if elapsed >= timeout {
                return Err(CgroupError::Timeout {
                    path: self.path.clone(),
                    what,
                    waited: elapsed,
                });
            }
            // Re-read soon at first (most waits end within a millisecond),
            // then back off to WAIT_REREAD.
            let nap = (timeout - elapsed)
                .min(WAIT_REREAD)
                .min(elapsed.max(Duration::from_millis(1)));
            let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
            let ms =
                PollTimeout::try_from(nap.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
            match poll(&mut fds, ms) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => return Err(io_err("poll", &path)(e.into())),
            }
        }
    }

    /// Freezes the whole tree and waits until the kernel reports it frozen
    /// (cgroup.freeze only says what was asked; cgroup.events says what is).
    pub fn freeze(&self, timeout: Duration) -> Result<()> {
        self.write_freeze(true)?;
        self.wait_events("frozen", timeout, |e| e.frozen || !e.populated)?;
        Ok(())
    }

    pub fn thaw(&self, timeout: Duration) -> Result<()> {
        self.write_freeze(false)?;
        self.wait_events("thawed", timeout, |e| !e.frozen)?;
        Ok(())
    }

    /// Freezes and kills every process in the tree and waits for
    /// `populated 0`.
    ///
    /// cgroup.kill (Linux >= 5.14) also kills a fork racing the kill. Without
    /// it, SIGKILL every member while frozen (so none can fork in between),
    /// then thaw so the signals are delivered, until nothing is left.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        if self.has_file("cgroup.kill") {
            // Freeze first so nothing reacts while the kill lands; no need
            // to wait for it (SIGKILL reaches frozen tasks, and cgroup.kill
            // also takes a fork that races it).
            self.write_freeze(true)?;
            self.write_kill()?;
        } else {
            let start = Instant::now();
            while self.read_cgroup_events()?.populated {
                self.freeze(timeout.saturating_sub(start.elapsed()))?;
                for pid in self.read_procs()? {
                    // Through a pidfd, and only while still a member: a
                    // member killed by someone else meanwhile may have
                    // been reaped and its pid recycled outside the gate.
                    let _ = crate::proc::signal_checked(pid, libc::SIGKILL, |p| {
                        self.read_procs().is_ok_and(|now| now.contains(&p))
                    });
                }
                self.write_freeze(false)?;
                if start.elapsed() >= timeout {
                    break;
                }
            }
        }
        self.wait_events("populated 0", timeout, |e| !e.populated)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const PURE: &str = "\
25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw
26 25 0:24 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:8 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn finds_cgroup2_on_both_layouts() {
        assert_eq!(
            find_cgroup2_mount(HYBRID),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            find_cgroup2_mount(PURE),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
    }

    #[test]
    fn no_cgroup2_is_none_and_subtree_mounts_are_skipped() {
        assert_eq!(
            find_cgroup2_mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"),
            None
        );
        let bind = "50 1 0:24 /some/sub /mnt/x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_cgroup2_mount(bind), None);
        assert_eq!(find_cgroup2_mount(""), None);
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let line = "50 1 0:24 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            find_cgroup2_mount(line),
            Some(PathBuf::from("/mnt/with space"))
        );
    }

    #[test]
    fn parses_events() {
        assert_eq!(
            parse_events("populated 1\nfrozen 0\n").unwrap(),
            Events {
                populated: true,
                frozen: false
            }
        );
        assert_eq!(
            parse_events("populated 0\nfrozen 1\n").unwrap(),
            Events {
                populated: false,
                frozen: true
            }
        );
        assert!(parse_events("frozen 1\n").is_err());
        assert!(parse_events("populated yes\n").is_err());
    }

    #[test]
    fn parses_cpu_stat_and_procs() {
        let kv = parse_flat_keyed("usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n").unwrap();
        assert_eq!(kv["usage_usec"], 1234);
        assert_eq!(parse_procs("12\n345\n").unwrap(), vec![12, 345]);
        assert_eq!(parse_procs("").unwrap(), Vec::<u32>::new());
        assert!(parse_procs("12\nx\n").is_err());
    }

    #[test]
    fn limits_round_trip() {
        assert_eq!(parse_limit("max\n").unwrap(), Limit::Max);
        assert_eq!(parse_limit("4096\n").unwrap(), Limit::Value(4096));
        assert!(parse_limit("-1").is_err());
        assert_eq!(Limit::Max.to_kernel(), "max");
        assert_eq!(Limit::Value(7).to_kernel(), "7");
    }

    #[test]
    fn proc_cgroup_line() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/gov/p/g\n";
        assert_eq!(parse_proc_cgroup(text), Some("/gov/p/g"));
        assert_eq!(parse_proc_cgroup("1:cpu:/\n"), None);
    }

    #[test]
    fn write_and_read_on_a_fake_directory() {
        // A temp dir stands in for cgroupfs for path and write logic only.
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path());
        fs::write(dir.path().join("memory.max"), "").unwrap();
        cg.write_limit("memory.max", Limit::Value(1 << 20)).unwrap();
        assert_eq!(cg.read_file("memory.max").unwrap(), "1048576");
        // Never creates a file that the kernel did not provide.
        let err = cg.write_limit("memory.high", Limit::Max).unwrap_err();
        assert!(err.to_string().contains("memory.high"), "{err}");
        assert_eq!(err.errno(), Some(Errno::ENOENT));
    }
}
