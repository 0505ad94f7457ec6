//! The recipes of docs/integrations.md, run for real: a REPL host that starts
//! its worker through a wrapper script, a Jupyter kernel driven by the real
//! jupyter_client, and a plain shell user. Real daemon, real cgroupfs, root.
//!
//! The scripts the doc shows live in tests/fixtures/ and the doc must contain
//! them verbatim, so what is documented is what is tested.
//!
//! The Jupyter test installs ipykernel and jupyter_client from PyPI into a
//! venv cached under target/tmp (about 20 s the first time). It skips, loudly,
//! only when PyPI cannot be reached, and fails instead with
//! GOV_REQUIRE_JUPYTER=1. In the VM suite (GOV_VM, busybox only) these tests
//! say SKIP: they need bash and python3.

use gov::protocol::{EventKind, GateInfo};
use gov_testkit as kit;
use kit::fixture;
use kit::{gov_dir, path_with};

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kit::{alive, reap, wait_until, TestRoot};

/// Short timeouts so a gate goes idle -> suspended -> stopping -> removed in
/// a few seconds. Orphans are left alone: these tests are about idleness.
const FAST: &str = "\
[defaults]
idle_timeout = \"2s\"
frozen_hold = \"1s\"
stop_grace = \"1s\"
orphan_grace = \"never\"
";

const NOBODY: u32 = 65534;

/// What these tests need that only a host has (the VM has busybox).
const HOST_NEEDS: &str = "bash, python3, PyPI";

/// A directory anyone may enter (for unprivileged clients).
fn open_dir(path: PathBuf) -> PathBuf {
    fs::create_dir_all(&path).unwrap();
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path
}

fn removed_reason(root: &TestRoot, gate: &str) -> Option<String> {
    root.events()
        .into_iter()
        .find(|e| e.gate == gate && e.kind == EventKind::Removed)
        .map(|e| e.reason.unwrap_or_default())
}

fn state(root: &TestRoot, gate: &str) -> String {
    root.gate(gate)
        .map(|g| g.state.as_str().to_string())
        .unwrap_or_else(|| "gone".into())
}

fn pids_of(root: &TestRoot, gate: &str) -> Vec<u32> {
    root.gate(gate).map(|g| g.pids).unwrap_or_default()
}

/// Lines of a child's stdout, read on a thread so a frozen worker cannot
/// hang the test.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(rx)
    }

    fn next(&self, timeout: Duration, what: &str) -> String {
        self.0
            .recv_timeout(timeout)
            .unwrap_or_else(|e| panic!("no line ({e}) within {timeout:?}: waiting for {what}"))
    }

    fn try_next(&self, timeout: Duration) -> Option<String> {
        self.0.recv_timeout(timeout).ok()
    }

    /// Is the stream closed (the child exited) within `timeout`?
    fn closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.0.recv_timeout(Duration::from_millis(50)) {
                Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                _ => continue,
            }
        }
        false
    }
}

// ---------------------------------------------------------------------------
// The doc shows the fixtures as they are

#[test]
fn the_doc_shows_the_tested_scripts_verbatim() {
    if kit::host_only("the_doc_shows_the_tested_scripts_verbatim", HOST_NEEDS) {
        return;
    }
    let doc =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/integrations.md"))
            .expect("docs/integrations.md exists");
    for f in ["gov-worker", "jupyter/kernels/gov-python3/kernel.json"] {
        let text = fs::read_to_string(fixture(f)).unwrap();
        assert!(
            doc.contains(text.trim_end()),
            "docs/integrations.md must show tests/fixtures/{f} verbatim"
        );
    }
}

// ---------------------------------------------------------------------------
// A REPL host (the Julia gate case)

/// The host starts its "julia" (our wrapper) with the session id in the
/// environment, learns one pid, calls `gov touch --session` at every tool
/// call and pings the worker for health. Pings keep nothing alive, though
/// each is answered (it wakes the suspended worker); touches do; a
/// suspended worker resumes on the next tool call with its state; left idle
/// it is stopped and its escaped grandchild goes with it.
#[test]
fn a_repl_host_starts_its_worker_through_the_wrapper_and_touches_at_each_tool_call() {
    if kit::host_only(
        "a_repl_host_starts_its_worker_through_the_wrapper",
        HOST_NEEDS,
    ) {
        return;
    }
    let root = TestRoot::new();
    // A longer hold than FAST's, so the test can act on a suspended gate
    // before it is stopped even on a busy machine.
    let _d = root.daemon(&FAST.replace(
        "frozen_hold = \"1s\"",
        "frozen_hold = \"3s\"\nwake_quiet = \"300ms\"",
    ));
    let project = open_dir(root.dir.path().join("MyPkg"));
    let session = "3fa2c1d0";

    let mut host = Command::new(fixture("gov-worker"))
        .arg(fixture("repl-worker.sh"))
        .env("GATE_WORKER", "sh")
        .env("GATE_SESSION", session)
        .env("PATH", path_with(&[&gov_dir()]))
        .env("GOV_SOCKET", &root.socket)
        .current_dir(&project)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the wrapper starts");
    let mut to_worker = host.stdin.take().unwrap();
    let from_worker = Lines::of(&mut host);

    // The pid the host holds is the worker's: wrapper, gov spawn and the
    // worker are one process, exec'd in turn.
    let ready = from_worker.next(Duration::from_secs(10), "the worker's ready line");
    let f: Vec<&str> = ready.split(' ').collect();
    assert_eq!(f.len(), 5, "{ready}");
    assert_eq!(f[0], "ready");
    assert_eq!(f[1].parse::<u32>().unwrap(), host.id(), "{ready}");
    let gate = f[2].to_string();
    assert_eq!(f[3], session);
    assert_eq!(Path::new(f[4]), project);
    let g = root.gate(&gate).expect("the worker's gate is listed");
    assert_eq!(g.session, session);
    assert_eq!(g.project, project.to_str().unwrap());

    let mut send = |line: &str| {
        writeln!(to_worker, "{line}").unwrap();
        to_worker.flush().unwrap();
    };
    // A tool call: the host touches first, then asks the worker.
    let tool_call = |send: &mut dyn FnMut(&str), code: &str| -> Vec<String> {
        root.ok(&["touch", "--session", session]);
        send(&format!("eval {code}"));
        let mut out = Vec::new();
        loop {
            let l = from_worker.next(Duration::from_secs(10), "the tool call's reply");
            if l == "ok" {
                return out;
            }
            out.push(l);
        }
    };

    // The tool call starts a test runner that escapes the worker's pid.
    let out = tool_call(
        &mut send,
        "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo child $!",
    );
    let runner: u32 = out[0].strip_prefix("child ").unwrap().parse().unwrap();
    assert!(
        pids_of(&root, &gate).contains(&runner),
        "{:?}",
        root.gate(&gate)
    );

    // Tool calls for longer than idle_timeout keep the gate running.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        tool_call(&mut send, "true");
        std::thread::sleep(Duration::from_millis(400));
    }
    assert_eq!(state(&root, &gate), "running");

    // Health pings alone do not: the gate is suspended while the host keeps
    // pinging. A ping to the suspended worker wakes it (input) and is
    // answered, and since input is not activity it sleeps again
    // `wake_quiet` later.
    wait_until(Duration::from_secs(10), "suspension despite pings", || {
        if state(&root, &gate) == "suspended" {
            return true;
        }
        send("ping");
        if let Some(l) = from_worker.try_next(Duration::from_millis(250)) {
            assert_eq!(l, "pong");
        }
        false
    });
    while let Some(l) = from_worker.try_next(Duration::from_millis(100)) {
        assert_eq!(l, "pong");
    }
    send("ping");
    assert_eq!(
        from_worker.try_next(Duration::from_secs(10)).as_deref(),
        Some("pong"),
        "a ping to the suspended worker is answered"
    );
    wait_until(
        Duration::from_secs(10),
        "asleep again after the ping",
        || state(&root, &gate) == "suspended",
    );

    // The next tool call resumes it as it was, and the runner is still there.
    let out = tool_call(&mut send, "echo still $$");
    let last = out.last().unwrap();
    assert_eq!(last, &format!("still {}", host.id()));
    assert_eq!(state(&root, &gate), "running");
    assert!(alive(runner));

    // Left idle: suspended, stopped (SIGTERM to the worker, which the host
    // sees as its worker exiting), and the escaped runner killed with it.
    assert!(
        from_worker.closed(Duration::from_secs(15)),
        "the worker's stdout closes when gov stops it"
    );
    let status = host.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    wait_until(Duration::from_secs(10), "the gate to be removed", || {
        root.gate(&gate).is_none()
    });
    assert!(
        !alive(runner),
        "the escaped test runner is reaped with its gate"
    );
    let reason = removed_reason(&root, &gate).expect("a removed event");
    assert!(reason.starts_with("idle"), "{reason}");
}

// ---------------------------------------------------------------------------
// A plain shell user

/// `gov spawn --project . -- bash`: the shell keeps its exit status, sees
/// GOV_* and lives in the gate; a gate whose processes all exited goes away.
#[test]
fn a_shell_user_runs_bash_in_a_gate() {
    if kit::host_only("a_shell_user_runs_bash_in_a_gate", HOST_NEEDS) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon(FAST);
    let project = open_dir(root.dir.path().join("work"));

    let out = root
        .gov()
        .current_dir(&project)
        .args(["spawn", "--project", ".", "--", "bash", "-c"])
        .arg(r#"echo "$GOV_GATE|$GOV_PROJECT|$GOV_SESSION"; cat /proc/self/cgroup; exit 7"#)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = stdout.lines().next().unwrap();
    let f: Vec<&str> = first.split('|').collect();
    let gate = f[0].to_string();
    assert!(gate.starts_with('g') && gate.len() == 11, "{first}");
    assert_eq!(Path::new(f[1]), project, "`.` becomes the absolute cwd");
    assert!(!f[2].is_empty(), "a session is generated");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{gate}"))),
        "bash ran inside its gate: {stdout}"
    );
    wait_until(Duration::from_secs(10), "the exited gate to go", || {
        root.gate(&gate).is_none()
    });
}

/// An ordinary user feeds bash a script on stdin that leaves a job behind,
/// as `nohup make test &` would; the user sees the gate, and once it is idle
/// gov reaps the leftover.
#[test]
fn a_shell_users_leftovers_are_reaped_when_idle() {
    if kit::host_only("a_shell_users_leftovers_are_reaped_when_idle", HOST_NEEDS) {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon(FAST);
    let project = open_dir(root.dir.path().join("work"));

    let mut bash = root
        .gov()
        .current_dir(&project)
        .args(["spawn", "--project", ".", "--", "bash", "-s"])
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    bash.stdin
        .take()
        .unwrap()
        .write_all(b"nohup sleep 300 >/dev/null 2>&1 &\necho \"$GOV_GATE $!\"\nexit 0\n")
        .unwrap();
    let lines = Lines::of(&mut bash);
    let line = lines.next(Duration::from_secs(10), "bash's report");
    let (gate, job) = line.split_once(' ').unwrap();
    let job: u32 = job.parse().unwrap();
    assert_eq!(reap(bash, Duration::from_secs(10)), Some(0));

    // The user sees their gate, with the job still in it.
    let ps = kit::as_user(NOBODY, root.gov().args(["ps", "--json"]));
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
    let gates: Vec<GateInfo> = serde_json::from_slice(&ps.stdout).unwrap();
    let g = gates
        .iter()
        .find(|g| g.id == gate)
        .expect("nobody sees the gate");
    assert_eq!(g.user, "nobody");
    assert!(g.pids.contains(&job));

    wait_until(Duration::from_secs(15), "the leftover to be reaped", || {
        !alive(job) && root.gate(gate).is_none()
    });
    let reason = removed_reason(&root, gate).expect("a removed event");
    assert!(reason.starts_with("idle"), "{reason}");
}

// ---------------------------------------------------------------------------
// A Jupyter kernel

/// `python3 FIXTURE` of `venv`, as a notebook server runs: the gov under
/// test and the venv first on PATH, kernel specs from `jupyter_path`,
/// Jupyter's and IPython's own directories under the test's, and the test
/// daemon's socket. Its stdout piped, in a process group of its own.
fn jupyter_driver(
    venv: &Path,
    root: &TestRoot,
    fixture_name: &str,
    jupyter_path: &Path,
) -> Command {
    let mut c = Command::new(venv.join("bin/python3"));
    c.arg(fixture(fixture_name))
        .env("PATH", path_with(&[&gov_dir(), &venv.join("bin")]))
        .env("JUPYTER_PATH", jupyter_path)
        .env(
            "JUPYTER_RUNTIME_DIR",
            open_dir(root.dir.path().join("jupyter-runtime")),
        )
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("IPYTHONDIR", open_dir(root.dir.path().join("ipython")))
        .env("GOV_SOCKET", &root.socket)
        .stdout(Stdio::piped())
        .process_group(0);
    c
}

/// The kernel spec of the doc, launched by jupyter_client's
/// MultiKernelManager (what jupyter_server uses): the kernel is the gate's
/// main process, its session is `jupyter-<kernel id>`, its project the
/// notebook's directory. A cell leaves `sleep 300` behind in a new session;
/// idle, the kernel is suspended, stopped, and the sleep killed with it.
#[test]
fn a_jupyter_kernel_and_its_detached_subprocess_are_reaped_when_idle() {
    let test = "a_jupyter_kernel_and_its_detached_subprocess_are_reaped_when_idle";
    if kit::host_only(test, HOST_NEEDS) {
        return;
    }
    let Some(venv) = kit::jupyter::venv_or_skip(test) else {
        return;
    };
    let root = TestRoot::new();
    let _d = root.daemon(FAST);
    let notebooks = open_dir(root.dir.path().join("notebooks"));

    let mut server = jupyter_driver(&venv, &root, "jupyter_driver.py", &fixture("jupyter"))
        .args(["gov-python3", notebooks.to_str().unwrap(), "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("the driver starts");
    let lines = Lines::of(&mut server);
    let first = lines.next(Duration::from_secs(90), "the kernel to run the cell");
    let v: serde_json::Value = serde_json::from_str(&first).expect(&first);
    let kernel_id = v["kernel_id"].as_str().unwrap();
    let kernel_pid = v["kernel_pid"].as_u64().unwrap() as u32;
    let cell = &v["cell"];
    let child = cell["child"].as_u64().unwrap() as u32;
    let gate = cell["gate"]
        .as_str()
        .expect("GOV_GATE in the kernel")
        .to_string();

    // The process jupyter_client started is the kernel, in its gate.
    assert_eq!(cell["pid"].as_u64().unwrap() as u32, kernel_pid);
    let session = format!("jupyter-{kernel_id}");
    assert_eq!(cell["session"], session.as_str());
    assert_eq!(cell["project"], notebooks.to_str().unwrap());
    let g = root.gate(&gate).expect("the kernel's gate is listed");
    assert_eq!(g.session, session);
    let pids = pids_of(&root, &gate);
    assert!(
        pids.contains(&kernel_pid) && pids.contains(&child),
        "{pids:?}"
    );
    // What a server extension would send when a cell runs.
    root.ok(&["touch", "--session", &session]);

    // Heartbeats flow, nobody runs a cell: suspended, then stopped.
    let second = lines.next(Duration::from_secs(60), "the kernel to be gone");
    let v: serde_json::Value = serde_json::from_str(&second).expect(&second);
    assert_eq!(v["gone"], true, "the idle kernel was not reaped: {second}");
    wait_until(
        Duration::from_secs(15),
        "the kernel's gate to be removed",
        || root.gate(&gate).is_none(),
    );
    assert!(!alive(kernel_pid), "the kernel is dead");
    assert!(!alive(child), "the detached subprocess is dead");
    let reason = removed_reason(&root, &gate).expect("a removed event");
    assert!(reason.starts_with("idle"), "{reason}");
    assert_eq!(reap(server, Duration::from_secs(30)), Some(0));
}

/// A hibernatable kernel, as issue 17 found it: jupyter_client starts it
/// from a kernel.json whose argv is `gov spawn --hibernate -- python -m
/// ipykernel_launcher -f {connection_file}`. ipykernel's parent poller
/// (JPY_PARENT_PID is set by jupyter_client) shut it down at once when its
/// parent was the namespace's init ("Parent appears to have exited"); now
/// it answers a cell. With CRIU, the daemon also hibernates the idle gate,
/// a touch brings it back, and the kernel still answers with its variable.
#[test]
fn a_hibernatable_jupyter_kernel_answers_and_keeps_its_state_through_hibernation() {
    let test = "a_hibernatable_jupyter_kernel_answers_and_keeps_its_state_through_hibernation";
    if kit::host_only(test, HOST_NEEDS) {
        return;
    }
    let Some(venv) = kit::jupyter::venv_or_skip(test) else {
        return;
    };
    // Without CRIU (said), the kernel is still checked to answer.
    let criu = kit::criu::criu_or_skip(test).map(|c| c.path().to_path_buf());
    let root = TestRoot::new();
    let images = root.dir.path().join("images");
    // Idle after 10 s (the kernel's start and its first cell must fit in:
    // a gate frozen mid-cell never answers it) and hibernated a second
    // later (with CRIU); never busy, never orphaned. Without CRIU it just
    // stays running. Its ZeroMQ sockets would keep it from being dumped
    // with wake on input (its notebook server could not reach it on disk):
    // this test of the dump turns that off and wakes it by a touch.
    let policy = format!(
        "hibernate_dir = {:?}\n[defaults]\nidle_timeout = \"{}\"\nfrozen_hold = \"1h\"\n\
         hibernate_after = \"1s\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\n\
         wake_on_input = false\n",
        images.display().to_string(),
        if criu.is_some() { "10s" } else { "1h" },
    );
    let criu_env: Vec<(&str, &str)> = criu
        .iter()
        .map(|c| ("GOV_CRIU", c.to_str().unwrap()))
        .collect();
    let _d = kit::Daemon::start_env(&root, &root.policy_file(&policy), &criu_env);
    let notebooks = open_dir(root.dir.path().join("notebooks"));
    // IPython's history is a sqlite file it writes under a POSIX lock after
    // each cell; CRIU refuses a tree holding one, and the daemon would then
    // keep the gate suspended. A server hibernating kernels turns it off.
    let ipython = open_dir(root.dir.path().join("ipython"));
    open_dir(ipython.join("profile_default"));
    fs::write(
        ipython.join("profile_default/ipython_kernel_config.py"),
        "c.HistoryManager.enabled = False\n",
    )
    .unwrap();
    let spec = open_dir(root.dir.path().join("jupyter/kernels/gov-hibernate"));
    let argv = serde_json::json!([
        "gov",
        "spawn",
        "--hibernate",
        "--project",
        notebooks,
        "--",
        "python",
        "-m",
        "ipykernel_launcher",
        "-f",
        "{connection_file}"
    ]);
    fs::write(
        spec.join("kernel.json"),
        serde_json::json!({"argv": argv, "display_name": "gov", "language": "python"}).to_string(),
    )
    .unwrap();

    let jupyter = root.dir.path().join("jupyter");
    let mut driver = jupyter_driver(&venv, &root, "jupyter_hibernate_driver.py", &jupyter)
        .args(["gov-hibernate", notebooks.to_str().unwrap()])
        .stdin(Stdio::piped())
        .spawn()
        .expect("the driver starts");
    let mut go = driver.stdin.take().unwrap();
    let lines = Lines::of(&mut driver);
    let json = |what: &str| -> serde_json::Value {
        let line = lines.next(Duration::from_secs(90), what);
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{what}: {e}: {line}"))
    };
    let first = json("the kernel to answer its first cell");
    assert_eq!(first["out"], "2", "{first}");
    let kernel_pid = first["kernel_pid"].as_u64().unwrap() as u32;
    let id = root.gate_of(kernel_pid);
    // The process jupyter_client started is the keeper, the gate's main
    // process; the kernel runs below it in <gate>/w.
    assert!(pids_of(&root, &id).contains(&kernel_pid));

    if criu.is_some() {
        wait_until(Duration::from_secs(90), "the kernel to hibernate", || {
            state(&root, &id) == "hibernated"
        });
        assert!(
            root.gate_cgroup(&id)
                .child("w")
                .read_procs()
                .unwrap()
                .is_empty(),
            "the kernel's processes are gone while hibernated"
        );
        assert!(alive(kernel_pid), "jupyter_client saw its kernel exit");
        root.ok(&["touch", &id]);
        assert_eq!(state(&root, &id), "running");
    }
    writeln!(go, "go").unwrap();
    let second = json("the kernel to answer again");
    assert_eq!(second["alive"], true, "{second}");
    assert_eq!(second["out"], "42", "x was kept: {second}");
    drop(go);
    assert_eq!(json("the kernel's shutdown")["shutdown"], true);
    assert_eq!(reap(driver, Duration::from_secs(30)), Some(0));
    wait_until(Duration::from_secs(15), "the kernel's gate to go", || {
        root.gate(&id).is_none()
    });
}
