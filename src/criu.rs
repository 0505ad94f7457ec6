//! gov's driver for CRIU, through its command line.
//!
//! Why the command line and not `criu swrk` (protobuf RPC, as youki does with
//! the rust-criu crate): every option gov needs exists on the command line,
//! a failed step leaves a log anyone can read and rerun by hand, and it adds
//! no dependency (rust-criu pulls protobuf code generation). The price is
//! that errors come back as a log to read, not as typed RPC replies; gov only
//! needs "did it work, and why not", which the log's tail says.
//!
//! What this module knows about CRIU on our kernels (docs/design.md,
//! "Hibernation"):
//! - CRIU >= 4.2 (older ones fail on kernels >= 6.13 or 6.16).
//! - A frozen cgroup v2 must be dumped with `--freeze-cgroup`; without it
//!   criu hangs, and killing it then thawing killed the gate. So a dump is
//!   never killed: a dump past its deadline is reported, and left to finish.
//! - Restoring into a frozen cgroup hangs: the target must be thawed.
//! - The tree lands in the cgroup of the restoring criu process, so criu is
//!   moved into the target cgroup before it runs.
//! - Images hold the whole heap: directory 0700, files 0600.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::{Cgroup, CgroupError};

/// The oldest CRIU that works on the kernels we run (see the module doc).
pub const MIN_VERSION: Version = Version(4, 2, 0);

/// The file CRIU writes only once a dump succeeded and the dumped tree was
/// killed (its last step; "Dumping finished successfully" is logged only at
/// -v3 and above, so the log cannot say it at the default level).
const DUMP_DONE_FILE: &str = "stats-dump";

/// How many lines of a log an error carries.
const LOG_TAIL_LINES: usize = 12;

/// Error lines CRIU logs on every run here that say nothing about why a
/// step failed (it cannot raise its own fd limit inside our limits).
const NOISE: [&str; 1] = ["Can't setup RLIMIT_NOFILE"];

/// The sizes of a finished dump's image files, written by gov beside them
/// ("NAME BYTES" lines) and checked before a restore: a truncated image
/// otherwise made criu restore hang until its deadline (120 s here).
const SIZES_FILE: &str = "gov-sizes";

/// The suffix of an image directory a dump is still writing.
const PARTIAL_SUFFIX: &str = ".partial";

/// How CRIU keeps a dumped tree's TCP peers from seeing a reset while the
/// tree is gone (`--network-lock`). CRIU's default, iptables, runs the
/// iptables-restore binary; nftables goes through libnftables, linked
/// into criu, and needs no binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkLock {
    Iptables,
    Nftables,
}

impl NetworkLock {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkLock::Iptables => "iptables",
            NetworkLock::Nftables => "nftables",
        }
    }

    /// iptables where its binary is on PATH, else nftables (our hosts have
    /// no iptables: a dump with a TCP connection then failed with
    /// "Iptables configuration failed").
    pub fn detect() -> NetworkLock {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if search_path(&path, "iptables-restore").is_some() {
            NetworkLock::Iptables
        } else {
            NetworkLock::Nftables
        }
    }
}

/// A CRIU version, "4.2.1" as (4, 2, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The version in `criu --version` output ("Version: 4.2.1\nGitID: ...";
/// a release without a patch level prints "Version: 4.2").
pub fn parse_version(text: &str) -> Option<Version> {
    let v = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))?
        .trim();
    // "4.2.1", "4.2", "4.2-rc1": numbers up to the first non-digit part.
    let mut nums = v
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().ok())
        .take_while(Option::is_some)
        .flatten();
    let major = nums.next()?;
    let minor = nums.next()?;
    Some(Version(major, minor, nums.next().unwrap_or(0)))
}

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("criu not found (looked for {looked}); hibernation needs CRIU >= {MIN_VERSION}")]
    NotFound { looked: String },
    #[error("{path}: CRIU {found} is too old; hibernation needs >= {MIN_VERSION} (older ones fail on kernels >= 6.13)")]
    TooOld { path: PathBuf, found: Version },
    #[error("{path} --version: cannot read a version in {output:?}")]
    NoVersion { path: PathBuf, output: String },
    #[error("{op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("{dir}: unsafe for images, which must live in a root-owned 0700 directory below root-owned directories nobody else may write to, without symlinks (found {found})")]
    UnsafeDir { dir: PathBuf, found: String },
    #[error("{dir}: an image is already there")]
    ImageExists { dir: PathBuf },
    #[error("{dir}: no complete image there")]
    NoImage { dir: PathBuf },
    /// The image is not what the dump wrote (a file shorter or missing).
    #[error("{dir}: the image is damaged: {why}")]
    Damaged { dir: PathBuf, why: String },
    /// The target of a restore is not ready (frozen, or still populated).
    #[error("{path}: cannot restore here: {why}")]
    NotReady { path: PathBuf, why: &'static str },
    /// CRIU ran and said no. `log_tail` is the end of its log, where the
    /// reason is (e.g. "io_uring is not supported").
    #[error("criu {op} failed ({status}); {log}: {log_tail}")]
    Failed {
        op: &'static str,
        status: String,
        log: PathBuf,
        log_tail: String,
    },
    /// A dump still running at its deadline. It is left to finish (killing
    /// a dump can kill the gate); `pid` is the criu process, reaped by a
    /// thread of ours. The tree is frozen; do not thaw it while `pid` lives.
    #[error(
        "criu {op} (pid {pid}) still running after {waited:?}; left to finish. {log}: {log_tail}"
    )]
    StillRunning {
        op: &'static str,
        pid: u32,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },
    /// A restore past its deadline: criu was killed (a restore can be
    /// repeated from the image, which is untouched) and what it had
    /// restored was killed with it.
    #[error("criu {op} killed after {waited:?}; the image is kept. {log}: {log_tail}")]
    TimedOut {
        op: &'static str,
        waited: Duration,
        log: PathBuf,
        log_tail: String,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl CriuError {
    /// The reason CRIU gave, for `gov show` and events (the log's tail), or
    /// the whole message for errors of our own.
    pub fn reason(&self) -> String {
        match self {
            // Killed before it logged anything (a lazy-pages daemon
            // SIGKILLed): what it died of is the reason.
            CriuError::Failed {
                op,
                status,
                log_tail,
                ..
            } if log_tail.trim().is_empty() => format!("criu {op} failed ({status})"),
            CriuError::Failed { log_tail, .. }
            | CriuError::StillRunning { log_tail, .. }
            | CriuError::TimedOut { log_tail, .. } => log_tail.clone(),
            other => other.to_string(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CriuError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CriuError + 'a {
    move |error| CriuError::Io {
        op,
        path: path.to_path_buf(),
        error,
    }
}

/// A criu binary that was found and is new enough.
#[derive(Debug, Clone)]
pub struct Criu {
    path: PathBuf,
    version: Version,
    /// `criu check --feature uffd-noncoop` said yes (asked by [`Criu::find`]:
    /// it takes ~0.15 s, which a wake must not pay; a per-clone cache did,
    /// as the daemon clones its Criu for every step).
    lazy_pages: bool,
}

/// "criu 4.2.1 at /usr/sbin/criu", as the log and `gov status` say it.
impl std::fmt::Display for Criu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "criu {} at {}", self.version, self.path.display())
    }
}

/// What to dump.
#[derive(Debug)]
pub struct DumpRequest<'a> {
    /// The tree's root as the host sees it: the init of the tree's own pid
    /// namespace (restore needs its pids free, and only a fresh namespace
    /// guarantees that).
    pub pid: u32,
    /// The cgroup that holds exactly that tree, frozen (a suspended gate's
    /// worker cgroup). Passed as --freeze-cgroup.
    pub cgroup: &'a Cgroup,
    /// The images directory; must not exist yet. Created 0700, written as
    /// `<dir>.partial` and renamed when the dump succeeded.
    pub dir: &'a Path,
    /// Also dump established TCP connections (--tcp-established); a tree
    /// with one fails without it.
    pub tcp_established: bool,
    /// Used with `tcp_established`: dump and restore must agree.
    pub network_lock: NetworkLock,
    /// How long to wait for criu (a GiB takes ~2.5 s here).
    pub timeout: Duration,
    /// Leave the tree alive (`--leave-running`) instead of killing it once
    /// the image is written: the caller then kills it or takes the dump
    /// back. The cgroup was frozen before criu, so criu freezes it again
    /// before it lets go of the tasks (criu/seize.c: a `--freeze-cgroup`
    /// found frozen is restored to frozen, `freezer_restore_state`, before
    /// `freezer_detach`): the tree never runs in between.
    pub leave_running: bool,
}

#[derive(Debug, Clone)]
pub struct DumpReport {
    pub elapsed: Duration,
    /// Bytes on disk in the images directory (logs included).
    pub image_bytes: u64,
}

/// A descriptor held outside the dumped tree that the restored tree gets
/// back (`--inherit-fd fd[N]:KEY`): the same pipe, so its other end, held
/// by the keeper, still talks to it.
#[derive(Debug)]
pub struct InheritFd {
    pub fd: OwnedFd,
    /// What the images call it, e.g. "pipe:[12345]" (see [`pipe_key`]).
    pub key: String,
}

/// What to restore.
#[derive(Debug)]
pub struct RestoreRequest<'a> {
    pub dir: &'a Path,
    /// Where the tree lands: thawed and empty (restoring into a frozen
    /// cgroup hangs).
    pub cgroup: &'a Cgroup,
    pub inherit: Vec<InheritFd>,
    pub tcp_established: bool,
    pub network_lock: NetworkLock,
    pub timeout: Duration,
    /// Leave the restored tasks stopped (`--leave-stopped`): nothing of
    /// the tree runs until the caller sends SIGCONT, so what it holds can
    /// be checked first ([`crate::held`]).
    pub leave_stopped: bool,
    /// Restore private anonymous memory lazily (`--lazy-pages`, served by
    /// a `criu lazy-pages` daemon, see [`crate::lazy`]): the tree runs once
    /// its tasks and files are back, its pages arrive on first touch and in
    /// the background. Only where [`Criu::lazy_pages_supported`].
    pub lazy: bool,
}

#[derive(Debug, Clone)]
pub struct RestoreReport {
    /// Until the tree was restored (running, or stopped with
    /// `leave_stopped`); with lazy pages, before its memory is all back.
    pub elapsed: Duration,
    /// The restored root's pid as the host sees it (a new one: only the
    /// pids inside the tree's namespace are restored).
    pub pid: u32,
    /// With lazy pages: until the lazy-pages daemon had copied every page
    /// (set by whoever waited for it, [`crate::lazy::LazyPages::finish`]).
    pub memory_back: Option<Duration>,
}

/// A restore that worked: the report, and for a lazy one the daemon still
/// filling the tree's memory, which must be waited for
/// ([`crate::lazy::LazyPages::finish`]) before the image may go.
#[derive(Debug)]
pub struct Restored {
    pub report: RestoreReport,
    pub lazy: Option<crate::lazy::LazyPages>,
}

/// What is on disk for a gate's images directory, for crash recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageState {
    /// Nothing: never dumped, or the image was deleted.
    None,
    /// A dump finished and was renamed into place: restorable.
    Complete,
    /// `<dir>.partial` holding criu's `stats-dump`: the dump finished and
    /// the daemon died between criu's end and the rename. [`promote_partial`] completes it.
    PartialFinished,
    /// `<dir>.partial` without it: a dump that failed or is still running
    /// (check for a criu process before deleting it).
    PartialUnfinished,
}

fn partial_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(PARTIAL_SUFFIX);
    PathBuf::from(s)
}

/// The state of the images for `dir` (see [`ImageState`]).
pub fn image_state(dir: &Path) -> ImageState {
    if dir.join("inventory.img").is_file() {
        return ImageState::Complete;
    }
    let partial = partial_dir(dir);
    if !partial.is_dir() {
        return ImageState::None;
    }
    if partial.join(DUMP_DONE_FILE).is_file() {
        ImageState::PartialFinished
    } else {
        ImageState::PartialUnfinished
    }
}

/// Renames a finished `<dir>.partial` into place (recovery after a daemon
/// died between the end of criu and the rename).
pub fn promote_partial(dir: &Path) -> Result<()> {
    if image_state(dir) != ImageState::PartialFinished {
        return Err(CriuError::NoImage {
            dir: dir.to_path_buf(),
        });
    }
    fs::rename(partial_dir(dir), dir).map_err(io_err("rename", dir))
}

/// Deletes an image (complete or partial). Not an error when there is none.
pub fn remove_image(dir: &Path) -> Result<()> {
    for d in [dir.to_path_buf(), partial_dir(dir)] {
        match fs::remove_dir_all(&d) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            r => r.map_err(io_err("remove", &d))?,
        }
    }
    Ok(())
}

/// Bytes the images under `dir` take on disk: allocated blocks
/// (st_blocks, as `du` counts them), not file sizes, so a sparse or
/// compressed file counts what it costs (regular files, not recursive:
/// CRIU writes a flat directory).
pub fn image_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
        if meta.is_file() {
            total += meta.blocks() * 512;
        }
    }
    Ok(total)
}

/// The blocks on disk of the other images in `dir`'s parent (every gate's
/// images live side by side in `hibernate_dir`), complete or being
/// written: what the disk budget has already spent.
pub fn images_beside_bytes(dir: &Path) -> Result<u64> {
    let Some(parent) = dir.parent() else {
        return Ok(0);
    };
    let mine = [dir.to_path_buf(), partial_dir(dir)];
    let entries = match fs::read_dir(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        r => r.map_err(io_err("list", parent))?,
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry.map_err(io_err("list", parent))?;
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && !mine.contains(&path) {
            total += image_bytes(&path)?;
        }
    }
    Ok(total)
}

/// The files of an image that hold memory pages (`pages-N.img`).
pub fn pages_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("pages-") && name.ends_with(".img") {
            out.push(entry.path());
        }
    }
    Ok(out)
}

/// Writes [`SIZES_FILE`]: every `*.img` file's size, as the dump left it.
fn write_sizes(dir: &Path) -> Result<()> {
    let mut text = String::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".img") {
            let meta = entry.metadata().map_err(io_err("stat", &entry.path()))?;
            text.push_str(&format!("{name} {}\n", meta.len()));
        }
    }
    let path = dir.join(SIZES_FILE);
    fs::write(&path, text).map_err(io_err("write", &path))
}

/// Checks the image files against [`SIZES_FILE`] (an image without one, a
/// dump promoted after a daemon died, passes: nothing to check against).
pub fn check_sizes(dir: &Path) -> Result<()> {
    let path = dir.join(SIZES_FILE);
    let text = match fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r.map_err(io_err("read", &path))?,
    };
    let damaged = |why: String| CriuError::Damaged {
        dir: dir.to_path_buf(),
        why,
    };
    for line in text.lines() {
        let Some((name, want)) = line.rsplit_once(' ') else {
            return Err(damaged(format!("{SIZES_FILE}: {line:?}")));
        };
        let want: u64 = want
            .parse()
            .map_err(|_| damaged(format!("{SIZES_FILE}: {line:?}")))?;
        match fs::metadata(dir.join(name)) {
            Ok(m) if m.len() == want => {}
            Ok(m) => {
                return Err(damaged(format!(
                    "{name} is {} bytes, the dump wrote {want}",
                    m.len()
                )))
            }
            Err(e) => return Err(damaged(format!("{name}: {e}"))),
        }
    }
    Ok(())
}

/// Sends SIGCONT to every member of `cg`: a tree restored with
/// `--leave-stopped` goes on. Stopped tasks cannot fork, so the list is
/// the whole tree.
pub fn continue_stopped(cg: &Cgroup) -> Result<()> {
    for pid in cg.read_procs()? {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
    Ok(())
}

/// The key under which CRIU's images name a pipe: "pipe:[INODE]", as
/// readlink(/proc/PID/fd/N) shows it.
pub fn pipe_key(fd: &impl AsRawFd) -> io::Result<String> {
    // SAFETY: fstat on a descriptor we own into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a pipe"));
    }
    Ok(format!("pipe:[{}]", st.st_ino))
}

/// The directory that will hold images, made safe for root to write a
/// gate's heap into by path:
/// - every directory above it is root's and writable by no one else, or
///   sticky (/tmp: others cannot rename or remove root's entries there),
///   and none is a symlink, so nobody can redirect the path later;
/// - missing components are created 0700;
/// - the directory itself must be root's; its mode is set to 0700 through
///   a descriptor opened with O_NOFOLLOW, never by path: a chmod by path
///   follows a symlink put in its place.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    let unsafe_dir = |at: &Path, found: String| CriuError::UnsafeDir {
        dir: at.to_path_buf(),
        found,
    };
    if !dir.is_absolute() {
        return Err(unsafe_dir(dir, "a relative path".into()));
    }
    let mut above: Vec<&Path> = dir.ancestors().skip(1).collect();
    above.reverse();
    for (i, a) in above.iter().chain([&dir]).enumerate() {
        let last = i == above.len();
        let meta = match fs::symlink_metadata(a) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(0o700).create(a) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_err("mkdir", a)(e))
                    }
                    _ => {}
                }
                fs::symlink_metadata(a).map_err(io_err("stat", a))?
            }
            r => r.map_err(io_err("stat", a))?,
        };
        let kind = if meta.file_type().is_symlink() {
            Kind::Symlink
        } else if meta.is_dir() {
            Kind::Dir
        } else {
            Kind::Other
        };
        let why = if last {
            unsafe_images_dir(kind, meta.uid())
        } else {
            unsafe_parent(kind, meta.uid(), meta.mode())
        };
        if let Some(why) = why {
            return Err(unsafe_dir(
                a,
                format!("{why}: uid {} mode {:o}", meta.uid(), meta.mode() & 0o7777),
            ));
        }
    }
    // The last component, as a descriptor that cannot be a symlink.
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|e| CriuError::Io {
        op: "path",
        path: dir.to_path_buf(),
        error: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: open(2) on a NUL-terminated path; the fd is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io_err("open", dir)(io::Error::last_os_error()));
    }
    // SAFETY: a fresh fd nothing else owns.
    let f = fs::File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    let meta = f.metadata().map_err(io_err("stat", dir))?;
    if meta.uid() != 0 {
        return Err(unsafe_dir(dir, format!("uid {}", meta.uid())));
    }
    if meta.mode() & 0o7777 != 0o700 {
        f.set_permissions(fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", dir))?;
    }
    Ok(())
}

/// What `lstat` found at a component of the images' path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Symlink,
    Other,
}

/// Why a directory above the images would let someone else redirect the
/// path (None: it is safe). Pure.
fn unsafe_parent(kind: Kind, uid: u32, mode: u32) -> Option<&'static str> {
    match kind {
        Kind::Symlink => Some("a symlink above the images directory"),
        Kind::Other => Some("not a directory"),
        Kind::Dir if uid != 0 => Some("a directory above the images not owned by root"),
        Kind::Dir if mode & 0o022 != 0 && mode & libc::S_ISVTX == 0 => {
            Some("a directory above the images that others may write to")
        }
        Kind::Dir => None,
    }
}

/// Why the images directory itself is not fit (None: it is). Pure.
fn unsafe_images_dir(kind: Kind, uid: u32) -> Option<&'static str> {
    match kind {
        Kind::Symlink => Some("a symlink, not a directory (never chmod'ed through)"),
        Kind::Other => Some("not a directory"),
        Kind::Dir if uid != 0 => Some("not owned by root"),
        Kind::Dir => None,
    }
}

impl Criu {
    /// Finds criu: `explicit` (the policy's path) if given, else the first
    /// `criu` on PATH; then checks that it is >= [`MIN_VERSION`].
    pub fn find(explicit: Option<&Path>) -> Result<Criu> {
        let path = match explicit {
            Some(p) => {
                if !is_executable(p) {
                    return Err(CriuError::NotFound {
                        looked: p.display().to_string(),
                    });
                }
                p.to_path_buf()
            }
            None => {
                let path_var = std::env::var_os("PATH").unwrap_or_default();
                search_path(&path_var, "criu").ok_or_else(|| CriuError::NotFound {
                    looked: format!("criu on PATH={}", path_var.to_string_lossy()),
                })?
            }
        };
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map_err(io_err("run", &path))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text).ok_or_else(|| CriuError::NoVersion {
            path: path.clone(),
            output: text.trim().to_string(),
        })?;
        if version < MIN_VERSION {
            return Err(CriuError::TooOld {
                path,
                found: version,
            });
        }
        let lazy_pages = check_lazy_pages(&path);
        Ok(Criu {
            path,
            version,
            lazy_pages,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// Can this criu restore lazily on this kernel: `criu check --feature
    /// uffd-noncoop` (userfaultfd with fork/remap events, which a tree
    /// that runs while its pages arrive needs), asked when it was found.
    pub fn lazy_pages_supported(&self) -> bool {
        self.lazy_pages
    }

    /// Starts `criu lazy-pages -D DIR` (in our own cgroup and its own
    /// process group, so neither the tree's cgroup nor a signal to ours
    /// reaches it) and returns once it listens on DIR/lazy-pages.socket.
    fn start_lazy_pages(
        &self,
        dir: &Path,
        tree: &Cgroup,
        timeout: Duration,
    ) -> Result<crate::lazy::LazyPages> {
        let socket = dir.join("lazy-pages.socket");
        match fs::remove_file(&socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &socket)(e))
            }
            _ => {}
        }
        let (ready, tell) = nix::unistd::pipe().map_err(|e| CriuError::Io {
            op: "pipe",
            path: dir.to_path_buf(),
            error: e.into(),
        })?;
        let mut cmd = self.command("lazy-pages", dir);
        cmd.arg("--status-fd")
            .arg(tell.as_raw_fd().to_string())
            .process_group(0);
        let child = spawn(&mut cmd, &self.path, None, &[tell.as_raw_fd()])?;
        drop(tell);
        crate::lazy::LazyPages::started(child, tree, ready, crate::lazy::log_path(dir), timeout)
    }

    /// Dumps the tree rooted at `req.pid` into `req.dir`; the tree is gone
    /// afterwards (criu kills it once the image is written) and its cgroup
    /// empty, or, with `req.leave_running`, whole and frozen still.
    ///
    /// Before: the cgroup holds exactly the tree and is frozen (the gate is
    /// suspended); `req.dir` does not exist. After Ok: `req.dir` holds a
    /// complete image (0700, files 0600), the cgroup is empty (and thawed:
    /// criu thaws it once it has killed the tree). After `Failed`: the tree is intact (criu only seized it and
    /// lets go; callers freeze it again, as [`crate::hibernate::hibernate`]
    /// does), `<dir>.partial` holds the log (delete it with
    /// [`remove_image`] once its reason is recorded).
    pub fn dump(&self, req: &DumpRequest) -> Result<DumpReport> {
        if image_state(req.dir) != ImageState::None {
            return Err(CriuError::ImageExists {
                dir: req.dir.to_path_buf(),
            });
        }
        let work = partial_dir(req.dir);
        if let Some(parent) = req.dir.parent() {
            ensure_private_dir(parent)?;
        }
        // A partial dir left by a dump that never finished is garbage.
        remove_image(req.dir)?;
        ensure_private_dir(&work)?;
        let mut cmd = self.command("dump", &work);
        cmd.arg("-t")
            .arg(req.pid.to_string())
            // Both: a v2-frozen cgroup must be named, or criu hangs.
            .arg("--freeze-cgroup")
            .arg(req.cgroup.path())
            .arg("--ext-unix-sk");
        if req.tcp_established {
            cmd.arg("--tcp-established")
                .arg("--network-lock")
                .arg(req.network_lock.as_str());
        }
        if req.leave_running {
            cmd.arg("--leave-running");
        }
        let start = Instant::now();
        let log = work.join("dump.log");
        let child = spawn(&mut cmd, &self.path, None, &[])?;
        let status = match wait_bounded(child, req.timeout)? {
            Waited::Exited(s) => s,
            Waited::Running(child) => {
                let pid = child.id();
                reap_in_background(child);
                return Err(CriuError::StillRunning {
                    op: "dump",
                    pid,
                    waited: start.elapsed(),
                    log_tail: log_tail(&log),
                    log,
                });
            }
        };
        let elapsed = start.elapsed();
        if !status.success() {
            return Err(CriuError::Failed {
                op: "dump",
                status: status.to_string(),
                log_tail: log_tail(&log),
                log,
            });
        }
        write_sizes(&work)?;
        private_files(&work)?;
        let image_bytes = image_bytes(&work)?;
        fs::rename(&work, req.dir).map_err(io_err("rename", &work))?;
        if !req.leave_running {
            // criu has killed the tree; the kernel empties the cgroup as the
            // last task exits, which can trail criu's own exit a little.
            req.cgroup
                .wait_events("populated 0", Duration::from_secs(5), |e| !e.populated)?;
        }
        Ok(DumpReport {
            elapsed,
            image_bytes,
        })
    }

    /// Restores the image in `req.dir` into `req.cgroup` and leaves it
    /// running (`--restore-detached`): the restored root is reparented to
    /// the nearest subreaper above criu, or to init.
    ///
    /// Before: a complete image; the cgroup exists, is empty and thawed;
    /// every inherited pipe is still held by its other end's owner. After
    /// Ok: the tree runs in the cgroup, the image is kept (delete it when
    /// the restore proved good). After an error: the image is untouched, the
    /// cgroup empty (criu kills what it restored when it fails; a timeout
    /// kills criu and the cgroup), so the restore can be tried again.
    ///
    /// With `req.lazy` the tree comes back stopped whatever
    /// `leave_stopped` says: gov first takes its own copies of the tree's
    /// userfaultfds ([`crate::lazy`]), then continues it unless the caller
    /// asked to. The returned daemon must be finished before the image goes.
    pub fn restore(&self, req: RestoreRequest) -> Result<Restored> {
        if image_state(req.dir) != ImageState::Complete {
            return Err(CriuError::NoImage {
                dir: req.dir.to_path_buf(),
            });
        }
        check_sizes(req.dir)?;
        let path = req.cgroup.path().to_path_buf();
        if req.cgroup.read_file("cgroup.freeze")?.trim() != "0" {
            return Err(CriuError::NotReady {
                path,
                why: "the cgroup is frozen (criu would hang): thaw it first",
            });
        }
        if req.cgroup.read_cgroup_events()?.populated {
            return Err(CriuError::NotReady {
                path,
                why: "the cgroup still has processes",
            });
        }
        let pidfile = req.dir.join("restore.pid");
        match fs::remove_file(&pidfile) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_err("remove", &pidfile)(e))
            }
            _ => {}
        }
        // Started first: the restore connects to it. Dropped on any error
        // below, which kills it and whatever was restored.
        let mut lazy = match req.lazy {
            true => Some(self.start_lazy_pages(req.dir, req.cgroup, req.timeout)?),
            false => None,
        };
        let mut cmd = self.command("restore", req.dir);
        cmd.arg("--restore-detached")
            .arg("--pidfile")
            .arg(&pidfile)
            .arg("--ext-unix-sk");
        if req.leave_stopped || lazy.is_some() {
            cmd.arg("--leave-stopped");
        }
        if lazy.is_some() {
            cmd.arg("--lazy-pages");
        }
        if req.tcp_established {
            cmd.arg("--tcp-established")
                .arg("--network-lock")
                .arg(req.network_lock.as_str());
        }
        for inh in &req.inherit {
            cmd.arg("--inherit-fd")
                .arg(format!("fd[{}]:{}", inh.fd.as_raw_fd(), inh.key));
        }
        let procs = req.cgroup.path().join("cgroup.procs");
        let inherit: Vec<i32> = req.inherit.iter().map(|i| i.fd.as_raw_fd()).collect();
        let start = Instant::now();
        let log = req.dir.join("restore.log");
        let child = spawn(&mut cmd, &self.path, Some(&procs), &inherit)?;
        drop(req.inherit);
        let status = match wait_bounded(child, req.timeout)? {
            Waited::Exited(s) => s,
            Waited::Running(mut child) => {
                // Unlike a dump, a restore may be killed: the image stays.
                let _ = child.kill();
                let _ = child.wait();
                let _ = req.cgroup.kill_all(Duration::from_secs(10));
                remove_cgroup_yard(req.dir);
                return Err(CriuError::TimedOut {
                    op: "restore",
                    waited: start.elapsed(),
                    log_tail: log_tail(&log),
                    log,
                });
            }
        };
        let elapsed = start.elapsed();
        if !status.success() {
            // criu kills a partly restored tree itself; make sure.
            let _ = req.cgroup.kill_all(Duration::from_secs(10));
            return Err(CriuError::Failed {
                op: "restore",
                status: status.to_string(),
                log_tail: log_tail(&log),
                log,
            });
        }
        let text = fs::read_to_string(&pidfile).map_err(io_err("read", &pidfile))?;
        let pid = text.trim().parse::<u32>().map_err(|e| CriuError::Io {
            op: "parse",
            path: pidfile.clone(),
            error: io::Error::new(io::ErrorKind::InvalidData, format!("{text:?}: {e}")),
        })?;
        if let Some(lazy) = &mut lazy {
            lazy.hold_uffds()?;
            if !req.leave_stopped {
                continue_stopped(req.cgroup)?;
            }
        }
        Ok(Restored {
            report: RestoreReport {
                elapsed,
                pid,
                memory_back: None,
            },
            lazy,
        })
    }

    /// `criu OP -D DIR -o OP.log`, output to OP.stderr in DIR (criu's own
    /// early errors, before its log is open, go there).
    fn command(&self, op: &str, dir: &Path) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(op)
            .arg("-D")
            .arg(dir)
            .arg("-o")
            .arg(format!("{op}.log"))
            .stdin(Stdio::null());
        let err = fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode_private()
            .open(dir.join(format!("{op}.stderr")));
        match err {
            Ok(f) => {
                let f2 = f.try_clone().ok();
                cmd.stderr(f);
                if let Some(f2) = f2 {
                    cmd.stdout(f2);
                }
            }
            Err(_) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd
    }
}

trait ModePrivate {
    fn mode_private(&mut self) -> &mut Self;
}

impl ModePrivate for fs::OpenOptions {
    fn mode_private(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
    }
}

/// See [`Criu::lazy_pages_supported`].
fn check_lazy_pages(criu: &Path) -> bool {
    Command::new(criu)
        .args(["check", "--feature", "uffd-noncoop"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first executable `name` in a PATH value.
pub fn search_path(path_var: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// Spawns criu with umask 077 (its images hold the heap), optionally moved
/// into a cgroup first (writing "0" to cgroup.procs moves the writer), and
/// with `inherit` fds left open across exec.
fn spawn(
    cmd: &mut Command,
    path: &Path,
    cgroup_procs: Option<&Path>,
    inherit: &[i32],
) -> Result<Child> {
    let procs = cgroup_procs
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(|e| CriuError::Io {
            op: "path",
            path: path.to_path_buf(),
            error: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
    let inherit = inherit.to_vec();
    // SAFETY: the closure runs between fork and exec and calls only
    // async-signal-safe functions (umask, open, write, close, fcntl) on data
    // prepared before the fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(0o077);
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let r = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if r != 1 {
                    return Err(err);
                }
            }
            for &fd in &inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(io_err("run", path))
}

pub(crate) enum Waited {
    Exited(ExitStatus),
    Running(Child),
}

/// Waits for a child up to `timeout` on its pidfd (readable when it exits).
pub(crate) fn wait_bounded(mut child: Child, timeout: Duration) -> Result<Waited> {
    let pidfd =
        crate::proc::pidfd_open(child.id()).map_err(io_err("pidfd_open", Path::new("criu")))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err("wait", Path::new("criu")))?
        {
            return Ok(Waited::Exited(status));
        }
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(Waited::Running(child));
        }
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }
}

/// A criu left running gets a thread that reaps it, so it never lingers as
/// a zombie, and says when it ended.
fn reap_in_background(mut child: Child) {
    let pid = child.id();
    let _ = std::thread::Builder::new()
        .name(format!("criu-{pid}"))
        .spawn(move || match child.wait() {
            Ok(s) => tracing::warn!(pid, %s, "a criu left running past its deadline ended"),
            Err(e) => tracing::warn!(pid, "waiting for criu: {e}"),
        });
}

/// The prefix of the directory where a restoring criu mounts the cgroup
/// hierarchies (a tmpfs, then one mount per hierarchy) and unmounts them
/// when it ends; a criu killed mid-restore leaves them mounted.
const CGROUP_YARD_PREFIX: &str = ".criu.cgyard.";

/// Detaches and removes a cgroup yard a killed criu left in `dir` (found
/// here: 11 mounts per killed restore on a hybrid host, which also made
/// the image directory impossible to delete).
fn remove_cgroup_yard(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(CGROUP_YARD_PREFIX)
        {
            continue;
        }
        let path = entry.path();
        // MNT_DETACH takes the mounts below it along; never follow a link.
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            // SAFETY: umount2(2) on a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        }
        let _ = fs::remove_dir(&path);
    }
}

/// Every file CRIU wrote, made 0600 (the umask already asks for it; this
/// makes sure whatever criu's own open() modes were).
fn private_files(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let p = entry.path();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(io_err("chmod", &p))?;
    }
    Ok(())
}

/// The last lines of a log, the lines saying "Error" first when there are
/// any: CRIU's reason is an Error line, often followed by cleanup chatter.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    // The reason is near the end; a 1 GiB dump's log is large.
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    tail_of(&String::from_utf8_lossy(&buf))
}

/// See [`log_tail`]; pure, for tests.
pub fn tail_of(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.trim().is_empty() && !NOISE.iter().any(|n| l.contains(n)))
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.contains("Error") || l.contains("error"))
        .collect();
    let pick = if errors.is_empty() { &lines } else { &errors };
    let from = pick.len().saturating_sub(LOG_TAIL_LINES);
    pick[from..]
        .iter()
        .map(|l| strip_log_prefix(l))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// "(00.012345) Error (criu/foo.c:12): msg" -> "Error (criu/foo.c:12): msg"
fn strip_log_prefix(line: &str) -> &str {
    let t = line.trim();
    match t.strip_prefix('(').and_then(|r| r.split_once(") ")) {
        Some((stamp, rest)) if stamp.chars().all(|c| c.is_ascii_digit() || c == '.') => rest,
        _ => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("Version: 4.2.1\n"), Some(Version(4, 2, 1)));
        assert_eq!(
            parse_version("Version: 4.2\nGitID: v4.2\n"),
            Some(Version(4, 2, 0))
        );
        assert_eq!(parse_version("Version: 3.17.1\n"), Some(Version(3, 17, 1)));
        assert_eq!(parse_version("Version: 4.3-rc1\n"), Some(Version(4, 3, 0)));
        assert_eq!(parse_version("criu: command not found"), None);
        assert_eq!(parse_version("Version: x"), None);
        assert!(Version(3, 17, 1) < MIN_VERSION);
        assert!(Version(4, 1, 1) < MIN_VERSION);
        assert!(Version(4, 2, 0) >= MIN_VERSION);
        assert!(Version(5, 0, 0) >= MIN_VERSION);
    }

    #[test]
    fn the_tail_shows_errors_without_timestamps() {
        let log = "(00.000100) Dumping task\n(00.012345) Error (criu/uring.c:7): io_uring is not supported\n(00.02) Unfreezing tasks\n";
        assert_eq!(
            tail_of(log),
            "Error (criu/uring.c:7): io_uring is not supported"
        );
        assert_eq!(tail_of("(0.1) a\n(0.2) b\n"), "a | b");
        assert_eq!(
            tail_of("(0.1) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self\n(0.2) Error (x): real\n"),
            "Error (x): real"
        );
    }

    #[test]
    fn path_search_finds_executables_only() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("a");
        fs::create_dir(&plain).unwrap();
        fs::write(plain.join("criu"), "").unwrap();
        let exe = dir.path().join("b");
        fs::create_dir(&exe).unwrap();
        fs::write(exe.join("criu"), "").unwrap();
        fs::set_permissions(exe.join("criu"), fs::Permissions::from_mode(0o755)).unwrap();
        let var = std::env::join_paths([&plain, &exe]).unwrap();
        assert_eq!(search_path(&var, "criu"), Some(exe.join("criu")));
        assert_eq!(search_path(OsStr::new(""), "criu"), None);
        let err = Criu::find(Some(&plain.join("criu"))).unwrap_err();
        assert!(matches!(err, CriuError::NotFound { .. }), "{err}");
    }

    #[test]
    fn image_states_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("g1");
        assert_eq!(image_state(&img), ImageState::None);
        let partial = partial_dir(&img);
        fs::create_dir(&partial).unwrap();
        fs::write(partial.join("dump.log"), "(0.1) Dumping\n").unwrap();
        assert_eq!(image_state(&img), ImageState::PartialUnfinished);
        assert!(promote_partial(&img).is_err());
        fs::write(partial.join("inventory.img"), "x").unwrap();
        fs::write(partial.join(DUMP_DONE_FILE), "").unwrap();
        assert_eq!(image_state(&img), ImageState::PartialFinished);
        promote_partial(&img).unwrap();
        assert_eq!(image_state(&img), ImageState::Complete);
        // Blocks on disk, as du counts them: a 1-byte file takes a block.
        assert!(image_bytes(&img).unwrap() >= 512);
        assert_eq!(
            image_bytes(&img).unwrap() % 512,
            0,
            "whole blocks, not file sizes"
        );
        check_sizes(&img).unwrap();
        write_sizes(&img).unwrap();
        check_sizes(&img).unwrap();
        fs::write(img.join("inventory.img"), "").unwrap();
        let err = check_sizes(&img).unwrap_err();
        assert!(
            err.to_string()
                .contains("inventory.img is 0 bytes, the dump wrote 1"),
            "{err}"
        );
        fs::write(img.join("inventory.img"), "x").unwrap();
        // The budget counts the images beside this one, not this one.
        let other = dir.path().join("g2");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("pages-1.img"), vec![1u8; 64 << 10]).unwrap();
        assert_eq!(
            images_beside_bytes(&img).unwrap(),
            image_bytes(&other).unwrap()
        );
        assert!(images_beside_bytes(&img).unwrap() >= 64 << 10);
        assert_eq!(
            images_beside_bytes(&other).unwrap(),
            image_bytes(&img).unwrap()
        );
        remove_image(&img).unwrap();
        assert_eq!(image_state(&img), ImageState::None);
        remove_image(&img).unwrap();
    }

    #[test]
    fn images_live_below_directories_only_root_controls() {
        assert_eq!(unsafe_parent(Kind::Dir, 0, 0o40755), None);
        // /tmp: others write there, but cannot move root's entries.
        assert_eq!(unsafe_parent(Kind::Dir, 0, 0o41777), None);
        assert!(unsafe_parent(Kind::Dir, 0, 0o40777).is_some());
        assert!(unsafe_parent(Kind::Dir, 0, 0o40775).is_some());
        assert!(unsafe_parent(Kind::Dir, 1000, 0o40755).is_some());
        assert!(unsafe_parent(Kind::Symlink, 0, 0o120777).is_some());
        assert!(unsafe_parent(Kind::Other, 0, 0o100644).is_some());
        assert_eq!(unsafe_images_dir(Kind::Dir, 0), None);
        assert!(unsafe_images_dir(Kind::Dir, 65534).is_some());
        assert!(unsafe_images_dir(Kind::Symlink, 0).is_some());
    }

    #[test]
    fn pipe_keys_name_the_inode() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let key = pipe_key(&r).unwrap();
        assert!(key.starts_with("pipe:[") && key.ends_with(']'), "{key}");
        let link = fs::read_link(format!("/proc/self/fd/{}", r.as_raw_fd())).unwrap();
        assert_eq!(link.to_string_lossy(), key);
        let f = fs::File::open("/dev/null").unwrap();
        assert!(pipe_key(&f).is_err());
    }
}
