//! What a gate's main process leaves behind (on_main_exit), and gates made
//! from processes already running (`gov adopt`), against a real daemon and
//! the real cgroupfs.

use gov::protocol::{EventKind, GateState};
use gov_testkit as kit;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kit::{alive, gov_as_nobody, read_pids, text, wait_until, Kid, TestRoot};

const POLICY: &str = "[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\nstop_grace = \"1s\"\nmain_exit_grace = \"2s\"\n";

/// A host holds the read end of the gate's stdout; the gate's main process
/// starts a `setsid` grandchild that ignores SIGHUP and keeps that pipe
/// open, then the main process is killed. Returns the host's pipe, the
/// gate, and the grandchild's pid.
fn gate_with_a_leftover(
    root: &TestRoot,
    on_main_exit: &str,
) -> (Kid, std::process::ChildStdout, String, u32) {
    let pidfile = root.dir.path().join(format!("leftover-{on_main_exit}"));
    let script = format!(
        "setsid sh -c 'trap \"\" HUP; echo $$ > {}; exec sleep 600' & wait",
        pidfile.display()
    );
    let mut kid = Kid::new(
        root.gov()
            .args([
                "spawn",
                "--project",
                "/srv/leftover",
                "--on-main-exit",
                on_main_exit,
            ])
            .args(["--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = kid.stdout.take().unwrap();
    let id = root.gate_of(kid.id());
    wait_until(Duration::from_secs(10), "the leftover to start", || {
        !read_pids(&pidfile).is_empty()
    });
    let leftover = read_pids(&pidfile)[0];
    // The host kills its worker, the gate's main process, and only that.
    kid.kill().unwrap();
    kid.wait().unwrap();
    (kid, stdout, id, leftover)
}

#[test]
fn leftovers_of_a_killed_main_process_are_stopped_after_main_exit_grace() {
    let root = TestRoot::new();
    let _d = root.daemon(POLICY);
    let killed_at = Instant::now();
    let (_kid, mut pipe, id, leftover) = gate_with_a_leftover(&root, "stop");
    wait_until(Duration::from_secs(10), "main_exited event", || {
        root.events()
            .iter()
            .any(|e| e.gate == id.as_str() && e.kind == EventKind::MainExited)
    });
    assert!(alive(leftover), "stopped before main_exit_grace");
    wait_until(
        Duration::from_secs(15),
        "the leftover to be stopped",
        || !alive(leftover),
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "stopped after {:?}, before main_exit_grace",
        killed_at.elapsed()
    );
    wait_until(Duration::from_secs(10), "the gate to go", || {
        root.gate(&id).is_none()
    });
    let removed = root
        .events()
        .into_iter()
        .find(|e| e.gate == id.as_str() && e.kind == EventKind::Removed)
        .expect("a removed event");
    assert!(
        removed.reason.as_deref().unwrap().starts_with("main-exit"),
        "{removed:?}"
    );
    // The host's pipe ends: nobody holds it any more.
    let mut rest = Vec::new();
    pipe.read_to_end(&mut rest).unwrap();
}

#[test]
fn with_keep_the_leftover_lives_on() {
    let root = TestRoot::new();
    let _d = root.daemon(POLICY);
    let (_kid, _pipe, id, leftover) = gate_with_a_leftover(&root, "keep");
    wait_until(Duration::from_secs(10), "main_exited event", || {
        root.events()
            .iter()
            .any(|e| e.gate == id.as_str() && e.kind == EventKind::MainExited)
    });
    // Well past main_exit_grace (2 s at a 200 ms scan): nothing happens.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        root.wait_scans(1);
    }
    assert!(alive(leftover), "keep stopped the leftover");
    assert_eq!(root.gate(&id).unwrap().state, GateState::Running);
    root.ok(&["kill", &id]);
    assert!(!alive(leftover));
}

/// `gov adopt` moves a running tree of three processes, one of them
/// `setsid`, into a new gate, which the reaper then reaps by policy.
#[test]
fn adopt_moves_a_running_tree_and_the_reaper_takes_it() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"0s\"\nstop_grace = \"1s\"\norphan_grace = \"never\"\n",
    );
    let pidfile = root.dir.path().join("tree");
    // main -> child (sleep), main -> setsid grandchild (sleep).
    let script = format!(
        "sleep 600 & echo $! >> {p}; setsid sh -c 'echo $$ >> {p}; exec sleep 600' & echo $$ >> {p}; wait",
        p = pidfile.display()
    );
    let kid = Kid::new(
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), "the tree to start", || {
        read_pids(&pidfile).len() == 3
    });
    let pids = read_pids(&pidfile);
    let out = root.run(&["adopt", &kid.id().to_string(), "--project", "/srv/adopted"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(
        text(&out.stderr).contains("adopted 3 process"),
        "{}",
        text(&out.stderr)
    );
    let gate = root.gate(&id).expect("the adopted gate is listed");
    let mut members = gate.pids;
    members.sort();
    let mut want = pids.clone();
    want.sort();
    assert_eq!(members, want, "every process of the tree is in the gate");
    // Idle past idle_timeout with frozen_hold 0s: stopped, then gone.
    wait_until(
        Duration::from_secs(20),
        "the adopted gate to be reaped",
        || root.gate(&id).is_none(),
    );
    for p in pids {
        assert!(!alive(p), "{p} survived the reap");
    }
    drop(kid);
}

/// Nobody cannot adopt root's process (it is "not found" to them), nor can
/// anyone adopt pid 1 or a process already in a gate.
#[test]
fn adopt_takes_only_what_is_yours() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let kid = Kid::new(Command::new("sleep").arg("600").spawn().unwrap());
    let pid = kid.id().to_string();
    let out = gov_as_nobody(&root)
        .args(["adopt", &pid, "--project", "/srv/theirs"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "nobody adopted root's process");
    let err = text(&out.stderr);
    assert!(err.contains("no process"), "{err}");
    assert!(root.ps().is_empty(), "a gate was made: {:?}", root.ps());
    let out = root.run(&["adopt", "1", "--project", "/srv/init"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot be adopted"));
    // Root may; and then it is in a gate, which cannot be adopted again.
    let id = root.ok(&["adopt", &pid, "--project", "/srv/mine"]);
    let out = root.run(&["adopt", &pid, "--project", "/srv/again"]);
    assert!(
        text(&out.stderr).contains("already in gate"),
        "{}",
        text(&out.stderr)
    );
    root.ok(&["kill", id.trim()]);
    assert!(!alive(kid.id()));
}

/// The stop comes at main_exit_grace's end, not at the next scan: with
/// scans an hour apart, the leftover is stopped and the gate removed with
/// no scan having run since the main process exited.
#[test]
fn the_main_exit_stop_comes_at_the_grace_not_at_a_scan() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "scan_interval = \"1h\"\n[defaults]\nidle_timeout = \"1h\"\norphan_grace = \"never\"\nstop_grace = \"1s\"\nmain_exit_grace = \"1s\"\n",
    );
    // A daemon scans as it starts and at its ticker's first, immediate
    // tick; after those, none for an hour.
    wait_until(Duration::from_secs(10), "the start's scans", || {
        root.scans() >= 2
    });
    let scans = root.scans();
    let (_kid, _pipe, id, leftover) = gate_with_a_leftover(&root, "stop");
    wait_until(Duration::from_secs(15), "the gate to go", || {
        root.gate(&id).is_none()
    });
    assert!(!alive(leftover), "the leftover outlived its gate");
    assert_eq!(root.scans(), scans, "a scan ran: the stop waited for it");
    let removed = root
        .events()
        .into_iter()
        .find(|e| e.gate == id.as_str() && e.kind == EventKind::Removed)
        .expect("a removed event");
    assert!(
        removed.reason.as_deref().unwrap().starts_with("main-exit"),
        "{removed:?}"
    );
}
