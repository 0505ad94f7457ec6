//! Memory relief through a real daemon: a MemAvailable floor no host meets
//! (`memory_available_min = "100%"`) holds the trigger on, so the ladder's
//! choices show on any machine, without filling its memory. What relief
//! does when a VM really runs short is tests/relief.rs.

use gov::protocol::{EventKind, GateState};
use gov_testkit as kit;

use std::process::Stdio;
use std::time::Duration;

use kit::{wait_until, Kid, TestRoot};

/// A floor every host is under; PSI off, so only the floor triggers.
const SHORT: &str = "memory_available_min = \"100%\"\nmemory_pressure = \"off\"\n";

fn relieved(root: &TestRoot, id: &str) -> Vec<gov::protocol::Event> {
    root.events()
        .into_iter()
        .filter(|e| e.gate == id && e.kind == EventKind::Relieved)
        .collect()
}

/// A host short of memory gets it back from an idle `--hibernate` gate by
/// a dump (the lossless first rung, without waiting for hibernate_after),
/// never from a busy or a pinned gate; the gate comes back whole on touch;
/// ps, metrics and status say what relief did.
#[test]
fn a_short_host_hibernates_the_idle_gate_and_spares_busy_and_pinned_ones() {
    let Some(criu) = kit::criu::for_shell_workers(
        "a_short_host_hibernates_the_idle_gate_and_spares_busy_and_pinned_ones",
    ) else {
        return;
    };
    let root = TestRoot::new();
    // On the VM's disk where there is one: its /tmp is RAM.
    let images = std::env::var_os("GOV_VM_SCRATCH")
        .map_or_else(|| root.dir.path().to_path_buf(), std::path::PathBuf::from)
        .join(format!("relief-images-{}", std::process::id()));
    let policy = format!(
        "{SHORT}hibernate_dir = {:?}\n[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1h\"\nhibernate_after = \"1h\"\norphan_grace = \"never\"\nbusy_cpu_percent = 1.0\nwake_on_input = false\n",
        images.display().to_string()
    );
    let _d = kit::Daemon::start_env(
        &root,
        &root.policy_file(&policy),
        &[("GOV_CRIU", criu.to_str().unwrap())],
    );
    let mut sleeper = Kid::new(
        root.gov()
            .args(["spawn", "--hibernate", "-p", "/src/repl", "--"])
            .args([
                "sh",
                "-c",
                "echo ready; read line; echo \"got $line\"; sleep 600",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = kit::lines_of(&mut sleeper);
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).unwrap(),
        "ready"
    );
    let sleeper_id = root.gate_of(sleeper.id());
    let busy = root.spawn_sh("/src/build", "while :; do :; done");
    let busy_id = root.gate_of(busy.id());
    let pinned = root.spawn_sh("/src/notebook", "sleep 600 & wait");
    let pinned_id = root.gate_of(pinned.id());
    root.ok(&["pin", &pinned_id]);

    wait_until(Duration::from_secs(60), "the idle gate hibernated", || {
        root.gate(&sleeper_id)
            .is_some_and(|g| g.state == GateState::Hibernated)
    });
    let steps = relieved(&root, &sleeper_id);
    let reason = steps[0].reason.as_deref().unwrap();
    assert!(reason.starts_with("hibernate: MemAvailable"), "{reason}");
    assert!(steps[0].freed_bytes.unwrap() > 0, "{:?}", steps[0]);

    // Scans enough for relief to have looked at the others many times.
    root.wait_scans(10);
    for (what, id) in [("busy", &busy_id), ("pinned", &pinned_id)] {
        assert!(
            relieved(&root, id).is_empty(),
            "relief took from the {what} gate"
        );
        assert_eq!(root.gate(id).unwrap().state, GateState::Running, "{what}");
    }

    let ps = root.ok(&["ps"]);
    assert!(ps.contains("hibernated on disk"), "{ps}");
    let metrics = root.ok(&["metrics"]);
    assert!(
        metrics.lines().any(
            |l| l.starts_with("gov_relief_steps_total{rung=\"hibernate\"}") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    let status = root.ok(&["status"]);
    assert!(status.contains("MemAvailable"), "{status}");

    // Back whole: its stdin and its state are those it had.
    root.ok(&["touch", &sleeper_id]);
    assert_eq!(root.gate(&sleeper_id).unwrap().state, GateState::Running);
    use std::io::Write;
    writeln!(sleeper.stdin.as_mut().unwrap(), "hello").unwrap();
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(30)).unwrap(),
        "got hello"
    );

    for id in [&sleeper_id, &busy_id, &pinned_id] {
        let _ = root.run(&["kill", id]);
    }
    for kid in [busy, pinned] {
        kit::reap(kid, Duration::from_secs(5));
    }
    sleeper.reap(Duration::from_secs(5));
}

/// The last rung, stopping an idle gate, only where `pressure_stop` says
/// so: until then the gate is left as it is (here, where neither CRIU nor
/// memory.reclaim is at hand, that means untouched), and once allowed, it
/// is stopped for memory pressure.
#[test]
fn relief_stops_an_idle_gate_only_where_the_policy_allows_it() {
    let root = TestRoot::new();
    let base = "[defaults]\nidle_timeout = \"1s\"\nfrozen_hold = \"1h\"\nstop_grace = \"1s\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\n";
    let d = root.daemon(&format!("{SHORT}{base}"));
    // What it holds is worth a step (relief::MIN_BYTES) wherever it runs.
    let gate = root.spawn_sh(
        "/src/repl",
        "x=x; while [ ${#x} -lt 16777216 ]; do x=\"$x$x\"; done; sleep 600 & wait",
    );
    let id = root.gate_of(gate.id());
    wait_until(Duration::from_secs(60), "suspended by the reaper", || {
        root.gate(&id)
            .is_some_and(|g| g.state == GateState::Suspended && g.memory_bytes >= 16 << 20)
    });
    root.wait_scans(10);
    assert!(root.gate(&id).is_some(), "stopped without pressure_stop");
    let ev = root.events();
    assert!(
        !ev.iter()
            .any(|e| e.gate == id && e.kind == EventKind::Stopping),
        "{ev:?}"
    );
    // Where reclaim is at hand (the VM), the lossless rung was taken.
    for e in relieved(&root, &id) {
        assert!(
            e.reason.as_deref().unwrap().starts_with("reclaim:"),
            "{e:?}"
        );
    }
    if kit::controllers_available() {
        // Its memory is in swap now, under what a stop would be worth.
        let _ = root.run(&["kill", &id]);
        kit::reap(gate, Duration::from_secs(5));
        return;
    }

    kit::write_policy(
        &d.config,
        &root.socket,
        &format!("{SHORT}pressure_stop = true\n{base}"),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(
        Duration::from_secs(20),
        "stopped for memory pressure",
        || {
            root.events().iter().any(|e| {
                e.gate == id
                    && e.kind == EventKind::Removed
                    && e.reason.as_deref().unwrap().starts_with("memory-pressure")
            })
        },
    );
    let step = relieved(&root, &id);
    assert!(
        step[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("stop: MemAvailable"),
        "{step:?}"
    );
    kit::reap(gate, Duration::from_secs(5));
}

/// Relief stops as soon as its trigger clears: a budget that one idle
/// gate's step brings the gates under takes that gate, the least recently
/// active, and never the other, however many scans follow.
#[test]
fn relief_stops_once_the_budget_is_met_again() {
    let root = TestRoot::new();
    let base = "[defaults]\nidle_timeout = \"1h\"\nstop_grace = \"1s\"\norphan_grace = \"never\"\nbusy_cpu_percent = 100.0\n";
    let d = root.daemon(base);
    // 16 MiB of shell heap each, then a file that says it is built (its
    // figure moves while the string doubles).
    let heap = |name: &str| {
        let ready = root.dir.path().join(name);
        let script = format!(
            "x=x; while [ ${{#x}} -lt 16777216 ]; do x=\"$x$x\"; done; : > {}; sleep 600 & wait",
            ready.display()
        );
        (root.spawn_sh(&format!("/src/{name}"), &script), ready)
    };
    let (old, old_ready) = heap("old");
    let old_id = root.gate_of(old.id());
    let (new, new_ready) = heap("new");
    let new_id = root.gate_of(new.id());
    let held = |id: &str| root.gate(id).map_or(0, |g| g.memory_bytes);
    wait_until(Duration::from_secs(60), "both heaps", || {
        old_ready.exists() && new_ready.exists()
    });
    root.ok(&["touch", &new_id]);
    // Over it with both, under it with either alone.
    let (a, b) = (held(&old_id), held(&new_id));
    let budget = a + b - a.min(b) / 2;
    kit::write_policy(
        &d.config,
        &root.socket,
        &format!("memory_budget = {budget}\n{base}"),
    );
    d.signal(nix::sys::signal::Signal::SIGHUP);
    wait_until(Duration::from_secs(20), "the older gate relieved", || {
        !relieved(&root, &old_id).is_empty()
    });
    root.wait_scans(15);
    assert!(
        relieved(&root, &new_id).is_empty(),
        "relief went on past its trigger: {:?}",
        relieved(&root, &new_id)
    );
    assert!(root.gate(&new_id).is_some());
    for id in [&old_id, &new_id] {
        let _ = root.run(&["kill", id]);
    }
    for kid in [old, new] {
        kit::reap(kid, Duration::from_secs(5));
    }
}
