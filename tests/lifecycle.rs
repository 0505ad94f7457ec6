//! One owner per gate: the races that two actions on one gate used to run,
//! each held open on purpose and checked deterministically, against a real
//! daemon, real processes and the real cgroupfs.

use gov::protocol::{Event, EventKind};
use gov_testkit as kit;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kit::{alive, reap, text, wait_until, Daemon, Kid, TestRoot};
use serde_json::Value;

fn spawn_sh(root: &TestRoot, project: &str, script: &str) -> Kid {
    Kid::new(root.spawn_sh(project, script))
}

fn events_of(root: &TestRoot, gate: &str, kind: EventKind) -> Vec<Event> {
    root.events()
        .into_iter()
        .filter(|e| e.gate == gate && e.kind == kind)
        .collect()
}

fn state(root: &TestRoot, gate: &str) -> Option<String> {
    root.gate(gate).map(|g| g.state.as_str().to_string())
}

/// The sum of gov_reaps_total over its reasons.
fn reaps_total(root: &TestRoot) -> u64 {
    root.ok(&["metrics"])
        .lines()
        .filter(|l| l.starts_with("gov_reaps_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A touch that lands while the reaper's freeze is in flight (cgroup.freeze
/// already 1, the daemon still waiting for the kernel) waits for the freeze
/// and thaws: when the touch's reply comes, the gate runs. The daemon holds
/// its freeze open for 400 ms (GOV_TEST_FAULT) so the touch lands inside it
/// every time; before the owner, such a touch was answered and the gate then
/// stayed frozen.
#[test]
fn a_touch_during_an_in_flight_freeze_leaves_the_gate_running() {
    let root = TestRoot::new();
    let config = root.policy_file(
        // Never busy: 300 processes waking from a thaw use CPU under TCG.
        "[defaults]\nidle_timeout = \"3s\"\nfrozen_hold = \"1h\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\n",
    );
    let _d = Daemon::start_env(&root, &config, &[("GOV_TEST_FAULT", "freeze=sleep:400")]);
    // A few hundred processes, so the kernel's freeze itself takes a while.
    let kid = spawn_sh(
        &root,
        "/srv/freeze-race",
        "for i in $(seq 300); do sleep 600 & done; wait",
    );
    let id = root.gate_of(kid.id());
    let cg = root.gate_cgroup(&id);
    let mut saw_kernel_midway = 0;
    for round in 1..=3 {
        // The reaper's freeze begins: cgroup.freeze turns 1.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cg.read_file("cgroup.freeze").unwrap().trim() == "1" {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: no freeze began");
            std::thread::sleep(Duration::from_millis(2));
        }
        if !cg.read_cgroup_events().unwrap().frozen {
            saw_kernel_midway += 1;
        }
        root.ok(&["touch", &id]);
        // The reply came: the gate runs, now.
        assert_eq!(
            cg.read_file("cgroup.freeze").unwrap().trim(),
            "0",
            "round {round}: cgroup.freeze after the touch"
        );
        assert!(
            !cg.read_cgroup_events().unwrap().frozen,
            "round {round}: frozen after the touch's reply"
        );
        assert_eq!(state(&root, &id).as_deref(), Some("running"));
        // And stays so: the freeze in flight did not finish after the touch
        // (two scans come well within the next idle_timeout, even in TCG).
        root.wait_scans(2);
        assert!(
            !cg.read_cgroup_events().unwrap().frozen,
            "round {round}: frozen again before its idle_timeout"
        );
        assert_eq!(events_of(&root, &id, EventKind::Suspended).len(), round);
        assert_eq!(events_of(&root, &id, EventKind::Thawed).len(), round);
    }
    eprintln!("touches that met cgroup.freeze=1 with frozen 0: {saw_kernel_midway} of 3");
    root.ok(&["kill", &id]);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// `frozen_hold = "0s"` stops an idle gate without suspending it; `ps` says
/// `stopping` during the stop grace; a `gov kill` then joins that teardown:
/// one teardown, one `removed` event, one reap counted, and the kill is
/// answered once the gate is gone.
#[test]
fn a_kill_during_a_stop_grace_is_one_teardown() {
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"0s\"\nstop_grace = \"60s\"\norphan_grace = \"never\"\n",
    );
    // Ignores stop_signal (and so do its children): it lives through the grace.
    let kid = spawn_sh(
        &root,
        "/srv/stubborn",
        "trap '' TERM; sleep 600 & sleep 600 & wait",
    );
    let id = root.gate_of(kid.id());
    wait_until(Duration::from_secs(15), "the gate to be stopping", || {
        state(&root, &id).as_deref() == Some("stopping")
    });
    let shown: Value =
        serde_json::from_str(&root.ok(&["show", &id, "--json"])).expect("show --json");
    assert_eq!(shown["state"], "stopping");
    assert_eq!(shown["next"]["action"], "kill");
    assert!(
        events_of(&root, &id, EventKind::Suspended).is_empty(),
        "frozen_hold 0s: never suspended"
    );
    let cg = root.gate_cgroup(&id);
    let started = Instant::now();
    root.ok(&["kill", &id]);
    // Answered once the gate is gone, long before the grace's end.
    assert!(
        !cg.path().exists(),
        "the kill answered before the gate went"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(root.gate(&id).is_none());
    let removed = events_of(&root, &id, EventKind::Removed);
    assert_eq!(removed.len(), 1, "one teardown: {removed:?}");
    assert_eq!(removed[0].reason.as_deref(), Some("idle (killed)"));
    assert_eq!(reaps_total(&root), 1, "the reap is counted once");
    // Nothing more happens to it later, either.
    root.wait_scans(3);
    assert_eq!(events_of(&root, &id, EventKind::Removed).len(), 1);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// An action that panics is logged with its gate and answered with an
/// error; the gate stays managed and the daemon keeps serving.
#[test]
fn a_panicking_action_leaves_the_gate_managed() {
    let root = TestRoot::new();
    let config = root.policy_file("");
    let mut d = Daemon::start_env(&root, &config, &[("GOV_TEST_FAULT", "pin=panic")]);
    let kid = spawn_sh(&root, "/srv/panic", "sleep 600");
    let id = root.gate_of(kid.id());
    let out = root.run(&["pin", &id]);
    assert!(!out.status.success(), "the panicking pin reports failure");
    let err = text(&out.stderr);
    assert!(err.contains("failed"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    // Still managed: listed, shown, acted on.
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    root.ok(&["show", &id]);
    root.ok(&["freeze", &id]);
    assert_eq!(state(&root, &id).as_deref(), Some("frozen"));
    root.ok(&["thaw", &id]);
    let failed = events_of(&root, &id, EventKind::Failed);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].reason.as_deref().unwrap().starts_with("pin"));
    assert!(d.log_text().contains("panicked"), "logged");
    root.ok(&["kill", &id]);
    assert!(root.gate(&id).is_none());
    assert!(matches!(d.child.try_wait(), Ok(None)), "the daemon lives");
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// `gov pin` takes effect and shows at once (no scan in between), and is
/// an event; so is unpin and tag.
#[test]
fn pin_unpin_and_tag_show_at_once_and_are_events() {
    let root = TestRoot::new();
    // A slow scan: nothing in this test may wait for one.
    let _d = root.daemon("scan_interval = \"1h\"\n[defaults]\nidle_timeout = \"1h\"\n");
    let kid = spawn_sh(&root, "/srv/pin", "sleep 600");
    let id = root.gate_of(kid.id());
    let show = |root: &TestRoot| -> Value {
        serde_json::from_str(&root.ok(&["show", &id, "--json"])).unwrap()
    };
    root.ok(&["pin", &id]);
    let g = show(&root);
    assert_eq!(g["pinned"], true);
    assert_eq!(g["spared"], "pinned");
    assert!(g["next"].is_null(), "a pinned gate has no next step: {g}");
    root.ok(&["unpin", &id]);
    let g = show(&root);
    assert_eq!(g["pinned"], false);
    assert!(g["spared"].is_null());
    assert_eq!(g["next"]["action"], "suspend");
    root.ok(&["tag", &id, "--session", "later-s"]);
    assert_eq!(show(&root)["session"], "later-s");
    for kind in [EventKind::Pinned, EventKind::Unpinned, EventKind::Tagged] {
        assert_eq!(events_of(&root, &id, kind).len(), 1, "{kind:?}");
    }
    root.ok(&["kill", &id]);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// 1,000 concurrent spawns from one user all succeed (the connection cap
/// makes them wait their turn, it does not refuse them), and so do 1,000
/// concurrent touches of one gate. Under TCG in the VM, where a migration
/// costs some 20x more, 200 of each, so the burst fits the client's reply
/// deadline there too.
#[test]
fn a_thousand_concurrent_spawns_and_touches_all_succeed() {
    let root = TestRoot::new();
    let _d = root.daemon("");
    let n = if std::env::var_os("GOV_VM").is_some() {
        200
    } else {
        1000
    };
    let started = Instant::now();
    let kids: Vec<_> = (0..n)
        .map(|_| {
            root.gov()
                .args([
                    "spawn",
                    "--project",
                    "/srv/burst",
                    "--no-owner",
                    "--",
                    "true",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("gov spawn starts")
        })
        .collect();
    let mut failed = Vec::new();
    for k in kids {
        let out = k.wait_with_output().unwrap();
        if !out.status.success() {
            failed.push(text(&out.stderr));
        }
    }
    eprintln!(
        "{n} concurrent spawns: {} failed, all done in {:?}",
        failed.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    wait_until(Duration::from_secs(30), "the emptied gates to go", || {
        root.ps().is_empty()
    });

    let kid = spawn_sh(&root, "/srv/touched", "sleep 600");
    let id = root.gate_of(kid.id());
    let touches: Vec<_> = (0..n)
        .map(|_| {
            root.gov()
                .args(["touch", &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let failed = touches
        .into_iter()
        .map(|t| t.wait_with_output().unwrap())
        .filter(|o| !o.status.success())
        .count();
    assert_eq!(failed, 0, "touches refused");
    root.ok(&["kill", &id]);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// A second daemon on a cgroup root that a live daemon holds, or on its
/// socket, refuses to start with one sentence naming the other's pid and how
/// to stop it, and creates or changes nothing. Once the first is gone, the root is free.
#[test]
fn a_second_daemon_on_the_same_root_or_socket_is_refused() {
    let root = TestRoot::new();
    let first = root.daemon("");
    let kid = spawn_sh(&root, "/srv/one", "sleep 600");
    let id = root.gate_of(kid.id());
    let leaf_before = std::fs::read_to_string(root.path.join("daemon/cgroup.procs")).unwrap();

    let try_daemon = |config: &std::path::Path, cgroup_root: &std::path::Path| {
        let child = Command::new(kit::gov_bin())
            .args(["daemon", "--config"])
            .arg(config)
            .env("GOV_CGROUP_ROOT", cgroup_root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let code = reap_output(child, Duration::from_secs(10));
        assert!(!alive(pid));
        code
    };

    // Same root, another socket.
    let other_socket = root.dir.path().join("other.sock");
    let config = root.dir.path().join("other.toml");
    kit::write_policy(&config, &other_socket, "");
    let (code, err) = try_daemon(&config, &root.path);
    assert_ne!(code, Some(0), "the second daemon started: {err}");
    assert!(
        err.contains(&format!("pid {}", first.pid())) && err.contains("cgroup root"),
        "names the other daemon: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    // It says how: that daemon's socket may not be this one's, so by pid.
    assert!(
        err.contains(&format!("(kill {})", first.pid())),
        "says how to stop it: {err}"
    );
    assert!(!other_socket.exists(), "it bound a socket");
    assert_eq!(
        std::fs::read_to_string(root.path.join("daemon/cgroup.procs")).unwrap(),
        leaf_before,
        "it moved into the first daemon's leaf"
    );

    // Same socket, another root.
    let other_root = root.path.with_file_name(format!(
        "{}-other",
        root.path.file_name().unwrap().to_str().unwrap()
    ));
    let config = root.dir.path().join("same-socket.toml");
    kit::write_policy(&config, &root.socket, "");
    let (code, err) = try_daemon(&config, &other_root);
    assert_ne!(code, Some(0));
    assert!(err.contains(&format!("pid {}", first.pid())), "{err}");
    // `gov status` at that socket names the daemon to stop.
    let how = format!(
        "(kill $(GOV_SOCKET={} gov status --pid))",
        root.socket.display()
    );
    assert!(err.contains(&how), "says how to stop it: {err}");
    assert!(!other_root.exists(), "it created a cgroup root");

    // The first daemon still serves its gate.
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    // A dead daemon's root is taken over.
    first.sigkill();
    let _second = root.daemon("");
    assert_eq!(state(&root, &id).as_deref(), Some("running"));
    root.ok(&["kill", &id]);
    assert_eq!(kid.reap(Duration::from_secs(10)), None);
}

/// Waits for a child (killing it at the deadline) and returns its exit code
/// and stderr.
fn reap_output(mut child: std::process::Child, timeout: Duration) -> (Option<i32>, String) {
    let mut stderr = child.stderr.take().unwrap();
    let code = reap(child, timeout);
    let mut err = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut err).unwrap();
    (code, err)
}
