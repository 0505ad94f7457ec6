//! Test support shared by the host tests: a cgroup root of the test's own,
//! a daemon of the test's own, and bounded waits. Everything a test creates
//! is removed in Drop, so it is cleaned up when an assertion fails too.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gov::cgroup::{self, Cgroup};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The `gov` binary: GOV_BIN inside the VM, else cargo's build of it.
pub fn gov_bin() -> PathBuf {
    std::env::var_os("GOV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gov")))
}

/// Host tests need root and cgroup2. A missing prerequisite fails loudly:
/// a skip is not a pass.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests act on the real cgroupfs and must run as root"
    );
}

/// Are the memory, pids and cpu controllers usable in cgroup2 here? Only
/// in the VM (pure cgroup2); our hosts' v2 hierarchy has none.
pub fn controllers_available() -> bool {
    let Ok(mount) = cgroup::cgroup2_mount() else {
        return false;
    };
    let have = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    ["memory", "pids", "cpu"]
        .iter()
        .all(|c| have.split_whitespace().any(|h| h == *c))
}

/// For tests that need controllers: on the host they say so and return
/// false; in the VM (GOV_REQUIRE_CONTROLLERS=1) a missing controller fails.
pub fn needs_controllers(test: &str) -> bool {
    if controllers_available() {
        return true;
    }
    assert!(
        std::env::var_os("GOV_REQUIRE_CONTROLLERS").is_none(),
        "{test}: cgroup2 controllers are required here but missing"
    );
    skip(
        test,
        "no cgroup2 controllers on this host; it runs in the VM suite (integration/vm-test)",
    );
    false
}

/// Says that `test` is skipped, and why: straight to fd 2, past libtest's
/// capture (which takes only `eprintln!`), because a skip must be seen.
pub fn skip(test: &str, why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

/// A cgroup root for one test: `<cgroup2>/gov-test-<pid>-<n>`, killed and
/// removed (depth first) on drop.
pub struct TestRoot {
    pub path: PathBuf,
    pub socket: PathBuf,
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        require_root();
        let mount = cgroup::cgroup2_mount().expect("cgroup2 is mounted");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = mount.join(format!("gov-test-{}-{n}", std::process::id()));
        let dir = tempfile::Builder::new()
            .prefix("gov-test-")
            .tempdir()
            .unwrap();
        // Unprivileged test clients must reach the socket.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        TestRoot {
            socket: dir.path().join("gov.sock"),
            path,
            dir,
        }
    }

    /// `gov` with this root and socket in its environment.
    pub fn gov(&self) -> Command {
        let mut c = Command::new(gov_bin());
        c.env("GOV_CGROUP_ROOT", &self.path)
            .env("GOV_SOCKET", &self.socket)
            .env_remove("GOV_LOG");
        c
    }

    /// Runs `gov ARGS`, returns its output (any exit status).
    pub fn run(&self, args: &[&str]) -> Output {
        self.gov().args(args).output().expect("gov runs")
    }

    /// Runs `gov ARGS` and insists it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "gov {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `gov ps --json` as values.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["ps", "--json"])).expect("ps --json is JSON")
    }

    /// `gov events --json` (the last 1,000).
    pub fn events(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["events", "--json", "-n", "1000"])).unwrap()
    }

    pub fn gate(&self, id: &str) -> Option<serde_json::Value> {
        self.ps().into_iter().find(|g| g["id"] == id)
    }

    /// Starts `gov spawn --project P -- sh -c SCRIPT` in the background.
    pub fn spawn_sh(&self, project: &str, script: &str) -> Child {
        self.gov()
            .args(["spawn", "--project", project, "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .spawn()
            .expect("gov spawn starts")
    }

    /// The id of the gate that process `pid` lives in, once it is there.
    pub fn gate_of(&self, pid: u32) -> String {
        let mut id = None;
        wait_until(Duration::from_secs(10), "process to enter its gate", || {
            let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
                return false;
            };
            let rel = cgroup::parse_proc_cgroup(&text).unwrap_or("");
            let prefix = self.path.file_name().unwrap().to_str().unwrap();
            if rel.contains(prefix) {
                id = rel.rsplit('/').next().map(str::to_string);
                id.as_ref().is_some_and(|i| i.starts_with('g'))
            } else {
                false
            }
        });
        id.unwrap()
    }

    /// The gate's cgroup directory.
    pub fn gate_cgroup(&self, id: &str) -> Cgroup {
        for project in fs::read_dir(&self.path).unwrap().flatten() {
            let p = project.path().join(id);
            if p.is_dir() {
                return Cgroup::new(p);
            }
        }
        panic!("no cgroup for gate {id} under {}", self.path.display())
    }

    pub fn gate_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(projects) = fs::read_dir(&self.path) else {
            return out;
        };
        for p in projects.flatten().filter(|p| p.path().is_dir()) {
            for g in fs::read_dir(p.path()).into_iter().flatten().flatten() {
                if g.path().is_dir() {
                    out.push(g.path());
                }
            }
        }
        out
    }

    /// Starts a daemon on this root with `extra` policy lines.
    pub fn daemon(&self, extra: &str) -> Daemon {
        Daemon::start(self, extra)
    }

    /// A policy file for this root's socket with `extra` lines.
    pub fn policy_file(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!(
            "gov-{}.toml",
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        write_policy(&path, &self.socket, extra);
        path
    }

    /// Scans the daemon has made (its `hello` reply).
    pub fn scans(&self) -> u64 {
        match gov::client::request(&self.socket, gov::protocol::Request::Hello) {
            Ok(Some(gov::protocol::Response::Hello { scans, .. })) => scans,
            other => panic!("hello: {other:?}"),
        }
    }

    /// Waits until the daemon has made `n` more scans than now.
    pub fn wait_scans(&self, n: u64) {
        let until = self.scans() + n;
        wait_until(Duration::from_secs(30), "more scans", || {
            self.scans() >= until
        });
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Kills and removes a cgroup subtree that a test created, depth first.
pub fn remove_tree(path: &Path) {
    if !path.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let cg = Cgroup::new(path);
    let _ = cg.write_freeze(false);
    let _ = cg.kill_all(Duration::from_secs(10));
    let _ = cg.remove();
}

/// A gov daemon of the test's own, stopped (SIGTERM, then SIGKILL) on drop.
pub struct Daemon {
    pub child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    pub fn start(root: &TestRoot, extra: &str) -> Daemon {
        Daemon::start_with(root, &root.policy_file(extra))
    }

    /// Starts a daemon on an existing policy file (a restart).
    pub fn start_with(root: &TestRoot, config: &Path) -> Daemon {
        Daemon::start_env(root, config, &[])
    }

    /// Starts a daemon with extra environment (GOV_TEST_FAULT, ...).
    pub fn start_env(root: &TestRoot, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = root.dir.path().join("daemon.log");
        let logfile = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = root
            .gov()
            .args(["daemon", "--config"])
            .arg(config)
            .env("GOV_LOG", "debug")
            // CRIU only where a test gives it (the suite's GOV_CRIU names
            // the build to test with, not every daemon's).
            .env_remove("GOV_CRIU")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .process_group(0)
            .spawn()
            .expect("gov daemon starts");
        let mut d = Daemon {
            child,
            config: config.to_path_buf(),
            log,
            socket: root.socket.clone(),
        };
        let sock = d.socket.clone();
        let mut exited = None;
        wait_until(Duration::from_secs(10), "daemon socket to accept", || {
            if let Ok(Some(st)) = d.child.try_wait() {
                exited = Some(st);
                return true;
            }
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
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

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A policy file for tests: this socket, a fast scan, plus `extra`.
pub fn write_policy(path: &Path, socket: &Path, extra: &str) {
    let mut f = fs::File::create(path).unwrap();
    // Top-level keys must come before any table; callers put tables in extra.
    // A test may set its own scan_interval.
    let own_scan = extra.lines().any(|l| {
        l.split('=')
            .next()
            .is_some_and(|k| k.trim() == "scan_interval")
    });
    let scan = if own_scan {
        ""
    } else {
        "scan_interval = \"200ms\"\n"
    };
    writeln!(
        f,
        "socket = {:?}\n{scan}{extra}",
        socket.display().to_string()
    )
    .unwrap();
}

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

/// Is this pid alive and not a zombie? (PID 1 reaps orphans late here.)
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

/// Waits for a child and returns its exit code (reaping it).
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

/// Runs `f` as user `uid` in a forked child process (a real unprivileged
/// client); returns what it printed and its exit status.
pub fn as_user(uid: u32, cmd: &mut Command) -> Output {
    cmd.uid(uid)
        .gid(uid)
        .output()
        .expect("command runs as the test user")
}

/// The cgroup a gate's cgroup lives in (its project).
pub fn cgroup_parent(cg: &Cgroup) -> Cgroup {
    Cgroup::new(cg.path().parent().expect("a gate has a project"))
}

/// The uid of user nobody, the tests' unprivileged client.
pub const NOBODY: u32 = 65534;

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The cgroup2 path of a test root relative to the mount, as
/// /proc/PID/cgroup shows it ("/gov-test-...").
pub fn root_rel(root: &TestRoot) -> String {
    let mount = gov::cgroup::cgroup2_mount().unwrap();
    format!("/{}", root.path.strip_prefix(&mount).unwrap().display())
}

/// A child process that is killed and reaped when the test ends, also when
/// an assertion fails first (declared after the TestRoot, it drops before
/// the root's cgroups are killed and removed).
pub struct Kid(Option<Child>);

impl Kid {
    pub fn new(child: Child) -> Kid {
        Kid(Some(child))
    }

    /// Waits for the exit and returns its code (None: killed by a signal or
    /// still running at the deadline, then killed).
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

/// A path `nobody` can execute: the test binary where it lies if every
/// directory above it lets others through, else a 0755 copy in the test's
/// own (0755) temp dir.
pub fn gov_for_others(root: &TestRoot) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = gov_bin();
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

/// `gov` as user nobody, with this root and socket.
pub fn gov_as_nobody(root: &TestRoot) -> Command {
    gov_as(root, NOBODY)
}

/// A second unprivileged user, with no entry in /etc/passwd needed: the
/// daemon knows clients by uid only.
pub const OTHER_USER: u32 = 65533;

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
