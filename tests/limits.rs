//! Limits need cgroup2 controllers (memory, pids, cpu). Our hosts' v2
//! hierarchy has none, so these tests say SKIP there and run in the VM suite
//! (integration/vm-test), where GOV_REQUIRE_CONTROLLERS=1 turns a skip into
//! a failure.

use gov::protocol::EventKind;
use gov_testkit as kit;

use std::time::{Duration, Instant};

use kit::{alive, needs_controllers, reap, wait_until, TestRoot};

/// A shell line that makes the shell itself hold about `mb` MiB of heap,
/// by doubling a string: no fork, so it works beside a fork bomb and under
/// a pids limit.
fn hog(mb: u32) -> String {
    format!(
        "x=x; while [ ${{#x}} -lt {} ]; do x=\"$x$x\"; done",
        mb as u64 * 1024 * 1024
    )
}

/// The VM has zram swap (for the reclaim test); a gate over memory.max
/// would swap rather than meet the OOM killer. No swap for this test's tree.
fn no_swap(root: &TestRoot) {
    gov::cgroup::Cgroup::new(&root.path)
        .write_file("memory.swap.max", "0")
        .expect("memory.swap.max on the test root");
}

#[test]
fn a_fork_bomb_stays_under_pids_max_and_the_hits_are_reported() {
    if !needs_controllers("a_fork_bomb_stays_under_pids_max_and_the_hits_are_reported") {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\npids_max = 32\n");
    let bomb = root.spawn_sh("/src/bomb", "f() { f | f & }; f; sleep 300");
    let id = root.gate_of(bomb.id());
    let cg = root.gate_cgroup(&id);
    assert_eq!(cg.read_file("pids.max").unwrap().trim(), "32");
    wait_until(Duration::from_secs(60), "pids.max hit", || {
        cg.read_flat_keyed("pids.events")
            .map(|kv| kv["max"] > 0)
            .unwrap_or(false)
    });
    let current: u64 = cg
        .read_file("pids.current")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(current <= 32, "pids.current {current} over the limit");
    // The host can still start processes, promptly.
    let t = Instant::now();
    assert!(std::process::Command::new("true")
        .status()
        .unwrap()
        .success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "host unresponsive: {:?}",
        t.elapsed()
    );
    wait_until(Duration::from_secs(20), "limit event", || {
        root.events()
            .iter()
            .any(|e| e.gate == id.as_str() && e.kind == EventKind::Limit)
    });
    let show = root.ok(&["show", &id]);
    assert!(show.contains("pids.max"), "{show}");
    root.ok(&["kill", &id]);
    assert!(root.gate_dirs().is_empty());
    reap(bomb, Duration::from_secs(10));
}

#[test]
fn memory_max_oom_kills_inside_the_gate_only_and_oom_group_takes_the_whole_gate() {
    if !needs_controllers("memory_max_oom_kills_inside_the_gate_only") {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"1h\"\nmemory_max = \"32M\"\n\
         [[project]]\npath = \"/src/grouped\"\noom_group = true\n",
    );
    no_swap(&root);
    let pids = root.dir.path().join("pids");
    let alone = root.spawn_sh(
        "/src/alone",
        &format!(
            "sleep 300 & echo $! > {}; {}; sleep 300",
            pids.display(),
            hog(96)
        ),
    );
    let grouped_pids = root.dir.path().join("grouped-pids");
    let grouped = root.spawn_sh(
        "/src/grouped",
        &format!(
            "sleep 300 & echo $! > {}; {}; sleep 300",
            grouped_pids.display(),
            hog(96)
        ),
    );
    let (alone_pid, grouped_pid) = (alone.id(), grouped.id());
    let alone_id = root.gate_of(alone_pid);
    let grouped_id = root.gate_of(grouped_pid);
    let alone_cg = root.gate_cgroup(&alone_id);
    wait_until(Duration::from_secs(60), "oom kill in the lone gate", || {
        alone_cg
            .read_flat_keyed("memory.events")
            .map(|kv| kv["oom_kill"] > 0)
            .unwrap_or(false)
    });
    assert_eq!(
        reap(alone, Duration::from_secs(10)),
        None,
        "the hog was killed by a signal"
    );
    // Without oom_group only the hog died; its sibling lives in the gate.
    wait_until(Duration::from_secs(5), "sibling pid", || {
        !kit::read_pids(&pids).is_empty()
    });
    let sibling = kit::read_pids(&pids)[0];
    assert!(alive(sibling), "the sibling survives a plain OOM kill");
    wait_until(Duration::from_secs(20), "limit event for the OOM", || {
        root.events()
            .iter()
            .any(|e| e.gate == alone_id.as_str() && e.kind == EventKind::Limit)
    });
    assert!(alive(std::process::id()), "the test itself was not touched");

    // With oom_group the whole gate goes, and the daemon removes it.
    reap(grouped, Duration::from_secs(60));
    let grouped_sibling = kit::read_pids(&grouped_pids);
    for p in grouped_sibling {
        wait_until(Duration::from_secs(10), "grouped sibling killed", || {
            !alive(p)
        });
    }
    wait_until(Duration::from_secs(20), "grouped gate removed", || {
        root.gate(&grouped_id).is_none()
    });
    root.ok(&["kill", &alone_id]);
}

#[test]
fn cpu_max_holds_a_busy_gate_to_its_quota() {
    if !needs_controllers("cpu_max_holds_a_busy_gate_to_its_quota") {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\ncpu_max = \"25%\"\n");
    let busy = root.spawn_sh("/src/cpu", "while :; do :; done");
    let id = root.gate_of(busy.id());
    let cg = root.gate_cgroup(&id);
    assert_eq!(cg.read_file("cpu.max").unwrap().trim(), "25000 100000");
    std::thread::sleep(Duration::from_millis(500));
    let (u0, t0) = (cg.read_cpu_usage_usec().unwrap(), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let (u1, t1) = (cg.read_cpu_usage_usec().unwrap(), Instant::now());
    let ratio = (u1 - u0) as f64 / (t1 - t0).as_micros() as f64;
    // TCG is slow and noisy; the quota still bounds usage from above.
    assert!(
        (0.10..=0.40).contains(&ratio),
        "cpu share {ratio:.2}, quota 0.25"
    );
    let stat = cg.read_flat_keyed("cpu.stat").unwrap();
    assert!(stat["nr_throttled"] > 0, "throttled: {stat:?}");
    root.ok(&["kill", &id]);
    reap(busy, Duration::from_secs(10));
}

#[test]
fn a_project_cap_binds_the_sum_of_its_gates() {
    if !needs_controllers("a_project_cap_binds_the_sum_of_its_gates") {
        return;
    }
    let root = TestRoot::new();
    let _d = root.daemon("[defaults]\nidle_timeout = \"1h\"\nproject_memory_max = \"64M\"\n");
    no_swap(&root);
    let a = root.spawn_sh("/src/capped-project", &format!("{}; sleep 300", hog(24)));
    let b = root.spawn_sh("/src/capped-project", &format!("{}; sleep 300", hog(24)));
    let (a_id, b_id) = (root.gate_of(a.id()), root.gate_of(b.id()));
    let project = kit::cgroup_parent(&root.gate_cgroup(&a_id));
    assert_eq!(
        project.read_file("memory.max").unwrap().trim(),
        (64u64 << 20).to_string()
    );
    // Each gate ends holding 32 MiB (48 at its peak): alone it fits, the two
    // together cannot. The project's limit
    // OOM-kills one of them, and the project never holds more than 64M.
    wait_until(Duration::from_secs(60), "project OOM", || {
        project
            .read_flat_keyed("memory.events")
            .map(|kv| kv["oom_kill"] > 0)
            .unwrap_or(false)
    });
    let peak = project
        .read_file("memory.peak")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if let Some(peak) = peak {
        assert!(peak <= 64 << 20, "peak {peak} over the project cap");
    }
    let current = project.read_memory_current().unwrap().unwrap();
    assert!(current <= 64 << 20, "project holds {current}");
    for id in [&a_id, &b_id] {
        let _ = root.run(&["kill", id]);
    }
    reap(a, Duration::from_secs(10));
    reap(b, Duration::from_secs(10));
}

#[test]
fn memory_reclaim_on_a_frozen_gate_lowers_memory_current() {
    if !needs_controllers("memory_reclaim_on_a_frozen_gate_lowers_memory_current") {
        return;
    }
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    assert!(
        swaps.lines().count() > 1,
        "anonymous memory can only be reclaimed to swap; the VM sets up zram swap: {swaps}"
    );
    let root = TestRoot::new();
    let _d = root.daemon(
        "[defaults]\nidle_timeout = \"2s\"\nfrozen_hold = \"1h\"\nreclaim_when_frozen = true\n",
    );
    // Other tests in this binary press on the VM's memory; keep the kernel's
    // own reclaim off this tree, so only gov's memory.reclaim moves it.
    gov::cgroup::Cgroup::new(&root.path)
        .write_file("memory.low", "256M")
        .expect("memory.low on the test root");
    // Builtins only after the allocation: busybox runs `touch` in-process
    // and its shell then gives the memory back.
    let ready = root.dir.path().join("ready");
    let gate = root.spawn_sh(
        "/src/reclaim",
        &format!("{}; : > {}; sleep 300 & wait", hog(48), ready.display()),
    );
    let id = root.gate_of(gate.id());
    wait_until(Duration::from_secs(60), "allocation", || ready.exists());
    let cg = root.gate_cgroup(&id);
    let before = cg.read_memory_current().unwrap().unwrap();
    assert!(
        before > 40 << 20,
        "gate holds {before}; memory.stat {:?} swap {:?} procs {:?}",
        cg.read_flat_keyed("memory.stat")
            .ok()
            .map(|m| (m["anon"], m["file"], m["shmem"])),
        cg.read_file("memory.swap.current").ok(),
        cg.read_procs().ok()
    );
    wait_until(Duration::from_secs(30), "suspended", || {
        root.events()
            .iter()
            .any(|e| e.gate == id.as_str() && e.kind == EventKind::Suspended)
    });
    let after = cg.read_memory_current().unwrap().unwrap();
    assert!(after < before / 2, "memory.current {before} -> {after}");
    let ev = root.events();
    let suspended = ev
        .iter()
        .find(|e| e.gate == id.as_str() && e.kind == EventKind::Suspended)
        .unwrap();
    // gov reports what it reclaimed (memory.current before and after).
    assert!(suspended.freed_bytes.unwrap_or(0) > 0, "{suspended:?}");
    // Still there, as it was: thaw brings it back.
    root.ok(&["thaw", &id]);
    assert!(alive(gate.id()));
    root.ok(&["kill", &id]);
    reap(gate, Duration::from_secs(10));
}

/// Limits the host cannot apply are said to the person who spawned the gate
/// (one line on stderr naming the policy keys), listed by `show` and carried
/// by `ps --json`; where the controllers exist (the VM) nothing is said.
/// Runs on both layouts.
#[test]
fn a_spawn_says_which_limits_are_not_applied_and_why() {
    let root = TestRoot::new();
    let _d =
        root.daemon("[defaults]\nidle_timeout = \"1h\"\nmemory_max = \"64M\"\npids_max = 10\n");
    let mut child = root
        .gov()
        .args(["spawn", "--project", "/src/limited", "--", "sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id = root.gate_of(child.id());
    let show = root.ok(&["show", &id]);
    let gate = root.gate_json(&id).unwrap();
    root.ok(&["kill", &id]);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    reap(child, Duration::from_secs(5));
    if kit::controllers_available() {
        assert!(!err.contains("not applied"), "{err}");
        assert!(!show.contains("not applied"), "{show}");
        assert!(gate["not_applied"].is_null(), "{gate}");
    } else {
        let line = err
            .lines()
            .find(|l| l.contains("not applied"))
            .unwrap_or_else(|| panic!("no not-applied line: {err}"));
        assert!(line.contains("memory_max = 67108864"), "{line}");
        assert!(line.contains("pids_max = 10"), "{line}");
        assert!(line.contains("controller"), "says why: {line}");
        assert!(show.contains("not applied"), "{show}");
        let keys: Vec<&str> = gate["not_applied"]
            .as_array()
            .expect("ps --json carries not_applied")
            .iter()
            .map(|n| n["key"].as_str().unwrap())
            .collect();
        assert_eq!(keys, ["memory_max", "pids_max"]);
    }
}
