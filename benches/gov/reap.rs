//! 2. Reap latency: from the decision to the cgroup removed.
//!
//! Trees of N processes are born inside a fresh cgroup (clone3 with
//! CLONE_INTO_CGROUP; each process sleeps in pause(2)). Variants, shuffled
//! within each repetition:
//! - bare: `cgroup.kill`, wait for `populated 0` (poll + re-read every 1 ms),
//!   rmdir. The kernel's own path, the baseline.
//! - bare+freeze: the same with a freeze (and wait for `frozen 1`) first,
//!   so the freeze's share of the library path is visible.
//! - library: `gov::gate::GateDir::kill_and_remove()` (freeze, kill, wait
//!   with gov's 10 ms re-read, rmdir, project rmdir attempt).
//! - daemon: `{"type":"kill"}` round trip to a running daemon, which answers
//!   once the cgroup is gone.

use std::path::Path;
use std::time::{Duration, Instant};

use gov::cgroup::Cgroup;
use gov::gate::{GateDir, Tree};

use crate::util::*;

#[derive(Clone, Copy, PartialEq)]
enum V {
    Bare,
    BareFreeze,
    Library,
    Daemon,
}

const ALL: [V; 4] = [V::Bare, V::BareFreeze, V::Library, V::Daemon];

impl V {
    fn name(self) -> &'static str {
        match self {
            V::Bare => "bare: kill, wait, rmdir",
            V::BareFreeze => "bare: freeze, kill, wait, rmdir",
            V::Library => "GateDir::kill_and_remove()",
            V::Daemon => "daemon `kill` round trip",
        }
    }
}

pub fn run(root: &BenchRoot, tmp: &Path) {
    let sizes = env_list("GOV_BENCH_REAP_SIZES", &[1, 100, 1000]);
    let reps_small = env_usize("GOV_BENCH_REAP_REPS", if quick() { 5 } else { 12 });
    println!("## 2. Reap latency (decision to cgroup removed)\n");

    let bare_parent = root.sub("reap-bare");
    let lib_parent = root.path.join("reap-lib");
    let daemon_root = root.sub("reap-daemon");
    let socket = tmp.join("reap.sock");
    let config = tmp.join("reap.toml");
    // A short scan so a gate made behind the daemon's back is adopted
    // quickly (only every tenth pass walks the tree); with one or two gates
    // a pass costs microseconds.
    write_config(&config, &socket, "20ms", "orphan_grace = \"never\"");
    let daemon = Daemon::start(
        &daemon_root,
        &config,
        &socket,
        &tmp.join("reap-daemon.log"),
        None,
    );
    let tree = Tree::at(root.mount.clone(), &daemon_root.display().to_string()).unwrap();
    let mut conn = daemon.conn();

    let mut t = Table::new(&[
        "procs",
        "variant",
        "runs",
        "p50 ms",
        "p90 ms",
        "max ms",
        "p50 vs bare",
        "paired median vs bare",
    ]);
    let mut rng = Rng::new(0xdead);
    let mut verdicts = Vec::new();
    let mut k = 0usize;
    for &n in &sizes {
        // Fewer repetitions for big trees: each costs ~N clone3s to build.
        let reps = if n >= 1000 {
            (reps_small / 3).max(3)
        } else if n >= 100 {
            (reps_small * 2 / 3).max(3)
        } else {
            reps_small
        };
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); ALL.len()];
        let mut pss = Vec::new();
        let mut order: Vec<usize> = (0..ALL.len()).collect();
        for _ in 0..reps {
            rng.shuffle(&mut order);
            for &i in &order {
                k += 1;
                let d = match ALL[i] {
                    V::Bare | V::BareFreeze => {
                        let path = bare_parent.join(format!("t{k}"));
                        Cgroup::new(&path).create().unwrap();
                        let pids = fork_into(&path, n);
                        settle();
                        let t0 = Instant::now();
                        if ALL[i] == V::BareFreeze {
                            std::fs::write(path.join("cgroup.freeze"), "1").unwrap();
                            wait_events_tight(
                                &path,
                                Duration::from_secs(10),
                                Duration::from_millis(1),
                                |e| frozen(e) || unpopulated(e),
                            )
                            .unwrap();
                        }
                        std::fs::write(path.join("cgroup.kill"), "1").unwrap();
                        wait_unpopulated(&path, Duration::from_secs(10)).unwrap();
                        std::fs::remove_dir(&path).unwrap();
                        let d = t0.elapsed();
                        reap(&pids);
                        d
                    }
                    V::Library => {
                        Cgroup::new(&lib_parent).create_if_missing().unwrap();
                        let id = format!("g{:010x}", k);
                        let dir = GateDir {
                            cgroup: Cgroup::new(lib_parent.join(&id)),
                            id,
                            project_key: "reap-lib".into(),
                        };
                        dir.cgroup.create().unwrap();
                        let pids = fork_into(dir.cgroup.path(), n);
                        settle();
                        // What the daemon's teardown reads before it kills
                        // (the memory it is about to free), timed apart.
                        let m0 = Instant::now();
                        let members = dir.cgroup.read_procs().unwrap_or_default();
                        let _ = gov::gate::memory_of(&dir.cgroup, &members);
                        pss.push(us(m0.elapsed()));
                        settle();
                        let t0 = Instant::now();
                        dir.kill_and_remove().expect("kill_and_remove");
                        let d = t0.elapsed();
                        assert!(!dir.cgroup.path().exists());
                        reap(&pids);
                        d
                    }
                    V::Daemon => {
                        let (gate, pids) = make_gate(&tree, "/bench/reap", n);
                        wait_known(&mut conn, &gate.id, Duration::from_secs(15));
                        settle();
                        let req = format!(r#"{{"type":"kill","gate":"{}"}}"#, gate.id);
                        let t0 = Instant::now();
                        let reply = conn.call(&req);
                        let d = t0.elapsed();
                        assert!(reply.contains(r#""type":"done""#), "kill: {reply}");
                        assert!(!gate.cgroup.path().exists(), "daemon replied before rmdir");
                        reap(&pids);
                        d
                    }
                };
                samples[i].push(us(d));
            }
        }
        let base = Stats::new(samples[0].clone());
        for (i, v) in ALL.iter().enumerate() {
            let s = Stats::new(samples[i].clone());
            let ratio = s.p(50.0) / base.p(50.0);
            t.row(vec![
                n.to_string(),
                v.name().to_string(),
                s.n().to_string(),
                ms(s.p(50.0)),
                ms(s.p(90.0)),
                ms(s.max()),
                if i == 0 {
                    "1.00x".into()
                } else {
                    format!("{ratio:.2}x")
                },
                if i == 0 {
                    "-".into()
                } else {
                    format!(
                        "{:+.2} ms",
                        paired_median(&samples[i], &samples[0]) / 1000.0
                    )
                },
            ]);
            if *v == V::Daemon {
                let p = Stats::new(pss.clone());
                t.row(vec![
                    n.to_string(),
                    "(part of daemon: read procs + memory_of())".into(),
                    p.n().to_string(),
                    ms(p.p(50.0)),
                    ms(p.p(90.0)),
                    ms(p.max()),
                    "-".into(),
                    "-".into(),
                ]);
            }
            if matches!(v, V::Library | V::Daemon) {
                verdicts.push(format!(
                    "{n} procs, {}: {ratio:.2}x bare -> {}",
                    v.name(),
                    if ratio <= 1.2 { "MET" } else { "MISSED" }
                ));
            }
        }
    }
    t.print();
    println!("target: within 1.2x of the bare kernel path");
    for v in verdicts {
        println!("- {v}");
    }
    println!();
    drop(conn);
    drop(daemon);
}

/// Lets freshly cloned processes reach pause(2) and the scheduler calm
/// down, so the measured kill starts from a quiet tree.
fn settle() {
    nap(Duration::from_millis(20));
}
