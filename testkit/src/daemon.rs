//! A gov daemon of the caller's own: started on its own socket and cgroup
//! root, waited for until it listens, stopped (SIGTERM, then SIGKILL) and
//! reaped on drop.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::process::wait_until;
use crate::root::TestRoot;

pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    /// Its stderr (the log).
    pub log: PathBuf,
    pub socket: PathBuf,
}

impl Daemon {
    /// A daemon on `root` with `extra` policy lines.
    pub fn start(root: &TestRoot, extra: &str) -> Daemon {
        Daemon::start_with(root, &root.policy_file(extra))
    }

    /// A daemon on an existing policy file (a restart).
    pub fn start_with(root: &TestRoot, config: &Path) -> Daemon {
        Daemon::start_env(root, config, &[])
    }

    /// A daemon with extra environment (GOV_TEST_FAULT, GOV_CRIU, ...).
    pub fn start_env(root: &TestRoot, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = root.gov();
        cmd.env("GOV_LOG", "debug")
            // CRIU only where a test gives it (the suite's GOV_CRIU names
            // the build to test with, not every daemon's).
            .env_remove("GOV_CRIU")
            .envs(env.iter().copied());
        Daemon::launch(
            cmd,
            config,
            &root.socket,
            &root.dir.path().join("daemon.log"),
        )
    }

    /// Runs `gov daemon --config CONFIG` from `gov` (a command with the
    /// environment it needs), in a process group of its own, its stderr
    /// appended to `log`; returns once it accepts on `socket`.
    pub fn launch(mut gov: Command, config: &Path, socket: &Path, log: &Path) -> Daemon {
        let logfile = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("the daemon's log file");
        let child = gov
            .args(["daemon", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .process_group(0)
            .spawn()
            .expect("gov daemon starts");
        let mut d = Daemon {
            child,
            config: config.to_path_buf(),
            log: log.to_path_buf(),
            socket: socket.to_path_buf(),
        };
        let mut exited = None;
        wait_until(Duration::from_secs(30), "daemon socket to accept", || {
            if let Ok(Some(st)) = d.child.try_wait() {
                exited = Some(st);
                return true;
            }
            std::os::unix::net::UnixStream::connect(socket).is_ok()
        });
        assert!(
            exited.is_none(),
            "daemon exited at start ({exited:?}): {}",
            d.log_text()
        );
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as an OOM killer or an admin would: no cleanup at all.
    pub fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// SIGTERM, then SIGKILL after `grace`; reaped either way (a no-op for
    /// a daemon already reaped).
    pub fn stop(&mut self, grace: Duration) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A policy file for `socket`: a fast scan and memory relief off (unless
/// `extra` sets its own), then `extra`. Top-level keys come before any table:
/// callers put their tables in `extra`.
pub fn write_policy(path: &Path, socket: &Path, extra: &str) {
    let sets = |key: &str| {
        extra
            .lines()
            .any(|l| l.split('=').next().is_some_and(|k| k.trim() == key))
    };
    let scan = if sets("scan_interval") {
        ""
    } else {
        "scan_interval = \"200ms\"\n"
    };
    // Memory relief acts on a host short of memory, which a test beside
    // this one may make the VM: off, unless the test is about it.
    let relief: String = ["memory_pressure", "memory_available_min"]
        .into_iter()
        .filter(|k| !sets(k))
        .map(|k| format!("{k} = \"off\"\n"))
        .collect();
    let text = format!(
        "socket = {:?}\n{scan}{relief}{extra}\n",
        socket.display().to_string()
    );
    fs::write(path, text).expect("writing the policy file");
}
