//! Facts about processes from procfs. A pid may vanish between listing and
//! reading: every function returns None for a process that is gone.

use std::os::fd::{FromRawFd, OwnedFd};

use procfs::process::Process;

/// Proportional set size in bytes: a process's fair share of the memory it
/// maps, so shared libraries are not counted once per process.
pub fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = Process::new(pid as i32).ok()?.smaps_rollup().ok()?;
    rollup
        .memory_map_rollup
        .0
        .first()
        .and_then(|m| m.extension.map.get("Pss").copied())
}

/// Its share of what is in swap (SwapPss), in bytes.
pub fn swap_pss_bytes(pid: u32) -> Option<u64> {
    let rollup = Process::new(pid as i32).ok()?.smaps_rollup().ok()?;
    rollup
        .memory_map_rollup
        .0
        .first()
        .and_then(|m| m.extension.map.get("SwapPss").copied())
}

/// The pid of a debugger attached to this process, if any.
pub fn tracer_pid(pid: u32) -> Option<u32> {
    let status = Process::new(pid as i32).ok()?.status().ok()?;
    (status.tracerpid > 0).then_some(status.tracerpid as u32)
}

/// Start time in clock ticks since boot: with the pid, it names one process
/// for good, since a recycled pid gets a later start time.
pub fn start_time(pid: u32) -> Option<u64> {
    Some(Process::new(pid as i32).ok()?.stat().ok()?.starttime)
}

pub fn parent_pid(pid: u32) -> Option<u32> {
    let ppid = Process::new(pid as i32).ok()?.stat().ok()?.ppid;
    (ppid > 0).then_some(ppid as u32)
}

/// Real uid and the supplementary groups (for the admin group check).
pub fn uid_and_groups(pid: u32) -> Option<(u32, Vec<u32>)> {
    let status = Process::new(pid as i32).ok()?.status().ok()?;
    Some((
        status.ruid,
        status.groups.iter().map(|&g| g as u32).collect(),
    ))
}

/// Real, effective, saved and filesystem uid.
pub fn uids(pid: u32) -> Option<[u32; 4]> {
    let s = Process::new(pid as i32).ok()?.status().ok()?;
    Some([s.ruid, s.euid, s.suid, s.fuid])
}

/// The value of one variable in a process's environment (as it was at its
/// exec), reading at most 256 KiB of it.
pub fn environ_var(pid: u32, name: &str) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/environ"))
        .ok()?
        .take(256 * 1024)
        .read_to_end(&mut buf)
        .ok()?;
    buf.split(|&b| b == 0).find_map(|kv| {
        let rest = kv.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(rest.to_vec()).ok()
    })
}

/// The children of every thread of a process.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// Is the process alive and not a zombie? PID 1 here reaps orphans late, so
/// a dead process can linger as a zombie for seconds.
pub fn is_alive(pid: u32) -> bool {
    match Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => stat.state != 'Z' && stat.state != 'X',
        Err(_) => false,
    }
}

/// The user name of a uid, or the number as text.
pub fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(uid.into())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string())
}

/// A count of /proc/PID/io: `rchar` (bytes read with read(2) and its kind,
/// pipes and sockets too) or `wchar` (written); None when it is gone.
pub fn io_bytes(pid: u32, key: &str) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// pidfd_open(2): a handle on one process that a recycled pid cannot fool.
/// nix has no wrapper, so it is a raw syscall.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// pidfd_send_signal(2); signal 0 checks that the process still exists.
pub fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the process with `pid` if `still(pid)` holds for it,
/// through a pidfd opened before the check: had the process ended and its
/// pid been recycled after the open, the signal goes to the ended process
/// (ESRCH), never to the newcomer. A pid that is gone is not an error.
pub fn signal_checked(
    pid: u32,
    signal: i32,
    still: impl FnOnce(u32) -> bool,
) -> std::io::Result<()> {
    let fd = match pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !still(pid) {
        return Ok(());
    }
    match pidfd_send_signal(&fd, signal) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_about_ourselves() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(start_time(me).is_some());
        assert!(parent_pid(me).is_some());
        assert!(pss_bytes(me).unwrap() > 0);
        assert_eq!(tracer_pid(me), None);
        let fd = pidfd_open(me).unwrap();
        pidfd_send_signal(&fd, 0).unwrap();
    }

    #[test]
    fn a_checked_signal_goes_to_the_process_that_was_checked() {
        // Ended and reaped between the open and the send: its pid may be
        // anyone's now, and the signal goes nowhere.
        let mut gone = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = gone.id();
        signal_checked(pid, libc::SIGKILL, |_| {
            gone.kill().unwrap();
            gone.wait().unwrap();
            true
        })
        .unwrap();
        // A check that fails sends nothing.
        let mut kept = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        signal_checked(kept.id(), libc::SIGKILL, |_| false).unwrap();
        assert!(
            kept.try_wait().unwrap().is_none(),
            "signalled though the check failed"
        );
        signal_checked(kept.id(), libc::SIGKILL, |_| true).unwrap();
        assert!(
            kept.wait().unwrap().code().is_none(),
            "killed by the signal"
        );
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert_eq!(pss_bytes(pid), None);
    }
}
