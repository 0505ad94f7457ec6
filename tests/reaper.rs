//! The reaper against a real daemon, real processes and the real cgroupfs,
//! with timeouts of a few seconds.

use gov_testkit as kit;

use std::fs;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gov::protocol::{EventKind, GateState, Spared};
use kit::{alive, read_pids, reap, wait_until, Kid, TestRoot, NOBODY, OTHER_USER};

const FAST: &str = "\
[defaults]
idle_timeout = \"2s\"
frozen_hold = \"1s\"
stop_grace = \"1s\"
orphan_grace = \"never\"
busy_cpu_percent = 5.0
";

fn has_event(root: &TestRoot, gate: &str, kind: EventKind) -> bool {
    root.events()
        .iter()
        .any(|e| e.gate == gate && e.kind == kind)
}

fn removed(root: &TestRoot, gate: &str) -> bool {
    root.gate(gate).is_none() && has_event(root, gate, EventKind::Removed)
}

/// Touches a gate every `every` until dropped.
struct Toucher(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Toucher {
    fn start(root: &TestRoot, gate: &str, every: Duration) -> Toucher {
        let stop = Arc::new(AtomicBool::new(false));
        let mut cmd = root.gov();
        cmd.args(["touch", gate]);
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let _ = cmd.output();
                std::thread::sleep(every);
            }
        });
        Toucher(stop, Some(h))
    }
}

impl Drop for Toucher {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn the_idle_gate_goes_with_its_grandchild_and_the_others_live_on() {
    let root = TestRoot::new();
    let _d = root.daemon(FAST);
    let pids = root.dir.path().join("idle.pids");
    let idle = root.spawn_sh(
        "/src/three",
        &format!(
            "echo $$ > {p}; setsid sh -c 'echo $$ >> {p}; exec sleep 300' & sleep 300",
            p = pids.display()
        ),
    );
    let busy = root.spawn_sh("/src/three", "while :; do :; done");
    let touched = root.spawn_sh("/src/three", "sleep 300 & wait");
    let (idle_id, busy_id, touched_id) = (
        root.gate_of(idle.id()),
        root.gate_of(busy.id()),
        root.gate_of(touched.id()),
    );
    let _t = Toucher::start(&root, &touched_id, Duration::from_millis(500));
    wait_until(Duration::from_secs(5), "both pids of the idle gate", || {
        read_pids(&pids).len() == 2
    });
    let tree = read_pids(&pids);

    wait_until(Duration::from_secs(10), "idle gate suspended", || {
        has_event(&root, &idle_id, EventKind::Suspended)
    });
    wait_until(Duration::from_secs(10), "idle gate removed", || {
        removed(&root, &idle_id)
    });
    for p in &tree {
        wait_until(Duration::from_secs(5), "idle tree to die", || !alive(*p));
    }
    assert_eq!(
        reap(idle, Duration::from_secs(5)),
        None,
        "killed, so no exit code"
    );

    // Two more idle timeouts (2 s) later, counted in 200 ms scans, the busy
    // and the touched gate still run.
    root.wait_scans(2 * 2000 / 200);
    let busy_g = root.gate(&busy_id).expect("busy gate lives");
    let touched_g = root.gate(&touched_id).expect("touched gate lives");
    assert_eq!(busy_g.state, GateState::Running);
    assert_eq!(touched_g.state, GateState::Running);
    assert!(alive(busy.id()) && alive(touched.id()));
    assert!(!has_event(&root, &busy_id, EventKind::Suspended));
    assert!(!has_event(&root, &touched_id, EventKind::Suspended));
    root.ok(&["kill", &busy_id]);
    root.ok(&["kill", &touched_id]);
    reap(busy, Duration::from_secs(5));
    reap(touched, Duration::from_secs(5));
}

#[test]
fn health_pings_over_a_socket_are_not_activity() {
    let root = TestRoot::new();
    let _d = root.daemon(FAST);
    // The gate answers pings on a socket; the host pings every 500 ms and
    // never touches, as a host that counts pings as activity would.
    let (mut host, gate_end) = UnixStream::pair().unwrap();
    let gate_in = gate_end.try_clone().unwrap();
    let child = root
        .gov()
        .args([
            "spawn",
            "--project",
            "/src/pinged",
            "--",
            "sh",
            "-c",
            "while read l; do echo pong; done",
        ])
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(gate_in)))
        .stdout(Stdio::from(std::os::fd::OwnedFd::from(gate_end)))
        .spawn()
        .unwrap();
    let id = root.gate_of(child.id());
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answered = 0;
    let mut buf = [0u8; 5];
    use std::io::{Read, Write};
    for _ in 0..8 {
        if host.write_all(b"ping\n").is_err() {
            break;
        }
        if host.read_exact(&mut buf).is_ok() && &buf == b"pong\n" {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
        if has_event(&root, &id, EventKind::Suspended) {
            break;
        }
    }
    assert!(
        answered >= 3,
        "the gate answered pings while it ran ({answered})"
    );
    wait_until(
        Duration::from_secs(10),
        "pinged gate reaped as idle",
        || removed(&root, &id),
    );
    assert!(root.events().iter().any(|e| e.gate == id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().starts_with("idle")));
    reap(child, Duration::from_secs(5));
}

#[test]
fn a_gate_whose_owner_dies_is_reaped_after_orphan_grace() {
    let root = TestRoot::new();
    let _d = root
        .daemon("[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"1s\"\nstop_grace = \"1s\"\n");
    let pidfile = root.dir.path().join("gate.pid");
    // The owner is the shell that runs `gov spawn` (its parent).
    let owner = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{gov} spawn --project /src/orphan -- sh -c 'echo $$ > {p}; exec sleep 300' & wait",
            gov = kit::gov_bin().display(),
            p = pidfile.display()
        ))
        .env("GOV_CGROUP_ROOT", &root.path)
        .env("GOV_SOCKET", &root.socket)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(5), "gate pid", || {
        read_pids(&pidfile).len() == 1
    });
    let gate_pid = read_pids(&pidfile)[0];
    let id = root.gate_of(gate_pid);
    // Past orphan_grace (1 s), counted in 200 ms scans.
    root.wait_scans(1500 / 200);
    assert!(root.gate(&id).is_some(), "not reaped while the owner lives");
    assert!(!has_event(&root, &id, EventKind::Orphaned));

    let mut owner = owner;
    owner.kill().unwrap();
    owner.wait().unwrap();
    wait_until(Duration::from_secs(10), "orphan reaped", || {
        removed(&root, &id)
    });
    let ev = root.events();
    assert!(ev
        .iter()
        .any(|e| e.gate == id.as_str() && e.kind == EventKind::Orphaned));
    assert!(ev.iter().any(|e| e.gate == id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().starts_with("orphan")));
    // Orphans skip the freeze: they need their memory back now.
    assert!(!ev
        .iter()
        .any(|e| e.gate == id.as_str() && e.kind == EventKind::Suspended));
    wait_until(Duration::from_secs(5), "gate process gone", || {
        !alive(gate_pid)
    });
}

#[test]
fn a_suspended_gate_touched_within_the_hold_keeps_its_state() {
    let root = TestRoot::new();
    // Under TCG every fork costs ~25 ms of CPU: a threshold well above the
    // counter's own cost and far below a real computation.
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1h\"\nbusy_cpu_percent = 50.0\n",
    );
    let out = root.dir.path().join("count");
    // A counter in the shell's memory; SIGUSR1 asks it to write it out.
    let child = root.spawn_sh(
        "/src/counter",
        &format!(
            "i=0; trap 'echo $i > {}' USR1; while :; do i=$((i+1)); sleep 0.2; done",
            out.display()
        ),
    );
    let pid = child.id();
    let id = root.gate_of(pid);
    let ask = |root: &TestRoot| -> u64 {
        let _ = fs::remove_file(&out);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        let mut v = 0;
        wait_until(Duration::from_secs(5), "counter answer", || {
            v = fs::read_to_string(&out)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            v > 0
        });
        let _ = root;
        v
    };
    // The counter burns little CPU (sleep), so the gate goes idle.
    wait_until(Duration::from_secs(10), "gate suspended", || {
        root.gate(&id)
            .is_some_and(|g| g.state == GateState::Suspended)
    });
    let cg = root.gate_cgroup(&id);
    assert!(
        cg.read_cgroup_events().unwrap().frozen,
        "the kernel reports it frozen"
    );
    let usage = cg.read_cpu_usage_usec().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        cg.read_cpu_usage_usec().unwrap(),
        usage,
        "a frozen gate uses no CPU"
    );

    root.ok(&["touch", &id]);
    assert!(
        !cg.read_cgroup_events().unwrap().frozen,
        "touch thawed it before replying"
    );
    // Pinned, so a slow machine cannot let it idle out again mid-check.
    root.ok(&["pin", &id]);
    let first = ask(&root);
    let mut second = first;
    wait_until(Duration::from_secs(10), "the same counter to go on", || {
        second = ask(&root);
        second > first
    });
    assert!(alive(pid), "same process");
    assert!(has_event(&root, &id, EventKind::Thawed));
    root.ok(&["kill", &id]);
    reap(child, Duration::from_secs(5));
}

#[test]
fn a_stubborn_forking_gate_is_killed_and_a_polite_one_runs_its_exit_handler() {
    let root = TestRoot::new();
    let _d = root
        .daemon("[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"0s\"\nstop_grace = \"3s\"\nbusy_cpu_percent = 50.0\n");
    let done = root.dir.path().join("exit-handler-ran");
    let polite = root.spawn_sh(
        "/src/polite",
        &format!(
            "trap 'echo bye > {}; exit 0' TERM; while :; do sleep 1; done",
            done.display()
        ),
    );
    // Ignores SIGTERM and forks short-lived children forever.
    let pids = root.dir.path().join("stubborn.pids");
    let stubborn = root.spawn_sh(
        "/src/stubborn",
        &format!(
            "trap '' TERM; echo $$ > {p}; while :; do sleep 0.2 & echo $! >> {p}; sleep 0.1; done",
            p = pids.display()
        ),
    );
    let (pid_polite, pid_stubborn) = (polite.id(), stubborn.id());
    let (polite_id, stubborn_id) = (root.gate_of(pid_polite), root.gate_of(pid_stubborn));

    wait_until(Duration::from_secs(30), "polite gate removed", || {
        removed(&root, &polite_id)
    });
    assert_eq!(
        fs::read_to_string(&done).unwrap().trim(),
        "bye",
        "exit handler ran"
    );
    assert!(root.events().iter().any(|e| e.gate == polite_id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().contains("stopped")));
    assert_eq!(
        reap(polite, Duration::from_secs(5)),
        Some(0),
        "it exited by itself"
    );

    wait_until(Duration::from_secs(30), "stubborn gate removed", || {
        removed(&root, &stubborn_id)
    });
    assert!(root.events().iter().any(|e| e.gate == stubborn_id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().contains("killed")));
    for p in read_pids(&pids) {
        wait_until(Duration::from_secs(5), "every forked child dead", || {
            !alive(p)
        });
    }
    reap(stubborn, Duration::from_secs(5));
    assert!(root.gate_dirs().is_empty());
}

#[test]
fn a_daemon_killed_mid_reap_finishes_the_job_after_restart() {
    let root = TestRoot::new();
    // First life: suspend quickly, hold long, so the gate sits frozen.
    let d = root
        .daemon("[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1h\"\nstop_grace = \"1h\"\n");
    let frozen = root.spawn_sh("/src/restart", "trap '' TERM; sleep 300 & wait");
    let killing = root.spawn_sh("/src/restart", "trap '' TERM; sleep 300 & wait");
    let (frozen_id, killing_id) = (root.gate_of(frozen.id()), root.gate_of(killing.id()));
    root.ok(&["pin", &killing_id]);
    wait_until(Duration::from_secs(10), "gate suspended", || {
        root.gate(&frozen_id)
            .is_some_and(|g| g.state == GateState::Suspended)
    });
    d.sigkill();

    // The other gate as a daemon killed between "freeze what is left" and
    // cgroup.kill would leave it: frozen, with the kill intent tagged.
    let cg = root.gate_cgroup(&killing_id);
    cg.remove_tag("pinned").unwrap();
    cg.write_tag("reaping", "kill:idle").unwrap();
    cg.freeze(Duration::from_secs(5)).unwrap();
    assert!(
        root.gate_cgroup(&frozen_id)
            .read_cgroup_events()
            .unwrap()
            .frozen
    );

    // Second life, with a short hold: both end as policy says.
    let config = root.dir.path().join("restart.toml");
    kit::write_policy(
        &config,
        &root.socket,
        "[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1s\"\nstop_grace = \"1s\"\n",
    );
    let _d = kit::Daemon::start_with(&root, &config);
    wait_until(Duration::from_secs(15), "mid-kill gate removed", || {
        removed(&root, &killing_id)
    });
    wait_until(Duration::from_secs(15), "frozen gate torn down", || {
        removed(&root, &frozen_id)
    });
    assert!(root.gate_dirs().is_empty(), "nothing left, frozen or not");
    reap(frozen, Duration::from_secs(5));
    reap(killing, Duration::from_secs(5));
}

#[test]
fn evict_idlest_takes_the_least_recently_active_idle_gate() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\n[[project]]\npath = \"/src/capped\"\nmax_gates = 3\non_limit = \"evict-idlest\"\n",
    );
    let busy = root.spawn_sh("/src/capped", "while :; do :; done");
    let busy_id = root.gate_of(busy.id());
    let old = root.spawn_sh("/src/capped", "sleep 300 & wait");
    let old_id = root.gate_of(old.id());
    let pinned = root.spawn_sh("/src/capped", "sleep 300 & wait");
    let pinned_id = root.gate_of(pinned.id());
    root.ok(&["pin", &pinned_id]);
    // The pinned gate is the oldest by activity now; touch nothing else.
    // Let the daemon see the busy gate burn (a new gate's idle_s is 0 at
    // once, so that says nothing; the daemon's verdict does).
    wait_until(Duration::from_secs(10), "busy gate seen busy", || {
        root.gate(&busy_id)
            .is_some_and(|g| g.spared == Some(Spared::Busy))
    });

    let newer = root.spawn_sh("/src/capped", "sleep 300 & wait");
    let newer_id = root.gate_of(newer.id());
    wait_until(Duration::from_secs(10), "old idle gate evicted", || {
        removed(&root, &old_id)
    });
    assert!(root.events().iter().any(|e| e.gate == old_id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().starts_with("evicted")));
    for id in [&busy_id, &pinned_id, &newer_id] {
        assert!(root.gate(id).is_some(), "{id} kept");
    }
    for (id, child) in [(busy_id, busy), (pinned_id, pinned), (newer_id, newer)] {
        root.ok(&["kill", &id]);
        reap(child, Duration::from_secs(5));
    }
    reap(old, Duration::from_secs(5));
}

#[test]
fn a_refusing_cap_refuses_and_changes_nothing() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1h\"\n[[project]]\npath = \"/src/one\"\nmax_gates = 1\n",
    );
    let first = root.spawn_sh("/src/one", "sleep 300 & wait");
    let id = root.gate_of(first.id());
    let out = root.run(&["spawn", "--project", "/src/one", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_gates"), "{err}");
    assert_eq!(root.gate_dirs().len(), 1);
    root.ok(&["kill", &id]);
    reap(first, Duration::from_secs(5));
}

const BUDGET_POLICY: &str =
    "[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\nbusy_cpu_percent = 1.0\n";

#[test]
fn memory_budget_evicts_the_least_recently_active_idle_gate_first() {
    let root = TestRoot::new();
    // A busy gate must stay busy in the scans' eyes even where the machine
    // is loaded (under TCG a starved vCPU gives the loop a few percent of
    // wall time): a low threshold, which sleeping gates stay far below.
    let d = root.daemon(BUDGET_POLICY);
    let busy = root.spawn_sh("/src/budget", "while :; do :; done");
    let pinned = root.spawn_sh("/src/budget", "sleep 300 & wait");
    // The old gate holds 16 MiB of its own, so evicting it frees far more
    // than the shared pages whose PSS the others inherit when it goes.
    let ready = root.dir.path().join("old-ready");
    let old = root.spawn_sh(
        "/src/budget",
        &format!(
            "x=x; while [ ${{#x}} -lt 16777216 ]; do x=\"$x$x\"; done; : > {}; sleep 300 & wait",
            ready.display()
        ),
    );
    let recent = root.spawn_sh("/src/budget", "sleep 300 & wait");
    let ids: Vec<String> = [&busy, &pinned, &old, &recent]
        .iter()
        .map(|c| root.gate_of(c.id()))
        .collect();
    let (busy_id, pinned_id, old_id, recent_id) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    root.ok(&["pin", pinned_id]);
    wait_until(Duration::from_secs(60), "old gate's allocation", || {
        ready.exists()
    });
    // Its allocation was activity (slow under TCG): wait until the daemon has
    // seen it idle for a second, then make `recent` the more recently active
    // of the two idle gates.
    wait_until(Duration::from_secs(30), "old gate idle", || {
        root.gate(old_id)
            .is_some_and(|g| g.idle_s >= 1 && g.spared.is_none())
    });
    root.ok(&["touch", recent_id]);
    wait_until(Duration::from_secs(5), "busy gate seen busy", || {
        root.gate(busy_id)
            .is_some_and(|g| g.spared == Some(Spared::Busy))
    });

    // A budget no gate fits: relief takes from every idle gate, least
    // recently active first, the busy and the pinned gate never. (A budget
    // "just under" the total depends on memory figures that shift as gates
    // give.) Where memory.reclaim and swap are (the VM), the gates are
    // suspended and reclaimed; here, with neither, they are stopped, as the
    // budget always did.
    kit::write_policy(
        &d.config,
        &root.socket,
        &format!("memory_budget = \"4096\"\n{BUDGET_POLICY}"),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let relieved = |id: &str| {
        root.events()
            .iter()
            .position(|e| e.gate == id && e.kind == EventKind::Relieved)
    };
    for id in [old_id, recent_id] {
        wait_until(
            Duration::from_secs(20),
            "idle gates relieved for the budget",
            || relieved(id).is_some(),
        );
    }
    assert!(
        relieved(old_id) < relieved(recent_id),
        "the least recently active gate goes first"
    );
    let ev = root.events();
    let first = ev
        .iter()
        .find(|e| e.gate == old_id.as_str() && e.kind == EventKind::Relieved)
        .unwrap();
    assert!(
        first.reason.as_deref().unwrap().contains("memory budget"),
        "{first:?}"
    );
    if !kit::controllers_available() {
        for id in [old_id, recent_id] {
            wait_until(Duration::from_secs(20), "stopped for the budget", || {
                removed(&root, id)
            });
        }
        assert!(root.events().iter().any(|e| e.gate == old_id.as_str()
            && e.kind == EventKind::Removed
            && e.reason.as_deref().unwrap().starts_with("memory-budget")));
    }
    // Five more scans, each of which could have evicted them.
    root.wait_scans(5);
    for (what, id) in [("busy", busy_id), ("pinned", pinned_id)] {
        let of_it: Vec<_> = root
            .events()
            .into_iter()
            .filter(|e| e.gate == id.as_str())
            .collect();
        assert!(
            root.gate(id).is_some(),
            "the {what} gate {id} went: {of_it:?}"
        );
    }
    for (id, child) in ids.iter().zip([busy, pinned, old, recent]) {
        let _ = root.run(&["kill", id]);
        reap(child, Duration::from_secs(5));
    }
}

/// `gov spawn --project P [--pin] -- sh -c SCRIPT` as user `uid`, in the
/// background.
fn spawn_as(root: &TestRoot, uid: u32, project: &str, pin: bool, script: &str) -> Kid {
    let mut c = kit::gov_as(root, uid);
    c.args(["spawn", "--project", project]);
    if pin {
        c.arg("--pin");
    }
    c.args(["--", "sh", "-c", script]).stdin(Stdio::null());
    Kid::new(c.spawn().expect("gov spawn starts"))
}

/// The directory name of a gate's project cgroup.
fn project_dir(root: &TestRoot, gate: &str) -> String {
    let cg = kit::cgroup_parent(&root.gate_cgroup(gate));
    let name = cg.path().file_name().unwrap().to_str().unwrap();
    name.to_string()
}

/// max_gates and evict-idlest count one user's gates of a project: another
/// user naming the same project, with pinned gates, neither evicts the
/// owner's gate nor refuses the owner's spawns. Each user's gates of it
/// live in a project cgroup of their own, so its limits do not bind the two
/// together either. The owner's own cap still holds.
#[test]
fn another_users_gates_of_the_same_project_neither_evict_nor_cap_mine() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\n[[project]]\npath = \"/home/*/src/BigModel*\"\nmax_gates = 2\non_limit = \"evict-idlest\"\n",
    );
    let project = "/home/a/src/BigModel";
    let idle = "sleep 300 & wait";
    let a1 = spawn_as(&root, NOBODY, project, false, idle);
    let a1_id = root.gate_of(a1.id());
    let b1 = spawn_as(&root, OTHER_USER, project, true, idle);
    let b1_id = root.gate_of(b1.id());
    let b2 = spawn_as(&root, OTHER_USER, project, true, idle);
    let b2_id = root.gate_of(b2.id());
    // An eviction would have been sent by b2's spawn, before its reply.
    root.wait_scans(2);
    assert!(
        !has_event(&root, &a1_id, EventKind::Stopping) && root.gate(&a1_id).is_some(),
        "another user's spawns evicted my gate"
    );
    let a2 = spawn_as(&root, NOBODY, project, false, idle);
    let a2_id = root.gate_of(a2.id());

    let a_dir = project_dir(&root, &a1_id);
    let b_dir = project_dir(&root, &b1_id);
    assert_ne!(a_dir, b_dir, "one project cgroup per user");
    assert_eq!(a_dir, project_dir(&root, &a2_id));
    assert_eq!(b_dir, project_dir(&root, &b2_id));
    assert!(
        a_dir.starts_with(&format!("u{NOBODY}-bigmodel-")),
        "{a_dir}"
    );
    assert!(
        b_dir.starts_with(&format!("u{OTHER_USER}-bigmodel-")),
        "{b_dir}"
    );

    // My third gate evicts my idlest, never theirs.
    root.ok(&["touch", &a2_id]);
    let a3 = spawn_as(&root, NOBODY, project, false, idle);
    let a3_id = root.gate_of(a3.id());
    wait_until(Duration::from_secs(10), "my idlest gate evicted", || {
        removed(&root, &a1_id)
    });
    for id in [&a2_id, &a3_id, &b1_id, &b2_id] {
        assert!(root.gate(id).is_some(), "{id} kept");
    }
    for id in [&a2_id, &a3_id, &b1_id, &b2_id] {
        root.ok(&["kill", id]);
    }
    for kid in [a1, a2, a3, b1, b2] {
        kid.reap(Duration::from_secs(5));
    }
}

/// memory_budget: a pinned gate, which the budget can never evict, counts
/// against its own user's share of the budget, never against another user's
/// idle gate.
#[test]
fn a_pinned_gate_does_not_make_the_budget_evict_another_users_gate() {
    let root = TestRoot::new();
    let _d = root
        .daemon("memory_budget = \"8M\"\n[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\n");
    let idle = spawn_as(&root, NOBODY, "/src/a", false, "sleep 300 & wait");
    let idle_id = root.gate_of(idle.id());
    // 16 MiB of shell heap, twice the budget, in a pinned gate.
    let pinned = spawn_as(
        &root,
        OTHER_USER,
        "/src/b",
        true,
        "x=x; while [ ${#x} -lt 16777216 ]; do x=\"$x$x\"; done; sleep 300 & wait",
    );
    let pinned_id = root.gate_of(pinned.id());
    wait_until(Duration::from_secs(60), "the pinned gate's 16 MiB", || {
        root.gate(&pinned_id)
            .is_some_and(|g| g.memory_bytes >= 16 << 20)
    });
    root.wait_scans(3);
    assert!(
        !has_event(&root, &idle_id, EventKind::Stopping)
            && !has_event(&root, &idle_id, EventKind::Relieved)
            && root.gate(&idle_id).is_some(),
        "another user's pinned gate made the budget take from my idle gate"
    );
    for id in [&idle_id, &pinned_id] {
        root.ok(&["kill", id]);
    }
    idle.reap(Duration::from_secs(5));
    pinned.reap(Duration::from_secs(5));
}

#[test]
fn a_deadline_reaps_a_busy_gate_and_show_says_where_memory_comes_from() {
    let root = TestRoot::new();
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\n");
    let child = root
        .gov()
        .args([
            "spawn",
            "--project",
            "/src/runner",
            "--max-runtime",
            "2s",
            "--",
            "sh",
            "-c",
            "while :; do :; done",
        ])
        .spawn()
        .unwrap();
    let id = root.gate_of(child.id());
    // The client is in its cgroup a moment before the daemon registered
    // the gate (requests.rs moves it, then manages the gate).
    wait_until(Duration::from_secs(5), "the daemon knows the gate", || {
        root.gate(&id).is_some()
    });
    let show = root.ok(&["show", &id]);
    let expected = if kit::controllers_available() {
        "memory.current"
    } else {
        "PSS"
    };
    assert!(show.contains(expected), "{show}");
    wait_until(Duration::from_secs(10), "deadline reap", || {
        removed(&root, &id)
    });
    assert!(root.events().iter().any(|e| e.gate == id.as_str()
        && e.kind == EventKind::Removed
        && e.reason.as_deref().unwrap().starts_with("deadline")));
    reap(child, Duration::from_secs(5));
}

/// A project that opted out of idle reaping (`idle_timeout = "never"`),
/// a gate a person froze, and `frozen_hold` as given: the freeze must hold,
/// through scans and well past the hold, and a thaw brings the same
/// process back. Returns nothing: it asserts.
fn a_persons_freeze_holds(frozen_hold: &str, past_ms: u64) {
    let root = TestRoot::new();
    let _d = root.daemon(&format!(
        "[defaults]\nidle_timeout = \"never\"\nfrozen_hold = \"{frozen_hold}\"\nstop_grace = \"1s\"\norphan_grace = \"never\"\n"
    ));
    let child = root.spawn_sh("/src/never-idle", "exec sleep 600");
    let id = root.gate_of(child.id());
    root.ok(&["freeze", &id]);
    // Past the hold, counted in scans (each 200 ms), at least three of them.
    let scans = (past_ms / 200).max(3);
    for _ in 0..scans {
        root.wait_scans(1);
        let g = root.gate(&id).unwrap_or_else(|| {
            panic!(
                "a person's freeze with frozen_hold {frozen_hold} removed the gate: {:?}",
                root.events()
            )
        });
        assert_eq!(g.state, GateState::Frozen, "{g:?}");
    }
    assert!(
        !has_event(&root, &id, EventKind::Stopping),
        "{:?}",
        root.events()
    );
    assert!(root.gate_cgroup(&id).read_cgroup_events().unwrap().frozen);
    assert!(alive(child.id()));
    root.ok(&["thaw", &id]);
    assert_eq!(root.gate(&id).unwrap().state, GateState::Running);
    root.ok(&["kill", &id]);
    reap(child, Duration::from_secs(5));
}

/// The first case: with no hold, the freeze was a stop at once.
#[test]
fn a_persons_freeze_in_a_never_idle_project_is_not_a_stop_with_no_hold() {
    a_persons_freeze_holds("0s", 0);
}

/// The second case: with a 3 s hold, the gate was removed 3 s later
/// as "idle".
#[test]
fn a_persons_freeze_in_a_never_idle_project_outlasts_frozen_hold() {
    a_persons_freeze_holds("3s", 4000);
}
