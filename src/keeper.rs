//! The keeper: the process a host knows, alive while its worker hibernates.
//!
//! A host started the gate: it holds the gate's pid, its stdio pipes, and
//! may wait(2) on it. CRIU's dump ends the dumped tree, and a restore gives
//! it new pids (host-side), so a host holding the worker itself would see
//! an exit. So a hibernatable gate's main process is this small keeper:
//!
//! ```text
//! host ──pipes/tty──> keeper (gate cgroup; the pid the host knows)
//!                       │  relays stdio through pipes it owns
//!                       └─ ns-init (pid 1 of a new pid namespace, cgroup <gate>/w)
//!                            └─ CMD's parent (pid 2, the user's)
//!                                 └─ CMD (pid 3), its children...
//! ```
//!
//! - The worker tree runs in a pid namespace of its own, so a restore gets
//!   its pids back (inside the namespace they are the same ones).
//! - Its stdio are pipes whose other ends the keeper holds and relays to the
//!   host's stdio. The keeper also keeps a copy of the worker's ends at
//!   fixed descriptors ([`WORKER_FDS`]), so a restore can hand the very
//!   same pipes back with `--inherit-fd` (see [`inherit_fds`]); bytes the
//!   worker wrote before the dump are still in the pipe.
//! - ns-init is a fork of the keeper: it starts CMD, forwards signals to
//!   it, reaps orphans (pid 1's duty), and reports CMD's exit status
//!   through a pipe, since after a restore it is no longer the keeper's
//!   child and wait(2) cannot reach it.
//! - CMD's parent is not ns-init but a fork of it that became the user
//!   ([`cmd_parent`]): it passes signals on to CMD and ends as CMD ended.
//!   With ns-init as its parent, CMD's getppid() would be 1, which servers
//!   such as ipykernel take for their parent's death.
//! - The keeper forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2
//!   to CMD through a signal pipe (a byte per signal) read by ns-init:
//!   pids change across a restore, a pipe does not.
//! - When CMD exits, ns-init writes its status and exits (the kernel then
//!   kills what is left of the namespace, as `docker run --init` does);
//!   the keeper passes the rest of the output on and exits with CMD's
//!   status (a signal is re-raised, so the host's wait sees the same).
//! - ns-init dying without a status is a hibernation when the daemon said
//!   so first: it sends [`hold_signal`] (a queued real-time signal, value 1) before
//!   a dump or a restore, and the same with value 0 after a dump that failed or
//!   a restore that worked. While held, the keeper rides out an empty worker
//!   cgroup (state `Held`) until it is populated again by a restore. Without
//!   a hold the worker died abnormally and the keeper exits as it did.
//!   (The worker cgroup's own `cgroup.freeze` cannot serve as the mark:
//!   criu thaws the cgroup once the dumped tree is killed.)
//! - Starting the pid namespace takes CAP_SYS_ADMIN: a keeper started by
//!   root forks ns-init itself. For an unprivileged host the daemon will
//!   have to start the worker (see docs/design.md, "Hibernation").
//!
//! Cgroups: the keeper stays in the gate's cgroup, the worker tree lives in
//! the child `<gate>/w` ([`WORKER_CGROUP`]), so `criu --freeze-cgroup
//! <gate>/w` sees exactly the dumped tree. cgroup v2 allows processes in a
//! cgroup that has children as long as that cgroup enables no controllers
//! for its children (cgroup.subtree_control empty), which gov never does
//! in a gate: limits written on `<gate>` (memory.max, pids.max) cover the
//! keeper and the worker together, on pure v2 as on hybrid hosts (where v2
//! has no controllers at all). The freezer and cgroup.kill are core files,
//! present in every cgroup, so `<gate>/w` can be frozen alone.
//!
//! Limits: the worker's stdio are pipes, never a tty (isatty() is false);
//! descriptors other than 0, 1, 2 are not passed on; CMD's orphans die with
//! CMD (namespace teardown).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

use crate::criu::InheritFd;

/// The child cgroup of a gate that holds its worker tree.
pub const WORKER_CGROUP: &str = "w";

/// The keeper's copies of the worker's ends, at fixed numbers so the
/// daemon finds them (pidfd_getfd) for `--inherit-fd` at restore:
/// stdin (read end), stdout and stderr (write ends), the status pipe
/// (write end) and the signal pipe (read end).
pub const FD_WORKER_STDIN: RawFd = 10;
pub const FD_WORKER_STDOUT: RawFd = 11;
pub const FD_WORKER_STDERR: RawFd = 12;
pub const FD_STATUS: RawFd = 13;
pub const FD_SIGNAL: RawFd = 14;
pub const WORKER_FDS: [RawFd; 5] = [
    FD_WORKER_STDIN,
    FD_WORKER_STDOUT,
    FD_WORKER_STDERR,
    FD_STATUS,
    FD_SIGNAL,
];

/// Signals the keeper passes on to CMD.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Sent by the daemon before a dump or a restore with the value 1 ("the
/// worker may vanish without a word: dumped, or a restore that failed;
/// hold"), and after a dump that failed or a restore that worked with 0 ("a
/// worker that ends from now on really ended"). One real-time signal for
/// both, its meaning in the value: signals of one number are queued in the
/// order sent, where two numbers would be delivered lowest first (a hold and
/// a release pending at once, as when the keeper was frozen between them,
/// would then come out in the wrong order).
pub fn hold_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

/// A keeper the daemon acts on: its pid and the start time that names it
/// for good (a recycled pid gets a later one). Every signal, fd borrowed or
/// procfs read goes through [`Keeper::pidfd`], never through the bare pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keeper {
    pub pid: u32,
    pub start: u64,
}

impl Keeper {
    /// The process that has `pid` now (for tests and tools that just
    /// started it).
    pub fn now(pid: u32) -> Option<Keeper> {
        Some(Keeper {
            pid,
            start: crate::proc::start_time(pid)?,
        })
    }

    /// A pidfd on this very keeper. The pidfd is opened first and the
    /// pid's start time checked after: had the keeper ended and its pid
    /// been recycled before the open, the start time would differ.
    pub fn pidfd(&self) -> io::Result<OwnedFd> {
        let fd = crate::proc::pidfd_open(self.pid)?;
        if crate::proc::start_time(self.pid) != Some(self.start) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        Ok(fd)
    }
}

/// The kernel's siginfo for a queued signal (SI_QUEUE), as sigqueue(3)
/// fills it: libc's `siginfo_t` has no setters for the union's fields.
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _align: i32,
    pid: i32,
    uid: u32,
    value: usize,
    _rest: [u8; 96],
}

// The kernel copies exactly this much (SI_MAX_SIZE).
const _: () = assert!(std::mem::size_of::<QueuedInfo>() == 128);

fn send_hold(keeper: Keeper, on: bool) -> io::Result<()> {
    let pidfd = keeper.pidfd()?;
    let info = QueuedInfo {
        signo: hold_signal(),
        errno: 0,
        code: libc::SI_QUEUE,
        _align: 0,
        pid: std::process::id() as i32,
        uid: nix::unistd::getuid().as_raw(),
        value: usize::from(on),
        _rest: [0; 96],
    };
    // SAFETY: pidfd_send_signal with a valid pidfd and a 128-byte siginfo
    // laid out as the kernel's (SI_QUEUE: pid, uid, value).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            hold_signal(),
            &info as *const QueuedInfo,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Tells `keeper` to hold through the coming dump. Call it before
/// [`crate::criu::Criu::dump`]; the signal is queued at once, so the keeper
/// sees it before it can see its worker gone.
pub fn hold(keeper: Keeper) -> io::Result<()> {
    send_hold(keeper, true)
}

/// Ends a [`hold`]: call it after a dump that failed and after a restore
/// that worked. (criu's restore runs inside the worker cgroup, so the keeper
/// sees it populated before the restore is done; a failed restore empties
/// it again, which a held keeper rides out.)
pub fn release(keeper: Keeper) -> io::Result<()> {
    send_hold(keeper, false)
}

/// Everything the keeper takes through its signalfd.
fn keeper_mask() -> SigSet {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    for s in FORWARDED {
        mask.add(s);
    }
    let mut raw: libc::sigset_t = *mask.as_ref();
    // SAFETY: adding valid real-time signal numbers to a sigset.
    unsafe {
        libc::sigaddset(&mut raw, hold_signal());
        SigSet::from_sigset_t_unchecked(raw)
    }
}

/// Bytes relayed per read: a pipe page.
const CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum KeeperError {
    #[error("keeper: {op}: {error}")]
    Sys { op: &'static str, error: Errno },
    #[error("keeper: {op} {path}: {error}")]
    Io {
        op: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("gov keeper --init (starting the worker) failed: {status}")]
    Init { status: String },
    #[error("process {pid} is not a keeper: fd {fd} is not a pipe ({why})")]
    NotAKeeper { pid: u32, fd: RawFd, why: String },
}

fn sys(op: &'static str) -> impl FnOnce(Errno) -> KeeperError {
    move |error| KeeperError::Sys { op, error }
}

/// How CMD ended, as ns-init reports it on the status pipe: one line,
/// "exit N" or "signal N" (a write under PIPE_BUF is atomic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exit(i32),
    Signal(i32),
}

impl Ended {
    pub fn to_line(self) -> String {
        match self {
            Ended::Exit(c) => format!("exit {c}\n"),
            Ended::Signal(s) => format!("signal {s}\n"),
        }
    }

    pub fn parse(line: &str) -> Option<Ended> {
        let (kind, n) = line.trim().split_once(' ')?;
        let n = n.parse().ok()?;
        match kind {
            "exit" => Some(Ended::Exit(n)),
            "signal" => Some(Ended::Signal(n)),
            _ => None,
        }
    }

    fn of(status: WaitStatus) -> Option<Ended> {
        match status {
            WaitStatus::Exited(_, c) => Some(Ended::Exit(c)),
            WaitStatus::Signaled(_, s, _) => Some(Ended::Signal(s as i32)),
            _ => None,
        }
    }
}

/// The keeper's copies of the worker's pipe ends, taken from a running
/// keeper (pidfd_getfd; needs root or ptrace rights over it), ready for
/// `criu restore --inherit-fd`.
pub fn inherit_fds(keeper: Keeper) -> Result<Vec<InheritFd>, KeeperError> {
    let keeper_pid = keeper.pid;
    let pidfd = keeper.pidfd().map_err(|e| KeeperError::Io {
        op: "pidfd_open",
        path: PathBuf::from(format!("/proc/{keeper_pid}")),
        error: e,
    })?;
    let mut out = Vec::new();
    for fd in WORKER_FDS {
        // SAFETY: pidfd_getfd(pidfd, targetfd, flags) returns a new fd or -1.
        let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
        if got < 0 {
            return Err(KeeperError::NotAKeeper {
                pid: keeper_pid,
                fd,
                why: io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: a fresh fd the kernel just gave us.
        let owned = unsafe { OwnedFd::from_raw_fd(got as RawFd) };
        let key = crate::criu::pipe_key(&owned).map_err(|e| KeeperError::NotAKeeper {
            pid: keeper_pid,
            fd,
            why: e.to_string(),
        })?;
        out.push(InheritFd { fd: owned, key });
    }
    Ok(out)
}

/// Who starts the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The keeper forks ns-init itself (needs CAP_SYS_ADMIN: root).
    Fork,
    /// The daemon does ([`start_worker`]): the keeper sets up its pipes
    /// and waits, held, until the worker cgroup is populated.
    External,
}

/// A worker's credentials, for a worker the daemon starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// `gov keeper`'s entry: runs CMD below a keeper and returns the exit
/// code for this process (a signal death is re-raised and never returns).
pub fn run(worker_cgroup: &Path, cmd: &[OsString], start: Start) -> Result<i32, KeeperError> {
    // Only 0, 1, 2 go on to the worker: anything else the host leaked
    // would be an open file CRIU must find unchanged at restore.
    // SAFETY: close_range on numbers we own (nothing else is open yet
    // besides what the host passed).
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };

    let stdin = pipe()?;
    let stdout = pipe()?;
    let stderr = pipe()?;
    let status = pipe()?;
    let signal = pipe()?;
    // The worker's ends, at their fixed numbers, inherited by the fork.
    place(&stdin.0, FD_WORKER_STDIN)?;
    place(&stdout.1, FD_WORKER_STDOUT)?;
    place(&stderr.1, FD_WORKER_STDERR)?;
    place(&status.1, FD_STATUS)?;
    place(&signal.0, FD_SIGNAL)?;
    drop((stdin.0, stdout.1, stderr.1, status.1, signal.0));
    let relay = Relay {
        to_worker: stdin.1,
        from_stdout: stdout.0,
        from_stderr: stderr.0,
        status: status.0,
        signal: signal.1,
    };

    let mask = keeper_mask();
    mask.thread_block().map_err(sys("sigprocmask"))?;
    // A host that closes its end of our stdout must not kill the keeper;
    // the child resets this before it runs CMD.
    // SAFETY: setting a disposition to SIG_IGN.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

    if start == Start::External {
        // Our descriptors are in place: the daemon may start the worker.
        let cmd = cmd
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let req = crate::protocol::Request::StartWorker { cmd };
        match crate::client::request(&crate::client::socket_path(), req) {
            Ok(Some(crate::protocol::Response::Done { .. })) => {}
            other => {
                return Err(KeeperError::Io {
                    op: "ask the gov daemon to start the worker",
                    path: crate::client::socket_path(),
                    error: io::Error::other(format!("{other:?}")),
                })
            }
        }
        return keep(relay, None, worker_cgroup, mask);
    }
    // The next child is pid 1 of a new pid namespace. That takes
    // CAP_SYS_ADMIN; an unprivileged keeper needs the daemon to start its
    // worker (Start::External).
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID)
        .map_err(sys("unshare(CLONE_NEWPID) (needs CAP_SYS_ADMIN)"))?;
    let procs = worker_cgroup.join("cgroup.procs");
    // SAFETY: this process is single-threaded (the CLI starts no threads
    // before this), so the child may run ordinary Rust code.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(relay);
            let code = worker_init(&procs, cmd, mask, None);
            // SAFETY: leaving the child without running the parent's atexit.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => keep(relay, Some(child), worker_cgroup, mask),
    }
}

/// `gov keeper --init`'s entry, run by the daemon for an unprivileged
/// keeper ([`start_worker`]) as root, with a fixed environment and `/` as
/// its cwd: reads the keeper's environment from [`FD_ENVIRON`] as data,
/// then, in a new pid namespace for its children (unshared before exec) and
/// with the keeper's pipe ends at [`WORKER_FDS`], forks ns-init (which
/// starts CMD as `creds`, in the keeper's cwd [`FD_CWD`], with that
/// environment) and returns at once: ns-init's parent is then init, as
/// after a restore.
pub fn run_init(worker_cgroup: &Path, cmd: &[OsString], creds: &Creds) -> Result<i32, KeeperError> {
    // SAFETY: the daemon placed the memfd at FD_ENVIRON for us alone.
    let environ = unsafe { fs::File::from_raw_fd(FD_ENVIRON) };
    let user = User {
        creds: creds.clone(),
        env: parse_environ(&read_capped(environ, "the keeper's environment")?),
    };
    let mask = keeper_mask();
    mask.thread_block().map_err(sys("sigprocmask"))?;
    let procs = worker_cgroup.join("cgroup.procs");
    // SAFETY: `gov keeper --init` is single-threaded.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            let code = worker_init(&procs, cmd, mask, Some(&user));
            // SAFETY: leaving the child without running atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { .. } => Ok(0),
    }
}

/// Where [`start_worker`] hands `gov keeper --init` the keeper's
/// environment (a memfd of `/proc/PID/environ`'s bytes) and its working
/// directory (an `O_PATH` fd of `/proc/PID/cwd`). Neither reaches a root
/// process as environment or cwd: CMD's child applies both after it
/// dropped to the user's credentials.
pub const FD_ENVIRON: RawFd = 15;
pub const FD_CWD: RawFd = 16;

/// An environment over this is refused (the kernel caps what an exec
/// passes at 6 MiB).
const MAX_ENVIRON: u64 = 8 << 20;

/// Who CMD runs as, when the daemon started ns-init for an unprivileged
/// keeper: the keeper's credentials and environment (its cwd is at
/// [`FD_CWD`]).
#[derive(Debug, Clone)]
pub struct User {
    pub creds: Creds,
    pub env: Vec<(OsString, OsString)>,
}

/// `/proc/PID/environ`'s shape: `K=V` entries, each ended by a NUL. An
/// entry without `=` is dropped, as a shell would.
pub fn parse_environ(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    use std::os::unix::ffi::OsStrExt;
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let i = kv.iter().position(|&b| b == b'=')?;
            (i > 0).then(|| {
                (
                    OsStr::from_bytes(&kv[..i]).to_owned(),
                    OsStr::from_bytes(&kv[i + 1..]).to_owned(),
                )
            })
        })
        .collect()
}

/// All of `f` from its start, refused past [`MAX_ENVIRON`].
fn read_capped(mut f: fs::File, what: &'static str) -> Result<Vec<u8>, KeeperError> {
    use std::io::{Read, Seek, SeekFrom};
    let err = |error: io::Error| KeeperError::Io {
        op: "read",
        path: PathBuf::from(what),
        error,
    };
    f.seek(SeekFrom::Start(0)).map_err(err)?;
    let mut buf = Vec::new();
    f.take(MAX_ENVIRON + 1).read_to_end(&mut buf).map_err(err)?;
    if buf.len() as u64 > MAX_ENVIRON {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("over {MAX_ENVIRON} bytes"),
        )));
    }
    Ok(buf)
}

/// What the daemon needs to start an unprivileged keeper's worker as the
/// keeper would have: its credentials, working directory and environment.
/// Root only holds them: the directory as an fd it never enters, the
/// environment as bytes it never exports.
#[derive(Debug)]
pub struct WorkerSpec {
    pub creds: Creds,
    /// The keeper's cwd, the directory itself (`O_PATH`, through the
    /// `/proc/PID/cwd` link): never its path, which may have been deleted
    /// and replaced by a link to someone else's directory.
    pub cwd: OwnedFd,
    /// `/proc/PID/environ`, as it is.
    pub environ: Vec<u8>,
    pub cmd: Vec<OsString>,
}

impl WorkerSpec {
    /// The keeper's own credentials, cwd and environment, from procfs, for
    /// a keeper of user `owner_uid`: a keeper whose real, effective, saved
    /// and filesystem uids are not all that user is refused.
    pub fn of_keeper(
        keeper: Keeper,
        owner_uid: u32,
        cmd: Vec<OsString>,
    ) -> Result<WorkerSpec, KeeperError> {
        let pid = keeper.pid;
        let io = |op: &'static str, path: String| {
            move |error| KeeperError::Io {
                op,
                path: PathBuf::from(path),
                error,
            }
        };
        let pidfd = keeper
            .pidfd()
            .map_err(io("pidfd_open", format!("/proc/{pid}")))?;
        let status_path = format!("/proc/{pid}/status");
        let status = fs::read_to_string(&status_path).map_err(io("read", status_path.clone()))?;
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let (uids, gids) = (field("Uid:"), field("Gid:"));
        let single =
            |ids: &[u32]| (ids.len() == 4 && ids.iter().all(|&i| i == ids[0])).then(|| ids[0]);
        let (uid, gid) = match (single(&uids), single(&gids)) {
            (Some(u), Some(g)) if u == owner_uid => (u, g),
            _ => {
                return Err(KeeperError::Io {
                    op: "check",
                    path: PathBuf::from(status_path),
                    error: io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("uids {uids:?} gids {gids:?}: not all of user {owner_uid}"),
                    ),
                })
            }
        };
        let cwd_path = format!("/proc/{pid}/cwd");
        let cwd = open_path_dir(&cwd_path).map_err(io("open", cwd_path))?;
        let env_path = format!("/proc/{pid}/environ");
        let environ = read_capped(
            fs::File::open(&env_path).map_err(io("open", env_path.clone()))?,
            "/proc/PID/environ",
        )?;
        // What was read came from the keeper itself if it is alive now:
        // a pid is not reused before its process is reaped.
        crate::proc::pidfd_send_signal(&pidfd, 0).map_err(io("pidfd_send_signal", env_path))?;
        Ok(WorkerSpec {
            creds: Creds {
                uid,
                gid,
                groups: field("Groups:"),
            },
            cwd,
            environ,
            cmd,
        })
    }
}

/// An `O_PATH` descriptor of a directory (following a `/proc` magic link
/// to the directory it stands for).
fn open_path_dir(path: &str) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(io::Error::other)?;
    // SAFETY: open(2) on a NUL-terminated path; returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A copy of `data` in memory, readable from its start through the
/// descriptor (a memfd: no file a user could swap, no pipe to fill).
fn memfd_with(data: &[u8]) -> Result<OwnedFd, KeeperError> {
    // SAFETY: memfd_create with a static name; returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"gov-keeper-environ".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(KeeperError::Sys {
            op: "memfd_create",
            error: Errno::last(),
        });
    }
    // SAFETY: a fresh fd the kernel just gave us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = fs::File::from(fd);
    std::io::Write::write_all(&mut f, data).map_err(|error| KeeperError::Io {
        op: "write",
        path: PathBuf::from("memfd"),
        error,
    })?;
    Ok(f.into())
}

/// The environment of the root part of a worker's start, whoever asked.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// close_range(2)'s flag: mark the range close-on-exec rather than close
/// it now (the std's exec-error pipe must stay open until the exec).
const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;

/// Marks every descriptor from `first` up close-on-exec.
///
/// # Safety
/// Async-signal-safe: callable between fork and exec.
unsafe fn cloexec_from(first: u32, last: u32) -> io::Result<()> {
    if libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the worker of `keeper` (running with [`Start::External`]) as
/// the daemon must for an unprivileged host: runs `gov keeper --init` as
/// root with a fixed environment and `/` as its cwd, the keeper's pipe
/// ends at [`WORKER_FDS`] and its environment and cwd at [`FD_ENVIRON`] and
/// [`FD_CWD`], nothing else open, in a new pid namespace; and waits (up to
/// `timeout`) for it to hand ns-init off. ns-init then joins
/// `worker_cgroup` and starts CMD as `spec.creds`; the keeper sees the
/// cgroup populated.
pub fn start_worker(
    gov: &Path,
    keeper: Keeper,
    worker_cgroup: &Path,
    spec: &WorkerSpec,
    timeout: std::time::Duration,
) -> Result<(), KeeperError> {
    let fds = inherit_fds(keeper)?;
    let environ = memfd_with(&spec.environ)?;
    let mut raw: Vec<RawFd> = fds.iter().map(|f| f.fd.as_raw_fd()).collect();
    raw.extend([environ.as_raw_fd(), spec.cwd.as_raw_fd()]);
    let targets: Vec<RawFd> = WORKER_FDS
        .iter()
        .copied()
        .chain([FD_ENVIRON, FD_CWD])
        .collect();
    debug_assert!(targets.windows(2).all(|w| w[1] == w[0] + 1));
    let (lowest, highest) = (targets[0] as u32, targets[targets.len() - 1] as u32);
    let groups: Vec<String> = spec.creds.groups.iter().map(u32::to_string).collect();
    let mut c = std::process::Command::new(gov);
    c.arg("keeper")
        .arg("--init")
        .arg("--worker-cgroup")
        .arg(worker_cgroup)
        .arg("--uid")
        .arg(spec.creds.uid.to_string())
        .arg("--gid")
        .arg(spec.creds.gid.to_string())
        .args(
            (!groups.is_empty())
                .then(|| ["--groups".to_string(), groups.join(",")])
                .into_iter()
                .flatten(),
        )
        .arg("--")
        .args(&spec.cmd)
        // Root's own: the dynamic loader of a root process honours
        // LD_PRELOAD, LD_AUDIT, GCONV_PATH... (no setuid bit, so no
        // secure-execution mode), and a user's cwd is theirs to swap.
        .current_dir("/")
        .env_clear()
        .env("PATH", ROOT_PATH)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    // SAFETY: between fork and exec only fcntl, dup2, close_range and
    // unshare, all async-signal-safe, on numbers prepared before the fork.
    unsafe {
        c.pre_exec(move || {
            // Out of the way first, so a source at 10-16 is not clobbered;
            // close-on-exec, so these copies end at the exec.
            let mut high = [0; 7];
            for (h, &fd) in high.iter_mut().zip(&raw) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64);
                if *h < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for (&h, &at) in high.iter().zip(&targets) {
                if libc::dup2(h, at) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // Nothing else of the daemon's reaches the worker.
            cloexec_from(3, lowest - 1)?;
            cloexec_from(highest + 1, u32::MAX)?;
            if libc::unshare(libc::CLONE_NEWPID) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| KeeperError::Io {
        op: "run",
        path: gov.to_path_buf(),
        error: e,
    })?;
    drop((fds, environ));
    let pidfd = crate::proc::pidfd_open(child.id()).map_err(|e| KeeperError::Io {
        op: "pidfd_open",
        path: gov.to_path_buf(),
        error: e,
    })?;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd; readable once the child exits.
    unsafe { libc::poll(&mut pfd, 1, ms) };
    let status = match child.try_wait() {
        Ok(Some(s)) => s,
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KeeperError::Init {
                status: format!("killed: no hand-off within {timeout:?}"),
            });
        }
    };
    if !status.success() {
        return Err(KeeperError::Init {
            status: status.to_string(),
        });
    }
    Ok(())
}

/// A pipe whose ends sit above [`WORKER_FDS`], so placing one end at its
/// fixed number never closes another pipe's end.
fn pipe() -> Result<(OwnedFd, OwnedFd), KeeperError> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;
    Ok((high(r)?, high(w)?))
}

fn high(fd: OwnedFd) -> Result<OwnedFd, KeeperError> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd >= 32 or -1.
    let n = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 32) };
    if n < 0 {
        return Err(KeeperError::Sys {
            op: "fcntl(F_DUPFD_CLOEXEC)",
            error: Errno::last(),
        });
    }
    // SAFETY: a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// dup2 without CLOEXEC: the fork keeps it, an exec from the keeper would
/// too, but the keeper execs nothing.
fn place(fd: &OwnedFd, at: RawFd) -> Result<(), KeeperError> {
    // SAFETY: dup2 onto a number we reserve for this end.
    if unsafe { libc::dup2(fd.as_raw_fd(), at) } < 0 {
        return Err(KeeperError::Sys {
            op: "dup2",
            error: Errno::last(),
        });
    }
    Ok(())
}

/// The keeper's own ends.
struct Relay {
    to_worker: OwnedFd,
    from_stdout: OwnedFd,
    from_stderr: OwnedFd,
    status: OwnedFd,
    signal: OwnedFd,
}

// ---------------------------------------------------------------------------
// ns-init: pid 1 of the worker's namespace

/// Runs as pid 1 of the worker's pid namespace, with the worker's pipe ends
/// at [`WORKER_FDS`] and `mask` blocked: joins the worker cgroup (its
/// `cgroup.procs` is `procs`), starts CMD's parent ([`start_cmd`]: it runs
/// CMD as `user`, in the cwd at [`FD_CWD`], when the daemon started us for
/// an unprivileged keeper), forwards signals from the signal pipe to it
/// (it passes them on to CMD), reaps, reports its end, which is CMD's, on
/// the status pipe. Returns the code to _exit with.
pub fn worker_init(procs: &Path, cmd: &[OsString], mask: SigSet, user: Option<&User>) -> i32 {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("gov keeper: {what}: {e}");
        report(Ended::Exit(126));
        126
    };
    // Into the worker cgroup before anything forks, so the whole tree is
    // born there.
    if let Err(e) = fs::write(procs, "0") {
        return fail(&format!("joining {}", procs.display()), &e);
    }
    // A session of its own: CRIU refuses a tree whose session leader is
    // outside it (the host's shell) unless told it is a shell job.
    if let Err(e) = nix::unistd::setsid() {
        return fail("setsid", &e);
    }
    // The worker's stdio are its pipe ends.
    for (from, to) in [
        (FD_WORKER_STDIN, 0),
        (FD_WORKER_STDOUT, 1),
        (FD_WORKER_STDERR, 2),
    ] {
        // SAFETY: dup2 of our fixed fds onto stdio.
        unsafe { libc::dup2(from, to) };
    }
    for fd in [FD_WORKER_STDIN, FD_WORKER_STDOUT, FD_WORKER_STDERR] {
        // SAFETY: closing our own copies (0, 1, 2 hold them now).
        unsafe { libc::close(fd) };
    }
    for fd in [FD_STATUS, FD_SIGNAL] {
        // CMD must not inherit them.
        // SAFETY: fcntl on our fds.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let sfd = match SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => return fail("signalfd", &e),
    };
    let started = start_cmd(cmd, user, &mask);
    if user.is_some() {
        // CMD's parent has entered it (or failed to): ns-init holds
        // nothing of the user's beyond its pipes.
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(FD_CWD) };
    }
    let child = match started {
        Ok(pid) => pid,
        Err(e) => return fail("fork", &e),
    };
    loop {
        let mut fds = [
            libc::pollfd {
                fd: sfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: FD_SIGNAL,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) } < 0 {
            continue; // EINTR (criu's seize and restore interrupt it)
        }
        if fds[1].revents != 0 {
            let mut buf = [0u8; 64];
            // SAFETY: reading into our buffer.
            let n = unsafe { libc::read(FD_SIGNAL, buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                // The keeper is gone (all writers closed): so is the host's
                // view of this gate; end CMD's parent (ns-init follows, and
                // the namespace's teardown takes CMD).
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            for &b in &buf[..n.max(0) as usize] {
                if let Ok(sig) = Signal::try_from(b as i32) {
                    let _ = nix::sys::signal::kill(child, sig);
                }
            }
        }
        if fds[0].revents != 0 {
            while let Ok(Some(info)) = sfd.read_signal() {
                let signo = info.ssi_signo as i32;
                if signo != libc::SIGCHLD {
                    // Sent to ns-init directly: pass it on too.
                    if let Ok(sig) = Signal::try_from(signo) {
                        let _ = nix::sys::signal::kill(child, sig);
                    }
                }
            }
            // Reap everything: pid 1 adopts the namespace's orphans.
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(st) if st.pid() == Some(child) => {
                        if let Some(ended) = Ended::of(st) {
                            report(ended);
                            return 0;
                        }
                    }
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Tells the keeper how CMD ended.
fn report(ended: Ended) {
    let line = ended.to_line();
    // SAFETY: one write to our status pipe.
    unsafe { libc::write(FD_STATUS, line.as_ptr().cast(), line.len()) };
}

/// Starts CMD's parent, ns-init's child: a fork of ns-init that gives up
/// root first (as `user`, when the daemon started ns-init for an
/// unprivileged keeper), then starts CMD and mirrors it ([`cmd_parent`]).
/// So CMD's parent is pid 2, never pid 1: many servers (ipykernel's parent
/// poller among them) take a parent of pid 1 for their parent's death.
/// ns-init itself stays root: CRIU's parasite in the namespace's init
/// mounts a procfs of the namespace's own (this /proc belongs to the
/// host's), which an unprivileged init cannot.
fn start_cmd(cmd: &[OsString], user: Option<&User>, mask: &SigSet) -> io::Result<Pid> {
    // SAFETY: ns-init is single-threaded, so the child may run ordinary
    // Rust code; it never returns from here (it _exits).
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Child => {
            let code = cmd_parent(cmd, user, mask);
            // SAFETY: leaving the child without running atexit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// CMD's parent (pid 2 of the worker's namespace), run in a fork of
/// ns-init with `mask` blocked: becomes the user (setgroups, setgid,
/// setuid, then fchdir into the cwd at [`FD_CWD`], so the kernel checks the
/// user's right to enter it), keeps only 0, 1 and 2 (nothing for CRIU to
/// miss, nothing of root's), starts CMD with the user's environment (the
/// std sets `environ` at the exec), passes on every signal it gets, and
/// ends as CMD ended: CMD's code, or CMD's signal raised on itself, which
/// ns-init reports as CMD's. Returns the code to _exit with.
fn cmd_parent(cmd: &[OsString], user: Option<&User>, mask: &SigSet) -> i32 {
    if let Some(u) = user {
        let c = &u.creds;
        // SAFETY: plain syscalls on data we own.
        let failed = unsafe {
            libc::setgroups(c.groups.len(), c.groups.as_ptr()) != 0
                || libc::setgid(c.gid) != 0
                || libc::setuid(c.uid) != 0
                || libc::fchdir(FD_CWD) != 0
        };
        if failed {
            let e = io::Error::last_os_error();
            eprintln!(
                "gov keeper: becoming uid {} in the keeper's cwd: {e}",
                c.uid
            );
            return 126;
        }
    }
    // The status and signal pipes, the cwd fd, ns-init's signalfd: ns-init
    // keeps them; CMD's side holds its stdio alone.
    // SAFETY: closing descriptors this process owns and no longer uses.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    let sfd = match SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gov keeper: signalfd: {e}");
            return 126;
        }
    };
    let mut c = std::process::Command::new(&cmd[0]);
    c.args(&cmd[1..]);
    if let Some(u) = user {
        c.env_clear().envs(u.env.iter().map(|(k, v)| (k, v)));
    }
    // SAFETY: between fork and exec: only sigprocmask, signal and
    // close_range, all async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            // Blocked signals and ignored dispositions survive exec: give
            // CMD the defaults it would have had without us.
            let empty = SigSet::empty();
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&empty), None);
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // CMD gets 0, 1 and 2, and nothing else of ours.
            cloexec_from(3, u32::MAX)
        });
    }
    let child = match c.spawn() {
        Ok(child) => Pid::from_raw(child.id() as i32),
        Err(e) => {
            eprintln!("gov keeper: cannot run {}: {e}", cmd[0].to_string_lossy());
            return if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    loop {
        let mut fds = [libc::pollfd {
            fd: sfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd. EINTR (criu's seize and restore) just
        // goes round again.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
        while let Ok(Some(info)) = sfd.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo != libc::SIGCHLD {
                if let Ok(sig) = Signal::try_from(signo) {
                    let _ = nix::sys::signal::kill(child, sig);
                }
            }
        }
        // CMD is our only child (its orphans go to ns-init), and we alone
        // reap it, so its pid cannot be recycled under the kills above.
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(st) => {
                if let Some(ended) = Ended::of(st) {
                    return finish(ended);
                }
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("gov keeper: waitpid: {e}");
                return 126;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The keeper's loop

/// Where the worker is, as the keeper sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Worker {
    /// ns-init is our child (never hibernated yet).
    Child(Pid),
    /// A restored tree: not our child; its end comes by the status pipe.
    Restored,
    /// Dumped: nothing runs; wait for a restore.
    Held,
}

/// A one-way byte relay with a bounded buffer: read only when empty, so a
/// slow reader holds the writer back instead of growing our memory.
struct Pump {
    buf: Vec<u8>,
    off: usize,
    /// The source said EOF or failed.
    src_done: bool,
    /// The destination failed (EPIPE): drop what comes.
    dst_dead: bool,
}

impl Pump {
    fn new() -> Pump {
        Pump {
            buf: Vec::with_capacity(CHUNK),
            off: 0,
            src_done: false,
            dst_dead: false,
        }
    }

    fn pending(&self) -> bool {
        self.off < self.buf.len()
    }

    fn want_read(&self) -> bool {
        !self.src_done && !self.pending()
    }

    /// One read from `src` (readable per poll, so it does not block).
    fn fill(&mut self, src: RawFd) {
        let mut chunk = [0u8; CHUNK];
        // SAFETY: reading into our buffer.
        let n = unsafe { libc::read(src, chunk.as_mut_ptr().cast(), CHUNK) };
        if n > 0 {
            if !self.dst_dead {
                self.buf.clear();
                self.off = 0;
                self.buf.extend_from_slice(&chunk[..n as usize]);
            }
        } else if n == 0 || Errno::last() != Errno::EAGAIN && Errno::last() != Errno::EINTR {
            self.src_done = true;
        }
    }

    /// One write to `dst` (writable per poll). Writes at most a pipe page,
    /// which a writable pipe takes without blocking.
    fn flush(&mut self, dst: RawFd) {
        let rest = &self.buf[self.off..];
        // SAFETY: writing from our buffer.
        let n = unsafe { libc::write(dst, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            self.off += n as usize;
        } else if Errno::last() != Errno::EAGAIN && Errno::last() != Errno::EINTR {
            self.dst_dead = true;
            self.buf.clear();
            self.off = 0;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) {
    // SAFETY: fcntl on our own fd (our end of our own pipe: the host's
    // file descriptions are never touched, they may be shared).
    unsafe {
        let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
}

fn keep(
    relay: Relay,
    child: Option<Pid>,
    worker_cgroup: &Path,
    mask: SigSet,
) -> Result<i32, KeeperError> {
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(sys("signalfd"))?;
    for fd in [
        &relay.to_worker,
        &relay.from_stdout,
        &relay.from_stderr,
        &relay.status,
        &relay.signal,
    ] {
        set_nonblocking(fd);
    }
    let events_path = worker_cgroup.join("cgroup.events");
    let mut events = fs::File::open(&events_path).map_err(|e| KeeperError::Io {
        op: "open",
        path: events_path.clone(),
        error: e,
    })?;
    let cg = crate::cgroup::Cgroup::new(worker_cgroup);
    // Without a child of our own, the daemon starts the worker: wait for it
    // as for a restore.
    let mut worker = child.map_or(Worker::Held, Worker::Child);
    let mut ended: Option<Ended> = None;
    let mut status_buf = Vec::new();
    let mut input = Pump::new();
    let mut out = Pump::new();
    let mut err = Pump::new();
    let mut to_worker = Some(relay.to_worker);
    let mut abnormal: Option<Ended> = None;
    // Announced by the daemon: the worker may vanish without a word. A
    // worker the daemon starts comes as a restore does, so starts held
    // (the daemon releases it once the worker runs).
    let mut hold = child.is_none();

    loop {
        if let Some(e) = ended.or(abnormal) {
            // CMD is done. Wait (bounded) for the namespace to empty so no
            // writer is left, then pass on what is still in the pipes.
            let _ = cg.wait_events("populated 0", std::time::Duration::from_secs(5), |e| {
                !e.populated
            });
            write_all(1, &out.buf[out.off..]);
            write_all(2, &err.buf[err.off..]);
            drain(&relay.from_stdout, 1);
            drain(&relay.from_stderr, 2);
            return Ok(finish(e));
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(9);
        let mut slot = |fd: RawFd, events: libc::c_short, on: bool| -> Option<usize> {
            on.then(|| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                fds.len() - 1
            })
        };
        let s_sig = slot(sfd.as_raw_fd(), libc::POLLIN, true);
        let s_status = slot(relay.status.as_raw_fd(), libc::POLLIN, true);
        let s_events = slot(events.as_raw_fd(), libc::POLLPRI, true);
        let s_in_r = slot(0, libc::POLLIN, input.want_read() && to_worker.is_some());
        let s_in_w = slot(
            to_worker.as_ref().map_or(-1, |f| f.as_raw_fd()),
            libc::POLLOUT,
            input.pending() && to_worker.is_some(),
        );
        let s_out_r = slot(relay.from_stdout.as_raw_fd(), libc::POLLIN, out.want_read());
        let s_out_w = slot(1, libc::POLLOUT, out.pending());
        let s_err_r = slot(relay.from_stderr.as_raw_fd(), libc::POLLIN, err.want_read());
        let s_err_w = slot(2, libc::POLLOUT, err.pending());
        // A second now and then: cgroup.events notifications are
        // rate-limited, and a missed one must not leave us holding forever.
        // SAFETY: valid pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 1000) };
        if n < 0 {
            continue;
        }
        let ready = |s: Option<usize>| s.is_some_and(|i| fds[i].revents != 0);
        // kernfs keeps POLLPRI up until the file is read again on this fd.
        let populated = if ready(s_events) || n == 0 {
            read_populated(&mut events)
        } else {
            None
        };

        if ready(s_in_r) {
            input.fill(0);
            if input.src_done && !input.pending() {
                // The host closed our stdin: the worker sees EOF.
                to_worker = None;
            }
        }
        if ready(s_in_w) {
            if let Some(w) = &to_worker {
                input.flush(w.as_raw_fd());
            }
            if input.src_done && !input.pending() {
                to_worker = None;
            }
        }
        if ready(s_out_r) {
            out.fill(relay.from_stdout.as_raw_fd());
        }
        if ready(s_out_w) {
            out.flush(1);
        }
        if ready(s_err_r) {
            err.fill(relay.from_stderr.as_raw_fd());
        }
        if ready(s_err_w) {
            err.flush(2);
        }
        if ready(s_status) {
            let mut buf = [0u8; 64];
            // SAFETY: reading into our buffer.
            let n =
                unsafe { libc::read(relay.status.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                status_buf.extend_from_slice(&buf[..n as usize]);
                if let Some(pos) = status_buf.iter().position(|&b| b == b'\n') {
                    ended = Ended::parse(&String::from_utf8_lossy(&status_buf[..pos]));
                }
            }
        }
        if ready(s_sig) {
            if let Some(e) = take_signals(&sfd, &mut hold, worker, &relay.signal) {
                return Ok(finish(e));
            }
        }
        // Our child, ns-init, may have ended (SIGCHLD is coalesced: always
        // look, it is one syscall).
        if let Worker::Child(pid) = worker {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => {
                    if ended.is_none() {
                        // It may have written its status just before.
                        ended = read_status_now(&relay.status, &mut status_buf);
                    }
                    if ended.is_none() {
                        if let Some(e) = take_signals(&sfd, &mut hold, worker, &relay.signal) {
                            return Ok(finish(e));
                        }
                        match after_worker_gone(&cg, &hold) {
                            Some(w) => worker = w,
                            None => {
                                abnormal = Some(Ended::of(st).unwrap_or(Ended::Signal(9)));
                            }
                        }
                    }
                }
                Err(_) => {}
            }
        } else if let Some(populated) = populated {
            match worker {
                Worker::Held if populated => worker = Worker::Restored,
                Worker::Restored if !populated && ended.is_none() => {
                    ended = read_status_now(&relay.status, &mut status_buf);
                    if ended.is_none() {
                        if let Some(e) = take_signals(&sfd, &mut hold, worker, &relay.signal) {
                            return Ok(finish(e));
                        }
                        match after_worker_gone(&cg, &hold) {
                            Some(w) => worker = w,
                            // Killed with no word: report it as SIGKILL.
                            None => abnormal = Some(Ended::Signal(libc::SIGKILL)),
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// Reads every pending signal: hold and release set `hold`, SIGCHLD is
/// only a wake-up, the rest go to CMD through the signal pipe, or, while
/// nothing runs to receive them, a stopping signal ends the keeper
/// (returned). Called before judging a worker's end too: a hold sent
/// before the dump began may be pending though poll did not say so yet.
fn take_signals(sfd: &SignalFd, hold: &mut bool, worker: Worker, pipe: &OwnedFd) -> Option<Ended> {
    while let Ok(Some(info)) = sfd.read_signal() {
        let signo = info.ssi_signo as i32;
        if signo == libc::SIGCHLD {
            continue;
        }
        if signo == hold_signal() {
            *hold = info.ssi_ptr != 0;
            continue;
        }
        if worker == Worker::Held && stops(signo) {
            // The gate's stop while hibernated (the daemon deletes the image).
            return Some(Ended::Signal(signo));
        }
        // Queued in the pipe, read by ns-init (now or once restored).
        let b = signo as u8;
        // SAFETY: a one-byte write to our pipe.
        unsafe { libc::write(pipe.as_raw_fd(), (&b as *const u8).cast(), 1) };
    }
    None
}

/// Signals that end a gate whose worker is hibernated.
fn stops(signo: i32) -> bool {
    matches!(
        signo,
        libc::SIGTERM | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
    )
}

/// The worker tree is gone and said nothing: a restored tree if its
/// cgroup is populated again (the keeper was frozen through a whole dump
/// and restore), a hibernation if the daemon holds us, else an abnormal
/// death (None).
fn after_worker_gone(cg: &crate::cgroup::Cgroup, hold: &bool) -> Option<Worker> {
    if cg.read_cgroup_events().is_ok_and(|e| e.populated) {
        return Some(Worker::Restored);
    }
    hold.then_some(Worker::Held)
}

/// `populated` from cgroup.events, read on the polled fd itself.
fn read_populated(f: &mut fs::File) -> Option<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut text = String::new();
    f.seek(SeekFrom::Start(0)).ok()?;
    f.read_to_string(&mut text).ok()?;
    crate::cgroup::parse_events(&text).ok().map(|e| e.populated)
}

fn read_status_now(fd: &OwnedFd, buf: &mut Vec<u8>) -> Option<Ended> {
    let mut chunk = [0u8; 64];
    loop {
        // SAFETY: non-blocking read into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n as usize]);
    }
    let pos = buf.iter().position(|&b| b == b'\n')?;
    Ended::parse(&String::from_utf8_lossy(&buf[..pos]))
}

/// Everything left in a (non-blocking) pipe to `dst`, blocking writes.
fn drain(src: &OwnedFd, dst: RawFd) {
    let mut chunk = [0u8; CHUNK];
    loop {
        // SAFETY: non-blocking read into our buffer.
        let n = unsafe { libc::read(src.as_raw_fd(), chunk.as_mut_ptr().cast(), CHUNK) };
        if n <= 0 {
            return;
        }
        if !write_all(dst, &chunk[..n as usize]) {
            return;
        }
    }
}

/// Blocking write of all of `data`; false when the destination failed.
fn write_all(dst: RawFd, mut data: &[u8]) -> bool {
    // SAFETY: borrowing stdout/stderr for the writes.
    let dst = unsafe { BorrowedFd::borrow_raw(dst) };
    while !data.is_empty() {
        match nix::unistd::write(dst, data) {
            Ok(w) => data = &data[w..],
            Err(Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
    true
}

/// The keeper's exit: CMD's code, or CMD's signal raised on ourselves so
/// the host's wait(2) sees a death by the same signal.
fn finish(e: Ended) -> i32 {
    match e {
        Ended::Exit(c) => c,
        Ended::Signal(s) => {
            // No core file of the keeper for CMD's crash.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            if let Ok(sig) = Signal::try_from(s) {
                // SAFETY: default disposition, then unblock and raise.
                unsafe { libc::signal(s, libc::SIG_DFL) };
                let mut one = SigSet::empty();
                one.add(sig);
                let _ = one.thread_unblock();
                let _ = nix::sys::signal::raise(sig);
            }
            128 + s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for e in [Ended::Exit(0), Ended::Exit(3), Ended::Signal(9)] {
            assert_eq!(Ended::parse(&e.to_line()), Some(e));
        }
        assert_eq!(Ended::parse("exit x"), None);
        assert_eq!(Ended::parse("died 3"), None);
        assert_eq!(Ended::parse(""), None);
    }

    #[test]
    fn an_environ_is_split_into_its_entries() {
        let env = parse_environ(b"A=1\0B=x=y\0=nokey\0NOEQ\0EMPTY=\0\0");
        let pairs: Vec<(&str, &str)> = env
            .iter()
            .map(|(k, v)| (k.to_str().unwrap(), v.to_str().unwrap()))
            .collect();
        assert_eq!(pairs, [("A", "1"), ("B", "x=y"), ("EMPTY", "")]);
    }

    #[test]
    fn worker_fds_are_distinct_and_above_stdio() {
        let mut v = WORKER_FDS.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), WORKER_FDS.len());
        assert!(v.iter().all(|&fd| fd > 2));
    }
}
