//! A cgroup root, socket and temp dir of a test's own, removed on drop
//! (also when an assertion fails first), and the teardown of a cgroup tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gov::cgroup::{self, Cgroup};

use crate::daemon::{write_policy, Daemon};
use crate::process::wait_until;
use crate::skip::require_root;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// `<cgroup2>/gov-test-<pid>-<n>` (not created: the daemon or the test
/// makes it), a socket path for its daemon, and a 0755 temp dir.
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
        let mut c = Command::new(crate::gov_bin());
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

    /// Starts `gov spawn --project P -- sh -c SCRIPT` in the background.
    pub fn spawn_sh(&self, project: &str, script: &str) -> std::process::Child {
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

    /// Every gate directory (`<root>/<project>/<gate>`) on cgroupfs.
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
}

impl Default for TestRoot {
    fn default() -> Self {
        TestRoot::new()
    }
}

impl Drop for TestRoot {
    fn drop(&mut self) {
        remove_tree(&self.path);
    }
}

/// Kills every process in a cgroup subtree of the caller's own and removes
/// it. Bounded: a cgroup that will not empty is reported and left.
pub fn remove_tree(path: &Path) {
    if !path.join("cgroup.procs").exists() {
        return;
    }
    // cgroup.kill takes the whole subtree at once; then the empty
    // directories go, deepest first.
    let cg = Cgroup::new(path);
    let _ = cg.write_freeze(false);
    let _ = cg.kill_all(Duration::from_secs(10));
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("cannot remove {}: {e}", path.display());
        }
    }
}

/// The cgroup a gate's cgroup lives in (its project).
pub fn cgroup_parent(cg: &Cgroup) -> Cgroup {
    Cgroup::new(cg.path().parent().expect("a gate has a project"))
}

/// The cgroup2 path of a test root relative to the mount, as
/// /proc/PID/cgroup shows it ("/gov-test-...").
pub fn root_rel(root: &TestRoot) -> String {
    let mount = cgroup::cgroup2_mount().unwrap();
    format!("/{}", root.path.strip_prefix(&mount).unwrap().display())
}

impl TestRoot {
    /// A gate that only sleeps, spawned by `gov` (`self.gov()`, or
    /// [`crate::gov_as`]) in `project` and `session`, and its id.
    pub fn sleeping_gate(
        &self,
        gov: Command,
        project: &str,
        session: Option<&str>,
    ) -> (crate::Kid, String) {
        let kid = crate::spawn_gate(gov, project, session, "sleep 600");
        let id = self.gate_of(kid.id());
        (kid, id)
    }
}
