//! Processes a test starts: bounded waits, children killed and reaped
//! whatever happens (PID 1 reaps orphans late here, and a zombie is not
//! alive), gov run as another user.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::root::TestRoot;

/// Polls `cond` until it holds; panics with `what` at the deadline.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Is this pid alive and not a zombie?
pub fn alive(pid: u32) -> bool {
    gov::proc::is_alive(pid)
}

/// Pids listed in a file that a gate's script wrote, one per line.
pub fn read_pids(path: &Path) -> Vec<u32> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits for a child and returns its exit code (reaping it); None: killed
/// by a signal, or still running at the deadline (then killed).
pub fn reap(mut child: Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process that is killed and reaped when the test ends, also when
/// an assertion fails first (declared after the TestRoot, it drops before
/// the root's cgroups are killed and removed).
pub struct Kid(Option<Child>);

impl Kid {
    pub fn new(child: Child) -> Kid {
        Kid(Some(child))
    }

    /// Waits for the exit and returns its code, as [`reap`].
    pub fn reap(mut self, timeout: Duration) -> Option<i32> {
        reap(self.0.take().unwrap(), timeout)
    }

    /// The child itself, no longer killed on drop.
    pub fn into_inner(mut self) -> Child {
        self.0.take().unwrap()
    }
}

impl std::ops::Deref for Kid {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().unwrap()
    }
}

impl std::ops::DerefMut for Kid {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `gov spawn -p PROJECT [-s SESSION] -- sh -c SCRIPT`, run by `gov`
/// (`root.gov()`, or [`gov_as`] for another user), started in the
/// background; `root.gate_of(kid.id())` is its gate.
pub fn spawn_gate(mut gov: Command, project: &str, session: Option<&str>, script: &str) -> Kid {
    gov.args(["spawn", "-p", project]);
    if let Some(s) = session {
        gov.args(["-s", s]);
    }
    Kid::new(
        gov.args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .spawn()
            .expect("gov spawn starts"),
    )
}

/// The lines a host reads from its gate's stdout (taken from `host`), as
/// they come.
pub fn lines_of(host: &mut Kid) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = host.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    lines
}

/// The uid of user nobody, the tests' unprivileged client.
pub const NOBODY: u32 = 65534;

/// A second unprivileged user, with no entry in /etc/passwd needed: the
/// daemon knows clients by uid only.
pub const OTHER_USER: u32 = 65533;

/// Runs `cmd` as user `uid` (a real unprivileged client); returns what it
/// printed and its exit status.
pub fn as_user(uid: u32, cmd: &mut Command) -> Output {
    cmd.uid(uid)
        .gid(uid)
        .output()
        .expect("command runs as the test user")
}

/// A path `nobody` can execute: the gov binary where it lies if every
/// directory above it lets others through, else a 0755 copy in the test's
/// own (0755) temp dir.
pub fn gov_for_others(root: &TestRoot) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = crate::gov_bin();
    let reachable = bin.ancestors().skip(1).all(|d| {
        d.as_os_str().is_empty()
            || fs::metadata(d)
                .map(|m| m.permissions().mode() & 0o001 != 0)
                .unwrap_or(false)
    });
    let runnable = fs::metadata(&bin)
        .map(|m| m.permissions().mode() & 0o005 == 0o005)
        .unwrap_or(false);
    if reachable && runnable {
        return bin;
    }
    let copy = root.dir.path().join("gov");
    if !copy.exists() {
        fs::copy(&bin, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

/// `gov` as user `uid` (and group of the same number), with this root and
/// socket.
pub fn gov_as(root: &TestRoot, uid: u32) -> Command {
    let mut c = Command::new(gov_for_others(root));
    c.env("GOV_CGROUP_ROOT", &root.path)
        .env("GOV_SOCKET", &root.socket)
        .env_remove("GOV_LOG")
        .current_dir(root.dir.path())
        .uid(uid)
        .gid(uid);
    c
}

/// `gov` as user nobody, with this root and socket.
pub fn gov_as_nobody(root: &TestRoot) -> Command {
    gov_as(root, NOBODY)
}

/// The directory of the gov under test.
pub fn gov_dir() -> PathBuf {
    crate::gov_bin()
        .parent()
        .expect("gov lies in a directory")
        .to_path_buf()
}

/// PATH with these directories first (the gov under test, as if installed).
pub fn path_with(dirs: &[&Path]) -> String {
    let mut parts: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    parts.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(parts)
        .unwrap()
        .into_string()
        .expect("PATH is UTF-8")
}
