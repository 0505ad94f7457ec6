//! No way out of a gate, and none out of a cgroup the caller could not
//! leave: a spawn from inside a gate is refused (root's gate too), adopt
//! leaves a child that sits in another gate where it is and refuses a
//! process in a cgroup its caller could not leave, and a debugger does not
//! spare a gate its deadline. Against a real daemon and the real cgroupfs.

use gov::protocol::EventKind;
use gov_testkit as kit;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gov::cgroup::{self, Cgroup};
use kit::{alive, gov_as_nobody, gov_for_others, text, wait_until, Kid, TestRoot, NOBODY};

const POLICY: &str =
    "[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\nstop_grace = \"1s\"\n";

/// The cgroup a process lives in.
fn cgroup_of(pid: u32) -> PathBuf {
    cgroup::cgroup_of(&cgroup::cgroup2_mount().unwrap(), pid).unwrap()
}

/// A directory of the test's that nobody may write, for a script's output.
fn open_dir(root: &TestRoot, name: &str) -> PathBuf {
    let dir = root.dir.path().join(name);
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Waits for a script's `out` file (written whole by a rename) and reads it.
fn output_of(out: &Path) -> String {
    wait_until(Duration::from_secs(15), "the script's output", || {
        out.exists()
    });
    fs::read_to_string(out).unwrap()
}

/// A gate's script tries `gov spawn` (no owner, pinned: as far away as a
/// request can ask) and then `gov touch` of its own gate, writes both exit
/// statuses, and stays. Returns the gate's main process, its gate, and what
/// the script wrote.
fn spawn_out_of_a_gate(root: &TestRoot, gov: Command, dir: &Path) -> (Kid, String, String) {
    let (out, err) = (dir.join("out"), dir.join("err"));
    let script = format!(
        "{{ \"$GOV\" spawn --no-owner --pin -p /srv/out -- sleep 600 2>{err}; echo \"spawn=$?\"; \
         \"$GOV\" touch \"$GOV_GATE\" 2>>{err}; echo \"touch=$?\"; }} >{out}.tmp; mv {out}.tmp {out}; exec sleep 600",
        err = err.display(),
        out = out.display(),
    );
    let mut gov = gov;
    let program = gov.get_program().to_owned();
    let kid = Kid::new(
        gov.env("GOV", program)
            .args(["spawn", "-p", "/srv/in", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gate = root.gate_of(kid.id());
    let said = output_of(&out) + &fs::read_to_string(&err).unwrap();
    (kid, gate, said)
}

/// A gate's process cannot move itself out with a spawn of its own, as
/// root or as a user; it can still touch its gate. Nothing else is made.
#[test]
fn a_process_in_a_gate_cannot_spawn_its_way_out() {
    let root = TestRoot::new();
    let _d = root.daemon(POLICY);
    let as_root = open_dir(&root, "root");
    let as_nobody = open_dir(&root, "nobody");
    for (who, gov, dir) in [
        ("root", root.gov(), as_root),
        ("nobody", gov_as_nobody(&root), as_nobody),
    ] {
        let (kid, gate, said) = spawn_out_of_a_gate(&root, gov, &dir);
        assert!(said.contains("spawn=1"), "{who}: {said}");
        assert!(
            said.contains(&format!(
                "already in gate {gate}: a gate's processes cannot leave it"
            )),
            "{who}: {said}"
        );
        assert!(
            said.contains("touch=0"),
            "{who}: a gate may touch itself: {said}"
        );
        assert_eq!(
            root.gate_of(kid.id()),
            gate,
            "{who}: the process left its gate"
        );
        let projects: Vec<_> = root.ps().into_iter().map(|g| g.project.clone()).collect();
        assert!(
            !projects.iter().any(|p| p == "/srv/out"),
            "{who}: a gate was made: {projects:?}"
        );
    }
}

/// Root's direct spawn, with no daemon, keeps the same rule.
#[test]
fn roots_direct_spawn_from_a_gate_is_refused_too() {
    let root = TestRoot::new();
    let dir = open_dir(&root, "direct");
    let (kid, gate, said) = spawn_out_of_a_gate(&root, root.gov(), &dir);
    assert!(said.contains("spawn=1"), "{said}");
    assert!(
        said.contains(&format!(
            "already in gate {gate}: a gate's processes cannot leave it"
        )),
        "{said}"
    );
    assert_eq!(root.gate_of(kid.id()), gate, "the process left its gate");
    assert_eq!(root.gate_dirs().len(), 1, "{:?}", root.gate_dirs());
}

/// Root adopts a process whose child already sits in a gate of its own:
/// the child stays there, listed as skipped; the rest moves.
#[test]
fn adopt_leaves_a_child_in_another_gate_where_it_is() {
    let root = TestRoot::new();
    let _d = root.daemon(POLICY);
    let dir = open_dir(&root, "tree");
    let (gated, plain) = (dir.join("gated"), dir.join("plain"));
    let script = format!(
        "\"$GOV\" spawn -p /srv/other -- sleep 600 & echo $! >{g}; sleep 600 & echo $! >{p}; wait",
        g = gated.display(),
        p = plain.display()
    );
    let parent = Kid::new(
        Command::new("sh")
            .args(["-c", &script])
            .env("GOV", kit::gov_bin())
            .env("GOV_SOCKET", &root.socket)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "both children", || {
        !kit::read_pids(&gated).is_empty() && !kit::read_pids(&plain).is_empty()
    });
    let (gated, plain) = (kit::read_pids(&gated)[0], kit::read_pids(&plain)[0]);
    let other = root.gate_of(gated);
    let out = root.run(&["adopt", &parent.id().to_string(), "-p", "/srv/adopted"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let adopted = text(&out.stdout).trim().to_string();
    assert!(
        text(&out.stderr).contains(&format!("left [{gated}] where they were")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(root.gate_of(gated), other, "the child left its gate");
    assert_eq!(root.gate_of(plain), adopted);
    assert_eq!(root.gate_of(parent.id()), adopted);
}

/// A cgroup of the test's, outside gov's root, removed (killed first) when
/// the test ends.
struct Fence(Cgroup);

impl Fence {
    fn new(root: &TestRoot, name: &str) -> Fence {
        let cg = Cgroup::new(root.path.join(name));
        cg.create().unwrap();
        Fence(cg)
    }

    /// Starts `sleep 600` as nobody, in this cgroup.
    fn sleeper(&self) -> Kid {
        let kid = Kid::new(
            Command::new("sleep")
                .arg("600")
                .uid(NOBODY)
                .gid(NOBODY)
                .spawn()
                .unwrap(),
        );
        self.0.write_procs(kid.id()).unwrap();
        kid
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        kit::remove_tree(self.0.path());
    }
}

/// gov's root below the test's own, so the test's cgroups sit beside it.
fn daemon_below(root: &TestRoot) -> kit::Daemon {
    fs::create_dir_all(&root.path).unwrap();
    let gov_root = root.path.join("gov");
    let config = root.policy_file(POLICY);
    kit::Daemon::start_env(
        root,
        &config,
        &[("GOV_CGROUP_ROOT", gov_root.to_str().unwrap())],
    )
}

/// A user adopts from the cgroup they run in, or from one delegated to
/// them; not from a root-owned cgroup they could not leave, which keeps
/// its process. Root adopts from anywhere outside gov's tree.
#[test]
fn adopt_takes_only_from_a_cgroup_the_user_could_leave() {
    let root = TestRoot::new();
    let _d = daemon_below(&root);
    let fence = Fence::new(&root, "fence");
    let kid = fence.sleeper();
    let pid = kid.id().to_string();
    // nobody, from the test's own cgroup: refused, and the process stays.
    let out = kit::as_user(
        NOBODY,
        gov_as_nobody(&root).args(["adopt", &pid, "-p", "/srv/fenced"]),
    );
    assert!(!out.status.success(), "nobody adopted out of the fence");
    assert!(
        text(&out.stderr).contains("which you could not leave yourself"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(cgroup_of(kid.id()), fence.0.path());
    assert!(root.ps().is_empty(), "a gate was made: {:?}", root.ps());
    // nobody, from inside the fence itself: as good as a spawn from there.
    let gov = gov_for_others(&root);
    let procs = fence.0.path().join("cgroup.procs");
    let mut adopt = Command::new(&gov);
    adopt
        .args(["adopt", &pid, "-p", "/srv/mine"])
        .env("GOV_SOCKET", &root.socket)
        .current_dir(root.dir.path());
    let out = enter_then_drop(&mut adopt, &procs, NOBODY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(root.gate_of(kid.id()), id);
    assert_eq!(root.gate(&id).unwrap().user, "nobody");
    // A cgroup delegated to nobody (its cgroup.procs theirs to write).
    let delegated = Fence::new(&root, "delegated");
    let owner = Some(nix::unistd::Uid::from_raw(NOBODY));
    nix::unistd::chown(delegated.0.path(), owner, None).unwrap();
    nix::unistd::chown(&delegated.0.path().join("cgroup.procs"), owner, None).unwrap();
    let theirs = delegated.sleeper();
    let out = kit::as_user(
        NOBODY,
        gov_as_nobody(&root).args(["adopt", &theirs.id().to_string(), "-p", "/srv/deleg"]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(root.gate_of(theirs.id()), text(&out.stdout).trim());
    // Root may take nobody's process out of a root-owned cgroup.
    let other = fence.sleeper();
    let id = root.ok(&["adopt", &other.id().to_string(), "-p", "/srv/root"]);
    assert_eq!(root.gate_of(other.id()), id.trim());
}

/// A debugger attached to a gate's process does not spare the gate its
/// deadline: it is stopped at max_runtime like any other.
#[test]
fn a_traced_gate_is_stopped_at_its_deadline() {
    let root = TestRoot::new();
    let _d = root.daemon(POLICY);
    let kid = Kid::new(
        root.gov()
            .args(["spawn", "-p", "/srv/traced", "--max-runtime", "2s", "--"])
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let gate = root.gate_of(kid.id());
    // The test is the debugger (a thread of it attaches with PTRACE_SEIZE
    // and passes each signal on), as strace or gdb would be: no such tool
    // is needed, here or in the VM.
    let _tracer = Tracer::attach(kid.id());
    wait_until(Duration::from_secs(10), "the tracer to attach", || {
        gov::proc::tracer_pid(kid.id()).is_some()
    });
    wait_until(Duration::from_secs(20), "the traced gate to go", || {
        root.gate(&gate).is_none()
    });
    assert!(!alive(kid.id()), "the traced process outlived its gate");
    let removed = root
        .events()
        .into_iter()
        .find(|e| e.gate == gate.as_str() && e.kind == EventKind::Removed)
        .expect("a removed event");
    assert!(
        removed.reason.as_deref().unwrap().starts_with("deadline"),
        "{removed:?}"
    );
}

/// `cmd`, run from cgroup `procs` (it enters as root) as `uid` (uid = gid,
/// no supplementary groups): as setpriv would, with nothing but libc, so it
/// runs in the VM's busybox too.
fn enter_then_drop<'c>(cmd: &'c mut Command, procs: &Path, uid: u32) -> &'c mut Command {
    let procs = std::ffi::CString::new(procs.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: between fork and exec only open, write, close, setgroups,
    // setgid and setuid, all async-signal-safe, on data made before.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(fd);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// A debugger attached to one process: a thread of the test that seizes it
/// with ptrace, restarts it with each signal it stops for, and reaps it
/// when it ends (the test is also its parent). Dropped, it kills the
/// process (through a pidfd: its pid may be anyone's once reaped) and
/// waits for the thread.
struct Tracer {
    pidfd: std::os::fd::OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracer {
    fn attach(pid: u32) -> Tracer {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        let pidfd = gov::proc::pidfd_open(pid).unwrap();
        let (tx, attached) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let ptrace = |req, sig: i32| {
                // SAFETY: ptrace(2) on our own child, no addresses passed.
                unsafe { libc::ptrace(req, pid as libc::pid_t, 0usize, sig as usize) }
            };
            tx.send(ptrace(libc::PTRACE_SEIZE, 0)).unwrap();
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            loop {
                match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::Stopped(_, sig)) => {
                        ptrace(libc::PTRACE_CONT, sig as i32);
                    }
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) | Err(_) => return,
                    Ok(_) => {
                        ptrace(libc::PTRACE_CONT, 0);
                    }
                }
            }
        });
        assert_eq!(attached.recv().unwrap(), 0, "PTRACE_SEIZE failed");
        Tracer {
            pidfd,
            thread: Some(thread),
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = gov::proc::pidfd_send_signal(&self.pidfd, libc::SIGKILL);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
