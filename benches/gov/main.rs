//! gov's benchmark suite: process-level measurements of a release build on
//! the real cgroupfs, each against a baseline run beside it, reported as
//! ratios and printed as markdown tables (docs/BENCHMARKS.md holds a run).
//!
//!     CARGO_TARGET_DIR=/tmp/target-bench cargo bench --bench gov [-- SCENARIO...]
//!
//! Scenarios: spawn, reap, steady, touch, burst, metrics, wake (all by
//! default), hibernate_size (only when named: it needs CRIU and GiBs of RAM). Needs root and a
//! cgroup2 mount. Everything it creates lives under `<cgroup2>/gov-bench-<pid>`
//! and a temp dir, and is removed at the end, on panic and on SIGINT/SIGTERM.
//! Sizes come from the environment (see docs/BENCHMARKS.md);
//! GOV_BENCH_QUICK=1 runs a small version of everything in ~1 minute.

mod burst;
mod hibernate_size;
mod metrics;
mod reap;
mod spawn;
mod steady;
mod touch;
mod util;
mod wake;

use std::time::Instant;

const SCENARIOS: [&str; 8] = [
    "spawn",
    "reap",
    "steady",
    "touch",
    "burst",
    "metrics",
    "wake",
    "hibernate_size",
];

/// Run only when named: they need CRIU, take minutes and GiBs of RAM.
const ON_REQUEST: [&str; 1] = ["hibernate_size"];

fn main() {
    // A helper mode: one spawn request to the daemon (which moves *this*
    // process into a new gate, never the bench), its round trip printed in
    // microseconds.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(spawn::HELPER) {
        spawn::helper(&args[2]);
        return;
    }
    if args.get(1).map(String::as_str) == Some(burst::HELPER) {
        burst::helper(&args[2..]);
        return;
    }
    if args.get(1).map(String::as_str) == Some(wake::HELPER) {
        wake::helper(&args[2..]);
        return;
    }
    // Before any thread starts: every thread inherits the blocked mask, and
    // one thread turns SIGINT/SIGTERM into a cleanup.
    util::install_signal_cleanup();
    // Once stopping, the main thread unwinds on purpose (its requests to a
    // stopped daemon fail, its naps end): no panic report for that.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !util::stopping() {
            default_hook(info);
        }
    }));
    // `cargo bench` passes --bench; anything else that is not an option
    // names a scenario.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    for w in &wanted {
        if !SCENARIOS.contains(&w.as_str()) {
            eprintln!("gov-bench: unknown scenario {w:?}; known: {SCENARIOS:?}");
            std::process::exit(2);
        }
    }
    let run = |name: &str| {
        (wanted.is_empty() && !ON_REQUEST.contains(&name)) || wanted.iter().any(|w| w == name)
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("gov-bench: needs root (it creates cgroups and runs a gov daemon)");
        std::process::exit(2);
    }

    let started = Instant::now();
    header();
    let tmp = tempfile::Builder::new()
        .prefix("gov-bench-")
        .tempdir()
        .expect("temp dir");
    util::register_dir(tmp.path());
    let result = std::panic::catch_unwind(|| {
        let root = util::BenchRoot::new();
        if run("spawn") {
            spawn::run(&root, tmp.path());
            util::conditions();
        }
        if run("reap") {
            reap::run(&root, tmp.path());
            util::conditions();
        }
        if run("steady") {
            steady::run(&root, tmp.path());
            util::conditions();
        }
        if run("touch") {
            touch::run(&root, tmp.path());
            util::conditions();
        }
        if run("burst") {
            burst::run(&root, tmp.path());
            util::conditions();
        }
        if run("metrics") {
            metrics::run(&root, tmp.path());
            util::conditions();
        }
        if run("wake") {
            wake::run(&root, tmp.path());
            util::conditions();
        }
        if run("hibernate_size") {
            hibernate_size::run(&root, tmp.path());
            util::conditions();
        }
    });
    if std::env::var_os("GOV_BENCH_KEEP_LOGS").is_some() {
        let keep = tmp.keep();
        eprintln!("gov-bench: daemon logs kept in {}", keep.display());
    }
    util::cleanup_everything();
    util::main_done();
    if util::stopping() {
        eprintln!("gov-bench: interrupted; everything it made is removed");
        std::process::exit(130);
    }
    println!(
        "total bench time: {:.0} s; load average at the end: {}",
        started.elapsed().as_secs_f64(),
        util::loadavg()
    );
    if result.is_err() {
        std::process::exit(1);
    }
}

fn header() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let mount = gov::cgroup::cgroup2_mount()
        .map(|m| m.display().to_string())
        .unwrap_or_default();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--", "src", "Cargo.toml"]).is_empty();
    println!("# gov bench\n");
    println!(
        "gov at commit {commit}{}\n",
        if dirty {
            " plus uncommitted changes in src/ or Cargo.toml"
        } else {
            ""
        }
    );
    println!(
        "machine: {} x {cpu}, {:.0} GiB RAM, kernel {}, cgroup2 at {mount}; gov binary {}; load average at start {}\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_kb as f64 / 1048576.0,
        kernel.trim(),
        util::gov_bin().display(),
        util::loadavg()
    );
}
