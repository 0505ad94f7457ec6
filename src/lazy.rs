//! The lazy part of a lazy restore: CRIU's lazy-pages daemon, which fills
//! a restored tree's private anonymous memory from the image on first
//! touch (userfaultfd) and streams the rest in the background, then exits.
//!
//! The rule this module keeps: a restored tree is whole or not running.
//! Once the daemon is gone, whatever it had not copied yet would be read
//! as zero-filled pages (the kernel drops a userfaultfd's registrations
//! when its last descriptor closes: tried here, a 1 GiB Python worker whose
//! daemon was killed crashed on its first page). So gov keeps its own copy
//! of every userfaultfd the daemon holds, taken with pidfd_getfd before
//! the tree runs: if the daemon dies, a missing page blocks the task that
//! touches it (killably) instead of reading zeros, and [`LazyPages::finish`]
//! kills the tree before letting go of the copies. Only a daemon that
//! exited 0 (every page copied) releases the tree.
//!
//! The cost of the copies: in CRIU's non-cooperative mode the kernel waits
//! for the daemon to read fork/remap/unmap events; with the daemon gone and
//! our copy open such an event would wait for the kill, which comes at
//! once. With the daemon at work it reads them as usual.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;
use crate::criu::{log_tail, wait_bounded, CriuError, Result, Waited};

/// What /proc/PID/fd shows for a userfaultfd.
const UFFD_LINK: &str = "anon_inode:[userfaultfd]";

/// How long the restored tree may take to empty once killed.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A lazy-pages daemon serving one restore (see the module doc).
#[derive(Debug)]
pub struct LazyPages {
    child: Option<Child>,
    /// The restored tree's cgroup, killed if the daemon fails.
    tree: Cgroup,
    /// Our copies of the daemon's userfaultfds.
    uffds: Vec<OwnedFd>,
    log: PathBuf,
    started: Instant,
}

/// How a lazy restore's background part ended well.
#[derive(Debug, Clone, Copy)]
pub struct LazyDone {
    /// From the daemon's start until it exited: all memory back.
    pub elapsed: Duration,
}

impl LazyPages {
    /// Takes over a started `criu lazy-pages` whose `--status-fd` pipe's
    /// read end is `ready`: returns once the daemon said it listens (it
    /// writes a NUL and closes the pipe), so a restore can connect.
    pub(crate) fn started(
        mut child: Child,
        tree: &Cgroup,
        ready: OwnedFd,
        log: PathBuf,
        timeout: Duration,
    ) -> Result<LazyPages> {
        let started = Instant::now();
        let ok = wait_ready(&ready, timeout);
        if let Err(error) = ok {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CriuError::Failed {
                op: "lazy-pages",
                status: format!("not ready: {error}"),
                log_tail: log_tail(&log),
                log,
            });
        }
        Ok(LazyPages {
            child: Some(child),
            tree: tree.clone(),
            uffds: Vec::new(),
            log,
            started,
        })
    }

    /// The daemon's pid (tests kill it to prove the failure rule).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Takes a copy of every userfaultfd the daemon holds. Call after the
    /// restore returned and before the tree runs (`--leave-stopped`): the
    /// daemon then has every task's descriptor.
    pub(crate) fn hold_uffds(&mut self) -> Result<usize> {
        let Some(child) = &self.child else {
            return Ok(0);
        };
        let pid = child.id();
        let err = |op: &'static str, e: io::Error| CriuError::Io {
            op,
            path: PathBuf::from(format!("/proc/{pid}/fd")),
            error: e,
        };
        let pidfd = crate::proc::pidfd_open(pid).map_err(|e| err("pidfd_open", e))?;
        let dir = PathBuf::from(format!("/proc/{pid}/fd"));
        for entry in fs::read_dir(&dir).map_err(|e| err("list", e))? {
            let entry = entry.map_err(|e| err("list", e))?;
            let Some(fd) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<RawFd>().ok())
            else {
                continue;
            };
            let is_uffd = fs::read_link(entry.path())
                .is_ok_and(|l| l.as_os_str() == std::ffi::OsStr::new(UFFD_LINK));
            if !is_uffd {
                continue;
            }
            // SAFETY: pidfd_getfd(pidfd, targetfd, flags) returns a new fd or -1.
            let got = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
            if got < 0 {
                return Err(err("pidfd_getfd", io::Error::last_os_error()));
            }
            // SAFETY: a fresh fd the kernel just gave us.
            self.uffds
                .push(unsafe { OwnedFd::from_raw_fd(got as RawFd) });
        }
        Ok(self.uffds.len())
    }

    /// Waits for the daemon to finish, up to `timeout` from its start.
    ///
    /// Ok: it exited 0, every page is in; our copies are closed. Err: it
    /// failed, was killed, or ran past the deadline (then it is killed):
    /// `tree` is killed and emptied *before* our copies close, so no task
    /// ever runs on a page that did not come back. The image is the caller's
    /// to keep.
    pub fn finish(mut self, timeout: Duration) -> Result<LazyDone> {
        let Some(child) = self.child.take() else {
            return Ok(LazyDone {
                elapsed: self.started.elapsed(),
            });
        };
        let left = timeout.saturating_sub(self.started.elapsed());
        let status = match wait_bounded(child, left)? {
            Waited::Exited(s) if s.success() => {
                self.uffds.clear();
                return Ok(LazyDone {
                    elapsed: self.started.elapsed(),
                });
            }
            Waited::Exited(s) => s.to_string(),
            Waited::Running(mut child) => {
                let _ = child.kill();
                let _ = child.wait();
                format!("killed after {:?}", self.started.elapsed())
            }
        };
        let killed = self.tree.kill_all(KILL_TIMEOUT);
        self.uffds.clear();
        killed?;
        Err(CriuError::Failed {
            op: "lazy-pages",
            status,
            log_tail: log_tail(&self.log),
            log: self.log.clone(),
        })
    }
}

impl Drop for LazyPages {
    /// A handle dropped before its daemon finished (a restore that failed
    /// after the daemon started, or a panic) kills the daemon and the tree
    /// it served, the tree first: it never runs on pages that are not back.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = self.tree.kill_all(KILL_TIMEOUT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Reads the `--status-fd` pipe: a NUL byte means ready; EOF without it
/// means the daemon died first.
fn wait_ready(ready: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no word within {timeout:?}"),
        ));
    }
    let mut f = fs::File::from(ready.try_clone()?);
    let mut b = [1u8; 1];
    match f.read(&mut b)? {
        1 if b[0] == 0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon ended before it listened",
        )),
    }
}

/// Where the daemon writes its log, in the images directory.
pub(crate) fn log_path(dir: &Path) -> PathBuf {
    dir.join("lazy-pages.log")
}
