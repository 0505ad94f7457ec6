//! 4. Touch throughput and latency.
//!
//! C client threads (each touching a gate of its own) in a closed loop:
//! send `{"type":"touch","gate":ID}`, read the reply, again. Two modes,
//! alternated in short rounds so drift hits both: one long-lived connection
//! per thread, and a new connection per touch (what `gov touch` does). A
//! single client on one connection gives the unloaded latency floor.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use gov::gate::Tree;

use crate::util::*;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Persistent,
    NewConnection,
}

struct Round {
    requests: usize,
    errors: usize,
    kinds: std::collections::BTreeMap<String, usize>,
    lat_us: Vec<f64>,
    wall: Duration,
    daemon_cpu_usec: u64,
}

pub fn run(root: &BenchRoot, tmp: &Path) {
    let clients = env_usize("GOV_BENCH_TOUCH_CLIENTS", 64);
    let rounds = env_usize("GOV_BENCH_TOUCH_ROUNDS", 2);
    let round_s = env_f64("GOV_BENCH_TOUCH_SECS", 1.0);
    println!(
        "## 4. Touch throughput ({clients} clients, {rounds} alternating rounds of {round_s}s per mode)\n"
    );

    let droot = root.sub("touch");
    let socket = tmp.join("touch.sock");
    let config = tmp.join("touch.toml");
    write_config(&config, &socket, "5s", "");
    let tree = Tree::at(root.mount.clone(), &droot.display().to_string()).unwrap();
    let mut pids = Vec::new();
    let mut ids = Vec::new();
    for i in 0..clients {
        let (g, p) = make_gate(&tree, &format!("/bench/touch/p{}", i % 8), 1);
        ids.push(g.id);
        pids.extend(p);
    }
    let daemon = Daemon::start(
        &droot,
        &config,
        &socket,
        &tmp.join("touch-daemon.log"),
        None,
    );
    daemon.wait_running(clients, Duration::from_secs(60));

    let runs: [(&str, Mode, usize); 3] = [
        ("1 client, one connection", Mode::Persistent, 1),
        ("persistent connections", Mode::Persistent, clients),
        ("new connection per touch", Mode::NewConnection, clients),
    ];
    let mut acc: Vec<Vec<Round>> = (0..runs.len()).map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, (_, mode, n)) in runs.iter().enumerate() {
            acc[i].push(round(
                &daemon,
                &socket,
                &ids[..*n],
                *mode,
                Duration::from_secs_f64(if *n == 1 { round_s / 2.0 } else { round_s }),
            ));
        }
    }

    let mut t = Table::new(&[
        "mode",
        "clients",
        "touches/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "daemon CPU % of a core",
        "daemon CPU us/touch",
        "errors",
    ]);
    for (i, (name, _, n)) in runs.iter().enumerate() {
        let rs = &acc[i];
        let reqs: usize = rs.iter().map(|r| r.requests).sum();
        let errs: usize = rs.iter().map(|r| r.errors).sum();
        let wall: f64 = rs.iter().map(|r| r.wall.as_secs_f64()).sum();
        let cpu: u64 = rs.iter().map(|r| r.daemon_cpu_usec).sum();
        let lat = Stats::new(rs.iter().flat_map(|r| r.lat_us.iter().copied()).collect());
        t.row(vec![
            name.to_string(),
            n.to_string(),
            format!("{:.0}", reqs as f64 / wall),
            ms(lat.p(50.0)),
            ms(lat.p(99.0)),
            ms(lat.max()),
            format!("{:.0}%", cpu as f64 / 1e6 / wall * 100.0),
            f1(cpu as f64 / reqs.max(1) as f64),
            errs.to_string(),
        ]);
    }
    t.print();
    for (i, (name, _, _)) in runs.iter().enumerate() {
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for r in &acc[i] {
            for (k, n) in &r.kinds {
                *kinds.entry(k.as_str()).or_default() += n;
            }
        }
        for (k, n) in kinds {
            println!("- {name}: {n} x {k}");
        }
    }
    println!();
    drop(daemon);
    let _ = std::fs::write(droot.join("cgroup.kill"), "1");
    let _ = wait_unpopulated(&droot, Duration::from_secs(10));
    reap(&pids);
}

fn round(daemon: &Daemon, socket: &Path, ids: &[String], mode: Mode, dur: Duration) -> Round {
    let barrier = Arc::new(Barrier::new(ids.len() + 1));
    let handles: Vec<_> = ids
        .iter()
        .map(|id| {
            let barrier = barrier.clone();
            let socket = socket.to_path_buf();
            let line = format!("{{\"type\":\"touch\",\"gate\":\"{id}\"}}\n");
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(1 << 14);
                let mut errors = 0;
                let mut kinds = std::collections::BTreeMap::<String, usize>::new();
                let mut conn = (mode == Mode::Persistent).then(|| {
                    let s = UnixStream::connect(&socket).expect("connect");
                    BufReader::new(s)
                });
                let mut reply = String::new();
                barrier.wait();
                let end = Instant::now() + dur;
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let result = match conn.as_mut() {
                        Some(r) => {
                            reply.clear();
                            if r.get_mut().write_all(line.as_bytes()).is_err() {
                                Err("send".to_string())
                            } else if r.read_line(&mut reply).is_err() {
                                Err("read".to_string())
                            } else if reply.contains("\"type\":\"done\"") {
                                Ok(())
                            } else {
                                Err(format!(
                                    "reply: {}",
                                    reply.trim().chars().take(100).collect::<String>()
                                ))
                            }
                        }
                        None => one_shot(&socket, line.as_bytes()),
                    };
                    lat.push(us(t0.elapsed()));
                    if let Err(e) = result {
                        *kinds.entry(e).or_default() += 1;
                        errors += 1;
                        if mode == Mode::Persistent {
                            conn = UnixStream::connect(&socket).ok().map(BufReader::new);
                        }
                    }
                }
                (lat, errors, kinds)
            })
        })
        .collect();
    let u0 = daemon.usage_usec();
    let t0 = Instant::now();
    barrier.wait();
    let mut lat_us = Vec::new();
    let mut errors = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for h in handles {
        let (l, e, k) = h.join().unwrap();
        lat_us.extend(l);
        errors += e;
        for (kind, n) in k {
            *kinds.entry(kind).or_default() += n;
        }
    }
    let wall = t0.elapsed();
    Round {
        requests: lat_us.len(),
        errors,
        kinds,
        lat_us,
        wall,
        daemon_cpu_usec: daemon.usage_usec() - u0,
    }
}
