//! The host's memory facts and PSI (pressure stall information): what relief
//! reads to decide, and the kernel triggers that wake it.
//!
//! Plain files and poll(2), like `cgroup`: a read is a few microseconds. A
//! [`Trigger`] costs nothing while memory is calm: the kernel wakes its
//! waiter only when stall in a window passes the threshold, so the daemon
//! never polls the pressure files on a timer to notice pressure.

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// The host's memory pressure (all tasks, whatever their cgroup).
pub const HOST_PSI: &str = "/proc/pressure/memory";

/// The host's memory counters.
pub const HOST_MEMINFO: &str = "/proc/meminfo";

/// The kernel's bounds of a trigger's window (kernel/sched/psi.c).
pub const WINDOW_MIN: Duration = Duration::from_millis(500);
pub const WINDOW_MAX: Duration = Duration::from_secs(10);

/// One pressure file (/proc/pressure/memory, a cgroup's memory.pressure).
/// "some": at least one task stalled; "full": all non-idle tasks stalled at
/// once. `avg10` is a percent over the last 10 s; `total` is cumulative
/// stall in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Psi {
    pub some_avg10: f64,
    pub some_total_us: u64,
    pub full_avg10: f64,
    pub full_total_us: u64,
}

/// /proc/meminfo's figures relief weighs, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MemInfo {
    pub total: u64,
    /// The kernel's estimate of what can be allocated without swapping:
    /// free memory plus the page cache and slab it can drop.
    pub available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PressureError {
    /// The io::Error is part of the message, printed once (as `cgroup` does).
    #[error("read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: cannot parse: {data}")]
    Parse { path: PathBuf, data: String },
}

/// A pressure file's text. The "full" line is absent in some files
/// (/proc/pressure/cpu before 5.13, where all tasks can never stall on
/// CPU at once): it reads as zero.
pub fn parse_psi(text: &str) -> Result<Psi, String> {
    let mut psi = Psi::default();
    let mut some = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let (mut avg10, mut total) = (None, None);
        for word in words {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("no key=value in {line:?}"))?;
            match key {
                "avg10" => {
                    avg10 = Some(value.parse::<f64>().map_err(|e| format!("{line:?}: {e}"))?)
                }
                "total" => {
                    total = Some(value.parse::<u64>().map_err(|e| format!("{line:?}: {e}"))?)
                }
                _ => {}
            }
        }
        let (Some(avg10), Some(total)) = (avg10, total) else {
            return Err(format!("no avg10 or total in {line:?}"));
        };
        match kind {
            "some" => {
                (psi.some_avg10, psi.some_total_us, some) = (avg10, total, true);
            }
            "full" => (psi.full_avg10, psi.full_total_us) = (avg10, total),
            _ => return Err(format!("unknown line {line:?}")),
        }
    }
    if !some {
        return Err(format!("no \"some\" line in {text:?}"));
    }
    Ok(psi)
}

/// /proc/meminfo's text ("MemTotal:  24683792 kB" per line).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .ok_or_else(|| format!("no {name}"))?;
        let rest = line[name.len() + 1..].trim();
        let kib = rest.strip_suffix("kB").unwrap_or(rest).trim();
        kib.parse::<u64>()
            .map(|k| k * 1024)
            .map_err(|e| format!("{line:?}: {e}"))
    };
    Ok(MemInfo {
        total: field("MemTotal")?,
        available: field("MemAvailable")?,
        swap_total: field("SwapTotal")?,
        swap_free: field("SwapFree")?,
    })
}

fn read_parsed<T>(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<T, PressureError> {
    let text = fs::read_to_string(path).map_err(|error| PressureError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse(&text).map_err(|data| PressureError::Parse {
        path: path.to_path_buf(),
        data,
    })
}

/// One pressure file: [`HOST_PSI`] or a cgroup's memory.pressure.
pub fn read_psi(path: impl AsRef<Path>) -> Result<Psi, PressureError> {
    read_parsed(path.as_ref(), parse_psi)
}

/// The host's /proc/meminfo.
pub fn read_meminfo() -> Result<MemInfo, PressureError> {
    read_parsed(Path::new(HOST_MEMINFO), parse_meminfo)
}

/// The share (0..=1) of `elapsed` during which some task stalled, between
/// two readings. The avg10 figures lag (an exponential average updated every
/// 2 s); the totals give the exact stall in any interval. Zero when no time
/// passed or the counters went backwards (another file, a recreated cgroup).
pub fn stall_share(before: &Psi, after: &Psi, elapsed: Duration) -> f64 {
    let elapsed_us = elapsed.as_micros();
    if elapsed_us == 0 {
        return 0.0;
    }
    let stalled = after.some_total_us.saturating_sub(before.some_total_us);
    (stalled as f64 / elapsed_us as f64).clamp(0.0, 1.0)
}

/// A PSI trigger: the kernel wakes its holder (POLLPRI) when tasks stalled
/// on memory for `stall` within a sliding `window`, at most once a window.
/// The trigger lives as long as the open file.
///
/// An event is a hint: read the pressure before acting on it. Without
/// CAP_SYS_RESOURCE (2 s-multiple windows, served by the kernel's 2 s
/// averaging work) kernel 6.18 fired on a calm host here, 1 s and 3 s after
/// arming with avg10 at 0.00 (tests/pressure.rs).
#[derive(Debug)]
pub struct Trigger {
    file: fs::File,
    path: PathBuf,
}

impl Trigger {
    /// Arms a "some" trigger on a pressure file. The kernel's rules, checked
    /// first so the error says which: the window is 500 ms..10 s, the stall
    /// more than zero and at most the window; an unprivileged writer (not
    /// CAP_SYS_RESOURCE) needs a window that is a multiple of 2 s.
    pub fn arm(path: impl AsRef<Path>, stall: Duration, window: Duration) -> io::Result<Trigger> {
        let path = path.as_ref();
        check_trigger(stall, window).map_err(|rule| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PSI trigger on {}: {rule}", path.display()),
            )
        })?;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| with_path(e, "open", path))?;
        // The kernel overwrites the last byte written with a NUL before
        // parsing: the terminating NUL must be part of the write, or the
        // window loses its last digit.
        let spec = format!("some {} {}\0", stall.as_micros(), window.as_micros());
        file.write_all(spec.as_bytes()).map_err(|e| {
            if e.raw_os_error() == Some(Errno::EINVAL as i32) && !window_is_unprivileged(window) {
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "PSI trigger on {}: without CAP_SYS_RESOURCE the window must be a \
                         multiple of 2s (kernel rule), not {window:?}",
                        path.display()
                    ),
                )
            } else {
                with_path(e, "arm a PSI trigger on", path)
            }
        })?;
        Ok(Trigger {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits until the trigger fires. Each call registers with the reactor,
    /// which asks the kernel for a pending event at once, so one that fired
    /// between calls is not lost; a call dropped (a `select!`'s other branch)
    /// just as the event came can lose that one, and pressure that lasts
    /// fires again the next window. An error (POLLERR, hang-up) means the
    /// trigger is gone: its cgroup was removed.
    pub async fn fired(&self) -> io::Result<()> {
        use tokio::io::unix::AsyncFd;
        use tokio::io::Interest;
        let interest = Interest::PRIORITY | Interest::ERROR;
        // SAFETY: the borrowed fd is our open file, which outlives the
        // registration (dropped at the end of this call, or when cancelled).
        let fd = unsafe { AsyncFd::register_with_interest(self.file.as_fd(), interest) }
            .map_err(|e| e.into_parts().1)?;
        loop {
            let mut guard = fd.ready(interest).await?;
            let ready = guard.ready();
            if ready.is_error() || ready.is_read_closed() {
                return Err(self.gone());
            }
            if ready.is_priority() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Blocks up to `timeout` for the trigger to fire: true if it did. For
    /// tests and callers without a runtime.
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.file.as_fd(), PollFlags::POLLPRI)];
            match poll(&mut fds, ms) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(with_path(e.into(), "poll", &self.path)),
            }
            let revents = fds[0].revents().unwrap_or(PollFlags::empty());
            if revents.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL) {
                return Err(self.gone());
            }
            if revents.contains(PollFlags::POLLPRI) {
                return Ok(true);
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    }

    fn gone(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "PSI trigger on {} is gone (its cgroup was removed)",
                self.path.display()
            ),
        )
    }
}

/// The kernel's rules for a trigger (psi_trigger_create), as a sentence
/// naming the one broken.
fn check_trigger(stall: Duration, window: Duration) -> Result<(), String> {
    if window < WINDOW_MIN || window > WINDOW_MAX {
        return Err(format!(
            "the window must be 500ms..10s (kernel rule), not {window:?}"
        ));
    }
    if stall.is_zero() || stall > window {
        return Err(format!(
            "the stall must be more than 0 and at most the window {window:?} (kernel rule), not {stall:?}"
        ));
    }
    Ok(())
}

/// Can a writer without CAP_SYS_RESOURCE arm a trigger with this window?
/// The kernel lets it only whole multiples of 2 s, so that unprivileged
/// triggers cannot make it compute averages too often.
pub fn window_is_unprivileged(window: Duration) -> bool {
    window.as_micros() % 2_000_000 == 0
}

fn with_path(e: io::Error, op: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// /proc/pressure/memory on our host.
    const HOST_SAMPLE: &str = "some avg10=3.76 avg60=0.96 avg300=0.21 total=3971278\n\
                               full avg10=2.01 avg60=0.52 avg300=0.11 total=2250284\n";
    /// A cgroup's memory.pressure in the VM under memory.max.
    const CGROUP_SAMPLE: &str = "some avg10=41.50 avg60=12.07 avg300=2.81 total=5012345\n\
                                 full avg10=38.02 avg60=10.99 avg300=2.55 total=4700021\n";

    #[test]
    fn parses_the_hosts_pressure_file() {
        let psi = parse_psi(HOST_SAMPLE).unwrap();
        assert_eq!(
            psi,
            Psi {
                some_avg10: 3.76,
                some_total_us: 3_971_278,
                full_avg10: 2.01,
                full_total_us: 2_250_284,
            }
        );
    }

    #[test]
    fn parses_a_cgroups_memory_pressure() {
        let psi = parse_psi(CGROUP_SAMPLE).unwrap();
        assert_eq!(psi.some_avg10, 41.5);
        assert_eq!(psi.full_total_us, 4_700_021);
    }

    #[test]
    fn a_missing_full_line_reads_as_zero() {
        let psi =
            parse_psi("some avg10=66.04 avg60=31.58 avg300=12.95 total=10081791237\n").unwrap();
        assert_eq!(psi.some_total_us, 10_081_791_237);
        assert_eq!((psi.full_avg10, psi.full_total_us), (0.0, 0));
    }

    #[test]
    fn refuses_what_is_not_a_pressure_file() {
        assert!(parse_psi("").unwrap_err().contains("no \"some\""));
        assert!(parse_psi("some avg10=x total=1").is_err());
        assert!(parse_psi("some avg10=1.0").unwrap_err().contains("total"));
        assert!(parse_psi("half avg10=1.0 total=3")
            .unwrap_err()
            .contains("unknown"));
    }

    #[test]
    fn parses_meminfo_in_bytes() {
        let text = "MemTotal:       24683792 kB\nMemFree:          629408 kB\n\
                    MemAvailable:   23279232 kB\nSwapTotal:       1048576 kB\n\
                    SwapFree:         524288 kB\n";
        assert_eq!(
            parse_meminfo(text).unwrap(),
            MemInfo {
                total: 24_683_792 * 1024,
                available: 23_279_232 * 1024,
                swap_total: 1 << 30,
                swap_free: 1 << 29,
            }
        );
        assert!(parse_meminfo("MemTotal: 1 kB\n")
            .unwrap_err()
            .contains("MemAvailable"));
    }

    #[test]
    fn stall_share_is_the_stalled_part_of_the_interval() {
        let at = |us| Psi {
            some_total_us: us,
            ..Psi::default()
        };
        let second = Duration::from_secs(1);
        assert_eq!(stall_share(&at(1_000), &at(251_000), second), 0.25);
        // Clamped: a reading taken late can count more stall than time.
        assert_eq!(stall_share(&at(0), &at(3_000_000), second), 1.0);
        assert_eq!(stall_share(&at(500), &at(100), second), 0.0);
        assert_eq!(stall_share(&at(0), &at(100), Duration::ZERO), 0.0);
    }

    #[test]
    fn trigger_rules_name_the_one_broken() {
        let ms = Duration::from_millis;
        assert!(check_trigger(ms(100), ms(1000)).is_ok());
        for (stall, window, rule) in [
            (100, 400, "500ms..10s"),
            (100, 11_000, "500ms..10s"),
            (0, 1000, "more than 0"),
            (2000, 1000, "at most the window"),
        ] {
            let err = check_trigger(ms(stall), ms(window)).unwrap_err();
            assert!(err.contains(rule), "{err}");
        }
    }

    // The host's own files: PSI is on in our kernels (DESIGN.md section 14).

    #[test]
    fn reads_the_hosts_meminfo() {
        let mem = read_meminfo().unwrap();
        let info = nix::sys::sysinfo::sysinfo().unwrap();
        // sysinfo's total RAM and meminfo's MemTotal are the same figure.
        assert_eq!(mem.total, info.ram_total());
        assert!(mem.available > 0 && mem.available <= mem.total);
        assert!(mem.swap_free <= mem.swap_total);
    }

    #[test]
    fn reads_the_hosts_pressure() {
        let psi = read_psi(HOST_PSI).unwrap();
        assert!((0.0..=100.0).contains(&psi.some_avg10));
        assert!(psi.full_total_us <= psi.some_total_us);
    }

    #[test]
    fn a_bad_window_is_refused_with_the_rule() {
        let err = Trigger::arm(
            HOST_PSI,
            Duration::from_millis(10),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let text = err.to_string();
        assert!(
            text.contains("500ms..10s") && text.contains(HOST_PSI),
            "{text}"
        );
    }
}
