//! 8. Metrics under load: what one user's requests cost the others.
//!
//! One gate of P processes sharing M MB (copy-on-write pages), so where
//! the memory controller is off its memory is PSS from each process's
//! smaps_rollup, which walks page tables. C clients loop `metrics`, each on
//! its own connection, while a probe sends `hello` on a fresh connection
//! every 20 ms: the probe's latency is what another user's request waits.
//! A round without the looping clients gives the floor. Run it against an
//! older build with GOV_BIN to compare.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gov::gate::Tree;

use crate::util::*;

pub fn run(root: &BenchRoot, tmp: &Path) {
    let procs = env_usize("GOV_BENCH_METRICS_PROCS", if quick() { 10 } else { 40 });
    let mb = env_usize("GOV_BENCH_METRICS_MB", if quick() { 128 } else { 512 });
    let clients = env_usize("GOV_BENCH_METRICS_CLIENTS", 32);
    let secs = env_f64("GOV_BENCH_METRICS_SECS", if quick() { 2.0 } else { 5.0 });
    println!(
        "## 8. Metrics under load ({procs} processes sharing {mb} MB, {clients} clients looping metrics, {secs} s)\n"
    );

    let droot = root.sub("metrics");
    let socket = tmp.join("metrics.sock");
    let config = tmp.join("metrics.toml");
    write_config(&config, &socket, "5s", "");
    let tree = Tree::at(root.mount.clone(), &droot.display().to_string()).unwrap();
    let pids = shared_gate(&tree, mb, procs);
    let daemon = Daemon::start(
        &droot,
        &config,
        &socket,
        &tmp.join("metrics-daemon.log"),
        None,
    );
    daemon.wait_running(1, Duration::from_secs(60));

    let mut c = daemon.conn();
    let single: Vec<f64> = (0..5)
        .map(|_| {
            let t0 = Instant::now();
            c.call(r#"{"type":"metrics"}"#);
            us(t0.elapsed())
        })
        .collect();
    let floor = probe(&socket, Duration::from_secs_f64(secs / 2.0));
    let served = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let loaded = std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut c = Conn::connect(&socket);
                while !stop.load(Ordering::Relaxed) {
                    c.call(r#"{"type":"metrics"}"#);
                    served.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let p = probe(&socket, Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        p
    });

    let first = single[0];
    let single = Stats::new(single);
    println!(
        "One metrics request alone: {} ms the first time, {} ms the median of five.\n",
        ms(first),
        ms(single.p(50.0))
    );
    let mut t = Table::new(&[
        "hello probe",
        "probes",
        "p50 ms",
        "p99 ms",
        "max ms",
        "metrics/s",
    ]);
    for (name, st, rate) in [
        ("alone", &floor, String::from("-")),
        (
            "while clients loop metrics",
            &loaded,
            format!("{:.0}", served.load(Ordering::Relaxed) as f64 / secs),
        ),
    ] {
        t.row(vec![
            name.to_string(),
            st.n().to_string(),
            ms(st.p(50.0)),
            ms(st.p(99.0)),
            ms(st.max()),
            rate,
        ]);
    }
    t.print();
    println!();
    drop(daemon);
    let _ = std::fs::write(droot.join("cgroup.kill"), "1");
    let _ = wait_unpopulated(&droot, Duration::from_secs(10));
    reap(&pids);
}

/// `hello` on a fresh connection every 20 ms for `dur`; round trips in us.
fn probe(socket: &Path, dur: Duration) -> Stats {
    let end = Instant::now() + dur;
    let mut lat = Vec::new();
    while Instant::now() < end {
        let t0 = Instant::now();
        let reply = try_call(socket, r#"{"type":"hello"}"#, Duration::from_secs(60));
        if reply.is_some_and(|r| r.contains("\"type\":\"hello\"")) {
            lat.push(us(t0.elapsed()));
        }
        nap(Duration::from_millis(20));
    }
    Stats::new(lat)
}

/// A gate of `procs` processes that share one `mb` MB region, every page
/// touched, in small pages: a private mapping written before the fork, as
/// a preforked server's heap is (fork copies its page tables, so each
/// child's smaps_rollup walks all of it; a MAP_SHARED region's page tables
/// are not copied, and would cost the reader nothing).
fn shared_gate(tree: &Tree, mb: usize, procs: usize) -> Vec<i32> {
    let len = mb << 20;
    // SAFETY: a fresh anonymous mapping, unmapped below once the
    // children (which inherit it) exist; nothing else points into it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert!(p != libc::MAP_FAILED, "mmap {mb} MB");
        libc::madvise(p, len, libc::MADV_NOHUGEPAGE);
        for off in (0..len).step_by(4096) {
            *(p as *mut u8).add(off) = 1;
        }
        let (_, pids) = make_gate(tree, "/bench/metrics", procs);
        libc::munmap(p, len);
        pids
    }
}
